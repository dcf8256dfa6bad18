//! Workers attached to this node: the gRPC stream they connect with, the
//! registry of what they serve, and the dispatcher that pushes the tasks the
//! scheduler placed on this node to them (no polling by workers).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use floe_engine::run::TaskFailure;
use floe_state::runs::TaskRecord;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::api;
use crate::blobs::BlobService;
use crate::call_context::CallContext;
use crate::changes::ChangeHub;
use crate::clock::Clock;
use crate::cluster::ClusterHandle;
use crate::error::ApiError;
use crate::grpc_limits::TransportLimits;
use crate::models::{InferenceTask, ModelService};
use crate::runs::{parse_task_key, RunService};
use floe_engine::names::quote_bounded;

/// Tasks buffered towards one worker's stream.
const WORKER_QUEUE: usize = 64;

type TaskSender = mpsc::Sender<Result<api::WorkerTask, Status>>;

/// The channel a worker stream is fed from.
pub fn worker_channel() -> (TaskSender, mpsc::Receiver<Result<api::WorkerTask, Status>>) {
    mpsc::channel(WORKER_QUEUE)
}

struct WorkerConn {
    /// The placement keys it serves: each block alone and with every subset
    /// of the worker's labels (`floe_engine::placement_key`).
    keys: BTreeSet<String>,
    concurrency: u32,
    /// Task key text → the attempt pushed and not yet answered.
    in_flight: BTreeMap<String, InFlight>,
    sender: mpsc::Sender<Result<api::WorkerTask, Status>>,
}

struct InFlight {
    attempt: u32,
    /// Since the push or the last heartbeat.
    last_beat: Instant,
    heartbeat: Option<Duration>,
}

impl WorkerConn {
    fn free(&self) -> u32 {
        self.concurrency.saturating_sub(self.in_flight.len() as u32)
    }
}

/// Handle to the worker hub: the workers attached to this node, their
/// streams, and the dispatcher that pushes this node's placed tasks to them
/// or to its model replicas; cheap to clone.
#[derive(Clone)]
pub struct WorkerHub {
    inner: Arc<HubInner>,
}

struct HubInner {
    cluster: ClusterHandle,
    runs: RunService,
    blobs: BlobService,
    models: ModelService,
    registry: WorkerRegistry,
    /// Wakes on applied changes that place tasks here.
    changes: Arc<ChangeHub>,
    clock: Clock,
    /// For the answer to a worker message past the transport limit.
    limits: TransportLimits,
    shutdown: CancellationToken,
}

/// What the worker hub is built from.
pub struct HubParts {
    pub cluster: ClusterHandle,
    pub runs: RunService,
    pub blobs: BlobService,
    pub models: ModelService,
    /// Shared with the model component, which wakes the dispatcher too.
    pub wake: Arc<Notify>,
    pub changes: Arc<ChangeHub>,
    pub limits: TransportLimits,
    pub shutdown: CancellationToken,
}

impl WorkerHub {
    pub fn new(parts: HubParts) -> WorkerHub {
        WorkerHub {
            inner: Arc::new(HubInner {
                clock: parts.cluster.clock().clone(),
                cluster: parts.cluster,
                runs: parts.runs,
                blobs: parts.blobs,
                models: parts.models,
                registry: WorkerRegistry {
                    wake: parts.wake,
                    ..WorkerRegistry::default()
                },
                changes: parts.changes,
                limits: parts.limits,
                shutdown: parts.shutdown,
            }),
        }
    }

    /// The attached workers and what they run now (load reports).
    pub fn registry(&self) -> &WorkerRegistry {
        &self.inner.registry
    }

    fn id(&self) -> floe_state::NodeId {
        self.inner.cluster.id()
    }
}

/// The workers connected to this node and the tasks pushed to them.
#[derive(Default)]
pub struct WorkerRegistry {
    workers: Mutex<BTreeMap<String, WorkerConn>>,
    /// Placed tasks no worker here serves, since when (to hand them back).
    unserved: Mutex<BTreeMap<String, Instant>>,
    /// Attempts answered by a worker whose outcome is not applied yet:
    /// never pushed again, even though they are still placed here.
    answered: Mutex<BTreeMap<String, u32>>,
    /// Wakes the dispatcher (new worker, freed slot, new assignment).
    wake: Arc<Notify>,
}

impl WorkerRegistry {
    /// Free slots per placement key across this node's workers, less the
    /// tasks already placed here and not yet pushed (`queued`, per slot pool).
    pub fn free_slots(&self, queued: &BTreeMap<String, u32>) -> BTreeMap<String, u32> {
        let mut free: BTreeMap<String, u32> = BTreeMap::new();
        if let Ok(workers) = self.workers.lock() {
            for worker in workers.values() {
                for key in &worker.keys {
                    *free.entry(key.clone()).or_default() += worker.free();
                }
            }
        }
        for (pool, count) in queued {
            if let Some(slots) = free.get_mut(pool) {
                *slots = slots.saturating_sub(*count);
            }
        }
        free
    }

