//! The namespace model test against the script versions of the operations: mkdir, create,
//! unlink, rmdir and rename run as `dsl/examples/native_ops.rhai` (bound `instead_*` in the
//! test namespace), everything else as built in. Every result, the final tree and fsck must
//! agree with the model, as for the built-in operations (`coprocessor/tests/model.rs`): the
//! proof that the host API can express them.

#[path = "../../coprocessor/tests/common.rs"]
mod common;
#[path = "../../coprocessor/tests/model_core/mod.rs"]
mod model_core;
#[path = "../../coprocessor/tests/model_run/mod.rs"]
mod model_run;

use std::future::Future;
use std::pin::Pin;

use common::*;
use coprocessor::Service;
use dsl::ops::push::{HookSpec, ScriptPush};
use indexnode::Cred;
use model_core::op;
use model_run::*;
use proptest::prelude::*;

/// Installs scripts on the service and binds the script versions of the operations.
fn scripted(svc: &Service) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(async move {
        dsl::install(svc, dsl::Limits::default()).expect("install");
        let path = format!("{}/examples/native_ops.rhai", env!("CARGO_MANIFEST_DIR"));
        let source = std::fs::read_to_string(&path).expect("native_ops.rhai");
        let events = ["mkdir", "create", "unlink", "rmdir", "rename"]
            .map(|op| (format!("instead_{op}"), b"/".to_vec()))
            .to_vec();
        svc.call(&ScriptPush {
            cred: Cred::root(),
            name: "native-ops".into(),
            source,
            hooks: Some(HookSpec {
                ns: NS.to_vec(),
                events,
            }),
        })
        .await
        .expect("push native-ops");
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn the_script_versions_match_the_tree_model(ops in prop::collection::vec(op(), 1..60)) {
        runtime().block_on(run_case(&ops, |_| {}, false, Some(scripted)))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]
    /// Under a flusher that races every operation, and in the layout where most operations
    /// commit in two phases.
    #[test]
    fn the_script_versions_match_the_tree_model_under_a_racing_flusher_and_across_tablets(
        ops in prop::collection::vec(op(), 1..60),
        split in any::<bool>(),
    ) {
        let tune = move |c: &mut tafdb::DbConfig| if split { distributed_layout(c) } else { racing_flusher(c) };
        runtime().block_on(run_case(&ops, tune, !split, Some(scripted)))?;
    }
}

/// The model runs above go through the script: a version whose mkdir refuses everything makes
/// mkdir fail, and disabling the script brings the built-in one back.
#[test]
fn the_bound_script_is_what_runs() {
    runtime().block_on(async {
        let f = fixture_with_setup(|_| {}, Some(scripted)).await;
        f.mkdir(&Cred::root(), "/a", 0o755)
            .await
            .expect("mkdir through the script");
        let path = format!("{}/examples/native_ops.rhai", env!("CARGO_MANIFEST_DIR"));
        let source = std::fs::read_to_string(&path)
            .expect("native_ops.rhai")
            .replace(
                "fn instead_mkdir(args) {",
                "fn instead_mkdir(args) {\n    fail(\"EDQUOT\", \"the script version ran\");",
            );
        f.svc
            .call(&ScriptPush {
                cred: Cred::root(),
                name: "native-ops".into(),
                source,
                hooks: None,
            })
            .await
            .expect("push v2");
        let e = f
            .mkdir(&Cred::root(), "/b", 0o755)
            .await
            .expect_err("refused");
        assert_eq!(e.errno, coprocessor::Errno::EDQUOT, "{}", e.message);
        f.svc
            .call(&dsl::ops::set::ScriptSet {
                cred: Cred::root(),
                name: "native-ops".into(),
                version: None,
            })
            .await
            .expect("disable");
        f.mkdir(&Cred::root(), "/b", 0o755)
            .await
            .expect("the built-in mkdir");
        f.close().await;
    });
}
