//! Ambiguous outcomes: the server is `kill -9`ed after it committed a mutation and before the
//! client heard the reply. A proxy between the SDK and a real `mantle serve` process watches the
//! server's HTTP/2 frames and kills the server at the first response HEADERS frame (tonic sends
//! it only after the handler returned, so after the commit), dropping the reply. The SDK retries
//! with the same request id against the restarted server, and must get the original success;
//! the namespace must look as if the operation ran once.

mod common;

use std::net::SocketAddr;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use coprocessor::Errno;
use mantle::client::Client;
use mantle::proto;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn spawn_server(data: &std::path::Path) -> (Child, SocketAddr) {
    let (child, addr) = common::spawn_server(data, &[]);
    (child, addr.parse().expect("address"))
}

/// A TCP proxy that, when armed, kills the server at the first response HEADERS frame.
struct Proxy {
    addr: SocketAddr,
    target: Arc<Mutex<Option<SocketAddr>>>,
    armed: Arc<AtomicBool>,
    server: Arc<Mutex<Option<Child>>>,
    killed: Arc<tokio::sync::Notify>,
}

impl Proxy {
    async fn start(server: Child, target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let p = Proxy {
            addr: listener.local_addr().expect("addr"),
            target: Arc::new(Mutex::new(Some(target))),
            armed: Arc::new(AtomicBool::new(false)),
            server: Arc::new(Mutex::new(Some(server))),
            killed: Arc::new(tokio::sync::Notify::new()),
        };
        let (target, armed, server, killed) = (
            p.target.clone(),
            p.armed.clone(),
            p.server.clone(),
            p.killed.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((down, _)) = listener.accept().await else {
                    return;
                };
                let Some(to) = *target.lock() else {
                    continue;
                };
                let Ok(up) = TcpStream::connect(to).await else {
                    // The server is down: the client sees a broken connection and retries.
                    continue;
                };
                let (armed, server, killed) = (armed.clone(), server.clone(), killed.clone());
                tokio::spawn(relay(down, up, armed, server, killed));
            }
        });
        p
    }

    fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    fn stop(&self) {
        if let Some(mut c) = self.server.lock().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn relay(
    down: TcpStream,
    up: TcpStream,
    armed: Arc<AtomicBool>,
    server: Arc<Mutex<Option<Child>>>,
    killed: Arc<tokio::sync::Notify>,
) {
    let (mut down_r, mut down_w) = down.into_split();
    let (mut up_r, mut up_w) = up.into_split();
    let to_server = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut down_r, &mut up_w).await;
    });
    // Server to client, frame by frame: 9-byte header (length:24, type:8, flags:8, stream:32).
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    'read: loop {
        let n = match up_r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut done = 0;
        while buf.len() - done >= 9 {
            let h = &buf[done..done + 9];
            let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
            let kind = h[3];
            let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            if buf.len() - done < 9 + len {
                break;
            }
            if kind == 1 && stream != 0 && armed.swap(false, Ordering::SeqCst) {
                // The reply of a committed call: kill -9 the server and drop the reply.
                if let Some(mut c) = server.lock().take() {
                    c.kill().expect("kill -9 the server");
                    c.wait().expect("reap the server");
                }
                killed.notify_one();
                break 'read;
            }
            done += 9 + len;
        }
        if down_w.write_all(&buf[..done]).await.is_err() {
            break;
        }
        buf.drain(..done);
    }
    to_server.abort();
}

/// Runs `op` with the proxy armed: the server dies after committing it, is restarted, and the
/// SDK's retry must answer for the first attempt.
async fn across_a_kill<T: Send + 'static>(
    proxy: &Proxy,
    data: &std::path::Path,
    op: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    proxy.arm();
    let call = tokio::spawn(op);
    tokio::time::timeout(std::time::Duration::from_secs(30), proxy.killed.notified())
        .await
        .expect("the proxy killed the server at the reply");
    let data = data.to_path_buf();
    let restart = tokio::task::spawn_blocking({
        let (target, server) = (proxy.target.clone(), proxy.server.clone());
        move || {
            let (child, addr) = spawn_server(&data);
            *server.lock() = Some(child);
            *target.lock() = Some(addr);
        }
    });
    restart.await.expect("restart");
    call.await.expect("the call's task")
}