    /// Slots per placement key across this node's workers, busy or not.
    pub fn capacity(&self) -> BTreeMap<String, u32> {
        let mut capacity: BTreeMap<String, u32> = BTreeMap::new();
        if let Ok(workers) = self.workers.lock() {
            for worker in workers.values() {
                for key in &worker.keys {
                    *capacity.entry(key.clone()).or_default() += worker.concurrency;
                }
            }
        }
        capacity
    }

    /// Records a heartbeat for `attempt`, received at `now` (node clock).
    fn beat(&self, worker_id: &str, task: &str, attempt: u32, now: Instant) {
        if let Ok(mut workers) = self.workers.lock() {
            if let Some(pushed) = workers
                .get_mut(worker_id)
                .and_then(|worker| worker.in_flight.get_mut(task))
            {
                if pushed.attempt == attempt {
                    pushed.last_beat = now;
                }
            }
        }
    }

    /// Pushed attempts whose worker sent no heartbeat in time; they are
    /// taken back (and remembered as answered, so never pushed again).
    /// `now` is the node clock's monotonic time.
    fn overdue(&self, now: Instant) -> Vec<(String, u32)> {
        let mut overdue = Vec::new();
        if let Ok(mut workers) = self.workers.lock() {
            for worker in workers.values_mut() {
                worker.in_flight.retain(|task, pushed| {
                    let late = pushed.heartbeat.is_some_and(|limit| {
                        now.saturating_duration_since(pushed.last_beat) > limit
                    });
                    if late {
                        overdue.push((task.clone(), pushed.attempt));
                    }
                    !late
                });
            }
        }
        if let Ok(mut answered) = self.answered.lock() {
            for (task, attempt) in &overdue {
                answered.insert(task.clone(), *attempt);
            }
        }
        overdue
    }

    pub fn running(&self) -> u32 {
        self.workers
            .lock()
            .map(|workers| workers.values().map(|w| w.in_flight.len() as u32).sum())
            .unwrap_or(0)
    }

    fn is_pushed(&self, task: &str, attempt: u32) -> bool {
        let answered = self
            .answered
            .lock()
            .map(|answered| answered.get(task) == Some(&attempt))
            .unwrap_or(false);
        answered
            || self
                .workers
                .lock()
                .map(|workers| {
                    workers.values().any(|worker| {
                        worker
                            .in_flight
                            .get(task)
                            .is_some_and(|f| f.attempt == attempt)
                    })
                })
                .unwrap_or(false)
    }

    /// Pushes `task` to the least busy worker serving its block with the
    /// labels it requires; false when none has room. `now` starts its
    /// heartbeat deadline.
    fn push(&self, task: &TaskRecord, input: Vec<u8>, now: Instant) -> bool {
        let text = task.spec.key.to_string();
        let key = task.spec.placement_key();
        let Ok(mut workers) = self.workers.lock() else {
            return false;
        };
        let chosen = workers
            .iter_mut()
            .filter(|(_, worker)| worker.keys.contains(key.as_ref()) && worker.free() > 0)
            .min_by_key(|(_, worker)| worker.in_flight.len());
        let Some((_, worker)) = chosen else {
            return false;
        };
        let message = api::WorkerTask {
            task: text.clone(),
            attempt: task.spec.attempt,
            run_id: task.spec.key.run_id.clone(),
            step_id: task.spec.key.step_id.clone(),
            block: task.spec.block.clone(),
            input,
            item: task.spec.key.item.map_or(-1, i64::from),
            heartbeat_ms: task.spec.timeouts.heartbeat_ms.unwrap_or(0),
            refused: None,
        };
        if worker.sender.try_send(Ok(message)).is_err() {
            return false;
        }
        let heartbeat = task.spec.timeouts.heartbeat_ms.map(Duration::from_millis);
        worker.in_flight.insert(
            text,
            InFlight {
                attempt: task.spec.attempt,
                last_beat: now,
                heartbeat,
            },
        );
        true
    }

    /// Whether a worker here serving placement key `key` has a free slot now.
    fn has_room(&self, key: &str) -> bool {
        self.workers
            .lock()
            .map(|workers| {
                workers
                    .values()
                    .any(|worker| worker.keys.contains(key) && worker.free() > 0)
            })
            .unwrap_or(false)
    }

    fn serves(&self, key: &str) -> bool {
        self.workers
            .lock()
            .map(|workers| workers.values().any(|worker| worker.keys.contains(key)))
            .unwrap_or(false)
    }

