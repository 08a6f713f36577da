//! The example scripts of `dsl/examples/`, each bound or called as its header says.

// A failed unwrap is the test failing, with the error printed.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use coprocessor::api::Loc;
use coprocessor::ops::{mkdir::Mkdir, rmdir::Rmdir, unlink::Unlink};
use coprocessor::Errno;
use dsl::Value;
use indexnode::Cred;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_name_policy_refuses_bad_names_under_its_prefix_only() {
    let f = fixture().await;
    let root = Cred::root();
    f.mkdir(&root, "/warehouse").await.unwrap();
    f.push_hooks(
        "name-policy",
        &example("name_policy.rhai"),
        &[
            ("before_mkdir", "/warehouse"),
            ("before_create", "/warehouse"),
            ("before_rename", "/warehouse"),
        ],
    )
    .await
    .unwrap();
    f.mkdir(&root, "/warehouse/sales_2026").await.unwrap();
    f.create(&root, "/warehouse/sales_2026/part-00000.parquet")
        .await
        .unwrap();
    f.mkdir(&root, "/warehouse/sales_2026/_temporary")
        .await
        .unwrap();
    for bad in [
        "/warehouse/Sales",
        "/warehouse/.hidden",
        "/warehouse/x.tmp",
        "/warehouse/a b",
    ] {
        let e = f.mkdir(&root, bad).await.unwrap_err();
        assert_eq!(e.errno, Errno::EINVAL, "{bad}: {}", e.message);
        assert!(e.message.contains("naming rule"), "{}", e.message);
        assert!(!f.exists(bad).await);
    }
    let e = f
        .create(&root, "/warehouse/sales_2026/Bad.csv")
        .await
        .unwrap_err();
    assert_eq!(e.errno, Errno::EINVAL);
    // Outside the prefix anything goes; a rename into it is checked.
    f.mkdir(&root, "/Home").await.unwrap();
    f.create(&root, "/Home/Notes.TXT").await.unwrap();
    let e = f
        .rename("/Home/Notes.TXT", "/warehouse/Notes.TXT")
        .await
        .unwrap_err();
    assert_eq!(e.errno, Errno::EINVAL);
    assert!(f.exists("/Home/Notes.TXT").await);
    f.rename("/Home/Notes.TXT", "/warehouse/notes.txt")
        .await
        .unwrap();

    // The inode form (a FUSE mount's) is checked too: the path is walked up from the parent.
    let parent = f.stat("/warehouse/sales_2026").await.unwrap().id;
    let by_entry = |name: &str| Mkdir {
        ns: NS.to_vec(),
        cred: root.clone(),
        at: Loc::Entry {
            parent,
            name: name.as_bytes().to_vec(),
        },
        mode: 0o755,
    };
    assert_eq!(
        f.svc.call(&by_entry("BAD")).await.unwrap_err().errno,
        Errno::EINVAL
    );
    f.svc.call(&by_entry("good")).await.unwrap();

    // Disabled, the policy stops applying; enabled again, it applies again.
    let set = |v| dsl::ops::set::ScriptSet {
        cred: Cred::root(),
        name: "name-policy".into(),
        version: v,
    };
    f.svc.call(&set(None)).await.unwrap();
    f.mkdir(&root, "/warehouse/NowAllowed").await.unwrap();
    f.svc.call(&set(Some(1))).await.unwrap();
    assert!(f.mkdir(&root, "/warehouse/NotAgain").await.is_err());
    f.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_counts_a_subtree_with_deltas_and_refuses_past_it() {
    let f = fixture().await;
    let root = Cred::root();
    let hooks: Vec<(&str, &str)> = [
        "before_mkdir",
        "before_create",
        "before_symlink",
        "after_mkdir",
        "after_create",
        "after_symlink",
        "after_unlink",
        "after_rmdir",
        "before_rename",
        "after_rename",
    ]
    .iter()
    .map(|e| (*e, "/"))
    .collect();
    f.mkdir(&root, "/p").await.unwrap();
    f.mkdir(&root, "/p/old").await.unwrap();
    f.create(&root, "/p/old/f").await.unwrap();
    f.push_hooks("quota", &example("quota.rhai"), &hooks)
        .await
        .unwrap();
    // Existing entries count: 2 already.
    assert_eq!(
        f.call("quota", "init_quota", vec![s("/p"), i(5)])
            .await
            .unwrap(),
        i(2)
    );
    f.mkdir(&root, "/p/a").await.unwrap();
    f.create(&root, "/p/a/x").await.unwrap();
    f.create(&root, "/p/a/y").await.unwrap();
    let e = f.create(&root, "/p/a/z").await.unwrap_err();
    assert_eq!(e.errno, Errno::EDQUOT, "{}", e.message);
    assert!(!f.exists("/p/a/z").await);
    let usage = f.call("quota", "usage", vec![s("/p")]).await.unwrap();
    assert_eq!(usage.get("used"), Some(&i(5)));
    // A removal frees a slot; a rename out of the quota root frees one, into it takes one.
    f.svc
        .call(&Unlink {
            ns: NS.to_vec(),
            cred: root.clone(),
            at: Loc::Path(b"/p/a/y".to_vec()),
        })
        .await
        .unwrap();
    f.create(&root, "/p/a/z").await.unwrap();
    f.rename("/p/a/z", "/z").await.unwrap();
    assert_eq!(
        f.call("quota", "usage", vec![s("/p")])
            .await
            .unwrap()
            .get("used"),
        Some(&i(4))
    );
    f.create(&root, "/outside").await.unwrap();
    f.rename("/outside", "/p/inside").await.unwrap();
    let e = f.mkdir(&root, "/p/full").await.unwrap_err();
    assert_eq!(e.errno, Errno::EDQUOT);
    f.svc
        .call(&Rmdir {
            ns: NS.to_vec(),
            cred: root.clone(),
            at: Loc::Path(b"/p/old".to_vec()),
        })
        .await
        .unwrap_err(); // not empty
                       // Outside quota roots nothing is counted or refused.
    for n in 0..10 {
        f.create(&root, &format!("/free{n}")).await.unwrap();
    }
    let e = f
        .call("quota", "init_quota", vec![s("/"), i(3)])
        .await
        .unwrap_err();
    assert_eq!(e.errno, Errno::EDQUOT);
    f.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_has_one_record_per_committed_rename_under_its_prefix() {
    let f = fixture().await;
    let root = Cred::root();
    f.mkdir(&root, "/data").await.unwrap();
    f.mkdir(&root, "/tmp").await.unwrap();
    f.push_hooks(
        "audit",
        &example("audit.rhai"),
        &[("after_rename", "/data")],
    )
    .await
    .unwrap();
    f.create(&root, "/data/a").await.unwrap();
    f.rename("/data/a", "/data/b").await.unwrap();
    f.create(&root, "/tmp/t").await.unwrap();
    f.rename("/tmp/t", "/tmp/u").await.unwrap(); // not audited
    f.rename("/data/b", "/tmp/b").await.unwrap(); // out of the prefix: audited
    assert!(f.rename("/data/none", "/data/x").await.is_err()); // failed: no record
    let log = f.call("audit", "recent", vec![i(10)]).await.unwrap();
    let Value::Array(rows) = log else {
        panic!("{log:?}")
    };
    assert_eq!(
        rows,
        vec![
            s("/data/a -> /data/b by uid 0"),
            s("/data/b -> /tmp/b by uid 0")
        ]
    );
    f.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spark_job_commit_moves_every_task_output_up_in_one_transaction() {
    let f = fixture().await;
    let root = Cred::root();
    f.push("spark-commit", &example("spark_commit.rhai"))
        .await
        .unwrap();
    let out = "/warehouse/t1";
    for d in [
        "/warehouse",
        out,
        "/warehouse/t1/_temporary",
        "/warehouse/t1/_temporary/0",
    ] {
        f.mkdir(&root, d).await.unwrap();
    }
    // 8 tasks; a partitioned write: each task writes part files under date=... directories.
    for t in 0..8 {
        let task = format!("{out}/_temporary/0/task_{t:03}");
        f.mkdir(&root, &task).await.unwrap();
        for day in ["date=01", "date=02"] {
            let _ = f.mkdir(&root, &format!("{task}/{day}")).await.unwrap();
            f.create(&root, &format!("{task}/{day}/part-{t:05}.parquet"))
                .await
                .unwrap();
        }
        f.create(&root, &format!("{task}/part-{t:05}.crc"))
            .await
            .unwrap();
    }
    let moved = f
        .call("spark-commit", "commit_job", vec![s(out)])
        .await
        .unwrap();
    // Task 0 moves its two date directories and its .crc; later tasks merge a part file
    // into each date directory and move their .crc: three each.
    assert_eq!(moved, i(8 * 3));
    assert!(!f.exists("/warehouse/t1/_temporary").await);
    assert!(f.exists("/warehouse/t1/_SUCCESS").await);
    for t in 0..8 {
        assert!(
            f.exists(&format!("{out}/date=01/part-{t:05}.parquet"))
                .await
        );
        assert!(
            f.exists(&format!("{out}/date=02/part-{t:05}.parquet"))
                .await
        );
        assert!(f.exists(&format!("{out}/part-{t:05}.crc")).await);
    }
    assert_eq!(f.stat("/warehouse/t1/date=01").await.unwrap().entries, 8);
    // Committing again finds nothing to commit; nothing changes.
    let e = f
        .call("spark-commit", "commit_job", vec![s(out)])
        .await
        .unwrap_err();
    assert_eq!(e.errno, Errno::ENOENT);

    // Two tasks that wrote the same file: the job fails and nothing moved.
    let out2 = "/warehouse/t2";
    for d in [
        out2,
        "/warehouse/t2/_temporary",
        "/warehouse/t2/_temporary/0",
    ] {
        f.mkdir(&root, d).await.unwrap();
    }
    for t in 0..2 {
        let task = format!("{out2}/_temporary/0/task_{t}");
        f.mkdir(&root, &task).await.unwrap();
        f.create(&root, &format!("{task}/same.parquet"))
            .await
            .unwrap();
    }
    let e = f
        .call("spark-commit", "commit_job", vec![s(out2)])
        .await
        .unwrap_err();
    assert_eq!(e.errno, Errno::EEXIST, "{}", e.message);
    assert!(
        f.exists("/warehouse/t2/_temporary/0/task_0/same.parquet")
            .await
    );
    assert!(!f.exists("/warehouse/t2/same.parquet").await);
    let report = coprocessor::fsck::check(&f.db, &|_| {}).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    f.close().await;
}
