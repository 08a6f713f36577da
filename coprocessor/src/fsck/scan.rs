//! The scan: the Meta table in key order, page by page, merged with the walk's sorted
//! references (by inode id) and with the Index table (by `(parent, name)`, the order of
//! directory entries too).
//!
//! Keys come in groups per id: an inode's record, then (a directory's) entries, then its
//! extended attributes. The group's checks need only the group; the references naming the
//! inode are the next ones in the sorted stream.

use std::collections::{BTreeMap, HashMap};

use metastore::keys::{self, MetaKey};
use metastore::{Attr, Dentry, FileType};
use tafdb::{Db, Key, KeyRange, Value};

use super::sort::Sorted;
use super::{show, Problems, Ref, Report, Ticker};

pub(super) struct Scan<'a> {
    pub(super) db: &'a Db,
    pub(super) ts: u64,
    pub(super) page: usize,
    pub(super) index: &'a [(Key, Value)],
    pub(super) roots: &'a BTreeMap<Vec<u8>, u64>,
}

/// What the scan counted.
pub(super) struct Outcome {
    pub(super) report: Report,
    /// Per namespace root: the inodes reached from it and their file bytes.
    pub(super) usage: BTreeMap<u64, [u64; 2]>,
}

/// The group of keys of the inode being scanned.
struct Group {
    id: u64,
    /// Whether its record decoded (entries and attributes of a damaged record are not
    /// reported again as strays).
    valid: bool,
    dir: bool,
    nlink: u64,
    entries: u64,
    /// Entries and subdirectories seen.
    seen: u64,
    subdirs: u64,
}

struct State<'a, 'p> {
    s: &'a Scan<'a>,
    problems: &'p mut Problems,
    refs: Sorted,
    next_ref: Option<Ref>,
    /// The next Index entry not yet matched.
    index_at: usize,
    root_names: HashMap<u64, &'a [u8]>,
    group: Option<Group>,
    /// A parent id whose entries are strays (no directory record), and how many.
    strays: Option<(u64, u64, &'static str)>,
    /// The last inode whose stray extended attributes were reported.
    stray_xattrs: Option<u64>,
    out: Outcome,
}

const PHASE: &str = "checking inodes";

pub(super) async fn scan(
    s: &Scan<'_>,
    refs: Sorted,
    problems: &mut Problems,
    ticker: &mut Ticker<'_>,
    total: u64,
) -> tafdb::Result<Outcome> {
    ticker.phase(PHASE, total);
    let mut st = State {
        s,
        problems,
        refs,
        next_ref: None,
        index_at: 0,
        root_names: s.roots.iter().map(|(n, r)| (*r, n.as_slice())).collect(),
        group: None,
        strays: None,
        stray_xattrs: None,
        out: Outcome {
            report: Report::default(),
            usage: BTreeMap::new(),
        },
    };
    st.pull_ref()?;
    st.root_index_entries();
    let mut cursor = keys::meta_table();
    loop {
        let rows = s.db.scan_at(&cursor, s.ts, s.page).await?;
        for (k, v) in &rows {
            st.row(k, v)?;
        }
        ticker.tick(
            PHASE,
            st.out.report.directories + st.out.report.files,
            total,
        );
        match rows.last() {
            Some((k, _)) if rows.len() >= s.page => {
                cursor = KeyRange::new([k.as_slice(), &[0]].concat(), cursor.end.clone());
            }
            _ => break,
        }
    }
    st.close_group();
    st.flush_strays();
    // References past the last inode name missing ones; Index entries past the last entry
    // name no directory entry.
    st.refs_before(u64::MAX)?;
    while st.index_at < s.index.len() {
        st.extra_index_entry();
    }
    Ok(st.out)
}

impl State<'_, '_> {
    fn pull_ref(&mut self) -> tafdb::Result<()> {
        self.next_ref = match self.refs.next_record()? {
            Some(r) => Some(Ref::decode(&r)?),
            None => None,
        };
        Ok(())
    }

    /// Reports (and consumes) the references to inodes below `id`: no record was met for them.
    fn refs_before(&mut self, id: u64) -> tafdb::Result<()> {
        while let Some(r) = self.next_ref.take_if(|r| r.target < id) {
            self.problems.push(format!(
                "entry {}/{:?} names missing inode {}",
                r.parent,
                show(&r.name),
                r.target
            ));
            self.pull_ref()?;
        }
        Ok(())
    }