    /// Tracks tasks no worker here serves; returns those waiting longer than
    /// `grace` by `now` (the node clock's monotonic time).
    fn unserved_for(
        &self,
        now_unserved: BTreeMap<String, u32>,
        grace: Duration,
        now: Instant,
    ) -> Vec<(String, u32)> {
        let Ok(mut unserved) = self.unserved.lock() else {
            return Vec::new();
        };
        unserved.retain(|task, _| now_unserved.contains_key(task));
        let mut overdue = Vec::new();
        for (task, attempt) in now_unserved {
            let since = *unserved.entry(task.clone()).or_insert(now);
            if now.saturating_duration_since(since) >= grace {
                overdue.push((task.clone(), attempt));
                unserved.remove(&task);
            }
        }
        overdue
    }

    /// Remembers an attempt as answered: never pushed or run again here.
    pub fn mark_answered(&self, task: &str, attempt: u32) {
        if let Ok(mut answered) = self.answered.lock() {
            answered.insert(task.to_string(), attempt);
        }
    }

    /// Frees the slot of an answered attempt; whether that attempt was
    /// pushed to this worker and still open (a worker answers only its own).
    fn finish(&self, worker_id: &str, task: &str, attempt: u32) -> bool {
        let mut was_pushed = false;
        if let Ok(mut workers) = self.workers.lock() {
            if let Some(worker) = workers.get_mut(worker_id) {
                // A late answer for an older attempt must not free the slot
                // of the attempt pushed since.
                if worker
                    .in_flight
                    .get(task)
                    .is_some_and(|pushed| pushed.attempt == attempt)
                {
                    worker.in_flight.remove(task);
                    was_pushed = true;
                }
            }
        }
        if was_pushed {
            if let Ok(mut answered) = self.answered.lock() {
                answered.insert(task.to_string(), attempt);
            }
            self.wake.notify_one();
        }
        was_pushed
    }

    /// Forgets pushed tasks that are no longer placed on this node
    /// (completed, cancelled, moved), freeing their slots.
    fn retain(&self, placed: &BTreeMap<String, u32>) {
        if let Ok(mut answered) = self.answered.lock() {
            answered.retain(|task, attempt| placed.get(task) == Some(attempt));
        }
        if let Ok(mut workers) = self.workers.lock() {
            for worker in workers.values_mut() {
                worker
                    .in_flight
                    .retain(|task, pushed| placed.get(task) == Some(&pushed.attempt));
            }
        }
    }
}

