//! Transactions across nodes: a coordinator reaches a tablet that another node leads, and
//! takes timestamps from an oracle on another node.
//!
//! - [`Route`]: where a tablet's transaction steps go from this node: its own replica when
//!   that replica serves, otherwise the node that leads the group, over the Raft channel this
//!   node already keeps to it (`Raft/Tablet`, one bincode [`Request`] in the envelope). The
//!   receiving node runs the step on its own replica, exactly as for a local coordinator.
//! - [`Oracle`]: the node's source of timestamps when the oracle is replicated (it lives with
//!   the leader of the first tablet). Requests that arrive while one fetch is under way share
//!   the next one, so under load a node asks once per round trip, not once per transaction.
//!   The leader confirms with a quorum that it still leads before it hands any out
//!   ([`crate::Db::local_timestamps`]), so a deposed leader that does not know it yet cannot
//!   hand out a timestamp below one its successor already gave.
//!
//! Outcomes keep their meaning across the wire: an answer is the remote step's own result
//! ([`WireError`] carries the error kinds that matter to callers: conflicts, locks, not the
//! leader, undetermined...). A step whose answer is lost is *undetermined* if it could have
//! changed anything (a commit, a prewrite, a rollback), and "not led there" (retryable) if it
//! only reads or the connection was never made.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tonic::transport::Channel;

use crate::command::{CommandResult, LockRecord, TxnStatus};
use crate::coprocessor::BoxFuture;
use crate::db::Db;
use crate::error::{Error, Result};
use crate::keys::{Key, KeyRange, Value};
use crate::mvcc::Mutation;
use crate::raft::net::{proto, MAX_MESSAGE_BYTES};
use crate::tablet::{ReadSet, Tablet};

/// How long a step on another node may take before its answer counts as lost. A commit may
/// wait for room in a full log store (up to a minute), so mutations get longer.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
const WRITE_TIMEOUT: Duration = Duration::from_secs(75);

/// A transaction step on a tablet, sent to the node that leads it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    /// `n` fresh timestamps from the oracle (the first tablet's leader).
    Timestamps {
        n: u32,
    },
    Get {
        key: Key,
        ts: u64,
    },
    Scan {
        range: KeyRange,
        ts: u64,
        limit: u64,
    },
    Dump {
        range: KeyRange,
        ts: u64,
    },
    ChangedSince {
        key: Key,
        ts: u64,
    },
    Commit1pc {
        start_ts: u64,
        reads: Vec<Key>,
        scans: Vec<KeyRange>,
        stable: Vec<Key>,
        writes: Vec<(Key, Mutation)>,
    },
    Prewrite {
        start_ts: u64,
        primary: Key,
        reads: Vec<Key>,
        scans: Vec<KeyRange>,
        writes: Vec<(Key, Mutation)>,
    },
    CommitLocks {
        start_ts: u64,
        commit_ts: u64,
        writes: Vec<(Key, Mutation)>,
        reads: Vec<Key>,
        primary: Option<Key>,
    },
    Rollback {
        start_ts: u64,
        keys: Vec<Key>,
        primary: Option<Key>,
    },
    Locks {
        key: Key,
    },
    ScanLocks {
        range: KeyRange,
    },
    TxnStatus {
        start_ts: u64,
    },
    /// Asks the node to stand for election in the tablet's group (moving its leadership).
    Elect,
    /// A membership change of the tablet's group, for its leader to make.
    Member(crate::membership::Change),
    /// Whether the node answers at all (a failure detector's probe).
    Ping,
    /// Holds a snapshot at `ts` open on the tablet for `lease_ms` (a new pin, or with `id` a
    /// renewal of one); answers the pin's id.
    Pin {
        ts: u64,
        lease_ms: u64,
        id: Option<u64>,
    },
    /// Releases pin `id`.
    Unpin {
        id: u64,
    },
}

/// The answer to a [`Request`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    Ts(u64),
    Value(Option<Value>),
    Rows(Vec<(Key, Value)>),
    Changed(bool),
    Result(CommandResult),
    Unit,
    Locks(LockRecord),
    LockList(Vec<(Key, LockRecord)>),
    Status(Option<TxnStatus>),
}

