//! Interleavings forced with failpoints (`cargo test -p tafdb --features failpoints`): a flush
//! lands inside a scan, a dump or a validation at the worst moment, and I/O fails inside a
//! flush. Readers must never see a key "between" the chains and the engines.

#![cfg(feature = "failpoints")]

use std::sync::Arc;

use fail::FailScenario;
use tafdb::engine::{Engine, LsmEngine};
use tafdb::mvcc::{EngineSet, MvccStore};
use tafdb::{KeyRange, Mutation};

fn store(dir: &std::path::Path) -> Arc<MvccStore> {
    let meta: Arc<dyn Engine> = Arc::new(LsmEngine::open(&dir.join("meta")).expect("lsm"));
    let default: Arc<dyn Engine> = Arc::new(LsmEngine::open(&dir.join("default")).expect("lsm"));
    Arc::new(MvccStore::new(EngineSet::new(default, vec![(2, meta)]), 0))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A database in `dir` with a small Raft log store.
fn small_log(dir: &std::path::Path) -> tafdb::DbConfig {
    let mut c = tafdb::DbConfig::new(dir);
    c.tablet.log_store_bytes = 8 << 20;
    c.tablet.log_chunk_bytes = 256 << 10;
    c
}

fn put(v: &[u8]) -> Mutation {
    Mutation::Put(v.to_vec())
}

/// Runs `flush(upto)` on `s` once, the first time the failpoint `name` is reached.
fn flush_at(name: &str, s: &Arc<MvccStore>, upto: u64) {
    let s = s.clone();
    let once = std::sync::atomic::AtomicBool::new(false);
    fail::cfg_callback(name, move || {
        if !once.swap(true, std::sync::atomic::Ordering::SeqCst) {
            s.flush(upto).expect("flush inside the failpoint");
        }
    })
    .expect("failpoint");
}

fn keys(rows: &[(Vec<u8>, Vec<u8>)]) -> Vec<Vec<u8>> {
    rows.iter().map(|(k, _)| k.clone()).collect()
}

/// Scans `\x02..` at ts 30 with a flush up to index 2 forced at each point of the scan where
/// it once did harm; `setup` leaves versions at index 1 flushed and at index 2 in memory.
fn scan_under_a_flush(setup: impl Fn(&MvccStore), expected: &[&[u8]]) {
    for point in [
        "mvcc::scan-after-chain-keys",
        "mvcc::scan-after-engine-page",
    ] {
        let scenario = FailScenario::setup();
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        setup(&s);
        flush_at(point, &s, 2);
        let rows = s.scan(&KeyRange::prefix(b"\x02"), 30, 100).expect("scan");
        let want: Vec<Vec<u8>> = expected.iter().map(|k| k.to_vec()).collect();
        assert_eq!(keys(&rows), want, "flush at {point}");
        scenario.teardown();
    }
}

#[test]
fn a_scan_finds_a_key_that_a_flush_moves_to_the_engine_meanwhile() {
    // `a` and `c` are in the engine; `b` only in memory (a child created 5 s ago whose parent
    // an rmdir now scans).
    scan_under_a_flush(
        |s| {
            s.install(b"\x02a", 10, 1, put(b"A"));
            s.install(b"\x02c", 10, 1, put(b"C"));
            s.flush(1).expect("flush");
            s.install(b"\x02b", 20, 2, put(b"B"));
        },
        &[b"\x02a", b"\x02b", b"\x02c"],
    );
}

#[test]
fn a_scan_does_not_resurrect_a_key_whose_delete_a_flush_writes_meanwhile() {
    // `b` is deleted in memory; the engine still has its old row until the next flush.
    scan_under_a_flush(
        |s| {
            s.install(b"\x02a", 10, 1, put(b"A"));
            s.install(b"\x02b", 10, 1, put(b"B"));
            s.flush(1).expect("flush");
            s.install(b"\x02b", 20, 2, Mutation::Delete);
        },
        &[b"\x02a"],
    );
}

#[test]
fn a_dump_sees_one_state_while_a_flush_moves_keys() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path());
    s.install(b"\x02a", 10, 1, put(b"A"));
    s.install(b"\x02b", 10, 1, put(b"B"));
    s.flush(1).expect("flush");
    s.install(b"\x02b", 20, 2, Mutation::Delete);
    s.install(b"\x02c", 20, 2, put(b"C"));
    flush_at("mvcc::dump-after-engine", &s, 2);
    let rows = s.dump(&KeyRange::prefix(b"\x02"), 30).expect("dump");
    assert_eq!(keys(&rows), vec![b"\x02a".to_vec(), b"\x02c".to_vec()]);
    scenario.teardown();
}

