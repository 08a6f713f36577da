//! Membership changes of every tablet's group, wherever each group's leader is.
//!
//! A change of one group must be made by its leader. [`Db::add_member`], [`Db::promote`] and
//! [`Db::remove_member`] take every tablet in turn and run the change on this node's replica
//! if it leads, or send it to the leading node (`remote::Request::Member`), which runs the
//! same function. Every change is idempotent (adding a member that is there, promoting a
//! voter, removing a node that is gone do nothing), so an operator may run a command again
//! after a lost answer.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use serde::{Deserialize, Serialize};

use crate::db::Db;
use crate::error::{Error, Result};
use crate::raft::Raft;
use crate::remote::{Reply, Request, Route};
use crate::tablet::Tablet;

/// One membership change of one group.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Change {
    /// Adds `node` at `addr` as a learner, or records its new address.
    Add { node: u64, addr: String },
    /// Makes `node` a voter once it has caught up with the leader's log.
    Promote { node: u64 },
    /// Takes `node` out of the group.
    Remove { node: u64 },
}

/// How long a change waits for one still committing, and a promotion for its node to catch
/// up.
const WAIT: Duration = Duration::from_secs(60);

fn raft_error(e: impl std::fmt::Display) -> Error {
    Error::Raft(e.to_string())
}

/// One membership change of a group. A change made just before (a join's learner, the second
/// half of a joint configuration) may still be committing: openraft refuses a new change until
/// then, so wait for it rather than fail the operator's command.
async fn retrying<T, F, Fut>(mut change: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<
        Output = std::result::Result<T, RaftError<u64, ClientWriteError<u64, BasicNode>>>,
    >,
{
    let deadline = Instant::now() + WAIT;
    loop {
        match change().await {
            Ok(v) => return Ok(v),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(p),
            ))) if Instant::now() < deadline => {
                tracing::debug!(error = %p, "a membership change is committing; waiting");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                return Err(Error::NotLeader {
                    tablet: 0,
                    leader: f.leader_id,
                })
            }
            Err(e) => return Err(raft_error(e)),
        }
    }
}

async fn change_members(raft: &Raft, change: ChangeMembers<u64, BasicNode>) -> Result<()> {
    retrying(|| raft.change_membership(change.clone(), false))
        .await
        .map(|_| ())
}

/// Runs `change` on `t`, whose replica here leads its group.
pub(crate) async fn apply(t: &Tablet, change: Change) -> Result<()> {
    apply_here(t, change).await.map_err(|e| match e {
        Error::NotLeader { leader, .. } => Error::NotLeader {
            tablet: t.id(),
            leader,
        },
        e => e,
    })
}

async fn apply_here(t: &Tablet, change: Change) -> Result<()> {
    t.check_serving()?;
    let raft = t.raft();
    let membership = || raft.metrics().borrow().membership_config.clone();
    match change {
        Change::Add { node, addr } => {
            let known = membership()
                .nodes()
                .find(|(id, _)| **id == node)
                .map(|(_, n)| n.addr.clone());
            match known {
                None => {
                    retrying(|| raft.add_learner(node, BasicNode::new(&addr), false)).await?;
                }
                Some(a) if a != addr => {
                    let nodes = BTreeMap::from([(node, BasicNode::new(&addr))]);
                    change_members(raft, ChangeMembers::SetNodes(nodes)).await?;
                }
                Some(_) => {}
            }
        }
        Change::Promote { node } => {
            if membership().membership().voter_ids().any(|v| v == node) {
                return Ok(());
            }
            // Caught up: the leader has replicated to it up to the log's end (as of now).
            let deadline = Instant::now() + WAIT;
            loop {
                let (last, matched) = {
                    let m = raft.metrics().borrow().clone();
                    let matched = m
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(&node).cloned().flatten())
                        .map(|l| l.index);
                    (m.last_log_index, matched)
                };
                if matched.is_some() && matched >= last.map(|l| l.saturating_sub(16)) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(Error::Busy(format!(
                        "node {node} has not caught up on tablet {} ({matched:?} of {last:?})",
                        t.id()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            change_members(raft, ChangeMembers::AddVoterIds(BTreeSet::from([node]))).await?;
            tracing::info!(node, tablet = t.id(), "node promoted to voter");
        }
        Change::Remove { node } => {
            let m = membership();
            let voters: Vec<u64> = m.membership().voter_ids().collect();
            let voter = voters.contains(&node);
            if voter && voters.len() == 1 {
                return Err(Error::InvalidArgument(format!(
                    "node {node} is the only voter of tablet {}",
                    t.id()
                )));
            }
            if voter {
                change_members(raft, ChangeMembers::RemoveVoters(BTreeSet::from([node]))).await?;
            }
            if membership().nodes().any(|(id, _)| *id == node) {
                change_members(raft, ChangeMembers::RemoveNodes(BTreeSet::from([node]))).await?;
            }
            tracing::info!(node, tablet = t.id(), "node removed from the group");
        }
    }
    Ok(())
}

impl Db {
    /// Runs `change` on every tablet's group, through each group's leader (here or on
    /// another node). While a group has no leader (an election), waits for one, up to a
    /// minute.
    async fn change_every_group(&self, change: Change) -> Result<()> {
        for t in self.tablets() {
            let deadline = Instant::now() + WAIT;
            loop {
                let r = match self.route(t) {
                    Ok(Route::Local(t)) => apply(&t, change.clone()).await,
                    Ok(Route::Remote(r)) => r
                        .call(&Request::Member(change.clone()), true)
                        .await
                        .map(|_: Reply| ()),
                    Err(e) => Err(e),
                };
                match r {
                    Err(Error::NotLeader { .. }) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(Error::NotLeader { .. }) => {
                        return Err(Error::Busy(format!(
                            "tablet {} has had no leader for a minute",
                            t.id()
                        )))
                    }
                    other => break other?,
                }
            }
        }
        Ok(())
    }

    /// Adds node `node` at `addr` to every group as a learner (or records its new address).
    pub async fn add_member(&self, node: u64, addr: &str) -> Result<()> {
        self.change_every_group(Change::Add {
            node,
            addr: addr.to_string(),
        })
        .await
    }

    /// Makes node `node` a voter of every group, each once it has caught up there.
    pub async fn promote(&self, node: u64) -> Result<()> {
        self.change_every_group(Change::Promote { node }).await
    }

    /// Takes node `node` out of every group. Refused for the only voter of a group.
    pub async fn remove_member(&self, node: u64) -> Result<()> {
        self.change_every_group(Change::Remove { node }).await
    }
}
