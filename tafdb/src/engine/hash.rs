//! The hash engine: a packed concurrent map in memory ([`super::packed`]: one allocation per
//! entry), made durable by an append-only batch file.
//!
//! Every [`Engine::write`] appends one record holding the whole batch to `hash.log` through a
//! buffered writer; [`Engine::persist`] flushes the buffer and calls `fdatasync`. Records are
//! framed as the chunk store frames every write ([`chunk_backend::frame`]: self-checksummed
//! headers that name their predecessor), and each record's payload starts with the file length
//! that was durable when it was written (its *checkpoint*). Opening replays the chain:
//! - a torn tail (a write that was never persisted) is cut off;
//! - a damaged record below the largest checkpoint any record claims was durable, and could
//!   only have been damaged afterwards: opening fails with `Corruption` rather than lose data;
//! - a damaged record above it belongs to writes no `persist` had covered, which a power loss
//!   persisted out of order: it is cut like a torn tail.
//!
//! A write or sync that fails latches the engine: every later write and persist fails until
//! it is reopened, so nothing is ever appended after bytes of unknown state.
//! When the file holds far more bytes than the live data, `persist` rewrites it compactly
//! ([`chunk_backend::atomic::replace`]).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use chunk_backend::frame::{self, Link};
use parking_lot::Mutex;

use super::packed::PackedMap;
use super::{BatchOp, Engine, EngineKind};
use crate::error::{Error, Result};
use crate::keys::{Key, KeyRange, Value};

const LOG_NAME: &str = "hash.log";
const COMPACT_MIN_BYTES: u64 = 64 << 20;

/// The batch file being appended to.
struct LogFile {
    out: BufWriter<File>,
    /// The link of the last record, which the next one names.
    last: Option<Link>,
    /// Bytes in the file, buffered ones included.
    written: u64,
    /// Bytes made durable by the last `persist`.
    durable: u64,
    /// The link of the last record below `durable`.
    durable_last: Option<Link>,
    /// Set by a failed write or sync.
    failed: Option<Failure>,
}

/// What latched the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// A write that did not fit a full disk: the file can be cut back to its durable length
    /// and appended to again.
    NoSpace,
    /// Anything else (a failed sync, a failed compaction): only a reopen may sort it out.
    Other,
}

fn failure(e: &std::io::Error) -> Failure {
    if super::is_no_space(e) {
        Failure::NoSpace
    } else {
        Failure::Other
    }
}

/// An in-memory hash map with an append-only durability file.
pub struct HashEngine {
    dir: PathBuf,
    map: PackedMap,
    log: Mutex<LogFile>,
    live_bytes: AtomicU64,
}

impl HashEngine {
    /// Opens the engine in `dir`, replaying its file.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(LOG_NAME);
        let map = PackedMap::default();
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        let (valid, last) = replay(&data, &map, &path)?;
        if valid < data.len() as u64 {
            tracing::warn!(path = %path.display(), valid, len = data.len(), "hash engine: cutting a torn tail");
            file.set_len(valid)?;
        }
        // What a crashed process left in the page cache is durable only from here on, and
        // the next record will claim it as durable.
        file.sync_data()?;
        let file = OpenOptions::new().append(true).open(&path)?;
        let mut live = 0u64;
        map.for_each(|k, v| {
            live += (k.len() + v.len()) as u64;
            Ok::<(), ()>(())
        })
        .ok();
        Ok(HashEngine {
            dir: dir.to_path_buf(),
            map,
            log: Mutex::new(LogFile {
                out: BufWriter::with_capacity(1 << 20, file),
                last,
                written: valid,
                durable: valid,
                durable_last: last,
                failed: None,
            }),
            live_bytes: AtomicU64::new(live),
        })
    }

    fn compact(&self, log: &mut LogFile) -> Result<()> {
        let mut total = 0u64;
        let mut last = None;
        // Writes are excluded by the log mutex the caller holds, so the map is stable here.
        // The new file is synced whole before it replaces the old one, so each record may
        // claim everything before it as durable.
        chunk_backend::atomic::replace(&self.dir.join(LOG_NAME), |out| {
            let mut batch = Vec::new();
            let mut payload = Vec::new();
            let mut flush = |batch: &mut Vec<BatchOp>| -> std::io::Result<()> {
                let (n, link) = write_record(out, batch, &mut payload, last, total)?;
                total += n;
                last = Some(link);
                batch.clear();
                Ok(())
            };
            self.map.for_each(|k, v| {
                batch.push(BatchOp::Put(k.to_vec(), v.to_vec()));
                if batch.len() == 4096 {
                    flush(&mut batch)?;
                }
                Ok::<(), std::io::Error>(())
            })?;
            if !batch.is_empty() {
                flush(&mut batch)?;
            }
            Ok(())
        })?;
        *log = LogFile {
            out: BufWriter::with_capacity(
                1 << 20,
                OpenOptions::new()
                    .append(true)
                    .open(self.dir.join(LOG_NAME))?,
            ),
            last,
            written: total,
            durable: total,
            durable_last: last,
            failed: None,
        };
        Ok(())
    }
}

