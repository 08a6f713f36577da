//! The chunk server's disk engine: chunks in one preallocated file with MStore's allocation
//! tables, and group commit.
//!
//! ```text
//! [0, 4096)                 superblock: magic, format, block size, block count, slot count, CRC
//! [4096, +slots*128)        chunk table: per slot two 64-byte copies of the chunk's entry
//! [.., +blocks*4)           block table: per block the next block of its chunk (END, FREE)
//! [data, +blocks*bs)        data blocks, aligned to the block size
//! ```
//!
//! A chunk is a chain of blocks in the block table (MStore keeps a chunk's blocks as an
//! adjacency list in write order) holding framed records ([`crate::frame`]) back to back as
//! one logical byte stream. The chunk table only records where a chunk starts; where it ends is
//! whatever the record chain says, so a crash between a data write and a table write loses
//! nothing that was acknowledged. A chunk-table entry is written alternately to its two copies
//! with a generation number, so a torn entry write leaves the older copy.
//!
//! Appends are committed in batches by flat combining: a submitter that waits for its append
//! and finds it still queued takes the committer lock, takes every queued append, frames them,
//! writes all of them (adjacent pieces merged into one `pwrite`), issues one `fdatasync`, and
//! only then acknowledges them all; the others queue behind it and find theirs answered, or
//! commit the next batch. No thread of its own: the I/O runs on the waiting caller's thread.
//! With deferred syncs ([`Disk::set_deferred_sync`]) a batch is acknowledged once written and
//! made durable by [`Disk::sync`]. After an I/O failure the engine refuses everything until
//! reopened, because the kernel may have dropped the unsynced pages.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::frame::{self, Link, HEADER};
use crate::uring::Io;

const MAGIC: &[u8; 8] = b"MSTORE01";
const SUPER: u64 = 4096;
const SLOT: u64 = 128;
const COPY: usize = 64;
const FREE: u32 = u32::MAX;
const END: u32 = u32::MAX - 1;

/// Allocates `len` bytes of disk for `file` (`posix_fallocate`), so that they are taken now
/// rather than at a later write; falls back to a sparse file where the file system cannot.
pub fn allocate(file: &File, len: u64) -> std::io::Result<()> {
    preallocate(file, len).map_err(|e| match e {
        Error::Io(io) => io,
        other => std::io::Error::other(other.to_string()),
    })
}

/// Reserves `len` bytes of disk for `file`, so that a full disk shows up when the store is
/// formatted rather than in the middle of an append. Falls back to a sparse file where the file
/// system cannot reserve space.
#[allow(unsafe_code)]
fn preallocate(file: &File, len: u64) -> Result<()> {
    use std::os::unix::io::AsRawFd;
    let Ok(off_len) = libc::off_t::try_from(len) else {
        return Err(Error::InvalidArgument(format!("a store of {len} bytes")));
    };
    // SAFETY: the descriptor belongs to `file`, which is open for writing and outlives the call;
    // posix_fallocate reads no memory of ours.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, off_len) };
    match rc {
        0 => Ok(()),
        libc::EOPNOTSUPP | libc::EINVAL => {
            file.set_len(len)?;
            Ok(())
        }
        e => Err(Error::Io(std::io::Error::from_raw_os_error(e))),
    }
}

/// The size of the file system holding `path` and the bytes an unprivileged process may still
/// allocate on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsSpace {
    /// The file system's size in bytes.
    pub total: u64,
    /// Bytes available to unprivileged writers.
    pub available: u64,
}

/// [`FsSpace`] of the file system holding `path` (`statvfs`), or, for a path not made yet, of
/// the file system it will be made on: that of its nearest existing ancestor. (Sizing by a
/// path that does not exist yet is common: an engine's options are chosen before it creates
/// its directory, and a failure there once sized a 64 MiB disk's memtables for a big one.)
pub fn fs_space(path: &std::path::Path) -> Result<FsSpace> {
    let mut last = None;
    for p in path.ancestors() {
        let p = if p.as_os_str().is_empty() {
            std::path::Path::new(".")
        } else {
            p
        };
        match statvfs(p) {
            Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => last = Some(e),
            other => return other,
        }
    }
    Err(Error::Io(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no existing ancestor")
    })))
}

#[allow(unsafe_code)]
fn statvfs(path: &std::path::Path) -> Result<FsSpace> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::InvalidArgument(format!("{} contains NUL", path.display())))?;
    // SAFETY: `st` is plain old data that statvfs fills; `c` is a valid NUL-terminated string
    // that outlives the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(Error::Io(std::io::Error::last_os_error()));
    }
    let frsize = st.f_frsize as u64;
    Ok(FsSpace {
        total: (st.f_blocks as u64).saturating_mul(frsize),
        available: (st.f_bavail as u64).saturating_mul(frsize),
    })
}

/// The shape of a store, fixed when it is formatted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// Block size in bytes (a multiple of 4096).
    pub block_size: u32,
    /// Data blocks.
    pub blocks: u32,
    /// Chunk table slots (the most chunks at once).
    pub chunk_slots: u32,
    /// Blocks per chunk at most (64 MiB chunks with 1 MiB blocks).
    pub chunk_blocks: u32,
}

impl Default for DiskConfig {
    fn default() -> Self {
        DiskConfig {
            block_size: 1 << 20,
            blocks: 1024,
            chunk_slots: 1024,
            chunk_blocks: 64,
        }
    }
}

impl DiskConfig {
    fn block_table(&self) -> u64 {
        SUPER + u64::from(self.chunk_slots) * SLOT
    }

    fn data(&self) -> u64 {
        let end = self.block_table() + u64::from(self.blocks) * 4;
        let bs = u64::from(self.block_size);
        end.div_ceil(bs) * bs
    }

    /// The file size.
    pub fn file_size(&self) -> u64 {
        self.data() + u64::from(self.blocks) * u64::from(self.block_size)
    }

    /// The most bytes one chunk holds.
    pub fn chunk_capacity(&self) -> u64 {
        u64::from(self.chunk_blocks) * u64::from(self.block_size)
    }

    fn check(&self) -> Result<()> {
        if self.block_size < 4096 || self.block_size % 4096 != 0 {
            return Err(Error::InvalidArgument(format!(
                "block size {} is not a multiple of 4096",
                self.block_size
            )));
        }
        if self.blocks == 0 || self.blocks >= END || self.chunk_slots == 0 || self.chunk_blocks == 0
        {
            return Err(Error::InvalidArgument(format!("unusable shape {self:?}")));
        }
        Ok(())
    }
}

