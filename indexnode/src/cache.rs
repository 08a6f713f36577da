//! TopDirPathCache and its Invalidator: path prefix -> directory, kept exact by the tablet's
//! write watch.
//!
//! **What is cached.** A resolved path's first `n - k` components (`k` =
//! [`CacheConfig::keep_last`]): the levels nearest the root change least, the last ones most
//! (98% of directory renames in Mantle's production trace are at the second-to-last level). A
//! cached prefix maps to its last directory's Index entry and the *restricting* directories
//! above it: those whose search bit is not set for owner, group and other alike. A prefix
//! without them (the common `0755` tree) answers the permission check for any caller; one with
//! them checks the caller against each, which is exactly what the walk would have checked.
//!
//! **Lookups** ([`PathCache::probe`]) never take a lock: a concurrent map read, a look at the
//! RemovalList (an atomic count, usually zero) and the entry's `since` stamp.
//!
//! **The Invalidator.** The cache is a [`tafdb::WriteWatch`] of the Index table's tablet:
//! - A write mark registered on the leader for a directory on a cached path puts that
//!   directory's path prefix on the *RemovalList* until the mark is settled; a lookup whose
//!   path lies under a listed prefix bypasses the cache. 2PC write locks do the same while they
//!   stand.
//! - A committed write of such a directory (applied, on every replica, in log order) lists the
//!   prefix and hands it to a background thread, which evicts every cached path under it
//!   through the *PrefixTree* (the cached paths' directories, keyed by Index key), then drops
//!   the listing.
//! - A fill ([`PathCache::fill`]) happens under the same lock as those calls, and only if
//!   nothing on the path is listed, every directory already in the tree still has the id read,
//!   and the tablet confirms the reads are still current at the lookup's snapshot
//!   ([`tafdb::tablet::Tablet::still_current`]: no write mark, lock or newer version). So either
//!   the fill sees a write, or the write's call sees the filled path.
//! - An entry filled from a snapshot `ts` answers only lookups at snapshots above `ts`.
//!
//! rmdir needs nothing special: removing an empty directory's Index entry is a write like any
//! other, and its prefix has no cached descendants to scan.
//!
//! What it is not: it caches nothing of files or of the last `k` levels, and it is only a
//! cache: every miss, bypass or refusal falls back to the transaction's own reads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Weak};

use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};
use tafdb::Key;

use crate::{index_key, Cred, IndexEntry, MAY_EXEC};

/// How the cache is sized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// `k`: how many trailing levels of a resolved path are never cached (at least 1).
    pub keep_last: usize,
    /// The most path prefixes kept; beyond it, prefixes not used since the last sweep go.
    pub capacity: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            keep_last: 3,
            capacity: 1 << 20,
        }
    }
}

/// A directory on a cached path whose search bit is not set for every class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Restrict {
    mode: u32,
    uid: u32,
    gid: u32,
}

impl Restrict {
    fn of(e: &IndexEntry) -> Option<Restrict> {
        (e.mode & 0o111 != 0o111).then_some(Restrict {
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
        })
    }
}

struct Cached {
    entry: IndexEntry,
    /// The parent's id: with the last name, the prefix's Index key.
    pid: u64,
    /// The snapshot the entry was read at: it answers only later snapshots.
    since: u64,
    /// The directories above the last one that not everyone may search.
    restrict: Box<[Restrict]>,
    /// Used since the last capacity sweep.
    hot: AtomicBool,
}

/// A directory of the PrefixTree: on the way to (or at the end of) a cached prefix.
struct Node {
    path: Box<[u8]>,
    id: u64,
    parent: Option<Key>,
    children: Vec<Key>,
    cached: bool,
}

#[derive(Default)]
struct Inner {
    /// The PrefixTree, by Index key.
    nodes: HashMap<Key, Node>,
    /// RemovalList listings made for write marks on tree directories: path and mark count.
    pending: HashMap<Key, (Box<[u8]>, u32)>,
    /// Listings made for 2PC write locks on tree directories.
    locked: HashMap<Key, Box<[u8]>>,
}

/// A hit: the deepest cached directory of the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    /// How many components of the path it covers.
    pub depth: usize,
    /// The last one's Index entry.
    pub entry: IndexEntry,
}

/// Where a [`PathCache::fill`] starts: the namespace root, or a prefix that was a hit.
#[derive(Clone, Copy, Debug)]
pub enum Start {
    /// The namespace root's entry.
    Root(IndexEntry),
    /// A hit for the first `depth` components.
    Hit(Hit),
}

