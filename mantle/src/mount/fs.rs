//! The FUSE file system: every kernel request runs the inode form of a namespace operation,
//! plus the file store's I/O for file contents, on the FUSE thread that read it.
//!
//! Inode numbers are the namespace's inode ids, except that the namespace's root is FUSE's
//! inode 1 (ids start at 16, so 1 is never an id).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chunk_backend::files::FileStore;
use coprocessor::api::{Loc, Obj};
use coprocessor::ops::{
    link::Link, mkdir::Mkdir, mknod::Mknod, readdir::Readdir, readlink::Readlink, rename::Rename,
    rmdir::Rmdir, setattr::SetAttr, setattr::TimeSet, stat::Stat, statfs::StatFs, symlink::Symlink,
    unlink::Unlink, wrote::Wrote, xattr_get::XattrGet, xattr_list::XattrList,
    xattr_remove::XattrRemove, xattr_set::XattrSet,
};
use coprocessor::{Errno, FsError};
use fuser::{
    FileAttr, FileHandle, FopenFlags, Generation, INodeNo, KernelConfig, OpenFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
};
use indexnode::Cred;
use metastore::{Attr, FileType};

use super::files::{Node, Nodes, BUFFER};
use super::meta::Meta;
use super::MountConfig;

type Res<T> = Result<T, fuser::Errno>;

fn errno(e: &FsError) -> fuser::Errno {
    fuser::Errno::from_i32(e.errno.code())
}

fn data_errno(e: &chunk_backend::Error) -> fuser::Errno {
    match e {
        chunk_backend::Error::NoSpace(_) => fuser::Errno::ENOSPC,
        chunk_backend::Error::InvalidArgument(_) => fuser::Errno::EINVAL,
        _ => fuser::Errno::EIO,
    }
}

fn system_time(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

fn ns_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos().min(u128::from(u64::MAX)) as u64)
}

fn kind(k: FileType) -> fuser::FileType {
    match k {
        FileType::Regular => fuser::FileType::RegularFile,
        FileType::Directory => fuser::FileType::Directory,
        FileType::Symlink => fuser::FileType::Symlink,
        FileType::Fifo => fuser::FileType::NamedPipe,
        FileType::Socket => fuser::FileType::Socket,
        FileType::CharDevice => fuser::FileType::CharDevice,
        FileType::BlockDevice => fuser::FileType::BlockDevice,
    }
}

/// The supplementary groups of a process (`/proc/PID/status`; the kernel does not pass them);
/// empty for a process that is gone.
fn groups_of(pid: u32) -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// How long a process's groups are taken as known: reading them costs more than most requests.
const GROUPS_TTL: Duration = Duration::from_secs(1);

/// When a process's groups were read, and what they were.
type Read = (std::time::Instant, Arc<Vec<u32>>);

/// Recently read supplementary groups, by (pid, uid, gid).
#[derive(Default)]
struct GroupCache {
    map: parking_lot::Mutex<HashMap<(u32, u32, u32), Read>>,
}

impl GroupCache {
    fn cred(&self, req: &Request) -> Cred {
        let key = (req.pid(), req.uid(), req.gid());
        let now = std::time::Instant::now();
        let cached = self
            .map
            .lock()
            .get(&key)
            .filter(|(at, _)| now.duration_since(*at) < GROUPS_TTL)
            .map(|(_, g)| g.clone());
        let groups = match cached {
            Some(g) => g,
            None => {
                let g = Arc::new(groups_of(req.pid()));
                let mut map = self.map.lock();
                if map.len() > 4096 {
                    map.retain(|_, (at, _)| now.duration_since(*at) < GROUPS_TTL);
                }
                map.insert(key, (now, g.clone()));
                g
            }
        };
        Cred {
            uid: req.uid(),
            gid: req.gid(),
            groups: groups.to_vec(),
        }
    }
}

/// One open directory: the entries read so far (offsets are their positions after `.` and
/// `..`) and where the next page starts. Pages are read by name, so a directory that changes
/// while it is read neither repeats nor skips an entry that stays.
#[derive(Debug, Default)]
struct DirHandle {
    parent: u64,
    entries: Vec<coprocessor::api::DirEntry>,
    next: Option<Vec<u8>>,
    done: bool,
}

/// What runs the requests; shared by the FUSE threads' tasks.
struct Core<M> {
    meta: M,
    store: Arc<FileStore>,
    root: u64,
    attr_ttl: Duration,
    entry_ttl: Duration,
    negative_ttl: Duration,
    nodes: Nodes,
    dirs: parking_lot::Mutex<HashMap<u64, Arc<tokio::sync::Mutex<DirHandle>>>>,
    next_fh: AtomicU64,
    /// Whether changes wait for a sync to be on disk ([`super::SyncMode::Posix`]).
    deferred: bool,
    /// Held shared while a file's bytes go to the file store and its new size to the
    /// namespace, exclusively by a sync: a sync puts the data on disk before the sizes, and no
    /// size can slip in between (a power cut must not leave a size covering unsynced bytes).
    order: tokio::sync::RwLock<()>,
}