impl WorkerHub {
    /// Serves one worker's stream until it disconnects; its unanswered tasks are
    /// then failed (retryable), so the run engine schedules a new attempt.
    pub async fn serve(
        self,
        ctx: CallContext,
        mut incoming: tonic::Streaming<api::WorkerMessage>,
        sender: mpsc::Sender<Result<api::WorkerTask, Status>>,
    ) {
        let hello = match incoming.message().await {
            Ok(Some(api::WorkerMessage {
                kind: Some(api::worker_message::Kind::Hello(hello)),
            })) => hello,
            _ => {
                let _ = sender
                    .send(Err(Status::invalid_argument(
                        "the first message on a worker stream must be hello",
                    )))
                    .await;
                return;
            }
        };
        let problem = if hello.worker_id.is_empty() {
            Some("worker_id is empty".to_string())
        } else if hello.worker_id.len() > MAX_WORKER_ID_BYTES {
            Some(format!(
                "worker_id {} is longer than the limit of {MAX_WORKER_ID_BYTES} bytes (fixed)",
                floe_engine::names::quote_bounded(&hello.worker_id)
            ))
        } else if hello.blocks.is_empty() {
            Some("a worker must serve at least one block".to_string())
        } else if hello.concurrency == 0 {
            Some("concurrency must be at least 1".to_string())
        } else {
            hello.blocks.iter().find_map(|block| {
                if !floe_engine::is_block_name(block) {
                    Some(format!("block name {} is not valid", quote_bounded(block)))
                } else if is_inference(block) {
                    Some(format!(
                        "block {}: names starting with {:?} are served by model replicas",
                        quote_bounded(block),
                        floe_engine::INFERENCE_BLOCK_PREFIX
                    ))
                } else {
                    None
                }
            })
        }
        .or_else(|| label_problem(&hello.labels));
        if let Some(problem) = problem {
            let _ = sender.send(Err(Status::invalid_argument(problem))).await;
            return;
        }
        let worker_id = hello.worker_id.clone();
        // Refusals and the stream's own errors go to the worker through this
        // copy; the dispatcher pushes tasks through the one registered.
        let answers = sender.clone();
        let refusals = hello.accepts_refusals.then(|| sender.clone());
        let refused_sender = self.register(&hello, sender);
        if let Some(sender) = refused_sender {
            let message = format!(
                "worker {} is already connected to node {}",
                quote_bounded(&worker_id),
                self.id()
            );
            let _ = sender.send(Err(Status::already_exists(message))).await;
            return;
        }
        tracing::info!(node_id = self.id(), worker = %worker_id, blocks = ?hello.blocks, labels = ?hello.labels, concurrency = hello.concurrency, "worker connected");
        self.inner.registry.wake.notify_one();
        let deliveries = Arc::new(tokio::sync::Semaphore::new(
            hello.concurrency.clamp(16, 1024) as usize,
        ));

        loop {
            // A stopping node ends worker streams, so its gRPC server can drain.
            let message = tokio::select! {
                _ = self.inner.shutdown.cancelled() => {
                    let _ = answers.send(Err(crate::error::shutting_down(self.id()))).await;
                    break;
                }
                message = incoming.message() => match message {
                    Ok(Some(message)) => message,
                    Ok(None) => break,
                    Err(status) => {
                        // Typically a message past the transport limit: the
                        // worker learns why its stream ends instead of an OK.
                        let status = stream_error_answer(&self.inner.limits, status);
                        tracing::warn!(worker = %worker_id, code = ?status.code(), error = %status.message(), "worker stream failed");
                        let _ = answers.send(Err(status)).await;
                        break;
                    }
                },
            };
            match message.kind {
                Some(api::worker_message::Kind::Result(mut result)) => {
                    let outcome = if result.failed {
                        Err(TaskFailure {
                            error: result.error.clone(),
                            retryable: result.retryable,
                        })
                    } else {
                        Ok(std::mem::take(&mut result.output))
                    };
                    let key = match parse_task_key(&result.task) {
                        Ok(key) => key,
                        Err(err) => {
                            tracing::warn!(worker = %worker_id, error = %err, "task result for a malformed task key");
                            refuse(refusals.as_ref(), &result.task, result.attempt, &err).await;
                            continue;
                        }
                    };
                    // The worker's slot frees now; the attempt stays answered (never
                    // pushed again) until its outcome is applied. A worker answers
                    // only what was pushed to it and is still open.
                    if !self
                        .inner
                        .registry
                        .finish(&worker_id, &result.task, result.attempt)
                    {
                        let err = ApiError::FailedPrecondition(format!(
                            "task {} attempt {} is not open on worker {}: never pushed to it, already answered, or taken back",
                            quote_bounded(&result.task),
                            result.attempt,
                            quote_bounded(&worker_id)
                        ));
                        crate::warn_limited!("result for a task not pushed to the worker", worker = %worker_id, task = %result.task, attempt = result.attempt, "result for a task not pushed to the worker refused");
                        refuse(refusals.as_ref(), &result.task, result.attempt, &err).await;
                        continue;
                    }
                    // Results commit concurrently (the proposer batches them); the
                    // permits bound how many one stream may have in flight.
                    let Ok(permit) = deliveries.clone().acquire_owned().await else {
                        break;
                    };
                    let (hub, ctx, worker_id, refusals) = (
                        self.clone(),
                        ctx.clone(),
                        worker_id.clone(),
                        refusals.clone(),
                    );
                    tokio::spawn(async move {
                        let outcome = match &outcome {
                            Ok(output) => Ok(output.as_slice()),
                            Err(failure) => Err(failure.clone()),
                        };
                        let answered_output = outcome.is_ok();
                        if let Err(err) = hub
                            .deliver_result(&ctx, key.clone(), result.attempt, &worker_id, outcome)
                            .await
                        {
                            crate::warn_limited!("task result refused", worker = %worker_id, task = %result.task, attempt = result.attempt, error = %err, "task result refused");
                            refuse(refusals.as_ref(), &result.task, result.attempt, &err).await;
                            // An output refused for what it is (not JSON, over a limit)
                            // would leave the attempt open for good: fail it instead,
                            // so the step's error route decides.
                            if answered_output
                                && matches!(
                                    err,
                                    crate::error::ApiError::InvalidArgument(_)
                                        | crate::error::ApiError::ResourceExhausted(_)
                                )
                            {
                                let failure = TaskFailure {
                                    error: format!("the worker's output was refused: {err}"),
                                    retryable: false,
                                };
                                if let Err(err) = hub
                                    .deliver_result(
                                        &ctx,
                                        key,
                                        result.attempt,
                                        &worker_id,
                                        Err(failure),
                                    )
                                    .await
                                {
                                    tracing::debug!(worker = %worker_id, task = %result.task, error = %err, "failing the attempt after a refused output was refused");
                                }
                            }
                        }
                        drop(permit);
                    });
                }
                Some(api::worker_message::Kind::Heartbeat(beat)) => self.inner.registry.beat(
                    &worker_id,
                    &beat.task,
                    beat.attempt,
                    self.inner.clock.now(),
                ),
                Some(api::worker_message::Kind::Hello(_)) => {
                    let message = format!(
                    "this stream already said hello as worker {}; a worker says hello once, as the first message of a new stream",
                    quote_bounded(&worker_id)
                );
                    tracing::warn!(worker = %worker_id, "second hello on a worker stream refused");
                    let _ = answers
                        .send(Err(Status::failed_precondition(message)))
                        .await;
                    break;
                }
                None => {
                    let message = "a worker message must be a hello, a result or a heartbeat; this one is empty (or of a newer kind)";
                    tracing::warn!(worker = %worker_id, "empty message on a worker stream refused");
                    let _ = answers.send(Err(Status::invalid_argument(message))).await;
                    break;
                }
            }
        }

        let orphaned = self
            .inner
            .registry
            .workers
            .lock()
            .ok()
            .and_then(|mut workers| workers.remove(&worker_id))
            .map(|conn| conn.in_flight)
            .unwrap_or_default();
        let orphaned: Vec<(String, u32)> = orphaned
            .into_iter()
            .map(|(task, pushed)| (task, pushed.attempt))
            .collect();
        tracing::info!(node_id = self.id(), worker = %worker_id, unanswered = orphaned.len(), "worker disconnected");
        if self.inner.shutdown.is_cancelled() {
            // The leader re-delivers this node's attempts once its lease lapses.
            return;
        }
        for (task, attempt) in orphaned {
            let Ok(key) = parse_task_key(&task) else {
                continue;
            };
            if let Err(err) = self
                .inner
                .runs
                .task_lost(
                    &ctx,
                    key,
                    attempt,
                    format!("worker {worker_id} disconnected"),
                )
                .await
            {
                tracing::debug!(task = %task, error = %err, "orphaned task already settled");
            }
        }
        self.inner.registry.wake.notify_one();
    }
}

