//! Hot swap under load: 64 tasks call a script's operation while it is pushed ten times.
//! No call fails, every result is the one its version computes, each task sees versions only
//! move forward, and the store ends on the last version.

// A failed unwrap is the test failing, with the error printed.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::*;
use dsl::Value;

fn source(v: i64) -> String {
    // Version `v` answers [v, the version it ran as, x * v] and makes one directory.
    format!("fn f(x) {{ mkdir(`/hs/${{x}}`); [{v}, script_version(), x * {v}] }}\n// version {v}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_under_load_fail_no_call_and_every_result_matches_its_version() {
    let f = Arc::new(fixture().await);
    f.mkdir(&indexnode::Cred::root(), "/hs").await.unwrap();
    f.push("hs", &source(1)).await.unwrap();
    const TASKS: i64 = 64;
    const CALLS: i64 = 30;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let mut last = 0;
            let mut seen = Vec::new();
            for c in 0..CALLS {
                let x = t * 1000 + c;
                let r = f.call("hs", "f", vec![i(x)]).await;
                let r = r.unwrap_or_else(|e| panic!("task {t} call {c}: {e}"));
                let Value::Array(a) = r else { panic!("{r:?}") };
                let (v, ran, y) = (
                    a[0].as_int().unwrap(),
                    a[1].as_int().unwrap(),
                    a[2].as_int().unwrap(),
                );
                assert_eq!(v, ran, "the source of version {v} ran as version {ran}");
                assert_eq!(y, x * v);
                assert!(v >= last, "task {t} saw version {v} after {last}");
                last = v;
                seen.push(v);
            }
            seen
        }));
    }
    for v in 2..=11 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let info = f.push("hs", &source(v)).await.unwrap();
        assert_eq!(info.current, v as u64);
    }
    let mut versions = std::collections::BTreeSet::new();
    for t in tasks {
        versions.extend(t.await.unwrap());
    }
    eprintln!("versions seen by calls: {versions:?}");
    assert!(versions.len() > 1, "the pushes happened while calls ran");
    // Every call made its directory exactly once.
    let root = f.stat("/hs").await.unwrap();
    assert_eq!(root.entries, (TASKS * CALLS) as u64);
    assert_eq!(
        f.call("hs", "f", vec![i(-1)]).await.unwrap(),
        Value::Array(vec![i(11), i(11), i(-11)])
    );
    let report = coprocessor::fsck::check(&f.db, &|_| {}).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    match Arc::try_unwrap(f) {
        Ok(f) => f.close().await,
        Err(_) => panic!("fixture still shared"),
    }
}