#[test]
fn a_validation_racing_a_flush_sees_the_version_or_the_floor() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path());
    s.install(b"\x02a", 20, 1, put(b"A"));
    flush_at("mvcc::validate-after-chain", &s, 1);
    // The first check runs the flush between its chain lookup and its floor check: it saw the
    // version, or the floor that the flush raised; never "unchanged". The second finds no chain,
    // and the floor tells it versions left memory.
    match s.newer_than(b"\x02a", 10) {
        Ok(true) | Err(tafdb::Error::SnapshotTooOld { .. }) => {}
        other => panic!("a validation racing a flush answered {other:?}"),
    }
    let err = s
        .newer_than(b"\x02a", 10)
        .expect_err("the version is gone from memory");
    assert!(matches!(err, tafdb::Error::SnapshotTooOld { .. }), "{err}");
    scenario.teardown();
}

#[test]
fn a_failed_flush_loses_nothing_and_the_next_one_succeeds() {
    for point in ["mvcc::flush-before-persist", "mvcc::flush-before-default"] {
        let scenario = FailScenario::setup();
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        s.install(b"\x02a", 10, 1, put(b"A"));
        s.install(b"\x00n", 10, 1, put(b"N"));
        fail::cfg(point, "1*return").expect("failpoint");
        assert!(s.flush(1).is_err(), "{point} fails the flush");
        assert_eq!(s.get(b"\x02a", 20).expect("get"), Some(b"A".to_vec()));
        assert_eq!(s.get(b"\x00n", 20).expect("get"), Some(b"N".to_vec()));
        s.flush(1).expect("the next flush");
        assert_eq!(s.stats().keys, 0, "{point}: everything left memory");
        assert_eq!(s.get(b"\x02a", 20).expect("get"), Some(b"A".to_vec()));
        assert_eq!(s.get(b"\x00n", 20).expect("get"), Some(b"N".to_vec()));
        scenario.teardown();
    }
}

#[test]
fn a_failed_hash_engine_sync_latches_until_reopened_and_loses_nothing_persisted() {
    use tafdb::engine::{BatchOp, HashEngine};
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().expect("tempdir");
    let put = |k: &[u8]| BatchOp::Put(k.to_vec(), b"v".to_vec());
    {
        let e = HashEngine::open(dir.path()).expect("open");
        e.write(&[put(b"a")]).expect("write");
        e.persist().expect("persist");
        e.write(&[put(b"b")]).expect("write");
        fail::cfg("hash::persist", "1*return").expect("failpoint");
        let err = e.persist().expect_err("the sync fails");
        assert!(err.to_string().contains("failpoint"), "{err}");
        let err = e.write(&[put(b"c")]).expect_err("latched");
        assert!(err.to_string().contains("reopen"), "{err}");
        assert!(e.persist().is_err(), "still latched");
    }
    let e = HashEngine::open(dir.path()).expect("reopen");
    assert!(
        e.get(b"a").expect("get").is_some(),
        "persisted before the failure"
    );
    assert!(e.get(b"c").expect("get").is_none(), "refused while latched");
    e.write(&[put(b"d")]).expect("writes resume after a reopen");
    e.persist().expect("persist");
    scenario.teardown();
}

/// Reopens the database of a test that acknowledged 20 commits of keys `\x02k..` before a
/// failure: they are all there, and it commits (and syncs) again.
async fn reopen_keeps_20_and_commits(cfg: tafdb::DbConfig) {
    let db = tafdb::Db::open(cfg)
        .await
        .expect("reopen after the failure");
    let mut t = db.begin().await.expect("begin");
    let rows = t
        .scan(&KeyRange::prefix(b"\x02k"), 100)
        .await
        .expect("scan");
    assert_eq!(rows.len(), 20, "every acknowledged commit is there");
    let mut t = db.begin().await.expect("begin");
    t.put(b"\x02after", b"v").expect("put");
    t.commit().await.expect("commits resume after a reopen");
    db.sync().expect("and syncs");
    db.shutdown().await;
}

