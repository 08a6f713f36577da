//! `script list`: every script, its versions and where its hooks are bound.

use coprocessor::ctx::Ctx;
use coprocessor::{Op, OpResult};
use serde::{Deserialize, Serialize};
use tafdb::{BoxFuture, Txn};

use crate::ops::{HookInfo, ScriptInfo};
use crate::registry::{bindings, decode, Head};

/// Lists every script.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ScriptList {}

/// How many scripts and namespaces a listing reads at most.
const MAX_LISTED: usize = 10_000;

/// Every namespace: its name and root id.
pub(crate) async fn namespaces(txn: &mut Txn) -> OpResult<Vec<(Vec<u8>, u64)>> {
    let range = metastore::keys::namespace_range();
    let prefix = metastore::keys::namespace_key(b"");
    let mut out = Vec::new();
    for (k, v) in txn.scan(&range, MAX_LISTED).await? {
        let Ok(root) = <[u8; 8]>::try_from(v.as_slice()) else {
            continue;
        };
        out.push((k[prefix.len()..].to_vec(), u64::from_le_bytes(root)));
    }
    Ok(out)
}

/// Every hook binding of script `name`, over all namespaces.
pub(crate) async fn hooks_of(txn: &mut Txn, name: &str) -> OpResult<Vec<HookInfo>> {
    let mut out = Vec::new();
    for (ns, root) in namespaces(txn).await? {
        for b in bindings(txn, root).await? {
            if b.script == name {
                out.push(HookInfo {
                    ns: ns.clone(),
                    event: b.event,
                    prefix: b.prefix,
                });
            }
        }
    }
    Ok(out)
}

pub(crate) async fn info(txn: &mut Txn, name: &str, head: &Head) -> OpResult<ScriptInfo> {
    Ok(ScriptInfo {
        name: name.to_string(),
        current: head.current,
        latest: head.latest,
        hooks: hooks_of(txn, name).await?,
    })
}

impl Op for ScriptList {
    const NAME: &'static str = "dsl.list";
    type Reply = Vec<ScriptInfo>;
    const MUTATES: bool = false;

    fn run<'a>(
        &'a self,
        _ctx: &'a Ctx,
        txn: &'a mut Txn,
    ) -> BoxFuture<'a, OpResult<Vec<ScriptInfo>>> {
        Box::pin(async move {
            let prefix = metastore::keys::script_key(b"");
            let heads = txn
                .scan(&metastore::keys::script_range(), MAX_LISTED)
                .await?;
            let mut out = Vec::with_capacity(heads.len());
            for (k, v) in heads {
                let name = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                let head: Head = decode("script head", &v)?;
                out.push(info(txn, &name, &head).await?);
            }
            Ok(out)
        })
    }
}
