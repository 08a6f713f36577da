//! The Raft log on disk, with group commit.
//!
//! Append-only *segment* files `raft-NNNNNNNNNN.log` of framed records `len:u32le,
//! crc32c:u32le, bincode(entry)`; the writer starts a new segment once the current one passes
//! 32 MiB, and a purge deletes the segments that hold only purged entries. (One file whose
//! purged prefix was cut off by copying the rest into a new file stalled every commit for the
//! copy and its `fsync`: the live tail is the whole MVCC window, tens of megabytes.)
//! openraft hands entries to [`RaftLogStorage::append`], which only queues them for a dedicated
//! writer thread and returns. The writer drains everything queued, writes it with one `write`,
//! calls `fdatasync` once and then acknowledges every append of the group: many concurrent
//! commits share one sync, which is what keeps a disk where one sync costs milliseconds fast.
//!
//! Entries that are not purged yet also stay in memory, so reading them back for apply costs no
//! I/O. The vote and the last purged log id live in small checksummed files replaced atomically.
//! Opening replays the segments in order: a bad record at the very end of the last one is a
//! torn write that was never acknowledged and is cut off; a bad record with valid records after
//! it, or anywhere in an earlier segment, is corruption and opening fails.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogId, LogState, RaftLogId, RaftLogReader, StorageError, StorageIOError, Vote};
use parking_lot::Mutex;

use super::{Entry, TypeConfig};
use crate::error::{Error, Result};

/// The single log file of format 2, refused by name.
const OLD_LOG_FILE: &str = "raft.log";
/// A segment is closed once it is this large (by default).
pub const SEGMENT_BYTES: u64 = 32 << 20;

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("raft-{seq:010}.log"))
}

/// The segment files in `dir`, by sequence number.
fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut seqs = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name();
        let name = name.to_string_lossy();
        if let Some(seq) = name
            .strip_prefix("raft-")
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// One segment file.
struct Segment {
    seq: u64,
    /// The index of its first record, if it has one.
    first: Option<u64>,
    len: u64,
}

type NodeId = u64;

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
}

struct Shared {
    dir: PathBuf,
    entries: Mutex<BTreeMap<u64, Entry>>,
    purged: Mutex<Option<LogId<NodeId>>>,
    vote: Mutex<Option<Vote<NodeId>>>,
}

/// The durable Raft log of one tablet replica.
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
    tx: std::sync::mpsc::Sender<WriterMsg>,
}

/// A reader over the same log (openraft reads entries for apply and replication through it).
#[derive(Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

fn io_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::<NodeId>::write_logs(openraft::AnyError::error(e.to_string())).into()
}

