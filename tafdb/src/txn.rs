//! Transactions: buffered writes, recorded reads, 1PC or 2PC commit.
//!
//! A [`Txn`] reads a snapshot at its start timestamp, buffers its writes, and records every key
//! it read and every range it scanned. [`Txn::commit`] picks the protocol:
//! - every key in one tablet: a one-phase commit, validated and ordered by that tablet's leader
//!   and applied from one Raft entry;
//! - keys in several tablets: a Percolator-style two-phase commit. The first written key is the
//!   *primary*. Every tablet prewrites (validates, then locks written and read keys); the commit
//!   timestamp is taken; the primary's tablet commits (this is the commit point, recorded in a
//!   status record); then the secondaries commit. A crashed coordinator leaves locks that
//!   readers and writers resolve through the primary's status (see [`crate::Db::resolve_lock`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::command::CommandResult;
use crate::db::Db;
use crate::error::{Error, Result};
use crate::keys::{check_user_key, check_value, Key, KeyRange, Value};
use crate::lockq::LockSet;
use crate::mvcc::{DeltaOp, Mutation, MAX_DELTA_OFFSET};
use crate::remote::Route;
use crate::tablet::ReadSet;
use crate::tso::now_ms;

/// A transaction. Create one with [`Db::begin`], or let [`Db::run_txn`] manage retries.
pub struct Txn {
    db: Arc<Db>,
    start_ts: u64,
    /// Per key: a base mutation (put/delete) followed by deltas, or only deltas.
    writes: BTreeMap<Key, Vec<Mutation>>,
    reads: BTreeSet<Key>,
    /// Keys read with [`Txn::get_stable`] (and not also with [`Txn::get`]).
    stable: BTreeSet<Key>,
    scans: Vec<KeyRange>,
    /// Hot-key locks held (shared with `Db::run_txn`, which carries them across retries).
    locks: LockSet,
    /// Whether it frees disk space (a delete), and so may commit while space is short.
    frees_space: bool,
    /// A snapshot reader (see [`Db::run_read`]): it refuses writes, so it has nothing to
    /// validate at commit and records no reads.
    read_only: bool,
    /// How many writes (puts, deletes, deltas) were buffered so far, overwrites included.
    writes_made: u64,
}

fn fold_own(base: Option<Value>, muts: &[Mutation]) -> Option<Value> {
    let mut v = base;
    for m in muts {
        match m {
            Mutation::Put(x) => v = Some(x.clone()),
            Mutation::Delete => v = None,
            Mutation::Delta(op) => op.apply(v.get_or_insert_with(Vec::new)),
        }
    }
    v
}

impl Txn {
    pub(crate) fn new(db: Arc<Db>, start_ts: u64, locks: LockSet) -> Txn {
        Txn::with_mode(db, start_ts, locks, false)
    }

    pub(crate) fn with_mode(db: Arc<Db>, start_ts: u64, locks: LockSet, read_only: bool) -> Txn {
        Txn {
            read_only,
            db,
            start_ts,
            writes: BTreeMap::new(),
            reads: BTreeSet::new(),
            stable: BTreeSet::new(),
            scans: Vec::new(),
            locks,
            frees_space: false,
            writes_made: 0,
        }
    }

    /// Moves this transaction out, leaving in its place an empty one at the same snapshot,
    /// with the same mode and hot-key lock set. For a host that must hand the transaction to
    /// code that owns what it holds for a while (a script engine's `'static` callbacks) and
    /// puts it back afterwards (`*txn = taken`); the placeholder must not be committed.
    pub fn take(&mut self) -> Txn {
        let empty = Txn::with_mode(
            self.db.clone(),
            self.start_ts,
            self.locks.clone(),
            self.read_only,
        );
        std::mem::replace(self, empty)
    }

    /// How many writes (puts, deletes, deltas) were buffered so far, overwrites included:
    /// a caller can tell whether a step that failed left writes behind.
    pub fn writes_made(&self) -> u64 {
        self.writes_made
    }

