//! Replicated tablet groups over the gRPC Raft transport: three nodes (three gRPC servers on
//! loopback, ports from port 0), each hosting a replica of two groups with the real log store
//! and state machine. Both groups share each node's one channel per peer. A commit on a
//! leader is applied on every replica; when the leader's node stops, the two others elect a
//! new leader and go on committing; a restarted node catches up from the log.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{BasicNode, Config, ServerState};
use tafdb::command::{Command, CommandBatch};
use tafdb::engine::EngineKind;
use tafdb::raft::{GrpcNetwork, LogStore, Peers, Raft, RaftRouter, StateMachine, TabletState};
use tafdb::Mutation;
use tokio::net::TcpListener;

const GROUPS: [u64; 2] = [1, 2];

struct Node {
    id: u64,
    addr: String,
    rafts: BTreeMap<u64, Raft>,
    states: BTreeMap<u64, Arc<TabletState>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

fn raft_config(group: u64) -> Arc<Config> {
    Arc::new(
        Config {
            cluster_name: format!("group-{group}"),
            heartbeat_interval: 100,
            election_timeout_min: 400,
            election_timeout_max: 800,
            ..Default::default()
        }
        .validate()
        .expect("config"),
    )
}

/// Starts node `id` on `listener` with its data in `dir` (reopened if it exists).
async fn start(id: u64, listener: TcpListener, dir: &Path) -> Node {
    let addr = listener.local_addr().expect("addr").to_string();
    let peers = Peers::new(id);
    let router = RaftRouter::new();
    let mut rafts = BTreeMap::new();
    let mut states = BTreeMap::new();
    for g in GROUPS {
        let gdir = dir.join(format!("group-{g}"));
        let state = TabletState::open(&gdir.join("state"), &[(2, EngineKind::Lsm)]).expect("state");
        let log = LogStore::open(&gdir.join("raft"), 1 << 20, 16 << 20).expect("log");
        let raft = Raft::new(
            id,
            raft_config(g),
            GrpcNetwork::new(g, peers.clone()),
            log,
            StateMachine::new(state.clone()),
        )
        .await
        .expect("raft");
        router.register(g, raft.clone());
        rafts.insert(g, raft);
        states.insert(g, state);
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = router.service();
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            )
            .await
            .expect("serve");
    });
    Node {
        id,
        addr,
        rafts,
        states,
        stop: Some(stop),
        server: Some(server),
    }
}

async fn stop(n: &mut Node) {
    for r in n.rafts.values() {
        let _ = r.shutdown().await;
    }
    if let Some(s) = n.stop.take() {
        let _ = s.send(());
    }
    if let Some(h) = n.server.take() {
        h.abort();
        let _ = h.await;
    }
}

/// The node that leads `group` among `nodes`, once one does.
async fn leader(nodes: &[&Node], group: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for n in nodes {
            if n.rafts[&group].metrics().borrow().state == ServerState::Leader {
                return n.id;
            }
        }
        assert!(Instant::now() < deadline, "no leader for group {group}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Commits `key = value` in `group` through its leader; returns the entry's log index.
async fn put(leader: &Node, group: u64, ts: u64, key: &[u8], value: &[u8]) -> u64 {
    let batch = CommandBatch::new(vec![Command::Commit {
        commit_ts: ts,
        writes: vec![(key.to_vec(), Mutation::Put(value.to_vec()))],
    }])
    .expect("batch");
    leader.rafts[&group]
        .client_write(batch)
        .await
        .expect("client_write")
        .log_id
        .index
}

async fn applied(n: &Node, group: u64, index: u64, key: &[u8], value: &[u8]) {
    n.rafts[&group]
        .wait(Some(Duration::from_secs(20)))
        .applied_index_at_least(Some(index), "replicated")
        .await
        .expect("applied");
    let got = n.states[&group].mvcc().get(key, u64::MAX - 1).expect("get");
    assert_eq!(got.as_deref(), Some(value), "node {} group {group}", n.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_replicate_over_grpc_and_fail_over() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("dir")).collect();
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.expect("bind"));
    }
    let mut nodes = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        nodes.push(start(i as u64 + 1, l, dirs[i].path()).await);
    }
    let members: BTreeMap<u64, BasicNode> = nodes
        .iter()
        .map(|n| (n.id, BasicNode::new(&n.addr)))
        .collect();
    for g in GROUPS {
        nodes[0].rafts[&g]
            .initialize(members.clone())
            .await
            .expect("initialize");
    }
    let mut ts = 100;
    for g in GROUPS {
        let all: Vec<&Node> = nodes.iter().collect();
        let l = leader(&all, g).await;
        ts += 1;
        let idx = put(
            &nodes[(l - 1) as usize],
            g,
            ts,
            b"k",
            format!("v{g}").as_bytes(),
        )
        .await;
        for n in &nodes {
            applied(n, g, idx, b"k", format!("v{g}").as_bytes()).await;
        }
    }
    // Stop the leader of group 1: the two others elect a new one and commit.
    let all: Vec<&Node> = nodes.iter().collect();
    let old = leader(&all, 1).await;
    let t0 = Instant::now();
    let mut gone = nodes.remove((old - 1) as usize);
    stop(&mut gone).await;
    // Everything of it goes (its engines' locks too) before it comes back.
    drop(gone);
    let rest: Vec<&Node> = nodes.iter().collect();
    let new = leader(&rest, 1).await;
    assert_ne!(new, old);
    ts += 1;
    let at = |nodes: &[Node], id: u64| nodes.iter().position(|n| n.id == id).expect("node");
    let idx = put(&nodes[at(&nodes, new)], 1, ts, b"k2", b"after").await;
    println!(
        "group 1: node {old} stopped, node {new} leads and committed after {:?}",
        t0.elapsed()
    );
    for n in &rest {
        applied(n, 1, idx, b"k2", b"after").await;
    }
    // The stopped node comes back on a new port with the same data and catches up.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let back = start(old, listener, dirs[(old - 1) as usize].path()).await;
    let back_addr = back.addr.clone();
    nodes.push(back);
    // Its peers learn its new address through a membership entry naming it.
    let mut addr = BTreeMap::new();
    addr.insert(old, BasicNode::new(&back_addr));
    nodes[at(&nodes, new)].rafts[&1]
        .change_membership(openraft::ChangeMembers::SetNodes(addr), false)
        .await
        .expect("new address");
    ts += 1;
    let idx = put(&nodes[at(&nodes, new)], 1, ts, b"k3", b"caught up").await;
    let back = &nodes[at(&nodes, old)];
    applied(back, 1, idx, b"k2", b"after").await;
    applied(back, 1, idx, b"k3", b"caught up").await;
    for n in &mut nodes {
        stop(n).await;
    }
}
