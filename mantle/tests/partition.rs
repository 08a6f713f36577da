//! A network partition between real `mantle serve` processes on loopback. Each node sends its
//! peer traffic from a loopback address of its own (`--peer-source-ip 127.0.0.1N`) and is
//! reached by the others through a fault-injecting TCP proxy (`--advertise` names the proxy),
//! which can refuse and cut the connections coming from chosen nodes. Cutting the leader off
//! from both followers (both directions): the leader, on the minority side, acknowledges no
//! write; the majority elects a new leader and serves; once the partition heals the old
//! leader follows the new one and catches up, every write acknowledged on either side is
//! there exactly as acknowledged, and fsck is clean.

mod common;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::status;
use common::Killed;
use mantle::client::Client;
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy in front of one node.
struct Proxy {
    addr: SocketAddr,
    target: Arc<Mutex<Option<SocketAddr>>>,
    blocked: Arc<Mutex<HashSet<IpAddr>>>,
    /// Open connections by source address, to cut them.
    conns: Arc<Mutex<Vec<(IpAddr, tokio::task::AbortHandle)>>>,
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let target: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let blocked: Arc<Mutex<HashSet<IpAddr>>> = Arc::default();
        let conns: Arc<Mutex<Vec<(IpAddr, tokio::task::AbortHandle)>>> = Arc::default();
        let (t, b, c) = (target.clone(), blocked.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, from)) = listener.accept().await else {
                    return;
                };
                let to = *t.lock().expect("lock");
                if b.lock().expect("lock").contains(&from.ip()) {
                    continue;
                }
                let Some(to) = to else { continue };
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                let mut conns = c.lock().expect("lock");
                conns.retain(|(_, h)| !h.is_finished());
                conns.push((from.ip(), task.abort_handle()));
            }
        });
        Proxy {
            addr,
            target,
            blocked,
            conns,
        }
    }

    /// Refuses (and cuts) connections from `ips`.
    fn block(&self, ips: &[IpAddr]) {
        self.blocked
            .lock()
            .expect("lock")
            .extend(ips.iter().copied());
        for (ip, h) in self.conns.lock().expect("lock").iter() {
            if ips.contains(ip) {
                h.abort();
            }
        }
    }

    fn heal(&self) {
        self.blocked.lock().expect("lock").clear();
    }
}

fn source_ip(node: usize) -> IpAddr {
    IpAddr::from([127, 0, 0, 11 + node as u8])
}

