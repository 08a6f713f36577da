//! Directory-tree logic as hot-swappable, sandboxed Rhai scripts that run inside the store.
//!
//! What it is: a script registry and engine over the namespace service. A script is Rhai
//! source pushed by an administrator ([`ops::push::ScriptPush`]); each push is a new version,
//! stored in the system table through the Raft log like any write, so every replica switches
//! at the same log index. A script's functions are called as operations
//! ([`ops::call::ScriptCall`]: `mantle script call NAME FUNCTION ARGS..`) or run as hooks
//! before and after the built-in operations of a namespace or subtree (`before_mkdir`,
//! `after_rename`, ...; see [`coprocessor::hooks`]). Either way the script runs in the
//! operation's own TafDB transaction, next to the data, and is retried with it on a
//! conflict: it must have no effect outside it, and the host API ([`host`]) offers nothing
//! that has (no files, network, clock or randomness).
//!
//! Every version is compiled once. Every call runs under [`Limits`]: Rhai's own (operations,
//! call depth, expression depth, string/array/map sizes) and the store's (store operations,
//! bytes written, a wall-clock deadline). A script that loops, recurses, allocates or panics
//! fails its own call with an error naming the script, its version and the limit
//! (`ECANCELED`); the node serves everything else.
//!
//! What it is not: no network or protobuf (`mantle` puts gRPC and the CLI in front), and
//! not a way around permissions: namespace functions act as the caller. Raw store writes and
//! pushing scripts are for administrators.
//!
//! Key types: [`Scripts`] (set up with [`install`]), [`Limits`], [`Value`], the operations in
//! [`ops`].

pub mod engine;
mod hooks;
pub mod host;
pub mod ops;
pub mod registry;
mod tree;
pub mod value;

pub use rhai;
mod wait;

use std::sync::Arc;

use coprocessor::Service;

pub use engine::Limits;
pub use registry::Scripts;
pub use value::Value;

/// Enables scripts on `svc`: registers the script operations and makes the built-in
/// operations call script hooks. Fails if another extension holds the hook slot.
pub fn install(svc: &Service, limits: Limits) -> Result<Arc<Scripts>, coprocessor::FsError> {
    install_with(svc, limits, |_| {})
}

/// [`install`], with native functions of the embedder's own added to the engine by `extra`
/// (they run inside the sandbox's limits like the host API's; they must be deterministic and
/// free of effects outside the transaction).
pub fn install_with(
    svc: &Service,
    limits: Limits,
    extra: impl FnOnce(&mut rhai::Engine),
) -> Result<Arc<Scripts>, coprocessor::FsError> {
    let scripts = Arc::new(Scripts::new(svc.ctx(), limits, extra));
    svc.ctx().set_hooks(scripts.clone()).map_err(|_| {
        coprocessor::FsError::new(
            coprocessor::Errno::EBUSY,
            "the namespace service already has hooks installed",
        )
    })?;
    svc.register::<ops::call::ScriptCall>();
    svc.register::<ops::push::ScriptPush>();
    svc.register::<ops::list::ScriptList>();
    svc.register::<ops::show::ScriptShow>();
    svc.register::<ops::set::ScriptSet>();
    Ok(scripts)
}