/// An error as it travels between nodes: the kinds callers act on keep their identity.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum WireError {
    Conflict { key: String, reason: String },
    SnapshotTooOld { ts: u64, floor: u64 },
    Locked { key: Key, start_ts: u64 },
    Aborted { start_ts: u64, reason: String },
    InvalidArgument(String),
    Unsupported(String),
    Corruption(String),
    NoSpace(String),
    Shutdown,
    Busy(String),
    NotLeader { tablet: u64, leader: Option<u64> },
    Undetermined(String),
    Refused(Vec<u8>),
    Other(String),
}

impl From<&Error> for WireError {
    fn from(e: &Error) -> WireError {
        match e {
            Error::Conflict { key, reason } => WireError::Conflict {
                key: key.clone(),
                reason: reason.to_string(),
            },
            Error::SnapshotTooOld { ts, floor } => WireError::SnapshotTooOld {
                ts: *ts,
                floor: *floor,
            },
            Error::Locked { key, start_ts } => WireError::Locked {
                key: key.clone(),
                start_ts: *start_ts,
            },
            Error::Aborted { start_ts, reason } => WireError::Aborted {
                start_ts: *start_ts,
                reason: reason.clone(),
            },
            Error::InvalidArgument(m) => WireError::InvalidArgument(m.clone()),
            Error::Unsupported(m) => WireError::Unsupported(m.clone()),
            Error::Corruption(m) => WireError::Corruption(m.clone()),
            Error::NoSpace(m) => WireError::NoSpace(m.clone()),
            Error::Shutdown => WireError::Shutdown,
            Error::Busy(m) => WireError::Busy(m.clone()),
            Error::NotLeader { tablet, leader } => WireError::NotLeader {
                tablet: *tablet,
                leader: *leader,
            },
            Error::Undetermined(m) => WireError::Undetermined(m.clone()),
            Error::Refused(b) => WireError::Refused(b.clone()),
            Error::Io(io) if crate::engine::is_no_space(io) => WireError::NoSpace(io.to_string()),
            other => WireError::Other(other.to_string()),
        }
    }
}

impl From<WireError> for Error {
    fn from(e: WireError) -> Error {
        match e {
            WireError::Conflict { key, reason } => Error::Conflict {
                key,
                reason: reason.into(),
            },
            WireError::SnapshotTooOld { ts, floor } => Error::SnapshotTooOld { ts, floor },
            WireError::Locked { key, start_ts } => Error::Locked { key, start_ts },
            WireError::Aborted { start_ts, reason } => Error::Aborted { start_ts, reason },
            WireError::InvalidArgument(m) => Error::InvalidArgument(m),
            WireError::Unsupported(m) => Error::Unsupported(m),
            WireError::Corruption(m) => Error::Corruption(m),
            WireError::NoSpace(m) => Error::NoSpace(m),
            WireError::Shutdown => Error::Shutdown,
            WireError::Busy(m) => Error::Busy(m),
            WireError::NotLeader { tablet, leader } => Error::NotLeader { tablet, leader },
            WireError::Undetermined(m) => Error::Undetermined(m),
            WireError::Refused(b) => Error::Refused(b),
            WireError::Other(m) => Error::Raft(format!("on the tablet's leader: {m}")),
        }
    }
}

/// The same error again, for each of several callers that shared one failed step.
pub(crate) fn copy_error(e: &Error) -> Error {
    WireError::from(e).into()
}

