//! Transaction semantics against real tablets (openraft, on-disk log, RocksDB and hash engines).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use proptest::prelude::*;
use tafdb::{Db, DbConfig, DeltaOp, Error, KeyRange};

async fn open(dir: &std::path::Path, split: bool) -> Arc<Db> {
    let mut cfg = DbConfig::new(dir);
    if split {
        cfg.split_keys = vec![b"\x02m".to_vec()];
    }
    cfg.lock_ttl_ms = 200;
    Db::open(cfg).await.expect("open db")
}

fn counter(v: &Option<Vec<u8>>) -> u64 {
    v.as_ref().map_or(0, |v| {
        u64::from_le_bytes(v[..8].try_into().expect("8 bytes"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_isolation_and_lost_updates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path(), false).await;
    let mut t = db.begin().await.expect("begin");
    t.put(b"\x02a", b"1").expect("put");
    t.commit().await.expect("commit");

    let mut old = db.begin().await.expect("begin");
    let mut t = db.begin().await.expect("begin");
    t.put(b"\x02a", b"2").expect("put");
    t.commit().await.expect("commit");
    assert_eq!(
        old.get(b"\x02a").await.expect("get"),
        Some(b"1".to_vec()),
        "a snapshot does not see later commits"
    );

    // Lost update: both read a and write it; the second to commit must fail.
    let mut t1 = db.begin().await.expect("begin");
    let mut t2 = db.begin().await.expect("begin");
    t1.get(b"\x02a").await.expect("get");
    t2.get(b"\x02a").await.expect("get");
    t1.put(b"\x02a", b"t1").expect("put");
    t2.put(b"\x02a", b"t2").expect("put");
    t1.commit().await.expect("first commit wins");
    let err = t2.commit().await.expect_err("second commit must fail");
    assert!(err.is_retryable(), "{err}");
    let mut r = db.begin().await.expect("begin");
    assert_eq!(r.get(b"\x02a").await.expect("get"), Some(b"t1".to_vec()));
    db.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_skew_and_phantoms_are_rejected() {
    for split in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open(dir.path(), split).await;
        // Write skew: t1 reads x and writes y; t2 reads y and writes x.
        let (x, y) = (b"\x02b-x".as_slice(), b"\x02z-y".as_slice());
        let mut t1 = db.begin().await.expect("begin");
        let mut t2 = db.begin().await.expect("begin");
        assert_eq!(t1.get(x).await.expect("get"), None);
        assert_eq!(t2.get(y).await.expect("get"), None);
        t1.put(y, b"1").expect("put");
        t2.put(x, b"1").expect("put");
        t1.commit().await.expect("commit");
        let err = t2.commit().await.expect_err("write skew must be rejected");
        assert!(err.is_retryable(), "split={split}: {err}");

        // Phantom: t1 scans a prefix; t2 inserts into it; t1's commit must fail.
        let mut t1 = db.begin().await.expect("begin");
        let rows = t1
            .scan(&KeyRange::prefix(b"\x02dir/"), 100)
            .await
            .expect("scan");
        assert!(rows.is_empty());
        t1.put(b"\x02z-other", b"v").expect("put");
        let mut t2 = db.begin().await.expect("begin");
        t2.put(b"\x02dir/new", b"v").expect("put");
        t2.commit().await.expect("commit");
        let err = t1.commit().await.expect_err("phantom must be detected");
        assert!(err.is_retryable(), "split={split}: {err}");
        db.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_delta_writers_never_conflict() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path(), false).await;
    let attempts = Arc::new(AtomicU32::new(0));
    let mut handles = Vec::new();
    for task in 0..32u64 {
        let db = db.clone();
        let attempts = attempts.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..25u64 {
                let attempts = attempts.clone();
                db.run_txn(move |txn| {
                    attempts.fetch_add(1, Ordering::Relaxed);
                    Box::pin(async move {
                        txn.delta(b"\x02parent", DeltaOp::Add { offset: 0, by: 1 })?;
                        txn.delta(
                            b"\x02parent",
                            DeltaOp::Max {
                                offset: 8,
                                value: task * 1000 + i,
                            },
                        )?;
                        txn.put(format!("\x02child-{task}-{i}").as_bytes(), b"x")?;
                        Ok(())
                    })
                })
                .await
                .expect("delta txn");
            }
        }));
    }
    for h in handles {
        h.await.expect("task");
    }
    assert_eq!(
        attempts.load(Ordering::Relaxed),
        32 * 25,
        "no delta transaction had to retry"
    );
    let mut t = db.begin().await.expect("begin");
    let v = t.get(b"\x02parent").await.expect("get");
    assert_eq!(counter(&v), 800);
    let max = u64::from_le_bytes(v.as_ref().expect("value")[8..16].try_into().expect("8"));
    assert_eq!(max, 31 * 1000 + 24);
    db.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_phase_commit_across_tablets_and_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = open(dir.path(), true).await;
        assert_eq!(db.tablets().len(), 2);
        for i in 0..20u32 {
            db.run_txn(move |txn| {
                Box::pin(async move {
                    txn.put(format!("\x02a{i:03}").as_bytes(), &i.to_le_bytes())?;
                    txn.put(format!("\x02x{i:03}").as_bytes(), &i.to_le_bytes())?;
                    txn.delta(b"\x02acount", DeltaOp::Add { offset: 0, by: 1 })?;
                    txn.delta(b"\x02xcount", DeltaOp::Add { offset: 0, by: 1 })?;
                    Ok(())
                })
            })
            .await
            .expect("2pc txn");
        }
        let mut t = db.begin().await.expect("begin");
        assert_eq!(counter(&t.get(b"\x02acount").await.expect("get")), 20);
        assert_eq!(counter(&t.get(b"\x02xcount").await.expect("get")), 20);
        let rows = t
            .scan(
                &KeyRange::new(b"\x02a".to_vec(), Some(b"\x02y".to_vec())),
                1000,
            )
            .await
            .expect("scan");
        assert_eq!(rows.len(), 42, "20 + 20 keys and two counters");
        db.shutdown().await;
    }
    // Everything acknowledged survives a restart (replayed from the Raft log).
    let db = open(dir.path(), true).await;
    let mut t = db.begin().await.expect("begin");
    assert_eq!(counter(&t.get(b"\x02acount").await.expect("get")), 20);
    assert_eq!(counter(&t.get(b"\x02xcount").await.expect("get")), 20);
    assert_eq!(
        t.get(b"\x02x019").await.expect("get"),
        Some(19u32.to_le_bytes().to_vec())
    );
    db.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_coordinators_locks_are_resolved() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path(), true).await;
    let (p, s) = (b"\x02apple".to_vec(), b"\x02zebra".to_vec());
    let empty = tafdb::tablet::ReadSet {
        reads: &[],
        scans: &[],
        stable: &[],
    };
    // Coordinator A prewrites both keys, commits the primary and "crashes".
    let a = db.tso().next().expect("ts");
    db.tablet_for(&p)
        .prewrite(
            a,
            &p,
            empty,
            vec![(p.clone(), tafdb::Mutation::Put(b"A".to_vec()))],
        )
        .await
        .expect("prewrite");
    db.tablet_for(&s)
        .prewrite(
            a,
            &p,
            empty,
            vec![(s.clone(), tafdb::Mutation::Put(b"A".to_vec()))],
        )
        .await
        .expect("prewrite");
    let cts = db.tso().next().expect("ts");
    db.tablet_for(&p)
        .commit_locks(
            a,
            cts,
            vec![(p.clone(), tafdb::Mutation::Put(b"A".to_vec()))],
            vec![],
            Some(p.clone()),
        )
        .await
        .expect("commit primary");
    // A reader meets the secondary's lock and rolls it forward.
    let mut t = db.begin().await.expect("begin");
    assert_eq!(
        t.get(&s).await.expect("get resolves the lock"),
        Some(b"A".to_vec())
    );

    // Coordinator B prewrites and crashes before committing anything: after the TTL, a writer
    // rolls it back and proceeds.
    let (p2, s2) = (b"\x02avocado".to_vec(), b"\x02zucchini".to_vec());
    let b = db.tso().next().expect("ts");
    db.tablet_for(&p2)
        .prewrite(
            b,
            &p2,
            empty,
            vec![(p2.clone(), tafdb::Mutation::Put(b"B".to_vec()))],
        )
        .await
        .expect("prewrite");
    db.tablet_for(&s2)
        .prewrite(
            b,
            &p2,
            empty,
            vec![(s2.clone(), tafdb::Mutation::Put(b"B".to_vec()))],
        )
        .await
        .expect("prewrite");
    let s2c = s2.clone();
    db.run_txn(move |txn| {
        let s2 = s2c.clone();
        Box::pin(async move {
            txn.get(&s2).await?;
            txn.put(&s2, b"C")?;
            Ok(())
        })
    })
    .await
    .expect("writer resolves the expired lock");
    let mut t = db.begin().await.expect("begin");
    assert_eq!(t.get(&s2).await.expect("get"), Some(b"C".to_vec()));
    assert_eq!(
        t.get(&p2).await.expect("get"),
        None,
        "the crashed transaction left nothing visible"
    );
    // A late commit of B's primary fails: it was rolled back.
    let late = db
        .tablet_for(&p2)
        .commit_locks(
            b,
            db.tso().next().expect("ts"),
            vec![],
            vec![],
            Some(p2.clone()),
        )
        .await
        .expect("late commit");
    assert_eq!(late, tafdb::command::CommandResult::Aborted);
    db.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path(), false).await;
    let mut t = db.begin().await.expect("begin");
    assert!(matches!(t.put(b"", b"v"), Err(Error::InvalidArgument(_))));
    assert!(matches!(
        t.put(b"\xffsecret", b"v"),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        t.put(b"\x02k", &vec![0u8; 2 << 20]),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        t.delta(
            b"\x02k",
            DeltaOp::Add {
                offset: 1 << 20,
                by: 1
            }
        ),
        Err(Error::InvalidArgument(_))
    ));
    assert!(
        matches!(
            t.scan(&KeyRange::prefix(&[1]), 10).await,
            Err(Error::Unsupported(_))
        ),
        "the index table is a hash table"
    );
    db.shutdown().await;
}

