//! Pieces several operations share: making and dropping inodes, parent bookkeeping, sticky
//! directories, usage counters.

use indexnode::{Cred, IndexEntry};
use metastore::attr::delta;
use metastore::{keys, Attr, Dentry, FileType};
use tafdb::{DeltaOp, KeyRange, Txn};

use crate::ctx::{now_ns, Ctx};
use crate::error::{fail, Errno, OpResult};
use crate::resolve::{Dir, Located, Ns};

/// The setuid bit.
pub const S_ISUID: u32 = 0o4000;
/// The setgid bit.
pub const S_ISGID: u32 = 0o2000;
/// The sticky bit.
pub const S_ISVTX: u32 = 0o1000;

/// `mode` without the bits a change of a file's owner or contents drops, as Linux does: setuid,
/// and setgid when group execute is set (without it, setgid marks mandatory locking and stays).
pub fn drop_privileges(mode: u32) -> u32 {
    let mut m = mode & !S_ISUID;
    if m & 0o010 != 0 {
        m &= !S_ISGID;
    }
    m
}

/// The Index entry of a directory inode.
pub fn index_entry_of(a: &Attr) -> IndexEntry {
    IndexEntry {
        id: a.id,
        mode: a.mode,
        uid: a.uid,
        gid: a.gid,
        locked: false,
    }
}

/// The Index key of directory `a` (its parent and own name, or the namespace root's).
pub fn index_key_of(ns: &Ns<'_>, a: &Attr) -> Vec<u8> {
    if a.parent == a.id {
        indexnode::root_key(ns.name)
    } else {
        indexnode::index_key(a.parent, &a.target)
    }
}

/// Records a change in the namespace's usage counters.
pub fn usage(txn: &mut Txn, ns: &Ns<'_>, inodes: i64, bytes: i64) -> OpResult<()> {
    let key = keys::nsstat_key(ns.root.id);
    if inodes != 0 {
        txn.delta(
            &key,
            DeltaOp::Add {
                offset: 0,
                by: inodes,
            },
        )?;
    }
    if bytes != 0 {
        txn.delta(
            &key,
            DeltaOp::Add {
                offset: 8,
                by: bytes,
            },
        )?;
    }
    Ok(())
}

/// Bumps a directory's counts and times after an entry was added (`entries > 0`) or removed.
pub fn touch_dir(txn: &mut Txn, dir: u64, entries: i64, subdirs: i64, now: u64) -> OpResult<()> {
    let key = keys::attr_key(dir);
    if entries != 0 {
        txn.delta(&key, delta::entries(entries))?;
    }
    if subdirs != 0 {
        txn.delta(&key, delta::nlink(subdirs))?;
    }
    txn.delta(&key, delta::mtime(now))?;
    txn.delta(&key, delta::ctime(now))?;
    Ok(())
}

/// Fails unless `name` is free in `dir`.
pub async fn must_be_free(txn: &mut Txn, loc: &Located) -> OpResult<()> {
    if crate::resolve::dentry(txn, loc.dir.id, &loc.name)
        .await?
        .is_some()
    {
        return fail(
            Errno::EEXIST,
            format!("{:?} exists", String::from_utf8_lossy(&loc.name)),
        );
    }
    Ok(())
}

/// What a new inode looks like.
pub struct NewInode {
    /// Its type.
    pub kind: FileType,
    /// Permission bits (with setuid, setgid, sticky).
    pub perm: u32,
    /// Device number.
    pub rdev: u32,
    /// A symlink's target.
    pub target: Vec<u8>,
}

/// Creates an inode and its entry `loc` (which must be free): the inode record, the directory
/// entry, the Index entry of a directory, and the parent's counts by delta records.
pub async fn create(
    ctx: &Ctx,
    txn: &mut Txn,
    ns: &Ns<'_>,
    loc: &Located,
    cred: &Cred,
    new: NewInode,
) -> OpResult<Attr> {
    let id = ctx.alloc_id().await?;
    let now = now_ns();
    // BSD group semantics under a setgid directory, as Linux does.
    let (gid, mut perm) = if loc.dir.mode & S_ISGID != 0 {
        let p = if new.kind.is_dir() {
            new.perm | S_ISGID
        } else {
            new.perm
        };
        (loc.dir.gid, p)
    } else {
        (cred.gid, new.perm)
    };
    perm &= 0o7777;
    let is_dir = new.kind.is_dir();
    let a = Attr {
        id,
        mode: new.kind.bits() | perm,
        uid: cred.uid,
        gid,
        nlink: if is_dir { 2 } else { 1 },
        entries: 0,
        size: if new.kind == FileType::Symlink {
            new.target.len() as u64
        } else {
            0
        },
        atime: now,
        mtime: now,
        ctime: now,
        rdev: new.rdev,
        parent: if is_dir { loc.dir.id } else { 0 },
        ns: ns.root.id,
        target: if is_dir { loc.name.clone() } else { new.target },
    };
    txn.put(&keys::attr_key(id), &a.encode())?;
    txn.put(
        &keys::dentry_key(loc.dir.id, &loc.name),
        &Dentry { id, kind: new.kind }.encode(),
    )?;
    if is_dir {
        txn.put(
            &indexnode::index_key(loc.dir.id, &loc.name),
            &index_entry_of(&a).encode(),
        )?;
    }
    touch_dir(txn, loc.dir.id, 1, i64::from(is_dir), now)?;
    usage(txn, ns, 1, 0)?;
    Ok(a)
}

