//! The file store: the contents of many files in one log of chunks on a [`Disk`].
//!
//! An `ExtentBlob` costs at least one chunk (a block of the disk) however small it is, which a
//! namespace of billions of small files cannot afford. The file store instead appends every
//! file's writes, as records, to one shared sequence of chunks and keeps, per file, the extent
//! index (the `extents` module) of where each byte range lives:
//!
//! - a write appends `[version][WRITE][file][offset][data]`;
//! - a truncate appends `[version][TRUNCATE][file][size]`;
//! - a remove (the file's last link is gone) appends `[version][REMOVE][file]`.
//!
//! Every call returns once its record is durable (`fdatasync`; concurrent calls share one, the
//! disk's group commit), so an acknowledged write survives a crash. Opening the store replays
//! the records in log order and rebuilds the indexes.
//!
//! Space comes back a chunk at a time: the store counts the bytes of each chunk that some index
//! still points at, and deletes a sealed chunk once none are left, unless it holds a truncate or
//! remove record that an older chunk still needs (replay would bring back that chunk's data
//! without it). Chunks that stay partly live keep their dead bytes: there is no compaction yet.
//!
//! What it is not: replicated. The mount's embedded mode keeps file data here, on the local
//! disk of the data directory.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::disk::Disk;
use crate::error::{Error, Result};
use crate::extents::{Extents, Piece};
use crate::frame;

/// The chunk-table kind of the file store's chunks.
pub const FILES: u8 = 2;

const WRITE: u8 = 0;
const TRUNCATE: u8 = 1;
const REMOVE: u8 = 2;
/// Version, kind, file, offset.
const WRITE_HEAD: usize = 8 + 1 + 8 + 8;

/// Locks that order a file's truncates and removes after its writes in flight: writes share a
/// stripe, a truncate or remove holds it alone. Striped by file id so that one file's truncate
/// rarely waits for another's writes.
const STRIPES: usize = 64;

/// What the store holds, for status output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilesStats {
    /// Files with data.
    pub files: u64,
    /// Chunks in use.
    pub chunks: u64,
    /// Bytes the indexes point at.
    pub live_bytes: u64,
    /// Bytes of records in the chunks (live, overwritten and headers).
    pub stored_bytes: u64,
    /// Chunks deleted since the store opened.
    pub reclaimed_chunks: u64,
}

#[derive(Debug, Default)]
struct ChunkUse {
    id: u64,
    live: i64,
    /// Files with write records here.
    writers: HashSet<u64>,
    /// Files with truncate or remove records here.
    tombs: HashSet<u64>,
    /// Records queued here whose index update has not happened yet: the chunk must not be
    /// deleted under them.
    pending: u32,
}

#[derive(Debug, Default)]
struct Inner {
    /// seq -> chunk.
    chunks: BTreeMap<u32, ChunkUse>,
    files: HashMap<u64, Extents>,
    /// The newest version handed to a record.
    version: u64,
    reclaimed: u64,
}

