//! Namespace errors: POSIX errno values with a message, and how they cross TafDB.
//!
//! An operation fails either with an [`FsError`] (the namespace said no: `ENOENT`, `EEXIST`,
//! ...) or with a store error. Inside a transaction both travel as [`OpError`]; at the
//! coprocessor boundary an `FsError` becomes [`tafdb::Error::Refused`] (so TafDB rolls the
//! transaction back and does not retry it) and is decoded again by [`crate::Service`].

use serde::{Deserialize, Serialize};

/// POSIX error numbers the namespace reports (Linux values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Errno {
    /// Operation not permitted.
    EPERM,
    /// Argument list (an extended attribute value) too long.
    E2BIG,
    /// No such file or directory.
    ENOENT,
    /// I/O error (damaged data, store failure).
    EIO,
    /// Try again (the store's retry budget ran out, or it is shutting down).
    EAGAIN,
    /// Permission denied.
    EACCES,
    /// Device or resource busy.
    EBUSY,
    /// File exists.
    EEXIST,
    /// Cross-namespace link or rename.
    EXDEV,
    /// Not a directory.
    ENOTDIR,
    /// Is a directory.
    EISDIR,
    /// Invalid argument.
    EINVAL,
    /// File too large.
    EFBIG,
    /// Result too large for the caller's buffer.
    ERANGE,
    /// File name too long.
    ENAMETOOLONG,
    /// Directory not empty.
    ENOTEMPTY,
    /// Too many levels of symbolic links.
    ELOOP,
    /// No such extended attribute.
    ENODATA,
    /// Too many links.
    EMLINK,
    /// No space left on the store's disk.
    ENOSPC,
    /// Function not implemented (no such script, or a script without the function called).
    ENOSYS,
    /// Quota exceeded (a script's quota policy refused the change).
    EDQUOT,
    /// Canceled: a script failed (an error in it, or one of its sandbox limits reached); the
    /// transaction it ran in was dropped.
    ECANCELED,
    /// The outcome is unknown: the operation may or may not have happened (the store stopped
    /// or the answer was lost after the commit was proposed). A retry with the same request id
    /// finds out; without one, look before doing it again.
    ETIMEDOUT,
}

impl Errno {
    /// The Linux errno value.
    pub fn code(self) -> i32 {
        match self {
            Errno::EPERM => 1,
            Errno::ENOENT => 2,
            Errno::EIO => 5,
            Errno::E2BIG => 7,
            Errno::EAGAIN => 11,
            Errno::EACCES => 13,
            Errno::EBUSY => 16,
            Errno::EEXIST => 17,
            Errno::EXDEV => 18,
            Errno::ENOTDIR => 20,
            Errno::EISDIR => 21,
            Errno::EINVAL => 22,
            Errno::EFBIG => 27,
            Errno::EMLINK => 31,
            Errno::ERANGE => 34,
            Errno::ENAMETOOLONG => 36,
            Errno::ENOTEMPTY => 39,
            Errno::ELOOP => 40,
            Errno::ENODATA => 61,
            Errno::ENOSPC => 28,
            Errno::ENOSYS => 38,
            Errno::EDQUOT => 122,
            Errno::ECANCELED => 125,
            Errno::ETIMEDOUT => 110,
        }
    }

    /// The errno with a Linux value, if it is one the namespace uses.
    pub fn from_code(code: i32) -> Option<Errno> {
        use Errno::*;
        [
            EPERM,
            ENOENT,
            EIO,
            E2BIG,
            EAGAIN,
            EACCES,
            EBUSY,
            EEXIST,
            EXDEV,
            ENOTDIR,
            EISDIR,
            EINVAL,
            EFBIG,
            EMLINK,
            ERANGE,
            ENAMETOOLONG,
            ENOTEMPTY,
            ELOOP,
            ENODATA,
            ENOSPC,
            ENOSYS,
            EDQUOT,
            ECANCELED,
            ETIMEDOUT,
        ]
        .into_iter()
        .find(|e| e.code() == code)
    }
}

/// A namespace error: an errno and a message for humans.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{errno:?}: {message}")]
pub struct FsError {
    /// The errno.
    pub errno: Errno,
    /// What happened, with the names involved.
    pub message: String,
}

impl FsError {
    /// An error with `errno` and `message`.
    pub fn new(errno: Errno, message: impl Into<String>) -> FsError {
        FsError {
            errno,
            message: message.into(),
        }
    }

    /// The error a store failure becomes at the edge.
    pub fn from_store(e: &tafdb::Error) -> FsError {
        let errno = match e {
            tafdb::Error::RetriesExhausted { .. }
            | tafdb::Error::Shutdown
            | tafdb::Error::NotLeader { .. }
            | tafdb::Error::Busy(_) => Errno::EAGAIN,
            tafdb::Error::Undetermined(_) => Errno::ETIMEDOUT,
            tafdb::Error::NoSpace(_) => Errno::ENOSPC,
            tafdb::Error::Io(io) if tafdb::engine::is_no_space(io) => Errno::ENOSPC,
            e if e.is_retryable() => Errno::EAGAIN,
            tafdb::Error::InvalidArgument(_) => Errno::EINVAL,
            _ => Errno::EIO,
        };
        FsError::new(errno, e.to_string())
    }
}

impl From<metastore::name::NameError> for FsError {
    fn from(e: metastore::name::NameError) -> FsError {
        let errno = if e.too_long() {
            Errno::ENAMETOOLONG
        } else {
            Errno::EINVAL
        };
        FsError::new(errno, e.to_string())
    }
}

/// What an operation inside a transaction fails with.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The namespace refused the operation.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The store failed (retryable conflicts included: the transaction is run again).
    #[error(transparent)]
    Store(#[from] tafdb::Error),
}

impl From<metastore::DecodeError> for OpError {
    fn from(e: metastore::DecodeError) -> OpError {
        OpError::Store(tafdb::Error::Corruption(e.to_string()))
    }
}

impl From<metastore::name::NameError> for OpError {
    fn from(e: metastore::name::NameError) -> OpError {
        OpError::Fs(e.into())
    }
}

impl OpError {
    /// Encodes the error for the trip through TafDB.
    pub fn into_store(self) -> tafdb::Error {
        match self {
            OpError::Fs(e) => match bincode::serialize(&e) {
                Ok(b) => tafdb::Error::Refused(b),
                Err(x) => tafdb::Error::Coprocessor {
                    name: "namespace".into(),
                    message: format!("cannot encode {e}: {x}"),
                },
            },
            OpError::Store(e) => e,
        }
    }
}

/// The result of an operation inside a transaction.
pub type OpResult<T> = Result<T, OpError>;

/// Shorthand for `Err(FsError::new(..).into())`.
pub fn fail<T>(errno: Errno, message: impl Into<String>) -> OpResult<T> {
    Err(OpError::Fs(FsError::new(errno, message)))
}
