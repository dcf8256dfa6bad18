//! What the API does: each client operation runs on the leader, reached
//! directly or by one forward over QUIC; every wait is bounded.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use floe_state::{Command, CommandResponse, KvEntry, NodeId, NodeInfo};

use crate::error::{rejection_error, ApiError};
use crate::peer_api::{self, PeerRequest, PeerResponse};
use crate::raft_errors::{initialize_error, leadership_error, write_error};
use crate::service::{Node, CLIENT_REQUEST_TIMEOUT};
use floe_engine::names::quote_bounded;

/// Largest key and value the key-value API accepts.
pub const MAX_KEY_BYTES: usize = 4 * 1024;
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
pub const MAX_LIST_LIMIT: usize = 10_000;
pub const MAX_FLOW_BYTES: usize = 1024 * 1024;

/// Where a request must go when this node cannot serve it.
enum Route {
    Local,
    Forward { leader: NodeId, addr: String },
}

impl Node {
    fn route(&self) -> Result<Route, ApiError> {
        let metrics = self.raft.metrics().borrow().clone();
        // A node that just rejoined learns the leader from pre-vote answers
        // before the leader's first heartbeat reaches it.
        match self.elections.leader_hint() {
            Some(leader) if leader == self.id && metrics.current_leader == Some(leader) => {
                Ok(Route::Local)
            }
            Some(leader) if leader == self.id => Err(ApiError::Unavailable(format!(
                "node {} is electing itself (term {})",
                self.id, metrics.current_term
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
                self.id, metrics.current_term
            ))),
        }
    }

