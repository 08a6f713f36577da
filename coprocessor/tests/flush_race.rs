//! The namespace under a flusher that races every operation (20 ms MVCC window, a flush every
//! millisecond): create-then-remove loops whose directory listings, `rmdir`s and usage counters
//! must be exact at every step, with `fsck` running alongside and after.
//!
//! These are the symptoms a probe saw on a running server about 5 s after a burst of unlinks,
//! when the flusher moved the versions to the engines: names whose unlink was acknowledged came
//! back from `readdir`, `rmdir` of an empty directory failed with `ENOTEMPTY`, and `fsck` reported
//! problems on a healthy store.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const TASKS: usize = 3;
const ROUNDS: usize = 12;
const FILES: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_then_remove_under_a_racing_flusher() {
    let f = Arc::new(fixture_with(racing_flusher).await);
    let stop = Arc::new(AtomicBool::new(false));
    // fsck alongside the load: every report must be clean, whatever the flusher does.
    let checker = {
        let (f, stop) = (f.clone(), stop.clone());
        tokio::spawn(async move {
            let mut runs = 0;
            while !stop.load(Ordering::Acquire) {
                let report = f.fsck().await;
                assert!(report.is_clean(), "fsck during the load:\n{report}");
                runs += 1;
            }
            runs
        })
    };
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let r = root();
            let top = format!("/t{t}");
            f.mkdir(&r, &top, 0o755).await.expect("mkdir top");
            for round in 0..ROUNDS {
                let dir = format!("{top}/d{round}");
                f.mkdir(&r, &dir, 0o755).await.expect("mkdir");
                for i in 0..FILES {
                    f.create(&r, &format!("{dir}/f{i}")).await.expect("create");
                }
                // Let some of the versions age into the flusher's window while others are new.
                tokio::time::sleep(Duration::from_millis((round as u64 * 7) % 30)).await;
                for i in 0..FILES {
                    f.unlink(&r, &format!("{dir}/f{i}")).await.expect("unlink");
                    if i % 8 == 7 {
                        let left = f.ls(&dir).await.expect("ls");
                        assert_eq!(
                            left.len(),
                            FILES - i - 1,
                            "{dir} after {} unlinks: {left:?}",
                            i + 1
                        );
                        for name in &left {
                            let n: usize = name[1..].parse().expect("name");
                            assert!(n > i, "{dir}/{name} came back after its unlink");
                        }
                    }
                }
                assert_eq!(f.ls(&dir).await.expect("ls"), Vec::<String>::new(), "{dir}");
                f.rmdir(&r, &dir)
                    .await
                    .expect("rmdir of an emptied directory");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    stop.store(true, Ordering::Release);
    let runs = checker.await.expect("checker");
    assert!(runs > 0);
    // The namespace holds its root and the TASKS top directories, nothing else.
    let usage = f.statfs().await;
    assert_eq!(usage.inodes, 1 + TASKS as u64, "{usage:?}");
    let report = f.fsck().await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.files, 0, "{report}");
}
