//! `link`: another name for a non-directory inode; the attributes stay shared.

use indexnode::{Cred, MAY_EXEC, MAY_WRITE};
use metastore::{keys, Attr, Dentry};
use serde::{Deserialize, Serialize};
use tafdb::{BoxFuture, Txn};

use crate::api::{Loc, Obj};
use crate::ctx::{now_ns, Ctx};
use crate::error::{fail, Errno, OpResult};
use crate::ops::common::{must_be_free, touch_dir};
use crate::resolve::{locate, must_attr, namespace_cached, object};
use crate::service::Op;

/// The most links an inode may have.
pub const LINK_MAX: u64 = 65_000;

/// Makes `at` a new name of `target` (a final symlink in a target path is not followed).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Link {
    /// The namespace.
    pub ns: Vec<u8>,
    /// The caller.
    pub cred: Cred,
    /// The existing inode.
    pub target: Obj,
    /// The new name.
    pub at: Loc,
}

impl Op for Link {
    const NAME: &'static str = "ns.link";
    type Reply = Attr;

    fn replaced(txn: &mut Txn, made: Option<u64>) -> BoxFuture<'_, OpResult<Attr>> {
        crate::hooks::made_attr(txn, made)
    }

    fn hook(&self) -> Option<crate::hooks::HookCall<'_>> {
        let who = (&self.ns[..], &self.cred);
        let op = crate::hooks::HookOp::Link;
        Some(crate::hooks::HookCall::new(op, who, &self.at, None, 0))
    }

    fn hook_result(reply: &Attr) -> Option<&Attr> {
        Some(reply)
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, txn: &'a mut Txn) -> BoxFuture<'a, OpResult<Attr>> {
        Box::pin(async move {
            let ns = namespace_cached(ctx, txn, &self.ns).await?;
            let t = object(txn, &ns, &self.target, &self.cred).await?;
            if t.kind.is_dir() {
                return fail(Errno::EPERM, "hard links to directories are not allowed");
            }
            let loc = locate(txn, &ns, &self.at, &self.cred).await?;
            loc.dir
                .check(&self.cred, MAY_WRITE | MAY_EXEC, "link in the parent")?;
            must_be_free(txn, &loc).await?;
            let mut a = must_attr(txn, t.id).await?;
            if a.nlink >= LINK_MAX {
                return fail(
                    Errno::EMLINK,
                    format!("inode {} has {} links", a.id, a.nlink),
                );
            }
            let now = now_ns();
            a.nlink += 1;
            a.ctime = a.ctime.max(now);
            txn.put(&keys::attr_key(a.id), &a.encode())?;
            txn.put(
                &keys::dentry_key(loc.dir.id, &loc.name),
                &Dentry {
                    id: a.id,
                    kind: a.kind(),
                }
                .encode(),
            )?;
            touch_dir(txn, loc.dir.id, 1, 0, now)?;
            Ok(a)
        })
    }
}
