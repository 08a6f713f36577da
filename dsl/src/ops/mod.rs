//! The script operations, one file each: every one is a namespace [`coprocessor::Op`], so it
//! runs in one transaction next to the data, retried on conflicts, and a mutation called with
//! a request id answers a retry what it answered first.

pub mod call;
pub mod list;
pub mod push;
pub mod set;
pub mod show;

use coprocessor::{Errno, FsError, OpResult};
use indexnode::Cred;
use serde::{Deserialize, Serialize};

/// A script as `list` and the changing operations report it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptInfo {
    /// Its name.
    pub name: String,
    /// The version calls run (0: disabled).
    pub current: u64,
    /// The newest version.
    pub latest: u64,
    /// Where its hooks are bound.
    pub hooks: Vec<HookInfo>,
}

/// One hook binding, for reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookInfo {
    /// The namespace.
    pub ns: Vec<u8>,
    /// `before_<op>` or `after_<op>`.
    pub event: String,
    /// The subtree (`/`: all of it).
    pub prefix: Vec<u8>,
}

/// Changing scripts is for administrators.
pub(crate) fn admin(cred: &Cred, what: &str) -> OpResult<()> {
    if cred.is_root() {
        Ok(())
    } else {
        Err(FsError::new(
            Errno::EPERM,
            format!("{what} needs root (an administrative call)"),
        )
        .into())
    }
}