/// A chunk's table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkEntry {
    /// The chunk id (0: the slot is free).
    pub id: u64,
    /// The blob it belongs to.
    pub blob: u64,
    /// Its index within the blob.
    pub seq: u32,
    /// Sealed: no more appends.
    pub sealed: bool,
    /// The blob's kind (0: LogBlob, 1: ExtentBlob), so a reopened store knows it even before
    /// the blob's first record.
    pub kind: u8,
    /// Its first block.
    pub first_block: u32,
    /// The copy generation (the newer valid copy wins).
    pub gen: u64,
    /// Where a seal cut the chunk (records past it are not part of it), if it was sealed at a
    /// length.
    pub sealed_len: Option<u64>,
    /// A length known durable: the chunk's synced length as of the previous group commit that
    /// touched it (written with the next one; with deferred syncs, as of the last sync). Damage below it is corruption; damage above it may be a
    /// batch a power loss cut short, which was never acknowledged, and is cut as a torn tail.
    pub checkpoint: u64,
}

impl ChunkEntry {
    fn encode(&self) -> [u8; COPY] {
        let mut b = [0u8; COPY];
        b[0..8].copy_from_slice(&self.id.to_le_bytes());
        b[8..16].copy_from_slice(&self.blob.to_le_bytes());
        b[16..20].copy_from_slice(&self.seq.to_le_bytes());
        b[20] = u8::from(self.sealed);
        b[21] = self.kind;
        b[24..28].copy_from_slice(&self.first_block.to_le_bytes());
        b[28..36].copy_from_slice(&self.gen.to_le_bytes());
        // Stored plus one, so that zeroed bytes mean "no seal length".
        let sl = self.sealed_len.map_or(0, |l| l + 1);
        b[36..44].copy_from_slice(&sl.to_le_bytes());
        b[44..52].copy_from_slice(&self.checkpoint.to_le_bytes());
        let crc = crc32c::crc32c(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<ChunkEntry> {
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(x)
        };
        if b.len() < COPY || b.iter().all(|&x| x == 0) || crc32c::crc32c(&b[..60]) != u32_at(60) {
            return None;
        }
        Some(ChunkEntry {
            id: u64_at(0),
            blob: u64_at(8),
            seq: u32_at(16),
            sealed: b[20] == 1,
            kind: b[21],
            first_block: u32_at(24),
            gen: u64_at(28),
            sealed_len: u64_at(36).checked_sub(1),
            checkpoint: u64_at(44),
        })
    }
}

/// A chunk as the blob layer sees it after opening.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkInfo {
    /// Its table entry.
    pub entry: ChunkEntry,
    /// Its durable length (end of the last complete record).
    pub len: u64,
    /// Offsets of records found damaged when the store was opened.
    pub corrupt: Vec<u64>,
    /// Offsets of its complete records.
    pub records: Vec<u64>,
}

struct ChunkState {
    slot: u32,
    entry: ChunkEntry,
    blocks: Vec<u32>,
    /// End of the records framed so far (some may not be durable yet).
    end: u64,
    /// End of the acknowledged records: reads stop here. Durable too, unless the store defers
    /// its syncs (see [`Disk::set_deferred_sync`]).
    durable: u64,
    /// End of the records known to be on the medium (an `fdatasync` covered them): what a
    /// checkpoint may claim.
    synced: u64,
    /// End of the space promised to submitted appends (`end` catches up when the writer
    /// frames them): what `room` and `submit` check, so concurrent appends never overfill.
    reserved: u64,
    link: Option<Link>,
}

struct State {
    chunks: HashMap<u64, ChunkState>,
    free_blocks: Vec<u32>,
    free_slots: Vec<u32>,
    next_id: u64,
}

impl State {
    fn chunk(&self, id: u64) -> Result<&ChunkState> {
        self.chunks
            .get(&id)
            .ok_or_else(|| Error::NotFound(format!("chunk {id}")))
    }

    fn chunk_mut(&mut self, id: u64) -> Result<&mut ChunkState> {
        self.chunks
            .get_mut(&id)
            .ok_or_else(|| Error::NotFound(format!("chunk {id}")))
    }
}

struct AppendReq {
    chunk: u64,
    payload: Vec<u8>,
    reply: mpsc::SyncSender<Result<u64>>,
}

/// One disk engine (one chunk server's disk).
pub struct Disk {
    file: Arc<File>,
    cfg: DiskConfig,
    state: Arc<Mutex<State>>,
    failed: Arc<AtomicBool>,
    /// Appends submitted and not written yet, in submission order.
    pending: Mutex<Vec<AppendReq>>,
    /// Held by the thread that writes a batch of pending appends (flat combining): whoever
    /// waits for an append and finds it still pending takes this, and writes and syncs
    /// everything pending with one `fdatasync`; the others queue behind it and find theirs
    /// answered, or write the next batch. A writer thread of its own cost every append two
    /// thread hand-offs (a third of a Raft commit's latency on 2 cores).
    committer: Mutex<Io>,
    closed: AtomicBool,
    /// Whether appends are acknowledged once written, before their `fdatasync`.
    deferred: AtomicBool,
    /// Runs before every `fdatasync` of this store's own making (see
    /// [`Disk::set_before_sync`]).
    before_sync: std::sync::OnceLock<BeforeSync>,
    opened: Vec<ChunkInfo>,
    io_name: &'static str,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk").field("cfg", &self.cfg).finish()
    }
}

