//! The TopDirPathCache never answers what the Index table would not: tasks rename, chmod,
//! chown, rmdir and mkdir directories of a deep tree while other tasks resolve deep paths as
//! several users, each lookup twice in one transaction (through the cache, then by reading
//! every level), and the two answers must agree. The cache is small, so it evicts all the
//! time; one run also makes the flusher race everything (a 20 ms MVCC window).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use coprocessor::api::Obj;
use coprocessor::resolve::{directory, namespace, namespace_cached, object};
use coprocessor::service::Options;
use coprocessor::Errno;
use indexnode::{CacheConfig, Cred};
use metastore::FileType;
use tafdb::DbConfig;

/// Directory names at every level.
const NAMES: [&str; 3] = ["a", "b", "c"];
const DEPTH: usize = 7;

/// A small xorshift generator: reproducible from the printed seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn path(&mut self, min: usize, max: usize) -> String {
        let depth = min + self.below(max - min + 1);
        let mut p = String::from("/r");
        for _ in 0..depth {
            p.push('/');
            p.push_str(NAMES[self.below(NAMES.len())]);
        }
        p
    }
}

fn users() -> [Cred; 4] {
    [
        Cred::root(),
        Cred {
            uid: 1000,
            gid: 1000,
            groups: vec![],
        },
        Cred {
            uid: 2000,
            gid: 2000,
            groups: vec![1000],
        },
        Cred {
            uid: 3000,
            gid: 3000,
            groups: vec![],
        },
    ]
}

type Answer = Result<(u64, FileType), Errno>;

fn errno(e: coprocessor::OpError) -> Errno {
    match e {
        coprocessor::OpError::Fs(e) => e.errno,
        // A store error (a conflict, a snapshot too old): not about the tree.
        coprocessor::OpError::Store(_) => Errno::EAGAIN,
    }
}

/// Whether an answer says something about the tree (not a store hiccup to retry).
fn definite(a: &Answer) -> bool {
    matches!(
        a,
        Ok(_) | Err(Errno::ENOENT | Errno::ENOTDIR | Errno::EACCES)
    )
}