/// The node that `addr` says leads tablet 0 and serves it (0 if none).
async fn serving_leader(addr: &str) -> u64 {
    match status(addr).await {
        Some(s) if s.tablets[0].serving => s.node,
        _ => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_acknowledges_nothing_and_the_majority_serves() {
    let mut proxies = Vec::new();
    for _ in 0..3 {
        proxies.push(Proxy::start().await);
    }
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("dir")).collect();
    let mut procs = Killed(Vec::new());
    let mut addrs: Vec<String> = Vec::new();
    for i in 0..3 {
        let advertise = proxies[i].addr.to_string();
        let source = source_ip(i).to_string();
        let mut args = vec![
            "--advertise",
            advertise.as_str(),
            "--peer-source-ip",
            source.as_str(),
        ];
        let join = proxies[0].addr.to_string();
        if i == 0 {
            args.push("--init");
        } else {
            args.extend(["--join", join.as_str()]);
        }
        let (child, addr) = common::spawn_server(dirs[i].path(), &args);
        *proxies[i].target.lock().expect("lock") = Some(addr.parse().expect("addr"));
        procs.0.push(child);
        addrs.push(addr);
    }
    common::cluster::settled(&addrs[2], 3).await;
    let s = status(&addrs[0]).await.expect("status");
    let old = s.tablets[0].leader as usize - 1;
    let others: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    // Some writes before the partition, through every node.
    let every = Client::connect(&addrs.join(",")).await.expect("connect");
    let mut acked = Vec::new();
    for i in 0..20 {
        let name = format!("/before-{i}");
        every.mkdir(&name, 0o755).await.expect("mkdir before");
        acked.push(name);
    }
    // Cut the leader off from both followers, both ways.
    let cut = Instant::now();
    proxies[old].block(&[source_ip(others[0]), source_ip(others[1])]);
    for &o in &others {
        proxies[o].block(&[source_ip(old)]);
    }
    // The majority elects a leader of its own and serves.
    let majority = Client::connect(&format!("{},{}", addrs[others[0]], addrs[others[1]]))
        .await
        .expect("connect")
        .with_retry_for(Duration::from_secs(20));
    let deadline = Instant::now() + Duration::from_secs(30);
    let new = loop {
        let mut found = 0;
        for &o in &others {
            if serving_leader(&addrs[o]).await == o as u64 + 1 {
                found = o as u64 + 1;
            }
        }
        if found != 0 {
            break found;
        }
        assert!(Instant::now() < deadline, "the majority elected no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let elected = cut.elapsed();
    // The minority side, meanwhile: writes to the old leader are never acknowledged while it
    // is cut off. Each attempt is given 3 s (the server would hold it up to its request
    // timeout).
    let minority = Client::connect(&addrs[old])
        .await
        .expect("connect")
        .with_retry_for(Duration::from_secs(2));
    let minority_tried: Vec<String> = (0..5).map(|i| format!("/minority-{i}")).collect();
    let mut attempts = Vec::new();
    for name in minority_tried.clone() {
        let m = minority.clone();
        attempts.push(tokio::spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(3), m.mkdir(&name, 0o755)).await;
            matches!(r, Ok(Ok(_))).then_some(name)
        }));
    }
    // The majority acknowledges writes.
    let mut first_majority_ack = None;
    for i in 0..30 {
        let name = format!("/majority-{i}");
        majority
            .mkdir(&name, 0o755)
            .await
            .expect("mkdir on the majority");
        first_majority_ack.get_or_insert_with(|| cut.elapsed());
        acked.push(name);
    }
    // Nor does it answer reads from its stale state: a name the majority made is not
    // reported missing.
    let stale = tokio::time::timeout(Duration::from_secs(3), minority.stat("/majority-0")).await;
    if let Ok(Err(e)) = &stale {
        assert_ne!(
            e.errno,
            coprocessor::Errno::ENOENT,
            "a stale read on the cut-off leader: {e}"
        );
    }
    assert!(
        !matches!(stale, Ok(Ok(_))),
        "the cut-off leader knows a name it never saw"
    );
    let mut minority_acked = Vec::new();
    for a in attempts {
        minority_acked.extend(a.await.expect("task"));
    }
    assert!(
        minority_acked.is_empty(),
        "the cut-off leader acknowledged {minority_acked:?}"
    );
    // Heal: the old leader follows the new one and catches up.
    for p in &proxies {
        p.heal();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(&addrs[old]).await;
        let led = s.as_ref().map(|s| s.tablets[0].leader);
        let serving = s.as_ref().is_some_and(|s| s.tablets[0].serving);
        if led == Some(new) && !serving {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old leader did not follow node {new} after the heal ({led:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every acknowledged write is there, read through the old leader's node too (it forwards
    // to the new leader); the minority's attempts were not acknowledged and are not there.
    let through_old = Client::connect(&addrs[old]).await.expect("connect");
    let missing = common::cluster::lost(&through_old, &acked).await;
    assert!(missing.is_empty(), "acknowledged and lost: {missing:?}");
    let absent = common::cluster::lost(&through_old, &minority_tried).await;
    let resurrected: Vec<&String> = minority_tried
        .iter()
        .filter(|n| !absent.contains(n))
        .collect();
    let report = through_old.fsck(|_| {}).await.expect("fsck");
    assert!(report.is_clean(), "{report}");
    println!(
        "partition: new leader node {new} after {elapsed:?} (first majority ack after {first:?}); \
         {acked} acknowledged, 0 of {tried} minority writes acknowledged ({res} applied after the heal)",
        elapsed = elected,
        first = first_majority_ack,
        acked = acked.len(),
        tried = minority_tried.len(),
        res = resurrected.len(),
    );
    drop(procs);
}
