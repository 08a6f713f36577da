//! The master: registered chunk servers, chunk ids, and the placement of every blob's chunks.
//!
//! Its state is small and changes rarely (a new chunk per 64 MiB written, a seal per failure),
//! so it is kept in memory and rewritten whole to `master.state` on every change: written to a
//! temporary file, `fsync`ed, renamed over the old one, and the directory `fsync`ed. The file is
//! text, one fact per line:
//!
//! ```text
//! next 17
//! server 127.0.0.1:7001
//! chunk BLOB CHUNK SEQ SEALED_LEN|- ADDR,ADDR,ADDR
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use super::proto::{self, master_server::MasterServer, Placement};

/// Replicas per chunk.
pub const REPLICAS: usize = 3;

#[derive(Default)]
struct State {
    /// Bumped at every start, so that lease tokens never repeat across restarts.
    epoch: u64,
    next: u64,
    servers: Vec<String>,
    blobs: BTreeMap<u64, BTreeMap<u32, Placement>>,
}

impl State {
    fn encode(&self) -> String {
        let mut s = format!("epoch {}\nnext {}\n", self.epoch, self.next);
        for a in &self.servers {
            s.push_str(&format!("server {a}\n"));
        }
        for (blob, chunks) in &self.blobs {
            for p in chunks.values() {
                let sealed = p.sealed_len.map_or("-".to_string(), |l| l.to_string());
                s.push_str(&format!(
                    "chunk {blob} {} {} {sealed} {}\n",
                    p.chunk,
                    p.seq,
                    p.servers.join(",")
                ));
            }
        }
        s
    }

    fn decode(text: &str) -> Result<State, String> {
        let mut st = State {
            next: 1,
            ..State::default()
        };
        for (n, line) in text.lines().enumerate() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let bad = || format!("master.state line {}: {line:?}", n + 1);
            match f.as_slice() {
                ["next", v] => st.next = v.parse().map_err(|_| bad())?,
                ["epoch", v] => st.epoch = v.parse().map_err(|_| bad())?,
                ["server", a] => st.servers.push((*a).to_string()),
                ["chunk", blob, chunk, seq, sealed, servers] => {
                    let p = Placement {
                        chunk: chunk.parse().map_err(|_| bad())?,
                        seq: seq.parse().map_err(|_| bad())?,
                        servers: servers
                            .split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect(),
                        sealed_len: if *sealed == "-" {
                            None
                        } else {
                            Some(sealed.parse().map_err(|_| bad())?)
                        },
                    };
                    st.blobs
                        .entry(blob.parse().map_err(|_| bad())?)
                        .or_default()
                        .insert(p.seq, p);
                }
                [] => {}
                _ => return Err(bad()),
            }
        }
        Ok(st)
    }
}

struct Granted {
    holder: String,
    token: u64,
    expires: std::time::Instant,
}

/// The master's state and its file.
pub struct Master {
    path: PathBuf,
    state: Mutex<State>,
    /// Write leases, by blob. Kept in memory: after a master restart any writer may take a
    /// blob again, and the new writer's seal of the blob's last chunk fences the old one off.
    leases: Mutex<std::collections::HashMap<u64, Granted>>,
    tokens: std::sync::atomic::AtomicU64,
}

impl Master {
    /// Opens (or starts) the master whose state lives in `dir`.
    pub fn open(dir: &Path) -> std::io::Result<Master> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("master.state");
        let mut state = match crate::atomic::read(&path).map_err(std::io::Error::other)? {
            Some(bytes) => {
                let text = String::from_utf8(bytes).map_err(std::io::Error::other)?;
                State::decode(&text).map_err(std::io::Error::other)?
            }
            None => State {
                next: 1,
                ..State::default()
            },
        };
        state.epoch += 1;
        let master = Master {
            path,
            tokens: std::sync::atomic::AtomicU64::new(state.epoch << 32 | 1),
            state: Mutex::new(state),
            leases: Mutex::new(std::collections::HashMap::new()),
        };
        master
            .persist(&master.state.lock())
            .map_err(|s| std::io::Error::other(s.message().to_string()))?;
        Ok(master)
    }

    fn check_lease(&self, blob: u64, token: u64) -> Result<(), Status> {
        let leases = self.leases.lock();
        match leases.get(&blob) {
            Some(g) if g.token == token && g.expires > std::time::Instant::now() => Ok(()),
            Some(g) => Err(Status::permission_denied(format!(
                "blob {blob} is leased to {} (token {}); this writer's lease is gone",
                g.holder, g.token
            ))),
            None => Err(Status::permission_denied(format!(
                "blob {blob} has no write lease"
            ))),
        }
    }

    fn persist(&self, st: &State) -> Result<(), Status> {
        let write = || crate::atomic::write(&self.path, st.encode().as_bytes());
        write().map_err(|e| Status::internal(format!("persisting the master state: {e}")))
    }
}

