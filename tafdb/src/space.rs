//! A full disk: refuse what would need space, keep serving what does not, recover by itself.
//!
//! Commits never need disk space at the moment they are acknowledged: the Raft log is a store
//! allocated when the tablet was made, and the oracle's mark, votes and purge marks are
//! rewritten in place. What needs space is the flusher, which writes the engines (RocksDB, the
//! hash engine's file) so the log can be purged. When the disk fills, the flusher fails, its
//! engine latches (so that nothing is appended after bytes of unknown state), and the log can
//! no longer be purged. [`SpaceGuard`] watches the free space of the data directory:
//! - below the *reserve*, or with an engine latched, the store is *short of space*: new
//!   transactions that write are refused with [`Error::NoSpace`] (they did not happen), except
//!   those marked as freeing space ([`crate::Txn::frees_space`]: deletes), which may use the
//!   reserve; reads are unaffected;
//! - once the free space is back above the reserve, latched engines are recovered
//!   ([`crate::engine::Engine::recover`]), the flusher catches up, and writes resume.
//!
//! Half of the reserve is held by a *ballast* file (`reserve.ballast`, allocated). Whatever
//! fills the disk (the flusher writing what was acknowledged before the refusals, compactions,
//! another program), the ballast is still there: when an engine is latched and cannot be
//! recovered for lack of space (a restart on a full disk opens RocksDB read-only), the ballast
//! is deleted, which gives the engines room to reopen, flush the deletes and compact. It is
//! allocated again once space is plentiful.
//!
//! Architecture Invariant: no acknowledged commit depends on an engine write; a refused or
//! failed engine write loses nothing, because the flusher writes the same versions again.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::engine::Engine;
use crate::error::{Error, Result};

/// The reserve when none is configured: 5% of the file system, at most 256 MiB, and at least
/// what reopening the RocksDB engines after a failed write needs (their WALs become table
/// files: two engines, up to two memtables each).
pub fn default_reserve(total: u64) -> u64 {
    (total / 20)
        .max(4 * crate::engine::memtable_bytes(total))
        .min(256 << 20)
}

/// The space state of one database.
pub struct SpaceGuard {
    dir: PathBuf,
    reserve: u64,
    short: AtomicBool,
    available: AtomicU64,
    /// Why space is short, for the error callers get.
    reason: parking_lot::Mutex<String>,
    /// The ballast file, if one is kept.
    ballast: Option<PathBuf>,
    /// When the next recovery of a latched engine may be tried, and the pause after that (a
    /// reopen that fails for lack of space is not retried four times a second).
    retry: parking_lot::Mutex<(std::time::Instant, std::time::Duration)>,
}

const FIRST_RETRY: std::time::Duration = std::time::Duration::from_millis(500);
const MAX_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

impl SpaceGuard {
    /// A guard for data in `dir`, keeping `reserve` bytes free (0: [`default_reserve`]), half
    /// of them in a ballast file if `ballast`.
    pub fn new(dir: PathBuf, reserve: u64, ballast: bool) -> Result<SpaceGuard> {
        let space = chunk_backend::disk::fs_space(&dir)?;
        let reserve = if reserve == 0 {
            default_reserve(space.total)
        } else {
            reserve
        };
        let g_dir = dir.clone();
        let g = SpaceGuard {
            dir,
            reserve,
            short: AtomicBool::new(false),
            available: AtomicU64::new(space.available),
            reason: parking_lot::Mutex::new(String::new()),
            ballast: ballast.then(|| dir_ballast(&g_dir)),
            retry: parking_lot::Mutex::new((std::time::Instant::now(), FIRST_RETRY)),
        };
        g.refill_ballast(space.available);
        if space.available < g.threshold() {
            g.short.store(true, Ordering::Release);
            *g.reason.lock() = g.below_reserve(space.available);
            tracing::warn!(
                available_mib = space.available >> 20,
                reserve_mib = reserve >> 20,
                "starting on a full disk: writes are refused (ENOSPC) until space is freed; \
                 reads and deletes work"
            );
        }
        Ok(g)
    }

    /// Allocates the ballast if it is missing and `available` leaves room for it and for
    /// the other half of the reserve.
    fn refill_ballast(&self, available: u64) {
        let Some(path) = &self.ballast else { return };
        let size = self.reserve / 2;
        if size == 0 || path.exists() || available < 2 * self.reserve + size {
            return;
        }
        let made = std::fs::File::create(path).and_then(|f| {
            f.set_len(0)?;
            chunk_backend::disk::allocate(&f, size)?;
            f.sync_all()
        });
        match made {
            Ok(()) => tracing::info!(mib = size >> 20, "disk reserve ballast allocated"),
            Err(e) => {
                let _ = std::fs::remove_file(path);
                tracing::warn!(error = %e, "cannot allocate the disk reserve ballast");
            }
        }
    }

