//! The cluster: several `mantle serve` processes whose tablets are replicas of Raft groups.
//!
//! - **Identity.** A node's id lives in `DATA/node`. `--init` makes the first node (id 1) and
//!   the groups' first membership; `--join ADDR` asks a member for a new id (the leader adds
//!   the node to every group as a learner), then asks to be promoted to voter once it has
//!   caught up. A restart with the same `--data` keeps its identity; if its address changed,
//!   it tells the leader.
//! - **Forwarding** (`Forward`): every node accepts every client call. A node that does not
//!   serve the tablets (it does not lead them) forwards the call, as it came, to the leader
//!   over the channel it already keeps to that node for Raft; the answer comes back the same
//!   way. A forwarded call is marked and never forwarded again (a leader that lost its
//!   leadership meanwhile answers `EAGAIN`, which the SDK retries). Request ids travel with the
//!   call, so a retry after a failover is recognised wherever it lands.
//! - **Status** (`ClusterApi`): members, tablets, leaders, applied indexes, as the
//!   answering node sees them.
//!
//! - **Placement** (`place`): the first tablet's leader keeps `--replicas` voters per group;
//!   further nodes are spares (learners of every group), and a voter that does not answer
//!   pings for `--replace-dead-after-s` is replaced by a live spare.
//! - **Leaders apart** (`MoveLeader`): with several tablets, a node coordinates each call
//!   across the tablets' leaders (`tafdb`'s routes); whole calls are forwarded only to a node
//!   that leads every tablet.
//!
//! What it is not (yet): a placement service with a group and routing table of its own,
//! replicas on a subset of the nodes, balancing (the next steps of the cluster work).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tafdb::raft::Peers;
use tafdb::Db;
use tonic::{Request, Response, Status};

use crate::proto;

/// How a node starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The first node of a new cluster.
    Init,
    /// A new node joining the cluster that `addr` (any member) belongs to.
    Join(String),
}

const IDENTITY: &str = "node";

/// This node's id, if it has one.
pub(crate) fn load_identity(data: &Path) -> Result<Option<u64>, std::io::Error> {
    let Some(b) = chunk_backend::atomic::read(&data.join(IDENTITY))
        .map_err(|e| std::io::Error::other(e.to_string()))?
    else {
        return Ok(None);
    };
    let s = String::from_utf8_lossy(&b);
    s.trim().parse().map(Some).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: not a node id: {s:?}", data.join(IDENTITY).display()),
        )
    })
}

pub(crate) fn save_identity(data: &Path, node: u64) -> Result<(), std::io::Error> {
    chunk_backend::atomic::write(&data.join(IDENTITY), format!("{node}\n").as_bytes())
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// The first member of the first tablet's group that `pick` accepts, with its address, as this
/// node knows the membership.
pub(crate) fn member(db: &Db, pick: impl Fn(u64) -> bool) -> Option<(u64, String)> {
    db.tablets().iter().find_map(|t| {
        t.raft()
            .metrics()
            .borrow()
            .membership_config
            .nodes()
            .find(|(id, _)| pick(**id))
            .map(|(id, n)| (*id, n.addr.clone()))
    })
}

fn url(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

async fn cluster_client(
    member: &str,
    secret: Option<&str>,
) -> Result<proto::cluster_client::ClusterClient<crate::auth::Authed>, Status> {
    let ch = tonic::transport::Endpoint::from_shared(url(member))
        .map_err(|e| Status::invalid_argument(format!("address {member:?}: {e}")))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(90))
        .connect()
        .await
        .map_err(|e| Status::unavailable(format!("{member}: {e}")))?;
    let ch = crate::auth::Authed::new(ch, secret).map_err(Status::invalid_argument)?;
    Ok(proto::cluster_client::ClusterClient::new(ch))
}

/// Asks `member` to admit the node at `addr` (or, with `node`, to record a member's new
/// address); returns the node's id. Retries while the cluster has no leader, for up to a
/// minute.
pub(crate) async fn join(
    member: &str,
    addr: &str,
    node: u64,
    secret: Option<&str>,
) -> Result<u64, Status> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = async {
            cluster_client(member, secret)
                .await?
                .join(proto::JoinRequest {
                    addr: addr.to_string(),
                    node,
                })
                .await
        };
        match attempt.await {
            Ok(r) => return Ok(r.into_inner().node),
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                tracing::info!(member, error = %s.message(), "joining: the cluster is not ready; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => return Err(s),
        }
    }
}

