//! Serializability under real concurrency: many tasks commit conflicting transactions through
//! the tablet pipeline (registration, tickets, validation, reordering) at once, and invariants
//! that only serializable execution keeps are checked while and after they run.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tafdb::{Db, DbConfig, KeyRange};

/// With `racing`, versions leave memory 20 ms after they were applied and the flusher runs
/// every millisecond, so validations, scans and snapshot reads overlap flushes all the time.
async fn open(dir: &std::path::Path, split: bool, racing: bool) -> Arc<Db> {
    let mut cfg = DbConfig::new(dir);
    if split {
        cfg.split_keys = vec![b"\x02m".to_vec()];
    }
    if racing {
        cfg.tablet.window_ms = 20;
        cfg.tablet.flush_interval_ms = 1;
    }
    cfg.lock_ttl_ms = 200;
    // Conflicts are the point here; give every transaction room to get through.
    cfg.max_attempts = 10_000;
    Db::open(cfg).await.expect("open db")
}

fn num(v: Option<Vec<u8>>) -> i64 {
    v.map_or(0, |v| {
        i64::from_le_bytes(v.as_slice().try_into().expect("an 8-byte number"))
    })
}

/// Sleeps 0, 1 or 2 ms, depending on `n`.
async fn pause(n: u64) {
    let ms = n % 3;
    if ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}

const ACCOUNTS: u64 = 8;
const START: i64 = 1_000;

fn account(i: u64) -> Vec<u8> {
    // Accounts on both sides of the split point, so that with two tablets some transfers
    // commit with 2PC.
    if i.is_multiple_of(2) {
        format!("\x02a-{i}").into_bytes()
    } else {
        format!("\x02z-{i}").into_bytes()
    }
}

/// Transfers between accounts never create or destroy money, and every snapshot sees the
/// same total: a lost update, a write skew or a torn snapshot would show up as a wrong sum.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_transfers_keep_the_total() {
    for (split, racing) in [(false, false), (true, false), (false, true), (true, true)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open(dir.path(), split, racing).await;
        let mut t = db.begin().await.expect("begin");
        for i in 0..ACCOUNTS {
            t.put(&account(i), &START.to_le_bytes()).expect("put");
        }
        t.commit().await.expect("seed");

        let stop = Arc::new(AtomicBool::new(false));
        let audits = Arc::new(AtomicU64::new(0));
        let mut auditors = Vec::new();
        for _ in 0..2 {
            let (db, stop, audits) = (db.clone(), stop.clone(), audits.clone());
            auditors.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let mut t = db.begin().await.expect("begin");
                    let mut sum = 0;
                    let mut too_old = false;
                    for i in 0..ACCOUNTS {
                        match t.get(&account(i)).await {
                            Ok(v) => sum += num(v),
                            // The snapshot left the (20 ms) window: take another.
                            Err(tafdb::Error::SnapshotTooOld { .. }) if racing => {
                                too_old = true;
                                break;
                            }
                            Err(e) => panic!("audit read: {e}"),
                        }
                    }
                    if too_old {
                        continue;
                    }
                    assert_eq!(
                        sum,
                        START * ACCOUNTS as i64,
                        "split={split} racing={racing}: a snapshot"
                    );
                    audits.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            }));
        }
        let mut workers = Vec::new();
        for w in 0..16u64 {
            let db = db.clone();
            workers.push(tokio::spawn(async move {
                for n in 0..30u64 {
                    let from = (w + n) % ACCOUNTS;
                    let to = (w * 3 + n * 5 + 1) % ACCOUNTS;
                    if from == to {
                        continue;
                    }
                    let amount = (w + n) as i64 % 7 + 1;
                    db.run_txn(|t| {
                        Box::pin(async move {
                            let a = num(t.get(&account(from)).await?);
                            let b = num(t.get(&account(to)).await?);
                            // A pause lets conflicting transactions commit completely
                            // between the reads and the commit, so that validation (not only
                            // the marks of commits in flight) must catch them.
                            pause(w + n).await;
                            t.put(&account(from), &(a - amount).to_le_bytes())?;
                            t.put(&account(to), &(b + amount).to_le_bytes())?;
                            Ok(())
                        })
                    })
                    .await
                    .expect("transfer");
                }
            }));
        }
        for h in workers {
            h.await.expect("worker");
        }
        stop.store(true, Ordering::Relaxed);
        for h in auditors {
            h.await.expect("auditor");
        }
        assert!(audits.load(Ordering::Relaxed) > 0);
        let mut t = db.begin().await.expect("begin");
        let mut sum = 0;
        for i in 0..ACCOUNTS {
            sum += num(t.get(&account(i)).await.expect("get"));
        }
        assert_eq!(
            sum,
            START * ACCOUNTS as i64,
            "split={split} racing={racing}: final total"
        );
        db.shutdown().await;
    }
}

