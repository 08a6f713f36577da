//! The script registry: versioned scripts and hook bindings in the system table, and
//! [`Scripts`], which compiles each version once and runs calls and hooks.
//!
//! A script's head record names its current version; every version's source is a record of
//! its own. Pushing, rolling back and disabling are transactions, so they go through the Raft
//! log like any write: every replica sees a change at the same log index. A call reads the
//! head in its own transaction, so it runs on the version current at its snapshot and
//! conflicts with (and retries after) a push that commits while it runs: a call's result is
//! always that of the version its commit follows.

use std::sync::{Arc, Weak};

use coprocessor::ctx::Ctx;
use coprocessor::{Errno, FsError, OpResult};
use dashmap::DashMap;
use rhai::{Engine, AST};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tafdb::Txn;

use crate::engine::{self, Limits};

/// A script's head record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// The version calls run (0: disabled).
    pub current: u64,
    /// The newest version pushed.
    pub latest: u64,
    /// The CRC32C of the current version's source.
    pub hash: u32,
}

/// One version of a script.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// The source.
    pub source: String,
    /// The CRC32C of the source.
    pub hash: u32,
    /// When it was pushed (the pushing transaction's snapshot, ms since the epoch).
    pub pushed_ms: u64,
    /// Who pushed it.
    pub by_uid: u32,
}

/// A hook: script `script`'s function `event` (`before_mkdir`, ...) runs for operations on
/// entries at or under `prefix` of a namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// The script.
    pub script: String,
    /// The hook point: `before_<op>` or `after_<op>`.
    pub event: String,
    /// An absolute path; `/` for the whole namespace.
    pub prefix: Vec<u8>,
}

pub(crate) fn decode<T: DeserializeOwned>(what: &str, raw: &[u8]) -> OpResult<T> {
    bincode::deserialize(raw).map_err(|e| {
        FsError::new(Errno::EIO, format!("the {what} record is undecodable: {e}")).into()
    })
}

pub(crate) fn encode<T: Serialize>(what: &str, v: &T) -> OpResult<Vec<u8>> {
    bincode::serialize(v).map_err(|e| {
        FsError::new(Errno::EIO, format!("cannot encode the {what} record: {e}")).into()
    })
}

/// Fails with `EINVAL` unless `name` is a script name: 1 to 64 of `A-Z a-z 0-9 _ . -`.
pub fn check_name(name: &str) -> Result<(), FsError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(FsError::new(
            Errno::EINVAL,
            format!("script name {name:?}: use 1 to 64 of A-Z a-z 0-9 _ . -"),
        ))
    }
}

/// A version compiled.
pub(crate) struct Compiled {
    pub(crate) ast: AST,
    hash: u32,
    /// A call of this version once ran past the inline budget: its calls run off the
    /// runtime's workers from the start (see [`crate::wait`]).
    pub(crate) slow: std::sync::atomic::AtomicBool,
}

/// The scripts of one store: the engine, the limits and the compiled versions.
pub struct Scripts {
    pub(crate) engine: Engine,
    pub(crate) limits: Arc<Limits>,
    compiled: DashMap<String, Vec<(u64, Arc<Compiled>)>>,
    pub(crate) ctx: Weak<Ctx>,
}

impl std::fmt::Debug for Scripts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scripts")
            .field("limits", &self.limits)
            .field("compiled", &self.compiled.len())
            .finish()
    }
}

/// How many versions of one script stay compiled.
const KEEP_COMPILED: usize = 8;

impl Scripts {
    pub(crate) fn new(ctx: &Arc<Ctx>, limits: Limits, extra: impl FnOnce(&mut Engine)) -> Scripts {
        let mut engine = engine::build(&limits);
        extra(&mut engine);
        Scripts {
            engine,
            limits: Arc::new(limits),
            compiled: DashMap::new(),
            ctx: Arc::downgrade(ctx),
        }
    }

    /// The scripts installed in `ctx`.
    pub(crate) fn of(ctx: &Ctx) -> OpResult<&Scripts> {
        ctx.hooks()
            .and_then(|h| h.as_any().downcast_ref::<Scripts>())
            .ok_or_else(|| {
                FsError::new(Errno::ENOSYS, "scripts are not enabled on this server").into()
            })
    }

