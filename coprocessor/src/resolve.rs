//! Path resolution over the Index table, with symlinks, and the record helpers every operation
//! uses.
//!
//! A path is resolved in one transaction: the directories come from the Index table
//! ([`indexnode`]), one point read per level, each recorded so that a concurrent rename or
//! removal of any ancestor aborts the transaction. A component that is not in the Index table
//! is looked up in the Meta table: a symlink there is spliced into the remaining steps (at most
//! [`MAX_SYMLINKS`] times, then `ELOOP`), anything else ends the walk (`ENOTDIR` if more
//! components follow, `ENOENT` if it does not exist). Search permission is checked on every
//! directory entered.

use std::borrow::Cow;
use std::collections::VecDeque;

use indexnode::{Cred, IndexEntry, MAY_EXEC};
use metastore::name::{self, Step};
use metastore::{keys, Attr, Dentry, FileType};
use tafdb::Txn;

use crate::api::{Loc, Obj};
use crate::ctx::{CacheUse, Ctx};
use crate::error::{fail, Errno, FsError, OpResult};

/// How many symlinks one resolution may follow (Linux's limit).
pub const MAX_SYMLINKS: u32 = 40;

/// A namespace, as a transaction sees it.
/// It borrows its name from the request and its path cache from the [`Ctx`]: an operation
/// makes one per attempt, and an owned copy would cost an allocation and, for the cache,
/// reference-count writes that every core's lookups share.
#[derive(Clone, Copy, Debug)]
pub struct Ns<'c> {
    /// Its name.
    pub name: &'c [u8],
    /// Its root's Index entry.
    pub root: IndexEntry,
    /// The path cache path resolutions may use (see [`namespace_cached`]).
    pub(crate) cache: Option<CacheUse<'c>>,
}

/// Reads namespace `name` (a recorded read of its root's Index entry). Path resolutions in
/// it read every directory from the Index table: what a rename needs, since its loop check
/// depends on every ancestor of the destination staying as it read them.
pub async fn namespace<'c>(txn: &mut Txn, name: &'c [u8]) -> OpResult<Ns<'c>> {
    name::check_name(name).map_err(|e| FsError::new(Errno::EINVAL, format!("namespace: {e}")))?;
    match indexnode::get(txn, 0, name).await? {
        Some(root) => Ok(Ns {
            name,
            root,
            cache: None,
        }),
        None => fail(
            Errno::ENOENT,
            format!("no namespace {:?}", String::from_utf8_lossy(name)),
        ),
    }
}

/// [`namespace`], whose path resolutions take the leading directories of a deep path from
/// the path cache when `ctx` has one usable now. Their Index entries are then not read in the
/// transaction: an operation that must conflict with a rename of any ancestor uses
/// [`namespace`]. At least the last directory of a walk is always read, so an operation still
/// conflicts with the removal of the directory it acts in.
pub async fn namespace_cached<'c>(ctx: &'c Ctx, txn: &mut Txn, name: &'c [u8]) -> OpResult<Ns<'c>> {
    let mut ns = namespace(txn, name).await?;
    ns.cache = ctx.cache_use();
    Ok(ns)
}

/// A directory an operation acts in: its id and permission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dir {
    /// Its id.
    pub id: u64,
    /// Its mode.
    pub mode: u32,
    /// Its owner.
    pub uid: u32,
    /// Its group.
    pub gid: u32,
}

impl Dir {
    /// Whether `cred` may do `want` in it.
    pub fn allows(&self, cred: &Cred, want: u32) -> bool {
        cred.may(self.mode, self.uid, self.gid, want)
    }

    /// Fails with `EACCES` unless `cred` may do `want`.
    pub fn check(&self, cred: &Cred, want: u32, what: &str) -> OpResult<()> {
        if self.allows(cred, want) {
            Ok(())
        } else {
            fail(Errno::EACCES, format!("{what}: permission denied"))
        }
    }
}

impl From<IndexEntry> for Dir {
    fn from(e: IndexEntry) -> Dir {
        Dir {
            id: e.id,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
        }
    }
}

impl From<&Attr> for Dir {
    fn from(a: &Attr) -> Dir {
        Dir {
            id: a.id,
            mode: a.mode,
            uid: a.uid,
            gid: a.gid,
        }
    }
}