    /// Marks the transaction as one that frees disk space (a delete): it may commit while
    /// the disk is short of space, when other writing transactions are refused (see
    /// [`crate::space`]).
    pub fn frees_space(&mut self) {
        self.frees_space = true;
    }

    /// Takes `key`'s place in the hot-key lock queue if it is configured as hot (see
    /// [`crate::lockq`]). Fails with a retryable conflict, keeping the lock, if the previous
    /// holder committed after this transaction's snapshot.
    async fn lock_hot(db: &Db, locks: &LockSet, start_ts: u64, key: &[u8]) -> Result<()> {
        let table = db.lock_table();
        if !table.is_hot(key) {
            return Ok(());
        }
        if table.acquire(locks, key).await?
            && db.route_for(key)?.changed_since(key, start_ts).await?
        {
            return Err(Error::conflict(
                key,
                "the previous holder of this hot key committed after the snapshot; retrying in the queue",
            ));
        }
        Ok(())
    }

    /// The hot-key locks this transaction holds.
    pub fn locks(&self) -> &LockSet {
        &self.locks
    }

    /// The snapshot timestamp.
    pub fn start_ts(&self) -> u64 {
        self.start_ts
    }

    /// The database.
    pub fn db(&self) -> &Arc<Db> {
        &self.db
    }

    /// Reads `key` (this transaction's own writes included).
    pub async fn get(&mut self, key: &[u8]) -> Result<Option<Value>> {
        check_user_key(key)?;
        if self.read_only {
            // No writes to fold in and nothing to validate: the snapshot answers. (No hot-key
            // queue either: the queue orders writers.)
            return self.db.get_at(key, self.start_ts).await;
        }
        Self::lock_hot(&self.db, &self.locks, self.start_ts, key).await?;
        if let Some(muts) = self.writes.get(key) {
            if muts
                .first()
                .is_some_and(|m| !matches!(m, Mutation::Delta(_)))
            {
                return Ok(fold_own(None, muts));
            }
        }
        let base = self.db.get_at(key, self.start_ts).await?;
        self.stable.remove(key);
        self.reads.insert(key.to_vec());
        Ok(match self.writes.get(key) {
            Some(muts) => fold_own(base, muts),
            None => base,
        })
    }

    /// Reads `key` like [`Txn::get`], but records a *stable* read: the commit conflicts only
    /// with a later put or delete of the key, not with later deltas. Use it when the
    /// transaction depends only on the parts of the value that deltas never touch (a
    /// directory's mode and owner, or its existence, while other transactions bump its link
    /// count). This is what lets a thousand creates in one directory commit side by side.
    ///
    /// A two-phase commit treats stable reads as ordinary reads (conservatively).
    pub async fn get_stable(&mut self, key: &[u8]) -> Result<Option<Value>> {
        if self.read_only {
            return self.get(key).await;
        }
        check_user_key(key)?;
        Self::lock_hot(&self.db, &self.locks, self.start_ts, key).await?;
        if let Some(muts) = self.writes.get(key) {
            if muts.first().is_some_and(Mutation::replaces) {
                return Ok(fold_own(None, muts));
            }
        }
        let base = self.db.get_at(key, self.start_ts).await?;
        if !self.reads.contains(key) {
            self.stable.insert(key.to_vec());
        }
        Ok(match self.writes.get(key) {
            Some(muts) => fold_own(base, muts),
            None => base,
        })
    }