/// Asks the cluster (through `member`) to make `node` a voter of every group once it has
/// caught up; retries until it is one.
pub(crate) async fn promote(member: String, node: u64, secret: Option<String>) {
    loop {
        let attempt = async {
            cluster_client(&member, secret.as_deref())
                .await?
                .promote(proto::PromoteRequest { node })
                .await
        };
        match attempt.await {
            Ok(r) if r.get_ref().spare => {
                tracing::info!(node, "this node is a spare: a learner of every group, ready to replace a voter that dies");
                return;
            }
            Ok(_) => {
                tracing::info!(node, "this node is a voter of every group");
                return;
            }
            Err(s) => {
                tracing::info!(node, error = %s.message(), "promotion not done yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// The `Cluster` gRPC service of a node.
pub(crate) struct ClusterApi {
    pub(crate) db: Arc<Db>,
    pub(crate) node: u64,
    pub(crate) remote_admin: bool,
    /// Voters per group; nodes beyond them stay learners (spares).
    pub(crate) replicas: usize,
    /// New ids are handed out one at a time.
    pub(crate) joining: tokio::sync::Mutex<()>,
    /// Held while a promotion is decided and made (here and by [`place`]), so that two
    /// nodes asking at once cannot both become voters past `replicas`.
    pub(crate) promotions: Arc<tokio::sync::Mutex<()>>,
    /// The namespace service, for its path cache's figures.
    pub(crate) svc: Arc<coprocessor::Service>,
}

/// A store error of a membership change as the operator sees it.
fn change_status(e: tafdb::Error) -> Status {
    match e {
        tafdb::Error::InvalidArgument(m) => Status::failed_precondition(m),
        e @ tafdb::Error::Undetermined(_) => Status::unknown(format!(
            "{e}; the change may have been made: run the command again (changes are idempotent)"
        )),
        e @ (tafdb::Error::NotLeader { .. } | tafdb::Error::Busy(_) | tafdb::Error::Shutdown) => {
            Status::unavailable(e.to_string())
        }
        e => Status::internal(e.to_string()),
    }
}

impl ClusterApi {
    fn admin<T>(&self, r: &Request<T>) -> Result<(), Status> {
        let p = crate::auth::Principal::of(r);
        if p.is_token() {
            return match p.may_change_nodes(false) {
                true => Ok(()),
                false => Err(Status::permission_denied(
                    "cluster changes need an admin or node token",
                )),
            };
        }
        let local = r.remote_addr().is_some_and(|a| a.ip().is_loopback());
        if local || self.remote_admin {
            Ok(())
        } else {
            Err(Status::permission_denied(
                "cluster changes are accepted from the node's own host only (see --allow-remote-admin)",
            ))
        }
    }

    /// Node ids are handed out by the leader of the first tablet, one at a time.
    fn leading(&self) -> Result<(), Status> {
        if self.db.tablets().first().is_some_and(|t| t.is_serving()) {
            Ok(())
        } else {
            Err(Status::unavailable(
                "this node does not lead the first tablet (and no leader was known to forward to)",
            ))
        }
    }
}

#[tonic::async_trait]
impl proto::cluster_server::Cluster for ClusterApi {
    async fn join(
        &self,
        r: Request<proto::JoinRequest>,
    ) -> Result<Response<proto::JoinReply>, Status> {
        self.admin(&r)?;
        self.leading()?;
        let r = r.into_inner();
        if r.addr.is_empty() {
            return Err(Status::invalid_argument(
                "a joining node must give its address",
            ));
        }
        let _one = self.joining.lock().await;
        let node = if r.node == 0 {
            let mut max = 0;
            for t in self.db.tablets() {
                let m = t.raft().metrics().borrow().membership_config.clone();
                max = m.nodes().map(|(id, _)| *id).fold(max, u64::max);
            }
            max + 1
        } else {
            r.node
        };
        self.db
            .add_member(node, &r.addr)
            .await
            .map_err(change_status)?;
        tracing::info!(node, addr = %r.addr, "node admitted");
        Ok(Response::new(proto::JoinReply { node }))
    }

    async fn promote(
        &self,
        r: Request<proto::PromoteRequest>,
    ) -> Result<Response<proto::PromoteReply>, Status> {
        self.admin(&r)?;
        let node = r.into_inner().node;
        let _one = self.promotions.lock().await;
        // The groups share their members: the first one's voters are everyone's.
        let voters: Vec<u64> = self
            .db
            .tablets()
            .first()
            .map(|t| {
                let m = t.raft().metrics().borrow().membership_config.clone();
                m.membership().voter_ids().collect()
            })
            .unwrap_or_default();
        if !voters.contains(&node) && voters.len() >= self.replicas {
            tracing::info!(
                node,
                replicas = self.replicas,
                "the groups have their voters: the node stays a spare"
            );
            return Ok(Response::new(proto::PromoteReply { spare: true }));
        }
        self.db.promote(node).await.map_err(change_status)?;
        Ok(Response::new(proto::PromoteReply { spare: false }))
    }

    async fn remove_node(
        &self,
        r: Request<proto::RemoveNodeRequest>,
    ) -> Result<Response<proto::RemoveNodeReply>, Status> {
        self.admin(&r)?;
        let node = r.into_inner().node;
        self.db.remove_member(node).await.map_err(change_status)?;
        tracing::info!(node, "node removed from every group");
        Ok(Response::new(proto::RemoveNodeReply {}))
    }

    async fn timestamp(
        &self,
        _r: Request<proto::TimestampRequest>,
    ) -> Result<Response<proto::TimestampReply>, Status> {
        match self.db.timestamp().await {
            Ok(ts) => Ok(Response::new(proto::TimestampReply { ts })),
            // No timestamp was handed out: the caller may ask again (another node).
            Err(e @ (tafdb::Error::NotLeader { .. } | tafdb::Error::Busy(_))) => {
                Err(Status::unavailable(e.to_string()))
            }
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }

    async fn move_leader(
        &self,
        r: Request<proto::MoveLeaderRequest>,
    ) -> Result<Response<proto::MoveLeaderReply>, Status> {
        self.admin(&r)?;
        let r = r.into_inner();
        let Some(t) = self
            .db
            .tablets()
            .iter()
            .find(|t| t.id() == r.tablet)
            .cloned()
        else {
            return Err(Status::not_found(format!("no tablet {}", r.tablet)));
        };
        let voter = t
            .raft()
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == r.node);
        if !voter {
            return Err(Status::failed_precondition(format!(
                "node {} is not a voter of tablet {}",
                r.node, r.tablet
            )));
        }
        // Ask again while the election is lost to a timing race (the target's log was a
        // heartbeat behind); give up after 20 s (elections take longer on a loaded machine)
        // and say who leads.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let leader = t.raft().metrics().borrow().current_leader;
            if leader == Some(r.node) {
                return Ok(Response::new(proto::MoveLeaderReply { leader: r.node }));
            }
            if Instant::now() > deadline {
                return Err(Status::deadline_exceeded(format!(
                    "node {} did not win the election of tablet {} within 20 s (node {} leads)",
                    r.node,
                    r.tablet,
                    leader.map_or("none".into(), |l| l.to_string())
                )));
            }
            if let Err(e) = self.db.elect(r.tablet, Some(r.node)).await {
                tracing::debug!(error = %e, "asking for an election");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn status(
        &self,
        _r: Request<proto::ClusterStatusRequest>,
    ) -> Result<Response<proto::ClusterStatusReply>, Status> {
        let mut nodes: BTreeMap<u64, proto::NodeInfo> = BTreeMap::new();
        let mut tablets = Vec::new();
        for t in self.db.tablets() {
            let m = t.raft().metrics().borrow().clone();
            let membership = m.membership_config.membership();
            let voters: Vec<u64> = membership.voter_ids().collect();
            let learners: Vec<u64> = membership.learner_ids().collect();
            for (id, n) in m.membership_config.nodes() {
                let e = nodes.entry(*id).or_insert(proto::NodeInfo {
                    id: *id,
                    addr: n.addr.clone(),
                    voter: false,
                });
                e.voter |= voters.contains(id);
            }
            tablets.push(proto::TabletInfo {
                id: t.id(),
                start: t.range().start.clone(),
                end: t.range().end.clone().unwrap_or_default(),
                leader: m.current_leader.unwrap_or(0),
                voters,
                learners,
                applied: m.last_applied.map_or(0, |l| l.index),
                term: m.current_term,
                serving: t.is_serving(),
                progress: m
                    .replication
                    .iter()
                    .flatten()
                    .filter(|(id, _)| **id != self.node)
                    .map(|(id, l)| proto::ReplicaProgress {
                        node: *id,
                        matched: l.map_or(0, |l| l.index),
                    })
                    .collect(),
                last_log: m.last_log_index.unwrap_or(0),
            });
        }
        let path_cache = self.svc.path_cache_stats().map(|c| proto::PathCacheInfo {
            hits: c.hits,
            misses: c.misses,
            bypasses: c.bypasses,
            fills: c.fills,
            refused: c.refused,
            invalidations: c.invalidations,
            evicted: c.evicted,
            entries: c.entries,
            bytes: c.bytes,
        });
        Ok(Response::new(proto::ClusterStatusReply {
            node: self.node,
            nodes: nodes.into_values().collect(),
            tablets,
            path_cache,
        }))
    }
}

/// The header that marks a call forwarded by another node.
const FORWARDED: &str = "x-mantle-forwarded";

use crate::layer::Body;

/// A tower layer that forwards client calls to the leader when this node does not serve.
#[derive(Clone)]
pub(crate) struct ForwardLayer {
    pub(crate) db: Arc<Db>,
    pub(crate) peers: Peers,
}

impl<S> tower::Layer<S> for ForwardLayer {
    type Service = Forward<S>;

    fn layer(&self, inner: S) -> Forward<S> {
        Forward {
            inner,
            db: self.db.clone(),
            peers: self.peers.clone(),
        }
    }
}

/// See [`ForwardLayer`].
#[derive(Clone)]
pub(crate) struct Forward<S> {
    inner: S,
    db: Arc<Db>,
    peers: Peers,
}

impl<S> Forward<S> {
    /// Where `req` must go instead of here: the leader's channel, or an answer saying no
    /// leader is known.
    fn route(
        &self,
        req: &http::Request<Body>,
    ) -> Option<Result<tonic::transport::Channel, Status>> {
        let path = req.uri().path();
        let namespace = path.starts_with("/mantle.v1.Mantle/");
        // Membership changes need the leader of every group.
        let membership = path == "/mantle.v1.Cluster/Join"
            || path == "/mantle.v1.Cluster/Promote"
            || path == "/mantle.v1.Cluster/RemoveNode";
        if !(namespace || membership)
            || req.headers().contains_key(FORWARDED)
            || self.db.is_serving()
        {
            return None;
        }
        // A membership change is made by the first tablet's leader (it hands out node ids),
        // which takes each group's change to that group's leader.
        let leader = if membership {
            let first = self.db.tablets().first()?;
            if first.is_serving() {
                return None;
            }
            first.raft().metrics().borrow().current_leader
        } else {
            // The tablets' leaders are on different nodes (or being elected): a namespace call
            // is coordinated here, its steps going to each tablet's leader.
            Some(self.db.sole_leader()?)
        };
        let Some(leader) = leader.filter(|l| *l != self.peers.me()) else {
            return Some(Err(Status::unavailable(
                "no leader of the first tablet is known yet (an election may be under way)",
            )));
        };
        let Some((_, addr)) = member(&self.db, |id| id == leader) else {
            return Some(Err(Status::unavailable(format!(
                "node {leader} leads, but its address is unknown here"
            ))));
        };
        Some(
            self.peers
                .channel(leader, &addr)
                .map_err(|e| Status::unavailable(format!("node {leader} at {addr}: {e}"))),
        )
    }
}

impl<S> tower::Service<http::Request<Body>> for Forward<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = crate::layer::BoxResponse<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        match self.route(&req) {
            None => Box::pin(crate::layer::take_ready(&mut self.inner).call(req)),
            Some(Err(status)) => Box::pin(async move { Ok(status.into_http()) }),
            Some(Ok(channel)) => {
                req.headers_mut()
                    .insert(FORWARDED, http::HeaderValue::from_static("1"));
                Box::pin(async move {
                    use tower::ServiceExt;
                    // A call that may have reached the leader is answered Unavailable, which
                    // the SDK resends under the same request id: never "did not happen".
                    Ok(channel.oneshot(req).await.unwrap_or_else(|e| {
                        Status::unavailable(format!("forwarding to the leader: {e}")).into_http()
                    }))
                })
            }
        }
    }
}

/// How the first tablet's leader keeps the groups' voters alive: a voter that has not
/// answered a ping for `after` is replaced by a live spare (a learner of every group), and a
/// group short of voters takes a spare.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Placement {
    /// Voters per group.
    pub(crate) replicas: usize,
    /// How long a voter may not answer before it is replaced (`None`: never).
    pub(crate) replace_after: Option<Duration>,
}

/// Runs [`Placement`] on this node while it leads the first tablet, until `stop`.
pub(crate) async fn place(
    db: Arc<Db>,
    me: u64,
    placement: Placement,
    promotions: Arc<tokio::sync::Mutex<()>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Some(after) = placement.replace_after else {
        return;
    };
    let mut last_ok: BTreeMap<u64, Instant> = BTreeMap::new();
    // Dead voters already reported without a spare to replace them.
    let mut reported = std::collections::BTreeSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let Some(first) = db.tablets().first().cloned() else {
            return;
        };
        if !first.is_serving() {
            // Another node places; start afresh if this one leads again.
            last_ok.clear();
            continue;
        }
        let (voters, learners): (Vec<u64>, Vec<u64>) = {
            let m = first.raft().metrics().borrow().membership_config.clone();
            (
                m.membership().voter_ids().collect(),
                m.membership().learner_ids().collect(),
            )
        };
        // Ping every other member at once; a node first seen now counts as alive.
        let now = Instant::now();
        let mut pings = tokio::task::JoinSet::new();
        for n in voters.iter().chain(&learners).copied().filter(|n| *n != me) {
            let db = db.clone();
            pings.spawn(async move { (n, db.ping(n, Duration::from_secs(1)).await.is_ok()) });
            last_ok.entry(n).or_insert(now);
        }
        let mut alive = BTreeMap::new();
        while let Some(Ok((n, ok))) = pings.join_next().await {
            if ok {
                last_ok.insert(n, Instant::now());
            }
            alive.insert(n, ok);
        }
        last_ok.retain(|n, _| voters.contains(n) || learners.contains(n));
        reported.retain(|n| alive.get(n) == Some(&false));
        let spare = learners
            .iter()
            .copied()
            .find(|l| alive.get(l) == Some(&true));
        let dead = voters
            .iter()
            .copied()
            .find(|v| *v != me && last_ok.get(v).is_some_and(|t| t.elapsed() >= after));
        // Decided and made under the promotions lock, on the membership as it is then.
        let _one = promotions.lock().await;
        let voters: Vec<u64> = {
            let m = first.raft().metrics().borrow().membership_config.clone();
            m.membership().voter_ids().collect()
        };
        let spare = spare.filter(|s| !voters.contains(s));
        let dead = dead.filter(|d| voters.contains(d));
        let result = match (dead, spare) {
            (Some(dead), Some(spare)) => {
                tracing::warn!(
                    dead,
                    spare,
                    after_s = after.as_secs_f64(),
                    "a voter has not answered: replacing it with a spare"
                );
                match db.promote(spare).await {
                    Ok(()) => db.remove_member(dead).await.map(|()| {
                        tracing::warn!(
                            dead,
                            spare,
                            "voter replaced: its replicas are rebuilt on the spare"
                        );
                        last_ok.remove(&dead);
                    }),
                    Err(e) => Err(e),
                }
            }
            (Some(dead), None) => {
                if reported.insert(dead) {
                    tracing::warn!(dead, "a voter has not answered, and there is no live spare to replace it with (start one with --join)");
                }
                Ok(())
            }
            (None, Some(spare)) if voters.len() < placement.replicas => {
                tracing::info!(spare, "a group is short of voters: promoting a spare");
                db.promote(spare).await
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "placement: a change failed; will retry");
        }
    }
}
