//! Where the operations go: plain syscalls on a directory, a Mantle server over gRPC, or a
//! Mantle store in this process.

use std::io::{Read, Write};
use std::sync::Arc;

use coprocessor::api::{Loc, Obj};
use coprocessor::ops::{
    lookup::Lookup, mkdir::Mkdir, mknod::Mknod, ns_create::NsCreate, rename::Rename, rmdir::Rmdir,
    stat::Stat, unlink::Unlink,
};
use coprocessor::{Errno, Service};
use indexnode::Cred;
use tafdb::BoxFuture;

/// A failed operation, with the path it failed on.
pub type OpResult = Result<(), String>;

/// The operations mdtest performs.
pub trait Backend: Send + Sync + 'static {
    /// A short name for reports.
    fn name(&self) -> String;
    /// Whether calls block the thread (run each task on its own OS thread).
    fn blocking(&self) -> bool;
    /// Whether files carry data (`-w`, `-e`, the read phase).
    fn has_data(&self) -> bool;
    /// Makes a directory.
    fn mkdir<'a>(&'a self, path: &'a str) -> BoxFuture<'a, OpResult>;
    /// Removes an empty directory.
    fn rmdir<'a>(&'a self, path: &'a str) -> BoxFuture<'a, OpResult>;
    /// Creates a file and writes `bytes` to it.
    fn create<'a>(&'a self, path: &'a str, bytes: u64, sync: bool) -> BoxFuture<'a, OpResult>;
    /// Stats a path.
    fn stat<'a>(&'a self, path: &'a str) -> BoxFuture<'a, OpResult>;
    /// Resolves a directory path to the directory (Mantle: DirectStat, one call against the
    /// Index table; POSIX: `stat`).
    fn lookup<'a>(&'a self, path: &'a str) -> BoxFuture<'a, OpResult>;
    /// Opens a file and reads `bytes` from it.
    fn read<'a>(&'a self, path: &'a str, bytes: u64) -> BoxFuture<'a, OpResult>;
    /// Removes a file.
    fn unlink<'a>(&'a self, path: &'a str) -> BoxFuture<'a, OpResult>;
    /// Renames.
    fn rename<'a>(&'a self, from: &'a str, to: &'a str) -> BoxFuture<'a, OpResult>;
    /// Makes `path` and its missing parents (setup, not timed).
    fn mkdir_all<'a>(&'a self, path: &'a str) -> BoxFuture<'a, OpResult>;
    /// Pushes `source` as script `mdtest` into the namespace with `hooks` bound (setup).
    fn push_script<'a>(
        &'a self,
        _source: &'a str,
        _hooks: Vec<(String, Vec<u8>)>,
    ) -> BoxFuture<'a, OpResult> {
        Box::pin(async move {
            Err(format!(
                "--script needs a Mantle backend (grpc:// or embedded:), not {}",
                self.name()
            ))
        })
    }
}

