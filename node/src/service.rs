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
use floe_state::{NodeInfo, Raft, Store, StoreOptions};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::access::AccessControl;
use crate::blobs::BlobService;
use crate::clock::Clock;
use crate::cluster::{ClusterHandle, ClusterParts};
use crate::config::NodeConfig;
use crate::disk::DiskHealth;
use crate::grpc::GrpcServices;
use crate::grpc_limits::TransportLimits;
use crate::kv::KvService;
use crate::metrics::NodeMetrics;
use crate::models::{ModelParts, ModelService};
use crate::peer_server::PeerApi;
use crate::reports::Reports;
use crate::runs::RunService;
use crate::scheduler::{Scheduler, SchedulerOptions, SchedulerParts};
use crate::workers::{HubParts, WorkerHub};

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
    clock: Clock,
    cancel: CancellationToken,
) -> Result<(), NodeFailure> {
    let started = match start(config, disk, clock, cancel.clone()).await {
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
    cluster: ClusterHandle,
    config: NodeConfig,
    raft_server: RaftServer,
    tasks: tokio::task::JoinSet<anyhow::Result<()>>,
    bootstrap: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

async fn start(
    config: NodeConfig,
    disk: DiskHealth,
    clock: Clock,
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
    // The components, each from the ones below it: cluster → blobs → runs
    // → models → workers → scheduler; handlers get the handles they call.
    let blobs = BlobService::new(
        cluster.clone(),
        blobs,
        config.runs.clone(),
        Duration::from_millis(config.storage.blob_gc_grace_ms),
    );
    let runs = RunService::new(cluster.clone(), blobs.clone(), changes.clone());
    let reports = Arc::new(Reports::new(clock));
    // Freed worker slots, new workers and warm replicas all wake the dispatcher.
    let dispatch = Arc::new(Notify::new());
    let models = ModelService::new(ModelParts {
        cluster: cluster.clone(),
        blobs: blobs.clone(),
        gpus,
        reports: reports.clone(),
        config: config.inference.clone(),
        dispatch: dispatch.clone(),
        shutdown: cancel.clone(),
    });
    let limits = TransportLimits::from_config(&config);
    let workers = WorkerHub::new(HubParts {
        cluster: cluster.clone(),
        runs: runs.clone(),
        blobs: blobs.clone(),
        models: models.clone(),
        wake: dispatch,
        changes: changes.clone(),
        limits: limits.clone(),
        shutdown: cancel.clone(),
    });
    let scheduler = Scheduler::new(SchedulerParts {
        cluster: cluster.clone(),
        runs: runs.clone(),
        workers: workers.clone(),
        models: models.clone(),
        reports: reports.clone(),
        changes,
        options: SchedulerOptions {
            no_replica_wait_ms: config.inference.no_replica_wait_ms,
            model_memory_budget: config.inference.memory_budget_bytes,
            retention_ms: config.runs.retention_ms,
        },
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
        Arc::new(PeerApi {
            cluster: cluster.clone(),
            blobs: blobs.clone(),
            models: models.clone(),
            reports,
        }),
        cancel.clone(),
    )
    .with_context(|| format!("listening for QUIC on {raft_bind}"))?;

    let mut tasks = tokio::task::JoinSet::new();
    cluster.spawn_services(cluster_queues, &mut tasks, &cancel);
    tasks.spawn(crate::grpc::serve(
        GrpcServices {
            cluster: cluster.clone(),
            access: AccessControl::new(cluster.clone(), &config.auth.admins),
            kv: KvService::new(cluster.clone()),
            runs,
            blobs: blobs.clone(),
            models: models.clone(),
            workers: workers.clone(),
            fingerprint,
            limits,
        },
        config.api_addr.clone(),
        material.clone(),
        cancel.clone(),
    ));
    tasks.spawn(crate::http::serve(
        cluster.clone(),
        config.http_addr.clone(),
        cancel.clone(),
    ));
    tasks.spawn(workers.dispatch(cancel.clone()));
    scheduler.spawn(&mut tasks, &cancel);
    tasks.spawn(blobs.maintain(cancel.clone()));
    tasks.spawn(models.maintain(cancel.clone()));
    // Bootstrap ends on its own once the cluster exists; it is not a server.
    let bootstrap = if config.bootstrap.expect > 0 {
        let peers = config.bootstrap_peers()?;
        Some(tokio::spawn(crate::bootstrap::run(
            cluster.clone(),
            peers,
            cancel.clone(),
        )))
    } else {
        None
    };
    tracing::info!(node_id = config.node_id, raft = %config.raft_addr, api = %config.api_addr, http = %config.http_addr, "node started");
    Ok(Started {
        cluster,
        config,
        raft_server,
        tasks,
        bootstrap,
    })
}

impl Started {
    async fn run_until_stopped(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let Started {
            cluster,
            config,
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
            if let Some(fatal) = cluster.core_failure() {
                failure = Some(anyhow::anyhow!("raft core stopped: {fatal}"));
            }
        }
        let grace = Duration::from_millis(config.shutdown_grace_ms);
        tracing::info!(
            node_id = cluster.id(),
            grace_ms = config.shutdown_grace_ms,
            "node stopping"
        );
        let clock = cluster.clock().clone();
        let stopping = clock.now();
        // The Raft core stops first: nothing of this node campaigns or votes
        // while the rest winds down, and requests still waiting on it end now
        // with an error instead of at their deadline.
        cluster.stop(grace).await;
        if let Some(bootstrap) = bootstrap {
            bootstrap.abort();
            if let Ok(Ok(Err(err))) = tokio::time::timeout(grace, bootstrap).await {
                tracing::warn!(error = %err, "bootstrap failed");
            }
        }
        let drained = tokio::time::timeout(grace.saturating_sub(clock.since(stopping)), async {
            while let Some(result) = tasks.join_next().await {
                if let Ok(Err(err)) = result {
                    failure.get_or_insert(err);
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                grace_ms = config.shutdown_grace_ms,
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
            node_id = cluster.id(),
            took_ms = clock.since(stopping).as_millis() as u64,
            "node stopped"
        );
        // Only a failed node may be started again in this process (`outage.rs`).
        if failure.is_some() {
            wait_until_released(cluster).await;
        }
        match failure {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

/// Waits (bounded) until nothing holds the node any more, so its store and
/// sockets are closed before the node is started again in this process.
async fn wait_until_released(cluster: ClusterHandle) {
    let node_id = cluster.id();
    let weak = cluster.downgrade();
    let clock = cluster.clock().clone();
    drop(cluster);
    for _ in 0..100 {
        if weak.holders() == 0 {
            return;
        }
        clock.sleep(Duration::from_millis(50)).await;
    }
    tracing::warn!(
        node_id,
        holders = weak.holders(),
        "node state still held 5 s after stopping"
    );
}
