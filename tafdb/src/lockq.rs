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

/// Held queue locks by key.
type Held = Mutex<BTreeMap<Key, OwnedMutexGuard<()>>>;

/// The locks one transaction (and its retries) holds. Dropping it releases them.
///
/// A snapshot reader's set ([`LockSet::none`]) holds nothing and allocates nothing: readers
/// never queue.
#[derive(Clone)]
pub struct LockSet {
    held: Option<Arc<Held>>,
}

impl Default for LockSet {
    fn default() -> Self {
        LockSet {
            held: Some(Arc::default()),
        }
    }
}

impl std::fmt::Debug for LockSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockSet")
            .field("held", &self.len())
            .finish()
    }
}

impl LockSet {
    /// The set of a transaction that takes no locks (a snapshot reader).
    pub(crate) fn none() -> LockSet {
        LockSet { held: None }
    }

    /// Whether `key` is held.
    pub fn holds(&self, key: &[u8]) -> bool {
        self.held
            .as_ref()
            .is_some_and(|h| h.lock().contains_key(key))
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.held.as_ref().map_or(0, |h| h.lock().len())
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Releases every lock.
    pub fn release_all(&self) {
        if let Some(h) = &self.held {
            h.lock().clear();
        }
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
            Ok(guard) => match &set.held {
                Some(h) => {
                    h.lock().insert(key.to_vec(), guard);
                    Ok(true)
                }
                None => {
                    drop(guard);
                    self.forget(key);
                    Err(Error::InvalidArgument(
                        "a snapshot reader takes no hot-key locks".into(),
                    ))
                }
            },
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
        let Some(held) = &set.held else {
            return;
        };
        let keys: Vec<Key> = held.lock().keys().cloned().collect();
        set.release_all();
        for k in keys {
            self.forget(&k);
        }
    }
}
