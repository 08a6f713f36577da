//! Hooks: how an extension sees the operations that change the tree, inside their
//! transaction.
//!
//! The namespace crate knows nothing of scripts. It offers a [`Hooks`] slot in the [`Ctx`]
//! (`dsl` fills it) and calls it before and after each operation that makes, removes or
//! moves an entry ([`HookOp`]), in the operation's own transaction: a hook may refuse the
//! operation with an errno or add writes of its own, and a conflict retries both together.
//! With no hooks set the operations pay nothing.

use std::any::Any;

use indexnode::Cred;
use metastore::Attr;
use tafdb::{BoxFuture, Txn};

use crate::api::Loc;
use crate::ctx::Ctx;
use crate::error::OpResult;

/// The operations a hook can watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HookOp {
    /// `mkdir`.
    Mkdir,
    /// `mknod`: a regular file, fifo, socket or device node.
    Create,
    /// `symlink`.
    Symlink,
    /// `link`: a new name of an existing inode.
    Link,
    /// `unlink`.
    Unlink,
    /// `rmdir`.
    Rmdir,
    /// `rename`.
    Rename,
}

impl HookOp {
    /// Every operation, in a fixed order.
    pub const ALL: [HookOp; 7] = [
        HookOp::Mkdir,
        HookOp::Create,
        HookOp::Symlink,
        HookOp::Link,
        HookOp::Unlink,
        HookOp::Rmdir,
        HookOp::Rename,
    ];

    /// Its lower-case name (`mkdir`, `create`, ...).
    pub fn name(self) -> &'static str {
        match self {
            HookOp::Mkdir => "mkdir",
            HookOp::Create => "create",
            HookOp::Symlink => "symlink",
            HookOp::Link => "link",
            HookOp::Unlink => "unlink",
            HookOp::Rmdir => "rmdir",
            HookOp::Rename => "rename",
        }
    }

    /// The operation named `name`.
    pub fn from_name(name: &str) -> Option<HookOp> {
        HookOp::ALL.into_iter().find(|o| o.name() == name)
    }
}

/// Before the operation runs, or after it succeeded (still in its transaction).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum When {
    /// Before: nothing is checked or written yet.
    Before,
    /// After: the operation's writes are in the transaction.
    After,
}

impl When {
    /// `before` or `after`.
    pub fn name(self) -> &'static str {
        match self {
            When::Before => "before",
            When::After => "after",
        }
    }
}

/// What an operation tells its hooks.
#[derive(Clone, Copy, Debug)]
pub struct HookCall<'a> {
    /// Which operation.
    pub op: HookOp,
    /// The namespace's name.
    pub ns: &'a [u8],
    /// The caller.
    pub cred: &'a Cred,
    /// The entry made, removed, or moved (a rename's source; a link's new name).
    pub at: &'a Loc,
    /// A rename's destination.
    pub to: Option<&'a Loc>,
    /// The requested mode (mkdir, create), or a rename's flags.
    pub mode: u32,
}

impl<'a> HookCall<'a> {
    /// What operation `op` tells its hooks.
    pub fn new(
        op: HookOp,
        (ns, cred): (&'a [u8], &'a Cred),
        at: &'a Loc,
        to: Option<&'a Loc>,
        mode: u32,
    ) -> HookCall<'a> {
        HookCall {
            op,
            ns,
            cred,
            at,
            to,
            mode,
        }
    }
}

/// One hook point of one operation.
#[derive(Clone, Copy, Debug)]
pub struct Event<'a> {
    /// The operation.
    pub call: &'a HookCall<'a>,
    /// Before or after it.
    pub when: When,
    /// After an operation that makes an inode or a name: the inode's attributes.
    pub result: Option<&'a Attr>,
}

/// An extension that runs at the hook points of the namespace operations.
pub trait Hooks: Send + Sync + 'static {
    /// Runs at `event`, in the operation's transaction. An error fails the operation (and
    /// drops its transaction); a retryable store error retries it.
    fn run<'a>(
        &'a self,
        ctx: &'a Ctx,
        txn: &'a mut Txn,
        event: Event<'a>,
    ) -> BoxFuture<'a, OpResult<()>>;

    /// Itself, so that the extension's own operations can find it in the [`Ctx`].
    fn as_any(&self) -> &dyn Any;
}