#[tonic::async_trait]
impl proto::master_server::Master for Arc<Master> {
    async fn register(
        &self,
        r: Request<proto::RegisterRequest>,
    ) -> Result<Response<proto::Empty>, Status> {
        let addr = r.into_inner().addr;
        if addr.is_empty() || addr.contains(char::is_whitespace) || addr.contains(',') {
            return Err(Status::invalid_argument(format!("server address {addr:?}")));
        }
        let mut st = self.state.lock();
        if !st.servers.contains(&addr) {
            st.servers.push(addr);
            self.persist(&st)?;
        }
        Ok(Response::new(proto::Empty {}))
    }

    async fn servers(
        &self,
        _r: Request<proto::Empty>,
    ) -> Result<Response<proto::ServersReply>, Status> {
        Ok(Response::new(proto::ServersReply {
            servers: self.state.lock().servers.clone(),
        }))
    }

    async fn allocate(
        &self,
        r: Request<proto::AllocateRequest>,
    ) -> Result<Response<Placement>, Status> {
        let r = r.into_inner();
        self.check_lease(r.blob, r.token)?;
        let mut st = self.state.lock();
        let chunks = st.blobs.get(&r.blob);
        let next = chunks
            .and_then(|c| c.keys().next_back())
            .map_or(0, |s| s + 1);
        if r.seq != next {
            return Err(Status::failed_precondition(format!(
                "blob {} places chunk {next} next, not {}",
                r.blob, r.seq
            )));
        }
        if let Some(prev) = chunks.and_then(|c| c.values().next_back()) {
            if prev.sealed_len.is_none() {
                return Err(Status::failed_precondition(format!(
                    "chunk {} of blob {} is not sealed yet",
                    prev.seq, r.blob
                )));
            }
        }
        let healthy: Vec<String> = st
            .servers
            .iter()
            .filter(|s| !r.exclude.contains(s))
            .cloned()
            .collect();
        if healthy.len() < REPLICAS {
            return Err(Status::failed_precondition(format!(
                "{} healthy chunk servers, {REPLICAS} needed",
                healthy.len()
            )));
        }
        // Rotate through the servers so chunks spread out.
        let chunk = st.next;
        st.next += 1;
        let start = (chunk as usize) % healthy.len();
        let servers: Vec<String> = (0..REPLICAS)
            .map(|i| healthy[(start + i) % healthy.len()].clone())
            .collect();
        let p = Placement {
            chunk,
            seq: r.seq,
            servers,
            sealed_len: None,
        };
        st.blobs.entry(r.blob).or_default().insert(r.seq, p.clone());
        self.persist(&st)?;
        Ok(Response::new(p))
    }

    async fn seal_chunk(
        &self,
        r: Request<proto::SealChunkRequest>,
    ) -> Result<Response<proto::Empty>, Status> {
        let r = r.into_inner();
        self.check_lease(r.blob, r.token)?;
        let mut st = self.state.lock();
        let p = st
            .blobs
            .get_mut(&r.blob)
            .and_then(|c| c.values_mut().find(|p| p.chunk == r.chunk))
            .ok_or_else(|| Status::not_found(format!("chunk {} of blob {}", r.chunk, r.blob)))?;
        p.sealed_len = Some(r.length);
        if !r.servers.is_empty() {
            p.servers = r.servers;
        }
        self.persist(&st)?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn lease(
        &self,
        r: Request<proto::LeaseRequest>,
    ) -> Result<Response<proto::LeaseReply>, Status> {
        let r = r.into_inner();
        if r.holder.is_empty() || r.ttl_ms == 0 || r.ttl_ms > 3_600_000 {
            return Err(Status::invalid_argument(
                "a lease needs a holder and a ttl of 1 ms..1 h",
            ));
        }
        let now = std::time::Instant::now();
        let mut leases = self.leases.lock();
        let token = match leases.get(&r.blob) {
            Some(g) if g.expires > now && g.holder != r.holder => {
                return Err(Status::failed_precondition(format!(
                    "blob {} is leased to {} for another {} ms",
                    r.blob,
                    g.holder,
                    (g.expires - now).as_millis()
                )))
            }
            Some(g) if g.expires > now => g.token,
            _ => self
                .tokens
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        };
        let expires = now + std::time::Duration::from_millis(r.ttl_ms);
        leases.insert(
            r.blob,
            Granted {
                holder: r.holder,
                token,
                expires,
            },
        );
        Ok(Response::new(proto::LeaseReply { token }))
    }

    async fn blob(
        &self,
        r: Request<proto::BlobRequest>,
    ) -> Result<Response<proto::BlobReply>, Status> {
        let blob = r.into_inner().blob;
        let st = self.state.lock();
        let chunks = st
            .blobs
            .get(&blob)
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default();
        Ok(Response::new(proto::BlobReply { chunks }))
    }
}

/// Serves the master in `dir` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    dir: &Path,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let master = Arc::new(Master::open(dir)?);
    tonic::transport::Server::builder()
        .add_service(MasterServer::new(master))
        .serve_with_incoming_shutdown(super::nodelay(listener), shutdown)
        .await?;
    Ok(())
}
