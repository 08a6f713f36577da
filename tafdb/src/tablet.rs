//! A tablet: one key range, one Raft group, one MVCC store, and the leader-side pipeline that
//! validates and orders commits.
//!
//! Commit flow on the leader (the only replica in the embedded mode):
//! 1. Under the tablet's *sequencer* mutex, a transaction is validated: none of its read or
//!    written keys, nor any key in its scanned ranges, has a version newer than its start
//!    timestamp, a commit in flight (*pending*), or a foreign 2PC lock. Delta writes skip the
//!    version and pending checks: they commute.
//! 2. Still under the mutex, its writes are registered as pending (first with a placeholder
//!    timestamp), the commit timestamp is taken from the oracle, and the command is queued for
//!    proposal. Queue order is therefore commit-timestamp order.
//! 3. A proposer task drains the queue into one Raft entry (a batch) and hands it to openraft;
//!    the log writer syncs many batches with one `fdatasync`.
//! 4. When the entry is applied, the pending marks are dropped and the waiters are answered.
//!
//! A snapshot read at `ts` that meets a pending write with a timestamp `<= ts` (or a placeholder)
//! waits for it to be applied: otherwise a commit that took its timestamp before the reader
//! could become visible after the reader looked, breaking the snapshot.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use openraft::{BasicNode, Config, SnapshotPolicy};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use crate::command::{self, Command, CommandResult, LockRecord, TxnStatus};
use crate::engine::EngineKind;
use crate::error::{Error, Result};
use crate::keys::{Key, KeyRange, Value, INTERNAL_PREFIX};
use crate::mvcc::Mutation;
use crate::raft::{LogStore, Raft, SingleNodeNetwork, StateMachine, TabletState};
use crate::tso::{now_ms, Tso};

/// The placeholder timestamp of a pending write whose commit timestamp is being taken.
const ASSIGNING: u64 = u64::MAX;
/// How long a reader waits for a pending commit before giving up.
const PENDING_WAIT: Duration = Duration::from_secs(10);

/// Tunables of a tablet.
#[derive(Clone, Debug)]
pub struct TabletConfig {
    /// How long committed versions stay in memory (the MVCC window), in ms.
    pub window_ms: u64,
    /// How often the flusher runs, in ms.
    pub flush_interval_ms: u64,
    /// Build a snapshot (and purge the log) after this many log entries.
    pub snapshot_logs: u64,
    /// Most commands in one Raft entry.
    pub max_batch: usize,
    /// Most Raft entries in flight at once.
    pub max_inflight: usize,
    /// Engines per table.
    pub tables: Vec<(u8, EngineKind)>,
}

impl Default for TabletConfig {
    fn default() -> Self {
        TabletConfig {
            window_ms: 5_000,
            flush_interval_ms: 1_000,
            snapshot_logs: 20_000,
            max_batch: 4096,
            max_inflight: 8,
            tables: vec![(1, EngineKind::Hash), (2, EngineKind::Lsm)],
        }
    }
}

/// A pending mark: key, commit timestamp (or [`ASSIGNING`]), and whether the write replaces
/// the value (a put or delete) rather than being a delta or a read lock.
type Mark = (Key, u64, bool);

struct Proposal {
    cmd: Command,
    pending: Vec<Mark>,
    reply: oneshot::Sender<Result<CommandResult>>,
}

struct Pending {
    /// Keys with commits in flight, with a count, for range checks. Its mutex is the sequencer.
    ordered: Mutex<BTreeMap<Key, u32>>,
    /// Keys with commits in flight, their commit timestamps and whether each replaces the
    /// value, for readers and for stable-read validation.
    ///
    /// A hot key (a directory's attribute record that every create bumps by delta) has
    /// hundreds of commits in flight at once. They are registered and released in about the
    /// same order, so this is a queue: a release finds its mark at the front, and the mark
    /// being stamped with its timestamp is the last one pushed.
    point: DashMap<Key, VecDeque<(u64, bool)>>,
}

impl Pending {
    fn release(&self, items: &[Mark]) {
        self.release_many(std::iter::once(items));
    }

