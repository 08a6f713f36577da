//! What every operation shares: the inode id allocator, the clock and the path cache.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use indexnode::{CacheConfig, PathCache};
use parking_lot::Mutex;
use tafdb::tablet::Tablet;
use tafdb::Db;

use crate::error::OpResult;
use crate::hooks::Hooks;

/// Ids below this are reserved (0 is the super-root that namespaces hang from).
pub const FIRST_ID: u64 = 16;
/// How many ids one allocator transaction reserves.
pub const ID_BLOCK: u64 = 1024;

/// Hands out inode ids from blocks reserved in the store, so that allocation is not a hot key:
/// one small transaction per [`ID_BLOCK`] ids. Ids of a block that was reserved but not used
/// before a restart are skipped, never reused.
pub struct Ctx {
    db: Arc<Db>,
    ids: Mutex<(u64, u64)>,
    refill: tokio::sync::Mutex<()>,
    cache: Option<Arc<PathCache>>,
    /// The extension the tree-changing operations call (see [`crate::hooks`]).
    hooks: std::sync::OnceLock<Arc<dyn Hooks>>,
}

impl Ctx {
    /// A context over `db`, with no path cache.
    pub fn new(db: Arc<Db>) -> Ctx {
        Ctx {
            db,
            ids: Mutex::new((0, 0)),
            refill: tokio::sync::Mutex::new(()),
            cache: None,
            hooks: std::sync::OnceLock::new(),
        }
    }

    /// Sets the hooks every tree-changing operation calls. Once: a second extension is
    /// refused (and handed back).
    pub fn set_hooks(&self, hooks: Arc<dyn Hooks>) -> Result<(), Arc<dyn Hooks>> {
        self.hooks.set(hooks)
    }

    /// The hooks, if an extension set them.
    pub fn hooks(&self) -> Option<&Arc<dyn Hooks>> {
        self.hooks.get()
    }

    /// A context over `db` whose path resolutions use a TopDirPathCache, kept exact by a write
    /// watch on the Index table's tablet. Without a cache if that tablet already has a watch
    /// (another service over the same store).
    pub fn with_cache(db: Arc<Db>, cfg: CacheConfig) -> Ctx {
        let mut ctx = Ctx::new(db);
        let cache = PathCache::new(cfg);
        let prefix = [indexnode::INDEX_TABLE];
        match ctx.db.tablet_for(&prefix).watch(&prefix, cache.clone()) {
            Ok(()) => ctx.cache = Some(cache),
            Err(e) => tracing::warn!("no path cache: {e}"),
        }
        ctx
    }

    /// The path cache, if there is one.
    pub fn path_cache(&self) -> Option<&Arc<PathCache>> {
        self.cache.as_ref()
    }

    /// The path cache and the Index table's tablet, when resolutions may use the cache now:
    /// this node's replica of that tablet serves (it leads), so the cache mirrors what a read
    /// here would see.
    pub(crate) fn cache_use(&self) -> Option<CacheUse<'_>> {
        let cache = self.cache.as_deref()?;
        let tablet = self.db.serving_tablet_for(&[indexnode::INDEX_TABLE])?;
        Some(CacheUse { cache, tablet })
    }

    /// The store.
    pub fn db(&self) -> &Arc<Db> {
        &self.db
    }

    fn take(&self) -> Option<u64> {
        let mut ids = self.ids.lock();
        (ids.0 < ids.1).then(|| {
            ids.0 += 1;
            ids.0 - 1
        })
    }

    /// A fresh inode id.
    pub async fn alloc_id(&self) -> OpResult<u64> {
        if let Some(id) = self.take() {
            return Ok(id);
        }
        let _guard = self.refill.lock().await;
        if let Some(id) = self.take() {
            return Ok(id);
        }
        let key = metastore::keys::alloc_key();
        let start = self
            .db
            .run_txn(|t| {
                let key = key.clone();
                Box::pin(async move {
                    let next = match t.get(&key).await? {
                        Some(v) => {
                            let b: [u8; 8] = v.as_slice().try_into().map_err(|_| {
                                tafdb::Error::Corruption(format!(
                                    "id allocator record of {} bytes",
                                    v.len()
                                ))
                            })?;
                            u64::from_le_bytes(b)
                        }
                        None => FIRST_ID,
                    };
                    t.put(&key, &(next + ID_BLOCK).to_le_bytes())?;
                    Ok(next)
                })
            })
            .await?;
        let mut ids = self.ids.lock();
        *ids = (start + 1, start + ID_BLOCK);
        Ok(start)
    }
}

/// A path cache a resolution may use, with the tablet that validates its fills.
#[derive(Clone, Copy)]
pub(crate) struct CacheUse<'c> {
    pub(crate) cache: &'c PathCache,
    pub(crate) tablet: &'c Tablet,
}

impl std::fmt::Debug for CacheUse<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheUse")
    }
}

/// Now, in ns since the epoch.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
