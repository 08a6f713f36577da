//! The tablet state machine: applies command batches to the MVCC store, flushes aged versions
//! to the engines and records how far the engines are durable.
//!
//! Durability works like this. Every acknowledged commit is in the Raft log (synced by the log
//! writer before openraft reports it committed). The engines hold everything applied up to the
//! *durable index* `D`, recorded in the default engine under `0xFF 'M' "state"` after the
//! engines were persisted. After a restart [`RaftStateMachine::applied_state`] reports `D`, and
//! openraft replays the log from `D + 1`.
//!
//! A snapshot exists so that openraft may purge the log, and since the engines already hold
//! everything up to `D` durably, building one only records `D` (a *durable reference*): it
//! costs a small file write however large the tablet is. Dumping every engine row instead
//! stalled commits for seconds once the tablet held millions of keys. A reference can only
//! stand for this replica's own engines; shipping a tablet to another replica needs a full
//! dump ([`SnapshotPayload::Full`]), which installing still supports, for the multi-node
//! cluster to build on.

use std::collections::VecDeque;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::{Entry, TypeConfig};
use crate::command::{self, CommandResult};
use crate::engine::{BatchOp, Engine, EngineKind};
use crate::error::{Error, Result};
use crate::keys::{KeyRange, INTERNAL_PREFIX};
use crate::mvcc::{EngineSet, MvccStore};
use crate::tso::now_ms;

type NodeId = u64;
type Membership = StoredMembership<NodeId, BasicNode>;

const META_KEY: &[u8] = &[INTERNAL_PREFIX, b'M', b's', b't', b'a', b't', b'e'];

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct MetaRecord {
    durable: Option<LogId<NodeId>>,
    membership: Membership,
    floor: u64,
    max_commit_ts: u64,
}

/// The contents of a snapshot.
#[derive(Serialize, Deserialize)]
enum SnapshotPayload {
    /// The engines of this replica, durable up to the meta's index.
    Durable(MetaRecord),
    /// The tablet meta and every engine row `(engine, key, value)`.
    Full(MetaRecord, Vec<(u8, Vec<u8>, Vec<u8>)>),
}

#[derive(Default)]
struct Applied {
    last: Option<LogId<NodeId>>,
    membership: Membership,
    /// Applied entries not yet flushed, with their apply time and the largest commit
    /// timestamp they carry.
    recent: VecDeque<(LogId<NodeId>, u64, u64)>,
    /// Membership changes not yet flushed.
    memberships: VecDeque<Membership>,
}

/// The shared state of one tablet replica: the MVCC store plus apply and flush bookkeeping.
pub struct TabletState {
    dir: PathBuf,
    mvcc: MvccStore,
    applied: Mutex<Applied>,
    durable: Mutex<MetaRecord>,
    flush_mutex: Mutex<()>,
    lock_keys: AtomicI64,
    max_commit_ts: AtomicU64,
    /// Snapshots held open by readers that need one state for longer than the MVCC window
    /// (fsck, dumps): timestamp -> holders. The flusher leaves every version newer than the
    /// oldest of them in memory.
    pins: Mutex<std::collections::BTreeMap<u64, usize>>,
    /// Build full snapshots (every engine row, after flushing everything applied) instead of
    /// durable references: what a replica elsewhere can install. Off in the embedded mode.
    full_snapshots: std::sync::atomic::AtomicBool,
    /// Woken after every applied batch; readers waiting for a pending commit sleep on it.
    pub applied_notify: tokio::sync::Notify,
}

fn sto_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::<NodeId>::write_state_machine(openraft::AnyError::error(e.to_string())).into()
}

