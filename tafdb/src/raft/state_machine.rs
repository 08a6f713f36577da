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
//! stand for this replica's own engines; shipping a tablet to another replica (a new one, or
//! one that fell behind the purged log) needs a full snapshot: a file of every engine row
//! (`snapshot_file`), written in a stream when openraft asks for a snapshot to send, sent in
//! chunks, and installed in a stream. A replicated tablet hands those out
//! ([`TabletState::ship_full_snapshots`]) while still building references for itself.

use std::collections::VecDeque;
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
use crate::engine::{BatchOp, EngineKind};
use crate::error::{Error, Result};
use crate::keys::{KeyRange, INTERNAL_PREFIX};
use crate::mvcc::{EngineSet, MvccStore};
use crate::tso::now_ms;

type NodeId = u64;
type Membership = StoredMembership<NodeId, BasicNode>;

const META_KEY: &[u8] = &[INTERNAL_PREFIX, b'M', b's', b't', b'a', b't', b'e'];
/// Present while a full snapshot is being installed: the engines are then neither the old
/// state nor the new one, and a replica that finds it at start refuses to run on them.
const INSTALL_KEY: &[u8] = &[INTERNAL_PREFIX, b'M', b'i', b'n', b's', b't'];

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct MetaRecord {
    durable: Option<LogId<NodeId>>,
    membership: Membership,
    floor: u64,
    max_commit_ts: u64,
}

/// The contents of a snapshot reference file (a full snapshot is a `snapshot_file`).
#[derive(Serialize, Deserialize)]
enum SnapshotPayload {
    /// The engines of this replica, durable up to the meta's index.
    Durable(MetaRecord),
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
    /// Hand out full snapshots when openraft asks for one to send (a replicated tablet,
    /// once started), while building references for the log's own purging.
    ship_full: std::sync::atomic::AtomicBool,
    /// The durable log id of the full snapshot file on disk, if it is current.
    full_at: Mutex<Option<Option<LogId<NodeId>>>>,
    /// Woken after every applied batch; readers waiting for a pending commit sleep on it.
    pub applied_notify: tokio::sync::Notify,
    /// Run by the flusher before it writes to the engines: syncs a log that defers its syncs.
    before_flush: std::sync::OnceLock<BeforeFlush>,
}

