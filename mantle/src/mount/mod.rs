//! `mantle mount`: a namespace as a POSIX file system, through FUSE.
//!
//! The kernel's requests arrive by inode ([`fs::MantleFs`], on `fuser`'s threads); each
//! thread drives the request's future itself (on the Tokio runtime's context), running the
//! inode form of a namespace operation ([`Meta`]) and, for file contents, reads and writes of
//! the chunk store's [`FileStore`].
//!
//! - Metadata: with `--data DIR` the store runs in this process (the embedded default: one
//!   command, nothing else to start), the same `Service` a server runs.
//! - File data: the embedded mode keeps it in a [`FileStore`] at `DIR/files.mstore` (one log of
//!   chunks for every file). Writes are buffered per file up to [`files::BUFFER`] bytes while
//!   they are contiguous, and written on `flush`, `fsync`, `close`, a read of the file, a
//!   non-contiguous write or a full buffer; then the namespace hears the file's new end
//!   (`ns.wrote`).
//! - Durability ([`SyncMode`]): by default as on a local file system (an acknowledged change
//!   survives `kill -9` at once, a power cut once synced by `fsync`, `fsyncdir`, the unmount
//!   or the periodic sync; file data is synced before the namespace's log, whoever syncs it);
//!   `--sync always` syncs every change before acknowledging it.
//! - Permissions: the mount asks the kernel to check them (`default_permissions`, with the
//!   caller's supplementary groups), and every operation also carries the caller's
//!   credentials to the namespace, which checks them again.
//! - Page cache: files are opened without `FOPEN_KEEP_CACHE`, so every open drops cached
//!   pages: close-to-open consistency.
//!
//! What it is not (yet): a client of a server or cluster (`--addr`), whose file data would go
//! to the replicated chunk servers.

pub(crate) mod files;
pub mod fs;
pub(crate) mod meta;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chunk_backend::disk::{Disk, DiskConfig};
use chunk_backend::files::FileStore;
use coprocessor::ops::ns_create::NsCreate;
use coprocessor::ops::ns_list::NsList;
use coprocessor::Service;
use indexnode::Cred;

pub use meta::Meta;

/// The chunk-table blob id of the mount's file store.
const FILES_BLOB: u64 = 1;

/// How a mount is set up.
#[derive(Clone, Debug)]
pub struct MountConfig {
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// The data directory of the embedded store.
    pub data: PathBuf,
    /// The namespace to mount.
    pub namespace: String,
    /// Refuse every change (`EROFS`).
    pub read_only: bool,
    /// Let other users than the mounting one use the mount (`-o allow_other`).
    pub allow_other: bool,
    /// How long the kernel may cache an inode's attributes.
    pub attr_ttl: Duration,
    /// How long the kernel may cache a name's lookup.
    pub entry_ttl: Duration,
    /// How long the kernel may cache that a name does not exist (0: not at all).
    pub negative_ttl: Duration,
    /// Threads reading the kernel's requests.
    pub threads: usize,
    /// The file store's size, fixed when it is created.
    pub data_capacity: u64,
    /// The store's MVCC window (tests make it tiny).
    pub mvcc_window_ms: Option<u64>,
    /// When changes reach the disk.
    pub sync: SyncMode,
    /// How often a [`SyncMode::Posix`] mount syncs what nobody synced.
    pub sync_interval: Duration,
}

/// When a mount's changes reach the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// As on a local file system: an acknowledged change (a create, a rename, a `write` once
    /// the file is closed or flushed) survives the death of the mount process (`kill -9`) at
    /// once, because the kernel has it; it survives a power cut once synced: by `fsync` or
    /// `fdatasync` of the file (which syncs everything before it), `fsync` of a directory,
    /// the unmount, and the periodic sync ([`MountConfig::sync_interval`]). File data is
    /// synced before the sizes that cover it, so a power cut never leaves a file longer than
    /// its synced bytes.
    #[default]
    Posix,
    /// Every change, and every byte written, is on disk before it is acknowledged (an
    /// `fdatasync` per namespace change, shared by concurrent ones).
    Always,
}

