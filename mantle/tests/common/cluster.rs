//! A cluster of real `mantle serve` processes on loopback, for the cluster tests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mantle::proto::cluster_client::ClusterClient;

use super::{spawn_server, Killed};

pub async fn status(addr: &str) -> Option<mantle::proto::ClusterStatusReply> {
    let mut c = ClusterClient::connect(format!("http://{addr}"))
        .await
        .ok()?;
    Some(
        c.status(mantle::proto::ClusterStatusRequest {})
            .await
            .ok()?
            .into_inner(),
    )
}

/// Waits until `addr` sees `voters` voters and a leader; returns the leader's id.
pub async fn settled(addr: &str, voters: usize) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = status(addr).await {
            let t = &s.tablets[0];
            if t.voters.len() == voters && t.leader != 0 {
                return t.leader;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the cluster did not settle at {addr}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn finish(stop: &AtomicBool, tasks: Vec<tokio::task::JoinHandle<()>>) {
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("task");
    }
}

/// A cluster of real `mantle serve` processes on loopback (ports from port 0): node 1 with
/// `--init`, the others joined through it, every one with the same `extra` flags.
pub struct Cluster {
    pub dirs: Vec<tempfile::TempDir>,
    pub procs: Killed,
    pub addrs: Vec<String>,
    pub extra: Vec<String>,
}

impl Cluster {
    /// Starts `n` nodes and waits until the last one sees them all as voters, and a leader.
    pub async fn start(n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_with_voters(n, n, extra).await
    }

    /// Starts `n` nodes and waits until the last one sees `voters` voters (the others are
    /// spares), and a leader.
    pub async fn start_with_voters(n: usize, voters: usize, extra: &[&str]) -> Cluster {
        let dirs: Vec<tempfile::TempDir> =
            (0..n).map(|_| tempfile::tempdir().expect("dir")).collect();
        let mut procs = Killed(Vec::new());
        let mut addrs: Vec<String> = Vec::new();
        for d in &dirs {
            let mut args: Vec<&str> = match addrs.first() {
                None => vec!["--init"],
                Some(first) => vec!["--join", first],
            };
            args.extend_from_slice(extra);
            let (c, a) = spawn_server(d.path(), &args);
            procs.0.push(c);
            addrs.push(a);
        }
        settled(&addrs[n - 1], voters).await;
        Cluster {
            dirs,
            procs,
            addrs,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Every node's address, comma-separated (what a client that knows them all is given).
    pub fn all(&self) -> String {
        self.addrs.join(",")
    }

    /// SIGKILLs node `i` (0-based) and reaps it.
    pub fn kill(&mut self, i: usize) {
        self.procs.0[i].kill().expect("kill -9");
        self.procs.0[i].wait().expect("wait");
    }

    /// Starts node `i` again on its data directory and address.
    pub fn restart(&mut self, i: usize) {
        let port = self.addrs[i].rsplit(':').next().expect("port").to_string();
        self.procs.0[i] = super::mantle_bin()
            .args(["serve", "--data"])
            .arg(self.dirs[i].path())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(&self.extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("restart");
    }

    /// Waits (up to a minute) until node `i` has applied within `slack` entries of node `of`.
    pub async fn caught_up(&self, i: usize, of: usize, slack: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let target = status(&self.addrs[of]).await.map(|s| s.tablets[0].applied);
            let now = status(&self.addrs[i]).await.map(|s| s.tablets[0].applied);
            if let (Some(t), Some(n)) = (target, now) {
                if n + slack >= t {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not catch up ({now:?} of {target:?})",
                i + 1
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Waits until `addr` sees tablet `tablet` led by `node`.
pub async fn led_by(addr: &str, tablet: u64, node: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = status(addr).await {
            if s.tablets.iter().any(|t| t.id == tablet && t.leader == node) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "tablet {tablet} is not led by node {node}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Moves tablet 1's leadership to node 2 and tablet 2's to node 3 (through node 1), and waits
/// until node 1 sees it.
pub async fn move_leaders_apart(cl: &Cluster) {
    for (tablet, node) in [(1u64, 2u64), (2, 3)] {
        let out = super::cli_ok(
            &cl.addrs[0],
            &[
                "admin".as_ref(),
                "move-leader".as_ref(),
                tablet.to_string().as_ref(),
                node.to_string().as_ref(),
            ],
        );
        assert!(out.contains(&format!("led by node {node}")), "{out}");
    }
    led_by(&cl.addrs[0], 0, 1).await;
    led_by(&cl.addrs[0], 1, 2).await;
    led_by(&cl.addrs[0], 2, 3).await;
}

/// The names of `acked` that `c` does not list under `/`.
pub async fn lost(c: &mantle::client::Client, acked: &[String]) -> Vec<String> {
    let names: std::collections::HashSet<String> = c
        .list("/", false)
        .await
        .expect("list")
        .into_iter()
        .map(|e| format!("/{}", String::from_utf8_lossy(&e.name)))
        .collect();
    acked
        .iter()
        .filter(|n| !names.contains(*n))
        .cloned()
        .collect()
}
