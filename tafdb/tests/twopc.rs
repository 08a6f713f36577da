//! Two-phase commit where its mechanisms meet: a lock resolver racing the coordinator on the
//! same secondary, keys with several deltas committed from their locks, leftovers of crashed
//! coordinators on keys no one reads, and the collection of status records.

use std::sync::Arc;

use tafdb::command::CommandResult;
use tafdb::tablet::ReadSet;
use tafdb::{Db, DbConfig, DeltaOp, Mutation};

const EMPTY: ReadSet<'static> = ReadSet {
    reads: &[],
    scans: &[],
    stable: &[],
};

async fn open(dir: &std::path::Path, tune: impl FnOnce(&mut DbConfig)) -> Arc<Db> {
    let mut cfg = DbConfig::new(dir);
    cfg.split_keys = vec![b"\x02m".to_vec()];
    cfg.lock_ttl_ms = 200;
    // Collections are started by the tests.
    cfg.gc_interval_ms = 0;
    tune(&mut cfg);
    Db::open(cfg).await.expect("open db")
}

fn add(by: i64) -> Mutation {
    Mutation::Delta(DeltaOp::Add { offset: 0, by })
}

fn counter(v: Option<Vec<u8>>) -> i64 {
    v.map_or(0, |v| {
        i64::from_le_bytes(v[..8].try_into().expect("8 bytes"))
    })
}

async fn read(db: &Arc<Db>, key: &[u8]) -> Option<Vec<u8>> {
    let mut t = db.begin().await.expect("begin");
    t.get(key).await.expect("get")
}