fn write_small_file(dir: &Path, name: &str, payload: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(&crc32c::crc32c(payload).to_le_bytes())?;
    f.write_all(payload)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

fn read_small_file(dir: &Path, name: &str) -> Result<Option<Vec<u8>>> {
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(b) if b.len() >= 4 => {
            let crc = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            if crc32c::crc32c(&b[4..]) != crc {
                return Err(Error::Corruption(format!(
                    "{}: checksum mismatch",
                    path.display()
                )));
            }
            Ok(Some(b[4..].to_vec()))
        }
        Ok(_) => Err(Error::Corruption(format!("{}: truncated", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The version of the log's format. Format 1 stored a batch of commands as a sequence;
/// format 2 stores a [`crate::command::CommandBatch`] as one byte string; format 3 splits the
/// log into segment files.
const FORMAT: &[u8] = b"3";

/// Refuses a log written in another format, rather than misreading it, and records the format
/// of a new log.
fn check_format(dir: &Path) -> Result<()> {
    match read_small_file(dir, "format")? {
        Some(f) if f == FORMAT => Ok(()),
        Some(f) => Err(Error::Corruption(format!(
            "{}: Raft log format {} is not the format {} this build reads",
            dir.display(),
            String::from_utf8_lossy(&f),
            String::from_utf8_lossy(FORMAT)
        ))),
        None => {
            let log = dir.join(OLD_LOG_FILE);
            if std::fs::metadata(&log).is_ok_and(|m| m.len() > 0) {
                return Err(Error::Corruption(format!(
                    "{}: written by an older build (Raft log format 1); this build reads format \
                     {}. Open it with the build that wrote it, or start from a fresh data \
                     directory",
                    log.display(),
                    String::from_utf8_lossy(FORMAT)
                )));
            }
            let segments = list_segments(dir)?;
            let written = segments
                .iter()
                .any(|seq| std::fs::metadata(segment_path(dir, *seq)).is_ok_and(|m| m.len() > 0));
            if written {
                return Err(Error::Corruption(format!(
                    "{}: log segments without a format record; refusing to guess their format",
                    dir.display()
                )));
            }
            write_small_file(dir, "format", FORMAT)?;
            Ok(())
        }
    }
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, replaying what is on disk; segments are closed
    /// once they reach `segment_bytes`.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<LogStore> {
        std::fs::create_dir_all(dir)?;
        check_format(dir)?;
        let vote = match read_small_file(dir, "vote")? {
            Some(b) => Some(
                bincode::deserialize(&b).map_err(|e| Error::Corruption(format!("vote: {e}")))?,
            ),
            None => None,
        };
        let purged: Option<LogId<NodeId>> = match read_small_file(dir, "purged")? {
            Some(b) => {
                bincode::deserialize(&b).map_err(|e| Error::Corruption(format!("purged: {e}")))?
            }
            None => None,
        };
        let mut seqs = list_segments(dir)?;
        if seqs.is_empty() {
            File::create(segment_path(dir, 1))?.sync_all()?;
            File::open(dir)?.sync_all()?;
            seqs.push(1);
        }
        let mut entries = BTreeMap::new();
        let mut offsets = BTreeMap::new();
        let mut segments = Vec::new();
        for (n, &seq) in seqs.iter().enumerate() {
            let last = n + 1 == seqs.len();
            let path = segment_path(dir, seq);
            let data = std::fs::read(&path)?;
            let mut pos = 0usize;
            let mut first = None;
            while pos + 8 <= data.len() {
                let len =
                    u32::from_le_bytes(data[pos..pos + 4].try_into().unwrap_or_default()) as usize;
                let crc = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().unwrap_or_default());
                let Some(payload) = data.get(pos + 8..pos + 8 + len) else {
                    break;
                };
                if crc32c::crc32c(payload) != crc {
                    if crate::frame::valid_record_at(&data[pos + 8 + len..]) {
                        return Err(Error::Corruption(format!(
                            "{}: bad record at offset {pos}",
                            path.display()
                        )));
                    }
                    break;
                }
                let entry: Entry = bincode::deserialize(payload).map_err(|e| {
                    Error::Corruption(format!("{}: offset {pos}: {e}", path.display()))
                })?;
                let index = entry.get_log_id().index;
                first.get_or_insert(index);
                // A later record with the same index replaced a truncated one.
                entries.split_off(&index);
                offsets.split_off(&index);
                offsets.insert(index, (seq, pos as u64));
                entries.insert(index, entry);
                pos += 8 + len;
            }
            if pos < data.len() {
                if !last {
                    // Segments before the last were synced whole before the next began.
                    return Err(Error::Corruption(format!(
                        "{}: damaged record at offset {pos} of a closed segment",
                        path.display()
                    )));
                }
                tracing::warn!(path = %path.display(), pos, len = data.len(), "raft log: cutting a torn tail");
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(pos as u64)?;
                f.sync_data()?;
            }
            segments.push(Segment {
                seq,
                first,
                len: pos as u64,
            });
        }
        if let Some(p) = purged {
            entries = entries.split_off(&(p.index + 1));
        }
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            entries: Mutex::new(entries),
            purged: Mutex::new(purged),
            vote: Mutex::new(vote),
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let current = segments.last().map_or(1, |s| s.seq);
        let writer = Writer {
            dir: dir.to_path_buf(),
            file: OpenOptions::new()
                .append(true)
                .open(segment_path(dir, current))?,
            segments,
            offsets,
            segment_bytes: segment_bytes.max(1),
        };
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer.run(rx))?;
        Ok(LogStore { shared, tx })
    }
}

struct Writer {
    dir: PathBuf,
    /// The current (last) segment, open for appending.
    file: File,
    /// Every segment, oldest first; the last is the current one.
    segments: Vec<Segment>,
    /// Where each entry is: `(segment, offset)`.
    offsets: BTreeMap<u64, (u64, u64)>,
    segment_bytes: u64,
}

impl Writer {
    fn run(mut self, rx: std::sync::mpsc::Receiver<WriterMsg>) {
        while let Ok(first) = rx.recv() {
            let mut msgs = vec![first];
            while let Ok(m) = rx.try_recv() {
                msgs.push(m);
            }
            let mut buf = Vec::new();
            let mut callbacks = Vec::new();
            for m in msgs {
                match m {
                    WriterMsg::Append { records, callback } => {
                        for (index, rec) in records {
                            let (seq, len) = self.current();
                            self.offsets.insert(index, (seq, len + buf.len() as u64));
                            if let Some(cur) = self.segments.last_mut() {
                                cur.first.get_or_insert(index);
                            }
                            buf.extend_from_slice(&rec);
                        }
                        callbacks.push(callback);
                    }
                    other => {
                        // Flush the group so far before a truncate or purge touches the files.
                        let res = self.write_group(&mut buf);
                        finish(&mut callbacks, &res);
                        match other {
                            WriterMsg::Truncate { from, done } => {
                                let _ = done.send(res.and_then(|_| self.truncate(from)));
                            }
                            WriterMsg::Purge { upto, done } => {
                                let _ = done.send(res.and_then(|_| self.purge(upto)));
                            }
                            WriterMsg::Append { .. } => {}
                        }
                    }
                }
            }
            let res = self.write_group(&mut buf);
            finish(&mut callbacks, &res);
        }
    }

    /// The current segment's number and length.
    fn current(&self) -> (u64, u64) {
        self.segments.last().map_or((0, 0), |s| (s.seq, s.len))
    }

    fn write_group(&mut self, buf: &mut Vec<u8>) -> std::io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        self.file.write_all(buf)?;
        self.file.sync_data()?;
        if let Some(cur) = self.segments.last_mut() {
            cur.len += buf.len() as u64;
        }
        buf.clear();
        // Start a new segment between groups, once the current one is full; it was synced
        // whole above, so only the last segment can ever end in a torn record.
        let (seq, len) = self.current();
        if len >= self.segment_bytes {
            let next = seq + 1;
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(segment_path(&self.dir, next))?;
            File::open(&self.dir)?.sync_all()?;
            self.file = file;
            self.segments.push(Segment {
                seq: next,
                first: None,
                len: 0,
            });
        }
        Ok(())
    }

    fn truncate(&mut self, from: u64) -> std::io::Result<()> {
        let Some((_, &(seq, off))) = self.offsets.range(from..).next() else {
            return Ok(());
        };
        // Later segments go whole; the one holding `from` is cut and becomes the current one.
        while self.segments.last().is_some_and(|s| s.seq > seq) {
            if let Some(s) = self.segments.pop() {
                std::fs::remove_file(segment_path(&self.dir, s.seq))?;
            }
        }
        let file = OpenOptions::new()
            .append(true)
            .open(segment_path(&self.dir, seq))?;
        file.set_len(off)?;
        file.sync_data()?;
        File::open(&self.dir)?.sync_all()?;
        self.file = file;
        if let Some(cur) = self.segments.last_mut() {
            cur.len = off;
            if off == 0 {
                cur.first = None;
            }
        }
        self.offsets.split_off(&from);
        Ok(())
    }

    fn purge(&mut self, upto: u64) -> std::io::Result<()> {
        self.offsets = self.offsets.split_off(&(upto + 1));
        // A segment whose successor starts at or below `upto + 1` holds only purged entries.
        // The current segment always stays.
        let mut removed = false;
        while self.segments.len() > 1 && self.segments[1].first.is_some_and(|f| f <= upto + 1) {
            let s = self.segments.remove(0);
            std::fs::remove_file(segment_path(&self.dir, s.seq))?;
            removed = true;
        }
        if removed {
            File::open(&self.dir)?.sync_all()?;
        }
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
        write_small_file(&self.shared.dir, "vote", &bytes).map_err(io_err)?;
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
                records.push((index, crate::frame::encode(&bytes)));
                map.insert(index, e);
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
        let bytes = bincode::serialize(&Some(log_id)).map_err(io_err)?;
        write_small_file(&self.shared.dir, "purged", &bytes).map_err(io_err)?;
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
