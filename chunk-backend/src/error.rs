//! Errors of the chunk store.

/// The chunk store's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error from the operating system.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Stored bytes failed a checksum; they are never returned as data.
    #[error("checksum error: {0}")]
    Checksum(String),
    /// The store's own metadata is damaged or from an unknown format.
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// No free block or chunk slot is left.
    #[error("out of space: {0}")]
    NoSpace(String),
    /// The chunk, blob or position does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The caller's input is not acceptable.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Another writer holds the blob's lease.
    #[error("blob {blob} is leased to {holder} for another {remaining_ms} ms")]
    LeaseHeld {
        /// The blob.
        blob: u64,
        /// Who holds it.
        holder: String,
        /// How long the lease still runs.
        remaining_ms: u64,
    },
    /// The caller's lease expired or was never granted.
    #[error("no valid lease on blob {0}")]
    NoLease(u64),
    /// The data is older than the version the reader demands.
    #[error("blob {blob} is at version {have}, the reader demands {want}")]
    Stale {
        /// The blob.
        blob: u64,
        /// The version here.
        have: u64,
        /// The version demanded.
        want: u64,
    },
    /// The store is shutting down.
    #[error("the store is shutting down")]
    Shutdown,
    /// A chunk server or the master failed or refused.
    #[error("remote: {0}")]
    Remote(String),
}
