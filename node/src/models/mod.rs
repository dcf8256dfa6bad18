//! Model replicas on this node: the warm ONNX Runtime pools every workflow
//! shares, built from the replica placements the leader committed, and the
//! inference tasks and direct requests they serve.
//!
//! A placed replica is one `floe_inference::Pool` (one session on its own
//! thread, a bounded queue, the batcher). The node learns its replicas from
//! the state machine (`model/replica/…`), loads the artifact from the blob
//! store (fetching it from a peer when missing), warms the pool, and
//! reports each replica's state, footprint, queue and latency to the leader
//! with its load report. Nodes holding a warm replica of a model serve the
//! `model.<name>` blocks, so the scheduler places inference tasks on them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use floe_engine::run::TaskFailure;
use floe_inference::{
    Device, Encoding, GpuDevice, GpuInventory, OrtRuntime, Pool, PoolHandle, PoolOptions, TensorMap,
};
use floe_state::models::{DeploySpec, Deployment, GpuShare, ReplicaRecord};
use floe_state::runs::TaskRecord;
use floe_state::NodeId;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::blobs::BlobService;
use crate::clock::Clock;
use crate::cluster::ClusterHandle;
use crate::config::InferenceConfig;
use crate::error::ApiError;
use crate::reports::{ReplicaId, ReplicaReport, Reports};

mod placement;
mod registry;

use floe_engine::names::quote_bounded;
pub use placement::{estimated_footprint, PLACE_EVERY};
pub use registry::{gpu_milli, PutModel, ReplicaView};

/// Inference tasks a warm replica takes at once, per `max_batch`: enough
/// for the next batch to form while one runs.
const TASKS_PER_BATCH_SLOT: u32 = 2;

/// How often a node compares its replicas with the committed placements.
const RECONCILE_EVERY: Duration = Duration::from_millis(250);
/// How long an unanswered request for a model version counts as demand.
const DEMAND_FOR: Duration = Duration::from_secs(10);

enum LocalState {
    Loading,
    Warm(PoolHandle),
    Failed(String),
}

struct LocalReplica {
    state: LocalState,
    /// What it was built from; a change rebuilds it.
    spec: DeploySpec,
    gpu: Option<GpuShare>,
    last_used_ms: Arc<AtomicU64>,
    /// Inference tasks running on it now.
    tasks: u32,
}

/// Handle to the model component: this node's replicas, direct inference,
/// the registry API and (on the leader) replica placement; cheap to clone.
#[derive(Clone)]
pub struct ModelService {
    inner: Arc<ModelInner>,
}

struct ModelInner {
    cluster: ClusterHandle,
    blobs: BlobService,
    manager: ModelManager,
    /// The leader's view of every node's replicas (model status, placement).
    reports: Arc<Reports>,
    config: InferenceConfig,
    clock: Clock,
    /// Wakes the dispatcher when a replica turns warm or frees a task slot.
    dispatch: Arc<Notify>,
    shutdown: CancellationToken,
}

/// What the model component is built from.
pub struct ModelParts {
    pub cluster: ClusterHandle,
    pub blobs: BlobService,
    pub gpus: GpuInventory,
    pub reports: Arc<Reports>,
    pub config: InferenceConfig,
    pub dispatch: Arc<Notify>,
    pub shutdown: CancellationToken,
}

impl ModelService {
    pub fn new(parts: ModelParts) -> ModelService {
        let clock = parts.cluster.clock().clone();
        ModelService {
            inner: Arc::new(ModelInner {
                manager: ModelManager::new(parts.gpus, clock.clone()),
                cluster: parts.cluster,
                blobs: parts.blobs,
                reports: parts.reports,
                config: parts.config,
                clock,
                dispatch: parts.dispatch,
                shutdown: parts.shutdown,
            }),
        }
    }

    /// The replicas on this node, for load reports and dispatch.
    pub fn local(&self) -> &ModelManager {
        &self.inner.manager
    }