/// Counters, for metrics and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that found no usable prefix.
    pub misses: u64,
    /// Lookups that found a prefix but could not use it (listed for removal, filled after the
    /// lookup's snapshot, or the caller lacks search permission somewhere on it).
    pub bypasses: u64,
    /// Prefixes filled.
    pub fills: u64,
    /// Fills refused because something on the path was being written.
    pub refused: u64,
    /// Invalidations of cached directories by committed writes.
    pub invalidations: u64,
    /// Prefixes evicted (by invalidation or for capacity).
    pub evicted: u64,
    /// Prefixes cached now.
    pub entries: u64,
    /// Directories in the PrefixTree now.
    pub nodes: u64,
    /// Estimated memory of the cache and tree, in bytes.
    pub bytes: u64,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    bypasses: AtomicU64,
    fills: AtomicU64,
    refused: AtomicU64,
    invalidations: AtomicU64,
    evicted: AtomicU64,
}

type Map = DashMap<Box<[u8]>, Cached, hashbrown::DefaultHashBuilder>;

/// An invalidation for the evictor: the tree node's Index key and the path it was listed as.
type Job = (Key, Box<[u8]>);

struct Shared {
    cfg: CacheConfig,
    map: Map,
    /// The RemovalList: listed prefixes with a count (one per reason).
    removal: RwLock<Vec<(Box<[u8]>, u32)>>,
    /// Its length, for the lock-free common case.
    listed: AtomicUsize,
    inner: Mutex<Inner>,
    counters: Counters,
    /// Invalidations handed to the evictor and not yet done.
    queued: AtomicU64,
}

/// The TopDirPathCache with its Invalidator (see the module docs).
pub struct PathCache {
    shared: Arc<Shared>,
    evictor: Mutex<Option<mpsc::Sender<Job>>>,
}

/// The cache key of a namespace's prefix: `ns`, then `/name` per component (names hold no
/// `/`, so keys of different paths differ).
fn path_key(ns: &[u8], names: &[&[u8]]) -> Vec<u8> {
    let len = ns.len() + names.iter().map(|n| n.len() + 1).sum::<usize>();
    let mut k = Vec::with_capacity(len);
    k.extend_from_slice(ns);
    for n in names {
        k.push(b'/');
        k.extend_from_slice(n);
    }
    k
}

/// Whether listed prefix `p` covers `path` (is it, or an ancestor of it).
fn covers(p: &[u8], path: &[u8]) -> bool {
    path.starts_with(p) && (path.len() == p.len() || path[p.len()] == b'/')
}

impl Shared {
    fn listed_over(&self, path: &[u8]) -> bool {
        self.listed.load(Ordering::Acquire) != 0
            && self.removal.read().iter().any(|(p, _)| covers(p, path))
    }

    fn list(&self, path: &[u8]) {
        let mut r = self.removal.write();
        match r.iter_mut().find(|(p, _)| &**p == path) {
            Some((_, c)) => *c += 1,
            None => r.push((path.into(), 1)),
        }
        self.listed.store(r.len(), Ordering::Release);
    }

    fn unlist(&self, path: &[u8]) {
        let mut r = self.removal.write();
        if let Some(i) = r.iter().position(|(p, _)| &**p == path) {
            r[i].1 -= 1;
            if r[i].1 == 0 {
                r.swap_remove(i);
            }
        }
        self.listed.store(r.len(), Ordering::Release);
    }

    /// Removes the subtree of tree node `key` (and the prefixes cached in it), then the
    /// ancestors left with nothing to hold.
    fn evict_subtree(&self, inner: &mut Inner, key: &[u8]) {
        let Some(top) = inner.nodes.get(key) else {
            return;
        };
        let parent = top.parent.clone();
        let mut stack = vec![key.to_vec()];
        while let Some(k) = stack.pop() {
            if let Some(n) = inner.nodes.remove(&k) {
                if n.cached && self.map.remove(&n.path).is_some() {
                    self.counters.evicted.fetch_add(1, Ordering::Relaxed);
                }
                stack.extend(n.children);
            }
        }
        if let Some(p) = parent {
            detach(inner, &p, key);
        }
    }
}

/// Drops `child` from `parent`'s children, and `parent` (then its own parent, and so on) when
/// it is left with no children and no cached prefix.
fn detach(inner: &mut Inner, parent: &[u8], child: &[u8]) {
    let mut parent = parent.to_vec();
    let mut child = child.to_vec();
    loop {
        let Some(p) = inner.nodes.get_mut(&parent) else {
            return;
        };
        if let Some(i) = p.children.iter().position(|c| *c == child) {
            p.children.swap_remove(i);
        }
        if p.cached || !p.children.is_empty() {
            return;
        }
        let up = p.parent.clone();
        inner.nodes.remove(&parent);
        match up {
            Some(u) => {
                child = std::mem::replace(&mut parent, u);
            }
            None => return,
        }
    }
}