    pub(crate) async fn forward(&self, request: PeerRequest) -> Result<PeerResponse, ApiError> {
        match self.route()? {
            Route::Local => Err(ApiError::Internal("forward called on the leader".into())),
            Route::Forward { leader, addr } => {
                // A leader that died or was cut off never answers; once the
                // cluster has moved on, say so now rather than at the deadline.
                let mut metrics = self.raft.metrics();
                let term = metrics.borrow().current_term;
                let moved_on = metrics.wait_for(|m| {
                    m.current_term != term || m.current_leader.is_some_and(|l| l != leader)
                });
                tokio::select! {
                    answer = peer_api::call_leader(self, leader, &addr, &request, CLIENT_REQUEST_TIMEOUT) => answer,
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

    /// [`Node::write`] that hands back a refusal as apply answered it, for
    /// callers that act on its kind (a partly refused placement).
    pub async fn write_answer(&self, command: Command) -> Result<CommandResponse, ApiError> {
        validate_command(&command)?;
        // Fails fast here too rather than forward: a client retries elsewhere.
        self.refuse_if_degraded()?;
        match self.route()? {
            Route::Local => self.write_as_leader(command).await,
            // Travels with other writes waiting here (see `forwarder.rs`).
            Route::Forward { .. } => self.forwarder.forward(command).await,
        }
    }

    /// A leader no majority has acknowledged for an election timeout is
    /// probably cut off while the others elect: fail now, so the client
    /// tries another node, rather than at its deadline.
    fn refuse_if_cut_off(&self) -> Result<(), ApiError> {
        match self.elections.quorum_lost_for() {
            Some(age) => Err(ApiError::Unavailable(format!(
                "node {} leads but no majority has acknowledged it for {} ms: it is probably cut off from the other nodes; try another node",
                self.id,
                age.as_millis()
            ))),
            None => Ok(()),
        }
    }

    /// Whether this node is the leader it knows of.
    pub(crate) fn route_is_local(&self) -> bool {
        matches!(self.route(), Ok(Route::Local))
    }

    /// Proposes on this node, which must be the leader.
    pub async fn write_as_leader(&self, command: Command) -> Result<CommandResponse, ApiError> {
        validate_command(&command)?;
        self.refuse_if_cut_off()?;
        // Every proposal passes here (clients', forwarded, the node's own).
        self.refuse_if_degraded()?;
        let started = std::time::Instant::now();
        let outcome = self.proposer.propose(command).await;
        self.metrics
            .observe_write(started.elapsed(), outcome.is_ok());
        outcome
    }

    pub async fn get(&self, key: &str, linearizable: bool) -> Result<Option<KvEntry>, ApiError> {
        validate_key(key)?;
        // Test-only defect for the chaos suite: no ReadIndex barrier, so a
        // lagging or cut-off node serves stale "linearizable" reads.
        if linearizable && !cfg!(feature = "defect-stale-reads") {
            self.read_barrier().await?;
        }
        self.reader.get(key).map_err(internal)
    }

    /// Makes this node's state at least as new as every write committed
    /// before the call (the ReadIndex protocol): the leader confirms its
    /// leadership with a quorum and names its commit index; this node waits
    /// until it has applied that far. Reads after it are linearizable on any node.
    pub async fn read_barrier(&self) -> Result<(), ApiError> {
        let read_index = self.reads.read_index(false).await?;
        if let Some(reason) = self.disk.refusal() {
            // It refuses appends, so it cannot catch up: answer now, not at the timeout.
            let applied = self.raft.metrics().borrow().last_applied.map(|id| id.index);
            if applied < read_index {
                return Err(ApiError::Unavailable(format!(
                    "node {} has applied up to {applied:?}, behind the read index {read_index:?}, and cannot catch up: {reason}",
                    self.id
                )));
            }
        }
        let waited = self
            .raft
            .wait(Some(CLIENT_REQUEST_TIMEOUT))
            .applied_index_at_least(read_index, "read barrier")
            .await;
        waited.map(|_| ()).map_err(|err| {
            let index = read_index.map_or_else(|| "0".to_string(), |index| index.to_string());
            ApiError::Unavailable(format!(
                "node {} did not apply up to the read index {index}: {err}",
                self.id
            ))
        })
    }

    pub async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        linearizable: bool,
    ) -> Result<(Vec<(String, KvEntry)>, bool), ApiError> {
        let limit = clamp_limit(limit)?;
        if linearizable {
            self.read_barrier().await?;
        }
        self.list_local(prefix, start_after, limit)
    }

    fn list_local(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<(String, KvEntry)>, bool), ApiError> {
        // One extra row tells the caller whether another page exists.
        let mut items = self
            .reader
            .list(prefix, start_after, limit + 1)
            .map_err(internal)?;
        let more = items.len() > limit;
        items.truncate(limit);
        Ok((items, more))
    }

    /// Confirms with a quorum that this node still leads, waits until its
    /// state machine has applied everything committed before the call, and
    /// returns that read index.
    pub async fn confirm_leadership(&self) -> Result<Option<u64>, ApiError> {
        self.refuse_if_cut_off()?;
        // Confirming sends heartbeats, which would keep the followers from
        // electing a leader whose disk takes writes.
        if let Some(reason) = self.disk.refusal() {
            return Err(ApiError::Unavailable(format!(
                "node {} leads but does not confirm reads while it refuses writes, so that another node takes over: {reason}",
                self.id
            )));
        }
        let confirmed = bounded(
            CLIENT_REQUEST_TIMEOUT,
            "linearizable read",
            self.raft.ensure_linearizable(),
        )
        .await?;
        match confirmed {
            Ok(read_log_id) => Ok(read_log_id.map(|id| id.index)),
            Err(err) => {
                let voters = self.members().1.len();
                let heartbeat = Duration::from_millis(self.config.raft.heartbeat_interval_ms);
                Err(leadership_error(self.id, voters, heartbeat, err))
            }
        }
    }

    pub async fn init_cluster(&self) -> Result<(), ApiError> {
        let mut members = BTreeMap::new();
        members.insert(self.id, self.info.clone());
        self.raft
            .initialize(members)
            .await
            .map_err(|err| initialize_error(self.id, err))
    }

    pub async fn join(
        &self,
        node_id: NodeId,
        raft_addr: &str,
        learner_only: bool,
    ) -> Result<(Vec<NodeId>, Vec<NodeId>), ApiError> {
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
    ) -> Result<(Vec<NodeId>, Vec<NodeId>), ApiError> {
        if node_id == 0 {
            return Err(ApiError::InvalidArgument("node id 0 is not allowed".into()));
        }
        self.refuse_if_degraded()?;
        if self.reader.is_tombstoned(node_id).map_err(internal)? {
            return Err(ApiError::FailedPrecondition(format!(
                "node id {node_id} was removed from this cluster and is never reused; give the node a new id and an empty data dir"
            )));
        }
        let probe = peer_api::call(
            self,
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
            return Ok(membership_ids(self));
        }
        if !nodes.contains_key(&node_id) {
            let added = bounded(
                Duration::from_secs(60),
                "add learner",
                self.raft.add_learner(node_id, probe.info, true),
            )
            .await?;
            added.map_err(|err| write_error(self.id, err))?;
        }
        if !learner_only {
            let voter_ids: BTreeSet<NodeId> = [node_id].into_iter().collect();
            let change = openraft::ChangeMembers::AddVoterIds(voter_ids);
            let changed = bounded(
                CLIENT_REQUEST_TIMEOUT * 4,
                "promote to voter",
                self.raft.change_membership(change, false),
            )
            .await?;
            changed.map_err(|err| write_error(self.id, err))?;
        }
        tracing::info!(node_id, learner_only, "node joined");
        Ok(membership_ids(self))
    }

    pub async fn remove(&self, node_id: NodeId) -> Result<(Vec<NodeId>, Vec<NodeId>), ApiError> {
        match self.route()? {
            Route::Local => self.remove_as_leader(node_id).await,
            Route::Forward { .. } => {
                membership_reply(self.forward(PeerRequest::Remove { node_id }).await?)
            }
        }
    }

    /// Tombstones the id first, so a crash between the two steps can only
    /// leave a member that can never be re-added, never a reusable id.
    pub async fn remove_as_leader(
        &self,
        node_id: NodeId,
    ) -> Result<(Vec<NodeId>, Vec<NodeId>), ApiError> {
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
            self.raft.change_membership(change, false),
        )
        .await?;
        changed.map_err(|err| write_error(self.id, err))?;
        tracing::info!(node_id, "node removed");
        Ok(membership_ids(self))
    }

    /// Addresses of every member except this node.
    pub fn other_members(&self) -> Vec<(NodeId, NodeInfo)> {
        self.members()
            .0
            .into_iter()
            .filter(|(id, _)| *id != self.id)
            .collect()
    }
}

fn membership_ids(node: &Node) -> (Vec<NodeId>, Vec<NodeId>) {
    let (nodes, voters) = node.members();
    let learners = nodes
        .keys()
        .filter(|id| !voters.contains(id))
        .copied()
        .collect();
    (voters, learners)
}

fn membership_reply(response: PeerResponse) -> Result<(Vec<NodeId>, Vec<NodeId>), ApiError> {
    match response {
        PeerResponse::Membership { voters, learners } => Ok((voters, learners)),
        other => Err(unexpected(&other)),
    }
}

async fn bounded<T>(
    limit: Duration,
    what: &str,
    future: impl Future<Output = T>,
) -> Result<T, ApiError> {
    tokio::time::timeout(limit, future).await.map_err(|_| {
        ApiError::OutcomeUnknown(format!(
            "{what} not confirmed within {} ms: the leader may have lost its quorum",
            limit.as_millis()
        ))
    })
}

fn validate_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(ApiError::InvalidArgument("key is empty".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ApiError::ResourceExhausted(format!(
            "key is {} bytes, more than the fixed limit of {MAX_KEY_BYTES} (4 KiB)",
            key.len()
        )));
    }
    Ok(())
}

fn validate_value(key: &str, value: &[u8]) -> Result<(), ApiError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(ApiError::ResourceExhausted(format!(
            "value for key {} is {} bytes, more than the fixed limit of {MAX_VALUE_BYTES} (1 MiB)",
            quote_bounded(key),
            value.len()
        )));
    }
    Ok(())
}

