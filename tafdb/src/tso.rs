//! The timestamp oracle: strictly increasing hybrid timestamps that never go back, even across a
//! restart.
//!
//! A timestamp is `physical_ms << 18 | logical`, so it orders like wall-clock time and a
//! timestamp's age can be read off it (the MVCC window uses that). Timestamps are handed out
//! from memory; only a high-water mark is persisted, a few seconds ahead of what was handed
//! out, so one `fsync` covers millions of timestamps (the "batch"). After a restart the oracle
//! starts above the persisted mark.
//!
//! In a cluster the mark is not a local file but an entry of the timestamp group's Raft log
//! ([`Tso::replicated`]): the leader hands out timestamps only below a mark the group has
//! committed, and a new leader starts above every committed mark (it has applied them all
//! before it serves). So timestamps never go back across a leader change, even when the old
//! leader's clock ran ahead or it handed out timestamps that no commit carries.

use std::path::Path;

use chunk_backend::atomic::SlotFile;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::error::{Error, Result};

/// Bits of a timestamp that hold the logical counter.
pub const LOGICAL_BITS: u32 = 18;
/// How far ahead of the handed-out timestamps the persisted mark is set (3 s of physical time).
const BATCH: u64 = 3_000 << LOGICAL_BITS;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The physical part of a timestamp, in milliseconds.
pub fn physical_ms(ts: u64) -> u64 {
    ts >> LOGICAL_BITS
}

/// Builds the smallest timestamp of a millisecond.
pub fn ts_from_ms(ms: u64) -> u64 {
    ms << LOGICAL_BITS
}

/// A persistent, strictly increasing timestamp source.
pub struct Tso {
    inner: Arc<Inner>,
}

struct Inner {
    last: AtomicU64,
    limit: AtomicU64,
    /// Where the mark lives: rewritten in place, so that the oracle keeps working on a full
    /// disk (a replacement file would need new blocks, and without timestamps nothing runs,
    /// not even reads).
    file: Mutex<Option<SlotFile>>,
    /// The mark is raised by whoever replicates it ([`Tso::set_limit`]), never by `next`.
    replicated: bool,
    /// Woken when `next` finds the mark too close (see [`Tso::wanted_mark`]).
    raise: tokio::sync::Notify,
}

/// When the handed-out timestamps come this close to the persisted mark, the background thread
/// raises it (1.5 s of physical time), so that `next` rarely has to wait for an `fsync`.
const RAISE_AHEAD: u64 = 1_500 << LOGICAL_BITS;

impl std::fmt::Debug for Tso {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tso")
            .field("last", &self.inner.last.load(Ordering::Relaxed))
            .finish()
    }
}

