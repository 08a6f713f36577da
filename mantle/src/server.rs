//! The server: `mantle serve --data DIR --listen ADDR`.
//!
//! The embedded layout is the default: one process, one TafDB tablet holding the Index and Meta
//! tables (so every operation commits in one phase), a single-voter Raft log with group commit,
//! everything under `DIR`. Each RPC is validated ([`crate::convert`]) and becomes one
//! coprocessor call: one transaction, retried on conflicts inside the store.

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use coprocessor::dedup::RequestId;
use coprocessor::ops::{
    link::Link, lookup::Lookup, mkdir::Mkdir, mknod::Mknod, ns_create::NsCreate, ns_list::NsList,
    readdir::Readdir, readlink::Readlink, rename::Rename, rmdir::Rmdir, setattr::SetAttr,
    stat::Stat, statfs::StatFs, symlink::Symlink, unlink::Unlink, xattr_get::XattrGet,
    xattr_list::XattrList, xattr_remove::XattrRemove, xattr_set::XattrSet,
};
use coprocessor::{Op, Service};
use dsl::ops::{
    call::ScriptCall, list::ScriptList, push::ScriptPush, set::ScriptSet, show::ScriptShow,
};
use indexnode::Cred;
use tafdb::{Db, DbConfig};
use tokio::net::TcpListener;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use crate::auth::Principal;
use crate::convert::{self, Header};
use crate::limits::{Budget, Guarded};
use crate::proto::{self, mantle_server::MantleServer};
use crate::scripts;
use crate::status::{invalid, to_status};

/// The largest request the server decodes; anything bigger is refused before it is parsed.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

/// How long mutation replies are kept for retries, by default.
pub const DEFAULT_REQUEST_RETENTION: Duration = Duration::from_secs(600);

/// What `mantle serve` needs.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where the store keeps its data.
    pub data: PathBuf,
    /// Where to listen (port 0 picks a free port).
    pub listen: SocketAddr,
    /// How long committed versions stay in memory before the flusher writes them to the
    /// engines (ms; default 5000). Tiny values make every operation race the flusher (tests).
    pub mvcc_window_ms: Option<u64>,
    /// How often the flusher runs (ms; default 250).
    pub flush_interval_ms: Option<u64>,
    /// How long the reply of a mutation is kept for retries of the same request id (default
    /// 600 s; clients must stop retrying before, the SDK does after 60 s).
    pub request_retention: Duration,
    /// What clients may hold of the server.
    pub limits: Limits,
    /// Bytes kept free on the data disk (0: the store's default; see `tafdb::space`).
    pub disk_reserve_bytes: u64,
    /// Whether administrative calls (fsck) are accepted from other hosts than the server's.
    pub allow_remote_admin: bool,
    /// How a cluster node starts (`None`: the embedded single node, or a cluster node
    /// restarting with the identity in its data directory).
    pub cluster: Option<crate::cluster::Mode>,
    /// Raft heartbeat interval of a cluster node's groups, ms.
    pub raft_heartbeat_ms: u64,
    /// Raft election timeout of a cluster node's groups (the low end; the high end is twice
    /// it), ms.
    pub raft_election_ms: u64,
    /// Access tokens (`None`: open, see [`crate::auth`]).
    pub tokens: Option<Arc<crate::auth::Tokens>>,
    /// How a new store's key space is cut into tablets (an existing store keeps its own).
    pub layout: Layout,
    /// The address the other nodes and clients reach this node at, if not the bound one (a
    /// proxy, a NAT, a name).
    pub advertise: Option<String>,
    /// The local address this node's connections to its peers start from (default: the
    /// system's choice).
    pub peer_source_ip: Option<std::net::IpAddr>,
    /// Voters per group in a cluster; further nodes are spares (learners of every group).
    pub replicas: usize,
    /// How long a voter may not answer before the first tablet's leader replaces it with a
    /// spare (`None`: never).
    pub replace_dead_after: Option<Duration>,
    /// The TopDirPathCache (`None`: off).
    pub path_cache: Option<indexnode::CacheConfig>,
    /// The limits of every script call (`mantle script`; see docs/dsl.md).
    pub script_limits: dsl::Limits,
}