    /// Releases the marks of many commits at once: one pass under the sequencer mutex for the
    /// ordered counts, then the per-key queues (which readers and validators may see a moment
    /// longer, which only makes them wait or retry, never miss a commit).
    fn release_many<'a>(&self, batches: impl Iterator<Item = &'a [Mark]> + Clone) {
        {
            let mut ordered = self.ordered.lock();
            for (k, _, _) in batches.clone().flatten() {
                let gone = ordered.get_mut(k).is_some_and(|c| {
                    *c -= 1;
                    *c == 0
                });
                if gone {
                    ordered.remove(k);
                }
            }
        }
        for (k, ts, base) in batches.flatten() {
            let mut empty = false;
            if let Some(mut v) = self.point.get_mut(k) {
                if v.front().is_some_and(|t| t.0 == *ts && t.1 == *base) {
                    v.pop_front();
                } else if let Some(p) = v.iter().position(|t| t.0 == *ts && t.1 == *base) {
                    v.remove(p);
                }
                empty = v.is_empty();
            }
            if empty {
                self.point.remove_if(k, |_, v| v.is_empty());
            }
        }
    }

    fn register(&self, ordered: &mut BTreeMap<Key, u32>, key: &[u8], ts: u64, base: bool) {
        // Hot keys are usually registered already: look up before allocating a key.
        match ordered.get_mut(key) {
            Some(c) => *c += 1,
            None => {
                ordered.insert(key.to_vec(), 1);
            }
        }
        match self.point.get_mut(key) {
            Some(mut v) => v.push_back((ts, base)),
            None => self
                .point
                .entry(key.to_vec())
                .or_default()
                .push_back((ts, base)),
        }
    }

    /// Whether a put or delete of `key` is in flight.
    fn has_base(&self, key: &[u8]) -> bool {
        self.point.get(key).is_some_and(|v| v.iter().any(|t| t.1))
    }

    fn set_ts(&self, key: &[u8], ts: u64) {
        if let Some(mut v) = self.point.get_mut(key) {
            if let Some(p) = v.iter().rposition(|t| t.0 == ASSIGNING) {
                v[p].0 = ts;
            }
        }
    }
}

/// One tablet replica (the leader, in the embedded mode).
pub struct Tablet {
    id: u64,
    range: KeyRange,
    state: Arc<TabletState>,
    raft: Raft,
    pending: Arc<Pending>,
    tx: mpsc::UnboundedSender<Proposal>,
    tso: Arc<Tso>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// What a transaction hands a tablet to validate.
#[derive(Clone, Copy, Debug)]
pub struct ReadSet<'a> {
    /// Keys read.
    pub reads: &'a [Key],
    /// Ranges scanned.
    pub scans: &'a [KeyRange],
    /// Keys read *stably*: only a later put or delete conflicts, deltas do not
    /// (see [`crate::Txn::get_stable`]).
    pub stable: &'a [Key],
}

impl Tablet {
    /// Opens (or creates) tablet `id` covering `range` in `dir`, replays its log and starts
    /// its proposer and flusher.
    pub async fn open(
        id: u64,
        range: KeyRange,
        dir: &Path,
        tso: Arc<Tso>,
        config: &TabletConfig,
    ) -> Result<Arc<Tablet>> {
        let state = TabletState::open(&dir.join("state"), &config.tables)?;
        let log = LogStore::open(&dir.join("raft"))?;
        let raft_config = Config {
            cluster_name: format!("tablet-{id}"),
            heartbeat_interval: 500,
            election_timeout_min: 1500,
            election_timeout_max: 3000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_logs),
            max_in_snapshot_log_to_keep: 0,
            max_payload_entries: 64,
            ..Default::default()
        }
        .validate()
        .map_err(|e| Error::Raft(e.to_string()))?;
        let raft = Raft::new(
            1,
            Arc::new(raft_config),
            SingleNodeNetwork,
            log,
            StateMachine::new(state.clone()),
        )
        .await
        .map_err(|e| Error::Raft(e.to_string()))?;
        if !raft
            .is_initialized()
            .await
            .map_err(|e| Error::Raft(e.to_string()))?
        {
            let mut members = BTreeMap::new();
            members.insert(1u64, BasicNode::default());
            raft.initialize(members)
                .await
                .map_err(|e| Error::Raft(e.to_string()))?;
        }
        raft.wait(Some(Duration::from_secs(30)))
            .state(openraft::ServerState::Leader, "tablet leadership")
            .await
            .map_err(|e| Error::Raft(format!("tablet {id} did not become leader: {e}")))?;
        // Replay: wait until everything in the log is applied before serving.
        let last = raft.metrics().borrow().last_log_index;
        raft.wait(Some(Duration::from_secs(600)))
            .applied_index_at_least(last, "log replay")
            .await
            .map_err(|e| Error::Raft(format!("tablet {id} replay: {e}")))?;
        state.recount_locks()?;
        tso.observe(state.max_commit_ts())?;

