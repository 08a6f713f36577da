//! The database: a set of tablets over one key space, a timestamp oracle, lock resolution,
//! retries and the coprocessor registry.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use crate::command::{CommandResult, LockRecord, TxnStatus};
use crate::coprocessor::{BoxFuture, Coprocessor};
use crate::error::{Error, Result};
use crate::keys::{Key, KeyRange, Value};
use crate::lockq::{LockSet, LockTable};
use crate::remote::{Oracle, Remote, Route};
use crate::space::SpaceGuard;
use crate::tablet::{PipelineRuntime, Tablet, TabletConfig};
use crate::tso::{now_ms, Tso};
use crate::txn::Txn;

/// How to open a database.
#[derive(Clone, Debug)]
pub struct DbConfig {
    /// Where everything lives.
    pub dir: PathBuf,
    /// Tablet boundaries: `n` split keys make `n + 1` tablets. Fixed when the database is
    /// created; later opens use the recorded layout.
    pub split_keys: Vec<Key>,
    /// Per-tablet tunables.
    pub tablet: TabletConfig,
    /// A 2PC lock older than this (ms) may be rolled back by other transactions.
    pub lock_ttl_ms: u64,
    /// Attempts of [`Db::run_txn`] before giving up.
    pub max_attempts: u32,
    /// Key prefixes whose keys use the pessimistic lock queue (see [`crate::lockq`]).
    pub hot_keys: Vec<Key>,
    /// How long a transaction waits in a hot key's queue before it backs off (ms).
    pub lock_wait_ms: u64,
    /// How often the background collector resolves expired 2PC locks and deletes status
    /// records no one can need any more (ms; 0: never, [`Db::collect_garbage`] still works).
    pub gc_interval_ms: u64,
    /// A 2PC status record is kept at least this long after its transaction started (ms).
    pub status_horizon_ms: u64,
    /// Bytes kept free on the data directory's disk: below it, writes are refused with
    /// [`Error::NoSpace`] and only deletes run (0: 5% of the disk, 1..256 MiB; see
    /// [`crate::space`]).
    pub disk_reserve_bytes: u64,
    /// Whether half of the reserve is held by a ballast file that is released when an engine
    /// needs room to recover (see [`crate::space`]). Servers want it; tests and tools that open
    /// many short-lived stores do not.
    pub disk_ballast: bool,
    /// How the tablets are replicated over nodes; `None`: each tablet is its group's only
    /// voter (the embedded mode).
    pub cluster: Option<ClusterConfig>,
}

/// A database whose tablets are replicas of groups spread over nodes. Every tablet's group id
/// is its tablet id, and the groups share this node's Raft service and peer channels.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// This node's id.
    pub node: u64,
    /// The channels to the other nodes.
    pub peers: crate::raft::Peers,
    /// This node's Raft service.
    pub router: crate::raft::RaftRouter,
    /// The groups' first members, on the node that creates the cluster, at its first start.
    pub init: Option<std::collections::BTreeMap<u64, openraft::BasicNode>>,
    /// Raft heartbeat interval, ms.
    pub heartbeat_ms: u64,
    /// Raft election timeout (the low end), ms.
    pub election_ms: u64,
}

impl DbConfig {
    /// Defaults for a database in `dir` with one tablet.
    pub fn new(dir: impl Into<PathBuf>) -> DbConfig {
        DbConfig {
            dir: dir.into(),
            split_keys: Vec::new(),
            tablet: TabletConfig::default(),
            lock_ttl_ms: 3_000,
            max_attempts: 30,
            hot_keys: Vec::new(),
            lock_wait_ms: 2_000,
            gc_interval_ms: 10_000,
            status_horizon_ms: 60_000,
            disk_reserve_bytes: 0,
            disk_ballast: false,
            cluster: None,
        }
    }
}

/// Short of disk space with a latched engine, above this fill of a Raft log store nothing
/// commits: the log cannot be purged until the engine recovers, and openraft would wait for
/// room that cannot come, then stop the tablet. Half: a log store's blocks are coarse, and one
/// batch of deletes may need several of them.
const LOG_FULL: f64 = 0.5;

/// Above this fill of a Raft log store, new commits wait (see [`Db::admit_write`]).
const LOG_BUSY: f64 = 0.9;

/// Short of disk space with working engines, the flusher purges the log as it goes (it
/// reclaims at half full), so deletes go on up to this fill, which leaves room for the batches
/// in flight while a purge catches up.
const LOG_FULL_FLUSHING: f64 = 0.85;

/// An open database.
pub struct Db {
    tablets: Vec<Arc<Tablet>>,
    tso: Arc<Tso>,
    coprocessors: RwLock<HashMap<String, Arc<dyn Coprocessor>>>,
    locks: LockTable,
    config: DbConfig,
    /// The background garbage collector.
    gc: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The runtime of the tablets' Raft pipelines.
    pipeline: Arc<PipelineRuntime>,
    /// Free space on the data disk (see [`crate::space`]).
    space: Arc<SpaceGuard>,
    /// The task that watches it, and how to stop it.
    space_task: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
    stop_space: tokio::sync::watch::Sender<bool>,
    /// Timestamps from the replicated oracle (in a cluster), here or on another node.
    oracle: Arc<Oracle>,
    /// Snapshot pins held here for other nodes' snapshots: id -> (pin, lease end).
    held_pins: parking_lot::Mutex<HashMap<u64, (crate::raft::SnapshotPin, std::time::Instant)>>,
    next_pin: std::sync::atomic::AtomicU64,
}

