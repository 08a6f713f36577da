//! `rename`/`renameat2`: moves an entry, replacing the destination as rename(2) says, or
//! exchanging two entries, atomically.
//!
//! The flow, all in one transaction:
//! 1. Resolve both parents (recorded Index reads, so a concurrent move of an ancestor aborts
//!    this transaction) and read both entries.
//! 2. Refuse what POSIX refuses: a missing source, a directory over a non-directory and vice
//!    versa, a non-empty directory as destination, a directory into its own subtree (found by
//!    walking parent pointers up from the destination's directory), sticky-bit violations.
//! 3. Move the directory entry, the Index entry of a directory, and a directory's parent
//!    pointer and name; drop a replaced destination; fix both parents' counts by delta
//!    records.

use indexnode::{Cred, MAY_EXEC, MAY_WRITE};
use metastore::{keys, Attr, Dentry};
use serde::{Deserialize, Serialize};
use tafdb::{BoxFuture, Txn};

use crate::api::Loc;
use crate::ctx::{now_ns, Ctx};
use crate::error::{fail, Errno, OpResult};
use crate::ops::common::{check_sticky, drop_dir, drop_link, index_entry_of, touch_dir};
use crate::resolve::{
    attr_stable, dentry, locate, must_attr, must_attr_stable, namespace, Located, Ns,
};
use crate::service::Op;

/// `RENAME_NOREPLACE`: fail with `EEXIST` instead of replacing.
pub const RENAME_NOREPLACE: u32 = 1;
/// `RENAME_EXCHANGE`: swap two existing entries.
pub const RENAME_EXCHANGE: u32 = 2;

/// Renames `from` to `to`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Rename {
    /// The namespace.
    pub ns: Vec<u8>,
    /// The caller.
    pub cred: Cred,
    /// The entry to move.
    pub from: Loc,
    /// Where it goes.
    pub to: Loc,
    /// [`RENAME_NOREPLACE`] or [`RENAME_EXCHANGE`] or 0.
    pub flags: u32,
}

fn show(n: &[u8]) -> String {
    String::from_utf8_lossy(n).into_owned()
}

/// Fails with `EINVAL` if directory `moved` is `dir` or one of its ancestors.
pub async fn not_into_itself(txn: &mut Txn, moved: u64, dir: u64) -> OpResult<()> {
    let mut cur = dir;
    // Parent pointers form a tree rooted at a namespace root (whose parent is itself). The
    // bound guards against a damaged loop.
    for _ in 0..100_000 {
        if cur == moved {
            return fail(
                Errno::EINVAL,
                "cannot move a directory into its own subtree",
            );
        }
        let Some(a) = attr_stable(txn, cur).await? else {
            return fail(Errno::ENOENT, format!("directory {cur} vanished"));
        };
        if a.parent == cur {
            return Ok(());
        }
        cur = a.parent;
    }
    fail(Errno::EIO, "the parent chain does not reach a root")
}

/// Points directory `a` (read stably) at its new parent and name. Field updates, not a new
/// record: the counts and times that creates in the directory change by delta records keep
/// commuting with the move.
pub fn relink_dir(txn: &mut Txn, a: &Attr, to: &Located, now: u64) -> OpResult<Attr> {
    let mut b = a.clone();
    b.parent = to.dir.id;
    b.target = to.name.clone();
    b.ctime = b.ctime.max(now);
    let key = keys::attr_key(a.id);
    for op in metastore::attr::delta::changes(a, &b) {
        txn.delta(&key, op)?;
    }
    Ok(b)
}

/// Rewrites directory `a`'s parent pointer, name and Index entry for its new place.
fn move_dir(txn: &mut Txn, a: &Attr, from: &Located, to: &Located, now: u64) -> OpResult<()> {
    let b = relink_dir(txn, a, to, now)?;
    txn.delete(&indexnode::index_key(from.dir.id, &from.name))?;
    txn.put(
        &indexnode::index_key(to.dir.id, &to.name),
        &index_entry_of(&b).encode(),
    )?;
    Ok(())
}

