//! `statfs`: a namespace's usage.

use indexnode::Cred;
use metastore::keys;
use serde::{Deserialize, Serialize};
use tafdb::{BoxFuture, Txn};

use crate::api::StatFs as Usage;
use crate::ctx::Ctx;
use crate::error::OpResult;
use crate::resolve::namespace_cached;
use crate::service::Op;

/// Reads namespace `ns`'s usage counters.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatFs {
    /// The namespace.
    pub ns: Vec<u8>,
    /// The caller.
    pub cred: Cred,
}

impl Op for StatFs {
    const NAME: &'static str = "ns.statfs";
    type Reply = Usage;
    const MUTATES: bool = false;

    fn run<'a>(&'a self, ctx: &'a Ctx, txn: &'a mut Txn) -> BoxFuture<'a, OpResult<Usage>> {
        Box::pin(async move {
            let ns = namespace_cached(ctx, txn, &self.ns).await?;
            let v = txn
                .get(&keys::nsstat_key(ns.root.id))
                .await?
                .unwrap_or_default();
            let field = |o: usize| {
                v.get(o..o + 8)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map_or(0, u64::from_le_bytes)
            };
            Ok(Usage {
                inodes: field(0),
                bytes: field(8),
                name_max: metastore::name::NAME_MAX as u32,
                block_size: 4096,
            })
        })
    }
}
