//! tafdb-bench: throughput and latency of TafDB transactions and reads.
//!
//! `cargo run --release -p tafdb --bin tafdb-bench -- --clients 1024 --seconds 10 --workload commit1pc`
//!
//! Workloads:
//! - `commit1pc`: durable one-tablet transactions, each writing 2 new keys and one delta on a
//!   counter shared by every client (the "many creates in one directory" shape);
//! - `commit2pc`: the same with the two keys in two different tablets;
//! - `get`: snapshot point reads of preloaded keys;
//! - `hotrmw`: read-modify-write of ONE counter by every client (get, then put); with `--hot`
//!   the counter uses the pessimistic lock queue, without it plain optimistic retries.
//!
//! The last line printed is JSON: `{"workload":..,"clients":..,"ops_per_sec":..,"p50_us":..,"p99_us":..}`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use tafdb::{Db, DbConfig, DeltaOp};

/// mimalloc: about 12% less CPU per commit than glibc's allocator here (allocations are made by
/// client tasks and freed by the apply and flush threads).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Workload {
    Commit1pc,
    Commit2pc,
    Get,
    Hotrmw,
}

#[derive(Parser, Debug)]
#[command(about = "Benchmark TafDB transactions and reads")]
struct Args {
    /// Concurrent clients (async tasks).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Measured duration in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// What to run.
    #[arg(long, value_enum, default_value_t = Workload::Commit1pc)]
    workload: Workload,
    /// Data directory (default: a fresh temporary directory, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keys preloaded for `get`.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Put the `hotrmw` counter in the hot-key lock queue.
    #[arg(long)]
    hot: bool,
    /// Runtime worker threads (default: `tafdb::runtime_threads()`, four per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Threads of the tablets' Raft pipeline runtime (default: the `TabletConfig` default).
    #[arg(long)]
    pipeline_threads: Option<usize>,
    /// Most Raft entries in flight per tablet (default: the `TabletConfig` default).
    #[arg(long)]
    max_inflight: Option<usize>,
    /// The MVCC window in ms (default: the `TabletConfig` default, 5000).
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    mvcc_window_ms: Option<u64>,
    /// How often the flusher runs, in ms (default: the `TabletConfig` default, 250).
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    flush_interval_ms: Option<u64>,
}

const HOT: &[u8] = b"\x02hot-counter";

