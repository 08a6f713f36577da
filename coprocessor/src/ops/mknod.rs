//! `create`/`mknod`: a regular file, fifo, socket or device node.

use indexnode::{Cred, MAY_EXEC, MAY_WRITE};
use metastore::{Attr, FileType};
use serde::{Deserialize, Serialize};
use tafdb::{BoxFuture, Txn};

use crate::api::Loc;
use crate::ctx::Ctx;
use crate::error::{fail, Errno, OpResult};
use crate::ops::common::{create, must_be_free, NewInode};
use crate::resolve::{locate, namespace_cached};
use crate::service::Op;

/// Makes a non-directory inode at `at`. `mode` carries the type bits (none means a regular
/// file) and the permission bits; it fails with `EEXIST` if the name is taken.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Mknod {
    /// The namespace.
    pub ns: Vec<u8>,
    /// The caller.
    pub cred: Cred,
    /// The new entry.
    pub at: Loc,
    /// Type and permission bits.
    pub mode: u32,
    /// Device number of a device node.
    pub rdev: u32,
}

impl Op for Mknod {
    const NAME: &'static str = "ns.mknod";
    type Reply = Attr;

    fn replaced(txn: &mut Txn, made: Option<u64>) -> BoxFuture<'_, OpResult<Attr>> {
        crate::hooks::made_attr(txn, made)
    }

    fn hook(&self) -> Option<crate::hooks::HookCall<'_>> {
        let who = (&self.ns[..], &self.cred);
        let op = crate::hooks::HookOp::Create;
        Some(crate::hooks::HookCall::new(
            op, who, &self.at, None, self.mode,
        ))
    }

    fn hook_result(reply: &Attr) -> Option<&Attr> {
        Some(reply)
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, txn: &'a mut Txn) -> BoxFuture<'a, OpResult<Attr>> {
        Box::pin(async move {
            let kind = if self.mode & metastore::attr::S_IFMT == 0 {
                FileType::Regular
            } else {
                match FileType::from_mode(self.mode) {
                    Some(FileType::Directory) => {
                        return fail(Errno::EINVAL, "mknod cannot make a directory (use mkdir)")
                    }
                    Some(FileType::Symlink) => {
                        return fail(Errno::EINVAL, "mknod cannot make a symlink (use symlink)")
                    }
                    Some(k) => k,
                    None => {
                        return fail(
                            Errno::EINVAL,
                            format!("mode {:o} has no file type", self.mode),
                        )
                    }
                }
            };
            if matches!(kind, FileType::CharDevice | FileType::BlockDevice) && !self.cred.is_root()
            {
                // Linux needs CAP_MKNOD for device nodes; fifos and sockets are for anyone.
                return fail(Errno::EPERM, "only root may make device nodes");
            }
            let ns = namespace_cached(ctx, txn, &self.ns).await?;
            let loc = locate(txn, &ns, &self.at, &self.cred).await?;
            loc.dir
                .check(&self.cred, MAY_WRITE | MAY_EXEC, "create in the parent")?;
            must_be_free(txn, &loc).await?;
            let new = NewInode {
                kind,
                perm: self.mode,
                rdev: self.rdev,
                target: Vec::new(),
            };
            create(ctx, txn, &ns, &loc, &self.cred, new).await
        })
    }
}