/// How a new store's key space is cut into tablets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    /// One tablet holds every table (MantleX): every operation is one-phase.
    #[default]
    Single,
    /// The system table, the Index table (the IndexNode) and the Meta table in tablets of
    /// their own, which a cluster can lead from different nodes; operations that touch
    /// several commit in two phases.
    Tables,
}

impl Layout {
    /// The split keys of the layout.
    pub fn split_keys(self) -> Vec<Vec<u8>> {
        match self {
            Layout::Single => Vec::new(),
            Layout::Tables => vec![vec![1], vec![2]],
        }
    }
}

/// What clients may hold of the server (see [`crate::limits`]); `docs/operations.md` lists
/// the flags.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connections open at once; more are accepted and closed at once.
    pub max_connections: usize,
    /// Concurrent requests (HTTP/2 streams) on one connection.
    pub max_streams_per_connection: u32,
    /// How long a new connection has to send the HTTP/2 preface.
    pub handshake_timeout: Duration,
    /// How long one request may take, reading its body included.
    pub request_timeout: Duration,
    /// Request bytes in flight, summed over every connection.
    pub max_inflight_request_bytes: usize,
    /// How often an idle connection is pinged; one that does not answer within the same time
    /// is closed.
    pub keepalive: Duration,
    /// How long a shutdown waits for requests in flight before it closes every connection.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 4096,
            max_streams_per_connection: 1024,
            handshake_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_inflight_request_bytes: 256 << 20,
            keepalive: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl ServerConfig {
    /// A server of `data` on `listen` with the store's defaults.
    pub fn new(data: PathBuf, listen: SocketAddr) -> ServerConfig {
        ServerConfig {
            data,
            listen,
            mvcc_window_ms: None,
            flush_interval_ms: None,
            request_retention: DEFAULT_REQUEST_RETENTION,
            limits: Limits::default(),
            disk_reserve_bytes: 0,
            allow_remote_admin: false,
            cluster: None,
            raft_heartbeat_ms: 50,
            raft_election_ms: 250,
            tokens: None,
            layout: Layout::Single,
            advertise: None,
            peer_source_ip: None,
            replicas: 3,
            replace_dead_after: Some(Duration::from_secs(30)),
            path_cache: Some(indexnode::CacheConfig::default()),
            script_limits: dsl::Limits::default(),
        }
    }

    /// The store's configuration.
    pub fn store(&self) -> DbConfig {
        let mut cfg = DbConfig::new(&self.data);
        cfg.split_keys = self.layout.split_keys();
        if let Some(ms) = self.mvcc_window_ms {
            cfg.tablet.window_ms = ms;
        }
        if let Some(ms) = self.flush_interval_ms {
            cfg.tablet.flush_interval_ms = ms;
        }
        cfg.disk_reserve_bytes = self.disk_reserve_bytes;
        // A server keeps half its reserve in a ballast file (see `tafdb::space`).
        cfg.disk_ballast = true;
        cfg
    }
}