fn superblock(cfg: &DiskConfig) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    b[0..8].copy_from_slice(MAGIC);
    b[8..12].copy_from_slice(&1u32.to_le_bytes());
    b[12..16].copy_from_slice(&cfg.block_size.to_le_bytes());
    b[16..20].copy_from_slice(&cfg.blocks.to_le_bytes());
    b[20..24].copy_from_slice(&cfg.chunk_slots.to_le_bytes());
    b[24..28].copy_from_slice(&cfg.chunk_blocks.to_le_bytes());
    let crc = crc32c::crc32c(&b[..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    b
}

fn read_superblock(b: &[u8]) -> Result<DiskConfig> {
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    if &b[0..8] != MAGIC {
        return Err(Error::Corrupt("no MStore superblock (bad magic)".into()));
    }
    if crc32c::crc32c(&b[..28]) != u32_at(28) {
        return Err(Error::Corrupt("the superblock fails its checksum".into()));
    }
    if u32_at(8) != 1 {
        return Err(Error::Corrupt(format!("unknown format {}", u32_at(8))));
    }
    let cfg = DiskConfig {
        block_size: u32_at(12),
        blocks: u32_at(16),
        chunk_slots: u32_at(20),
        chunk_blocks: u32_at(24),
    };
    cfg.check()?;
    Ok(cfg)
}

impl Disk {
    /// Opens the store at `path`, formatting it with `cfg` if it does not exist yet (an
    /// existing store keeps the shape it was formatted with). Recovery walks every chunk's
    /// record chain.
    pub fn open(path: &Path, cfg: DiskConfig) -> Result<Disk> {
        let fresh = !path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let cfg = if fresh {
            let format = || -> Result<()> {
                cfg.check()?;
                // The tables must start zeroed; the data area may hold anything (records are
                // recognised by their chain, not by the space being clean).
                preallocate(&file, cfg.file_size())?;
                let table = vec![0xFFu8; cfg.blocks as usize * 4];
                file.write_all_at(&table, cfg.block_table())?;
                file.write_all_at(&superblock(&cfg), 0)?;
                file.sync_all()?;
                if let Some(dir) = path.parent() {
                    File::open(dir)?.sync_all()?;
                }
                Ok(())
            };
            if let Err(e) = format() {
                // A half-formatted store (a full disk, say) must not look like a damaged one
                // at the next start.
                let _ = std::fs::remove_file(path);
                return Err(e);
            }
            cfg
        } else {
            let mut sb = vec![0u8; 4096];
            file.read_exact_at(&mut sb, 0)?;
            read_superblock(&sb)?
        };
        if file.metadata()?.len() < cfg.file_size() {
            return Err(Error::Corrupt(format!(
                "the store file is {} bytes, its shape needs {}",
                file.metadata()?.len(),
                cfg.file_size()
            )));
        }
        let (state, opened) = Self::recover(&file, &cfg)?;
        // What recovery read may still be only in the page cache (a process that deferred its
        // syncs was killed): on the medium before a checkpoint may name it.
        file.sync_data()?;
        let file = Arc::new(file);
        let state = Arc::new(Mutex::new(state));
        let failed = Arc::new(AtomicBool::new(false));
        let io = Io::new();
        let io_name = io.name();
        Ok(Disk {
            file,
            cfg,
            state,
            failed,
            pending: Mutex::new(Vec::new()),
            committer: Mutex::new(io),
            closed: AtomicBool::new(false),
            deferred: AtomicBool::new(false),
            before_sync: std::sync::OnceLock::new(),
            opened,
            io_name,
        })
    }

    fn recover(file: &File, cfg: &DiskConfig) -> Result<(State, Vec<ChunkInfo>)> {
        let mut table = vec![0u8; cfg.chunk_slots as usize * SLOT as usize];
        file.read_exact_at(&mut table, SUPER)?;
        let mut blocks_raw = vec![0u8; cfg.blocks as usize * 4];
        file.read_exact_at(&mut blocks_raw, cfg.block_table())?;
        let next: Vec<u32> = blocks_raw
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let mut used = vec![false; cfg.blocks as usize];
        let mut chunks = HashMap::new();
        let mut free_slots = Vec::new();
        let mut opened = Vec::new();
        let mut next_id = 1;
        for slot in 0..cfg.chunk_slots {
            let at = slot as usize * SLOT as usize;
            let a = ChunkEntry::decode(&table[at..at + COPY]);
            let b = ChunkEntry::decode(&table[at + COPY..at + 2 * COPY]);
            let entry = match (a, b) {
                (Some(a), Some(b)) => Some(if a.gen >= b.gen { a } else { b }),
                (x, y) => x.or(y),
            };
            let Some(entry) = entry.filter(|e| e.id != 0) else {
                free_slots.push(slot);
                continue;
            };
            // Follow the block chain.
            let mut blocks = Vec::new();
            let mut b = entry.first_block;
            while b < cfg.blocks && blocks.len() < cfg.chunk_blocks as usize {
                if used[b as usize] {
                    return Err(Error::Corrupt(format!("block {b} belongs to two chunks")));
                }
                used[b as usize] = true;
                blocks.push(b);
                b = next[b as usize];
                if b == END || b == FREE {
                    break;
                }
            }
            if blocks.is_empty() {
                return Err(Error::Corrupt(format!(
                    "chunk {} has no first block",
                    entry.id
                )));
            }
            let mut bytes = vec![0u8; blocks.len() * cfg.block_size as usize];
            for (i, blk) in blocks.iter().enumerate() {
                let off = cfg.data() + u64::from(*blk) * u64::from(cfg.block_size);
                let piece =
                    &mut bytes[i * cfg.block_size as usize..(i + 1) * cfg.block_size as usize];
                file.read_exact_at(piece, off)?;
            }
            let mut entry = entry;
            let scan = classify(frame::scan(&bytes), &bytes, &mut entry);
            if scan.torn {
                tracing::info!(chunk = entry.id, end = scan.end, "dropped a torn tail");
            }
            let link = scan.last;
            next_id = next_id.max(entry.id + 1);
            opened.push(ChunkInfo {
                entry,
                len: scan.end,
                corrupt: scan.corrupt.clone(),
                records: scan.records.iter().map(|r| r.offset).collect(),
            });
            chunks.insert(
                entry.id,
                ChunkState {
                    slot,
                    entry,
                    blocks,
                    end: scan.end,
                    durable: scan.end,
                    synced: scan.end,
                    reserved: scan.end,
                    link,
                },
            );
        }
        let free_blocks = (0..cfg.blocks)
            .rev()
            .filter(|b| !used[*b as usize])
            .collect();
        free_slots.reverse();
        Ok((
            State {
                chunks,
                free_blocks,
                free_slots,
                next_id,
            },
            opened,
        ))
    }

    /// The write path in use: `io_uring` or `pwrite`.
    pub fn io_backend(&self) -> &'static str {
        self.io_name
    }

    /// The shape of the store.
    pub fn config(&self) -> DiskConfig {
        self.cfg
    }

    /// The chunks found when the store was opened.
    pub fn opened(&self) -> &[ChunkInfo] {
        &self.opened
    }

    fn check_failed(&self) -> Result<()> {
        if self.failed.load(Ordering::Acquire) {
            return Err(Error::Io(std::io::Error::other(
                "an earlier write or sync failed; reopen the store",
            )));
        }
        Ok(())
    }

    fn write_entry(&self, slot: u32, entry: &ChunkEntry) -> Result<()> {
        // Alternate copies by generation, so a torn write leaves the other one intact.
        let copy = (entry.gen % 2) * COPY as u64;
        self.file
            .write_all_at(&entry.encode(), SUPER + u64::from(slot) * SLOT + copy)?;
        Ok(())
    }

    /// Creates chunk number `seq` of `blob` (of blob kind `kind`), durably. Returns its id.
    pub fn create_chunk(&self, blob: u64, seq: u32, kind: u8) -> Result<u64> {
        self.create_chunk_as(None, blob, seq, kind)
    }

    /// Creates a chunk under an id chosen elsewhere (a master assigns ids to replicated
    /// chunks, so every replica of a chunk has the same id).
    pub fn create_chunk_with_id(&self, id: u64, blob: u64, seq: u32, kind: u8) -> Result<u64> {
        if id == 0 {
            return Err(Error::InvalidArgument("chunk id 0 is reserved".into()));
        }
        self.create_chunk_as(Some(id), blob, seq, kind)
    }

    fn create_chunk_as(&self, want: Option<u64>, blob: u64, seq: u32, kind: u8) -> Result<u64> {
        self.check_failed()?;
        let mut st = self.state.lock();
        if let Some(id) = want {
            if st.chunks.contains_key(&id) {
                return Err(Error::InvalidArgument(format!("chunk {id} exists")));
            }
        }
        let slot = st
            .free_slots
            .pop()
            .ok_or_else(|| Error::NoSpace("no free chunk slot".into()))?;
        let Some(block) = st.free_blocks.pop() else {
            st.free_slots.push(slot);
            return Err(Error::NoSpace("no free block".into()));
        };
        let id = want.unwrap_or(st.next_id);
        st.next_id = st.next_id.max(id + 1);
        let entry = ChunkEntry {
            id,
            blob,
            seq,
            sealed: false,
            kind,
            first_block: block,
            gen: 1,
            sealed_len: None,
            checkpoint: 0,
        };
        let io = (|| -> Result<()> {
            // The block may hold a deleted chunk's records, whose first one would pass for
            // this chunk's first record: clear that header before the chunk exists.
            self.file.write_all_at(
                &[0u8; HEADER],
                self.cfg.data() + u64::from(block) * u64::from(self.cfg.block_size),
            )?;
            self.file.write_all_at(
                &END.to_le_bytes(),
                self.cfg.block_table() + u64::from(block) * 4,
            )?;
            self.write_entry(slot, &entry)?;
            self.sync_ordered()?;
            Ok(())
        })();
        if let Err(e) = io {
            self.failed.store(true, Ordering::Release);
            return Err(e);
        }
        st.chunks.insert(
            id,
            ChunkState {
                slot,
                entry,
                blocks: vec![block],
                end: 0,
                durable: 0,
                synced: 0,
                reserved: 0,
                link: None,
            },
        );
        Ok(id)
    }

    /// Seals a chunk: no more appends.
    pub fn seal(&self, chunk: u64) -> Result<()> {
        self.update_entry(chunk, |e| e.sealed = true)
    }

    /// Seals a chunk at `len`, which must be the end of one of its durable records (or 0):
    /// records past it, and appends still queued, are no longer part of the chunk. A
    /// replicated writer seals every replica at the length all of them acknowledged.
    pub fn seal_at(&self, chunk: u64, len: u64) -> Result<()> {
        let bytes = self.read_all(chunk)?;
        let scan = frame::scan(&bytes);
        let ends: Vec<(u64, Link)> = scan
            .records
            .iter()
            .map(|r| (r.offset + HEADER as u64 + u64::from(r.size), r.link))
            .collect();
        let link = if len == 0 {
            None
        } else {
            match ends.iter().find(|(e, _)| *e == len) {
                Some((_, l)) => Some(*l),
                None => {
                    return Err(Error::InvalidArgument(format!(
                        "{len} is not a record boundary of chunk {chunk} (durable length {})",
                        bytes.len()
                    )))
                }
            }
        };
        self.update_entry(chunk, |e| {
            e.sealed = true;
            e.sealed_len = Some(len);
        })?;
        let mut st = self.state.lock();
        if let Some(c) = st.chunks.get_mut(&chunk) {
            c.end = c.end.min(len);
            c.durable = c.durable.min(len);
            c.synced = c.synced.min(len);
            c.reserved = c.reserved.min(len);
            c.link = link;
        }
        Ok(())
    }

    /// Every chunk now: entry and durable length.
    pub fn chunks(&self) -> Vec<(ChunkEntry, u64)> {
        let st = self.state.lock();
        let mut v: Vec<(ChunkEntry, u64)> =
            st.chunks.values().map(|c| (c.entry, c.durable)).collect();
        v.sort_by_key(|(e, _)| e.id);
        v
    }

    fn update_entry(&self, chunk: u64, f: impl FnOnce(&mut ChunkEntry)) -> Result<()> {
        self.check_failed()?;
        let mut st = self.state.lock();
        let c = st.chunk_mut(chunk)?;
        let mut e = c.entry;
        f(&mut e);
        e.gen += 1;
        let slot = c.slot;
        let io = self
            .write_entry(slot, &e)
            .and_then(|()| self.sync_ordered());
        if let Err(err) = io {
            self.failed.store(true, Ordering::Release);
            return Err(err);
        }
        c.entry = e;
        Ok(())
    }

    /// Deletes a chunk and frees its blocks.
    pub fn delete(&self, chunk: u64) -> Result<()> {
        self.check_failed()?;
        // Appends submitted before the chunk was sealed may still be in the writer's hands;
        // their pieces must not land in blocks already given to another chunk.
        if !self.is_sealed(chunk)? {
            return Err(Error::InvalidArgument(format!(
                "chunk {chunk} must be sealed before it is deleted"
            )));
        }
        self.drain(chunk)?;
        let mut st = self.state.lock();
        let Some(c) = st.chunks.get(&chunk) else {
            return Err(Error::NotFound(format!("chunk {chunk}")));
        };
        let (slot, blocks) = (c.slot, c.blocks.clone());
        let io = (|| -> Result<()> {
            // Clearing both copies frees the slot. The freed blocks' table entries become FREE,
            // so a stale link can never lead a later chain into a block another chunk owns.
            self.file
                .write_all_at(&[0u8; SLOT as usize], SUPER + u64::from(slot) * SLOT)?;
            for b in &blocks {
                self.file.write_all_at(
                    &FREE.to_le_bytes(),
                    self.cfg.block_table() + u64::from(*b) * 4,
                )?;
            }
            self.sync_ordered()?;
            Ok(())
        })();
        if let Err(e) = io {
            self.failed.store(true, Ordering::Release);
            return Err(e);
        }
        st.chunks.remove(&chunk);
        st.free_slots.push(slot);
        st.free_blocks.extend(blocks);
        Ok(())
    }

    /// Whether `chunk` is sealed.
    pub fn is_sealed(&self, chunk: u64) -> Result<bool> {
        let st = self.state.lock();
        let c = st.chunk(chunk)?;
        Ok(c.entry.sealed)
    }

    /// Waits (up to 10 s) until every append submitted to `chunk` has been written or failed.
    pub fn drain(&self, chunk: u64) -> Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            // Appends nobody waits for (their submitter gave up) are written here.
            self.commit_pending();
            {
                let st = self.state.lock();
                let c = st.chunk(chunk)?;
                if c.reserved <= c.durable || self.failed.load(Ordering::Acquire) {
                    return Ok(());
                }
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::Io(std::io::Error::other(format!(
                    "appends to chunk {chunk} are still in flight"
                ))));
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Appends a framed record to `chunk` and returns its offset once it is durable. Many
    /// concurrent appends share one write and one `fdatasync`.
    pub fn append(&self, chunk: u64, payload: Vec<u8>) -> Result<u64> {
        self.submit(chunk, payload)?.wait()
    }

    /// Queues an append and returns at once; records of one chunk land in submission order.
    pub fn submit(&self, chunk: u64, payload: Vec<u8>) -> Result<Submitted<'_>> {
        self.check_failed()?;
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Shutdown);
        }
        if payload.len() > frame::MAX_PAYLOAD {
            return Err(Error::InvalidArgument(format!(
                "record of {} bytes",
                payload.len()
            )));
        }
        {
            let mut st = self.state.lock();
            let c = st.chunk_mut(chunk)?;
            if c.entry.sealed {
                return Err(Error::InvalidArgument(format!("chunk {chunk} is sealed")));
            }
            let need = c.reserved + (HEADER + payload.len()) as u64;
            if need > self.cfg.chunk_capacity() {
                return Err(Error::NoSpace(format!("chunk {chunk} is full")));
            }
            c.reserved = need;
        }
        let (reply, rx) = mpsc::sync_channel(1);
        self.pending.lock().push(AppendReq {
            chunk,
            payload,
            reply,
        });
        Ok(Submitted {
            disk: self,
            rx,
            answered: false,
        })
    }

    /// Acknowledges appends once they are written to the kernel, before their `fdatasync`
    /// (`on`), or only after it (the default). Deferred, an acknowledged append survives the
    /// death of the process (the kernel has it), not a power cut: it is on the medium after the
    /// next [`Disk::sync`]. Checkpoints only ever name synced lengths, so recovery after a power
    /// cut treats what was not synced as a torn tail, never as corruption.
    pub fn set_deferred_sync(&self, on: bool) -> Result<()> {
        if !on {
            self.sync()?;
        }
        self.deferred.store(on, Ordering::Release);
        Ok(())
    }

    /// Sets what runs before every `fdatasync` this store issues while it defers its syncs
    /// (once; later calls are ignored): a store whose records describe another store's bytes
    /// (a namespace's sizes, the file data) syncs that one first, so a power cut never leaves
    /// a synced description of unsynced bytes. Chunk creation, sealing and deletion sync too.
    pub fn set_before_sync(&self, f: BeforeSync) {
        let _ = self.before_sync.set(f);
    }

    fn before_sync(&self) -> Result<()> {
        match self.before_sync.get() {
            Some(f) if self.deferred.load(Ordering::Acquire) => f(),
            _ => Ok(()),
        }
    }

    /// `fdatasync` after the [`Disk::set_before_sync`] hook.
    fn sync_ordered(&self) -> Result<()> {
        self.before_sync()?;
        Ok(self.file.sync_data()?)
    }

    /// Puts every acknowledged append on the medium (one `fdatasync`, none when there is
    /// nothing to sync). Only needed with deferred syncs.
    pub fn sync(&self) -> Result<()> {
        let upto: Vec<(u64, u64)> = {
            let st = self.state.lock();
            st.chunks
                .iter()
                .filter(|(_, c)| c.synced < c.durable)
                .map(|(id, c)| (*id, c.durable))
                .collect()
        };
        if upto.is_empty() {
            return Ok(());
        }
        self.check_failed()?;
        // Every byte below `durable` was written before `durable` moved: this sync covers it.
        let io = self.before_sync().and_then(|()| Ok(sync_file(&self.file)?));
        if let Err(e) = io {
            self.failed.store(true, Ordering::Release);
            return Err(e);
        }
        let mut st = self.state.lock();
        for (id, upto) in upto {
            if let Some(c) = st.chunks.get_mut(&id) {
                c.synced = c.synced.max(upto.min(c.durable));
            }
        }
        Ok(())
    }

    /// Writes and syncs what is pending, as one batch, unless another thread is doing so (then
    /// waits for it: what was pending before is answered when it returns).
    fn commit_pending(&self) {
        let mut io = self.committer.lock();
        self.commit_locked(&mut io);
    }

    /// [`Disk::commit_pending`] with the committer lock held.
    fn commit_locked(&self, io: &mut Io) {
        let batch: Vec<AppendReq> = {
            let mut p = self.pending.lock();
            let n = p.len().min(4096);
            p.drain(..n).collect()
        };
        if !batch.is_empty() {
            commit_batch(
                &self.file,
                &self.cfg,
                &self.state,
                &self.failed,
                batch,
                io,
                !self.deferred.load(Ordering::Acquire),
            );
        }
    }

    /// The durable bytes of `chunk`, for a scan of its records.
    pub fn read_all(&self, chunk: u64) -> Result<Vec<u8>> {
        let (blocks, durable) = {
            let st = self.state.lock();
            let c = st.chunk(chunk)?;
            (c.blocks.clone(), c.durable)
        };
        let mut buf = vec![0u8; durable as usize];
        self.read_logical(&blocks, 0, &mut buf)?;
        Ok(buf)
    }

    /// The room left in `chunk` for one record's payload.
    pub fn room(&self, chunk: u64) -> Result<u64> {
        let st = self.state.lock();
        let c = st.chunk(chunk)?;
        Ok(self
            .cfg
            .chunk_capacity()
            .saturating_sub(c.reserved + HEADER as u64))
    }

    /// Data blocks not in any chunk.
    pub fn free_blocks(&self) -> u64 {
        self.state.lock().free_blocks.len() as u64
    }

    /// The durable length of `chunk`.
    pub fn len(&self, chunk: u64) -> Result<u64> {
        let st = self.state.lock();
        let c = st.chunk(chunk)?;
        Ok(c.durable)
    }

    fn read_logical(&self, blocks: &[u32], off: u64, buf: &mut [u8]) -> Result<()> {
        let bs = u64::from(self.cfg.block_size);
        let mut done = 0usize;
        while done < buf.len() {
            let pos = off + done as u64;
            let idx = (pos / bs) as usize;
            let Some(blk) = blocks.get(idx) else {
                return Err(Error::NotFound(format!("offset {pos} is past the chunk")));
            };
            let within = pos % bs;
            let n = ((bs - within) as usize).min(buf.len() - done);
            self.file.read_exact_at(
                &mut buf[done..done + n],
                self.cfg.data() + u64::from(*blk) * bs + within,
            )?;
            done += n;
        }
        Ok(())
    }

    /// Reads the record at `offset` of `chunk`, checking its header and CRC. A damaged
    /// record is a [`Error::Checksum`], never data.
    pub fn read(&self, chunk: u64, offset: u64) -> Result<Vec<u8>> {
        let (blocks, durable) = {
            let st = self.state.lock();
            let c = st.chunk(chunk)?;
            (c.blocks.clone(), c.durable)
        };
        if offset + HEADER as u64 > durable {
            return Err(Error::NotFound(format!(
                "no record at {offset} of chunk {chunk} (length {durable})"
            )));
        }
        let mut head = [0u8; HEADER];
        self.read_logical(&blocks, offset, &mut head)?;
        let h = frame::Header::decode(&head).ok_or_else(|| {
            Error::Checksum(format!("record header at {offset} of chunk {chunk}"))
        })?;
        let end = offset + HEADER as u64 + u64::from(h.curr_size);
        if end > durable {
            return Err(Error::Checksum(format!(
                "record at {offset} of chunk {chunk} runs past its end"
            )));
        }
        let mut data = vec![0u8; h.curr_size as usize];
        self.read_logical(&blocks, offset + HEADER as u64, &mut data)?;
        if crc32c::crc32c(&data) != h.curr_crc {
            return Err(Error::Checksum(format!(
                "record at {offset} of chunk {chunk} fails its CRC32C"
            )));
        }
        Ok(data)
    }

    /// Refuses later appends, writes the pending ones and syncs.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        while !self.pending.lock().is_empty() {
            self.commit_pending();
        }
        if let Err(e) = self.sync() {
            tracing::error!(error = %e, "syncing the chunk store at close");
        }
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        self.close();
    }
}

