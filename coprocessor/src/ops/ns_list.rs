//! `ns list`: every namespace in the store.

use metastore::keys;
use serde::{Deserialize, Serialize};
use tafdb::{BoxFuture, Txn};

use crate::api::NsInfo;
use crate::ctx::Ctx;
use crate::error::{fail, Errno, OpResult};
use crate::service::Op;

/// Lists the namespaces, in name order.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NsList {}

impl Op for NsList {
    const NAME: &'static str = "ns.ns_list";
    type Reply = Vec<NsInfo>;
    const MUTATES: bool = false;

    fn run<'a>(&'a self, _ctx: &'a Ctx, txn: &'a mut Txn) -> BoxFuture<'a, OpResult<Vec<NsInfo>>> {
        Box::pin(async move {
            let range = keys::namespace_range();
            let prefix = range.start.len();
            let mut out = Vec::new();
            for (k, v) in txn.scan(&range, usize::MAX).await? {
                let Ok(root) = <[u8; 8]>::try_from(v.as_slice()) else {
                    return fail(Errno::EIO, "a namespace record is damaged");
                };
                out.push(NsInfo {
                    name: k[prefix..].to_vec(),
                    root: u64::from_le_bytes(root),
                });
            }
            Ok(out)
        })
    }
}
