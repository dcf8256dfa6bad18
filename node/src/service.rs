//! A running node: store, Raft, QUIC transport, gRPC and HTTP servers, and
//! the bootstrap task, all drained on one cancellation token.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use floe_raft::{NetworkFactory, Peers, RaftServer, RaftServerOptions, TlsMaterial, TransportOptions};
use floe_storage::{NodeId, NodeInfo, Raft, StateReader, Store, StoreOptions};
use tokio_util::sync::CancellationToken;

use crate::config::NodeConfig;
use crate::metrics::NodeMetrics;
use crate::peer_api::{LocalStatus, PeerApi, ProbeInfo};
use crate::proposer::Proposer;

/// How long a client request may wait for the cluster before it fails.
pub const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Shared state of a running node, reached through `Arc<Node>`.
pub struct Node {
    pub id: NodeId,
    pub info: NodeInfo,
    pub raft: Raft,
    pub store: Store,
    /// Large payloads and model artifacts, by content hash (see `blobs.rs`).
    pub blobs: floe_storage::BlobStore,
    pub reader: StateReader,
    pub peers: Peers,
    pub fingerprint: String,
    pub metrics: Arc<NodeMetrics>,
    pub proposer: Proposer,
    /// Writes on their way to the leader (see `forwarder.rs`).
    pub forwarder: crate::forwarder::Forwarder,
    /// Linearizable reads waiting for a shared ReadIndex round (see `reads.rs`).
    pub reads: crate::reads::ReadRounds,
    pub workers: crate::workers::WorkerRegistry,
    /// Model replicas on this node (see `models.rs`).
    pub models: crate::models::ModelManager,
    pub reports: crate::scheduler::Reports,
    /// Wake-ups from applied state (see `changes.rs`).
    pub changes: Arc<crate::changes::ChangeHub>,
    pub config: NodeConfig,
    /// Until then, a restarted node's idea of the leader comes from its stored
    /// vote and is not yet confirmed by contact.
    pub restart_grace_until: Option<std::time::Instant>,
    /// Fires when the node stops; long-lived streams (workers, watches) end on it.
    pub shutdown: CancellationToken,
}

impl Node {
    pub fn probe_info(&self) -> ProbeInfo {
        // An unreadable store counts as holding state: never bootstrap over it.
        let has_raft_state = self.store.has_raft_state().unwrap_or(true);
        ProbeInfo { node_id: self.id, info: self.info.clone(), has_raft_state }
    }

    pub fn local_status(&self) -> LocalStatus {
        let metrics = self.raft.metrics().borrow().clone();
        LocalStatus {
            node_id: self.id,
            role: role_name(&metrics),
            term: metrics.current_term,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            applied_index: metrics.last_applied.map(|id| id.index).unwrap_or(0),
            current_leader: metrics.current_leader,
        }
    }

    /// Members with their addresses, from this node's view of the membership.
    pub fn members(&self) -> (BTreeMap<NodeId, NodeInfo>, Vec<NodeId>) {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let nodes = membership.nodes().map(|(id, info)| (*id, info.clone())).collect();
        (nodes, voters)
    }
}

