//! The LSM engine: RocksDB (Debian's librocksdb 7.8) for tables that need ordered scans.
//!
//! Writes go through RocksDB's own WAL without a sync; [`Engine::persist`] syncs the WAL once,
//! so a flush cycle of the MVCC layer costs one `fsync` however many keys it wrote.

use std::path::Path;

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;
use rocksdb::{Direction, IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions, DB};

use super::{BatchOp, Engine, EngineKind};
use crate::error::{Error, Result};
use crate::keys::{Key, KeyRange, Value};

/// RocksDB behind the [`Engine`] trait.
pub struct LsmEngine {
    dir: std::path::PathBuf,
    /// The instance; replaced by [`Engine::recover`] (`None` only while a reopen failed).
    db: RwLock<Option<DB>>,
    /// Set by a failed write or WAL sync. RocksDB asserts (and aborts the process) if the
    /// write path of an instance is used again after a failed WAL write, and closing the
    /// instance flushes its WAL: a latched instance only serves reads, and is never closed (it
    /// is leaked at drop). Only a restart makes it writable again.
    failed: AtomicBool,
    /// Opened read-only because the disk had no room to open it for writing: this instance has
    /// no WAL writer, so it may be closed and reopened once space is back.
    read_only: AtomicBool,
}

impl Drop for LsmEngine {
    fn drop(&mut self) {
        if self.failed.load(Ordering::Acquire) && !self.read_only.load(Ordering::Acquire) {
            if let Some(db) = self.db.get_mut().take() {
                // See `failed`: closing would abort the process.
                std::mem::forget(db);
            }
        }
    }
}

/// The memtable size of an engine on a file system of `total` bytes: RocksDB's 64 MiB, less
/// on a small disk. A reopen turns what the WAL holds (up to two memtables) into a table file,
/// and that must fit the disk reserve ([`crate::space::default_reserve`]).
pub fn memtable_bytes(total: u64) -> u64 {
    (total / 64).clamp(4 << 20, 64 << 20)
}

fn options(dir: &Path) -> Options {
    let mut opts = Options::default();
    let total = chunk_backend::disk::fs_space(dir).map_or(u64::MAX, |s| s.total);
    opts.set_write_buffer_size(memtable_bytes(total) as usize);
    opts.create_if_missing(true);
    opts.set_max_background_jobs(2);
    opts.set_bytes_per_sync(1 << 20);
    opts.set_manual_wal_flush(true);
    // No compression for the first levels, which are rewritten soonest (RocksDB's own
    // advice); the flusher writes every key of the window, and compressing L0 files cost
    // CPU that commits needed.
    opts.set_compression_per_level(&[
        rocksdb::DBCompressionType::None,
        rocksdb::DBCompressionType::None,
        rocksdb::DBCompressionType::Snappy,
        rocksdb::DBCompressionType::Snappy,
        rocksdb::DBCompressionType::Snappy,
        rocksdb::DBCompressionType::Snappy,
        rocksdb::DBCompressionType::Snappy,
    ]);
    opts
}

impl LsmEngine {
    /// Opens (or creates) a RocksDB instance in `dir`.
    ///
    /// Opening writes (RocksDB turns its WAL into a table file); on a full disk that fails,
    /// and the instance opens read-only instead, latched: it serves reads, and the space
    /// guard reopens it for writing once space is back ([`Engine::recover`]).
    pub fn open(dir: &Path) -> Result<Self> {
        let (db, failed) = match DB::open(&options(dir), dir) {
            Ok(db) => (db, false),
            Err(e) => match rocks_error(e) {
                Error::Io(io) if super::is_no_space(&io) => {
                    tracing::warn!(
                        dir = %dir.display(),
                        error = %io,
                        "no space to open RocksDB for writing: opened read-only until space is freed"
                    );
                    let db = DB::open_for_read_only(&options(dir), dir, false)?;
                    remove_orphan_tables(&db, dir);
                    (db, true)
                }
                other => return Err(other),
            },
        };
        Ok(LsmEngine {
            dir: dir.to_path_buf(),
            db: RwLock::new(Some(db)),
            failed: AtomicBool::new(failed),
            read_only: AtomicBool::new(failed),
        })
    }

    fn with_db<T>(&self, f: impl FnOnce(&DB) -> Result<T>) -> Result<T> {
        match self.db.read().as_ref() {
            Some(db) => f(db),
            None => Err(Error::Io(std::io::Error::other(
                "the RocksDB engine is closed after a failed reopen",
            ))),
        }
    }

    fn write_batch(&self, wb: WriteBatch) -> Result<()> {
        if self.failed.load(Ordering::Acquire) {
            return Err(latched());
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(false);
        self.with_db(|db| {
            db.write_opt(wb, &wo).map_err(|e| {
                self.failed.store(true, Ordering::Release);
                rocks_error(e)
            })
        })
    }
}

/// Deletes the table files of `dir` that `db`, open read-only (so its view is the MANIFEST's),
/// does not use and that were made after every file it does use: the partial output of opens
/// that failed for lack of space. RocksDB leaves them behind, and each failed attempt would
/// otherwise eat room the next one needs, until none can succeed. Only files numbered above
/// every live one are touched, so a file the MANIFEST knows is never deleted.
fn remove_orphan_tables(db: &DB, dir: &Path) {
    let number = |name: &str| -> Option<u64> {
        name.trim_start_matches('/')
            .strip_suffix(".sst")?
            .parse()
            .ok()
    };
    let live = match db.live_files() {
        Ok(files) => files
            .iter()
            .filter_map(|f| number(&f.name))
            .max()
            .unwrap_or(0),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot list RocksDB's live files");
            return;
        }
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(n) = name.to_str().and_then(number) else {
            continue;
        };
        if n > live {
            let bytes = entry.metadata().map_or(0, |m| m.len());
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::info!(file = %entry.path().display(), bytes, "removed the partial table file of a failed RocksDB open")
                }
                Err(e) => {
                    tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove a partial RocksDB table file")
                }
            }
        }
    }
}

