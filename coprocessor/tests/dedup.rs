//! Request ids: a mutation retried under the same id answers its first reply and runs once;
//! a superseded request does not run; expired records go.

mod common;

use common::*;
use coprocessor::dedup::{self, RequestId};
use coprocessor::ops::{mkdir::Mkdir, stat::Stat};
use coprocessor::Errno;

fn id(slot: u32, seq: u64) -> Option<RequestId> {
    Some(RequestId {
        client: *b"0123456789abcdef",
        slot,
        seq,
    })
}

fn mkdir(path: &str) -> Mkdir {
    Mkdir {
        ns: NS.to_vec(),
        cred: root(),
        at: p(path),
        mode: 0o755,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_answers_the_first_reply_and_a_superseded_request_does_not_run() {
    let f = fixture().await;
    let first = f
        .svc
        .call_once(&mkdir("/a"), id(0, 1))
        .await
        .expect("mkdir");
    let again = f
        .svc
        .call_once(&mkdir("/a"), id(0, 1))
        .await
        .expect("retry");
    assert_eq!(first, again, "the retry answers the first reply");
    // Without the id, or under a new one, it is a new mkdir.
    assert_eq!(
        f.svc.call(&mkdir("/a")).await.expect_err("exists").errno,
        Errno::EEXIST
    );
    assert_eq!(
        f.svc
            .call_once(&mkdir("/a"), id(1, 2))
            .await
            .expect_err("a new request")
            .errno,
        Errno::EEXIST
    );
    // Slot 0 moves on to seq 3.
    f.svc
        .call_once(&mkdir("/b"), id(0, 3))
        .await
        .expect("mkdir b");
    // Seq 1 of slot 0 was superseded: its outcome stays unknown and it does not run.
    let e = f
        .svc
        .call_once(&mkdir("/c"), id(0, 1))
        .await
        .expect_err("superseded");
    assert_eq!(e.errno, Errno::ETIMEDOUT, "{e}");
    assert_eq!(
        f.svc
            .call(&Stat {
                ns: NS.to_vec(),
                cred: root(),
                obj: o("/c"),
            })
            .await
            .expect_err("/c was not made")
            .errno,
        Errno::ENOENT
    );
    // Out-of-range ids are refused.
    assert_eq!(
        f.svc
            .call_once(&mkdir("/d"), id(dedup::MAX_SLOTS, 9))
            .await
            .expect_err("slot out of range")
            .errno,
        Errno::EINVAL
    );
    // Reads carry no record.
    let stat = Stat {
        ns: NS.to_vec(),
        cred: root(),
        obj: o("/a"),
    };
    f.svc.call_once(&stat, id(5, 10)).await.expect("stat");
    f.svc.call_once(&stat, id(5, 10)).await.expect("stat again");
    // Expiry: everything written before now goes: slot 0's record (slot 1's request was
    // refused, and a refusal records nothing).
    let removed = dedup::expire(&f.db, tafdb::tso::now_ms() + 1)
        .await
        .expect("expire");
    assert_eq!(removed, 1);
    assert_eq!(dedup::expire(&f.db, u64::MAX).await.expect("expire"), 0);
    // With the record gone, the old id is a new request again.
    assert_eq!(
        f.svc
            .call_once(&mkdir("/b"), id(0, 3))
            .await
            .expect_err("no record any more")
            .errno,
        Errno::EEXIST
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_attempts_of_one_request_run_it_once() {
    let f = std::sync::Arc::new(fixture().await);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            f.svc.call_once(&mkdir("/once"), id(3, 7)).await
        }));
    }
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.expect("task").expect("every attempt succeeds"));
    }
    assert!(
        replies.windows(2).all(|w| w[0] == w[1]),
        "one reply for all"
    );
    let report = coprocessor::fsck::check(&f.db, &|_| {})
        .await
        .expect("fsck");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// `Service::call` runs operations directly in this process; a remote caller reaches the same
/// code through the coprocessor registry, by name, with the request encoded. Both must answer
/// alike: replies, errnos, and a request id's recorded reply whichever path retries it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_direct_path_and_the_coprocessor_by_name_answer_alike() {
    use coprocessor::ops::lookup::Lookup;
    let f = fixture().await;
    let direct = f
        .svc
        .call_once(&mkdir("/d"), id(1, 1))
        .await
        .expect("mkdir");
    // A retry by name answers the direct call's recorded reply, and the other way round.
    let by_name = f
        .svc
        .call_by_name(&mkdir("/d"), id(1, 1))
        .await
        .expect("retry by name");
    assert_eq!(direct.id, by_name.id);
    let first = f
        .svc
        .call_by_name(&mkdir("/e"), id(2, 1))
        .await
        .expect("mkdir by name");
    let again = f
        .svc
        .call_once(&mkdir("/e"), id(2, 1))
        .await
        .expect("retry");
    assert_eq!(first.id, again.id);
    // Errors decode the same.
    for path in ["/d", "/missing/x"] {
        let a = f.svc.call(&mkdir(path)).await.expect_err("fails");
        let b = f
            .svc
            .call_by_name(&mkdir(path), None)
            .await
            .expect_err("fails");
        assert_eq!(a.errno, b.errno, "{path}: {a} / {b}");
    }
    // A read-only operation runs as a snapshot reader either way.
    let lookup = |path: &str| Lookup {
        ns: NS.to_vec(),
        cred: root(),
        path: path.as_bytes().to_vec(),
    };
    let a = f.svc.call(&lookup("/d")).await.expect("lookup");
    let b = f
        .svc
        .call_by_name(&lookup("/d"), None)
        .await
        .expect("lookup");
    assert_eq!((a.id, a.mode), (b.id, b.mode));
    assert_eq!(a.id, direct.id);
    let a = f.svc.call(&lookup("/nope")).await.expect_err("ENOENT");
    let b = f
        .svc
        .call_by_name(&lookup("/nope"), None)
        .await
        .expect_err("ENOENT");
    assert_eq!((a.errno, b.errno), (Errno::ENOENT, Errno::ENOENT));
    let stat = Stat {
        ns: NS.to_vec(),
        cred: root(),
        obj: o("/e"),
    };
    assert_eq!(
        f.svc.call(&stat).await.expect("stat").id,
        f.svc.call_by_name(&stat, None).await.expect("stat").id
    );
    f.close().await;
}