/// Reads inode `id`'s record (a recorded read).
pub async fn attr(txn: &mut Txn, id: u64) -> OpResult<Option<Attr>> {
    match txn.get(&keys::attr_key(id)).await? {
        Some(v) => Ok(Some(Attr::decode(&v)?)),
        None => Ok(None),
    }
}

/// Reads inode `id`'s record stably: concurrent delta records (link counts, times bumped by
/// operations inside a directory) do not abort the transaction, a rewrite or removal does.
pub async fn attr_stable(txn: &mut Txn, id: u64) -> OpResult<Option<Attr>> {
    match txn.get_stable(&keys::attr_key(id)).await? {
        Some(v) => Ok(Some(Attr::decode(&v)?)),
        None => Ok(None),
    }
}

/// Reads inode `id`'s record stably (see [`attr_stable`]); it must exist.
pub async fn must_attr_stable(txn: &mut Txn, id: u64) -> OpResult<Attr> {
    match attr_stable(txn, id).await? {
        Some(a) => Ok(a),
        None => fail(Errno::ENOENT, format!("inode {id} does not exist")),
    }
}

/// Reads inode `id`'s record, which must exist.
pub async fn must_attr(txn: &mut Txn, id: u64) -> OpResult<Attr> {
    match attr(txn, id).await? {
        Some(a) => Ok(a),
        None => fail(Errno::ENOENT, format!("inode {id} does not exist")),
    }
}

/// Reads entry `name` of directory `pid`.
pub async fn dentry(txn: &mut Txn, pid: u64, name: &[u8]) -> OpResult<Option<Dentry>> {
    match txn.get(&keys::dentry_key(pid, name)).await? {
        Some(v) => Ok(Some(Dentry::decode(&v)?)),
        None => Ok(None),
    }
}

