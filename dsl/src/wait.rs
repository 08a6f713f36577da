//! Running a script, which is synchronous, from the asynchronous store.
//!
//! A script's host functions read and write through the call's [`tafdb::Txn`], whose reads
//! are futures. A local read is almost always ready at its first poll, so [`wait`] polls in
//! place and parks the thread only when it has to wait (a commit in flight, a lock, a remote
//! tablet). Parking a runtime worker would stall every task queued behind it, so such a wait,
//! and a whole call of a script version known to run long, runs under [`off_worker`]: on a
//! multi-threaded runtime's worker, the worker's other tasks move to another thread for that
//! time (`block_in_place`). Calls start in place, because that hand-off costs a thread
//! wake-up (measured: 50 us of CPU per call under load); one that runs past a budget of a
//! couple of milliseconds is stopped and retried off the workers (see `host::run`), so a
//! looping script costs its own thread until its limit, not the node's request loop.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;

struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Drives `fut` to completion on this thread. A call running in place on a runtime worker
/// that has to wait hands the worker's other tasks over for the wait.
pub(crate) fn wait<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
        return v;
    }
    let mut park = || loop {
        // A spurious unpark only costs one more poll.
        std::thread::park();
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
    };
    if crate::host::inline() {
        off_worker(park)
    } else {
        park()
    }
}

/// Runs `f`, which may block for a while, without holding up a runtime worker's other tasks.
pub(crate) fn off_worker<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        // A current-thread runtime has no other worker to hand its tasks to: the call runs in
        // place (its reads still complete: the store's pipeline has a runtime of its own).
        Ok(RuntimeFlavor::CurrentThread) | Err(_) => f(),
        Ok(_) => tokio::task::block_in_place(f),
    }
}
