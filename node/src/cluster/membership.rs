//! The membership: this node's own view for probes and status, and the
//! changes (init, join, remove), which run on the leader.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use floe_state::{Command, NodeId, NodeInfo};
use openraft::error::{InitializeError, RaftError};

use super::writes::Route;
use super::{bounded, role_name, ClusterHandle};
use crate::cluster::CLIENT_REQUEST_TIMEOUT;
use crate::error::ApiError;
use crate::ops::unexpected;
use crate::peer_api::{LocalStatus, PeerRequest, PeerResponse, ProbeInfo};
use crate::raft_errors::{initialize_error, write_error};

/// Voters and learners, as a membership change answers.
pub type MembershipIds = (Vec<NodeId>, Vec<NodeId>);

impl ClusterHandle {
    pub fn probe_info(&self) -> ProbeInfo {
        // An unreadable store counts as holding state: never bootstrap over it.
        let has_raft_state = self.inner.store.has_raft_state().unwrap_or(true);
        ProbeInfo {
            node_id: self.inner.id,
            info: self.inner.info.clone(),
            has_raft_state,
        }
    }

    pub fn local_status(&self) -> LocalStatus {
        let metrics = self.raft_metrics();
        LocalStatus {
            node_id: self.inner.id,
            role: role_name(&metrics),
            term: metrics.current_term,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            applied_index: metrics.last_applied.map(|id| id.index).unwrap_or(0),
            current_leader: metrics.current_leader,
        }
    }

    /// Forms a cluster of `members` (expect-N bootstrap); openraft's own
    /// error, since a refusal there is routine.
    pub async fn initialize(
        &self,
        members: BTreeMap<NodeId, NodeInfo>,
    ) -> Result<(), RaftError<NodeId, InitializeError<NodeId, NodeInfo>>> {
        self.inner.raft.initialize(members).await
    }

    /// Forms a cluster of this node alone (`cluster init`).
    pub async fn init_cluster(&self) -> Result<(), ApiError> {
        let mut members = BTreeMap::new();
        members.insert(self.inner.id, self.inner.info.clone());
        self.initialize(members)
            .await
            .map_err(|err| initialize_error(self.inner.id, err))
    }

    pub async fn join(
        &self,
        node_id: NodeId,
        raft_addr: &str,
        learner_only: bool,
    ) -> Result<MembershipIds, ApiError> {
        match self.route()? {
            Route::Local => self.join_as_leader(node_id, raft_addr, learner_only).await,
            Route::Forward { .. } => {
                let request = PeerRequest::Join {
                    node_id,
                    raft_addr: raft_addr.to_string(),
                    learner_only,
                };
                membership_reply(self.forward(request).await?)
            }
        }
    }

    /// Adds `node_id` as a learner, waits until it has caught up, then makes it a voter.
    pub async fn join_as_leader(
        &self,
        node_id: NodeId,
        raft_addr: &str,
        learner_only: bool,
    ) -> Result<MembershipIds, ApiError> {
        let inner = &self.inner;
        if node_id == 0 {
            return Err(ApiError::InvalidArgument("node id 0 is not allowed".into()));
        }
        self.refuse_if_degraded()?;
        let tombstoned = inner
            .reader
            .is_tombstoned(node_id)
            .map_err(|err| ApiError::Internal(err.to_string()))?;
        if tombstoned {
            return Err(ApiError::FailedPrecondition(format!(
                "node id {node_id} was removed from this cluster and is never reused; give the node a new id and an empty data dir"
            )));
        }
        let probe = self
            .call(
                node_id,
                raft_addr,
                &PeerRequest::Probe,
                CLIENT_REQUEST_TIMEOUT,
            )
            .await?;
        let PeerResponse::Probe(probe) = probe else {
            return Err(unexpected(&probe));
        };
        if probe.node_id != node_id {
            return Err(ApiError::FailedPrecondition(format!(
                "{raft_addr} is node {}, not node {node_id}",
                probe.node_id
            )));
        }
        let (nodes, voters) = self.members();
        if voters.contains(&node_id) {
            return Ok(self.membership_ids());
        }
        if !nodes.contains_key(&node_id) {
            let added = bounded(
                Duration::from_secs(60),
                "add learner",
                inner.raft.add_learner(node_id, probe.info, true),
            )
            .await?;
            added.map_err(|err| write_error(inner.id, err))?;
        }
        if !learner_only {
            let voter_ids: BTreeSet<NodeId> = [node_id].into_iter().collect();
            let change = openraft::ChangeMembers::AddVoterIds(voter_ids);
            let changed = bounded(
                CLIENT_REQUEST_TIMEOUT * 4,
                "promote to voter",
                inner.raft.change_membership(change, false),
            )
            .await?;
            changed.map_err(|err| write_error(inner.id, err))?;
        }
        tracing::info!(node_id, learner_only, "node joined");
        Ok(self.membership_ids())
    }

    pub async fn remove(&self, node_id: NodeId) -> Result<MembershipIds, ApiError> {
        match self.route()? {
            Route::Local => self.remove_as_leader(node_id).await,
            Route::Forward { .. } => {
                membership_reply(self.forward(PeerRequest::Remove { node_id }).await?)
            }
        }
    }

    /// Tombstones the id first, so a crash between the two steps can only
    /// leave a member that can never be re-added, never a reusable id.
    pub async fn remove_as_leader(&self, node_id: NodeId) -> Result<MembershipIds, ApiError> {
        let (nodes, voters) = self.members();
        if !nodes.contains_key(&node_id) {
            return Err(ApiError::FailedPrecondition(format!(
                "node {node_id} is not a member of this cluster"
            )));
        }
        if voters.len() == 1 && voters.contains(&node_id) {
            return Err(ApiError::FailedPrecondition(format!(
                "node {node_id} is the last voter; a cluster cannot remove it"
            )));
        }
        self.write_as_leader(Command::TombstoneNode { node_id })
            .await?;
        let ids: BTreeSet<NodeId> = [node_id].into_iter().collect();
        let change = if voters.contains(&node_id) {
            openraft::ChangeMembers::RemoveVoters(ids)
        } else {
            openraft::ChangeMembers::RemoveNodes(ids)
        };
        let changed = bounded(
            CLIENT_REQUEST_TIMEOUT * 4,
            "remove member",
            self.inner.raft.change_membership(change, false),
        )
        .await?;
        changed.map_err(|err| write_error(self.inner.id, err))?;
        tracing::info!(node_id, "node removed");
        Ok(self.membership_ids())
    }

    fn membership_ids(&self) -> MembershipIds {
        let (nodes, voters) = self.members();
        let learners = nodes
            .keys()
            .filter(|id| !voters.contains(id))
            .copied()
            .collect();
        (voters, learners)
    }
}

fn membership_reply(response: PeerResponse) -> Result<MembershipIds, ApiError> {
    match response {
        PeerResponse::Membership { voters, learners } => Ok((voters, learners)),
        other => Err(unexpected(&other)),
    }
}