fn show(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

/// Walks `steps` that must all be directories from `stack`, following symlinks.
async fn walk_dirs(
    txn: &mut Txn,
    stack: &mut Vec<IndexEntry>,
    mut steps: VecDeque<Cow<'_, [u8]>>,
    cred: &Cred,
    budget: &mut u32,
) -> OpResult<()> {
    while let Some(step) = steps.pop_front() {
        if &*step == b".." {
            if stack.len() > 1 {
                let gone = stack.pop();
                if let (Some(gone), Some(top)) = (gone, stack.last_mut()) {
                    if top.id == UNKNOWN {
                        *top = parent_entry(txn, gone.id).await?;
                    }
                }
            }
            continue;
        }
        let Some(top) = stack.last().copied() else {
            return fail(Errno::EIO, "path resolution lost its root");
        };
        if !top.allows(cred, MAY_EXEC) {
            return fail(
                Errno::EACCES,
                format!("search permission denied before {:?}", show(&step)),
            );
        }
        if let Some(e) = indexnode::get(txn, top.id, &step).await? {
            stack.push(e);
            continue;
        }
        match dentry(txn, top.id, &step).await? {
            None => return fail(Errno::ENOENT, format!("{:?} does not exist", show(&step))),
            Some(d) if d.kind == FileType::Symlink => {
                let target = follow(txn, d.id, budget).await?;
                let (absolute, tsteps) = name::split_target(&target)?;
                if absolute {
                    stack.truncate(1);
                }
                for s in tsteps.into_iter().rev() {
                    steps.push_front(match s {
                        Step::Parent => Cow::Borrowed(b".."),
                        Step::Name(n) => Cow::Owned(n.to_vec()),
                    });
                }
            }
            Some(d) if d.kind == FileType::Directory => {
                return fail(
                    Errno::EIO,
                    format!(
                        "directory {:?} is missing from the Index table",
                        show(&step)
                    ),
                )
            }
            Some(_) => {
                return fail(
                    Errno::ENOTDIR,
                    format!("{:?} is not a directory", show(&step)),
                )
            }
        }
    }
    Ok(())
}

/// The id of a directory a path-cache hit skipped: the stack holds it as a placeholder until a
/// `..` climbs to it (0 is the super-root, never a directory of a namespace).
const UNKNOWN: u64 = 0;

/// The entry of directory `id`'s parent, from the inode records (read stably): for a `..` that
/// climbs into the levels a cache hit skipped.
async fn parent_entry(txn: &mut Txn, id: u64) -> OpResult<IndexEntry> {
    let child = must_attr_stable(txn, id).await?;
    let p = must_attr_stable(txn, child.parent).await?;
    Ok(IndexEntry {
        id: p.id,
        mode: p.mode,
        uid: p.uid,
        gid: p.gid,
        locked: false,
    })
}

/// Walks `dirs`, the directories of a path of `total` components, from the namespace root
/// (`stack` holds only it), taking the leading ones from the path cache when `ns` has one (see
/// [`namespace_cached`]): a hit skips them, a miss walks them and fills the cache.
async fn walk_path(
    txn: &mut Txn,
    ns: &Ns<'_>,
    stack: &mut Vec<IndexEntry>,
    dirs: &[&[u8]],
    total: usize,
    cred: &Cred,
    budget: &mut u32,
) -> OpResult<()> {
    let steps = |from: usize, to: usize| -> VecDeque<Cow<'_, [u8]>> {
        dirs[from..to].iter().map(|n| Cow::Borrowed(*n)).collect()
    };
    let Some(cu) = ns.cache else {
        return walk_dirs(txn, stack, steps(0, dirs.len()), cred, budget).await;
    };
    // The last directory is always read in the transaction (see `namespace_cached`).
    let depth = cu.cache.depth_for(total).min(dirs.len().saturating_sub(1));
    if depth == 0 || stack.len() != 1 {
        return walk_dirs(txn, stack, steps(0, dirs.len()), cred, budget).await;
    }
    let ts = txn.start_ts();
    let hit = cu.cache.probe(ns.name, dirs, depth, ts, cred);
    let mut from = indexnode::cache::Start::Root(ns.root);
    let mut walked = 0;
    if let Some(h) = hit {
        stack.extend((1..h.depth).map(|_| IndexEntry {
            id: UNKNOWN,
            mode: 0,
            uid: 0,
            gid: 0,
            locked: false,
        }));
        stack.push(h.entry);
        from = indexnode::cache::Start::Hit(h);
        walked = h.depth;
    }
    if walked < depth {
        let before = *budget;
        walk_dirs(txn, stack, steps(walked, depth), cred, budget).await?;
        // Fill only a literal walk: every name a directory, no symlink followed.
        if *budget == before && stack.len() == depth + 1 {
            let tablet = cu.tablet;
            cu.cache.fill(
                ns.name,
                from,
                &dirs[..depth],
                &stack[walked + 1..],
                ts,
                |keys| tablet.still_current(keys, ts).unwrap_or(false),
            );
        }
    }
    walk_dirs(txn, stack, steps(depth, dirs.len()), cred, budget).await
}

async fn follow(txn: &mut Txn, id: u64, budget: &mut u32) -> OpResult<Vec<u8>> {
    if *budget == 0 {
        return fail(
            Errno::ELOOP,
            format!("more than {MAX_SYMLINKS} symbolic links"),
        );
    }
    *budget -= 1;
    Ok(must_attr(txn, id).await?.target)
}

/// Resolves `path` to a directory through the Index table alone (symlinks on the way
/// followed, `ENOTDIR` if the path ends at something else): the IndexNode's one-call lookup
/// ([`crate::ops::lookup`]). Every component but the last may come from the path cache.
pub async fn directory(
    txn: &mut Txn,
    ns: &Ns<'_>,
    path: &[u8],
    cred: &Cred,
) -> OpResult<IndexEntry> {
    let names = name::split_path(path)?;
    let mut stack = Vec::with_capacity(names.len() + 1);
    stack.push(ns.root);
    let mut budget = MAX_SYMLINKS;
    walk_path(txn, ns, &mut stack, &names, names.len(), cred, &mut budget).await?;
    match stack.last().copied() {
        Some(top) if top.id != UNKNOWN => Ok(top),
        _ => fail(Errno::EIO, "path resolution lost its root"),
    }
}

/// Where a [`locate`] landed: the parent directory and the entry's name. `stack` is the chain
/// of directories from the namespace root to the parent (path form only).
#[derive(Clone, Debug)]
pub struct Located {
    /// The parent directory.
    pub dir: Dir,
    /// The entry's name (validated).
    pub name: Vec<u8>,
}

