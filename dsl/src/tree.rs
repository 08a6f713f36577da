//! The tree-level host functions: the pieces the built-in operations are made of (resolve a
//! parent, check permission, read an entry, make an inode, drop a link or a directory, move
//! an entry, the parent's delta records), so that a script can do what an operation does,
//! step by step, in the call's transaction. `dsl/examples/native_ops.rhai` writes mkdir,
//! create, unlink, rmdir and rename with them and passes the namespace model test.
//!
//! Two opaque types travel between them: a `Place` (a parent directory and a name, as a
//! path resolved to it) and an `Inode` (an inode record as read). Scripts read their fields
//! (`place.dir_id`, `inode.nlink`, ...) but cannot forge them.

use coprocessor::ops::common::{self, NewInode};
use coprocessor::ops::rename::{not_into_itself, relink_dir};
use coprocessor::resolve::{self, Located, Ns};
use coprocessor::{Errno, FsError, OpError, OpResult};
use indexnode::{MAY_EXEC, MAY_READ, MAY_WRITE};
use metastore::{keys, Attr, Dentry, FileType};
use rhai::{Dynamic, Engine, ImmutableString, Map};
use tafdb::Txn;

use crate::host::{attr_map, bytes, int, kind_name, small, text, throw, with_call, Call, Res};
use crate::wait::wait;

/// An inode record, as a script holds it.
#[derive(Clone, Debug)]
pub struct Inode(Attr);

impl Inode {
    /// Its id.
    pub fn id(&self) -> u64 {
        self.0.id
    }
}

/// A parent directory and a name in it, resolved from a path with the caller's search
/// permissions.
#[derive(Clone, Debug)]
pub struct Place(Located);

fn want(rwx: &str) -> Res<u32> {
    let mut w = 0;
    for c in rwx.chars() {
        w |= match c {
            'r' => MAY_READ,
            'w' => MAY_WRITE,
            'x' => MAY_EXEC,
            _ => {
                return throw(&FsError::new(
                    Errno::EINVAL,
                    format!("permission {rwx:?}: use r, w and x"),
                ))
            }
        };
    }
    Ok(w)
}

fn kind_of(name: &str) -> Res<FileType> {
    Ok(match name {
        "file" => FileType::Regular,
        "dir" => FileType::Directory,
        "symlink" => FileType::Symlink,
        "fifo" => FileType::Fifo,
        "socket" => FileType::Socket,
        "char" => FileType::CharDevice,
        "block" => FileType::BlockDevice,
        _ => {
            return throw(&FsError::new(
                Errno::EINVAL,
                format!("no file type {name:?}"),
            ))
        }
    })
}

impl Call {
    /// Runs `f` on the call's transaction with its namespace resolved. A refusal is the
    /// script's to handle (these steps refuse before they write); a store error ends the call.
    fn step<T>(
        &self,
        exact: bool,
        f: impl for<'t> FnOnce(&'t mut Txn, Ns<'t>) -> tafdb::BoxFuture<'t, OpResult<T>>,
    ) -> Res<T> {
        self.count(1, 0)?;
        let mut g = self.txn.lock();
        let Some(txn) = g.as_mut() else {
            return throw(&FsError::new(
                Errno::EIO,
                "the call's transaction is in use",
            ));
        };
        let (ctx, name) = (&*self.ctx, &self.ns[..]);
        let r = wait(async move {
            let ns = if exact {
                resolve::namespace(txn, name).await?
            } else {
                resolve::namespace_cached(ctx, txn, name).await?
            };
            f(txn, ns).await
        });
        drop(g);
        match r {
            Ok(v) => Ok(v),
            Err(OpError::Fs(e)) => throw(&e),
            Err(e) => self.fail(e),
        }
    }
}

fn dentry_map(d: &Dentry) -> Dynamic {
    let mut m = Map::new();
    m.insert("id".into(), int(d.id));
    m.insert("kind".into(), Dynamic::from(kind_name(d.kind).to_string()));
    Dynamic::from_map(m)
}

