//! `script rollback` and `script disable`: which version calls run.

use coprocessor::ctx::Ctx;
use coprocessor::{Errno, FsError, Op, OpResult};
use indexnode::Cred;
use serde::{Deserialize, Serialize};
use tafdb::{BoxFuture, Txn};

use crate::ops::{admin, list::info, ScriptInfo};
use crate::registry::{encode, Scripts};

/// Makes version `version` of script `name` current (a rollback, or forward again), or with
/// `None` disables the script: its calls fail with `ENOSYS` and its hooks stop running.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScriptSet {
    /// The caller (root).
    pub cred: Cred,
    /// The script.
    pub name: String,
    /// The version to run, or `None` to disable.
    pub version: Option<u64>,
}

impl Op for ScriptSet {
    const NAME: &'static str = "dsl.set";
    type Reply = ScriptInfo;

    fn run<'a>(&'a self, _ctx: &'a Ctx, txn: &'a mut Txn) -> BoxFuture<'a, OpResult<ScriptInfo>> {
        Box::pin(async move {
            admin(&self.cred, "changing a script")?;
            let Some(mut head) = Scripts::head(txn, &self.name).await? else {
                return Err(FsError::new(
                    Errno::ENOENT,
                    format!("no script named {:?}", self.name),
                )
                .into());
            };
            match self.version {
                Some(v) => {
                    let ver = Scripts::version(txn, &self.name, v).await?;
                    head.current = v;
                    head.hash = ver.hash;
                }
                None => head.current = 0,
            }
            txn.put(
                &metastore::keys::script_key(self.name.as_bytes()),
                &encode("script head", &head)?,
            )?;
            info(txn, &self.name, &head).await
        })
    }
}
