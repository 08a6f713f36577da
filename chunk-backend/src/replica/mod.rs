//! Replication: chunk servers and a master over gRPC, and the star-writing client.
//!
//! ```text
//!            Allocate / SealChunk / Blob                 Create / Append / Seal / Read
//!  writer ─────────────────────────────▶ master     writer ════════════════════════▶ 3 chunk servers
//!                                     (placements)          (the same record to all three at once)
//! ```
//!
//! - [`server`]: a chunk server: chunk replicas on one [`crate::disk::Disk`]. An append names
//!   the length it expects the replica to have, so the three replicas of a chunk hold the same
//!   bytes at the same offsets.
//! - [`master`]: the server list, chunk ids, and per blob the placement of each chunk (which
//!   servers, and its length once sealed), persisted to a file it rewrites atomically.
//! - [`client`]: [`client::ReplicatedLog`], a LogBlob whose appends go to three servers at
//!   once and are acknowledged when all three have them durable. When a replica fails, the
//!   writer seals the chunk on the survivors at the last length all three acknowledged
//!   (cutting any record only some of them got), records that with the master, and continues
//!   on a new chunk placed on three healthy servers. No acknowledged record is lost, none is
//!   duplicated.
//!
//! Everything runs as separate processes (`chunk-master`, `chunk-server`) or in one process
//! (the `serve` functions take a listener and a shutdown future).

pub mod client;
pub mod master;
pub mod server;

/// The generated protobuf types and gRPC stubs of `chunk.v1`.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("chunk.v1");
}

use crate::error::Error;

/// The gRPC status of a store error.
pub fn to_status(e: &Error) -> tonic::Status {
    use tonic::Code;
    let code = match e {
        Error::NotFound(_) => Code::NotFound,
        Error::InvalidArgument(_) => Code::InvalidArgument,
        Error::Checksum(_) | Error::Corrupt(_) => Code::DataLoss,
        Error::NoSpace(_) => Code::ResourceExhausted,
        Error::LeaseHeld { .. } | Error::NoLease(_) | Error::Stale { .. } => {
            Code::FailedPrecondition
        }
        Error::Shutdown | Error::Remote(_) => Code::Unavailable,
        Error::Io(_) => Code::Internal,
    };
    tonic::Status::new(code, e.to_string())
}

/// A listener's connections with `TCP_NODELAY` set: small RPCs must not wait for Nagle's
/// algorithm and the peer's delayed ACK.
pub fn nodelay(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|c| {
            let _ = c.set_nodelay(true);
        })
    })
}