/// Resolves the parent of an entry to create, remove or rename. The parent's existence is
/// protected by the transaction (its Index entry, or its inode record read stably).
pub async fn locate(txn: &mut Txn, ns: &Ns<'_>, loc: &Loc, cred: &Cred) -> OpResult<Located> {
    match loc {
        Loc::Path(path) => {
            let names = name::split_path(path)?;
            let Some((last, init)) = names.split_last() else {
                return fail(Errno::EBUSY, "the root directory cannot be the target");
            };
            let mut stack = Vec::with_capacity(names.len());
            stack.push(ns.root);
            let mut budget = MAX_SYMLINKS;
            walk_path(txn, ns, &mut stack, init, names.len(), cred, &mut budget).await?;
            let Some(top) = stack.last().copied() else {
                return fail(Errno::EIO, "path resolution lost its root");
            };
            top_search(top.into(), cred)?;
            Ok(Located {
                dir: top.into(),
                name: last.to_vec(),
            })
        }
        Loc::Entry { parent, name } => {
            name::check_name(name)?;
            let dir = dir_by_id(txn, ns, *parent, cred).await?;
            top_search(dir, cred)?;
            Ok(Located {
                dir,
                name: name.clone(),
            })
        }
    }
}

fn top_search(dir: Dir, cred: &Cred) -> OpResult<()> {
    dir.check(cred, MAY_EXEC, "search in the parent directory")
}

/// The deepest directory tree [`reachable`] climbs before it calls the parent chain damaged.
const MAX_DEPTH: usize = 100_000;

/// Fails with `EACCES` unless `cred` could reach directory `a` by a path: search permission
/// on every directory above it, as a path lookup checks. The by-id forms (an entry of a parent
/// id, an inode id) check this, so a guessed id does not bypass a 0700 directory. Root reaches
/// everything. Ancestors are read stably: their modes and owners change only by field sets.
pub async fn reachable(txn: &mut Txn, a: &Attr, cred: &Cred) -> OpResult<()> {
    if cred.is_root() || a.parent == a.id {
        return Ok(());
    }
    let mut cur = a.parent;
    for _ in 0..MAX_DEPTH {
        let Some(p) = attr_stable(txn, cur).await? else {
            return fail(Errno::ENOENT, format!("directory {cur} vanished"));
        };
        if !cred.may(p.mode, p.uid, p.gid, MAY_EXEC) {
            return fail(
                Errno::EACCES,
                format!("search permission on an ancestor (directory {cur}) denied"),
            );
        }
        if p.parent == p.id {
            return Ok(());
        }
        cur = p.parent;
    }
    fail(Errno::EIO, "the parent chain does not reach a root")
}

/// Directory `id` by its inode record, read stably; `cred` must be able to reach it (see
/// [`reachable`]).
pub async fn dir_by_id(txn: &mut Txn, ns: &Ns<'_>, id: u64, cred: &Cred) -> OpResult<Dir> {
    match attr_stable(txn, id).await? {
        // An inode of another namespace is as good as absent: ids must not cross namespaces.
        Some(a) if a.ns != ns.root.id => {
            fail(Errno::ENOENT, format!("directory {id} does not exist"))
        }
        Some(a) if a.kind().is_dir() => {
            reachable(txn, &a, cred).await?;
            Ok(Dir::from(&a))
        }
        Some(_) => fail(Errno::ENOTDIR, format!("inode {id} is not a directory")),
        None => fail(Errno::ENOENT, format!("directory {id} does not exist")),
    }
}

/// An existing inode an operation acts on.
#[derive(Clone, Debug)]
pub struct Target {
    /// Its id.
    pub id: u64,
    /// Its type.
    pub kind: FileType,
    /// The directory entry it was reached through (none for a namespace root or an inode id).
    pub entry: Option<Located>,
}

