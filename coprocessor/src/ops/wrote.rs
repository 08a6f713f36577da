//! `wrote`: a mount reports that a file's data changed: its size grows to cover the bytes
//! written, its mtime and ctime become now.
//!
//! File data does not go through the namespace: a mount writes it to the chunk store and then
//! tells the namespace, once per flush rather than once per `write(2)`. Two mounts writing one
//! file each report their own end; the size is the larger (a report never shrinks a file: that
//! is a truncate, `setattr`).

use indexnode::{Cred, MAY_WRITE};
use metastore::{keys, Attr, FileType};
use serde::{Deserialize, Serialize};
use tafdb::{BoxFuture, Txn};

use crate::ctx::{now_ns, Ctx};
use crate::error::{fail, Errno, OpResult};
use crate::ops::common::{drop_privileges, usage};
use crate::resolve::{must_attr_stable, namespace_cached};
use crate::service::Op;

/// Records that regular file `ino` was written up to byte `end` (exclusive).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Wrote {
    /// The namespace.
    pub ns: Vec<u8>,
    /// The writer: root (a mount, which checked the permission when the file was opened), or
    /// a caller with write permission on the file.
    pub cred: Cred,
    /// The file.
    pub ino: u64,
    /// One past the last byte written.
    pub end: u64,
}

impl Op for Wrote {
    const NAME: &'static str = "ns.wrote";
    type Reply = Attr;

    fn run<'a>(&'a self, ctx: &'a Ctx, txn: &'a mut Txn) -> BoxFuture<'a, OpResult<Attr>> {
        Box::pin(async move {
            let ns = namespace_cached(ctx, txn, &self.ns).await?;
            // A stable read and field sets, as setattr: a write to a file does not conflict
            // with creates in its directory.
            let old = must_attr_stable(txn, self.ino).await?;
            if old.ns != ns.root.id {
                return fail(
                    Errno::ENOENT,
                    format!("inode {} is not in this namespace", self.ino),
                );
            }
            match old.kind() {
                FileType::Regular => {}
                FileType::Directory => return fail(Errno::EISDIR, "a write to a directory"),
                _ => return fail(Errno::EINVAL, "a write to a special file"),
            }
            if self.end > i64::MAX as u64 {
                return fail(Errno::EFBIG, format!("a write up to byte {}", self.end));
            }
            let cred = &self.cred;
            if !cred.is_root() && !cred.may(old.mode, old.uid, old.gid, MAY_WRITE) {
                return fail(Errno::EACCES, "a write needs write permission");
            }
            let mut a = old.clone();
            let now = now_ns();
            if self.end > a.size {
                usage(txn, &ns, 0, (self.end - a.size) as i64)?;
                a.size = self.end;
            }
            a.mtime = a.mtime.max(now);
            a.ctime = a.ctime.max(now);
            if !cred.is_root() {
                a.mode = drop_privileges(a.mode);
            }
            let key = keys::attr_key(a.id);
            for op in metastore::attr::delta::changes(&old, &a) {
                txn.delta(&key, op)?;
            }
            Ok(a)
        })
    }
}