impl Inner {
    fn live(chunks: &mut BTreeMap<u32, ChunkUse>) -> impl FnMut(u32, i64) + '_ {
        move |seq, by| {
            if let Some(c) = chunks.get_mut(&seq) {
                c.live += by;
            }
        }
    }

    fn apply(&mut self, seq: u32, offset: u64, payload: &[u8]) -> Result<()> {
        let (version, kind, file, rest) = parse(payload)?;
        self.version = self.version.max(version);
        let Inner { chunks, files, .. } = self;
        match kind {
            WRITE => {
                let Some(at) = rest.get(..8) else {
                    return Err(Error::Corrupt("a write record without its offset".into()));
                };
                let at = u64::from_le_bytes(at.try_into().unwrap_or([0; 8]));
                let piece = Piece {
                    len: (rest.len() - 8) as u64,
                    version,
                    chunk: seq,
                    record: offset,
                    data: WRITE_HEAD as u64,
                };
                if let Some(c) = chunks.get_mut(&seq) {
                    c.writers.insert(file);
                }
                files
                    .entry(file)
                    .or_default()
                    .insert(at, piece, &mut Self::live(chunks));
            }
            TRUNCATE => {
                let Some(size) = rest.get(..8) else {
                    return Err(Error::Corrupt("a truncate record without its size".into()));
                };
                let size = u64::from_le_bytes(size.try_into().unwrap_or([0; 8]));
                if let Some(c) = chunks.get_mut(&seq) {
                    c.tombs.insert(file);
                }
                files
                    .entry(file)
                    .or_default()
                    .truncate(size, &mut Self::live(chunks));
            }
            REMOVE => {
                if let Some(c) = chunks.get_mut(&seq) {
                    c.tombs.insert(file);
                }
                if let Some(mut e) = files.remove(&file) {
                    e.truncate(0, &mut Self::live(chunks));
                }
            }
            k => return Err(Error::Corrupt(format!("unknown file record kind {k}"))),
        }
        Ok(())
    }

    /// Sealed chunks that no index points at and no older chunk needs for its tombs.
    fn reclaimable(&self, disk: &Disk) -> Vec<u32> {
        let last = self.chunks.keys().next_back().copied();
        let mut out = Vec::new();
        for (seq, c) in &self.chunks {
            if Some(*seq) == last
                || c.live != 0
                || c.pending != 0
                || !disk.is_sealed(c.id).unwrap_or(false)
            {
                continue;
            }
            let needed = c.tombs.iter().any(|f| {
                self.chunks
                    .range(..*seq)
                    .any(|(s, older)| !out.contains(s) && older.writers.contains(f))
            });
            if !needed {
                out.push(*seq);
            }
        }
        out
    }
}

fn parse(payload: &[u8]) -> Result<(u64, u8, u64, &[u8])> {
    if payload.len() < 17 {
        return Err(Error::Corrupt(format!(
            "a file record of {} bytes",
            payload.len()
        )));
    }
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&payload[o..o + 8]);
        u64::from_le_bytes(b)
    };
    Ok((u64_at(0), payload[8], u64_at(9), &payload[17..]))
}

/// The contents of many files in one log of chunks.
pub struct FileStore {
    disk: Arc<Disk>,
    /// The blob id its chunks carry in the chunk table.
    blob: u64,
    inner: Mutex<Inner>,
    stripes: Vec<RwLock<()>>,
}

impl FileStore {
    /// Puts every acknowledged record on the medium, when the store defers its syncs
    /// ([`Disk::set_deferred_sync`]).
    pub fn sync(&self) -> Result<()> {
        self.disk.sync()
    }
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore")
            .field("blob", &self.blob)
            .field("stats", &self.stats())
            .finish()
    }
}

impl FileStore {
    /// The file store whose chunks carry blob id `blob` on `disk`, rebuilt from its records.
    pub fn open(disk: Arc<Disk>, blob: u64) -> Result<FileStore> {
        let mut inner = Inner::default();
        let mut mine: Vec<_> = disk
            .opened()
            .iter()
            .filter(|c| c.entry.blob == blob)
            .collect();
        mine.sort_by_key(|c| c.entry.seq);
        for c in &mine {
            if c.entry.kind != FILES {
                return Err(Error::Corrupt(format!(
                    "chunk {} of blob {blob} is of kind {}, not a file store's",
                    c.entry.id, c.entry.kind
                )));
            }
            if let Some(at) = c.corrupt.first() {
                // A damaged record in the middle of the log would silently lose a write or
                // bring back a removed file's data: refuse rather than guess.
                return Err(Error::Checksum(format!(
                    "record at {at} of file chunk {} (seq {})",
                    c.entry.id, c.entry.seq
                )));
            }
            inner.chunks.insert(
                c.entry.seq,
                ChunkUse {
                    id: c.entry.id,
                    ..Default::default()
                },
            );
        }
        for c in &mine {
            for off in &c.records {
                let payload = disk.read(c.entry.id, *off)?;
                inner.apply(c.entry.seq, *off, &payload)?;
            }
        }
        if inner.chunks.is_empty() {
            let id = disk.create_chunk(blob, 0, FILES)?;
            inner.chunks.insert(
                0,
                ChunkUse {
                    id,
                    ..Default::default()
                },
            );
        }
        let store = FileStore {
            disk,
            blob,
            inner: Mutex::new(inner),
            stripes: (0..STRIPES).map(|_| RwLock::new(())).collect(),
        };
        store.reclaim()?;
        Ok(store)
    }

