//! The chaos worker: a separate process (`floe-chaos worker …`) that serves
//! the workflow workload's blocks over the raw worker stream and appends
//! one JSON line per execution to a record file.
//!
//! Blocks:
//! - `chaos.work`: output `{"attempt", "worker", "exec", "input"}`.
//! - `chaos.flaky`: attempt 1 fails (retryable). On a later attempt the
//!   worker first answers the previous attempt with a success, as a
//!   superseded worker answering late would — on a stream of its own (a
//!   "zombie" worker id serving only `chaos.zombie`), and it waits until the
//!   node has handled that answer — then answers its own. The node must
//!   refuse the late answer (fencing); its output carries `"stale": true`,
//!   so a run that accepted it shows it.
//!
//! Each output names the attempt and the execution that produced it, so
//! the checker can tie every accepted result to a recorded execution.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use floe_api::client::{ClientOptions, FloeClient};
use floe_api::proto as api;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;

pub const WORK_BLOCK: &str = "chaos.work";
pub const FLAKY_BLOCK: &str = "chaos.flaky";
/// Served by the zombie streams only; no flow uses it, so nothing is pushed to them.
const ZOMBIE_BLOCK: &str = "chaos.zombie";

/// One line of a worker's record file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Execution {
    pub worker: String,
    pub exec: String,
    pub run_id: String,
    pub step_id: String,
    pub item: Option<u32>,
    pub attempt: u32,
    pub block: String,
    /// "ok", "failed" or "stale-replay" (a late answer for `attempt`).
    pub kind: String,
}

#[derive(Clone, Debug)]
pub struct WorkerArgs {
    pub client: ClientOptions,
    pub worker_id: String,
    pub record: PathBuf,
    pub concurrency: u32,
    /// The worker exits by itself after this long, whatever happens.
    pub max_lifetime: Duration,
}

struct Recorder {
    file: Mutex<std::fs::File>,
    worker: String,
    counter: AtomicU64,
}

