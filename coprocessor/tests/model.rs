//! Model-based test: random operation sequences (renames, links, symlinks, permission
//! failures included) run against the service and against an in-memory tree; every result
//! and the final trees must agree, and fsck must be clean.

mod common;
mod model_core;
mod model_run;

use common::*;
use model_core::op;
use model_run::*;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
    #[test]
    fn service_matches_the_tree_model(ops in prop::collection::vec(op(), 1..60)) {
        runtime().block_on(run_case(&ops, |_| {}, false, None))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    /// The same model under a flusher that races every operation (20 ms window, a flush every
    /// millisecond): scans, validations and fsck overlap flushes all the time.
    #[test]
    fn service_matches_the_tree_model_under_a_racing_flusher(ops in prop::collection::vec(op(), 1..60)) {
        runtime().block_on(run_case(&ops, racing_flusher, true, None))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
    /// The same model in the distributed layout (system, Index and Meta tables in tablets of
    /// their own, the Meta table cut in two): most operations commit in two phases.
    #[test]
    fn service_matches_the_tree_model_across_tablets(ops in prop::collection::vec(op(), 1..60)) {
        runtime().block_on(run_case(&ops, distributed_layout, false, None))?;
    }
}
