//! Access tokens against real `mantle serve` processes: a server started with `--tokens`
//! refuses calls without a listed token, makes an app token act as its pinned user whatever
//! the client claims, squashes root for a `trusted squash` token, keeps administrative calls
//! for admin tokens, and keeps Raft messages for node tokens; a cluster whose nodes share the
//! file forms, forwards and serves. Bad token files stop the server with the line at fault.

mod common;

use std::time::{Duration, Instant};

use common::{spawn_server, Killed};
use coprocessor::Errno;
use indexnode::Cred;
use mantle::client::Client;

const ADMIN: &str = "adm-0123456789abcdef";
const NODE: &str = "node-0123456789abcdef";
const FUSE: &str = "fuse-0123456789abcdef";
const ETL: &str = "etl-0123456789abcdef";

fn token_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("tokens");
    std::fs::write(
        &path,
        format!(
            "# the test's tokens\n\
             ops   admin   {ADMIN}\n\
             peer  node    {NODE}\n\
             mount trusted {FUSE} squash\n\
             etl   app     {ETL} uid=1000 gid=1000 groups=1000,2000\n"
        ),
    )
    .expect("write tokens");
    path
}

/// Runs the CLI against `addr` with `MANTLE_TOKEN` set to `token` (or unset).
fn cli(addr: &str, token: Option<&str>, args: &[&str]) -> std::process::Output {
    let mut cmd = common::mantle_bin();
    cmd.args(["--addr", addr]).args(args);
    match token {
        Some(t) => cmd.env("MANTLE_TOKEN", t),
        None => cmd.env_remove("MANTLE_TOKEN"),
    };
    cmd.output().expect("run mantle")
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn as_token(addr: &str, token: Option<&str>) -> Client {
    Client::connect_with_token(addr, token)
        .await
        .expect("connect")
        .with_cred(Cred::root())
        .with_retries(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_decide_who_may_call_and_as_whom() {
    let dir = tempfile::tempdir().expect("dir");
    let tokens = token_file(dir.path());
    let data = dir.path().join("data");
    let (child, addr) = spawn_server(&data, &["--tokens", tokens.to_str().expect("path")]);
    let _procs = Killed(vec![child]);

    // No token, or one the file does not list: refused before anything runs.
    for t in [None, Some("not-a-listed-token-at-all")] {
        let e = as_token(&addr, t)
            .await
            .mkdir("/nope", 0o755)
            .await
            .expect_err("refused");
        assert_eq!(e.errno, Errno::EACCES, "{e:?}");
        assert!(e.message.contains("access token"), "{}", e.message);
    }
    let admin = as_token(&addr, Some(ADMIN)).await;
    assert!(
        matches!(admin.stat("/nope").await, Err(e) if e.errno == Errno::ENOENT),
        "nothing was created"
    );
    // The admin token acts as the root it claims.
    let shared = admin.mkdir("/shared", 0o777).await.expect("mkdir as root");
    assert_eq!(shared.uid, 0);
    // The app token is pinned to uid 1000, whatever the client claims.
    let etl = as_token(&addr, Some(ETL)).await;
    let mine = etl.mkdir("/shared/etl", 0o755).await.expect("mkdir");
    assert_eq!((mine.uid, mine.gid), (1000, 1000));
    let e = etl.mkdir("/in-root", 0o755).await.expect_err("not root");
    assert_eq!(e.errno, Errno::EACCES, "{e:?}");
    // A trusted token with root squash: root becomes nobody; another user stays itself.
    let mount = as_token(&addr, Some(FUSE)).await;
    assert_eq!(
        mount
            .mkdir("/shared/squashed", 0o755)
            .await
            .expect("mkdir")
            .uid,
        65534
    );
    let user = mount.with_cred(Cred {
        uid: 7,
        gid: 7,
        groups: vec![],
    });
    assert_eq!(
        user.mkdir("/shared/seven", 0o755).await.expect("mkdir").uid,
        7
    );
    // Administrative calls need the admin token.
    let e = etl.fsck(|_| {}).await.expect_err("fsck as an app");
    assert_eq!(e.errno, Errno::EPERM, "{e:?}");
    let report = admin.fsck(|_| {}).await.expect("fsck as admin");
    assert!(report.is_clean(), "{report}");

    // The CLI presents a token from a file, or from MANTLE_TOKEN.
    let etl_file = dir.path().join("etl-token");
    std::fs::write(&etl_file, format!("{ETL}\n")).expect("write");
    let out = cli(&addr, None, &["stat", "/shared/etl"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("access token"), "{}", stderr(&out));
    let file = etl_file.to_str().expect("path");
    let out = cli(&addr, None, &["--token-file", file, "stat", "/shared/etl"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(&addr, Some(ADMIN), &["admin", "timestamp"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Raft messages need a node token: an admin token is not one.
    let mut h2 = common::h2_connect(&addr).await;
    for (token, want) in [(ADMIN, "16"), (NODE, "")] {
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("http://{addr}/tafdb.raft.v1.Raft/Vote"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("authorization", format!("Bearer {token}"))
            .body(())
            .expect("request");
        h2 = h2.ready().await.expect("h2 ready");
        let (resp, mut body) = h2.send_request(req, false).expect("send");
        // A refusal may come before the body is sent (the stream is then closed).
        let _ = body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true);
        let resp = resp.await.expect("response");
        let status = resp
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().expect("ascii").to_string())
            .unwrap_or_default();
        if want.is_empty() {
            // Past the token check: the (embedded) node has no Raft group to answer.
            assert_ne!(status, "16", "a node token was refused");
        } else {
            assert_eq!(status, want, "token {token}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_whose_nodes_share_the_token_file_forms_and_serves() {
    let dir = tempfile::tempdir().expect("dir");
    let tokens = token_file(dir.path());
    let t = tokens.to_str().expect("path");
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("dir")).collect();
    let (c1, a1) = spawn_server(dirs[0].path(), &["--init", "--tokens", t]);
    let (c2, a2) = spawn_server(dirs[1].path(), &["--join", &a1, "--tokens", t]);
    let (c3, a3) = spawn_server(dirs[2].path(), &["--join", &a2, "--tokens", t]);
    let _procs = Killed(vec![c1, c2, c3]);
    // The joins and promotions went through with the node token.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = async {
            let ch = tonic::transport::Endpoint::from_shared(format!("http://{a3}"))
                .ok()?
                .connect()
                .await
                .ok()?;
            let ch = mantle::auth::Authed::new(ch, Some(ADMIN)).ok()?;
            mantle::proto::cluster_client::ClusterClient::new(ch)
                .status(mantle::proto::ClusterStatusRequest {})
                .await
                .ok()
        }
        .await;
        if let Some(s) = s {
            let t = &s.get_ref().tablets[0];
            if t.voters.len() == 3 && t.leader != 0 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the cluster did not form");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Status without a token is refused too.
    assert!(!cli(&a3, None, &["admin", "status"]).status.success());
    // A call through a node that does not lead is forwarded with the caller's token, and
    // the leader pins the user.
    for a in [&a2, &a3] {
        let etl = as_token(a, Some(ETL)).await.with_retries(8);
        let name = format!("/e-{}", a.rsplit(':').next().expect("port"));
        let e = etl.mkdir(&name, 0o755).await.expect_err("not root");
        assert_eq!(e.errno, Errno::EACCES, "{e:?}");
        let admin = as_token(a, Some(ADMIN)).await.with_retries(8);
        admin.mkdir(&name, 0o777).await.expect("mkdir as admin");
        let sub = etl
            .mkdir(format!("{name}/x"), 0o755)
            .await
            .expect("mkdir as the app");
        assert_eq!(sub.uid, 1000);
        let e = as_token(a, None)
            .await
            .stat(&name)
            .await
            .expect_err("no token");
        assert_eq!(e.errno, Errno::EACCES);
    }
}

#[test]
fn bad_token_files_stop_the_server_with_the_line_at_fault() {
    let dir = tempfile::tempdir().expect("dir");
    let bad = dir.path().join("bad");
    std::fs::write(&bad, format!("ops admin {ADMIN}\netl app {ETL} uid=1000\n")).expect("write");
    let serve = |args: &[&str], tokens: &std::path::Path| {
        common::mantle_bin()
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .arg("--tokens")
            .arg(tokens)
            .output()
            .expect("run")
    };
    let d1 = dir.path().join("d1");
    let out = serve(&["--data", d1.to_str().expect("path")], &bad);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("line 2") && err.contains("uid= and gid="),
        "{err}"
    );
    // A cluster node needs a node entry to talk to its peers.
    let no_node = dir.path().join("no-node");
    std::fs::write(&no_node, format!("ops admin {ADMIN}\n")).expect("write");
    let d2 = dir.path().join("d2");
    let out = serve(&["--init", "--data", d2.to_str().expect("path")], &no_node);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("node entry"), "{}", stderr(&out));
}