pub fn role_name(metrics: &openraft::RaftMetrics<NodeId, NodeInfo>) -> String {
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

fn raft_config(config: &NodeConfig) -> anyhow::Result<openraft::Config> {
    let tuning = &config.raft;
    let raft_config = openraft::Config {
        cluster_name: "floe".into(),
        heartbeat_interval: tuning.heartbeat_interval_ms,
        election_timeout_min: tuning.election_timeout_min_ms,
        election_timeout_max: tuning.election_timeout_max_ms,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(tuning.snapshot_after_entries),
        max_in_snapshot_log_to_keep: tuning.keep_entries_after_snapshot,
        install_snapshot_timeout: tuning.snapshot_timeout_ms,
        ..Default::default()
    };
    raft_config.validate().context("raft settings")
}

/// Starts every part of a node and runs until `cancel` fires.
pub async fn serve(config: NodeConfig, cancel: CancellationToken) -> anyhow::Result<()> {
    let material = TlsMaterial::load(&config.tls.ca, &config.tls.cert, &config.tls.key)?;
    let fingerprint = material.ca_fingerprint().to_string();
    let store_dir = config.data_dir.clone();
    let store_options = StoreOptions { cache_capacity_bytes: config.storage.cache_capacity_bytes, ..Default::default() };
    let store = tokio::task::spawn_blocking(move || Store::open(&store_dir, store_options))
        .await?
        .with_context(|| format!("opening data dir {}", config.data_dir.display()))?;
    store.claim_identity(config.node_id, &fingerprint)?;
    let blob_dir = config.data_dir.join("blobs");
    let blobs = tokio::task::spawn_blocking(move || floe_storage::BlobStore::open(&blob_dir)).await??;

    let declared_gpus = config.inference.gpus.clone();
    let gpus = tokio::task::spawn_blocking(move || floe_inference::GpuInventory::declared_or_detected(declared_gpus))
        .await?
        .context("inference.gpus")?;
    let info = NodeInfo {
        raft_addr: config.advertised_raft_addr().to_string(),
        api_addr: config.advertised_api_addr().to_string(),
        http_addr: config.advertised_http_addr().to_string(),
    };
    let mut transport_options = TransportOptions::default();
    if !config.raft_client_bind_addr.is_empty() {
        transport_options.client_bind_addr = config.raft_client_bind_addr.parse().context("raft_client_bind_addr")?;
    }
    let peers = Peers::new(&material, transport_options.clone())?;
    // Before Raft starts: a restart applies its log right away.
    let changes = crate::changes::ChangeHub::new(config.node_id);
    store.on_applied(changes.listener());
    let raft = Raft::new(
        config.node_id,
        Arc::new(raft_config(&config)?),
        NetworkFactory::new(peers.clone(), config.node_id),
        store.log_store(),
        store.state_machine(),
    )
    .await
    .context("starting raft")?;

    // A restarted voter holds back its first election: the leader needs a
    // moment to reach it, and an election from a node that merely has not
    // heard from the leader yet would depose a healthy leader.
    let restarted = store.has_raft_state()?;
    let grace = Duration::from_millis(config.raft.election_timeout_max_ms * 2);
    let restart_grace_until = restarted.then(|| std::time::Instant::now() + grace);
    if restarted {
        raft.runtime_config().elect(false);
        let raft = raft.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::time::sleep(grace) => raft.runtime_config().elect(true),
            }
        });
    }

    let metrics = Arc::new(NodeMetrics::default());
    let (forwarder, forward_queue) = crate::forwarder::Forwarder::new();
    let (reads, read_queue) = crate::reads::ReadRounds::new();
    let node = Arc::new(Node {
        id: config.node_id,
        info,
        raft: raft.clone(),
        reader: store.reader(),
        store,
        blobs,
        peers,
        fingerprint: fingerprint.clone(),
        metrics,
        proposer: Proposer::start(raft.clone(), config.node_id, CLIENT_REQUEST_TIMEOUT, cancel.clone()),
        forwarder,
        reads,
        workers: Default::default(),
        models: crate::models::ModelManager::new(gpus),
        reports: Default::default(),
        changes,
        config: config.clone(),
        restart_grace_until,
        shutdown: cancel.clone(),
    });

    let raft_bind: SocketAddr = config.raft_addr.parse().context("raft_addr")?;
    let server_options = RaftServerOptions {
        node_id: config.node_id,
        bind_addr: raft_bind,
        snapshot_dir: node.store.snapshot_dir(),
        transport: transport_options,
    };
    let raft_server = RaftServer::start(
        server_options,
        &material,
        raft.clone(),
        Arc::new(PeerApi { node: node.clone() }),
        cancel.clone(),
    )
    .with_context(|| format!("listening for QUIC on {raft_bind}"))?;

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(crate::metrics::track_leader_changes(node.clone(), cancel.clone()));
    tasks.spawn(crate::forwarder::run(node.clone(), forward_queue, cancel.clone()));
    tasks.spawn(crate::reads::run(node.clone(), read_queue, cancel.clone()));
    tasks.spawn(crate::grpc::serve(node.clone(), material.clone(), cancel.clone()));
    tasks.spawn(crate::http::serve(node.clone(), cancel.clone()));
    tasks.spawn(crate::workers::dispatch(node.clone(), cancel.clone()));
    tasks.spawn(crate::scheduler::report(node.clone(), cancel.clone()));
    tasks.spawn(crate::scheduler::schedule(node.clone(), cancel.clone()));
    tasks.spawn(crate::scheduler::retain(node.clone(), cancel.clone()));
    tasks.spawn(crate::blobs::maintain(node.clone(), cancel.clone()));
    tasks.spawn(crate::models::maintain(node.clone(), cancel.clone()));
    // Bootstrap ends on its own once the cluster exists; it is not a server.
    let bootstrap = (config.bootstrap.expect > 0).then(|| tokio::spawn(crate::bootstrap::run(node.clone(), cancel.clone())));
    tracing::info!(node_id = config.node_id, raft = %config.raft_addr, api = %config.api_addr, http = %config.http_addr, "node started");

    let mut failure = None;
    tokio::select! {
        _ = cancel.cancelled() => {}
        Some(result) = tasks.join_next() => {
            // A server that stops on its own is fatal: stop the rest and report it.
            failure = Some(match result {
                Ok(Err(err)) => err,
                Ok(Ok(())) => anyhow::anyhow!("a node service stopped unexpectedly"),
                Err(err) => anyhow::anyhow!("a node service panicked: {err}"),
            });
            cancel.cancel();
        }
    }
    tracing::info!(node_id = config.node_id, "node stopping");
    if let Some(bootstrap) = bootstrap {
        match bootstrap.await {
            Ok(Err(err)) => tracing::warn!(error = %err, "bootstrap failed"),
            Err(err) => tracing::warn!(error = %err, "bootstrap task failed"),
            Ok(Ok(())) => {}
        }
    }
    while let Some(result) = tasks.join_next().await {
        if let Ok(Err(err)) = result {
            failure.get_or_insert(err);
        }
    }
    raft_server.stopped().await;
    if let Err(err) = raft.shutdown().await {
        tracing::warn!(error = %err, "raft shutdown");
    }
    match failure {
        Some(err) => Err(err),
        None => Ok(()),
    }
}