#[test]
fn a_failed_log_write_fails_the_commit_and_a_reopen_keeps_every_acknowledged_one() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let cfg = || small_log(dir.path());
        let db = tafdb::Db::open(cfg()).await.expect("open");
        for i in 0..20u32 {
            let mut t = db.begin().await.expect("begin");
            t.put(format!("\x02k{i:02}").as_bytes(), b"v").expect("put");
            t.commit().await.expect("commit");
        }
        fail::cfg("chunk::write", "return").expect("failpoint");
        let mut t = db.begin().await.expect("begin");
        t.put(b"\x02lost", b"v").expect("put");
        let err = tokio::time::timeout(std::time::Duration::from_secs(20), t.commit())
            .await
            .expect("a failed log write must not hang the commit")
            .expect_err("the commit cannot be acknowledged");
        assert!(!err.is_retryable(), "{err}");
        fail::remove("chunk::write");
        db.shutdown().await;
        drop(db);
        reopen_keeps_20_and_commits(cfg()).await;
    });
    scenario.teardown();
}

/// Deferred log syncs: a sync that fails is reported to its caller (a FUSE `fsync` gets EIO),
/// the store refuses every later commit instead of acknowledging what it cannot make durable,
/// and a reopen keeps every commit acknowledged before the failure.
#[test]
fn a_failed_deferred_sync_is_reported_and_stops_commits_until_a_reopen() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let cfg = || {
            let mut c = small_log(dir.path());
            c.tablet.log_sync = tafdb::tablet::LogSync::Deferred;
            c
        };
        let db = tafdb::Db::open(cfg()).await.expect("open");
        for i in 0..20u32 {
            let mut t = db.begin().await.expect("begin");
            t.put(format!("\x02k{i:02}").as_bytes(), b"v").expect("put");
            t.commit().await.expect("commit");
        }
        fail::cfg("chunk::sync", "return").expect("failpoint");
        let err = db.sync().expect_err("the sync fails");
        assert!(err.to_string().contains("failpoint"), "{err}");
        fail::remove("chunk::sync");
        let mut t = db.begin().await.expect("begin");
        t.put(b"\x02late", b"v").expect("put");
        let late = tokio::time::timeout(std::time::Duration::from_secs(20), t.commit())
            .await
            .expect("a latched log must not hang the commit");
        assert!(late.is_err(), "a commit after a failed sync is refused");
        db.shutdown().await;
        drop(db);
        reopen_keeps_20_and_commits(cfg()).await;
    });
    scenario.teardown();
}

/// A power cut (sector by sector, see `chunk::power-loss`) while the Raft log writes a group of
/// concurrent commits: after the reboot every acknowledged commit is there, and the tablet
/// takes commits again. The engines' own files are not cut here (only the log's chunk store
/// has the simulated medium); the engines are a cache of the log up to the durable index.
#[test]
fn a_power_cut_in_the_log_keeps_every_acknowledged_commit() {
    for seed in 1..=8u64 {
        let scenario = FailScenario::setup();
        let dir = tempfile::tempdir().expect("tempdir");
        runtime().block_on(async {
            let cfg = || {
                let mut c = small_log(dir.path());
                c.tablet.window_ms = 30;
                c.tablet.flush_interval_ms = 5;
                c
            };
            let db = tafdb::Db::open(cfg()).await.expect("open");
            let acked = Arc::new(parking_lot::Mutex::new(Vec::new()));
            let mut writers = Vec::new();
            for w in 0..8u64 {
                let (db, acked) = (db.clone(), acked.clone());
                writers.push(tokio::spawn(async move {
                    for i in 0..200u64 {
                        let key = format!("\x02w{w}-{i:04}").into_bytes();
                        let mut t = db.begin().await.expect("begin");
                        t.put(&key, &[w as u8; 300]).expect("put");
                        match t.commit().await {
                            Ok(_) => acked.lock().push(key),
                            Err(_) => return,
                        }
                    }
                }));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100 + seed * 20)).await;
            fail::cfg("chunk::power-loss", &format!("1*return({seed})")).expect("failpoint");
            for h in writers {
                h.await.expect("writer");
            }
            fail::remove("chunk::power-loss");
            db.shutdown().await;
            drop(db);
            let acked = acked.lock().clone();
            assert!(
                !acked.is_empty(),
                "seed {seed}: nothing was acknowledged before the cut"
            );
            let db = tafdb::Db::open(cfg())
                .await
                .unwrap_or_else(|e| panic!("seed {seed}: reopen after a power cut: {e}"));
            let mut t = db.begin().await.expect("begin");
            let rows = t
                .scan(&KeyRange::prefix(b"\x02w"), 10_000)
                .await
                .expect("scan");
            let have: std::collections::BTreeSet<Vec<u8>> =
                rows.into_iter().map(|(k, _)| k).collect();
            for k in &acked {
                assert!(have.contains(k), "seed {seed}: acknowledged {k:?} lost");
            }
            let mut t = db.begin().await.expect("begin");
            t.put(b"\x02after", b"v").expect("put");
            t.commit().await.expect("commits resume after the reboot");
            db.shutdown().await;
        });
        scenario.teardown();
    }
}

