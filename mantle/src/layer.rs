//! What the server's tower layers ([`crate::auth::AuthLayer`], [`crate::cluster::ForwardLayer`])
//! share.

use std::future::Future;
use std::pin::Pin;

/// The HTTP body of a gRPC call.
pub(crate) type Body = tonic::body::Body;

/// The future a layer answers with.
pub(crate) type BoxResponse<E> =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, E>> + Send>>;

/// The service to hand a call to: `s` itself, which was polled ready, leaving a fresh clone in
/// its place to be polled for the next call (tower calls only a service that said ready).
pub(crate) fn take_ready<S: Clone>(s: &mut S) -> S {
    let clone = s.clone();
    std::mem::replace(s, clone)
}