/// Runs a step that another node sent for tablet `tablet`, on this node's replica. Only a
/// replica that serves answers (a follower's view of locks and versions may be stale).
pub(crate) async fn serve(db: &Arc<Db>, tablet: u64, req: Request) -> Result<Reply> {
    match req {
        Request::Timestamps { n } => return db.local_timestamps(n).await.map(Reply::Ts),
        Request::Ping => return Ok(Reply::Unit),
        _ => {}
    }
    let t = db
        .tablets()
        .iter()
        .find(|t| t.id() == tablet)
        .cloned()
        .ok_or_else(|| Error::InvalidArgument(format!("no tablet {tablet} here")))?;
    if let Request::Elect = req {
        t.raft()
            .trigger()
            .elect()
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        return Ok(Reply::Unit);
    }
    t.check_serving()?;
    Ok(match req {
        Request::Member(c) => {
            crate::membership::apply(&t, c).await?;
            Reply::Unit
        }
        Request::Pin { ts, lease_ms, id } => {
            Reply::Ts(db.hold_pin(&t, ts, Duration::from_millis(lease_ms), id)?)
        }
        Request::Unpin { id } => {
            db.release_pin(id);
            Reply::Unit
        }
        Request::Timestamps { .. } | Request::Elect | Request::Ping => {
            return Err(Error::InvalidArgument(
                "a step that is not for a tablet's leader".into(),
            ))
        }
        Request::Get { key, ts } => Reply::Value(t.get(&key, ts).await?),
        Request::Scan { range, ts, limit } => Reply::Rows(
            t.scan(&range, ts, usize::try_from(limit).unwrap_or(usize::MAX))
                .await?,
        ),
        Request::Dump { range, ts } => Reply::Rows(t.dump(&range, ts).await?),
        Request::ChangedSince { key, ts } => Reply::Changed(t.changed_since(&key, ts)?),
        Request::Commit1pc {
            start_ts,
            reads,
            scans,
            stable,
            writes,
        } => Reply::Ts(
            t.commit_1pc(
                start_ts,
                ReadSet {
                    reads: &reads,
                    scans: &scans,
                    stable: &stable,
                },
                writes,
            )
            .await?,
        ),
        Request::Prewrite {
            start_ts,
            primary,
            reads,
            scans,
            writes,
        } => {
            t.prewrite(
                start_ts,
                &primary,
                ReadSet {
                    reads: &reads,
                    scans: &scans,
                    stable: &[],
                },
                writes,
            )
            .await?;
            Reply::Unit
        }
        Request::CommitLocks {
            start_ts,
            commit_ts,
            writes,
            reads,
            primary,
        } => Reply::Result(
            t.commit_locks(start_ts, commit_ts, writes, reads, primary)
                .await?,
        ),
        Request::Rollback {
            start_ts,
            keys,
            primary,
        } => Reply::Result(t.rollback(start_ts, keys, primary).await?),
        Request::Locks { key } => Reply::Locks(t.locks(&key)?),
        Request::ScanLocks { range } => Reply::LockList(t.scan_locks(&range)?),
        Request::TxnStatus { start_ts } => Reply::Status(t.txn_status(start_ts)?),
    })
}

/// Where the steps of one tablet go from this node (see the module docs).
#[derive(Clone)]
pub(crate) enum Route {
    /// This node's replica serves.
    Local(Arc<Tablet>),
    /// Another node leads the group.
    Remote(Remote),
}

/// A tablet led by another node.
#[derive(Clone)]
pub(crate) struct Remote {
    pub(crate) tablet: u64,
    pub(crate) node: u64,
    pub(crate) me: u64,
    pub(crate) channel: Channel,
    pub(crate) auth: Option<tonic::metadata::AsciiMetadataValue>,
}

/// Whether a failed call certainly never reached the other node (the connection was never
/// made), so that even a mutation did not happen.
fn never_sent(s: &tonic::Status) -> bool {
    let text = format!("{s:?}");
    text.contains("tcp connect error") || text.contains("Connection refused")
}

