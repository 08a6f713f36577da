//! The script calls of the gRPC API (`mantle script`, the `dsl` crate): JSON arguments and
//! results to and from [`dsl::Value`], and the registry's records to and from protobuf.

use dsl::ops::push::HookSpec;
use dsl::ops::{HookInfo, ScriptInfo};
use dsl::Value;
use tonic::Status;

use crate::proto;
use crate::status::invalid;

/// The most bytes of JSON arguments a call may carry.
pub const MAX_ARGS_JSON: usize = 1 << 20;

/// A JSON value as a script argument.
pub fn from_json(j: serde_json::Value) -> Value {
    match j {
        serde_json::Value::Null => Value::Unit,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::Str(s),
        serde_json::Value::Array(a) => Value::Array(a.into_iter().map(from_json).collect()),
        serde_json::Value::Object(m) => {
            Value::Map(m.into_iter().map(|(k, v)| (k, from_json(v))).collect())
        }
    }
}

/// A script's result as JSON: bytes that are UTF-8 become a string, other bytes an array of
/// numbers; a float that JSON cannot hold (NaN, infinities) becomes `null`.
pub fn to_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Unit => serde_json::Value::Null,
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::Int(i) => serde_json::Value::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        Value::Str(s) => serde_json::Value::String(s.clone()),
        Value::Bytes(b) => match std::str::from_utf8(b) {
            Ok(s) => serde_json::Value::String(s.to_string()),
            Err(_) => serde_json::Value::Array(b.iter().map(|x| (*x).into()).collect()),
        },
        Value::Array(a) => serde_json::Value::Array(a.iter().map(to_json).collect()),
        Value::Map(m) => {
            serde_json::Value::Object(m.iter().map(|(k, v)| (k.clone(), to_json(v))).collect())
        }
    }
}

/// The arguments of a call: a JSON array, or nothing.
pub fn args(json: &str) -> Result<Vec<Value>, Status> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    if json.len() > MAX_ARGS_JSON {
        return Err(invalid(format!(
            "script arguments of {} bytes (at most {MAX_ARGS_JSON})",
            json.len()
        )));
    }
    match serde_json::from_str(json) {
        Ok(serde_json::Value::Array(a)) => Ok(a.into_iter().map(from_json).collect()),
        Ok(_) => Err(invalid("script arguments must be a JSON array")),
        Err(e) => Err(invalid(format!("script arguments: {e}"))),
    }
}

/// The hooks a push sets.
pub fn hooks(ns: Vec<u8>, set: bool, hooks: Vec<proto::ScriptHook>) -> Option<HookSpec> {
    set.then(|| HookSpec {
        ns,
        events: hooks.into_iter().map(|h| (h.event, h.prefix)).collect(),
    })
}

fn hook(h: HookInfo) -> proto::ScriptHook {
    proto::ScriptHook {
        event: h.event,
        prefix: h.prefix,
        namespace: String::from_utf8_lossy(&h.ns).into_owned(),
    }
}

impl From<ScriptInfo> for proto::ScriptInfo {
    fn from(i: ScriptInfo) -> Self {
        proto::ScriptInfo {
            name: i.name,
            current: i.current,
            latest: i.latest,
            hooks: i.hooks.into_iter().map(hook).collect(),
        }
    }
}

impl From<dsl::ops::show::Shown> for proto::ScriptShowReply {
    fn from(s: dsl::ops::show::Shown) -> Self {
        proto::ScriptShowReply {
            name: s.name,
            version: s.version,
            current: s.current,
            latest: s.latest,
            source: s.source,
            pushed_ms: s.pushed_ms,
            by_uid: s.by_uid,
        }
    }
}

/// How one `test*` function of a script did under [`test_source`].
#[derive(Debug)]
pub struct TestOutcome {
    /// The function.
    pub function: String,
    /// What it returned (as JSON), or how it failed.
    pub result: Result<String, coprocessor::FsError>,
    /// How long the call took.
    pub elapsed: std::time::Duration,
}

/// Runs every function of `source` whose name starts with `test` and that takes no
/// parameters, in name order, each in a transaction of its own, against a scratch store in a
/// temporary directory (removed afterwards): `source` is pushed there as script `test`, with
/// `hooks` bound in its namespace `default`, so a test that makes a directory runs the
/// script's own hooks. What one test commits, the next sees.
pub async fn test_source(
    source: &str,
    hooks: Vec<(String, Vec<u8>)>,
) -> Result<Vec<TestOutcome>, coprocessor::FsError> {
    use coprocessor::{Errno, FsError};
    let dir = std::env::temp_dir().join(format!(
        "mantle-script-test-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let store = |e: tafdb::Error| FsError::from_store(&e);
    std::fs::create_dir_all(&dir)
        .map_err(|e| FsError::new(Errno::EIO, format!("{}: {e}", dir.display())))?;
    let mut cfg = tafdb::DbConfig::new(&dir);
    cfg.tablet.log_store_bytes = 32 << 20;
    cfg.tablet.log_chunk_bytes = 2 << 20;
    let db = tafdb::Db::open(cfg).await.map_err(store)?;
    let run = async {
        let svc = coprocessor::Service::open(db.clone());
        let scripts = dsl::install(&svc, dsl::Limits::default())?;
        let root = indexnode::Cred::root();
        let ns = crate::DEFAULT_NAMESPACE.as_bytes().to_vec();
        svc.call(&coprocessor::ops::ns_create::NsCreate {
            name: ns.clone(),
            cred: root.clone(),
            mode: 0o755,
        })
        .await?;
        let mut tests: Vec<String> = scripts
            .functions(source)?
            .into_iter()
            .filter(|(f, n)| f.starts_with("test") && *n == 0)
            .map(|(f, _)| f)
            .collect();
        tests.sort();
        tests.dedup();
        svc.call(&dsl::ops::push::ScriptPush {
            cred: root.clone(),
            name: "test".into(),
            source: source.to_string(),
            hooks: (!hooks.is_empty()).then(|| HookSpec {
                ns: ns.clone(),
                events: hooks,
            }),
        })
        .await?;
        let mut out = Vec::with_capacity(tests.len());
        for function in tests {
            let t = std::time::Instant::now();
            let r = svc
                .call(&dsl::ops::call::ScriptCall {
                    ns: ns.clone(),
                    cred: root.clone(),
                    script: "test".into(),
                    function: function.clone(),
                    args: Vec::new(),
                })
                .await;
            out.push(TestOutcome {
                function,
                result: r.map(|v| to_json(&v).to_string()),
                elapsed: t.elapsed(),
            });
        }
        Ok(out)
    };
    let out = run.await;
    db.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_what_it_can_hold() {
        let j: serde_json::Value =
            serde_json::from_str(r#"[null, true, -3, 1.5, "x", [1], {"a": {"b": 2}}]"#)
                .expect("json");
        let v = from_json(j.clone());
        assert_eq!(to_json(&v), j);
        assert_eq!(
            to_json(&Value::Bytes(vec![0xff, 1])),
            serde_json::json!([255, 1])
        );
        assert!(args("{}").is_err());
        assert!(args("[1,").is_err());
        assert_eq!(args("").expect("empty").len(), 0);
    }
}
