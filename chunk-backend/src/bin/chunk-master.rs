//! `chunk-master --data DIR --listen ADDR`: the master process (server list and chunk
//! placements, persisted in `DIR/master.state`).

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "The chunk store's master")]
struct Args {
    /// The data directory.
    #[arg(long)]
    data: std::path::PathBuf,
    /// Where to listen.
    #[arg(long)]
    listen: std::net::SocketAddr,
}

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let a = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(a.listen).await?;
            eprintln!("master {} is serving", listener.local_addr()?);
            chunk_backend::replica::master::serve(listener, &a.data, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
        })
}