impl Tso {
    /// Opens the oracle whose high-water mark lives in `path`.
    pub fn open(path: &Path) -> Result<Tso> {
        let (file, record) = SlotFile::open(path)?;
        let start = match record {
            Some(bytes) => {
                let arr: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
                    Error::Corruption(format!(
                        "{}: expected 8 bytes, found {}",
                        path.display(),
                        bytes.len()
                    ))
                })?;
                u64::from_le_bytes(arr)
            }
            None => 0,
        };
        let inner = Arc::new(Inner {
            last: AtomicU64::new(start),
            limit: AtomicU64::new(start),
            file: Mutex::new(Some(file)),
            replicated: false,
            raise: tokio::sync::Notify::new(),
        });
        // Raising the mark costs a file write and two `fsync`s. Done inline, it stalled every
        // caller of `next` (every begin and every commit) for milliseconds every three seconds.
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("tafdb-tso".into())
            .spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_millis(250));
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let soon = std::cmp::max(inner.last.load(Ordering::Acquire), ts_from_ms(now_ms()))
                    + RAISE_AHEAD;
                if soon >= inner.limit.load(Ordering::Acquire) {
                    if let Err(e) = inner.raise_limit(soon) {
                        tracing::warn!(error = %e, "raising the timestamp mark failed");
                    }
                }
            })?;
        Ok(Tso { inner })
    }

    /// An oracle that persists nothing (for tests and tools that need no durability).
    pub fn ephemeral() -> Tso {
        Tso {
            inner: Arc::new(Inner {
                last: AtomicU64::new(0),
                limit: AtomicU64::new(u64::MAX),
                file: Mutex::new(None),
                replicated: false,
                raise: tokio::sync::Notify::new(),
            }),
        }
    }

    /// An oracle whose mark is replicated by a Raft group: it hands out nothing until the
    /// group's leader has committed a mark and called [`Tso::set_limit`], and never goes past
    /// the mark (it then counts logical ticks, and fails with [`Error::Busy`] only when even
    /// those run out, which means the group cannot commit).
    pub fn replicated() -> Tso {
        Tso {
            inner: Arc::new(Inner {
                last: AtomicU64::new(0),
                limit: AtomicU64::new(0),
                file: Mutex::new(None),
                replicated: true,
                raise: tokio::sync::Notify::new(),
            }),
        }
    }

    /// Whether the mark is replicated (see [`Tso::replicated`]).
    pub fn is_replicated(&self) -> bool {
        self.inner.replicated
    }

    /// The mark to replicate next, if the handed-out timestamps (or the clock) came within
    /// 1.5 s of the current one: 3 s above them. `None` for a local oracle.
    pub fn wanted_mark(&self) -> Option<u64> {
        if !self.inner.replicated {
            return None;
        }
        let mark = self.next_mark();
        (mark - BATCH + RAISE_AHEAD >= self.inner.limit.load(Ordering::Acquire)).then_some(mark)
    }

    /// A mark 3 s above the timestamps handed out so far and the clock.
    pub fn next_mark(&self) -> u64 {
        std::cmp::max(self.last(), ts_from_ms(now_ms())) + BATCH
    }

    /// Waits until `next` asks for a higher mark, or `timeout` passes.
    pub async fn raise_wanted(&self, timeout: std::time::Duration) {
        let _ = tokio::time::timeout(timeout, self.inner.raise.notified()).await;
    }

    /// Lets a replicated oracle hand out timestamps below `mark`, which its group has
    /// committed. Never lowers it.
    pub fn set_limit(&self, mark: u64) {
        self.inner.limit.fetch_max(mark, Ordering::AcqRel);
    }

    /// The next timestamp: greater than every timestamp handed out before, here or before a
    /// restart. A replicated oracle never goes past its mark: when the clock passes it (its
    /// raise is late) it counts logical ticks below it, and fails with `Busy` when those run
    /// out.
    pub fn next(&self) -> Result<u64> {
        self.next_n(1)
    }

    /// `n` consecutive timestamps (at least one), all greater than every timestamp handed out
    /// before: returns the first, `first..first + n` are the caller's. For a replicated oracle
    /// the whole run stays below the mark (see [`Tso::next`]).
    pub fn next_n(&self, n: u32) -> Result<u64> {
        let n = u64::from(n.max(1));
        loop {
            let last = self.inner.last.load(Ordering::Acquire);
            let mut first = std::cmp::max(last + 1, ts_from_ms(now_ms()));
            let limit = self.inner.limit.load(Ordering::Acquire);
            if first + n > limit {
                if !self.inner.replicated {
                    self.inner.raise_limit(first + n)?;
                    continue;
                }
                self.inner.raise.notify_one();
                first = last + 1;
                if first + n > limit {
                    return Err(Error::Busy(
                        "the timestamp oracle has no replicated mark to hand out below (a new \
                         leader, or the group cannot commit)"
                            .into(),
                    ));
                }
            }
            if self
                .inner
                .last
                .compare_exchange_weak(last, first + n - 1, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return Ok(first);
            }
        }
    }

    /// The newest timestamp handed out so far (0 if none).
    pub fn last(&self) -> u64 {
        self.inner.last.load(Ordering::Acquire)
    }

    /// Makes sure the next timestamp is greater than `ts` (used when a tablet learns of a
    /// timestamp from its log after a restart).
    pub fn observe(&self, ts: u64) -> Result<()> {
        // A replicated mark is raised by the group's leader, never here.
        if !self.inner.replicated && ts >= self.inner.limit.load(Ordering::Acquire) {
            self.inner.raise_limit(ts + 1)?;
        }
        self.inner.last.fetch_max(ts, Ordering::AcqRel);
        Ok(())
    }
}

impl Inner {
    fn raise_limit(&self, needed: u64) -> Result<()> {
        let mut file = self.file.lock();
        if self.limit.load(Ordering::Acquire) > needed {
            return Ok(());
        }
        let mark = needed + BATCH;
        if let Some(f) = file.as_mut() {
            f.write(&mark.to_le_bytes())?;
        }
        self.limit.store(mark, Ordering::Release);
        Ok(())
    }
}

/// Where a component gets fresh timestamps when the oracle is replicated and may live on
/// another node (see `crate::remote`).
pub trait TimestampSource: Send + Sync {
    /// `n` consecutive fresh timestamps, as [`Tso::next_n`]: the first one.
    fn next_n(&self, n: u32) -> crate::coprocessor::BoxFuture<'_, Result<u64>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strictly_increasing_across_threads() {
        let tso = std::sync::Arc::new(Tso::ephemeral());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let tso = tso.clone();
                std::thread::spawn(move || {
                    (0..10_000)
                        .map(|_| tso.next().expect("ts"))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().expect("join"))
            .collect();
        for w in all.chunks(10_000) {
            assert!(
                w.windows(2).all(|p| p[0] < p[1]),
                "each thread sees increasing timestamps"
            );
        }
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "no timestamp is handed out twice");
    }

    #[test]
    fn never_goes_back_after_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tso");
        let before = {
            let tso = Tso::open(&path).expect("open");
            // Jump far ahead of the wall clock, as a clock step back would look after restart.
            tso.observe(ts_from_ms(now_ms() + 60_000)).expect("observe");
            tso.next().expect("ts")
        };
        let tso = Tso::open(&path).expect("reopen");
        assert!(tso.next().expect("ts") > before);
    }

    #[test]
    fn corrupt_mark_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tso");
        std::fs::write(&path, [1u8; 12]).expect("write");
        assert!(matches!(Tso::open(&path), Err(Error::Corruption(_))));
    }
}