#[derive(Clone, Debug)]
enum Op {
    Put(u8, u8),
    Delete(u8),
    Add(u8, i8),
}

fn key(i: u8) -> Vec<u8> {
    // Keys on both sides of the split, so some transactions are 2PC.
    if i.is_multiple_of(2) {
        vec![2, b'a', i]
    } else {
        vec![2, b'z', i]
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]
    /// Random transactions against a model that remembers every committed state: reading the
    /// database at each commit timestamp gives exactly the model's state at that point.
    #[test]
    fn snapshots_match_the_model(txns in proptest::collection::vec(proptest::collection::vec(prop_oneof![
        (0u8..6, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        (0u8..6).prop_map(Op::Delete),
        (0u8..6, any::<i8>()).prop_map(|(k, d)| Op::Add(k, d)),
    ], 1..4), 1..12)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        rt.block_on(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let db = open(dir.path(), true).await;
            let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            let mut history = Vec::new();
            for ops in &txns {
                let mut t = db.begin().await.expect("begin");
                for op in ops {
                    match op {
                        Op::Put(k, v) => { t.put(&key(*k), &[*v]).expect("put"); model.insert(key(*k), vec![*v]); }
                        Op::Delete(k) => { t.delete(&key(*k)).expect("delete"); model.remove(&key(*k)); }
                        Op::Add(k, d) => {
                            let op = DeltaOp::Add { offset: 0, by: *d as i64 };
                            t.delta(&key(*k), op.clone()).expect("delta");
                            op.apply(model.entry(key(*k)).or_default());
                        }
                    }
                }
                let ts = t.commit().await.expect("commit (no concurrency, no conflicts)");
                history.push((ts, model.clone()));
            }
            for (ts, state) in &history {
                for i in 0..6u8 {
                    let got = db.get_at(&key(i), *ts).await.expect("get");
                    prop_assert_eq!(got.as_ref(), state.get(&key(i)), "key {} at ts {}", i, ts);
                }
                let rows: BTreeMap<_, _> = db.scan_at(&KeyRange::prefix(&[2]), *ts, 100).await.expect("scan").into_iter().collect();
                prop_assert_eq!(&rows, state);
            }
            db.shutdown().await;
            Ok(())
        })?;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stable_reads_conflict_with_puts_but_not_with_deltas() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path(), false).await;
    let parent = b"\x02parent".to_vec();
    db.run_txn(|t| {
        let parent = parent.clone();
        Box::pin(async move { t.put(&parent, &[0u8; 16]) })
    })
    .await
    .expect("seed");
    // A stable reader, then a concurrent delta: the reader still commits.
    let mut reader = db.begin().await.expect("begin");
    assert!(reader.get_stable(&parent).await.expect("get").is_some());
    reader.put(b"\x02child-a", b"x").expect("put");
    let mut bumper = db.begin().await.expect("begin");
    bumper
        .delta(&parent, tafdb::DeltaOp::Add { offset: 0, by: 1 })
        .expect("delta");
    bumper.commit().await.expect("delta commits");
    reader
        .commit()
        .await
        .expect("a delta does not invalidate a stable read");
    // The same with a concurrent put: the reader must abort.
    let mut reader = db.begin().await.expect("begin");
    reader.get_stable(&parent).await.expect("get");
    reader.put(b"\x02child-b", b"x").expect("put");
    let mut writer = db.begin().await.expect("begin");
    writer.put(&parent, &[9u8; 16]).expect("put");
    writer.commit().await.expect("put commits");
    let err = reader
        .commit()
        .await
        .expect_err("a put invalidates a stable read");
    assert!(err.is_retryable(), "{err}");
    // An ordinary read is invalidated by a delta.
    let mut reader = db.begin().await.expect("begin");
    reader.get(&parent).await.expect("get");
    reader.put(b"\x02child-c", b"x").expect("put");
    let mut bumper = db.begin().await.expect("begin");
    bumper
        .delta(&parent, tafdb::DeltaOp::Add { offset: 0, by: 1 })
        .expect("delta");
    bumper.commit().await.expect("delta commits");
    assert!(reader.commit().await.is_err());
    db.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_transaction_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path(), false).await;
    let err = db
        .run_txn(|t| {
            Box::pin(async move {
                t.put(b"\x02refused", b"x")?;
                Err::<(), _>(tafdb::Error::Refused(b"nope".to_vec()))
            })
        })
        .await
        .expect_err("refused");
    assert!(matches!(&err, tafdb::Error::Refused(p) if p == b"nope"));
    assert!(!err.is_retryable());
    let mut t = db.begin().await.expect("begin");
    assert_eq!(t.get(b"\x02refused").await.expect("get"), None);
    db.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dump_lists_a_hash_table_in_key_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path(), false).await;
    for i in [5u8, 1, 9, 3] {
        db.run_txn(move |t| Box::pin(async move { t.put(&[1, i], &[i]) }))
            .await
            .expect("put");
    }
    db.run_txn(|t| Box::pin(async move { t.delete(&[1, 9]) }))
        .await
        .expect("delete");
    let mut t = db.begin().await.expect("begin");
    assert!(
        t.scan(&tafdb::KeyRange::prefix(&[1]), 10).await.is_err(),
        "a hash table refuses ordered scans"
    );
    let rows = db.dump(&tafdb::KeyRange::prefix(&[1])).await.expect("dump");
    let keys: Vec<Vec<u8>> = rows.into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, vec![vec![1, 1], vec![1, 3], vec![1, 5]]);
    db.shutdown().await;
}

