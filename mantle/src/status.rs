//! Namespace errors on the wire: a gRPC status whose `x-errno` metadata carries the errno.

use coprocessor::{Errno, FsError};
use tonic::{Code, Status};

/// The metadata key that carries the errno.
pub const ERRNO_KEY: &str = "x-errno";

/// The status an [`FsError`] travels as.
pub fn to_status(e: &FsError) -> Status {
    let code = match e.errno {
        Errno::ENOENT | Errno::ENODATA => Code::NotFound,
        Errno::EEXIST => Code::AlreadyExists,
        Errno::EACCES | Errno::EPERM => Code::PermissionDenied,
        Errno::EAGAIN => Code::Unavailable,
        Errno::ETIMEDOUT => Code::DeadlineExceeded,
        Errno::ENOSPC | Errno::EDQUOT => Code::ResourceExhausted,
        Errno::ENOSYS => Code::Unimplemented,
        Errno::EIO => Code::Internal,
        Errno::EINVAL | Errno::ENAMETOOLONG | Errno::E2BIG | Errno::ERANGE => Code::InvalidArgument,
        _ => Code::FailedPrecondition,
    };
    let mut s = Status::new(code, e.message.clone());
    if let Ok(v) = e.errno.code().to_string().parse() {
        s.metadata_mut().insert(ERRNO_KEY, v);
    }
    s
}

/// Whether the status came from the namespace (it carries an errno), rather than from the
/// transport or a server that failed before answering.
pub fn has_errno(s: &Status) -> bool {
    s.metadata().get(ERRNO_KEY).is_some()
}

/// The [`FsError`] a status stands for. Statuses without an errno (transport failures, a
/// server that refused a malformed request) map by their code.
pub fn from_status(s: &Status) -> FsError {
    let errno = s
        .metadata()
        .get(ERRNO_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .and_then(Errno::from_code)
        .unwrap_or(match s.code() {
            Code::InvalidArgument | Code::OutOfRange => Errno::EINVAL,
            Code::ResourceExhausted => Errno::E2BIG,
            Code::NotFound => Errno::ENOENT,
            Code::PermissionDenied | Code::Unauthenticated => Errno::EACCES,
            Code::Unavailable => Errno::EAGAIN,
            _ => Errno::EIO,
        });
    FsError::new(errno, s.message().to_string())
}

/// An `InvalidArgument` status with `EINVAL`, for malformed requests.
pub fn invalid(msg: impl Into<String>) -> Status {
    to_status(&FsError::new(Errno::EINVAL, msg))
}
