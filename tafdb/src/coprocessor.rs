//! The coprocessor hook: named functions that run inside the store's node against a local
//! transaction, so that a client call costs one RPC however many keys it touches.
//!
//! TafDB knows nothing about what a coprocessor does (paths, permissions, Rhai); the namespace
//! crates implement [`Coprocessor`] and register them with [`crate::Db::register_coprocessor`].
//! [`crate::Db::call_coprocessor`] runs one inside [`crate::Db::run_txn`]: the function may be
//! called more than once on conflicts, so it must not cause side effects outside the
//! transaction.

use std::future::Future;
use std::pin::Pin;

use crate::error::Result;
use crate::txn::Txn;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A function that runs next to the data, against a transaction.
pub trait Coprocessor: Send + Sync + 'static {
    /// The name it is registered and called under.
    fn name(&self) -> &str;

    /// Whether it only reads: then it runs in a snapshot reader ([`crate::Db::run_read`]),
    /// which refuses writes and validates nothing at commit.
    fn read_only(&self) -> bool {
        false
    }

    /// Runs with `input` and returns the reply. The caller commits the transaction afterwards.
    fn call<'a>(&'a self, txn: &'a mut Txn, input: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>>>;
}
