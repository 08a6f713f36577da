//! Typed errors of the store, split into retryable and fatal kinds.
//!
//! A caller (usually [`crate::Db::run_txn`]) retries only what [`Error::is_retryable`] says is
//! retryable: a conflict, a snapshot that fell out of the MVCC window, a lock that is still held,
//! a tablet that is not ready yet. Everything else is final and is reported as it is.

use std::io;

/// The store's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in TafDB.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another transaction committed (or holds a lock on) a key this transaction read or wrote
    /// after this transaction's start timestamp. Retry with a new transaction.
    #[error("transaction conflict on key {key}: {reason}")]
    Conflict {
        /// The key, printed in escaped form.
        key: String,
        /// What was found.
        reason: std::borrow::Cow<'static, str>,
    },
    /// A read asked for a snapshot older than the in-memory MVCC window.
    #[error("snapshot at ts {ts} is older than the MVCC window (oldest exact ts {floor})")]
    SnapshotTooOld {
        /// The requested read timestamp.
        ts: u64,
        /// The oldest timestamp that can still be answered exactly.
        floor: u64,
    },
    /// A key is locked by an unfinished two-phase commit that could not be resolved in time.
    #[error("key {} is locked by transaction {start_ts}", escape(.key))]
    Locked {
        /// The locked key.
        key: Vec<u8>,
        /// The start timestamp of the lock owner.
        start_ts: u64,
    },
    /// The two-phase commit was rolled back (by a resolver or by the coordinator).
    #[error("transaction {start_ts} was aborted: {reason}")]
    Aborted {
        /// The transaction's start timestamp.
        start_ts: u64,
        /// Why.
        reason: String,
    },
    /// The caller's input is not acceptable (a reserved key, an empty key, a bad range...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The engine cannot do what was asked (for example a range scan on a hash table).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Data read from disk failed its checks.
    #[error("corruption: {0}")]
    Corruption(String),
    /// An I/O error from the operating system.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// An error from RocksDB.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// Raft or the tablet runtime failed or is shutting down.
    #[error("raft: {0}")]
    Raft(String),
    /// The disk is short of space: the transaction was refused and did not commit. It may be
    /// tried again once space is freed (deletes are still accepted).
    #[error("no space: {0}")]
    NoSpace(String),
    /// The store is shutting down; the operation did not commit (it never reached the log).
    #[error("the store is shutting down")]
    Shutdown,
    /// The store is holding writes back (a Raft log store is nearly full while the flusher
    /// catches up): the transaction did not commit and may be tried again shortly.
    #[error("busy: {0}")]
    Busy(String),
    /// This replica of the tablet does not lead its group (or has not caught up since it was
    /// elected): the operation did not happen here. Ask the leader, if one is known.
    #[error("tablet {tablet} is not led here{}", .leader.map(|l| format!(" (node {l} leads)")).unwrap_or_default())]
    NotLeader {
        /// The tablet.
        tablet: u64,
        /// The node that leads it, as far as this replica knows.
        leader: Option<u64>,
    },
    /// The outcome is unknown: the commit reached the Raft log (or may have), and then the store
    /// stopped, the log failed or the answer was lost, so it may or may not have happened.
    /// Never retried blindly: only an operation that can find out whether its first attempt
    /// committed (a request id recorded in the same transaction) may run again.
    #[error("outcome unknown: {0}")]
    Undetermined(String),
    /// The retry budget of [`crate::Db::run_txn`] ran out.
    #[error("gave up after {attempts} attempts; last error: {last}")]
    RetriesExhausted {
        /// How many attempts were made.
        attempts: u32,
        /// The last retryable error.
        last: Box<Error>,
    },
    /// The transaction's own logic refused to commit (for example a namespace operation that
    /// found the name taken). The payload is the application's encoded reason; nothing was
    /// written. Never retried.
    #[error("refused by the transaction's logic ({} bytes of reason)", .0.len())]
    Refused(Vec<u8>),
    /// A coprocessor was not found or failed.
    #[error("coprocessor {name}: {message}")]
    Coprocessor {
        /// The coprocessor's registered name.
        name: String,
        /// What went wrong.
        message: String,
    },
}

impl From<chunk_backend::Error> for Error {
    fn from(e: chunk_backend::Error) -> Error {
        match e {
            chunk_backend::Error::Io(e) => Error::Io(e),
            chunk_backend::Error::Checksum(m) | chunk_backend::Error::Corrupt(m) => {
                Error::Corruption(m)
            }
            chunk_backend::Error::Shutdown => Error::Shutdown,
            other => Error::Io(io::Error::other(other.to_string())),
        }
    }
}

impl Error {
    /// Whether running the transaction again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Conflict { .. }
                | Error::SnapshotTooOld { .. }
                | Error::Locked { .. }
                | Error::Aborted { .. }
        )
    }

    /// Whether the operation may have committed although it failed.
    pub fn is_undetermined(&self) -> bool {
        matches!(self, Error::Undetermined(_))
    }

    pub(crate) fn conflict(key: &[u8], reason: &'static str) -> Error {
        Error::Conflict {
            key: escape(key),
            reason: reason.into(),
        }
    }
}

/// Prints a key readably: printable ASCII as is, everything else as `\xNN`.
pub fn escape(key: &[u8]) -> String {
    let mut s = String::with_capacity(key.len() * 2);
    for &b in key {
        if b.is_ascii_graphic() && b != b'\\' {
            s.push(b as char);
        } else {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}
