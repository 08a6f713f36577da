//! `script call`: runs a function of a script's current version, in one transaction.

use coprocessor::ctx::Ctx;
use coprocessor::resolve::namespace_cached;
use coprocessor::{Errno, FsError, Op, OpResult};
use indexnode::Cred;
use serde::{Deserialize, Serialize};
use tafdb::{BoxFuture, Txn};

use crate::host::{self, Caller};
use crate::registry::Scripts;
use crate::value::Value;

/// Calls `function(args..)` of script `script` in namespace `ns`, as `cred`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScriptCall {
    /// The namespace the script's namespace functions act in.
    pub ns: Vec<u8>,
    /// The caller: namespace functions check permissions as this user.
    pub cred: Cred,
    /// The script.
    pub script: String,
    /// The function.
    pub function: String,
    /// Its arguments.
    pub args: Vec<Value>,
}

impl Op for ScriptCall {
    const NAME: &'static str = "dsl.call";
    type Reply = Value;

    fn run<'a>(&'a self, ctx: &'a Ctx, txn: &'a mut Txn) -> BoxFuture<'a, OpResult<Value>> {
        Box::pin(async move {
            let scripts = Scripts::of(ctx)?;
            // Unknown namespaces fail here, before the script runs.
            namespace_cached(ctx, txn, &self.ns).await?;
            let Some((version, compiled)) = scripts.current(txn, &self.script).await? else {
                return Err(FsError::new(
                    Errno::ENOSYS,
                    format!("script {:?} is disabled", self.script),
                )
                .into());
            };
            let args = self.args.iter().map(Value::to_dynamic).collect();
            let caller = Caller {
                ctx: scripts.ctx()?,
                ns: &self.ns,
                cred: &self.cred,
            };
            let out = host::run(
                &scripts.engine,
                &scripts.limits,
                &compiled,
                (&self.script, version),
                caller,
                txn,
                &self.function,
                args,
            )?;
            Value::from_dynamic(&out).map_err(|m| {
                FsError::new(
                    Errno::ECANCELED,
                    format!(
                        "script {:?} v{version}: {}: {m}",
                        self.script, self.function
                    ),
                )
                .into()
            })
        })
    }
}