/// Every transaction counts the entries under a prefix with a scan, adds one entry and writes
/// the count it saw plus one. Only phantom protection keeps the counter equal to the number of
/// entries: two transactions that scanned the same entries must not both commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_scans_and_inserts_see_no_phantoms() {
    for racing in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open(dir.path(), false, racing).await;
        let prefix = KeyRange::prefix(b"\x02dir/");
        let mut workers = Vec::new();
        for w in 0..12u64 {
            let (db, prefix) = (db.clone(), prefix.clone());
            workers.push(tokio::spawn(async move {
                for n in 0..15u64 {
                    let prefix = prefix.clone();
                    db.run_txn(move |t| {
                        let prefix = prefix.clone();
                        Box::pin(async move {
                            let seen = t.scan(&prefix, 10_000).await?.len() as i64;
                            pause(w + n).await;
                            t.put(format!("\x02dir/{w}-{n}").as_bytes(), b"x")?;
                            t.put(b"\x02count", &(seen + 1).to_le_bytes())?;
                            Ok(())
                        })
                    })
                    .await
                    .expect("insert");
                }
            }));
        }
        for h in workers {
            h.await.expect("worker");
        }
        let mut t = db.begin().await.expect("begin");
        let entries = t.scan(&prefix, 10_000).await.expect("scan");
        assert_eq!(entries.len(), 12 * 15);
        assert_eq!(num(t.get(b"\x02count").await.expect("get")), 12 * 15);
        db.shutdown().await;
    }
}

/// Read-modify-write of a few hot keys by many tasks: every increment lands exactly once
/// (conflicting registrations, validations and skipped tickets all happen here), and the
/// history a reader sees at successive timestamps never goes backwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contended_increments_are_exact_and_monotonic() {
    for racing in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open(dir.path(), false, racing).await;
        let keys: Vec<Vec<u8>> = (0..3)
            .map(|i| format!("\x02hot-{i}").into_bytes())
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (db, stop, keys) = (db.clone(), stop.clone(), keys.clone());
            tokio::spawn(async move {
                let mut last: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
                while !stop.load(Ordering::Relaxed) {
                    let mut t = db.begin().await.expect("begin");
                    for k in &keys {
                        let v = match t.get(k).await {
                            Ok(v) => num(v),
                            // The snapshot left the (20 ms) window: take another.
                            Err(tafdb::Error::SnapshotTooOld { .. }) if racing => break,
                            Err(e) => panic!("read: {e}"),
                        };
                        let prev = last.insert(k.clone(), v).unwrap_or(0);
                        assert!(v >= prev, "{k:?} went from {prev} back to {v}");
                    }
                    tokio::task::yield_now().await;
                }
            })
        };
        let mut workers = Vec::new();
        for w in 0..24usize {
            let (db, keys) = (db.clone(), keys.clone());
            workers.push(tokio::spawn(async move {
                for n in 0..20usize {
                    let k = keys[(w + n) % keys.len()].clone();
                    db.run_txn(move |t| {
                        let k = k.clone();
                        Box::pin(async move {
                            let v = num(t.get(&k).await?);
                            pause((w + n) as u64).await;
                            t.put(&k, &(v + 1).to_le_bytes())?;
                            Ok(())
                        })
                    })
                    .await
                    .expect("increment");
                }
            }));
        }
        for h in workers {
            h.await.expect("worker");
        }
        stop.store(true, Ordering::Relaxed);
        watcher.await.expect("watcher");
        let mut t = db.begin().await.expect("begin");
        let mut total = 0;
        for k in &keys {
            total += num(t.get(k).await.expect("get"));
        }
        assert_eq!(total, 24 * 20);
        db.shutdown().await;
    }
}

