//! `ns create`: a new namespace with an empty root directory.

use indexnode::Cred;
use metastore::{keys, name, Attr, FileType};
use serde::{Deserialize, Serialize};
use tafdb::{BoxFuture, DeltaOp, Txn};

use crate::api::NsInfo;
use crate::ctx::{now_ns, Ctx};
use crate::error::{fail, Errno, FsError, OpResult};
use crate::ops::common::index_entry_of;
use crate::service::Op;

/// Creates namespace `name` whose root is owned by the caller with permission `mode`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NsCreate {
    /// The namespace's name (the rules of a file name).
    pub name: Vec<u8>,
    /// The caller, who owns the root.
    pub cred: Cred,
    /// The root's permission bits.
    pub mode: u32,
}

impl Op for NsCreate {
    const NAME: &'static str = "ns.ns_create";
    type Reply = NsInfo;

    fn run<'a>(&'a self, ctx: &'a Ctx, txn: &'a mut Txn) -> BoxFuture<'a, OpResult<NsInfo>> {
        Box::pin(async move {
            name::check_name(&self.name)
                .map_err(|e| FsError::new(Errno::EINVAL, format!("namespace name: {e}")))?;
            if txn.get(&keys::namespace_key(&self.name)).await?.is_some() {
                return fail(
                    Errno::EEXIST,
                    format!("namespace {:?} exists", String::from_utf8_lossy(&self.name)),
                );
            }
            let id = ctx.alloc_id().await?;
            let now = now_ns();
            let root = Attr {
                id,
                mode: FileType::Directory.bits() | (self.mode & 0o7777),
                uid: self.cred.uid,
                gid: self.cred.gid,
                nlink: 2,
                entries: 0,
                size: 0,
                atime: now,
                mtime: now,
                ctime: now,
                rdev: 0,
                parent: id,
                ns: id,
                target: Vec::new(),
            };
            txn.put(&keys::namespace_key(&self.name), &id.to_le_bytes())?;
            txn.put(
                &indexnode::root_key(&self.name),
                &index_entry_of(&root).encode(),
            )?;
            txn.put(&keys::attr_key(id), &root.encode())?;
            txn.delta(&keys::nsstat_key(id), DeltaOp::Add { offset: 0, by: 1 })?;
            Ok(NsInfo {
                name: self.name.clone(),
                root: id,
            })
        })
    }
}
