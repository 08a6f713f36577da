//! Scripts as operations: the registry (push, versions, rollback, disable), the host API
//! over the call's transaction, and the sandbox (every hostile script fails its own call).

// A failed unwrap is the test failing, with the error printed.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use coprocessor::Errno;
use dsl::ops::list::ScriptList;
use dsl::ops::set::ScriptSet;
use dsl::ops::show::ScriptShow;
use dsl::{Limits, Value};
use indexnode::Cred;

fn errno(r: Result<Value, coprocessor::FsError>) -> (Errno, String) {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => (e.errno, e.message),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_pushed_rolled_back_and_disabled() {
    let f = fixture().await;
    let v1 = f
        .push("calc", "fn add(a, b) { a + b } fn v() { script_version() }")
        .await
        .unwrap();
    assert_eq!((v1.current, v1.latest), (1, 1));
    assert_eq!(
        f.call("calc", "add", vec![i(2), i(40)]).await.unwrap(),
        i(42)
    );
    let v2 = f
        .push("calc", "fn add(a, b) { a * b } fn v() { script_version() }")
        .await
        .unwrap();
    assert_eq!((v2.current, v2.latest), (2, 2));
    assert_eq!(
        f.call("calc", "add", vec![i(2), i(40)]).await.unwrap(),
        i(80)
    );
    assert_eq!(f.call("calc", "v", vec![]).await.unwrap(), i(2));

    // Rollback to 1, then forward to 2 again.
    let set = |v| ScriptSet {
        cred: Cred::root(),
        name: "calc".into(),
        version: v,
    };
    assert_eq!(f.svc.call(&set(Some(1))).await.unwrap().current, 1);
    assert_eq!(
        f.call("calc", "add", vec![i(2), i(40)]).await.unwrap(),
        i(42)
    );
    let shown = f
        .svc
        .call(&ScriptShow {
            name: "calc".into(),
            version: None,
        })
        .await
        .unwrap();
    assert_eq!((shown.version, shown.current, shown.latest), (1, 1, 2));
    assert!(shown.source.contains("a + b"));
    let shown = f
        .svc
        .call(&ScriptShow {
            name: "calc".into(),
            version: Some(2),
        })
        .await
        .unwrap();
    assert!(shown.source.contains("a * b"));
    assert_eq!(
        f.svc.call(&set(Some(9))).await.unwrap_err().errno,
        Errno::ENOENT,
        "a version that was never pushed"
    );

    // Disabled: calls fail with ENOSYS; enabling again serves the chosen version.
    assert_eq!(f.svc.call(&set(None)).await.unwrap().current, 0);
    let (e, m) = errno(f.call("calc", "add", vec![i(1), i(1)]).await);
    assert_eq!(e, Errno::ENOSYS, "{m}");
    assert!(m.contains("disabled"), "{m}");
    f.svc.call(&set(Some(2))).await.unwrap();
    assert_eq!(f.call("calc", "add", vec![i(3), i(3)]).await.unwrap(), i(9));

    let list = f.svc.call(&ScriptList {}).await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0].name.as_str(), list[0].current, list[0].latest),
        ("calc", 2, 2)
    );

    // Unknown scripts and functions.
    assert_eq!(errno(f.call("nope", "add", vec![]).await).0, Errno::ENOSYS);
    let (e, m) = errno(f.call("calc", "sub", vec![i(1)]).await);
    assert_eq!(e, Errno::ENOSYS, "{m}");
    assert!(m.contains("calc") && m.contains("sub"), "{m}");
    f.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_that_does_not_compile_is_refused_and_the_previous_version_serves() {
    let f = fixture().await;
    f.push("p", "fn f() { 1 }").await.unwrap();
    let e = f.push("p", "fn f() {\n  let x = ;\n}").await.unwrap_err();
    assert_eq!(e.errno, Errno::EINVAL);
    assert!(e.message.contains("line 2"), "{}", e.message);
    assert_eq!(f.call("p", "f", vec![]).await.unwrap(), i(1));
    let list = f.svc.call(&ScriptList {}).await.unwrap();
    assert_eq!((list[0].current, list[0].latest), (1, 1));

    // Names, admin rights, hook functions.
    assert_eq!(
        f.push("a/b", "fn f() {}").await.unwrap_err().errno,
        Errno::EINVAL
    );
    let e = f
        .svc
        .call(&dsl::ops::push::ScriptPush {
            cred: user(1000),
            name: "p".into(),
            source: "fn f() { 2 }".into(),
            hooks: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.errno, Errno::EPERM);
    let e = f
        .push_hooks("p", "fn f() { 2 }", &[("before_mkdir", "/")])
        .await
        .unwrap_err();
    assert!(e.message.contains("before_mkdir(args)"), "{}", e.message);
    let e = f
        .push_hooks("p", "fn before_chmod(a) {}", &[("before_chmod", "/")])
        .await
        .unwrap_err();
    assert_eq!(e.errno, Errno::EINVAL, "{}", e.message);
    // Modules, eval, sleep and the clock are not there.
    f.push("m", "fn f() { import \"x\" as y; 1 }")
        .await
        .unwrap();
    let (e, m) = errno(f.call("m", "f", vec![]).await);
    assert_eq!(e, Errno::ECANCELED, "{m}");
    f.push("ev", "fn f() { eval(\"1\") }").await.unwrap_err();
    for f_ in ["sleep(1)", "timestamp()"] {
        f.push("t", &format!("fn f() {{ {f_} }}")).await.unwrap();
        let (e, m) = errno(f.call("t", "f", vec![]).await);
        assert_eq!(e, Errno::ECANCELED, "{f_}: {m}");
    }
    f.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_calls_run_in_the_call_transaction_as_the_caller() {
    let f = fixture().await;
    f.push(
        "tree",
        r#"
        fn make(base, n) {
            mkdir(base);
            for i in 0..n { create(join_path(base, `f${i}`)); }
            readdir(base).len()
        }
        fn make_then_fail(base) {
            mkdir(base);
            fail("EDQUOT", "changed my mind");
        }
        fn catch_eexist(base) {
            mkdir(base);
            try { mkdir(base); } catch (e) { return e.name; }
            "no error"
        }
        fn info(p) { let a = stat(p); if a == () { "none" } else { a.kind } }
        fn raw() {
            let k = data_key("x");
            put(k, "hello");
            delta_add(data_key("n"), 0, 5);
            delta_add(data_key("n"), 0, -2);
            [utf8(get(k)), u64_le(get(data_key("n")), 0), scan_prefix(data_prefix(), 10).len()]
        }
        fn forbidden() { let k = blob(1, 0); k.append("hooks/x".to_blob()); put(k, "y"); }
        fn who() { caller().uid }
        fn mk(p, m) { mkdir(p, m).perm }
    "#,
    )
    .await
    .unwrap();
    assert_eq!(
        f.call("tree", "make", vec![s("/a"), i(5)]).await.unwrap(),
        i(5)
    );
    assert!(f.exists("/a/f4").await);
    // A refusal drops everything the call wrote.
    let (e, m) = errno(f.call("tree", "make_then_fail", vec![s("/b")]).await);
    assert_eq!(e, Errno::EDQUOT);
    assert!(
        m.contains("changed my mind") && m.contains("\"tree\" v1"),
        "{m}"
    );
    assert!(!f.exists("/b").await);
    // Errors of namespace calls that wrote nothing are the script's to catch.
    assert_eq!(
        f.call("tree", "catch_eexist", vec![s("/c")]).await.unwrap(),
        s("EEXIST")
    );
    assert!(f.exists("/c").await);
    assert_eq!(
        f.call("tree", "info", vec![s("/a")]).await.unwrap(),
        s("dir")
    );
    assert_eq!(
        f.call("tree", "info", vec![s("/zz")]).await.unwrap(),
        s("none")
    );
    assert_eq!(
        f.call("tree", "raw", vec![]).await.unwrap(),
        Value::Array(vec![s("hello"), i(3), i(2)])
    );
    let (e, m) = errno(f.call("tree", "forbidden", vec![]).await);
    assert_eq!(e, Errno::EPERM, "{m}");

    // As the caller: user 1000 may not create in a 0755 root-owned directory.
    f.call("tree", "mk", vec![s("/d"), i(0o755)]).await.unwrap();
    let (e, _) = errno(
        f.call_as(&user(1000), "tree", "make", vec![s("/d/x"), i(1)])
            .await,
    );
    assert_eq!(e, Errno::EACCES);
    assert_eq!(
        f.call_as(&user(1000), "tree", "who", vec![]).await.unwrap(),
        i(1000)
    );
    f.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_scripts_fail_their_own_call_with_the_limit_named() {
    let limits = Limits {
        max_store_ops: 20_000,
        ..Limits::default()
    };
    let f = fixture_with(limits, |e| {
        e.register_fn("explode", || -> i64 { panic!("a host function bug") });
    })
    .await;
    f.push(
        "bad",
        r#"
        fn spin() { loop { } }
        fn spin_slowly() { let x = 0; loop { x += 1; } }
        fn recurse(n) { recurse(n + 1) }
        fn big_string() { let s = "x"; loop { s += s; } }
        fn big_array() { let a = []; loop { a.push(1); } }
        fn big_map() { let m = #{}; let i = 0; loop { m[`k${i}`] = i; i += 1; } }
        fn boom() { explode() }
        fn many_keys() { for i in 0..1000000 { put(data_key(`k${i}`), "v"); } }
        fn bad_type() { 1 + "x" * 2 }
        fn ok() { 7 }
    "#,
    )
    .await
    .unwrap();
    let cases = [
        ("spin", "operation limit"),
        ("spin_slowly", "operation limit"),
        ("recurse", "call depth"),
        ("big_string", "size limit"),
        ("big_array", "size limit"),
        ("big_map", "size limit"),
        ("boom", "panicked"),
        ("many_keys", "store operation limit"),
        ("bad_type", "error in bad_type"),
    ];
    for (func, want) in cases {
        let args = if func == "recurse" {
            vec![i(0)]
        } else {
            vec![]
        };
        let t = Instant::now();
        let (e, m) = errno(f.call("bad", func, args).await);
        assert_eq!(e, Errno::ECANCELED, "{func}: {m}");
        // Rhai re-measures a growing array on every push, so a huge one may reach the
        // deadline before its size limit: either way the call is stopped, with the reason.
        let stopped = m.contains(want)
            || (func == "big_array" && m.contains("deadline"))
            || (func == "big_map" && m.contains("operation limit"));
        assert!(stopped && m.contains("\"bad\" v1"), "{func}: {m}");
        eprintln!("{func}: {:?}: {m}", t.elapsed());
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{func} took {:?}",
            t.elapsed()
        );
        // The store serves on.
        assert_eq!(f.call("bad", "ok", vec![]).await.unwrap(), i(7));
    }
    f.close().await;

    // The deadline: a generous operation budget, a short wall clock.
    let f = fixture_with(
        Limits {
            max_operations: u64::MAX / 2,
            deadline: Duration::from_millis(200),
            ..Limits::default()
        },
        |_| {},
    )
    .await;
    f.push("slow", "fn spin() { loop { } }").await.unwrap();
    let t = Instant::now();
    let (e, m) = errno(f.call("slow", "spin", vec![]).await);
    assert_eq!(e, Errno::ECANCELED);
    assert!(m.contains("deadline"), "{m}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    f.close().await;
}
