//! The Rust worker library: connect to any node, declare the blocks served
//! and a concurrency, receive pushed tasks, answer each with its attempt's
//! fencing number. Reconnects (to the next endpoint) when the stream ends.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::client::{ClientOptions, FloeClient};
use crate::proto as api;

/// A task as the handler sees it.
#[derive(Clone, Debug)]
pub struct Task {
    pub task: String,
    pub attempt: u32,
    pub run_id: String,
    pub step_id: String,
    pub block: String,
    pub item: Option<u32>,
    pub input: serde_json::Value,
}

/// Why a task failed; `retryable: false` tells the engine not to retry.
#[derive(Clone, Debug)]
pub struct TaskError {
    pub message: String,
    pub retryable: bool,
}

/// Runs one block. Called concurrently, up to the worker's concurrency.
pub trait Handler: Send + Sync + 'static {
    fn run(&self, task: Task) -> BoxFuture<'static, Result<serde_json::Value, TaskError>>;
}

/// The connection flags every worker binary takes.
#[derive(clap::Args, Clone, Debug)]
pub struct WorkerConnection {
    /// Node API address(es), comma separated.
    #[arg(long, env = "FLOE_ENDPOINT")]
    pub endpoint: String,
    #[arg(long, env = "FLOE_CA")]
    pub ca: std::path::PathBuf,
    #[arg(long, env = "FLOE_CERT")]
    pub cert: std::path::PathBuf,
    #[arg(long, env = "FLOE_KEY")]
    pub key: std::path::PathBuf,
}

impl WorkerConnection {
    pub fn client_options(self) -> ClientOptions {
        ClientOptions {
            endpoints: self
                .endpoint
                .split(',')
                .map(|endpoint| endpoint.trim().to_string())
                .collect(),
            ca: self.ca,
            cert: self.cert,
            key: self.key,
            connect_timeout: Duration::from_secs(2),
            // Zero: no deadline; the task stream lives as long as the worker.
            request_timeout: Duration::ZERO,
            token: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct WorkerOptions {
    pub client: ClientOptions,
    pub worker_id: String,
    pub blocks: Vec<String>,
    pub concurrency: u32,
    /// Declared to the node; steps with `worker_labels` go only to workers
    /// that have every one of them.
    pub labels: std::collections::BTreeMap<String, String>,
}

/// Serves tasks until `cancel` fires, reconnecting with backoff.
pub async fn run_worker(
    options: WorkerOptions,
    handler: Arc<dyn Handler>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut backoff = Duration::from_millis(100);
    while !cancel.is_cancelled() {
        match serve_once(&options, handler.clone(), &cancel).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(err) => {
                tracing::warn!(worker = %options.worker_id, error = %crate::client::error_chain(&err), "worker stream ended")
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
    Ok(())
}

async fn serve_once(
    options: &WorkerOptions,
    handler: Arc<dyn Handler>,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let mut client = FloeClient::connect(&options.client).await?;
    let (outbound, outbound_rx) = mpsc::channel::<api::WorkerMessage>(256);
    let hello = api::WorkerHello {
        worker_id: options.worker_id.clone(),
        blocks: options.blocks.clone(),
        concurrency: options.concurrency,
        labels: options
            .labels
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect(),
        accepts_refusals: true,
    };
    outbound
        .send(api::WorkerMessage {
            kind: Some(api::worker_message::Kind::Hello(hello)),
        })
        .await?;
    let mut tasks = client
        .workers
        .attach(tokio_stream::wrappers::ReceiverStream::new(outbound_rx))
        .await?
        .into_inner();
    tracing::info!(worker = %options.worker_id, endpoint = %client.endpoint, blocks = ?options.blocks, "worker connected");
    let slots = Arc::new(Semaphore::new(options.concurrency.max(1) as usize));
    loop {
        let message = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            message = tasks.message() => message?,
        };
        let Some(message) = message else {
            return Ok(());
        };
        if let Some(refused) = &message.refused {
            log_refusal(&options.worker_id, refused);
            continue;
        }
        let permit = slots.clone().acquire_owned().await?;
        let handler = handler.clone();
        let outbound = outbound.clone();
        tokio::spawn(async move {
            let input = serde_json::from_slice(&message.input).unwrap_or(serde_json::Value::Null);
            // Heartbeats keep a long task's attempt alive while the handler runs.
            let beating = CancellationToken::new();
            if message.heartbeat_ms > 0 {
                let every = Duration::from_millis((message.heartbeat_ms / 3).max(1));
                let (outbound, beating, task, attempt) = (
                    outbound.clone(),
                    beating.clone(),
                    message.task.clone(),
                    message.attempt,
                );
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            _ = beating.cancelled() => return,
                            _ = tokio::time::sleep(every) => {}
                        }
                        let beat = api::TaskHeartbeat {
                            task: task.clone(),
                            attempt,
                        };
                        if outbound
                            .send(api::WorkerMessage {
                                kind: Some(api::worker_message::Kind::Heartbeat(beat)),
                            })
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
            let task = Task {
                task: message.task.clone(),
                attempt: message.attempt,
                run_id: message.run_id,
                step_id: message.step_id,
                block: message.block,
                item: u32::try_from(message.item).ok(),
                input,
            };
            let outcome = handler.run(task).await;
            beating.cancel();
            let result = match outcome {
                Ok(output) => api::TaskResult {
                    task: message.task,
                    attempt: message.attempt,
                    output: serde_json::to_vec(&output).unwrap_or_else(|_| b"null".to_vec()),
                    ..Default::default()
                },
                Err(err) => api::TaskResult {
                    task: message.task,
                    attempt: message.attempt,
                    failed: true,
                    error: err.message,
                    retryable: err.retryable,
                    ..Default::default()
                },
            };
            let _ = outbound
                .send(api::WorkerMessage {
                    kind: Some(api::worker_message::Kind::Result(result)),
                })
                .await;
            drop(permit);
        });
    }
}

/// A result the node did not record. The task's attempt ends on the node's
/// side as it would have without the result (timeout, retry, or a later
/// result), so this only tells the operator why.
fn log_refusal(worker_id: &str, refused: &api::ResultRefused) {
    tracing::warn!(
        worker = %worker_id,
        task = %refused.task,
        attempt = refused.attempt,
        code = %refused.code,
        reason = %refused.reason,
        "node refused a task result"
    );
}
