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
//!
//! # Memory
//!
//! The check streams; it never holds the Meta table (every inode) in memory:
//! 1. **Walk** ([`walk`]): from each namespace root, depth first, a page of a directory's
//!    entries at a time. It enters a subdirectory only through the entry its parent pointer
//!    names, so it ends even on a corrupt store with directory cycles, and reaches exactly the
//!    reachable inodes. Each entry it meets becomes a *reference* record `(inode, parent, root,
//!    type, name)`, fed to an external sorter ([`sort`]) that spills sorted runs to files once
//!    its memory budget is used.
//! 2. **Scan** ([`scan`]): the Meta table in key order, page by page. A directory's record
//!    comes right before its entries and an inode's record before its extended attributes, so
//!    the per-directory and per-inode checks need only the current group of keys; the sorted
//!    references merge in by inode id, so link counts, types, parent pointers, reachability
//!    and usage are checked without any map of inodes.
//!
//! What stays in memory: the walk's stack (its depth, with a bounded number of buffered
//! entries), the sorter's budget ([`Options::memory`]), one page, the problems listed (at most
//! [`Options::max_problems`]), and the Index table: it is a hash table with no key order to
//! page through, and the store keeps it resident anyway (one small entry per directory).
//!
//! The snapshot is pinned for the whole check, so a check longer than the MVCC window does not
//! lose it, and operations committing meanwhile (fsck runs on a live server) cannot make a
//! consistent namespace look broken.

mod scan;
mod sort;
mod walk;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use metastore::keys;
use metastore::FileType;
use tafdb::Db;

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
    /// Broken invariants, one line each (at most [`Options::max_problems`] of them).
    pub problems: Vec<String>,
    /// Problems found beyond those listed.
    pub omitted: u64,
}

impl Report {
    /// Whether every invariant holds.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty() && self.omitted == 0
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total = self.problems.len() as u64 + self.omitted;
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
                format!("{total} problems")
            }
        )?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        if self.omitted > 0 {
            writeln!(f, "  ... and {} more not listed", self.omitted)?;
        }
        Ok(())
    }
}

/// How a check runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where the sorter spills its runs (unlinked at once: nothing is left behind). A server
    /// uses its data directory; the default is the system's temporary directory.
    pub spill_dir: PathBuf,
    /// About how many bytes of references the sorter holds before it spills a run.
    pub memory: usize,
    /// Rows read per scan.
    pub page: usize,
    /// Problems listed in the report; more are counted in [`Report::omitted`].
    pub max_problems: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            spill_dir: std::env::temp_dir(),
            memory: 64 << 20,
            page: 1024,
            max_problems: 1000,
        }
    }
}

/// Where a check is: a phase, and a count of done items out of an estimated total (the
/// namespaces' usage counters; 0 when unknown).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// What the check is doing.
    pub phase: &'static str,
    /// Items done in this phase.
    pub done: u64,
    /// About how many items the phase has.
    pub total: u64,
}

/// Calls the caller's progress callback at most every 100 ms (and at each phase change).
struct Ticker<'a> {
    f: &'a (dyn Fn(Progress) + Sync),
    last: Instant,
}

impl Ticker<'_> {
    fn phase(&mut self, phase: &'static str, total: u64) {
        (self.f)(Progress {
            phase,
            done: 0,
            total,
        });
        self.last = Instant::now();
    }

    fn tick(&mut self, phase: &'static str, done: u64, total: u64) {
        if self.last.elapsed() >= Duration::from_millis(100) {
            (self.f)(Progress { phase, done, total });
            self.last = Instant::now();
        }
    }
}

/// The problems found, the first `max` of them kept.
struct Problems {
    list: Vec<String>,
    omitted: u64,
    max: usize,
}

impl Problems {
    fn push(&mut self, p: String) {
        if self.list.len() < self.max {
            self.list.push(p);
        } else {
            self.omitted += 1;
        }
    }
}

fn show(n: &[u8]) -> String {
    String::from_utf8_lossy(n).into_owned()
}

/// A directory entry met by the walk, keyed (and sorted) by the inode it names.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Ref {
    target: u64,
    parent: u64,
    /// The namespace root the walk reached it from.
    root: u64,
    kind: FileType,
    name: Vec<u8>,
}

