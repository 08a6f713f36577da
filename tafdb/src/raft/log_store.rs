//! The Raft log on disk: a `LogBlob` of a local chunk store, with group commit.
//!
//! The log is blob 1 of a [`chunk_backend`] store in `raft/log.chunks`, so it has the chunk
//! store's guarantees instead of a framing of its own: every record is framed with a
//! self-checksummed header that names its predecessor, each commit records the length the
//! previous one made durable (a checkpoint), and recovery keeps exactly the complete records:
//! a torn tail, or damage above the checkpoint (a batch a power loss persisted out of order), is
//! cut; damage below it is reported as corruption and the tablet does not open. After any
//! failed write or sync the store refuses every later append until it is reopened, so nothing
//! is ever appended after bytes of unknown state.
//!
//! openraft hands entries to [`RaftLogStorage::append`], which queues them for a writer
//! thread and returns. The writer drains everything queued and appends it as one batch of
//! records (one record per entry, or several *fragments* for an entry larger than a record may
//! be); the chunk store commits the batch with one `fdatasync` on that thread, and then every
//! append of the group is acknowledged. With deferred syncs ([`LogStore::set_deferred_sync`])
//! an append is written on the caller's task instead while the writer is idle (a `pwrite`, no
//! `fdatasync`), and [`LogStore::sync`] makes what was acknowledged durable. A truncation appends a record naming the first index it
//! removes; a later entry with the same index replaces the truncated one. A purge deletes the
//! chunks that hold only purged entries.
//!
//! Entries that are not purged yet also stay in memory, so reading them back for apply costs no
//! I/O. The vote and the last purged log id live in small files replaced atomically
//! ([`chunk_backend::atomic`]).

use std::collections::BTreeMap;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chunk_backend::blob::{Lease, LogStore as Blobs, Position};
use chunk_backend::disk::{Disk, DiskConfig};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogId, LogState, RaftLogId, RaftLogReader, StorageError, StorageIOError, Vote};
use parking_lot::Mutex;

use super::{Entry, TypeConfig};
use crate::error::{Error, Result};
use chunk_backend::atomic::SlotFile;

/// The chunk size of a tablet's log by default: a purge frees whole chunks.
pub const CHUNK_BYTES: u64 = 16 << 20;
/// The size of a tablet's log store by default, allocated when the tablet is created. At
/// 100k commits/s the log grows by about 8 MB/s and the durable index (up to which it can be
/// purged) lags by the 5 s MVCC window; the tablet asks for a snapshot, and so a purge, once the
/// store is half full (see [`LogStore::fill`]).
pub const STORE_BYTES: u64 = 512 << 20;
/// How long an append waits for a purge to make room in a full log store before it fails.
const ROOM_WAIT: Duration = Duration::from_secs(60);

/// The log's blob in its chunk store.
const BLOB: u64 = 1;
/// The chunk store file.
const STORE_FILE: &str = "log.chunks";
/// The write lease is the tablet's for as long as it runs; renewed at every purge.
const LEASE_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Record tags.
const ENTRY: u8 = 0;
const TRUNCATE: u8 = 1;
const FRAGMENT: u8 = 2;

/// The version of the log's format. Format 1 stored a batch of commands as a sequence;
/// format 2 stores a [`crate::command::CommandBatch`] as one byte string; format 3 split the
/// log into segment files; format 4 is a `LogBlob` of a chunk store.
const FORMAT: &[u8] = b"4";

type NodeId = u64;

/// The shape of a log's chunk store: chunks of `chunk_bytes` (rounded to 4 KiB blocks) in a
/// file of `store_bytes`.
/// The smallest log store a tablet is made with.
const MIN_STORE_BYTES: u64 = 8 << 20;