        let (tx, rx) = mpsc::unbounded_channel();
        let pending = Arc::new(Pending {
            ordered: Mutex::new(BTreeMap::new()),
            point: DashMap::new(),
        });
        let tablet = Arc::new(Tablet {
            id,
            range,
            state: state.clone(),
            raft: raft.clone(),
            pending: pending.clone(),
            tx,
            tso,
            tasks: Mutex::new(Vec::new()),
        });
        let proposer = tokio::spawn(run_proposer(
            raft,
            rx,
            pending,
            state.clone(),
            config.max_batch,
            config.max_inflight,
        ));
        let flusher = {
            let state = state.clone();
            let window = config.window_ms;
            let every = Duration::from_millis(config.flush_interval_ms.max(10));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let s = state.clone();
                    match tokio::task::spawn_blocking(move || s.flush_once(window)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::error!(tablet = id, error = %e, "flush failed"),
                        Err(_) => return,
                    }
                }
            })
        };
        tablet.tasks.lock().extend([proposer, flusher]);
        Ok(tablet)
    }

    /// The tablet id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The key range.
    pub fn range(&self) -> &KeyRange {
        &self.range
    }

    /// Whether `key` has a commit newer than `ts`, applied or in flight.
    pub fn changed_since(&self, key: &[u8], ts: u64) -> Result<bool> {
        Ok(self.pending.point.contains_key(key) || self.state.mvcc().newer_than(key, ts)?)
    }

    /// The replica state (for tools and tests).
    pub fn state(&self) -> &Arc<TabletState> {
        &self.state
    }

    /// Stops the background tasks and Raft.
    pub async fn shutdown(&self) {
        let tasks: Vec<_> = self.tasks.lock().drain(..).collect();
        for t in tasks {
            t.abort();
        }
        let _ = self.raft.shutdown().await;
    }

    fn lock_conflict(
        &self,
        key: &[u8],
        rec: &LockRecord,
        own: u64,
        delta_write: bool,
        write: bool,
    ) -> Result<()> {
        for w in &rec.writers {
            if w.start_ts == own {
                continue;
            }
            if delta_write && matches!(w.mutation, Mutation::Delta(_)) {
                continue;
            }
            return Err(Error::Locked {
                key: key.to_vec(),
                start_ts: w.start_ts,
            });
        }
        if write {
            if let Some(r) = rec.readers.iter().find(|r| r.start_ts != own) {
                return Err(Error::Locked {
                    key: key.to_vec(),
                    start_ts: r.start_ts,
                });
            }
        }
        Ok(())
    }

    /// Validates a transaction against this tablet's state. Runs under the sequencer mutex.
    fn validate(
        &self,
        ordered: &BTreeMap<Key, u32>,
        start_ts: u64,
        rs: ReadSet<'_>,
        writes: &[(Key, Mutation)],
        own: u64,
    ) -> Result<()> {
        let mvcc = self.state.mvcc();
        let locks = self.state.may_have_locks();
        for k in rs.reads {
            if self.pending.point.contains_key(k) {
                return Err(Error::conflict(k, "a commit of this key is in flight"));
            }
            if mvcc.newer_than(k, start_ts)? {
                return Err(Error::conflict(
                    k,
                    "read key changed after the transaction started",
                ));
            }
            if locks {
                self.lock_conflict(k, &command::read_locks(mvcc, k)?, own, false, false)?;
            }
        }
        for k in rs.stable {
            if self.pending.has_base(k) {
                return Err(Error::conflict(
                    k,
                    "a put or delete of this key is in flight",
                ));
            }
            if mvcc.base_newer_than(k, start_ts)? {
                return Err(Error::conflict(
                    k,
                    "a stably read key was replaced after the transaction started",
                ));
            }
            if locks {
                self.lock_conflict(k, &command::read_locks(mvcc, k)?, own, true, false)?;
            }
        }
        for (k, m) in writes {
            let delta = matches!(m, Mutation::Delta(_));
            if !delta {
                if self.pending.point.contains_key(k) {
                    return Err(Error::conflict(k, "a commit of this key is in flight"));
                }
                if mvcc.newer_than(k, start_ts)? {
                    return Err(Error::conflict(
                        k,
                        "written key changed after the transaction started",
                    ));
                }
            }
            if locks {
                self.lock_conflict(k, &command::read_locks(mvcc, k)?, own, delta, true)?;
            }
        }
        for r in rs.scans {
            let end = r.end.clone().map_or(Bound::Unbounded, Bound::Excluded);
            if let Some((k, _)) = ordered
                .range((Bound::Included(r.start.clone()), end))
                .next()
            {
                return Err(Error::conflict(
                    k,
                    "a commit in a scanned range is in flight",
                ));
            }
            if let Some(k) = mvcc.range_newer_than(r, start_ts)? {
                return Err(Error::conflict(
                    &k,
                    "a key in a scanned range changed (phantom)",
                ));
            }
            if locks {
                for (lk, rec) in self.locks_in(r)? {
                    self.lock_conflict(&lk, &rec, own, false, false)?;
                }
            }
        }
        Ok(())
    }

    fn locks_in(&self, r: &KeyRange) -> Result<Vec<(Key, LockRecord)>> {
        let lk = |k: &[u8]| command::lock_key(k);
        let range = KeyRange {
            start: lk(&r.start),
            end: Some(
                r.end
                    .as_deref()
                    .map_or_else(|| vec![INTERNAL_PREFIX, b'L' + 1], lk),
            ),
        };
        let rows = self.state.mvcc().scan(&range, u64::MAX, usize::MAX)?;
        rows.into_iter()
            .map(|(k, v)| {
                let rec: LockRecord = bincode::deserialize(&v)
                    .map_err(|e| Error::Corruption(format!("lock record: {e}")))?;
                Ok((k[2..].to_vec(), rec))
            })
            .collect()
    }

    fn enqueue(
        &self,
        cmd: Command,
        pending: Vec<Mark>,
    ) -> Result<oneshot::Receiver<Result<CommandResult>>> {
        let (reply, rx) = oneshot::channel();
        if let Err(e) = self.tx.send(Proposal {
            cmd,
            pending,
            reply,
        }) {
            self.pending.release(&e.0.pending);
            return Err(Error::Shutdown);
        }
        Ok(rx)
    }

    async fn wait_reply(rx: oneshot::Receiver<Result<CommandResult>>) -> Result<CommandResult> {
        rx.await.map_err(|_| Error::Shutdown)?
    }

    /// Commits a transaction whose keys all live in this tablet, in one Raft entry.
    /// Returns the commit timestamp.
    pub async fn commit_1pc(
        &self,
        start_ts: u64,
        rs: ReadSet<'_>,
        writes: Vec<(Key, Mutation)>,
    ) -> Result<u64> {
        let (rx, commit_ts) = {
            let mut ordered = self.pending.ordered.lock();
            self.validate(&ordered, start_ts, rs, &writes, start_ts)?;
            for (k, m) in &writes {
                self.pending
                    .register(&mut ordered, k, ASSIGNING, m.replaces());
            }
            let commit_ts = match self.tso.next() {
                Ok(ts) => ts,
                Err(e) => {
                    drop(ordered);
                    let items: Vec<Mark> = writes
                        .iter()
                        .map(|(k, m)| (k.clone(), ASSIGNING, m.replaces()))
                        .collect();
                    self.pending.release(&items);
                    return Err(e);
                }
            };
            let items: Vec<Mark> = writes
                .iter()
                .map(|(k, m)| (k.clone(), commit_ts, m.replaces()))
                .collect();
            for (k, _) in &writes {
                self.pending.set_ts(k, commit_ts);
            }
            (
                self.enqueue(Command::Commit { commit_ts, writes }, items)?,
                commit_ts,
            )
        };
        match Self::wait_reply(rx).await? {
            CommandResult::Ok => Ok(commit_ts),
            other => Err(Error::Raft(format!(
                "unexpected result of a one-phase commit: {other:?}"
            ))),
        }
    }

    /// Phase one of 2PC on this tablet: validate and lock.
    pub async fn prewrite(
        &self,
        start_ts: u64,
        primary: &[u8],
        rs: ReadSet<'_>,
        writes: Vec<(Key, Mutation)>,
    ) -> Result<()> {
        let rx = {
            let mut ordered = self.pending.ordered.lock();
            self.validate(&ordered, start_ts, rs, &writes, start_ts)?;
            let mut items = Vec::new();
            let marks = writes
                .iter()
                .map(|(k, m)| (k, m.replaces()))
                .chain(rs.reads.iter().map(|k| (k, false)));
            for (k, base) in marks {
                self.pending.register(&mut ordered, k, start_ts, base);
                items.push((k.clone(), start_ts, base));
            }
            let cmd = Command::Prewrite {
                start_ts,
                primary: primary.to_vec(),
                writes,
                reads: rs.reads.to_vec(),
                lock_ms: now_ms(),
            };
            self.enqueue(cmd, items)?
        };
        match Self::wait_reply(rx).await? {
            CommandResult::Ok => Ok(()),
            other => Err(Error::Raft(format!(
                "unexpected result of a prewrite: {other:?}"
            ))),
        }
    }

    /// Phase two of 2PC on this tablet.
    pub async fn commit_locks(
        &self,
        start_ts: u64,
        commit_ts: u64,
        writes: Vec<(Key, Mutation)>,
        reads: Vec<Key>,
        primary: Option<Key>,
    ) -> Result<CommandResult> {
        let rx = self.enqueue(
            Command::CommitLocks {
                start_ts,
                commit_ts,
                writes,
                reads,
                primary,
            },
            Vec::new(),
        )?;
        Self::wait_reply(rx).await
    }

    /// Rolls back a 2PC transaction's locks on this tablet.
    pub async fn rollback(
        &self,
        start_ts: u64,
        keys: Vec<Key>,
        primary: Option<Key>,
    ) -> Result<CommandResult> {
        let rx = self.enqueue(
            Command::Rollback {
                start_ts,
                keys,
                primary,
            },
            Vec::new(),
        )?;
        Self::wait_reply(rx).await
    }

    /// The keys in `range` that carry locks.
    pub fn scan_locks(&self, range: &KeyRange) -> Result<Vec<(Key, LockRecord)>> {
        self.locks_in(range)
    }

    /// The locks on `key`.
    pub fn locks(&self, key: &[u8]) -> Result<LockRecord> {
        command::read_locks(self.state.mvcc(), key)
    }

    /// The status of a 2PC transaction whose primary lives here.
    pub fn txn_status(&self, start_ts: u64) -> Result<Option<TxnStatus>> {
        command::read_status(self.state.mvcc(), start_ts)
    }

    async fn wait_pending(&self, mut blocked: impl FnMut() -> bool) -> Result<()> {
        let deadline = tokio::time::Instant::now() + PENDING_WAIT;
        loop {
            let notified = self.state.applied_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !blocked() {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() && blocked() {
                return Err(Error::Raft(
                    "timed out waiting for an in-flight commit to apply".into(),
                ));
            }
        }
    }

    /// A snapshot read of one key at `ts`.
    pub async fn get(&self, key: &[u8], ts: u64) -> Result<Option<Value>> {
        let blocked = || {
            self.pending
                .point
                .get(key)
                .is_some_and(|v| v.iter().any(|t| t.0 <= ts))
        };
        if blocked() {
            self.wait_pending(blocked).await?;
        }
        if self.state.may_have_locks() {
            let rec = self.locks(key)?;
            if let Some(w) = rec.writers.iter().find(|w| w.start_ts <= ts) {
                return Err(Error::Locked {
                    key: key.to_vec(),
                    start_ts: w.start_ts,
                });
            }
        }
        self.state.mvcc().get(key, ts)
    }

    /// Every live entry of `range` at `ts`, for any engine (see [`crate::mvcc::MvccStore::dump`]). Waits for
    /// commits in flight at `ts`; fails with `Locked` on an unresolved 2PC lock.
    pub async fn dump(&self, range: &KeyRange, ts: u64) -> Result<Vec<(Key, Value)>> {
        let blocked = || {
            self.pending
                .point
                .iter()
                .any(|e| range.contains(e.key()) && e.value().iter().any(|t| t.0 <= ts))
        };
        if blocked() {
            self.wait_pending(blocked).await?;
        }
        if self.state.may_have_locks() {
            if let Some((k, rec)) = self.locks_in(range)?.into_iter().next() {
                let start_ts = rec.writers.first().map_or(0, |w| w.start_ts);
                return Err(Error::Locked { key: k, start_ts });
            }
        }
        self.state.mvcc().dump(range, ts)
    }

    /// A snapshot scan of up to `limit` entries of `range` (which must lie in this tablet).
    pub async fn scan(&self, range: &KeyRange, ts: u64, limit: usize) -> Result<Vec<(Key, Value)>> {
        let blocked = || {
            let ordered = self.pending.ordered.lock();
            let end = range.end.clone().map_or(Bound::Unbounded, Bound::Excluded);
            ordered
                .range((Bound::Included(range.start.clone()), end))
                .any(|(k, _)| {
                    self.pending
                        .point
                        .get(k)
                        .is_some_and(|v| v.iter().any(|t| t.0 <= ts))
                })
        };
        if blocked() {
            self.wait_pending(blocked).await?;
        }
        if self.state.may_have_locks() {
            for (k, rec) in self.locks_in(range)? {
                if let Some(w) = rec.writers.iter().find(|w| w.start_ts <= ts) {
                    return Err(Error::Locked {
                        key: k.to_vec(),
                        start_ts: w.start_ts,
                    });
                }
            }
        }
        self.state.mvcc().scan(range, ts, limit)
    }
}

