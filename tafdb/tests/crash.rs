//! Crash test: a child process commits concurrently, is killed with SIGKILL at a random moment,
//! and the reopened database must hold every acknowledged commit and no partial transaction.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tafdb::{Db, DbConfig, KeyRange};

fn run_and_kill(
    dir: &std::path::Path,
    split: bool,
    run_for: Duration,
    start_seq: u64,
    extra: &[&str],
) -> BTreeSet<(usize, u64)> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tafdb-crashload"));
    cmd.args(extra);
    cmd.arg("--dir")
        .arg(dir)
        .arg("--clients")
        .arg("16")
        .arg("--start-seq")
        .arg(start_seq.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if split {
        cmd.arg("--split");
    }
    let mut child = cmd.spawn().expect("spawn crashload");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut acked = BTreeSet::new();
    let mut ready_at = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(t) = ready_at {
            if Instant::now() >= t {
                break;
            }
        }
        match rx.recv_timeout(Duration::from_millis(10)) {
            Ok(line) if line == "READY" => ready_at = Some(Instant::now() + run_for),
            Ok(line) => {
                let mut it = line.split_whitespace().skip(1);
                let c: usize = it.next().and_then(|x| x.parse().ok()).expect("client");
                let s: u64 = it.next().and_then(|x| x.parse().ok()).expect("seq");
                acked.insert((c, s));
            }
            Err(_) => {}
        }
    }
    assert!(ready_at.is_some(), "the child never became ready");
    // SIGKILL: no shutdown code runs.
    child.kill().expect("kill -9");
    child.wait().expect("wait");
    // Lines already printed were acknowledged before the kill.
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
        let mut it = line.split_whitespace().skip(1);
        if let (Some(c), Some(s)) = (
            it.next().and_then(|x| x.parse().ok()),
            it.next().and_then(|x| x.parse().ok()),
        ) {
            acked.insert((c, s));
        }
    }
    let _ = reader.join();
    acked
}

async fn check(dir: &std::path::Path, acked: &BTreeSet<(usize, u64)>) -> usize {
    let mut cfg = DbConfig::new(dir);
    cfg.lock_ttl_ms = 100;
    let db = Db::open(cfg).await.expect("reopen after kill -9");
    let ts = db.tso().next().expect("ts");
    let parse = |k: &[u8]| -> (usize, u64) {
        let s = std::str::from_utf8(&k[3..]).expect("utf8");
        let mut it = s.split('/');
        (
            it.next().and_then(|x| x.parse().ok()).expect("client"),
            it.next().and_then(|x| x.parse().ok()).expect("seq"),
        )
    };
    let a: BTreeMap<_, _> = db
        .scan_at(&KeyRange::prefix(b"\x02a/"), ts, usize::MAX)
        .await
        .expect("scan a")
        .into_iter()
        .map(|(k, v)| (parse(&k), v))
        .collect();
    let z: BTreeMap<_, _> = db
        .scan_at(&KeyRange::prefix(b"\x02z/"), ts, usize::MAX)
        .await
        .expect("scan z")
        .into_iter()
        .map(|(k, v)| (parse(&k), v))
        .collect();
    for id in acked {
        assert!(
            a.contains_key(id),
            "acknowledged transaction {id:?} lost its first key"
        );
        assert!(
            z.contains_key(id),
            "acknowledged transaction {id:?} lost its second key"
        );
    }
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        z.keys().collect::<Vec<_>>(),
        "a partial transaction is visible"
    );
    for (id, v) in &a {
        assert_eq!(v, &id.1.to_le_bytes().to_vec(), "value of {id:?}");
    }
    let count = db
        .get_at(b"\x02count", ts)
        .await
        .expect("count")
        .map_or(0, |v| u64::from_le_bytes(v[..8].try_into().expect("8")));
    assert_eq!(
        count as usize,
        a.len(),
        "the delta counter equals the number of committed transactions"
    );
    db.shutdown().await;
    a.len()
}

/// Crash/reopen rounds on the same data, each killed after `min_ms` to `min_ms + spread_ms`.
async fn crash_rounds(extra: &[&str], min_ms: u64, spread_ms: u64) {
    for split in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut total_acked = 0;
        for round in 0..3u64 {
            let ms = min_ms + (rand::random::<u64>() % spread_ms);
            let acked = run_and_kill(
                dir.path(),
                split,
                Duration::from_millis(ms),
                round * 100_000_000,
                extra,
            );
            total_acked += acked.len();
            let present = check(dir.path(), &acked).await;
            assert!(
                present >= acked.len(),
                "round {round}: {present} present, {} acked",
                acked.len()
            );
        }
        assert!(
            total_acked > 0,
            "the child acknowledged nothing (split={split})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_commits_survive_kill_9() {
    crash_rounds(&[], 300, 900).await;
}

/// The same with a 30 ms MVCC window, a flush every 5 ms, a snapshot every 300 entries and
/// 64 KiB log chunks: kills land after flushes, durable-index updates, snapshots and log
/// purges, and the replay starts from a durable index that moves all the time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_commits_survive_kill_9_after_flushes_and_purges() {
    crash_rounds(&FLUSHES_AND_PURGES, 800, 1200).await;
}

/// A 30 ms MVCC window, a flush every 5 ms, a snapshot every 300 entries, 64 KiB log chunks.
const FLUSHES_AND_PURGES: [&str; 8] = [
    "--mvcc-window-ms",
    "30",
    "--flush-interval-ms",
    "5",
    "--snapshot-logs",
    "300",
    "--log-chunk-bytes",
    "65536",
];

/// The same with deferred log syncs (what the FUSE mount runs): a commit is acknowledged once
/// its log record is written to the kernel, with no `fdatasync`, and the flusher syncs the log
/// before it writes the engines. A killed process loses nothing the kernel has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_commits_survive_kill_9_with_deferred_syncs() {
    let mut extra = vec!["--deferred-sync"];
    extra.extend(FLUSHES_AND_PURGES);
    crash_rounds(&extra, 800, 1200).await;
}
