//! Scripts through the real server: the SDK and the `mantle script` CLI against `mantle
//! serve` on a loopback port, and a three-node cluster whose every replica ends on the same
//! version after pushes under load.

// A failed unwrap is the test failing, with the error printed.
#![allow(clippy::unwrap_used)]

mod common;

use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{cli_ok, mantle_bin, spawn_server, Killed};
use coprocessor::Errno;
use mantle::client::Client;

fn example(name: &str) -> String {
    format!("{}/../dsl/examples/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn cli(addr: &str, args: &[&str]) -> std::process::Output {
    mantle_bin()
        .args(["--addr", addr])
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_are_pushed_called_and_swapped_through_the_cli_and_the_sdk() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr) = spawn_server(dir.path(), &[]);
    let _procs = Killed(vec![child]);
    let os = |s: &'static str| OsStr::new(s);

    // The Spark commit as one call.
    cli_ok(
        &addr,
        &[
            os("script"),
            os("push"),
            os("spark-commit"),
            OsStr::new(&example("spark_commit.rhai")),
        ],
    );
    for d in [
        "/w",
        "/w/t",
        "/w/t/_temporary",
        "/w/t/_temporary/0",
        "/w/t/_temporary/0/task_0",
    ] {
        cli_ok(&addr, &[os("mkdir"), OsStr::new(d)]);
    }
    cli_ok(&addr, &[os("touch"), os("/w/t/_temporary/0/task_0/part-0")]);
    let out = cli_ok(
        &addr,
        &[
            os("script"),
            os("call"),
            os("spark-commit"),
            os("commit_job"),
            os("/w/t"),
        ],
    );
    assert_eq!(out.trim(), "1");
    let ls = cli_ok(&addr, &[os("ls"), os("/w/t")]);
    assert!(
        ls.contains("part-0") && ls.contains("_SUCCESS") && !ls.contains("_temporary"),
        "{ls}"
    );

    // A hook policy, bound in the default namespace.
    let out = cli_ok(
        &addr,
        &[
            os("script"),
            os("push"),
            os("name-policy"),
            OsStr::new(&example("name_policy.rhai")),
            os("--hook"),
            os("before_mkdir:/w"),
        ],
    );
    assert!(
        out.contains("name-policy\tv1") && out.contains("before_mkdir:/w@default"),
        "{out}"
    );
    let bad = cli(&addr, &["mkdir", "/w/Bad Name"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("EINVAL") && err.contains("naming rule"),
        "{err}"
    );
    cli_ok(&addr, &[os("mkdir"), os("/w/good_name")]);

    // A push that does not compile names the line; the previous version serves on.
    let broken = dir.path().join("broken.rhai");
    std::fs::write(&broken, "fn before_mkdir(args) {\n  let = 1;\n}\n").unwrap();
    let out = cli(
        &addr,
        &["script", "push", "name-policy", broken.to_str().unwrap()],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2") && err.contains("EINVAL"), "{err}");
    assert!(!cli(&addr, &["mkdir", "/w/Still Bad"]).status.success());

    // Only root pushes; anyone may list and show.
    let out = cli(
        &addr,
        &[
            "--uid",
            "1000",
            "script",
            "push",
            "x",
            broken.to_str().unwrap(),
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("EPERM"));
    let list = cli_ok(&addr, &[os("--uid"), os("1000"), os("script"), os("list")]);
    assert!(
        list.contains("spark-commit\tv1") && list.contains("name-policy\tv1"),
        "{list}"
    );
    let shown = cli_ok(&addr, &[os("script"), os("show"), os("spark-commit")]);
    assert_eq!(
        shown.trim_end(),
        std::fs::read_to_string(example("spark_commit.rhai"))
            .unwrap()
            .trim_end()
    );

    // Versions through the SDK: push, call, rollback, disable.
    let c = Client::connect(&addr).await.unwrap();
    let v = |n: i64| format!("fn f(x) {{ [script_version(), x * {n}] }}");
    assert_eq!(c.script_push("calc", &v(2), None).await.unwrap().current, 1);
    assert_eq!(c.script_call("calc", "f", "[21]").await.unwrap(), "[1,42]");
    assert_eq!(c.script_push("calc", &v(3), None).await.unwrap().current, 2);
    assert_eq!(c.script_call("calc", "f", "[21]").await.unwrap(), "[2,63]");
    cli_ok(&addr, &[os("script"), os("rollback"), os("calc"), os("1")]);
    assert_eq!(c.script_call("calc", "f", "[21]").await.unwrap(), "[1,42]");
    cli_ok(&addr, &[os("script"), os("disable"), os("calc")]);
    assert_eq!(
        c.script_call("calc", "f", "[1]").await.unwrap_err().errno,
        Errno::ENOSYS
    );
    assert_eq!(
        c.script_call("calc", "f", "{").await.unwrap_err().errno,
        Errno::EINVAL
    );
    assert_eq!(
        c.script_call("nope", "f", "").await.unwrap_err().errno,
        Errno::ENOSYS
    );

    // A hostile call fails alone; the server answers the next call.
    c.script_push("bad", "fn spin() { loop {} }", None)
        .await
        .unwrap();
    let e = c.script_call("bad", "spin", "").await.unwrap_err();
    assert_eq!(e.errno, Errno::ECANCELED, "{}", e.message);
    assert!(
        e.message.contains("\"bad\" v1") && e.message.contains("operation limit"),
        "{}",
        e.message
    );
    cli_ok(&addr, &[os("stat"), os("/w")]);

    let fsck = cli_ok(&addr, &[os("fsck")]);
    assert!(fsck.contains("clean"), "{fsck}");
}

#[test]
fn script_test_runs_a_file_s_tests_against_a_scratch_store() {
    let ok = mantle_bin()
        .args(["script", "test", &example("name_policy.rhai")])
        .args([
            "--hook",
            "before_mkdir:/warehouse",
            "--hook",
            "before_create:/warehouse",
        ])
        .args(["--hook", "before_rename:/warehouse"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(out.contains("5 passed, 0 failed"), "{out}");
    // Without the hooks, the policy tests fail: the runner reports them and exits 1.
    let bad = mantle_bin()
        .args(["script", "test", &example("name_policy.rhai")])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&bad.stdout);
    assert_eq!(bad.status.code(), Some(1), "{out}");
    assert!(out.contains("FAILED  test_bad_names_are_refused"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_swaps_a_script_under_load_and_every_replica_ends_on_the_last_version() {
    let mut cl = common::cluster::Cluster::start(3, &[]).await;
    let c = Arc::new(Client::connect(&cl.all()).await.unwrap());
    let src = |v: u64| format!("fn f(x) {{ [{v}, script_version(), x] }}");
    c.script_push("hs", &src(1), None).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..16i64 {
        let (c, stop) = (c.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0i64;
            while !stop.load(Ordering::Relaxed) {
                let r = c
                    .script_call("hs", "f", &format!("[{}]", t * 100_000 + n))
                    .await;
                let r = r.unwrap_or_else(|e| panic!("task {t}: {e}"));
                let v: Vec<i64> = serde_json::from_str(&r).unwrap();
                assert_eq!(v[0], v[1], "the source of version {} ran as {}", v[0], v[1]);
                assert_eq!(v[2], t * 100_000 + n);
                n += 1;
            }
        }));
    }
    for v in 2..=11u64 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(c.script_push("hs", &src(v), None).await.unwrap().current, v);
    }
    common::cluster::finish(&stop, tasks).await;
    // Every node answers with the last version; then without the first node (its replica's
    // registry no longer serves), the new leader's replica does too.
    for a in &cl.addrs {
        let one = Client::connect(a).await.unwrap();
        assert_eq!(
            one.script_call("hs", "f", "[0]").await.unwrap(),
            "[11,11,0]"
        );
    }
    cl.kill(0);
    let rest = Client::connect(&format!("{},{}", cl.addrs[1], cl.addrs[2]))
        .await
        .unwrap();
    assert_eq!(
        rest.script_call("hs", "f", "[7]").await.unwrap(),
        "[11,11,7]"
    );
}