impl Remote {
    /// Sends `req`; `mutates` says whether a lost answer leaves the outcome unknown.
    pub(crate) async fn call(&self, req: &Request, mutates: bool) -> Result<Reply> {
        let body = bincode::serialize(req)
            .map_err(|e| Error::InvalidArgument(format!("encoding a tablet step: {e}")))?;
        let mut client = proto::raft_client::RaftClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let mut request = tonic::Request::new(proto::RaftRequest {
            group: self.tablet,
            from: self.me,
            body,
        });
        if let Some(a) = &self.auth {
            request.metadata_mut().insert("authorization", a.clone());
        }
        let limit = if mutates { WRITE_TIMEOUT } else { READ_TIMEOUT };
        let lost = |why: String| {
            if mutates {
                Error::Undetermined(format!(
                    "tablet {} on node {}: the answer was lost ({why})",
                    self.tablet, self.node
                ))
            } else {
                tracing::debug!(tablet = self.tablet, node = self.node, %why, "a tablet read failed");
                Error::NotLeader {
                    tablet: self.tablet,
                    leader: None,
                }
            }
        };
        let reply = match tokio::time::timeout(limit, client.tablet(request)).await {
            Err(_) => return Err(lost(format!("no answer within {limit:?}"))),
            Ok(Err(s)) if never_sent(&s) => {
                return Err(Error::NotLeader {
                    tablet: self.tablet,
                    leader: None,
                })
            }
            // The node refused the message before running anything (blocked, not hosted).
            Ok(Err(s)) if s.code() == tonic::Code::NotFound => {
                return Err(Error::NotLeader {
                    tablet: self.tablet,
                    leader: None,
                })
            }
            Ok(Err(s)) => return Err(lost(s.to_string())),
            Ok(Ok(r)) => r.into_inner(),
        };
        let answer: std::result::Result<Reply, WireError> = bincode::deserialize(&reply.body)
            .map_err(|e| lost(format!("an answer that does not decode: {e}")))?;
        answer.map_err(Error::from)
    }
}

fn unexpected(r: Reply) -> Error {
    Error::Raft(format!("unexpected answer from a tablet's leader: {r:?}"))
}

/// Takes one kind of answer out of a [`Reply`] (anything else is handed back).
type Pick<T> = fn(Reply) -> std::result::Result<T, Reply>;

impl Remote {
    /// Sends `req` and takes the answer `pick` expects.
    async fn ask<T>(&self, req: Request, mutates: bool, pick: Pick<T>) -> Result<T> {
        pick(self.call(&req, mutates).await?).map_err(unexpected)
    }
}

fn value(r: Reply) -> std::result::Result<Option<Value>, Reply> {
    match r {
        Reply::Value(v) => Ok(v),
        o => Err(o),
    }
}

fn rows(r: Reply) -> std::result::Result<Vec<(Key, Value)>, Reply> {
    match r {
        Reply::Rows(v) => Ok(v),
        o => Err(o),
    }
}

fn changed(r: Reply) -> std::result::Result<bool, Reply> {
    match r {
        Reply::Changed(v) => Ok(v),
        o => Err(o),
    }
}

fn ts(r: Reply) -> std::result::Result<u64, Reply> {
    match r {
        Reply::Ts(v) => Ok(v),
        o => Err(o),
    }
}

fn unit(r: Reply) -> std::result::Result<(), Reply> {
    match r {
        Reply::Unit => Ok(()),
        o => Err(o),
    }
}

fn outcome(r: Reply) -> std::result::Result<CommandResult, Reply> {
    match r {
        Reply::Result(v) => Ok(v),
        o => Err(o),
    }
}

fn locks(r: Reply) -> std::result::Result<LockRecord, Reply> {
    match r {
        Reply::Locks(v) => Ok(v),
        o => Err(o),
    }
}

fn lock_list(r: Reply) -> std::result::Result<Vec<(Key, LockRecord)>, Reply> {
    match r {
        Reply::LockList(v) => Ok(v),
        o => Err(o),
    }
}

fn status(r: Reply) -> std::result::Result<Option<TxnStatus>, Reply> {
    match r {
        Reply::Status(v) => Ok(v),
        o => Err(o),
    }
}

impl Route {
    /// The tablet's id.
    pub(crate) fn id(&self) -> u64 {
        match self {
            Route::Local(t) => t.id(),
            Route::Remote(r) => r.tablet,
        }
    }

    pub(crate) async fn get(&self, key: &[u8], ts: u64) -> Result<Option<Value>> {
        match self {
            Route::Local(t) => t.get(key, ts).await,
            Route::Remote(r) => {
                let key = key.to_vec();
                r.ask(Request::Get { key, ts }, false, value).await
            }
        }
    }