/// Prewrites `writes` (primary first) of transaction `start_ts`, and commits the primary.
async fn prewrite_and_commit_primary(
    db: &Arc<Db>,
    start_ts: u64,
    primary: &[u8],
    writes: &[(Vec<u8>, Mutation)],
) -> u64 {
    for t in [
        db.tablet_for(primary).clone(),
        db.tablet_for(b"\x02z").clone(),
    ] {
        let mine: Vec<_> = writes
            .iter()
            .filter(|(k, _)| Arc::ptr_eq(db.tablet_for(k), &t))
            .cloned()
            .collect();
        if !mine.is_empty() {
            t.prewrite(start_ts, primary, EMPTY, mine)
                .await
                .expect("prewrite");
        }
    }
    let commit_ts = db.tso().next().expect("ts");
    let primary_writes: Vec<_> = writes
        .iter()
        .filter(|(k, _)| Arc::ptr_eq(db.tablet_for(k), db.tablet_for(primary)))
        .cloned()
        .collect();
    let res = db
        .tablet_for(primary)
        .commit_locks(
            start_ts,
            commit_ts,
            primary_writes,
            vec![],
            Some(primary.to_vec()),
        )
        .await
        .expect("commit primary");
    assert_eq!(res, CommandResult::Ok);
    commit_ts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secondary_committed_by_a_resolver_and_the_coordinator_counts_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path(), |c| {
        c.tablet.window_ms = 20;
        c.tablet.flush_interval_ms = 2;
    })
    .await;
    for round in 0..20u8 {
        let p = vec![2, b'a', round];
        let s = vec![2, b'z', round];
        // Two deltas on the secondary: a resolver commits it from its lock, which must carry
        // both.
        let writes = vec![
            (p.clone(), add(1)),
            (s.clone(), add(1)),
            (s.clone(), add(10)),
        ];
        let a = db.tso().next().expect("ts");
        let cts = prewrite_and_commit_primary(&db, a, &p, &writes).await;
        let secondary: Vec<_> = writes[1..].to_vec();
        // The coordinator commits the secondary while a reader's resolver rolls it forward.
        let coordinator = {
            let db = db.clone();
            let s = s.clone();
            tokio::spawn(async move {
                db.tablet_for(&s)
                    .commit_locks(a, cts, secondary, vec![], None)
                    .await
                    .expect("coordinator commits the secondary")
            })
        };
        let resolver = {
            let db = db.clone();
            let s = s.clone();
            tokio::spawn(async move { db.resolve_lock(&s).await.expect("resolve") })
        };
        coordinator.await.expect("coordinator");
        resolver.await.expect("resolver");
        // And once more, late (a resolver that read the lock before it went).
        db.tablet_for(&s)
            .commit_locks(a, cts, writes[1..].to_vec(), vec![], None)
            .await
            .expect("a late duplicate commit");
        assert_eq!(
            counter(read(&db, &s).await),
            11,
            "round {round}: each delta once"
        );
        assert_eq!(counter(read(&db, &p).await), 1, "round {round}");
    }
    // A later one-phase put of a secondary survives the flushes that follow (a duplicate
    // commit installed at a later log index with an older timestamp once hid it).
    let s = vec![2, b'z', 0];
    let mut t = db.begin().await.expect("begin");
    t.put(&s, &42i64.to_le_bytes()).expect("put");
    t.commit().await.expect("commit");
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        assert_eq!(counter(read(&db, &s).await), 42);
    }
    db.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_rolls_forward_every_delta_of_a_locked_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path(), |_| {}).await;
    let (p, s) = (b"\x02apple".to_vec(), b"\x02zebra".to_vec());
    let writes = vec![
        (p.clone(), Mutation::Put(b"P".to_vec())),
        (s.clone(), add(1)),
        (s.clone(), add(2)),
        (s.clone(), add(4)),
    ];
    let a = db.tso().next().expect("ts");
    prewrite_and_commit_primary(&db, a, &p, &writes).await;
    // The coordinator "crashed": the reader resolves the secondary from its lock.
    assert_eq!(counter(read(&db, &s).await), 7);
    db.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_coordinators_leave_nothing_after_a_collection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path(), |c| c.status_horizon_ms = 200).await;
    // Committed 2PC transactions leave status records at their primaries.
    for i in 0..10u8 {
        let (a, z) = (vec![2, b'a', i], vec![2, b'z', i]);
        db.run_txn(move |t| {
            let (a, z) = (a.clone(), z.clone());
            Box::pin(async move {
                t.put(&a, b"1")?;
                t.put(&z, b"1")?;
                Ok(())
            })
        })
        .await
        .expect("2pc");
    }
    let primary = db.tablet_for(b"\x02a").clone();
    assert_eq!(
        primary
            .statuses_below(u64::MAX, 100)
            .expect("statuses")
            .len(),
        10
    );

    // A coordinator committed its primary and died before the secondary, which no one reads.
    let (p, s) = (b"\x02apple".to_vec(), b"\x02zebra".to_vec());
    let committed = vec![
        (p.clone(), Mutation::Put(b"P".to_vec())),
        (s.clone(), add(5)),
    ];
    let a = db.tso().next().expect("ts");
    prewrite_and_commit_primary(&db, a, &p, &committed).await;
    // Another died after its prewrites, with two keys on its primary's tablet.
    let (q, q2, r) = (b"\x02aq".to_vec(), b"\x02aq2".to_vec(), b"\x02zr".to_vec());
    let b = db.tso().next().expect("ts");
    db.tablet_for(&q)
        .prewrite(
            b,
            &q,
            EMPTY,
            vec![
                (q.clone(), Mutation::Put(b"Q".to_vec())),
                (q2.clone(), Mutation::Put(b"Q".to_vec())),
            ],
        )
        .await
        .expect("prewrite");
    db.tablet_for(&r)
        .prewrite(
            b,
            &q,
            EMPTY,
            vec![(r.clone(), Mutation::Put(b"R".to_vec()))],
        )
        .await
        .expect("prewrite");

    // Before the TTL nothing is touched, and the status records of transactions that still
    // hold locks stay.
    let early = db.collect_garbage().await.expect("gc");
    assert_eq!(early.resolved, 0);
    let locked = |db: &Arc<Db>| -> usize {
        db.tablets()
            .iter()
            .map(|t| t.scan_locks(t.range()).expect("locks").len())
            .sum()
    };
    assert_eq!(locked(&db), 4);
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    let gc = db.collect_garbage().await.expect("gc");
    assert_eq!(gc.resolved, 4, "{gc:?}");
    assert_eq!(locked(&db), 0, "no lock is left behind");
    assert_eq!(
        counter(read(&db, &s).await),
        5,
        "the committed secondary was rolled forward"
    );
    for k in [&q, &q2, &r] {
        assert_eq!(
            read(&db, k).await,
            None,
            "the uncommitted transaction left nothing"
        );
    }
    // The resolution wrote a rollback record; a second round collects every record.
    db.collect_garbage().await.expect("gc");
    for t in db.tablets() {
        assert_eq!(
            t.statuses_below(u64::MAX, 100).expect("statuses"),
            Vec::<u64>::new()
        );
    }
    // A coordinator whose status record was collected can no longer commit at its primary.
    let late = db
        .tablet_for(&q)
        .commit_locks(
            b,
            db.tso().next().expect("ts"),
            vec![],
            vec![],
            Some(q.clone()),
        )
        .await
        .expect("late commit");
    assert_eq!(late, CommandResult::Aborted);
    // Everything still works after a restart: the safe point and the deletions are in the log.
    db.shutdown().await;
    drop((db, primary));
    let db = open(dir.path(), |_| {}).await;
    assert_eq!(counter(read(&db, &s).await), 5);
    for t in db.tablets() {
        assert_eq!(
            t.statuses_below(u64::MAX, 100).expect("statuses"),
            Vec::<u64>::new()
        );
    }
    db.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_older_than_half_the_status_horizon_does_not_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path(), |c| c.status_horizon_ms = 100).await;
    let mut t = db.begin().await.expect("begin");
    t.put(b"\x02apple", b"1").expect("put");
    t.put(b"\x02zebra", b"1").expect("put");
    // Its status record could be collected by a collection running while it commits.
    tokio::time::sleep(std::time::Duration::from_millis(80)).await;
    let err = t.commit().await.expect_err("too old to commit");
    assert!(matches!(err, tafdb::Error::Aborted { .. }), "{err}");
    assert!(err.is_retryable());
    for k in [b"\x02apple".as_slice(), b"\x02zebra"] {
        assert_eq!(read(&db, k).await, None);
        assert!(
            db.tablet_for(k).locks(k).expect("locks").is_empty(),
            "no lock left"
        );
    }
    // A fresh attempt commits.
    db.run_txn(|t| {
        Box::pin(async move {
            t.put(b"\x02apple", b"2")?;
            t.put(b"\x02zebra", b"2")
        })
    })
    .await
    .expect("a fresh transaction commits");
    assert_eq!(read(&db, b"\x02zebra").await, Some(b"2".to_vec()));
    db.shutdown().await;
}
