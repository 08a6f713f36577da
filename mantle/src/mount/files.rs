//! The mount's state per file in use: open handles, the write buffer, the end the namespace
//! has not heard of yet, and the attributes of an open file whose last name is gone.

use std::collections::HashMap;
use std::sync::Arc;

use metastore::Attr;

/// The most bytes of contiguous writes a file buffers before they go to the file store.
pub(crate) const BUFFER: usize = 1 << 20;

/// One file the mount is working on. Its lock is held across the file store's I/O, so that a
/// file's flushes, truncates and reads happen one at a time and in order.
#[derive(Debug, Default)]
pub(crate) struct Node {
    /// Open handles.
    pub(crate) handles: u32,
    /// Buffered writes: they start at `buf_start`.
    pub(crate) buf_start: u64,
    pub(crate) buf: Vec<u8>,
    /// One past the last byte written that the namespace has not been told of (0: none).
    pub(crate) unreported: u64,
    /// The size as this mount knows it (refreshed at every open: close-to-open).
    pub(crate) size: Option<u64>,
    /// An open file whose last link is gone: its attributes, kept until the last close.
    pub(crate) unlinked: Option<Attr>,
}

impl Node {
    /// Nothing here that the namespace or the file store does not know.
    fn idle(&self) -> bool {
        self.handles == 0 && self.buf.is_empty() && self.unreported == 0 && self.unlinked.is_none()
    }

    /// The size including what is buffered or unreported.
    pub(crate) fn size_with(&self, known: u64) -> u64 {
        let buffered = if self.buf.is_empty() {
            0
        } else {
            self.buf_start + self.buf.len() as u64
        };
        known.max(self.unreported).max(buffered)
    }
}

pub(crate) type NodeRef = Arc<tokio::sync::Mutex<Node>>;

/// Every file in use, by inode id.
#[derive(Debug, Default)]
pub(crate) struct Nodes {
    map: parking_lot::Mutex<HashMap<u64, NodeRef>>,
}

impl Nodes {
    /// The file's state, made if it has none.
    pub(crate) fn get(&self, ino: u64) -> NodeRef {
        self.map.lock().entry(ino).or_default().clone()
    }

    /// The file's state, if it has any.
    pub(crate) fn peek(&self, ino: u64) -> Option<NodeRef> {
        self.map.lock().get(&ino).cloned()
    }

    /// Forgets the file's state once it holds nothing. The caller holds `node`, the lock of
    /// `at`. A state another task has taken from the map (and waits to lock) stays: that task
    /// must find its changes in the map's state, not in a forgotten one.
    pub(crate) fn forget_if_idle(&self, ino: u64, at: &NodeRef, node: &Node) {
        if !node.idle() {
            return;
        }
        let mut map = self.map.lock();
        // The map's reference and the caller's: nobody else has it.
        if Arc::strong_count(at) == 2 && map.get(&ino).is_some_and(|n| Arc::ptr_eq(n, at)) {
            map.remove(&ino);
        }
    }
}