/// A snapshot held open on every tablet ([`Db::snapshot`]): reads at its timestamp never fail
/// with `SnapshotTooOld` while it lives, however long they take. The flusher keeps every newer
/// version in memory meanwhile, so drop it as soon as the reads are done.
#[derive(Debug)]
pub struct Snapshot {
    ts: u64,
    _pins: Vec<crate::raft::SnapshotPin>,
    /// Pins on tablets led by other nodes, renewed while the snapshot lives.
    _remote: Option<RemotePins>,
}

/// A snapshot's pins on tablets other nodes lead: leased there, renewed by a task, released
/// when the snapshot is dropped (or when the lease runs out, if the release is lost).
struct RemotePins {
    pins: Arc<Vec<(Remote, u64)>>,
    renew: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for RemotePins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemotePins")
            .field("pins", &self.pins.len())
            .finish()
    }
}

impl Drop for RemotePins {
    fn drop(&mut self) {
        self.renew.abort();
        let pins = self.pins.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                for (r, id) in pins.iter() {
                    let _ = r
                        .call(&crate::remote::Request::Unpin { id: *id }, false)
                        .await;
                }
            });
        }
    }
}

/// How long a pin taken for another node lasts without a renewal.
const PIN_LEASE: Duration = Duration::from_secs(10);

impl Snapshot {
    /// The snapshot's timestamp.
    pub fn ts(&self) -> u64 {
        self.ts
    }
}

/// What one round of [`Db::collect_garbage`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcOutcome {
    /// Keys whose expired locks were resolved.
    pub resolved: usize,
    /// Status records deleted.
    pub forgotten: usize,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("dir", &self.config.dir)
            .field("tablets", &self.tablets.len())
            .finish()
    }
}