/// The chunk and store sizes for a log store in `dir`. An existing store keeps its shape. A new
/// one takes at most a quarter of the space left on the disk (the engines, their compactions
/// and the disk reserve need the rest): a small disk gets a small log, with smaller chunks, and
/// says so, rather than failing to start.
fn fit_to_disk(dir: &Path, chunk_bytes: u64, store_bytes: u64) -> Result<(u64, u64)> {
    if dir.join(STORE_FILE).exists() {
        return Ok((chunk_bytes, store_bytes));
    }
    let space = chunk_backend::disk::fs_space(dir)?;
    let fits = space.available / 4;
    if store_bytes <= fits {
        return Ok((chunk_bytes, store_bytes));
    }
    let fits = if fits < MIN_STORE_BYTES && space.available >= 2 * MIN_STORE_BYTES {
        MIN_STORE_BYTES
    } else {
        fits
    };
    if fits < MIN_STORE_BYTES {
        return Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            format!(
                "{} has {} MiB free: a tablet's Raft log needs {} MiB, and as much again must \
                 stay free",
                dir.display(),
                space.available >> 20,
                MIN_STORE_BYTES >> 20
            ),
        )));
    }
    let store = fits / (1 << 20) * (1 << 20);
    let chunk = chunk_bytes.min(store / 8).max(256 << 10);
    tracing::warn!(
        dir = %dir.display(),
        free_mib = space.available >> 20,
        log_mib = store >> 20,
        wanted_mib = store_bytes >> 20,
        "little free space: the Raft log store is smaller than configured"
    );
    Ok((chunk, store))
}

pub fn store_shape(chunk_bytes: u64, store_bytes: u64) -> DiskConfig {
    let chunk = chunk_bytes.clamp(4096, 64 << 20).div_ceil(4096) * 4096;
    let block = chunk.min(1 << 20);
    let chunk_blocks = chunk.div_ceil(block).max(1);
    let blocks = (store_bytes / block).clamp(chunk_blocks * 4, u64::from(u32::MAX / 2));
    DiskConfig {
        block_size: block as u32,
        blocks: blocks as u32,
        chunk_slots: (blocks / chunk_blocks + 8) as u32,
        chunk_blocks: chunk_blocks as u32,
    }
}

enum WriterMsg {
    Append {
        records: Vec<(u64, Vec<u8>)>,
        callback: LogFlushed<TypeConfig>,
    },
    Truncate {
        from: u64,
        done: tokio::sync::oneshot::Sender<std::io::Result<()>>,
    },
    Purge {
        upto: u64,
        done: tokio::sync::oneshot::Sender<std::io::Result<()>>,
    },
    /// Frees the disk space of entries up to `upto` without telling openraft (see
    /// [`LogStore::reclaim`]).
    Reclaim {
        upto: LogId<NodeId>,
        done: tokio::sync::oneshot::Sender<std::io::Result<()>>,
    },
}

struct Shared {
    /// How full the log's store is, in thousandths (see [`LogStore::fill`]).
    fill: std::sync::atomic::AtomicU64,
    entries: Mutex<BTreeMap<u64, Entry>>,
    purged: Mutex<Option<LogId<NodeId>>>,
    /// What the `purged` file says: the larger of openraft's purges and [`LogStore::reclaim`]s.
    purged_on_disk: Mutex<Option<LogId<NodeId>>>,
    vote: Mutex<Option<Vote<NodeId>>>,
    /// The `vote` and `purged` files, rewritten in place: they must stay writable on a full
    /// disk, where a failed vote or purge would stop the tablet.
    vote_file: Mutex<SlotFile>,
    purged_file: Mutex<SlotFile>,
    /// The chunk store, for syncs when it defers them.
    disk: Arc<Disk>,
    /// Whether appends may be written inline (deferred syncs).
    inline: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// Records on disk that entries up to `upto` are gone (never moving backwards).
    fn record_purged(&self, upto: LogId<NodeId>) -> std::io::Result<()> {
        let mut on_disk = self.purged_on_disk.lock();
        if on_disk.is_some_and(|p| p.index >= upto.index) {
            return Ok(());
        }
        let bytes = bincode::serialize(&Some(upto)).map_err(io_other)?;
        self.purged_file.lock().write(&bytes)?;
        *on_disk = Some(upto);
        Ok(())
    }
}

/// The durable Raft log of one tablet replica.
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
    tx: std::sync::mpsc::Sender<WriterMsg>,
    /// The writer, shared with its thread: with deferred syncs an append is written on the
    /// caller's thread (openraft's core task) when the thread is idle (see
    /// [`LogStore::set_deferred_sync`]).
    writer: Arc<Mutex<Writer>>,
}

/// A reader over the same log (openraft reads entries for apply and replication through it).
#[derive(Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

fn io_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::<NodeId>::write_logs(openraft::AnyError::error(e.to_string())).into()
}

