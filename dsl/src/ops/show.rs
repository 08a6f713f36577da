//! `script show`: one version's source.

use coprocessor::ctx::Ctx;
use coprocessor::{Errno, FsError, Op, OpResult};
use serde::{Deserialize, Serialize};
use tafdb::{BoxFuture, Txn};

use crate::registry::Scripts;

/// Shows version `version` of script `name` (default: the current one, or the latest when
/// it is disabled).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScriptShow {
    /// The script.
    pub name: String,
    /// Which version.
    pub version: Option<u64>,
}

/// A version of a script.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shown {
    /// The script.
    pub name: String,
    /// The version shown.
    pub version: u64,
    /// The version calls run (0: disabled).
    pub current: u64,
    /// The newest version.
    pub latest: u64,
    /// Its source.
    pub source: String,
    /// When it was pushed, ms since the epoch.
    pub pushed_ms: u64,
    /// Who pushed it.
    pub by_uid: u32,
}

impl Op for ScriptShow {
    const NAME: &'static str = "dsl.show";
    type Reply = Shown;
    const MUTATES: bool = false;

    fn run<'a>(&'a self, _ctx: &'a Ctx, txn: &'a mut Txn) -> BoxFuture<'a, OpResult<Shown>> {
        Box::pin(async move {
            let Some(head) = Scripts::head(txn, &self.name).await? else {
                return Err(FsError::new(
                    Errno::ENOENT,
                    format!("no script named {:?}", self.name),
                )
                .into());
            };
            let v = self.version.unwrap_or(if head.current == 0 {
                head.latest
            } else {
                head.current
            });
            let ver = Scripts::version(txn, &self.name, v).await?;
            Ok(Shown {
                name: self.name.clone(),
                version: v,
                current: head.current,
                latest: head.latest,
                source: ver.source,
                pushed_ms: ver.pushed_ms,
                by_uid: ver.by_uid,
            })
        })
    }
}