fn put_entry(txn: &mut Txn, at: &Located, a: &Attr) -> OpResult<()> {
    txn.put(
        &keys::dentry_key(at.dir.id, &at.name),
        &Dentry {
            id: a.id,
            kind: a.kind(),
        }
        .encode(),
    )?;
    Ok(())
}

impl Op for Rename {
    const NAME: &'static str = "ns.rename";
    type Reply = ();

    fn replaced(_txn: &mut Txn, _made: Option<u64>) -> BoxFuture<'_, OpResult<()>> {
        Box::pin(async { Ok(()) })
    }

    fn hook(&self) -> Option<crate::hooks::HookCall<'_>> {
        let who = (&self.ns[..], &self.cred);
        let op = crate::hooks::HookOp::Rename;
        Some(crate::hooks::HookCall::new(
            op,
            who,
            &self.from,
            Some(&self.to),
            self.flags,
        ))
    }

    fn run<'a>(&'a self, _ctx: &'a Ctx, txn: &'a mut Txn) -> BoxFuture<'a, OpResult<()>> {
        Box::pin(async move {
            if self.flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
                || self.flags == RENAME_NOREPLACE | RENAME_EXCHANGE
            {
                return fail(Errno::EINVAL, format!("rename flags {:#x}", self.flags));
            }
            let ns = namespace(txn, &self.ns).await?;
            let from = locate(txn, &ns, &self.from, &self.cred).await?;
            let to = locate(txn, &ns, &self.to, &self.cred).await?;
            from.dir
                .check(&self.cred, MAY_WRITE | MAY_EXEC, "rename from the parent")?;
            to.dir
                .check(&self.cred, MAY_WRITE | MAY_EXEC, "rename into the parent")?;
            let Some(sd) = dentry(txn, from.dir.id, &from.name).await? else {
                return fail(
                    Errno::ENOENT,
                    format!("{:?} does not exist", show(&from.name)),
                );
            };
            let dd = dentry(txn, to.dir.id, &to.name).await?;
            if dd.is_some() && self.flags & RENAME_NOREPLACE != 0 {
                // Even onto itself or another link of the same inode: the name exists.
                return fail(Errno::EEXIST, format!("{:?} exists", show(&to.name)));
            }
            if from.dir.id == to.dir.id && from.name == to.name {
                return Ok(());
            }
            if dd.is_some_and(|d| d.id == sd.id) {
                // Two names of one inode: rename(2) does nothing.
                return Ok(());
            }
            // Stably: what rename uses of the source (its type, owner and mode, its place)
            // never changes by delta records, which creates inside a directory write.
            let sa = must_attr_stable(txn, sd.id).await?;
            check_sticky(&from.dir, sa.uid, &self.cred, &from.name)?;
            let now = now_ns();
            let exchange = self.flags & RENAME_EXCHANGE != 0;
            let da = match dd {
                Some(d) if exchange => Some(must_attr_stable(txn, d.id).await?),
                Some(d) => Some(must_attr(txn, d.id).await?),
                None if exchange => {
                    return fail(
                        Errno::ENOENT,
                        format!("{:?} does not exist", show(&to.name)),
                    )
                }
                None => None,
            };
            if let Some(da) = &da {
                if self.flags & RENAME_NOREPLACE != 0 {
                    return fail(Errno::EEXIST, format!("{:?} exists", show(&to.name)));
                }
                check_sticky(&to.dir, da.uid, &self.cred, &to.name)?;
            }
            let moves_parent = from.dir.id != to.dir.id;
            if sa.kind().is_dir() && moves_parent {
                not_into_itself(txn, sa.id, to.dir.id).await?;
                if !self.cred.may(sa.mode, sa.uid, sa.gid, MAY_WRITE) {
                    return fail(
                        Errno::EACCES,
                        "moving a directory to another parent needs write permission on it",
                    );
                }
            }
            if exchange {
                let Some(da) = da else {
                    return fail(Errno::ENOENT, "exchange with a missing entry");
                };
                if da.kind().is_dir()
                    && moves_parent
                    && !self.cred.may(da.mode, da.uid, da.gid, MAY_WRITE)
                {
                    return fail(
                        Errno::EACCES,
                        "moving a directory to another parent needs write permission on it",
                    );
                }
                exchange_entries(txn, &from, &to, &sa, &da, moves_parent, now).await?;
                return Ok(());
            }
            if let Some(da) = &da {
                replace(txn, &ns, &to, &sa, da, now).await?;
            }
            txn.delete(&keys::dentry_key(from.dir.id, &from.name))?;
            put_entry(txn, &to, &sa)?;
            let dir = i64::from(sa.kind().is_dir());
            if sa.kind().is_dir() {
                move_dir(txn, &sa, &from, &to, now)?;
            } else {
                txn.delta(&keys::attr_key(sa.id), metastore::attr::delta::ctime(now))?;
            }
            if moves_parent {
                touch_dir(txn, from.dir.id, -1, -dir, now)?;
                touch_dir(txn, to.dir.id, 1, dir, now)?;
            } else {
                touch_dir(txn, from.dir.id, 0, 0, now)?;
            }
            Ok(())
        })
    }
}