/// See [`Disk::set_before_sync`].
pub type BeforeSync = Box<dyn Fn() -> Result<()> + Send + Sync>;

/// An append on its way to the disk. Dropped without [`Submitted::wait`], it is written
/// then (with whatever else is pending), as a writer thread would have.
pub struct Submitted<'a> {
    disk: &'a Disk,
    rx: mpsc::Receiver<Result<u64>>,
    answered: bool,
}

impl Drop for Submitted<'_> {
    fn drop(&mut self) {
        if !self.answered && matches!(self.rx.try_recv(), Err(mpsc::TryRecvError::Empty)) {
            self.disk.commit_pending();
        }
    }
}

impl Submitted<'_> {
    /// Waits until the record is durable (writing it, and whatever else is pending, if no
    /// other thread is); returns its offset.
    pub fn wait(mut self) -> Result<u64> {
        self.answered = true;
        loop {
            match self.rx.try_recv() {
                Ok(r) => return r,
                Err(mpsc::TryRecvError::Disconnected) => return Err(Error::Shutdown),
                Err(mpsc::TryRecvError::Empty) => {}
            }
            let mut io = self.disk.committer.lock();
            // Every committer answers its whole batch before it lets go of the lock: answered
            // by the one before, or part of the batch written here.
            match self.rx.try_recv() {
                Ok(r) => return r,
                Err(mpsc::TryRecvError::Disconnected) => return Err(Error::Shutdown),
                Err(mpsc::TryRecvError::Empty) => self.disk.commit_locked(&mut io),
            }
        }
    }
}

