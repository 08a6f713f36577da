//! A tablet: one key range, one Raft group, one MVCC store, and the leader-side pipeline that
//! validates and orders commits.
//!
//! Commit flow on the leader (the only replica in the embedded mode). No step holds a lock
//! across the others; the only tablet-wide critical section is taking a ticket.
//! 1. *Register.* The transaction puts a pending mark on every key it writes (and, for a 2PC
//!    prewrite, every key it reads), with a placeholder timestamp. Registering a put or delete
//!    fails when the key already carries another transaction's mark, so write-write conflicts
//!    are decided here, per key and atomically. Delta writes always register: they commute.
//! 2. *Ticket.* Under a tiny mutex it takes the tablet's next sequence number and, for a
//!    one-phase commit, its commit timestamp from the oracle, so ticket order is timestamp
//!    order. Its marks get the timestamp.
//! 3. *Validate.* None of its read keys, stably read keys or scanned ranges carries another
//!    transaction's mark or a version newer than its start timestamp, no written key has a newer
//!    version, and no key has a foreign 2PC lock.
//! 4. *Propose.* It hands the command, or a *skip* when validation failed, to the proposer
//!    under its ticket. The proposer puts them back in ticket order and drains them into one
//!    Raft entry (a batch), so the log is in commit-timestamp order. The log writer syncs many
//!    batches with one `fdatasync`.
//! 5. When the entry is applied, the marks are dropped and the waiters are answered.
//!
//! Why this is serializable (the argument of Silo's commit protocol): of two conflicting
//! transactions, the one with the later ticket validates after the other registered (which came
//! before the other's ticket), so it sees the other's mark, or its committed version once
//! applied, and aborts. The one with the earlier ticket commits first and at the lower
//! timestamp, so timestamp order agrees with the serialization order.
//!
//! A snapshot read at `ts` that meets a mark with a timestamp `<= ts`, or a placeholder, waits
//! for it to be applied (or dropped): a commit registers before it takes its timestamp, so any
//! commit with a timestamp below a reader's has its marks in place by the time the reader looks.
//! A reader waits only for marks registered before it started looking (each registration takes
//! a number from a counter, and the reader notes the counter first): a commit registered later
//! takes its timestamp later, above the reader's, so it cannot matter to the reader, and a
//! stream of new writers can no longer keep a reader waiting.
//!
//! The old design held one tablet-wide mutex across validation and registration. On 2 cores
//! with 1,024 clients the tokio workers spent a third of their context switches parked on it,
//! and a worker descheduled while holding it stalled every commit.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use openraft::{BasicNode, Config, SnapshotPolicy};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use crate::command::{self, Command, CommandBatch, CommandResult, LockRecord, TxnStatus};
use crate::engine::EngineKind;
use crate::error::{Error, Result};
use crate::keys::{FastHash, InlineKey, Key, KeyRange, Value, INTERNAL_PREFIX};
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
    /// Threads of the runtime that runs the Raft pipelines of a database's tablets (see
    /// [`PipelineRuntime`]).
    pub pipeline_threads: usize,
    /// The chunk size of the Raft log's chunk store: a purge frees whole chunks.
    pub log_chunk_bytes: u64,
    /// The size of the Raft log's chunk store, allocated when the tablet is created (it must
    /// hold the log between two purges: the MVCC window and `snapshot_logs` entries).
    pub log_store_bytes: u64,
    /// When a commit is on disk (only the only voter of a group may defer).
    pub log_sync: LogSync,
}

/// When a tablet's commits reach the medium.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogSync {
    /// Before the commit is acknowledged (an `fdatasync` shared by the commits of a group).
    #[default]
    EveryCommit,
    /// When [`Tablet::sync`] (or [`crate::Db::sync`]) is called, and before the flusher
    /// writes anything to the engines. A commit is acknowledged once its log record is written
    /// to the kernel: it survives the death of the process (`kill -9`), and a power cut only
    /// once synced, as on a local file system (the FUSE mount syncs on `fsync` and every
    /// second). Refused for a replicated tablet: a vote counts on the log being durable.
    Deferred,
}

impl Default for TabletConfig {
    fn default() -> Self {
        TabletConfig {
            window_ms: 5_000,
            // Small, frequent flushes: a second's worth of keys took a core for most of half a
            // second, and commits dipped while it ran.
            flush_interval_ms: 250,
            snapshot_logs: 20_000,
            max_batch: 4096,
            max_inflight: 8,
            tables: vec![(1, EngineKind::Hash), (2, EngineKind::Lsm)],
            pipeline_threads: 2,
            log_chunk_bytes: crate::raft::CHUNK_BYTES,
            log_store_bytes: crate::raft::STORE_BYTES,
            log_sync: LogSync::EveryCommit,
        }
    }
}

/// How a tablet's Raft group reaches beyond this node. Without it a tablet is the only voter
/// of its group (the embedded mode).
#[derive(Clone, Debug)]
pub struct Replication {
    /// This node's id in the group.
    pub node: u64,
    /// The channels to the other nodes.
    pub peers: crate::raft::Peers,
    /// Where this node's Raft service delivers the group's messages.
    pub router: crate::raft::RaftRouter,
    /// The group's first members, on the one node that creates the group; `None` on the
    /// others, and on every node after the first start (the membership is in the log).
    pub init: Option<BTreeMap<u64, BasicNode>>,
    /// Raft heartbeat interval, ms.
    pub heartbeat_ms: u64,
    /// Raft election timeout: a random value in `[election_ms, 2 * election_ms)`.
    pub election_ms: u64,
    /// This group's log carries the marks of the node's timestamp oracle (which must be
    /// [`Tso::replicated`]): its leader commits a mark before it serves and raises it as
    /// timestamps approach it. One group per cluster does this (the first tablet's).
    pub timestamps: bool,
}

/// What a mark stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MarkKind {
    /// A put or delete: conflicts with every other transaction's mark.
    Base,
    /// A delta: commutes with other deltas and with puts, but not with a 2PC read lock in
    /// the making (the reader's value would not include it).
    Delta,
    /// A key a 2PC prewrite read: writers must not slip in before its read lock is applied.
    Read,
    /// A [`crate::DeltaOp::Set`]: commutes with other deltas, but stable readers and other
    /// field setters conflict with it, as with a put.
    Field,
}

/// One pending mark on a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mark {
    /// The commit timestamp, [`ASSIGNING`] until it is taken (a prewrite uses its start
    /// timestamp).
    ts: u64,
    /// The transaction's start timestamp, which names it.
    owner: u64,
    kind: MarkKind,
    /// The registration's number (see [`Pending::registrations`]).
    reg: u64,
}

impl Mark {
    /// Whether a transaction registering `kind` must fail because of this (foreign) mark.
    fn refuses(&self, kind: MarkKind) -> bool {
        match kind {
            MarkKind::Base => true,
            MarkKind::Delta => self.kind == MarkKind::Read,
            // A field set is serialized with other sets and puts, not with other deltas.
            MarkKind::Field => {
                matches!(self.kind, MarkKind::Read | MarkKind::Base | MarkKind::Field)
            }
            // A reader's conflicts are found by its validation, which follows.
            MarkKind::Read => false,
        }
    }
}

/// A mark a transaction holds, to release once its proposal is applied (or abandoned).
struct HeldMark {
    key: InlineKey,
    owner: u64,
    kind: MarkKind,
    /// Whether the key is also in [`Pending::ordered`] (keys of scannable tables only).
    ordered: bool,
}

/// The marks of one transaction.
type Held = Vec<HeldMark>;

struct Proposal {
    cmd: Command,
    held: Held,
    reply: oneshot::Sender<Result<CommandResult>>,
}

/// A proposal, or `None` when the ticket's transaction gave up, under its ticket.
struct Ticketed {
    seq: u64,
    proposal: Option<Proposal>,
}

