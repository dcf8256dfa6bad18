//! A running node: store, Raft, QUIC transport, gRPC and HTTP servers, and
//! the bootstrap task, all drained on one cancellation token. `outage.rs`
//! runs it, and runs it again after its data dir failed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use floe_raft::{
    ElectionOptions, Elections, NetworkFactory, Peers, RaftAdmission, RaftServer,
    RaftServerOptions, TlsMaterial, TransportOptions,
};
use floe_state::{NodeId, NodeInfo, Raft, StateReader, Store, StoreOptions};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::cluster::{ClusterHandle, ClusterParts};
use crate::config::NodeConfig;
use crate::disk::DiskHealth;
use crate::metrics::NodeMetrics;
use crate::peer_api::PeerApi;

/// How long a client request may wait for the cluster before it fails.
pub const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Shared state of a running node, reached through `Arc<Node>`.
pub struct Node {
    pub id: NodeId,
    /// Leadership, writes, read barriers and the membership (see `cluster/`).
    pub cluster: ClusterHandle,
    /// The node's one clock (see `clock.rs`).
    pub clock: Clock,
    pub store: Store,
    /// Large payloads and model artifacts, by content hash (see `blobs.rs`).
    pub blobs: floe_state::BlobStore,
    pub reader: StateReader,
    pub fingerprint: String,
    pub metrics: Arc<NodeMetrics>,
    pub workers: crate::workers::WorkerRegistry,
    /// Model replicas on this node (see `models.rs`).
    pub models: crate::models::ModelManager,
    pub reports: crate::scheduler::Reports,
    /// Wake-ups from applied state (see `changes.rs`).
    pub changes: Arc<crate::changes::ChangeHub>,
    pub config: NodeConfig,
    /// Free space and writability of the data dir (see `disk.rs`).
    pub disk: DiskHealth,
    /// Fires when the node stops; long-lived streams (workers, watches) end on it.
    pub shutdown: CancellationToken,
}

fn election_options(config: &NodeConfig) -> ElectionOptions {
    let tuning = &config.raft;
    ElectionOptions::from_timeouts(
        tuning.heartbeat_interval_ms,
        tuning.election_timeout_min_ms,
        tuning.election_timeout_max_ms,
    )
}

fn raft_config(config: &NodeConfig) -> anyhow::Result<openraft::Config> {
    let tuning = &config.raft;
    // openraft's election timer stays off (see floe_raft::election); its
    // timeouts only set the vote lease and the vote RPC's time limit.
    let (election_timeout_min, election_timeout_max) = election_options(config).openraft_timeouts();
    let raft_config = openraft::Config {
        cluster_name: "floe".into(),
        heartbeat_interval: tuning.heartbeat_interval_ms,
        election_timeout_min,
        election_timeout_max,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(tuning.snapshot_after_entries),
        max_in_snapshot_log_to_keep: tuning.keep_entries_after_snapshot,
        install_snapshot_timeout: tuning.snapshot_timeout_ms,
        ..Default::default()
    };
    raft_config.validate().context("raft settings")
}

/// Why a node's run ended other than by its cancellation token.
#[derive(Debug)]
pub enum NodeFailure {
    /// It could not start (the store, a listener, the TLS material).
    Starting(anyhow::Error),
    /// It started and then a part of it stopped (the Raft core, a server).
    Running(anyhow::Error),
}

impl NodeFailure {
    pub fn error(&self) -> &anyhow::Error {
        match self {
            NodeFailure::Starting(error) | NodeFailure::Running(error) => error,
        }
    }

    pub fn into_error(self) -> anyhow::Error {
        match self {
            NodeFailure::Starting(error) | NodeFailure::Running(error) => error,
        }
    }
}

/// Starts every part of a node and runs until `cancel` fires or a part
/// fails; either way everything is drained when it returns, and after a
/// failure it waits (bounded) until the store and sockets are released, so
/// the node can be started again in this process.
pub async fn run(
    config: NodeConfig,
    disk: DiskHealth,
    cancel: CancellationToken,
) -> Result<(), NodeFailure> {
    let started = match start(config, disk, cancel.clone()).await {
        Ok(started) => started,
        Err(error) => {
            // Whatever had started (the proposer) stops with it.
            cancel.cancel();
            return Err(NodeFailure::Starting(error));
        }
    };
    started
        .run_until_stopped(cancel)
        .await
        .map_err(NodeFailure::Running)
}

