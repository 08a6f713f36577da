//! An MStore-like chunk store: the durable medium under Mantle-rs.
//!
//! What it is: [`frame`] (MStore's record header: `prev_size, curr_size, prev_crc, curr_crc,
//! flags, self_cksum`, CRC32C, and the recovery scan that keeps exactly the complete records),
//! [`disk::Disk`] (a chunk server's disk engine: one file with a superblock, a chunk table and
//! a block table, group-committed appends), and [`blob`] (`LogBlob`s and `ExtentBlob`s made of
//! chunks, with versions and single-writer leases).
//!
//! Writes go through `pwrite` + `fdatasync`, or io_uring with `CHUNK_BACKEND_URING=1`
//! ([`uring`] explains why `pwrite` is the default). A store may defer its syncs
//! ([`disk::Disk::set_deferred_sync`]: acknowledged once written to the kernel, durable after
//! [`disk::Disk::sync`]). `ExtentBlob`s are
//! log-structured on the same chunks.
//!
//! [`files::FileStore`] keeps the contents of many files in one log of chunks (the FUSE
//! mount's file data), with the extent index `ExtentBlob`s use.
//!
//! [`replica`] puts chunk servers and a master behind gRPC and writes each record to three
//! servers at once, sealing and moving on when one fails.
//!
//! [`atomic`] is the one way a small state file is replaced durably and read back verified,
//! for the whole workspace.
//!
//! Key types: [`disk::Disk`], [`disk::DiskConfig`], [`blob::LogStore`], [`blob::Position`],
//! [`files::FileStore`],
//! [`replica::client::ReplicatedLog`], [`conformance::LogBlobStore`], [`Error`].

pub mod atomic;
pub mod blob;
pub mod conformance;
pub mod crashload;
pub mod disk;
pub mod error;
mod extents;
pub mod files;
pub mod frame;
pub mod replica;
pub mod uring;

pub use error::{Error, Result};
