//! `unlink`: removes a name of a non-directory; the inode goes with its last link.

use indexnode::Cred;
use metastore::keys;
use serde::{Deserialize, Serialize};
use tafdb::{BoxFuture, Txn};

use crate::api::Loc;
use crate::ctx::{now_ns, Ctx};
use crate::error::{fail, Errno, OpResult};
use crate::ops::common::{check_sticky, drop_link, existing_entry, touch_dir};
use crate::resolve::{must_attr, namespace_cached};
use crate::service::Op;

/// Removes entry `at`, which must not be a directory.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Unlink {
    /// The namespace.
    pub ns: Vec<u8>,
    /// The caller.
    pub cred: Cred,
    /// The entry.
    pub at: Loc,
}

impl Op for Unlink {
    const NAME: &'static str = "ns.unlink";
    type Reply = ();
    const FREES_SPACE: bool = true;

    fn replaced(_txn: &mut Txn, _made: Option<u64>) -> BoxFuture<'_, OpResult<()>> {
        Box::pin(async { Ok(()) })
    }

    fn hook(&self) -> Option<crate::hooks::HookCall<'_>> {
        let who = (&self.ns[..], &self.cred);
        let op = crate::hooks::HookOp::Unlink;
        Some(crate::hooks::HookCall::new(op, who, &self.at, None, 0))
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, txn: &'a mut Txn) -> BoxFuture<'a, OpResult<()>> {
        Box::pin(async move {
            let ns = namespace_cached(ctx, txn, &self.ns).await?;
            let (loc, d) = existing_entry(txn, &ns, &self.at, &self.cred, "unlink").await?;
            if d.kind.is_dir() {
                return fail(Errno::EISDIR, "unlink of a directory (use rmdir)");
            }
            let a = must_attr(txn, d.id).await?;
            check_sticky(&loc.dir, a.uid, &self.cred, &loc.name)?;
            let now = now_ns();
            txn.delete(&keys::dentry_key(loc.dir.id, &loc.name))?;
            drop_link(txn, &ns, &a, now).await?;
            touch_dir(txn, loc.dir.id, -1, 0, now)
        })
    }
}