impl Recorder {
    fn next_exec(&self) -> String {
        format!(
            "{}-{}-{}",
            self.worker,
            std::process::id(),
            self.counter.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn record(&self, execution: &Execution) {
        let Ok(line) = serde_json::to_string(execution) else {
            return;
        };
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // One write per line: a SIGKILL can only cut the last line short.
        let _ = file.write_all(format!("{line}\n").as_bytes());
    }
}

/// Serves tasks until killed or `max_lifetime` passes.
pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.record)
        .with_context(|| format!("opening {}", args.record.display()))?;
    let recorder = Arc::new(Recorder {
        file: Mutex::new(file),
        worker: args.worker_id.clone(),
        counter: AtomicU64::new(0),
    });
    let lifetime = tokio::time::sleep(args.max_lifetime);
    tokio::pin!(lifetime);
    let mut backoff = Duration::from_millis(100);
    loop {
        tokio::select! {
            _ = &mut lifetime => return Ok(()),
            served = serve_once(&args, recorder.clone()) => {
                if let Err(err) = served {
                    tracing::info!(worker = %args.worker_id, error = %err, "worker stream ended");
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

async fn serve_once(args: &WorkerArgs, recorder: Arc<Recorder>) -> anyhow::Result<()> {
    let mut client = FloeClient::connect(&args.client).await?;
    let (outbound, outbound_rx) = mpsc::channel::<api::WorkerMessage>(256);
    let hello = api::WorkerHello {
        worker_id: args.worker_id.clone(),
        blocks: vec![WORK_BLOCK.into(), FLAKY_BLOCK.into()],
        concurrency: args.concurrency,
        labels: Default::default(),
        // This worker has no use for the node's reasons; it keeps the plain stream.
        accepts_refusals: false,
    };
    outbound
        .send(api::WorkerMessage {
            kind: Some(api::worker_message::Kind::Hello(hello)),
        })
        .await?;
    let stream = tokio_stream::wrappers::ReceiverStream::new(outbound_rx);
    let mut tasks = client.workers.attach(stream).await?.into_inner();
    tracing::info!(worker = %args.worker_id, endpoint = %client.endpoint, "worker attached");
    while let Some(task) = tasks.message().await? {
        let outbound = outbound.clone();
        let recorder = recorder.clone();
        let client = client.clone();
        tokio::spawn(async move { execute(task, outbound, recorder, client).await });
    }
    Ok(())
}

fn result_message(task: &str, attempt: u32, output: serde_json::Value) -> api::WorkerMessage {
    let result = api::TaskResult {
        task: task.to_string(),
        attempt,
        output: serde_json::to_vec(&output).unwrap_or_else(|_| b"null".to_vec()),
        ..Default::default()
    };
    api::WorkerMessage {
        kind: Some(api::worker_message::Kind::Result(result)),
    }
}

/// Answers `attempt` of `task` from a short-lived stream of its own, and
/// returns once the node has handled the answer (it reads a stream's
/// messages in order and ends the stream after the last one).
async fn late_answer(
    client: &mut FloeClient,
    zombie_id: String,
    message: api::WorkerMessage,
) -> anyhow::Result<()> {
    let hello = api::WorkerHello {
        worker_id: zombie_id,
        blocks: vec![ZOMBIE_BLOCK.into()],
        concurrency: 1,
        labels: Default::default(),
        accepts_refusals: false,
    };
    let messages = vec![
        api::WorkerMessage {
            kind: Some(api::worker_message::Kind::Hello(hello)),
        },
        message,
    ];
    let mut replies = client
        .workers
        .attach(tokio_stream::iter(messages))
        .await?
        .into_inner();
    // Bounded: the node ends the stream once our input ended.
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        while replies.message().await?.is_some() {}
        anyhow::Ok(())
    });
    drained
        .await
        .context("the node did not end the zombie stream")?
}

async fn execute(
    task: api::WorkerTask,
    outbound: mpsc::Sender<api::WorkerMessage>,
    recorder: Arc<Recorder>,
    mut client: FloeClient,
) {
    // A little work, so tasks are in flight when faults hit.
    let millis = 10 + (task.attempt as u64 * 7 + task.task.len() as u64) % 40;
    tokio::time::sleep(Duration::from_millis(millis)).await;
    let item = u32::try_from(task.item).ok();
    let input: serde_json::Value =
        serde_json::from_slice(&task.input).unwrap_or(serde_json::Value::Null);
    let execution = |exec: String, attempt: u32, kind: &str| Execution {
        worker: recorder.worker.clone(),
        exec,
        run_id: task.run_id.clone(),
        step_id: task.step_id.clone(),
        item,
        attempt,
        block: task.block.clone(),
        kind: kind.to_string(),
    };
    let exec = recorder.next_exec();
    if task.block == FLAKY_BLOCK && task.attempt == 1 {
        recorder.record(&execution(exec, task.attempt, "failed"));
        let result = api::TaskResult {
            task: task.task.clone(),
            attempt: task.attempt,
            failed: true,
            error: "the first attempt fails by design".into(),
            retryable: true,
            ..Default::default()
        };
        let _ = outbound
            .send(api::WorkerMessage {
                kind: Some(api::worker_message::Kind::Result(result)),
            })
            .await;
        return;
    }
    if task.block == FLAKY_BLOCK {
        let stale_attempt = task.attempt - 1;
        let stale_exec = recorder.next_exec();
        recorder.record(&execution(
            stale_exec.clone(),
            stale_attempt,
            "stale-replay",
        ));
        let output = json!({ "attempt": stale_attempt, "worker": recorder.worker, "exec": stale_exec, "stale": true });
        let zombie_id = format!("{}-zombie-{stale_exec}", recorder.worker);
        if let Err(err) = late_answer(
            &mut client,
            zombie_id,
            result_message(&task.task, stale_attempt, output),
        )
        .await
        {
            tracing::info!(task = %task.task, error = %err, "late answer not delivered");
        }
    }
    recorder.record(&execution(exec.clone(), task.attempt, "ok"));
    let output =
        json!({ "attempt": task.attempt, "worker": recorder.worker, "exec": exec, "input": input });
    let _ = outbound
        .send(result_message(&task.task, task.attempt, output))
        .await;
}

/// Reads every complete line of a record file (a killed worker may leave
/// the last one cut short).
pub fn read_executions(path: &Path) -> Vec<Execution> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// A worker process the runner started; killed on drop.
pub struct WorkerProcess {
    pub id: String,
    pub record: PathBuf,
    child: Option<Child>,
    command: Vec<String>,
    log: PathBuf,
}

impl WorkerProcess {
    /// Starts `chaos_binary worker …` against the given client settings.
    pub fn spawn(
        chaos_binary: &Path,
        dir: &Path,
        id: &str,
        client: &ClientOptions,
        max_lifetime: Duration,
    ) -> anyhow::Result<WorkerProcess> {
        let record = dir.join(format!("{id}.executions"));
        let log = dir.join(format!("{id}.log"));
        let command = vec![
            "worker".to_string(),
            "--endpoint".into(),
            client.endpoints.join(","),
            "--ca".into(),
            client.ca.display().to_string(),
            "--cert".into(),
            client.cert.display().to_string(),
            "--key".into(),
            client.key.display().to_string(),
            "--id".into(),
            id.to_string(),
            "--record".into(),
            record.display().to_string(),
            "--max-seconds".into(),
            max_lifetime.as_secs().max(1).to_string(),
        ];
        let mut process = WorkerProcess {
            id: id.to_string(),
            record,
            child: None,
            command,
            log,
        };
        process.start(chaos_binary)?;
        Ok(process)
    }

    pub fn start(&mut self, chaos_binary: &Path) -> anyhow::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(chaos_binary)
            .args(&self.command)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting worker {} ({})", self.id, chaos_binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: the worker's unanswered attempts are lost with it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