/// Opens the backend a `--backend` string names; `path_cache_levels` sets up the embedded
/// store's path cache (0: none).
pub async fn open(
    spec: &str,
    namespace: &str,
    path_cache_levels: usize,
) -> Result<Arc<dyn Backend>, String> {
    if spec == "posix" {
        return Ok(Arc::new(Posix));
    }
    if let Some(addr) = spec.strip_prefix("grpc://") {
        let client = mantle::client::Client::connect(addr)
            .await
            .map_err(|e| format!("--backend {spec}: {}", e.message))?
            .with_namespace(namespace)
            .with_cred(Cred::root());
        client
            .stat("/")
            .await
            .map_err(|e| format!("--backend {spec}: namespace {namespace:?}: {}", e.message))?;
        return Ok(Arc::new(Grpc {
            client,
            addr: addr.to_string(),
        }));
    }
    if let Some(dir) = spec.strip_prefix("embedded:") {
        if dir.is_empty() {
            return Err("--backend embedded:DIR needs a directory".into());
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("--backend {spec}: {e}"))?;
        let db = tafdb::Db::open(tafdb::DbConfig::new(dir))
            .await
            .map_err(|e| format!("--backend {spec}: {e}"))?;
        let svc = Service::open_with(
            db,
            &coprocessor::service::Options {
                path_cache: (path_cache_levels > 0).then(|| indexnode::CacheConfig {
                    keep_last: path_cache_levels,
                    ..Default::default()
                }),
            },
        );
        // Hooks bound in the data directory apply here as in a server.
        dsl::install(&svc, dsl::Limits::default())
            .map_err(|e| format!("--backend {spec}: scripts: {e}"))?;
        let created = svc
            .call(&NsCreate {
                name: namespace.as_bytes().to_vec(),
                cred: Cred::root(),
                mode: 0o755,
            })
            .await;
        match created {
            Ok(_) => {}
            Err(e) if e.errno == Errno::EEXIST => {}
            Err(e) => return Err(format!("--backend {spec}: namespace {namespace:?}: {e}")),
        }
        return Ok(Arc::new(Embedded {
            svc,
            ns: namespace.as_bytes().to_vec(),
            dir: dir.to_string(),
        }));
    }
    Err(format!(
        "unknown backend {spec:?}: use posix, grpc://HOST:PORT or embedded:DIR"
    ))
}

fn io(op: &str, path: &str, e: std::io::Error) -> String {
    format!("{op} {path}: {e}")
}

/// Plain syscalls.
pub struct Posix;

impl Backend for Posix {
    fn name(&self) -> String {
        "posix".into()
    }
    fn blocking(&self) -> bool {
        true
    }
    fn has_data(&self) -> bool {
        true
    }
    fn mkdir<'a>(&'a self, path: &'a str) -> BoxFuture<'a, OpResult> {
        Box::pin(async move { std::fs::create_dir(path).map_err(|e| io("mkdir", path, e)) })
    }
    fn rmdir<'a>(&'a self, path: &'a str) -> BoxFuture<'a, OpResult> {
        Box::pin(async move { std::fs::remove_dir(path).map_err(|e| io("rmdir", path, e)) })
    }
    fn create<'a>(&'a self, path: &'a str, bytes: u64, sync: bool) -> BoxFuture<'a, OpResult> {
        Box::pin(async move {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(|e| io("create", path, e))?;
            if bytes > 0 {
                let buf = vec![b'x'; bytes as usize];
                f.write_all(&buf).map_err(|e| io("write", path, e))?;
            }
            if sync {
                f.sync_all().map_err(|e| io("fsync", path, e))?;
            }
            Ok(())
        })
    }
    fn stat<'a>(&'a self, path: &'a str) -> BoxFuture<'a, OpResult> {
        Box::pin(async move {
            std::fs::symlink_metadata(path)
                .map(|_| ())
                .map_err(|e| io("stat", path, e))
        })
    }
    fn lookup<'a>(&'a self, path: &'a str) -> BoxFuture<'a, OpResult> {
        self.stat(path)
    }
    fn read<'a>(&'a self, path: &'a str, bytes: u64) -> BoxFuture<'a, OpResult> {
        Box::pin(async move {
            let mut f = std::fs::File::open(path).map_err(|e| io("open", path, e))?;
            if bytes > 0 {
                let mut buf = vec![0u8; bytes as usize];
                f.read_exact(&mut buf).map_err(|e| io("read", path, e))?;
            }
            Ok(())
        })
    }
    fn unlink<'a>(&'a self, path: &'a str) -> BoxFuture<'a, OpResult> {
        Box::pin(async move { std::fs::remove_file(path).map_err(|e| io("unlink", path, e)) })
    }
    fn rename<'a>(&'a self, from: &'a str, to: &'a str) -> BoxFuture<'a, OpResult> {
        Box::pin(async move { std::fs::rename(from, to).map_err(|e| io("rename", from, e)) })
    }
    fn mkdir_all<'a>(&'a self, path: &'a str) -> BoxFuture<'a, OpResult> {
        Box::pin(async move { std::fs::create_dir_all(path).map_err(|e| io("mkdir -p", path, e)) })
    }
}

