//! One replica: a session on its own OS thread. It creates and warms its session,
//! reports ready (with the memory it took), then serves batches until the queue is
//! closed and drained. ONNX runs block, so they never touch the tokio runtime.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ort::session::Session;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use super::queue::{BatchPolicy, Request, RequestQueue};
use super::stats::StatsRecorder;
use crate::batcher::{merge_inputs, split_outputs};
use crate::error::{Error, Result};
use crate::memory::resident_bytes;
use crate::runtime::OrtRuntime;
use crate::session::{build_session, run_session, SessionConfig};
use crate::signature::{Dim, ModelSignature};
use crate::tensor::{Tensor, TensorMap};

pub(crate) struct ReplicaSetup {
    pub pool: String,
    pub index: usize,
    pub runtime: OrtRuntime,
    pub model_bytes: Arc<[u8]>,
    pub config: SessionConfig,
    pub warmup_dim: Option<usize>,
    pub max_batch: usize,
    pub max_delay: Duration,
    pub queue: Arc<RequestQueue>,
    pub stats: Arc<StatsRecorder>,
    /// Count of live replicas; decremented when this thread ends, however it ends.
    pub alive: Arc<watch::Sender<usize>>,
}

pub(crate) struct ReplicaReady {
    pub signature: ModelSignature,
    pub memory_bytes: u64,
    pub policy: BatchPolicy,
}

struct AliveGuard(Arc<watch::Sender<usize>>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.send_modify(|alive| *alive = alive.saturating_sub(1));
    }
}

/// Body of the replica thread. Sends exactly one message on `ready` (the session or
/// why it could not be made) before serving.
pub(crate) fn run_replica(setup: ReplicaSetup, ready: mpsc::Sender<Result<ReplicaReady>>) {
    let _alive = AliveGuard(Arc::clone(&setup.alive));
    let (mut session, prepared) = match prepare(&setup) {
        Ok(prepared) => prepared,
        Err(error) => {
            // The receiver only goes away if start() itself was dropped.
            let _ = ready.send(Err(error));
            return;
        }
    };
    let policy = prepared.policy;
    info!(
        pool = %setup.pool,
        replica = setup.index,
        memory_mib = prepared.memory_bytes / (1 << 20),
        batchable = policy.batchable,
        "replica ready"
    );
    if ready.send(Ok(prepared)).is_err() {
        return;
    }
    serve(&setup, &mut session, &policy);
    debug!(pool = %setup.pool, replica = setup.index, "replica stopped");
}

fn prepare(setup: &ReplicaSetup) -> Result<(Session, ReplicaReady)> {
    let resident_before = resident_bytes();
    let mut session = build_session(
        &setup.runtime,
        &setup.pool,
        &setup.model_bytes,
        &setup.config,
    )?;
    let signature = ModelSignature::from_session(&setup.pool, &session)?;
    signature.check_supported(&setup.pool)?;
    if let Some(dynamic_size) = setup.warmup_dim {
        let warmup_failed = |reason: String| Error::Warmup {
            pool: setup.pool.clone(),
            replica: setup.index,
            reason,
        };
        let inputs = synthetic_inputs(&signature, dynamic_size).map_err(warmup_failed)?;
        let started = Instant::now();
        run_session(&mut session, &inputs).map_err(warmup_failed)?;
        debug!(pool = %setup.pool, replica = setup.index, elapsed_ms = started.elapsed().as_millis() as u64, "warm-up run done");
    }
    let memory_bytes = match (resident_before, resident_bytes()) {
        (Some(before), Some(after)) => after.saturating_sub(before),
        _ => 0,
    };
    let batchable = setup.max_batch > 1 && signature.has_dynamic_batch_dim();
    let policy = BatchPolicy {
        batchable,
        max_batch: setup.max_batch,
        max_delay: setup.max_delay,
    };
    Ok((
        session,
        ReplicaReady {
            signature,
            memory_bytes,
            policy,
        },
    ))
}

/// Zero tensors shaped from the signature: dim 0 = 1, other dynamic dims = `dynamic_size`.
pub(crate) fn synthetic_inputs(
    signature: &ModelSignature,
    dynamic_size: usize,
) -> std::result::Result<TensorMap, String> {
    let mut inputs = TensorMap::new();
    for spec in &signature.inputs {
        let dtype = spec
            .dtype
            .ok_or_else(|| format!("input {:?} has an unsupported type", spec.name))?;
        let shape = spec
            .shape
            .iter()
            .enumerate()
            .map(|(index, dim)| match dim {
                Dim::Fixed(size) => *size,
                Dim::Dynamic(_) if index == 0 => 1,
                Dim::Dynamic(_) => dynamic_size,
            })
            .collect();
        let tensor = Tensor::zeros(dtype, shape)
            .map_err(|error| format!("input {:?}: {error}", spec.name))?;
        inputs.insert(spec.name.clone(), tensor);
    }
    Ok(inputs)
}

fn serve(setup: &ReplicaSetup, session: &mut Session, policy: &BatchPolicy) {
    while let Some(batch) = setup.queue.next_batch(policy) {
        let started = Instant::now();
        // A panic inside ort or our conversion fails this batch, not the replica.
        let outcome = catch_unwind(AssertUnwindSafe(|| run_batch(session, &batch)))
            .unwrap_or_else(|_| Err("replica panicked while running the batch".into()));
        let items: usize = batch.iter().map(|request| request.items).sum();
        let run_ms = started.elapsed().as_secs_f64() * 1000.0;
        let latencies: Vec<Duration> = batch
            .iter()
            .map(|request| request.enqueued_at.elapsed())
            .collect();
        match outcome {
            Ok(outputs) => {
                debug!(pool = %setup.pool, replica = setup.index, requests = batch.len(), items, run_ms, "batch ran");
                setup.stats.record_batch(&latencies, true);
                for (request, request_outputs) in batch.into_iter().zip(outputs) {
                    // A caller that gave up dropped its receiver; nothing to do.
                    let _ = request.reply.send(Ok(request_outputs));
                }
            }
            Err(reason) => {
                warn!(pool = %setup.pool, replica = setup.index, requests = batch.len(), items, %reason, "batch failed");
                setup.stats.record_batch(&latencies, false);
                for request in batch {
                    let _ = request.reply.send(Err(Error::Run {
                        pool: setup.pool.clone(),
                        reason: reason.clone(),
                    }));
                }
            }
        }
    }
    if !setup.queue.is_closed() {
        error!(pool = %setup.pool, replica = setup.index, "replica left its loop with the queue open");
    }
}

fn run_batch(
    session: &mut Session,
    batch: &[Request],
) -> std::result::Result<Vec<TensorMap>, String> {
    if let [single] = batch {
        return run_session(session, &single.inputs).map(|outputs| vec![outputs]);
    }
    let inputs: Vec<&TensorMap> = batch.iter().map(|request| &request.inputs).collect();
    let items: Vec<usize> = batch.iter().map(|request| request.items).collect();
    let merged = merge_inputs(&inputs)?;
    let outputs = run_session(session, &merged)?;
    split_outputs(outputs, &items)
}