    /// Up to `limit` entries of `range` in key order (own writes included). The part of the
    /// range that was read is recorded, so a concurrent insert into it (a phantom) aborts the
    /// commit.
    pub async fn scan(&mut self, range: &KeyRange, limit: usize) -> Result<Vec<(Key, Value)>> {
        if range.start.first() == Some(&crate::keys::INTERNAL_PREFIX) {
            return Err(Error::InvalidArgument(
                "scan of TafDB's internal keys".into(),
            ));
        }
        let own: Vec<(&Key, &Vec<Mutation>)> = self
            .writes
            .iter()
            .filter(|(k, _)| range.contains(k))
            .collect();
        let fetch = limit.saturating_add(own.len());
        let rows = self.db.scan_at(range, self.start_ts, fetch).await?;
        let complete = rows.len() < fetch;
        let mut merged: BTreeMap<Key, Value> = rows.into_iter().collect();
        let db_last = merged.keys().next_back().cloned();
        for (k, muts) in own {
            // Keys past the last row fetched are unknown when the fetch was cut; skip them.
            if !complete && db_last.as_ref().is_some_and(|l| k > l) {
                continue;
            }
            let base = merged.remove(k);
            if let Some(v) = fold_own(base, muts) {
                merged.insert(k.clone(), v);
            }
        }
        let out: Vec<(Key, Value)> = merged.into_iter().take(limit).collect();
        let read_range = if out.len() >= limit && limit > 0 {
            let mut end = out.last().map(|(k, _)| k.clone()).unwrap_or_default();
            end.push(0);
            KeyRange {
                start: range.start.clone(),
                end: Some(end),
            }
        } else if complete || limit == 0 {
            range.clone()
        } else {
            let mut end = db_last.unwrap_or_default();
            end.push(0);
            KeyRange {
                start: range.start.clone(),
                end: Some(end),
            }
        };
        if !self.read_only {
            self.scans.push(read_range);
        }
        Ok(out)
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::InvalidArgument(
                "a write in a read-only transaction".into(),
            ));
        }
        Ok(())
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.check_writable()?;
        check_user_key(key)?;
        check_value(value)?;
        self.writes_made += 1;
        self.writes
            .insert(key.to_vec(), vec![Mutation::Put(value.to_vec())]);
        Ok(())
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.check_writable()?;
        check_user_key(key)?;
        self.writes_made += 1;
        self.writes.insert(key.to_vec(), vec![Mutation::Delete]);
        Ok(())
    }

    /// Records a commutative update of `key`. Concurrent delta writers never conflict; readers
    /// see the folded value.
    pub fn delta(&mut self, key: &[u8], op: DeltaOp) -> Result<()> {
        self.check_writable()?;
        check_user_key(key)?;
        if op.end() > u64::from(MAX_DELTA_OFFSET) + 8 {
            return Err(Error::InvalidArgument(format!(
                "a delta at offset {} reaches byte {}, past {MAX_DELTA_OFFSET} + 8",
                op.offset(),
                op.end()
            )));
        }
        self.writes_made += 1;
        self.writes
            .entry(key.to_vec())
            .or_default()
            .push(Mutation::Delta(op));
        Ok(())
    }

    /// Whether the transaction has buffered writes.
    pub fn is_read_only(&self) -> bool {
        self.writes.is_empty()
    }

    fn flatten(writes: BTreeMap<Key, Vec<Mutation>>) -> Vec<(Key, Mutation)> {
        let mut out = Vec::with_capacity(writes.len());
        for (k, muts) in writes {
            match muts.first() {
                Some(Mutation::Delta(_)) => out.extend(muts.into_iter().map(|m| (k.clone(), m))),
                // A base mutation followed by deltas collapses into one put.
                Some(_) => match fold_own(None, &muts) {
                    Some(v) => out.push((k, Mutation::Put(v))),
                    None => out.push((k, Mutation::Delete)),
                },
                None => {}
            }
        }
        out
    }

    /// Commits. Returns the commit timestamp (the start timestamp for read-only transactions).
    pub async fn commit(self) -> Result<u64> {
        let Txn {
            db,
            start_ts,
            writes,
            reads,
            stable,
            scans,
            locks,
            frees_space,
            read_only: _,
            writes_made: _,
        } = self;
        if writes.is_empty() {
            return Ok(start_ts);
        }
        // A log store that is nearly full makes commits wait (backpressure) for up to 30 s, so
        // that a flusher slowed by the engines holds the writers back instead of failing them.
        let mut waited = 0u32;
        loop {
            match db.admit_write(frees_space) {
                Err(Error::Busy(_)) if waited < 3000 => {
                    waited += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                other => break other?,
            }
        }
        // Blind writes of hot keys queue too; in key order, so this never deadlocks.
        for (k, muts) in &writes {
            if muts.first().is_some_and(Mutation::replaces) {
                Self::lock_hot(&db, &locks, start_ts, k).await?;
            }
        }
        let writes = Self::flatten(writes);
        if let [tablet] = db.tablets() {
            // One tablet (the single-tablet mode): nothing to group.
            let reads: Vec<Key> = reads.into_iter().collect();
            let stable: Vec<Key> = stable.into_iter().collect();
            return db
                .route(tablet)?
                .commit_1pc(
                    start_ts,
                    ReadSet {
                        reads: &reads,
                        scans: &scans,
                        stable: &stable,
                    },
                    writes,
                )
                .await;
        }
        // Group everything by tablet.
        let mut parts: BTreeMap<u64, Part> = BTreeMap::new();
        // A route is taken once per tablet, so that every step of this commit on a tablet
        // goes to the same leader.
        for (k, m) in writes {
            part(&db, &mut parts, db.tablet_for(&k))?
                .writes
                .push((k, m));
        }
        for k in reads {
            part(&db, &mut parts, db.tablet_for(&k))?.reads.push(k);
        }
        for k in stable {
            part(&db, &mut parts, db.tablet_for(&k))?.stable.push(k);
        }
        for r in scans {
            for t in db.tablets_for_range(&r) {
                if let Some(piece) = r.intersect(t.range()) {
                    part(&db, &mut parts, &t)?.scans.push(piece);
                }
            }
        }
        if parts.len() == 1 {
            let Some((_, p)) = parts.pop_first() else {
                return Ok(start_ts);
            };
            return p
                .tablet
                .commit_1pc(
                    start_ts,
                    ReadSet {
                        reads: &p.reads,
                        scans: &p.scans,
                        stable: &p.stable,
                    },
                    p.writes,
                )
                .await;
        }
        // Two-phase commit locks stable reads like ordinary ones.
        let parts = parts
            .into_values()
            .map(|mut p| {
                let stable = std::mem::take(&mut p.stable);
                p.reads.extend(stable);
                p
            })
            .collect();
        commit_2pc(&db, start_ts, parts).await
    }
}