/// Syncs a mount's changes to disk (see [`super::SyncMode`]).
pub struct Syncer<M: Meta>(Arc<Core<M>>);

impl<M: Meta> Clone for Syncer<M> {
    fn clone(&self) -> Self {
        Syncer(self.0.clone())
    }
}

impl<M: Meta> Syncer<M> {
    /// Puts every acknowledged change on disk (nothing to do unless the mount defers syncs).
    pub async fn sync(&self) -> Res<()> {
        self.0.sync().await
    }
}

/// The file system `fuser` serves.
pub struct MantleFs<M: Meta> {
    core: Arc<Core<M>>,
    rt: tokio::runtime::Handle,
    groups: GroupCache,
}

impl<M: Meta> MantleFs<M> {
    /// Serves namespace `meta` (root directory `root`) with file data in `store`, running
    /// requests on `rt`.
    pub fn new(
        meta: M,
        store: Arc<FileStore>,
        root: u64,
        rt: tokio::runtime::Handle,
        config: &MountConfig,
    ) -> MantleFs<M> {
        MantleFs {
            core: Arc::new(Core {
                meta,
                store,
                root,
                attr_ttl: config.attr_ttl,
                entry_ttl: config.entry_ttl,
                negative_ttl: config.negative_ttl,
                nodes: Nodes::default(),
                dirs: parking_lot::Mutex::new(HashMap::new()),
                next_fh: AtomicU64::new(1),
                deferred: config.sync == super::SyncMode::Posix,
                order: tokio::sync::RwLock::new(()),
            }),
            rt,
            groups: GroupCache::default(),
        }
    }

    /// What syncs this mount's changes, for the periodic sync and the unmount.
    pub fn syncer(&self) -> Syncer<M> {
        Syncer(self.core.clone())
    }

    /// Puts right what a crash left in the file store: the data of files whose inode is gone,
    /// and bytes past a file's size; returns how many files lost data and how many were cut.
    /// Run before the mount serves anything, on a thread that may block (as requests do).
    pub fn repair(&self) -> Result<(u64, u64), FsError> {
        self.rt.block_on(self.core.repair())
    }

    /// Runs a request on the FUSE thread that read it, driving its future there: a hand-over
    /// to a runtime thread costs a wake-up per request (measured: it doubled a getattr's
    /// latency). A request that waits (a namespace change for its log entry, file data for the
    /// disk) holds its thread meanwhile; the mount runs enough threads (`--threads`) for the
    /// kernel's requests in flight.
    fn run_here<F>(&self, f: F)
    where
        F: std::future::Future<Output = ()>,
    {
        self.rt.block_on(f);
    }
}

fn name_of(name: &OsStr) -> Vec<u8> {
    name.as_bytes().to_vec()
}

impl<M: Meta> Core<M> {
    fn id(&self, ino: INodeNo) -> u64 {
        if ino.0 == 1 {
            self.root
        } else {
            ino.0
        }
    }

    fn ino(&self, id: u64) -> INodeNo {
        if id == self.root {
            INodeNo(1)
        } else {
            INodeNo(id)
        }
    }

    fn ns(&self) -> Vec<u8> {
        self.meta.namespace().to_vec()
    }

    fn entry(&self, parent: INodeNo, name: &[u8]) -> Loc {
        Loc::Entry {
            parent: self.id(parent),
            name: name.to_vec(),
        }
    }

    fn attr(&self, a: &Attr, size: u64) -> FileAttr {
        let k = a.kind();
        FileAttr {
            ino: self.ino(a.id),
            size,
            blocks: size.div_ceil(512),
            atime: system_time(a.atime),
            mtime: system_time(a.mtime),
            ctime: system_time(a.ctime),
            crtime: system_time(a.ctime),
            kind: kind(k),
            perm: (a.mode & 0o7777) as u16,
            nlink: a.nlink.min(u64::from(u32::MAX)) as u32,
            uid: a.uid,
            gid: a.gid,
            rdev: a.rdev,
            blksize: 1 << 16,
            flags: 0,
        }
    }

    /// The attributes the kernel should see: the namespace's, with the size grown by what this
    /// mount has buffered or not reported yet.
    async fn shown(&self, a: &Attr) -> FileAttr {
        let size = match self.nodes.peek(a.id) {
            Some(n) if a.kind() == FileType::Regular => n.lock().await.size_with(a.size),
            _ => a.size,
        };
        self.attr(a, size)
    }

