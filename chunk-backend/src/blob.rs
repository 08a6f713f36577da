//! Blobs made of chunks: `LogBlob`s (append-only) and `ExtentBlob`s (random writes), with
//! versions and single-writer leases.
//!
//! A blob is a sequence of chunks (its `seq` 0, 1, 2, ...). An append goes to the last chunk;
//! when it is full the chunk is sealed and the next one created. Every append bumps the blob's
//! version, and the version travels inside the record (the first 8 bytes of its payload), so a
//! reopened store knows each blob's version from its last record. A reader may demand at least a
//! version and gets [`Error::Stale`] from a store that is behind. One writer at a time holds a
//! blob's [`Lease`]; a second writer gets [`Error::LeaseHeld`] until it expires. Leases live in
//! memory: a restart ends them all.
//!
//! An `ExtentBlob` is log-structured on the same chunks: `write_at(offset, data)` appends a
//! record `[version][offset][data]`, and an in-memory extent index maps every byte range to the
//! newest record covering it (rebuilt by replaying the records when the store opens). Reads
//! assemble the range from the records; holes read as zeros. Overwritten bytes stay in their
//! chunks until a compaction (not built yet) rewrites the live extents.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::disk::Disk;
use crate::error::{Error, Result};
use crate::extents::{Extents, Piece};
use crate::frame;

/// Where a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// The chunk's index in the blob.
    pub chunk: u32,
    /// The record's offset in the chunk.
    pub offset: u64,
}

/// The right to append to a blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The blob.
    pub blob: u64,
    /// The holder's name.
    pub holder: String,
    /// A token that changes with every grant.
    pub token: u64,
}

struct Granted {
    lease: Lease,
    expires: Instant,
}

/// Blob kinds, as recorded in the chunk table.
pub const LOG: u8 = 0;
/// An `ExtentBlob`.
pub const EXTENT: u8 = 1;

struct BlobState {
    kind: u8,
    /// seq -> chunk id.
    chunks: BTreeMap<u32, u64>,
    /// The newest version whose record is durable: what readers are told exists.
    version: u64,
    /// The newest version handed to a queued append (durable or not). Numbers are never
    /// reused while the store is open; after a reopen the count restarts at the newest
    /// durable record, which no number handed out but never made durable was visible beyond.
    assigned: u64,
    lease: Option<Granted>,
    /// ExtentBlobs: where each byte range lives, and the size.
    extents: Extents,
}

impl BlobState {
    fn new(kind: u8) -> BlobState {
        BlobState {
            kind,
            chunks: BTreeMap::new(),
            version: 0,
            assigned: 0,
            lease: None,
            extents: Extents::default(),
        }
    }
}

/// A record queued on the disk: what it waits on, its chunk's sequence number, its version.
type Queued<'a> = (crate::disk::Submitted<'a>, u32, u64);

/// The blobs of one disk.
pub struct LogStore {
    disk: Arc<Disk>,
    blobs: Mutex<HashMap<u64, BlobState>>,
    tokens: std::sync::atomic::AtomicU64,
    /// Extent blobs whose records could not be replayed, with why.
    damaged: Mutex<HashMap<u64, String>>,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("blobs", &self.blobs.lock().len())
            .finish()
    }
}

fn split_version(payload: &[u8]) -> Result<(u64, &[u8])> {
    if payload.len() < 8 {
        return Err(Error::Corrupt("a blob record without its version".into()));
    }
    let mut v = [0u8; 8];
    v.copy_from_slice(&payload[..8]);
    Ok((u64::from_le_bytes(v), &payload[8..]))
}

