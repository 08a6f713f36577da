//! Placement on a cluster of real `mantle serve` processes: with `--replicas 3`, nodes beyond
//! three join as spares (learners of every group). A voter that stops answering is replaced
//! by a spare after `--replace-dead-after-s`: the spare becomes a voter of every group (its
//! replicas rebuilt from the leaders' logs or snapshots) and the dead node leaves them. When
//! the node that places (the first tablet's leader) dies itself, its successor takes over.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{finish, lost, status, Cluster};
use mantle::client::Client;

/// Waits until `addr` sees `voters` as the voters of every tablet; returns how long it took.
async fn voters_become(addr: &str, voters: &[u64], within: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        if let Some(s) = status(addr).await {
            if s.tablets.iter().all(|t| t.voters == voters) {
                return t0.elapsed();
            }
        }
        assert!(
            t0.elapsed() < within,
            "the tablets did not get voters {voters:?} within {within:?}: {:?}",
            status(addr).await.map(|s| s.tablets)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Four nodes, three voters per group, the system, Index and Meta tables in tablets of their
/// own: node 4 is a spare. Under a create load, voter 3 is SIGKILLed; within the timeout (2 s
/// here) plus a catch-up, node 4 is a voter of every group and node 3 is gone. Then voter 2 is
/// SIGKILLed too: the groups (nodes 1, 2, 4) keep a quorum only because node 4 holds real
/// replicas, and the load goes on. Nothing acknowledged is lost; fsck is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_voter_is_replaced_by_a_spare() {
    let mut cl = Cluster::start_with_voters(
        4,
        3,
        &[
            "--replicas",
            "3",
            "--replace-dead-after-s",
            "2",
            "--layout",
            "tables",
        ],
    )
    .await;
    let s = status(&cl.addrs[0]).await.expect("status");
    for t in &s.tablets {
        assert_eq!(t.voters, vec![1, 2, 3], "tablet {}", t.id);
        assert_eq!(t.learners, vec![4], "tablet {}", t.id);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let tasks = create_load(&cl.all(), &stop, &acked);
    tokio::time::sleep(Duration::from_secs(1)).await;
    cl.kill(2);
    let replaced = voters_become(&cl.addrs[0], &[1, 2, 4], Duration::from_secs(30)).await;
    let s = status(&cl.addrs[0]).await.expect("status");
    assert!(
        s.nodes.iter().all(|n| n.id != 3),
        "node 3 is still a member: {:?}",
        s.nodes
    );
    // Node 4 now carries a replica the quorum needs.
    let before = acked.lock().expect("lock").len();
    cl.kill(1);
    acks_past(&acked, before + 20, "with nodes 1 and 4 left").await;
    finish(&stop, tasks).await;
    check(&format!("{},{}", cl.addrs[0], cl.addrs[3]), &acked).await;
    let acked = acked.lock().expect("lock").clone();
    println!(
        "voter 3 replaced by spare 4 {replaced:?} after the kill (timeout 2 s); {} creates acknowledged, {before} before the second kill",
        acked.len()
    );
}

/// Four clients that know every node create directories until `stop`; acknowledged names go
/// to `acked`.
fn create_load(
    all: &str,
    stop: &Arc<AtomicBool>,
    acked: &Arc<Mutex<Vec<String>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..4)
        .map(|t| {
            let (all, stop, acked) = (all.to_string(), stop.clone(), acked.clone());
            tokio::spawn(async move {
                let c = Client::connect(&all).await.expect("connect");
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let name = format!("/d{t}-{i}");
                    i += 1;
                    if c.mkdir(&name, 0o755).await.is_ok() {
                        acked.lock().expect("lock").push(name);
                    }
                }
            })
        })
        .collect()
}

/// Every name in `acked` is listed through `addrs`, and fsck is clean.
async fn check(addrs: &str, acked: &Mutex<Vec<String>>) {
    let c = Client::connect(addrs).await.expect("connect");
    let acked = acked.lock().expect("lock").clone();
    let lost = lost(&c, &acked).await;
    assert!(lost.is_empty(), "acknowledged and lost: {lost:?}");
    let report = c.fsck(|_| {}).await.expect("fsck");
    assert!(report.is_clean(), "{report}");
}

/// Waits until more than `n` creates are acknowledged.
async fn acks_past(acked: &Mutex<Vec<String>>, n: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().expect("lock").len() <= n {
        assert!(Instant::now() < deadline, "no writes {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Five nodes, three voters: nodes 4 and 5 are spares. Voter 3 dies and spare 4 replaces it;
/// then node 1 (the first tablet's leader, which places) dies under the load: the new leader
/// takes over placement and replaces node 1 with spare 5, so the groups end on nodes 2, 4
/// and 5. Nothing acknowledged is lost; fsck is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_placement_leader_dies_and_its_successor_replaces_it() {
    let mut cl =
        Cluster::start_with_voters(5, 3, &["--replicas", "3", "--replace-dead-after-s", "2"]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let tasks = create_load(&cl.all(), &stop, &acked);
    acks_past(&acked, 10, "at the start").await;
    cl.kill(2);
    let first = voters_become(&cl.addrs[1], &[1, 2, 4], Duration::from_secs(30)).await;
    let leader = status(&cl.addrs[1]).await.expect("status").tablets[0].leader;
    assert_eq!(leader, 1, "node 1 leads and places");
    cl.kill(0);
    let second = voters_become(&cl.addrs[1], &[2, 4, 5], Duration::from_secs(40)).await;
    let n = acked.lock().expect("lock").len();
    acks_past(&acked, n + 20, "on nodes 2, 4 and 5").await;
    finish(&stop, tasks).await;
    check(
        &format!("{},{},{}", cl.addrs[1], cl.addrs[3], cl.addrs[4]),
        &acked,
    )
    .await;
    println!(
        "spare 4 replaced voter 3 {first:?} after its kill; spare 5 replaced node 1 (the placing leader) {second:?} after its kill; {} creates acknowledged",
        acked.lock().expect("lock").len()
    );
}