async fn hot_rmw(db: &Arc<Db>) -> tafdb::Result<u64> {
    db.run_txn(|t| {
        Box::pin(async move {
            let v = t
                .get(HOT)
                .await?
                .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                .map_or(0, u64::from_le_bytes);
            t.put(HOT, &(v + 1).to_le_bytes())?;
            Ok(v)
        })
    })
    .await
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if args.clients == 0 || args.seconds == 0 {
        return Err("--clients and --seconds must be at least 1".into());
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.worker_threads(args.threads.unwrap_or_else(tafdb::runtime_threads).max(1));
    rt.enable_all().build()?.block_on(run(args))
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile_dir()?;
            tmp.clone()
        }
    };
    let mut cfg = DbConfig::new(&dir);
    if args.workload == Workload::Commit2pc {
        cfg.split_keys = vec![b"\x02m".to_vec()];
    }
    if args.hot {
        cfg.hot_keys = vec![HOT.to_vec()];
    }
    if let Some(n) = args.pipeline_threads {
        cfg.tablet.pipeline_threads = n;
    }
    if let Some(n) = args.max_inflight {
        cfg.tablet.max_inflight = n;
    }
    if let Some(ms) = args.mvcc_window_ms {
        cfg.tablet.window_ms = ms;
    }
    if let Some(ms) = args.flush_interval_ms {
        cfg.tablet.flush_interval_ms = ms;
    }
    let db = Db::open(cfg).await?;
    if args.workload == Workload::Get {
        eprintln!("preloading {} keys...", args.keys);
        let mut i = 0;
        while i < args.keys {
            let mut t = db.begin().await?;
            for j in i..(i + 1000).min(args.keys) {
                t.put(&key_of(j), &[7u8; 64])?;
            }
            t.commit().await?;
            i += 1000;
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for c in 0..args.clients {
        let (db, stop, measuring, ops) = (db.clone(), stop.clone(), measuring.clone(), ops.clone());
        let (workload, nkeys) = (args.workload, args.keys);
        handles.push(tokio::spawn(async move {
            let mut hist =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let mut i = 0u64;
            let mut rng = (c as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut errors = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let res = match workload {
                    Workload::Commit1pc => commit(&db, c, i, b"\x02a", b"\x02b").await,
                    Workload::Commit2pc => commit(&db, c, i, b"\x02a", b"\x02z").await,
                    Workload::Hotrmw => hot_rmw(&db).await,
                    Workload::Get => {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        get(&db, key_of(rng % nkeys)).await.map(|_| 0)
                    }
                };
                if res.is_err() {
                    errors += 1;
                }
                i += 1;
                if measuring.load(Ordering::Relaxed) {
                    let _ = hist.record(t0.elapsed().as_micros().max(1) as u64);
                    ops.fetch_add(1, Ordering::Relaxed);
                }
                if workload == Workload::Get && i.is_multiple_of(64) {
                    tokio::task::yield_now().await;
                }
            }
            (hist, errors)
        }));
    }
    // One second of warm-up, then the measured interval.
    tokio::time::sleep(Duration::from_secs(1)).await;
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    let cpu_start = tafdb::cpu::process_cpu_secs();
    let mut last = 0;
    for s in 0..args.seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = ops.load(Ordering::Relaxed);
        eprintln!("[{:>3}s] {:>10} ops/s", s + 1, now - last);
        last = now;
    }
    measuring.store(false, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = tafdb::cpu::process_cpu_secs()
        .zip(cpu_start)
        .map(|(b, a)| b - a);
    stop.store(true, Ordering::Relaxed);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    for h in handles {
        let (h, e) = h.await?;
        hist.add(&h)?;
        errors += e;
    }
    let total = ops.load(Ordering::Relaxed);
    db.shutdown().await;
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let name = format!("{:?}", args.workload).to_lowercase();
    // CPU of the whole process (clients included) while measuring: the share of the machine
    // used, and the CPU time per operation, which a noisy neighbour disturbs less than ops/s.
    let cpu_pct = cpu.map_or(0.0, |c| 100.0 * c / elapsed);
    let cpu_us_per_op = cpu.map_or(0.0, |c| 1e6 * c / (total.max(1) as f64));
    eprintln!(
        "{name}: {} clients, {:.0} ops/s, p50 {} us, p99 {} us, p999 {} us, errors {errors}, cpu {cpu_pct:.0}% ({cpu_us_per_op:.1} us/op)",
        args.clients,
        total as f64 / elapsed,
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999)
    );
    println!(
        "{{\"workload\":\"{name}\",\"clients\":{},\"ops_per_sec\":{:.0},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"errors\":{errors},\"cpu_pct\":{cpu_pct:.0},\"cpu_us_per_op\":{cpu_us_per_op:.1}}}",
        args.clients,
        total as f64 / elapsed,
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999)
    );
    Ok(())
}

fn tempfile_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("tafdb-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn key_of(i: u64) -> Vec<u8> {
    let mut k = b"\x02k".to_vec();
    k.extend_from_slice(&i.to_be_bytes());
    k
}

async fn commit(db: &Arc<Db>, client: usize, i: u64, p1: &[u8], p2: &[u8]) -> tafdb::Result<u64> {
    let mut t = db.begin().await?;
    let suffix = format!("{client:05}-{i:010}");
    t.put(&[p1, suffix.as_bytes()].concat(), b"value-one")?;
    t.put(&[p2, suffix.as_bytes()].concat(), b"value-two")?;
    t.delta(b"\x02counter", DeltaOp::Add { offset: 0, by: 1 })?;
    t.commit().await
}

async fn get(db: &Arc<Db>, key: Vec<u8>) -> tafdb::Result<Option<Vec<u8>>> {
    let ts = db.tso().next()?;
    db.get_at(&key, ts).await
}
