//! End-to-end: the real server on a loopback port, driven through the SDK, the raw gRPC stubs
//! (malformed and oversized requests) and the `mantle` binary (including a `kill -9` and a
//! restart).

mod common;

use common::mantle_bin;
use std::process::Command;

use coprocessor::Errno;
use mantle::client::Client;
use mantle::proto;
use tokio::net::TcpListener;

struct Server {
    addr: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

async fn start() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let data = dir.path().join("data");
    let config = mantle::server::ServerConfig::new(data, listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        mantle::server::serve(
            listener,
            &config,
            move |_| {
                let _ = ready_tx.send(());
            },
            async move {
                let _ = stopped.await;
            },
        )
        .await
        .expect("serve");
    });
    ready_rx.await.expect("server ready");
    Server {
        addr,
        stop: Some(stop),
        task: Some(task),
        _dir: dir,
    }
}

impl Server {
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("server task");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_round_trip() {
    let s = start().await;
    let c = Client::connect(&s.addr).await.expect("connect");
    c.mkdir_p("/data/2026/11", 0o755).await.expect("mkdir -p");
    c.mkdir_p("/data/2026/11", 0o755)
        .await
        .expect("mkdir -p is idempotent");
    for i in 0..5 {
        c.create(format!("/data/2026/11/part-{i:05}"), 0o644)
            .await
            .expect("create");
    }
    // A directory bigger than one page.
    let big = "/data/big";
    c.mkdir(big, 0o755).await.expect("mkdir");
    for i in 0..1500 {
        c.create(format!("{big}/f{i:05}"), 0o644)
            .await
            .expect("create");
    }
    let all = c.list(big, false).await.expect("list");
    assert_eq!(all.len(), 1500);
    assert_eq!(c.stat(big).await.expect("stat").entries, 1500);
    // DirectStat: a directory in one call to the Index table.
    let month = c.stat("/data/2026/11").await.expect("stat");
    let d = c.lookup_dir("/data/2026/11").await.expect("lookup");
    assert_eq!((d.id, d.mode, d.uid), (month.id, month.mode, month.uid));
    assert_eq!(
        c.lookup_dir("/data/2026/11/part-00000")
            .await
            .expect_err("a file")
            .errno,
        Errno::ENOTDIR
    );
    c.rename("/data/2026", "/data/archive", 0)
        .await
        .expect("rename");
    assert_eq!(
        c.stat("/data/2026/11").await.expect_err("gone").errno,
        Errno::ENOENT
    );
    c.symlink("/data/archive/11", "/latest")
        .await
        .expect("symlink");
    assert_eq!(
        c.list("/latest", false)
            .await
            .expect("ls via symlink")
            .len(),
        5
    );
    c.xattr_set("/latest", "user.owner", b"spark", 0)
        .await
        .expect("xattr");
    assert_eq!(
        c.xattr_get("/data/archive/11", "user.owner")
            .await
            .expect("get"),
        b"spark"
    );
    let other = c.clone().with_namespace("nope");
    assert_eq!(
        other.stat("/").await.expect_err("no ns").errno,
        Errno::ENOENT
    );
    c.ns_create("second", 0o755).await.expect("ns create");
    let second = c.clone().with_namespace("second");
    second.mkdir("/only-here", 0o755).await.expect("mkdir");
    assert_eq!(
        c.stat("/only-here").await.expect_err("isolated").errno,
        Errno::ENOENT
    );
    let names: Vec<String> = c
        .ns_list()
        .await
        .expect("list")
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, vec!["default", "second"]);
    let removed = c.remove_all("/data", |_| {}).await.expect("rm -r");
    assert_eq!(removed, 1500 + 5 + 4);
    let report = c.fsck(|_| {}).await.expect("fsck");
    assert!(report.is_clean(), "{report}");
    assert_eq!(
        c.statfs().await.expect("statfs").inodes,
        2,
        "root and /latest"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_are_refused_and_the_server_lives_on() {
    let s = start().await;
    let mut raw = proto::mantle_client::MantleClient::connect(format!("http://{}", s.addr))
        .await
        .expect("connect");
    // No header, no credentials, no target, a bad path, a bad namespace, a bad mode.
    let cred = Some(proto::Cred {
        uid: 0,
        gid: 0,
        groups: vec![],
    });
    let header = |ns: &str| {
        Some(proto::Header {
            namespace: ns.into(),
            cred: cred.clone(),
            request: None,
        })
    };
    let loc = |p: &[u8]| {
        Some(proto::Loc {
            kind: Some(proto::loc::Kind::Path(p.to_vec())),
        })
    };
    let bad = [
        proto::MkdirRequest {
            header: None,
            at: loc(b"/a"),
            mode: 0o755,
        },
        proto::MkdirRequest {
            header: Some(proto::Header {
                namespace: "default".into(),
                cred: None,
                request: None,
            }),
            at: loc(b"/a"),
            mode: 0o755,
        },
        proto::MkdirRequest {
            header: header("default"),
            at: None,
            mode: 0o755,
        },
        proto::MkdirRequest {
            header: header("default"),
            at: loc(b"a/../b"),
            mode: 0o755,
        },
        proto::MkdirRequest {
            header: header("a/b"),
            at: loc(b"/a"),
            mode: 0o755,
        },
        proto::MkdirRequest {
            header: header("default"),
            at: loc(b"/a"),
            mode: 0o170755,
        },
    ];
    for req in bad {
        let err = raw.mkdir(req.clone()).await.expect_err("refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{req:?}: {err}");
        assert_eq!(mantle::status::from_status(&err).errno, Errno::EINVAL);
    }
    let too_many_groups = proto::StatRequest {
        header: Some(proto::Header {
            namespace: "default".into(),
            cred: Some(proto::Cred {
                uid: 1,
                gid: 1,
                groups: vec![7; 10_000],
            }),
            request: None,
        }),
        obj: Some(proto::Obj {
            kind: Some(proto::obj::Kind::Inode(1)),
            follow: false,
        }),
    };
    assert_eq!(
        raw.stat(too_many_groups).await.expect_err("refused").code(),
        tonic::Code::InvalidArgument
    );
    // A request over the size limit is refused before it is decoded.
    let huge = proto::XattrSetRequest {
        header: header("default"),
        obj: Some(proto::Obj {
            kind: Some(proto::obj::Kind::Path(b"/".to_vec())),
            follow: true,
        }),
        name: b"user.big".to_vec(),
        value: vec![0u8; 2 << 20],
        flags: 0,
    };
    let err = raw.xattr_set(huge).await.expect_err("too big");
    assert_eq!(
        mantle::status::from_status(&err).errno,
        Errno::E2BIG,
        "an oversized request carries an errno: {err}"
    );
    // A value under the transport limit but over the xattr limit is E2BIG.
    let c = Client::connect(&s.addr).await.expect("connect");
    let err = c
        .xattr_set("/", "user.big", &vec![0u8; 100_000], 0)
        .await
        .expect_err("E2BIG");
    assert_eq!(err.errno, Errno::E2BIG);
    // Still serving.
    c.mkdir("/alive", 0o755).await.expect("the server lives on");
    s.stop().await;
}

/// The server with a 20 ms MVCC window: between the CLI's calls the flusher moves every
/// version to the engines, so the kill -9 below lands after flushes and durable-index updates.
fn spawn_server(data: &std::path::Path) -> (std::process::Child, String) {
    common::spawn_server(
        data,
        &["--mvcc-window-ms", "20", "--flush-interval-ms", "2"],
    )
}

fn cli(addr: &str, args: &[&str]) -> (bool, String, String) {
    let out = mantle_bin()
        .args(["--addr", addr])
        .args(args)
        .output()
        .expect("run mantle");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_against_a_real_server_process_with_kill_9_and_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (mut server, addr) = spawn_server(&data);
    let server_addr = std::cell::RefCell::new(addr);
    let ok = |args: &[&str]| {
        let (ok, out, err) = cli(&server_addr.borrow(), args);
        assert!(ok, "mantle {args:?} failed: {err}");
        out
    };
    ok(&["mkdir", "-p", "/jobs/run-1/_temporary"]);
    ok(&[
        "touch",
        "/jobs/run-1/_temporary/part-0",
        "/jobs/run-1/_temporary/part-1",
    ]);
    ok(&["mv", "/jobs/run-1/_temporary/part-0", "/jobs/run-1/part-0"]);
    ok(&["ln", "-s", "/jobs/run-1", "/latest"]);
    ok(&["ln", "/jobs/run-1/part-0", "/jobs/hard"]);
    let ls = ok(&["ls", "-l", "/jobs/run-1"]);
    assert!(ls.contains("part-0") && ls.contains("_temporary"), "{ls}");
    assert!(
        ls.lines().any(|l| l.starts_with("-rw-r--r--   2")),
        "nlink 2 shown: {ls}"
    );
    let dir = ok(&["lookup", "/latest"]);
    assert!(
        dir.contains("directory") && dir.contains("mode 0755"),
        "{dir}"
    );
    let status = ok(&["admin", "status"]);
    assert!(
        status.contains("path cache: ") && status.contains(" hits of "),
        "{status}"
    );
    let stat = ok(&["stat", "/latest"]);
    assert!(
        stat.contains("Symlink") && stat.contains("/jobs/run-1"),
        "{stat}"
    );
    let (fail, _, err) = cli(&server_addr.borrow(), &["rm", "/jobs"]);
    assert!(!fail && err.contains("EISDIR"), "{err}");
    let (fail, _, err) = cli(&server_addr.borrow(), &["mkdir", "/jobs"]);
    assert!(!fail && err.contains("EEXIST"), "{err}");
    let (fail, _, err) = cli(&server_addr.borrow(), &["mkdir", "/bad//path"]);
    assert!(!fail && err.contains("EINVAL"), "{err}");
    ok(&["ns", "create", "team-b"]);
    assert!(ok(&["ns", "list"]).contains("team-b"));
    // Every acknowledged change survives kill -9.
    server.kill().expect("kill -9");
    server.wait().expect("wait");
    let (mut server, addr) = spawn_server(&data);
    *server_addr.borrow_mut() = addr;
    let tree = ok(&["tree", "/"]);
    assert!(
        tree.contains("part-0") && tree.contains("part-1") && tree.contains("latest"),
        "{tree}"
    );
    assert!(tree.contains("3 directories, 4 files"), "{tree}");
    let fsck = ok(&["fsck"]);
    assert!(fsck.contains("clean"), "{fsck}");
    ok(&["rm", "-r", "/jobs"]);
    assert!(!ok(&["tree", "/"]).contains("jobs"));
    assert!(ok(&["--ns", "team-b", "ls", "/"]).is_empty());
    // SIGTERM stops the server gracefully.
    let pid = server.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let code = server.wait().expect("wait");
    assert!(code.success(), "graceful exit on SIGTERM: {code:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_survives_closed_pipes_odd_names_and_trees_deeper_than_path_max() {
    use std::io::{BufRead, Read};
    use std::os::unix::ffi::OsStrExt;
    let s = start().await;
    let c = Client::connect(&s.addr).await.expect("connect");
    c.mkdir("/many", 0o755).await.expect("mkdir");
    for i in 0..3000 {
        c.create(format!("/many/f{i:05}"), 0o644)
            .await
            .expect("create");
    }
    // `mantle ls /many | head -1`: the pipe closes early; no panic, a clean exit.
    let addr = s.addr.clone();
    let mut ls = mantle_bin()
        .args(["--addr", &addr, "ls", "/many"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn ls");
    let mut first = String::new();
    std::io::BufReader::new(ls.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("one line");
    assert_eq!(first.trim(), "f00000");
    let status = ls.wait().expect("wait");
    let mut err = String::new();
    ls.stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("stderr");
    assert!(status.success(), "{status:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");

    // A name that is not UTF-8 is printed escaped and addressed by its bytes.
    let odd: &[u8] = b"bad\xff\x01name";
    let mut p = b"/many/".to_vec();
    p.extend_from_slice(odd);
    c.mkdir(&p, 0o755).await.expect("mkdir with a raw name");
    let mut inner = p.clone();
    inner.extend_from_slice(b"/x");
    c.create(&inner, 0o644).await.expect("create");
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    let listing = common::cli_ok(&addr, &[os("ls"), os("/many")]);
    assert!(listing.contains("bad\\xff\\x01name"), "escaped");
    common::cli_ok(
        &addr,
        &[os("rm"), os("-r"), std::ffi::OsStr::from_bytes(&p)],
    );
    assert_eq!(c.lstat(&p).await.expect_err("removed").errno, Errno::ENOENT);

    // A tree deeper than PATH_MAX (4096 bytes), built by inode: printed and removed by inode.
    let mut parent = c.mkdir("/deep", 0o755).await.expect("mkdir").id;
    let name = "d".repeat(40);
    let mut raw = proto::mantle_client::MantleClient::connect(format!("http://{addr}"))
        .await
        .expect("raw");
    for _ in 0..150 {
        let a = raw
            .mkdir(proto::MkdirRequest {
                header: common::root_header("default"),
                at: Some(proto::Loc {
                    kind: Some(proto::loc::Kind::Entry(proto::Entry {
                        parent,
                        name: name.clone().into_bytes(),
                    })),
                }),
                mode: 0o755,
            })
            .await
            .expect("mkdir by inode")
            .into_inner();
        parent = a.attr.expect("attr").id;
    }
    let tree = common::cli_ok(&addr, &[os("tree"), os("/deep")]);
    assert!(tree.contains("150 directories, 0 files"), "{tree:.200}");
    common::cli_ok(&addr, &[os("rm"), os("-r"), os("/deep")]);
    assert_eq!(
        c.stat("/deep").await.expect_err("gone").errno,
        Errno::ENOENT
    );
    let report = c.fsck(|_| {}).await.expect("fsck");
    assert!(report.is_clean(), "{report}");
    // fsck is an administrative call: root only.
    let someone = c.clone().with_cred(indexnode::Cred {
        uid: 1000,
        gid: 1000,
        groups: vec![],
    });
    assert_eq!(
        someone.fsck(|_| {}).await.expect_err("not root").errno,
        Errno::EPERM
    );
    s.stop().await;
}
