//! Write watches: a way for a layer above to hear of every write to a key prefix in the order
//! the tablet sees it, so that it can keep a cache of those keys exact (the IndexNode's path
//! cache is the one user).
//!
//! A watch hears four things, each called synchronously at the point where the tablet's own
//! readers would start to care:
//! - [`WriteWatch::pending`]: on the leader, a transaction registered a write mark on the key.
//!   It happens before the transaction takes its commit timestamp, so a reader whose snapshot
//!   is above that timestamp looks after the call. [`WriteWatch::settled`] follows once the
//!   mark is dropped (the commit applied, or the transaction gave up).
//! - [`WriteWatch::locked`]: on every replica, a two-phase commit's write lock on the key was
//!   applied (`true`) or removed by a commit or rollback (`false`).
//! - [`WriteWatch::applied`]: on every replica, in log order, a committed version of the key
//!   was installed (also at replay after a restart).
//! - [`WriteWatch::reset`]: the in-memory state was dropped because a snapshot replaced the
//!   engines: everything the watch learned before is void.
//!
//! Architecture Invariant: a watch is called for a key before any reader of this tablet could
//! observe the write it reports (marks are announced before the ticket, versions before the
//! entry's readers are woken), so a cache maintained from the calls plus a validation against
//! the tablet when it fills ([`crate::tablet::Tablet::still_current`]) never serves a value a
//! snapshot read would not.

use std::sync::{Arc, OnceLock};

/// What a watch hears; see the module docs. Calls come from the apply path and the commit
/// path: they must be short and must not block on the tablet.
pub trait WriteWatch: Send + Sync + 'static {
    /// A write mark on `key` was registered on the leader.
    fn pending(&self, key: &[u8]);
    /// A mark announced by [`WriteWatch::pending`] was dropped.
    fn settled(&self, key: &[u8]);
    /// A 2PC write lock on `key` was applied (`true`) or removed (`false`).
    fn locked(&self, key: &[u8], locked: bool);
    /// A committed version of `key` was installed.
    fn applied(&self, key: &[u8]);
    /// The tablet's state was replaced wholesale.
    fn reset(&self);
}

/// A watch over the keys that start with `prefix`.
pub(crate) struct Watch {
    prefix: Vec<u8>,
    sink: Arc<dyn WriteWatch>,
}

/// The one watch a tablet may have, set once (`OnceLock`: the hot paths pay one atomic load
/// when there is none).
#[derive(Default)]
pub(crate) struct WatchSlot(OnceLock<Watch>);

impl WatchSlot {
    /// Sets the watch; fails if one is set.
    pub(crate) fn set(&self, prefix: Vec<u8>, sink: Arc<dyn WriteWatch>) -> bool {
        self.0.set(Watch { prefix, sink }).is_ok()
    }

    /// The watch's sink, if `key` is watched.
    #[inline]
    pub(crate) fn for_key(&self, key: &[u8]) -> Option<&dyn WriteWatch> {
        let w = self.0.get()?;
        key.starts_with(&w.prefix).then_some(&*w.sink)
    }

    /// The sink, if a watch is set.
    pub(crate) fn any(&self) -> Option<&dyn WriteWatch> {
        self.0.get().map(|w| &*w.sink)
    }
}
