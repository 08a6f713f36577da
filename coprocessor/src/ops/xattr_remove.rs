//! `removexattr`.

use indexnode::Cred;
use metastore::{attr::delta, keys};
use serde::{Deserialize, Serialize};
use tafdb::{BoxFuture, Txn};

use crate::api::Obj;
use crate::ctx::{now_ns, Ctx};
use crate::error::{fail, Errno, OpResult};
use crate::ops::xattr_common::{check_access, check_name, Access};
use crate::resolve::namespace_cached;
use crate::service::Op;

/// Removes extended attribute `name` of `obj`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct XattrRemove {
    /// The namespace.
    pub ns: Vec<u8>,
    /// The caller.
    pub cred: Cred,
    /// The inode.
    pub obj: Obj,
    /// The attribute's name.
    pub name: Vec<u8>,
}

impl Op for XattrRemove {
    const NAME: &'static str = "ns.xattr_remove";
    type Reply = ();
    const FREES_SPACE: bool = true;

    fn run<'a>(&'a self, ctx: &'a Ctx, txn: &'a mut Txn) -> BoxFuture<'a, OpResult<()>> {
        Box::pin(async move {
            check_name(&self.name)?;
            let ns = namespace_cached(ctx, txn, &self.ns).await?;
            let id =
                check_access(txn, &ns, &self.obj, &self.cred, &self.name, Access::Write).await?;
            let key = keys::xattr_key(id, &self.name);
            if txn.get(&key).await?.is_none() {
                return fail(Errno::ENODATA, "no such attribute");
            }
            txn.delete(&key)?;
            txn.delta(&keys::attr_key(id), delta::ctime(now_ns()))?;
            Ok(())
        })
    }
}