/// Write skew, the anomaly snapshot isolation alone allows: two on-call doctors each check
/// that the other is still on call and leave. Their writes do not overlap, so only the
/// validation of what each read can stop the second from leaving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn write_skew_is_rejected_under_concurrency() {
    for (split, racing) in [(false, false), (true, false), (false, true), (true, true)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open(dir.path(), split, racing).await;
        const PAIRS: u64 = 12;
        let doctor = |pair: u64, side: u64| {
            // The two sides of a pair sit in different tablets when the database is split.
            let table = if side == 0 { 'a' } else { 'z' };
            format!("\x02{table}-doctor-{pair}").into_bytes()
        };
        let mut t = db.begin().await.expect("begin");
        for p in 0..PAIRS {
            for side in 0..2 {
                t.put(&doctor(p, side), &1i64.to_le_bytes()).expect("put");
            }
        }
        t.commit().await.expect("seed");
        let mut tasks = Vec::new();
        for p in 0..PAIRS {
            for side in 0..2u64 {
                let db = db.clone();
                tasks.push(tokio::spawn(async move {
                    db.run_txn(|t| {
                        Box::pin(async move {
                            let me = num(t.get(&doctor(p, side)).await?);
                            let other = num(t.get(&doctor(p, 1 - side)).await?);
                            pause(p + side).await;
                            if me + other == 2 {
                                t.put(&doctor(p, side), &0i64.to_le_bytes())?;
                            }
                            Ok(())
                        })
                    })
                    .await
                    .expect("go off call");
                }));
            }
        }
        for h in tasks {
            h.await.expect("task");
        }
        let mut t = db.begin().await.expect("begin");
        for p in 0..PAIRS {
            let on_call = num(t.get(&doctor(p, 0)).await.expect("get"))
                + num(t.get(&doctor(p, 1)).await.expect("get"));
            assert_eq!(
                on_call, 1,
                "split={split} racing={racing}: pair {p} must keep exactly one doctor"
            );
        }
        db.shutdown().await;
    }
}

/// Many transactions each admit themselves into a room of five seats: scan the room, and if
/// fewer than five are in, insert their own (distinct) key. Their writes never overlap, so
/// only phantom detection on the scanned range keeps the room at five.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scanned_range_admits_no_phantoms_under_concurrency() {
    for racing in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open(dir.path(), false, racing).await;
        let room = KeyRange::prefix(b"\x02room/");
        let mut tasks = Vec::new();
        for w in 0..24u64 {
            let (db, room) = (db.clone(), room.clone());
            tasks.push(tokio::spawn(async move {
                db.run_txn(|t| {
                    let room = room.clone();
                    Box::pin(async move {
                        let inside = t.scan(&room, 100).await?.len();
                        pause(w).await;
                        if inside < 5 {
                            t.put(format!("\x02room/{w}").as_bytes(), b"seat")?;
                        }
                        Ok(())
                    })
                })
                .await
                .expect("admission");
            }));
        }
        for h in tasks {
            h.await.expect("task");
        }
        let mut t = db.begin().await.expect("begin");
        assert_eq!(t.scan(&room, 100).await.expect("scan").len(), 5);
        db.shutdown().await;
    }
}
