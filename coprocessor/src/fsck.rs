//! The namespace checker: reads the whole store at one snapshot and verifies the invariants
//! every operation must keep.
//!
//! - Every record decodes.
//! - Every directory entry's parent is an existing directory, and its inode exists with the
//!   type the entry claims.
//! - The Index table holds exactly the directories: one entry per directory entry of a
//!   directory (same id, mode, owner), one per namespace root, nothing else.
//! - A directory has exactly one entry naming it, and its parent pointer and stored name match
//!   it; a root's parent is itself.
//! - Link counts add up: a directory's is 2 + its subdirectories, another inode's is the
//!   number of entries naming it. A directory's entry count is its number of entries.
//! - No dangling inodes: every inode is reachable from a namespace root (this also rules out
//!   directory cycles), and every extended attribute belongs to an inode.
//! - Each namespace's usage counters equal its reachable inodes and file bytes.

use std::collections::{BTreeMap, HashMap, HashSet};

use metastore::keys::{self, MetaKey};
use metastore::{Attr, Dentry, FileType};
use tafdb::{Db, KeyRange};

/// What fsck found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Namespaces.
    pub namespaces: u64,
    /// Directories (roots included).
    pub directories: u64,
    /// Other inodes.
    pub files: u64,
    /// Directory entries.
    pub entries: u64,
    /// Broken invariants, one line each.
    pub problems: Vec<String>,
}

impl Report {
    /// Whether every invariant holds.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} namespaces, {} directories, {} other inodes, {} entries: {}",
            self.namespaces,
            self.directories,
            self.files,
            self.entries,
            if self.is_clean() {
                "clean".to_string()
            } else {
                format!("{} problems", self.problems.len())
            }
        )?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

fn show(n: &[u8]) -> String {
    String::from_utf8_lossy(n).into_owned()
}

