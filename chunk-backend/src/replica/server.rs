//! A chunk server: replicas of chunks on one disk, served over gRPC.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use super::proto::{self, chunk_server_server::ChunkServerServer};
use super::to_status;
use crate::blob::LOG;
use crate::disk::Disk;
use crate::error::Error;

/// The largest append request a server accepts.
pub const MAX_REQUEST: usize = 64 << 20;

struct Service {
    disk: Arc<Disk>,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Status> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| to_status(&e)),
        Err(e) => Err(Status::internal(format!("a disk task failed: {e}"))),
    }
}

#[tonic::async_trait]
impl proto::chunk_server_server::ChunkServer for Service {
    async fn create(
        &self,
        r: Request<proto::CreateChunkRequest>,
    ) -> Result<Response<proto::Empty>, Status> {
        let r = r.into_inner();
        let disk = self.disk.clone();
        blocking(move || disk.create_chunk_with_id(r.chunk, r.blob, r.seq, LOG)).await?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn append(
        &self,
        r: Request<proto::AppendRequest>,
    ) -> Result<Response<proto::AppendReply>, Status> {
        let r = r.into_inner();
        let disk = self.disk.clone();
        let (offsets, end) = blocking(move || {
            let have = disk.len(r.chunk)?;
            if have != r.expected_end {
                return Err(Error::InvalidArgument(format!(
                    "chunk {} ends at {have} here, the writer expects {}",
                    r.chunk, r.expected_end
                )));
            }
            // Submit in order (one group commit), then wait for all.
            let submitted: Vec<_> = r
                .records
                .into_iter()
                .map(|p| {
                    let len = p.len() as u64;
                    disk.submit(r.chunk, p).map(|s| (s, len))
                })
                .collect::<Result<_, _>>()?;
            let mut offsets = Vec::with_capacity(submitted.len());
            let mut end = have;
            for (s, len) in submitted {
                let off = s.wait()?;
                end = off + crate::frame::HEADER as u64 + len;
                offsets.push(off);
            }
            Ok((offsets, end))
        })
        .await?;
        Ok(Response::new(proto::AppendReply { offsets, end }))
    }

    async fn read(
        &self,
        r: Request<proto::ReadRequest>,
    ) -> Result<Response<proto::ReadReply>, Status> {
        let r = r.into_inner();
        let disk = self.disk.clone();
        let payload = blocking(move || disk.read(r.chunk, r.offset)).await?;
        Ok(Response::new(proto::ReadReply { payload }))
    }

    async fn seal(&self, r: Request<proto::SealRequest>) -> Result<Response<proto::Empty>, Status> {
        let r = r.into_inner();
        let disk = self.disk.clone();
        blocking(move || {
            if r.freeze {
                if !disk.is_sealed(r.chunk)? {
                    disk.seal(r.chunk)?;
                }
                disk.drain(r.chunk)
            } else {
                disk.seal_at(r.chunk, r.length)
            }
        })
        .await?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn stat(
        &self,
        r: Request<proto::StatRequest>,
    ) -> Result<Response<proto::StatReply>, Status> {
        let r = r.into_inner();
        let disk = self.disk.clone();
        let (length, sealed) = blocking(move || {
            let len = disk.len(r.chunk)?;
            let sealed = disk
                .chunks()
                .iter()
                .any(|(e, _)| e.id == r.chunk && e.sealed);
            Ok((len, sealed))
        })
        .await?;
        Ok(Response::new(proto::StatReply { length, sealed }))
    }
}

/// Serves `disk` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    disk: Arc<Disk>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let svc = ChunkServerServer::new(Service { disk })
        .max_decoding_message_size(MAX_REQUEST)
        .max_encoding_message_size(MAX_REQUEST);
    tonic::transport::Server::builder()
        .add_service(svc)
        .serve_with_incoming_shutdown(super::nodelay(listener), shutdown)
        .await
}