/// Applies what the chunk's entry knows to a scan of its bytes: a seal length cuts records
/// past it; damage at or above the durable checkpoint is a torn batch (cut there); damage below
/// it is corruption, reported, and the chunk is sealed so that nothing overwrites it.
fn classify(mut scan: frame::Scan, bytes: &[u8], entry: &mut ChunkEntry) -> frame::Scan {
    let relink = |scan: &mut frame::Scan, cut: u64| {
        scan.records
            .retain(|r| r.offset + HEADER as u64 + u64::from(r.size) <= cut);
        scan.corrupt.retain(|c| *c < cut);
        scan.end = scan.end.min(cut);
        // The next record follows the last one kept, damaged or not.
        let last_ok = scan.records.last().map(|r| (r.offset, r.link));
        let last_bad = scan.corrupt.last().and_then(|c| {
            frame::Header::decode(bytes.get(*c as usize..)?).map(|h| {
                (
                    *c,
                    Link {
                        size: h.curr_size,
                        crc: h.curr_crc,
                    },
                )
            })
        });
        scan.last = match (last_ok, last_bad) {
            (Some(a), Some(b)) => Some(if a.0 > b.0 { a.1 } else { b.1 }),
            (a, b) => a.or(b).map(|x| x.1),
        };
    };
    if let Some(cut) = entry.sealed_len {
        // Records past a seal length were never acknowledged by every replica.
        relink(&mut scan, cut);
    }
    let checkpoint = entry
        .sealed_len
        .map_or(entry.checkpoint, |l| l.min(entry.checkpoint));
    if let Some(first) = scan.corrupt.iter().copied().find(|c| *c >= checkpoint) {
        // Above the checkpoint a "damaged" record with valid ones after it is a batch a power
        // loss persisted out of order: never acknowledged, cut like a torn tail.
        relink(&mut scan, first);
        scan.torn = true;
    }
    if scan.end < checkpoint {
        // Bytes that were durable cannot be read: report it, and keep them from being
        // overwritten by new appends.
        tracing::error!(
            chunk = entry.id,
            end = scan.end,
            checkpoint,
            "durable records are damaged"
        );
        scan.corrupt.push(scan.end);
        entry.sealed = true;
    }
    scan
}