impl PathCache {
    /// An empty cache, with its evictor thread (which ends when the cache is dropped).
    pub fn new(cfg: CacheConfig) -> Arc<PathCache> {
        let cfg = CacheConfig {
            keep_last: cfg.keep_last.max(1),
            capacity: cfg.capacity.max(1),
        };
        let shared = Arc::new(Shared {
            cfg,
            // Many shards: every lookup takes one's lock word.
            map: DashMap::with_hasher_and_shard_amount(
                hashbrown::DefaultHashBuilder::default(),
                tafdb::keys::READ_SHARDS,
            ),
            removal: RwLock::new(Vec::new()),
            listed: AtomicUsize::new(0),
            inner: Mutex::new(Inner::default()),
            counters: Counters::default(),
            queued: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel::<Job>();
        let weak: Weak<Shared> = Arc::downgrade(&shared);
        let spawned = std::thread::Builder::new()
            .name("path-cache-evict".into())
            .spawn(move || {
                while let Ok((key, path)) = rx.recv() {
                    let Some(s) = weak.upgrade() else { return };
                    {
                        let mut inner = s.inner.lock();
                        // The node may be gone (evicted for capacity) or replaced by a fresh
                        // fill of another directory under the same path: only this one goes.
                        if inner.nodes.get(&key).is_some_and(|n| n.path == path) {
                            s.evict_subtree(&mut inner, &key);
                        }
                    }
                    s.unlist(&path);
                    s.queued.fetch_sub(1, Ordering::AcqRel);
                }
            });
        let evictor = match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                // Without the thread, invalidations evict inline (see `applied`).
                tracing::warn!("path cache: no evictor thread ({e}); evicting inline");
                None
            }
        };
        Arc::new(PathCache {
            shared,
            evictor: Mutex::new(evictor),
        })
    }

    /// The configuration.
    pub fn config(&self) -> CacheConfig {
        self.shared.cfg
    }

    /// The depth of the prefix to probe for a path of `components` names: all but the last
    /// `k`.
    pub fn depth_for(&self, components: usize) -> usize {
        components.saturating_sub(self.shared.cfg.keep_last)
    }