struct Pending {
    /// Keys with marks, with a count, for range checks. A short critical section: one
    /// acquisition registers or releases all keys of a transaction (or of a Raft batch).
    ordered: Mutex<BTreeMap<InlineKey, u32>>,
    /// The marks of each key. A hot key (a directory's attribute record that every create bumps
    /// by delta) has hundreds of commits in flight; they are registered and released in about
    /// the same order, so this is a queue and a release usually finds its mark at the front.
    point: DashMap<InlineKey, VecDeque<Mark>, FastHash>,
    /// The last ticket handed out. Its mutex orders tickets and commit timestamps together.
    seq: Mutex<u64>,
    /// Registrations so far. A reader notes it before it looks at marks and waits only for
    /// marks with a number at or below it (see the module docs).
    registrations: std::sync::atomic::AtomicU64,
    /// Told of write marks on watched keys (see [`crate::watch`]); the store's slot.
    watch: Arc<crate::watch::WatchSlot>,
}

impl Pending {
    /// Marks `keys` for `owner`. A mark that another transaction's mark refuses (see
    /// [`Mark::refuses`]) is a conflict: then nothing stays registered. The check and the push
    /// happen under one shard guard, so two registrations of a key are never both unaware of
    /// each other. Returns what to release.
    /// Keys for which `scannable` holds also enter the ordered set, for range checks; keys of
    /// hash tables cannot be scanned, so they skip it.
    fn register<'k>(
        &self,
        owner: u64,
        ts: u64,
        keys: impl Iterator<Item = (&'k Key, MarkKind)>,
        scannable: impl Fn(&[u8]) -> bool,
    ) -> Result<Held> {
        let mut held: Held = Vec::new();
        let reg = self
            .registrations
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        for (k, kind) in keys {
            let ik = InlineKey::new(k);
            let mark = Mark {
                ts,
                owner,
                kind,
                reg,
            };
            let conflict = {
                let mut q = self.point.entry(ik.clone()).or_default();
                if q.iter().any(|m| m.owner != owner && m.refuses(kind)) {
                    true
                } else {
                    q.push_back(mark);
                    false
                }
            };
            if conflict {
                self.release_marks(&held);
                return Err(Error::conflict(k, "a commit of this key is in flight"));
            }
            held.push(HeldMark {
                key: ik,
                owner,
                kind,
                ordered: scannable(k),
            });
        }
        if held.iter().any(|h| h.ordered) {
            let mut ordered = self.ordered.lock();
            for h in held.iter().filter(|h| h.ordered) {
                match ordered.get_mut(&h.key) {
                    Some(c) => *c += 1,
                    None => {
                        ordered.insert(h.key.clone(), 1);
                    }
                }
            }
        }
        // After the marks are in place, before the ticket (see `crate::watch`).
        for h in held.iter().filter(|h| h.kind != MarkKind::Read) {
            if let Some(w) = self.watch.for_key(h.key.as_bytes()) {
                w.pending(h.key.as_bytes());
            }
        }
        Ok(held)
    }

    fn release(&self, held: &Held) {
        self.release_many(std::iter::once(held));
    }

    /// Releases the marks of many proposals at once: one pass under the `ordered` mutex, then
    /// the per-key queues (which readers and validators may see a moment longer, which only
    /// makes them wait or retry, never miss a commit).
    fn release_many<'a>(&self, batches: impl Iterator<Item = &'a Held> + Clone) {
        if batches.clone().flatten().any(|h| h.ordered) {
            let mut ordered = self.ordered.lock();
            for h in batches.clone().flatten().filter(|h| h.ordered) {
                let gone = ordered.get_mut(&h.key).is_some_and(|c| {
                    *c -= 1;
                    *c == 0
                });
                if gone {
                    ordered.remove(&h.key);
                }
            }
        }
        for held in batches {
            self.release_marks(held);
            for h in held.iter().filter(|h| h.kind != MarkKind::Read) {
                if let Some(w) = self.watch.for_key(h.key.as_bytes()) {
                    w.settled(h.key.as_bytes());
                }
            }
        }
    }

    /// Drops marks from the per-key queues only (for a registration that never reached
    /// `ordered`).
    fn release_marks(&self, held: &Held) {
        for HeldMark {
            key: k,
            owner,
            kind,
            ..
        } in held
        {
            let mut empty = false;
            if let Some(mut q) = self.point.get_mut(k) {
                let hit = |m: &Mark| m.owner == *owner && m.kind == *kind;
                if q.front().is_some_and(hit) {
                    q.pop_front();
                } else if let Some(p) = q.iter().position(hit) {
                    q.remove(p);
                }
                empty = q.is_empty();
            }
            if empty {
                self.point.remove_if(k, |_, q| q.is_empty());
            }
        }
    }

    /// Stamps `owner`'s placeholder marks with its commit timestamp.
    fn set_ts(&self, held: &Held, ts: u64) {
        for HeldMark { key: k, owner, .. } in held {
            if let Some(mut q) = self.point.get_mut(k) {
                for m in q.iter_mut().rev() {
                    if m.owner == *owner && m.ts == ASSIGNING {
                        m.ts = ts;
                        break;
                    }
                }
            }
        }
    }

    /// Whether `key` carries a mark of a transaction other than `owner`.
    fn foreign(&self, key: &InlineKey, owner: u64) -> bool {
        self.point
            .get(key)
            .is_some_and(|q| q.iter().any(|m| m.owner != owner))
    }

    /// Whether any transaction's write mark (not a prewrite's read mark) is on `key`.
    fn has_write_mark(&self, key: &[u8]) -> bool {
        self.point
            .get(&InlineKey::new(key))
            .is_some_and(|q| q.iter().any(|m| m.kind != MarkKind::Read))
    }

    /// Whether a put or delete of `key` by a transaction other than `owner` is in flight.
    fn foreign_base(&self, key: &[u8], owner: u64) -> bool {
        self.point.get(&InlineKey::new(key)).is_some_and(|q| {
            q.iter()
                .any(|m| matches!(m.kind, MarkKind::Base | MarkKind::Field) && m.owner != owner)
        })
    }

    /// The registration number a reader starting now waits up to.
    fn reader_horizon(&self) -> u64 {
        self.registrations.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The first key with marks in `range` for which `pred` holds, decided under the
    /// `ordered` guard.
    fn first_in_range(
        &self,
        range: &KeyRange,
        mut pred: impl FnMut(&InlineKey) -> bool,
    ) -> Option<Key> {
        let ordered = self.ordered.lock();
        let end = range
            .end
            .as_deref()
            .map_or(Bound::Unbounded, |e| Bound::Excluded(InlineKey::new(e)));
        ordered
            .range((Bound::Included(InlineKey::new(&range.start)), end))
            .find(|(k, _)| pred(k))
            .map(|(k, _)| k.to_vec())
    }

    /// Whether a snapshot read of `range` at `ts`, which started at registration `horizon`,
    /// must wait for a commit in flight.
    fn range_blocks(&self, range: &KeyRange, ts: u64, horizon: u64) -> bool {
        self.first_in_range(range, |k| self.blocks(k, ts, horizon))
            .is_some()
    }

    /// Whether a snapshot read at `ts`, started at registration `horizon`, must wait for a
    /// commit of `key` in flight.
    fn blocks(&self, key: &InlineKey, ts: u64, horizon: u64) -> bool {
        self.point
            .get(key)
            .is_some_and(|q| blocks_read(&q, ts, horizon))
    }

    /// The first key in `range` that carries a mark of a transaction other than `owner`.
    /// Decided under the `ordered` guard: a key listed there has its marks in `point` until
    /// it leaves the list (registration adds to `point` first, release removes from `ordered`
    /// first), so a foreign mark seen absent here was released before the guard was taken,
    /// and its commit, if any, is applied and visible to the version check that follows.
    fn foreign_in_range(&self, range: &KeyRange, owner: u64) -> Option<Key> {
        self.first_in_range(range, |k| self.foreign(k, owner))
    }
}

/// How a transaction touches a key, for the check against 2PC locks on it.
#[derive(Clone, Copy)]
enum Access<'a> {
    /// An ordinary read: every foreign writer lock conflicts.
    Read,
    /// A stable read: only locks of puts, deletes and field sets conflict.
    Stable,
    /// A write of this mutation.
    Write(&'a Mutation),
}

