//! Hooks: how an extension sees the operations that change the tree, inside their
//! transaction.
//!
//! The namespace crate knows nothing of scripts. It offers a [`Hooks`] slot in the [`Ctx`]
//! (`dsl` fills it) and calls it around each operation that makes, removes or moves an entry
//! ([`HookOp`]), in the operation's own transaction: before it, instead of it (a replacement
//! implementation, such as a script version of the operation), and after it. A hook may
//! refuse the operation with an errno or add writes of its own, and a conflict retries both
//! together. The extension works out once per attempt what runs ([`Hooks::plan`]); with no
//! hooks set the operations pay nothing.

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

/// Before the operation runs, instead of it, or after it succeeded (all in its transaction).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum When {
    /// Before: nothing is checked or written yet.
    Before,
    /// Instead: a replacement does the operation's whole work (checks included).
    Instead,
    /// After: the operation's writes are in the transaction.
    After,
}

impl When {
    /// `before`, `instead` or `after`.
    pub fn name(self) -> &'static str {
        match self {
            When::Before => "before",
            When::Instead => "instead",
            When::After => "after",
        }
    }
}

/// What an extension will run around one attempt of one operation, worked out once by
/// [`Hooks::plan`] (its contents are the extension's).
pub struct Plan(pub Box<dyn Any + Send + Sync>);

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Plan")
    }
}

/// What ran at [`When::Instead`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ran {
    /// Nothing: the built-in operation runs.
    Builtin,
    /// A replacement did the operation; for one that makes an inode or a name, its id.
    Instead(Option<u64>),
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
    /// What runs around this attempt of `call` (`None`: nothing; the operation runs alone).
    fn plan<'a>(
        &'a self,
        ctx: &'a Ctx,
        txn: &'a mut Txn,
        call: &'a HookCall<'a>,
    ) -> BoxFuture<'a, OpResult<Option<Plan>>>;

    /// Runs `plan`'s hooks at `event`, in the operation's transaction. An error fails the
    /// operation (and drops its transaction); a retryable store error retries it. At
    /// [`When::Instead`] it says whether a replacement did the operation.
    fn run<'a>(
        &'a self,
        ctx: &'a Ctx,
        txn: &'a mut Txn,
        plan: &'a Plan,
        event: Event<'a>,
    ) -> BoxFuture<'a, OpResult<Ran>>;

    /// Itself, so that the extension's own operations can find it in the [`Ctx`].
    fn as_any(&self) -> &dyn Any;
}

/// The reply of an operation a replacement did, that made inode `made`: its attributes.
pub fn made_attr(txn: &mut Txn, made: Option<u64>) -> BoxFuture<'_, OpResult<Attr>> {
    Box::pin(async move {
        match made {
            Some(id) => crate::resolve::must_attr(txn, id).await,
            None => crate::error::fail(
                crate::error::Errno::EIO,
                "the replacement of an operation that makes an inode did not name it",
            ),
        }
    })
}
