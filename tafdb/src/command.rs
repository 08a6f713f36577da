//! The commands a tablet's Raft log carries, and their deterministic application.
//!
//! Conflict checks happen on the leader *before* a command is proposed (see
//! [`crate::tablet`]), so applying a command never depends on anything but the log: replaying
//! the log after a crash, or on another replica, produces exactly the same state. A command is
//! applied by [`apply`], a pure function of the tablet's MVCC state and the command.
//!
//! Two-phase-commit locks and transaction status records are kept as MVCC data under internal
//! keys (`0xFF 'L' key` and `0xFF 'S' start_ts`), so they are flushed, persisted and recovered
//! exactly like user data. Their versions use the log index as timestamp, which is monotonic
//! per tablet.

use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::keys::{Key, INTERNAL_PREFIX};
use crate::mvcc::{InstallBatch, Mutation, MvccStore};

/// One tablet command. A Raft entry carries a batch of them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Command {
    /// A one-phase commit: install every write at `commit_ts`.
    Commit {
        /// The commit timestamp.
        commit_ts: u64,
        /// The writes.
        writes: Vec<(Key, Mutation)>,
    },
    /// Phase one of 2PC: lock the written keys (keeping the mutations in the locks) and the
    /// read keys.
    Prewrite {
        /// The transaction's start timestamp; identifies it.
        start_ts: u64,
        /// The primary key, whose lock decides the outcome.
        primary: Key,
        /// Writes that belong to this tablet.
        writes: Vec<(Key, Mutation)>,
        /// Keys this transaction read on this tablet.
        reads: Vec<Key>,
        /// Wall-clock milliseconds when the lock was taken, for expiry.
        lock_ms: u64,
    },
    /// Phase two of 2PC: install the writes at `commit_ts` and drop the transaction's locks.
    ///
    /// The command carries the writes itself (rather than taking them from the locks), so that
    /// applying it never depends on lock state that a crash during a flush may have left ahead
    /// of the log position being replayed.
    CommitLocks {
        /// The transaction.
        start_ts: u64,
        /// The commit timestamp.
        commit_ts: u64,
        /// The writes that belong to this tablet.
        writes: Vec<(Key, Mutation)>,
        /// The keys this transaction read on this tablet (their read locks are dropped).
        reads: Vec<Key>,
        /// Set at the primary's tablet: the primary lock must still be held (or the transaction
        /// already committed), and a status record is written.
        primary: Option<Key>,
    },
    /// Abort of a 2PC transaction: drop its locks; at the primary, record the rollback so a
    /// late commit fails.
    Rollback {
        /// The transaction.
        start_ts: u64,
        /// The keys (writes and reads) of this tablet.
        keys: Vec<Key>,
        /// Set at the primary's tablet.
        primary: Option<Key>,
    },
    /// Garbage collection of status records: raises the tablet's *status safe point* to
    /// `below` and deletes the listed status records (all of transactions that started before
    /// it and hold no lock anywhere). A transaction that started before the safe point can no
    /// longer commit at its primary, so a status record that is gone can never be needed to
    /// tell a commit from a rollback.
    ForgetStatus {
        /// The new safe point (a start timestamp).
        below: u64,
        /// Start timestamps whose status records go.
        start_ts: Vec<u64>,
    },
    /// The timestamp oracle's replicated high-water mark (see [`crate::Tso::replicated`]):
    /// the leader hands out timestamps below `up_to` once this is committed, and whoever
    /// leads next starts above it. Applying it changes no data; the state machine records
    /// the largest mark with the largest commit timestamp.
    TsoMark {
        /// Every timestamp handed out in this term is below it.
        up_to: u64,
    },
}

/// What applying a command produced.
/// The payload of a tablet's Raft entry: a batch of commands, encoded once.
///
/// The proposer encodes a batch once, off openraft's core task, and the log writes those bytes.
/// openraft clones an entry when it reads it back for apply; here that is two reference-count
/// increments instead of a deep copy of every key and value. The decoded commands are *taken*
/// by the first apply, which moves the keys and values into the MVCC store; whoever reads the
/// entry after that (a replay, a follower's replication) decodes the bytes.
///
/// The proposer may also leave an *answer* in the batch ([`CommandBatch::on_apply`]): the first
/// apply calls it with the results, so that the callers hear back from the state machine
/// directly instead of through openraft's core and a reply task (two thread hand-offs fewer on
/// every commit).
#[derive(Clone)]
pub struct CommandBatch {
    encoded: Arc<Vec<u8>>,
    decoded: Arc<Mutex<Option<Vec<Command>>>>,
    answer: Arc<Mutex<Option<Answer>>>,
}

/// What the first apply of a batch calls with its results (see [`CommandBatch::on_apply`]).
pub type Answer = Box<dyn FnOnce(&[CommandResult]) + Send>;