/// A RocksDB error, with a full disk told apart (RocksDB reports it only in its message).
fn rocks_error(e: rocksdb::Error) -> Error {
    let msg = e.to_string();
    if msg.contains("No space left on device") || msg.contains("Disk quota exceeded") {
        Error::Io(std::io::Error::new(std::io::ErrorKind::StorageFull, msg))
    } else {
        Error::Rocks(e)
    }
}

fn latched() -> Error {
    Error::Io(std::io::Error::new(
        std::io::ErrorKind::StorageFull,
        "the RocksDB engine failed a write earlier and takes no more until it is reopened",
    ))
}

impl Engine for LsmEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Lsm
    }

    fn get(&self, key: &[u8]) -> Result<Option<Value>> {
        self.with_db(|db| Ok(db.get(key)?))
    }

    fn write(&self, batch: &[BatchOp]) -> Result<()> {
        let mut wb = WriteBatch::default();
        for op in batch {
            match op {
                BatchOp::Put(k, v) => wb.put(k, v),
                BatchOp::Delete(k) => wb.delete(k),
            }
        }
        self.write_batch(wb)
    }

    fn write_refs(&self, batch: &[(&[u8], Option<&[u8]>)]) -> Result<()> {
        let mut wb = WriteBatch::default();
        for (k, v) in batch {
            match v {
                Some(v) => wb.put(k, v),
                None => wb.delete(k),
            }
        }
        self.write_batch(wb)
    }

    fn supports_scan(&self) -> bool {
        true
    }

    fn scan(&self, range: &KeyRange, limit: usize) -> Result<Vec<(Key, Value)>> {
        let mut ro = ReadOptions::default();
        if let Some(end) = &range.end {
            ro.set_iterate_upper_bound(end.clone());
        }
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        self.with_db(|db| {
            let iter = db.iterator_opt(IteratorMode::From(&range.start, Direction::Forward), ro);
            for item in iter {
                let (k, v) = item?;
                out.push((k.into_vec(), v.into_vec()));
                if out.len() >= limit {
                    break;
                }
            }
            Ok(out)
        })
    }

    fn persist(&self) -> Result<()> {
        if self.failed.load(Ordering::Acquire) {
            return Err(latched());
        }
        self.with_db(|db| {
            db.flush_wal(true).map_err(|e| {
                self.failed.store(true, Ordering::Release);
                rocks_error(e)
            })
        })
    }

    fn for_each(&self, f: &mut super::Visitor<'_>) -> Result<()> {
        self.with_db(|db| {
            for item in db.iterator(IteratorMode::Start) {
                let (k, v) = item?;
                f(&k, &v)?;
            }
            Ok(())
        })
    }

    fn latched(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    fn recoverable(&self) -> bool {
        self.failed.load(Ordering::Acquire) && self.read_only.load(Ordering::Acquire)
    }

    /// Reopens an instance that was opened read-only for lack of space. One that failed a
    /// write cannot be reopened in this process (see `failed`): that needs a restart, which
    /// replays the WAL and the Raft log.
    fn recover(&self) -> Result<bool> {
        if !self.failed.load(Ordering::Acquire) {
            return Ok(true);
        }
        if !self.read_only.load(Ordering::Acquire) {
            return Ok(false);
        }
        let mut slot = self.db.write();
        if let Some(db) = slot.as_ref() {
            remove_orphan_tables(db, &self.dir);
        }
        // Close first: an instance holds the directory's lock.
        drop(slot.take());
        match DB::open(&options(&self.dir), &self.dir) {
            Ok(db) => {
                *slot = Some(db);
                self.read_only.store(false, Ordering::Release);
                self.failed.store(false, Ordering::Release);
                tracing::info!(dir = %self.dir.display(), "RocksDB engine reopened after a failed write");
                Ok(true)
            }
            Err(e) => {
                // Keep serving reads meanwhile.
                *slot = DB::open_for_read_only(&options(&self.dir), &self.dir, false).ok();
                Err(rocks_error(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_tables_of_failed_opens_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = DB::open(&options(dir.path()), dir.path()).expect("open");
            db.put(b"k", b"v").expect("put");
            db.flush().expect("flush");
        }
        let tables = || -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(dir.path())
                .expect("read_dir")
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.ends_with(".sst"))
                .collect();
            v.sort();
            v
        };
        let live = tables();
        assert_eq!(live.len(), 1, "{live:?}");
        // What a flush that failed for lack of space leaves: a table file the MANIFEST does
        // not name, numbered above every live one.
        std::fs::write(dir.path().join("999999.sst"), vec![0u8; 4096]).expect("write");
        let ro = DB::open_for_read_only(&options(dir.path()), dir.path(), false).expect("ro");
        remove_orphan_tables(&ro, dir.path());
        drop(ro);
        assert_eq!(tables(), live);
        let db = DB::open(&options(dir.path()), dir.path()).expect("reopen");
        assert_eq!(db.get(b"k").expect("get").as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn memtables_are_sized_by_the_disk_the_directory_will_be_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let total = chunk_backend::disk::fs_space(dir.path())
            .expect("space")
            .total;
        let later = dir.path().join("not/made/yet");
        assert_eq!(
            chunk_backend::disk::fs_space(&later).expect("space").total,
            total
        );
    }
}