/// Longest worker id: it is recorded on every attempt the worker answers.
const MAX_WORKER_ID_BYTES: usize = 128;

/// Tells a worker that accepts refusals that its result was not recorded.
async fn refuse(
    refusals: Option<&mpsc::Sender<Result<api::WorkerTask, Status>>>,
    task: &str,
    attempt: u32,
    err: &crate::error::ApiError,
) {
    let Some(refusals) = refusals else { return };
    let status = Status::from(err.clone());
    let refused = api::ResultRefused {
        task: task.to_string(),
        attempt,
        code: code_name(status.code()).to_string(),
        reason: status.message().to_string(),
    };
    let message = api::WorkerTask {
        refused: Some(refused),
        ..Default::default()
    };
    // The stream may have ended meanwhile; the refusal is logged either way.
    let _ = refusals.send(Ok(message)).await;
}

/// The gRPC name of a code, as `ResultRefused.code` carries it.
fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::Internal => "INTERNAL",
        _ => "UNKNOWN",
    }
}

/// The status a worker gets when its own stream fails: tonic's refusal of
/// an oversize message becomes RESOURCE_EXHAUSTED naming the setting.
fn stream_error_answer(limits: &TransportLimits, status: Status) -> Status {
    let oversize = status.code() == tonic::Code::OutOfRange
        && status.message().contains("message length too large");
    if !oversize {
        return status;
    }
    limits.oversize_status("/floe.v1.Workers/Attach", status.message())
}

/// How long a worker's result is retried while the cluster changes leader.
const RESULT_RETRY_LIMIT: Duration = Duration::from_secs(30);