impl CommandBatch {
    /// Encodes `cmds`.
    pub fn new(cmds: Vec<Command>) -> Result<CommandBatch> {
        let encoded =
            bincode::serialize(&cmds).map_err(|e| Error::Corruption(format!("encode: {e}")))?;
        Ok(CommandBatch {
            encoded: Arc::new(encoded),
            decoded: Arc::new(Mutex::new(Some(cmds))),
            answer: Arc::new(Mutex::new(None)),
        })
    }

    /// Leaves `answer` for the first apply of this batch (in this process): it is called once,
    /// with the results, right after the entry's writes are in the MVCC store. Set it before
    /// the batch is proposed.
    pub fn on_apply(&self, answer: Answer) {
        *self.answer.lock() = Some(answer);
    }

    /// Calls the answer left by [`CommandBatch::on_apply`], if any is still there.
    pub(crate) fn answer(&self, results: &[CommandResult]) {
        let answer = self.answer.lock().take();
        if let Some(f) = answer {
            f(results);
        }
    }

    /// The commands: moved out if no one took them yet, else decoded again.
    pub fn take(&self) -> Result<Vec<Command>> {
        if let Some(cmds) = self.decoded.lock().take() {
            return Ok(cmds);
        }
        bincode::deserialize(&self.encoded)
            .map_err(|e| Error::Corruption(format!("command batch: {e}")))
    }

    /// The encoded size in bytes.
    pub fn encoded_len(&self) -> usize {
        self.encoded.len()
    }
}

impl std::fmt::Debug for CommandBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CommandBatch({} bytes)", self.encoded.len())
    }
}

impl Serialize for CommandBatch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.encoded)
    }
}

impl<'de> Deserialize<'de> for CommandBatch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Bytes;
        impl serde::de::Visitor<'_> for Bytes {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an encoded command batch")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> std::result::Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(
                self,
                v: Vec<u8>,
            ) -> std::result::Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        let encoded = d.deserialize_byte_buf(Bytes)?;
        // Decoded lazily, when applied.
        Ok(CommandBatch {
            encoded: Arc::new(encoded),
            decoded: Arc::new(Mutex::new(None)),
            answer: Arc::new(Mutex::new(None)),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Applied.
    Ok,
    /// The transaction was rolled back before this commit reached the primary.
    Aborted,
    /// The transaction had already committed at this timestamp (a rollback arrived late).
    Committed(u64),
}

/// A lock held by a transaction on a written key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteLock {
    /// The owner's start timestamp.
    pub start_ts: u64,
    /// The owner's primary key.
    pub primary: Key,
    /// The pending write.
    pub mutation: Mutation,
    /// When it was taken (wall-clock ms).
    pub lock_ms: u64,
}

/// A lock held by a transaction on a key it read (shared among readers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadLock {
    /// The owner's start timestamp.
    pub start_ts: u64,
    /// The owner's primary key.
    pub primary: Key,
    /// When it was taken (wall-clock ms).
    pub lock_ms: u64,
}

/// Every lock on one key. Several writers coexist only when all of them are delta writes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    /// Write locks.
    pub writers: Vec<WriteLock>,
    /// Read locks.
    pub readers: Vec<ReadLock>,
}

impl LockRecord {
    /// Whether the record holds nothing.
    pub fn is_empty(&self) -> bool {
        self.writers.is_empty() && self.readers.is_empty()
    }
}

/// The outcome of a 2PC transaction, kept at its primary's tablet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnStatus {
    /// Committed at this timestamp.
    Committed(u64),
    /// Rolled back.
    RolledBack,
}

/// The internal key holding the locks of `key`.
pub fn lock_key(key: &[u8]) -> Key {
    let mut k = Vec::with_capacity(key.len() + 2);
    k.push(INTERNAL_PREFIX);
    k.push(b'L');
    k.extend_from_slice(key);
    k
}

/// The internal key holding the tablet's status safe point (see [`Command::ForgetStatus`]).
pub fn safe_point_key() -> Key {
    vec![INTERNAL_PREFIX, b'G']
}

/// The range of every status record.
pub fn status_range() -> crate::keys::KeyRange {
    crate::keys::KeyRange::prefix(&[INTERNAL_PREFIX, b'S'])
}

/// Reads the tablet's status safe point (0 when never set).
pub fn read_safe_point(mvcc: &MvccStore) -> Result<u64> {
    match mvcc.get(&safe_point_key(), u64::MAX)? {
        Some(b) => <[u8; 8]>::try_from(b.as_slice())
            .map(u64::from_le_bytes)
            .map_err(|_| Error::Corruption(format!("status safe point of {} bytes", b.len()))),
        None => Ok(0),
    }
}