    /// The deepest usable cached prefix of `names` (a path in namespace `ns`) no deeper than
    /// `max_depth`, for a lookup at snapshot `ts` by `cred`. Tries `max_depth`, then one level
    /// less (a path one level deeper than the last one filled).
    pub fn probe(
        &self,
        ns: &[u8],
        names: &[&[u8]],
        max_depth: usize,
        ts: u64,
        cred: &Cred,
    ) -> Option<Hit> {
        let s = &*self.shared;
        let max_depth = max_depth.min(names.len());
        if max_depth == 0 {
            return None;
        }
        let full = path_key(ns, &names[..max_depth]);
        let mut bypassed = false;
        for depth in (max_depth.saturating_sub(1).max(1)..=max_depth).rev() {
            let key_len = ns.len() + names[..depth].iter().map(|n| n.len() + 1).sum::<usize>();
            let key = &full[..key_len];
            let Some(c) = s.map.get(key) else { continue };
            let usable = ts > c.since
                && !s.listed_over(key)
                && c.restrict
                    .iter()
                    .all(|r| cred.may(r.mode, r.uid, r.gid, MAY_EXEC));
            if !usable {
                bypassed = true;
                continue;
            }
            if !c.hot.load(Ordering::Relaxed) {
                c.hot.store(true, Ordering::Relaxed);
            }
            s.counters.hits.fetch_add(1, Ordering::Relaxed);
            return Some(Hit {
                depth,
                entry: c.entry,
            });
        }
        let counter = if bypassed {
            &s.counters.bypasses
        } else {
            &s.counters.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Caches the prefix `names` of namespace `ns`, resolved at snapshot `ts`: `entries` are
    /// the Index entries of `names[from_depth..]` (all of them from the root, or those after a
    /// [`Start::Hit`]). `current` is asked, under the cache's lock, whether reads of the given
    /// Index keys at `ts` are still current
    /// ([`tafdb::tablet::Tablet::still_current`]). Returns whether the prefix was cached.
    pub fn fill(
        &self,
        ns: &[u8],
        from: Start,
        names: &[&[u8]],
        entries: &[IndexEntry],
        ts: u64,
        current: impl FnOnce(&[Key]) -> bool,
    ) -> bool {
        let s = &*self.shared;
        let from_depth = match from {
            Start::Root(_) => 0,
            Start::Hit(h) => h.depth,
        };
        if names.is_empty()
            || from_depth >= names.len()
            || entries.len() != names.len() - from_depth
        {
            return false;
        }
        let path = path_key(ns, names);
        let refuse = || {
            s.counters.refused.fetch_add(1, Ordering::Relaxed);
            false
        };
        let mut inner = s.inner.lock();
        if s.map.contains_key(&path[..]) {
            return false;
        }
        if s.listed_over(&path) {
            return refuse();
        }
        // The chain: (Index key, path, entry) per directory, from the start point down.
        let mut chain: Vec<(Key, Box<[u8]>, IndexEntry)> = Vec::with_capacity(entries.len() + 1);
        let mut restrict: Vec<Restrict> = Vec::new();
        let mut check: Vec<Key> = Vec::with_capacity(entries.len() + 1);
        let (mut pid, mut plen, start) = match from {
            Start::Root(root) => {
                let k = index_key(0, ns);
                check.push(k.clone());
                chain.push((k, ns.into(), root));
                (root.id, ns.len(), root)
            }
            Start::Hit(h) => {
                let base_len =
                    ns.len() + names[..h.depth].iter().map(|n| n.len() + 1).sum::<usize>();
                let base = &path[..base_len];
                // The hit must still be cached as it was (not evicted, not replaced).
                let Some(c) = s.map.get(base) else {
                    return refuse();
                };
                if c.entry != h.entry || c.since >= ts {
                    return refuse();
                }
                restrict.extend_from_slice(&c.restrict);
                let k = index_key(c.pid, names[h.depth - 1]);
                drop(c);
                chain.push((k, base.into(), h.entry));
                (h.entry.id, base_len, h.entry)
            }
        };
        let mut above = start;
        for (name, e) in names[from_depth..].iter().zip(entries) {
            restrict.extend(Restrict::of(&above));
            let k = index_key(pid, name);
            plen += 1 + name.len();
            check.push(k.clone());
            chain.push((k, path[..plen].into(), *e));
            pid = e.id;
            above = *e;
        }
        // A directory already in the tree with another id or path is a stale node on its way
        // out (its own or an ancestor's invalidation is queued): a prefix linked through it
        // would be listed and evicted under the old path, and outlive both.
        if chain.iter().any(|(k, p, e)| {
            inner
                .nodes
                .get(k)
                .is_some_and(|n| n.id != e.id || n.path != *p)
        }) {
            return refuse();
        }
        if !current(&check) {
            return refuse();
        }
        let Some((last_key, _, last)) = chain.last().cloned() else {
            return false;
        };
        let last_pid = match chain.len() {
            0 | 1 => 0,
            n => chain[n - 2].2.id,
        };
        let mut parent: Option<Key> = None;
        for (k, p, e) in chain {
            inner.nodes.entry(k.clone()).or_insert_with(|| Node {
                path: p,
                id: e.id,
                parent: parent.clone(),
                children: Vec::new(),
                cached: false,
            });
            if let Some(pk) = &parent {
                if let Some(pn) = inner.nodes.get_mut(pk) {
                    if !pn.children.contains(&k) {
                        pn.children.push(k.clone());
                    }
                }
            }
            parent = Some(k);
        }
        if let Some(n) = inner.nodes.get_mut(&last_key) {
            n.cached = true;
        }
        s.map.insert(
            path.into_boxed_slice(),
            Cached {
                entry: last,
                pid: last_pid,
                since: ts,
                restrict: restrict.into_boxed_slice(),
                hot: AtomicBool::new(false),
            },
        );
        s.counters.fills.fetch_add(1, Ordering::Relaxed);
        if s.map.len() > s.cfg.capacity {
            self.sweep(&mut inner);
        }
        true
    }

    /// Evicts prefixes not used since the last sweep (clearing the others' marks) until an
    /// eighth of the capacity is free.
    fn sweep(&self, inner: &mut Inner) {
        let s = &*self.shared;
        let target = s.cfg.capacity - s.cfg.capacity / 8;
        let excess = s.map.len().saturating_sub(target);
        let mut victims: HashMap<Box<[u8]>, u64> = HashMap::with_capacity(excess);
        for pass in 0..2 {
            for c in s.map.iter() {
                if victims.len() >= excess {
                    break;
                }
                // The second pass takes anything: the first cleared every mark it passed.
                if pass == 1 || !c.hot.swap(false, Ordering::Relaxed) {
                    victims.entry(c.key().clone()).or_insert(c.pid);
                }
            }
            if victims.len() >= excess {
                break;
            }
        }
        for (path, pid) in victims {
            if s.map.remove(&path).is_none() {
                continue;
            }
            s.counters.evicted.fetch_add(1, Ordering::Relaxed);
            let name_at = path.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
            let key = if name_at == 0 {
                index_key(0, &path)
            } else {
                index_key(pid, &path[name_at..])
            };
            let Some(n) = inner.nodes.get_mut(&key) else {
                continue;
            };
            n.cached = false;
            if n.children.is_empty() {
                let up = n.parent.clone();
                inner.nodes.remove(&key);
                if let Some(u) = up {
                    detach(inner, &u, &key);
                }
            }
        }
    }

    /// Waits until every invalidation handed to the evictor so far is done (tests, benchmarks).
    pub fn quiesce(&self) {
        while self.shared.queued.load(Ordering::Acquire) != 0 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Counters and sizes.
    pub fn stats(&self) -> CacheStats {
        let s = &*self.shared;
        let c = &s.counters;
        let inner = s.inner.lock();
        let mut bytes = 0usize;
        for e in s.map.iter() {
            bytes += e.key().len()
                + std::mem::size_of::<Cached>()
                + std::mem::size_of::<Box<[u8]>>()
                + e.restrict.len() * std::mem::size_of::<Restrict>()
                + 16;
        }
        for (k, n) in inner.nodes.iter() {
            bytes += k.len()
                + std::mem::size_of::<Key>()
                + std::mem::size_of::<Node>()
                + n.path.len()
                + n.parent.as_ref().map_or(0, |p| p.len())
                + n.children.capacity() * std::mem::size_of::<Key>()
                + 16;
        }
        CacheStats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            bypasses: c.bypasses.load(Ordering::Relaxed),
            fills: c.fills.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            invalidations: c.invalidations.load(Ordering::Relaxed),
            evicted: c.evicted.load(Ordering::Relaxed),
            entries: s.map.len() as u64,
            nodes: inner.nodes.len() as u64,
            bytes: bytes as u64,
        }
    }
}

impl tafdb::WriteWatch for PathCache {
    fn pending(&self, key: &[u8]) {
        let s = &*self.shared;
        let mut inner = s.inner.lock();
        if let Some((_, c)) = inner.pending.get_mut(key) {
            *c += 1;
            return;
        }
        let Some(n) = inner.nodes.get(key) else {
            return;
        };
        let path = n.path.clone();
        s.list(&path);
        inner.pending.insert(key.to_vec(), (path, 1));
    }

    fn settled(&self, key: &[u8]) {
        let s = &*self.shared;
        let mut inner = s.inner.lock();
        let Some((path, c)) = inner.pending.get_mut(key) else {
            return;
        };
        *c -= 1;
        if *c == 0 {
            let path = path.clone();
            inner.pending.remove(key);
            s.unlist(&path);
        }
    }

    fn locked(&self, key: &[u8], locked: bool) {
        let s = &*self.shared;
        let mut inner = s.inner.lock();
        if locked {
            if inner.locked.contains_key(key) {
                return;
            }
            let Some(n) = inner.nodes.get(key) else {
                return;
            };
            let path = n.path.clone();
            s.list(&path);
            inner.locked.insert(key.to_vec(), path);
        } else if let Some(path) = inner.locked.remove(key) {
            s.unlist(&path);
        }
    }

    fn applied(&self, key: &[u8]) {
        let s = &*self.shared;
        let mut inner = s.inner.lock();
        let Some(n) = inner.nodes.get(key) else {
            return;
        };
        let path = n.path.clone();
        s.counters.invalidations.fetch_add(1, Ordering::Relaxed);
        // Listed first, under the lock: no lookup uses the prefix from here on, and no fill
        // under it happens until the evictor is done.
        s.list(&path);
        s.queued.fetch_add(1, Ordering::AcqRel);
        let sent = match &*self.evictor.lock() {
            Some(tx) => tx.send((key.to_vec(), path.clone())).is_ok(),
            None => false,
        };
        if !sent {
            s.evict_subtree(&mut inner, key);
            s.unlist(&path);
            s.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn reset(&self) {
        let s = &*self.shared;
        let mut inner = s.inner.lock();
        inner.nodes.clear();
        let evicted = s.map.len() as u64;
        s.map.clear();
        s.counters.evicted.fetch_add(evicted, Ordering::Relaxed);
        for (_, path) in std::mem::take(&mut inner.locked) {
            s.unlist(&path);
        }
    }
}

impl Drop for PathCache {
    fn drop(&mut self) {
        // Closing the channel ends the evictor.
        self.evictor.lock().take();
    }
}

#[cfg(test)]
mod tests;
