//! The LSM engine: RocksDB (Debian's librocksdb 7.8) for tables that need ordered scans.
//!
//! Writes go through RocksDB's own WAL without a sync; [`Engine::persist`] syncs the WAL once,
//! so a flush cycle of the MVCC layer costs one `fsync` however many keys it wrote.

use std::path::Path;

use rocksdb::{Direction, IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions, DB};

use super::{BatchOp, Engine, EngineKind};
use crate::error::Result;
use crate::keys::{Key, KeyRange, Value};

/// RocksDB behind the [`Engine`] trait.
pub struct LsmEngine {
    db: DB,
}

impl LsmEngine {
    /// Opens (or creates) a RocksDB instance in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let mut opts = Options::default();
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
        let db = DB::open(&opts, dir)?;
        Ok(LsmEngine { db })
    }
}

impl Engine for LsmEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Lsm
    }

    fn get(&self, key: &[u8]) -> Result<Option<Value>> {
        Ok(self.db.get(key)?)
    }

    fn write(&self, batch: &[BatchOp]) -> Result<()> {
        let mut wb = WriteBatch::default();
        for op in batch {
            match op {
                BatchOp::Put(k, v) => wb.put(k, v),
                BatchOp::Delete(k) => wb.delete(k),
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(false);
        self.db.write_opt(wb, &wo)?;
        Ok(())
    }

    fn write_refs(&self, batch: &[(&[u8], Option<&[u8]>)]) -> Result<()> {
        let mut wb = WriteBatch::default();
        for (k, v) in batch {
            match v {
                Some(v) => wb.put(k, v),
                None => wb.delete(k),
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(false);
        self.db.write_opt(wb, &wo)?;
        Ok(())
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
        let iter = self
            .db
            .iterator_opt(IteratorMode::From(&range.start, Direction::Forward), ro);
        for item in iter {
            let (k, v) = item?;
            out.push((k.into_vec(), v.into_vec()));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    fn persist(&self) -> Result<()> {
        self.db.flush_wal(true)?;
        Ok(())
    }

    fn for_each(&self, f: &mut super::Visitor<'_>) -> Result<()> {
        for item in self.db.iterator(IteratorMode::Start) {
            let (k, v) = item?;
            f(&k, &v)?;
        }
        Ok(())
    }
}