impl Ref {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(25 + self.name.len());
        v.extend_from_slice(&self.target.to_be_bytes());
        v.extend_from_slice(&self.parent.to_be_bytes());
        v.extend_from_slice(&self.root.to_be_bytes());
        v.push(self.kind.code());
        v.extend_from_slice(&self.name);
        v
    }

    fn decode(v: &[u8]) -> std::io::Result<Ref> {
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "damaged sort record");
        let u = |o: usize| -> std::io::Result<u64> {
            Ok(u64::from_be_bytes(
                v.get(o..o + 8)
                    .ok_or_else(bad)?
                    .try_into()
                    .map_err(|_| bad())?,
            ))
        };
        Ok(Ref {
            target: u(0)?,
            parent: u(8)?,
            root: u(16)?,
            kind: v
                .get(24)
                .and_then(|&c| FileType::from_code(c))
                .ok_or_else(bad)?,
            name: v[25..].to_vec(),
        })
    }
}

/// Checks every namespace in `db` with the default [`Options`].
pub async fn check(db: &Db, progress: &(dyn Fn(Progress) + Sync)) -> tafdb::Result<Report> {
    check_with(db, &Options::default(), progress).await
}

/// Checks every namespace in `db`. `progress` hears where the check is.
pub async fn check_with(
    db: &Db,
    opts: &Options,
    progress: &(dyn Fn(Progress) + Sync),
) -> tafdb::Result<Report> {
    let mut ticker = Ticker {
        f: progress,
        last: Instant::now(),
    };
    let mut problems = Problems {
        list: Vec::new(),
        omitted: 0,
        max: opts.max_problems,
    };
    let snap = db.snapshot().await?;
    let ts = snap.ts();
    ticker.phase("reading the namespace registry", 0);
    let mut roots: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    let prefix = keys::namespace_range().start.len();
    for (k, v) in db.dump_at(&keys::namespace_range(), ts).await? {
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
    // The usage counters, read now: they are what the tree must add up to, and their inode
    // counts size the progress bars.
    let mut usage: BTreeMap<u64, [u64; 2]> = BTreeMap::new();
    for root in roots.values() {
        let v = db.get_at(&keys::nsstat_key(*root), ts).await?;
        let field = |o: usize| {
            v.as_ref()
                .and_then(|v| v.get(o..o + 8))
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_le_bytes)
        };
        usage.insert(*root, [field(0), field(8)]);
    }
    let inodes: u64 = usage.values().map(|u| u[0]).sum();
    ticker.phase("reading the Index table", 0);
    let index = db.dump_at(&indexnode::index_table(), ts).await?;
    let mut refs = sort::Sorter::new(&opts.spill_dir, opts.memory);
    let walked = walk::walk(
        &walk::Walk {
            db,
            ts,
            page: opts.page.max(1),
            // The walk buffers pages of entries per level; beyond this many in all, deeper
            // levels read again instead of keeping their pages.
            max_buffered: (opts.memory / 256).max(4 * opts.page.max(1)),
            index: &index,
            roots: &roots,
        },
        &mut refs,
        &mut problems,
        &mut ticker,
        inodes.saturating_sub(roots.len() as u64),
    )
    .await?;
    tracing::debug!(
        references = refs.len(),
        runs = refs.runs(),
        "fsck: walk done"
    );
    ticker.phase("sorting", refs.len());
    let sorted = refs.finish()?;
    let mut r = scan::scan(
        &scan::Scan {
            db,
            ts,
            page: opts.page.max(1),
            index: &index,
            roots: &roots,
        },
        sorted,
        &mut problems,
        &mut ticker,
        inodes,
    )
    .await?;
    if r.report.entries != walked {
        problems.push(format!(
            "{} entries lie in directories unreachable from any namespace root",
            r.report.entries.saturating_sub(walked)
        ));
    }
    for (name, root) in &roots {
        let want = usage.get(root).copied().unwrap_or_default();
        let got = r.usage.get(root).copied().unwrap_or_default();
        if want != got {
            problems.push(format!(
                "namespace {:?}: usage says {} inodes and {} bytes, the tree has {} and {}",
                show(name),
                want[0],
                want[1],
                got[0],
                got[1]
            ));
        }
    }
    drop(snap);
    r.report.namespaces = roots.len() as u64;
    problems.list.sort();
    r.report.problems = problems.list;
    r.report.omitted = problems.omitted;
    Ok(r.report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_round_trip_and_sort_by_inode() {
        let a = Ref {
            target: 300,
            parent: 7,
            root: 1,
            kind: FileType::Directory,
            name: b"x\xff".to_vec(),
        };
        assert_eq!(Ref::decode(&a.encode()).expect("decode"), a);
        let b = Ref {
            target: 2,
            parent: 900,
            ..a.clone()
        };
        assert!(b.encode() < a.encode());
        assert!(Ref::decode(&a.encode()[..20]).is_err());
    }
}