/// A node whose parts are all running.
struct Started {
    node: Arc<Node>,
    raft_server: RaftServer,
    tasks: tokio::task::JoinSet<anyhow::Result<()>>,
    bootstrap: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

async fn start(
    config: NodeConfig,
    disk: DiskHealth,
    cancel: CancellationToken,
) -> anyhow::Result<Started> {
    let material = TlsMaterial::load(&config.tls.ca, &config.tls.cert, &config.tls.key)?;
    let fingerprint = material.ca_fingerprint().to_string();
    let store_dir = config.data_dir.clone();
    let store_options = StoreOptions {
        cache_capacity_bytes: config.storage.cache_capacity_bytes,
        ..Default::default()
    };
    let store = tokio::task::spawn_blocking(move || Store::open(&store_dir, store_options))
        .await?
        .with_context(|| format!("opening data dir {}", config.data_dir.display()))?;
    store.claim_identity(config.node_id, &fingerprint)?;
    let blob_dir = config.data_dir.join("blobs");
    let blobs =
        tokio::task::spawn_blocking(move || floe_state::BlobStore::open(&blob_dir)).await??;

    let declared_gpus = config.inference.gpus.clone();
    let gpus = tokio::task::spawn_blocking(move || {
        floe_inference::GpuInventory::declared_or_detected(declared_gpus)
    })
    .await?
    .context("inference.gpus")?;
    let info = NodeInfo {
        raft_addr: config.advertised_raft_addr().to_string(),
        api_addr: config.advertised_api_addr().to_string(),
        http_addr: config.advertised_http_addr().to_string(),
    };
    let mut transport_options = TransportOptions::default();
    if !config.raft_client_bind_addr.is_empty() {
        transport_options.client_bind_addr = config
            .raft_client_bind_addr
            .parse()
            .context("raft_client_bind_addr")?;
    }
    let peers = Peers::new(&material, transport_options.clone())?;
    let group = crate::raft_group::transport(peers.clone(), config.node_id, store.snapshot_dir());
    // Before Raft starts: a restart applies its log right away.
    let changes = crate::changes::ChangeHub::new(config.node_id);
    store.on_applied(changes.listener());
    let raft = Raft::new(
        config.node_id,
        Arc::new(raft_config(&config)?),
        NetworkFactory::new(group.clone()),
        store.log_store(),
        store.state_machine(),
    )
    .await
    .context("starting raft")?;

    // Elections go through a pre-vote round (floe_raft::election): a node
    // that merely has not heard from the leader yet cannot depose it.
    raft.runtime_config().elect(false);
    let elections = Elections::new(
        raft.clone(),
        store.log_store(),
        group,
        election_options(&config),
    );

    let clock = Clock::system();
    let metrics = Arc::new(NodeMetrics::default());
    let (cluster, cluster_queues) = ClusterHandle::new(
        ClusterParts {
            id: config.node_id,
            info,
            raft: raft.clone(),
            store: store.clone(),
            transport: Arc::new(peers),
            elections: elections.clone(),
            disk: disk.clone(),
            metrics: metrics.clone(),
            heartbeat: Duration::from_millis(config.raft.heartbeat_interval_ms),
            clock: clock.clone(),
        },
        cancel.clone(),
    );
    let node = Arc::new(Node {
        id: config.node_id,
        cluster: cluster.clone(),
        clock: clock.clone(),
        reader: store.reader(),
        store,
        blobs,
        fingerprint: fingerprint.clone(),
        metrics,
        workers: Default::default(),
        models: crate::models::ModelManager::new(gpus, clock.clone()),
        reports: crate::scheduler::Reports::new(clock),
        changes,
        config: config.clone(),
        disk: disk.clone(),
        shutdown: cancel.clone(),
    });

    let raft_bind: SocketAddr = config.raft_addr.parse().context("raft_addr")?;
    let server_options = RaftServerOptions {
        node_id: config.node_id,
        bind_addr: raft_bind,
        transport: transport_options,
        // Appends, votes and snapshots all write: refused while the disk cannot take them.
        admission: {
            let disk = disk.clone();
            RaftAdmission::new(move || disk.refusal())
        },
    };
    let raft_server = RaftServer::start(
        server_options,
        &material,
        elections.clone(),
        Arc::new(PeerApi { node: node.clone() }),
        cancel.clone(),
    )
    .with_context(|| format!("listening for QUIC on {raft_bind}"))?;

    let mut tasks = tokio::task::JoinSet::new();
    cluster.spawn_services(cluster_queues, &mut tasks, &cancel);
    tasks.spawn(crate::grpc::serve(
        node.clone(),
        material.clone(),
        cancel.clone(),
    ));
    tasks.spawn(crate::http::serve(node.clone(), cancel.clone()));
    tasks.spawn(crate::workers::dispatch(node.clone(), cancel.clone()));
    tasks.spawn(crate::scheduler::report(node.clone(), cancel.clone()));
    tasks.spawn(crate::scheduler::schedule(node.clone(), cancel.clone()));
    tasks.spawn(crate::scheduler::retain(node.clone(), cancel.clone()));
    tasks.spawn(crate::blobs::maintain(node.clone(), cancel.clone()));
    tasks.spawn(crate::models::maintain(node.clone(), cancel.clone()));
    // Bootstrap ends on its own once the cluster exists; it is not a server.
    let bootstrap = (config.bootstrap.expect > 0)
        .then(|| tokio::spawn(crate::bootstrap::run(node.clone(), cancel.clone())));
    tracing::info!(node_id = config.node_id, raft = %config.raft_addr, api = %config.api_addr, http = %config.http_addr, "node started");
    Ok(Started {
        node,
        raft_server,
        tasks,
        bootstrap,
    })
}

impl Started {
    async fn run_until_stopped(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let Started {
            node,
            raft_server,
            mut tasks,
            bootstrap,
        } = self;
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
        // A stopped Raft core is the cause whichever service noticed first.
        if failure.is_some() {
            if let Some(fatal) = node.cluster.core_failure() {
                failure = Some(anyhow::anyhow!("raft core stopped: {fatal}"));
            }
        }
        let grace = Duration::from_millis(node.config.shutdown_grace_ms);
        tracing::info!(
            node_id = node.id,
            grace_ms = node.config.shutdown_grace_ms,
            "node stopping"
        );
        let stopping = std::time::Instant::now();
        // The Raft core stops first: nothing of this node campaigns or votes
        // while the rest winds down, and requests still waiting on it end now
        // with an error instead of at their deadline.
        node.cluster.stop(grace).await;
        if let Some(bootstrap) = bootstrap {
            bootstrap.abort();
            if let Ok(Ok(Err(err))) = tokio::time::timeout(grace, bootstrap).await {
                tracing::warn!(error = %err, "bootstrap failed");
            }
        }
        let drained = tokio::time::timeout(grace.saturating_sub(stopping.elapsed()), async {
            while let Some(result) = tasks.join_next().await {
                if let Ok(Err(err)) = result {
                    failure.get_or_insert(err);
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                grace_ms = node.config.shutdown_grace_ms,
                left = tasks.len(),
                "cutting off services still running after the grace period"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        if tokio::time::timeout(Duration::from_secs(1), raft_server.stopped())
            .await
            .is_err()
        {
            tracing::warn!("raft server did not stop within 1 s");
        }
        tracing::info!(
            node_id = node.id,
            took_ms = stopping.elapsed().as_millis() as u64,
            "node stopped"
        );
        // Only a failed node may be started again in this process (`outage.rs`).
        if failure.is_some() {
            wait_until_released(node).await;
        }
        match failure {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

/// Waits (bounded) until nothing holds the node any more, so its store and
/// sockets are closed before the node is started again in this process.
async fn wait_until_released(node: Arc<Node>) {
    let node_id = node.id;
    let weak = Arc::downgrade(&node);
    drop(node);
    for _ in 0..100 {
        if weak.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::warn!(
        node_id,
        holders = weak.strong_count(),
        "node state still held 5 s after stopping"
    );
}
