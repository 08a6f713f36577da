//! tafdb-crashload: a load generator for crash tests.
//!
//! Commits transactions from many concurrent clients until it is killed, printing
//! `ACK <client> <seq>` for every commit the store acknowledged. Each transaction writes
//! `\x02a/<client>/<seq>` and `\x02z/<client>/<seq>` (in two tablets when the database was
//! created with `--split`, so the commit is 2PC) and adds 1 to the counter `\x02count`. A
//! checker can then verify that every acknowledged transaction survived and that no partial
//! transaction is visible.

use std::io::Write;
use std::path::PathBuf;

use clap::Parser;
use tafdb::{Db, DbConfig, DeltaOp};

#[derive(Parser, Debug)]
struct Args {
    /// Data directory.
    #[arg(long)]
    dir: PathBuf,
    /// Split the key space into two tablets, so every transaction is a two-phase commit.
    #[arg(long)]
    split: bool,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// First sequence number of every client (runs on the same data use disjoint ranges).
    #[arg(long, default_value_t = 0)]
    start_seq: u64,
    /// The MVCC window in ms: short, so that kills land after flushes, durable-index updates
    /// and log purges.
    #[arg(long)]
    mvcc_window_ms: Option<u64>,
    /// How often the flusher runs, in ms.
    #[arg(long)]
    flush_interval_ms: Option<u64>,
    /// Log entries between snapshots (each lets the log be purged).
    #[arg(long)]
    snapshot_logs: Option<u64>,
    /// The chunk size of the Raft log's store (a purge frees whole chunks).
    #[arg(long)]
    log_chunk_bytes: Option<u64>,
    /// Acknowledge commits once written to the kernel, without an `fdatasync`
    /// (`LogSync::Deferred`): they must survive `kill -9` all the same.
    #[arg(long)]
    deferred_sync: bool,
}

/// The two keys of transaction `seq` of `client`.
pub fn keys(client: usize, seq: u64) -> (Vec<u8>, Vec<u8>) {
    (
        format!("\x02a/{client:04}/{seq:010}").into_bytes(),
        format!("\x02z/{client:04}/{seq:010}").into_bytes(),
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let start_seq = args.start_seq;
    rt.block_on(async move {
        let mut cfg = DbConfig::new(&args.dir);
        if args.split {
            cfg.split_keys = vec![b"\x02m".to_vec()];
        }
        cfg.lock_ttl_ms = 100;
        if let Some(ms) = args.mvcc_window_ms {
            cfg.tablet.window_ms = ms;
        }
        if let Some(ms) = args.flush_interval_ms {
            cfg.tablet.flush_interval_ms = ms;
        }
        if let Some(n) = args.snapshot_logs {
            cfg.tablet.snapshot_logs = n;
        }
        if let Some(n) = args.log_chunk_bytes {
            cfg.tablet.log_chunk_bytes = n;
        }
        if args.deferred_sync {
            cfg.tablet.log_sync = tafdb::tablet::LogSync::Deferred;
        }
        let db = Db::open(cfg).await?;
        println!("READY");
        std::io::stdout().flush()?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, u64)>();
        for client in 0..args.clients {
            let db = db.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                for seq in start_seq.. {
                    let (a, z) = keys(client, seq);
                    let res = db
                        .run_txn(|txn| {
                            let (a, z) = (a.clone(), z.clone());
                            Box::pin(async move {
                                txn.put(&a, &seq.to_le_bytes())?;
                                txn.put(&z, &seq.to_le_bytes())?;
                                txn.delta(b"\x02count", DeltaOp::Add { offset: 0, by: 1 })?;
                                Ok(())
                            })
                        })
                        .await;
                    match res {
                        Ok(()) => {
                            if tx.send((client, seq)).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            eprintln!("client {client} seq {seq}: {e}");
                            return;
                        }
                    }
                }
            });
        }
        drop(tx);
        let mut out = std::io::stdout().lock();
        while let Some((c, s)) = rx.recv().await {
            writeln!(out, "ACK {c} {s}")?;
            out.flush()?;
        }
        Ok(())
    })
}