/// The internal key holding the status of transaction `start_ts`.
pub fn status_key(start_ts: u64) -> Key {
    let mut k = vec![INTERNAL_PREFIX, b'S'];
    k.extend_from_slice(&start_ts.to_be_bytes());
    k
}

/// Reads the locks on `key` (latest state).
pub fn read_locks(mvcc: &MvccStore, key: &[u8]) -> Result<LockRecord> {
    match mvcc.get(&lock_key(key), u64::MAX)? {
        Some(bytes) => {
            bincode::deserialize(&bytes).map_err(|e| Error::Corruption(format!("lock record: {e}")))
        }
        None => Ok(LockRecord::default()),
    }
}

/// Reads the status of a 2PC transaction at its primary's tablet.
pub fn read_status(mvcc: &MvccStore, start_ts: u64) -> Result<Option<TxnStatus>> {
    match mvcc.get(&status_key(start_ts), u64::MAX)? {
        Some(bytes) => {
            Ok(Some(bincode::deserialize(&bytes).map_err(|e| {
                Error::Corruption(format!("txn status: {e}"))
            })?))
        }
        None => Ok(None),
    }
}

fn write_locks(mvcc: &MvccStore, key: &[u8], index: u64, rec: &LockRecord) -> Result<i64> {
    let lk = lock_key(key);
    let delta = if rec.is_empty() {
        mvcc.install(&lk, index, index, Mutation::Delete);
        -1
    } else {
        let bytes =
            bincode::serialize(rec).map_err(|e| Error::Corruption(format!("lock record: {e}")))?;
        mvcc.install(&lk, index, index, Mutation::Put(bytes));
        0
    };
    // After the record is in place (see `crate::watch`).
    if let Some(w) = mvcc.watch().for_key(key) {
        w.locked(key, !rec.writers.is_empty());
    }
    Ok(delta)
}

fn write_status(mvcc: &MvccStore, start_ts: u64, index: u64, status: TxnStatus) -> Result<()> {
    let bytes =
        bincode::serialize(&status).map_err(|e| Error::Corruption(format!("txn status: {e}")))?;
    mvcc.install(&status_key(start_ts), index, index, Mutation::Put(bytes));
    Ok(())
}

/// Applies one command at log index `index`, installing into `batch`. Returns the result and
/// the change in the number of keys that carry locks.
pub fn apply(
    batch: &mut InstallBatch<'_>,
    index: u64,
    cmd: Command,
) -> Result<(CommandResult, i64)> {
    match cmd {
        Command::Commit { commit_ts, writes } => {
            // The common case moves keys and values into the store without a copy.
            for (k, m) in writes {
                batch.install(k, commit_ts, index, m);
            }
            Ok((CommandResult::Ok, 0))
        }
        other => apply_2pc(batch.store(), index, &other),
    }
}