/// The mark a write takes.
fn write_kind(m: &Mutation) -> MarkKind {
    if m.replaces() {
        MarkKind::Base
    } else if m.unsettles() {
        MarkKind::Field
    } else {
        MarkKind::Delta
    }
}

/// Whether a snapshot read at `ts` that started at registration `horizon` must wait for one of
/// `marks`: a commit registered before the reader started whose timestamp is at or below `ts`,
/// or is still being taken (it may end up below `ts`).
fn blocks_read(marks: &VecDeque<Mark>, ts: u64, horizon: u64) -> bool {
    marks
        .iter()
        .any(|m| m.reg <= horizon && (m.ts <= ts || m.ts == ASSIGNING))
}

/// A ticket taken but not yet handed to the proposer. Dropping it unused sends a skip, so the
/// proposer never waits for a ticket whose transaction gave up (or panicked).
struct Ticket {
    seq: u64,
    /// `None` once used.
    tx: Option<mpsc::UnboundedSender<Ticketed>>,
}

impl Ticket {
    /// Hands `proposal` to the proposer. Fails after a shutdown, returning the marks that the
    /// proposal held.
    fn propose(mut self, proposal: Proposal) -> std::result::Result<(), Held> {
        let Some(tx) = self.tx.take() else {
            return Err(proposal.held);
        };
        tx.send(Ticketed {
            seq: self.seq,
            proposal: Some(proposal),
        })
        .map_err(|e| e.0.proposal.map(|p| p.held).unwrap_or_default())
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Ticketed {
                seq: self.seq,
                proposal: None,
            });
        }
    }
}

/// Records a snapshot reference at the durable index and frees the log's disk space up to it.
async fn reclaim_log(state: &Arc<TabletState>, log: &LogStore) -> Result<()> {
    let s = state.clone();
    let durable = tokio::task::spawn_blocking(move || s.reference_durable())
        .await
        .map_err(|e| Error::Raft(format!("reclaim task: {e}")))??;
    match durable {
        Some(upto) => log.reclaim(upto).await,
        None => Ok(()),
    }
}

/// The threads that run the tablets' Raft pipelines: openraft's core and state-machine tasks,
/// the proposers and the reply tasks.
///
/// They get a runtime of their own because they are serial stages that every commit passes:
/// on the application's runtime each of them waited in the run queue behind up to a thousand
/// client tasks at every step, which put several milliseconds on every batch (a 7 ms Raft round
/// trip for a 0.3 ms `fdatasync` and a 0.5 ms apply) while the cores sat partly idle. A thread
/// of this runtime is runnable only when a stage has work, so the OS schedules it at once.
pub struct PipelineRuntime {
    rt: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
}

impl std::fmt::Debug for PipelineRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineRuntime").finish()
    }
}

impl PipelineRuntime {
    /// Starts a runtime with `threads` threads named `tafdb-raft`.
    pub fn new(threads: usize) -> Result<PipelineRuntime> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("tafdb-raft")
            .enable_all()
            .build()?;
        Ok(PipelineRuntime {
            handle: rt.handle().clone(),
            rt: Mutex::new(Some(rt)),
        })
    }

    fn handle(&self) -> Result<&tokio::runtime::Handle> {
        if self.rt.lock().is_none() {
            return Err(Error::Shutdown);
        }
        Ok(&self.handle)
    }

    /// Stops the runtime and waits (up to 10 s) until its tasks are gone, so that nothing they
    /// held (a tablet's engines, its log) is still open when this returns.
    pub async fn shutdown(&self) {
        let rt = self.rt.lock().take();
        if let Some(rt) = rt {
            let _ = tokio::task::spawn_blocking(move || {
                rt.shutdown_timeout(Duration::from_secs(10));
            })
            .await;
        }
    }
}

impl Drop for PipelineRuntime {
    fn drop(&mut self) {
        // Dropping a runtime blocks until its tasks finish, which is not allowed inside another
        // runtime (where a `Db` is usually dropped); the tasks are only waiting on channels.
        if let Some(rt) = self.rt.get_mut().take() {
            rt.shutdown_background();
        }
    }
}

/// One tablet replica (the leader, in the embedded mode).
pub struct Tablet {
    /// The Raft log (for its fill level).
    log: LogStore,
    id: u64,
    range: KeyRange,
    state: Arc<TabletState>,
    raft: Raft,
    pending: Arc<Pending>,
    tx: mpsc::UnboundedSender<Ticketed>,
    tso: Arc<Tso>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Tells the flusher to stop after the round it is in.
    stop_flusher: tokio::sync::watch::Sender<bool>,
    flusher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Keeps the pipeline's threads alive as long as the tablet.
    _pipeline: Arc<PipelineRuntime>,
    /// Set by [`Tablet::shutdown`]: no new tickets, and readers stop waiting.
    closed: std::sync::atomic::AtomicBool,
    /// The Raft term this replica serves in, 0 while it does not (see [`Tablet::is_serving`]).
    serving: Arc<std::sync::atomic::AtomicU64>,
    /// Read-index rounds of a replicated tablet (see [`Tablet::confirm_reads`]); `None` for
    /// the only voter of a group, which cannot be deposed.
    reads: Option<ReadIndex>,
    /// Where commit timestamps come from when the oracle is replicated (it may live on
    /// another node); set by the database once it is open.
    timestamps: std::sync::OnceLock<Arc<dyn crate::tso::TimestampSource>>,
    /// Commits waiting for a ticket with such a timestamp (see
    /// [`Tablet::ticket_with_replicated_ts`]).
    ts_waiting: crate::remote::Combiner<(), Result<(Ticket, u64)>>,
}

