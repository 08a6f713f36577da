//! openraft glue: the type configuration, the tablet state machine and the network trait.
//!
//! A Raft entry carries a batch of [`Command`](crate::command::Command)s, encoded once as a
//! [`CommandBatch`] (the tablet batches concurrent proposals so that one entry, one `fdatasync`
//! and one round of openraft bookkeeping serve many
//! transactions). Applying a batch yields one [`CommandResult`] per command. Snapshots are
//! files: a small durable reference for the replica itself, or a full snapshot of every engine
//! row (`snapshot_file`) for another replica.

mod log_store;
pub mod net;
mod snapshot_file;
mod state_machine;

pub use log_store::{store_shape, LogReader, LogStore, CHUNK_BYTES, STORE_BYTES};
pub use net::{GrpcNetwork, Peers, RaftRouter};
pub use state_machine::{SnapshotPin, StateMachine, TabletState};

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;

use crate::command::{CommandBatch, CommandResult};

openraft::declare_raft_types!(
    /// The openraft type configuration of a tablet group.
    pub TypeConfig:
        D = CommandBatch,
        R = Vec<CommandResult>,
        NodeId = u64,
        Node = BasicNode,
        // A file, so that a snapshot shipped to another replica streams in chunks from
        // disk instead of being held in memory (see `snapshot_file`).
        SnapshotData = tokio::fs::File,
);

/// A log entry of a tablet group.
pub type Entry = openraft::Entry<TypeConfig>;
/// The Raft handle of a tablet group.
pub type Raft = openraft::Raft<TypeConfig>;

/// The network of a group whose only member is the local node (the embedded mode).
///
/// A single-voter group never sends a message; if openraft ever asks for a peer, the peer is
/// reported unreachable. A replicated group uses [`GrpcNetwork`] instead.
#[derive(Clone, Debug, Default)]
pub struct SingleNodeNetwork;

/// The (never used) connection of [`SingleNodeNetwork`].
#[derive(Clone, Debug)]
pub struct NoPeer {
    target: u64,
}

impl NoPeer {
    fn unreachable(&self) -> Unreachable {
        Unreachable::new(&std::io::Error::new(
            std::io::ErrorKind::NotConnected,
            format!("node {} is not part of this single-node group", self.target),
        ))
    }
}

impl RaftNetworkFactory<TypeConfig> for SingleNodeNetwork {
    type Network = NoPeer;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> NoPeer {
        NoPeer { target }
    }
}

impl RaftNetwork<TypeConfig> for NoPeer {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }
}
