//! `readlink`: a symlink's target.

use indexnode::Cred;
use metastore::FileType;
use serde::{Deserialize, Serialize};
use tafdb::{BoxFuture, Txn};

use crate::api::Obj;
use crate::ctx::Ctx;
use crate::error::{fail, Errno, OpResult};
use crate::resolve::{must_attr, namespace_cached, object};
use crate::service::Op;

/// Reads the target of symlink `obj` (a final symlink in a path is not followed).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Readlink {
    /// The namespace.
    pub ns: Vec<u8>,
    /// The caller.
    pub cred: Cred,
    /// The symlink.
    pub obj: Obj,
}

impl Op for Readlink {
    const NAME: &'static str = "ns.readlink";
    type Reply = Vec<u8>;
    const MUTATES: bool = false;

    fn run<'a>(&'a self, ctx: &'a Ctx, txn: &'a mut Txn) -> BoxFuture<'a, OpResult<Vec<u8>>> {
        Box::pin(async move {
            let ns = namespace_cached(ctx, txn, &self.ns).await?;
            let obj = match &self.obj {
                Obj::Path { path, .. } => Obj::Path {
                    path: path.clone(),
                    follow: false,
                },
                o => o.clone(),
            };
            let t = object(txn, &ns, &obj, &self.cred).await?;
            let a = must_attr(txn, t.id).await?;
            if a.kind() != FileType::Symlink {
                return fail(Errno::EINVAL, "not a symbolic link");
            }
            Ok(a.target)
        })
    }
}
