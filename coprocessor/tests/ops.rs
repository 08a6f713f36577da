//! Each namespace operation against a real store, with its POSIX errors.

mod common;

use common::*;
use coprocessor::api::{Loc, Obj};
use coprocessor::ops::{
    link::Link,
    readlink::Readlink,
    rename::{RENAME_EXCHANGE, RENAME_NOREPLACE},
    setattr::{SetAttr, TimeSet},
    symlink::Symlink,
    xattr_get::XattrGet,
    xattr_list::XattrList,
    xattr_remove::XattrRemove,
    xattr_set::{XattrSet, XATTR_CREATE},
};
use coprocessor::Errno;
use metastore::FileType;

fn errno<T: std::fmt::Debug>(r: Result<T, coprocessor::FsError>) -> Errno {
    r.expect_err("an error").errno
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mkdir_create_stat_readdir_and_remove() {
    let f = fixture().await;
    let r = root();
    let a = f.mkdir(&r, "/a", 0o755).await.expect("mkdir");
    assert_eq!(a.kind(), FileType::Directory);
    assert_eq!(errno(f.mkdir(&r, "/a", 0o755).await), Errno::EEXIST);
    for i in 0..10 {
        f.create(&r, &format!("/a/f{i}")).await.expect("create");
    }
    f.mkdir(&r, "/a/sub", 0o700).await.expect("mkdir");
    let a = f.stat(&r, "/a", false).await.expect("stat");
    assert_eq!((a.nlink, a.entries), (3, 11));
    let names = f.ls("/a").await.expect("ls");
    assert_eq!(names.len(), 11);
    assert!(names.windows(2).all(|w| w[0] < w[1]), "sorted: {names:?}");
    assert_eq!(errno(f.rmdir(&r, "/a").await), Errno::ENOTEMPTY);
    assert_eq!(errno(f.rmdir(&r, "/a/f1").await), Errno::ENOTDIR);
    assert_eq!(errno(f.unlink(&r, "/a/sub").await), Errno::EISDIR);
    assert_eq!(errno(f.stat(&r, "/a/f1/x", false).await), Errno::ENOTDIR);
    assert_eq!(errno(f.stat(&r, "/nope/x", false).await), Errno::ENOENT);
    assert_eq!(errno(f.create(&r, "/nope/x").await), Errno::ENOENT);
    for i in 0..10 {
        f.unlink(&r, &format!("/a/f{i}")).await.expect("unlink");
    }
    f.rmdir(&r, "/a/sub").await.expect("rmdir");
    f.rmdir(&r, "/a").await.expect("rmdir");
    assert_eq!(errno(f.stat(&r, "/a", false).await), Errno::ENOENT);
    assert_eq!(errno(f.rmdir(&r, "/").await), Errno::EBUSY);
    let report = f.fsck().await;
    assert!(report.is_clean(), "{report}");
    let usage = f.statfs().await;
    assert_eq!(usage.inodes, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_names_and_paths_are_einval_or_enametoolong() {
    let f = fixture().await;
    let r = root();
    for bad in ["", "a", "/a/", "//a", "/a/./b", "/a/../b", "/a\0b"] {
        assert_eq!(
            errno(f.mkdir(&r, bad, 0o755).await),
            Errno::EINVAL,
            "{bad:?}"
        );
    }
    let long = format!("/{}", "x".repeat(256));
    assert_eq!(errno(f.mkdir(&r, &long, 0o755).await), Errno::ENAMETOOLONG);
    let deep = "/ab".repeat(1500);
    assert_eq!(errno(f.stat(&r, &deep, false).await), Errno::ENAMETOOLONG);
    let missing_ns = f
        .svc
        .call(&coprocessor::ops::stat::Stat {
            ns: b"nope".to_vec(),
            cred: r.clone(),
            obj: o("/"),
        })
        .await;
    assert_eq!(errno(missing_ns), Errno::ENOENT);
    assert!(f.fsck().await.is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_rules() {
    let f = fixture().await;
    let r = root();
    f.mkdir(&r, "/d1", 0o755).await.expect("mkdir");
    f.mkdir(&r, "/d1/inner", 0o755).await.expect("mkdir");
    f.mkdir(&r, "/d2", 0o755).await.expect("mkdir");
    f.create(&r, "/d1/f").await.expect("create");
    f.create(&r, "/d2/g").await.expect("create");
    // Into its own subtree.
    assert_eq!(
        errno(f.rename(&r, "/d1", "/d1/inner/x", 0).await),
        Errno::EINVAL
    );
    assert_eq!(errno(f.rename(&r, "/d1", "/d1/x", 0).await), Errno::EINVAL);
    // Type mismatches and non-empty targets.
    assert_eq!(errno(f.rename(&r, "/d1/f", "/d2", 0).await), Errno::EISDIR);
    assert_eq!(errno(f.rename(&r, "/d1", "/d2/g", 0).await), Errno::ENOTDIR);
    assert_eq!(errno(f.rename(&r, "/d2", "/d1", 0).await), Errno::ENOTEMPTY);
    assert_eq!(
        errno(f.rename(&r, "/d1/f", "/d2/g", RENAME_NOREPLACE).await),
        Errno::EEXIST
    );
    assert_eq!(
        errno(f.rename(&r, "/d1/zz", "/d2/g", 0).await),
        Errno::ENOENT
    );
    // A file replaces a file; the old one is gone.
    let g = f.stat(&r, "/d2/g", false).await.expect("stat");
    f.rename(&r, "/d1/f", "/d2/g", 0).await.expect("replace");
    assert_ne!(f.stat(&r, "/d2/g", false).await.expect("stat").id, g.id);
    assert_eq!(errno(f.stat(&r, "/d1/f", false).await), Errno::ENOENT);
    // A directory moves with its subtree, and the Index table follows.
    f.create(&r, "/d1/inner/deep").await.expect("create");
    f.rename(&r, "/d1", "/d2/moved", 0).await.expect("move dir");
    f.stat(&r, "/d2/moved/inner/deep", false)
        .await
        .expect("moved subtree");
    assert_eq!(f.stat(&r, "/d2", false).await.expect("stat").nlink, 3);
    assert_eq!(f.stat(&r, "/", false).await.expect("stat").nlink, 3);
    // An empty directory replaces... is replaced by a directory.
    f.mkdir(&r, "/empty", 0o755).await.expect("mkdir");
    f.rename(&r, "/d2/moved", "/empty", 0)
        .await
        .expect("over an empty dir");
    f.stat(&r, "/empty/inner/deep", false).await.expect("stat");
    // Exchange a file and a directory.
    f.create(&r, "/x").await.expect("create");
    f.rename(&r, "/x", "/empty", RENAME_EXCHANGE)
        .await
        .expect("exchange");
    assert_eq!(
        f.stat(&r, "/x", false).await.expect("stat").kind(),
        FileType::Directory
    );
    f.stat(&r, "/x/inner/deep", false)
        .await
        .expect("exchanged subtree");
    assert_eq!(
        f.stat(&r, "/empty", false).await.expect("stat").kind(),
        FileType::Regular
    );
    // Same entry: nothing happens.
    f.rename(&r, "/x", "/x", 0).await.expect("no-op");
    let report = f.fsck().await;
    assert!(report.is_clean(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_links_share_attributes_and_count_exactly() {
    let f = fixture().await;
    let r = root();
    let a = f.create(&r, "/a").await.expect("create");
    for name in ["/b", "/c"] {
        f.svc
            .call(&Link {
                ns: NS.to_vec(),
                cred: r.clone(),
                target: o("/a"),
                at: p(name),
            })
            .await
            .expect("link");
    }
    f.mkdir(&r, "/d", 0o755).await.expect("mkdir");
    let err = f
        .svc
        .call(&Link {
            ns: NS.to_vec(),
            cred: r.clone(),
            target: o("/d"),
            at: p("/e"),
        })
        .await;
    assert_eq!(errno(err), Errno::EPERM);
    let set = SetAttr {
        ns: NS.to_vec(),
        cred: r.clone(),
        obj: Some(o("/b")),
        mode: Some(0o600),
        size: Some(77),
        ..Default::default()
    };
    f.svc.call(&set).await.expect("setattr");
    let c = f.stat(&r, "/c", false).await.expect("stat");
    assert_eq!((c.id, c.nlink, c.perm(), c.size), (a.id, 3, 0o600, 77));
    f.unlink(&r, "/a").await.expect("unlink");
    f.unlink(&r, "/b").await.expect("unlink");
    assert_eq!(f.stat(&r, "/c", false).await.expect("stat").nlink, 1);
    // Renaming one name of an inode over another name of it does nothing.
    f.svc
        .call(&Link {
            ns: NS.to_vec(),
            cred: r.clone(),
            target: o("/c"),
            at: p("/c2"),
        })
        .await
        .expect("link");
    f.rename(&r, "/c", "/c2", 0).await.expect("same inode");
    assert_eq!(f.stat(&r, "/c", false).await.expect("stat").nlink, 2);
    let report = f.fsck().await;
    assert!(report.is_clean(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_are_followed_in_the_middle_and_loops_end_in_eloop() {
    let f = fixture().await;
    let r = root();
    f.mkdir(&r, "/real", 0o755).await.expect("mkdir");
    f.mkdir(&r, "/real/sub", 0o755).await.expect("mkdir");
    f.create(&r, "/real/sub/file").await.expect("create");
    let sym = |at: &str, target: &str| Symlink {
        ns: NS.to_vec(),
        cred: r.clone(),
        at: p(at),
        target: target.as_bytes().to_vec(),
    };
    f.svc.call(&sym("/abs", "/real")).await.expect("symlink");
    f.svc
        .call(&sym("/real/rel", "sub/../sub"))
        .await
        .expect("symlink");
    f.svc.call(&sym("/loop1", "/loop2")).await.expect("symlink");
    f.svc.call(&sym("/loop2", "/loop1")).await.expect("symlink");
    let file = f.stat(&r, "/real/sub/file", false).await.expect("stat");
    assert_eq!(
        f.stat(&r, "/abs/sub/file", false)
            .await
            .expect("via abs")
            .id,
        file.id
    );
    assert_eq!(
        f.stat(&r, "/abs/rel/file", false)
            .await
            .expect("via rel")
            .id,
        file.id
    );
    let l = f.stat(&r, "/abs", false).await.expect("lstat");
    assert_eq!(l.kind(), FileType::Symlink);
    assert_eq!(
        f.stat(&r, "/abs", true).await.expect("stat").kind(),
        FileType::Directory
    );
    assert_eq!(errno(f.stat(&r, "/loop1/x", false).await), Errno::ELOOP);
    assert_eq!(errno(f.stat(&r, "/loop1", true).await), Errno::ELOOP);
    let t = f
        .svc
        .call(&Readlink {
            ns: NS.to_vec(),
            cred: r.clone(),
            obj: o("/real/rel"),
        })
        .await
        .expect("readlink");
    assert_eq!(t, b"sub/../sub");
    assert_eq!(
        errno(
            f.svc
                .call(&Readlink {
                    ns: NS.to_vec(),
                    cred: r.clone(),
                    obj: o("/real")
                })
                .await
        ),
        Errno::EINVAL
    );
    // Creating through a symlinked directory lands in the real one.
    f.create(&r, "/abs/sub/new")
        .await
        .expect("create via symlink");
    f.stat(&r, "/real/sub/new", false).await.expect("stat");
    assert!(f.fsck().await.is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_and_the_sticky_bit() {
    let f = fixture().await;
    let (r, al) = (root(), alice());
    let bob = indexnode::Cred {
        uid: 2000,
        gid: 2000,
        groups: vec![],
    };
    f.mkdir(&r, "/private", 0o700).await.expect("mkdir");
    f.create(&r, "/private/secret").await.expect("create");
    assert_eq!(
        errno(f.stat(&al, "/private/secret", false).await),
        Errno::EACCES
    );
    assert_eq!(errno(f.create(&al, "/private/mine").await), Errno::EACCES);
    assert_eq!(errno(f.mkdir(&al, "/mine", 0o755).await), Errno::EACCES);
    f.mkdir(&r, "/tmp", 0o1777).await.expect("mkdir");
    f.create(&al, "/tmp/alices")
        .await
        .expect("alice creates in /tmp");
    assert_eq!(errno(f.unlink(&bob, "/tmp/alices").await), Errno::EPERM);
    assert_eq!(
        errno(f.rename(&bob, "/tmp/alices", "/tmp/bobs", 0).await),
        Errno::EPERM
    );
    f.unlink(&al, "/tmp/alices").await.expect("the owner may");
    // chmod by a non-owner is EPERM; by the owner it lands in the Index table too.
    f.mkdir(&al, "/tmp/ad", 0o755).await.expect("mkdir");
    let chmod = |cred: &indexnode::Cred, mode| SetAttr {
        ns: NS.to_vec(),
        cred: cred.clone(),
        obj: Some(o("/tmp/ad")),
        mode: Some(mode),
        ..Default::default()
    };
    assert_eq!(errno(f.svc.call(&chmod(&bob, 0o777)).await), Errno::EPERM);
    f.svc.call(&chmod(&al, 0o700)).await.expect("chmod");
    assert_eq!(errno(f.create(&bob, "/tmp/ad/x").await), Errno::EACCES);
    let t = SetAttr {
        ns: NS.to_vec(),
        cred: bob.clone(),
        obj: Some(o("/tmp")),
        mtime: Some(TimeSet::At(5)),
        ..Default::default()
    };
    assert_eq!(errno(f.svc.call(&t).await), Errno::EPERM);
    let report = f.fsck().await;
    assert!(report.is_clean(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xattrs_and_inode_form_calls() {
    let f = fixture().await;
    let r = root();
    let d = f.mkdir(&r, "/d", 0o755).await.expect("mkdir");
    // The inode form: create and look up by (parent id, name).
    let file = f
        .svc
        .call(&coprocessor::ops::mknod::Mknod {
            ns: NS.to_vec(),
            cred: r.clone(),
            at: Loc::Entry {
                parent: d.id,
                name: b"f".to_vec(),
            },
            mode: 0o644,
            rdev: 0,
        })
        .await
        .expect("create by inode");
    let by_entry = f
        .svc
        .call(&coprocessor::ops::stat::Stat {
            ns: NS.to_vec(),
            cred: r.clone(),
            obj: Obj::Entry {
                parent: d.id,
                name: b"f".to_vec(),
            },
        })
        .await
        .expect("lookup");
    assert_eq!(by_entry.id, file.id);
    let set = |name: &str, flags| XattrSet {
        ns: NS.to_vec(),
        cred: r.clone(),
        obj: Obj::Inode(file.id),
        name: name.as_bytes().to_vec(),
        value: b"v".to_vec(),
        flags,
    };
    f.svc.call(&set("user.a", 0)).await.expect("set");
    f.svc.call(&set("user.b", 0)).await.expect("set");
    assert_eq!(
        errno(f.svc.call(&set("user.a", XATTR_CREATE)).await),
        Errno::EEXIST
    );
    assert_eq!(errno(f.svc.call(&set("noprefix", 0)).await), Errno::EINVAL);
    let names = f
        .svc
        .call(&XattrList {
            ns: NS.to_vec(),
            cred: r.clone(),
            obj: o("/d/f"),
        })
        .await
        .expect("list");
    assert_eq!(names, vec![b"user.a".to_vec(), b"user.b".to_vec()]);
    let get = |name: &str| XattrGet {
        ns: NS.to_vec(),
        cred: r.clone(),
        obj: o("/d/f"),
        name: name.as_bytes().to_vec(),
    };
    assert_eq!(f.svc.call(&get("user.a")).await.expect("get"), b"v");
    f.svc
        .call(&XattrRemove {
            ns: NS.to_vec(),
            cred: r.clone(),
            obj: o("/d/f"),
            name: b"user.a".to_vec(),
        })
        .await
        .expect("remove");
    assert_eq!(errno(f.svc.call(&get("user.a")).await), Errno::ENODATA);
    // Unlinking the file drops its attributes too; fsck would see strays.
    f.unlink(&r, "/d/f").await.expect("unlink");
    let report = f.fsck().await;
    assert!(report.is_clean(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsck_reports_broken_invariants() {
    let f = fixture().await;
    let r = root();
    let d = f.mkdir(&r, "/d", 0o755).await.expect("mkdir");
    let file = f.create(&r, "/d/f").await.expect("create");
    assert!(f.fsck().await.is_clean());
    // Damage the store behind the namespace's back: a stray Index entry, a lost directory
    // entry (which leaves the file dangling and the counts off).
    f.db.run_txn(move |t| {
        Box::pin(async move {
            let stray = indexnode::IndexEntry {
                id: 999,
                mode: 0o40755,
                uid: 0,
                gid: 0,
                locked: false,
            };
            t.put(&indexnode::index_key(d.id, b"ghost"), &stray.encode())?;
            t.delete(&metastore::keys::dentry_key(d.id, b"f"))
        })
    })
    .await
    .expect("damage");
    let report = f.fsck().await;
    assert!(!report.is_clean());
    let text = report.to_string();
    assert!(text.contains("ghost"), "{text}");
    assert!(text.contains(&format!("inode {}", file.id)), "{text}");
    assert!(text.contains("entry count"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inode_ids_do_not_cross_namespaces() {
    let f = fixture().await;
    let r = root();
    let other = f
        .svc
        .call(&coprocessor::ops::ns_create::NsCreate {
            name: b"other".to_vec(),
            cred: r.clone(),
            mode: 0o755,
        })
        .await
        .expect("ns");
    let secret = f
        .svc
        .call(&coprocessor::ops::mknod::Mknod {
            ns: b"other".to_vec(),
            cred: r.clone(),
            at: Loc::Path(b"/secret".to_vec()),
            mode: 0o600,
            rdev: 0,
        })
        .await
        .expect("create in other");
    // From namespace "t", neither the file nor the other root is reachable by id.
    let stat = |id| coprocessor::ops::stat::Stat {
        ns: NS.to_vec(),
        cred: r.clone(),
        obj: Obj::Inode(id),
    };
    assert_eq!(errno(f.svc.call(&stat(secret.id)).await), Errno::ENOENT);
    let sneak = coprocessor::ops::mknod::Mknod {
        ns: NS.to_vec(),
        cred: r.clone(),
        at: Loc::Entry {
            parent: other.root,
            name: b"planted".to_vec(),
        },
        mode: 0o644,
        rdev: 0,
    };
    assert_eq!(errno(f.svc.call(&sneak).await), Errno::ENOENT);
    // In its own namespace the id works.
    let own = coprocessor::ops::stat::Stat {
        ns: b"other".to_vec(),
        cred: r.clone(),
        obj: Obj::Inode(secret.id),
    };
    assert_eq!(f.svc.call(&own).await.expect("stat").id, secret.id);
    let report = f.fsck().await;
    assert!(report.is_clean(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posix_details_of_rename_and_setattr() {
    let f = fixture().await;
    let (r, al) = (root(), alice());
    f.mkdir(&r, "/p", 0o777).await.expect("mkdir");
    f.mkdir(&r, "/q", 0o777).await.expect("mkdir");
    f.create(&al, "/p/f").await.expect("alice's file");
    f.mkdir(&r, "/q/d", 0o755).await.expect("root's directory");
    // Exchanging moves root's directory to another parent: alice needs write on it.
    assert_eq!(
        errno(f.rename(&al, "/p/f", "/q/d", RENAME_EXCHANGE).await),
        Errno::EACCES
    );
    // NOREPLACE refuses an existing name even when it is the same entry.
    assert_eq!(
        errno(f.rename(&r, "/p/f", "/p/f", RENAME_NOREPLACE).await),
        Errno::EEXIST
    );
    let set = |cred: &indexnode::Cred, path: &str| SetAttr {
        ns: NS.to_vec(),
        cred: cred.clone(),
        obj: Some(o(path)),
        ..Default::default()
    };
    // A non-owner may not "chown" even to the current owner.
    let bob = indexnode::Cred {
        uid: 2000,
        gid: 2000,
        groups: vec![],
    };
    let same_owner = SetAttr {
        uid: Some(1000),
        ..set(&bob, "/p/f")
    };
    assert_eq!(errno(f.svc.call(&same_owner).await), Errno::EPERM);
    // A request that changes nothing writes nothing.
    let before = f.stat(&r, "/p/f", false).await.expect("stat");
    let after = f.svc.call(&set(&bob, "/p/f")).await.expect("empty setattr");
    assert_eq!(after.ctime, before.ctime);
    // An unprivileged truncate drops setuid; a chown drops setuid and, with group execute,
    // setgid.
    f.svc
        .call(&SetAttr {
            mode: Some(0o6775),
            ..set(&al, "/p/f")
        })
        .await
        .expect("chmod");
    let t = f
        .svc
        .call(&SetAttr {
            size: Some(10),
            ..set(&al, "/p/f")
        })
        .await
        .expect("truncate");
    assert_eq!(
        t.perm() & 0o6000,
        0,
        "setuid and (group-exec) setgid dropped: {:o}",
        t.perm()
    );
    f.svc
        .call(&SetAttr {
            mode: Some(0o6755),
            ..set(&r, "/p/f")
        })
        .await
        .expect("chmod");
    let c = f
        .svc
        .call(&SetAttr {
            gid: Some(1000),
            ..set(&r, "/p/f")
        })
        .await
        .expect("chgrp");
    assert_eq!(c.perm() & 0o6000, 0, "{:o}", c.perm());
    f.svc
        .call(&SetAttr {
            mode: Some(0o2644),
            ..set(&r, "/p/f")
        })
        .await
        .expect("chmod");
    let c = f
        .svc
        .call(&SetAttr {
            gid: Some(1000),
            ..set(&r, "/p/f")
        })
        .await
        .expect("chgrp");
    assert_eq!(
        c.perm() & 0o2000,
        0o2000,
        "setgid without group execute stays: {:o}",
        c.perm()
    );
    let report = f.fsck().await;
    assert!(report.is_clean(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_do_not_bypass_a_closed_directory_devices_need_root_and_minus_one_keeps_an_owner() {
    use coprocessor::ops::{mknod::Mknod, readdir::Readdir, stat::Stat};
    let f = fixture().await;
    let (r, a) = (root(), alice());
    // Root's private tree: /private (0700) holds a directory, a file and a symlink.
    f.mkdir(&r, "/private", 0o700).await.expect("mkdir");
    let inner = f.mkdir(&r, "/private/inner", 0o755).await.expect("mkdir");
    let file = f.create(&r, "/private/inner/secret").await.expect("create");
    let link = f
        .svc
        .call(&Symlink {
            ns: NS.to_vec(),
            cred: r.clone(),
            at: p("/private/inner/target"),
            target: b"/the/hidden/place".to_vec(),
        })
        .await
        .expect("symlink");
    let stat = |cred: &indexnode::Cred, obj: Obj| Stat {
        ns: NS.to_vec(),
        cred: cred.clone(),
        obj,
    };
    // By path, alice is stopped at /private.
    assert_eq!(
        errno(f.stat(&a, "/private/inner/secret", false).await),
        Errno::EACCES
    );
    // By id, too: a directory's ancestors are checked, other inodes are their owner's.
    for obj in [
        Obj::Inode(inner.id),
        Obj::Inode(file.id),
        Obj::Inode(link.id),
        Obj::Entry {
            parent: inner.id,
            name: b"secret".to_vec(),
        },
    ] {
        assert_eq!(
            errno(f.svc.call(&stat(&a, obj.clone())).await),
            Errno::EACCES,
            "{obj:?}"
        );
    }
    assert_eq!(
        errno(
            f.svc
                .call(&Readlink {
                    ns: NS.to_vec(),
                    cred: a.clone(),
                    obj: Obj::Inode(link.id),
                })
                .await
        ),
        Errno::EACCES
    );
    assert_eq!(
        errno(
            f.svc
                .call(&Readdir {
                    ns: NS.to_vec(),
                    cred: a.clone(),
                    dir: Obj::Inode(inner.id),
                    after: Vec::new(),
                    limit: 0,
                    plus: false,
                })
                .await
        ),
        Errno::EACCES
    );
    let create_by_id = Mknod {
        ns: NS.to_vec(),
        cred: a.clone(),
        at: Loc::Entry {
            parent: inner.id,
            name: b"mine".to_vec(),
        },
        mode: 0o644,
        rdev: 0,
    };
    assert_eq!(errno(f.svc.call(&create_by_id).await), Errno::EACCES);
    // Root, and an owner of a reachable inode, still use ids.
    f.svc
        .call(&stat(&r, Obj::Inode(file.id)))
        .await
        .expect("root by id");
    f.mkdir(&r, "/open", 0o777).await.expect("mkdir");
    let hers = f.create(&a, "/open/hers").await.expect("create");
    f.svc
        .call(&stat(&a, Obj::Inode(hers.id)))
        .await
        .expect("the owner by id");
    // Device nodes need root; fifos do not.
    let node = |cred: &indexnode::Cred, path: &str, kind: FileType| Mknod {
        ns: NS.to_vec(),
        cred: cred.clone(),
        at: p(path),
        mode: kind.bits() | 0o644,
        rdev: 0x0801,
    };
    for kind in [FileType::CharDevice, FileType::BlockDevice] {
        assert_eq!(
            errno(f.svc.call(&node(&a, "/open/dev", kind)).await),
            Errno::EPERM
        );
    }
    f.svc
        .call(&node(&a, "/open/fifo", FileType::Fifo))
        .await
        .expect("fifo");
    f.svc
        .call(&node(&r, "/open/sda", FileType::BlockDevice))
        .await
        .expect("root makes devices");
    // chown with -1 leaves that id as it is.
    let chown = SetAttr {
        ns: NS.to_vec(),
        cred: r.clone(),
        obj: Some(o("/open/hers")),
        uid: Some(u32::MAX),
        gid: Some(4242),
        ..SetAttr::default()
    };
    let after = f.svc.call(&chown).await.expect("chown -1:4242");
    assert_eq!((after.uid, after.gid), (a.uid, 4242));
    let report = f.fsck().await;
    assert!(report.is_clean(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xattrs_per_inode_are_bounded_and_their_list_fits_linux_buffers() {
    use coprocessor::ops::xattr_common::{MAX_LIST, MAX_TOTAL, MAX_VALUE};
    let f = fixture().await;
    let r = root();
    f.create(&r, "/big").await.expect("create");
    f.create(&r, "/many").await.expect("create");
    let set = |path: &str, name: Vec<u8>, value: Vec<u8>| XattrSet {
        ns: NS.to_vec(),
        cred: r.clone(),
        obj: o(path),
        name,
        value,
        flags: 0,
    };
    // Values: up to MAX_TOTAL bytes in all, then ENOSPC.
    let mut stored = 0;
    let mut i = 0;
    loop {
        let name = format!("user.v{i}").into_bytes();
        let n = name.len();
        match f.svc.call(&set("/big", name, vec![7; MAX_VALUE])).await {
            Ok(()) => stored += n + MAX_VALUE,
            Err(e) => {
                assert_eq!(e.errno, Errno::ENOSPC, "{e}");
                break;
            }
        }
        i += 1;
    }
    assert!(
        stored <= MAX_TOTAL && stored + MAX_VALUE + 8 > MAX_TOTAL,
        "{stored}"
    );
    // Replacing one in place still works at the limit.
    f.svc
        .call(&set("/big", b"user.v0".to_vec(), vec![1; MAX_VALUE]))
        .await
        .expect("replace at the limit");
    // Names: the list stays within MAX_LIST bytes.
    let mut names = 0;
    loop {
        let mut name = format!("user.{names:05}-").into_bytes();
        name.resize(255, b'n');
        match f.svc.call(&set("/many", name, b"x".to_vec())).await {
            Ok(()) => names += 1,
            Err(e) => {
                assert_eq!(e.errno, Errno::ENOSPC, "{e}");
                break;
            }
        }
    }
    let list = f
        .svc
        .call(&XattrList {
            ns: NS.to_vec(),
            cred: r.clone(),
            obj: o("/many"),
        })
        .await
        .expect("list");
    assert_eq!(list.len(), names);
    let bytes: usize = list.iter().map(|n| n.len() + 1).sum();
    assert!(bytes <= MAX_LIST && bytes + 256 > MAX_LIST, "{bytes}");
    // Unlinking inodes full of attributes drops them all.
    f.unlink(&r, "/big").await.expect("unlink");
    f.unlink(&r, "/many").await.expect("unlink");
    let report = f.fsck().await;
    assert!(report.is_clean(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_resolves_a_directory_in_one_call_and_parent_links_climb_out_of_cached_levels() {
    use coprocessor::ops::lookup::Lookup;
    let f = fixture().await;
    let r = root();
    let mut path = String::new();
    for d in ["a", "b", "c", "d", "e", "f"] {
        path.push('/');
        path.push_str(d);
        f.mkdir(&r, &path, 0o755).await.expect("mkdir");
    }
    f.create(&r, "/a/b/c/d/e/f/file").await.expect("create");
    let lookup = |cred: indexnode::Cred, path: &str| Lookup {
        ns: NS.to_vec(),
        cred,
        path: path.as_bytes().to_vec(),
    };
    let deep = f.stat(&r, "/a/b/c/d/e/f", false).await.expect("stat");
    // Twice: the first fills the path cache, the second is answered from it.
    for _ in 0..2 {
        let e = f
            .svc
            .call(&lookup(r.clone(), "/a/b/c/d/e/f"))
            .await
            .expect("lookup");
        assert_eq!((e.id, e.mode, e.uid), (deep.id, deep.mode, deep.uid));
    }
    let root_dir = f.svc.call(&lookup(r.clone(), "/")).await.expect("lookup /");
    assert_eq!(
        root_dir.id,
        f.stat(&r, "/", false).await.expect("stat /").id
    );
    assert_eq!(
        errno(f.svc.call(&lookup(r.clone(), "/a/b/c/d/e/f/file")).await),
        Errno::ENOTDIR
    );
    assert_eq!(
        errno(f.svc.call(&lookup(r.clone(), "/a/b/c/x/e")).await),
        Errno::ENOENT
    );
    assert_eq!(
        errno(f.svc.call(&lookup(r.clone(), "/a/b/../c")).await),
        Errno::EINVAL,
        "paths are normalized"
    );
    // A directory on the way that the caller may not search, after the path was cached.
    f.chmod(&r, "/a/b", 0o700).await.expect("chmod");
    assert_eq!(
        errno(f.svc.call(&lookup(alice(), "/a/b/c/d/e/f")).await),
        Errno::EACCES
    );
    f.chmod(&r, "/a/b", 0o755).await.expect("chmod");
    // A symlink whose target climbs above the levels a cache hit skipped.
    for _ in 0..2 {
        let e = f
            .svc
            .call(&lookup(r.clone(), "/a/b/c/d/e/f"))
            .await
            .expect("lookup");
        assert_eq!(e.id, deep.id);
    }
    f.svc
        .call(&Symlink {
            ns: NS.to_vec(),
            cred: r.clone(),
            at: p("/a/b/c/d/e/f/up"),
            target: b"../../../../x".to_vec(),
        })
        .await
        .expect("symlink");
    f.mkdir(&r, "/a/b/x", 0o755).await.expect("mkdir");
    let x = f.stat(&r, "/a/b/x", false).await.expect("stat");
    for _ in 0..2 {
        let e = f
            .svc
            .call(&lookup(r.clone(), "/a/b/c/d/e/f/up"))
            .await
            .expect("lookup through the symlink");
        assert_eq!(e.id, x.id);
        let t = f
            .stat(&r, "/a/b/c/d/e/f/up", true)
            .await
            .expect("stat through the symlink");
        assert_eq!(t.id, x.id);
    }
    let stats = f.svc.path_cache_stats().expect("cache");
    assert!(stats.hits >= 4, "{stats:?}");
    f.close().await;
}