impl TabletState {
    /// Opens the engines of a tablet replica in `dir`; `tables` names the engine of each table
    /// (others use the default RocksDB engine).
    pub fn open(dir: &Path, tables: &[(u8, EngineKind)]) -> Result<Arc<TabletState>> {
        std::fs::create_dir_all(dir)?;
        let default = EngineKind::Lsm.open(&dir.join("engines").join("default"))?;
        let mut list = Vec::new();
        for (id, kind) in tables {
            list.push((
                *id,
                kind.open(&dir.join("engines").join(format!("table-{id}")))?,
            ));
        }
        let engines = EngineSet::new(default.clone(), list);
        let meta: MetaRecord = match default.get(META_KEY)? {
            Some(b) => bincode::deserialize(&b)
                .map_err(|e| Error::Corruption(format!("tablet meta: {e}")))?,
            None => MetaRecord::default(),
        };
        let mvcc = MvccStore::new(engines, meta.floor);
        let state = TabletState {
            dir: dir.to_path_buf(),
            mvcc,
            applied: Mutex::new(Applied {
                last: meta.durable,
                membership: meta.membership.clone(),
                ..Default::default()
            }),
            max_commit_ts: AtomicU64::new(meta.max_commit_ts),
            durable: Mutex::new(meta),
            flush_mutex: Mutex::new(()),
            lock_keys: AtomicI64::new(0),
            pins: Mutex::new(Default::default()),
            full_snapshots: std::sync::atomic::AtomicBool::new(false),
            applied_notify: tokio::sync::Notify::new(),
        };
        state.recount_locks()?;
        Ok(Arc::new(state))
    }

    /// The MVCC store.
    pub fn mvcc(&self) -> &MvccStore {
        &self.mvcc
    }

    /// Whether any key may carry a 2PC lock (a cheap check before looking up locks).
    pub fn may_have_locks(&self) -> bool {
        self.lock_keys.load(Ordering::Acquire) > 0
    }

    /// Counts the lock records (after a replay, whose increments may be off when the engines
    /// were ahead of the durable index).
    pub fn recount_locks(&self) -> Result<()> {
        let range = KeyRange::prefix(&[INTERNAL_PREFIX, b'L']);
        let n = self.mvcc.scan(&range, u64::MAX, usize::MAX)?.len();
        self.lock_keys.store(n as i64, Ordering::Release);
        Ok(())
    }

    /// The last applied log index.
    pub fn applied_index(&self) -> u64 {
        self.applied.lock().last.map_or(0, |l| l.index)
    }

    /// The durable index: everything up to it is in the engines.
    pub fn durable_index(&self) -> u64 {
        self.durable.lock().durable.map_or(0, |l| l.index)
    }

    /// The largest timestamp the applied log holds: commit timestamps and the oracle's
    /// replicated marks (so a restarted oracle, or a new leader's, stays above it).
    pub fn max_commit_ts(&self) -> u64 {
        self.max_commit_ts.load(Ordering::Acquire)
    }