    async fn stat(&self, id: u64, cred: Cred) -> Result<Attr, FsError> {
        self.meta
            .call(&Stat {
                ns: self.ns(),
                cred,
                obj: Obj::Handle(id),
            })
            .await
    }

    /// File-store I/O, called where it is: every request (and the repair pass) runs on a
    /// thread of its own that may block, never on a runtime worker (see `run_here`). A durable
    /// write blocks for its `fdatasync`.
    fn store_io<T>(
        &self,
        ino: u64,
        what: &str,
        f: impl FnOnce(&FileStore) -> chunk_backend::Result<T>,
    ) -> Res<T> {
        f(&self.store).map_err(|e| {
            tracing::error!(ino, error = %e, "file data {what} failed");
            data_errno(&e)
        })
    }

    /// Writes a file's buffered bytes to the file store (durably).
    async fn flush_buffer(&self, ino: u64, node: &mut Node) -> Res<()> {
        if node.buf.is_empty() {
            return Ok(());
        }
        self.store_io(ino, "write", |s| s.write(ino, node.buf_start, &node.buf))?;
        // Keep the allocation for the next writes.
        node.buf.clear();
        Ok(())
    }

    /// Puts every acknowledged change on disk: file data first, then the namespace, so that
    /// no size on disk covers bytes that are not.
    async fn sync(&self) -> Res<()> {
        if !self.deferred {
            return Ok(());
        }
        let data_failed = |e: chunk_backend::Error| {
            tracing::error!(error = %e, "syncing file data failed");
            data_errno(&e)
        };
        // The bulk of the data first, while writers go on; then, with them held off, what
        // arrived meanwhile and the namespace (which syncs the file store again first: see
        // `set_before_log_sync`), so a sync holds closes back for little more than the log's
        // own `fdatasync`.
        self.store.sync().map_err(data_failed)?;
        let _order = self.order.write().await;
        self.store.sync().map_err(|e| {
            tracing::error!(error = %e, "syncing file data failed");
            data_errno(&e)
        })?;
        self.meta.sync().map_err(|e| {
            tracing::error!(error = %e, "syncing the namespace failed");
            errno(&e)
        })
    }

    /// Flushes the buffer and tells the namespace of the file's new end.
    async fn flush_all(&self, ino: u64, node: &mut Node) -> Res<()> {
        // Data, then size, with no sync in between (see `order`).
        let _order = self.order.read().await;
        self.flush_buffer(ino, node).await?;
        if node.unreported == 0 || node.unlinked.is_some() {
            node.unreported = 0;
            return Ok(());
        }
        let op = Wrote {
            ns: self.ns(),
            cred: Cred::root(),
            ino,
            end: node.unreported,
        };
        match self.meta.call(&op).await {
            Ok(a) => {
                node.unreported = 0;
                node.size = Some(a.size);
                Ok(())
            }
            // The file was removed meanwhile (by another mount): nothing to report to.
            Err(e) if e.errno == Errno::ENOENT => {
                node.unreported = 0;
                Ok(())
            }
            Err(e) => Err(errno(&e)),
        }
    }

    /// Drops a file's data once its inode is gone, or marks it to go at its last close.
    async fn gone(&self, id: u64) -> Res<()> {
        let at = self.nodes.get(id);
        let mut node = at.lock().await;
        if node.handles > 0 {
            if node.unlinked.is_none() {
                let mut a = self.stat(id, Cred::root()).await.ok();
                if let Some(a) = &mut a {
                    a.nlink = 0;
                }
                node.unlinked = Some(a.unwrap_or_else(|| empty_attr(id)));
            }
            if let Some(a) = &mut node.unlinked {
                a.nlink = 0;
            }
            return Ok(());
        }
        node.buf.clear();
        node.unreported = 0;
        self.remove_data(id).await?;
        self.nodes.forget_if_idle(id, &at, &node);
        Ok(())
    }

    async fn remove_data(&self, id: u64) -> Res<()> {
        self.store_io(id, "remove", |s| s.remove(id))
    }

    /// After a name of `id` went away: if it was the inode's last, its data goes.
    async fn maybe_gone(&self, id: u64) -> Res<()> {
        match self.stat(id, Cred::root()).await {
            Err(e) if e.errno == Errno::ENOENT => self.gone(id).await,
            _ => Ok(()),
        }
    }

