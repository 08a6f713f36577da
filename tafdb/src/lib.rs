//! TafDB: a transactional, range-partitioned key-value store with in-memory MVCC and durable,
//! Raft-replicated tablets. It is the storage layer of Mantle-rs. (A single-node store may
//! defer its log syncs, [`tablet::LogSync::Deferred`], as the FUSE mount does.)
//!
//! What it is: an ordered byte key space split into *tablets* (key ranges), each a Raft group
//! ([`tablet::Tablet`]) whose state machine keeps recent versions in memory ([`mvcc`]) and the
//! newest old version in a per-table engine ([`engine`]: a hash engine for point tables, RocksDB
//! for ordered tables). Transactions ([`Txn`]) are snapshot reads plus buffered writes with
//! optimistic validation of read keys and scanned ranges, committed in one phase when they
//! touch one tablet and in two phases (Percolator-style) otherwise. Delta records
//! ([`mvcc::DeltaOp`]) let many transactions bump one counter without conflicting; stable
//! reads ([`Txn::get_stable`]) let a transaction depend on a record that others bump by delta.
//! Configured hot keys take a pessimistic FIFO lock queue instead ([`lockq`]). Timestamps come
//! from a persistent oracle ([`tso::Tso`]); in a cluster its high-water mark is an entry of
//! the first tablet's Raft log ([`tso::Tso::replicated`]), so a new leader never hands out a
//! timestamp below the old one's. Each tablet's Raft log is a LogBlob of a local
//! [`chunk_backend`] store ([`raft::LogStore`]); small state files go through
//! [`chunk_backend::atomic`]. [`Db::snapshot`] holds one state open for long readers (fsck), and
//! [`Db::collect_garbage`] clears what crashed 2PC coordinators leave behind. Field sets
//! ([`mvcc::DeltaOp::Set`]) change parts of a record that others bump by delta. On a full disk
//! the [`space`] guard refuses writes with [`Error::NoSpace`] while reads and deletes go on,
//! and recovers by itself once space is back. Errors tell "did not happen" (retryable ones,
//! `Shutdown`, `NoSpace`, `Busy`, `NotLeader`) from "may have happened"
//! ([`Error::Undetermined`]). A tablet can be one replica of a group spread over nodes
//! ([`tablet::Replication`], [`DbConfig::cluster`]): Raft messages travel over gRPC
//! ([`raft::net`]: one service per node, routed by group id; one channel per peer), and a
//! replica serves only while it leads, each read confirmed with a quorum. A replica that joins
//! or falls behind the purged log receives the tablet as a full snapshot streamed from a file.
//! Tablets may be led from different nodes: a node coordinates a transaction by sending each
//! tablet's steps to its leader (`remote`, over the same Raft service), takes timestamps from
//! the oracle on the first tablet's leader, which confirms its leadership before it hands any
//! out, and changes the groups' membership through each group's leader
//! ([`Db::add_member`], [`Db::promote`], [`Db::remove_member`]). The `failpoints`
//! feature compiles in the fault-injection points the `failpoints` tests use. A
//! [`WriteWatch`] hears of every write of a key prefix in the order the tablet sees it, and
//! [`tablet::Tablet::still_current`] validates reads outside a transaction: together they keep a
//! cache above the store exact (the IndexNode's path cache).
//!
//! What it is not: it knows nothing about paths, directories, inodes or scripts. The namespace
//! crates build on [`Txn`] and register [`Coprocessor`]s.
//!
//! Key types: [`Db`] (open, begin, run_txn, run_read for snapshot readers, snapshot,
//! coprocessors), [`Txn`],
//! [`engine::Engine`], [`mvcc::MvccStore`], [`tablet::Tablet`], [`raft::LogStore`],
//! [`raft::RaftRouter`], [`raft::Peers`], [`lockq::LockTable`], [`Error`].

pub mod command;
pub mod coprocessor;
pub mod cpu;
pub mod db;
pub mod engine;
pub mod error;
pub mod keys;
pub mod lockq;
pub(crate) mod membership;
pub mod mvcc;
pub mod raft;
pub(crate) mod remote;
pub mod space;
pub mod tablet;
pub mod tso;
pub mod txn;
pub mod watch;

pub use coprocessor::{BoxFuture, Coprocessor};
pub use db::{ClusterConfig, Db, DbConfig, GcOutcome, Snapshot};
pub use error::{Error, Result};
pub use keys::{Key, KeyRange, Value};
pub use mvcc::{DeltaOp, Mutation};
pub use txn::Txn;
pub use watch::WriteWatch;

/// How many tokio worker threads a process hosting tablets should run: four per core, at
/// least eight. The commit path holds short `parking_lot` critical sections (the ticket mutex,
/// map shards); a worker that parks on one is a core that runs nothing until the holder is
/// scheduled again. More workers than cores keep the cores busy: when the tablet still had one
/// sequencer mutex, 8 workers beat 2 in five of six back-to-back pairs of `commit1pc` runs, by
/// 15-25% at the median. The tablets' Raft pipelines run on a small runtime of their own
/// ([`tablet::PipelineRuntime`]), not on these workers.
pub fn runtime_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    (cores * 4).max(8)
}