/// Read-modify-write of one counter by many transactions at once, with the key configured as
/// hot: every transaction waits in the key's queue, needs at most two attempts (one to get its
/// place, one with a snapshot taken after the previous holder's commit) and the sum is exact.
/// Without the queue, the same workload exhausts three attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_keys_queue_instead_of_aborting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = DbConfig::new(dir.path());
    cfg.hot_keys = vec![b"\x02hot".to_vec()];
    cfg.max_attempts = 3;
    let db = Db::open(cfg).await.expect("open");
    let key = b"\x02hot-counter".to_vec();
    let attempts = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (tasks, each) = (16u64, 20u64);
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (db, key, attempts) = (db.clone(), key.clone(), attempts.clone());
        handles.push(tokio::spawn(async move {
            for _ in 0..each {
                db.run_txn(|t| {
                    let key = key.clone();
                    attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Box::pin(async move {
                        let v = counter(&t.get(&key).await?);
                        // Widen the race window: other transactions queue meanwhile.
                        tokio::task::yield_now().await;
                        t.put(&key, &(v + 1).to_le_bytes())
                    })
                })
                .await
                .expect("a queued transaction commits within two attempts");
            }
        }));
    }
    for h in handles {
        h.await.expect("task");
    }
    let mut t = db.begin().await.expect("begin");
    assert_eq!(counter(&t.get(&key).await.expect("get")), tasks * each);
    let n = attempts.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        n <= 2 * tasks * each,
        "{n} attempts for {} transactions",
        tasks * each
    );
    drop(t);
    assert!(db.lock_table().is_hot(&key));
    // Blind writes queue too, and a lone transaction outside run_txn releases on drop.
    let mut a = db.begin().await.expect("begin");
    a.put(&key, &7u64.to_le_bytes()).expect("put");
    a.commit().await.expect("blind write");
    let mut b = db.begin().await.expect("begin");
    assert_eq!(counter(&b.get(&key).await.expect("get")), 7);
    assert_eq!(b.locks().len(), 1);
    drop(b);
    let mut c = db.begin().await.expect("begin");
    c.get(&key)
        .await
        .expect("the lock was released with the dropped transaction");
    db.shutdown().await;
}