#[test]
fn a_lost_answer_is_undetermined_and_run_txn_does_not_run_the_closure_again() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let db = tafdb::Db::open(small_log(dir.path())).await.expect("open");
        fail::cfg("tablet::lose-answer", "1*return").expect("failpoint");
        let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let r = runs.clone();
        let out = db
            .run_txn(move |t| {
                let r = r.clone();
                Box::pin(async move {
                    r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    t.put(b"\x02k", b"v")?;
                    Ok(())
                })
            })
            .await;
        fail::remove("tablet::lose-answer");
        let e = out.expect_err("the answer was lost");
        assert!(e.is_undetermined(), "{e}");
        assert!(!e.is_retryable(), "{e}");
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
        // "Unknown" really was unknown: the commit applied.
        let mut t = db.begin().await.expect("begin");
        assert_eq!(t.get(b"\x02k").await.expect("get"), Some(b"v".to_vec()));
        db.shutdown().await;
    });
    scenario.teardown();
}

#[test]
fn a_hash_engine_write_that_does_not_fit_the_disk_latches_refuses_writes_and_recovers_by_itself() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = || {
        let mut c = small_log(dir.path());
        c.tablet.window_ms = 20;
        c.tablet.flush_interval_ms = 2;
        c
    };
    runtime().block_on(async {
        let db = tafdb::Db::open(cfg()).await.expect("open");
        let put = |db: Arc<tafdb::Db>, k: Vec<u8>| async move {
            let mut t = db.begin().await?;
            t.put(&k, b"v")?;
            t.commit().await
        };
        put(db.clone(), b"\x01before".to_vec())
            .await
            .expect("commit");
        // The hash engine (table 1) finds the disk full at its next persist.
        fail::cfg("hash::persist-no-space", "1*return").expect("failpoint");
        put(db.clone(), b"\x01during".to_vec())
            .await
            .expect("a commit needs no engine write");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let engine = db.tablets()[0]
            .state()
            .mvcc()
            .engines()
            .for_key(b"\x01")
            .clone();
        while !engine.latched() {
            assert!(
                std::time::Instant::now() < deadline,
                "the latch was not seen"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        fail::remove("hash::persist-no-space");
        // Space was never really short: the guard reopens the engine's file and writes
        // resume by themselves; refusals meanwhile are ENOSPC ("did not happen").
        let mut refused = 0;
        loop {
            match put(db.clone(), b"\x01after".to_vec()).await {
                Ok(_) => break,
                Err(tafdb::Error::NoSpace(_)) => refused += 1,
                Err(e) => panic!("{e}"),
            }
            assert!(
                std::time::Instant::now() < deadline,
                "writes did not resume"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // The guard reopens the engine's file; the flusher catches up: the hash engine holds
        // every key after a few rounds.
        while engine.get(b"\x01after").expect("get").is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the flusher did not catch up"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        db.shutdown().await;
        drop(db);
        let db = tafdb::Db::open(cfg()).await.expect("reopen");
        let mut t = db.begin().await.expect("begin");
        for k in [&b"\x01before"[..], b"\x01during", b"\x01after"] {
            assert_eq!(t.get(k).await.expect("get"), Some(b"v".to_vec()), "{k:?}");
        }
        db.shutdown().await;
        eprintln!("{refused} commits refused with ENOSPC while the engine was latched");
    });
    scenario.teardown();
}