/// Resolves an existing inode.
pub async fn object(txn: &mut Txn, ns: &Ns<'_>, obj: &Obj, cred: &Cred) -> OpResult<Target> {
    match obj {
        Obj::Inode(id) | Obj::Handle(id) => {
            let vouched = matches!(obj, Obj::Handle(_));
            let a = must_attr(txn, *id).await?;
            if a.ns != ns.root.id {
                return fail(Errno::ENOENT, format!("inode {id} does not exist"));
            }
            // Ids are sequential: by id, a caller gets only what a path would give it. A
            // directory knows its parent, so its ancestors are checked; any other inode may
            // have many parents (hard links) and no pointer to them, so only its owner (or
            // root: a mount's attribute reads) may use its id.
            if a.kind().is_dir() {
                reachable(txn, &a, cred).await?;
            } else if !vouched && !cred.is_root() && cred.uid != a.uid {
                return fail(
                    Errno::EACCES,
                    format!("inode {id} by id is for its owner; use its path"),
                );
            }
            Ok(Target {
                id: *id,
                kind: a.kind(),
                entry: None,
            })
        }
        Obj::Entry { parent, name } => {
            let loc = locate(
                txn,
                ns,
                &Loc::Entry {
                    parent: *parent,
                    name: name.clone(),
                },
                cred,
            )
            .await?;
            entry_target(txn, loc).await
        }
        Obj::Path { path, follow: fol } => {
            let names = name::split_path(path)?;
            if names.is_empty() {
                return Ok(Target {
                    id: ns.root.id,
                    kind: FileType::Directory,
                    entry: None,
                });
            }
            let mut budget = MAX_SYMLINKS;
            let mut stack = Vec::with_capacity(names.len() + 1);
            stack.push(ns.root);
            // The steps left after a final symlink was spliced in (none before: the path's own
            // directories are walked from `names`, without a copy of each).
            let mut steps: VecDeque<Cow<'_, [u8]>> = VecDeque::new();
            let mut first = true;
            loop {
                // Walk everything but the last step as directories.
                let last = if std::mem::take(&mut first) {
                    let dirs = &names[..names.len() - 1];
                    walk_path(txn, ns, &mut stack, dirs, names.len(), cred, &mut budget).await?;
                    names.last().map(|n| Cow::Borrowed(*n))
                } else {
                    let last = steps.pop_back();
                    walk_dirs(txn, &mut stack, steps, cred, &mut budget).await?;
                    last
                };
                let Some(top) = stack.last().copied() else {
                    return fail(Errno::EIO, "path resolution lost its root");
                };
                let name = match last {
                    None => {
                        return Ok(Target {
                            id: top.id,
                            kind: FileType::Directory,
                            entry: None,
                        })
                    }
                    Some(n) if &*n == b".." => {
                        let mut id = ns.root.id;
                        if stack.len() > 1 {
                            if let (Some(gone), Some(top)) = (stack.pop(), stack.last()) {
                                id = if top.id == UNKNOWN {
                                    parent_entry(txn, gone.id).await?.id
                                } else {
                                    top.id
                                };
                            }
                        }
                        return Ok(Target {
                            id,
                            kind: FileType::Directory,
                            entry: None,
                        });
                    }
                    Some(n) => n,
                };
                top_search(top.into(), cred)?;
                let found = dentry(txn, top.id, &name).await?;
                match found {
                    Some(d) if d.kind == FileType::Symlink && *fol => {
                        let target = follow(txn, d.id, &mut budget).await?;
                        let (absolute, tsteps) = name::split_target(&target)?;
                        if absolute {
                            stack.truncate(1);
                        }
                        steps = tsteps
                            .into_iter()
                            .map(|s| match s {
                                Step::Parent => Cow::Borrowed(&b".."[..]),
                                Step::Name(n) => Cow::Owned(n.to_vec()),
                            })
                            .collect();
                    }
                    Some(d) => {
                        return Ok(Target {
                            id: d.id,
                            kind: d.kind,
                            entry: Some(Located {
                                dir: top.into(),
                                name: name.into_owned(),
                            }),
                        })
                    }
                    None => {
                        return fail(Errno::ENOENT, format!("{:?} does not exist", show(&name)))
                    }
                }
            }
        }
    }
}

async fn entry_target(txn: &mut Txn, loc: Located) -> OpResult<Target> {
    match dentry(txn, loc.dir.id, &loc.name).await? {
        Some(d) => Ok(Target {
            id: d.id,
            kind: d.kind,
            entry: Some(loc),
        }),
        None => fail(
            Errno::ENOENT,
            format!("{:?} does not exist", show(&loc.name)),
        ),
    }
}