    pub(crate) fn ctx(&self) -> OpResult<Arc<Ctx>> {
        self.ctx.upgrade().ok_or_else(|| {
            FsError::new(Errno::EAGAIN, "the namespace service is shutting down").into()
        })
    }

    /// The limits every call runs under.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Compiles `source` (a push's check; nothing is cached).
    pub(crate) fn check(&self, name: &str, source: &str) -> Result<AST, FsError> {
        if source.len() > self.limits.max_source_bytes {
            return Err(FsError::new(
                Errno::E2BIG,
                format!(
                    "script {name:?} has {} bytes, more than max_source_bytes ({})",
                    source.len(),
                    self.limits.max_source_bytes
                ),
            ));
        }
        engine::compile(&self.engine, name, source)
    }

    /// The functions `source` defines, with their number of parameters (it must compile).
    pub fn functions(&self, source: &str) -> Result<Vec<(String, usize)>, FsError> {
        let ast = self.check("(source)", source)?;
        Ok(ast
            .iter_functions()
            .map(|f| (f.name.to_string(), f.params.len()))
            .collect())
    }

    /// The head of script `name`, read in `txn`.
    pub(crate) async fn head(txn: &mut Txn, name: &str) -> OpResult<Option<Head>> {
        match txn
            .get(&metastore::keys::script_key(name.as_bytes()))
            .await?
        {
            Some(raw) => decode("script head", &raw).map(Some),
            None => Ok(None),
        }
    }

    /// Version `version` of script `name`, read in `txn`.
    pub(crate) async fn version(txn: &mut Txn, name: &str, version: u64) -> OpResult<Version> {
        let key = metastore::keys::script_version_key(name.as_bytes(), version);
        match txn.get(&key).await? {
            Some(raw) => decode("script version", &raw),
            None => Err(FsError::new(
                Errno::ENOENT,
                format!("script {name:?} has no version {version}"),
            )
            .into()),
        }
    }

    /// The current version of script `name` at `txn`'s snapshot, compiled (once per
    /// version); `None` when it is disabled, `ENOSYS` when there is no such script.
    pub(crate) async fn current(
        &self,
        txn: &mut Txn,
        name: &str,
    ) -> OpResult<Option<(u64, Arc<Compiled>)>> {
        let Some(head) = Scripts::head(txn, name).await? else {
            return Err(FsError::new(Errno::ENOSYS, format!("no script named {name:?}")).into());
        };
        if head.current == 0 {
            return Ok(None);
        }
        if let Some(vs) = self.compiled.get(name) {
            if let Some((_, c)) = vs
                .iter()
                .find(|(v, c)| *v == head.current && c.hash == head.hash)
            {
                return Ok(Some((head.current, c.clone())));
            }
        }
        let ver = Scripts::version(txn, name, head.current).await?;
        let ast = engine::compile(&self.engine, name, &ver.source)?;
        let c = Arc::new(Compiled {
            ast,
            hash: ver.hash,
            slow: std::sync::atomic::AtomicBool::new(false),
        });
        let mut vs = self.compiled.entry(name.to_string()).or_default();
        vs.retain(|(v, _)| *v != head.current);
        vs.push((head.current, c.clone()));
        if vs.len() > KEEP_COMPILED {
            vs.remove(0);
        }
        Ok(Some((head.current, c)))
    }
}

/// The hook bindings of the namespace rooted at `root`, read in `txn`.
pub(crate) async fn bindings(txn: &mut Txn, root: u64) -> OpResult<Vec<Binding>> {
    match txn.get(&metastore::keys::hooks_key(root)).await? {
        Some(raw) => decode("hook bindings", &raw),
        None => Ok(Vec::new()),
    }
}

/// Whether `path` is `prefix` or under it.
pub(crate) fn under(prefix: &[u8], path: &[u8]) -> bool {
    prefix == b"/"
        || path == prefix
        || (path.starts_with(prefix) && path.get(prefix.len()) == Some(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_whole_components() {
        assert!(under(b"/", b"/a"));
        assert!(under(b"/a", b"/a"));
        assert!(under(b"/a", b"/a/b"));
        assert!(!under(b"/a", b"/ab"));
        assert!(!under(b"/a/b", b"/a"));
    }

    #[test]
    fn script_names_are_checked() {
        assert!(check_name("quota-v2.rhai").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name(&"x".repeat(65)).is_err());
    }
}