    fn id(&self) -> NodeId {
        self.inner.cluster.id()
    }

    pub fn ort_library(&self) -> std::path::PathBuf {
        self.inner.config.ort_library.clone()
    }
}

/// The replicas on this node and the inference tasks they run.
pub struct ModelManager {
    runtime: OnceLock<Result<OrtRuntime, String>>,
    replicas: Mutex<BTreeMap<ReplicaId, LocalReplica>>,
    /// Inference tasks running here: task key text → (attempt, replica).
    running: Mutex<BTreeMap<String, (u32, ReplicaId)>>,
    /// Direct requests that found no warm replica, by model version, with
    /// when they last asked: the leader places evicted replicas again.
    demand: Mutex<BTreeMap<(String, u64), Instant>>,
    gpus: GpuInventory,
    /// Stamps replicas' last use (`last_used_ms`) and ages `demand`.
    clock: crate::clock::Clock,
    /// Fires when a replica changes state.
    pub changed: Notify,
}

impl ModelManager {
    pub fn new(gpus: GpuInventory, clock: crate::clock::Clock) -> ModelManager {
        ModelManager {
            runtime: OnceLock::new(),
            replicas: Mutex::new(BTreeMap::new()),
            running: Mutex::new(BTreeMap::new()),
            demand: Mutex::new(BTreeMap::new()),
            gpus,
            clock,
            changed: Notify::new(),
        }
    }

    pub fn gpus(&self) -> &[GpuDevice] {
        &self.gpus.devices
    }

    /// The process's ONNX Runtime, loaded on first use.
    pub async fn runtime(&self, library: &std::path::Path) -> Result<OrtRuntime, ApiError> {
        if let Some(loaded) = self.runtime.get() {
            return loaded.clone().map_err(ApiError::FailedPrecondition);
        }
        let library = library.to_path_buf();
        let loaded = tokio::task::spawn_blocking(move || {
            if library.as_os_str().is_empty() {
                return Err("no ONNX Runtime library configured: set inference.ort_library (FLOE_INFERENCE_ORT_LIBRARY)".to_string());
            }
            OrtRuntime::load(&library).map_err(|err| err.to_string())
        })
        .await
        .map_err(|err| ApiError::Internal(format!("loading ONNX Runtime: {err}")))?;
        let loaded = self.runtime.get_or_init(|| loaded).clone();
        loaded.map_err(ApiError::FailedPrecondition)
    }

    pub fn reports(&self) -> Vec<ReplicaReport> {
        let Ok(replicas) = self.replicas.lock() else {
            return Vec::new();
        };
        replicas
            .iter()
            .map(|(id, local)| {
                let mut report = ReplicaReport {
                    id: id.clone(),
                    state: String::new(),
                    detail: String::new(),
                    memory_bytes: 0,
                    queue_depth: 0,
                    queue_capacity: local.spec.queue,
                    p50_ms: 0.0,
                    p99_ms: 0.0,
                    completed: 0,
                    last_used_ms: local.last_used_ms.load(Ordering::Relaxed),
                };
                match &local.state {
                    LocalState::Loading => report.state = "loading".into(),
                    LocalState::Failed(reason) => {
                        report.state = "failed".into();
                        report.detail = reason.clone();
                    }
                    LocalState::Warm(pool) => {
                        let stats = pool.stats();
                        report.state = "warm".into();
                        report.memory_bytes = stats.memory_bytes;
                        report.queue_depth = stats.queue_depth as u32;
                        report.queue_capacity = stats.queue_capacity as u32;
                        report.p50_ms = stats.latency_p50_ms;
                        report.p99_ms = stats.latency_p99_ms;
                        report.completed = stats.completed;
                    }
                }
                report
            })
            .collect()
    }

    /// Model versions asked for lately with no warm replica to serve them.
    pub fn demand(&self) -> Vec<(String, u64)> {
        let Ok(mut demand) = self.demand.lock() else {
            return Vec::new();
        };
        let now = self.clock.now();
        demand.retain(|_, at| now.saturating_duration_since(*at) < DEMAND_FOR);
        demand.keys().cloned().collect()
    }