/// Checks every namespace in `db`. `progress` hears about each phase.
pub async fn check(db: &Db, progress: &(dyn Fn(&str) + Sync)) -> tafdb::Result<Report> {
    let mut r = Report::default();
    // Every read is at one snapshot, so that operations committing meanwhile (fsck runs on a
    // live server) cannot make a consistent namespace look broken. The snapshot is held open,
    // so that a check longer than the MVCC window does not lose it.
    let snap = db.snapshot()?;
    let ts = snap.ts();
    progress("reading the namespace registry");
    let registry = db.dump_at(&keys::namespace_range(), ts).await?;
    progress("reading the Index table");
    let index = db.dump_at(&indexnode::index_table(), ts).await?;
    progress("reading the Meta table");
    let meta = db.dump_at(&keys::meta_table(), ts).await?;
    progress("checking");
    let mut problems = Vec::new();
    let mut roots: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    let prefix = keys::namespace_range().start.len();
    for (k, v) in &registry {
        match <[u8; 8]>::try_from(v.as_slice()) {
            Ok(b) => {
                roots.insert(k[prefix..].to_vec(), u64::from_le_bytes(b));
            }
            Err(_) => problems.push(format!(
                "namespace {:?}: damaged record",
                show(&k[prefix..])
            )),
        }
    }
    r.namespaces = roots.len() as u64;
    let mut attrs: HashMap<u64, Attr> = HashMap::new();
    let mut children: HashMap<u64, Vec<(Vec<u8>, Dentry)>> = HashMap::new();
    let mut xattr_owners: Vec<u64> = Vec::new();
    for (k, v) in &meta {
        match keys::parse(k) {
            Some(MetaKey::Attr(id)) => match Attr::decode(v) {
                Ok(a) if a.id == id => {
                    attrs.insert(id, a);
                }
                Ok(a) => problems.push(format!("inode {id}: record says id {}", a.id)),
                Err(e) => problems.push(format!("inode {id}: {e}")),
            },
            Some(MetaKey::Dentry(pid, name)) => match Dentry::decode(v) {
                Ok(d) => {
                    r.entries += 1;
                    children.entry(pid).or_default().push((name.to_vec(), d));
                }
                Err(e) => problems.push(format!("entry {pid}/{:?}: {e}", show(name))),
            },
            Some(MetaKey::Xattr(id, _)) => xattr_owners.push(id),
            None => problems.push(format!("unparseable Meta key {}", tafdb::error::escape(k))),
        }
    }
    // Index entries, by (pid, name).
    let mut index_map: HashMap<(u64, Vec<u8>), indexnode::IndexEntry> = HashMap::new();
    for (k, v) in &index {
        let Some((pid, name)) = indexnode::parse_key(k) else {
            problems.push(format!("unparseable Index key {}", tafdb::error::escape(k)));
            continue;
        };
        match indexnode::IndexEntry::decode(v) {
            Ok(e) => {
                index_map.insert((pid, name.to_vec()), e);
            }
            Err(e) => problems.push(format!("Index entry {pid}/{:?}: {e}", show(name))),
        }
    }
    let mut expected_index: HashSet<(u64, Vec<u8>)> = HashSet::new();
    let check_index = |problems: &mut Vec<String>, pid: u64, name: &[u8], a: &Attr| match index_map
        .get(&(pid, name.to_vec()))
    {
        None => problems.push(format!(
            "directory {} ({pid}/{:?}) has no Index entry",
            a.id,
            show(name)
        )),
        Some(e) if e.id != a.id || e.mode != a.mode || e.uid != a.uid || e.gid != a.gid => problems
            .push(format!(
                "Index entry {pid}/{:?} {e:?} disagrees with inode {} (mode {:o}, uid {}, gid {})",
                show(name),
                a.id,
                a.mode,
                a.uid,
                a.gid
            )),
        Some(_) => {}
    };
    // Namespace roots.
    for (name, root) in &roots {
        expected_index.insert((0, name.clone()));
        match attrs.get(root) {
            None => problems.push(format!(
                "namespace {:?}: root {root} is missing",
                show(name)
            )),
            Some(a) => {
                if !a.kind().is_dir() || a.parent != a.id {
                    problems.push(format!(
                        "namespace {:?}: root {root} is not a root directory",
                        show(name)
                    ));
                }
                check_index(&mut problems, 0, name, a);
            }
        }
    }
    // Entries: parents, targets, link counts.
    let mut links: HashMap<u64, u64> = HashMap::new();
    for (pid, list) in &children {
        match attrs.get(pid) {
            Some(p) if p.kind().is_dir() => {}
            Some(_) => problems.push(format!("entries under non-directory {pid}")),
            None => problems.push(format!(
                "{} entries under missing directory {pid}",
                list.len()
            )),
        }
        for (name, d) in list {
            *links.entry(d.id).or_default() += 1;
            let Some(a) = attrs.get(&d.id) else {
                problems.push(format!(
                    "entry {pid}/{:?} names missing inode {}",
                    show(name),
                    d.id
                ));
                continue;
            };
            if a.kind() != d.kind {
                problems.push(format!(
                    "entry {pid}/{:?} says {:?}, inode {} is {:?}",
                    show(name),
                    d.kind,
                    a.id,
                    a.kind()
                ));
            }
            if a.kind().is_dir() {
                expected_index.insert((*pid, name.clone()));
                check_index(&mut problems, *pid, name, a);
                if a.parent != *pid || a.target != *name {
                    problems.push(format!(
                        "directory {} is at {pid}/{:?} but records parent {} name {:?}",
                        a.id,
                        show(name),
                        a.parent,
                        show(&a.target)
                    ));
                }
            }
        }
    }
    for (key, e) in &index_map {
        if !expected_index.contains(key) {
            problems.push(format!(
                "Index entry {}/{:?} -> {} is not a directory entry",
                key.0,
                show(&key.1),
                e.id
            ));
        }
    }
    let root_ids: HashSet<u64> = roots.values().copied().collect();
    for a in attrs.values() {
        let n = links.get(&a.id).copied().unwrap_or(0);
        if a.kind().is_dir() {
            r.directories += 1;
            let list = children.get(&a.id).map(Vec::as_slice).unwrap_or_default();
            let subdirs = list.iter().filter(|(_, d)| d.kind.is_dir()).count() as u64;
            if a.nlink != 2 + subdirs {
                problems.push(format!(
                    "directory {}: nlink {} but {subdirs} subdirectories",
                    a.id, a.nlink
                ));
            }
            if a.entries != list.len() as u64 {
                problems.push(format!(
                    "directory {}: entry count {} but {} entries",
                    a.id,
                    a.entries,
                    list.len()
                ));
            }
            if root_ids.contains(&a.id) {
                if n != 0 {
                    problems.push(format!("root {} is named by {n} entries", a.id));
                }
            } else if n != 1 {
                problems.push(format!("directory {} is named by {n} entries", a.id));
            }
            if a.kind() == FileType::Directory && a.parent == a.id && !root_ids.contains(&a.id) {
                problems.push(format!("directory {} claims to be a root", a.id));
            }
        } else {
            r.files += 1;
            if a.nlink != n {
                problems.push(format!(
                    "inode {}: nlink {} but {n} entries name it",
                    a.id, a.nlink
                ));
            }
        }
    }
    for id in xattr_owners {
        if !attrs.contains_key(&id) {
            problems.push(format!("extended attribute of missing inode {id}"));
        }
    }
    // Reachability and usage, per namespace.
    let mut reached: HashSet<u64> = HashSet::new();
    for (name, root) in &roots {
        let mut seen: HashSet<u64> = HashSet::new();
        let mut bytes = 0u64;
        let mut todo = vec![*root];
        seen.insert(*root);
        while let Some(dir) = todo.pop() {
            for (_, d) in children.get(&dir).map(Vec::as_slice).unwrap_or_default() {
                if seen.insert(d.id) {
                    if let Some(a) = attrs.get(&d.id) {
                        if a.kind() == FileType::Regular {
                            bytes += a.size;
                        }
                    }
                    if d.kind.is_dir() {
                        todo.push(d.id);
                    }
                }
            }
        }
        let stat = db
            .dump_at(
                &KeyRange::new(
                    keys::nsstat_key(*root),
                    Some([keys::nsstat_key(*root), vec![0]].concat()),
                ),
                ts,
            )
            .await?;
        let field = |o: usize| {
            stat.first()
                .and_then(|(_, v)| v.get(o..o + 8))
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_le_bytes)
        };
        if field(0) != seen.len() as u64 || field(8) != bytes {
            problems.push(format!(
                "namespace {:?}: usage says {} inodes and {} bytes, the tree has {} and {bytes}",
                show(name),
                field(0),
                field(8),
                seen.len()
            ));
        }
        for id in &seen {
            if let Some(a) = attrs.get(id) {
                if a.ns != *root {
                    problems.push(format!(
                        "inode {id} is in namespace {:?} but records namespace root {}",
                        show(name),
                        a.ns
                    ));
                }
            }
        }
        reached.extend(seen);
    }
    for id in attrs.keys() {
        if !reached.contains(id) {
            problems.push(format!(
                "inode {id} is not reachable from any namespace root"
            ));
        }
    }
    problems.sort();
    r.problems = problems;
    Ok(r)
}