/// Why the server stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The store failed to open or run.
    #[error("store: {0}")]
    Store(#[from] tafdb::Error),
    /// The listening socket failed.
    #[error("listen: {0}")]
    Io(#[from] std::io::Error),
    /// The gRPC server failed.
    #[error("grpc: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Creating the default namespace failed.
    #[error("default namespace: {0}")]
    Namespace(#[from] coprocessor::FsError),
    /// Joining or starting a cluster failed.
    #[error("cluster: {0}")]
    Cluster(String),
}

/// Binds `config.listen` and serves until `shutdown` resolves.
pub async fn run(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let listener = TcpListener::bind(config.listen).await?;
    serve(listener, &config, |_| {}, shutdown).await
}

/// Serves the store of `config` on `listener` (its `listen` is not used) until `shutdown`
/// resolves; `ready` hears the bound address once the store is open.
pub async fn serve(
    listener: TcpListener,
    config: &ServerConfig,
    ready: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let addr = listener.local_addr()?;
    // What the cluster records for this node.
    let public = config.advertise.clone().unwrap_or_else(|| addr.to_string());
    let mut store = config.store();
    let data = store.dir.clone();
    std::fs::create_dir_all(&data)?;
    // A cluster node: its identity, and the groups' first membership on a new cluster.
    let identity = crate::cluster::load_identity(&data)?;
    // With access tokens, the nodes present the file's node secret to each other.
    let node_secret = config
        .tokens
        .as_ref()
        .and_then(|t| t.node_secret().map(str::to_string));
    if config.tokens.is_some()
        && node_secret.is_none()
        && (config.cluster.is_some() || identity.is_some())
    {
        return Err(ServerError::Cluster(
            "a cluster node with access tokens needs a node entry in the token file \
             (NAME node SECRET), the same on every node"
                .into(),
        ));
    }
    let mut joined_via = None;
    let node = match (&config.cluster, identity) {
        (_, Some(node)) => {
            if config.cluster.is_some() {
                tracing::info!(node, "this data directory already belongs to a cluster node: rejoining with its identity");
            }
            if let Some(crate::cluster::Mode::Join(m)) = &config.cluster {
                joined_via = Some(m.clone());
            }
            Some((node, None))
        }
        (Some(crate::cluster::Mode::Init), None) => {
            let mut members = std::collections::BTreeMap::new();
            members.insert(1u64, openraft::BasicNode::new(public.clone()));
            crate::cluster::save_identity(&data, 1)?;
            Some((1, Some(members)))
        }
        (Some(crate::cluster::Mode::Join(member)), None) => {
            let node = crate::cluster::join(member, &public, 0, node_secret.as_deref())
                .await
                .map_err(|s| {
                    ServerError::Cluster(format!("joining through {member}: {}", s.message()))
                })?;
            crate::cluster::save_identity(&data, node)?;
            joined_via = Some(member.clone());
            Some((node, None))
        }
        (None, None) => None,
    };
    let peers = match (&node, &node_secret) {
        (None, _) => None,
        (Some((n, _)), None) => Some(tafdb::raft::Peers::new(*n)),
        (Some((n, _)), Some(s)) => {
            Some(tafdb::raft::Peers::new(*n).with_auth(&crate::auth::bearer(s))?)
        }
    };
    let peers = peers.map(|p| p.with_source_ip(config.peer_source_ip));
    let router = tafdb::raft::RaftRouter::new();
    if let (Some((n, init)), Some(peers)) = (&node, &peers) {
        store.cluster = Some(tafdb::ClusterConfig {
            node: *n,
            peers: peers.clone(),
            router: router.clone(),
            init: init.clone(),
            heartbeat_ms: config.raft_heartbeat_ms,
            election_ms: config.raft_election_ms,
        });
        tracing::info!(node = n, %addr, "cluster node");
    }
    let first_start = identity.is_none();
    let db = Db::open(store).await?;
    let svc = Arc::new(Service::open_with(
        db.clone(),
        &coprocessor::service::Options {
            path_cache: config.path_cache,
        },
    ));
    dsl::install(&svc, config.script_limits.clone())
        .map_err(|e| ServerError::Cluster(format!("scripts: {e}")))?;
    match &node {
        None => ensure_default_namespace(&svc).await?,
        // The first node of a new cluster makes the default namespace once it leads (at once:
        // it is the only member).
        Some((1, _)) if first_start => {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !db.is_serving() {
                if std::time::Instant::now() > deadline {
                    return Err(ServerError::Cluster(
                        "the first node did not come to lead its tablets".into(),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            ensure_default_namespace(&svc).await?;
        }
        Some(_) => {}
    }
    // A joined node asks to become a voter once it has caught up; a restarted one whose
    // address changed tells the leader where it is now.
    if let Some((n, _)) = &node {
        let n = *n;
        if let Some(member) = joined_via.clone() {
            tokio::spawn(crate::cluster::promote(member, n, node_secret.clone()));
        }
        if !first_start {
            let db = db.clone();
            let me = public.clone();
            let secret = node_secret.clone();
            tokio::spawn(async move {
                let recorded = crate::cluster::member(&db, |id| id == n).map(|m| m.1);
                let other = crate::cluster::member(&db, |id| id != n).map(|m| m.1);
                if let (Some(recorded), Some(other)) = (recorded, other) {
                    if recorded != me {
                        match crate::cluster::join(&other, &me, n, secret.as_deref()).await {
                            Ok(_) => {
                                tracing::info!(node = n, addr = %me, "recorded this node's new address")
                            }
                            Err(s) => {
                                tracing::warn!(node = n, error = %s.message(), "cannot record this node's new address")
                            }
                        }
                    }
                }
            });
        }
    }
    let retention = config.request_retention;
    let expiry = tokio::spawn(coprocessor::dedup::expire_forever(
        db.clone(),
        retention,
        (retention / 10).max(Duration::from_secs(1)),
    ));
    tracing::info!(%addr, data = %data.display(), "mantle is serving");
    match &config.tokens {
        Some(_) => tracing::info!("access tokens in force: every call needs one"),
        None => tracing::warn!(
            "no access tokens (--tokens): any client that reaches this port may act as any user; \
             administrative calls are accepted from this host only"
        ),
    }
    ready(addr);
    let limits = config.limits.clone();
    let api = MantleServer::new(Api {
        svc: svc.clone(),
        remote_admin: config.allow_remote_admin,
        fsck_spill: data.clone(),
    })
    .max_decoding_message_size(MAX_REQUEST_BYTES)
    .max_encoding_message_size(64 << 20);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let handshake = limits.handshake_timeout;
    let refused = std::sync::atomic::AtomicU64::new(0);
    let incoming = TcpListenerStream::new(listener).filter_map(move |conn| {
        let conn = match conn {
            Ok(c) => c,
            Err(e) => return Some(Err(e)),
        };
        // Small RPCs must not wait for Nagle's algorithm and the peer's delayed ACK (40 ms).
        if let Err(e) = conn.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
        match Guarded::admit(conn, &slots, handshake) {
            Some(g) => Some(Ok(g)),
            None => {
                let n = refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n.is_power_of_two() {
                    tracing::warn!(
                        refused = n + 1,
                        max = limits.max_connections,
                        "connection limit reached: closing new connections"
                    );
                }
                None
            }
        }
    });
    // A cluster node keeps the groups' voters alive while it leads the first tablet.
    let (stop_placement, placement_stop) = tokio::sync::watch::channel(false);
    let promotions = Arc::new(tokio::sync::Mutex::new(()));
    let placement = node.as_ref().map(|(n, _)| {
        tokio::spawn(crate::cluster::place(
            db.clone(),
            *n,
            crate::cluster::Placement {
                replicas: config.replicas.max(1),
                replace_after: config.replace_dead_after,
            },
            promotions.clone(),
            placement_stop,
        ))
    });
    let budget = Budget::new(limits.max_inflight_request_bytes, MAX_REQUEST_BYTES);
    let (stopping_tx, stopping) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = stopping_tx.send(());
    };
    let server = tonic::transport::Server::builder()
        .timeout(limits.request_timeout)
        .max_concurrent_streams(limits.max_streams_per_connection)
        .http2_keepalive_interval(Some(limits.keepalive))
        .http2_keepalive_timeout(Some(limits.keepalive))
        .http2_max_header_list_size(64 << 10)
        .layer(tower::util::MapRequestLayer::new(move |req| {
            budget.wrap(req)
        }))
        .layer(tower::util::option_layer(
            config
                .tokens
                .clone()
                .map(|tokens| crate::auth::AuthLayer { tokens }),
        ))
        .layer(tower::util::option_layer(peers.clone().map(|peers| {
            crate::cluster::ForwardLayer {
                db: db.clone(),
                peers,
            }
        })))
        .add_service(api)
        .add_service(crate::proto::cluster_server::ClusterServer::new(
            crate::cluster::ClusterApi {
                db: db.clone(),
                node: node.as_ref().map_or(0, |(n, _)| *n),
                remote_admin: config.allow_remote_admin,
                replicas: config.replicas,
                joining: tokio::sync::Mutex::new(()),
                promotions,
                svc: svc.clone(),
            },
        ))
        .add_service(router.service())
        .serve_with_incoming_shutdown(incoming, signal);
    // A graceful shutdown waits for every connection, and one idle or half-sent connection
    // would hold it forever: after the grace period the remaining connections are closed.
    let grace = limits.shutdown_grace;
    let result = tokio::select! {
        r = server => r,
        () = async move {
            let _ = stopping.await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(?grace, "connections still open after the shutdown grace period: closing them");
            Ok(())
        }
    };
    tracing::info!("shutting down the store");
    expiry.abort();
    let _ = stop_placement.send(true);
    if let Some(p) = placement {
        let _ = p.await;
    }
    db.shutdown().await;
    result.map_err(Into::into)
}

/// The uid and gid this process runs as.
pub fn process_cred() -> Cred {
    match std::fs::metadata("/proc/self") {
        Ok(m) => Cred {
            uid: m.uid(),
            gid: m.gid(),
            groups: Vec::new(),
        },
        Err(_) => Cred::root(),
    }
}

async fn ensure_default_namespace(svc: &Service) -> Result<(), ServerError> {
    if svc.call(&NsList {}).await?.is_empty() {
        let info = svc
            .call(&NsCreate {
                name: crate::DEFAULT_NAMESPACE.as_bytes().to_vec(),
                cred: process_cred(),
                mode: 0o755,
            })
            .await?;
        tracing::info!(root = info.root, "created namespace \"default\"");
    }
    Ok(())
}

struct Api {
    svc: Arc<Service>,
    /// Whether administrative calls are accepted from other hosts.
    remote_admin: bool,
    /// Where fsck spills its sort runs (the data directory: the system's temporary directory
    /// may be a small tmpfs).
    fsck_spill: PathBuf,
}

impl Api {
    /// Admits an administrative call. With access tokens: an admin token, from any host.
    /// Without: root credentials, from the server's own host unless remote administration is
    /// allowed (credentials are then the caller's word; the loopback check is what keeps
    /// other hosts out).
    fn admin<T>(&self, r: &Request<T>, cred: Option<proto::Cred>) -> Result<(), Status> {
        let p = Principal::of(r);
        if p.is_token() {
            return match p.may_administer(false) {
                true => Ok(()),
                false => Err(to_status(&coprocessor::FsError::new(
                    coprocessor::Errno::EPERM,
                    "administrative calls need an admin token",
                ))),
            };
        }
        let local = r.remote_addr().is_some_and(|a| a.ip().is_loopback());
        if !local && !self.remote_admin {
            return Err(to_status(&coprocessor::FsError::new(
                coprocessor::Errno::EPERM,
                "administrative calls are accepted from the server's own host only \
                 (mantle serve --allow-remote-admin)",
            )));
        }
        let cred = convert::Cred2::try_from(cred)?.0;
        if !cred.is_root() {
            return Err(to_status(&coprocessor::FsError::new(
                coprocessor::Errno::EPERM,
                "administrative calls need root",
            )));
        }
        Ok(())
    }

    async fn call<R: Op>(&self, op: R, id: Option<RequestId>) -> Result<R::Reply, Status> {
        self.svc.call_once(&op, id).await.map_err(|e| to_status(&e))
    }
}

/// The caller's principal and the request.
fn split<T>(r: Request<T>) -> (Principal, T) {
    (Principal::of(&r), r.into_inner())
}

/// The request's header, acting as the user the caller's token allows.
fn header(p: &Principal, h: Option<proto::Header>) -> Result<Header, Status> {
    let mut h = Header::try_from(h)?;
    h.cred = p.cred(h.cred);
    Ok(h)
}

fn attr_reply(a: metastore::Attr) -> Response<proto::AttrReply> {
    Response::new(proto::AttrReply {
        attr: Some(a.into()),
    })
}

fn perm(mode: u32) -> Result<u32, Status> {
    if mode & !0o7777 != 0 {
        return Err(invalid(format!(
            "mode {mode:o} has more than permission bits"
        )));
    }
    Ok(mode)
}

type FsckStream = ReceiverStream<Result<proto::FsckEvent, Status>>;

#[tonic::async_trait]
impl proto::mantle_server::Mantle for Api {
    async fn stat(
        &self,
        r: Request<proto::StatRequest>,
    ) -> Result<Response<proto::AttrReply>, Status> {
        let (p, r) = split(r);
        let h = header(&p, r.header)?;
        let a = self
            .call(
                Stat {
                    ns: h.ns,
                    cred: h.cred,
                    obj: convert::obj(r.obj)?,
                },
                h.request,
            )
            .await?;
        Ok(attr_reply(a))
    }

    async fn mkdir(
        &self,
        r: Request<proto::MkdirRequest>,
    ) -> Result<Response<proto::AttrReply>, Status> {
        let (p, r) = split(r);
        let h = header(&p, r.header)?;
        let op = Mkdir {
            ns: h.ns,
            cred: h.cred,
            at: convert::loc(r.at)?,
            mode: perm(r.mode)?,
        };
        Ok(attr_reply(self.call(op, h.request).await?))
    }

    async fn mknod(
        &self,
        r: Request<proto::MknodRequest>,
    ) -> Result<Response<proto::AttrReply>, Status> {
        let (p, r) = split(r);
        let h = header(&p, r.header)?;
        let op = Mknod {
            ns: h.ns,
            cred: h.cred,
            at: convert::loc(r.at)?,
            mode: r.mode,
            rdev: r.rdev,
        };
        Ok(attr_reply(self.call(op, h.request).await?))
    }

    async fn symlink(
        &self,
        r: Request<proto::SymlinkRequest>,
    ) -> Result<Response<proto::AttrReply>, Status> {
        let (p, r) = split(r);
        let h = header(&p, r.header)?;
        let op = Symlink {
            ns: h.ns,
            cred: h.cred,
            at: convert::loc(r.at)?,
            target: r.target,
        };
        Ok(attr_reply(self.call(op, h.request).await?))
    }

    async fn link(
        &self,
        r: Request<proto::LinkRequest>,
    ) -> Result<Response<proto::AttrReply>, Status> {
        let (p, r) = split(r);
        let h = header(&p, r.header)?;
        let op = Link {
            ns: h.ns,
            cred: h.cred,
            target: convert::obj(r.target)?,
            at: convert::loc(r.at)?,
        };
        Ok(attr_reply(self.call(op, h.request).await?))
    }

    async fn unlink(
        &self,
        r: Request<proto::UnlinkRequest>,
    ) -> Result<Response<proto::Empty>, Status> {
        let (p, r) = split(r);
        let h = header(&p, r.header)?;
        self.call(
            Unlink {
                ns: h.ns,
                cred: h.cred,
                at: convert::loc(r.at)?,
            },
            h.request,
        )
        .await?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn rmdir(
        &self,
        r: Request<proto::RmdirRequest>,
    ) -> Result<Response<proto::Empty>, Status> {
        let (p, r) = split(r);
        let h = header(&p, r.header)?;
        self.call(
            Rmdir {
                ns: h.ns,
                cred: h.cred,
                at: convert::loc(r.at)?,
            },
            h.request,
        )
        .await?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn rename(
        &self,
        r: Request<proto::RenameRequest>,
    ) -> Result<Response<proto::Empty>, Status> {
        let (p, r) = split(r);
        let h = header(&p, r.header)?;
        let op = Rename {
            ns: h.ns,
            cred: h.cred,
            from: convert::loc(r.from)?,
            to: convert::loc(r.to)?,
            flags: r.flags,
        };
        self.call(op, h.request).await?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn readlink(
        &self,
        r: Request<proto::ReadlinkRequest>,
    ) -> Result<Response<proto::ReadlinkReply>, Status> {
        let (p, r) = split(r);
        let h = header(&p, r.header)?;
        let target = self
            .call(
                Readlink {
                    ns: h.ns,
                    cred: h.cred,
                    obj: convert::obj(r.obj)?,
                },
                h.request,
            )
            .await?;
        Ok(Response::new(proto::ReadlinkReply { target }))
    }

    async fn lookup(
        &self,
        r: Request<proto::LookupRequest>,
    ) -> Result<Response<proto::DirReply>, Status> {
        let (p, r) = split(r);
        let h = header(&p, r.header)?;
        convert::check_path(&r.path)?;
        let e = self
            .call(
                Lookup {
                    ns: h.ns,
                    cred: h.cred,
                    path: r.path,
                },
                h.request,
            )
            .await?;
        Ok(Response::new(proto::DirReply {
            id: e.id,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
        }))
    }

    async fn readdir(
        &self,
        r: Request<proto::ReaddirRequest>,
    ) -> Result<Response<proto::ReaddirReply>, Status> {
        let (p, r) = split(r);
        let h = header(&p, r.header)?;
        let op = Readdir {
            ns: h.ns,
            cred: h.cred,
            dir: convert::obj(r.dir)?,
            after: r.after,
            limit: r.limit,
            plus: r.plus,
        };
        let page = self.call(op, h.request).await?;
        Ok(Response::new(proto::ReaddirReply {
            entries: page.entries.into_iter().map(Into::into).collect(),
            next: page.next,
        }))
    }

    async fn set_attr(
        &self,
        r: Request<proto::SetAttrRequest>,
    ) -> Result<Response<proto::AttrReply>, Status> {
        let (p, r) = split(r);
        let h = header(&p, r.header)?;
        let op = SetAttr {
            ns: h.ns,
            cred: h.cred,
            obj: Some(convert::obj(r.obj)?),
            mode: r.mode.map(perm).transpose()?,
            uid: r.uid,
            gid: r.gid,
            size: r.size,
            atime: convert::time_set(r.atime)?,
            mtime: convert::time_set(r.mtime)?,
        };
        Ok(attr_reply(self.call(op, h.request).await?))
    }

    async fn stat_fs(
        &self,
        r: Request<proto::StatFsRequest>,
    ) -> Result<Response<proto::StatFsReply>, Status> {
        let (p, r) = split(r);
        let h = header(&p, r.header)?;
        let s = self
            .call(
                StatFs {
                    ns: h.ns,
                    cred: h.cred,
                },
                h.request,
            )
            .await?;
        Ok(Response::new(s.into()))
    }

    async fn xattr_set(
        &self,
        r: Request<proto::XattrSetRequest>,
    ) -> Result<Response<proto::Empty>, Status> {
        let (p, r) = split(r);
        let h = header(&p, r.header)?;
        let op = XattrSet {
            ns: h.ns,
            cred: h.cred,
            obj: convert::obj(r.obj)?,
            name: r.name,
            value: r.value,
            flags: r.flags,
        };
        self.call(op, h.request).await?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn xattr_get(
        &self,
        r: Request<proto::XattrGetRequest>,
    ) -> Result<Response<proto::XattrGetReply>, Status> {
        let (p, r) = split(r);
        let h = header(&p, r.header)?;
        let value = self
            .call(
                XattrGet {
                    ns: h.ns,
                    cred: h.cred,
                    obj: convert::obj(r.obj)?,
                    name: r.name,
                },
                h.request,
            )
            .await?;
        Ok(Response::new(proto::XattrGetReply { value }))
    }

    async fn xattr_list(
        &self,
        r: Request<proto::XattrListRequest>,
    ) -> Result<Response<proto::XattrListReply>, Status> {
        let (p, r) = split(r);
        let h = header(&p, r.header)?;
        let names = self
            .call(
                XattrList {
                    ns: h.ns,
                    cred: h.cred,
                    obj: convert::obj(r.obj)?,
                },
                h.request,
            )
            .await?;
        Ok(Response::new(proto::XattrListReply { names }))
    }

    async fn xattr_remove(
        &self,
        r: Request<proto::XattrRemoveRequest>,
    ) -> Result<Response<proto::Empty>, Status> {
        let (p, r) = split(r);
        let h = header(&p, r.header)?;
        self.call(
            XattrRemove {
                ns: h.ns,
                cred: h.cred,
                obj: convert::obj(r.obj)?,
                name: r.name,
            },
            h.request,
        )
        .await?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn ns_create(
        &self,
        r: Request<proto::NsCreateRequest>,
    ) -> Result<Response<proto::NsInfo>, Status> {
        let (p, r) = split(r);
        let id = convert::request_id(r.request.clone())?;
        let mut op = convert::ns_create(r)?;
        op.cred = p.cred(op.cred);
        Ok(Response::new(self.call(op, id).await?.into()))
    }

    async fn ns_list(
        &self,
        _r: Request<proto::NsListRequest>,
    ) -> Result<Response<proto::NsListReply>, Status> {
        let list = self.call(NsList {}, None).await?;
        Ok(Response::new(proto::NsListReply {
            namespaces: list.into_iter().map(Into::into).collect(),
        }))
    }

    async fn script_call(
        &self,
        r: Request<proto::ScriptCallRequest>,
    ) -> Result<Response<proto::ScriptCallReply>, Status> {
        let (p, r) = split(r);
        let h = header(&p, r.header)?;
        let op = ScriptCall {
            ns: h.ns,
            cred: h.cred,
            script: r.script,
            function: r.function,
            args: scripts::args(&r.args_json)?,
        };
        let v = self.call(op, h.request).await?;
        Ok(Response::new(proto::ScriptCallReply {
            json: scripts::to_json(&v).to_string(),
        }))
    }

    async fn script_push(
        &self,
        r: Request<proto::ScriptPushRequest>,
    ) -> Result<Response<proto::ScriptInfo>, Status> {
        let cred = r.get_ref().header.as_ref().and_then(|h| h.cred.clone());
        self.admin(&r, cred)?;
        let (p, r) = split(r);
        let h = header(&p, r.header)?;
        let op = ScriptPush {
            cred: h.cred,
            name: r.name,
            source: r.source,
            hooks: scripts::hooks(h.ns, r.set_hooks, r.hooks),
        };
        Ok(Response::new(self.call(op, h.request).await?.into()))
    }

    async fn script_set(
        &self,
        r: Request<proto::ScriptSetRequest>,
    ) -> Result<Response<proto::ScriptInfo>, Status> {
        let cred = r.get_ref().header.as_ref().and_then(|h| h.cred.clone());
        self.admin(&r, cred)?;
        let (p, r) = split(r);
        let h = header(&p, r.header)?;
        let op = ScriptSet {
            cred: h.cred,
            name: r.name,
            version: (r.version > 0).then_some(r.version),
        };
        Ok(Response::new(self.call(op, h.request).await?.into()))
    }

    async fn script_list(
        &self,
        _r: Request<proto::ScriptListRequest>,
    ) -> Result<Response<proto::ScriptListReply>, Status> {
        let list = self.call(ScriptList {}, None).await?;
        Ok(Response::new(proto::ScriptListReply {
            scripts: list.into_iter().map(Into::into).collect(),
        }))
    }

    async fn script_show(
        &self,
        r: Request<proto::ScriptShowRequest>,
    ) -> Result<Response<proto::ScriptShowReply>, Status> {
        let r = r.into_inner();
        let op = ScriptShow {
            name: r.name,
            version: (r.version > 0).then_some(r.version),
        };
        Ok(Response::new(self.call(op, None).await?.into()))
    }

    type FsckStream = FsckStream;

    async fn fsck(&self, r: Request<proto::FsckRequest>) -> Result<Response<FsckStream>, Status> {
        self.admin(&r, r.get_ref().cred.clone())?;
        // Progress events are dropped when the client reads slowly (the report is not); a
        // client that goes away cancels the check.
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let db = self.svc.db().clone();
        let opts = coprocessor::fsck::Options {
            spill_dir: self.fsck_spill.clone(),
            ..Default::default()
        };
        tokio::spawn(async move {
            let progress_tx = tx.clone();
            let progress = move |p: coprocessor::fsck::Progress| {
                let _ = progress_tx.try_send(Ok(proto::FsckEvent {
                    kind: Some(proto::fsck_event::Kind::Progress(proto::FsckProgress {
                        phase: p.phase.to_string(),
                        done: p.done,
                        total: p.total,
                    })),
                }));
            };
            let event = tokio::select! {
                r = coprocessor::fsck::check_with(&db, &opts, &progress) => match r {
                    Ok(report) => Ok(proto::FsckEvent {
                        kind: Some(proto::fsck_event::Kind::Report(report.into())),
                    }),
                    Err(e) => Err(to_status(&coprocessor::FsError::from_store(&e))),
                },
                () = tx.closed() => return,
            };
            let _ = tx.send(event).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
