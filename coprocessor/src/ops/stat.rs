//! `stat`/`lstat`/`getattr`/`lookup`: an inode's attributes.

use indexnode::Cred;
use metastore::Attr;
use serde::{Deserialize, Serialize};
use tafdb::{BoxFuture, Txn};

use crate::api::Obj;
use crate::ctx::Ctx;
use crate::error::OpResult;
use crate::resolve::{must_attr, namespace_cached, object};
use crate::service::Op;

/// Reads the attributes of `obj`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stat {
    /// The namespace.
    pub ns: Vec<u8>,
    /// The caller.
    pub cred: Cred,
    /// What to stat.
    pub obj: Obj,
}

impl Op for Stat {
    const NAME: &'static str = "ns.stat";
    type Reply = Attr;
    const MUTATES: bool = false;

    fn run<'a>(&'a self, ctx: &'a Ctx, txn: &'a mut Txn) -> BoxFuture<'a, OpResult<Attr>> {
        Box::pin(async move {
            let ns = namespace_cached(ctx, txn, &self.ns).await?;
            let t = object(txn, &ns, &self.obj, &self.cred).await?;
            must_attr(txn, t.id).await
        })
    }
}