    /// Deletes the ballast, giving its space to the engines. Returns whether there was one.
    fn release_ballast(&self, why: &str) -> bool {
        let Some(path) = &self.ballast else {
            return false;
        };
        match std::fs::remove_file(path) {
            Ok(()) => {
                tracing::warn!(
                    mib = (self.reserve / 2) >> 20,
                    "released the disk reserve ballast: {why}"
                );
                true
            }
            Err(_) => false,
        }
    }

    /// Below this much free space, writes are refused: the reserve, less the half the ballast
    /// holds when there is one.
    fn threshold(&self) -> u64 {
        if self.ballast.is_some() {
            self.reserve - self.reserve / 2
        } else {
            self.reserve
        }
    }

    /// The reserve in bytes.
    pub fn reserve(&self) -> u64 {
        self.reserve
    }

    /// Whether writes are refused now.
    pub fn is_short(&self) -> bool {
        self.short.load(Ordering::Acquire)
    }

    /// Free bytes at the last check.
    pub fn available(&self) -> u64 {
        self.available.load(Ordering::Relaxed)
    }

    /// Refuses a writing transaction while space is short, unless it frees space.
    pub fn admit(&self, frees_space: bool) -> Result<()> {
        if frees_space || !self.is_short() {
            return Ok(());
        }
        Err(Error::NoSpace(format!(
            "{}: only deletes are accepted until space is freed",
            self.reason.lock()
        )))
    }

    fn below_reserve(&self, available: u64) -> String {
        format!(
            "{} MiB free on {}, below the reserve of {} MiB",
            available >> 20,
            self.dir.display(),
            self.reserve >> 20
        )
    }

    /// One check: measures the free space, recovers latched engines once it is above the
    /// reserve, and decides whether space is short. Runs on a blocking thread (RocksDB reopens).
    pub fn check(&self, engines: &[Arc<dyn Engine>]) {
        let available = match chunk_backend::disk::fs_space(&self.dir) {
            Ok(s) => s.available,
            Err(e) => {
                tracing::warn!(error = %e, "cannot measure the free space");
                return;
            }
        };
        // Half the reserve is the ballast (allocated, so not in `available`).
        let threshold = self.threshold();
        let mut available = available;
        if self.ballast.as_ref().is_some_and(|b| !b.exists()) && available >= self.reserve {
            self.refill_ballast(available);
        }
        // Only an engine that room would make writable again is worth the ballast; and so is
        // the moment before one fails: with almost nothing free, the flusher's next write (of
        // versions already acknowledged, or of deletes) may fail, and a RocksDB engine that
        // fails a write takes no more until a restart.
        let stuck = engines.iter().any(|e| e.recoverable()) && available < threshold;
        let nearly_out = available < self.reserve / 8;
        let why = if stuck {
            "so that the engines can recover"
        } else {
            "the disk is nearly full, and the engines' next writes need room"
        };
        if (stuck || nearly_out) && self.release_ballast(why) {
            available = chunk_backend::disk::fs_space(&self.dir).map_or(available, |s| s.available);
        }
        self.available.store(available, Ordering::Relaxed);
        let roomy = available >= threshold;
        let mut latched = false;
        let now = std::time::Instant::now();
        let may_retry = roomy && self.retry.lock().0 <= now;
        let mut failed = false;
        for e in engines.iter().filter(|e| e.latched()) {
            if may_retry {
                match e.recover() {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(err) => {
                        failed = true;
                        tracing::warn!(error = %err, "recovering an engine failed");
                    }
                }
            }
            latched = true;
        }
        {
            let mut r = self.retry.lock();
            *r = if failed {
                (now + r.1, (r.1 * 2).min(MAX_RETRY))
            } else if !latched {
                (now, FIRST_RETRY)
            } else {
                *r
            };
        }
        let short = !roomy || latched;
        if short {
            *self.reason.lock() = if roomy {
                format!(
                    "an engine on {} failed a write and is not writable yet ({} MiB free; a \
                     RocksDB engine that failed a write needs a restart of the server)",
                    self.dir.display(),
                    available >> 20
                )
            } else {
                self.below_reserve(available)
            };
        }
        let was = self.short.swap(short, Ordering::AcqRel);
        if short && !was {
            tracing::warn!(
                available_mib = available >> 20,
                reserve_mib = self.reserve >> 20,
                latched,
                "disk space is short: refusing writes (ENOSPC) but deletes and reads"
            );
        } else if was && !short {
            tracing::info!(
                available_mib = available >> 20,
                "disk space is back: writes resume"
            );
        }
    }
}

fn dir_ballast(dir: &std::path::Path) -> PathBuf {
    dir.join("reserve.ballast")
}
