//! Transactions across nodes: three databases on loopback, each hosting a replica of every
//! tablet, with the tablets' leaders on different nodes. Every node coordinates
//! transactions: reads and one-phase commits go to the tablet's leader, two-phase commits span
//! leaders on different nodes, and timestamps come from the oracle on the first tablet's
//! leader. Bank transfers from every node keep the total; acknowledged transfers survive the
//! loss of a tablet's leader; timestamps increase in real-time order whichever node is asked.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::serve;
use openraft::BasicNode;
use tafdb::raft::{Peers, RaftRouter};
use tafdb::{ClusterConfig, Db, DbConfig, Error};
use tokio::net::TcpListener;

struct Node {
    id: u64,
    db: Arc<Db>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

const SPLITS: [&[u8]; 2] = [b"\x02h", b"\x02p"];
/// Account keys: four in each tablet.
fn accounts() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for p in [b'a', b'k', b't'] {
        for i in 0..4u8 {
            out.push(vec![2, p, b'0' + i]);
        }
    }
    out
}
const START: i64 = 1000;

fn num(v: Option<Vec<u8>>) -> i64 {
    v.map_or(0, |v| {
        i64::from_le_bytes(v[..8].try_into().expect("8 bytes"))
    })
}

async fn three_nodes() -> Vec<Node> {
    let mut listeners = Vec::new();
    let mut members = BTreeMap::new();
    for id in 1..=3u64 {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        members.insert(
            id,
            BasicNode::new(l.local_addr().expect("addr").to_string()),
        );
        listeners.push(l);
    }
    let mut nodes = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let dir = tempfile::tempdir().expect("dir");
        let router = RaftRouter::new();
        let stop = serve(l, router.clone()).await;
        let mut cfg = DbConfig::new(dir.path());
        cfg.split_keys = SPLITS.iter().map(|k| k.to_vec()).collect();
        cfg.tablet.window_ms = 200;
        cfg.tablet.log_store_bytes = 16 << 20;
        cfg.tablet.log_chunk_bytes = 1 << 20;
        cfg.lock_ttl_ms = 500;
        cfg.cluster = Some(ClusterConfig {
            node: id,
            peers: Peers::new(id),
            router,
            init: (id == 1).then(|| members.clone()),
            heartbeat_ms: 50,
            election_ms: 300,
        });
        let db = Db::open(cfg).await.expect("open");
        nodes.push(Node {
            id,
            db,
            stop: Some(stop),
            _dir: dir,
        });
    }
    nodes
}

