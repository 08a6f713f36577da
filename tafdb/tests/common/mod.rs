//! Helpers the replicated-store tests share.

#![allow(dead_code)]

use tafdb::raft::RaftRouter;
use tokio::net::TcpListener;

/// Serves `router`'s Raft service (which carries other nodes' transaction steps too) on
/// `listener` until the returned sender is used or dropped.
pub async fn serve(listener: TcpListener, router: RaftRouter) -> tokio::sync::oneshot::Sender<()> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = router.service();
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            )
            .await;
    });
    stop
}