/// Whether `cred` may remove or rename an entry owned by `owner` from `dir` (sticky rules).
pub fn sticky_allows(dir: &Dir, owner: u32, cred: &Cred) -> bool {
    dir.mode & S_ISVTX == 0 || cred.is_root() || cred.uid == owner || cred.uid == dir.uid
}

/// Fails with `EPERM` when the sticky bit protects the entry.
pub fn check_sticky(dir: &Dir, owner: u32, cred: &Cred, name: &[u8]) -> OpResult<()> {
    if sticky_allows(dir, owner, cred) {
        Ok(())
    } else {
        fail(
            Errno::EPERM,
            format!(
                "{:?} is protected by the sticky bit of its directory",
                String::from_utf8_lossy(name)
            ),
        )
    }
}

/// Deletes every extended attribute of inode `id`.
pub async fn drop_xattrs(txn: &mut Txn, id: u64) -> OpResult<()> {
    let range: KeyRange = keys::xattr_range(id);
    loop {
        let rows = txn.scan(&range, 1024).await?;
        let n = rows.len();
        for (k, _) in rows {
            txn.delete(&k)?;
        }
        if n < 1024 {
            return Ok(());
        }
    }
}

/// Drops one link to a non-directory inode `a` (its entry is removed by the caller): the inode
/// goes when its last link does.
pub async fn drop_link(txn: &mut Txn, ns: &Ns<'_>, a: &Attr, now: u64) -> OpResult<()> {
    if a.nlink <= 1 {
        txn.delete(&keys::attr_key(a.id))?;
        drop_xattrs(txn, a.id).await?;
        let bytes = if a.kind() == FileType::Regular {
            -(a.size as i64)
        } else {
            0
        };
        usage(txn, ns, -1, bytes)?;
    } else {
        let mut b = a.clone();
        b.nlink -= 1;
        b.ctime = b.ctime.max(now);
        txn.put(&keys::attr_key(a.id), &b.encode())?;
    }
    Ok(())
}

/// Removes the empty directory `a` whose entry is `(pid, name)`: its Index entry, inode
/// record and extended attributes (the caller removes the entry and fixes the parent).
pub async fn drop_dir(txn: &mut Txn, ns: &Ns<'_>, a: &Attr, pid: u64, name: &[u8]) -> OpResult<()> {
    must_be_empty(txn, a.id, name).await?;
    txn.delete(&indexnode::index_key(pid, name))?;
    txn.delete(&keys::attr_key(a.id))?;
    drop_xattrs(txn, a.id).await?;
    usage(txn, ns, -1, 0)
}

/// Fails with `ENOTEMPTY` unless directory `id` has no entries. The scan is recorded, so a
/// concurrent create in it aborts one of the two transactions.
pub async fn must_be_empty(txn: &mut Txn, id: u64, name: &[u8]) -> OpResult<()> {
    if !txn.scan(&keys::dentry_range(id, b""), 1).await?.is_empty() {
        return fail(
            Errno::ENOTEMPTY,
            format!("{:?} is not empty", String::from_utf8_lossy(name)),
        );
    }
    Ok(())
}

/// Resolves the existing entry `at` that an operation will remove, checking write and search
/// permission on its parent (`what` names the operation in the error).
pub async fn existing_entry(
    txn: &mut Txn,
    ns: &Ns<'_>,
    at: &crate::api::Loc,
    cred: &Cred,
    what: &str,
) -> OpResult<(Located, Dentry)> {
    let loc = crate::resolve::locate(txn, ns, at, cred).await?;
    loc.dir.check(
        cred,
        indexnode::MAY_WRITE | indexnode::MAY_EXEC,
        &format!("{what} in the parent"),
    )?;
    match crate::resolve::dentry(txn, loc.dir.id, &loc.name).await? {
        Some(d) => Ok((loc, d)),
        None => fail(
            Errno::ENOENT,
            format!("{:?} does not exist", String::from_utf8_lossy(&loc.name)),
        ),
    }
}