    fn apply_entries(&self, entries: Vec<Entry>) -> Result<Vec<Vec<CommandResult>>> {
        let mut out = Vec::with_capacity(entries.len());
        let now = now_ms();
        for entry in entries {
            let log_id = entry.log_id;
            let mut results = Vec::new();
            let mut entry_ts = 0;
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(batch) => {
                    let cmds = batch.take()?;
                    results.reserve(cmds.len());
                    // One install batch per entry: the ordered key set and the flusher's list
                    // are updated once for the entry (see `InstallBatch`).
                    let mut installs = self.mvcc.batch();
                    let mut max_ts = 0;
                    let mut mark = 0;
                    for cmd in cmds {
                        match &cmd {
                            command::Command::Commit { commit_ts, .. }
                            | command::Command::CommitLocks { commit_ts, .. } => {
                                max_ts = max_ts.max(*commit_ts)
                            }
                            command::Command::TsoMark { up_to } => mark = mark.max(*up_to),
                            _ => {}
                        }
                        let (res, delta) = command::apply(&mut installs, log_id.index, cmd)?;
                        if delta != 0 {
                            self.lock_keys.fetch_add(delta, Ordering::AcqRel);
                        }
                        results.push(res);
                    }
                    drop(installs);
                    self.max_commit_ts
                        .fetch_max(max_ts.max(mark), Ordering::AcqRel);
                    // Only commits hold a pinned snapshot's flush back, not a mark.
                    entry_ts = max_ts;
                }
                EntryPayload::Membership(m) => {
                    let mut a = self.applied.lock();
                    a.membership = StoredMembership::new(Some(log_id), m);
                    let mem = a.membership.clone();
                    a.memberships.push_back(mem);
                }
            }
            let mut a = self.applied.lock();
            a.last = Some(log_id);
            a.recent.push_back((log_id, now, entry_ts));
            out.push(results);
        }
        self.applied_notify.notify_waiters();
        Ok(out)
    }

    /// Flushes every version applied more than `window_ms` ago to the engines, persists them
    /// and advances the durable index. Returns the new durable log id, if it moved.
    pub fn flush_once(&self, window_ms: u64) -> Result<Option<LogId<NodeId>>> {
        self.flush_with(window_ms, false)
    }

    /// Like [`TabletState::flush_once`]; with `ignore_pins`, pinned snapshots do not hold the
    /// flush back (the log's store is nearly full: a long fsck must not stop the tablet; its
    /// reads then fail with `SnapshotTooOld` and it says so).
    pub fn flush_with(&self, window_ms: u64, ignore_pins: bool) -> Result<Option<LogId<NodeId>>> {
        let _g = self.flush_mutex.lock();
        let cutoff = now_ms().saturating_sub(window_ms);
        // A pinned snapshot keeps every entry with a newer commit in memory, so that the floor
        // stays at or below it.
        let pinned = match ignore_pins {
            true => u64::MAX,
            false => self.pins.lock().keys().next().copied().unwrap_or(u64::MAX),
        };
        let mut target_ts = 0;
        let (target, membership) = {
            let mut a = self.applied.lock();
            let mut target = None;
            while a
                .recent
                .front()
                .is_some_and(|(_, t, ts)| *t <= cutoff && *ts <= pinned)
            {
                if let Some((l, _, ts)) = a.recent.pop_front() {
                    target = Some(l);
                    target_ts = target_ts.max(ts);
                }
            }
            let Some(target) = target else {
                return Ok(None);
            };
            let mut membership = None;
            while a
                .memberships
                .front()
                .is_some_and(|m| m.log_id().is_some_and(|l| l.index <= target.index))
            {
                membership = a.memberships.pop_front();
            }
            (target, membership)
        };
        let mut meta = self.durable.lock().clone();
        meta.durable = Some(target);
        if let Some(m) = &membership {
            meta.membership = m.clone();
        }
        meta.max_commit_ts = self.max_commit_ts();
        let written = Mutex::new(None);
        // The meta record goes into the default engine's flush batch: the durable index moves
        // exactly when TafDB's own rows (locks, status records) do.
        let result = self.mvcc.flush_durably(target.index, &|floor| {
            let mut meta = meta.clone();
            meta.floor = floor;
            let bytes = bincode::serialize(&meta).map_err(|e| Error::Corruption(e.to_string()))?;
            *written.lock() = Some(meta);
            Ok(Some((META_KEY.to_vec(), bytes)))
        });
        if let Err(e) = result {
            // The entries stay unflushed; the next round takes them again.
            let mut a = self.applied.lock();
            // With the largest commit timestamp it covers, so that a pin taken meanwhile still
            // holds it back.
            a.recent.push_front((target, 0, target_ts));
            if let Some(m) = membership {
                a.memberships.push_front(m);
            }
            return Err(e);
        }
        if let Some(meta) = written.into_inner() {
            *self.durable.lock() = meta;
        }
        Ok(Some(target))
    }

    /// Holds a snapshot at `ts` open: until the guard is dropped, the flusher keeps every
    /// version newer than `ts` in memory, so reads at `ts` never fail with `SnapshotTooOld`
    /// however long they take. Fails with `SnapshotTooOld` if `ts` is already below the floor.
    pub fn pin(self: &Arc<Self>, ts: u64) -> Result<SnapshotPin> {
        // Under the flush mutex no flush is between choosing its target and raising the floor.
        let _g = self.flush_mutex.lock();
        let floor = self.mvcc.floor();
        if ts < floor {
            return Err(Error::SnapshotTooOld { ts, floor });
        }
        *self.pins.lock().entry(ts).or_default() += 1;
        Ok(SnapshotPin {
            state: self.clone(),
            ts,
        })
    }

    /// Makes snapshots full dumps (see [`TabletState`]'s `full_snapshots`) or durable references.
    pub fn set_full_snapshots(&self, full: bool) {
        self.full_snapshots.store(full, Ordering::Release);
    }

    /// A full snapshot: flushes everything applied (so the snapshot covers the last applied
    /// entry), then dumps every engine row under the flush lock, and keeps it as the current
    /// snapshot.
    fn full_snapshot(&self) -> Result<(MetaRecord, Vec<u8>)> {
        self.flush_once(0)?;
        let _g = self.flush_mutex.lock();
        let meta = self.durable.lock().clone();
        let mut rows = Vec::new();
        for (i, e) in self.mvcc.engines().all().iter().enumerate() {
            e.for_each(&mut |k, v| {
                if k != META_KEY {
                    rows.push((i as u8, k.to_vec(), v.to_vec()));
                }
                Ok(())
            })?;
        }
        let data = bincode::serialize(&SnapshotPayload::Full(meta.clone(), rows))
            .map_err(|e| Error::Corruption(e.to_string()))?;
        chunk_backend::atomic::write(&self.snapshot_path(), &data)?;
        Ok((meta, data))
    }

    /// Records a snapshot reference at the durable index, so that the log may be reclaimed up
    /// to it (see [`crate::raft::LogStore::reclaim`]); returns that index's log id.
    pub fn reference_durable(&self) -> Result<Option<LogId<NodeId>>> {
        // A replica that ships full snapshots keeps a full one as its current snapshot.
        if self.full_snapshots.load(Ordering::Acquire) {
            return Ok(self.full_snapshot()?.0.durable);
        }
        Ok(self.snapshot_reference()?.0.durable)
    }

    /// Records a durable reference (a snapshot) at the durable index.
    fn snapshot_reference(&self) -> Result<(MetaRecord, Vec<u8>)> {
        let meta = self.durable.lock().clone();
        let data = bincode::serialize(&SnapshotPayload::Durable(meta.clone()))
            .map_err(|e| Error::Corruption(e.to_string()))?;
        let path = self.snapshot_path();
        // openraft asks again as long as the log since the snapshot is long; when the durable
        // index has not moved, the reference on disk already says this.
        if chunk_backend::atomic::read(&path).is_ok_and(|old| old.as_ref() == Some(&data)) {
            return Ok((meta, data));
        }
        // The reference names what the engines already hold durably (the durable index is in
        // the default engine), so it is true whether or not this file is written; the file
        // only spares the next start some log. A failure to write it (a full disk) must not
        // stop the tablet: openraft treats a snapshot error as fatal.
        if let Err(e) = chunk_backend::atomic::write(&path, &data) {
            // The log may be purged up to whatever reference this returns, and after a
            // restart openraft starts from the reference on disk: answer with that one, so
            // the two agree. Only with none on disk is the failure the caller's.
            let old = chunk_backend::atomic::read(&path).ok().flatten();
            let old = old.and_then(|b| match bincode::deserialize(&b) {
                Ok(SnapshotPayload::Durable(m)) => Some((m, b)),
                _ => None,
            });
            match old {
                Some(old) => {
                    tracing::warn!(error = %e, "cannot record the snapshot reference; keeping the previous one");
                    return Ok(old);
                }
                None => return Err(e.into()),
            }
        }
        Ok((meta, data))
    }

    /// Installs a snapshot: checks a durable reference, or replaces the whole state with a full
    /// dump.
    fn load(&self, data: &[u8]) -> Result<MetaRecord> {
        let _g = self.flush_mutex.lock();
        let payload: SnapshotPayload =
            bincode::deserialize(data).map_err(|e| Error::Corruption(format!("snapshot: {e}")))?;
        let (meta, rows) = match payload {
            SnapshotPayload::Durable(meta) => {
                let have = self.durable_index();
                let want = meta.durable.map_or(0, |l| l.index);
                if have >= want {
                    // Our own engines, already at or past it.
                    return Ok(self.durable.lock().clone());
                }
                return Err(Error::Raft(format!(
                    "a snapshot by reference to index {want} cannot be installed on a replica \
                     durable only to {have}: shipping a tablet needs a full snapshot"
                )));
            }
            SnapshotPayload::Full(meta, rows) => (meta, rows),
        };
        let all = self.mvcc.engines().all();
        for e in &all {
            let mut keys = Vec::new();
            e.for_each(&mut |k, _| {
                keys.push(BatchOp::Delete(k.to_vec()));
                Ok(())
            })?;
            for chunk in keys.chunks(4096) {
                e.write(chunk)?;
            }
        }
        for (i, k, v) in rows {
            let e: &Arc<dyn Engine> = all
                .get(i as usize)
                .ok_or_else(|| Error::Corruption(format!("snapshot names engine {i}")))?;
            e.write(&[BatchOp::Put(k, v)])?;
        }
        self.mvcc.clear(meta.floor);
        let bytes = bincode::serialize(&meta).map_err(|e| Error::Corruption(e.to_string()))?;
        all[all.len() - 1].write(&[BatchOp::Put(META_KEY.to_vec(), bytes)])?;
        for e in &all {
            e.persist()?;
        }
        *self.durable.lock() = meta.clone();
        *self.applied.lock() = Applied {
            last: meta.durable,
            membership: meta.membership.clone(),
            ..Default::default()
        };
        self.recount_locks()?;
        Ok(meta)
    }

    fn snapshot_path(&self) -> PathBuf {
        self.dir.join("snapshot.ref")
    }
}