fn io_other(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Refuses a log written in another format, rather than misreading it, and records the format
/// of a new log.
fn check_format(dir: &Path) -> Result<()> {
    let older = std::fs::read_dir(dir)?.filter_map(|e| e.ok()).any(|e| {
        let n = e.file_name();
        let n = n.to_string_lossy();
        n == "raft.log" || (n.starts_with("raft-") && n.ends_with(".log"))
    });
    if older {
        return Err(Error::Corruption(format!(
            "{}: written by an older build (a Raft log in plain files, format 1 to 3); this \
             build reads format {}. Open it with the build that wrote it, or start from a \
             fresh data directory",
            dir.display(),
            String::from_utf8_lossy(FORMAT)
        )));
    }
    let path = dir.join("format");
    match chunk_backend::atomic::read(&path)? {
        Some(f) if f == FORMAT => Ok(()),
        Some(f) => Err(Error::Corruption(format!(
            "{}: Raft log format {} is not the format {} this build reads",
            dir.display(),
            String::from_utf8_lossy(&f),
            String::from_utf8_lossy(FORMAT)
        ))),
        None if dir.join(STORE_FILE).exists() => Err(Error::Corruption(format!(
            "{}: a log store without a format record; refusing to guess its format",
            dir.display()
        ))),
        None => Ok(chunk_backend::atomic::write(&path, FORMAT)?),
    }
}

/// What replaying the blob found.
#[derive(Default)]
struct Replayed {
    entries: BTreeMap<u64, Entry>,
    /// The chunk (sequence number) holding each entry's first record.
    chunks: BTreeMap<u64, u32>,
}

fn decode_entry(bytes: &[u8], at: Position) -> Result<Entry> {
    bincode::deserialize(bytes).map_err(|e| {
        Error::Corruption(format!(
            "Raft log record at chunk {} offset {}: {e}",
            at.chunk, at.offset
        ))
    })
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn replay(records: Vec<(Position, u64, Vec<u8>)>, purged: Option<u64>) -> Result<Replayed> {
    let mut out = Replayed::default();
    // An entry in fragments: its index, total size, first chunk and bytes so far.
    let mut partial: Option<(u64, usize, u32, Vec<u8>)> = None;
    let bad = |at: Position, what: &str| {
        Error::Corruption(format!(
            "Raft log record at chunk {} offset {}: {what}",
            at.chunk, at.offset
        ))
    };
    let install = |out: &mut Replayed, entry: Entry, chunk: u32| {
        let index = entry.get_log_id().index;
        // A later record with the same index replaced a truncated one.
        out.entries.split_off(&index);
        out.chunks.split_off(&index);
        out.entries.insert(index, entry);
        out.chunks.insert(index, chunk);
    };
    for (at, _, rec) in records {
        let Some((&tag, body)) = rec.split_first() else {
            return Err(bad(at, "empty record"));
        };
        if tag != FRAGMENT && partial.take().is_some() {
            // Fragments are appended back to back in one batch, acknowledged only whole: an
            // entry cut short was never acknowledged.
            tracing::warn!(
                chunk = at.chunk,
                "raft log: dropping an entry whose fragments were not all written"
            );
        }
        match tag {
            ENTRY => install(&mut out, decode_entry(body, at)?, at.chunk),
            TRUNCATE => {
                let from = u64_at(body, 0).ok_or_else(|| bad(at, "short truncation record"))?;
                out.entries.split_off(&from);
                out.chunks.split_off(&from);
            }
            FRAGMENT => {
                let index = u64_at(body, 0).ok_or_else(|| bad(at, "short fragment"))?;
                let total = u64_at(body, 8).ok_or_else(|| bad(at, "short fragment"))? as usize;
                let offset = u64_at(body, 16).ok_or_else(|| bad(at, "short fragment"))? as usize;
                let part = &body[24..];
                // A fragment continues the partial entry only if it starts where that one
                // stopped; a first fragment starts a new one (the rest of an entry cut short
                // by a crash is never written, a resend starts from offset 0).
                let p = match partial.take() {
                    Some(p) if offset > 0 && p.0 == index && p.3.len() == offset => p,
                    _ if offset == 0 => (index, total, at.chunk, Vec::with_capacity(total)),
                    _ => continue,
                };
                let (index, total, chunk, mut buf) = p;
                buf.extend_from_slice(part);
                if buf.len() > total {
                    return Err(bad(at, "fragments longer than their entry"));
                }
                if buf.len() == total {
                    install(&mut out, decode_entry(&buf, at)?, chunk);
                } else {
                    partial = Some((index, total, chunk, buf));
                }
            }
            other => return Err(bad(at, &format!("unknown record tag {other}"))),
        }
    }
    // Entries up to the purge point are gone (a purge may jump past the last local entry, as
    // after installing a snapshot from elsewhere); only the rest must be contiguous.
    if let Some(p) = purged {
        out.entries = out.entries.split_off(&(p + 1));
        out.chunks = out.chunks.split_off(&(p + 1));
    }
    // Entries are acknowledged in order, a group at a time: a record that follows a gap (its
    // group failed part-way, say on a full store) was never acknowledged.
    let gap = out
        .entries
        .keys()
        .zip(out.entries.keys().skip(1))
        .find(|(a, b)| **a + 1 != **b)
        .map(|(_, b)| *b);
    if let Some(gap) = gap {
        tracing::warn!(
            index = gap,
            "raft log: dropping entries after a gap (never acknowledged)"
        );
        out.entries.split_off(&gap);
        out.chunks.split_off(&gap);
    }
    Ok(out)
}

/// Encodes an entry as one record, or as fragments no larger than `max` each.
fn entry_records(bytes: &[u8], index: u64, max: usize) -> Vec<Vec<u8>> {
    if bytes.len() < max {
        let mut r = Vec::with_capacity(1 + bytes.len());
        r.push(ENTRY);
        r.extend_from_slice(bytes);
        return vec![r];
    }
    let step = max.saturating_sub(25).max(1);
    bytes
        .chunks(step)
        .enumerate()
        .map(|(i, part)| {
            let mut r = Vec::with_capacity(25 + part.len());
            r.push(FRAGMENT);
            r.extend_from_slice(&index.to_le_bytes());
            r.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            r.extend_from_slice(&((i * step) as u64).to_le_bytes());
            r.extend_from_slice(part);
            r
        })
        .collect()
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, replaying what is on disk. A new log's chunk store
    /// is shaped by [`store_shape`]`(chunk_bytes, store_bytes)`; an existing one keeps its shape.
    pub fn open(dir: &Path, chunk_bytes: u64, store_bytes: u64) -> Result<LogStore> {
        std::fs::create_dir_all(dir)?;
        check_format(dir)?;
        let (vote_file, vote) = SlotFile::open(&dir.join("vote"))?;
        let vote = match vote {
            Some(b) => Some(
                bincode::deserialize(&b).map_err(|e| Error::Corruption(format!("vote: {e}")))?,
            ),
            None => None,
        };
        let (purged_file, purged) = SlotFile::open(&dir.join("purged"))?;
        let purged: Option<LogId<NodeId>> = match purged {
            Some(b) => {
                bincode::deserialize(&b).map_err(|e| Error::Corruption(format!("purged: {e}")))?
            }
            None => None,
        };
        let (chunk_bytes, store_bytes) = fit_to_disk(dir, chunk_bytes, store_bytes)?;
        let disk = Disk::open(&dir.join(STORE_FILE), store_shape(chunk_bytes, store_bytes))?;
        let disk = Arc::new(disk);
        let blobs = Blobs::open(disk.clone())?;
        if !blobs.blobs().contains(&BLOB) {
            blobs.create(BLOB)?;
        }
        let lease = blobs.lease(BLOB, "tablet", LEASE_TTL)?;
        let replayed = replay(blobs.records(BLOB)?, purged.map(|p| p.index))?;
        let shared = Arc::new(Shared {
            fill: std::sync::atomic::AtomicU64::new(0),
            entries: Mutex::new(replayed.entries),
            purged: Mutex::new(purged),
            purged_on_disk: Mutex::new(purged),
            vote: Mutex::new(vote),
            vote_file: Mutex::new(vote_file),
            purged_file: Mutex::new(purged_file),
            disk,
            inline: std::sync::atomic::AtomicBool::new(false),
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let shape = blobs.disk().config();
        let writer = Writer {
            max_record: blobs.max_record(),
            blobs,
            lease,
            chunks: replayed.chunks,
            backlog: std::collections::VecDeque::new(),
            shared: shared.clone(),
            block_size: u64::from(shape.block_size),
            total_blocks: u64::from(shape.blocks),
            chunk_blocks: u64::from(shape.chunk_blocks),
        };
        writer.publish_fill();
        let writer = Arc::new(Mutex::new(writer));
        let w = writer.clone();
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || Writer::run(&w, rx))?;
        Ok(LogStore { shared, tx, writer })
    }

    /// Acknowledges appends once written to the kernel, before their `fdatasync` (see
    /// [`chunk_backend::disk::Disk::set_deferred_sync`] and [`crate::tablet::LogSync`]).
    ///
    /// Deferred, an append is also written on the caller's thread when the writer thread is
    /// idle: it costs a `pwrite`, less than the two thread hand-offs to the writer and back
    /// (openraft's core waits for every append anyway). Synced, appends stay on the writer
    /// thread, so that an `fdatasync` never holds a runtime thread.
    pub fn set_deferred_sync(&self, on: bool) -> Result<()> {
        self.shared.disk.set_deferred_sync(on)?;
        self.shared
            .inline
            .store(on, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Sets what runs before every sync of the log while syncs are deferred (see
    /// [`chunk_backend::disk::Disk::set_before_sync`]).
    pub fn set_before_sync(&self, f: chunk_backend::disk::BeforeSync) {
        self.shared.disk.set_before_sync(f);
    }

    /// Puts every acknowledged append on the medium (nothing to do unless syncs are
    /// deferred).
    pub fn sync(&self) -> Result<()> {
        Ok(self.shared.disk.sync()?)
    }

    /// How full the log's store is, from 0 to 1. The tablet reclaims the log up to the durable
    /// index ([`LogStore::reclaim`]) when it passes one half.
    pub fn fill(&self) -> f64 {
        self.shared.fill.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1000.0
    }

    /// Frees the disk space of the entries up to `upto`, which must be at or below the durable
    /// index and covered by a snapshot reference on disk. openraft is not told: its own purges
    /// follow snapshots, which it schedules behind log writes, so a full store waiting for one
    /// would wait for itself. The entries stay in memory until openraft purges them; after a
    /// restart the log starts after `upto`, where the engines take over.
    pub async fn reclaim(&self, upto: LogId<NodeId>) -> Result<()> {
        let (done, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(WriterMsg::Reclaim { upto, done })
            .map_err(|_| Error::Shutdown)?;
        rx.await.map_err(|_| Error::Shutdown)??;
        Ok(())
    }
}

struct Writer {
    blobs: Blobs,
    lease: Lease,
    /// The chunk holding each live entry's first record.
    chunks: BTreeMap<u64, u32>,
    max_record: usize,
    /// Messages taken from the channel while an append waited for room, in order.
    backlog: std::collections::VecDeque<WriterMsg>,
    shared: Arc<Shared>,
    block_size: u64,
    total_blocks: u64,
    chunk_blocks: u64,
}

impl Writer {
    fn publish_fill(&self) {
        let free = self.blobs.disk().free_blocks().min(self.total_blocks);
        let used = (self.total_blocks - free) * 1000 / self.total_blocks.max(1);
        self.shared
            .fill
            .store(used, std::sync::atomic::Ordering::Relaxed);
    }

    /// Blocks `bytes` more in `records` records may take (with a new chunk).
    fn blocks_needed(&self, bytes: u64, records: u64) -> u64 {
        (bytes + records * 64).div_ceil(self.block_size) + self.chunk_blocks + 1
    }

    /// Waits until the store has room for `bytes` more (and a new chunk), applying the purges
    /// that arrive meanwhile (they only concern entries already durable, before the waiting
    /// ones). The store has no other writer, so room seen here is room the append gets.
    fn ensure_room(
        &mut self,
        bytes: u64,
        records: u64,
        rx: &std::sync::mpsc::Receiver<WriterMsg>,
    ) -> std::io::Result<()> {
        let need = self.blocks_needed(bytes, records);
        let deadline = std::time::Instant::now() + ROOM_WAIT;
        let mut warned = false;
        while self.blobs.disk().free_blocks() < need {
            if !warned {
                tracing::warn!(
                    need_blocks = need,
                    free_blocks = self.blobs.disk().free_blocks(),
                    "raft log store is full; waiting for a purge"
                );
                warned = true;
            }
            if std::time::Instant::now() >= deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    format!(
                        "the Raft log store is full and no purge made room within {}s; raise \
                         log_store_bytes",
                        ROOM_WAIT.as_secs()
                    ),
                ));
            }
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(m) => self.backlog.push_back(m),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(io_other("the log store is closing"))
                }
            }
            // Purges and reclaims may jump the queue (they concern entries already durable,
            // before the waiting ones); everything else keeps its order.
            let mut rest = std::collections::VecDeque::new();
            while let Some(m) = self.backlog.pop_front() {
                match m {
                    WriterMsg::Purge { upto, done } => {
                        let _ = done.send(self.purge(upto));
                    }
                    WriterMsg::Reclaim { upto, done } => {
                        let _ = done.send(self.reclaim(upto));
                    }
                    other => rest.push_back(other),
                }
            }
            self.backlog = rest;
        }
        Ok(())
    }

    fn run(writer: &Mutex<Writer>, rx: std::sync::mpsc::Receiver<WriterMsg>) {
        loop {
            let backlogged = writer.lock().backlog.pop_front();
            let first = match backlogged {
                Some(m) => m,
                None => match rx.recv() {
                    Ok(m) => m,
                    Err(_) => return,
                },
            };
            writer.lock().handle(first, &rx);
        }
    }

    /// Handles `first` and every message queued behind it.
    fn handle(&mut self, first: WriterMsg, rx: &std::sync::mpsc::Receiver<WriterMsg>) {
        {
            let mut msgs = vec![first];
            msgs.extend(self.backlog.drain(..));
            while let Ok(m) = rx.try_recv() {
                msgs.push(m);
            }
            let mut group: Vec<(u64, Vec<u8>)> = Vec::new();
            let mut callbacks = Vec::new();
            for m in msgs {
                match m {
                    WriterMsg::Append { records, callback } => {
                        group.extend(records);
                        callbacks.push(callback);
                    }
                    other => {
                        // The group so far goes first: a truncate or purge follows it.
                        let res = self.write_group(&mut group, rx);
                        finish(&mut callbacks, &res);
                        match other {
                            WriterMsg::Truncate { from, done } => {
                                let _ = done.send(res.and_then(|_| self.truncate(from, rx)));
                            }
                            WriterMsg::Purge { upto, done } => {
                                let _ = done.send(res.and_then(|_| self.purge(upto)));
                            }
                            WriterMsg::Reclaim { upto, done } => {
                                let _ = done.send(res.and_then(|_| self.reclaim(upto)));
                            }
                            WriterMsg::Append { .. } => {}
                        }
                    }
                }
            }
            let res = self.write_group(&mut group, rx);
            finish(&mut callbacks, &res);
        }
    }

    /// Appends the entries of `group` (index, encoded entry) and waits until they are durable.
    fn write_group(
        &mut self,
        group: &mut Vec<(u64, Vec<u8>)>,
        rx: &std::sync::mpsc::Receiver<WriterMsg>,
    ) -> std::io::Result<()> {
        if group.is_empty() {
            return Ok(());
        }
        let mut records: Vec<Vec<u8>> = Vec::with_capacity(group.len());
        let mut first_record: Vec<(u64, usize)> = Vec::with_capacity(group.len());
        for (index, bytes) in group.drain(..) {
            first_record.push((index, records.len()));
            records.extend(entry_records(&bytes, index, self.max_record));
        }
        let bytes: u64 = records.iter().map(|r| r.len() as u64).sum();
        self.ensure_room(bytes, records.len() as u64, rx)?;
        self.place(&records, first_record)
    }

    /// Appends `group` now if the store has room for it without a purge (else leaves it).
    fn write_group_inline(
        &mut self,
        group: &mut Vec<(u64, Vec<u8>)>,
    ) -> Option<std::io::Result<()>> {
        let mut records: Vec<Vec<u8>> = Vec::with_capacity(group.len());
        let mut first_record: Vec<(u64, usize)> = Vec::with_capacity(group.len());
        for (index, bytes) in group.iter() {
            first_record.push((*index, records.len()));
            records.extend(entry_records(bytes, *index, self.max_record));
        }
        let bytes: u64 = records.iter().map(|r| r.len() as u64).sum();
        if self.blobs.disk().free_blocks() < self.blocks_needed(bytes, records.len() as u64) {
            return None;
        }
        group.clear();
        Some(self.place(&records, first_record))
    }

    /// Appends the records of a group; `first_record` maps each entry to its first record.
    fn place(
        &mut self,
        records: &[Vec<u8>],
        first_record: Vec<(u64, usize)>,
    ) -> std::io::Result<()> {
        let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        let placed = self
            .blobs
            .append_batch(&self.lease, &refs)
            .map_err(io_other)?;
        for (index, at) in first_record {
            if let Some((pos, _)) = placed.get(at) {
                self.chunks.split_off(&index);
                self.chunks.insert(index, pos.chunk);
            }
        }
        self.publish_fill();
        Ok(())
    }

    fn truncate(
        &mut self,
        from: u64,
        rx: &std::sync::mpsc::Receiver<WriterMsg>,
    ) -> std::io::Result<()> {
        let mut rec = vec![TRUNCATE];
        rec.extend_from_slice(&from.to_le_bytes());
        self.ensure_room(rec.len() as u64, 1, rx)?;
        self.blobs.append(&self.lease, &rec).map_err(io_other)?;
        self.chunks.split_off(&from);
        Ok(())
    }

    /// Records `upto` as purged on disk, then frees the chunks that hold nothing after it.
    fn reclaim(&mut self, upto: LogId<NodeId>) -> std::io::Result<()> {
        self.shared.record_purged(upto)?;
        self.purge(upto.index)
    }

    fn purge(&mut self, upto: u64) -> std::io::Result<()> {
        self.chunks = self.chunks.split_off(&(upto + 1));
        self.lease = self
            .blobs
            .lease(BLOB, "tablet", LEASE_TTL)
            .map_err(io_other)?;
        // Chunks before the one holding the first live entry hold only purged (or truncated)
        // records. With no live entry, everything before the last chunk goes.
        let keep = self.chunks.values().next().copied().unwrap_or(u32::MAX);
        self.blobs
            .reclaim(
                &self.lease,
                Position {
                    chunk: keep,
                    offset: 0,
                },
            )
            .map_err(io_other)?;
        self.publish_fill();
        Ok(())
    }
}

fn finish(callbacks: &mut Vec<LogFlushed<TypeConfig>>, res: &std::io::Result<()>) {
    for cb in callbacks.drain(..) {
        match res {
            Ok(()) => cb.log_io_completed(Ok(())),
            Err(e) => cb.log_io_completed(Err(std::io::Error::new(e.kind(), e.to_string()))),
        }
    }
}

fn read_range<RB: RangeBounds<u64>>(shared: &Shared, range: RB) -> Vec<Entry> {
    shared
        .entries
        .lock()
        .range(range)
        .map(|(_, e)| e.clone())
        .collect()
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        Ok(read_range(&self.shared, range))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        Ok(read_range(&self.shared, range))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let purged = *self.shared.purged.lock();
        let last = self
            .shared
            .entries
            .lock()
            .iter()
            .next_back()
            .map(|(_, e)| *e.get_log_id())
            .or(purged);
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader {
            shared: self.shared.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let bytes = bincode::serialize(vote).map_err(io_err)?;
        self.shared.vote_file.lock().write(&bytes).map_err(io_err)?;
        *self.shared.vote.lock() = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(*self.shared.vote.lock())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut records = Vec::new();
        {
            let mut map = self.shared.entries.lock();
            for e in entries {
                let bytes = bincode::serialize(&e).map_err(io_err)?;
                let index = e.get_log_id().index;
                records.push((index, bytes));
                map.insert(index, e);
            }
        }
        if self
            .shared
            .inline
            .load(std::sync::atomic::Ordering::Acquire)
        {
            // Only while the thread is idle and has nothing queued: appends stay in order
            // (openraft waits for each before the next), and a full store waits for its purge
            // on the thread, never here.
            if let Some(mut w) = self.writer.try_lock() {
                if w.backlog.is_empty() {
                    if let Some(res) = w.write_group_inline(&mut records) {
                        drop(w);
                        let mut callbacks = vec![callback];
                        finish(&mut callbacks, &res);
                        return Ok(());
                    }
                }
            }
        }
        self.tx
            .send(WriterMsg::Append { records, callback })
            .map_err(|_| io_err("log writer thread is gone"))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.shared.entries.lock().split_off(&log_id.index);
        let (done, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(WriterMsg::Truncate {
                from: log_id.index,
                done,
            })
            .map_err(|_| io_err("log writer thread is gone"))?;
        rx.await.map_err(io_err)?.map_err(io_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.shared.record_purged(log_id).map_err(io_err)?;
        *self.shared.purged.lock() = Some(log_id);
        {
            let mut map = self.shared.entries.lock();
            *map = map.split_off(&(log_id.index + 1));
        }
        let (done, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(WriterMsg::Purge {
                upto: log_id.index,
                done,
            })
            .map_err(|_| io_err("log writer thread is gone"))?;
        rx.await.map_err(io_err)?.map_err(io_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_fit_their_chunks_and_stores() {
        let s = store_shape(CHUNK_BYTES, STORE_BYTES);
        assert_eq!(s.chunk_capacity(), CHUNK_BYTES);
        assert!(s.file_size() >= STORE_BYTES);
        let tiny = store_shape(2048, 1 << 20);
        assert_eq!(tiny.block_size, 4096);
        assert!(tiny.blocks >= 4);
    }

    fn blank(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: openraft::EntryPayload::Blank,
        }
    }

    fn records_of(entries: impl Iterator<Item = Entry>, max: usize) -> Vec<Vec<u8>> {
        entries
            .flat_map(|e| {
                let bytes = bincode::serialize(&e).expect("encode");
                entry_records(&bytes, e.get_log_id().index, max)
            })
            .collect()
    }

    fn at(recs: Vec<Vec<u8>>) -> Vec<(Position, u64, Vec<u8>)> {
        recs.into_iter()
            .enumerate()
            .map(|(i, r)| {
                let pos = Position {
                    chunk: 0,
                    offset: i as u64,
                };
                (pos, i as u64 + 1, r)
            })
            .collect()
    }

    #[test]
    fn replay_keeps_what_follows_a_purge_past_the_last_entry_and_stops_at_gaps() {
        // Entries 90..=100, then a snapshot from elsewhere purged up to 500, then 501..=505.
        let recs = records_of((90..=100).chain(501..=505).map(blank), 1 << 20);
        let r = replay(at(recs.clone()), Some(500)).expect("replay");
        assert_eq!(
            r.entries.keys().copied().collect::<Vec<_>>(),
            (501..=505).collect::<Vec<_>>()
        );
        // Without that purge, 501.. follow a gap: never acknowledged.
        let r = replay(at(recs), Some(89)).expect("replay");
        assert_eq!(
            r.entries.keys().copied().collect::<Vec<_>>(),
            (90..=100).collect::<Vec<_>>()
        );
    }

    #[test]
    fn an_entry_cut_short_is_dropped_and_its_resend_comes_back_whole() {
        let big = |i: u64| {
            let mut e = blank(i);
            e.payload = openraft::EntryPayload::Membership(openraft::Membership::new(
                vec![(0..200u64).collect()],
                None,
            ));
            e
        };
        let whole = records_of(std::iter::once(big(7)), 256);
        assert!(whole.len() > 3, "the entry is written in fragments");
        // The first fragments of entry 7, then (after a crash) the whole entry resent.
        let mut recs = records_of((1..=6).map(blank), 256);
        recs.extend(whole[..2].iter().cloned());
        recs.extend(whole.iter().cloned());
        let r = replay(at(recs), None).expect("replay");
        assert_eq!(
            r.entries.keys().copied().collect::<Vec<_>>(),
            (1..=7).collect::<Vec<_>>()
        );
        assert_eq!(
            bincode::serialize(&r.entries[&7]).expect("encode"),
            bincode::serialize(&big(7)).expect("encode")
        );
    }

    #[test]
    fn a_large_entry_goes_in_fragments_and_comes_back_whole() {
        let bytes: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let recs = entry_records(&bytes, 7, 1000);
        assert!(recs.len() > 10 && recs.iter().all(|r| r.len() <= 1000 && r[0] == FRAGMENT));
        let mut joined = Vec::new();
        for r in &recs {
            assert_eq!(u64_at(&r[1..], 0), Some(7));
            assert_eq!(u64_at(&r[1..], 16), Some(joined.len() as u64));
            joined.extend_from_slice(&r[25..]);
        }
        assert_eq!(joined, bytes);
        assert_eq!(entry_records(b"small", 1, 1000), vec![b"\0small".to_vec()]);
    }
}
