//! The Raft log on disk, with group commit.
//!
//! One append-only file `raft.log` of framed records `len:u32le, crc32c:u32le, bincode(entry)`.
//! openraft hands entries to [`RaftLogStorage::append`], which only queues them for a dedicated
//! writer thread and returns. The writer drains everything queued, writes it with one `write`,
//! calls `fdatasync` once and then acknowledges every append of the group: many concurrent
//! commits share one sync, which is what keeps a disk where one sync costs milliseconds fast.
//!
//! Entries that are not purged yet also stay in memory, so reading them back for apply costs no
//! I/O. The vote and the last purged log id live in small checksummed files replaced atomically.
//! Opening replays the file: a bad record at the very end is a torn write that was never
//! acknowledged and is cut off; a bad record with valid records after it is corruption and
//! opening fails.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogId, LogState, RaftLogId, RaftLogReader, StorageError, StorageIOError, Vote};
use parking_lot::Mutex;

use super::{Entry, TypeConfig};
use crate::error::{Error, Result};

const LOG_FILE: &str = "raft.log";
const COMPACT_BYTES: u64 = 64 << 20;

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

/// The version of the record format. Format 1 stored a batch of commands as a sequence;
/// format 2 stores a [`crate::command::CommandBatch`] as one byte string.
const FORMAT: &[u8] = b"2";

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
            let log = dir.join(LOG_FILE);
            if std::fs::metadata(&log).is_ok_and(|m| m.len() > 0) {
                return Err(Error::Corruption(format!(
                    "{}: written by an older build (Raft log format 1); this build reads format \
                     {}. Open it with the build that wrote it, or start from a fresh data \
                     directory",
                    log.display(),
                    String::from_utf8_lossy(FORMAT)
                )));
            }
            write_small_file(dir, "format", FORMAT)?;
            Ok(())
        }
    }
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, replaying what is on disk.
    pub fn open(dir: &Path) -> Result<LogStore> {
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
        let path = dir.join(LOG_FILE);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        let mut entries = BTreeMap::new();
        let mut offsets = BTreeMap::new();
        let mut pos = 0usize;
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
            let entry: Entry = bincode::deserialize(payload)
                .map_err(|e| Error::Corruption(format!("{}: offset {pos}: {e}", path.display())))?;
            let index = entry.get_log_id().index;
            // A later record with the same index replaced a truncated one.
            entries.split_off(&index);
            offsets.split_off(&index);
            offsets.insert(index, pos as u64);
            entries.insert(index, entry);
            pos += 8 + len;
        }
        if pos < data.len() {
            tracing::warn!(path = %path.display(), pos, len = data.len(), "raft log: cutting a torn tail");
            file.set_len(pos as u64)?;
            file.sync_data()?;
        }
        if let Some(p) = purged {
            entries = entries.split_off(&(p.index + 1));
        }
        drop(file);
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            entries: Mutex::new(entries),
            purged: Mutex::new(purged),
            vote: Mutex::new(vote),
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let writer = Writer {
            dir: dir.to_path_buf(),
            file: OpenOptions::new().append(true).open(&path)?,
            len: pos as u64,
            offsets,
        };
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer.run(rx))?;
        Ok(LogStore { shared, tx })
    }
}

struct Writer {
    dir: PathBuf,
    file: File,
    len: u64,
    offsets: BTreeMap<u64, u64>,
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
                            self.offsets.insert(index, self.len + buf.len() as u64);
                            buf.extend_from_slice(&rec);
                        }
                        callbacks.push(callback);
                    }
                    other => {
                        // Flush the group so far before a truncate or purge touches the file.
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

    fn write_group(&mut self, buf: &mut Vec<u8>) -> std::io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        self.file.write_all(buf)?;
        self.file.sync_data()?;
        self.len += buf.len() as u64;
        buf.clear();
        Ok(())
    }

    fn truncate(&mut self, from: u64) -> std::io::Result<()> {
        if let Some((_, &off)) = self.offsets.range(from..).next() {
            self.file.set_len(off)?;
            self.file.sync_data()?;
            self.len = off;
            self.offsets.split_off(&from);
        }
        Ok(())
    }

    fn purge(&mut self, upto: u64) -> std::io::Result<()> {
        let keep = self.offsets.split_off(&(upto + 1));
        self.offsets = keep;
        let Some((_, &first)) = self.offsets.iter().next() else {
            if self.len > COMPACT_BYTES {
                self.rewrite(self.len)?;
            }
            return Ok(());
        };
        if first > COMPACT_BYTES && first > self.len / 2 {
            self.rewrite(first)?;
        }
        Ok(())
    }

    /// Drops the first `cut` bytes of the file by copying the rest into a new file.
    fn rewrite(&mut self, cut: u64) -> std::io::Result<()> {
        let path = self.dir.join(LOG_FILE);
        let data = std::fs::read(&path)?;
        let tail = data.get(cut as usize..).unwrap_or_default();
        let tmp = self.dir.join("raft.log.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(tail)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        File::open(&self.dir)?.sync_all()?;
        self.file = OpenOptions::new().append(true).open(&path)?;
        self.len = tail.len() as u64;
        for off in self.offsets.values_mut() {
            *off -= cut;
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
