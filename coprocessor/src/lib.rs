//! The namespace operations of Mantle-rs, written once over a TafDB transaction.
//!
//! What it is: POSIX-style operations (mkdir, create, unlink, rmdir, rename with
//! `RENAME_NOREPLACE`/`RENAME_EXCHANGE`, link, symlink, readlink, readdir, setattr, statfs,
//! xattrs, namespaces, and `wrote`: a mount's report that a file's data grew) over the Index table ([`indexnode`]) and the Meta table ([`metastore`]).
//! Each operation is a request type implementing [`Op`] whose `run` is one retryable closure
//! over a [`tafdb::Txn`]: resolve the path, check permissions, write. [`Service`] registers them
//! as TafDB coprocessors (how a remote node calls them, by name) and runs them directly in its
//! own process (read-only ones as snapshot readers), so a client call is one RPC and one
//! transaction next to the data; in
//! the single-tablet (MantleX) layout every one of them commits in one phase. Parent link
//! counts and times change through delta records, so concurrent creates in one directory do not
//! conflict; a rename or chmod of a busy directory writes field sets, so it commutes with them.
//! [`fsck`] checks the namespace invariants. [`dedup`] makes a retried mutation (same
//! [`dedup::RequestId`]) answer what its first attempt answered. Operations that free space
//! (`Op::FREES_SPACE`: unlink, rmdir, xattr removal) still run when the disk is short of space.
//! Path resolution ([`resolve`]) takes the leading directories of a deep path from the
//! IndexNode's path cache ([`indexnode::PathCache`], set up by [`service::Options`]) when this
//! node leads the Index table; `lookup` (DirectStat) resolves a directory in one call.
//!
//! [`hooks`] lets an extension (the `dsl` crate's scripts) run before and after every
//! operation that makes, removes or moves an entry, in the operation's transaction.
//!
//! What it is not: no network, no protobuf, no FUSE (those live in `mantle`), and no scripts
//! (those are `dsl`).
//!
//! Key types: [`Service`], [`Op`], [`api::Loc`], [`api::Obj`], [`FsError`], [`Errno`],
//! [`fsck::Report`].

pub mod api;
pub mod ctx;
pub mod dedup;
pub mod error;
pub mod fsck;
pub mod hooks;
pub mod ops;
pub mod resolve;
pub mod service;

pub use error::{Errno, FsError, OpError, OpResult};
pub use service::{Op, Service};
