//! `chunk-server --data DIR --listen ADDR --master ADDR`: a chunk server process. It stores
//! chunk replicas in `DIR/chunks.dat` and registers with the master when it starts.

use std::sync::Arc;
use std::time::Duration;

use chunk_backend::disk::{Disk, DiskConfig};
use chunk_backend::replica::proto::{master_client::MasterClient, RegisterRequest};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "A chunk server")]
struct Args {
    /// The data directory.
    #[arg(long)]
    data: std::path::PathBuf,
    /// Where to listen.
    #[arg(long)]
    listen: std::net::SocketAddr,
    /// The master's address.
    #[arg(long)]
    master: String,
    /// Blocks of the store file (formatting only).
    #[arg(long, default_value_t = 1024)]
    blocks: u32,
    /// Block size (formatting only).
    #[arg(long, default_value_t = 1 << 20)]
    block_size: u32,
    /// Blocks per chunk (formatting only).
    #[arg(long, default_value_t = 64)]
    chunk_blocks: u32,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = Args::parse();
    std::fs::create_dir_all(&a.data)?;
    let cfg = DiskConfig {
        block_size: a.block_size,
        blocks: a.blocks,
        chunk_slots: a.blocks,
        chunk_blocks: a.chunk_blocks,
    };
    let disk = Arc::new(Disk::open(&a.data.join("chunks.dat"), cfg)?);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(a.listen).await?;
            let addr = listener.local_addr()?.to_string();
            let master = if a.master.contains("://") {
                a.master.clone()
            } else {
                format!("http://{}", a.master)
            };
            // Register, retrying while the master starts.
            let mut tries = 0;
            loop {
                match MasterClient::connect(master.clone()).await {
                    Ok(mut m) => {
                        m.register(RegisterRequest { addr: addr.clone() }).await?;
                        break;
                    }
                    Err(e) if tries < 50 => {
                        tries += 1;
                        eprintln!("waiting for the master: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            eprintln!("chunk server {addr} is serving");
            chunk_backend::replica::server::serve(listener, disk, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
            Ok::<(), Box<dyn std::error::Error>>(())
        })
}
