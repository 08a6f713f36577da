//! The Raft transport between nodes, over gRPC.
//!
//! A node runs one `Raft` gRPC service ([`RaftRouter`]) for every tablet group it hosts: each
//! message names its group, and the router hands it to that group's Raft. A node keeps one
//! HTTP/2 channel per peer ([`Peers`]), shared by all its groups, so a thousand groups cost a
//! thousand streams on one connection, not a thousand connections. The body of a message is
//! openraft's own request or reply in bincode; protobuf is only the envelope.
//!
//! Errors keep openraft's distinctions, so that its own backoff and leader logic apply:
//! - the peer cannot be reached (connection refused, reset, the group not hosted there yet):
//!   [`Unreachable`], which openraft backs off from;
//! - no answer within the RPC's hard TTL: [`RPCError::Timeout`];
//! - the peer's Raft refused (a higher vote, a fatal error): [`RPCError::RemoteError`];
//! - anything else (a message that does not decode): [`NetworkError`].

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use super::{Raft, TypeConfig};

#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub(crate) mod proto {
    tonic::include_proto!("tafdb.raft.v1");
}

/// The largest Raft message, either way: a batch of entries or a snapshot chunk.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The channels from this node to the others, one per peer, shared by every group.
#[derive(Clone, Debug)]
pub struct Peers {
    me: u64,
    channels: Arc<DashMap<u64, (String, Channel)>>,
    /// The `authorization` value this node's Raft messages carry, if the nodes require one.
    auth: Option<tonic::metadata::AsciiMetadataValue>,
    /// The local address connections to peers start from (`None`: the system's choice).
    source: Option<std::net::IpAddr>,
}

impl Peers {
    /// The peers of node `me`.
    pub fn new(me: u64) -> Peers {
        Peers {
            me,
            channels: Arc::new(DashMap::new()),
            auth: None,
            source: None,
        }
    }

    /// The same peers, sending `value` as the `authorization` metadata of every Raft message
    /// (the nodes' shared credential; this crate does not interpret it).
    pub fn with_auth(mut self, value: &str) -> crate::error::Result<Peers> {
        let mut v: tonic::metadata::AsciiMetadataValue = value.parse().map_err(|_| {
            crate::error::Error::InvalidArgument("a peer credential must be printable ASCII".into())
        })?;
        v.set_sensitive(true);
        self.auth = Some(v);
        Ok(self)
    }

    /// The same peers, connecting from local address `ip` (`None`: the system's choice): a
    /// host with several addresses, or loopback nodes told apart by their source address
    /// (the partition tests).
    pub fn with_source_ip(mut self, ip: Option<std::net::IpAddr>) -> Peers {
        self.source = ip;
        self
    }

    /// The credential this node's messages carry, if any.
    pub(crate) fn auth(&self) -> Option<&tonic::metadata::AsciiMetadataValue> {
        self.auth.as_ref()
    }

    /// This node's id.
    pub fn me(&self) -> u64 {
        self.me
    }

    /// The channel to node `id` at `addr` (a new one if the node moved). Other services of
    /// the node (a proxy forwarding client calls to a leader) share it.
    pub fn channel(&self, id: u64, addr: &str) -> Result<Channel, Unreachable> {
        if let Some(c) = self.channels.get(&id) {
            if c.0 == addr {
                return Ok(c.1.clone());
            }
        }
        let url = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        let channel = Endpoint::from_shared(url)
            .map_err(|e| Unreachable::new(&e))?
            .connect_timeout(Duration::from_secs(1))
            .local_address(self.source)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10))
            .connect_lazy();
        self.channels
            .insert(id, (addr.to_string(), channel.clone()));
        Ok(channel)
    }
}

/// The [`RaftNetworkFactory`] of one group on a node.
#[derive(Clone, Debug)]
pub struct GrpcNetwork {
    group: u64,
    peers: Peers,
}

