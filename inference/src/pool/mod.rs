//! Pools: warm replicas of one model shared by every caller on a node, behind a
//! bounded queue with dynamic batching.
//!
//! `Pool::start` → `PoolHandle` (cheap to clone) → `infer`. Dropping the last handle
//! or calling `close` stops intake; replicas finish what is queued, then exit.

mod options;
mod queue;
mod replica;
mod stats;
mod validate;

use std::sync::{mpsc, Arc};
use std::time::Instant;

use tokio::sync::{oneshot, watch};
use tracing::info;

pub use self::options::PoolOptions;
use self::queue::{BatchPolicy, PushError, Request, RequestQueue};
use self::replica::{run_replica, ReplicaReady, ReplicaSetup};
pub use self::stats::PoolStats;
use self::stats::StatsRecorder;
use crate::batcher::BatchKey;
use crate::error::{Error, Result};
use crate::runtime::OrtRuntime;
use crate::session::{Device, SessionConfig};
use crate::signature::{inspect_model, ModelSignature};
use crate::tensor::TensorMap;

pub struct Pool;

impl Pool {
    /// Starts the replicas (each creates and warms its session on its own thread, one
    /// after the other so memory deltas do not overlap) and returns once all are
    /// ready. Invalid model bytes give `Error::InvalidModel`.
    pub async fn start(
        runtime: &OrtRuntime,
        model_bytes: impl Into<Arc<[u8]>>,
        options: PoolOptions,
    ) -> Result<PoolHandle> {
        let runtime = runtime.clone();
        let model_bytes = model_bytes.into();
        let pool = options.name.clone();
        let (sender, receiver) = oneshot::channel();
        std::thread::Builder::new()
            .name("floe-pool-start".into())
            .spawn(move || {
                let _ = sender.send(Pool::start_blocking(&runtime, model_bytes, options));
            })
            .map_err(|error| Error::SessionCreate {
                model: pool.clone(),
                reason: format!("spawning a thread: {error}"),
            })?;
        receiver.await.map_err(|_| Error::SessionCreate {
            model: pool,
            reason: "start-up thread died".into(),
        })?
    }

    /// `start` for callers outside async code. Blocks for as long as session creation
    /// and warm-up take.
    pub fn start_blocking(
        runtime: &OrtRuntime,
        model_bytes: impl Into<Arc<[u8]>>,
        options: PoolOptions,
    ) -> Result<PoolHandle> {
        options.validate()?;
        let model_bytes: Arc<[u8]> = model_bytes.into();
        let started = Instant::now();
        let queue = Arc::new(RequestQueue::new(options.queue_capacity));
        let stats = Arc::new(StatsRecorder::default());
        let (alive_sender, alive) = watch::channel(0usize);
        let alive_sender = Arc::new(alive_sender);
        let config = SessionConfig {
            device: options.device.clone(),
            intra_op_spinning: options.intra_op_spinning,
            ..SessionConfig::cpu(options.intra_threads)
        };

        let mut first_ready: Option<ReplicaReady> = None;
        let mut memory_bytes = 0u64;
        for index in 0..options.replicas {
            let setup = ReplicaSetup {
                pool: options.name.clone(),
                index,
                runtime: runtime.clone(),
                model_bytes: Arc::clone(&model_bytes),
                config: config.clone(),
                warmup_dim: options.warmup.then_some(options.warmup_dim),
                max_batch: options.max_batch,
                max_delay: options.max_delay,
                queue: Arc::clone(&queue),
                stats: Arc::clone(&stats),
                alive: Arc::clone(&alive_sender),
            };
            let (ready_sender, ready) = mpsc::channel();
            alive_sender.send_modify(|count| *count += 1);
            let spawned = std::thread::Builder::new()
                .name(format!("floe-pool-{index}"))
                .spawn(move || run_replica(setup, ready_sender));
            let outcome = match spawned {
                Ok(_) => ready.recv().unwrap_or_else(|_| {
                    Err(Error::SessionCreate {
                        model: options.name.clone(),
                        reason: format!("replica {index} thread died"),
                    })
                }),
                Err(error) => {
                    alive_sender.send_modify(|count| *count -= 1);
                    Err(Error::SessionCreate {
                        model: options.name.clone(),
                        reason: format!("spawning replica {index}: {error}"),
                    })
                }
            };
            match outcome {
                Ok(ready) => {
                    memory_bytes += ready.memory_bytes;
                    first_ready.get_or_insert(ready);
                }
                Err(error) => {
                    // Replicas already running see a closed, empty queue and exit.
                    queue.close();
                    return Err(explain_failure(
                        runtime,
                        &options.name,
                        &model_bytes,
                        index,
                        error,
                    ));
                }
            }
        }
        let Some(ReplicaReady {
            signature, policy, ..
        }) = first_ready
        else {
            // validate() guarantees replicas >= 1, so the loop ran at least once.
            return Err(Error::InvalidOptions {
                pool: options.name.clone(),
                reason: "no replicas".into(),
            });
        };
        info!(
            pool = %options.name,
            replicas = options.replicas,
            batchable = policy.batchable,
            memory_mib = memory_bytes / (1 << 20),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "pool ready"
        );
        Ok(PoolHandle {
            shared: Arc::new(PoolShared {
                options,
                signature,
                policy,
                queue,
                stats,
                memory_bytes,
                alive,
            }),
        })
    }
}