    async fn repair(&self) -> Result<(u64, u64), FsError> {
        let (mut removed, mut cut) = (0, 0);
        for id in self.store.files() {
            match self.stat(id, Cred::root()).await {
                Err(e) if e.errno == Errno::ENOENT => {
                    self.remove_data(id)
                        .await
                        .map_err(|_| FsError::new(Errno::EIO, "removing orphaned file data"))?;
                    removed += 1;
                }
                Err(e) => return Err(e),
                Ok(a) if self.store.end(id) > a.size => {
                    self.store_io(id, "truncate", |s| s.truncate(id, a.size))
                        .map_err(|_| FsError::new(Errno::EIO, "cutting file data past its size"))?;
                    cut += 1;
                }
                Ok(_) => {}
            }
        }
        Ok((removed, cut))
    }

    async fn lookup(&self, parent: INodeNo, name: Vec<u8>, cred: Cred) -> Result<Attr, FsError> {
        self.meta
            .call(&Stat {
                ns: self.ns(),
                cred,
                obj: Obj::Entry {
                    parent: self.id(parent),
                    name,
                },
            })
            .await
    }

    async fn open(&self, id: u64, cred: Cred) -> Res<u64> {
        // Close-to-open: every open learns the size anew.
        let a = self.stat(id, cred).await.map_err(|e| errno(&e))?;
        Ok(self.opened(id, a.size).await)
    }

    /// A new handle of a file whose size is `size`.
    async fn opened(&self, id: u64, size: u64) -> u64 {
        let at = self.nodes.get(id);
        let mut node = at.lock().await;
        node.handles += 1;
        node.size = Some(size);
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    async fn read(&self, id: u64, offset: u64, size: u32) -> Res<Vec<u8>> {
        let at = self.nodes.get(id);
        let mut node = at.lock().await;
        self.flush_buffer(id, &mut node).await?;
        let known = match node.size {
            Some(s) => s,
            None => {
                self.stat(id, Cred::root())
                    .await
                    .map_err(|e| errno(&e))?
                    .size
            }
        };
        let end = node.size_with(known);
        let len = end.saturating_sub(offset).min(u64::from(size)) as usize;
        if len == 0 {
            return Ok(Vec::new());
        }
        drop(node);
        self.store_io(id, "read", |s| s.read(id, offset, len))
    }

    async fn write(&self, id: u64, offset: u64, data: Vec<u8>) -> Res<u32> {
        let n = data.len();
        let end = offset
            .checked_add(n as u64)
            .filter(|e| *e <= i64::MAX as u64)
            .ok_or(fuser::Errno::EFBIG)?;
        let at = self.nodes.get(id);
        let mut node = at.lock().await;
        let contiguous = node.buf_start + node.buf.len() as u64 == offset;
        if !node.buf.is_empty() && (!contiguous || node.buf.len() + n > BUFFER) {
            self.flush_buffer(id, &mut node).await?;
        }
        if n >= BUFFER {
            self.store_io(id, "write", |s| s.write(id, offset, &data))?;
        } else {
            if node.buf.is_empty() {
                node.buf_start = offset;
            }
            node.buf.extend_from_slice(&data);
        }
        node.unreported = node.unreported.max(end);
        if let Some(a) = &mut node.unlinked {
            a.size = a.size.max(end);
        }
        Ok(n as u32)
    }

    async fn flush(&self, id: u64) -> Res<()> {
        let Some(at) = self.nodes.peek(id) else {
            return Ok(());
        };
        let mut node = at.lock().await;
        self.flush_all(id, &mut node).await
    }

    async fn release(&self, id: u64) -> Res<()> {
        let at = self.nodes.get(id);
        let mut node = at.lock().await;
        let r = self.flush_all(id, &mut node).await;
        node.handles = node.handles.saturating_sub(1);
        if node.handles == 0 && node.unlinked.is_some() {
            node.unlinked = None;
            node.buf.clear();
            self.remove_data(id).await?;
        }
        self.nodes.forget_if_idle(id, &at, &node);
        r
    }

    #[allow(clippy::too_many_arguments)]
    async fn setattr(
        &self,
        id: u64,
        cred: Cred,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        has_handle: bool,
    ) -> Res<FileAttr> {
        let time = |t: TimeOrNow| match t {
            TimeOrNow::Now => TimeSet::Now,
            TimeOrNow::SpecificTime(t) => TimeSet::At(ns_of(t)),
        };
        // A truncate through an open handle was allowed when the file was opened for writing
        // (ftruncate(2) does not check the mode again): it runs with the mount's authority.
        let only_size =
            mode.is_none() && uid.is_none() && gid.is_none() && atime.is_none() && mtime.is_none();
        let cred = if has_handle && size.is_some() && only_size {
            Cred::root()
        } else {
            cred
        };
        let op = SetAttr {
            ns: self.ns(),
            cred,
            obj: Some(Obj::Handle(id)),
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time),
            mtime: mtime.map(time),
        };
        let Some(size) = size else {
            // Writes buffered or not yet reported come first: their report (`ns.wrote`, at the
            // latest on close) sets the mtime to now, and must not overwrite the time or mode
            // set here (`cp -a` and `rsync` write, then set times and modes, then close).
            if let Some(at) = self.nodes.peek(id) {
                let mut node = at.lock().await;
                self.flush_all(id, &mut node).await?;
            }
            let a = self.meta.call(&op).await.map_err(|e| errno(&e))?;
            return Ok(self.shown(&a).await);
        };
        let at = self.nodes.get(id);
        let mut node = at.lock().await;
        // What was written before the truncate lands first, and the namespace knows of it.
        self.flush_all(id, &mut node).await?;
        let a = self.meta.call(&op).await.map_err(|e| errno(&e))?;
        if self.store.end(id) > size {
            self.store_io(id, "truncate", |s| s.truncate(id, size))?;
        }
        node.size = Some(a.size);
        if let Some(u) = &mut node.unlinked {
            u.size = size;
        }
        let shown = self.attr(&a, a.size);
        self.nodes.forget_if_idle(id, &at, &node);
        Ok(shown)
    }

