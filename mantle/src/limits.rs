//! What one client, or many, may hold of the server: connections, handshake time, request bytes
//! in flight.
//!
//! tonic allocates a request's whole announced length as soon as it has read the 5-byte gRPC
//! message header, whatever arrives after it; a client that announces 1 MB and sends 100 bytes
//! holds 1 MB. Three limits bound what idle and slow clients can take:
//! - [`Guarded`] connections: at most `max_connections` at once (more are accepted and closed at
//!   once), and each must deliver the HTTP/2 preface within the handshake timeout;
//! - [`Budget`]: every request body takes its announced length from one server-wide budget of
//!   bytes before tonic reserves it, and gives it back when the body is dropped; a request that
//!   does not fit is refused with `EAGAIN` (it did not happen);
//! - the request timeout (tonic's), so a trickling body does not hold its bytes for long.
//!
//! HTTP/2 keepalive pings close connections whose peer stopped answering.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use coprocessor::{Errno, FsError};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

use crate::status::to_status;

/// The 24 bytes every HTTP/2 client sends first.
const PREFACE: usize = 24;

/// A connection counted against the connection limit, which must send its HTTP/2 preface in
/// time.
pub struct Guarded {
    io: TcpStream,
    _slot: OwnedSemaphorePermit,
    /// Until the preface arrived: when the handshake time runs out.
    handshake: Option<Pin<Box<tokio::time::Sleep>>>,
    seen: usize,
}

impl Guarded {
    /// Counts `io` against `slots`; `None` (and `io` dropped, so closed) when none is left.
    pub fn admit(io: TcpStream, slots: &Arc<Semaphore>, handshake: Duration) -> Option<Guarded> {
        let slot = slots.clone().try_acquire_owned().ok()?;
        Some(Guarded {
            io,
            _slot: slot,
            handshake: Some(Box::pin(tokio::time::sleep(handshake))),
            seen: 0,
        })
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.seen += buf.filled().len() - before;
            if self.seen >= PREFACE {
                self.handshake = None;
            }
        }
        if let Some(deadline) = self.handshake.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client did not complete the HTTP/2 handshake in time",
                )));
            }
        }
        polled
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Guarded {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// The server-wide budget of request bytes in flight.
#[derive(Clone)]
pub struct Budget {
    bytes: Arc<Semaphore>,
    refused: Arc<AtomicU64>,
    max_request: usize,
}

impl Budget {
    /// A budget of `bytes`, for requests of at most `max_request` bytes (a bigger one is
    /// refused with `E2BIG` before anything is reserved for it).
    pub fn new(bytes: usize, max_request: usize) -> Budget {
        Budget {
            bytes: Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))),
            refused: Arc::new(AtomicU64::new(0)),
            max_request,
        }
    }

    /// Bytes not taken.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }

    /// Requests refused so far because the budget was spent.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// `req` with a body that takes its announced length from the budget first.
    pub fn wrap(&self, req: http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body> {
        let budget = self.clone();
        req.map(|inner| {
            tonic::body::Body::new(Budgeted {
                inner,
                budget,
                head: [0; 5],
                seen: 0,
                permit: None,
            })
        })
    }
}

/// A request body that holds budget for the message it announced.
struct Budgeted {
    inner: tonic::body::Body,
    budget: Budget,
    head: [u8; 5],
    seen: usize,
    permit: Option<OwnedSemaphorePermit>,
}

impl Body for Budgeted {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => f,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if self.permit.is_none() && self.seen < self.head.len() {
            if let Some(data) = frame.data_ref() {
                let take = data.len().min(self.head.len() - self.seen);
                let at = self.seen;
                self.head[at..at + take].copy_from_slice(&data[..take]);
                self.seen += take;
                if self.seen == self.head.len() {
                    let len = u32::from_be_bytes([
                        self.head[1],
                        self.head[2],
                        self.head[3],
                        self.head[4],
                    ]);
                    if len as usize > self.budget.max_request {
                        return Poll::Ready(Some(Err(to_status(&FsError::new(
                            Errno::E2BIG,
                            format!(
                                "a {len}-byte request exceeds the server's limit of {} bytes",
                                self.budget.max_request
                            ),
                        )))));
                    }
                    match self.budget.bytes.clone().try_acquire_many_owned(len.max(1)) {
                        Ok(p) => self.permit = Some(p),
                        Err(_) => {
                            self.budget.refused.fetch_add(1, Ordering::Relaxed);
                            return Poll::Ready(Some(Err(to_status(&FsError::new(
                                Errno::EAGAIN,
                                format!(
                                    "the server is busy: a {len}-byte request does not fit the \
                                     budget of request bytes in flight"
                                ),
                            )))));
                        }
                    }
                }
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