/// Registers the tree-level functions on `e`.
pub(crate) fn register(e: &mut Engine) {
    e.register_type_with_name::<Inode>("Inode");
    e.register_type_with_name::<Place>("Place");
    e.register_get("id", |a: &mut Inode| int(a.0.id));
    e.register_get("kind", |a: &mut Inode| kind_name(a.0.kind()).to_string());
    e.register_get("mode", |a: &mut Inode| int(u64::from(a.0.mode)));
    e.register_get("uid", |a: &mut Inode| int(u64::from(a.0.uid)));
    e.register_get("gid", |a: &mut Inode| int(u64::from(a.0.gid)));
    e.register_get("nlink", |a: &mut Inode| int(a.0.nlink));
    e.register_get("entries", |a: &mut Inode| int(a.0.entries));
    e.register_get("size", |a: &mut Inode| int(a.0.size));
    e.register_get("parent", |a: &mut Inode| int(a.0.parent));
    e.register_fn("attrs", |a: &mut Inode| attr_map(&a.0));
    e.register_get("dir_id", |p: &mut Place| int(p.0.dir.id));
    e.register_get("dir_mode", |p: &mut Place| int(u64::from(p.0.dir.mode)));
    e.register_get("dir_uid", |p: &mut Place| int(u64::from(p.0.dir.uid)));
    e.register_get("dir_gid", |p: &mut Place| int(u64::from(p.0.dir.gid)));
    e.register_get("name", |p: &mut Place| text(&p.0.name));

    // Resolution and checks.
    let locate = |exact: bool| {
        move |path: Dynamic| -> Res<Place> {
            with_call(|c| {
                let path = coprocessor::api::Loc::Path(bytes(&path, "a path")?);
                let cred = c.cred.clone();
                c.step(exact, move |txn, ns| {
                    Box::pin(async move { resolve::locate(txn, &ns, &path, &cred).await })
                })
                .map(Place)
            })
        }
    };
    // The parent of an entry to make, remove or move; `locate_exact` reads every directory
    // on the way (what a rename's loop check needs), `locate` may use the path cache.
    e.register_fn("locate", locate(false));
    e.register_fn("locate_exact", locate(true));
    e.register_fn(
        "check",
        |p: &mut Place, rwx: ImmutableString, what: ImmutableString| -> Res<()> {
            with_call(|c| match p.0.dir.check(&c.cred, want(&rwx)?, &what) {
                Ok(()) => Ok(()),
                Err(OpError::Fs(e)) => throw(&e),
                Err(e) => c.fail(e),
            })
        },
    );
    e.register_fn("may", |a: &mut Inode, rwx: ImmutableString| -> Res<bool> {
        with_call(|c| Ok(c.cred.may(a.0.mode, a.0.uid, a.0.gid, want(&rwx)?)))
    });
    e.register_fn("check_sticky", |p: &mut Place, a: Inode| -> Res<()> {
        with_call(
            |c| match common::check_sticky(&p.0.dir, a.0.uid, &c.cred, &p.0.name) {
                Ok(()) => Ok(()),
                Err(OpError::Fs(e)) => throw(&e),
                Err(e) => c.fail(e),
            },
        )
    });

    // Reads.
    e.register_fn("dentry", |p: &mut Place| -> Res<Dynamic> {
        with_call(|c| {
            let (dir, name) = (p.0.dir.id, p.0.name.clone());
            let d = c.step(false, move |txn, _| {
                Box::pin(async move { resolve::dentry(txn, dir, &name).await })
            })?;
            Ok(d.as_ref().map_or(Dynamic::UNIT, dentry_map))
        })
    });
    let inode = |stable: bool| {
        move |id: i64| -> Res<Dynamic> {
            with_call(|c| {
                let id = crate::host::uint(id, "an inode id")?;
                let a = c.step(false, move |txn, _| {
                    Box::pin(async move {
                        if stable {
                            resolve::attr_stable(txn, id).await
                        } else {
                            resolve::attr(txn, id).await
                        }
                    })
                })?;
                Ok(a.map_or(Dynamic::UNIT, |a| Dynamic::from(Inode(a))))
            })
        }
    };
    // `inode_stable` conflicts only with a rewrite or removal of the record, not with the
    // delta records that creates inside a directory add.
    e.register_fn("inode", inode(false));
    e.register_fn("inode_stable", inode(true));

    // Changes.
    e.register_fn(
        "make",
        |p: &mut Place, kind: ImmutableString, perm: i64, target: Dynamic| -> Res<Inode> {
            with_call(|c| {
                let new = NewInode {
                    kind: kind_of(&kind)?,
                    perm: small(perm, "a mode")? & 0o7777,
                    rdev: 0,
                    target: if target.is_unit() {
                        Vec::new()
                    } else {
                        bytes(&target, "a symlink target")?
                    },
                };
                let (ctx, cred, loc) = (c.ctx.clone(), c.cred.clone(), p.0.clone());
                c.step(false, move |txn, ns| {
                    Box::pin(async move { common::create(&ctx, txn, &ns, &loc, &cred, new).await })
                })
                .map(Inode)
            })
        },
    );
    e.register_fn("remove_entry", |p: &mut Place| -> Res<()> {
        with_call(|c| {
            let key = keys::dentry_key(p.0.dir.id, &p.0.name);
            c.step(false, move |txn, _| {
                Box::pin(async move { Ok(txn.delete(&key)?) })
            })
        })
    });
    e.register_fn("put_entry", |p: &mut Place, a: Inode| -> Res<()> {
        with_call(|c| {
            let key = keys::dentry_key(p.0.dir.id, &p.0.name);
            let d = Dentry {
                id: a.0.id,
                kind: a.0.kind(),
            };
            c.step(false, move |txn, _| {
                Box::pin(async move { Ok(txn.put(&key, &d.encode())?) })
            })
        })
    });
    e.register_fn("drop_link", |a: Inode| -> Res<()> {
        with_call(|c| {
            let now = c.now;
            c.step(false, move |txn, ns| {
                Box::pin(async move { common::drop_link(txn, &ns, &a.0, now).await })
            })
        })
    });
    // Removes empty directory `a` named by `p` (ENOTEMPTY otherwise): its Index entry,
    // record and attributes; the caller removes the entry and fixes the parent.
    e.register_fn("drop_dir", |a: Inode, p: Place| -> Res<()> {
        with_call(|c| {
            let (pid, name) = (p.0.dir.id, p.0.name.clone());
            c.step(false, move |txn, ns| {
                Box::pin(async move { common::drop_dir(txn, &ns, &a.0, pid, &name).await })
            })
        })
    });
    e.register_fn(
        "touch_dir",
        |dir: i64, entries: i64, subdirs: i64| -> Res<()> {
            with_call(|c| {
                let (dir, now) = (crate::host::uint(dir, "a directory id")?, c.now);
                c.step(false, move |txn, _| {
                    Box::pin(async move { common::touch_dir(txn, dir, entries, subdirs, now) })
                })
            })
        },
    );
    e.register_fn("touch_ctime", |a: Inode| -> Res<()> {
        with_call(|c| {
            let (key, op) = (keys::attr_key(a.0.id), metastore::attr::delta::ctime(c.now));
            c.step(false, move |txn, _| {
                Box::pin(async move { Ok(txn.delta(&key, op)?) })
            })
        })
    });
    // Points directory `a` at its new place (field updates, which commute with the delta
    // records of creates inside it) and returns it as it now is.
    e.register_fn("relink_dir", |a: Inode, p: Place| -> Res<Inode> {
        with_call(|c| {
            let (to, now) = (p.0.clone(), c.now);
            c.step(false, move |txn, _| {
                Box::pin(async move { relink_dir(txn, &a.0, &to, now) })
            })
            .map(Inode)
        })
    });
    e.register_fn("index_remove", |p: &mut Place| -> Res<()> {
        with_call(|c| {
            let key = indexnode::index_key(p.0.dir.id, &p.0.name);
            c.step(false, move |txn, _| {
                Box::pin(async move { Ok(txn.delete(&key)?) })
            })
        })
    });
    e.register_fn("index_put", |p: &mut Place, a: Inode| -> Res<()> {
        with_call(|c| {
            let key = indexnode::index_key(p.0.dir.id, &p.0.name);
            let v = common::index_entry_of(&a.0).encode();
            c.step(false, move |txn, _| {
                Box::pin(async move { Ok(txn.put(&key, &v)?) })
            })
        })
    });
    // Fails with EINVAL if directory `moved` is `dir` or above it.
    e.register_fn("not_into_itself", |moved: i64, dir: i64| -> Res<()> {
        with_call(|c| {
            let moved = crate::host::uint(moved, "a directory id")?;
            let dir = crate::host::uint(dir, "a directory id")?;
            c.step(false, move |txn, _| {
                Box::pin(async move { not_into_itself(txn, moved, dir).await })
            })
        })
    });
}
