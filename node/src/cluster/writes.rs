//! Writes: proposed on this node when it leads, otherwise forwarded to the
//! leader over QUIC (one hop; see `forwarder.rs` for how they travel).

use floe_state::{Command, CommandResponse, NodeId};

use super::ClusterHandle;
use crate::cluster::CLIENT_REQUEST_TIMEOUT;
use crate::error::{rejection_error, ApiError};
use crate::peer_api::{self, PeerRequest, PeerResponse};

/// Where a request must go when this node cannot serve it.
pub(super) enum Route {
    Local,
    Forward { leader: NodeId, addr: String },
}

impl ClusterHandle {
    pub(super) fn route(&self) -> Result<Route, ApiError> {
        let inner = &self.inner;
        let metrics = inner.raft.metrics().borrow().clone();
        // A node that just rejoined learns the leader from pre-vote answers
        // before the leader's first heartbeat reaches it.
        match inner.elections.leader_hint() {
            Some(leader) if leader == inner.id && metrics.current_leader == Some(leader) => {
                Ok(Route::Local)
            }
            Some(leader) if leader == inner.id => Err(ApiError::Unavailable(format!(
                "node {} is electing itself (term {})",
                inner.id, metrics.current_term
            ))),
            Some(leader) => {
                let addr = metrics
                    .membership_config
                    .membership()
                    .get_node(&leader)
                    .map(|info| info.raft_addr.clone())
                    .ok_or_else(|| {
                        ApiError::Unavailable(format!(
                            "leader {leader} is not in this node's membership"
                        ))
                    })?;
                Ok(Route::Forward { leader, addr })
            }
            None => Err(ApiError::Unavailable(format!(
                "no leader known to node {} (term {}): the cluster has no quorum or is electing",
                inner.id, metrics.current_term
            ))),
        }
    }

    /// Whether this node is the leader it knows of, and so serves requests
    /// that must run on the leader itself.
    pub(crate) fn route_is_local(&self) -> bool {
        matches!(self.route(), Ok(Route::Local))
    }

    /// Sends `request` to the leader; an error on the leader itself.
    pub(crate) async fn forward(&self, request: PeerRequest) -> Result<PeerResponse, ApiError> {
        match self.route()? {
            Route::Local => Err(ApiError::Internal("forward called on the leader".into())),
            Route::Forward { leader, addr } => {
                // A leader that died or was cut off never answers; once the
                // cluster has moved on, say so now rather than at the deadline.
                let mut metrics = self.inner.raft.metrics();
                let term = metrics.borrow().current_term;
                let moved_on = metrics.wait_for(|m| {
                    m.current_term != term || m.current_leader.is_some_and(|l| l != leader)
                });
                tokio::select! {
                    answer = peer_api::call_leader(self.inner.transport.as_ref(), leader, &addr, &request, CLIENT_REQUEST_TIMEOUT) => answer,
                    Ok(now) = moved_on => Err(ApiError::OutcomeUnknown(format!(
                        "leader {leader} was replaced (term {term} → {}) while the request was in flight; it may or may not have been applied",
                        now.current_term
                    ))),
                }
            }
        }
    }

    /// Proposes `command`, forwarding to the leader when this node is not it;
    /// apply's refusal comes back as its API error ([`rejection_error`]).
    pub async fn write(&self, command: Command) -> Result<CommandResponse, ApiError> {
        let response = self.write_answer(command).await?;
        match response.rejection() {
            Some(rejection) => Err(rejection_error(rejection)),
            None => Ok(response),
        }
    }

    /// [`ClusterHandle::write`] that hands back a refusal as apply answered
    /// it, for callers that act on its kind (a partly refused placement).
    pub async fn write_answer(&self, command: Command) -> Result<CommandResponse, ApiError> {
        crate::ops::validate_command(&command)?;
        // Fails fast here too rather than forward: a client retries elsewhere.
        self.refuse_if_degraded()?;
        match self.route()? {
            Route::Local => self.write_as_leader(command).await,
            // Travels with other writes waiting here (see `forwarder.rs`).
            Route::Forward { .. } => self.inner.forwarder.forward(command).await,
        }
    }

    /// A leader no majority has acknowledged for an election timeout is
    /// probably cut off while the others elect: fail now, so the client
    /// tries another node, rather than at its deadline.
    pub(super) fn refuse_if_cut_off(&self) -> Result<(), ApiError> {
        match self.inner.elections.quorum_lost_for() {
            Some(age) => Err(ApiError::Unavailable(format!(
                "node {} leads but no majority has acknowledged it for {} ms: it is probably cut off from the other nodes; try another node",
                self.inner.id,
                age.as_millis()
            ))),
            None => Ok(()),
        }
    }

    /// Proposes on this node, which must be the leader.
    pub async fn write_as_leader(&self, command: Command) -> Result<CommandResponse, ApiError> {
        crate::ops::validate_command(&command)?;
        self.refuse_if_cut_off()?;
        // Every proposal passes here (clients', forwarded, the node's own).
        self.refuse_if_degraded()?;
        let clock = &self.inner.clock;
        let started = clock.now();
        let outcome = self.inner.proposer.propose(command).await;
        self.inner
            .metrics
            .observe_write(clock.since(started), outcome.is_ok());
        outcome
    }
}