    async fn getattr(&self, id: u64) -> Res<FileAttr> {
        match self.stat(id, Cred::root()).await {
            Ok(a) => Ok(self.shown(&a).await),
            Err(e) if e.errno == Errno::ENOENT => {
                // An open file whose last name is gone still has attributes.
                if let Some(at) = self.nodes.peek(id) {
                    let node = at.lock().await;
                    if let Some(a) = &node.unlinked {
                        return Ok(self.attr(a, a.size));
                    }
                }
                Err(fuser::Errno::ENOENT)
            }
            Err(e) => Err(errno(&e)),
        }
    }

    /// Fills the directory handle up to `want` entries (or its end).
    async fn fill(
        &self,
        id: u64,
        dir: &mut DirHandle,
        want: usize,
        plus: bool,
        cred: &Cred,
    ) -> Res<()> {
        while dir.entries.len() < want && !dir.done {
            let page = self
                .meta
                .call(&Readdir {
                    ns: self.ns(),
                    cred: cred.clone(),
                    dir: Obj::Handle(id),
                    after: dir.next.clone().unwrap_or_default(),
                    limit: 256,
                    plus,
                })
                .await
                .map_err(|e| errno(&e))?;
            dir.entries.extend(page.entries);
            match page.next {
                Some(n) => dir.next = Some(n),
                None => dir.done = true,
            }
        }
        Ok(())
    }