/// See [`TabletState::set_before_flush`].
pub type BeforeFlush = Box<dyn Fn() -> Result<()> + Send + Sync>;

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
        if default.get(INSTALL_KEY)?.is_some() {
            return Err(Error::Corruption(format!(
                "{}: a snapshot install was interrupted, so this replica's engines hold part of \
                 a tablet; remove the node from the cluster, delete its data directory and let \
                 it join again",
                dir.display()
            )));
        }
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
            ship_full: std::sync::atomic::AtomicBool::new(false),
            full_at: Mutex::new(None),
            before_flush: std::sync::OnceLock::new(),
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
            let mut answered = None;
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
                    answered = Some(batch);
                }
                EntryPayload::Membership(m) => {
                    let mut a = self.applied.lock();
                    a.membership = StoredMembership::new(Some(log_id), m);
                    let mem = a.membership.clone();
                    a.memberships.push_back(mem);
                }
            }
            {
                let mut a = self.applied.lock();
                a.last = Some(log_id);
                a.recent.push_back((log_id, now, entry_ts));
            }
            // The proposer's callers hear back now (see `CommandBatch::on_apply`).
            if let Some(batch) = answered {
                batch.answer(&results);
            }
            out.push(results);
        }
        self.applied_notify.notify_waiters();
        Ok(out)
    }

    /// Sets what the flusher runs before it writes entries to the engines (once; later calls
    /// are ignored): the tablet syncs a log that defers its syncs, so that the engines never
    /// hold an entry the log could lose.
    pub fn set_before_flush(&self, f: BeforeFlush) {
        let _ = self.before_flush.set(f);
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
        // Every entry up to the target was written to the log before it was applied.
        if let Some(sync) = self.before_flush.get() {
            if let Err(e) = sync() {
                let mut a = self.applied.lock();
                a.recent.push_front((target, 0, target_ts));
                if let Some(m) = membership {
                    a.memberships.push_front(m);
                }
                return Err(e);
            }
        }
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

    /// Makes the snapshots openraft sends to other replicas full ones (see the module docs).
    pub fn ship_full_snapshots(&self, on: bool) {
        self.ship_full.store(on, Ordering::Release);
    }

    /// A full snapshot: flushes everything applied (so the snapshot covers the last applied
    /// entry), then streams every engine row into the full snapshot file under the flush lock
    /// (a file already written at the same durable index is kept). Returns its meta record.
    fn full_snapshot(&self) -> Result<MetaRecord> {
        self.flush_once(0)?;
        let _g = self.flush_mutex.lock();
        let meta = self.durable.lock().clone();
        let path = self.full_path();
        if *self.full_at.lock() == Some(meta.durable) && path.exists() {
            return Ok(meta);
        }
        let started = std::time::Instant::now();
        let mut w = super::snapshot_file::Writer::create(&path, &meta)?;
        for (i, e) in self.mvcc.engines().all().iter().enumerate() {
            e.for_each(&mut |k, v| {
                if k != META_KEY {
                    w.put(i as u8, k, v)?;
                }
                Ok(())
            })?;
        }
        let rows = w.finish()?;
        *self.full_at.lock() = Some(meta.durable);
        tracing::info!(
            rows,
            index = meta.durable.map_or(0, |l| l.index),
            took = ?started.elapsed(),
            "wrote a full snapshot"
        );
        Ok(meta)
    }

    /// Records a snapshot reference at the durable index, so that the log may be reclaimed up
    /// to it (see [`crate::raft::LogStore::reclaim`]); returns that index's log id.
    pub fn reference_durable(&self) -> Result<Option<LogId<NodeId>>> {
        // A replica that ships full snapshots keeps a full one as its current snapshot.
        if self.full_snapshots.load(Ordering::Acquire) {
            return Ok(self.full_snapshot()?.durable);
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

    /// Installs the snapshot in `file` (`name` for errors): checks a durable reference, or
    /// replaces the whole state with a full snapshot (checked whole first, then streamed into
    /// the engines).
    fn load(&self, file: &std::fs::File, name: &Path) -> Result<MetaRecord> {
        use std::io::{Read, Seek};
        let path = name;
        if !super::snapshot_file::is_full(file)? {
            let mut bytes = Vec::new();
            let mut f = file.try_clone()?;
            f.seek(std::io::SeekFrom::Start(0))?;
            f.read_to_end(&mut bytes)?;
            let data = chunk_backend::atomic::decode(&bytes, &path.display().to_string())?;
            let SnapshotPayload::Durable(meta) = bincode::deserialize(&data)
                .map_err(|e| Error::Corruption(format!("snapshot: {e}")))?;
            let _g = self.flush_mutex.lock();
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
        // A transfer that is damaged or cut short must not touch the engines.
        let meta: MetaRecord = super::snapshot_file::read(file, path, None)?;
        let _g = self.flush_mutex.lock();
        let all = self.mvcc.engines().all();
        let default = &all[all.len() - 1];
        default.write(&[BatchOp::Put(INSTALL_KEY.to_vec(), b"1".to_vec())])?;
        default.persist()?;
        for e in &all {
            let mut keys = Vec::new();
            e.for_each(&mut |k, _| {
                if k != INSTALL_KEY {
                    keys.push(BatchOp::Delete(k.to_vec()));
                }
                Ok(())
            })?;
            for chunk in keys.chunks(4096) {
                e.write(chunk)?;
            }
        }
        let mut installed = 0usize;
        let mut install = |rows: super::snapshot_file::Rows| -> Result<()> {
            installed += rows.len();
            let mut by_engine: Vec<Vec<BatchOp>> = vec![Vec::new(); all.len()];
            for (i, k, v) in rows {
                by_engine
                    .get_mut(i as usize)
                    .ok_or_else(|| Error::Corruption(format!("snapshot names engine {i}")))?
                    .push(BatchOp::Put(k, v));
            }
            for (e, ops) in all.iter().zip(by_engine) {
                if !ops.is_empty() {
                    e.write(&ops)?;
                }
            }
            Ok(())
        };
        let _: MetaRecord = super::snapshot_file::read(file, path, Some(&mut install))?;
        tracing::info!(
            rows = installed,
            index = meta.durable.map_or(0, |l| l.index),
            "installed a full snapshot"
        );
        self.mvcc.clear(meta.floor);
        let bytes = bincode::serialize(&meta).map_err(|e| Error::Corruption(e.to_string()))?;
        // Every other engine first: the marker goes only once they hold the whole snapshot.
        for e in &all[..all.len() - 1] {
            e.persist()?;
        }
        default.write(&[
            BatchOp::Put(META_KEY.to_vec(), bytes),
            BatchOp::Delete(INSTALL_KEY.to_vec()),
        ])?;
        default.persist()?;
        *self.durable.lock() = meta.clone();
        *self.applied.lock() = Applied {
            last: meta.durable,
            membership: meta.membership.clone(),
            ..Default::default()
        };
        // The snapshot's timestamps and oracle marks count as applied: a replica that leads
        // later starts above them.
        self.max_commit_ts
            .fetch_max(meta.max_commit_ts, Ordering::AcqRel);
        self.recount_locks()?;
        Ok(meta)
    }

    fn full_path(&self) -> PathBuf {
        self.dir.join("snapshot.full")
    }

    fn incoming_path(&self) -> PathBuf {
        self.dir.join("snapshot.incoming")
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

/// Opens the snapshot file at `path` for openraft to read.
async fn open_snapshot(path: PathBuf) -> Result<Box<tokio::fs::File>, StorageError<NodeId>> {
    tokio::fs::File::open(&path)
        .await
        .map(Box::new)
        .map_err(|e| sto_err(format!("{}: {e}", path.display())))
}

impl StateMachine {
    /// The snapshot to hand out: a full one (written now, or kept from the same durable
    /// index), or the durable reference.
    async fn snapshot(&self, full: bool) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let state = self.state.clone();
        let (meta, path) = tokio::task::spawn_blocking(move || {
            if full {
                state.full_snapshot().map(|m| (m, state.full_path()))
            } else {
                state
                    .snapshot_reference()
                    .map(|(m, _)| (m, state.snapshot_path()))
            }
        })
        .await
        .map_err(sto_err)?
        .map_err(sto_err)?;
        Ok(Snapshot {
            meta: snapshot_meta(&meta),
            snapshot: open_snapshot(path).await?,
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let full = self.state.full_snapshots.load(Ordering::Acquire);
        self.snapshot(full).await
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
    ) -> Result<Box<tokio::fs::File>, StorageError<NodeId>> {
        // openraft writes the chunks it receives here; `install_snapshot` checks the whole.
        let path = self.state.incoming_path();
        tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map(Box::new)
            .map_err(|e| sto_err(format!("{}: {e}", path.display())))
    }

    async fn install_snapshot(
        &mut self,
        _meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError<NodeId>> {
        use tokio::io::AsyncWriteExt;
        let mut file = snapshot;
        file.flush().await.map_err(sto_err)?;
        // Usually the file `begin_receiving_snapshot` made, but openraft may hand over any.
        let file = file.into_std().await;
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let incoming = state.incoming_path();
            let meta = state.load(&file, &incoming)?;
            drop(file);
            // The engines hold the snapshot now: the reference on disk names its index (for
            // the next start); a full snapshot to send from here is written when asked for.
            *state.full_at.lock() = None;
            let data = bincode::serialize(&SnapshotPayload::Durable(meta))
                .map_err(|e| Error::Corruption(e.to_string()))?;
            chunk_backend::atomic::write(&state.snapshot_path(), &data)?;
            match std::fs::remove_file(&incoming) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
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
        // A snapshot asked for to be sent to another replica must be a full one.
        let full = self.state.full_snapshots.load(Ordering::Acquire)
            || self.state.ship_full.load(Ordering::Acquire);
        if full {
            // Nothing applied yet: nothing to send.
            if self.state.applied.lock().last.is_none() {
                return Ok(None);
            }
            return self.snapshot(true).await.map(Some);
        }
        let path = self.state.snapshot_path();
        let data = match chunk_backend::atomic::read(&path) {
            Ok(Some(d)) => d,
            Ok(None) => return Ok(None),
            Err(e) => return Err(sto_err(e)),
        };
        let meta = match bincode::deserialize(&data) {
            Ok(SnapshotPayload::Durable(meta)) => meta,
            Err(e) => return Err(sto_err(format!("snapshot file: {e}"))),
        };
        Ok(Some(Snapshot {
            meta: snapshot_meta(&meta),
            snapshot: open_snapshot(path).await?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full snapshot installs on another replica; an install cut off half way (the marker
    /// left behind) stops the replica from starting on its half-written engines.
    #[test]
    fn a_full_snapshot_installs_elsewhere_and_an_interrupted_install_is_refused_at_start() {
        let a = tempfile::tempdir().expect("tempdir");
        let b = tempfile::tempdir().expect("tempdir");
        let src = TabletState::open(a.path(), &[]).expect("open");
        let engines = src.mvcc.engines().all();
        let rows: Vec<BatchOp> = (0..3000u32)
            .map(|i| BatchOp::Put(format!("k{i:05}").into_bytes(), vec![1u8; 1000]))
            .collect();
        engines[0].write(&rows).expect("write");
        let meta = src.full_snapshot().expect("full snapshot");
        let dst = TabletState::open(b.path(), &[]).expect("open");
        let file = std::fs::File::open(src.full_path()).expect("open");
        let installed = dst.load(&file, &src.full_path()).expect("install");
        assert_eq!(installed.durable, meta.durable);
        let mut n = 0;
        dst.mvcc.engines().all()[0]
            .for_each(&mut |k, v| {
                if k.starts_with(b"k") {
                    assert_eq!(v.len(), 1000);
                    n += 1;
                }
                Ok(())
            })
            .expect("for_each");
        assert_eq!(n, 3000);
        // The marker of an install in progress, as a crash would leave it.
        let default = dst.mvcc.engines().all().last().cloned().expect("default");
        default
            .write(&[BatchOp::Put(INSTALL_KEY.to_vec(), b"1".to_vec())])
            .expect("write");
        default.persist().expect("persist");
        drop((default, dst));
        let err = TabletState::open(b.path(), &[])
            .err()
            .expect("a half-installed replica does not open");
        assert!(err.to_string().contains("interrupted"), "{err}");
    }

    #[test]
    fn a_reference_beyond_the_durable_index_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = TabletState::open(dir.path(), &[]).expect("open");
        let (meta, _) = state.snapshot_reference().expect("reference");
        assert_eq!(
            state
                .load(
                    &std::fs::File::open(state.snapshot_path()).expect("open"),
                    &state.snapshot_path()
                )
                .expect("own reference")
                .durable,
            meta.durable
        );
        let ahead = MetaRecord {
            durable: Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), 50)),
            ..MetaRecord::default()
        };
        let data = bincode::serialize(&SnapshotPayload::Durable(ahead)).expect("encode");
        let path = dir.path().join("elsewhere");
        chunk_backend::atomic::write(&path, &data).expect("write");
        let err = state
            .load(&std::fs::File::open(&path).expect("open"), &path)
            .expect_err("cannot install a reference from elsewhere");
        assert!(err.to_string().contains("full snapshot"), "{err}");
    }
}
