//! The walk: every namespace tree, depth first from its root, a page of entries at a time.
//!
//! A subdirectory is entered only through the entry `(parent, name)` that its own record
//! names as its place (never a root, whose parent is itself), so each directory is entered at
//! most once and the walk ends on any store, cycles included. Every entry of every entered directory becomes a [`Ref`] for the
//! scan to merge; entries that do not decode are left to the scan, which reports them.

use std::collections::{BTreeMap, VecDeque};

use metastore::keys;
use metastore::{Attr, Dentry};
use tafdb::{Db, Key, Value};

use super::{show, sort::Sorter, Problems, Ref, Ticker};

pub(super) struct Walk<'a> {
    pub(super) db: &'a Db,
    pub(super) ts: u64,
    pub(super) page: usize,
    pub(super) max_buffered: usize,
    pub(super) index: &'a [(Key, Value)],
    pub(super) roots: &'a BTreeMap<Vec<u8>, u64>,
}

/// One directory on the walk's stack.
struct Frame {
    dir: u64,
    root: u64,
    /// The last entry handed out; the next page starts after it.
    after: Vec<u8>,
    buf: VecDeque<(Key, Value)>,
    /// Whether `buf` holds every entry left (the last page read was short).
    last_page: bool,
}

const PHASE: &str = "walking the trees";

/// Walks every namespace; returns the number of entries met.
pub(super) async fn walk(
    w: &Walk<'_>,
    refs: &mut Sorter,
    problems: &mut Problems,
    ticker: &mut Ticker<'_>,
    total: u64,
) -> tafdb::Result<u64> {
    ticker.phase(PHASE, total);
    let mut walked = 0u64;
    let mut buffered = 0usize;
    for (name, &root) in w.roots {
        let Some(a) = attr(w, root).await? else {
            problems.push(format!(
                "namespace {:?}: root {root} is missing",
                show(name)
            ));
            continue;
        };
        if !a.kind().is_dir() || a.parent != a.id {
            problems.push(format!(
                "namespace {:?}: root {root} is not a root directory",
                show(name)
            ));
            if !a.kind().is_dir() {
                continue;
            }
        }
        compare_index(w, problems, 0, name, &a);
        let mut stack = vec![Frame {
            dir: root,
            root,
            after: Vec::new(),
            buf: VecDeque::new(),
            last_page: false,
        }];
        while let Some(mut f) = stack.pop() {
            if f.buf.is_empty() {
                if f.last_page {
                    continue;
                }
                let rows =
                    w.db.scan_at(&keys::dentry_range(f.dir, &f.after), w.ts, w.page)
                        .await?;
                f.last_page = rows.len() < w.page;
                buffered += rows.len();
                f.buf = rows.into();
            }
            let mut enter = None;
            while let Some((k, v)) = f.buf.pop_front() {
                buffered -= 1;
                let Some(name) = keys::dentry_name(f.dir, &k) else {
                    continue;
                };
                f.after = name.to_vec();
                let Ok(d) = Dentry::decode(&v) else { continue };
                walked += 1;
                refs.push(
                    &Ref {
                        target: d.id,
                        parent: f.dir,
                        root: f.root,
                        kind: d.kind,
                        name: name.to_vec(),
                    }
                    .encode(),
                )?;
                if d.kind.is_dir() {
                    if let Some(a) = attr(w, d.id).await? {
                        // A record naming itself as its parent is a root (or claims to be one):
                        // never entered from an entry, so that no directory is entered twice.
                        if a.kind().is_dir()
                            && a.parent == f.dir
                            && a.parent != a.id
                            && a.target == name
                        {
                            compare_index(w, problems, f.dir, name, &a);
                            enter = Some(d.id);
                            break;
                        }
                    }
                }
            }
            ticker.tick(PHASE, walked, total);
            if buffered > w.max_buffered {
                // Too many pages held down the stack: this level reads its page again later.
                buffered -= f.buf.len();
                f.buf.clear();
                f.last_page = false;
            }
            let root = f.root;
            if !f.buf.is_empty() || !f.last_page {
                stack.push(f);
            }
            if let Some(dir) = enter {
                stack.push(Frame {
                    dir,
                    root,
                    after: Vec::new(),
                    buf: VecDeque::new(),
                    last_page: false,
                });
            }
        }
    }
    Ok(walked)
}

/// The decoded record of inode `id`, or `None` if it is missing or does not decode (the scan
/// reports both).
async fn attr(w: &Walk<'_>, id: u64) -> tafdb::Result<Option<Attr>> {
    Ok(w.db
        .get_at(&keys::attr_key(id), w.ts)
        .await?
        .and_then(|v| Attr::decode(&v).ok())
        .filter(|a| a.id == id))
}

/// Checks that the Index entry of directory `a` at `(pid, name)` carries its mode and owner.
/// A missing entry or one naming another id is the scan's to report.
fn compare_index(w: &Walk<'_>, problems: &mut Problems, pid: u64, name: &[u8], a: &Attr) {
    let key = indexnode::index_key(pid, name);
    let Ok(i) = w.index.binary_search_by(|(k, _)| k.as_slice().cmp(&key)) else {
        return;
    };
    let Ok(e) = indexnode::IndexEntry::decode(&w.index[i].1) else {
        return;
    };
    if e.id == a.id && (e.mode != a.mode || e.uid != a.uid || e.gid != a.gid) {
        problems.push(format!(
            "Index entry {pid}/{:?} {e:?} disagrees with inode {} (mode {:o}, uid {}, gid {})",
            show(name),
            a.id,
            a.mode,
            a.uid,
            a.gid
        ));
    }
}
