//! The hash engine: a dashmap in memory, made durable by an append-only batch file.
//!
//! Every [`Engine::write`] appends one framed record (`len:u32le, crc32c:u32le, payload`) holding
//! the whole batch to `hash.log` through a buffered writer; [`Engine::persist`] flushes the buffer
//! and calls `fdatasync`. Opening replays the file. A record whose checksum fails at the very end
//! of the file is a torn write of data that was never persisted and is cut off; a bad record
//! followed by good ones is corruption and opening fails rather than silently losing data.
//! When the file holds far more bytes than the live data, `persist` rewrites it compactly
//! (write a new file, fsync, rename, fsync the directory).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use parking_lot::Mutex;

use super::{BatchOp, Engine, EngineKind};
use crate::error::{Error, Result};
use crate::keys::{Key, KeyRange, Value};

const LOG_NAME: &str = "hash.log";
const COMPACT_MIN_BYTES: u64 = 64 << 20;

/// An in-memory hash map with an append-only durability file.
pub struct HashEngine {
    dir: PathBuf,
    map: DashMap<Key, Value>,
    log: Mutex<BufWriter<File>>,
    log_bytes: AtomicU64,
    live_bytes: AtomicU64,
}

impl HashEngine {
    /// Opens the engine in `dir`, replaying its file.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(LOG_NAME);
        let map = DashMap::new();
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        let valid = replay(&data, &map, &path)?;
        if valid < data.len() as u64 {
            tracing::warn!(path = %path.display(), valid, len = data.len(), "hash engine: cutting a torn tail");
            file.set_len(valid)?;
            file.sync_data()?;
        }
        let file = OpenOptions::new().append(true).open(&path)?;
        let live: u64 = map
            .iter()
            .map(|e| (e.key().len() + e.value().len()) as u64)
            .sum();
        Ok(HashEngine {
            dir: dir.to_path_buf(),
            map,
            log: Mutex::new(BufWriter::with_capacity(1 << 20, file)),
            log_bytes: AtomicU64::new(valid),
            live_bytes: AtomicU64::new(live),
        })
    }

    fn compact(&self, log: &mut BufWriter<File>) -> Result<()> {
        let tmp = self.dir.join("hash.log.compact");
        let mut out = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        let mut total = 0u64;
        let mut batch = Vec::new();
        let mut payload = Vec::new();
        // Writes are excluded by the log mutex the caller holds, so the map is stable here.
        for e in self.map.iter() {
            batch.push(BatchOp::Put(e.key().clone(), e.value().clone()));
            if batch.len() == 4096 {
                total += write_record(&mut out, &batch, &mut payload)?;
                batch.clear();
            }
        }
        if !batch.is_empty() {
            total += write_record(&mut out, &batch, &mut payload)?;
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(LOG_NAME))?;
        File::open(&self.dir)?.sync_all()?;
        *log = BufWriter::with_capacity(
            1 << 20,
            OpenOptions::new()
                .append(true)
                .open(self.dir.join(LOG_NAME))?,
        );
        self.log_bytes.store(total, Ordering::Relaxed);
        Ok(())
    }
}

fn encode_batch(batch: &[BatchOp], out: &mut Vec<u8>) {
    out.clear();
    for op in batch {
        match op {
            BatchOp::Put(k, v) => {
                out.push(1);
                out.extend_from_slice(&(k.len() as u32).to_le_bytes());
                out.extend_from_slice(k);
                out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                out.extend_from_slice(v);
            }
            BatchOp::Delete(k) => {
                out.push(2);
                out.extend_from_slice(&(k.len() as u32).to_le_bytes());
                out.extend_from_slice(k);
            }
        }
    }
}

