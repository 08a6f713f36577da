//! Rules shared by the extended-attribute operations.
//!
//! Names carry a class prefix. `user.` attributes follow the file's permission bits (read to
//! get, write to set or remove); `trusted.` and `security.` attributes are root's to change, and
//! `trusted.` is root's to read. The inode record is read stably: its mode and owner matter
//! here, its link count and times do not.

use indexnode::{Cred, MAY_READ, MAY_WRITE};
use metastore::keys;
use tafdb::Txn;

use crate::api::Obj;
use crate::error::{fail, Errno, OpResult};
use crate::resolve::{attr_stable, object, Ns};

/// The longest value (Linux's `XATTR_SIZE_MAX`).
pub const MAX_VALUE: usize = 65_536;
/// The most bytes the names of one inode's attributes take in a list, a NUL after each
/// (Linux's `XATTR_LIST_MAX`), so that every list fits the largest buffer a caller can pass.
pub const MAX_LIST: usize = 65_536;
/// The most bytes (names and values) one inode's attributes take together. It bounds what a
/// set, a list or the unlink that drops them reads and writes in one transaction.
pub const MAX_TOTAL: usize = 256 << 10;

/// What one inode's attributes take, except `skip` (one being replaced).
pub struct Usage {
    /// Bytes of a list of the names (a NUL after each).
    pub list: usize,
    /// Bytes of names and values.
    pub total: usize,
}

/// Sums up inode `id`'s attributes, except `skip` (a recorded range read: concurrent sets on
/// one inode are serialized, so together they never pass the limits).
pub async fn usage(txn: &mut Txn, id: u64, skip: &[u8]) -> OpResult<Usage> {
    let rows = txn.scan(&keys::xattr_range(id), usize::MAX).await?;
    let mut u = Usage { list: 0, total: 0 };
    for (k, v) in &rows {
        let Some(name) = keys::xattr_name(id, k) else {
            continue;
        };
        if name != skip {
            u.list += name.len() + 1;
            u.total += name.len() + v.len();
        }
    }
    Ok(u)
}

/// What the caller wants to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read a value.
    Read,
    /// List the names.
    List,
    /// Set or remove.
    Write,
}

/// Checks an attribute name.
pub fn check_name(name: &[u8]) -> OpResult<()> {
    if name.is_empty() || name.len() > 255 || name.contains(&0) {
        return fail(Errno::ERANGE, "an xattr name is 1..=255 bytes without NUL");
    }
    if !["user.", "trusted.", "security.", "system."]
        .iter()
        .any(|p| name.starts_with(p.as_bytes()) && name.len() > p.len())
    {
        return fail(
            Errno::EINVAL,
            "an xattr name needs a class prefix: user., trusted., security. or system.",
        );
    }
    Ok(())
}

/// Resolves `obj` (following a final symlink) and checks `access`; returns the inode id.
pub async fn check_access(
    txn: &mut Txn,
    ns: &Ns<'_>,
    obj: &Obj,
    cred: &Cred,
    name: &[u8],
    access: Access,
) -> OpResult<u64> {
    let obj = match obj {
        Obj::Path { path, .. } => Obj::Path {
            path: path.clone(),
            follow: true,
        },
        o => o.clone(),
    };
    let t = object(txn, ns, &obj, cred).await?;
    let Some(a) = attr_stable(txn, t.id).await? else {
        return fail(Errno::ENOENT, format!("inode {} does not exist", t.id));
    };
    if cred.is_root() || access == Access::List {
        return Ok(a.id);
    }
    if name.starts_with(b"user.") {
        let want = if access == Access::Read {
            MAY_READ
        } else {
            MAY_WRITE
        };
        if !cred.may(a.mode, a.uid, a.gid, want) {
            return fail(Errno::EACCES, "permission denied on the inode");
        }
        return Ok(a.id);
    }
    if access == Access::Read && !name.starts_with(b"trusted.") {
        return Ok(a.id);
    }
    fail(Errno::EPERM, "only root may change this class of attribute")
}
