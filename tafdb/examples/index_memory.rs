//! What one directory's Index-table entry costs in resident memory today: in the hash engine
//! (where it lives once flushed), and in a store while its version is still in the MVCC window.
//!
//! ```sh
//! cargo run --release -p tafdb --example index_memory -- [N]
//! ```
//!
//! Entries are what the Index table holds: key `01 | pid:u64be | name` with 16-byte names, a
//! 21-byte value. Memory is the process's resident set (`/proc/self/statm`) before and after,
//! divided by N (default 2,000,000), with the allocator the binaries use (mimalloc).

use std::sync::Arc;

use tafdb::engine::{BatchOp, Engine, HashEngine};
use tafdb::{Db, DbConfig};

/// The allocator the binaries use (`mantle`, `mdtest`, `tafdb-bench`): resident sizes depend
/// on it (glibc rounds a 48-byte entry up to a 64-byte chunk, mimalloc does not).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn key(i: u64) -> Vec<u8> {
    let mut k = vec![1u8];
    // About 100 directories per parent.
    k.extend_from_slice(&(16 + i / 100).to_be_bytes());
    k.extend_from_slice(format!("dir-{i:012}").as_bytes());
    k
}

fn value(i: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(21);
    v.extend_from_slice(&(1_000_000 + i).to_le_bytes());
    v.extend_from_slice(&0o040_755u32.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.push(0);
    v
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let dir = tempfile::tempdir()?;

    let before = rss();
    let engine = HashEngine::open(&dir.path().join("hash"))?;
    for start in (0..n).step_by(10_000) {
        let batch: Vec<BatchOp> = (start..(start + 10_000).min(n))
            .map(|i| BatchOp::Put(key(i), value(i)))
            .collect();
        engine.write(&batch)?;
    }
    engine.persist()?;
    let engine_bytes = rss().saturating_sub(before);
    println!(
        "hash engine: {n} entries, {} MiB resident, {:.0} bytes per directory",
        engine_bytes >> 20,
        engine_bytes as f64 / n as f64
    );
    drop(engine);

    // The same entries committed through a store whose window keeps every version in memory.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut cfg = DbConfig::new(dir.path().join("db"));
        cfg.tablet.window_ms = 3_600_000;
        // Nothing leaves the log while the window holds it: room for every commit.
        cfg.tablet.log_store_bytes = (n * 128).max(256 << 20);
        let db: Arc<Db> = Db::open(cfg).await?;
        let before = rss();
        for start in (0..n).step_by(1_000) {
            let mut txn = db.begin().await?;
            for i in start..(start + 1_000).min(n) {
                txn.put(&key(i), &value(i))?;
            }
            txn.commit().await?;
        }
        let store_bytes = rss().saturating_sub(before);
        println!(
            "store, versions in the MVCC window: {} MiB resident, {:.0} bytes per directory",
            store_bytes >> 20,
            store_bytes as f64 / n as f64
        );
        db.shutdown().await;
        Ok::<(), tafdb::Error>(())
    })?;
    Ok(())
}