    fn note_demand(&self, model: &str, version: u64) {
        if let Ok(mut demand) = self.demand.lock() {
            demand.insert((model.to_string(), version), self.clock.now());
        }
    }

    /// Free inference task slots per `model.…` block served here. `latest`
    /// maps a model to its highest deployed version, which also serves the
    /// unversioned block.
    pub fn free_slots(&self, latest: &BTreeMap<String, u64>) -> BTreeMap<String, u32> {
        self.slots(latest, true)
    }

    /// Task slots of the warm replicas here, busy or not.
    pub fn capacity(&self, latest: &BTreeMap<String, u64>) -> BTreeMap<String, u32> {
        self.slots(latest, false)
    }

    fn slots(&self, latest: &BTreeMap<String, u64>, only_free: bool) -> BTreeMap<String, u32> {
        let mut free: BTreeMap<String, u32> = BTreeMap::new();
        let Ok(replicas) = self.replicas.lock() else {
            return free;
        };
        for (id, local) in replicas.iter() {
            if !matches!(local.state, LocalState::Warm(_)) {
                continue;
            }
            let busy = if only_free { local.tasks } else { 0 };
            let room = (local.spec.max_batch * TASKS_PER_BATCH_SLOT).saturating_sub(busy);
            *free
                .entry(floe_engine::inference_block(&id.model, Some(id.version)))
                .or_default() += room;
            if latest.get(&id.model) == Some(&id.version) {
                *free
                    .entry(floe_engine::inference_block(&id.model, None))
                    .or_default() += room;
            }
        }
        free
    }

    pub fn is_running(&self, task: &str, attempt: u32) -> bool {
        self.running
            .lock()
            .map(|running| running.get(task).is_some_and(|(a, _)| *a == attempt))
            .unwrap_or(false)
    }

    pub fn running_count(&self) -> u32 {
        self.running
            .lock()
            .map(|running| running.len() as u32)
            .unwrap_or(0)
    }

    /// The warm replica with the most room among those matching, and its pool.
    fn pick(
        &self,
        matches: impl Fn(&ReplicaId) -> bool,
        for_task: bool,
    ) -> Option<(ReplicaId, PoolHandle)> {
        let replicas = self.replicas.lock().ok()?;
        replicas
            .iter()
            .filter(|(id, _)| matches(id))
            .filter_map(|(id, local)| match &local.state {
                LocalState::Warm(pool) => {
                    let task_room = local.spec.max_batch * TASKS_PER_BATCH_SLOT > local.tasks;
                    (!for_task || task_room)
                        .then(|| (id.clone(), pool.clone(), local.tasks, pool.queue_depth()))
                }
                _ => None,
            })
            .min_by_key(|(_, _, tasks, depth)| (*depth, *tasks))
            .map(|(id, pool, _, _)| (id, pool))
    }

    fn touch(&self, id: &ReplicaId) {
        if let Ok(replicas) = self.replicas.lock() {
            if let Some(local) = replicas.get(id) {
                local
                    .last_used_ms
                    .store(self.clock.now_ms(), Ordering::Relaxed);
            }
        }
    }

    fn adjust_tasks(&self, id: &ReplicaId, delta: i32) {
        if let Ok(mut replicas) = self.replicas.lock() {
            if let Some(local) = replicas.get_mut(id) {
                local.tasks = local.tasks.saturating_add_signed(delta);
            }
        }
    }

    /// Whether a replica here serves inference `block` (warm, room or not).
    pub fn serves(&self, block: &str, latest: &BTreeMap<String, u64>) -> bool {
        let Ok(replicas) = self.replicas.lock() else {
            return false;
        };
        replicas.iter().any(|(id, local)| {
            matches!(local.state, LocalState::Warm(_)) && block_matches(block, id, latest)
        })
    }
}

