//! TafDB: a transactional, range-partitioned key-value store (work in progress).
pub mod engine;
pub mod error;
pub mod keys;
pub mod mvcc;
pub mod tso;

pub use error::{Error, Result};