/// One planned write: file offset and bytes.
type Piece = (u64, Vec<u8>);

fn plan_append(
    cfg: &DiskConfig,
    st: &mut State,
    req: &AppendReq,
    pieces: &mut Vec<Piece>,
) -> Result<(u64, u64)> {
    let c = st
        .chunks
        .get_mut(&req.chunk)
        .ok_or_else(|| Error::NotFound(format!("chunk {}", req.chunk)))?;
    // A seal refuses new submissions; appends submitted before it still land, unless the seal
    // fixed a length.
    if c.entry.sealed_len.is_some() {
        return Err(Error::InvalidArgument(format!(
            "chunk {} is sealed at a length",
            req.chunk
        )));
    }
    let bs = u64::from(cfg.block_size);
    let need = c.end + (HEADER + req.payload.len()) as u64;
    if need > cfg.chunk_capacity() {
        return Err(Error::NoSpace(format!("chunk {} is full", req.chunk)));
    }
    let blocks_needed = need.div_ceil(bs) as usize;
    let mut new_blocks = Vec::new();
    while c.blocks.len() + new_blocks.len() < blocks_needed {
        match st.free_blocks.pop() {
            Some(b) => new_blocks.push(b),
            None => {
                st.free_blocks.append(&mut new_blocks);
                return Err(Error::NoSpace("no free block".into()));
            }
        }
    }
    let Some(c) = st.chunks.get_mut(&req.chunk) else {
        return Err(Error::NotFound(format!("chunk {}", req.chunk)));
    };
    for b in new_blocks {
        let last = *c.blocks.last().unwrap_or(&b);
        // The END mark goes first (a crash that keeps only the link leaves FREE there, which
        // ends the chain too); a later batch's link to the next block replaces it. Pieces at
        // one offset are deduplicated by the writer, last one wins.
        pieces.push((
            cfg.block_table() + u64::from(b) * 4,
            END.to_le_bytes().to_vec(),
        ));
        pieces.push((
            cfg.block_table() + u64::from(last) * 4,
            b.to_le_bytes().to_vec(),
        ));
        c.blocks.push(b);
    }
    let (bytes, link) = frame::encode(c.link, &req.payload);
    let offset = c.end;
    let mut done = 0usize;
    while done < bytes.len() {
        let pos = offset + done as u64;
        let blk = c.blocks[(pos / bs) as usize];
        let within = pos % bs;
        let n = ((bs - within) as usize).min(bytes.len() - done);
        pieces.push((
            cfg.data() + u64::from(blk) * bs + within,
            bytes[done..done + n].to_vec(),
        ));
        done += n;
    }
    c.end = need;
    c.link = Some(link);
    Ok((offset, need))
}

