//! A namespace service on a fresh store, for tests.

#![allow(dead_code)]

use std::sync::Arc;

use coprocessor::api::{Loc, Obj};
use coprocessor::ops::{
    mkdir::Mkdir, mknod::Mknod, ns_create::NsCreate, readdir::Readdir, rename::Rename,
    rmdir::Rmdir, stat::Stat, unlink::Unlink,
};
use coprocessor::{FsError, Service};
use indexnode::Cred;
use metastore::Attr;
use tafdb::{Db, DbConfig};

pub const NS: &[u8] = b"t";

pub struct Fixture {
    pub db: Arc<Db>,
    pub svc: Service,
    // Last: the directory goes after the store (fields drop in order).
    pub _dir: tempfile::TempDir,
}

impl Fixture {
    /// Shuts the store down, then removes its directory. A store dropped without this keeps
    /// its flusher and RocksDB running for a while over a directory that is being deleted.
    pub async fn close(self) {
        self.db.shutdown().await;
    }
}

pub async fn fixture() -> Fixture {
    fixture_with(|_| {}).await
}

/// A fixture whose store is configured by `tune` first.
pub async fn fixture_with(tune: impl FnOnce(&mut DbConfig)) -> Fixture {
    fixture_with_options(tune, &coprocessor::service::Options::default()).await
}

/// [`fixture_with`], with the service set up by `options`.
pub async fn fixture_with_options(
    tune: impl FnOnce(&mut DbConfig),
    options: &coprocessor::service::Options,
) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = DbConfig::new(dir.path());
    // The model tests open hundreds of stores one after another, and a store closes a little
    // after it is dropped: small logs keep the disk space they hold meanwhile small.
    cfg.tablet.log_store_bytes = 16 << 20;
    cfg.tablet.log_chunk_bytes = 1 << 20;
    tune(&mut cfg);
    let db = Db::open(cfg).await.expect("open");
    let svc = Service::open_with(db.clone(), options);
    svc.call(&NsCreate {
        name: NS.to_vec(),
        cred: Cred::root(),
        mode: 0o755,
    })
    .await
    .expect("ns create");
    Fixture { db, svc, _dir: dir }
}

/// Something to do with a fixture's service before a test uses it (its namespace exists).
pub type Setup =
    for<'a> fn(&'a Service) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>>;

/// [`fixture_with`], then `setup` on its service.
pub async fn fixture_with_setup(tune: impl FnOnce(&mut DbConfig), setup: Option<Setup>) -> Fixture {
    let f = fixture_with(tune).await;
    if let Some(s) = setup {
        s(&f.svc).await;
    }
    f
}

/// A store whose flusher races everything: versions leave memory 20 ms after they were
/// applied, and the flusher runs every millisecond. Scans, validations and dumps then overlap
/// flushes all the time, which a 5 s window almost never shows.
pub fn racing_flusher(cfg: &mut DbConfig) {
    cfg.tablet.window_ms = 20;
    cfg.tablet.flush_interval_ms = 1;
}

/// Mantle's distributed layout on one node: the system table, the Index table and the Meta
/// table in tablets of their own, and the Meta table cut at inode 32 (so a directory and its
/// children often live in different tablets). Operations then commit in two phases.
pub fn distributed_layout(cfg: &mut DbConfig) {
    cfg.split_keys = vec![vec![1], vec![2], vec![2, 0, 0, 0, 0, 0, 0, 0, 32]];
}

pub fn root() -> Cred {
    Cred::root()
}

pub fn alice() -> Cred {
    Cred {
        uid: 1000,
        gid: 1000,
        groups: vec![],
    }
}

pub fn p(s: &str) -> Loc {
    Loc::Path(s.as_bytes().to_vec())
}

pub fn o(s: &str) -> Obj {
    Obj::path(s.as_bytes())
}