fn write_record(w: &mut impl Write, batch: &[BatchOp], payload: &mut Vec<u8>) -> Result<u64> {
    encode_batch(batch, payload);
    let mut header = [0u8; 8];
    header[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    header[4..].copy_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    w.write_all(&header)?;
    w.write_all(payload)?;
    Ok(8 + payload.len() as u64)
}

/// Replays framed batches into `map`; returns the length of the valid prefix.
fn replay(data: &[u8], map: &DashMap<Key, Value>, path: &Path) -> Result<u64> {
    let mut pos = 0usize;
    while pos < data.len() {
        let Some(header) = data.get(pos..pos + 8) else {
            break;
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let Some(payload) = data.get(pos + 8..pos + 8 + len) else {
            break;
        };
        if crc32c::crc32c(payload) != crc {
            // A bad record is a torn tail only if nothing valid follows it.
            if pos + 8 + len < data.len() && crate::frame::valid_record_at(&data[pos + 8 + len..]) {
                return Err(Error::Corruption(format!(
                    "{}: checksum mismatch in the record at offset {pos}",
                    path.display()
                )));
            }
            break;
        }
        apply_payload(payload, map)
            .map_err(|m| Error::Corruption(format!("{}: offset {pos}: {m}", path.display())))?;
        pos += 8 + len;
    }
    Ok(pos as u64)
}

fn apply_payload(mut p: &[u8], map: &DashMap<Key, Value>) -> std::result::Result<(), &'static str> {
    fn take<'a>(p: &mut &'a [u8], n: usize) -> std::result::Result<&'a [u8], &'static str> {
        if p.len() < n {
            return Err("truncated batch");
        }
        let (a, b) = p.split_at(n);
        *p = b;
        Ok(a)
    }
    fn take_len(p: &mut &[u8]) -> std::result::Result<usize, &'static str> {
        let b = take(p, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    while !p.is_empty() {
        let tag = take(&mut p, 1)?[0];
        let klen = take_len(&mut p)?;
        let key = take(&mut p, klen)?.to_vec();
        match tag {
            1 => {
                let vlen = take_len(&mut p)?;
                let value = take(&mut p, vlen)?.to_vec();
                map.insert(key, value);
            }
            2 => {
                map.remove(&key);
            }
            _ => return Err("unknown batch op"),
        }
    }
    Ok(())
}

impl Engine for HashEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Hash
    }

    fn get(&self, key: &[u8]) -> Result<Option<Value>> {
        Ok(self.map.get(key).map(|v| v.value().clone()))
    }

    fn write(&self, batch: &[BatchOp]) -> Result<()> {
        let mut log = self.log.lock();
        let mut payload = Vec::new();
        let n = write_record(&mut *log, batch, &mut payload)?;
        self.log_bytes.fetch_add(n, Ordering::Relaxed);
        for op in batch {
            match op {
                BatchOp::Put(k, v) => {
                    let added = (k.len() + v.len()) as u64;
                    if let Some(old) = self.map.insert(k.clone(), v.clone()) {
                        self.live_bytes
                            .fetch_sub((k.len() + old.len()) as u64, Ordering::Relaxed);
                    }
                    self.live_bytes.fetch_add(added, Ordering::Relaxed);
                }
                BatchOp::Delete(k) => {
                    if let Some((k, old)) = self.map.remove(k) {
                        self.live_bytes
                            .fetch_sub((k.len() + old.len()) as u64, Ordering::Relaxed);
                    }
                }
            }
        }
        Ok(())
    }

    fn supports_scan(&self) -> bool {
        false
    }

    fn scan(&self, _range: &KeyRange, _limit: usize) -> Result<Vec<(Key, Value)>> {
        Err(Error::Unsupported(
            "the hash engine has no ordered scans; use an LSM table".into(),
        ))
    }

    fn persist(&self) -> Result<()> {
        let mut log = self.log.lock();
        log.flush()?;
        log.get_ref().sync_data()?;
        let live = self.live_bytes.load(Ordering::Relaxed);
        let bytes = self.log_bytes.load(Ordering::Relaxed);
        if bytes > COMPACT_MIN_BYTES && bytes > 4 * live {
            self.compact(&mut log)?;
        }
        Ok(())
    }

    fn for_each(&self, f: &mut super::Visitor<'_>) -> Result<()> {
        for e in self.map.iter() {
            f(e.key(), e.value())?;
        }
        Ok(())
    }
}