/// A snapshot held open on one tablet replica (see [`TabletState::pin`]).
pub struct SnapshotPin {
    state: Arc<TabletState>,
    ts: u64,
}

impl std::fmt::Debug for SnapshotPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotPin").field("ts", &self.ts).finish()
    }
}

impl Drop for SnapshotPin {
    fn drop(&mut self) {
        let mut pins = self.state.pins.lock();
        if let Some(n) = pins.get_mut(&self.ts) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&self.ts);
            }
        }
    }
}

/// The openraft state machine of a tablet replica.
#[derive(Clone)]
pub struct StateMachine {
    state: Arc<TabletState>,
}

impl StateMachine {
    /// Wraps a tablet state.
    pub fn new(state: Arc<TabletState>) -> Self {
        StateMachine { state }
    }
}

fn snapshot_meta(meta: &MetaRecord) -> SnapshotMeta<NodeId, BasicNode> {
    SnapshotMeta {
        last_log_id: meta.durable,
        last_membership: meta.membership.clone(),
        // Named by what it holds, so that building and reading it back agree.
        snapshot_id: match meta.durable {
            Some(l) => format!("{}-{}", l.leader_id, l.index),
            None => "empty".to_string(),
        },
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let state = self.state.clone();
        let (meta, data) = tokio::task::spawn_blocking(move || {
            if state.full_snapshots.load(Ordering::Acquire) {
                state.full_snapshot()
            } else {
                state.snapshot_reference()
            }
        })
        .await
        .map_err(sto_err)?
        .map_err(sto_err)?;
        Ok(Snapshot {
            meta: snapshot_meta(&meta),
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, Membership), StorageError<NodeId>> {
        let a = self.state.applied.lock();
        Ok((a.last, a.membership.clone()))
    }

    async fn apply<I>(
        &mut self,
        entries: I,
    ) -> Result<Vec<Vec<CommandResult>>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        self.state.apply_entries(entries).map_err(sto_err)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        _meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let state = self.state.clone();
        let data = snapshot.into_inner();
        tokio::task::spawn_blocking(move || -> Result<()> {
            state.load(&data)?;
            // The installed snapshot is the current one (what a later reader asks for).
            chunk_backend::atomic::write(&state.snapshot_path(), &data)?;
            Ok(())
        })
        .await
        .map_err(sto_err)?
        .map_err(sto_err)?;
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let path = self.state.snapshot_path();
        let data = match chunk_backend::atomic::read(&path) {
            Ok(Some(d)) => d,
            Ok(None) => return Ok(None),
            Err(e) => return Err(sto_err(e)),
        };
        let meta = match bincode::deserialize(&data) {
            Ok(SnapshotPayload::Durable(meta)) | Ok(SnapshotPayload::Full(meta, _)) => meta,
            Err(e) => return Err(sto_err(format!("snapshot file: {e}"))),
        };
        Ok(Some(Snapshot {
            meta: snapshot_meta(&meta),
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_beyond_the_durable_index_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = TabletState::open(dir.path(), &[]).expect("open");
        let (meta, data) = state.snapshot_reference().expect("reference");
        assert_eq!(
            state.load(&data).expect("own reference").durable,
            meta.durable
        );
        let ahead = MetaRecord {
            durable: Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), 50)),
            ..MetaRecord::default()
        };
        let data = bincode::serialize(&SnapshotPayload::Durable(ahead)).expect("encode");
        let err = state
            .load(&data)
            .expect_err("cannot install a reference from elsewhere");
        assert!(err.to_string().contains("full snapshot"), "{err}");
    }
}
