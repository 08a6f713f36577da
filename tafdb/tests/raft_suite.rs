//! openraft's own storage test suite (`openraft::testing::Suite`) against the tablet's log store
//! (a LogBlob of a chunk store) and state machine, with full snapshots (what a replica on
//! another node installs).

use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use tafdb::engine::EngineKind;
use tafdb::raft::{LogStore, StateMachine, TabletState, TypeConfig};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = LogStore::open(&dir.path().join("raft"), 64 << 10, 4 << 20).expect("log store");
        let state: Arc<TabletState> = TabletState::open(
            &dir.path().join("state"),
            &[(1, EngineKind::Hash), (2, EngineKind::Lsm)],
        )
        .expect("state");
        state.set_full_snapshots(true);
        Ok((dir, log, StateMachine::new(state)))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).expect("openraft's storage suite");
}