impl GrpcNetwork {
    /// The network of group `group`, over `peers`.
    pub fn new(group: u64, peers: Peers) -> GrpcNetwork {
        GrpcNetwork { group, peers }
    }
}

/// One group's connection to one peer.
#[derive(Debug)]
pub struct GrpcConnection {
    group: u64,
    target: u64,
    addr: String,
    peers: Peers,
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = GrpcConnection;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> GrpcConnection {
        GrpcConnection {
            group: self.group,
            target,
            addr: node.addr.clone(),
            peers: self.peers.clone(),
        }
    }
}

type RpcResult<T, E> = Result<T, RPCError<u64, BasicNode, RaftError<u64, E>>>;

/// A transport failure as openraft wants it: the peer is unreachable (it backs off) or the
/// exchange failed otherwise.
fn status_error<E: std::error::Error>(s: &Status) -> RPCError<u64, BasicNode, RaftError<u64, E>> {
    match s.code() {
        // Connection refused or reset, DNS, TLS: tonic reports them as Unavailable (or Unknown
        // for a transport error mid-call). A group the peer does not host (yet) is NotFound.
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::NotFound => {
            RPCError::Unreachable(Unreachable::new(s))
        }
        _ => RPCError::Network(NetworkError::new(s)),
    }
}

impl GrpcConnection {
    async fn call<Req: Serialize, Resp: DeserializeOwned, E>(
        &self,
        kind: RPCTypes,
        req: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        E: std::error::Error + DeserializeOwned,
    {
        let body = bincode::serialize(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let channel = self
            .peers
            .channel(self.target, &self.addr)
            .map_err(RPCError::Unreachable)?;
        let mut client = proto::raft_client::RaftClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let mut request = tonic::Request::new(proto::RaftRequest {
            group: self.group,
            from: self.peers.me,
            body,
        });
        if let Some(a) = &self.peers.auth {
            request.metadata_mut().insert("authorization", a.clone());
        }
        let ttl = option.hard_ttl();
        let reply = tokio::time::timeout(ttl, async {
            match kind {
                RPCTypes::AppendEntries => client.append(request).await,
                RPCTypes::Vote => client.vote(request).await,
                RPCTypes::InstallSnapshot => client.snapshot(request).await,
            }
        })
        .await;
        let reply = match reply {
            Err(_) => {
                return Err(RPCError::Timeout(Timeout {
                    action: kind,
                    id: self.peers.me,
                    target: self.target,
                    timeout: ttl,
                }))
            }
            Ok(Err(status)) => return Err(status_error(&status)),
            Ok(Ok(r)) => r.into_inner(),
        };
        let answer: Result<Resp, RaftError<u64, E>> = bincode::deserialize(&reply.body)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for GrpcConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>, openraft::error::Infallible> {
        self.call(RPCTypes::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        self.call(RPCTypes::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>, openraft::error::Infallible> {
        self.call(RPCTypes::Vote, &rpc, &option).await
    }
}

/// The receiving end: the groups this node hosts, by id.
#[derive(Clone, Default)]
pub struct RaftRouter {
    groups: Arc<DashMap<u64, Raft>>,
    /// Senders whose messages are refused as if the network dropped them (fault injection
    /// for partition tests; empty in service).
    blocked: Arc<DashMap<u64, ()>>,
    /// The database whose tablets answer other nodes' transaction steps.
    db: Arc<parking_lot::RwLock<std::sync::Weak<crate::db::Db>>>,
}

impl std::fmt::Debug for RaftRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftRouter")
            .field("groups", &self.groups.len())
            .finish()
    }
}

impl RaftRouter {
    /// An empty router.
    pub fn new() -> RaftRouter {
        RaftRouter::default()
    }

    /// Delivers group `group`'s messages to `raft` from now on.
    pub fn register(&self, group: u64, raft: Raft) {
        self.groups.insert(group, raft);
    }

    /// Stops delivering group `group`'s messages (they are answered `NotFound`, which the
    /// sender treats as unreachable).
    pub fn unregister(&self, group: u64) {
        self.groups.remove(&group);
    }

    /// Refuses (or, with `false`, accepts again) every message from node `from`, which then
    /// finds this node unreachable: a network partition, for tests.
    pub fn block_from(&self, from: u64, blocked: bool) {
        if blocked {
            self.blocked.insert(from, ());
        } else {
            self.blocked.remove(&from);
        }
    }

    /// Answers other nodes' transaction steps with `db`'s tablets from now on.
    pub(crate) fn serve_db(&self, db: &Arc<crate::db::Db>) {
        *self.db.write() = Arc::downgrade(db);
    }

    /// The gRPC service to add to the node's server.
    pub fn service(&self) -> proto::raft_server::RaftServer<RaftRouter> {
        proto::raft_server::RaftServer::new(self.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn check_blocked(&self, from: u64) -> Result<(), Status> {
        if self.blocked.contains_key(&from) {
            return Err(Status::unavailable(format!(
                "messages from node {from} are blocked"
            )));
        }
        Ok(())
    }

    fn route<Req: DeserializeOwned>(
        &self,
        r: Request<proto::RaftRequest>,
    ) -> Result<(Raft, Req), Status> {
        let r = r.into_inner();
        self.check_blocked(r.from)?;
        let raft = self
            .groups
            .get(&r.group)
            .map(|g| g.clone())
            .ok_or_else(|| Status::not_found(format!("group {} is not hosted here", r.group)))?;
        let req = bincode::deserialize(&r.body).map_err(|e| {
            Status::invalid_argument(format!(
                "group {} message from node {}: {e}",
                r.group, r.from
            ))
        })?;
        Ok((raft, req))
    }
}

fn reply<T: Serialize>(answer: &T) -> Result<Response<proto::RaftReply>, Status> {
    let body = bincode::serialize(answer).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(proto::RaftReply { body }))
}

#[tonic::async_trait]
impl proto::raft_server::Raft for RaftRouter {
    async fn append(
        &self,
        r: Request<proto::RaftRequest>,
    ) -> Result<Response<proto::RaftReply>, Status> {
        let (raft, req): (Raft, AppendEntriesRequest<TypeConfig>) = self.route(r)?;
        reply(&raft.append_entries(req).await)
    }

    async fn vote(
        &self,
        r: Request<proto::RaftRequest>,
    ) -> Result<Response<proto::RaftReply>, Status> {
        let (raft, req): (Raft, VoteRequest<u64>) = self.route(r)?;
        reply(&raft.vote(req).await)
    }

    async fn snapshot(
        &self,
        r: Request<proto::RaftRequest>,
    ) -> Result<Response<proto::RaftReply>, Status> {
        let (raft, req): (Raft, InstallSnapshotRequest<TypeConfig>) = self.route(r)?;
        reply(&raft.install_snapshot(req).await)
    }

    async fn tablet(
        &self,
        r: Request<proto::RaftRequest>,
    ) -> Result<Response<proto::RaftReply>, Status> {
        let r = r.into_inner();
        self.check_blocked(r.from)?;
        let db = self.db.read().upgrade();
        // Refusals before the step runs are answers too: "did not happen", never a transport
        // failure (which the caller must take as "may have happened").
        let answer = match (db, bincode::deserialize::<crate::remote::Request>(&r.body)) {
            (None, _) => Err(crate::remote::WireError::from(&crate::Error::Shutdown)),
            (Some(_), Err(e)) => Err(crate::remote::WireError::from(
                &crate::Error::InvalidArgument(format!("a tablet step from node {}: {e}", r.from)),
            )),
            (Some(db), Ok(req)) => crate::remote::serve(&db, r.group, req)
                .await
                .map_err(|e| crate::remote::WireError::from(&e)),
        };
        reply(&answer)
    }
}