fn fs(op: &str, path: &str, e: coprocessor::FsError) -> String {
    format!("{op} {path}: {:?} ({})", e.errno, e.message)
}

/// A Mantle server over gRPC.
pub struct Grpc {
    client: mantle::client::Client,
    addr: String,
}

impl Backend for Grpc {
    fn name(&self) -> String {
        format!("grpc://{}", self.addr)
    }
    fn blocking(&self) -> bool {
        false
    }
    fn has_data(&self) -> bool {
        false
    }
    fn mkdir<'a>(&'a self, path: &'a str) -> BoxFuture<'a, OpResult> {
        Box::pin(async move {
            self.client
                .mkdir(path, 0o755)
                .await
                .map(|_| ())
                .map_err(|e| fs("mkdir", path, e))
        })
    }
    fn rmdir<'a>(&'a self, path: &'a str) -> BoxFuture<'a, OpResult> {
        Box::pin(async move {
            self.client
                .rmdir(path)
                .await
                .map_err(|e| fs("rmdir", path, e))
        })
    }
    fn create<'a>(&'a self, path: &'a str, _bytes: u64, _sync: bool) -> BoxFuture<'a, OpResult> {
        Box::pin(async move {
            self.client
                .create(path, 0o644)
                .await
                .map(|_| ())
                .map_err(|e| fs("create", path, e))
        })
    }
    fn stat<'a>(&'a self, path: &'a str) -> BoxFuture<'a, OpResult> {
        Box::pin(async move {
            self.client
                .lstat(path)
                .await
                .map(|_| ())
                .map_err(|e| fs("stat", path, e))
        })
    }
    fn lookup<'a>(&'a self, path: &'a str) -> BoxFuture<'a, OpResult> {
        Box::pin(async move {
            self.client
                .lookup_dir(path)
                .await
                .map(|_| ())
                .map_err(|e| fs("lookup", path, e))
        })
    }
    fn read<'a>(&'a self, path: &'a str, _bytes: u64) -> BoxFuture<'a, OpResult> {
        self.stat(path)
    }
    fn unlink<'a>(&'a self, path: &'a str) -> BoxFuture<'a, OpResult> {
        Box::pin(async move {
            self.client
                .unlink(path)
                .await
                .map_err(|e| fs("unlink", path, e))
        })
    }
    fn rename<'a>(&'a self, from: &'a str, to: &'a str) -> BoxFuture<'a, OpResult> {
        Box::pin(async move {
            self.client
                .rename(from, to, 0)
                .await
                .map_err(|e| fs("rename", from, e))
        })
    }
    fn mkdir_all<'a>(&'a self, path: &'a str) -> BoxFuture<'a, OpResult> {
        Box::pin(async move {
            self.client
                .mkdir_p(path, 0o755)
                .await
                .map(|_| ())
                .map_err(|e| fs("mkdir -p", path, e))
        })
    }
    fn push_script<'a>(
        &'a self,
        source: &'a str,
        hooks: Vec<(String, Vec<u8>)>,
    ) -> BoxFuture<'a, OpResult> {
        Box::pin(async move {
            self.client
                .script_push("mdtest", source, Some(hooks))
                .await
                .map(|_| ())
                .map_err(|e| fs("script push", "mdtest", e))
        })
    }
}

/// A Mantle store in this process: the same coprocessor calls the server makes, without the
/// network.
pub struct Embedded {
    svc: Service,
    ns: Vec<u8>,
    dir: String,
}

impl Embedded {
    fn loc(path: &str) -> Loc {
        Loc::Path(path.as_bytes().to_vec())
    }
}