impl Fixture {
    pub async fn mkdir(&self, cred: &Cred, path: &str, mode: u32) -> Result<Attr, FsError> {
        self.svc
            .call(&Mkdir {
                ns: NS.to_vec(),
                cred: cred.clone(),
                at: p(path),
                mode,
            })
            .await
    }

    pub async fn chmod(&self, cred: &Cred, path: &str, mode: u32) -> Result<Attr, FsError> {
        self.setattr(cred, path, Some(mode), None, None).await
    }

    pub async fn chown(
        &self,
        cred: &Cred,
        path: &str,
        uid: u32,
        gid: u32,
    ) -> Result<Attr, FsError> {
        self.setattr(cred, path, None, Some(uid), Some(gid)).await
    }

    async fn setattr(
        &self,
        cred: &Cred,
        path: &str,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<Attr, FsError> {
        self.svc
            .call(&coprocessor::ops::setattr::SetAttr {
                ns: NS.to_vec(),
                cred: cred.clone(),
                obj: Some(o(path)),
                mode,
                uid,
                gid,
                size: None,
                atime: None,
                mtime: None,
            })
            .await
    }

    pub async fn create(&self, cred: &Cred, path: &str) -> Result<Attr, FsError> {
        self.svc
            .call(&Mknod {
                ns: NS.to_vec(),
                cred: cred.clone(),
                at: p(path),
                mode: 0o644,
                rdev: 0,
            })
            .await
    }

    pub async fn stat(&self, cred: &Cred, path: &str, follow: bool) -> Result<Attr, FsError> {
        self.svc
            .call(&Stat {
                ns: NS.to_vec(),
                cred: cred.clone(),
                obj: Obj::Path {
                    path: path.as_bytes().to_vec(),
                    follow,
                },
            })
            .await
    }

    pub async fn unlink(&self, cred: &Cred, path: &str) -> Result<(), FsError> {
        self.svc
            .call(&Unlink {
                ns: NS.to_vec(),
                cred: cred.clone(),
                at: p(path),
            })
            .await
    }

    pub async fn rmdir(&self, cred: &Cred, path: &str) -> Result<(), FsError> {
        self.svc
            .call(&Rmdir {
                ns: NS.to_vec(),
                cred: cred.clone(),
                at: p(path),
            })
            .await
    }

    pub async fn rename(
        &self,
        cred: &Cred,
        from: &str,
        to: &str,
        flags: u32,
    ) -> Result<(), FsError> {
        self.svc
            .call(&Rename {
                ns: NS.to_vec(),
                cred: cred.clone(),
                from: p(from),
                to: p(to),
                flags,
            })
            .await
    }

    /// Every name in directory `path`, paging with a small page size.
    pub async fn ls(&self, path: &str) -> Result<Vec<String>, FsError> {
        let mut out = Vec::new();
        let mut after = Vec::new();
        loop {
            let page = self
                .svc
                .call(&Readdir {
                    ns: NS.to_vec(),
                    cred: root(),
                    dir: o(path),
                    after: after.clone(),
                    limit: 3,
                    plus: false,
                })
                .await?;
            out.extend(
                page.entries
                    .iter()
                    .map(|e| String::from_utf8_lossy(&e.name).into_owned()),
            );
            match page.next {
                Some(n) => after = n,
                None => return Ok(out),
            }
        }
    }

    /// The namespace's usage counters.
    pub async fn statfs(&self) -> coprocessor::api::StatFs {
        self.svc
            .call(&coprocessor::ops::statfs::StatFs {
                ns: NS.to_vec(),
                cred: root(),
            })
            .await
            .expect("statfs")
    }

    /// fsck with tiny pages and a tiny sort budget, so that every check pages through the
    /// tables and merges spilled runs (while flushes and operations run alongside).
    pub async fn fsck(&self) -> coprocessor::fsck::Report {
        let opts = coprocessor::fsck::Options {
            memory: 16 << 10,
            page: 16,
            ..Default::default()
        };
        coprocessor::fsck::check_with(&self.db, &opts, &|_| {})
            .await
            .expect("fsck")
    }
}
