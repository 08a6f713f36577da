//! Hostile and unlucky clients against a real `mantle serve` process: sockets that never speak
//! HTTP/2, streams that announce a big message and stall, too many connections, and a SIGTERM
//! while all of that is open. The server must bound what they hold, keep serving others, and
//! stop within its grace period.
//!
//! `soak_slow_clients` (ignored; `cargo test -p mantle --release --test hostile -- --ignored
//! --nocapture`) runs the attack at full size and prints the server's memory.

mod common;

use common::{errno_of, h2_connect, stalled_stream};

use std::time::{Duration, Instant};

use coprocessor::Errno;
use mantle::client::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Waits until the server closes `s` (EOF or reset), at most `within`.
async fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

/// How many file descriptors process `pid` has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Sends SIGTERM to `server` and waits for it to exit; returns how long that took.
async fn stop(mut server: std::process::Child) -> Duration {
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -TERM");
    let t = Instant::now();
    let status = tokio::task::spawn_blocking(move || server.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success(), "a clean exit on SIGTERM: {status:?}");
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_bounded_and_shutdown_closes_them_after_the_grace_period() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, addr) = common::spawn_server(
        &dir.path().join("data"),
        &[
            "--max-connections",
            "40",
            "--handshake-timeout-ms",
            "300",
            "--max-inflight-request-mib",
            "4",
            "--request-timeout-ms",
            "3000",
            "--shutdown-grace-ms",
            "500",
        ],
    );
    // Sockets that never finish the HTTP/2 preface are closed after the handshake timeout.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        s.write_all(b"PRI").await.expect("a few bytes");
        slow.push(s);
    }
    let started = Instant::now();
    for s in &mut slow {
        assert!(
            closed_by_server(s, Duration::from_secs(5)).await,
            "a slow socket stayed open"
        );
    }
    let closed_after = started.elapsed();
    assert!(closed_after < Duration::from_secs(3), "{closed_after:?}");
    // Past the connection limit, connections are closed at once.
    let fds = open_fds(server.id());
    let mut held = Vec::new();
    for _ in 0..40 {
        held.push(h2_connect(&addr).await);
    }
    let mut extra = TcpStream::connect(&addr).await.expect("connect");
    assert!(
        closed_by_server(&mut extra, Duration::from_secs(2)).await,
        "the 41st connection was not closed"
    );
    drop(held);
    // Wait until the server has seen them all go (its descriptors say so).
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_fds(server.id()) > fds {
        assert!(
            Instant::now() < deadline,
            "the server kept closed connections"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Streams that announce 1 MB and send 100 bytes: 4 MiB of budget holds four of them
    // (each holds its announced length); the rest are refused with EAGAIN, not buffered.
    let mut h2c = h2_connect(&addr).await;
    let mut bodies = Vec::new();
    let mut answers = Vec::new();
    for _ in 0..9 {
        let (resp, body) = stalled_stream(&mut h2c, &addr, 1_000_000, 100).await;
        bodies.push(body);
        answers.push(tokio::spawn(async move {
            tokio::time::timeout(Duration::from_secs(2), errno_of(resp)).await
        }));
    }
    let mut refused = 0;
    let mut stalled = 0;
    for a in answers {
        match a.await.expect("join") {
            Ok(Some(11)) => refused += 1,
            Ok(other) => panic!("a stalled stream answered {other:?}"),
            Err(_) => stalled += 1,
        }
    }
    assert_eq!(
        (stalled, refused),
        (4, 5),
        "four fit the budget, five get EAGAIN at once"
    );
    // The request timeout ends the stalled streams and gives their budget back; the SDK's
    // EAGAIN retries then get through.
    let c = Client::connect(&addr).await.expect("connect");
    c.mkdir("/alive", 0o755)
        .await
        .expect("a normal client is served");
    drop(bodies);
    // SIGTERM with an idle connection, a stalled stream and a half-open socket: the server
    // exits after the grace period, not never.
    let idle = h2_connect(&addr).await;
    let half = stalled_stream(&mut h2c, &addr, 1000, 10).await;
    let mut raw = TcpStream::connect(&addr).await.expect("connect");
    raw.write_all(b"P").await.expect("byte");
    let took = stop(server).await;
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    eprintln!("slow sockets closed after {closed_after:?}; shutdown took {took:?}");
    drop((idle, half, raw, c));
    assert_eq!(Errno::EAGAIN.code(), 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: minutes of hostile load; see docs/operations.md"]
async fn soak_slow_clients() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, addr) = common::spawn_server(&dir.path().join("data"), &[]);
    let pid = server.id();
    let c = Client::connect(&addr).await.expect("connect");
    c.mkdir("/warm", 0o755).await.expect("mkdir");
    let base = rss_kib(pid, "VmRSS:");
    // 20 connections x 100 streams announcing 1 MB and sending 100 bytes.
    let mut streams = Vec::new();
    let mut refused = 0;
    for _ in 0..20 {
        let mut h = h2_connect(&addr).await;
        for _ in 0..100 {
            streams.push(stalled_stream(&mut h, &addr, 1_000_000, 100).await);
        }
        streams.push((
            stalled_stream(&mut h, &addr, 10, 1).await.0,
            stalled_stream(&mut h, &addr, 10, 1).await.1,
        ));
    }
    // 700 sockets that send one byte.
    let mut slow = Vec::new();
    for _ in 0..700 {
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        let _ = s.write_all(b"P").await;
        slow.push(s);
    }
    let loaded = rss_kib(pid, "VmRSS:");
    let t = Instant::now();
    let mut open = 0;
    for s in &mut slow {
        if !closed_by_server(s, Duration::from_secs(15)).await {
            open += 1;
        }
    }
    let slow_closed = t.elapsed();
    // A normal client meanwhile.
    let t = Instant::now();
    c.mkdir("/during", 0o755)
        .await
        .expect("served during the attack");
    let served = t.elapsed();
    for (resp, _) in streams.drain(..) {
        if let Ok(Some(11)) = tokio::time::timeout(Duration::from_secs(40), errno_of(resp)).await {
            refused += 1;
        }
    }
    let peak = rss_kib(pid, "VmHWM:");
    let after = rss_kib(pid, "VmRSS:");
    let shutdown = stop(server).await;
    assert_eq!(open, 0, "slow sockets left open");
    println!(
        "RSS: {base} KiB before, {loaded} KiB under attack, peak {peak} KiB, {after} KiB after; \
         {refused} of 2000 stalled streams refused (EAGAIN); 700 slow sockets closed within \
         {slow_closed:?}; a mkdir during the attack took {served:?}; shutdown {shutdown:?}"
    );
}
