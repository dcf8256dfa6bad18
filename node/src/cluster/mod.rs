//! The cluster as the rest of the node sees it: who leads, writes (proposed
//! here or forwarded to the leader), read barriers, the membership and its
//! changes. Everything that touches the Raft core, the proposer, the
//! forwarder, the read rounds, the elections or the peer transport goes
//! through [`ClusterHandle`]; the API, scheduler, placement and workers
//! never read Raft's metrics themselves. The queues in front of Raft live
//! here too: `proposer.rs` (batching on the leader), `forwarder.rs`
//! (writes bound for the leader), `reads.rs` (shared ReadIndex rounds).
//!
//! Not here: what is applied (floe-state), the key-value and run APIs
//! (`ops.rs`, `runs.rs`, ...), which only call `write` and `read_barrier`.

mod barrier;
mod forwarder;
mod membership;
mod metrics_page;
mod proposer;
mod queue;
mod reads;
mod writes;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use floe_raft::{Elections, PeerTransport};
use floe_state::{NodeId, NodeInfo, Raft, StateReader, Store, TypeConfig};
use openraft::RaftMetrics;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use self::forwarder::{ForwardQueue, Forwarder};
use self::proposer::Proposer;
use self::reads::{ReadQueue, ReadRounds};
use crate::clock::Clock;
use crate::disk::DiskHealth;
use crate::error::ApiError;
use crate::metrics::NodeMetrics;
use crate::peer_api::{PeerRequest, PeerResponse};

/// What the cluster component is built from.
/// How long a client request may wait for the cluster before it fails.
pub const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub struct ClusterParts {
    pub id: NodeId,
    pub info: NodeInfo,
    pub raft: Raft,
    pub store: Store,
    /// Application requests to other nodes (QUIC in a real node).
    pub transport: Arc<dyn PeerTransport>,
    pub elections: Elections<TypeConfig>,
    pub disk: DiskHealth,
    pub metrics: Arc<NodeMetrics>,
    /// Raft's heartbeat interval, named in refusals of linearizable reads.
    pub heartbeat: Duration,
    pub clock: Clock,
}

/// The receiving ends of the cluster's queues, handed to
/// [`ClusterHandle::spawn_services`] once the node exists.
pub struct ClusterQueues {
    forward: ForwardQueue,
    reads: ReadQueue,
}

/// Handle to the cluster component; cheap to clone.
#[derive(Clone)]
pub struct ClusterHandle {
    inner: Arc<Inner>,
}

/// A reference to the cluster component that does not keep it (nor its
/// store) alive: says when every handle is gone.
pub struct WeakCluster(std::sync::Weak<Inner>);

impl WeakCluster {
    /// How many handles still hold the component.
    pub fn holders(&self) -> usize {
        self.0.strong_count()
    }
}

struct Inner {
    id: NodeId,
    info: NodeInfo,
    raft: Raft,
    store: Store,
    reader: StateReader,
    transport: Arc<dyn PeerTransport>,
    proposer: Proposer,
    /// Writes on their way to the leader (see `forwarder.rs`).
    forwarder: Forwarder,
    /// Linearizable reads waiting for a shared ReadIndex round (see `reads.rs`).
    reads: ReadRounds,
    /// Pre-vote rounds, leader hints, quorum loss (see floe_raft::election).
    elections: Elections<TypeConfig>,
    disk: DiskHealth,
    metrics: Arc<NodeMetrics>,
    heartbeat: Duration,
    clock: Clock,
}

impl ClusterHandle {
    /// Builds the component and starts its proposer, which stops on `cancel`.
    pub fn new(parts: ClusterParts, cancel: CancellationToken) -> (ClusterHandle, ClusterQueues) {
        let (forwarder, forward) = Forwarder::new();
        let (reads, read_queue) = ReadRounds::new();
        let proposer =
            Proposer::start(parts.raft.clone(), parts.id, CLIENT_REQUEST_TIMEOUT, cancel);
        let inner = Inner {
            id: parts.id,
            info: parts.info,
            raft: parts.raft,
            reader: parts.store.reader(),
            store: parts.store,
            transport: parts.transport,
            proposer,
            forwarder,
            reads,
            elections: parts.elections,
            disk: parts.disk,
            metrics: parts.metrics,
            heartbeat: parts.heartbeat,
            clock: parts.clock,
        };
        let queues = ClusterQueues {
            forward,
            reads: read_queue,
        };
        (
            ClusterHandle {
                inner: Arc::new(inner),
            },
            queues,
        )
    }

