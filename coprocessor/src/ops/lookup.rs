//! `lookup` (DirectStat): a directory path resolved in one call against the Index table alone,
//! returning the directory's id and permission attributes. What a client needs to act inside
//! a directory by id (the inode form of the API, as a FUSE client does) without a `stat` that
//! also reads the Meta table.

use indexnode::{Cred, IndexEntry};
use serde::{Deserialize, Serialize};
use tafdb::{BoxFuture, Txn};

use crate::ctx::Ctx;
use crate::error::OpResult;
use crate::resolve::{directory, namespace_cached};
use crate::service::Op;

/// Resolves directory `path`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Lookup {
    /// The namespace.
    pub ns: Vec<u8>,
    /// The caller (search permission is checked on every directory on the way).
    pub cred: Cred,
    /// An absolute, normalized path that must name a directory.
    pub path: Vec<u8>,
}

impl Op for Lookup {
    const NAME: &'static str = "ns.lookup";
    type Reply = IndexEntry;
    const MUTATES: bool = false;

    fn run<'a>(&'a self, ctx: &'a Ctx, txn: &'a mut Txn) -> BoxFuture<'a, OpResult<IndexEntry>> {
        Box::pin(async move {
            let ns = namespace_cached(ctx, txn, &self.ns).await?;
            directory(txn, &ns, &self.path, &self.cred).await
        })
    }
}