impl Db {
    /// Opens (or creates) a database, replaying every tablet's log.
    pub async fn open(config: DbConfig) -> Result<Arc<Db>> {
        std::fs::create_dir_all(&config.dir)?;
        let space = Arc::new(SpaceGuard::new(
            config.dir.clone(),
            config.disk_reserve_bytes,
            config.disk_ballast,
        )?);
        let layout_path = config.dir.join("layout");
        let splits: Vec<Key> = match chunk_backend::atomic::read(&layout_path)? {
            Some(b) => {
                bincode::deserialize(&b).map_err(|e| Error::Corruption(format!("layout: {e}")))?
            }
            None => {
                let mut s = config.split_keys.clone();
                s.sort();
                s.dedup();
                if s.iter().any(|k| k.is_empty()) {
                    return Err(Error::InvalidArgument("an empty split key".into()));
                }
                let bytes = bincode::serialize(&s).map_err(|e| Error::Corruption(e.to_string()))?;
                chunk_backend::atomic::write(&layout_path, &bytes)?;
                s
            }
        };
        // In a cluster the oracle's mark lives in the first tablet's Raft log, so that a new
        // leader on another node starts above everything the old one handed out.
        let tso = Arc::new(match config.cluster {
            Some(_) => Tso::replicated(),
            None => Tso::open(&config.dir.join("tso"))?,
        });
        let mut bounds: Vec<Key> = vec![Vec::new()];
        bounds.extend(splits);
        let pipeline = Arc::new(PipelineRuntime::new(config.tablet.pipeline_threads)?);
        let mut tablets = Vec::new();
        for (i, start) in bounds.iter().enumerate() {
            let end = bounds.get(i + 1).cloned();
            let range = KeyRange {
                start: start.clone(),
                end,
            };
            let dir = config.dir.join(format!("tablet-{i}"));
            tablets.push(
                Tablet::open(
                    i as u64,
                    range,
                    &dir,
                    tso.clone(),
                    &config.tablet,
                    &pipeline,
                    config.cluster.as_ref().map(|c| crate::tablet::Replication {
                        node: c.node,
                        peers: c.peers.clone(),
                        router: c.router.clone(),
                        init: c.init.clone(),
                        heartbeat_ms: c.heartbeat_ms,
                        election_ms: c.election_ms,
                        timestamps: i == 0,
                    }),
                )
                .await?,
            );
        }
        let gc_every = config.gc_interval_ms;
        let db = Arc::new(Db {
            tablets,
            tso,
            coprocessors: RwLock::new(HashMap::new()),
            locks: LockTable::new(
                config.hot_keys.clone(),
                Duration::from_millis(config.lock_wait_ms.max(1)),
            ),
            config,
            gc: parking_lot::Mutex::new(None),
            pipeline,
            space,
            space_task: parking_lot::Mutex::new(None),
            stop_space: tokio::sync::watch::channel(false).0,
            oracle: Arc::new(Oracle::default()),
            held_pins: parking_lot::Mutex::new(HashMap::new()),
            next_pin: std::sync::atomic::AtomicU64::new(1),
        });
        if let Some(c) = &db.config.cluster {
            db.oracle.set_db(&db);
            for t in &db.tablets {
                t.set_timestamps(db.oracle.clone());
            }
            c.router.serve_db(&db);
        }
        {
            let weak = Arc::downgrade(&db);
            let mut stop = db.stop_space.subscribe();
            *db.space_task.lock() = Some(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(250));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop.changed() => return,
                    }
                    let Some(db) = weak.upgrade() else { return };
                    db.expire_pins();
                    let engines: Vec<_> = db
                        .tablets
                        .iter()
                        .flat_map(|t| t.state().mvcc().engines().all())
                        .collect();
                    let space = db.space.clone();
                    drop(db);
                    if tokio::task::spawn_blocking(move || space.check(&engines))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }));
        }
        // Only a store of several tablets has 2PC leftovers to collect.
        if gc_every > 0 && db.tablets.len() > 1 {
            let weak = Arc::downgrade(&db);
            *db.gc.lock() = Some(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(gc_every));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(db) = weak.upgrade() else { return };
                    // A node collects on the tablets it leads; the others' leaders do theirs.
                    if !db.tablets.iter().any(|t| t.is_serving()) {
                        continue;
                    }
                    if let Err(e) = db.collect_garbage().await {
                        tracing::warn!(error = %e, "2PC garbage collection failed; will retry");
                    }
                }
            }));
        }
        Ok(db)
    }

    /// Puts every acknowledged commit of every tablet on the medium: a no-op unless the
    /// tablets defer their log syncs ([`crate::tablet::LogSync::Deferred`]). Blocks for an
    /// `fdatasync` per tablet with something to sync.
    pub fn sync(&self) -> Result<()> {
        for t in &self.tablets {
            t.sync()?;
        }
        Ok(())
    }

    /// Sets what runs before every sync of each tablet's log while the tablets defer their
    /// syncs (see [`crate::tablet::Tablet::set_before_log_sync`]).
    pub fn set_before_log_sync(
        &self,
        f: std::sync::Arc<dyn Fn() -> chunk_backend::Result<()> + Send + Sync>,
    ) {
        for t in &self.tablets {
            let f = f.clone();
            t.set_before_log_sync(Box::new(move || f()));
        }
    }

    /// Stops every tablet.
    pub async fn shutdown(&self) {
        if let Some(gc) = self.gc.lock().take() {
            gc.abort();
        }
        // Stopped, not aborted: a check in progress holds the engines, which must be closed
        // by the time shutdown returns (a caller may delete the directory next).
        let _ = self.stop_space.send(true);
        let task = self.space_task.lock().take();
        if let Some(t) = task {
            let _ = t.await;
        }
        for t in &self.tablets {
            t.shutdown().await;
        }
        // openraft's tasks finish on their own after a shutdown; wait for them, so that a
        // database reopened right after finds its files free.
        self.pipeline.shutdown().await;
    }

    /// Whether a writing transaction may commit now: not while the disk is short of space,
    /// unless it frees space (see [`crate::space`]); and not even then once a Raft log store
    /// is nearly full. Short of space, the engines may not be writable, so the log cannot be
    /// purged: waiting for room in it would stop the tablet, while a refusal is a clean "did
    /// not happen". (With writable engines the log is purged as the flusher goes, and a
    /// commit waits for room rather than fail.)
    pub fn admit_write(&self, frees_space: bool) -> Result<()> {
        // Whatever the disk: a log store this full is waiting for the flusher (an engine
        // stalled by compaction, a slow disk). Holding new commits back here is a clean
        // "did not happen"; letting them reach the log would make openraft wait for room and,
        // after a minute, stop the tablet.
        if let Some(t) = self.tablets.iter().find(|t| t.log_fill() > LOG_BUSY) {
            return Err(Error::Busy(format!(
                "tablet {}'s Raft log store is {:.0}% full while the flusher catches up",
                t.id(),
                t.log_fill() * 100.0
            )));
        }
        self.space.admit(frees_space)?;
        if !self.space.is_short() {
            return Ok(());
        }
        for t in &self.tablets {
            let fill = t.log_fill();
            let latched = t.engines_latched();
            if fill <= LOG_FULL || (!latched && fill <= LOG_FULL_FLUSHING) {
                continue;
            }
            return Err(Error::NoSpace(if latched {
                format!(
                    "the disk is short of space and the Raft log store is {:.0}% full: it cannot \
                     be purged until the engines can be written again, so nothing is accepted",
                    fill * 100.0
                )
            } else {
                format!(
                    "the disk is short of space and the Raft log store is {:.0}% full: nothing \
                     is accepted until the flusher has purged it (moments)",
                    fill * 100.0
                )
            }));
        }
        Ok(())
    }

    /// The disk space state (see [`crate::space`]).
    pub fn space(&self) -> &SpaceGuard {
        &self.space
    }

    /// Holds a snapshot open on every tablet at a fresh timestamp (see [`Snapshot`]). In a
    /// cluster the tablets other nodes lead are pinned there under a lease, renewed while the
    /// snapshot lives; if a tablet's leader changes meanwhile, its pin is lost and reads of
    /// it at the snapshot may fail with `SnapshotTooOld` once the snapshot leaves its window.
    pub async fn snapshot(&self) -> Result<Snapshot> {
        let mut last = None;
        for _ in 0..self.config.max_attempts.max(1) {
            let ts = self.timestamp().await?;
            let mut pins = Vec::with_capacity(self.tablets.len());
            let local: Vec<&Arc<Tablet>> = self
                .tablets
                .iter()
                .filter(|t| self.config.cluster.is_none() || t.is_serving())
                .collect();
            for t in &local {
                match t.pin(ts) {
                    Ok(p) => pins.push(p),
                    // A flush overtook the fresh timestamp (a tiny MVCC window): take another.
                    Err(e @ Error::SnapshotTooOld { .. }) => {
                        last = Some(e);
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            if pins.len() < local.len() {
                continue;
            }
            // The tablets other nodes lead are pinned there, under a lease.
            let mut remote = Vec::new();
            let mut overtaken = false;
            for t in self
                .tablets
                .iter()
                .filter(|t| !local.iter().any(|l| Arc::ptr_eq(l, t)))
            {
                let Route::Remote(r) = self.route(t)? else {
                    continue;
                };
                let req = crate::remote::Request::Pin {
                    ts,
                    lease_ms: PIN_LEASE.as_millis() as u64,
                    id: None,
                };
                match r.call(&req, false).await {
                    Ok(crate::remote::Reply::Ts(id)) => remote.push((r, id)),
                    Ok(other) => {
                        return Err(Error::Raft(format!(
                            "unexpected answer to a pin: {other:?}"
                        )))
                    }
                    Err(e @ Error::SnapshotTooOld { .. }) => {
                        last = Some(e);
                        overtaken = true;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            let remote = Arc::new(remote);
            if overtaken {
                // Dropping them releases the pins taken so far.
                drop(RemotePins {
                    pins: remote,
                    renew: tokio::spawn(async {}),
                });
                continue;
            }
            let remote = (!remote.is_empty()).then(|| {
                let pins = remote.clone();
                let renew = tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(PIN_LEASE / 3).await;
                        for (r, id) in pins.iter() {
                            let req = crate::remote::Request::Pin {
                                ts,
                                lease_ms: PIN_LEASE.as_millis() as u64,
                                id: Some(*id),
                            };
                            if let Err(e) = r.call(&req, false).await {
                                tracing::warn!(tablet = r.tablet, error = %e, "a snapshot pin could not be renewed; reads of that tablet at the snapshot may fail");
                            }
                        }
                    }
                });
                RemotePins {
                    pins: remote,
                    renew,
                }
            });
            return Ok(Snapshot {
                ts,
                _pins: pins,
                _remote: remote,
            });
        }
        Err(Error::RetriesExhausted {
            attempts: self.config.max_attempts,
            last: Box::new(last.unwrap_or(Error::Shutdown)),
        })
    }

    /// Holds a snapshot at `ts` open on tablet `t` (led here) for another node, for `lease`
    /// (with `id`: renews that pin). Returns the pin's id.
    pub(crate) fn hold_pin(
        &self,
        t: &Arc<Tablet>,
        ts: u64,
        lease: Duration,
        id: Option<u64>,
    ) -> Result<u64> {
        let until = std::time::Instant::now() + lease.min(Duration::from_secs(60));
        let mut held = self.held_pins.lock();
        if let Some(id) = id {
            return match held.get_mut(&id) {
                Some(p) => {
                    p.1 = until;
                    Ok(id)
                }
                None => Err(Error::SnapshotTooOld { ts, floor: 0 }),
            };
        }
        let pin = t.pin(ts)?;
        let id = self
            .next_pin
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        held.insert(id, (pin, until));
        Ok(id)
    }

    /// Releases a pin held for another node.
    pub(crate) fn release_pin(&self, id: u64) {
        self.held_pins.lock().remove(&id);
    }

    /// Drops the pins held for other nodes whose lease ran out (their node died, or lost the
    /// release).
    fn expire_pins(&self) {
        let now = std::time::Instant::now();
        self.held_pins.lock().retain(|_, (_, until)| *until > now);
    }

    /// One round of 2PC garbage collection: resolves every lock older than the lock TTL (so a
    /// coordinator that died leaves nothing behind for long, even on keys no one reads), then
    /// deletes the status records of transactions that started before every lock still held
    /// and more than [`DbConfig::status_horizon_ms`] ago. Runs in the background every
    /// [`DbConfig::gc_interval_ms`].
    pub async fn collect_garbage(&self) -> Result<GcOutcome> {
        let mut out = GcOutcome::default();
        let now = now_ms();
        // Each node collects on the tablets it leads.
        let mine: Vec<Arc<Tablet>> = self
            .tablets
            .iter()
            .filter(|t| t.is_serving())
            .cloned()
            .collect();
        for t in &mine {
            for (key, rec) in t.scan_locks(t.range())? {
                let expired = rec
                    .writers
                    .iter()
                    .map(|w| w.lock_ms)
                    .chain(rec.readers.iter().map(|r| r.lock_ms))
                    .any(|ms| now.saturating_sub(ms) >= self.config.lock_ttl_ms);
                if expired {
                    self.resolve_lock(&key).await?;
                    out.resolved += 1;
                }
            }
        }
        // The oldest transaction that still holds a lock anywhere may still need its status.
        let mut oldest = u64::MAX;
        for t in &self.tablets {
            for (_, rec) in self.route(t)?.scan_locks(t.range()).await? {
                let owners = rec.writers.iter().map(|w| w.start_ts);
                let owners = owners.chain(rec.readers.iter().map(|r| r.start_ts));
                oldest = owners.fold(oldest, u64::min);
            }
        }
        let horizon =
            crate::tso::ts_from_ms(now_ms().saturating_sub(self.config.status_horizon_ms));
        let below = oldest.min(horizon);
        const CHUNK: usize = 4096;
        for t in &mine {
            loop {
                let list = t.statuses_below(below, CHUNK)?;
                let n = list.len();
                if n == 0 {
                    break;
                }
                t.forget_status(below, list).await?;
                out.forgotten += n;
                if n < CHUNK {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The timestamp oracle.
    pub fn tso(&self) -> &Arc<Tso> {
        &self.tso
    }

    /// A fresh timestamp from the oracle: greater than every timestamp handed out before
    /// this call, on any node. In a cluster the oracle lives with the leader of the first
    /// tablet, here or on another node (see [`crate::remote`]).
    pub async fn timestamp(&self) -> Result<u64> {
        self.timestamps(1).await
    }

    /// `n` consecutive fresh timestamps (the first), like [`Db::timestamp`].
    pub async fn timestamps(&self, n: u32) -> Result<u64> {
        if self.config.cluster.is_some() {
            Box::pin(self.oracle.next_n(n)).await
        } else {
            self.tso.next_n(n)
        }
    }

    /// Timestamps from this node's own oracle, which must lead the first tablet's group. It
    /// first confirms with a quorum that it still leads (one round for every caller waiting),
    /// so that a deposed leader that has not noticed yet cannot hand out timestamps below the
    /// ones its successor gave.
    pub(crate) async fn local_timestamps(&self, n: u32) -> Result<u64> {
        let first = self.tablets.first().ok_or(Error::Shutdown)?;
        if self.config.cluster.is_none() {
            return self.tso.next_n(n);
        }
        first.check_serving()?;
        first.confirm_reads().await?;
        self.tso.next_n(n).map_err(|e| match e {
            Error::Busy(_) if !first.is_serving() => Error::NotLeader {
                tablet: first.id(),
                leader: first.raft().metrics().borrow().current_leader,
            },
            e => e,
        })
    }

    /// Where the transaction steps of tablet `t` go from this node: its own replica if that
    /// serves (always, in the embedded mode), otherwise the node that leads the group.
    pub(crate) fn route(&self, t: &Arc<Tablet>) -> Result<Route> {
        let Some(c) = &self.config.cluster else {
            return Ok(Route::Local(t.clone()));
        };
        if t.is_serving() {
            return Ok(Route::Local(t.clone()));
        }
        let (leader, addr) = {
            let m = t.raft().metrics();
            let m = m.borrow();
            let leader = m.current_leader.filter(|l| *l != c.node);
            let addr = leader.and_then(|l| {
                m.membership_config
                    .nodes()
                    .find(|(id, _)| **id == l)
                    .map(|(_, n)| n.addr.clone())
            });
            (leader, addr)
        };
        let (Some(node), Some(addr)) = (leader, addr) else {
            return Err(Error::NotLeader {
                tablet: t.id(),
                leader: None,
            });
        };
        let channel = c.peers.channel(node, &addr).map_err(|_| Error::NotLeader {
            tablet: t.id(),
            leader: Some(node),
        })?;
        Ok(Route::Remote(Remote {
            tablet: t.id(),
            node,
            me: c.node,
            channel,
            auth: c.peers.auth().cloned(),
        }))
    }

    /// [`Db::route`] of the tablet holding `key`.
    pub(crate) fn route_for(&self, key: &[u8]) -> Result<Route> {
        self.route(self.tablet_for(key))
    }

    /// Whether node `node` (a member of the first tablet's group) answers within `within`.
    pub async fn ping(&self, node: u64, within: Duration) -> Result<()> {
        let c = self
            .config
            .cluster
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("not a cluster".into()))?;
        let first = self.tablets.first().ok_or(Error::Shutdown)?;
        let r = self.remote_at(first, c, node)?;
        match tokio::time::timeout(within, r.call(&crate::remote::Request::Ping, false)).await {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(Error::NotLeader {
                tablet: first.id(),
                leader: None,
            }),
        }
    }

    /// The steps of tablet `t` sent to node `node`.
    fn remote_at(&self, t: &Arc<Tablet>, c: &ClusterConfig, node: u64) -> Result<Remote> {
        let addr = t
            .raft()
            .metrics()
            .borrow()
            .membership_config
            .nodes()
            .find(|(id, _)| **id == node)
            .map(|(_, b)| b.addr.clone())
            .ok_or_else(|| Error::InvalidArgument(format!("node {node} is not a member")))?;
        let channel = c
            .peers
            .channel(node, &addr)
            .map_err(|e| Error::Raft(e.to_string()))?;
        Ok(Remote {
            tablet: t.id(),
            node,
            me: c.node,
            channel,
            auth: c.peers.auth().cloned(),
        })
    }

    /// Asks this node's replica of tablet `tablet` to stand for election, or (with `node`)
    /// asks node `node` to: leadership moves there if its log is up to date. For placing
    /// leaders (and for tests).
    pub async fn elect(&self, tablet: u64, node: Option<u64>) -> Result<()> {
        let t = self
            .tablets
            .iter()
            .find(|t| t.id() == tablet)
            .ok_or_else(|| Error::InvalidArgument(format!("no tablet {tablet}")))?;
        let c = self.config.cluster.as_ref();
        match (c, node) {
            (Some(c), Some(n)) if n != c.node => self
                .remote_at(t, c, n)?
                .call(&crate::remote::Request::Elect, false)
                .await
                .map(|_| ()),
            _ => t
                .raft()
                .trigger()
                .elect()
                .await
                .map_err(|e| Error::Raft(e.to_string())),
        }
    }

    /// Whether every tablet is served here (always, in the embedded mode; in a cluster, while
    /// this node leads every group and has caught up).
    pub fn is_serving(&self) -> bool {
        self.tablets.iter().all(|t| t.is_serving())
    }

    /// The node that leads every tablet, as far as this node knows, if one does (`None`
    /// while a leader is unknown or the leaders are on different nodes).
    pub fn sole_leader(&self) -> Option<u64> {
        let mut leaders = self
            .tablets
            .iter()
            .map(|t| t.raft().metrics().borrow().current_leader);
        let first = leaders.next().flatten()?;
        leaders.all(|l| l == Some(first)).then_some(first)
    }

    /// Every tablet, in key order.
    pub fn tablets(&self) -> &[Arc<Tablet>] {
        &self.tablets
    }

    /// The tablet holding `key` if this node's replica of it serves reads and commits now
    /// (always, in the embedded mode): a layer that caches that tablet's keys uses its cache
    /// only then.
    pub fn serving_tablet_for(&self, key: &[u8]) -> Option<&Arc<Tablet>> {
        let t = self.tablet_for(key);
        t.is_serving().then_some(t)
    }

    /// The tablet holding `key`.
    pub fn tablet_for(&self, key: &[u8]) -> &Arc<Tablet> {
        if let [only] = self.tablets.as_slice() {
            return only;
        }
        let i = self
            .tablets
            .partition_point(|t| t.range().start.as_slice() <= key);
        &self.tablets[i.saturating_sub(1)]
    }

    /// The tablets overlapping `range`, in key order.
    pub fn tablets_for_range(&self, range: &KeyRange) -> Vec<Arc<Tablet>> {
        self.tablets
            .iter()
            .filter(|t| t.range().overlaps(range))
            .cloned()
            .collect()
    }

    /// Starts a transaction at a fresh snapshot.
    pub async fn begin(self: &Arc<Self>) -> Result<Txn> {
        Ok(Txn::new(
            self.clone(),
            self.timestamp().await?,
            LockSet::default(),
        ))
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &DbConfig {
        &self.config
    }

    /// The hot-key lock queues.
    pub fn lock_table(&self) -> &LockTable {
        &self.locks
    }

    /// Runs `f` in a transaction and commits it, retrying on conflicts with backoff, at most
    /// `max_attempts` times. Locks met on the way are resolved before the retry.
    pub async fn run_txn<T, F>(self: &Arc<Self>, mut f: F) -> Result<T>
    where
        F: for<'a> FnMut(&'a mut Txn) -> BoxFuture<'a, Result<T>>,
    {
        self.run_in(&(), |t, _| f(t), false).await
    }

    /// [`Db::run_txn`] for a reader: `f` sees a snapshot and may not write (a put, delete or
    /// delta fails with `InvalidArgument`). It records no reads, takes no hot-key locks and
    /// commits nothing, so a lookup costs its reads and one timestamp.
    pub async fn run_read<T, F>(self: &Arc<Self>, mut f: F) -> Result<T>
    where
        F: for<'a> FnMut(&'a mut Txn) -> BoxFuture<'a, Result<T>>,
    {
        self.run_in(&(), |t, _| f(t), true).await
    }

    /// [`Db::run_txn`] (or [`Db::run_read`] if `read_only`) with `state` lent to every
    /// attempt: a closure of the plain form cannot borrow from its caller (its futures must
    /// live as long as any transaction borrow), so it would have to own, and clone, what it
    /// uses.
    pub async fn run_with<C, T, F>(self: &Arc<Self>, state: &C, f: F, read_only: bool) -> Result<T>
    where
        C: Sync + ?Sized,
        F: for<'a> FnMut(&'a mut Txn, &'a C) -> BoxFuture<'a, Result<T>>,
    {
        self.run_in(state, f, read_only).await
    }

    async fn run_in<C, T, F>(self: &Arc<Self>, state: &C, mut f: F, read_only: bool) -> Result<T>
    where
        C: Sync + ?Sized,
        F: for<'a> FnMut(&'a mut Txn, &'a C) -> BoxFuture<'a, Result<T>>,
    {
        let mut attempt = 0u32;
        // Hot-key locks taken by one attempt stay held into the next (see `lockq`).
        let locks = match read_only {
            true => LockSet::none(),
            false => LockSet::default(),
        };
        loop {
            attempt += 1;
            // The snapshot is taken after any carried locks were granted, so it already holds
            // the writes of their previous holders.
            let res = match self.timestamp().await {
                Ok(ts) => {
                    let mut txn = Txn::with_mode(self.clone(), ts, locks.clone(), read_only);
                    match f(&mut txn, state).await {
                        // A reader has nothing to commit. (The commit's future is big, and
                        // it would sit inside every transaction's future: boxed, it costs an
                        // allocation per write, not a copy of kilobytes per read.)
                        Ok(v) if read_only || txn.is_read_only() => Ok(v),
                        Ok(v) => Box::pin(txn.commit()).await.map(|_| v),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            match res {
                Ok(v) => {
                    self.locks.release(&locks);
                    return Ok(v);
                }
                // In a cluster a tablet's leader may be moving: the step did not happen, and
                // the next attempt routes to the new leader once one is known.
                Err(e @ (Error::NotLeader { .. } | Error::Busy(_)))
                    if self.config.cluster.is_some() && attempt < self.config.max_attempts =>
                {
                    tracing::debug!(attempt, error = %e, "retrying after a leader change");
                    tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt.min(10))))
                        .await;
                }
                Err(e) if e.is_retryable() => {
                    if let Error::Locked { key, .. } = &e {
                        if let Err(x) = Box::pin(self.resolve_lock(key)).await {
                            self.locks.release(&locks);
                            return Err(x);
                        }
                    }
                    if !locks.is_empty() && attempt < self.config.max_attempts {
                        // We hold our place in the queue: retry at once.
                        continue;
                    }
                    if attempt >= self.config.max_attempts {
                        self.locks.release(&locks);
                        return Err(Error::RetriesExhausted {
                            attempts: attempt,
                            last: Box::new(e),
                        });
                    }
                    backoff(attempt).await;
                }
                Err(e) => {
                    self.locks.release(&locks);
                    return Err(e);
                }
            }
        }
    }

    /// Calls a registered coprocessor in a retried transaction.
    pub async fn call_coprocessor(self: &Arc<Self>, name: &str, input: &[u8]) -> Result<Vec<u8>> {
        let cop =
            self.coprocessors
                .read()
                .get(name)
                .cloned()
                .ok_or_else(|| Error::Coprocessor {
                    name: name.to_string(),
                    message: "no coprocessor is registered under this name".into(),
                })?;
        let read_only = cop.read_only();
        self.run_in(
            &(cop, input),
            |txn, (cop, input)| cop.call(txn, input),
            read_only,
        )
        .await
    }

    /// Registers (or replaces) a coprocessor.
    pub fn register_coprocessor(&self, cop: Arc<dyn Coprocessor>) {
        self.coprocessors
            .write()
            .insert(cop.name().to_string(), cop);
    }

    /// Every live entry of `range` at a fresh snapshot, whatever the tables' engines (hash
    /// tables included), in key order. It visits whole engines: for checkers such as `fsck`,
    /// not for queries. Commits in flight at the snapshot are waited for.
    pub async fn dump(&self, range: &KeyRange) -> Result<Vec<(Key, Value)>> {
        let snap = self.snapshot().await?;
        self.dump_at(range, snap.ts()).await
    }

    /// [`Db::dump`] at snapshot `ts`, so that several dumps see one state. Hold a
    /// [`Db::snapshot`] for `ts`: otherwise the dump fails with `SnapshotTooOld` once `ts`
    /// leaves the MVCC window.
    pub async fn dump_at(&self, range: &KeyRange, ts: u64) -> Result<Vec<(Key, Value)>> {
        let mut out = Vec::new();
        for t in self.tablets_for_range(range) {
            let Some(piece) = range.intersect(t.range()) else {
                continue;
            };
            // A lock left by a coordinator that died is resolved once it expires: wait for
            // that (a checker must see one state, not give up on a leftover).
            let deadline = std::time::Instant::now()
                + Duration::from_millis(self.config.lock_ttl_ms.saturating_mul(2) + 2_000);
            let mut attempt = 0;
            let rows = loop {
                attempt += 1;
                let route = self.route(&t)?;
                match route.dump(&piece, ts).await {
                    Err(Error::Locked { .. }) if std::time::Instant::now() < deadline => {
                        for (k, _) in route.scan_locks(&piece).await? {
                            self.resolve_lock(&k).await?;
                        }
                        backoff(attempt).await;
                    }
                    other => break other?,
                }
            };
            out.extend(rows);
        }
        Ok(out)
    }

    /// A snapshot read, resolving 2PC locks it meets.
    pub async fn get_at(&self, key: &[u8], ts: u64) -> Result<Option<Value>> {
        let t = self.tablet_for(key);
        // A replica that serves is read by reference: a `Route` would clone the tablet's
        // `Arc`, a write to one cache line that every read on every core shares. (If it
        // stops serving meanwhile, its `get` says `NotLeader`, as the route's would.)
        let remote = match self.config.cluster.is_some() && !t.is_serving() {
            true => Some(self.route(t)?),
            false => None,
        };
        for attempt in 1..=self.config.max_attempts {
            let got = match &remote {
                Some(r) => r.get(key, ts).await,
                None => t.get(key, ts).await,
            };
            match got {
                Err(Error::Locked { .. }) => {
                    // Boxed: a rare path that would otherwise enlarge every read's future.
                    Box::pin(self.resolve_lock(key)).await?;
                    backoff(attempt).await;
                }
                other => return other,
            }
        }
        Err(Error::Locked {
            key: key.to_vec(),
            start_ts: 0,
        })
    }

    /// A snapshot scan across tablets, resolving locks it meets.
    pub async fn scan_at(
        &self,
        range: &KeyRange,
        ts: u64,
        limit: usize,
    ) -> Result<Vec<(Key, Value)>> {
        let mut out = Vec::new();
        for t in self.tablets_for_range(range) {
            let Some(piece) = range.intersect(t.range()) else {
                continue;
            };
            let t = self.route(&t)?;
            let mut attempt = 0;
            let rows = loop {
                attempt += 1;
                match t.scan(&piece, ts, limit - out.len()).await {
                    Err(Error::Locked { .. }) if attempt < self.config.max_attempts => {
                        for (k, _) in t.scan_locks(&piece).await? {
                            self.resolve_lock(&k).await?;
                        }
                        backoff(attempt).await;
                    }
                    other => break other?,
                }
            };
            out.extend(rows);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Resolves the 2PC locks on `key` whose owners are finished or expired: a lock of a
    /// committed transaction is committed, one of a rolled-back transaction is dropped, and an
    /// expired one is rolled back at its primary first (which fails if the primary committed
    /// meanwhile, and then the lock is committed).
    pub async fn resolve_lock(&self, key: &[u8]) -> Result<()> {
        let tablet = self.route_for(key)?;
        let rec: LockRecord = tablet.locks(key).await?;
        let mut owners: Vec<(u64, Key, u64)> = rec
            .writers
            .iter()
            .map(|w| (w.start_ts, w.primary.clone(), w.lock_ms))
            .collect();
        owners.extend(
            rec.readers
                .iter()
                .map(|r| (r.start_ts, r.primary.clone(), r.lock_ms)),
        );
        for (start_ts, primary, lock_ms) in owners {
            let ptablet = self.route_for(&primary)?;
            let status = match ptablet.txn_status(start_ts).await? {
                Some(s) => s,
                None if now_ms().saturating_sub(lock_ms) >= self.config.lock_ttl_ms => {
                    let keys = vec![primary.clone()];
                    match ptablet
                        .rollback(start_ts, keys, Some(primary.clone()))
                        .await?
                    {
                        CommandResult::Committed(ts) => TxnStatus::Committed(ts),
                        _ => TxnStatus::RolledBack,
                    }
                }
                None => continue,
            };
            let rec = tablet.locks(key).await?;
            match status {
                TxnStatus::Committed(commit_ts) => {
                    let writes: Vec<_> = rec
                        .writers
                        .iter()
                        .filter(|w| w.start_ts == start_ts)
                        .map(|w| (key.to_vec(), w.mutation.clone()))
                        .collect();
                    let reads = if rec.readers.iter().any(|r| r.start_ts == start_ts) {
                        vec![key.to_vec()]
                    } else {
                        Vec::new()
                    };
                    tablet
                        .commit_locks(start_ts, commit_ts, writes, reads, None)
                        .await?;
                }
                TxnStatus::RolledBack => {
                    tablet.rollback(start_ts, vec![key.to_vec()], None).await?;
                }
            }
        }
        Ok(())
    }
}

async fn backoff(attempt: u32) {
    let base = 1u64 << attempt.min(6);
    let jitter = rand::random::<u64>() % (base * 200 + 1);
    tokio::time::sleep(Duration::from_micros(base * 100 + jitter)).await;
}
