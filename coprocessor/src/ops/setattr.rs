//! `setattr`: chmod, chown, truncate and utimens, with the POSIX permission rules.

use indexnode::{Cred, MAY_WRITE};
use metastore::attr::S_IFMT;
use metastore::{keys, Attr, FileType};
use serde::{Deserialize, Serialize};
use tafdb::{BoxFuture, Txn};

use crate::api::Obj;
use crate::ctx::{now_ns, Ctx};
use crate::error::{fail, Errno, OpResult};
use crate::ops::common::{drop_privileges, index_entry_of, index_key_of, usage, S_ISGID};
use crate::resolve::{must_attr, must_attr_stable, namespace_cached, object};
use crate::service::Op;

/// A new time: the server's clock, or a given time in ns since the epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimeSet {
    /// The server's clock (`UTIME_NOW`).
    Now,
    /// This time.
    At(u64),
}

/// Changes the attributes of `obj` that are set; `ctime` becomes now.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SetAttr {
    /// The namespace.
    pub ns: Vec<u8>,
    /// The caller.
    pub cred: Cred,
    /// The inode (a final symlink in a path is followed).
    pub obj: Option<Obj>,
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (regular files).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<TimeSet>,
    /// New modification time.
    pub mtime: Option<TimeSet>,
}

fn owner_or_root(cred: &Cred, a: &Attr) -> bool {
    cred.is_root() || cred.uid == a.uid
}

impl Op for SetAttr {
    const NAME: &'static str = "ns.setattr";
    type Reply = Attr;

    fn run<'a>(&'a self, ctx: &'a Ctx, txn: &'a mut Txn) -> BoxFuture<'a, OpResult<Attr>> {
        Box::pin(async move {
            let Some(obj) = &self.obj else {
                return fail(Errno::EINVAL, "setattr without a target");
            };
            let ns = namespace_cached(ctx, txn, &self.ns).await?;
            let obj = match obj {
                Obj::Path { path, .. } => Obj::Path {
                    path: path.clone(),
                    follow: true,
                },
                o => o.clone(),
            };
            // chown(2): an id of -1 leaves that id unchanged.
            let (uid, gid) = (
                self.uid.filter(|&u| u != u32::MAX),
                self.gid.filter(|&g| g != u32::MAX),
            );
            let t = object(txn, &ns, &obj, &self.cred).await?;
            // A stable read and field updates: creates streaming into a directory (delta
            // records on its counts and times) do not conflict with a chmod of it.
            // A directory's mtime also moves by the creates' `Max` deltas, which a field set of
            // it would not commute with: setting a directory's mtime reads and rewrites the
            // whole record (and so conflicts with those creates, as it must).
            let whole = t.kind.is_dir() && self.mtime.is_some();
            let old = if whole {
                must_attr(txn, t.id).await?
            } else {
                must_attr_stable(txn, t.id).await?
            };
            let nothing = self.mode.is_none()
                && uid.is_none()
                && gid.is_none()
                && self.size.is_none()
                && self.atime.is_none()
                && self.mtime.is_none();
            if nothing {
                // A request that changes nothing writes nothing (and bumps no ctime).
                return Ok(old);
            }
            let mut a = old.clone();
            let cred = &self.cred;
            let now = now_ns();
            if let Some(m) = self.mode {
                if m & S_IFMT != 0 {
                    return fail(Errno::EINVAL, "setattr cannot change the file type");
                }
                // What a write or truncate by someone else does (the kernel sends it along with
                // a truncate: "kill suid/sgid"): allowed to whoever may write the file.
                let drops_privileges = m & 0o7777 == drop_privileges(a.mode) & 0o7777
                    && m & 0o7777 != a.mode & 0o7777
                    && cred.may(a.mode, a.uid, a.gid, MAY_WRITE);
                if !owner_or_root(cred, &a) && !drops_privileges {
                    return fail(Errno::EPERM, "only the owner may change the mode");
                }
                let mut perm = m & 0o7777;
                if !cred.is_root() && !cred.in_group(a.gid) {
                    perm &= !S_ISGID;
                }
                a.mode = (a.mode & S_IFMT) | perm;
            }
            if uid.is_some() || gid.is_some() {
                let uid = uid.unwrap_or(a.uid);
                let gid = gid.unwrap_or(a.gid);
                if !cred.is_root() {
                    // As Linux's chown_ok/chgrp_ok: even an unchanged owner or group may only be
                    // given by the owner.
                    if cred.uid != a.uid {
                        return fail(Errno::EPERM, "only the owner may chown or chgrp");
                    }
                    if uid != a.uid {
                        return fail(Errno::EPERM, "only root may change the owner");
                    }
                    if gid != a.gid && !cred.in_group(gid) {
                        return fail(
                            Errno::EPERM,
                            "the owner may only change the group to one of theirs",
                        );
                    }
                }
                if !a.kind().is_dir() {
                    // chown(2).
                    a.mode = drop_privileges(a.mode);
                }
                a.uid = uid;
                a.gid = gid;
            }
            if let Some(size) = self.size {
                match a.kind() {
                    FileType::Directory => return fail(Errno::EISDIR, "truncate of a directory"),
                    FileType::Regular => {}
                    _ => return fail(Errno::EINVAL, "truncate of a special file"),
                }
                if size > i64::MAX as u64 {
                    return fail(Errno::EFBIG, format!("size {size}"));
                }
                if !cred.may(old.mode, old.uid, old.gid, MAY_WRITE) {
                    return fail(Errno::EACCES, "truncate needs write permission");
                }
                usage(txn, &ns, 0, size as i64 - a.size as i64)?;
                a.size = size;
                a.mtime = now;
                if !cred.is_root() {
                    // A truncate by an unprivileged caller.
                    a.mode = drop_privileges(a.mode);
                }
            }
            for (set, field) in [(self.atime, 0), (self.mtime, 1)] {
                let Some(set) = set else { continue };
                let value = match set {
                    TimeSet::At(t) => {
                        if !owner_or_root(cred, &old) {
                            return fail(Errno::EPERM, "only the owner may set explicit times");
                        }
                        t
                    }
                    TimeSet::Now => {
                        if !owner_or_root(cred, &old)
                            && !cred.may(old.mode, old.uid, old.gid, MAY_WRITE)
                        {
                            return fail(Errno::EACCES, "setting times needs write permission");
                        }
                        now
                    }
                };
                if field == 0 {
                    a.atime = value;
                } else {
                    a.mtime = value;
                }
            }
            a.ctime = a.ctime.max(now);
            let key = keys::attr_key(a.id);
            if whole {
                txn.put(&key, &a.encode())?;
            } else {
                for op in metastore::attr::delta::changes(&old, &a) {
                    txn.delta(&key, op)?;
                }
            }
            if a.kind().is_dir() && (a.mode != old.mode || a.uid != old.uid || a.gid != old.gid) {
                txn.put(&index_key_of(&ns, &a), &index_entry_of(&a).encode())?;
            }
            Ok(a)
        })
    }
}