/// Two transactions taking two hot keys in opposite orders: the wait times out, the loser
/// releases everything and retries, both commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_key_deadlocks_back_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = DbConfig::new(dir.path());
    cfg.hot_keys = vec![b"\x02h".to_vec()];
    cfg.lock_wait_ms = 100;
    let db = Db::open(cfg).await.expect("open");
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let mut handles = Vec::new();
    for (first, second) in [(&b"\x02h1"[..], &b"\x02h2"[..]), (b"\x02h2", b"\x02h1")] {
        let (db, barrier) = (db.clone(), barrier.clone());
        let (first, second) = (first.to_vec(), second.to_vec());
        handles.push(tokio::spawn(async move {
            let mut met = false;
            db.run_txn(|t| {
                let (first, second, barrier) = (first.clone(), second.clone(), barrier.clone());
                let meet = !met;
                met = true;
                Box::pin(async move {
                    let a = counter(&t.get(&first).await?);
                    if meet {
                        barrier.wait().await;
                    }
                    let b = counter(&t.get(&second).await?);
                    t.put(&first, &(a + 1).to_le_bytes())?;
                    t.put(&second, &(b + 1).to_le_bytes())
                })
            })
            .await
        }));
    }
    for h in handles {
        h.await
            .expect("task")
            .expect("both commit after backing off");
    }
    let mut t = db.begin().await.expect("begin");
    assert_eq!(counter(&t.get(b"\x02h1").await.expect("get")), 2);
    assert_eq!(counter(&t.get(b"\x02h2").await.expect("get")), 2);
    db.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_of_another_format_is_refused_not_misread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path(), false).await;
    let mut t = db.begin().await.expect("begin");
    t.put(b"\x02k", b"v").expect("put");
    t.commit().await.expect("commit");
    db.shutdown().await;
    drop(db);
    let raft = dir.path().join("tablet-0").join("raft");
    let format = raft.join("format");
    std::fs::remove_file(&format).expect("remove format");
    let err = Db::open(DbConfig::new(dir.path()))
        .await
        .expect_err("a log store without a format record must be refused");
    assert!(err.to_string().contains("format"), "{err}");
    // Another format's record.
    chunk_backend::atomic::write(&format, b"9").expect("write");
    let err = Db::open(DbConfig::new(dir.path()))
        .await
        .expect_err("another format must be refused");
    assert!(err.to_string().contains("format 9"), "{err}");
    // A damaged format file.
    std::fs::write(&format, b"\x00\x00\x00\x004").expect("write");
    let err = Db::open(DbConfig::new(dir.path()))
        .await
        .expect_err("a bad format file must be refused");
    assert!(err.to_string().contains("format"), "{err}");
    // A log of an older build: plain segment files (format 3) or one file (format 1).
    chunk_backend::atomic::write(&format, b"4").expect("write");
    for old in ["raft-0000000001.log", "raft.log"] {
        std::fs::write(raft.join(old), b"old records").expect("write");
        let err = Db::open(DbConfig::new(dir.path()))
            .await
            .expect_err("an old log must be refused");
        assert!(err.to_string().contains("older build"), "{err}");
        std::fs::remove_file(raft.join(old)).expect("remove");
    }
    let db = Db::open(DbConfig::new(dir.path()))
        .await
        .expect("the log opens again");
    let mut t = db.begin().await.expect("begin");
    assert_eq!(t.get(b"\x02k").await.expect("get"), Some(b"v".to_vec()));
    db.shutdown().await;
}

