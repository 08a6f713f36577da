//! fsck finds each kind of damage, on its own, in a store damaged behind the namespace's back:
//! each case starts from the same healthy tree (directories, files, a hard link, a symlink,
//! extended attributes), breaks one invariant with raw writes, and checks that the report
//! names it. The checks run with tiny pages and a tiny sort budget (the fixture's `fsck`), so
//! the walk re-reads pages, the sorter merges many spilled runs, and the scan pages through
//! the Meta table; a damaged tree with directory cycles must not make the walk loop.

mod common;

use common::{fixture, o, p, root, Fixture, NS};
use coprocessor::ops::{link::Link, symlink::Symlink, xattr_set::XattrSet};
use metastore::keys;
use metastore::{Attr, Dentry, FileType};
use tafdb::DeltaOp;

/// The healthy tree's ids.
#[derive(Clone, Copy)]
struct Tree {
    root: u64,
    a: u64,
    b: u64,
    f: u64,
}

async fn healthy() -> (Fixture, Tree) {
    let f = fixture().await;
    let r = root();
    let a = f.mkdir(&r, "/a", 0o755).await.expect("mkdir");
    let b = f.mkdir(&r, "/a/b", 0o700).await.expect("mkdir");
    let file = f.create(&r, "/a/f").await.expect("create");
    for i in 0..40 {
        f.create(&r, &format!("/a/b/x{i}")).await.expect("create");
        f.mkdir(&r, &format!("/a/d{i}"), 0o755)
            .await
            .expect("mkdir");
    }
    f.svc
        .call(&Link {
            ns: NS.to_vec(),
            cred: r.clone(),
            target: o("/a/f"),
            at: p("/g"),
        })
        .await
        .expect("link");
    f.svc
        .call(&Symlink {
            ns: NS.to_vec(),
            cred: r.clone(),
            at: p("/a/b/s"),
            target: b"../f".to_vec(),
        })
        .await
        .expect("symlink");
    f.svc
        .call(&XattrSet {
            ns: NS.to_vec(),
            cred: r.clone(),
            obj: o("/a/f"),
            name: b"user.k".to_vec(),
            value: b"v".to_vec(),
            flags: 0,
        })
        .await
        .expect("xattr");
    let root_id = f.stat(&r, "/", false).await.expect("stat").id;
    let report = f.fsck().await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.directories, 1 + 2 + 40, "{report}");
    assert_eq!(report.files, 1 + 40 + 1, "{report}");
    assert_eq!(report.entries, 2 + 1 + 40 + 40 + 1 + 1, "{report}");
    (
        f,
        Tree {
            root: root_id,
            a: a.id,
            b: b.id,
            f: file.id,
        },
    )
}

/// The current value of `key`, which must exist.
async fn raw(f: &Fixture, key: &[u8]) -> Vec<u8> {
    let snap = f.db.snapshot().await.expect("snapshot");
    f.db.get_at(key, snap.ts())
        .await
        .expect("get")
        .expect("present")
}

async fn attr(f: &Fixture, id: u64) -> Attr {
    Attr::decode(&raw(f, &keys::attr_key(id)).await).expect("decode")
}

/// One raw write: a put, or a delete when the value is `None`.
type Write = (Vec<u8>, Option<Vec<u8>>);

async fn damage(f: &Fixture, writes: Vec<Write>) {
    f.db.run_txn(move |t| {
        let writes = writes.clone();
        Box::pin(async move {
            for (k, v) in &writes {
                match v {
                    Some(v) => t.put(k, v)?,
                    None => t.delete(k)?,
                }
            }
            Ok(())
        })
    })
    .await
    .expect("damage");
}