/// A sync of everything written: `chunk::sync` fails it.
fn sync_file(file: &File) -> std::io::Result<()> {
    fail::fail_point!("chunk::sync", |_| Err(std::io::Error::other(
        "failpoint chunk::sync"
    )));
    file.sync_data()
}

/// One group's write and sync. Failpoints for tests sit in front of it: `chunk::write` fails
/// it, `chunk::power-loss` (with a seed) simulates a power cut in the middle of it.
fn write_and_sync(ring: &mut Io, file: &File, pieces: &[Piece], sync: bool) -> std::io::Result<()> {
    fail::fail_point!("chunk::write", |_| Err(std::io::Error::other(
        "failpoint chunk::write"
    )));
    fail::fail_point!("chunk::power-loss", |seed: Option<String>| {
        lose_power(file, pieces, seed.and_then(|s| s.parse().ok()).unwrap_or(1));
        Err(std::io::Error::other("failpoint chunk::power-loss"))
    });
    match sync {
        true => ring.write_and_sync(file, pieces),
        false => ring.write(file, pieces),
    }
}

/// A power cut while a group is being written: nothing of the group was synced, so each
/// 512-byte sector of its pieces reached the medium or not, independently of the others (a
/// disk persists unsynced writes in any order, a sector at a time). What earlier groups synced
/// stays. The store then latches, as after any failed write; reopening it is the reboot.
#[cfg(feature = "failpoints")]
fn lose_power(file: &File, pieces: &[Piece], seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for (off, bytes) in pieces {
        for (i, sector) in bytes.chunks(512).enumerate() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x % 2 == 0 {
                let _ = file.write_all_at(sector, off + (i as u64) * 512);
            }
        }
    }
}

