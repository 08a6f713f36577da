//! The namespace model test against a cluster: random operation sequences (renames, links,
//! symlinks, permission failures included) sent through the SDK to three real `mantle serve`
//! processes in the distributed layout (`--layout tables`), with the tablets led from three
//! different nodes, so that every call is coordinated across nodes and most commit in two
//! phases. Each case runs in a namespace of its own on the same cluster, through clients that
//! know every node; every answer and the final tree must match the in-memory model
//! (`coprocessor/tests/model_core`), and fsck is clean at the end.

mod common;
#[path = "../../coprocessor/tests/model_core/mod.rs"]
mod model_core;

use std::sync::atomic::{AtomicU64, Ordering};

use common::cluster::Cluster;
use mantle::client::{Client, SetAttrArgs};
use metastore::FileType;
use model_core::*;
use proptest::prelude::*;

/// The SDK's clients for the two identities the model uses, in one namespace.
struct Target {
    root: Client,
    alice: Client,
}

impl Target {
    fn as_(&self, who: u8) -> &Client {
        if who == 0 {
            &self.root
        } else {
            &self.alice
        }
    }

    async fn apply(&self, op: &Op) -> R<()> {
        match op {
            Op::Mkdir(p, w) => res(self.as_(*w).mkdir(p, 0o755).await),
            Op::Create(p, w) => res(self.as_(*w).create(p, 0o644).await),
            Op::Unlink(p, w) => res(self.as_(*w).unlink(p).await),
            Op::Rmdir(p, w) => res(self.as_(*w).rmdir(p).await),
            Op::Rename(a, b, fl, w) => res(self.as_(*w).rename(a, b, *fl).await),
            Op::Link(a, b, w) => res(self.as_(*w).link(a, b).await),
            Op::Symlink(at, t, w) => res(self.as_(*w).symlink(t, at).await),
            Op::Stat(p, follow, w) => {
                let c = self.as_(*w);
                res(if *follow {
                    c.stat(p).await
                } else {
                    c.lstat(p).await
                })
            }
            Op::Chmod(p, m, w) => res(self
                .as_(*w)
                .setattr(
                    p,
                    SetAttrArgs {
                        mode: Some(*m),
                        ..Default::default()
                    },
                )
                .await),
        }
    }

    /// Every name in the tree with its type, permissions, owner, link count and symlink
    /// target, as the model lists it.
    async fn listing(&self) -> Vec<(String, FileType, u32, u32, u64, String)> {
        let mut out = Vec::new();
        let mut todo = vec![String::new()];
        while let Some(prefix) = todo.pop() {
            let dir = if prefix.is_empty() {
                "/".to_string()
            } else {
                prefix.clone()
            };
            for e in self.root.list(&dir, false).await.expect("list") {
                let path = format!("{prefix}/{}", String::from_utf8_lossy(&e.name));
                let a = self.root.lstat(&path).await.expect("lstat");
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
}

async fn run_case(all: &str, ns: &str, ops: &[Op]) -> Result<(), TestCaseError> {
    let root = Client::connect(all).await.expect("connect");
    root.ns_create(ns, 0o755).await.expect("ns create");
    let t = Target {
        root: root.clone().with_namespace(ns),
        alice: root.with_namespace(ns).with_cred(alice_cred()),
    };
    let mut model = Model::new();
    for (i, op) in ops.iter().enumerate() {
        let want = apply_model(&mut model, op);
        let got = t.apply(op).await;
        prop_assert_eq!(got, want, "op {} {:?}", i, op);
    }
    prop_assert_eq!(t.listing().await, model.listing());
    Ok(())
}

fn alice_cred() -> indexnode::Cred {
    cred(1)
}

#[test]
fn the_namespace_matches_the_tree_model_on_a_cluster_with_tablet_leaders_apart() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let cl = rt.block_on(async {
        let cl = Cluster::start(3, &["--layout", "tables"]).await;
        common::cluster::move_leaders_apart(&cl).await;
        cl
    });
    let all = cl.all();
    let case = AtomicU64::new(0);
    let cases = std::env::var("MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let config = ProptestConfig {
        cases,
        // No regression file next to a test that is not a crate root.
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(ops in prop::collection::vec(op(), 1..40))| {
        let ns = format!("m{}", case.fetch_add(1, Ordering::Relaxed));
        rt.block_on(run_case(&all, &ns, &ops))?;
    });
    let report = rt.block_on(async {
        let c = Client::connect(&all).await.expect("connect");
        c.fsck(|_| {}).await.expect("fsck")
    });
    assert!(report.is_clean(), "{report}");
    drop(cl);
}
