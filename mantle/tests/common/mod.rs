//! Helpers the end-to-end tests share.

#![allow(dead_code)]

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