/// Appends the encoding of `batch` to `out`.
fn encode_batch(batch: &[BatchOp], out: &mut Vec<u8>) {
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

/// Appends `batch` as one record after `last`, claiming `checkpoint` bytes durable; returns
/// the bytes written and the record's link.
fn write_record(
    w: &mut impl Write,
    batch: &[BatchOp],
    payload: &mut Vec<u8>,
    last: Option<Link>,
    checkpoint: u64,
) -> std::io::Result<(u64, Link)> {
    payload.clear();
    payload.extend_from_slice(&checkpoint.to_le_bytes());
    encode_batch(batch, payload);
    let (bytes, link) = frame::encode(last, payload);
    w.write_all(&bytes)?;
    Ok((bytes.len() as u64, link))
}

/// Replays the record chain into `map`; returns the length of the prefix to keep and the link
/// of its last record (see the module docs for what is cut and what is corruption).
fn replay(data: &[u8], map: &PackedMap, path: &Path) -> Result<(u64, Option<Link>)> {
    let scan = frame::scan(data);
    let checkpoint_of = |offset: u64| -> Option<u64> {
        let p = frame::payload(data.get(offset as usize..)?).ok()?;
        Some(u64::from_le_bytes(p.get(..8)?.try_into().ok()?))
    };
    let durable = scan
        .records
        .iter()
        .filter_map(|r| checkpoint_of(r.offset))
        .max()
        .unwrap_or(0);
    if let Some(c) = scan.corrupt.iter().find(|c| **c < durable) {
        return Err(Error::Corruption(format!(
            "{}: the record at offset {c} fails its checksum below the durable length {durable}",
            path.display()
        )));
    }
    // Everything from the first damaged record on was never covered by a persist.
    let keep = scan.corrupt.first().copied().unwrap_or(scan.end);
    if keep < durable {
        return Err(Error::Corruption(format!(
            "{}: only {keep} bytes can be read, {durable} were durable",
            path.display()
        )));
    }
    let mut last = None;
    for r in scan.records.iter().take_while(|r| r.offset < keep) {
        let p = frame::payload(&data[r.offset as usize..]).map_err(|m| {
            Error::Corruption(format!("{}: offset {}: {m}", path.display(), r.offset))
        })?;
        let batch = p.get(8..).ok_or_else(|| {
            Error::Corruption(format!(
                "{}: offset {}: short record",
                path.display(),
                r.offset
            ))
        })?;
        apply_payload(batch, map).map_err(|m| {
            Error::Corruption(format!("{}: offset {}: {m}", path.display(), r.offset))
        })?;
        last = Some(r.link);
    }
    Ok((keep, last))
}

fn apply_payload(mut p: &[u8], map: &PackedMap) -> std::result::Result<(), &'static str> {
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
        let key = take(&mut p, klen)?;
        match tag {
            1 => {
                let vlen = take_len(&mut p)?;
                let value = take(&mut p, vlen)?;
                map.insert(key, value);
            }
            2 => {
                map.remove(key);
            }
            _ => return Err("unknown batch op"),
        }
    }
    Ok(())
}