/// A failed first session may be bad bytes rather than a bad device: tell which.
fn explain_failure(
    runtime: &OrtRuntime,
    pool: &str,
    model_bytes: &[u8],
    index: usize,
    error: Error,
) -> Error {
    if index != 0 || !matches!(error, Error::SessionCreate { .. }) {
        return error;
    }
    match inspect_model(runtime, pool, model_bytes) {
        Err(invalid @ Error::InvalidModel { .. }) => invalid,
        _ => error,
    }
}

struct PoolShared {
    options: PoolOptions,
    signature: ModelSignature,
    policy: BatchPolicy,
    queue: Arc<RequestQueue>,
    stats: Arc<StatsRecorder>,
    memory_bytes: u64,
    alive: watch::Receiver<usize>,
}

impl Drop for PoolShared {
    fn drop(&mut self) {
        // Last handle gone: replicas drain the queue and exit on their own.
        self.queue.close();
    }
}

/// A started pool. Clones share the pool; the pool closes when the last one drops.
#[derive(Clone)]
pub struct PoolHandle {
    shared: Arc<PoolShared>,
}

impl std::fmt::Debug for PoolHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolHandle")
            .field("name", &self.shared.options.name)
            .finish()
    }
}

impl PoolHandle {
    pub fn name(&self) -> &str {
        &self.shared.options.name
    }

    pub fn signature(&self) -> &ModelSignature {
        &self.shared.signature
    }

    pub fn options(&self) -> &PoolOptions {
        &self.shared.options
    }

    pub fn device(&self) -> &Device {
        &self.shared.options.device
    }

    /// True when requests are merged along dim 0 (dynamic batch dim and max_batch > 1).
    pub fn is_batched(&self) -> bool {
        self.shared.policy.batchable
    }

    /// Runs one request. Fails at once with `QueueFull` (retryable) when the queue is
    /// at capacity, with `InvalidInput` when the inputs do not fit the signature.
    pub async fn infer(&self, inputs: TensorMap) -> Result<TensorMap> {
        let shared = &self.shared;
        let pool = &shared.options.name;
        let items =
            validate::validate_inputs(pool, &shared.signature, shared.policy.batchable, &inputs)?;
        let (reply, answer) = oneshot::channel();
        let request = Request {
            key: BatchKey::of(&inputs),
            inputs,
            items,
            enqueued_at: Instant::now(),
            reply,
        };
        match shared.queue.push(request) {
            Ok(()) => {}
            Err(PushError::Full) => {
                shared.stats.record_rejected();
                return Err(Error::QueueFull {
                    pool: pool.clone(),
                    capacity: shared.queue.capacity(),
                });
            }
            Err(PushError::Closed) => return Err(Error::PoolClosed { pool: pool.clone() }),
        }
        answer
            .await
            .map_err(|_| Error::ReplicaGone { pool: pool.clone() })?
    }

    /// Requests waiting now; cheap, unlike `stats` (which sorts latencies).
    pub fn queue_depth(&self) -> usize {
        self.shared.queue.len()
    }

    pub fn stats(&self) -> PoolStats {
        let shared = &self.shared;
        let mut stats = PoolStats {
            name: shared.options.name.clone(),
            replicas: shared.options.replicas,
            queue_depth: shared.queue.len(),
            queue_capacity: shared.queue.capacity(),
            memory_bytes: shared.memory_bytes,
            ..PoolStats::default()
        };
        shared.stats.fill(&mut stats);
        stats
    }

    /// Stops taking requests; queued ones still run.
    pub fn close(&self) {
        self.shared.queue.close();
    }

    pub fn is_closed(&self) -> bool {
        self.shared.queue.is_closed()
    }

    /// Closes the pool and waits until every queued request was answered and every
    /// replica thread ended (its session released).
    pub async fn shutdown(&self) {
        self.close();
        let mut alive = self.shared.alive.clone();
        // Err means every replica's sender is gone, which also means they all ended.
        let _ = alive.wait_for(|count| *count == 0).await;
    }
}