async fn run_proposer(
    raft: Raft,
    mut rx: mpsc::UnboundedReceiver<Proposal>,
    pending: Arc<Pending>,
    state: Arc<TabletState>,
    max_batch: usize,
    max_inflight: usize,
) {
    let inflight = Arc::new(tokio::sync::Semaphore::new(max_inflight.max(1)));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = inflight.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let mut cmds = Vec::with_capacity(batch.len());
        let mut waiters = Vec::with_capacity(batch.len());
        for p in batch {
            cmds.push(p.cmd);
            waiters.push((p.pending, p.reply));
        }
        // Submitting in queue order keeps the log in commit-timestamp order.
        let submitted = raft.client_write_ff(cmds).await;
        let pending = pending.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let outcome: std::result::Result<Vec<CommandResult>, String> = match submitted {
                Ok(resp_rx) => match resp_rx.await {
                    Ok(Ok(resp)) => Ok(resp.data),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("raft dropped the proposal".to_string()),
                },
                Err(e) => Err(e.to_string()),
            };
            match outcome {
                Ok(results) => {
                    pending.release_many(waiters.iter().map(|(items, _)| items.as_slice()));
                    for ((_, reply), res) in waiters.into_iter().zip(results) {
                        let _ = reply.send(Ok(res));
                    }
                }
                Err(msg) => {
                    pending.release_many(waiters.iter().map(|(items, _)| items.as_slice()));
                    for (_, reply) in waiters {
                        let _ = reply.send(Err(Error::Raft(msg.clone())));
                    }
                }
            }
            state.applied_notify.notify_waiters();
            drop(permit);
        });
    }
}