    /// Starts the component's long-lived tasks: the Raft core's watch, the
    /// disk's effect on heartbeats, elections, leader-change counting, and
    /// the forwarding and read-round queues. Each ends on `cancel`; one that
    /// ends otherwise is a failure of the node.
    pub fn spawn_services(
        &self,
        queues: ClusterQueues,
        tasks: &mut JoinSet<anyhow::Result<()>>,
        cancel: &CancellationToken,
    ) {
        tasks.spawn(watch_raft_core(self.inner.raft.clone(), cancel.clone()));
        tasks.spawn(follow_disk(self.clone(), cancel.clone()));
        tasks.spawn({
            let elections = self.inner.elections.clone();
            let disk = self.inner.disk.clone();
            let cancel = cancel.clone();
            async move {
                // A node whose disk cannot take its vote must not campaign.
                elections
                    .run(move || !disk.is_degraded(), cancel.clone())
                    .await;
                if cancel.is_cancelled() {
                    Ok(())
                } else {
                    Err(anyhow::anyhow!(
                        "the raft core stopped; this node can no longer take part in elections"
                    ))
                }
            }
        });
        tasks.spawn(track_leader_changes(self.clone(), cancel.clone()));
        tasks.spawn(self::forwarder::run(
            self.clone(),
            queues.forward,
            cancel.clone(),
        ));
        tasks.spawn(self::reads::run(self.clone(), queues.reads, cancel.clone()));
    }

