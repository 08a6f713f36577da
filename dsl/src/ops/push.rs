//! `script push`: a new version of a script, current at once; optionally the namespace's
//! hook bindings of the script.

use coprocessor::ctx::Ctx;
use coprocessor::hooks::HookOp;
use coprocessor::resolve::namespace;
use coprocessor::{Errno, FsError, Op, OpResult};
use indexnode::Cred;
use serde::{Deserialize, Serialize};
use tafdb::{BoxFuture, Txn};

use crate::ops::list::{hooks_of, info};
use crate::ops::{admin, ScriptInfo};
use crate::registry::{bindings, check_name, encode, Binding, Head, Scripts, Version};

/// Where a pushed script's hooks go: they replace the script's bindings in namespace `ns`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookSpec {
    /// The namespace.
    pub ns: Vec<u8>,
    /// `(event, prefix)`: `before_mkdir` for entries under `/warehouse`, say. Empty: the
    /// script's hooks in `ns` are removed.
    pub events: Vec<(String, Vec<u8>)>,
}

/// Pushes `source` as the next version of script `name` (made current).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScriptPush {
    /// The caller (root).
    pub cred: Cred,
    /// The script's name.
    pub name: String,
    /// The source.
    pub source: String,
    /// Hook bindings to set, if any.
    pub hooks: Option<HookSpec>,
}

/// Fails with `EINVAL` unless `event` is `before_<op>`, `instead_<op>` or `after_<op>`.
pub fn check_event(event: &str) -> Result<(), FsError> {
    let op = event
        .strip_prefix("before_")
        .or_else(|| event.strip_prefix("instead_"))
        .or_else(|| event.strip_prefix("after_"));
    match op.and_then(HookOp::from_name) {
        Some(_) => Ok(()),
        None => Err(FsError::new(
            Errno::EINVAL,
            format!(
                "hook {event:?}: use before_<op>, instead_<op> or after_<op>, <op> one of {}",
                HookOp::ALL.map(HookOp::name).join(", ")
            ),
        )),
    }
}

/// `prefix` as an absolute, normalized path.
fn normal_prefix(prefix: &[u8]) -> OpResult<Vec<u8>> {
    let names = metastore::name::split_path(prefix)?;
    let mut out = Vec::new();
    for n in names {
        out.push(b'/');
        out.extend_from_slice(n);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    Ok(out)
}

impl Op for ScriptPush {
    const NAME: &'static str = "dsl.push";
    type Reply = ScriptInfo;

    fn run<'a>(&'a self, ctx: &'a Ctx, txn: &'a mut Txn) -> BoxFuture<'a, OpResult<ScriptInfo>> {
        Box::pin(async move {
            admin(&self.cred, "pushing a script")?;
            check_name(&self.name)?;
            let scripts = Scripts::of(ctx)?;
            let ast = scripts.check(&self.name, &self.source)?;
            let defines = |f: &str| {
                ast.iter_functions()
                    .any(|m| m.name == f && m.params.len() == 1)
            };
            let mut spec = None;
            if let Some(h) = &self.hooks {
                let ns = namespace(txn, &h.ns).await?;
                let mut new = Vec::with_capacity(h.events.len());
                for (event, prefix) in &h.events {
                    check_event(event)?;
                    if !defines(event) {
                        return Err(FsError::new(
                            Errno::EINVAL,
                            format!(
                                "script {:?} has no function {event}(args) for its hook",
                                self.name
                            ),
                        )
                        .into());
                    }
                    new.push(Binding {
                        script: self.name.clone(),
                        event: event.clone(),
                        prefix: normal_prefix(prefix)?,
                    });
                }
                spec = Some((ns.root.id, new));
            }
            // Bindings elsewhere stay: the new version must still define their functions.
            for b in hooks_of(txn, &self.name).await? {
                let replaced = self.hooks.as_ref().is_some_and(|h| h.ns == b.ns);
                if !replaced && !defines(&b.event) {
                    return Err(FsError::new(
                        Errno::EINVAL,
                        format!(
                            "script {:?} is bound to {} in namespace {:?}, and this version has no function {}(args)",
                            self.name,
                            b.event,
                            String::from_utf8_lossy(&b.ns),
                            b.event
                        ),
                    )
                    .into());
                }
            }
            let mut head = Scripts::head(txn, &self.name).await?.unwrap_or(Head {
                current: 0,
                latest: 0,
                hash: 0,
            });
            let version = head.latest + 1;
            let hash = crc32c::crc32c(self.source.as_bytes());
            let record = Version {
                source: self.source.clone(),
                hash,
                pushed_ms: txn.start_ts() >> 18,
                by_uid: self.cred.uid,
            };
            txn.put(
                &metastore::keys::script_version_key(self.name.as_bytes(), version),
                &encode("script version", &record)?,
            )?;
            head = Head {
                current: version,
                latest: version,
                hash,
            };
            txn.put(
                &metastore::keys::script_key(self.name.as_bytes()),
                &encode("script head", &head)?,
            )?;
            if let Some((root, new)) = spec {
                let mut all = bindings(txn, root).await?;
                all.retain(|b| b.script != self.name);
                all.extend(new);
                let key = metastore::keys::hooks_key(root);
                if all.is_empty() {
                    txn.delete(&key)?;
                } else {
                    txn.put(&key, &encode("hook bindings", &all)?)?;
                }
            }
            info(txn, &self.name, &head).await
        })
    }
}