/// Plans, writes and syncs one batch of appends, then answers each (on the thread holding
/// the committer lock).
fn commit_batch(
    file: &File,
    cfg: &DiskConfig,
    state: &Mutex<State>,
    failed: &AtomicBool,
    batch: Vec<AppendReq>,
    ring: &mut Io,
    sync: bool,
) {
    {
        let mut pieces: Vec<Piece> = Vec::new();
        let mut outcomes = Vec::with_capacity(batch.len());
        {
            let mut st = state.lock();
            let mut touched: Vec<u64> = Vec::new();
            for req in &batch {
                let out = plan_append(cfg, &mut st, req, &mut pieces);
                if out.is_ok() && !touched.contains(&req.chunk) {
                    touched.push(req.chunk);
                }
                if out.is_err() {
                    // The space promised at submit time will not be used: give it back, or
                    // `room` would shrink and `drain` would wait for bytes that never come.
                    if let Some(c) = st.chunks.get_mut(&req.chunk) {
                        c.reserved = c
                            .reserved
                            .saturating_sub((HEADER + req.payload.len()) as u64)
                            .max(c.end);
                    }
                }
                outcomes.push(out);
            }
            // Record each touched chunk's synced length so far in its entry, in the same
            // commit (the other copy than the newest, so a torn entry write leaves that one).
            for id in touched {
                if let Some(c) = st.chunks.get_mut(&id) {
                    if c.synced > c.entry.checkpoint {
                        c.entry.checkpoint = c.synced;
                        c.entry.gen += 1;
                        let copy = (c.entry.gen % 2) * COPY as u64;
                        pieces.push((
                            SUPER + u64::from(c.slot) * SLOT + copy,
                            c.entry.encode().to_vec(),
                        ));
                    }
                }
            }
        }
        // Several pieces may address one block-table entry (END, then a link to the next
        // block): only the last counts, so no write order can resurrect an earlier one. The
        // rest stay in the order they were planned (a chunk's bytes in logical order, so that a
        // process killed mid-write leaves a prefix), merged where they are adjacent.
        let mut last_at: HashMap<u64, usize> = HashMap::new();
        for (i, (off, _)) in pieces.iter().enumerate() {
            last_at.insert(*off, i);
        }
        let mut merged: Vec<Piece> = Vec::new();
        for (i, (off, bytes)) in pieces.into_iter().enumerate() {
            if last_at.get(&off) != Some(&i) {
                continue;
            }
            match merged.last_mut() {
                Some((o, b)) if *o + b.len() as u64 == off => b.extend_from_slice(&bytes),
                _ => merged.push((off, bytes)),
            }
        }
        let io = if failed.load(Ordering::Acquire) {
            Err(std::io::Error::other(
                "an earlier write or sync failed; reopen the store",
            ))
        } else {
            write_and_sync(ring, file, &merged, sync)
        };
        match io {
            Ok(()) => {
                let mut st = state.lock();
                for (req, out) in batch.iter().zip(&outcomes) {
                    if let (Ok((_, end)), Some(c)) = (out, st.chunks.get_mut(&req.chunk)) {
                        c.durable = c.durable.max(*end);
                        if let Some(cut) = c.entry.sealed_len {
                            c.durable = c.durable.min(cut);
                        }
                        if sync {
                            c.synced = c.durable;
                        }
                    }
                }
            }
            Err(e) => {
                failed.store(true, Ordering::Release);
                let msg = e.to_string();
                for (req, _) in batch.into_iter().zip(outcomes) {
                    let _ = req
                        .reply
                        .send(Err(Error::Io(std::io::Error::other(msg.clone()))));
                }
                return;
            }
        }
        let cut: HashMap<u64, u64> = {
            let st = state.lock();
            batch
                .iter()
                .filter_map(|r| {
                    st.chunks
                        .get(&r.chunk)
                        .and_then(|c| c.entry.sealed_len)
                        .map(|l| (r.chunk, l))
                })
                .collect()
        };
        for (req, out) in batch.into_iter().zip(outcomes) {
            // A record past a seal length is not part of the chunk: never acknowledge it.
            let out = match (out, cut.get(&req.chunk)) {
                (Ok((_, end)), Some(l)) if end > *l => Err(Error::InvalidArgument(format!(
                    "chunk {} was sealed at {l} before this record became durable",
                    req.chunk
                ))),
                (o, _) => o,
            };
            let _ = req.reply.send(out.map(|(off, _)| off));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> (Vec<u8>, Vec<u64>) {
        let (mut out, mut offs, mut prev) = (Vec::new(), Vec::new(), None);
        for i in 0..n {
            offs.push(out.len() as u64);
            let (b, l) = frame::encode(prev, &[i as u8 + 1; 50]);
            out.extend_from_slice(&b);
            prev = Some(l);
        }
        offs.push(out.len() as u64);
        (out, offs)
    }

    fn entry(checkpoint: u64) -> ChunkEntry {
        ChunkEntry {
            id: 1,
            blob: 1,
            seq: 0,
            sealed: false,
            kind: 0,
            first_block: 0,
            gen: 1,
            sealed_len: None,
            checkpoint,
        }
    }

    #[test]
    fn damage_above_the_checkpoint_is_a_torn_batch() {
        let (mut b, offs) = chain(4);
        b[offs[2] as usize + HEADER + 3] ^= 1;
        let mut e = entry(offs[2]);
        let s = classify(frame::scan(&b), &b, &mut e);
        assert_eq!(
            s.records.iter().map(|r| r.offset).collect::<Vec<_>>(),
            vec![offs[0], offs[1]]
        );
        assert_eq!(
            (s.end, s.torn, s.corrupt.len(), e.sealed),
            (offs[2], true, 0, false)
        );
        // The next record follows record 1.
        assert_eq!(s.last, s.records.last().map(|r| r.link));
    }

    #[test]
    fn damage_below_the_checkpoint_is_reported() {
        let (mut b, offs) = chain(4);
        b[offs[2] as usize + HEADER + 3] ^= 1;
        let mut e = entry(offs[4]);
        let s = classify(frame::scan(&b), &b, &mut e);
        assert_eq!(s.corrupt, vec![offs[2]]);
        assert_eq!(s.records.len(), 3);
        assert_eq!(s.end, offs[4]);
        // A header destroyed below the checkpoint: the chain cannot be followed past it.
        let (mut b, offs) = chain(4);
        b[offs[1] as usize + 2] ^= 0xFF;
        let mut e = entry(offs[3]);
        let s = classify(frame::scan(&b), &b, &mut e);
        assert_eq!(s.end, offs[1]);
        assert_eq!(s.corrupt, vec![offs[1]]);
        assert!(e.sealed, "appends must not overwrite durable bytes");
    }

    #[test]
    fn entries_round_trip() {
        let e = ChunkEntry {
            sealed_len: Some(77),
            checkpoint: 123,
            sealed: true,
            kind: 1,
            ..entry(0)
        };
        assert_eq!(ChunkEntry::decode(&e.encode()), Some(e));
        assert_eq!(ChunkEntry::decode(&[0u8; COPY]), None);
    }
}