/// A server on a fresh data directory (`DIR/data`), the proxy in front of it, and a client of
/// the proxy.
async fn behind_a_proxy() -> (tempfile::TempDir, Proxy, Client) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, addr) = spawn_server(&dir.path().join("data"));
    let proxy = Proxy::start(server, addr).await;
    let c = Client::connect(&proxy.addr.to_string())
        .await
        .expect("connect");
    (dir, proxy, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutation_whose_reply_was_lost_to_a_kill_9_answers_its_first_result_on_retry() {
    let (dir, proxy, c) = behind_a_proxy().await;
    let data = dir.path().join("data");

    // mkdir: the retry returns the directory the first attempt made, not EEXIST.
    let c2 = c.clone();
    let made = across_a_kill(&proxy, &data, async move { c2.mkdir("/a", 0o755).await })
        .await
        .expect("the retried mkdir succeeds");
    assert_eq!(c.stat("/a").await.expect("stat").id, made.id);

    // rename: the retry succeeds, not ENOENT.
    c.mkdir("/a/x", 0o755).await.expect("mkdir");
    let c2 = c.clone();
    across_a_kill(
        &proxy,
        &data,
        async move { c2.rename("/a/x", "/a/y", 0).await },
    )
    .await
    .expect("the retried rename succeeds");
    assert_eq!(
        c.stat("/a/x").await.expect_err("moved").errno,
        Errno::ENOENT
    );
    c.stat("/a/y").await.expect("there");

    // RENAME_EXCHANGE: swapped once, not swapped back.
    let p = c.create("/a/p", 0o644).await.expect("create");
    let q = c.create("/a/q", 0o600).await.expect("create");
    let c2 = c.clone();
    across_a_kill(&proxy, &data, async move {
        c2.rename("/a/p", "/a/q", coprocessor::ops::rename::RENAME_EXCHANGE)
            .await
    })
    .await
    .expect("the retried exchange succeeds");
    assert_eq!(c.stat("/a/p").await.expect("p").id, q.id);
    assert_eq!(c.stat("/a/q").await.expect("q").id, p.id);

    // link: the retry succeeds (not EEXIST) and the link count is 2, not 3.
    let c2 = c.clone();
    across_a_kill(&proxy, &data, async move { c2.link("/a/p", "/a/p2").await })
        .await
        .expect("the retried link succeeds");
    assert_eq!(c.stat("/a/p").await.expect("p").nlink, 2);

    // unlink: the retry succeeds, not ENOENT.
    let c2 = c.clone();
    across_a_kill(&proxy, &data, async move { c2.unlink("/a/p2").await })
        .await
        .expect("the retried unlink succeeds");
    assert_eq!(c.stat("/a/p").await.expect("p").nlink, 1);
    assert_eq!(c.stat("/a").await.expect("a").entries, 3);

    // The control: the same loss without a request id (the raw stub) turns the success into
    // EEXIST on a retry. This is what the request id prevents.
    let mut raw = proto::mantle_client::MantleClient::connect(format!("http://{}", proxy.addr))
        .await
        .expect("raw connect");
    let req = proto::MkdirRequest {
        header: common::root_header("default"),
        at: Some(proto::Loc {
            kind: Some(proto::loc::Kind::Path(b"/control".to_vec())),
        }),
        mode: 0o755,
    };
    let mut r1 = raw.clone();
    let first = req.clone();
    let lost = across_a_kill(&proxy, &data, async move { r1.mkdir(first).await }).await;
    assert!(lost.is_err(), "the reply was dropped");
    let retried = loop {
        match raw.mkdir(req.clone()).await {
            Err(s) if !mantle::status::has_errno(&s) => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await
            }
            other => break other,
        }
    };
    assert_eq!(
        mantle::status::from_status(&retried.expect_err("EEXIST without an id")).errno,
        Errno::EEXIST
    );
    let fsck = c.fsck(|_| {}).await.expect("fsck");
    assert!(fsck.problems.is_empty(), "{:?}", fsck.problems);
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_refused_as_busy_after_a_lost_answer_reports_an_unknown_outcome() {
    let (dir, proxy, c) = behind_a_proxy().await;
    let data = dir.path().join("data");
    // No EAGAIN retries: the first refusal ends the call.
    let c = c.with_retries(0);
    proxy.arm();
    let c2 = c.clone();
    let call = tokio::spawn(async move { c2.mkdir("/b", 0o755).await });
    tokio::time::timeout(std::time::Duration::from_secs(30), proxy.killed.notified())
        .await
        .expect("the proxy killed the server at the reply");
    // The restarted server's whole request budget (2 MiB) is held by two stalled 1 MiB
    // requests, so the retry is refused with EAGAIN: that attempt did not happen, but the
    // first one did.
    let (child, new) = common::spawn_server(&data, &["--max-inflight-request-mib", "2"]);
    let mut h = common::h2_connect(&new).await;
    // Stalled 1 MiB requests until one is refused: the server takes them in any order, and
    // a refusal means the 2 MiB are held (two requests of exactly 1 MiB leave nothing).
    let mut held = Vec::new();
    loop {
        let (resp, body) = common::stalled_stream(&mut h, &new, 1 << 20, 10).await;
        let mut answer = tokio::spawn(common::errno_of(resp));
        match tokio::time::timeout(std::time::Duration::from_secs(1), &mut answer).await {
            Ok(r) => {
                assert_eq!(r.expect("join"), Some(11), "a request past the budget");
                break;
            }
            Err(_) => held.push((answer, body)),
        }
        assert!(held.len() < 10, "the budget never ran out");
    }
    *proxy.server.lock() = Some(child);
    *proxy.target.lock() = Some(new.parse().expect("address"));
    let e = call.await.expect("task").expect_err("refused");
    assert_eq!(
        e.errno,
        Errno::ETIMEDOUT,
        "after a lost answer, giving up is 'unknown', never 'did not happen': {e}"
    );
    // Reset the stalled streams (their response futures live in the answer tasks), which
    // gives their budget back.
    for (answer, body) in held {
        answer.abort();
        drop(body);
    }
    let fresh = Client::connect(&proxy.addr.to_string())
        .await
        .expect("connect");
    fresh.stat("/b").await.expect("the first attempt committed");
    proxy.stop();
}