impl LogStore {
    /// The blobs on `disk`, rebuilt from its chunks.
    pub fn open(disk: Arc<Disk>) -> Result<LogStore> {
        let mut blobs: HashMap<u64, BlobState> = HashMap::new();
        for c in disk.opened() {
            blobs
                .entry(c.entry.blob)
                .or_insert_with(|| BlobState::new(c.entry.kind))
                .chunks
                .insert(c.entry.seq, c.entry.id);
        }
        // A blob's version is the version of its newest record.
        for b in blobs.values_mut() {
            for (_, id) in b.chunks.iter().rev() {
                let info = disk.opened().iter().find(|c| c.entry.id == *id);
                if let Some(off) = info.and_then(|i| i.records.last()) {
                    let p = disk.read(*id, *off)?;
                    b.version = split_version(&p)?.0;
                    b.assigned = b.version;
                    break;
                }
            }
        }
        let store = LogStore {
            disk,
            blobs: Mutex::new(blobs),
            tokens: std::sync::atomic::AtomicU64::new(1),
            damaged: Mutex::new(HashMap::new()),
        };
        // ExtentBlobs: replay every record into the index, in order.
        let extents: Vec<u64> = store
            .blobs
            .lock()
            .iter()
            .filter(|(_, b)| b.kind == EXTENT)
            .map(|(id, _)| *id)
            .collect();
        for id in extents {
            // One damaged blob must not keep the whole store from opening: its reads report
            // the damage.
            let recs = match store.records(id) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(blob = id, error = %e, "extent blob is damaged");
                    store.damaged.lock().insert(id, e.to_string());
                    continue;
                }
            };
            let mut blobs = store.blobs.lock();
            let Some(b) = blobs.get_mut(&id) else {
                continue;
            };
            for (pos, version, data) in recs {
                let (off, rest) = split_version(&data)?;
                let piece = Piece {
                    len: rest.len() as u64,
                    version,
                    chunk: pos.chunk,
                    record: pos.offset,
                    data: 16,
                };
                b.extents.insert(off, piece, &mut |_, _| {});
            }
        }
        Ok(store)
    }

    /// The disk.
    pub fn disk(&self) -> &Arc<Disk> {
        &self.disk
    }

    /// Creates `LogBlob` `id` (its first chunk).
    pub fn create(&self, id: u64) -> Result<()> {
        self.create_kind(id, LOG)
    }

    /// Creates `ExtentBlob` `id`.
    pub fn create_extent(&self, id: u64) -> Result<()> {
        self.create_kind(id, EXTENT)
    }

    fn create_kind(&self, id: u64, kind: u8) -> Result<()> {
        let mut blobs = self.blobs.lock();
        if blobs.contains_key(&id) {
            return Err(Error::InvalidArgument(format!("blob {id} exists")));
        }
        let chunk = self.disk.create_chunk(id, 0, kind)?;
        let mut b = BlobState::new(kind);
        b.chunks.insert(0, chunk);
        blobs.insert(id, b);
        Ok(())
    }

    /// Every blob id.
    pub fn blobs(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.blobs.lock().keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// The blob's version: that of its newest durable append (appends still in flight do not
    /// count).
    pub fn version(&self, blob: u64) -> Result<u64> {
        let blobs = self.blobs.lock();
        Ok(blobs
            .get(&blob)
            .ok_or_else(|| Error::NotFound(format!("blob {blob}")))?
            .version)
    }

    /// Grants `holder` the blob's write lease for `ttl`, or renews it. Another holder's unexpired
    /// lease is an [`Error::LeaseHeld`].
    pub fn lease(&self, blob: u64, holder: &str, ttl: Duration) -> Result<Lease> {
        let mut blobs = self.blobs.lock();
        let b = blobs
            .get_mut(&blob)
            .ok_or_else(|| Error::NotFound(format!("blob {blob}")))?;
        let now = Instant::now();
        if let Some(g) = &b.lease {
            if g.lease.holder != holder && g.expires > now {
                return Err(Error::LeaseHeld {
                    blob,
                    holder: g.lease.holder.clone(),
                    remaining_ms: (g.expires - now).as_millis() as u64,
                });
            }
        }
        let lease = match &b.lease {
            Some(g) if g.lease.holder == holder && g.expires > now => g.lease.clone(),
            _ => Lease {
                blob,
                holder: holder.to_string(),
                token: self
                    .tokens
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            },
        };
        b.lease = Some(Granted {
            lease: lease.clone(),
            expires: now + ttl,
        });
        Ok(lease)
    }

    fn check_lease(b: &BlobState, lease: &Lease) -> Result<()> {
        match &b.lease {
            Some(g) if g.lease == *lease && g.expires > Instant::now() => Ok(()),
            _ => Err(Error::NoLease(lease.blob)),
        }
    }

    /// Appends `data` to a `LogBlob` under `lease`; returns its position and the blob's new
    /// version once it is durable. Concurrent appends of one writer are committed together, in
    /// call order.
    pub fn append(&self, lease: &Lease, data: &[u8]) -> Result<(Position, u64)> {
        self.append_record(lease, LOG, &[], data)
    }

    /// Appends several records to a `LogBlob` in order and waits until all are durable: they
    /// are queued together, so the disk's writer commits them with as few syncs as it can
    /// (usually one). Returns each record's position and version. On an error, the records
    /// before the failing one may be durable; none after it is acknowledged.
    pub fn append_batch(&self, lease: &Lease, records: &[&[u8]]) -> Result<Vec<(Position, u64)>> {
        let mut queued = Vec::with_capacity(records.len());
        for data in records {
            queued.push(self.submit_record(lease, LOG, &[], data)?);
        }
        let mut out = Vec::with_capacity(queued.len());
        for q in queued {
            out.push(self.finish_record(lease, q)?);
        }
        Ok(out)
    }

    /// The largest payload one record of a blob may carry.
    pub fn max_record(&self) -> usize {
        (self.disk.config().chunk_capacity() as usize).saturating_sub(frame::HEADER + 8 + 16)
    }

    /// Writes `data` at `offset` of an `ExtentBlob` under `lease`; returns the new version once
    /// it is durable.
    pub fn write_at(&self, lease: &Lease, offset: u64, data: &[u8]) -> Result<u64> {
        if let Some(why) = self.damaged.lock().get(&lease.blob) {
            return Err(Error::Checksum(format!(
                "blob {} is damaged: {why}",
                lease.blob
            )));
        }
        if offset.checked_add(data.len() as u64).is_none() {
            return Err(Error::InvalidArgument(format!(
                "write at {offset} overflows"
            )));
        }
        let (pos, version) = self.append_record(lease, EXTENT, &offset.to_le_bytes(), data)?;
        let mut blobs = self.blobs.lock();
        if let Some(b) = blobs.get_mut(&lease.blob) {
            b.extents.insert(
                offset,
                Piece {
                    len: data.len() as u64,
                    version,
                    chunk: pos.chunk,
                    record: pos.offset,
                    data: 16,
                },
                &mut |_, _| {},
            );
        }
        Ok(version)
    }

    fn append_record(
        &self,
        lease: &Lease,
        kind: u8,
        prefix: &[u8],
        data: &[u8],
    ) -> Result<(Position, u64)> {
        let queued = self.submit_record(lease, kind, prefix, data)?;
        self.finish_record(lease, queued)
    }

    /// Waits for a queued record; once it is durable, the blob's version covers it.
    fn finish_record(&self, lease: &Lease, queued: Queued<'_>) -> Result<(Position, u64)> {
        let (submitted, chunk_seq, version) = queued;
        let offset = submitted.wait()?;
        if let Some(b) = self.blobs.lock().get_mut(&lease.blob) {
            b.version = b.version.max(version);
        }
        Ok((
            Position {
                chunk: chunk_seq,
                offset,
            },
            version,
        ))
    }

    /// Queues a record (rolling over to a new chunk when the last one is full).
    fn submit_record(
        &self,
        lease: &Lease,
        kind: u8,
        prefix: &[u8],
        data: &[u8],
    ) -> Result<Queued<'_>> {
        let mut payload = Vec::with_capacity(8 + prefix.len() + data.len());
        let queued = {
            let mut blobs = self.blobs.lock();
            let b = blobs
                .get_mut(&lease.blob)
                .ok_or_else(|| Error::NotFound(format!("blob {}", lease.blob)))?;
            Self::check_lease(b, lease)?;
            if b.kind != kind {
                return Err(Error::InvalidArgument(format!(
                    "blob {} is a{} blob",
                    lease.blob,
                    if b.kind == LOG { " log" } else { "n extent" }
                )));
            }
            let need = (8 + prefix.len() + data.len()) as u64;
            if need > self.disk.config().chunk_capacity() - frame::HEADER as u64 {
                return Err(Error::InvalidArgument(format!(
                    "a record of {} bytes does not fit a chunk",
                    data.len()
                )));
            }
            let (mut seq, mut chunk) = b
                .chunks
                .iter()
                .next_back()
                .map(|(s, c)| (*s, *c))
                .ok_or_else(|| Error::Corrupt(format!("blob {} has no chunk", lease.blob)))?;
            // A sealed last chunk (a crash between sealing it and creating the next one) is
            // rolled over like a full one.
            if self.disk.room(chunk)? < need || self.disk.is_sealed(chunk)? {
                if !self.disk.is_sealed(chunk)? {
                    self.disk.seal(chunk)?;
                }
                seq += 1;
                chunk = self.disk.create_chunk(lease.blob, seq, kind)?;
                b.chunks.insert(seq, chunk);
            }
            let version = b.assigned + 1;
            payload.extend_from_slice(&version.to_le_bytes());
            payload.extend_from_slice(prefix);
            payload.extend_from_slice(data);
            // The number is taken once the record is queued (in queue order, which is the
            // order records become durable in), but the blob's version moves only when the
            // record is durable: a reader must never be told of a version that a crash could
            // still take back.
            let submitted = self.disk.submit(chunk, payload)?;
            b.assigned = version;
            (submitted, seq, version)
        };
        Ok(queued)
    }

    /// Reads `len` bytes at `offset` of an `ExtentBlob` (holes and bytes past its end read as
    /// zeros), demanding the blob be at least at `min_version`.
    pub fn read_at(&self, blob: u64, offset: u64, len: usize, min_version: u64) -> Result<Vec<u8>> {
        if let Some(why) = self.damaged.lock().get(&blob) {
            return Err(Error::Checksum(format!("blob {blob} is damaged: {why}")));
        }
        let end = offset
            .checked_add(len as u64)
            .ok_or_else(|| Error::InvalidArgument("read range overflows".into()))?;
        let pieces: Vec<(u64, Piece, u64)> = {
            let blobs = self.blobs.lock();
            let b = blobs
                .get(&blob)
                .ok_or_else(|| Error::NotFound(format!("blob {blob}")))?;
            if b.kind != EXTENT {
                return Err(Error::InvalidArgument(format!(
                    "blob {blob} is not an extent blob"
                )));
            }
            if b.version < min_version {
                return Err(Error::Stale {
                    blob,
                    have: b.version,
                    want: min_version,
                });
            }
            b.extents
                .covering(offset, end)
                .map(|(s, p)| (s, p, *b.chunks.get(&p.chunk).unwrap_or(&0)))
                .collect()
        };
        crate::extents::assemble(&self.disk, &pieces, offset, len, &format!("blob {blob}"))
    }

    /// An `ExtentBlob`'s size: one past the highest byte written.
    pub fn size(&self, blob: u64) -> Result<u64> {
        let blobs = self.blobs.lock();
        Ok(blobs
            .get(&blob)
            .ok_or_else(|| Error::NotFound(format!("blob {blob}")))?
            .extents
            .size())
    }

    /// Reads the record at `pos`, demanding the blob be at least at `min_version`.
    pub fn read(&self, blob: u64, pos: Position, min_version: u64) -> Result<(u64, Vec<u8>)> {
        let chunk = {
            let blobs = self.blobs.lock();
            let b = blobs
                .get(&blob)
                .ok_or_else(|| Error::NotFound(format!("blob {blob}")))?;
            if b.version < min_version {
                return Err(Error::Stale {
                    blob,
                    have: b.version,
                    want: min_version,
                });
            }
            *b.chunks
                .get(&pos.chunk)
                .ok_or_else(|| Error::NotFound(format!("chunk {} of blob {blob}", pos.chunk)))?
        };
        let p = self.disk.read(chunk, pos.offset)?;
        let (v, data) = split_version(&p)?;
        Ok((v, data.to_vec()))
    }

    /// Every durable record of the blob in order, with its version. A damaged record is an
    /// error, not a gap.
    pub fn records(&self, blob: u64) -> Result<Vec<(Position, u64, Vec<u8>)>> {
        let chunks: Vec<(u32, u64)> = {
            let blobs = self.blobs.lock();
            let b = blobs
                .get(&blob)
                .ok_or_else(|| Error::NotFound(format!("blob {blob}")))?;
            b.chunks.iter().map(|(s, c)| (*s, *c)).collect()
        };
        let mut out = Vec::new();
        for (seq, chunk) in chunks {
            let bytes = self.disk.read_all(chunk)?;
            let scan = frame::scan(&bytes);
            if let Some(c) = scan.corrupt.first() {
                return Err(Error::Checksum(format!(
                    "record at {c} of chunk {seq} of blob {blob}"
                )));
            }
            for r in scan.records {
                let p = frame::payload(&bytes[r.offset as usize..]).map_err(Error::Checksum)?;
                let (v, data) = split_version(p)?;
                out.push((
                    Position {
                        chunk: seq,
                        offset: r.offset,
                    },
                    v,
                    data.to_vec(),
                ));
            }
        }
        Ok(out)
    }

    /// Reclaims the prefix of the blob before `pos`, a chunk at a time: every chunk before
    /// `pos.chunk` is deleted (the chunk holding `pos` stays whole).
    pub fn reclaim(&self, lease: &Lease, pos: Position) -> Result<usize> {
        let victims: Vec<(u32, u64)> = {
            let blobs = self.blobs.lock();
            let b = blobs
                .get(&lease.blob)
                .ok_or_else(|| Error::NotFound(format!("blob {}", lease.blob)))?;
            Self::check_lease(b, lease)?;
            if b.kind != LOG {
                // Extents in early chunks may still be live until a compaction moves them.
                return Err(Error::InvalidArgument(format!(
                    "blob {} is an extent blob; only log blobs reclaim prefixes",
                    lease.blob
                )));
            }
            // The blob's last chunk always stays: appends go there.
            let last = b.chunks.keys().next_back().copied().unwrap_or(0);
            b.chunks
                .range(..pos.chunk.min(last))
                .map(|(s, c)| (*s, *c))
                .collect()
        };
        for (seq, chunk) in &victims {
            self.disk.delete(*chunk)?;
            if let Some(b) = self.blobs.lock().get_mut(&lease.blob) {
                b.chunks.remove(seq);
            }
        }
        Ok(victims.len())
    }
}
