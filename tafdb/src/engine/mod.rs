//! Storage engines: where a tablet's tables keep their newest committed version.
//!
//! An [`Engine`] is a plain, non-transactional key-value map with atomic write batches and an
//! explicit [`Engine::persist`] that makes everything written so far durable. Transactions,
//! versions and conflict checks live above it, in [`crate::mvcc`]; the engine only ever sees the
//! newest version of a key that has aged out of the in-memory MVCC window.
//!
//! Two implementations exist, chosen per table:
//! - [`HashEngine`]: an in-memory hash map (dashmap) for point-lookup tables such as the Index
//!   table, made durable by an append-only batch file with periodic compaction. It refuses range
//!   scans with [`crate::Error::Unsupported`].
//! - [`LsmEngine`]: RocksDB, for tables that need ordered scans such as the Meta table.
//!
//! Both pass the same conformance suite ([`conformance`]).

mod hash;
mod lsm;
mod packed;

pub mod conformance;

pub use hash::HashEngine;
pub use lsm::{memtable_bytes, LsmEngine};

use std::path::Path;
use std::sync::Arc;

use crate::error::Result;
use crate::keys::{Key, KeyRange, Value};

/// Which engine a table uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum EngineKind {
    /// [`HashEngine`]: point lookups only.
    Hash,
    /// [`LsmEngine`]: RocksDB, ordered scans.
    Lsm,
}

impl EngineKind {
    /// Opens (or creates) an engine of this kind in `dir`.
    pub fn open(self, dir: &Path) -> Result<Arc<dyn Engine>> {
        Ok(match self {
            EngineKind::Hash => Arc::new(HashEngine::open(dir)?),
            EngineKind::Lsm => Arc::new(LsmEngine::open(dir)?),
        })
    }
}

/// A visitor over key-value pairs; returning an error stops the visit.
pub type Visitor<'a> = dyn FnMut(&[u8], &[u8]) -> Result<()> + 'a;

/// One operation of an atomic write batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOp {
    /// Set `key` to `value`.
    Put(Key, Value),
    /// Remove `key` (absent keys are fine).
    Delete(Key),
}

/// A durable key-value map. All methods take `&self`: engines synchronise internally.
pub trait Engine: Send + Sync + 'static {
    /// The engine's kind.
    fn kind(&self) -> EngineKind;

    /// Reads one key.
    fn get(&self, key: &[u8]) -> Result<Option<Value>>;

    /// Applies a batch atomically: after a crash either all of it is visible or none of it
    /// (once persisted, all of it).
    fn write(&self, batch: &[BatchOp]) -> Result<()>;

    /// Like [`Engine::write`], over borrowed keys and values (`None` deletes): the flusher
    /// writes hundreds of thousands of keys a second, and owned copies of each were a
    /// measurable share of a flush. The default copies into [`BatchOp`]s.
    fn write_refs(&self, batch: &[(&[u8], Option<&[u8]>)]) -> Result<()> {
        let owned: Vec<BatchOp> = batch
            .iter()
            .map(|(k, v)| match v {
                Some(v) => BatchOp::Put(k.to_vec(), v.to_vec()),
                None => BatchOp::Delete(k.to_vec()),
            })
            .collect();
        self.write(&owned)
    }

    /// Whether [`Engine::scan`] is supported.
    fn supports_scan(&self) -> bool;

    /// Up to `limit` entries of `range` in key order.
    fn scan(&self, range: &KeyRange, limit: usize) -> Result<Vec<(Key, Value)>>;

    /// Makes every write so far durable (survives `kill -9` and power loss).
    fn persist(&self) -> Result<()>;

    /// Visits every entry, in no particular order (used for snapshots and checks).
    fn for_each(&self, f: &mut Visitor<'_>) -> Result<()>;

    /// Whether a failed write latched the engine (see [`Engine::recover`]).
    fn latched(&self) -> bool {
        false
    }

    /// Whether a latched engine could be made writable again by [`Engine::recover`] once
    /// there is room (and so whether giving it room is worth anything).
    fn recoverable(&self) -> bool {
        false
    }

    /// Makes a latched engine writable again, if the failure allows it (a write that did not
    /// fit a full disk; never a failed sync, after which the page cache cannot be trusted).
    /// Returns whether the engine is writable. Nothing acknowledged depends on a latched
    /// engine: the Raft log holds every commit, and the flusher writes them again.
    fn recover(&self) -> Result<bool> {
        Ok(!self.latched())
    }
}

/// Whether an I/O error is a full disk (or quota): a write that did not happen for lack of
/// space, which the caller may try again once space is back.
pub fn is_no_space(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
        || matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}
