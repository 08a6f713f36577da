//! Many clients in ONE directory (the Spark commit pattern): creates, mkdirs, renames and
//! removals side by side. Nothing is lost, the counts are exact, fsck is clean.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::*;
use coprocessor::Errno;

const TASKS: usize = 16;
const ROUNDS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_in_one_directory() {
    let f = Arc::new(fixture().await);
    let r = root();
    f.mkdir(&r, "/job", 0o777).await.expect("mkdir");
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let f = f.clone();
        handles.push(tokio::spawn(async move {
            let cred = if t % 2 == 0 { root() } else { alice() };
            let mut mine = BTreeSet::new();
            for i in 0..ROUNDS {
                let (file, dir) = (format!("/job/f-{t}-{i}"), format!("/job/d-{t}-{i}"));
                f.create(&cred, &file).await.expect("create");
                f.mkdir(&cred, &dir, 0o755).await.expect("mkdir");
                // Spark's commit: rename the attempt directory to its final name.
                let done = format!("/job/part-{t}-{i}");
                f.rename(&cred, &dir, &done, 0).await.expect("rename");
                match i % 4 {
                    0 => f.unlink(&cred, &file).await.expect("unlink"),
                    1 => f.rmdir(&cred, &done).await.expect("rmdir"),
                    _ => {}
                }
                if i % 4 != 0 {
                    mine.insert(file[5..].to_string());
                }
                if i % 4 != 1 {
                    mine.insert(done[5..].to_string());
                }
                // Everyone races for one name: exactly one wins.
                match f.mkdir(&cred, "/job/_SUCCESS", 0o755).await {
                    Ok(_) => mine.insert("_SUCCESS".to_string()),
                    Err(e) => {
                        assert_eq!(e.errno, Errno::EEXIST, "{e}");
                        false
                    }
                };
            }
            mine
        }));
    }
    let mut expected = BTreeSet::new();
    let mut winners = 0;
    for h in handles {
        let mine = h.await.expect("task");
        winners += usize::from(mine.contains("_SUCCESS"));
        expected.extend(mine);
    }
    assert_eq!(winners, 1, "exactly one mkdir of _SUCCESS wins");
    let listed: BTreeSet<String> = f.ls("/job").await.expect("ls").into_iter().collect();
    assert_eq!(listed, expected);
    let dirs = expected.iter().filter(|n| !n.starts_with("f-")).count() as u64;
    let job = f.stat(&r, "/job", false).await.expect("stat");
    assert_eq!(job.nlink, 2 + dirs, "nlink is exact");
    assert_eq!(job.entries, expected.len() as u64);
    let report = f.fsck().await;
    assert!(report.is_clean(), "{report}");
}

/// The Spark driver renames (and chmods) a task-attempt directory while 64 tasks keep creating
/// files in it. The store is allowed only 4 attempts per operation: a rename or chmod that
/// conflicted with every create's delta records would fail with `EAGAIN`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_directory_is_renamed_and_chmoded_under_a_64_task_create_storm() {
    use coprocessor::api::Loc;
    use coprocessor::ops::{mknod::Mknod, setattr::SetAttr};
    use std::sync::atomic::{AtomicBool, Ordering};

    let f = Arc::new(fixture_with(|c| c.max_attempts = 4).await);
    let r = root();
    f.mkdir(&r, "/job", 0o777).await.expect("mkdir");
    let dir = f.mkdir(&r, "/job/attempt-0", 0o777).await.expect("mkdir");
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..64 {
        let (f, stop) = (f.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let (mut made, mut busy) = (BTreeSet::new(), 0u64);
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("part-{t}-{i}");
                i += 1;
                let op = Mknod {
                    ns: NS.to_vec(),
                    cred: root(),
                    at: Loc::Entry {
                        parent: dir.id,
                        name: name.clone().into_bytes(),
                    },
                    mode: 0o644,
                    rdev: 0,
                };
                match f.svc.call(&op).await {
                    Ok(_) => {
                        made.insert(name);
                    }
                    // Did not happen: the create may lose to the rename's field updates.
                    Err(e) if e.errno == Errno::EAGAIN => busy += 1,
                    Err(e) => panic!("create {name}: {e}"),
                }
            }
            (made, busy)
        }));
    }
    let mut at = "/job/attempt-0".to_string();
    for round in 1..=20 {
        // Let the storm build up between the driver's operations.
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        let next = format!("/job/attempt-{round}");
        f.rename(&r, &at, &next, 0)
            .await
            .unwrap_or_else(|e| panic!("round {round}: rename of the busy directory: {e}"));
        at = next;
        let chmod = SetAttr {
            ns: NS.to_vec(),
            cred: root(),
            obj: Some(o(&at)),
            mode: Some(if round % 2 == 0 { 0o777 } else { 0o775 }),
            ..SetAttr::default()
        };
        f.svc
            .call(&chmod)
            .await
            .unwrap_or_else(|e| panic!("round {round}: chmod of the busy directory: {e}"));
    }
    stop.store(true, Ordering::Relaxed);
    let (mut made, mut busy) = (BTreeSet::new(), 0);
    for t in tasks {
        let (m, b) = t.await.expect("task");
        made.extend(m);
        busy += b;
    }
    assert!(made.len() > 64, "the storm ran: {} creates", made.len());
    let after = f.stat(&r, &at, false).await.expect("stat");
    assert_eq!(after.id, dir.id);
    assert_eq!(after.perm(), 0o777);
    assert_eq!(after.entries, made.len() as u64, "entry count exact");
    let listed: BTreeSet<String> = f.ls(&at).await.expect("ls").into_iter().collect();
    assert_eq!(listed, made);
    let report = f.fsck().await;
    assert!(report.is_clean(), "{report}");
    eprintln!(
        "{} creates, {busy} gave up (EAGAIN) during 20 renames and 20 chmods",
        made.len()
    );
}