    pub(crate) async fn scan(
        &self,
        range: &KeyRange,
        ts: u64,
        limit: usize,
    ) -> Result<Vec<(Key, Value)>> {
        match self {
            Route::Local(t) => t.scan(range, ts, limit).await,
            Route::Remote(r) => {
                let (range, limit) = (range.clone(), limit as u64);
                r.ask(Request::Scan { range, ts, limit }, false, rows).await
            }
        }
    }

    pub(crate) async fn dump(&self, range: &KeyRange, ts: u64) -> Result<Vec<(Key, Value)>> {
        match self {
            Route::Local(t) => t.dump(range, ts).await,
            Route::Remote(r) => {
                let range = range.clone();
                r.ask(Request::Dump { range, ts }, false, rows).await
            }
        }
    }

    pub(crate) async fn changed_since(&self, key: &[u8], ts: u64) -> Result<bool> {
        match self {
            Route::Local(t) => t.changed_since(key, ts),
            Route::Remote(r) => {
                let key = key.to_vec();
                r.ask(Request::ChangedSince { key, ts }, false, changed)
                    .await
            }
        }
    }

    pub(crate) async fn commit_1pc(
        &self,
        start_ts: u64,
        rs: ReadSet<'_>,
        writes: Vec<(Key, Mutation)>,
    ) -> Result<u64> {
        match self {
            Route::Local(t) => t.commit_1pc(start_ts, rs, writes).await,
            Route::Remote(r) => {
                let req = Request::Commit1pc {
                    start_ts,
                    reads: rs.reads.to_vec(),
                    scans: rs.scans.to_vec(),
                    stable: rs.stable.to_vec(),
                    writes,
                };
                r.ask(req, true, ts).await
            }
        }
    }

    pub(crate) async fn prewrite(
        &self,
        start_ts: u64,
        primary: &[u8],
        rs: ReadSet<'_>,
        writes: Vec<(Key, Mutation)>,
    ) -> Result<()> {
        match self {
            Route::Local(t) => t.prewrite(start_ts, primary, rs, writes).await,
            Route::Remote(r) => {
                let req = Request::Prewrite {
                    start_ts,
                    primary: primary.to_vec(),
                    reads: rs.reads.to_vec(),
                    scans: rs.scans.to_vec(),
                    writes,
                };
                r.ask(req, true, unit).await
            }
        }
    }

    pub(crate) async fn commit_locks(
        &self,
        start_ts: u64,
        commit_ts: u64,
        writes: Vec<(Key, Mutation)>,
        reads: Vec<Key>,
        primary: Option<Key>,
    ) -> Result<CommandResult> {
        match self {
            Route::Local(t) => {
                t.commit_locks(start_ts, commit_ts, writes, reads, primary)
                    .await
            }
            Route::Remote(r) => {
                let req = Request::CommitLocks {
                    start_ts,
                    commit_ts,
                    writes,
                    reads,
                    primary,
                };
                r.ask(req, true, outcome).await
            }
        }
    }

    pub(crate) async fn rollback(
        &self,
        start_ts: u64,
        keys: Vec<Key>,
        primary: Option<Key>,
    ) -> Result<CommandResult> {
        match self {
            Route::Local(t) => t.rollback(start_ts, keys, primary).await,
            Route::Remote(r) => {
                let req = Request::Rollback {
                    start_ts,
                    keys,
                    primary,
                };
                r.ask(req, true, outcome).await
            }
        }
    }

    pub(crate) async fn locks(&self, key: &[u8]) -> Result<LockRecord> {
        match self {
            Route::Local(t) => t.locks(key),
            Route::Remote(r) => {
                let key = key.to_vec();
                r.ask(Request::Locks { key }, false, locks).await
            }
        }
    }

    pub(crate) async fn scan_locks(&self, range: &KeyRange) -> Result<Vec<(Key, LockRecord)>> {
        match self {
            Route::Local(t) => t.scan_locks(range),
            Route::Remote(r) => {
                let range = range.clone();
                r.ask(Request::ScanLocks { range }, false, lock_list).await
            }
        }
    }

