//! chunk-bench: 4 KiB appends to a LogBlob against the same appends to an ext4 file with
//! `write` + `fdatasync` per record, at the same concurrency, in one run.
//!
//! `cargo run --release -p chunk-backend --bin chunk-bench -- --clients 16 --records 20000`
//!
//! The last line is JSON with both throughputs, p50/p99 latencies and their ratio.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chunk_backend::blob::LogStore;
use chunk_backend::disk::{Disk, DiskConfig};
use clap::Parser;
use hdrhistogram::Histogram;

#[derive(Parser, Debug)]
#[command(about = "LogBlob appends against write+fdatasync on a file")]
struct Args {
    /// Concurrent writers.
    #[arg(long, default_value_t = 16)]
    clients: u64,
    /// Records in total (per side).
    #[arg(long, default_value_t = 20_000)]
    records: u64,
    /// Record size in bytes.
    #[arg(long, default_value_t = 4096)]
    size: usize,
    /// Where to put the store and the file (default: a fresh directory under /tmp, on the
    /// machine's ext4 disk).
    #[arg(long)]
    dir: Option<PathBuf>,
}

struct Outcome {
    ops_per_sec: f64,
    p50_us: u64,
    p99_us: u64,
}

fn run_side(
    clients: u64,
    records: u64,
    op: Arc<dyn Fn(u64) -> Result<(), String> + Send + Sync>,
) -> Result<Outcome, String> {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (next, op) = (next.clone(), op.clone());
            std::thread::spawn(move || -> Result<Histogram<u64>, String> {
                let mut h = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= records {
                        return Ok(h);
                    }
                    let t = Instant::now();
                    op(i)?;
                    let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                }
            })
        })
        .collect();
    let mut all = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    for h in handles {
        let h = h.join().map_err(|_| "a writer panicked".to_string())??;
        all.add(&h).map_err(|e| e.to_string())?;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(Outcome {
        ops_per_sec: records as f64 / secs,
        p50_us: all.value_at_quantile(0.5),
        p99_us: all.value_at_quantile(0.99),
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = Args::parse();
    if a.clients == 0 || a.records == 0 || a.size == 0 {
        return Err("--clients, --records and --size must be at least 1".into());
    }
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => {
            let d = std::env::temp_dir().join(format!("chunk-bench-{}", std::process::id()));
            std::fs::create_dir_all(&d)?;
            d
        }
    };
    let record = vec![0xA5u8; a.size];
    // The LogBlob side: one store, one blob, chunks of 64 MiB, enough blocks for the run.
    let bytes = a.records * (a.size as u64 + 64);
    let blocks = (bytes / (1 << 20) + 130) as u32;
    let cfg = DiskConfig {
        block_size: 1 << 20,
        blocks,
        chunk_slots: blocks / 64 + 8,
        chunk_blocks: 64,
    };
    let store_path = dir.join("chunks.dat");
    let _ = std::fs::remove_file(&store_path);
    eprintln!(
        "preparing a {} MiB store in {}",
        cfg.file_size() >> 20,
        dir.display()
    );
    let store = Arc::new(LogStore::open(Arc::new(Disk::open(&store_path, cfg)?))?);
    store.create(1)?;
    let lease = store.lease(1, "bench", Duration::from_secs(3600))?;
    let blob = {
        let (store, record) = (store.clone(), record.clone());
        run_side(
            a.clients,
            a.records,
            Arc::new(move |_| {
                store
                    .append(&lease, &record)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }),
        )?
    };
    eprintln!(
        "logblob: {:.0} appends/s, p50 {} us, p99 {} us",
        blob.ops_per_sec, blob.p50_us, blob.p99_us
    );
    // The ext4 side: one file, every record a write followed by its own fdatasync.
    let file_path = dir.join("baseline.log");
    let _ = std::fs::remove_file(&file_path);
    let file = Arc::new(
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file_path)?,
    );
    let ext4 = {
        let (file, record) = (file.clone(), record.clone());
        run_side(
            a.clients,
            a.records,
            Arc::new(move |_| {
                (&*file)
                    .write_all(&record)
                    .and_then(|()| file.sync_data())
                    .map_err(|e| e.to_string())
            }),
        )?
    };
    eprintln!(
        "ext4 write+fdatasync: {:.0} appends/s, p50 {} us, p99 {} us",
        ext4.ops_per_sec, ext4.p50_us, ext4.p99_us
    );
    drop(store);
    let _ = std::fs::remove_file(&store_path);
    let _ = std::fs::remove_file(&file_path);
    if a.dir.is_none() {
        let _ = std::fs::remove_dir(&dir);
    }
    let fs = fs_type(&dir);
    let io = if std::env::var_os("CHUNK_BACKEND_URING").is_some_and(|v| v == "1") {
        "io_uring"
    } else {
        "pwrite"
    };
    println!(
        "{{\"clients\":{},\"records\":{},\"size\":{},\"fs\":\"{fs}\",\"io\":\"{io}\",\"logblob_ops_per_sec\":{:.0},\"logblob_p50_us\":{},\"logblob_p99_us\":{},\"ext4_ops_per_sec\":{:.0},\"ext4_p50_us\":{},\"ext4_p99_us\":{},\"throughput_ratio\":{:.2}}}",
        a.clients, a.records, a.size, blob.ops_per_sec, blob.p50_us, blob.p99_us, ext4.ops_per_sec, ext4.p50_us, ext4.p99_us,
        blob.ops_per_sec / ext4.ops_per_sec
    );
    Ok(())
}

/// The file system type of `dir`'s mount (from /proc/mounts), for the record.
fn fs_type(dir: &Path) -> String {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return "unknown".into();
    };
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && dir.starts_with(f[1])).then(|| (f[1].len(), f[2].to_string()))
        })
        .max()
        .map_or_else(|| "unknown".into(), |(_, t)| t)
}