    /// Stops elections and then the Raft core, waiting at most `grace`:
    /// nothing of this node campaigns or votes while the rest winds down,
    /// and requests still waiting on Raft end now with an error.
    pub async fn stop(&self, grace: Duration) {
        self.inner.elections.stop();
        match tokio::time::timeout(grace, self.inner.raft.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "raft shutdown"),
            Err(_) => tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "raft core did not stop within the grace period"
            ),
        }
    }

    /// Why the Raft core stopped on its own, if it did.
    pub fn core_failure(&self) -> Option<String> {
        match &self.inner.raft.metrics().borrow().running_state {
            Err(fatal) => Some(fatal.to_string()),
            Ok(()) => None,
        }
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// A reference that does not keep the component alive.
    pub fn downgrade(&self) -> WeakCluster {
        WeakCluster(Arc::downgrade(&self.inner))
    }

    /// This node's addresses, as it announces them to the cluster.
    pub fn info(&self) -> &NodeInfo {
        &self.inner.info
    }

    pub(crate) fn metrics(&self) -> &NodeMetrics {
        &self.inner.metrics
    }

    /// The store under the Raft log and the applied state (for its
    /// statistics and Raft state checks).
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Free space and writability of the data dir.
    pub fn disk(&self) -> &DiskHealth {
        &self.inner.disk
    }

    /// The applied state, as this node has it.
    pub fn reader(&self) -> &StateReader {
        &self.inner.reader
    }

    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// The leader this node's Raft core knows of (from heartbeats and votes).
    pub fn leader(&self) -> Option<NodeId> {
        self.inner.raft.metrics().borrow().current_leader
    }

    /// Whether this node's Raft core holds itself to be the leader.
    pub fn is_leader(&self) -> bool {
        self.leader() == Some(self.inner.id)
    }

    /// The leader's API address, while this node knows a leader other than
    /// itself; for the hint a refusal carries (`leader_hint.rs`).
    pub fn leader_api_addr(&self) -> Option<String> {
        // Includes a leader named in pre-vote answers, before its first heartbeat.
        let leader = self
            .inner
            .elections
            .leader_hint()
            .filter(|leader| *leader != self.inner.id)?;
        let metrics = self.inner.raft.metrics().borrow().clone();
        let info = metrics.membership_config.membership().get_node(&leader)?;
        Some(info.api_addr.clone()).filter(|addr| !addr.is_empty())
    }

    /// How long this node has led without a majority acknowledging it, if it has.
    pub fn quorum_lost_for(&self) -> Option<Duration> {
        self.inner.elections.quorum_lost_for()
    }

    /// A snapshot of the Raft core's metrics, for status pages and /metrics.
    pub fn raft_metrics(&self) -> RaftMetrics<NodeId, NodeInfo> {
        self.inner.raft.metrics().borrow().clone()
    }

    /// The highest log index this node knows committed (0 when none).
    pub async fn committed_index(&self) -> u64 {
        self.inner
            .raft
            .with_raft_state(|state| state.committed)
            .await
            .ok()
            .flatten()
            .map(|id| id.index)
            .unwrap_or(0)
    }

    /// QUIC round-trip time to each peer this node has talked to.
    pub fn peer_rtts(&self) -> Vec<(NodeId, Duration)> {
        self.inner.transport.rtts()
    }

    /// Sends `request` to node `target` at `raft_addr` and decodes its answer.
    pub async fn call(
        &self,
        target: NodeId,
        raft_addr: &str,
        request: &PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, ApiError> {
        crate::peer_api::call_via(
            self.inner.transport.as_ref(),
            target,
            raft_addr,
            request,
            timeout,
        )
        .await
    }

    /// Why this node must not write now, as an API error.
    pub(crate) fn refuse_if_degraded(&self) -> Result<(), ApiError> {
        match self.inner.disk.refusal() {
            Some(reason) => Err(ApiError::Unavailable(format!(
                "node {} refuses writes: {reason}",
                self.inner.id
            ))),
            None => Ok(()),
        }
    }

    /// Members with their addresses, from this node's view of the membership.
    pub fn members(&self) -> (BTreeMap<NodeId, NodeInfo>, Vec<NodeId>) {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let nodes = membership
            .nodes()
            .map(|(id, info)| (*id, info.clone()))
            .collect();
        (nodes, voters)
    }

    /// Addresses of every member except this node.
    pub fn other_members(&self) -> Vec<(NodeId, NodeInfo)> {
        self.members()
            .0
            .into_iter()
            .filter(|(id, _)| *id != self.inner.id)
            .collect()
    }
}

/// Follows the disk's condition: a degraded leader stops heartbeating, so
/// the healthy nodes elect another leader; heartbeats resume with the disk.
/// (A degraded node does not campaign: the election driver asks the disk.)
async fn follow_disk(cluster: ClusterHandle, cancel: CancellationToken) -> anyhow::Result<()> {
    let mut disk = cluster.inner.disk.subscribe();
    loop {
        let degraded = disk.borrow_and_update().degraded.is_some();
        cluster.inner.raft.runtime_config().heartbeat(!degraded);
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            changed = disk.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// Ends with an error when the Raft core stops on its own (a storage
/// failure, a panic), naming why; ends quietly on `cancel`.
async fn watch_raft_core(raft: Raft, cancel: CancellationToken) -> anyhow::Result<()> {
    let mut metrics = raft.metrics();
    loop {
        // A stopping node shuts its core down itself: not a failure.
        if cancel.is_cancelled() {
            return Ok(());
        }
        if let Err(fatal) = &metrics.borrow_and_update().running_state {
            anyhow::bail!("raft core stopped: {fatal}");
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            changed = metrics.changed() => {
                if changed.is_err() {
                    anyhow::bail!("raft core stopped");
                }
            }
        }
    }
}

/// Counts leader changes seen by this node (including "no leader" → leader).
async fn track_leader_changes(
    cluster: ClusterHandle,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut watch = cluster.inner.raft.metrics();
    let mut last_leader = watch.borrow().current_leader;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            changed = watch.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
        }
        let leader = watch.borrow().current_leader;
        if leader.is_some() && leader != last_leader {
            cluster.inner.metrics.count_leader_change();
            tracing::info!(node_id = cluster.inner.id, leader = ?leader, "leader changed");
        }
        last_leader = leader;
    }
}

pub fn role_name(metrics: &RaftMetrics<NodeId, NodeInfo>) -> String {
    use openraft::ServerState;
    match metrics.state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
    .to_string()
}

/// Waits for `future` at most `limit`; past it the outcome is unknown.
async fn bounded<T>(
    limit: Duration,
    what: &str,
    future: impl std::future::Future<Output = T>,
) -> Result<T, ApiError> {
    tokio::time::timeout(limit, future).await.map_err(|_| {
        ApiError::OutcomeUnknown(format!(
            "{what} not confirmed within {} ms: the leader may have lost its quorum",
            limit.as_millis()
        ))
    })
}