/// Drops destination `da` that `sa` replaces (its entry is overwritten by the caller).
async fn replace(
    txn: &mut Txn,
    ns: &Ns<'_>,
    to: &Located,
    sa: &Attr,
    da: &Attr,
    now: u64,
) -> OpResult<()> {
    match (sa.kind().is_dir(), da.kind().is_dir()) {
        (true, false) => fail(
            Errno::ENOTDIR,
            format!("{:?} is not a directory", show(&to.name)),
        ),
        (false, true) => fail(
            Errno::EISDIR,
            format!("{:?} is a directory", show(&to.name)),
        ),
        (true, true) => {
            drop_dir(txn, ns, da, to.dir.id, &to.name).await?;
            // The replaced directory's link to its parent goes; the entry count stays.
            touch_dir(txn, to.dir.id, -1, -1, now)
        }
        (false, false) => {
            drop_link(txn, ns, da, now).await?;
            touch_dir(txn, to.dir.id, -1, 0, now)
        }
    }
}

async fn exchange_entries(
    txn: &mut Txn,
    from: &Located,
    to: &Located,
    sa: &Attr,
    da: &Attr,
    moves_parent: bool,
    now: u64,
) -> OpResult<()> {
    if da.kind().is_dir() && moves_parent {
        not_into_itself(txn, da.id, from.dir.id).await?;
    }
    // Index entries first: both names may hold one, and each must end up with the other's.
    for (a, at) in [(sa, from), (da, to)] {
        if a.kind().is_dir() {
            txn.delete(&indexnode::index_key(at.dir.id, &at.name))?;
        }
    }
    for (a, old, new) in [(sa, from, to), (da, to, from)] {
        put_entry(txn, new, a)?;
        if a.kind().is_dir() {
            let b = relink_dir(txn, a, new, now)?;
            txn.put(
                &indexnode::index_key(new.dir.id, &new.name),
                &index_entry_of(&b).encode(),
            )?;
        } else {
            txn.delta(&keys::attr_key(a.id), metastore::attr::delta::ctime(now))?;
        }
        let _ = old;
    }
    let (s, d) = (i64::from(sa.kind().is_dir()), i64::from(da.kind().is_dir()));
    if moves_parent {
        touch_dir(txn, from.dir.id, 0, d - s, now)?;
        touch_dir(txn, to.dir.id, 0, s - d, now)?;
    } else {
        touch_dir(txn, from.dir.id, 0, 0, now)?;
    }
    Ok(())
}