/// The chunks of the log's store, by sequence number (opened after the database is closed).
fn log_chunks(dir: &std::path::Path) -> Vec<u32> {
    let disk = chunk_backend::disk::Disk::open(
        &dir.join("tablet-0").join("raft").join("log.chunks"),
        chunk_backend::disk::DiskConfig::default(),
    )
    .expect("open the log store");
    let mut seqs: Vec<u32> = disk.chunks().iter().map(|(e, _)| e.seq).collect();
    seqs.sort_unstable();
    seqs
}

/// Snapshots only let openraft purge the log: they record the durable index (a small file,
/// whatever the tablet holds), and a restart after purges still finds every commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_durable_references_and_restarts_keep_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = || {
        let mut cfg = DbConfig::new(dir.path());
        cfg.tablet.window_ms = 20;
        cfg.tablet.flush_interval_ms = 10;
        cfg.tablet.snapshot_logs = 25;
        // Tiny chunks: the log rolls over many and purges delete the old ones.
        cfg.tablet.log_chunk_bytes = 4096;
        cfg.tablet.log_store_bytes = 4 << 20;
        cfg
    };
    let db = Db::open(config()).await.expect("open");
    for i in 0..400u32 {
        let mut t = db.begin().await.expect("begin");
        t.put(format!("\x02k{i:04}").as_bytes(), &[7u8; 100])
            .expect("put");
        t.commit().await.expect("commit");
        if i % 100 == 99 {
            // Let the flusher make the engines durable, so that snapshots move forward.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let snap = dir
        .path()
        .join("tablet-0")
        .join("state")
        .join("snapshot.ref");
    let len = std::fs::metadata(&snap)
        .expect("a snapshot was built")
        .len();
    assert!(
        len < 1024,
        "a snapshot is a reference, not a dump: {len} bytes"
    );
    let raft_dir = dir.path().join("tablet-0").join("raft");
    assert!(
        raft_dir.join("purged").exists(),
        "the log was purged up to a snapshot"
    );
    db.shutdown().await;
    drop(db);
    // 400 entries of over 100 bytes fill well over 10 chunks of 4 KiB.
    let chunks = log_chunks(dir.path());
    assert!(
        chunks.first().is_some_and(|c| *c > 0) && chunks.len() < 10,
        "purges delete whole old chunks: {chunks:?}"
    );
    let db = Db::open(config()).await.expect("reopen");
    let mut t = db.begin().await.expect("begin");
    let rows = t
        .scan(&KeyRange::prefix(b"\x02k"), 1_000)
        .await
        .expect("scan");
    assert_eq!(rows.len(), 400);
    db.shutdown().await;
}

/// Damage to an acknowledged record of the log (a flipped bit in the middle of the chain, below
/// the durable checkpoint) is corruption, and opening says so instead of dropping commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_to_an_acknowledged_log_record_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = || {
        let mut cfg = DbConfig::new(dir.path());
        cfg.tablet.log_chunk_bytes = 64 << 10;
        cfg.tablet.log_store_bytes = 4 << 20;
        cfg
    };
    let db = Db::open(config()).await.expect("open");
    for i in 0..60u32 {
        let mut t = db.begin().await.expect("begin");
        let fill = if i == 10 { b'#' } else { b'.' };
        t.put(format!("\x02k{i:04}").as_bytes(), &[fill; 300])
            .expect("put");
        t.commit().await.expect("commit");
    }
    db.shutdown().await;
    drop(db);
    let path = dir.path().join("tablet-0").join("raft").join("log.chunks");
    let mut bytes = std::fs::read(&path).expect("read the log store");
    let marked = bytes
        .windows(300)
        .position(|w| w.iter().all(|b| *b == b'#'))
        .expect("the marked record is in the log");
    bytes[marked + 150] ^= 0x01;
    std::fs::write(&path, &bytes).expect("write");
    let err = Db::open(config())
        .await
        .expect_err("damage must be reported");
    assert!(matches!(err, Error::Corruption(_)), "{err}");
}

