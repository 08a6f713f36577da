//! `getxattr`.

use indexnode::Cred;
use metastore::keys;
use serde::{Deserialize, Serialize};
use tafdb::{BoxFuture, Txn};

use crate::api::Obj;
use crate::ctx::Ctx;
use crate::error::{fail, Errno, OpResult};
use crate::ops::xattr_common::{check_access, check_name, Access};
use crate::resolve::namespace_cached;
use crate::service::Op;

/// Reads extended attribute `name` of `obj`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct XattrGet {
    /// The namespace.
    pub ns: Vec<u8>,
    /// The caller.
    pub cred: Cred,
    /// The inode.
    pub obj: Obj,
    /// The attribute's name.
    pub name: Vec<u8>,
}

impl Op for XattrGet {
    const NAME: &'static str = "ns.xattr_get";
    type Reply = Vec<u8>;
    const MUTATES: bool = false;

    fn run<'a>(&'a self, ctx: &'a Ctx, txn: &'a mut Txn) -> BoxFuture<'a, OpResult<Vec<u8>>> {
        Box::pin(async move {
            check_name(&self.name)?;
            let ns = namespace_cached(ctx, txn, &self.ns).await?;
            let id =
                check_access(txn, &ns, &self.obj, &self.cred, &self.name, Access::Read).await?;
            match txn.get(&keys::xattr_key(id, &self.name)).await? {
                Some(v) => Ok(v),
                None => fail(Errno::ENODATA, "no such attribute"),
            }
        })
    }
}