async fn run(tune: fn(&mut DbConfig), seed: u64) {
    let options = Options {
        path_cache: Some(CacheConfig {
            keep_last: 2,
            capacity: 24,
        }),
    };
    let f = Arc::new(fixture_with_options(tune, &options).await);
    let r = root();
    f.mkdir(&r, "/r", 0o755).await.expect("mkdir /r");
    let mut rng = Rng(seed);
    for _ in 0..40 {
        let path = rng.path(3, DEPTH);
        let mut at = String::from("/r");
        for part in path.split('/').skip(2) {
            at.push('/');
            at.push_str(part);
            match f.mkdir(&r, &at, 0o755).await {
                Ok(_) => {}
                Err(e) if e.errno == Errno::EEXIST => {}
                Err(e) => panic!("mkdir {at}: {e}"),
            }
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let mutations = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..3u64 {
        let (f, stop, mutations) = (f.clone(), stop.clone(), mutations.clone());
        writers.push(tokio::spawn(async move {
            let mut rng = Rng(seed ^ (w + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let r = root();
            while !stop.load(Ordering::Acquire) {
                let done = match rng.below(10) {
                    0..=2 => {
                        // Within a parent, or across the tree (renames into one's own subtree
                        // are refused by the store).
                        let from = rng.path(1, DEPTH - 1);
                        let to = if rng.below(2) == 0 {
                            let (parent, _) = from.rsplit_once('/').expect("parent");
                            format!("{parent}/{}", NAMES[rng.below(NAMES.len())])
                        } else {
                            rng.path(1, DEPTH - 1)
                        };
                        f.rename(&r, &from, &to, 0).await.is_ok()
                    }
                    3..=4 => {
                        let modes = [0o755, 0o750, 0o700, 0o711, 0o705];
                        let mode = modes[rng.below(modes.len())];
                        f.chmod(&r, &rng.path(1, DEPTH), mode).await.is_ok()
                    }
                    5 => {
                        let uid = [0, 1000, 2000][rng.below(3)];
                        let gid = [0, 1000][rng.below(2)];
                        f.chown(&r, &rng.path(1, DEPTH), uid, gid).await.is_ok()
                    }
                    6 => f.rmdir(&r, &rng.path(1, DEPTH)).await.is_ok(),
                    _ => f.mkdir(&r, &rng.path(1, DEPTH), 0o755).await.is_ok(),
                };
                if done {
                    mutations.fetch_add(1, Ordering::Relaxed);
                }
                tokio::task::yield_now().await;
            }
        }));
    }

    let compared = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for t in 0..4u64 {
        let (f, stop, compared) = (f.clone(), stop.clone(), compared.clone());
        readers.push(tokio::spawn(async move {
            let mut rng = Rng(seed ^ (t + 11).wrapping_mul(0xD1B5_4A32_D192_ED03));
            let users = users();
            while !stop.load(Ordering::Acquire) {
                // Lookups on a local store never wait: let the runtime's timers run.
                tokio::task::yield_now().await;
                let path = rng.path(3, DEPTH + 1);
                let cred = &users[rng.below(users.len())];
                let obj = Obj::path(path.as_bytes());
                let Ok(mut txn) = f.db.begin().await else {
                    continue;
                };
                let Ok(ns) = namespace_cached(f.svc.ctx(), &mut txn, NS).await else {
                    continue;
                };
                let cached: Answer = object(&mut txn, &ns, &obj, cred)
                    .await
                    .map(|t| (t.id, t.kind))
                    .map_err(errno);
                let Ok(ns) = namespace(&mut txn, NS).await else {
                    continue;
                };
                let read: Answer = object(&mut txn, &ns, &obj, cred)
                    .await
                    .map(|t| (t.id, t.kind))
                    .map_err(errno);
                if definite(&cached) && definite(&read) {
                    assert_eq!(
                        cached,
                        read,
                        "{path} as uid {} at snapshot {} (seed {seed})",
                        cred.uid,
                        txn.start_ts()
                    );
                    compared.fetch_add(1, Ordering::Relaxed);
                }
                // The IndexNode's one-call lookup (DirectStat) of the same path.
                let Ok(ns_cached) = namespace_cached(f.svc.ctx(), &mut txn, NS).await else {
                    continue;
                };
                let cached: Answer = directory(&mut txn, &ns_cached, path.as_bytes(), cred)
                    .await
                    .map(|e| (e.id, FileType::Directory))
                    .map_err(errno);
                let read: Answer = directory(&mut txn, &ns, path.as_bytes(), cred)
                    .await
                    .map(|e| (e.id, FileType::Directory))
                    .map_err(errno);
                if definite(&cached) && definite(&read) {
                    assert_eq!(
                        cached, read,
                        "lookup {path} as uid {} (seed {seed})",
                        cred.uid
                    );
                    compared.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, Ordering::Release);
    for w in writers {
        w.await.expect("writer");
    }
    for r in readers {
        r.await.expect("reader");
    }
    let stats = f.svc.path_cache_stats().expect("a cache");
    let (compared, mutations) = (
        compared.load(Ordering::Relaxed),
        mutations.load(Ordering::Relaxed),
    );
    println!("seed {seed}: {compared} lookups compared, {mutations} mutations, {stats:?}");
    assert!(compared > 500, "too few lookups compared: {compared}");
    assert!(mutations > 100, "too few mutations: {mutations}");
    assert!(stats.hits > 100, "the cache was hardly used: {stats:?}");
    assert!(stats.invalidations > 10, "{stats:?}");
    assert!(stats.evicted > 0, "{stats:?}");
    assert!(stats.entries <= 24, "{stats:?}");
    let report = f.fsck().await;
    assert!(report.is_clean(), "{report}");
    if let Ok(f) = Arc::try_unwrap(f) {
        f.close().await;
    }
}

fn seed() -> u64 {
    std::env::var("PATH_CACHE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_lookups_agree_with_the_index_table() {
    run(|_| {}, seed()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_lookups_agree_with_the_index_table_under_a_racing_flusher() {
    run(racing_flusher, seed()).await;
}