/// Applies a two-phase-commit command.
fn apply_2pc(mvcc: &MvccStore, index: u64, cmd: &Command) -> Result<(CommandResult, i64)> {
    match cmd {
        // Recorded by the state machine; no data changes.
        Command::TsoMark { .. } => Ok((CommandResult::Ok, 0)),
        Command::Commit { commit_ts, writes } => {
            for (k, m) in writes {
                mvcc.install(k, *commit_ts, index, m.clone());
            }
            Ok((CommandResult::Ok, 0))
        }
        Command::Prewrite {
            start_ts,
            primary,
            writes,
            reads,
            lock_ms,
        } => {
            let mut delta = 0;
            // A key may come with several mutations (deltas only): its lock keeps all of them,
            // so that a resolver committing from the lock applies every one.
            for (k, muts) in by_key(writes) {
                let mut rec = read_locks(mvcc, k)?;
                let was_empty = rec.is_empty();
                rec.writers.retain(|w| w.start_ts != *start_ts);
                for m in muts {
                    rec.writers.push(WriteLock {
                        start_ts: *start_ts,
                        primary: primary.clone(),
                        mutation: m.clone(),
                        lock_ms: *lock_ms,
                    });
                }
                write_locks(mvcc, k, index, &rec)?;
                delta += i64::from(was_empty);
            }
            for k in reads {
                let mut rec = read_locks(mvcc, k)?;
                let was_empty = rec.is_empty();
                if !rec.readers.iter().any(|r| r.start_ts == *start_ts) {
                    rec.readers.push(ReadLock {
                        start_ts: *start_ts,
                        primary: primary.clone(),
                        lock_ms: *lock_ms,
                    });
                }
                write_locks(mvcc, k, index, &rec)?;
                delta += i64::from(was_empty);
            }
            Ok((CommandResult::Ok, delta))
        }
        Command::CommitLocks {
            start_ts,
            commit_ts,
            writes,
            reads,
            primary,
        } => {
            if let Some(p) = primary {
                // The status record is written once and never changes, so deciding on it first
                // keeps replays deterministic.
                match read_status(mvcc, *start_ts)? {
                    Some(TxnStatus::Committed(ts)) if ts != *commit_ts => {
                        return Ok((CommandResult::Committed(ts), 0))
                    }
                    Some(TxnStatus::Committed(_)) => {}
                    Some(TxnStatus::RolledBack) => return Ok((CommandResult::Aborted, 0)),
                    None => {
                        // Below the safe point a status record may have been collected: such a
                        // transaction may have been rolled back, and must not commit now.
                        if *start_ts < read_safe_point(mvcc)? {
                            return Ok((CommandResult::Aborted, 0));
                        }
                        let rec = read_locks(mvcc, p)?;
                        let held = rec.writers.iter().any(|w| w.start_ts == *start_ts)
                            || rec.readers.iter().any(|r| r.start_ts == *start_ts);
                        if !held {
                            return Ok((CommandResult::Aborted, 0));
                        }
                        write_status(mvcc, *start_ts, index, TxnStatus::Committed(*commit_ts))?;
                    }
                }
            }
            // A key's writes are installed only while this transaction's lock is on it: the
            // coordinator and a lock resolver may both commit the same key, and only the first
            // commit may count (deltas would count twice). Lock state is read as of this log
            // position, also in a replay (the default engine is never ahead of the durable
            // index; see `crate::mvcc`).
            let mut delta = 0;
            for (k, muts) in by_key(writes) {
                let mut rec = read_locks(mvcc, k)?;
                if !rec.writers.iter().any(|w| w.start_ts == *start_ts) {
                    continue;
                }
                for m in muts {
                    mvcc.install(k, *commit_ts, index, m.clone());
                }
                rec.writers.retain(|w| w.start_ts != *start_ts);
                rec.readers.retain(|r| r.start_ts != *start_ts);
                delta += write_locks(mvcc, k, index, &rec)?;
            }
            for k in reads {
                let mut rec = read_locks(mvcc, k)?;
                if !rec.readers.iter().any(|r| r.start_ts == *start_ts) {
                    continue;
                }
                rec.readers.retain(|r| r.start_ts != *start_ts);
                delta += write_locks(mvcc, k, index, &rec)?;
            }
            Ok((CommandResult::Ok, delta))
        }
        Command::Rollback {
            start_ts,
            keys,
            primary,
        } => {
            if primary.is_some() {
                match read_status(mvcc, *start_ts)? {
                    Some(TxnStatus::Committed(ts)) => return Ok((CommandResult::Committed(ts), 0)),
                    Some(TxnStatus::RolledBack) => {}
                    // Below the safe point no commit can happen any more (see `CommitLocks`),
                    // so no record is needed to stop one.
                    None if *start_ts < read_safe_point(mvcc)? => {}
                    None => write_status(mvcc, *start_ts, index, TxnStatus::RolledBack)?,
                }
            }
            let mut delta = 0;
            for k in dedup_keys(keys) {
                let mut rec = read_locks(mvcc, k)?;
                let before = rec.writers.len() + rec.readers.len();
                rec.writers.retain(|w| w.start_ts != *start_ts);
                rec.readers.retain(|r| r.start_ts != *start_ts);
                if rec.writers.len() + rec.readers.len() == before {
                    continue;
                }
                delta += write_locks(mvcc, k, index, &rec)?;
            }
            Ok((CommandResult::Ok, delta))
        }
        Command::ForgetStatus { below, start_ts } => {
            let current = read_safe_point(mvcc)?;
            if *below > current {
                mvcc.install(
                    &safe_point_key(),
                    index,
                    index,
                    Mutation::Put(below.to_le_bytes().to_vec()),
                );
            }
            let safe = current.max(*below);
            for ts in start_ts.iter().filter(|ts| **ts < safe) {
                mvcc.install(&status_key(*ts), index, index, Mutation::Delete);
            }
            Ok((CommandResult::Ok, 0))
        }
    }
}

/// `writes` grouped by key, in order of first appearance.
fn by_key(writes: &[(Key, Mutation)]) -> Vec<(&Key, Vec<&Mutation>)> {
    let mut out: Vec<(&Key, Vec<&Mutation>)> = Vec::new();
    let mut at: std::collections::HashMap<&[u8], usize> = std::collections::HashMap::new();
    for (k, m) in writes {
        match at.get(k.as_slice()) {
            Some(&i) => out[i].1.push(m),
            None => {
                at.insert(k.as_slice(), out.len());
                out.push((k, vec![m]));
            }
        }
    }
    out
}

/// `keys` without repeats, in order.
fn dedup_keys(keys: &[Key]) -> Vec<&Key> {
    let mut seen = std::collections::HashSet::new();
    keys.iter().filter(|k| seen.insert(k.as_slice())).collect()
}