impl WorkerHub {
    /// Proposes a worker's result, retrying while the outcome is unavailable or
    /// unknown (a leader change under the proposal). Dropping it instead would
    /// leave its attempt open for good: its worker is still connected and its
    /// node still holds the lease, so nothing else would ever end the attempt.
    /// Retrying is safe: a result that was applied meanwhile is refused as
    /// finished. (Found by the chaos suite: kill-leader, pause-leader.)
    async fn deliver_result(
        &self,
        ctx: &CallContext,
        key: floe_engine::run::TaskKey,
        attempt: u32,
        worker: &str,
        outcome: Result<&[u8], TaskFailure>,
    ) -> Result<(), ApiError> {
        let clock = &self.inner.clock;
        let deadline = clock.now() + RESULT_RETRY_LIMIT;
        let mut backoff = Duration::from_millis(50);
        loop {
            match self
                .inner
                .runs
                .task_result(ctx, key.clone(), attempt, Some(worker), outcome.clone())
                .await
            {
                Err(ApiError::Unavailable(reason) | ApiError::OutcomeUnknown(reason))
                    if clock.now() < deadline && !self.inner.shutdown.is_cancelled() =>
                {
                    tracing::debug!(task = ?key, attempt, reason = %reason, "task result not proposed yet; retrying");
                    clock.sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                other => return other,
            }
        }
    }

    /// Adds the worker; hands the sender back when its id is already connected.
    fn register(
        &self,
        hello: &api::WorkerHello,
        sender: mpsc::Sender<Result<api::WorkerTask, Status>>,
    ) -> Option<mpsc::Sender<Result<api::WorkerTask, Status>>> {
        let Ok(mut workers) = self.inner.registry.workers.lock() else {
            return Some(sender);
        };
        if workers.contains_key(&hello.worker_id) {
            return Some(sender);
        }
        let labels: BTreeMap<String, String> = hello
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let subsets = floe_engine::label_subsets(&labels);
        let conn = WorkerConn {
            keys: hello
                .blocks
                .iter()
                .flat_map(|block| {
                    subsets
                        .iter()
                        .map(move |subset| floe_engine::placement_key(block, subset))
                })
                .collect(),
            concurrency: hello.concurrency,
            in_flight: BTreeMap::new(),
            sender,
        };
        workers.insert(hello.worker_id.clone(), conn);
        None
    }

    /// Pushes the tasks placed on this node to its workers as slots free up.
    pub async fn dispatch(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let ctx = CallContext::local("dispatcher");
        let inner = &self.inner;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = inner.registry.wake.notified() => {}
                _ = inner.changes.tasks_here.notified() => {}
                // Heartbeat deadlines and the unserved grace need the clock.
                _ = inner.clock.sleep(Duration::from_millis(100)) => {}
            }
            // Only the records of attempts not handed out yet are read.
            let hub = self.clone();
            let placed = tokio::task::spawn_blocking(move || {
                hub.inner
                    .cluster
                    .reader()
                    .placed_tasks(hub.id(), |task, attempt| !hub.dispatched(task, attempt))
            })
            .await;
            let placed = match placed {
                Ok(Ok(placed)) => placed,
                Ok(Err(err)) => {
                    crate::warn_limited!("reading this node's tasks", error = %err, "reading this node's tasks");
                    continue;
                }
                Err(_) => continue,
            };
            let attempts: BTreeMap<String, u32> = placed
                .iter()
                .map(|(text, attempt, _)| (text.clone(), *attempt))
                .collect();
            inner.registry.retain(&attempts);
            let placed: Vec<TaskRecord> = placed
                .into_iter()
                .filter_map(|(_, _, record)| record)
                .collect();
            let mut unserved_now = BTreeMap::new();
            let latest = if placed.iter().any(|task| is_inference(&task.spec.block)) {
                inner
                    .cluster
                    .reader()
                    .deployments()
                    .map(|d| crate::models::latest_deployed(&d))
                    .unwrap_or_default()
            } else {
                BTreeMap::new()
            };
            for task in &placed {
                let text = task.spec.key.to_string();
                if self.dispatched(&text, task.spec.attempt) {
                    continue;
                }
                if is_inference(&task.spec.block) {
                    // Run by a warm model replica here, not by a worker.
                    if inner.models.local().serves(&task.spec.block, &latest) {
                        if let Some(started) = inner.models.start_task(task, &latest) {
                            self.run_inference(&ctx, task, started).await;
                        }
                    } else {
                        unserved_now.insert(text, task.spec.attempt);
                    }
                    continue;
                }
                let key = task.spec.placement_key();
                if inner.registry.has_room(&key) {
                    let Some(input) = self.worker_input(&ctx, task).await else {
                        continue;
                    };
                    if inner.registry.push(task, input, inner.clock.now()) {
                        continue;
                    }
                }
                if !inner.registry.serves(&key) {
                    unserved_now.insert(text, task.spec.attempt);
                }
            }
            for (task, attempt) in inner.registry.overdue(inner.clock.now()) {
                let Ok(key) = parse_task_key(&task) else {
                    continue;
                };
                let timer = floe_engine::run::TimerKey {
                    run_id: key.run_id.clone(),
                    step_id: key.step_id.clone(),
                    item: key.item,
                    purpose: "heartbeat".into(),
                    attempt,
                };
                tracing::info!(node_id = self.id(), task = %task, attempt, "no heartbeat in time; attempt timed out");
                if let Err(err) = inner
                    .runs
                    .run_event(
                        &ctx,
                        &key.run_id,
                        floe_engine::run::RunEvent::TimerFired { timer },
                    )
                    .await
                {
                    tracing::debug!(task = %task, error = %err, "heartbeat timeout not applied");
                }
            }
            let now = inner.clock.now();
            for (task, attempt) in inner
                .registry
                .unserved_for(unserved_now, UNSERVED_GRACE, now)
            {
                let command = floe_state::Command::UnassignTask {
                    task: task.clone(),
                    attempt,
                    at_ms: inner.clock.now_ms(),
                };
                match inner.cluster.write(command).await {
                    Ok(_) => {
                        tracing::info!(node_id = self.id(), task = %task, "task handed back: no worker here serves its block")
                    }
                    Err(err) => {
                        tracing::debug!(task = %task, error = %err, "handing a task back failed")
                    }
                }
            }
        }
    }

    /// Runs an inference task on the replica slot it holds and delivers its
    /// result; the slot frees once the attempt counts as answered.
    async fn run_inference(&self, ctx: &CallContext, task: &TaskRecord, started: InferenceTask) {
        let Some(input) = self.resolved_input(ctx, task).await else {
            return;
        };
        let hub = self.clone();
        let ctx = ctx.clone();
        let (key, attempt) = (task.spec.key.clone(), task.spec.attempt);
        tokio::spawn(async move {
            let text = key.to_string();
            let outcome = started.run(input).await;
            let outcome = match &outcome {
                Ok(output) => Ok(output.as_slice()),
                Err(failure) => Err(failure.clone()),
            };
            let delivered = hub
                .deliver_result(&ctx, key, attempt, &started.replica(), outcome)
                .await;
            if let Err(err) = delivered {
                crate::warn_limited!("inference result refused", task = %text, attempt, error = %err, "inference result refused");
            }
            hub.inner.registry.mark_answered(&text, attempt);
            drop(started);
        });
    }

    /// The task's input as a worker receives it: JSON, blob references resolved.
    async fn worker_input(&self, ctx: &CallContext, task: &TaskRecord) -> Option<Vec<u8>> {
        let input = self.resolved_input(ctx, task).await?;
        Some(serde_json::to_vec(&input).unwrap_or_else(|_| b"null".to_vec()))
    }

    /// The task's input with blob references resolved. When a referenced blob
    /// cannot be had, the attempt fails (retryable) with the reason, so the
    /// run's retry policy decides, instead of the task silently waiting here.
    async fn resolved_input(
        &self,
        ctx: &CallContext,
        task: &TaskRecord,
    ) -> Option<serde_json::Value> {
        let failure = match self.inner.blobs.resolve(&task.spec.input).await {
            Ok(resolved) => return Some(resolved),
            Err(err) => err.to_string(),
        };
        let text = task.spec.key.to_string();
        crate::warn_limited!("task input not resolved", node_id = self.id(), task = %text, attempt = task.spec.attempt, error = %failure, "task input not resolved");
        let failure = TaskFailure {
            error: format!("input not available: {failure}"),
            retryable: true,
        };
        if let Err(err) = self
            .inner
            .runs
            .task_result(
                ctx,
                task.spec.key.clone(),
                task.spec.attempt,
                None,
                Err(failure),
            )
            .await
        {
            tracing::debug!(task = %text, error = %err, "failing the attempt was refused");
        }
        None
    }

    /// Tasks placed on this node but not pushed yet, per slot pool (a labelled
    /// task waits for a slot of its labels and of its block).
    pub fn queued_blocks(&self) -> BTreeMap<String, u32> {
        let mut queued = BTreeMap::new();
        if let Ok(placed) = self
            .inner
            .cluster
            .reader()
            .placed_tasks(self.id(), |task, attempt| !self.dispatched(task, attempt))
        {
            for task in placed.into_iter().filter_map(|(_, _, record)| record) {
                for pool in task.spec.slot_pools() {
                    *queued.entry(pool.into_owned()).or_default() += 1;
                }
            }
        }
        queued
    }

    /// Whether this attempt was handed to a worker or a model replica here.
    fn dispatched(&self, task: &str, attempt: u32) -> bool {
        self.inner.registry.is_pushed(task, attempt)
            || self.inner.models.local().is_running(task, attempt)
    }
}