/// Waits until tablet `tablet` is served by node `on`, or by any node with `None`.
async fn wait_served(nodes: &[Node], tablet: usize, on: Option<u64>) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let serving: Vec<u64> = nodes
            .iter()
            .filter(|n| n.stop.is_some() && n.db.tablets()[tablet].is_serving())
            .map(|n| n.id)
            .collect();
        if let [one] = serving.as_slice() {
            if on.is_none_or(|o| o == *one) {
                return *one;
            }
        }
        assert!(
            Instant::now() < deadline,
            "tablet {tablet}: served by {serving:?}, wanted {on:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Spreads the leaders: tablet `i` on node `i + 1`.
async fn spread(nodes: &[Node]) {
    for t in 0..3 {
        wait_served(nodes, t, None).await;
    }
    for t in 1..3usize {
        let target = t as u64 + 1;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !nodes[t].db.tablets()[t].is_serving() {
            // Any node can ask: the request goes to the target's replica.
            let _ = nodes[0].db.elect(t as u64, Some(target)).await;
            assert!(Instant::now() < deadline, "tablet {t} did not move");
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        wait_served(nodes, t, Some(target)).await;
    }
    wait_served(nodes, 0, None).await;
}

async fn fund(db: &Arc<Db>) {
    let accts = accounts();
    db.run_txn(move |t| {
        let accts = accts.clone();
        Box::pin(async move {
            for a in &accts {
                t.put(a, &START.to_le_bytes())?;
            }
            Ok(())
        })
    })
    .await
    .expect("fund");
}

/// The total over every account, read in one transaction on `db`.
async fn total(db: &Arc<Db>) -> i64 {
    db.run_txn(|t| {
        Box::pin(async move {
            let mut sum = 0;
            for a in accounts() {
                sum += num(t.get(&a).await?);
            }
            Ok(sum)
        })
    })
    .await
    .expect("total")
}

#[derive(Default)]
struct Tally {
    acked: AtomicU64,
    undetermined: AtomicU64,
    failed: AtomicU64,
}

/// Moves money between random accounts from `db` until `stop`; each transfer also writes a
/// record of itself, so that acknowledged transfers can be counted afterwards.
async fn transfers(
    db: Arc<Db>,
    tag: u64,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tally: Arc<Tally>,
    acked: Arc<parking_lot::Mutex<Vec<Vec<u8>>>>,
) {
    let accts = accounts();
    let mut seq = 0u64;
    while !stop.load(Ordering::Acquire) {
        seq += 1;
        let a = accts[rand::random::<usize>() % accts.len()].clone();
        let b = accts[rand::random::<usize>() % accts.len()].clone();
        if a == b {
            continue;
        }
        let record = format!("\x02z/{tag}/{seq}").into_bytes();
        let r = {
            let record = record.clone();
            db.run_txn(move |t| {
                let (a, b, record) = (a.clone(), b.clone(), record.clone());
                Box::pin(async move {
                    let x = num(t.get(&a).await?);
                    let y = num(t.get(&b).await?);
                    t.put(&a, &(x - 7).to_le_bytes())?;
                    t.put(&b, &(y + 7).to_le_bytes())?;
                    t.put(&record, b"1")?;
                    Ok(())
                })
            })
            .await
        };
        match r {
            Ok(()) => {
                tally.acked.fetch_add(1, Ordering::Relaxed);
                acked.lock().push(record);
            }
            Err(e) if e.is_undetermined() => {
                tally.undetermined.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn records(db: &Arc<Db>) -> Vec<Vec<u8>> {
    db.run_txn(|t| {
        Box::pin(async move {
            let rows = t
                .scan(&tafdb::KeyRange::prefix(b"\x02z/"), usize::MAX)
                .await?;
            Ok(rows.into_iter().map(|(k, _)| k).collect::<Vec<_>>())
        })
    })
    .await
    .expect("records")
}

async fn stop_all(nodes: &mut [Node]) {
    for n in nodes.iter_mut() {
        if let Some(s) = n.stop.take() {
            n.db.shutdown().await;
            let _ = s.send(());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_from_every_node_keep_the_total_with_leaders_on_different_nodes() {
    let mut nodes = three_nodes().await;
    spread(&nodes).await;
    fund(&nodes[1].db).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let acked = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        for j in 0..3u64 {
            tasks.push(tokio::spawn(transfers(
                n.db.clone(),
                i as u64 * 10 + j,
                stop.clone(),
                tally.clone(),
                acked.clone(),
            )));
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Release);
    for t in tasks {
        t.await.expect("task");
    }
    // Nothing moved the leaders: every transfer got an answer.
    let acked_n = tally.acked.load(Ordering::Relaxed);
    assert!(acked_n > 50, "only {acked_n} transfers in 3 s");
    assert_eq!(tally.undetermined.load(Ordering::Relaxed), 0);
    for n in &nodes {
        assert_eq!(
            total(&n.db).await,
            START * 12,
            "the total as node {} reads it",
            n.id
        );
    }
    let mut present = records(&nodes[2].db).await;
    let mut want = acked.lock().clone();
    present.sort();
    want.sort();
    assert_eq!(
        present, want,
        "the records are exactly the acknowledged transfers"
    );
    eprintln!(
        "{acked_n} transfers acknowledged, {} gave up (conflicts)",
        tally.failed.load(Ordering::Relaxed)
    );
    stop_all(&mut nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_transfers_survive_the_loss_of_a_tablet_leader() {
    let mut nodes = three_nodes().await;
    spread(&nodes).await;
    fund(&nodes[0].db).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let acked = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    // Clients on nodes 1 and 3; node 2 (tablet 1's leader) goes away under them.
    for i in [0usize, 2] {
        for j in 0..3u64 {
            tasks.push(tokio::spawn(transfers(
                nodes[i].db.clone(),
                i as u64 * 10 + j,
                stop.clone(),
                tally.clone(),
                acked.clone(),
            )));
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = tally.acked.load(Ordering::Relaxed);
    let killed = Instant::now();
    {
        let n = &mut nodes[1];
        let s = n.stop.take().expect("running");
        let _ = s.send(());
        n.db.shutdown().await;
    }
    let leader = wait_served(&nodes, 1, None).await;
    let elected = killed.elapsed();
    assert_ne!(leader, 2);
    // Transfers go on through the new leader.
    let deadline = Instant::now() + Duration::from_secs(20);
    while tally.acked.load(Ordering::Relaxed) < before + 30 {
        assert!(
            Instant::now() < deadline,
            "no transfers after the leader's loss"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Release);
    for t in tasks {
        t.await.expect("task");
    }
    for i in [0usize, 2] {
        assert_eq!(total(&nodes[i].db).await, START * 12);
    }
    let present = records(&nodes[0].db).await;
    let present: std::collections::BTreeSet<_> = present.into_iter().collect();
    let want = acked.lock().clone();
    let lost: Vec<_> = want.iter().filter(|r| !present.contains(*r)).collect();
    assert!(lost.is_empty(), "acknowledged transfers lost: {lost:?}");
    let und = tally.undetermined.load(Ordering::Relaxed) as usize;
    assert!(
        present.len() <= want.len() + und,
        "{} records for {} acknowledged and {und} undetermined transfers",
        present.len(),
        want.len()
    );
    eprintln!(
        "new leader of tablet 1 after {elected:?}; {} acknowledged, {und} undetermined, {} gave up",
        want.len(),
        tally.failed.load(Ordering::Relaxed)
    );
    stop_all(&mut nodes).await;
}

/// A timestamp from `db`, asking again while the oracle's group elects a leader (`NotLeader`
/// did not happen; on a loaded machine a heartbeat can be late enough for an election).
async fn timestamp(db: &Db) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match db.timestamp().await {
            Ok(ts) => return ts,
            Err(Error::NotLeader { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("timestamp: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_increase_whichever_node_is_asked() {
    let mut nodes = three_nodes().await;
    spread(&nodes).await;
    let mut last = 0;
    for i in 0..300 {
        let n = &nodes[i % 3];
        let ts = timestamp(&n.db).await;
        assert!(ts > last, "node {} gave {ts} after {last}", n.id);
        last = ts;
    }
    // Concurrent callers on a node that does not lead the oracle share fetches, and still get
    // distinct timestamps.
    let db = nodes[2].db.clone();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let db = db.clone();
        set.spawn(async move { timestamp(&db).await });
    }
    let mut seen = std::collections::BTreeSet::new();
    while let Some(r) = set.join_next().await {
        let ts = r.expect("task");
        assert!(ts > last);
        assert!(seen.insert(ts), "{ts} handed out twice");
    }
    // A node that leads nothing cannot be asked to be leader of a tablet it does not host.
    assert!(matches!(
        nodes[0].db.elect(9, None).await,
        Err(Error::InvalidArgument(_))
    ));
    stop_all(&mut nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_holds_tablets_that_other_nodes_lead() {
    let mut nodes = three_nodes().await;
    spread(&nodes).await;
    let key = b"\x02t-pinned".to_vec();
    let put = |db: Arc<Db>, v: u64| {
        let key = key.clone();
        async move {
            db.run_txn(move |t| {
                let key = key.clone();
                Box::pin(async move { t.put(&key, &v.to_le_bytes()) })
            })
            .await
            .expect("put");
        }
    };
    put(nodes[0].db.clone(), 1).await;
    // Node 1 leads tablet 0 only; the key is in tablet 2, which node 3 leads.
    let snap = nodes[0].db.snapshot().await.expect("snapshot");
    // Newer versions, and time for the flusher (200 ms window) to move past the snapshot.
    for v in 2..8 {
        put(nodes[1].db.clone(), v).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let old = nodes[0]
        .db
        .get_at(&key, snap.ts())
        .await
        .expect("read at the snapshot");
    assert_eq!(num(old), 1, "the snapshot's value");
    let at = snap.ts();
    drop(snap);
    // Released: the tablet's floor moves past the snapshot's time.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        put(nodes[1].db.clone(), 9).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Err(Error::SnapshotTooOld { .. }) = nodes[0].db.get_at(&key, at).await {
            break;
        }
        assert!(Instant::now() < deadline, "the pin was never released");
    }
    stop_all(&mut nodes).await;
}

/// Records what a write watch hears.
#[derive(Default)]
struct Heard {
    applied: parking_lot::Mutex<Vec<Vec<u8>>>,
    marks: AtomicU64,
    settled: AtomicU64,
}

impl tafdb::WriteWatch for Heard {
    fn pending(&self, _key: &[u8]) {
        self.marks.fetch_add(1, Ordering::Relaxed);
    }
    fn settled(&self, _key: &[u8]) {
        self.settled.fetch_add(1, Ordering::Relaxed);
    }
    fn locked(&self, _key: &[u8], _locked: bool) {}
    fn applied(&self, key: &[u8]) {
        self.applied.lock().push(key.to_vec());
    }
    fn reset(&self) {}
}

/// A write watch (what keeps the IndexNode's path cache exact) hears every committed write on
/// every replica, in log order, across a leader change; marks are heard and settled on the
/// leaders only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_watches_hear_every_commit_on_every_replica_in_log_order() {
    let mut nodes = three_nodes().await;
    wait_served(&nodes, 0, None).await;
    let heard: Vec<Arc<Heard>> = nodes.iter().map(|_| Arc::new(Heard::default())).collect();
    for (n, h) in nodes.iter().zip(&heard) {
        n.db.tablets()[0]
            .watch(&[1], h.clone())
            .expect("a watch on the tablet holding the prefix");
    }
    assert!(
        nodes[0].db.tablets()[0]
            .watch(&[1], heard[0].clone())
            .is_err(),
        "one watch per tablet"
    );
    let write = |db: Arc<Db>, i: u32| async move {
        db.run_txn(move |t| {
            Box::pin(async move {
                t.put(&[1, (i % 7) as u8, (i / 7) as u8], &i.to_le_bytes())?;
                // Not watched: another prefix of the same tablet.
                t.put(&[0, 9, (i % 5) as u8], &i.to_le_bytes())?;
                Ok(())
            })
        })
        .await
        .expect("commit")
    };
    let mut want = Vec::new();
    for i in 0..60u32 {
        write(nodes[(i % 3) as usize].db.clone(), i).await;
        want.push(vec![1, (i % 7) as u8, (i / 7) as u8]);
    }
    // Move the first tablet's leadership, and write on.
    let from = wait_served(&nodes, 0, None).await;
    let to = from % 3 + 1;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !nodes[(to - 1) as usize].db.tablets()[0].is_serving() {
        let _ = nodes[0].db.elect(0, Some(to)).await;
        assert!(Instant::now() < deadline, "tablet 0 did not move");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for i in 60..120u32 {
        write(nodes[(i % 3) as usize].db.clone(), i).await;
        want.push(vec![1, (i % 7) as u8, (i / 7) as u8]);
    }
    // Every replica applies everything (followers a little later).
    let deadline = Instant::now() + Duration::from_secs(20);
    for (n, h) in nodes.iter().zip(&heard) {
        loop {
            let got = h.applied.lock().clone();
            if got.len() >= want.len() {
                assert_eq!(
                    got, want,
                    "node {} heard the commits in another order",
                    n.id
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {} heard {} of {}",
                n.id,
                got.len(),
                want.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let marks: u64 = heard.iter().map(|h| h.marks.load(Ordering::Relaxed)).sum();
    let settled: u64 = heard
        .iter()
        .map(|h| h.settled.load(Ordering::Relaxed))
        .sum();
    assert!(
        marks >= 120,
        "every commit marked its watched key on a leader: {marks}"
    );
    assert_eq!(marks, settled, "every mark heard was settled");
    stop_all(&mut nodes).await;
}