/// After a shutdown, commits fail at once with `Shutdown` instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_after_a_shutdown_fail_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path(), false).await;
    db.shutdown().await;
    let mut t = db.begin().await.expect("begin");
    t.put(b"\x02late", b"v").expect("put");
    let err = tokio::time::timeout(std::time::Duration::from_secs(5), t.commit())
        .await
        .expect("a commit after shutdown must not hang")
        .expect_err("a commit after shutdown must fail");
    assert!(matches!(err, Error::Shutdown), "{err}");
}

/// A log store much smaller than what is written: the tablet asks for snapshots as the store
/// fills, each lets the log be purged up to the durable index, and an append that finds the
/// store full waits for that purge instead of failing. Every commit is kept across a restart.
/// With synced and with deferred log syncs (whose appends are written inline until the store
/// is full, then wait on the writer thread).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_log_store_is_purged_as_it_fills() {
    for sync in [
        tafdb::tablet::LogSync::EveryCommit,
        tafdb::tablet::LogSync::Deferred,
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = || {
            let mut cfg = DbConfig::new(dir.path());
            cfg.tablet.window_ms = 20;
            cfg.tablet.flush_interval_ms = 5;
            // Far more entries than this between snapshots: only the fill level asks for them.
            cfg.tablet.snapshot_logs = 1_000_000;
            cfg.tablet.log_chunk_bytes = 64 << 10;
            cfg.tablet.log_store_bytes = 2 << 20;
            cfg.tablet.log_sync = sync;
            cfg
        };
        let db = Db::open(config()).await.expect("open");
        let mut handles = Vec::new();
        for w in 0..8u32 {
            let db = db.clone();
            handles.push(tokio::spawn(async move {
                for i in 0..400u32 {
                    let mut t = db.begin().await.expect("begin");
                    t.put(format!("\x02k{w}-{i:04}").as_bytes(), &[w as u8; 1024])
                        .expect("put");
                    t.commit().await.expect("commit on a small log store");
                }
            }));
        }
        for h in handles {
            h.await.expect("writer");
        }
        db.shutdown().await;
        drop(db);
        // 3.2 MB of values went through a 2 MiB store.
        let db = Db::open(config()).await.expect("reopen");
        let mut t = db.begin().await.expect("begin");
        let rows = t
            .scan(&KeyRange::prefix(b"\x02k"), 10_000)
            .await
            .expect("scan");
        assert_eq!(rows.len(), 8 * 400, "{sync:?}");
        db.shutdown().await;
    }
}