/// Damages a fresh healthy tree with `writes(fixture, tree)` and checks that the report is
/// not clean and names every one of `expect(tree)`.
async fn case(
    name: &str,
    writes: impl AsyncFnOnce(&Fixture, Tree) -> Vec<Write>,
    expect: impl FnOnce(Tree) -> Vec<String>,
) {
    let (f, t) = healthy().await;
    let w = writes(&f, t).await;
    damage(&f, w).await;
    let report = f.fsck().await;
    let text = report.to_string();
    assert!(!report.is_clean(), "{name}: not found:\n{text}");
    for e in expect(t) {
        assert!(text.contains(e.as_str()), "{name}: no {e:?} in:\n{text}");
    }
    f.close().await;
}

fn dentry(id: u64, kind: FileType) -> Option<Vec<u8>> {
    Some(Dentry { id, kind }.encode())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_directory_cycle_is_unreachable_and_the_walk_ends() {
    // /a leaves the root and hangs under its own child b: a and b form a cycle no root reaches.
    case(
        "cycle",
        async |f, t| {
            let mut a = attr(f, t.a).await;
            a.parent = t.b;
            a.target = b"up".to_vec();
            vec![
                (keys::dentry_key(t.root, b"a"), None),
                (
                    keys::dentry_key(t.b, b"up"),
                    dentry(t.a, FileType::Directory),
                ),
                (keys::attr_key(t.a), Some(a.encode())),
            ]
        },
        |t| {
            vec![
                format!("directory {} is not reachable from any namespace root", t.a),
                format!("directory {} is not reachable from any namespace root", t.b),
                "entries lie in directories unreachable".into(),
            ]
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_named_inside_itself_is_found_and_the_walk_ends() {
    case(
        "self root",
        async |f, t| {
            let mut r = attr(f, t.root).await;
            r.target = b"me".to_vec();
            vec![
                (
                    keys::dentry_key(t.root, b"me"),
                    dentry(t.root, FileType::Directory),
                ),
                (keys::attr_key(t.root), Some(r.encode())),
            ]
        },
        |t| vec![format!("root {} is named by 1 entries", t.root)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_mistyped_inodes() {
    case(
        "missing",
        async |_, t| vec![(keys::attr_key(t.f), None)],
        |t| vec![format!("/\"f\" names missing inode {}", t.f)],
    )
    .await;
    case(
        "mistyped",
        async |_, t| vec![(keys::dentry_key(t.root, b"g"), dentry(t.f, FileType::Fifo))],
        |t| {
            vec![format!(
                "{}/\"g\" says Fifo, inode {} is Regular",
                t.root, t.f
            )]
        },
    )
    .await;
    case(
        "damaged record",
        async |_, t| vec![(keys::attr_key(t.b), Some(b"junk".to_vec()))],
        |t| {
            vec![
                format!("inode {}: ", t.b),
                format!("/\"b\" names missing inode {}", t.b),
                "entries lie in directories unreachable".into(),
            ]
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_links_and_usage() {
    case(
        "nlink",
        async |f, t| {
            let mut a = attr(f, t.f).await;
            a.nlink = 1;
            vec![(keys::attr_key(t.f), Some(a.encode()))]
        },
        |t| vec![format!("inode {}: nlink 1 but 2 entries name it", t.f)],
    )
    .await;
    case(
        "entry count",
        async |f, t| {
            let mut a = attr(f, t.a).await;
            a.entries += 1;
            vec![(keys::attr_key(t.a), Some(a.encode()))]
        },
        |t| vec![format!("directory {}: entry count 43 but 42 entries", t.a)],
    )
    .await;
    case(
        "subdirectories",
        async |f, t| {
            let mut a = attr(f, t.a).await;
            a.nlink = 3;
            vec![(keys::attr_key(t.a), Some(a.encode()))]
        },
        |t| vec![format!("directory {}: nlink 3 but 41 subdirectories", t.a)],
    )
    .await;
    case(
        "orphan file",
        async |_, t| {
            vec![
                (keys::dentry_key(t.root, b"g"), None),
                (keys::dentry_key(t.a, b"f"), None),
            ]
        },
        |t| {
            vec![
                format!("inode {} is not reachable from any namespace root", t.f),
                format!("inode {}: nlink 2 but 0 entries", t.f),
                "usage says".into(),
            ]
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_disagreements() {
    case(
        "ghost",
        async |_, t| {
            let ghost = indexnode::IndexEntry {
                id: 999_999,
                mode: 0o40755,
                uid: 0,
                gid: 0,
                locked: false,
            };
            vec![(indexnode::index_key(t.a, b"ghost"), Some(ghost.encode()))]
        },
        |t| {
            vec![format!(
                "Index entry {}/\"ghost\" -> 999999 is not a directory entry",
                t.a
            )]
        },
    )
    .await;
    case(
        "lost",
        async |_, t| vec![(indexnode::index_key(t.a, b"b"), None)],
        |t| {
            vec![format!(
                "directory {} ({}/\"b\") has no Index entry",
                t.b, t.a
            )]
        },
    )
    .await;
    case(
        "mode",
        async |f, t| {
            let mut e =
                indexnode::IndexEntry::decode(&raw(f, &indexnode::index_key(t.a, b"b")).await)
                    .expect("decode");
            e.mode = 0o40777;
            vec![(indexnode::index_key(t.a, b"b"), Some(e.encode()))]
        },
        |t| vec![format!("disagrees with inode {}", t.b)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strays_and_usage() {
    case(
        "xattr",
        async |_, _| vec![(keys::xattr_key(888_888, b"user.x"), Some(b"v".to_vec()))],
        |_| vec!["extended attribute of missing inode 888888".into()],
    )
    .await;
    case(
        "stray entries",
        async |_, t| {
            vec![
                (
                    keys::dentry_key(777_777, b"x"),
                    dentry(t.f, FileType::Regular),
                ),
                (
                    keys::dentry_key(777_777, b"y"),
                    dentry(t.f, FileType::Regular),
                ),
            ]
        },
        |_| vec!["2 entries under missing directory 777777".into()],
    )
    .await;
    case(
        "entries under a file",
        async |_, t| {
            vec![(
                keys::dentry_key(t.f, b"x"),
                dentry(t.b, FileType::Directory),
            )]
        },
        |t| vec![format!("1 entries under non-directory {}", t.f)],
    )
    .await;
    // The usage counters are delta records: add to them directly.
    let (f, t) = healthy().await;
    let key = keys::nsstat_key(t.root);
    f.db.run_txn(move |tx| {
        let key = key.clone();
        Box::pin(async move { tx.delta(&key, DeltaOp::Add { offset: 8, by: 5 }) })
    })
    .await
    .expect("delta");
    let text = f.fsck().await.to_string();
    assert!(text.contains("usage says"), "{text}");
    f.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_lists_a_bounded_number_of_problems() {
    let (f, t) = healthy().await;
    // Every file of /a/b loses its record: 40 problems, more than the 5 listed.
    let mut writes = Vec::new();
    for i in 0..40 {
        let v = raw(&f, &keys::dentry_key(t.b, format!("x{i}").as_bytes())).await;
        writes.push((keys::attr_key(Dentry::decode(&v).expect("decode").id), None));
    }
    damage(&f, writes).await;
    let opts = coprocessor::fsck::Options {
        memory: 4 << 10,
        page: 3,
        max_problems: 5,
        ..Default::default()
    };
    let seen = std::sync::Mutex::new(Vec::new());
    let report = coprocessor::fsck::check_with(&f.db, &opts, &|p| {
        seen.lock().expect("lock").push(p.phase);
    })
    .await
    .expect("fsck");
    assert!(!report.is_clean());
    assert_eq!(report.problems.len(), 5);
    assert!(report.omitted >= 35, "{report}");
    assert!(report.to_string().contains("more not listed"), "{report}");
    let seen = seen.into_inner().expect("lock");
    for phase in ["walking the trees", "sorting", "checking inodes"] {
        assert!(seen.contains(&phase), "{seen:?}");
    }
    f.close().await;
}