    fn stripe(&self, file: u64) -> &RwLock<()> {
        &self.stripes[(file.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % STRIPES]
    }

    /// The largest write one record carries; [`FileStore::write()`] splits bigger ones.
    pub fn max_record(&self) -> usize {
        (self.disk.config().chunk_capacity() as usize).saturating_sub(frame::HEADER + WRITE_HEAD)
    }

    /// Queues one record; returns what to wait on, the chunk's seq and the version.
    fn submit(
        &self,
        kind: u8,
        file: u64,
        body: &[&[u8]],
    ) -> Result<(crate::disk::Submitted<'_>, u32, u64)> {
        let need: usize = 17 + body.iter().map(|b| b.len()).sum::<usize>();
        let mut inner = self.inner.lock();
        let (mut seq, mut chunk) = inner
            .chunks
            .iter()
            .next_back()
            .map(|(s, c)| (*s, c.id))
            .ok_or_else(|| Error::Corrupt("the file store has no chunk".into()))?;
        if need as u64 > self.disk.config().chunk_capacity() - frame::HEADER as u64 {
            return Err(Error::InvalidArgument(format!(
                "a record of {need} bytes does not fit a chunk"
            )));
        }
        // A sealed last chunk (a crash between sealing it and creating the next) rolls over
        // like a full one.
        if self.disk.room(chunk)? < need as u64 || self.disk.is_sealed(chunk)? {
            if !self.disk.is_sealed(chunk)? {
                self.disk.seal(chunk)?;
            }
            seq += 1;
            chunk = self.disk.create_chunk(self.blob, seq, FILES)?;
            inner.chunks.insert(
                seq,
                ChunkUse {
                    id: chunk,
                    ..Default::default()
                },
            );
        }
        let version = inner.version + 1;
        let mut payload = Vec::with_capacity(need);
        payload.extend_from_slice(&version.to_le_bytes());
        payload.push(kind);
        payload.extend_from_slice(&file.to_le_bytes());
        for b in body {
            payload.extend_from_slice(b);
        }
        let submitted = self.disk.submit(chunk, payload)?;
        inner.version = version;
        if let Some(c) = inner.chunks.get_mut(&seq) {
            c.pending += 1;
        }
        Ok((submitted, seq, version))
    }

    /// Writes `data` at `offset` of `file`; returns once it is durable.
    pub fn write(&self, file: u64, offset: u64, data: &[u8]) -> Result<()> {
        if offset.checked_add(data.len() as u64).is_none() {
            return Err(Error::InvalidArgument(format!(
                "write at {offset} overflows"
            )));
        }
        if data.is_empty() {
            return Ok(());
        }
        let _order = self.stripe(file).read();
        let max = self.max_record();
        // Queue every piece before waiting on any: they share fsyncs.
        let mut queued = Vec::new();
        for (i, part) in data.chunks(max).enumerate() {
            let at = offset + (i * max) as u64;
            let (submitted, seq, version) = self.submit(WRITE, file, &[&at.to_le_bytes(), part])?;
            queued.push((submitted, seq, version, at, part.len() as u64));
        }
        for (submitted, seq, version, at, len) in queued {
            let record = submitted.wait()?;
            let mut inner = self.inner.lock();
            let Inner { chunks, files, .. } = &mut *inner;
            if let Some(c) = chunks.get_mut(&seq) {
                c.writers.insert(file);
                c.pending -= 1;
            }
            let piece = Piece {
                len,
                version,
                chunk: seq,
                record,
                data: WRITE_HEAD as u64,
            };
            files
                .entry(file)
                .or_default()
                .insert(at, piece, &mut Inner::live(chunks));
        }
        Ok(())
    }

    /// Sets `file`'s size: bytes past it are dropped; growing leaves a hole that reads as
    /// zeros.
    pub fn truncate(&self, file: u64, size: u64) -> Result<()> {
        self.tomb(TRUNCATE, file, &size.to_le_bytes(), false, |files, live| {
            files.entry(file).or_default().truncate(size, live);
        })
    }

    /// Drops `file`'s data (its last link is gone and no one has it open). Removing a file the
    /// store does not hold writes nothing.
    pub fn remove(&self, file: u64) -> Result<()> {
        self.tomb(REMOVE, file, &[], true, |files, live| {
            if let Some(mut e) = files.remove(&file) {
                e.truncate(0, live);
            }
        })
    }

    /// Writes a truncate or remove record durably, applies it to the index with `apply`, and
    /// gives back the chunks that no longer hold anything. It waits for the file's writes in
    /// flight, so that it lands after them in the log and in the index. With `only_if_held`,
    /// a file the store holds nothing of writes nothing (no fsync for an empty file's unlink).
    fn tomb(
        &self,
        kind: u8,
        file: u64,
        body: &[u8],
        only_if_held: bool,
        apply: impl FnOnce(&mut HashMap<u64, Extents>, &mut dyn FnMut(u32, i64)),
    ) -> Result<()> {
        let _order = self.stripe(file).write();
        if only_if_held && !self.inner.lock().files.contains_key(&file) {
            return Ok(());
        }
        let (submitted, seq, _) = self.submit(kind, file, &[body])?;
        submitted.wait()?;
        {
            let mut inner = self.inner.lock();
            let Inner { chunks, files, .. } = &mut *inner;
            if let Some(c) = chunks.get_mut(&seq) {
                c.tombs.insert(file);
                c.pending -= 1;
            }
            apply(files, &mut Inner::live(chunks));
        }
        self.reclaim()
    }

    /// Reads `len` bytes at `offset` of `file`; bytes no write reached (holes, and whatever
    /// lies past the last write or a truncate) read as zeros. The file's size is the caller's
    /// business (the namespace's inode holds it): a caller reads no further than it.
    pub fn read(&self, file: u64, offset: u64, len: usize) -> Result<Vec<u8>> {
        let end = offset
            .checked_add(len as u64)
            .ok_or_else(|| Error::InvalidArgument("read range overflows".into()))?;
        let pieces: Vec<(u64, Piece, u64)> = {
            let inner = self.inner.lock();
            match inner.files.get(&file) {
                None => Vec::new(),
                Some(e) => e
                    .covering(offset, end)
                    .map(|(s, p)| (s, p, inner.chunks.get(&p.chunk).map_or(0, |c| c.id)))
                    .collect(),
            }
        };
        crate::extents::assemble(&self.disk, &pieces, offset, len, &format!("file {file}"))
    }

    /// Every file the store holds data for (a file whose data was all truncated away may or
    /// may not be listed).
    pub fn files(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .inner
            .lock()
            .files
            .iter()
            .filter(|(_, e)| e.pieces().next().is_some())
            .map(|(f, _)| *f)
            .collect();
        v.sort_unstable();
        v
    }

    /// One past the highest byte of `file` the store holds (0: none).
    pub fn end(&self, file: u64) -> u64 {
        self.inner.lock().files.get(&file).map_or(0, |e| e.end())
    }

    /// The store's capacity and the bytes still free for new chunks.
    pub fn space(&self) -> (u64, u64) {
        let cfg = self.disk.config();
        let block = u64::from(cfg.block_size);
        (
            u64::from(cfg.blocks) * block,
            self.disk.free_blocks() * block,
        )
    }

    /// What the store holds.
    pub fn stats(&self) -> FilesStats {
        let inner = self.inner.lock();
        FilesStats {
            files: inner
                .files
                .values()
                .filter(|e| e.pieces().next().is_some())
                .count() as u64,
            chunks: inner.chunks.len() as u64,
            live_bytes: inner.chunks.values().map(|c| c.live.max(0) as u64).sum(),
            stored_bytes: inner
                .chunks
                .values()
                .map(|c| self.disk.len(c.id).unwrap_or(0))
                .sum(),
            reclaimed_chunks: inner.reclaimed,
        }
    }

    /// Deletes the chunks nothing needs any more.
    fn reclaim(&self) -> Result<()> {
        loop {
            let victims = self.inner.lock().reclaimable(&self.disk);
            if victims.is_empty() {
                return Ok(());
            }
            for seq in victims {
                let id = match self.inner.lock().chunks.get(&seq) {
                    Some(c) => c.id,
                    None => continue,
                };
                self.disk.delete(id)?;
                let mut inner = self.inner.lock();
                inner.chunks.remove(&seq);
                inner.reclaimed += 1;
            }
        }
    }
}