    /// The Index entries of the namespace roots (parent 0) sort first: checks them against
    /// the registry.
    fn root_index_entries(&mut self) {
        let mut named: Vec<&[u8]> = Vec::new();
        while let Some((k, v)) = self.s.index.get(self.index_at) {
            match indexnode::parse_key(k) {
                Some((0, name)) => {
                    match (self.s.roots.get(name), indexnode::IndexEntry::decode(v)) {
                        (Some(&root), Ok(e)) if e.id == root => named.push(name),
                        (Some(_), Ok(e)) => self.problems.push(format!(
                            "Index entry 0/{:?} -> {} is not its namespace's root",
                            show(name),
                            e.id
                        )),
                        (None, Ok(e)) => self.problems.push(format!(
                            "Index entry 0/{:?} -> {} is not a directory entry",
                            show(name),
                            e.id
                        )),
                        (_, Err(e)) => self
                            .problems
                            .push(format!("Index entry 0/{:?}: {e}", show(name))),
                    }
                    self.index_at += 1;
                }
                Some(_) => break,
                None => {
                    self.problems
                        .push(format!("unparseable Index key {}", tafdb::error::escape(k)));
                    self.index_at += 1;
                }
            }
        }
        for (name, root) in self.s.roots {
            if !named.contains(&name.as_slice()) {
                self.problems.push(format!(
                    "directory {root} (0/{:?}) has no Index entry",
                    show(name)
                ));
            }
        }
    }

    fn extra_index_entry(&mut self) {
        let (k, v) = &self.s.index[self.index_at];
        self.index_at += 1;
        match indexnode::parse_key(k) {
            None => self
                .problems
                .push(format!("unparseable Index key {}", tafdb::error::escape(k))),
            Some((pid, name)) => match indexnode::IndexEntry::decode(v) {
                Ok(e) => self.problems.push(format!(
                    "Index entry {pid}/{:?} -> {} is not a directory entry",
                    show(name),
                    e.id
                )),
                Err(e) => self
                    .problems
                    .push(format!("Index entry {pid}/{:?}: {e}", show(name))),
            },
        }
    }

    /// Matches directory entry `pid/name -> id` with its Index entry.
    fn index_entry(&mut self, pid: u64, name: &[u8], id: u64) {
        let key = indexnode::index_key(pid, name);
        while self
            .s
            .index
            .get(self.index_at)
            .is_some_and(|(k, _)| k.as_slice() < key.as_slice())
        {
            self.extra_index_entry();
        }
        match self.s.index.get(self.index_at) {
            Some((k, v)) if *k == key => {
                self.index_at += 1;
                match indexnode::IndexEntry::decode(v) {
                    Ok(e) if e.id == id => {}
                    Ok(e) => self.problems.push(format!(
                        "Index entry {pid}/{:?} -> {} but the directory entry names {id}",
                        show(name),
                        e.id
                    )),
                    Err(e) => self
                        .problems
                        .push(format!("Index entry {pid}/{:?}: {e}", show(name))),
                }
            }
            _ => self.problems.push(format!(
                "directory {id} ({pid}/{:?}) has no Index entry",
                show(name)
            )),
        }
    }

    fn row(&mut self, k: &[u8], v: &[u8]) -> tafdb::Result<()> {
        match keys::parse(k) {
            Some(MetaKey::Attr(id)) => {
                self.close_group();
                self.flush_strays();
                self.refs_before(id)?;
                match Attr::decode(v) {
                    Ok(a) if a.id == id => self.inode(&a)?,
                    other => {
                        self.problems.push(match other {
                            Ok(a) => format!("inode {id}: record says id {}", a.id),
                            Err(e) => format!("inode {id}: {e}"),
                        });
                        // The entries naming it are reported as naming a missing inode.
                        self.refs_before(id.saturating_add(1))?;
                        self.group = Some(Group {
                            id,
                            valid: false,
                            dir: false,
                            nlink: 0,
                            entries: 0,
                            seen: 0,
                            subdirs: 0,
                        });
                    }
                }
            }
            Some(MetaKey::Dentry(pid, name)) => {
                let d = match Dentry::decode(v) {
                    Ok(d) => d,
                    Err(e) => {
                        self.problems
                            .push(format!("entry {pid}/{:?}: {e}", show(name)));
                        return Ok(());
                    }
                };
                self.out.report.entries += 1;
                if d.kind.is_dir() {
                    self.index_entry(pid, name, d.id);
                }
                match &mut self.group {
                    Some(g) if g.id == pid && g.valid => {
                        g.seen += 1;
                        g.subdirs += u64::from(d.kind.is_dir());
                        if !g.dir {
                            self.stray(pid, "entries under non-directory");
                        }
                    }
                    Some(g) if g.id == pid => {}
                    _ => self.stray(pid, "entries under missing directory"),
                }
            }
            Some(MetaKey::Xattr(id, _)) => {
                let owned = self.group.as_ref().is_some_and(|g| g.id == id);
                if !owned && self.stray_xattrs != Some(id) {
                    self.stray_xattrs = Some(id);
                    self.problems
                        .push(format!("extended attribute of missing inode {id}"));
                }
            }
            None => self
                .problems
                .push(format!("unparseable Meta key {}", tafdb::error::escape(k))),
        }
        Ok(())
    }