/// Flushes the buffer and syncs the file (a failpoint for tests sits in front of it). A
/// failure says what failed: a write that did not fit the disk can be undone, a sync cannot.
fn sync(out: &mut BufWriter<File>) -> std::result::Result<(), (std::io::Error, Failure)> {
    fail::fail_point!("hash::persist", |_| Err((
        std::io::Error::other("failpoint hash::persist"),
        Failure::Other
    )));
    fail::fail_point!("hash::persist-no-space", |_| Err((
        std::io::Error::from_raw_os_error(libc::ENOSPC),
        Failure::NoSpace
    )));
    out.flush().map_err(|e| {
        let f = failure(&e);
        (e, f)
    })?;
    out.get_ref().sync_data().map_err(|e| (e, Failure::Other))
}

fn latched() -> Error {
    Error::Io(std::io::Error::other(
        "the hash engine's file failed a write or sync earlier; reopen the store",
    ))
}

impl Engine for HashEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Hash
    }

    fn get(&self, key: &[u8]) -> Result<Option<Value>> {
        Ok(self.map.get(key))
    }

    fn write(&self, batch: &[BatchOp]) -> Result<()> {
        let mut log = self.log.lock();
        if log.failed.is_some() {
            return Err(latched());
        }
        let mut payload = Vec::new();
        let (last, durable) = (log.last, log.durable);
        match write_record(&mut log.out, batch, &mut payload, last, durable) {
            Ok((n, link)) => {
                log.written += n;
                log.last = Some(link);
            }
            Err(e) => {
                log.failed = Some(failure(&e));
                return Err(e.into());
            }
        }
        for op in batch {
            match op {
                BatchOp::Put(k, v) => {
                    let added = (k.len() + v.len()) as u64;
                    if let Some(old) = self.map.insert(k, v) {
                        self.live_bytes
                            .fetch_sub((k.len() + old) as u64, Ordering::Relaxed);
                    }
                    self.live_bytes.fetch_add(added, Ordering::Relaxed);
                }
                BatchOp::Delete(k) => {
                    if let Some(old) = self.map.remove(k) {
                        self.live_bytes
                            .fetch_sub((k.len() + old) as u64, Ordering::Relaxed);
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
        if log.failed.is_some() {
            return Err(latched());
        }
        if let Err((e, f)) = sync(&mut log.out) {
            log.failed = Some(f);
            return Err(e.into());
        }
        log.durable = log.written;
        log.durable_last = log.last;
        let live = self.live_bytes.load(Ordering::Relaxed);
        if log.written > COMPACT_MIN_BYTES && log.written > 4 * live {
            if let Err(e) = self.compact(&mut log) {
                // The rename may have happened, leaving the writer on a file no longer in the
                // directory: nothing more may be written until a reopen sorts it out.
                log.failed = Some(Failure::Other);
                tracing::error!(error = %e, "hash engine: compaction failed; reopen the store");
                return Err(e);
            }
        }
        Ok(())
    }

    fn for_each(&self, f: &mut super::Visitor<'_>) -> Result<()> {
        self.map.for_each(|k, v| f(k, v))
    }

    fn latched(&self) -> bool {
        self.log.lock().failed.is_some()
    }

    fn recoverable(&self) -> bool {
        self.log.lock().failed == Some(Failure::NoSpace)
    }

    /// After a write that did not fit the disk: drops what is buffered, cuts the file back to
    /// its durable length and appends from there. The records cut belonged to flushes that
    /// never completed (their `persist` failed), so the MVCC chains still hold their versions
    /// and the next flush writes them again.
    fn recover(&self) -> Result<bool> {
        let mut log = self.log.lock();
        match log.failed {
            None => return Ok(true),
            Some(Failure::Other) => return Ok(false),
            Some(Failure::NoSpace) => {}
        }
        let path = self.dir.join(LOG_NAME);
        let file = OpenOptions::new().write(true).open(&path)?;
        file.set_len(log.durable)?;
        file.sync_data()?;
        let out = OpenOptions::new().append(true).open(&path)?;
        // Replacing the writer must not flush its buffer into the file: take it apart.
        let old = std::mem::replace(&mut log.out, BufWriter::with_capacity(1 << 20, out));
        drop(old.into_parts());
        log.written = log.durable;
        log.last = log.durable_last;
        log.failed = None;
        tracing::info!(path = %path.display(), "hash engine: appending again after a full disk");
        Ok(true)
    }
}