    pub(crate) async fn txn_status(&self, start_ts: u64) -> Result<Option<TxnStatus>> {
        match self {
            Route::Local(t) => t.txn_status(start_ts),
            Route::Remote(r) => r.ask(Request::TxnStatus { start_ts }, false, status).await,
        }
    }
}

/// Callers that share one fetch: whoever finds no fetch under way runs the next one for
/// everyone queued, and the others wait for its answer. A caller whose fetch was cancelled
/// (its runner went away) queues again.
pub(crate) struct Combiner<W, R> {
    waiting: Mutex<Vec<(W, oneshot::Sender<R>)>>,
    /// The one fetch under way.
    running: tokio::sync::Mutex<()>,
}

impl<W, R> Default for Combiner<W, R> {
    fn default() -> Self {
        Combiner {
            waiting: Mutex::new(Vec::new()),
            running: tokio::sync::Mutex::new(()),
        }
    }
}

impl<W: Clone, R> Combiner<W, R> {
    /// Queues `want` and returns its answer; `serve` answers a whole batch (every sender).
    pub(crate) async fn call<F, Fut>(&self, want: W, mut serve: F) -> R
    where
        F: FnMut(Vec<(W, oneshot::Sender<R>)>) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        use tokio::sync::oneshot::error::TryRecvError;
        'queue: loop {
            let (tx, mut rx) = oneshot::channel();
            self.waiting.lock().push((want.clone(), tx));
            loop {
                match rx.try_recv() {
                    Ok(r) => return r,
                    Err(TryRecvError::Closed) => continue 'queue,
                    Err(TryRecvError::Empty) => {}
                }
                let running = self.running.lock().await;
                // Whoever ran the fetch before has answered everyone it took.
                match rx.try_recv() {
                    Ok(r) => return r,
                    Err(TryRecvError::Closed) => continue 'queue,
                    Err(TryRecvError::Empty) => {}
                }
                let batch = std::mem::take(&mut *self.waiting.lock());
                if !batch.is_empty() {
                    serve(batch).await;
                }
                drop(running);
            }
        }
    }
}

/// A node's timestamps when the oracle is replicated (see the module docs).
#[derive(Default)]
pub(crate) struct Oracle {
    db: OnceLock<Weak<Db>>,
    /// Callers waiting for a fetch, with how many timestamps each wants.
    fetches: Combiner<u32, Result<u64>>,
}

impl Oracle {
    pub(crate) fn set_db(&self, db: &Arc<Db>) {
        let _ = self.db.set(Arc::downgrade(db));
    }

    /// One fetch of `n` timestamps: here if this node leads the oracle's group, otherwise
    /// from the node that does.
    async fn fetch(&self, n: u32) -> Result<u64> {
        let db = self
            .db
            .get()
            .and_then(Weak::upgrade)
            .ok_or(Error::Shutdown)?;
        let first = db.tablets().first().cloned().ok_or(Error::Shutdown)?;
        match db.route(&first)? {
            Route::Local(_) => db.local_timestamps(n).await,
            Route::Remote(r) => r.ask(Request::Timestamps { n }, false, ts).await,
        }
    }

    /// `n` fresh timestamps (the first), sharing a fetch with every caller that arrives
    /// while one is under way.
    pub(crate) async fn next_n(&self, n: u32) -> Result<u64> {
        self.fetches
            .call(n.max(1), |batch| async move {
                let total: u64 = batch.iter().map(|(n, _)| u64::from(*n)).sum();
                match self.fetch(u32::try_from(total).unwrap_or(u32::MAX)).await {
                    Ok(first) => {
                        let mut next = first;
                        for (n, w) in batch {
                            let _ = w.send(Ok(next));
                            next += u64::from(n);
                        }
                    }
                    Err(e) => {
                        for (_, w) in batch {
                            let _ = w.send(Err(copy_error(&e)));
                        }
                    }
                }
            })
            .await
    }
}

impl crate::tso::TimestampSource for Oracle {
    fn next_n(&self, n: u32) -> BoxFuture<'_, Result<u64>> {
        Box::pin(Oracle::next_n(self, n))
    }
}