/// The part of a commit on tablet `t`, made on first use.
fn part<'p>(
    db: &Db,
    parts: &'p mut BTreeMap<u64, Part>,
    t: &Arc<crate::tablet::Tablet>,
) -> Result<&'p mut Part> {
    Ok(match parts.entry(t.id()) {
        std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::btree_map::Entry::Vacant(v) => v.insert(Part::new(db.route(t)?)),
    })
}

struct Part {
    tablet: Route,
    writes: Vec<(Key, Mutation)>,
    reads: Vec<Key>,
    stable: Vec<Key>,
    scans: Vec<KeyRange>,
}

impl Part {
    fn new(tablet: Route) -> Part {
        Part {
            tablet,
            writes: Vec::new(),
            reads: Vec::new(),
            stable: Vec::new(),
            scans: Vec::new(),
        }
    }

    fn keys(&self) -> Vec<Key> {
        self.writes
            .iter()
            .map(|(k, _)| k.clone())
            .chain(self.reads.iter().cloned())
            .collect()
    }
}

async fn commit_2pc(db: &Arc<Db>, start_ts: u64, mut parts: Vec<Part>) -> Result<u64> {
    // The primary is the first written key; its tablet goes first.
    let pi = parts.iter().position(|p| !p.writes.is_empty()).unwrap_or(0);
    parts.swap(0, pi);
    let primary: Key = match (parts[0].writes.first(), parts[0].reads.first()) {
        (Some((k, _)), _) => k.clone(),
        (None, Some(k)) => k.clone(),
        (None, None) => {
            return Err(Error::InvalidArgument(
                "a two-phase commit with no keys".into(),
            ))
        }
    };
    // Phase one, on every tablet at once.
    let mut set = tokio::task::JoinSet::new();
    for (i, p) in parts.iter().enumerate() {
        let (t, pk, reads, scans, writes) = (
            p.tablet.clone(),
            primary.clone(),
            p.reads.clone(),
            p.scans.clone(),
            p.writes.clone(),
        );
        set.spawn(async move {
            (
                i,
                t.prewrite(
                    start_ts,
                    &pk,
                    ReadSet {
                        reads: &reads,
                        scans: &scans,
                        stable: &[],
                    },
                    writes,
                )
                .await,
            )
        });
    }
    let mut failure = None;
    let mut locked = vec![false; parts.len()];
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((i, Ok(()))) => locked[i] = true,
            // A prewrite whose answer was lost may have locked: roll it back like the others.
            Ok((i, Err(e))) => {
                locked[i] |= e.is_undetermined();
                failure = failure.or(Some(e));
            }
            Err(e) => failure = failure.or(Some(Error::Raft(format!("prewrite task failed: {e}")))),
        }
    }
    if let Some(e) = failure {
        // Roll back the primary first (it records the decision), then the rest.
        let _ = parts[0]
            .tablet
            .rollback(start_ts, parts[0].keys(), Some(primary.clone()))
            .await;
        for (i, p) in parts.iter().enumerate().skip(1) {
            if locked[i] {
                let _ = p.tablet.rollback(start_ts, p.keys(), None).await;
            }
        }
        // Only this coordinator commits the primary, and it will not: whatever a lost
        // prewrite answer hid, the transaction did not happen.
        if e.is_undetermined() {
            return Err(Error::Aborted {
                start_ts,
                reason: format!("a prewrite's answer was lost ({e}); rolled back"),
            });
        }
        return Err(e);
    }
    // A transaction as old as the status horizon may have its status record collected by a
    // garbage collection running right now; refuse to commit it (half the horizon leaves room
    // for clock steps) and let the caller retry with a fresh start.
    let horizon = db.config().status_horizon_ms;
    if crate::tso::physical_ms(start_ts) + horizon / 2 < now_ms() {
        for p in &parts {
            let primary_here = (p.tablet.id() == parts[0].tablet.id()).then(|| primary.clone());
            let _ = p.tablet.rollback(start_ts, p.keys(), primary_here).await;
        }
        return Err(Error::Aborted {
            start_ts,
            reason: "the transaction is older than half the status horizon".into(),
        });
    }
    let commit_ts = db.timestamp().await?;
    let first = &parts[0];
    match first
        .tablet
        .commit_locks(
            start_ts,
            commit_ts,
            first.writes.clone(),
            first.reads.clone(),
            Some(primary.clone()),
        )
        .await?
    {
        CommandResult::Ok => {}
        CommandResult::Committed(ts) => return Ok(ts),
        CommandResult::Aborted => {
            // A resolver rolled the primary back (and only the primary's own key): every other
            // lock, the primary tablet's included, is this coordinator's to drop.
            let _ = parts[0]
                .tablet
                .rollback(start_ts, parts[0].keys(), None)
                .await;
            for p in parts.iter().skip(1) {
                let _ = p.tablet.rollback(start_ts, p.keys(), None).await;
            }
            return Err(Error::Aborted {
                start_ts,
                reason: "rolled back by a lock resolver before commit".into(),
            });
        }
    }
    // The transaction is committed. Secondaries that fail here are finished by lock resolution.
    let mut set = tokio::task::JoinSet::new();
    for p in parts.into_iter().skip(1) {
        set.spawn(async move {
            p.tablet
                .commit_locks(start_ts, commit_ts, p.writes, p.reads, None)
                .await
        });
    }
    while let Some(r) = set.join_next().await {
        if let Ok(Err(e)) = r {
            tracing::warn!(start_ts, error = %e, "committing a secondary failed; readers will resolve its locks");
        }
    }
    Ok(commit_ts)
}