    /// Answers a request that made an entry.
    fn answer_entry(&self, reply: ReplyEntry, r: Result<Attr, FsError>) {
        match r {
            Ok(a) => reply.entry_with_ttls(
                &self.attr_ttl,
                &self.entry_ttl,
                &self.attr(&a, a.size),
                Generation(0),
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn dir(&self, fh: FileHandle) -> Res<Arc<tokio::sync::Mutex<DirHandle>>> {
        self.dirs
            .lock()
            .get(&fh.0)
            .cloned()
            .ok_or(fuser::Errno::EBADF)
    }
}

/// Answers a request that returns nothing.
fn answer_empty(reply: ReplyEmpty, r: Result<(), FsError>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

fn empty_attr(id: u64) -> Attr {
    Attr {
        id,
        mode: FileType::Regular.bits(),
        uid: 0,
        gid: 0,
        nlink: 0,
        entries: 0,
        size: 0,
        atime: 0,
        mtime: 0,
        ctime: 0,
        rdev: 0,
        parent: 0,
        ns: 0,
        target: Vec::new(),
    }
}

macro_rules! reply_err {
    ($reply:expr, $r:expr) => {
        match $r {
            Ok(v) => v,
            Err(e) => return $reply.error(e),
        }
    };
}

impl<M: Meta> fuser::Filesystem for MantleFs<M> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        use fuser::InitFlags as F;
        // Lookups and readdirs of one directory run in parallel; readdir returns attributes
        // when the kernel thinks it pays; symlink targets are cached.
        for flag in [
            F::FUSE_PARALLEL_DIROPS,
            F::FUSE_DO_READDIRPLUS,
            F::FUSE_READDIRPLUS_AUTO,
            F::FUSE_CACHE_SYMLINKS,
        ] {
            if config.capabilities().contains(flag) {
                let _ = config.add_capabilities(flag);
            }
        }
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_time_granularity(Duration::from_nanos(1));
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (core, name, cred) = (self.core.clone(), name_of(name), self.groups.cred(req));
        self.run_here(async move {
            match core.lookup(parent, name, cred).await {
                Ok(a) => {
                    let attr = core.shown(&a).await;
                    reply.entry_with_ttls(&core.attr_ttl, &core.entry_ttl, &attr, Generation(0));
                }
                Err(e) if e.errno == Errno::ENOENT && !core.negative_ttl.is_zero() => {
                    let mut attr = core.attr(&empty_attr(0), 0);
                    attr.ino = INodeNo(0);
                    reply.entry(&core.negative_ttl, &attr, Generation(0));
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let core = self.core.clone();
        self.run_here(async move {
            let id = core.id(ino);
            let a = reply_err!(reply, core.getattr(id).await);
            reply.attr(&core.attr_ttl, &a);
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let (core, cred) = (self.core.clone(), self.groups.cred(req));
        self.run_here(async move {
            let id = core.id(ino);
            let mode = mode.map(|m| m & 0o7777);
            let a = reply_err!(
                reply,
                core.setattr(id, cred, mode, uid, gid, size, atime, mtime, fh.is_some())
                    .await
            );
            reply.attr(&core.attr_ttl, &a);
        });
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let (core, cred) = (self.core.clone(), self.groups.cred(req));
        self.run_here(async move {
            let op = Readlink {
                ns: core.ns(),
                cred,
                obj: Obj::Handle(core.id(ino)),
            };
            match core.meta.call(&op).await {
                Ok(t) => reply.data(&t),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let (core, name, cred) = (self.core.clone(), name_of(name), self.groups.cred(req));
        self.run_here(async move {
            let op = Mknod {
                ns: core.ns(),
                cred,
                at: core.entry(parent, &name),
                mode,
                rdev,
            };
            core.answer_entry(reply, core.meta.call(&op).await);
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let (core, name, cred) = (self.core.clone(), name_of(name), self.groups.cred(req));
        self.run_here(async move {
            let op = Mkdir {
                ns: core.ns(),
                cred,
                at: core.entry(parent, &name),
                mode: mode & 0o7777,
            };
            core.answer_entry(reply, core.meta.call(&op).await);
        });
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (core, name, cred) = (self.core.clone(), name_of(name), self.groups.cred(req));
        self.run_here(async move {
            // Which inode the name leads to, so that its data can go with its last link.
            let victim = core.lookup(parent, name.clone(), Cred::root()).await.ok();
            let op = Unlink {
                ns: core.ns(),
                cred,
                at: core.entry(parent, &name),
            };
            reply_err!(reply, core.meta.call(&op).await.map_err(|e| errno(&e)));
            if let Some(v) = victim.filter(|v| v.kind() == FileType::Regular) {
                if let Err(e) = core.maybe_gone(v.id).await {
                    tracing::warn!(ino = v.id, ?e, "dropping an unlinked file's data");
                }
            }
            reply.ok();
        });
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (core, name, cred) = (self.core.clone(), name_of(name), self.groups.cred(req));
        self.run_here(async move {
            let op = Rmdir {
                ns: core.ns(),
                cred,
                at: core.entry(parent, &name),
            };
            answer_empty(reply, core.meta.call(&op).await);
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        let (core, name, cred) = (self.core.clone(), name_of(link_name), self.groups.cred(req));
        let target = target.as_os_str().as_bytes().to_vec();
        self.run_here(async move {
            let op = Symlink {
                ns: core.ns(),
                cred,
                at: core.entry(parent, &name),
                target,
            };
            core.answer_entry(reply, core.meta.call(&op).await);
        });
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (core, name, newname, cred) = (
            self.core.clone(),
            name_of(name),
            name_of(newname),
            self.groups.cred(req),
        );
        self.run_here(async move {
            if flags.contains(fuser::RenameFlags::RENAME_WHITEOUT) {
                return reply.error(fuser::Errno::EINVAL);
            }
            let exchange = flags.contains(fuser::RenameFlags::RENAME_EXCHANGE);
            // A file the rename replaces may lose its last link.
            let victim = if exchange {
                None
            } else {
                core.lookup(newparent, newname.clone(), Cred::root())
                    .await
                    .ok()
            };
            let op = Rename {
                ns: core.ns(),
                cred,
                from: core.entry(parent, &name),
                to: core.entry(newparent, &newname),
                flags: flags.bits(),
            };
            reply_err!(reply, core.meta.call(&op).await.map_err(|e| errno(&e)));
            if let Some(v) = victim.filter(|v| v.kind() == FileType::Regular) {
                if let Err(e) = core.maybe_gone(v.id).await {
                    tracing::warn!(ino = v.id, ?e, "dropping a replaced file's data");
                }
            }
            reply.ok();
        });
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let (core, name, cred) = (self.core.clone(), name_of(newname), self.groups.cred(req));
        self.run_here(async move {
            let op = Link {
                ns: core.ns(),
                cred,
                target: Obj::Handle(core.id(ino)),
                at: core.entry(newparent, &name),
            };
            match core.meta.call(&op).await {
                Ok(a) => {
                    let attr = core.shown(&a).await;
                    reply.entry_with_ttls(&core.attr_ttl, &core.entry_ttl, &attr, Generation(0));
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let (core, cred) = (self.core.clone(), self.groups.cred(req));
        self.run_here(async move {
            let fh = reply_err!(reply, core.open(core.id(ino), cred).await);
            reply.opened(FileHandle(fh), FopenFlags::empty());
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let core = self.core.clone();
        self.run_here(async move {
            let data = reply_err!(reply, core.read(core.id(ino), offset, size).await);
            reply.data(&data);
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let (core, data) = (self.core.clone(), data.to_vec());
        self.run_here(async move {
            let n = reply_err!(reply, core.write(core.id(ino), offset, data).await);
            reply.written(n);
        });
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        let core = self.core.clone();
        self.run_here(async move {
            reply_err!(reply, core.flush(core.id(ino)).await);
            reply.ok();
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let core = self.core.clone();
        self.run_here(async move {
            reply_err!(reply, core.release(core.id(ino)).await);
            reply.ok();
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // The file's bytes and size, then everything acknowledged before (as a journalling
        // file system's fsync commits the journal): with `SyncMode::Always` the flush alone
        // is durable.
        let core = self.core.clone();
        self.run_here(async move {
            reply_err!(reply, core.flush(core.id(ino)).await);
            reply_err!(reply, core.sync().await);
            reply.ok();
        });
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let (core, cred) = (self.core.clone(), self.groups.cred(req));
        self.run_here(async move {
            let id = core.id(ino);
            let a = reply_err!(reply, core.stat(id, cred).await.map_err(|e| errno(&e)));
            if a.kind() != FileType::Directory {
                return reply.error(fuser::Errno::ENOTDIR);
            }
            let fh = core.next_fh.fetch_add(1, Ordering::Relaxed);
            let dir = DirHandle {
                parent: if id == core.root { id } else { a.parent },
                ..Default::default()
            };
            core.dirs
                .lock()
                .insert(fh, Arc::new(tokio::sync::Mutex::new(dir)));
            reply.opened(FileHandle(fh), FopenFlags::empty());
        });
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let (core, cred) = (self.core.clone(), self.groups.cred(req));
        self.run_here(async move {
            let id = core.id(ino);
            let dir = reply_err!(reply, core.dir(fh));
            let mut dir = dir.lock().await;
            let mut at = offset as usize;
            loop {
                let full = match at {
                    0 => reply.add(ino, 1, fuser::FileType::Directory, "."),
                    1 => reply.add(core.ino(dir.parent), 2, fuser::FileType::Directory, ".."),
                    n => {
                        let i = n - 2;
                        reply_err!(reply, core.fill(id, &mut dir, i + 1, false, &cred).await);
                        let Some(e) = dir.entries.get(i) else { break };
                        reply.add(
                            core.ino(e.id),
                            (n + 1) as u64,
                            kind(e.kind),
                            OsStr::from_bytes(&e.name),
                        )
                    }
                };
                if full {
                    break;
                }
                at += 1;
            }
            reply.ok();
        });
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let (core, cred) = (self.core.clone(), self.groups.cred(req));
        self.run_here(async move {
            let id = core.id(ino);
            let dir = reply_err!(reply, core.dir(fh));
            let mut dir = dir.lock().await;
            let mut at = offset as usize;
            loop {
                let full = match at {
                    0 | 1 => {
                        let target = if at == 0 { id } else { dir.parent };
                        let a = reply_err!(
                            reply,
                            core.stat(target, Cred::root()).await.map_err(|e| errno(&e))
                        );
                        let attr = core.attr(&a, a.size);
                        reply.add(
                            core.ino(target),
                            (at + 1) as u64,
                            if at == 0 { "." } else { ".." },
                            &core.attr_ttl,
                            &attr,
                            Generation(0),
                        )
                    }
                    n => {
                        let i = n - 2;
                        reply_err!(reply, core.fill(id, &mut dir, i + 1, true, &cred).await);
                        let Some(e) = dir.entries.get(i).cloned() else {
                            break;
                        };
                        let attr = match &e.attr {
                            Some(a) => core.shown(a).await,
                            None => {
                                let a = reply_err!(
                                    reply,
                                    core.stat(e.id, Cred::root()).await.map_err(|e| errno(&e))
                                );
                                core.shown(&a).await
                            }
                        };
                        reply.add(
                            core.ino(e.id),
                            (n + 1) as u64,
                            OsStr::from_bytes(&e.name),
                            &core.entry_ttl,
                            &attr,
                            Generation(0),
                        )
                    }
                };
                if full {
                    break;
                }
                at += 1;
            }
            reply.ok();
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.core.dirs.lock().remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // The directory's entries are namespace changes, made durable by a sync of everything
        // acknowledged (with `SyncMode::Always` they already are).
        let core = self.core.clone();
        self.run_here(async move {
            reply_err!(reply, core.sync().await);
            reply.ok();
        });
    }

    fn statfs(&self, req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let (core, cred) = (self.core.clone(), self.groups.cred(req));
        self.run_here(async move {
            let usage = reply_err!(
                reply,
                core.meta
                    .call(&StatFs {
                        ns: core.ns(),
                        cred
                    })
                    .await
                    .map_err(|e| errno(&e))
            );
            let (total, free) = core.store.space();
            const BSIZE: u64 = 4096;
            // Inodes are not a fixed pool: report a large one, of which the used part is the
            // namespace's count.
            let files = (1u64 << 40).max(usage.inodes);
            reply.statfs(
                total / BSIZE,
                free / BSIZE,
                free / BSIZE,
                files,
                files - usage.inodes,
                BSIZE as u32,
                255,
                BSIZE as u32,
            );
        });
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        // POSIX ACLs are not implemented: stored as plain xattrs they would not change the
        // mode the kernel checks. Refused, tools fall back to chmod (`cp -a` sets a copy's
        // mode through `system.posix_acl_access` where it can).
        if name.as_bytes().starts_with(b"system.posix_acl_") {
            reply.error(fuser::Errno::EOPNOTSUPP);
            return;
        }
        let (core, name, cred, value) = (
            self.core.clone(),
            name_of(name),
            self.groups.cred(req),
            value.to_vec(),
        );
        self.run_here(async move {
            let op = XattrSet {
                ns: core.ns(),
                cred,
                obj: Obj::Handle(core.id(ino)),
                name,
                value,
                flags: flags as u32,
            };
            answer_empty(reply, core.meta.call(&op).await);
        });
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let (core, name, cred) = (self.core.clone(), name_of(name), self.groups.cred(req));
        self.run_here(async move {
            let op = XattrGet {
                ns: core.ns(),
                cred,
                obj: Obj::Handle(core.id(ino)),
                name,
            };
            match core.meta.call(&op).await {
                Ok(v) if size == 0 => reply.size(v.len() as u32),
                Ok(v) if v.len() > size as usize => reply.error(fuser::Errno::ERANGE),
                Ok(v) => reply.data(&v),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let (core, cred) = (self.core.clone(), self.groups.cred(req));
        self.run_here(async move {
            let op = XattrList {
                ns: core.ns(),
                cred,
                obj: Obj::Handle(core.id(ino)),
            };
            match core.meta.call(&op).await {
                Ok(names) => {
                    let mut buf = Vec::new();
                    for n in names {
                        buf.extend_from_slice(&n);
                        buf.push(0);
                    }
                    if size == 0 {
                        reply.size(buf.len() as u32);
                    } else if buf.len() > size as usize {
                        reply.error(fuser::Errno::ERANGE);
                    } else {
                        reply.data(&buf);
                    }
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (core, name, cred) = (self.core.clone(), name_of(name), self.groups.cred(req));
        self.run_here(async move {
            let op = XattrRemove {
                ns: core.ns(),
                cred,
                obj: Obj::Handle(core.id(ino)),
                name,
            };
            answer_empty(reply, core.meta.call(&op).await);
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (core, name, cred) = (self.core.clone(), name_of(name), self.groups.cred(req));
        self.run_here(async move {
            let op = Mknod {
                ns: core.ns(),
                cred: cred.clone(),
                at: core.entry(parent, &name),
                mode: FileType::Regular.bits() | (mode & 0o7777),
                rdev: 0,
            };
            let a = match core.meta.call(&op).await {
                Ok(a) => a,
                // Another mount made the name since the kernel last looked: without O_EXCL,
                // open what is there.
                Err(e) if e.errno == Errno::EEXIST && flags & libc::O_EXCL == 0 => {
                    reply_err!(
                        reply,
                        core.lookup(parent, name, cred.clone())
                            .await
                            .map_err(|e| errno(&e))
                    )
                }
                Err(e) => return reply.error(errno(&e)),
            };
            let fh = core.opened(a.id, a.size).await;
            let attr = core.shown(&a).await;
            reply.created(
                &core.entry_ttl,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            );
        });
    }
}
