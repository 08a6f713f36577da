//! Mantle-rs, the product: a hierarchical namespace service you run with one command and talk
//! to over gRPC.
//!
//! What it is: the `mantle.v1` gRPC API ([`proto`], from `proto/mantle.proto`), the
//! validation that turns protobuf messages into the namespace's domain requests ([`convert`]),
//! the server ([`server::run`]: by default one process, one TafDB tablet holding the Index and
//! Meta tables, single-voter Raft, data in one directory; with `--init` / `--join` a node of a
//! cluster whose tablets are replicated over the nodes, with spares that replace dead voters
//! and tablets that may be led from different nodes, [`cluster`]; [`limits`] bounds what
//! clients may hold of it), the
//! access tokens ([`auth`]: who may call, and as which user), the
//! async client SDK ([`client::Client`], whose mutations carry request ids so that a retry
//! after a lost answer returns the first result), the FUSE mount ([`mount::run`]: a namespace
//! as a POSIX file system, the store and the file data in the mount process) and the `mantle`
//! CLI built on them.
//! `docs/operations.md` is the operator's side: flags, limits, a full disk, shutdown.
//!
//! What it is not: the namespace logic itself (the `coprocessor` crate) or the store (`tafdb`).
//! This crate moves requests in and out; the mount also keeps the state of the files in use.
//!
//! Key types: [`server::ServerConfig`], [`server::Limits`], [`server::serve`],
//! [`mount::MountConfig`],
//! [`cluster::Mode`], [`auth::Tokens`], [`client::Client`], [`status`].

pub mod auth;
pub mod client;
pub mod cluster;
pub mod convert;
mod layer;
pub mod limits;
pub mod mount;
pub mod scripts;
pub mod server;
pub mod status;

/// The generated protobuf types and gRPC stubs of `mantle.v1`.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("mantle.v1");
}

/// The default address of `mantle serve` and the CLI.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7420";
/// The namespace `mantle serve` creates on a fresh data directory, and the CLI's default.
pub const DEFAULT_NAMESPACE: &str = "default";