/// How long a task placed here may wait for a worker serving its block.
const UNSERVED_GRACE: Duration = Duration::from_secs(1);

/// What is wrong with the labels a worker declared, if anything.
fn label_problem(labels: &std::collections::HashMap<String, String>) -> Option<String> {
    if labels.len() > floe_engine::MAX_LABELS {
        return Some(format!(
            "at most {} labels per worker, found {}",
            floe_engine::MAX_LABELS,
            labels.len()
        ));
    }
    labels.iter().find_map(|(key, value)| {
        if !floe_engine::is_label_key(key) {
            Some(format!(
                "label key {} is not valid: must match ^[a-z][a-z0-9_.-]{{0,62}}$",
                quote_bounded(key)
            ))
        } else if !floe_engine::is_label_value(value) {
            Some(format!(
                "label {key}={}: the value must match ^[A-Za-z0-9][A-Za-z0-9_.-]{{0,62}}$",
                quote_bounded(value)
            ))
        } else {
            None
        }
    })
}

fn is_inference(block: &str) -> bool {
    block.starts_with(floe_engine::INFERENCE_BLOCK_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_labels_are_checked() {
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            label_problem(&labels(&[("site", "north"), ("gpu", "yes")])),
            None
        );
        assert!(label_problem(&labels(&[("Site", "north")]))
            .unwrap()
            .contains("label key \"Site\""));
        assert!(label_problem(&labels(&[("site", "a=b")]))
            .unwrap()
            .contains("site=\"a=b\""));
        let five = labels(&[("a", "1"), ("b", "1"), ("c", "1"), ("d", "1"), ("e", "1")]);
        assert!(label_problem(&five).unwrap().contains("at most 4 labels"));
    }

    #[test]
    fn a_late_answer_for_an_older_attempt_keeps_the_current_attempts_slot() {
        let registry = WorkerRegistry::default();
        let (sender, _tasks) = worker_channel();
        let pushed = InFlight {
            attempt: 2,
            last_beat: std::time::Instant::now(),
            heartbeat: None,
        };
        let conn = WorkerConn {
            keys: ["ocr".to_string()].into_iter().collect(),
            concurrency: 1,
            in_flight: [("t".to_string(), pushed)].into_iter().collect(),
            sender,
        };
        registry.workers.lock().unwrap().insert("w".into(), conn);
        assert!(!registry.finish("w", "t", 1), "attempt 1 is not open");
        assert_eq!(registry.running(), 1, "attempt 2 still holds the slot");
        assert!(registry.is_pushed("t", 2));
        assert!(registry.finish("w", "t", 2));
        assert_eq!(registry.running(), 0);
        assert!(!registry.finish("w", "t", 2), "answered once");
        assert!(
            !registry.finish("other", "t", 2),
            "not pushed to another worker"
        );
    }

    #[test]
    fn an_attempt_is_taken_back_once_its_heartbeat_is_overdue_by_the_node_clock() {
        let manual = crate::clock::ManualClock::new(0);
        let clock = manual.clock();
        let registry = WorkerRegistry::default();
        let (sender, _tasks) = worker_channel();
        let pushed = InFlight {
            attempt: 1,
            last_beat: clock.now(),
            heartbeat: Some(Duration::from_secs(5)),
        };
        let conn = WorkerConn {
            keys: ["ocr".to_string()].into_iter().collect(),
            concurrency: 1,
            in_flight: [("t".to_string(), pushed)].into_iter().collect(),
            sender,
        };
        registry.workers.lock().unwrap().insert("w".into(), conn);

        manual.advance(Duration::from_secs(4));
        assert!(
            registry.overdue(clock.now()).is_empty(),
            "4 s of a 5 s limit"
        );
        // A heartbeat restarts the limit; one for another attempt does not.
        registry.beat("w", "t", 1, clock.now());
        registry.beat("w", "t", 7, clock.now());
        manual.advance(Duration::from_secs(5));
        assert!(
            registry.overdue(clock.now()).is_empty(),
            "5 s is not past the limit"
        );
        assert_eq!(registry.running(), 1);

        manual.advance(Duration::from_millis(1));
        assert_eq!(registry.overdue(clock.now()), vec![("t".to_string(), 1)]);
        assert_eq!(registry.running(), 0, "the slot is freed");
        assert!(registry.is_pushed("t", 1), "remembered as answered");
        assert!(registry.overdue(clock.now()).is_empty(), "taken back once");
    }

    #[test]
    fn unserved_tasks_are_handed_back_after_the_grace_by_the_node_clock() {
        let manual = crate::clock::ManualClock::new(0);
        let clock = manual.clock();
        let registry = WorkerRegistry::default();
        let unserved = || {
            [("t".to_string(), 3)]
                .into_iter()
                .collect::<BTreeMap<_, _>>()
        };
        assert!(registry
            .unserved_for(unserved(), UNSERVED_GRACE, clock.now())
            .is_empty());
        manual.advance(UNSERVED_GRACE - Duration::from_millis(1));
        assert!(registry
            .unserved_for(unserved(), UNSERVED_GRACE, clock.now())
            .is_empty());
        manual.advance(Duration::from_millis(1));
        assert_eq!(
            registry.unserved_for(unserved(), UNSERVED_GRACE, clock.now()),
            vec![("t".to_string(), 3)]
        );
    }
}
