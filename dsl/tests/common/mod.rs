//! A namespace service with scripts on a fresh store, for tests.

#![allow(dead_code)]

use std::sync::Arc;

use coprocessor::api::{Loc, Obj};
use coprocessor::ops::{
    mkdir::Mkdir, mknod::Mknod, ns_create::NsCreate, rename::Rename, stat::Stat,
};
use coprocessor::{Errno, FsError, Service};
use dsl::ops::call::ScriptCall;
use dsl::ops::push::{HookSpec, ScriptPush};
use dsl::ops::ScriptInfo;
use dsl::{Limits, Scripts, Value};
use indexnode::Cred;
use metastore::Attr;
use tafdb::{Db, DbConfig};

pub const NS: &[u8] = b"t";

pub struct Fixture {
    pub db: Arc<Db>,
    pub svc: Arc<Service>,
    pub scripts: Arc<Scripts>,
    pub _dir: tempfile::TempDir,
}

pub async fn fixture() -> Fixture {
    fixture_with(Limits::default(), |_| {}).await
}

pub async fn fixture_with(limits: Limits, extra: impl FnOnce(&mut dsl::rhai::Engine)) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = DbConfig::new(dir.path());
    cfg.tablet.log_store_bytes = 64 << 20;
    cfg.tablet.log_chunk_bytes = 4 << 20;
    let db = Db::open(cfg).await.expect("open");
    let svc = Arc::new(Service::open(db.clone()));
    let scripts = dsl::install_with(&svc, limits, extra).expect("install");
    svc.call(&NsCreate {
        name: NS.to_vec(),
        cred: Cred::root(),
        mode: 0o777,
    })
    .await
    .expect("namespace");
    Fixture {
        db,
        svc,
        scripts,
        _dir: dir,
    }
}

pub fn user(uid: u32) -> Cred {
    Cred {
        uid,
        gid: uid,
        groups: Vec::new(),
    }
}

impl Fixture {
    pub async fn close(self) {
        self.db.shutdown().await;
    }

    pub async fn push(&self, name: &str, source: &str) -> Result<ScriptInfo, FsError> {
        self.svc
            .call(&ScriptPush {
                cred: Cred::root(),
                name: name.into(),
                source: source.into(),
                hooks: None,
            })
            .await
    }

    pub async fn push_hooks(
        &self,
        name: &str,
        source: &str,
        hooks: &[(&str, &str)],
    ) -> Result<ScriptInfo, FsError> {
        self.svc
            .call(&ScriptPush {
                cred: Cred::root(),
                name: name.into(),
                source: source.into(),
                hooks: Some(HookSpec {
                    ns: NS.to_vec(),
                    events: hooks
                        .iter()
                        .map(|(e, p)| (e.to_string(), p.as_bytes().to_vec()))
                        .collect(),
                }),
            })
            .await
    }

    pub async fn call_as(
        &self,
        cred: &Cred,
        script: &str,
        function: &str,
        args: Vec<Value>,
    ) -> Result<Value, FsError> {
        self.svc
            .call(&ScriptCall {
                ns: NS.to_vec(),
                cred: cred.clone(),
                script: script.into(),
                function: function.into(),
                args,
            })
            .await
    }

    pub async fn call(
        &self,
        script: &str,
        function: &str,
        args: Vec<Value>,
    ) -> Result<Value, FsError> {
        self.call_as(&Cred::root(), script, function, args).await
    }

    pub async fn mkdir(&self, cred: &Cred, path: &str) -> Result<Attr, FsError> {
        self.svc
            .call(&Mkdir {
                ns: NS.to_vec(),
                cred: cred.clone(),
                at: Loc::Path(path.as_bytes().to_vec()),
                mode: 0o777,
            })
            .await
    }

    pub async fn create(&self, cred: &Cred, path: &str) -> Result<Attr, FsError> {
        self.svc
            .call(&Mknod {
                ns: NS.to_vec(),
                cred: cred.clone(),
                at: Loc::Path(path.as_bytes().to_vec()),
                mode: 0o644,
                rdev: 0,
            })
            .await
    }

    pub async fn rename(&self, from: &str, to: &str) -> Result<(), FsError> {
        self.svc
            .call(&Rename {
                ns: NS.to_vec(),
                cred: Cred::root(),
                from: Loc::Path(from.as_bytes().to_vec()),
                to: Loc::Path(to.as_bytes().to_vec()),
                flags: 0,
            })
            .await
    }

    pub async fn stat(&self, path: &str) -> Result<Attr, FsError> {
        self.svc
            .call(&Stat {
                ns: NS.to_vec(),
                cred: Cred::root(),
                obj: Obj::path(path.as_bytes().to_vec()),
            })
            .await
    }

    pub async fn exists(&self, path: &str) -> bool {
        match self.stat(path).await {
            Ok(_) => true,
            Err(e) if e.errno == Errno::ENOENT => false,
            Err(e) => panic!("stat {path}: {e}"),
        }
    }
}

pub fn s(v: &str) -> Value {
    Value::Str(v.into())
}

pub fn i(v: i64) -> Value {
    Value::Int(v)
}

pub fn example(name: &str) -> String {
    let p = format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}
