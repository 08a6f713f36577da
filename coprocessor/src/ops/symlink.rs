//! `symlink`: an inode whose record carries the target.

use indexnode::{Cred, MAY_EXEC, MAY_WRITE};
use metastore::{name, Attr, FileType};
use serde::{Deserialize, Serialize};
use tafdb::{BoxFuture, Txn};

use crate::api::Loc;
use crate::ctx::Ctx;
use crate::error::OpResult;
use crate::ops::common::{create, must_be_free, NewInode};
use crate::resolve::{locate, namespace_cached};
use crate::service::Op;

/// Makes symlink `at` pointing to `target` (any non-empty byte string without NUL, at most
/// 4096 bytes; it need not exist).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Symlink {
    /// The namespace.
    pub ns: Vec<u8>,
    /// The caller.
    pub cred: Cred,
    /// The new link.
    pub at: Loc,
    /// Where it points.
    pub target: Vec<u8>,
}

impl Op for Symlink {
    const NAME: &'static str = "ns.symlink";
    type Reply = Attr;

    fn replaced(txn: &mut Txn, made: Option<u64>) -> BoxFuture<'_, OpResult<Attr>> {
        crate::hooks::made_attr(txn, made)
    }

    fn hook(&self) -> Option<crate::hooks::HookCall<'_>> {
        let who = (&self.ns[..], &self.cred);
        let op = crate::hooks::HookOp::Symlink;
        Some(crate::hooks::HookCall::new(op, who, &self.at, None, 0o777))
    }

    fn hook_result(reply: &Attr) -> Option<&Attr> {
        Some(reply)
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, txn: &'a mut Txn) -> BoxFuture<'a, OpResult<Attr>> {
        Box::pin(async move {
            name::check_target(&self.target)?;
            let ns = namespace_cached(ctx, txn, &self.ns).await?;
            let loc = locate(txn, &ns, &self.at, &self.cred).await?;
            loc.dir
                .check(&self.cred, MAY_WRITE | MAY_EXEC, "symlink in the parent")?;
            must_be_free(txn, &loc).await?;
            let new = NewInode {
                kind: FileType::Symlink,
                perm: 0o777,
                rdev: 0,
                target: self.target.clone(),
            };
            create(ctx, txn, &ns, &loc, &self.cred, new).await
        })
    }
}
