//! The run of the namespace model test against a service in this process: each operation
//! against the service and the model, then the trees and fsck. Included by
//! `coprocessor/tests/model.rs` and `dsl/tests/model_scripts.rs` (the same model against the
//! script versions of the operations).

#![allow(dead_code)]

use coprocessor::api::Obj;
use coprocessor::ops::{link::Link, setattr::SetAttr, symlink::Symlink};
use metastore::FileType;
use proptest::prelude::*;

use crate::common::*;
use crate::model_core::*;

async fn apply(f: &Fixture, op: &Op) -> R<()> {
    let ns = NS.to_vec();
    match op {
        Op::Mkdir(p, w) => res(f.mkdir(&cred(*w), p, 0o755).await),
        Op::Create(p, w) => res(f.create(&cred(*w), p).await),
        Op::Unlink(p, w) => res(f.unlink(&cred(*w), p).await),
        Op::Rmdir(p, w) => res(f.rmdir(&cred(*w), p).await),
        Op::Rename(a, b, fl, w) => res(f.rename(&cred(*w), a, b, *fl).await),
        Op::Link(a, b, w) => res(f
            .svc
            .call(&Link {
                ns,
                cred: cred(*w),
                target: o(a),
                at: p(b),
            })
            .await),
        Op::Symlink(at, t, w) => res(f
            .svc
            .call(&Symlink {
                ns,
                cred: cred(*w),
                at: p(at),
                target: t.as_bytes().to_vec(),
            })
            .await),
        Op::Stat(pa, fol, w) => res(f.stat(&cred(*w), pa, *fol).await),
        Op::Chmod(pa, m, w) => res(f
            .svc
            .call(&SetAttr {
                ns,
                cred: cred(*w),
                obj: Some(Obj::Path {
                    path: pa.as_bytes().to_vec(),
                    follow: true,
                }),
                mode: Some(*m),
                ..Default::default()
            })
            .await),
    }
}

async fn service_listing(f: &Fixture) -> Vec<(String, FileType, u32, u32, u64, String)> {
    let mut out = Vec::new();
    let mut todo = vec![String::new()];
    while let Some(prefix) = todo.pop() {
        let dir = if prefix.is_empty() {
            "/".to_string()
        } else {
            prefix.clone()
        };
        for name in f.ls(&dir).await.expect("ls") {
            let path = format!("{prefix}/{name}");
            let a = f.stat(&root(), &path, false).await.expect("stat");
            let target = if a.kind() == FileType::Symlink {
                String::from_utf8_lossy(&a.target).into_owned()
            } else {
                String::new()
            };
            out.push((path.clone(), a.kind(), a.perm(), a.uid, a.nlink, target));
            if a.kind() == FileType::Directory {
                todo.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Runs `ops` against the service (on a store configured by `tune`, its service prepared by
/// `setup`) and the model; with
/// `pause`, waits a few milliseconds now and then so that versions age into the flusher's
/// window in the middle of the sequence.
pub async fn run_case(
    ops: &[Op],
    tune: impl FnOnce(&mut tafdb::DbConfig),
    pause: bool,
    setup: Option<Setup>,
) -> Result<(), TestCaseError> {
    let f = fixture_with_setup(tune, setup).await;
    let outcome = async {
        let mut model = Model::new();
        for (i, op) in ops.iter().enumerate() {
            let want = apply_model(&mut model, op);
            let got = apply(&f, op).await;
            prop_assert_eq!(got, want, "op {} {:?}", i, op);
            if pause && i % 7 == 3 {
                tokio::time::sleep(std::time::Duration::from_millis((i % 5) as u64 * 6)).await;
            }
        }
        prop_assert_eq!(service_listing(&f).await, model.listing());
        let report = f.fsck().await;
        prop_assert!(report.is_clean(), "{}", report);
        Ok(())
    }
    .await;
    // Also after a failure: a store left open writes on while its directory is deleted, and
    // RocksDB then aborts the process before proptest can report the case.
    f.close().await;
    outcome
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}
