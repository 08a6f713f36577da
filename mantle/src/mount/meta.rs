//! Where a mount's namespace operations run.

use std::sync::Arc;

use coprocessor::{FsError, Op, Service};
use tafdb::BoxFuture;

/// The namespace a mount serves: something that runs the inode form of a namespace operation.
/// The embedded mode runs it in this process; a client of a server would send it.
pub trait Meta: Send + Sync + 'static {
    /// The namespace's name.
    fn namespace(&self) -> &[u8];
    /// Runs `op`.
    fn call<'a, R: Op + Sync>(&'a self, op: &'a R) -> BoxFuture<'a, Result<R::Reply, FsError>>;
    /// Puts every acknowledged change on disk, when the store defers its syncs (blocks).
    fn sync(&self) -> Result<(), FsError>;
}

/// The store in this process.
pub struct Embedded {
    svc: Arc<Service>,
    ns: Vec<u8>,
}

impl Embedded {
    /// Namespace `ns` of `svc`.
    pub fn new(svc: Arc<Service>, ns: Vec<u8>) -> Embedded {
        Embedded { svc, ns }
    }
}

impl Meta for Embedded {
    fn namespace(&self) -> &[u8] {
        &self.ns
    }

    fn call<'a, R: Op + Sync>(&'a self, op: &'a R) -> BoxFuture<'a, Result<R::Reply, FsError>> {
        Box::pin(self.svc.call(op))
    }

    fn sync(&self) -> Result<(), FsError> {
        self.svc
            .db()
            .sync()
            .map_err(|e| FsError::new(coprocessor::Errno::EIO, format!("syncing the store: {e}")))
    }
}
