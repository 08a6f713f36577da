//! `mkdir`: one Index entry, one inode record, one directory entry, and delta records on the
//! parent, so that concurrent mkdirs in one parent never conflict.

use indexnode::{Cred, MAY_EXEC, MAY_WRITE};
use metastore::{Attr, FileType};
use serde::{Deserialize, Serialize};
use tafdb::{BoxFuture, Txn};

use crate::api::Loc;
use crate::ctx::Ctx;
use crate::error::OpResult;
use crate::ops::common::{create, must_be_free, NewInode};
use crate::resolve::{locate, namespace_cached};
use crate::service::Op;

/// Makes directory `at` with permission `mode` (the caller applies its umask).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Mkdir {
    /// The namespace.
    pub ns: Vec<u8>,
    /// The caller.
    pub cred: Cred,
    /// The new directory.
    pub at: Loc,
    /// Permission bits.
    pub mode: u32,
}

impl Op for Mkdir {
    const NAME: &'static str = "ns.mkdir";
    type Reply = Attr;

    fn replaced(txn: &mut Txn, made: Option<u64>) -> BoxFuture<'_, OpResult<Attr>> {
        crate::hooks::made_attr(txn, made)
    }

    fn hook(&self) -> Option<crate::hooks::HookCall<'_>> {
        let who = (&self.ns[..], &self.cred);
        let op = crate::hooks::HookOp::Mkdir;
        Some(crate::hooks::HookCall::new(
            op, who, &self.at, None, self.mode,
        ))
    }

    fn hook_result(reply: &Attr) -> Option<&Attr> {
        Some(reply)
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, txn: &'a mut Txn) -> BoxFuture<'a, OpResult<Attr>> {
        Box::pin(async move {
            let ns = namespace_cached(ctx, txn, &self.ns).await?;
            let loc = locate(txn, &ns, &self.at, &self.cred).await?;
            loc.dir
                .check(&self.cred, MAY_WRITE | MAY_EXEC, "mkdir in the parent")?;
            must_be_free(txn, &loc).await?;
            let new = NewInode {
                kind: FileType::Directory,
                perm: self.mode,
                rdev: 0,
                target: Vec::new(),
            };
            create(ctx, txn, &ns, &loc, &self.cred, new).await
        })
    }
}