impl Backend for Embedded {
    fn name(&self) -> String {
        format!("embedded:{}", self.dir)
    }
    fn blocking(&self) -> bool {
        false
    }
    fn has_data(&self) -> bool {
        false
    }
    fn mkdir<'a>(&'a self, path: &'a str) -> BoxFuture<'a, OpResult> {
        Box::pin(async move {
            let op = Mkdir {
                ns: self.ns.clone(),
                cred: Cred::root(),
                at: Self::loc(path),
                mode: 0o755,
            };
            self.svc
                .call(&op)
                .await
                .map(|_| ())
                .map_err(|e| fs("mkdir", path, e))
        })
    }
    fn rmdir<'a>(&'a self, path: &'a str) -> BoxFuture<'a, OpResult> {
        Box::pin(async move {
            let op = Rmdir {
                ns: self.ns.clone(),
                cred: Cred::root(),
                at: Self::loc(path),
            };
            self.svc.call(&op).await.map_err(|e| fs("rmdir", path, e))
        })
    }
    fn create<'a>(&'a self, path: &'a str, _bytes: u64, _sync: bool) -> BoxFuture<'a, OpResult> {
        Box::pin(async move {
            let op = Mknod {
                ns: self.ns.clone(),
                cred: Cred::root(),
                at: Self::loc(path),
                mode: 0o644,
                rdev: 0,
            };
            self.svc
                .call(&op)
                .await
                .map(|_| ())
                .map_err(|e| fs("create", path, e))
        })
    }
    fn stat<'a>(&'a self, path: &'a str) -> BoxFuture<'a, OpResult> {
        Box::pin(async move {
            let op = Stat {
                ns: self.ns.clone(),
                cred: Cred::root(),
                obj: Obj::path(path.as_bytes()),
            };
            self.svc
                .call(&op)
                .await
                .map(|_| ())
                .map_err(|e| fs("stat", path, e))
        })
    }
    fn lookup<'a>(&'a self, path: &'a str) -> BoxFuture<'a, OpResult> {
        Box::pin(async move {
            let op = Lookup {
                ns: self.ns.clone(),
                cred: Cred::root(),
                path: path.as_bytes().to_vec(),
            };
            self.svc
                .call(&op)
                .await
                .map(|_| ())
                .map_err(|e| fs("lookup", path, e))
        })
    }
    fn read<'a>(&'a self, path: &'a str, _bytes: u64) -> BoxFuture<'a, OpResult> {
        self.stat(path)
    }
    fn unlink<'a>(&'a self, path: &'a str) -> BoxFuture<'a, OpResult> {
        Box::pin(async move {
            let op = Unlink {
                ns: self.ns.clone(),
                cred: Cred::root(),
                at: Self::loc(path),
            };
            self.svc.call(&op).await.map_err(|e| fs("unlink", path, e))
        })
    }
    fn rename<'a>(&'a self, from: &'a str, to: &'a str) -> BoxFuture<'a, OpResult> {
        Box::pin(async move {
            let op = Rename {
                ns: self.ns.clone(),
                cred: Cred::root(),
                from: Self::loc(from),
                to: Self::loc(to),
                flags: 0,
            };
            self.svc.call(&op).await.map_err(|e| fs("rename", from, e))
        })
    }
    fn mkdir_all<'a>(&'a self, path: &'a str) -> BoxFuture<'a, OpResult> {
        Box::pin(async move {
            let mut cur = String::new();
            for c in path.split('/').filter(|c| !c.is_empty()) {
                cur.push('/');
                cur.push_str(c);
                match self.mkdir(&cur).await {
                    Ok(()) => {}
                    Err(_) => self.stat(&cur).await?,
                }
            }
            Ok(())
        })
    }
    fn push_script<'a>(
        &'a self,
        source: &'a str,
        hooks: Vec<(String, Vec<u8>)>,
    ) -> BoxFuture<'a, OpResult> {
        Box::pin(async move {
            let op = dsl::ops::push::ScriptPush {
                cred: Cred::root(),
                name: "mdtest".into(),
                source: source.to_string(),
                hooks: Some(dsl::ops::push::HookSpec {
                    ns: self.ns.clone(),
                    events: hooks,
                }),
            };
            self.svc
                .call(&op)
                .await
                .map(|_| ())
                .map_err(|e| fs("script push", "mdtest", e))
        })
    }
}
