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
