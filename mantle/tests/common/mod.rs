//! Helpers the end-to-end tests share.

#![allow(dead_code)]

pub mod cluster;

use std::io::BufRead;
use std::process::{Child, Command, Stdio};

/// The `mantle` binary.
pub fn mantle_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mantle"))
}

/// Starts `mantle serve --data DATA --listen 127.0.0.1:0 EXTRA..` and returns it with the
/// address it printed once it was ready.
pub fn spawn_server(data: &std::path::Path, extra: &[&str]) -> (Child, String) {
    let mut child = mantle_bin()
        .args(["serve", "--data"])
        .arg(data)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mantle serve");
    let out = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(out).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("mantle serve exited before it listened")
            .expect("read stdout");
        if let Some(a) = line.strip_prefix("mantle serve: listening on ") {
            break a.to_string();
        }
    };
    (child, addr)
}

/// Server processes, killed (SIGKILL) and reaped when dropped.
pub struct Killed(pub Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A request header for namespace `ns` as root, with no request id.
pub fn root_header(ns: &str) -> Option<mantle::proto::Header> {
    Some(mantle::proto::Header {
        namespace: ns.into(),
        cred: Some(mantle::proto::Cred {
            uid: 0,
            gid: 0,
            groups: vec![],
        }),
        request: None,
    })
}

/// Runs the CLI against `addr`; it must succeed. Returns its stdout.
pub fn cli_ok(addr: &str, args: &[&std::ffi::OsStr]) -> String {
    let out = mantle_bin()
        .args(["--addr", addr])
        .args(args)
        .output()
        .expect("run mantle");
    assert!(
        out.status.success(),
        "mantle {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A stream that announces a `len`-byte Mkdir request and sends only `sent` bytes of it; keeps
/// the stream (and its connection) open while the returned handles live.
pub async fn stalled_stream(
    client: &mut h2::client::SendRequest<bytes::Bytes>,
    addr: &str,
    len: u32,
    sent: usize,
) -> (h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>) {
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/mantle.v1.Mantle/Mkdir"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    *client = client.clone().ready().await.expect("h2 ready");
    let (resp, mut body) = client.send_request(req, false).expect("send");
    let mut frame = vec![0u8];
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend(std::iter::repeat_n(0u8, sent));
    body.send_data(bytes::Bytes::from(frame), false)
        .expect("data");
    (resp, body)
}

pub async fn h2_connect(addr: &str) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// The errno in a gRPC response's headers or trailers.
pub async fn errno_of(resp: h2::client::ResponseFuture) -> Option<i32> {
    let resp = resp.await.ok()?;
    let find = |h: &http::HeaderMap| {
        h.get("x-errno")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    };
    if let Some(e) = find(resp.headers()) {
        return Some(e);
    }
    let mut body = resp.into_body();
    while let Some(d) = body.data().await {
        if d.is_err() {
            break;
        }
    }
    body.trailers().await.ok().flatten().as_ref().and_then(find)
}
