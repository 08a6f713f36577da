//! fsck at scale (ignored: minutes). Builds a namespace of `FSCK_ENTRIES` entries (default
//! 1M) through the real operations, then checks it and prints the time and fsck's own memory:
//! the process's peak resident set is reset (`/proc/self/clear_refs`) right before the check,
//! so the peak it reports is the store's resident memory plus what fsck added.
//!
//! ```sh
//! FSCK_ENTRIES=10000000 cargo test -p coprocessor --release --test fsck_scale -- --ignored --nocapture
//! ```

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::{fixture_with, root};

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("status");
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("field")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn fsck_streams_a_big_namespace() {
    let entries: u64 = std::env::var("FSCK_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let per_dir = 10_000u64.min(entries);
    let dirs = entries / per_dir;
    // The production log store, not the fixture's small one: the log holds the MVCC window's
    // worth of creates.
    let f = Arc::new(
        fixture_with(|c| {
            c.tablet.log_store_bytes = tafdb::raft::STORE_BYTES;
            c.tablet.log_chunk_bytes = tafdb::raft::CHUNK_BYTES;
        })
        .await,
    );
    let r = root();
    let t0 = Instant::now();
    for d in 0..dirs {
        f.mkdir(&r, &format!("/d{d}"), 0o755).await.expect("mkdir");
    }
    let tasks = 64u64;
    let mut handles = Vec::new();
    for k in 0..tasks {
        let f = f.clone();
        let r = r.clone();
        handles.push(tokio::spawn(async move {
            let mut i = k;
            while i < dirs * (per_dir - 1) {
                let (d, j) = (i / (per_dir - 1), i % (per_dir - 1));
                // EAGAIN (the store holding writers back while its flusher catches up) is
                // retried, as a client would.
                loop {
                    match f.create(&r, &format!("/d{d}/f{j}")).await {
                        Ok(_) => break,
                        Err(e) if e.errno == coprocessor::Errno::EAGAIN => {
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                        Err(e) => panic!("create: {e:?}"),
                    }
                }
                i += tasks;
                if k == 0 && i % 1_000_000 < tasks {
                    eprintln!("  {i} created, {:.0} s", t0.elapsed().as_secs_f64());
                }
            }
        }));
    }
    for h in handles {
        h.await.expect("task");
    }
    let build = t0.elapsed();
    let rss_before = status_kib("VmRSS:");
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak RSS");
    let t1 = Instant::now();
    let spill = tempfile::tempdir().expect("tempdir");
    let opts = coprocessor::fsck::Options {
        spill_dir: spill.path().to_path_buf(),
        ..Default::default()
    };
    let report = coprocessor::fsck::check_with(&f.db, &opts, &|_| {})
        .await
        .expect("fsck");
    let took = t1.elapsed();
    let peak = status_kib("VmHWM:");
    println!("{report}");
    println!(
        "entries {}  build {:.0} s  fsck {:.1} s ({:.0} entries/s)  RSS before {} MiB, peak during fsck {} MiB (+{} MiB)",
        report.entries,
        build.as_secs_f64(),
        took.as_secs_f64(),
        report.entries as f64 / took.as_secs_f64(),
        rss_before / 1024,
        peak / 1024,
        peak.saturating_sub(rss_before) / 1024
    );
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.entries, dirs * per_dir);
}
