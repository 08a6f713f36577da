//! The per-key lock queue: pessimistic concurrency control for configured hot keys.
//!
//! Optimistic transactions on a key that many of them read and rewrite (a counter updated by
//! read-modify-write, a directory renamed over and over) mostly abort each other: under N-way
//! contention each success costs about N attempts. For keys configured as hot
//! ([`crate::DbConfig::hot_keys`]), a transaction instead waits in a FIFO queue for the key
//! before it reads or writes it, and keeps its place until its commit has been applied. The
//! flow:
//!
//! 1. `Txn::get`, `Txn::get_stable` and, at commit, every written hot key not yet held, take the
//!    key's lock (in key order at commit, so commit-time acquisition never deadlocks).
//! 2. Having got the lock, the transaction checks whether the key changed after its snapshot
//!    (the previous holder committed). If so it fails with a retryable conflict *but keeps the
//!    lock*: [`crate::Db::run_txn`] carries the [`LockSet`] into the next attempt, whose fresh
//!    snapshot already contains the previous holder's write. So each transaction needs at most
//!    two attempts on a hot key, and the queue is fair.
//! 3. Waiting longer than [`crate::DbConfig::lock_wait_ms`] (two transactions waiting for each
//!    other's keys, taken in different orders by reads) releases every lock the transaction
//!    holds and fails with a retryable conflict, so a deadlock turns into a bounded retry.
//!
//! Delta records never take the lock: they commute and never conflict. Scans are not locked:
//! phantoms in scanned ranges stay optimistic. The queue lives in the process that runs the
//! transaction (the embedded mode and coprocessors); it is not replicated.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use parking_lot::Mutex;
use tokio::sync::OwnedMutexGuard;

use crate::error::{Error, Result};
use crate::keys::Key;

/// The locks one transaction (and its retries) holds. Dropping it releases them.
#[derive(Clone, Default)]
pub struct LockSet {
    held: Arc<Mutex<BTreeMap<Key, OwnedMutexGuard<()>>>>,
}

impl std::fmt::Debug for LockSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockSet")
            .field("held", &self.held.lock().len())
            .finish()
    }
}

impl LockSet {
    /// Whether `key` is held.
    pub fn holds(&self, key: &[u8]) -> bool {
        self.held.lock().contains_key(key)
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.held.lock().len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.lock().is_empty()
    }

    /// Releases every lock.
    pub fn release_all(&self) {
        self.held.lock().clear();
    }
}

/// The queues of one database.
#[derive(Default)]
pub struct LockTable {
    prefixes: Vec<Key>,
    queues: DashMap<Key, Arc<tokio::sync::Mutex<()>>>,
    wait: Duration,
}

impl LockTable {
    /// Queues for keys starting with any of `prefixes`.
    pub fn new(prefixes: Vec<Key>, wait: Duration) -> LockTable {
        LockTable {
            prefixes,
            queues: DashMap::new(),
            wait,
        }
    }

    /// Whether `key` is configured as hot.
    pub fn is_hot(&self, key: &[u8]) -> bool {
        self.prefixes.iter().any(|p| key.starts_with(p))
    }

    /// Waits for `key`'s lock and adds it to `set`. Returns `true` if it had to be taken (it
    /// was not already held). On timeout every lock of `set` is released.
    pub async fn acquire(&self, set: &LockSet, key: &[u8]) -> Result<bool> {
        if set.holds(key) {
            return Ok(false);
        }
        let queue = self.queues.entry(key.to_vec()).or_default().clone();
        match tokio::time::timeout(self.wait, queue.lock_owned()).await {
            Ok(guard) => {
                set.held.lock().insert(key.to_vec(), guard);
                Ok(true)
            }
            Err(_) => {
                set.release_all();
                self.forget(key);
                Err(Error::conflict(
                    key,
                    "timed out waiting in the hot-key lock queue",
                ))
            }
        }
    }

    /// Drops the queue of `key` when nobody uses it, so the table does not grow without bound.
    pub fn forget(&self, key: &[u8]) {
        self.queues.remove_if(key, |_, q| {
            Arc::strong_count(q) == 1 && q.try_lock().is_ok()
        });
    }

    /// Releases `set` and drops idle queues.
    pub fn release(&self, set: &LockSet) {
        let keys: Vec<Key> = set.held.lock().keys().cloned().collect();
        set.release_all();
        for k in keys {
            self.forget(&k);
        }
    }
}
