//! `setxattr`.

use indexnode::Cred;
use metastore::{attr::delta, keys};
use serde::{Deserialize, Serialize};
use tafdb::{BoxFuture, Txn};

use crate::api::Obj;
use crate::ctx::{now_ns, Ctx};
use crate::error::{fail, Errno, OpResult};
use crate::ops::xattr_common::{
    check_access, check_name, usage, Access, MAX_LIST, MAX_TOTAL, MAX_VALUE,
};
use crate::resolve::namespace_cached;
use crate::service::Op;

/// `XATTR_CREATE`: fail with `EEXIST` if the attribute exists.
pub const XATTR_CREATE: u32 = 1;
/// `XATTR_REPLACE`: fail with `ENODATA` if it does not.
pub const XATTR_REPLACE: u32 = 2;

/// Sets extended attribute `name` of `obj` to `value`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct XattrSet {
    /// The namespace.
    pub ns: Vec<u8>,
    /// The caller.
    pub cred: Cred,
    /// The inode.
    pub obj: Obj,
    /// The attribute's name, with its class prefix (`user.`, `trusted.`, ...).
    pub name: Vec<u8>,
    /// The value (at most 64 KiB).
    pub value: Vec<u8>,
    /// [`XATTR_CREATE`], [`XATTR_REPLACE`] or 0.
    pub flags: u32,
}

impl Op for XattrSet {
    const NAME: &'static str = "ns.xattr_set";
    type Reply = ();

    fn run<'a>(&'a self, ctx: &'a Ctx, txn: &'a mut Txn) -> BoxFuture<'a, OpResult<()>> {
        Box::pin(async move {
            check_name(&self.name)?;
            if self.value.len() > MAX_VALUE {
                return fail(
                    Errno::E2BIG,
                    format!("value of {} bytes exceeds {MAX_VALUE}", self.value.len()),
                );
            }
            if self.flags & !(XATTR_CREATE | XATTR_REPLACE) != 0
                || self.flags == XATTR_CREATE | XATTR_REPLACE
            {
                return fail(Errno::EINVAL, format!("xattr flags {:#x}", self.flags));
            }
            let ns = namespace_cached(ctx, txn, &self.ns).await?;
            let id =
                check_access(txn, &ns, &self.obj, &self.cred, &self.name, Access::Write).await?;
            let key = keys::xattr_key(id, &self.name);
            let exists = txn.get(&key).await?.is_some();
            if exists && self.flags & XATTR_CREATE != 0 {
                return fail(Errno::EEXIST, "the attribute exists");
            }
            if !exists && self.flags & XATTR_REPLACE != 0 {
                return fail(Errno::ENODATA, "no such attribute");
            }
            let used = usage(txn, id, &self.name).await?;
            if used.list + self.name.len() + 1 > MAX_LIST
                || used.total + self.name.len() + self.value.len() > MAX_TOTAL
            {
                return fail(
                    Errno::ENOSPC,
                    format!(
                        "the inode's extended attributes would take more than {MAX_TOTAL} bytes \
                         (names and values) or list in more than {MAX_LIST}"
                    ),
                );
            }
            txn.put(&key, &self.value)?;
            txn.delta(&keys::attr_key(id), delta::ctime(now_ns()))?;
            Ok(())
        })
    }
}