/// Whether replica `id` serves inference block `block`.
fn block_matches(block: &str, id: &ReplicaId, latest: &BTreeMap<String, u64>) -> bool {
    block == floe_engine::inference_block(&id.model, Some(id.version))
        || (block == floe_engine::inference_block(&id.model, None)
            && latest.get(&id.model) == Some(&id.version))
}

/// Highest deployed version per model: the one unversioned requests use.
pub fn latest_deployed(deployments: &[Deployment]) -> BTreeMap<String, u64> {
    let mut latest = BTreeMap::new();
    for deployment in deployments {
        let entry = latest
            .entry(deployment.model.clone())
            .or_insert(deployment.version);
        *entry = (*entry).max(deployment.version);
    }
    latest
}

impl ModelService {
    /// Keeps this node's replicas in line with the committed placements.
    pub async fn maintain(self, cancel: CancellationToken) -> anyhow::Result<()> {
        // A fixed period, not every applied entry: placements change seldom and
        // busy run traffic must not pay for rereading them.
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.inner.clock.sleep(RECONCILE_EVERY) => {}
            }
            let reader = self.inner.cluster.reader().clone();
            let read = tokio::task::spawn_blocking(move || {
                Ok::<_, floe_state::StoreError>((reader.replicas()?, reader.deployments()?))
            })
            .await;
            let (records, deployments) = match read {
                Ok(Ok(found)) => found,
                Ok(Err(err)) => {
                    crate::warn_limited!("reading model placements", error = %err, "reading model placements");
                    continue;
                }
                Err(_) => continue,
            };
            self.reconcile(&records, &deployments);
        }
        let pools: Vec<PoolHandle> = match self.inner.manager.replicas.lock() {
            Ok(mut replicas) => std::mem::take(&mut *replicas)
                .into_values()
                .filter_map(|local| match local.state {
                    LocalState::Warm(pool) => Some(pool),
                    _ => None,
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        for pool in pools {
            pool.shutdown().await;
        }
        Ok(())
    }

    fn reconcile(&self, records: &[ReplicaRecord], deployments: &[Deployment]) {
        let specs: BTreeMap<(String, u64), &DeploySpec> = deployments
            .iter()
            .map(|d| ((d.model.clone(), d.version), &d.spec))
            .collect();
        let wanted: BTreeMap<ReplicaId, (DeploySpec, Option<GpuShare>)> = records
            .iter()
            .filter(|record| record.node == Some(self.id()))
            .filter_map(|record| {
                let spec = specs.get(&(record.model.clone(), record.version))?;
                Some((ReplicaId::of(record), ((*spec).clone(), record.gpu)))
            })
            .collect();
        let mut to_stop = Vec::new();
        let mut to_load = Vec::new();
        if let Ok(mut replicas) = self.inner.manager.replicas.lock() {
            let stale: Vec<ReplicaId> = replicas
                .iter()
                .filter(|(id, local)| {
                    wanted
                        .get(*id)
                        .is_none_or(|(spec, gpu)| *spec != local.spec || *gpu != local.gpu)
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in stale {
                if let Some(local) = replicas.remove(&id) {
                    tracing::info!(node_id = self.id(), replica = %id, "model replica removed from this node");
                    if let LocalState::Warm(pool) = local.state {
                        to_stop.push(pool);
                    }
                }
            }
            for (id, (spec, gpu)) in &wanted {
                if replicas.contains_key(id) {
                    continue;
                }
                let local = LocalReplica {
                    state: LocalState::Loading,
                    spec: spec.clone(),
                    gpu: *gpu,
                    last_used_ms: Arc::new(AtomicU64::new(self.inner.clock.now_ms())),
                    tasks: 0,
                };
                replicas.insert(id.clone(), local);
                to_load.push((id.clone(), spec.clone(), *gpu));
            }
        }
        for pool in to_stop {
            // Queued requests still get answers; new ones go elsewhere.
            tokio::spawn(async move { pool.shutdown().await });
        }
        for (id, spec, gpu) in to_load {
            let service = self.clone();
            tokio::spawn(async move {
                let outcome = service.load_replica(&id, &spec, gpu).await;
                service.finish_load(&id, &spec, gpu, outcome).await;
            });
        }
    }

    async fn load_replica(
        &self,
        id: &ReplicaId,
        spec: &DeploySpec,
        gpu: Option<GpuShare>,
    ) -> Result<PoolHandle, String> {
        let started = self.inner.clock.now();
        let runtime = self
            .inner
            .manager
            .runtime(&self.ort_library())
            .await
            .map_err(|err| err.to_string())?;
        let record = self
            .inner
            .cluster
            .reader()
            .model(&id.model, Some(id.version))
            .map_err(|err| err.to_string())?
            .ok_or_else(|| format!("model {} has no version {}", id.model, id.version))?;
        let bytes = self
            .inner
            .blobs
            .load(&record.hash)
            .await
            .map_err(|err| format!("model artifact: {err}"))?;
        let device = match gpu {
            None => Device::Cpu,
            Some(share) => {
                let device = self
                    .inner
                    .manager
                    .gpus
                    .device(share.device)
                    .ok_or_else(|| {
                        format!("GPU {} is not in this node's inventory", share.device)
                    })?;
                Device::Cuda {
                    device_id: share.device,
                    mem_limit_bytes: device.memory_bytes / 1000 * u64::from(share.milli),
                }
            }
        };
        let options = PoolOptions {
            name: id.to_string(),
            replicas: 1,
            intra_threads: spec.threads as usize,
            max_batch: spec.max_batch as usize,
            max_delay: Duration::from_millis(spec.max_delay_ms),
            queue_capacity: spec.queue as usize,
            device,
            ..PoolOptions::default()
        };
        let pool = Pool::start(&runtime, bytes, options)
            .await
            .map_err(|err| err.to_string())?;
        tracing::info!(
            node_id = self.id(),
            replica = %id,
            memory_mib = pool.stats().memory_bytes / (1024 * 1024),
            load_ms = self.inner.clock.since(started).as_millis() as u64,
            "model replica warm"
        );
        Ok(pool)
    }

    async fn finish_load(
        &self,
        id: &ReplicaId,
        spec: &DeploySpec,
        gpu: Option<GpuShare>,
        outcome: Result<PoolHandle, String>,
    ) {
        let mut orphan = None;
        if let Ok(mut replicas) = self.inner.manager.replicas.lock() {
            match replicas.get_mut(id) {
                // Still wanted with the settings it was built from.
                Some(local)
                    if local.spec == *spec
                        && local.gpu == gpu
                        && matches!(local.state, LocalState::Loading) =>
                {
                    local.state = match outcome {
                        Ok(pool) => LocalState::Warm(pool),
                        Err(reason) => {
                            tracing::warn!(node_id = self.id(), replica = %id, error = %reason, "model replica failed to load");
                            LocalState::Failed(reason)
                        }
                    };
                    local
                        .last_used_ms
                        .store(self.inner.clock.now_ms(), Ordering::Relaxed);
                }
                _ => orphan = outcome.ok(),
            }
        }
        if let Some(pool) = orphan {
            pool.shutdown().await;
        }
        self.inner.manager.changed.notify_waiters();
        self.inner.dispatch.notify_one();
    }
}

/// The input an inference task carries: `{"inputs": {...}, "outputs": "base64"|"list"}`.
#[derive(Deserialize)]
struct InferenceTaskInput {
    inputs: Value,
    #[serde(default)]
    outputs: floe_engine::TensorEncoding,
}

/// An inference task holding a task slot of a warm replica here: the
/// dispatcher runs it and delivers its result; dropping it frees the slot.
pub struct InferenceTask {
    service: ModelService,
    replica: ReplicaId,
    pool: PoolHandle,
    text: String,
}

impl ModelService {
    /// Takes a task slot on a warm replica with room for an inference task
    /// placed here; none when no replica has room now.
    pub fn start_task(
        &self,
        task: &TaskRecord,
        latest: &BTreeMap<String, u64>,
    ) -> Option<InferenceTask> {
        let manager = &self.inner.manager;
        let block = &task.spec.block;
        let (replica, pool) = manager.pick(|id| block_matches(block, id, latest), true)?;
        let text = task.spec.key.to_string();
        if let Ok(mut running) = manager.running.lock() {
            running.insert(text.clone(), (task.spec.attempt, replica.clone()));
        }
        manager.adjust_tasks(&replica, 1);
        manager.touch(&replica);
        Some(InferenceTask {
            service: self.clone(),
            replica,
            pool,
            text,
        })
    }
}

impl InferenceTask {
    /// The replica running it, as the attempt records its worker.
    pub fn replica(&self) -> String {
        self.replica.to_string()
    }

    pub async fn run(&self, input: Value) -> Result<Vec<u8>, TaskFailure> {
        run_inference_task(&self.pool, input).await
    }
}

impl Drop for InferenceTask {
    fn drop(&mut self) {
        let manager = &self.service.inner.manager;
        if let Ok(mut running) = manager.running.lock() {
            running.remove(&self.text);
        }
        manager.adjust_tasks(&self.replica, -1);
        self.service.inner.dispatch.notify_one();
    }
}

async fn run_inference_task(pool: &PoolHandle, input: Value) -> Result<Vec<u8>, TaskFailure> {
    let reject = |error: String| TaskFailure {
        error,
        retryable: false,
    };
    let input: InferenceTaskInput = serde_json::from_value(input)
        .map_err(|err| reject(format!("inference task input: {err}")))?;
    let inputs = floe_inference::tensors_from_json(&input.inputs, "input")
        .map_err(|err| reject(err.to_string()))?;
    let outputs = pool.infer(inputs).await.map_err(inference_failure)?;
    let encoding = match input.outputs {
        floe_engine::TensorEncoding::Base64 => Encoding::Base64,
        floe_engine::TensorEncoding::List => Encoding::List,
    };
    serde_json::to_vec(&floe_inference::tensors_to_json(&outputs, encoding)).map_err(|err| {
        TaskFailure {
            error: format!("encoding outputs: {err}"),
            retryable: false,
        }
    })
}

/// Bad inputs are final; a full queue or a replica going away may pass.
fn inference_failure(err: floe_inference::Error) -> TaskFailure {
    use floe_inference::Error;
    let retryable = matches!(
        err,
        Error::QueueFull { .. }
            | Error::PoolClosed { .. }
            | Error::ReplicaGone { .. }
            | Error::Run { .. }
    );
    TaskFailure {
        error: err.to_string(),
        retryable,
    }
}

fn api_error(err: floe_inference::Error) -> ApiError {
    use floe_inference::Error;
    match err {
        Error::InvalidInput { .. } => ApiError::InvalidArgument(err.to_string()),
        Error::QueueFull { .. } => ApiError::ResourceExhausted(err.to_string()),
        Error::PoolClosed { .. } | Error::ReplicaGone { .. } => {
            ApiError::Unavailable(err.to_string())
        }
        other => ApiError::Internal(other.to_string()),
    }
}

/// Where a direct request ran.
pub struct Served {
    pub outputs: TensorMap,
    pub node: NodeId,
    pub replica: u32,
}

impl ModelService {
    /// Runs a request on a warm replica of this node, if it has one.
    pub async fn infer_local(
        &self,
        model: &str,
        version: u64,
        inputs: TensorMap,
    ) -> Result<Option<Served>, ApiError> {
        let Some((id, pool)) = self
            .inner
            .manager
            .pick(|id| id.model == model && id.version == version, false)
        else {
            return Ok(None);
        };
        self.inner.manager.touch(&id);
        let outputs = pool.infer(inputs).await.map_err(api_error)?;
        Ok(Some(Served {
            outputs,
            node: self.id(),
            replica: id.replica,
        }))
    }

    /// Runs a request on a warm replica: this node's when it has one, else
    /// a node holding one, over QUIC. Waits (up to
    /// `inference.cold_start_wait_ms`) while replicas load or are placed
    /// again after an eviction.
    pub async fn infer(
        &self,
        _ctx: &crate::call_context::CallContext,
        model: &str,
        version: u64,
        inputs: TensorMap,
    ) -> Result<Served, ApiError> {
        let version = self.resolve_deployed_version(model, version)?;
        let deadline =
            self.inner.clock.now() + Duration::from_millis(self.inner.config.cold_start_wait_ms);
        let mut problems = Vec::new();
        loop {
            if let Some(served) = self.infer_local(model, version, inputs.clone()).await? {
                return Ok(served);
            }
            let holders: Vec<NodeId> = self
                .inner
                .cluster
                .reader()
                .replicas_of(model, version)
                .map_err(|err| ApiError::Internal(err.to_string()))?
                .iter()
                .filter_map(|record| record.node)
                .filter(|id| *id != self.id())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            problems.clear();
            for holder in holders {
                match self.infer_remote(holder, model, version, &inputs).await {
                    Ok(Some(served)) => return Ok(served),
                    Ok(None) => problems.push(format!("node {holder}: no warm replica yet")),
                    Err(err @ (ApiError::InvalidArgument(_) | ApiError::ResourceExhausted(_))) => {
                        return Err(err)
                    }
                    Err(err) => problems.push(format!("node {holder}: {err}")),
                }
            }
            self.inner.manager.note_demand(model, version);
            if self.inner.clock.now() >= deadline || self.inner.shutdown.is_cancelled() {
                let detail = if problems.is_empty() {
                    "no replica is placed".to_string()
                } else {
                    problems.join("; ")
                };
                let waited_ms = self.inner.config.cold_start_wait_ms;
                return Err(ApiError::Unavailable(format!(
                    "model {model} v{version} has no warm replica after {waited_ms} ms (inference.cold_start_wait_ms): {detail}"
                )));
            }
            tokio::select! {
                _ = self.inner.manager.changed.notified() => {}
                _ = self.inner.clock.sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    async fn infer_remote(
        &self,
        holder: NodeId,
        model: &str,
        version: u64,
        inputs: &TensorMap,
    ) -> Result<Option<Served>, ApiError> {
        let Some(info) = self.inner.cluster.members().0.get(&holder).cloned() else {
            return Ok(None);
        };
        let request = crate::peer_api::PeerRequest::Infer {
            model: model.to_string(),
            version,
            inputs: inputs.clone(),
        };
        let timeout = Duration::from_secs(60);
        match self
            .inner
            .cluster
            .call(holder, &info.raft_addr, &request, timeout)
            .await?
        {
            crate::peer_api::PeerResponse::Inferred(Some((outputs, replica))) => Ok(Some(Served {
                outputs,
                node: holder,
                replica,
            })),
            crate::peer_api::PeerResponse::Inferred(None) => Ok(None),
            other => Err(ApiError::Internal(format!(
                "unexpected peer answer {other:?}"
            ))),
        }
    }

    /// `version`, or with 0 the highest deployed version of `model`.
    pub fn resolve_deployed_version(&self, model: &str, version: u64) -> Result<u64, ApiError> {
        let deployments = self
            .inner
            .cluster
            .reader()
            .deployments()
            .map_err(|err| ApiError::Internal(err.to_string()))?;
        let deployed: Vec<u64> = deployments
            .iter()
            .filter(|d| d.model == model)
            .map(|d| d.version)
            .collect();
        match version {
            0 => deployed.iter().max().copied().ok_or_else(|| {
                ApiError::NotFound(format!("model {} is not deployed", quote_bounded(model)))
            }),
            v if deployed.contains(&v) => Ok(v),
            v => Err(ApiError::NotFound(format!(
                "model {} version {v} is not deployed",
                quote_bounded(model)
            ))),
        }
    }
}