/// Leadership confirmations for reads, one round at a time, each shared by every read that
/// arrived before it started.
struct ReadIndex {
    /// Rounds started and finished, and the outcome of the last one.
    state: tokio::sync::Mutex<(u64, std::result::Result<(), String>)>,
    started: std::sync::atomic::AtomicU64,
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
    /// its proposer and flusher; its Raft pipeline runs on `pipeline`.
    ///
    /// Without `replication` the tablet is its group's only voter: it waits to lead and to
    /// have replayed its log, then serves. With it, the tablet is one replica of a group
    /// spread over nodes: it serves only while it leads, from the moment it has applied every
    /// entry committed before its term (see [`Tablet::is_serving`]), and answers
    /// [`Error::NotLeader`] otherwise.
    pub async fn open(
        id: u64,
        range: KeyRange,
        dir: &Path,
        tso: Arc<Tso>,
        config: &TabletConfig,
        pipeline: &Arc<PipelineRuntime>,
        replication: Option<Replication>,
    ) -> Result<Arc<Tablet>> {
        let rt = pipeline.handle()?.clone();
        let state = TabletState::open(&dir.join("state"), &config.tables)?;
        let log = LogStore::open(
            &dir.join("raft"),
            config.log_chunk_bytes,
            config.log_store_bytes,
        )?;
        if config.log_sync == LogSync::Deferred {
            if replication.is_some() {
                return Err(Error::InvalidArgument(format!(
                    "tablet {id}: a replicated tablet cannot defer its log syncs (a vote counts \
                     on the log being durable)"
                )));
            }
            log.set_deferred_sync(true)?;
            // Nothing reaches the engines (whose rows carry log indexes) before the entries
            // they come from are on the medium: after a power cut the log would otherwise
            // end below what the engines hold.
            let l = log.clone();
            state.set_before_flush(Box::new(move || l.sync()));
        }
        let log_fill = log.clone();
        let (heartbeat, election) = match &replication {
            Some(r) => (r.heartbeat_ms.max(1), r.election_ms.max(2)),
            None => (500, 1500),
        };
        let raft_config = Config {
            cluster_name: format!("tablet-{id}"),
            heartbeat_interval: heartbeat,
            election_timeout_min: election,
            election_timeout_max: election * 2,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_logs),
            max_in_snapshot_log_to_keep: 0,
            max_payload_entries: 64,
            // A shipped snapshot travels in 1 MiB chunks, each an RPC with this timeout; the
            // last one waits for the receiver to install the whole tablet, which takes time
            // in proportion to its size (openraft's 200 ms default fails a few MiB in debug
            // builds).
            snapshot_max_chunk_size: 1 << 20,
            install_snapshot_timeout: 120_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| Error::Raft(e.to_string()))?;
        // openraft spawns its tasks on the runtime it is created in.
        let sm = StateMachine::new(state.clone());
        let node = replication.as_ref().map_or(1, |r| r.node);
        let network = replication
            .as_ref()
            .map(|r| crate::raft::GrpcNetwork::new(id, r.peers.clone()));
        let raft = rt
            .spawn(async move {
                match network {
                    Some(n) => Raft::new(node, Arc::new(raft_config), n, log, sm).await,
                    None => {
                        Raft::new(node, Arc::new(raft_config), SingleNodeNetwork, log, sm).await
                    }
                }
            })
            .await
            .map_err(|e| Error::Raft(format!("starting raft: {e}")))?
            .map_err(|e| Error::Raft(e.to_string()))?;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        match &replication {
            None => {
                if !initialized {
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
            }
            Some(r) => {
                // Started (openraft has read its initial state): from now on a snapshot it
                // asks for is one to send to another replica.
                state.ship_full_snapshots(true);
                r.router.register(id, raft.clone());
                if let (false, Some(members)) = (initialized, &r.init) {
                    raft.initialize(members.clone())
                        .await
                        .map_err(|e| Error::Raft(e.to_string()))?;
                }
            }
        }
        state.recount_locks()?;
        tso.observe(state.max_commit_ts())?;

        let (tx, rx) = mpsc::unbounded_channel();
        let pending = Arc::new(Pending {
            ordered: Mutex::new(BTreeMap::new()),
            point: crate::keys::read_map(),
            seq: Mutex::new(0),
            registrations: std::sync::atomic::AtomicU64::new(0),
            watch: state.mvcc().watch().clone(),
        });
        let (stop_flusher, mut stopped) = tokio::sync::watch::channel(false);
        let tablet = Arc::new(Tablet {
            id,
            range,
            state: state.clone(),
            raft: raft.clone(),
            pending: pending.clone(),
            tx,
            tso,
            log: log_fill.clone(),
            tasks: Mutex::new(Vec::new()),
            stop_flusher,
            flusher: Mutex::new(None),
            _pipeline: pipeline.clone(),
            closed: std::sync::atomic::AtomicBool::new(false),
            serving: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            reads: replication.as_ref().map(|_| ReadIndex {
                state: tokio::sync::Mutex::new((0, Ok(()))),
                started: std::sync::atomic::AtomicU64::new(0),
            }),
            timestamps: std::sync::OnceLock::new(),
            ts_waiting: crate::remote::Combiner::default(),
        });
        if replication.is_none() {
            // The only voter, replayed: it serves from now on.
            let term = raft.metrics().borrow().current_term;
            tablet
                .serving
                .store(term.max(1), std::sync::atomic::Ordering::Release);
        }
        let timestamps = replication.as_ref().is_some_and(|r| r.timestamps);
        if timestamps && !tablet.tso.is_replicated() {
            return Err(Error::InvalidArgument(
                "a group that carries the timestamp marks needs a replicated oracle".into(),
            ));
        }
        let watcher = rt.spawn(watch_leadership(
            id,
            raft.clone(),
            tablet.serving.clone(),
            state.clone(),
            tablet.tso.clone(),
            timestamps,
        ));
        tablet.tasks.lock().push(watcher);
        if timestamps {
            let raiser = rt.spawn(raise_marks(
                id,
                raft.clone(),
                tablet.serving.clone(),
                tablet.tso.clone(),
            ));
            tablet.tasks.lock().push(raiser);
        }
        let proposer = rt.spawn(run_proposer(
            id,
            raft.clone(),
            rx,
            pending,
            state.clone(),
            config.max_batch,
            config.max_inflight,
        ));
        let flusher = {
            let state = state.clone();
            let mut asked: Option<std::time::Instant> = None;
            let window = config.window_ms;
            let every = Duration::from_millis(config.flush_interval_ms.max(1));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stopped.changed() => return,
                    }
                    // A latched engine (a full disk) takes no writes until the space guard
                    // recovers it; trying every round would only fill the log with errors.
                    if state.mvcc().engines().any_latched() {
                        continue;
                    }
                    let s = state.clone();
                    // A nearly full log store must be purged even past a pinned snapshot.
                    let urgent = log_fill.fill() > 0.75;
                    match tokio::task::spawn_blocking(move || s.flush_with(window, urgent)).await {
                        Ok(Ok(_)) => {
                            // Free the log's disk space up to the durable index when its store
                            // is half full, whatever openraft's entry-count policy says
                            // (entries carry batches of any size).
                            if log_fill.fill() > 0.5
                                && asked.is_none_or(|t: std::time::Instant| {
                                    t.elapsed() > Duration::from_millis(100)
                                })
                            {
                                asked = Some(std::time::Instant::now());
                                if let Err(e) = reclaim_log(&state, &log_fill).await {
                                    tracing::warn!(tablet = id, error = %e, "reclaiming the log");
                                }
                            }
                        }
                        Ok(Err(e)) => tracing::error!(tablet = id, error = %e, "flush failed"),
                        Err(_) => return,
                    }
                }
            })
        };
        tablet.tasks.lock().push(proposer);
        *tablet.flusher.lock() = Some(flusher);
        Ok(tablet)
    }

    /// How full the Raft log's store is, from 0 to 1 (see [`LogStore::fill`]).
    pub fn log_fill(&self) -> f64 {
        self.log.fill()
    }

    /// Whether an engine of this tablet is latched by a failed write: then the flusher cannot
    /// move the durable index, and the log cannot be purged, until the engine recovers.
    pub fn engines_latched(&self) -> bool {
        self.state.mvcc().engines().any_latched()
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
        Ok(self.pending.point.contains_key(&InlineKey::new(key))
            || self.state.mvcc().newer_than(key, ts)?)
    }

    /// The replica state (for tools and tests).
    pub fn state(&self) -> &Arc<TabletState> {
        &self.state
    }

    /// Puts every acknowledged commit on the medium: a no-op unless the tablet defers its
    /// log syncs ([`LogSync::Deferred`]). Blocks for an `fdatasync`.
    pub fn sync(&self) -> Result<()> {
        self.log.sync()
    }

    /// Sets what runs before every sync of the log while it defers its syncs (a FUSE mount
    /// syncs its file data first: a size on disk must not cover unsynced bytes).
    pub fn set_before_log_sync(&self, f: chunk_backend::disk::BeforeSync) {
        self.log.set_before_sync(f);
    }

    /// Stops the background tasks and Raft.
    pub async fn shutdown(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        // The flusher finishes the round it is in (a flush runs on a blocking thread, which an
        // abort would not stop): once shutdown returns, nothing of the tablet is still running.
        let _ = self.stop_flusher.send(true);
        let flusher = self.flusher.lock().take();
        if let Some(f) = flusher {
            let _ = f.await;
        }
        let tasks: Vec<_> = self.tasks.lock().drain(..).collect();
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
        let _ = self.raft.shutdown().await;
        // Proposals parked in the aborted proposer never release their marks; nothing will
        // commit here any more, so drop every mark and wake the readers waiting on them.
        self.pending.ordered.lock().clear();
        self.pending.point.clear();
        self.state.applied_notify.notify_waiters();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether this replica serves reads and commits now: it leads its group and has applied
    /// every entry committed before its term. Always, for the only voter of a group.
    pub fn is_serving(&self) -> bool {
        self.serving.load(std::sync::atomic::Ordering::Acquire) != 0
    }

    /// [`Error::NotLeader`] unless this replica serves (see [`Tablet::is_serving`]).
    pub(crate) fn check_serving(&self) -> Result<()> {
        if self.is_serving() {
            return Ok(());
        }
        Err(Error::NotLeader {
            tablet: self.id,
            leader: self.raft.metrics().borrow().current_leader,
        })
    }

    /// Makes a read that arrives now linearizable on a replicated tablet: confirms with a
    /// quorum that this replica still leads, and waits until it has applied everything
    /// committed before (openraft's `ensure_linearizable`). A leader cut off from its group
    /// cannot confirm, so it answers `NotLeader` instead of a stale value. One round serves
    /// every read that arrived before it started: under load, a round per heartbeat trip, not
    /// per read.
    pub(crate) async fn confirm_reads(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        let Some(ri) = &self.reads else {
            return Ok(());
        };
        let arrived = ri.started.load(Ordering::Acquire);
        let mut st = ri.state.lock().await;
        // A round that started after this read arrived has finished meanwhile.
        if st.0 > arrived {
            return st.1.clone().map_err(|_| self.not_leader());
        }
        let round = ri.started.fetch_add(1, Ordering::AcqRel) + 1;
        let outcome =
            match tokio::time::timeout(Duration::from_secs(2), self.raft.ensure_linearizable())
                .await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("no quorum confirmed this leader within 2 s".to_string()),
            };
        *st = (round, outcome.clone());
        drop(st);
        outcome.map_err(|why| {
            tracing::debug!(tablet = self.id, %why, "a read could not confirm leadership");
            self.not_leader()
        })
    }

    fn not_leader(&self) -> Error {
        // Naming itself would send the caller back here.
        let leader = {
            let m = self.raft.metrics();
            let m = m.borrow();
            m.current_leader.filter(|l| *l != m.id)
        };
        Error::NotLeader {
            tablet: self.id,
            leader,
        }
    }

    /// The Raft handle (for the node that hosts the tablet: membership changes, metrics).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    fn lock_conflict(
        &self,
        key: &[u8],
        rec: &LockRecord,
        own: u64,
        access: Access<'_>,
        write: bool,
    ) -> Result<()> {
        for w in &rec.writers {
            if w.start_ts == own {
                continue;
            }
            let commutes = match access {
                Access::Read => false,
                Access::Write(m) if m.replaces() => false,
                // A stable reader and a field setter pass only plain deltas (adds, maxima).
                Access::Stable => !w.mutation.unsettles(),
                Access::Write(m) if m.unsettles() => !w.mutation.unsettles(),
                // A plain delta passes every delta.
                Access::Write(_) => matches!(w.mutation, Mutation::Delta(_)),
            };
            if commutes {
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

    /// Validates a transaction against this tablet's state, after it registered its own marks
    /// (which are skipped: they carry `own` as owner).
    fn validate(
        &self,
        start_ts: u64,
        rs: ReadSet<'_>,
        writes: &[(Key, Mutation)],
        own: u64,
    ) -> Result<()> {
        let mvcc = self.state.mvcc();
        let locks = self.state.may_have_locks();
        for k in rs.reads {
            if self.pending.foreign(&InlineKey::new(k), own) {
                return Err(Error::conflict(k, "a commit of this key is in flight"));
            }
            if mvcc.newer_than(k, start_ts)? {
                return Err(Error::conflict(
                    k,
                    "read key changed after the transaction started",
                ));
            }
            if locks {
                self.lock_conflict(k, &command::read_locks(mvcc, k)?, own, Access::Read, false)?;
            }
        }
        for k in rs.stable {
            if self.pending.foreign_base(k, own) {
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
                self.lock_conflict(
                    k,
                    &command::read_locks(mvcc, k)?,
                    own,
                    Access::Stable,
                    false,
                )?;
            }
        }
        for (k, m) in writes {
            let delta = matches!(m, Mutation::Delta(_));
            // A foreign mark on a replaced key was refused at registration.
            if !delta && mvcc.newer_than(k, start_ts)? {
                return Err(Error::conflict(
                    k,
                    "written key changed after the transaction started",
                ));
            }
            if locks {
                self.lock_conflict(
                    k,
                    &command::read_locks(mvcc, k)?,
                    own,
                    Access::Write(m),
                    true,
                )?;
            }
        }
        for r in rs.scans {
            // Stops at the first foreign key, so it passes over at most the transaction's own
            // marks (writes and a prewrite's reads) in the range.
            if let Some(k) = self.pending.foreign_in_range(r, own) {
                return Err(Error::conflict(
                    &k,
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
                    self.lock_conflict(&lk, &rec, own, Access::Read, false)?;
                }
            }
        }
        Ok(())
    }

    /// Whether reads of `keys` at `ts` would still validate now: no write mark, no 2PC write
    /// lock and no version newer than `ts` on any of them (a snapshot too old to tell is
    /// `false`). A layer that caches what it read at `ts` outside the store (the IndexNode's
    /// path cache) asks this when it fills, under the same lock its [`crate::WriteWatch`] calls
    /// take, and hears of every later write through that watch (see [`crate::watch`]).
    pub fn still_current(&self, keys: &[Key], ts: u64) -> Result<bool> {
        let mvcc = self.state.mvcc();
        for k in keys {
            if self.pending.has_write_mark(k) {
                return Ok(false);
            }
            match mvcc.newer_than(k, ts) {
                Ok(false) => {}
                Ok(true) | Err(Error::SnapshotTooOld { .. }) => return Ok(false),
                Err(e) => return Err(e),
            }
            // Always read: the lock count is updated after the apply that wrote the lock.
            if !command::read_locks(mvcc, k)?.writers.is_empty() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Sets the write watch of this tablet for the keys starting with `prefix` (see
    /// [`crate::watch`]). A tablet has at most one.
    pub fn watch(&self, prefix: &[u8], sink: Arc<dyn crate::WriteWatch>) -> Result<()> {
        let end = crate::keys::KeyRange::prefix(prefix).end;
        let covered = self.range.start.as_slice() <= prefix
            && match (&self.range.end, &end) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(a), Some(b)) => a >= b,
            };
        if !covered {
            return Err(Error::InvalidArgument(format!(
                "tablet {} does not hold every key of the watched prefix",
                self.id
            )));
        }
        if !self.state.mvcc().watch().set(prefix.to_vec(), sink) {
            return Err(Error::InvalidArgument(format!(
                "tablet {} already has a write watch",
                self.id
            )));
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

    /// Whether `key` lives in a table that supports range scans.
    fn scannable(&self, key: &[u8]) -> bool {
        self.state.mvcc().engines().for_key(key).supports_scan()
    }

    /// Takes the next ticket; with `commit_ts`, also a commit timestamp, in the same order.
    async fn ticket(&self, commit_ts: bool) -> Result<(Ticket, u64)> {
        if self.is_closed() {
            return Err(Error::Shutdown);
        }
        self.check_serving()?;
        if commit_ts && self.tso.is_replicated() {
            if let Some(source) = self.timestamps.get().cloned() {
                return self.ticket_with_replicated_ts(source).await;
            }
            // A tablet opened on its own (not by a database): its own oracle's mark.
        }
        let mut seq = self.pending.seq.lock();
        let ts = if commit_ts { self.tso.next()? } else { 0 };
        *seq += 1;
        Ok((
            Ticket {
                seq: *seq,
                tx: Some(self.tx.clone()),
            },
            ts,
        ))
    }

    /// Lets commits take timestamps from `source` (a replicated oracle, here or on another
    /// node). Until it is set, a replicated tablet uses its own oracle.
    pub fn set_timestamps(&self, source: Arc<dyn crate::tso::TimestampSource>) {
        let _ = self.timestamps.set(source);
    }

    /// A ticket with a timestamp from a replicated oracle, which may be on another node and
    /// confirms its leadership before it hands any out: the commits that arrive meanwhile
    /// share one fetch (whoever runs it serves everyone queued), and take their tickets in
    /// the order of the timestamps, as the proposer needs (the log stays in commit-timestamp
    /// order). A ticket whose commit went away is dropped, which skips it.
    async fn ticket_with_replicated_ts(
        &self,
        source: Arc<dyn crate::tso::TimestampSource>,
    ) -> Result<(Ticket, u64)> {
        let source = &source;
        self.ts_waiting
            .call((), |batch| async move {
                let n = u32::try_from(batch.len()).unwrap_or(u32::MAX);
                match source.next_n(n).await {
                    Ok(first) => {
                        let mut seq = self.pending.seq.lock();
                        for (i, (_, w)) in batch.into_iter().enumerate() {
                            *seq += 1;
                            let t = Ticket {
                                seq: *seq,
                                tx: Some(self.tx.clone()),
                            };
                            // A commit that went away drops the ticket, which skips it.
                            let _ = w.send(Ok((t, first + i as u64)));
                        }
                    }
                    Err(e) => {
                        for (_, w) in batch {
                            let _ = w.send(Err(crate::remote::copy_error(&e)));
                        }
                    }
                }
            })
            .await
    }

    /// Hands a command to the proposer under `ticket`.
    fn propose(
        &self,
        ticket: Ticket,
        cmd: Command,
        held: Held,
    ) -> Result<oneshot::Receiver<Result<CommandResult>>> {
        let (reply, rx) = oneshot::channel();
        if let Err(held) = ticket.propose(Proposal { cmd, held, reply }) {
            self.forget(&held);
            return Err(Error::Shutdown);
        }
        Ok(rx)
    }

    /// Drops the marks of a transaction that will not commit, and wakes readers that may be
    /// waiting for them.
    fn forget(&self, held: &Held) {
        self.pending.release(held);
        self.state.applied_notify.notify_waiters();
    }

    /// Waits for the result of a proposed command. Once a command is handed to the proposer its
    /// outcome is the log's: a lost answer is [`Error::Undetermined`], never "did not happen".
    async fn wait_reply(rx: oneshot::Receiver<Result<CommandResult>>) -> Result<CommandResult> {
        rx.await.map_err(|_| {
            Error::Undetermined("the tablet stopped after the command was proposed".into())
        })?
    }

    /// Commits a transaction whose keys all live in this tablet, in one Raft entry.
    /// Returns the commit timestamp.
    pub async fn commit_1pc(
        &self,
        start_ts: u64,
        rs: ReadSet<'_>,
        writes: Vec<(Key, Mutation)>,
    ) -> Result<u64> {
        let held = self.pending.register(
            start_ts,
            ASSIGNING,
            writes.iter().map(|(k, m)| (k, write_kind(m))),
            |k| self.scannable(k),
        )?;
        let (ticket, commit_ts) = match self.ticket(true).await {
            Ok(t) => t,
            Err(e) => {
                self.forget(&held);
                return Err(e);
            }
        };
        self.pending.set_ts(&held, commit_ts);
        if let Err(e) = self.validate(start_ts, rs, &writes, start_ts) {
            // Skip the ticket before waking readers, so that the proposer moves on at once.
            drop(ticket);
            self.forget(&held);
            return Err(e);
        }
        let rx = self.propose(ticket, Command::Commit { commit_ts, writes }, held)?;
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
        // Read keys are marked too (as non-replacing), so that a one-phase writer of a key this
        // transaction read conflicts with it until the locks are in place.
        let held = self.pending.register(
            start_ts,
            start_ts,
            writes
                .iter()
                .map(|(k, m)| (k, write_kind(m)))
                .chain(rs.reads.iter().map(|k| (k, MarkKind::Read))),
            |k| self.scannable(k),
        )?;
        let ticket = match self.ticket(false).await {
            Ok((t, _)) => t,
            Err(e) => {
                self.forget(&held);
                return Err(e);
            }
        };
        if let Err(e) = self.validate(start_ts, rs, &writes, start_ts) {
            drop(ticket);
            self.forget(&held);
            return Err(e);
        }
        let cmd = Command::Prewrite {
            start_ts,
            primary: primary.to_vec(),
            writes,
            reads: rs.reads.to_vec(),
            lock_ms: now_ms(),
        };
        let rx = self.propose(ticket, cmd, held)?;
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
        let (ticket, _) = self.ticket(false).await?;
        let cmd = Command::CommitLocks {
            start_ts,
            commit_ts,
            writes,
            reads,
            primary,
        };
        let rx = self.propose(ticket, cmd, Vec::new())?;
        Self::wait_reply(rx).await
    }

    /// Rolls back a 2PC transaction's locks on this tablet.
    pub async fn rollback(
        &self,
        start_ts: u64,
        keys: Vec<Key>,
        primary: Option<Key>,
    ) -> Result<CommandResult> {
        let (ticket, _) = self.ticket(false).await?;
        let cmd = Command::Rollback {
            start_ts,
            keys,
            primary,
        };
        let rx = self.propose(ticket, cmd, Vec::new())?;
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

    /// The start timestamps of the 2PC status records kept here that are below `below`, at
    /// most `limit` of them.
    pub fn statuses_below(&self, below: u64, limit: usize) -> Result<Vec<u64>> {
        let range = command::status_range();
        let range = KeyRange {
            start: range.start,
            end: Some(command::status_key(below)),
        };
        let rows = self.state.mvcc().scan(&range, u64::MAX, limit)?;
        Ok(rows
            .iter()
            .filter_map(|(k, _)| <[u8; 8]>::try_from(k.get(2..10)?).ok())
            .map(u64::from_be_bytes)
            .collect())
    }

    /// Raises the status safe point to `below` and deletes the status records of `start_ts`
    /// (see [`Command::ForgetStatus`]).
    pub async fn forget_status(&self, below: u64, start_ts: Vec<u64>) -> Result<()> {
        let (ticket, _) = self.ticket(false).await?;
        let rx = self.propose(
            ticket,
            Command::ForgetStatus { below, start_ts },
            Vec::new(),
        )?;
        Self::wait_reply(rx).await.map(|_| ())
    }

    /// Holds a snapshot at `ts` open on this tablet (see [`TabletState::pin`]).
    pub fn pin(&self, ts: u64) -> Result<crate::raft::SnapshotPin> {
        self.state.pin(ts)
    }

    /// The status of a 2PC transaction whose primary lives here.
    pub fn txn_status(&self, start_ts: u64) -> Result<Option<TxnStatus>> {
        command::read_status(self.state.mvcc(), start_ts)
    }

    async fn wait_pending(&self, key: &[u8], mut blocked: impl FnMut() -> bool) -> Result<()> {
        let deadline = tokio::time::Instant::now() + PENDING_WAIT;
        loop {
            let notified = self.state.applied_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !blocked() {
                return Ok(());
            }
            if self.is_closed() {
                return Err(Error::Shutdown);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() && blocked() {
                // Nothing was read: the caller may try again (with a new snapshot).
                return Err(Error::conflict(
                    key,
                    "timed out waiting for an in-flight commit to apply",
                ));
            }
        }
    }

    /// A snapshot read of one key at `ts`.
    pub async fn get(&self, key: &[u8], ts: u64) -> Result<Option<Value>> {
        self.check_serving()?;
        // The waits are boxed: inline, their futures would make every read's future (and
        // every future that awaits one) larger, and each is moved on every call.
        if self.reads.is_some() {
            Box::pin(self.confirm_reads()).await?;
        }
        let ik = InlineKey::new(key);
        let horizon = self.pending.reader_horizon();
        let blocked = || self.pending.blocks(&ik, ts, horizon);
        if blocked() {
            Box::pin(self.wait_pending(key, blocked)).await?;
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
        self.check_serving()?;
        self.confirm_reads().await?;
        // Hash tables keep their pending keys out of the ordered set: look at every mark.
        let horizon = self.pending.reader_horizon();
        let blocked = || {
            self.pending
                .point
                .iter()
                .any(|e| range.contains(e.key().as_bytes()) && blocks_read(e.value(), ts, horizon))
        };
        if blocked() {
            self.wait_pending(&range.start, blocked).await?;
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
        self.check_serving()?;
        self.confirm_reads().await?;
        let horizon = self.pending.reader_horizon();
        let blocked = || self.pending.range_blocks(range, ts, horizon);
        if blocked() {
            self.wait_pending(&range.start, blocked).await?;
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

/// Puts items that arrive under tickets `1, 2, 3, ...` back in ticket order. Items arrive in
/// about that order (a ticket is proposed microseconds after it is taken), so this is a queue
/// indexed by `ticket - next`.
struct Reorder<T> {
    /// The ticket at the front of `slots`.
    next: u64,
    /// Slot `i` holds ticket `next + i`: `None` until it arrives, then `Some(item)`, where a
    /// skip is `Some(None)`.
    slots: VecDeque<Option<Option<T>>>,
}

impl<T> Default for Reorder<T> {
    fn default() -> Self {
        Reorder {
            next: 1,
            slots: VecDeque::new(),
        }
    }
}

impl<T> Reorder<T> {
    /// Records the arrival of ticket `seq` carrying `item` (`None` for a skip). A ticket that
    /// was already passed is ignored.
    fn park(&mut self, seq: u64, item: Option<T>) {
        let Some(i) = seq.checked_sub(self.next).map(|i| i as usize) else {
            return;
        };
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, || None);
        }
        self.slots[i] = Some(item);
    }

    /// Whether the next ticket has arrived.
    fn head_ready(&self) -> bool {
        matches!(self.slots.front(), Some(Some(_)))
    }

    /// Takes up to `max` items of the tickets that arrived without a gap, passing skips.
    fn pop_ready(&mut self, max: usize) -> Vec<T> {
        let mut out = Vec::new();
        while out.len() < max && self.head_ready() {
            self.next += 1;
            if let Some(Some(Some(item))) = self.slots.pop_front() {
                out.push(item);
            }
        }
        out
    }
}

/// The proposals the proposer holds but has not submitted. Whenever the proposer stops (its
/// channel closed, or its task dropped at runtime shutdown), they are answered "did not happen":
/// none of them reached the log.
struct Parked(Reorder<Proposal>);

impl Drop for Parked {
    fn drop(&mut self) {
        for p in self.0.slots.drain(..).flatten().flatten() {
            let _ = p.reply.send(Err(Error::Shutdown));
        }
    }
}

/// Keeps [`Tablet::serving`] true exactly while this replica leads and has applied every entry
/// committed before its term. A new leader may hold committed entries of earlier terms that
/// it has not applied yet; a read or a conflict check before they are would miss them, so it
/// serves only once `ensure_linearizable` (which waits for the term's first entry to commit
/// and apply) returns. Its timestamp oracle then moves past every commit and every mark in
/// the log; with `timestamps`, it commits a mark of its own before it serves.
async fn watch_leadership(
    id: u64,
    raft: Raft,
    serving: Arc<std::sync::atomic::AtomicU64>,
    state: Arc<TabletState>,
    tso: Arc<Tso>,
    timestamps: bool,
) {
    use std::sync::atomic::Ordering;
    let mut metrics = raft.metrics();
    loop {
        let (term, leads) = {
            let m = metrics.borrow_and_update();
            (m.current_term, m.state == openraft::ServerState::Leader)
        };
        if !leads {
            if serving.swap(0, Ordering::AcqRel) != 0 {
                tracing::info!(tablet = id, term, "no longer leading: not serving");
            }
        } else if serving.load(Ordering::Acquire) != term {
            serving.store(0, Ordering::Release);
            if let Err(e) = raft.ensure_linearizable().await {
                // Leadership lost meanwhile, or no quorum yet: look again.
                tracing::debug!(tablet = id, term, error = %e, "not serving yet");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            let moved = match tso.observe(state.max_commit_ts()) {
                Ok(()) if timestamps => replicate_mark(&raft, &tso, tso.next_mark()).await,
                other => other,
            };
            if let Err(e) = moved {
                tracing::warn!(tablet = id, term, error = %e, "cannot move the timestamp oracle; not serving yet");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            serving.store(term.max(1), Ordering::Release);
            tracing::info!(tablet = id, term, "leading and caught up: serving");
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Commits `up_to` as the oracle's replicated mark, then lets the oracle hand out timestamps
/// below it. Fails if this replica does not lead (the mark then never counts) or the group
/// cannot commit.
async fn replicate_mark(raft: &Raft, tso: &Tso, up_to: u64) -> Result<()> {
    let batch = CommandBatch::new(vec![Command::TsoMark { up_to }])?;
    raft.client_write(batch)
        .await
        .map_err(|e| Error::Raft(format!("replicating the timestamp mark: {e}")))?;
    tso.set_limit(up_to);
    Ok(())
}

/// Keeps the replicated mark ahead of the timestamps the serving leader hands out: checks
/// every 100 ms, and at once when `next` comes close to the mark.
async fn raise_marks(
    id: u64,
    raft: Raft,
    serving: Arc<std::sync::atomic::AtomicU64>,
    tso: Arc<Tso>,
) {
    loop {
        tso.raise_wanted(Duration::from_millis(100)).await;
        if serving.load(std::sync::atomic::Ordering::Acquire) == 0 {
            continue;
        }
        if let Some(up_to) = tso.wanted_mark() {
            if let Err(e) = replicate_mark(&raft, &tso, up_to).await {
                tracing::debug!(tablet = id, error = %e, "raising the timestamp mark");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn run_proposer(
    tablet_id: u64,
    raft: Raft,
    mut rx: mpsc::UnboundedReceiver<Ticketed>,
    pending: Arc<Pending>,
    state: Arc<TabletState>,
    max_batch: usize,
    max_inflight: usize,
) {
    let inflight = Arc::new(tokio::sync::Semaphore::new(max_inflight.max(1)));
    let mut order = Parked(Reorder::default());
    let order = &mut order.0;
    loop {
        if !order.head_ready() {
            // Nothing parked, or the head ticket is still being validated: its proposal (or
            // skip) comes soon.
            match rx.recv().await {
                Some(t) => order.park(t.seq, t.proposal),
                None => return,
            }
            continue;
        }
        let Ok(permit) = inflight.clone().acquire_owned().await else {
            return;
        };
        while let Ok(t) = rx.try_recv() {
            order.park(t.seq, t.proposal);
        }
        let batch = order.pop_ready(max_batch);
        if batch.is_empty() {
            // Only skips were ready.
            drop(permit);
            continue;
        }
        let mut cmds = Vec::with_capacity(batch.len());
        let mut waiters = Vec::with_capacity(batch.len());
        for p in batch {
            cmds.push(p.cmd);
            waiters.push((p.held, p.reply));
        }
        // The callers are answered by whichever comes first: the apply of the entry (the
        // common case, straight from the state machine), or the reply task below, which also
        // hears of the failures (refused, truncated, undetermined).
        let waiters = Arc::new(parking_lot::Mutex::new(Some(waiters)));
        // Submitting in ticket order keeps the log in commit-timestamp order. Encoding here
        // keeps the work off openraft's core task.
        // A batch that never reached openraft did not happen; once it did, only the answer can
        // say (see `wait_reply`).
        let submitted = match CommandBatch::new(cmds) {
            Ok(batch) => {
                // Weak: the batch stays in the log's memory after it is applied, and must not
                // keep the tablet alive.
                let (w, p, st) = (
                    waiters.clone(),
                    Arc::downgrade(&pending),
                    Arc::downgrade(&state),
                );
                batch.on_apply(Box::new(move |results| {
                    if let (Some(p), Some(st)) = (p.upgrade(), st.upgrade()) {
                        if let Some(waiters) = w.lock().take() {
                            answer(&p, &st, waiters, lose_answer(Ok(results.to_vec())));
                        }
                    }
                }));
                raft.client_write_ff(batch)
                    .await
                    .map_err(|e| Error::Raft(format!("raft refused the proposal: {e}")))
            }
            Err(e) => Err(e),
        };
        let unanswered = Unanswered {
            waiters,
            pending: pending.clone(),
            state: state.clone(),
        };
        tokio::spawn(async move {
            let outcome: std::result::Result<Vec<CommandResult>, Error> = match submitted {
                Ok(resp_rx) => match resp_rx.await {
                    Ok(Ok(resp)) => Ok(resp.data),
                    // Refused before it was appended: it did not happen.
                    Ok(Err(openraft::error::ClientWriteError::ForwardToLeader(f))) => {
                        Err(Error::NotLeader {
                            tablet: tablet_id,
                            leader: f.leader_id,
                        })
                    }
                    Ok(Err(e)) => Err(Error::Undetermined(format!("raft: {e}"))),
                    Err(_) => Err(Error::Undetermined(
                        "raft stopped before the proposal's outcome was known".into(),
                    )),
                },
                Err(e) => Err(e),
            };
            let u = &unanswered;
            if let Some(waiters) = u.waiters.lock().take() {
                answer(&u.pending, &u.state, waiters, lose_answer(outcome));
            }
            drop(permit);
        });
    }
}

type Waiters = Vec<(Held, oneshot::Sender<Result<CommandResult>>)>;

/// The waiters of a proposed batch, for its reply task: if the task is dropped before anyone
/// answered them (the runtime stops), they learn that the outcome is unknown.
struct Unanswered {
    waiters: Arc<parking_lot::Mutex<Option<Waiters>>>,
    pending: Arc<Pending>,
    state: Arc<TabletState>,
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(waiters) = self.waiters.lock().take() {
            let e = Error::Undetermined(
                "the tablet stopped before the proposal's outcome was known".into(),
            );
            answer(&self.pending, &self.state, waiters, Err(e));
        }
    }
}

/// The answer lost after the entry applied, as when the process dies at this point.
fn lose_answer(
    outcome: std::result::Result<Vec<CommandResult>, Error>,
) -> std::result::Result<Vec<CommandResult>, Error> {
    #[cfg(feature = "failpoints")]
    if fail::eval("tablet::lose-answer", |_| ()).is_some() {
        return Err(Error::Undetermined("failpoint: the answer was lost".into()));
    }
    outcome
}

/// Releases the marks of a batch's transactions, then tells each its outcome.
fn answer(
    pending: &Pending,
    state: &TabletState,
    waiters: Waiters,
    outcome: std::result::Result<Vec<CommandResult>, Error>,
) {
    pending.release_many(waiters.iter().map(|(held, _)| held));
    match outcome {
        Ok(results) => {
            for ((_, reply), res) in waiters.into_iter().zip(results) {
                let _ = reply.send(Ok(res));
            }
        }
        Err(Error::NotLeader { tablet, leader }) => {
            for (_, reply) in waiters {
                let _ = reply.send(Err(Error::NotLeader { tablet, leader }));
            }
        }
        Err(e) => {
            let undetermined = e.is_undetermined();
            let msg = e.to_string();
            for (_, reply) in waiters {
                let _ = reply.send(Err(if undetermined {
                    Error::Undetermined(msg.clone())
                } else {
                    Error::Raft(msg.clone())
                }));
            }
        }
    }
    state.applied_notify.notify_waiters();
}

#[cfg(test)]
mod tests {
    use super::{MarkKind, Pending, Reorder, ASSIGNING};
    use parking_lot::Mutex;
    use std::collections::BTreeMap;

    fn pending() -> Pending {
        Pending {
            ordered: Mutex::new(BTreeMap::new()),
            point: crate::keys::read_map(),
            seq: Mutex::new(0),
            registrations: std::sync::atomic::AtomicU64::new(0),
            watch: std::sync::Arc::default(),
        }
    }

    #[test]
    fn a_reader_waits_only_for_marks_registered_before_it_started() {
        let p = pending();
        let k = b"\x02k".to_vec();
        let ik = crate::keys::InlineKey::new(&k);
        let reg = |owner, ts| {
            p.register(owner, ts, std::iter::once((&k, MarkKind::Base)), |_| true)
                .expect("register")
        };
        let early = reg(1, ASSIGNING);
        let horizon = p.reader_horizon();
        assert!(
            p.blocks(&ik, 100, horizon),
            "a placeholder registered earlier may end up below 100"
        );
        p.release(&early);
        // Writers keep coming after the reader started: none of them can commit below it.
        for owner in 2..50 {
            let late = reg(owner, ASSIGNING);
            assert!(
                !p.blocks(&ik, 100, horizon),
                "a mark registered after the reader started kept it waiting"
            );
            p.release(&late);
        }
        let late = reg(60, 50);
        assert!(!p.blocks(&ik, 100, horizon));
        assert!(
            p.blocks(&ik, 100, p.reader_horizon()),
            "a later reader waits for it"
        );
        p.release(&late);
    }

    #[test]
    fn a_scanned_range_finds_a_foreign_mark_behind_many_own_ones() {
        let p = pending();
        let keys: Vec<Vec<u8>> = (0..20u8).map(|i| vec![2, b'd', i]).collect();
        let own = p
            .register(
                7,
                70,
                keys[..10].iter().map(|k| (k, MarkKind::Base)),
                |_| true,
            )
            .expect("own");
        let range = crate::keys::KeyRange::prefix(&[2, b'd']);
        assert_eq!(
            p.foreign_in_range(&range, 7),
            None,
            "own marks are passed over"
        );
        let other = p
            .register(8, 80, std::iter::once((&keys[15], MarkKind::Base)), |_| {
                true
            })
            .expect("foreign");
        assert_eq!(p.foreign_in_range(&range, 7), Some(keys[15].clone()));
        p.release(&other);
        assert_eq!(p.foreign_in_range(&range, 7), None);
        p.release(&own);
    }

    #[test]
    fn registration_rules_between_marks_of_different_transactions() {
        let p = pending();
        let k = b"\x02k".to_vec();
        let reg = |owner, kind| p.register(owner, ASSIGNING, std::iter::once((&k, kind)), |_| true);
        // Deltas commute with deltas.
        let d1 = reg(1, MarkKind::Delta).expect("delta");
        let d2 = reg(2, MarkKind::Delta).expect("a second delta");
        // A put conflicts with anything in flight, and leaves nothing behind when refused.
        assert!(reg(3, MarkKind::Base).is_err());
        p.release(&d1);
        p.release(&d2);
        assert!(p.point.is_empty(), "released marks leave no queue behind");
        // A 2PC read mark refuses deltas and puts, but a delta does not refuse a reader (its
        // validation, which follows, finds the delta).
        let r = reg(4, MarkKind::Read).expect("read");
        assert!(
            reg(5, MarkKind::Delta).is_err(),
            "a delta must not slip under a read lock"
        );
        assert!(reg(6, MarkKind::Base).is_err());
        let own = reg(4, MarkKind::Base).expect("a transaction's own marks never conflict");
        p.release(&own);
        p.release(&r);
        let d = reg(7, MarkKind::Delta).expect("delta");
        reg(8, MarkKind::Read).expect("a reader registers and then fails validation");
        p.release(&d);
        assert_eq!(
            p.ordered.lock().get(&crate::keys::InlineKey::new(&k)),
            Some(&1)
        );
    }

    #[test]
    fn reorder_puts_tickets_back_in_order_and_passes_skips() {
        let mut r = Reorder::default();
        assert!(!r.head_ready());
        r.park(2, Some("b"));
        r.park(4, Some("d"));
        assert!(!r.head_ready(), "ticket 1 has not arrived");
        assert!(r.pop_ready(10).is_empty());
        r.park(1, Some("a"));
        assert_eq!(r.pop_ready(10), vec!["a", "b"], "stops at the gap before 4");
        r.park(3, None);
        assert_eq!(r.pop_ready(10), vec!["d"], "the skip of 3 is passed");
        assert!(!r.head_ready());
        r.park(2, Some("late"));
        r.park(5, Some("e"));
        r.park(6, Some("f"));
        r.park(7, Some("g"));
        assert_eq!(
            r.pop_ready(2),
            vec!["e", "f"],
            "a ticket already passed is ignored"
        );
        assert_eq!(r.pop_ready(2), vec!["g"]);
        r.park(9, None);
        r.park(8, None);
        assert!(r.head_ready());
        assert!(r.pop_ready(10).is_empty(), "only skips");
        assert!(!r.head_ready());
        assert_eq!(r.next, 10);
    }
}
