//! `listxattr`.

use indexnode::Cred;
use metastore::keys;
use serde::{Deserialize, Serialize};
use tafdb::{BoxFuture, Txn};

use crate::api::Obj;
use crate::ctx::Ctx;
use crate::error::OpResult;
use crate::ops::xattr_common::{check_access, Access};
use crate::resolve::namespace_cached;
use crate::service::Op;

/// Lists the extended attribute names of `obj`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct XattrList {
    /// The namespace.
    pub ns: Vec<u8>,
    /// The caller.
    pub cred: Cred,
    /// The inode.
    pub obj: Obj,
}

impl Op for XattrList {
    const NAME: &'static str = "ns.xattr_list";
    type Reply = Vec<Vec<u8>>;
    const MUTATES: bool = false;

    fn run<'a>(&'a self, ctx: &'a Ctx, txn: &'a mut Txn) -> BoxFuture<'a, OpResult<Vec<Vec<u8>>>> {
        Box::pin(async move {
            let ns = namespace_cached(ctx, txn, &self.ns).await?;
            let id = check_access(txn, &ns, &self.obj, &self.cred, b"", Access::List).await?;
            let rows = txn.scan(&keys::xattr_range(id), usize::MAX).await?;
            Ok(rows
                .into_iter()
                .filter_map(|(k, _)| keys::xattr_name(id, &k).map(<[u8]>::to_vec))
                .collect())
        })
    }
}