fn validate_command(command: &Command) -> Result<(), ApiError> {
    match command {
        Command::KvPut { key, value } => {
            validate_key(key)?;
            validate_value(key, value)
        }
        Command::KvDelete { key } => validate_key(key),
        Command::KvCas { key, expected, new } => {
            validate_key(key)?;
            for value in [expected, new].into_iter().flatten() {
                validate_value(key, value)?;
            }
            Ok(())
        }
        Command::TombstoneNode { .. } => Ok(()),
        Command::PutFlow {
            name, definition, ..
        } if definition.len() > MAX_FLOW_BYTES => Err(ApiError::ResourceExhausted(format!(
            "flow {} definition is {} bytes; the limit is {MAX_FLOW_BYTES}",
            quote_bounded(name),
            definition.len()
        ))),
        Command::PutFlow { .. } => Ok(()),
        Command::StartRun { .. }
        | Command::RunEvent { .. }
        | Command::AssignTask { .. }
        | Command::UnassignTask { .. }
        | Command::PurgeRuns { .. }
        | Command::FireTimers { .. } => Ok(()),
        Command::SetLimit { name, .. } if name.is_empty() || name.len() > 256 => {
            Err(ApiError::InvalidArgument(format!(
                "limit name {} must be 1 to 256 bytes",
                quote_bounded(name)
            )))
        }
        Command::SetLimit { .. } => Ok(()),
        Command::PutModel { signature, .. } if signature.len() > MAX_FLOW_BYTES => {
            Err(ApiError::InvalidArgument(format!(
                "model signature is {} bytes; the limit is {MAX_FLOW_BYTES}",
                signature.len()
            )))
        }
        Command::PutModel { .. }
        | Command::DeployModel { .. }
        | Command::UndeployModel { .. }
        | Command::ChangeReplicas { .. }
        | Command::NodeSlots { .. } => Ok(()),
        Command::Batch(_) => Err(ApiError::InvalidArgument(
            "batches are formed by the leader, not sent to it".into(),
        )),
    }
}

fn clamp_limit(limit: usize) -> Result<usize, ApiError> {
    match limit {
        0 => Ok(100),
        n if n > MAX_LIST_LIMIT => Err(ApiError::InvalidArgument(format!(
            "limit {n} is above {MAX_LIST_LIMIT}"
        ))),
        n => Ok(n),
    }
}

fn internal(err: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(err.to_string())
}

pub(crate) fn unexpected(response: &PeerResponse) -> ApiError {
    ApiError::Internal(format!("unexpected peer response {response:?}"))
}