    fn stray(&mut self, pid: u64, what: &'static str) {
        match &mut self.strays {
            Some((p, n, _)) if *p == pid => *n += 1,
            _ => {
                self.flush_strays();
                self.strays = Some((pid, 1, what));
            }
        }
    }

    fn flush_strays(&mut self) {
        if let Some((pid, n, what)) = self.strays.take() {
            self.problems.push(format!("{n} {what} {pid}"));
        }
    }

    fn close_group(&mut self) {
        let Some(g) = self.group.take() else { return };
        if !g.valid || !g.dir {
            return;
        }
        if g.nlink != 2 + g.subdirs {
            self.problems.push(format!(
                "directory {}: nlink {} but {} subdirectories",
                g.id, g.nlink, g.subdirs
            ));
        }
        if g.entries != g.seen {
            self.problems.push(format!(
                "directory {}: entry count {} but {} entries",
                g.id, g.entries, g.seen
            ));
        }
    }

    /// An inode's record: merges the references naming it.
    fn inode(&mut self, a: &Attr) -> tafdb::Result<()> {
        let id = a.id;
        let is_dir = a.kind().is_dir();
        let mut n = 0u64;
        let mut placed = false;
        let mut first: Option<(u64, Vec<u8>)> = None;
        let mut reached: Vec<u64> = Vec::new();
        while let Some(r) = self.next_ref.take_if(|r| r.target == id) {
            n += 1;
            if r.kind != a.kind() {
                self.problems.push(format!(
                    "entry {}/{:?} says {:?}, inode {id} is {:?}",
                    r.parent,
                    show(&r.name),
                    r.kind,
                    a.kind()
                ));
            }
            if a.parent == r.parent && a.target == r.name {
                placed = true;
            }
            if !reached.contains(&r.root) {
                reached.push(r.root);
            }
            if first.is_none() {
                first = Some((r.parent, r.name));
            }
            self.pull_ref()?;
        }
        let is_root = self.root_names.contains_key(&id);
        if is_root {
            // A root is reached by being a root, not by an entry.
            reached.retain(|r| *r != id);
            reached.push(id);
        }
        if is_dir {
            self.out.report.directories += 1;
            if is_root {
                if n != 0 {
                    self.problems
                        .push(format!("root {id} is named by {n} entries"));
                }
            } else {
                if a.kind() == FileType::Directory && a.parent == a.id {
                    self.problems
                        .push(format!("directory {id} claims to be a root"));
                }
                match (n, first) {
                    (0, _) => self.problems.push(format!(
                        "directory {id} is not reachable from any namespace root"
                    )),
                    (1, Some((pid, name))) if !placed => self.problems.push(format!(
                        "directory {id} is at {pid}/{:?} but records parent {} name {:?}",
                        show(&name),
                        a.parent,
                        show(&a.target)
                    )),
                    (1, _) => {}
                    _ => self
                        .problems
                        .push(format!("directory {id} is named by {n} entries")),
                }
            }
        } else {
            self.out.report.files += 1;
            if a.nlink != n {
                self.problems.push(format!(
                    "inode {id}: nlink {} but {n} entries name it",
                    a.nlink
                ));
            }
            if n == 0 {
                self.problems.push(format!(
                    "inode {id} is not reachable from any namespace root"
                ));
            }
        }
        for root in reached {
            let u = self.out.usage.entry(root).or_default();
            u[0] += 1;
            if a.kind() == FileType::Regular {
                u[1] += a.size;
            }
            if a.ns != root {
                let name = self.root_names.get(&root).copied().unwrap_or_default();
                self.problems.push(format!(
                    "inode {id} is in namespace {:?} but records namespace root {}",
                    show(name),
                    a.ns
                ));
            }
        }
        self.group = Some(Group {
            id,
            valid: true,
            dir: is_dir,
            nlink: a.nlink,
            entries: a.entries,
            seen: 0,
            subdirs: 0,
        });
        Ok(())
    }
}