impl MountConfig {
    /// A mount of namespace `default` of the store at `data` on `mountpoint`, with the
    /// defaults: 1 s attribute and entry caches, no negative cache, 16 threads, 4 GiB of file
    /// data, local-file-system durability synced every second ([`SyncMode::Posix`]).
    pub fn new(data: impl Into<PathBuf>, mountpoint: impl Into<PathBuf>) -> MountConfig {
        MountConfig {
            mountpoint: mountpoint.into(),
            data: data.into(),
            namespace: crate::DEFAULT_NAMESPACE.to_string(),
            read_only: false,
            allow_other: false,
            attr_ttl: Duration::from_secs(1),
            entry_ttl: Duration::from_secs(1),
            negative_ttl: Duration::ZERO,
            threads: 16,
            data_capacity: 4 << 30,
            mvcc_window_ms: None,
            sync: SyncMode::Posix,
            sync_interval: Duration::from_secs(1),
        }
    }
}

/// Why a mount could not start or ended badly.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The namespace store.
    #[error("store: {0}")]
    Store(#[from] tafdb::Error),
    /// The namespace.
    #[error("namespace: {0}")]
    Namespace(#[from] coprocessor::FsError),
    /// The file store.
    #[error("file data: {0}")]
    Files(#[from] chunk_backend::Error),
    /// The kernel side: mounting, the FUSE device, unmounting.
    #[error("{0}")]
    Fuse(String),
}

/// The file store's shape for `capacity` bytes: 1 MiB blocks, 64 MiB chunks.
fn files_shape(capacity: u64) -> DiskConfig {
    let blocks = (capacity >> 20).clamp(64, u64::from(u32::MAX - 2)) as u32;
    DiskConfig {
        block_size: 1 << 20,
        blocks,
        chunk_slots: (blocks / 64 + 64).min(1 << 20),
        chunk_blocks: 64,
    }
}

/// Opens the embedded store and file data of `config`, creating the namespace `default` on a
/// fresh data directory.
async fn open_embedded(config: &MountConfig) -> Result<(Arc<Service>, Arc<FileStore>), MountError> {
    std::fs::create_dir_all(&config.data)
        .map_err(|e| MountError::Fuse(format!("{}: {e}", config.data.display())))?;
    let mut cfg = tafdb::DbConfig::new(&config.data);
    if let Some(ms) = config.mvcc_window_ms {
        cfg.tablet.window_ms = ms;
    }
    let deferred = config.sync == SyncMode::Posix;
    if deferred {
        cfg.tablet.log_sync = tafdb::tablet::LogSync::Deferred;
    }
    let db = tafdb::Db::open(cfg).await?;
    let svc = Arc::new(Service::open_with(
        db,
        &coprocessor::service::Options {
            path_cache: Some(indexnode::CacheConfig::default()),
        },
    ));
    // Hooks pushed through a server over the same data apply in the mount too.
    dsl::install(&svc, dsl::Limits::default())?;
    let have = svc.call(&NsList {}).await?;
    if !have.iter().any(|n| n.name == config.namespace.as_bytes()) {
        if config.namespace != crate::DEFAULT_NAMESPACE || !have.is_empty() {
            return Err(MountError::Namespace(coprocessor::FsError::new(
                coprocessor::Errno::ENOENT,
                format!("namespace {:?} does not exist", config.namespace),
            )));
        }
        svc.call(&NsCreate {
            name: config.namespace.as_bytes().to_vec(),
            cred: crate::server::process_cred(),
            mode: 0o755,
        })
        .await?;
    }
    let path = config.data.join("files.mstore");
    let shape = files_shape(config.data_capacity);
    let store = tokio::task::spawn_blocking(move || -> Result<FileStore, chunk_backend::Error> {
        let disk = Arc::new(Disk::open(&path, shape)?);
        disk.set_deferred_sync(deferred)?;
        FileStore::open(disk, FILES_BLOB)
    })
    .await
    .map_err(|e| MountError::Fuse(format!("opening the file store: {e}")))??;
    let store = Arc::new(store);
    // Whatever syncs the namespace's log (the mount's syncs, the store's flusher, a chunk
    // rollover) syncs the file data first: no size on disk covers bytes that are not.
    let s = store.clone();
    svc.db().set_before_log_sync(Arc::new(move || s.sync()));
    Ok((svc, store))
}

/// Mounts, calls `ready` once the kernel sees the file system, and serves until `shutdown`
/// resolves (then unmounts) or the file system is unmounted from outside (`umount`,
/// `fusermount3 -u`).
pub async fn run(
    config: MountConfig,
    ready: impl FnOnce(&Path),
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), MountError> {
    let (svc, store) = open_embedded(&config).await?;
    let root = svc
        .call(&coprocessor::ops::stat::Stat {
            ns: config.namespace.as_bytes().to_vec(),
            cred: Cred::root(),
            obj: coprocessor::api::Obj::path("/"),
        })
        .await?
        .id;
    let fs = fs::MantleFs::new(
        meta::Embedded::new(svc.clone(), config.namespace.as_bytes().to_vec()),
        store,
        root,
        tokio::runtime::Handle::current(),
        &config,
    );
    let syncer = fs.syncer();
    // Files whose data outlived their inode (a crash between the last unlink and the data's
    // removal) or whose data runs past their size (a crash in a truncate) are put right before
    // the mount serves anything.
    let (fs, repaired) = tokio::task::spawn_blocking(move || {
        let r = fs.repair();
        (fs, r)
    })
    .await
    .map_err(|e| MountError::Fuse(format!("repair: {e}")))?;
    let (removed, cut) = repaired?;
    if removed + cut > 0 {
        tracing::info!(removed, cut, "repaired the file store after a crash");
    }
    let mut fuse_cfg = fuser::Config::default();
    fuse_cfg.mount_options = vec![
        fuser::MountOption::FSName(format!("mantle:{}", config.namespace)),
        fuser::MountOption::Subtype("mantle".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoAtime,
        if config.read_only {
            fuser::MountOption::RO
        } else {
            fuser::MountOption::RW
        },
    ];
    if config.allow_other {
        fuse_cfg.acl = fuser::SessionACL::All;
    }
    fuse_cfg.n_threads = Some(config.threads.max(1));
    fuse_cfg.clone_fd = config.threads > 1;
    let mountpoint = config.mountpoint.clone();
    let mut session =
        tokio::task::spawn_blocking(move || fuser::Session::new(fs, &mountpoint, &fuse_cfg))
            .await
            .map_err(|e| MountError::Fuse(format!("mount: {e}")))?
            .map_err(|e| MountError::Fuse(format!("mount {}: {e}", config.mountpoint.display())))?;
    let mut unmounter = session.unmount_callable();
    // What nobody synced reaches the disk within the interval (as a local file system's
    // journal commit does).
    let (stop_sync, stopped) = std::sync::mpsc::channel::<()>();
    let sync_thread = match config.sync {
        SyncMode::Posix => {
            let every = config.sync_interval.max(Duration::from_millis(1));
            let (s, rt) = (syncer.clone(), tokio::runtime::Handle::current());
            let t = std::thread::Builder::new()
                .name("mount-sync".into())
                .spawn(move || {
                    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                        stopped.recv_timeout(every)
                    {
                        if let Err(e) = rt.block_on(s.sync()) {
                            tracing::error!(error = ?e, "the periodic sync failed");
                        }
                    }
                })
                .map_err(|e| MountError::Fuse(format!("sync thread: {e}")))?;
            Some(t)
        }
        SyncMode::Always => None,
    };
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("fuse-session".into())
        .spawn(move || {
            let _ = done_tx.send(session.run());
        })
        .map_err(|e| MountError::Fuse(format!("session thread: {e}")))?;
    tracing::info!(mountpoint = %config.mountpoint.display(), namespace = %config.namespace, "mounted");
    ready(&config.mountpoint);
    tokio::pin!(done_rx);
    let ended = tokio::select! {
        r = &mut done_rx => Some(r),
        () = shutdown => None,
    };
    let result = match ended {
        Some(r) => r,
        None => {
            tracing::info!("unmounting");
            if let Err(e) = unmounter.unmount() {
                tracing::warn!(error = %e, "unmount");
            }
            done_rx.await
        }
    };
    drop(stop_sync);
    if let Some(t) = sync_thread {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    if let Err(e) = syncer.sync().await {
        tracing::error!(error = ?e, "the last sync failed");
    }
    svc.db().shutdown().await;
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(MountError::Fuse(format!("FUSE session: {e}"))),
        Err(_) => Err(MountError::Fuse("the FUSE session thread died".into())),
    }
}