fn set(offset: u32, bytes: &[u8], truncate: bool) -> DeltaOp {
    DeltaOp::Set {
        offset,
        bytes: bytes.to_vec(),
        truncate,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_sets_commute_with_deltas_but_not_with_stable_readers_or_each_other() {
    for split in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open(dir.path(), split).await;
        let key = b"\x02rec";
        let mut t = db.begin().await.expect("begin");
        t.put(key, &[0u8; 24]).expect("put");
        t.commit().await.expect("commit");

        // A setter that read the record stably, racing an adder: both commit, neither update
        // is lost.
        let mut setter = db.begin().await.expect("begin");
        setter.get_stable(key).await.expect("stable read");
        setter.delta(key, set(8, b"name", true)).expect("set");
        let mut adder = db.begin().await.expect("begin");
        adder
            .delta(key, DeltaOp::Add { offset: 0, by: 5 })
            .expect("add");
        adder.commit().await.expect("the adder commits");
        setter
            .commit()
            .await
            .expect("the setter commits after an add");
        let mut r = db.begin().await.expect("begin");
        let v = r.get(key).await.expect("get").expect("value");
        assert_eq!(counter(&Some(v.clone())), 5, "split {split}");
        assert_eq!(&v[8..], b"name", "split {split}: set and truncated");

        // Two setters that read stably: the second to commit conflicts.
        let mut a = db.begin().await.expect("begin");
        let mut b = db.begin().await.expect("begin");
        a.get_stable(key).await.expect("read");
        b.get_stable(key).await.expect("read");
        a.delta(key, set(8, b"aaaa", false)).expect("set");
        b.delta(key, set(8, b"bbbb", false)).expect("set");
        a.commit().await.expect("first setter");
        let e = b.commit().await.expect_err("the second setter conflicts");
        assert!(e.is_retryable(), "split {split}: {e}");

        // A stable reader conflicts with a set committed after it started.
        let mut reader = db.begin().await.expect("begin");
        reader.get_stable(key).await.expect("read");
        reader.put(b"\x02other", b"x").expect("put");
        let mut s = db.begin().await.expect("begin");
        s.delta(key, set(8, b"cccc", false)).expect("set");
        s.commit().await.expect("set");
        let e = reader.commit().await.expect_err("the reader conflicts");
        assert!(e.is_retryable(), "split {split}: {e}");
        // ...but not with a plain delta.
        let mut reader = db.begin().await.expect("begin");
        reader.get_stable(key).await.expect("read");
        reader.put(b"\x02other", b"y").expect("put");
        let mut d = db.begin().await.expect("begin");
        d.delta(
            key,
            DeltaOp::Max {
                offset: 0,
                value: 9,
            },
        )
        .expect("max");
        d.commit().await.expect("max");
        reader
            .commit()
            .await
            .expect("a stable reader passes a plain delta");
        // A set reaching past the delta limit is refused.
        let mut t = db.begin().await.expect("begin");
        assert!(matches!(
            t.delta(key, set(4096, &[0; 9], false)),
            Err(Error::InvalidArgument(_))
        ));
        db.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_readers_see_commits_refuse_writes_and_skip_hot_key_queues() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = DbConfig::new(dir.path());
    cfg.hot_keys = vec![b"\x02hot".to_vec()];
    let db = Db::open(cfg).await.expect("open db");
    db.run_txn(|t| {
        Box::pin(async move {
            t.put(b"\x02hot", b"1")?;
            t.put(b"\x02b", &2u64.to_le_bytes())
        })
    })
    .await
    .expect("seed");

    // A reader sees what committed before it started, deltas folded in.
    db.run_txn(|t| Box::pin(async move { t.delta(b"\x02b", DeltaOp::Add { offset: 0, by: 1 }) }))
        .await
        .expect("delta");
    let (hot, b) = db
        .run_read(|t| {
            Box::pin(async move {
                let hot = t.get(b"\x02hot").await?;
                let b = t.get_stable(b"\x02b").await?;
                Ok((hot, b))
            })
        })
        .await
        .expect("read");
    assert_eq!(hot, Some(b"1".to_vec()));
    assert_eq!(counter(&b), 3);

    // Writes are refused, and nothing of a refused reader lands.
    for attempt in 0..3 {
        let err = db
            .run_read(|t| {
                Box::pin(async move {
                    match attempt {
                        0 => t.put(b"\x02c", b"x"),
                        1 => t.delete(b"\x02b"),
                        _ => t.delta(b"\x02b", DeltaOp::Add { offset: 0, by: 5 }),
                    }
                })
            })
            .await
            .expect_err("a reader may not write");
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    }
    let mut r = db.begin().await.expect("begin");
    assert_eq!(r.get(b"\x02c").await.expect("get"), None);

    // A writer holding the hot key's queue does not hold a reader up.
    let (held_tx, held_rx) = tokio::sync::oneshot::channel::<()>();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let go_rx = Arc::new(tokio::sync::Mutex::new(Some(go_rx)));
    let held_tx = Arc::new(parking_lot::Mutex::new(Some(held_tx)));
    let writer = {
        let db = db.clone();
        tokio::spawn(async move {
            db.run_txn(move |t| {
                let (go_rx, held_tx) = (go_rx.clone(), held_tx.clone());
                Box::pin(async move {
                    t.get(b"\x02hot").await?;
                    if let Some(tx) = held_tx.lock().take() {
                        let _ = tx.send(());
                    }
                    if let Some(rx) = go_rx.lock().await.take() {
                        let _ = rx.await;
                    }
                    t.put(b"\x02hot", b"3")
                })
            })
            .await
        })
    };
    held_rx.await.expect("the writer holds the queue");
    let seen = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        db.run_read(|t| Box::pin(async move { t.get(b"\x02hot").await })),
    )
    .await
    .expect("a reader does not wait in the hot-key queue")
    .expect("read");
    assert_eq!(seen, Some(b"1".to_vec()));
    go_tx.send(()).expect("release the writer");
    writer.await.expect("join").expect("writer commits");
    let seen = db
        .run_read(|t| Box::pin(async move { t.get(b"\x02hot").await }))
        .await
        .expect("read");
    assert_eq!(seen, Some(b"3".to_vec()), "a later reader sees the commit");
    db.shutdown().await;
}
