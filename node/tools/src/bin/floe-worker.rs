//! An example worker built on floe's Rust worker library. It serves demo
//! blocks (`--block NAME=BEHAVIOUR`) and can record every execution it
//! performs to a file, one JSON line each (used by tests and the demo).
//!
//! Behaviours: `echo` (output = input), `classify` (label and confidence
//! derived from the input's text), `valid` (the input plus `"valid": true`), `fail` (always fails, retryable),
//! `reject` (fails, not retryable), `fail-first:N` (fails the first N
//! attempts of each task), `sleep:MS` (echo after MS milliseconds),
//! `stamp` (outputs `{"received_at_us": …}`, the wall-clock time the task
//! reached the worker, for measuring step hops).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use floe_api::worker::{run_worker, Handler, Task, TaskError, WorkerConnection, WorkerOptions};
use futures::future::BoxFuture;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(about = "Example floe worker")]
struct Args {
    #[command(flatten)]
    connection: WorkerConnection,
    #[arg(long, default_value = "example-worker")]
    id: String,
    /// `NAME=BEHAVIOUR` (repeatable).
    #[arg(long = "block", required = true)]
    blocks: Vec<String>,
    #[arg(long, default_value_t = 4)]
    concurrency: u32,
    /// `KEY=VALUE` label declared to the node (repeatable); steps with
    /// `worker_labels` go only to workers that have all of theirs.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Append one JSON line per execution here.
    #[arg(long)]
    record: Option<PathBuf>,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() && !value.is_empty() => {
            Ok((key.to_string(), value.to_string()))
        }
        _ => Err(format!("label {text:?} is not KEY=VALUE")),
    }
}

#[derive(Clone, Debug)]
enum Behaviour {
    Echo,
    Classify,
    Valid,
    Fail,
    Reject,
    FailFirst(u32),
    Sleep(u64),
    Stamp,
}

fn parse_behaviour(text: &str) -> anyhow::Result<Behaviour> {
    Ok(match text.split_once(':') {
        None if text == "echo" => Behaviour::Echo,
        None if text == "classify" => Behaviour::Classify,
        None if text == "valid" => Behaviour::Valid,
        None if text == "fail" => Behaviour::Fail,
        None if text == "reject" => Behaviour::Reject,
        None if text == "stamp" => Behaviour::Stamp,
        Some(("fail-first", n)) => Behaviour::FailFirst(n.parse()?),
        Some(("sleep", ms)) => Behaviour::Sleep(ms.parse()?),
        _ => anyhow::bail!("unknown behaviour {text:?} (echo, classify, valid, fail, reject, stamp, fail-first:N, sleep:MS)"),
    })
}

struct Blocks {
    behaviours: BTreeMap<String, Behaviour>,
    worker_id: String,
    record: Option<Mutex<std::fs::File>>,
}

impl Blocks {
    fn record(&self, task: &Task, outcome: &str) {
        let Some(file) = &self.record else { return };
        let line = json!({
            "worker": self.worker_id, "task": task.task, "attempt": task.attempt,
            "run_id": task.run_id, "step_id": task.step_id, "block": task.block, "outcome": outcome,
        });
        if let Ok(mut file) = file.lock() {
            let _ = writeln!(file, "{line}");
        }
    }
}

fn classify(input: &Value) -> Value {
    let text = input.to_string();
    let score = text.bytes().fold(0u32, |acc, byte| {
        acc.wrapping_mul(31).wrapping_add(u32::from(byte))
    });
    let label = if text.contains("invoice") {
        "invoice"
    } else if text.contains("receipt") {
        "receipt"
    } else {
        "letter"
    };
    json!({ "label": label, "confidence": if text.contains("blurry") { 0.42 } else { 0.8 + f64::from(score % 20) / 100.0 } })
}

impl Handler for Blocks {
    fn run(&self, task: Task) -> BoxFuture<'static, Result<Value, TaskError>> {
        let behaviour = self.behaviours.get(&task.block).cloned();
        let outcome: Result<Value, TaskError> = match &behaviour {
            None => Err(TaskError {
                message: format!("this worker does not serve block {}", task.block),
                retryable: false,
            }),
            Some(Behaviour::Echo) | Some(Behaviour::Sleep(_)) => Ok(task.input.clone()),
            Some(Behaviour::Classify) => Ok(classify(&task.input)),
            Some(Behaviour::Valid) => {
                let mut output = task.input.clone();
                if let Some(object) = output.as_object_mut() {
                    object.insert("valid".into(), json!(true));
                }
                Ok(output)
            }
            Some(Behaviour::Fail) => Err(TaskError {
                message: "block fails by design".into(),
                retryable: true,
            }),
            Some(Behaviour::Reject) => Err(TaskError {
                message: "input rejected".into(),
                retryable: false,
            }),
            Some(Behaviour::FailFirst(n)) if task.attempt <= *n => Err(TaskError {
                message: format!("attempt {} fails by design", task.attempt),
                retryable: true,
            }),
            Some(Behaviour::FailFirst(_)) => Ok(task.input.clone()),
            Some(Behaviour::Stamp) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                Ok(json!({ "received_at_us": now.as_micros() as u64 }))
            }
        };
        self.record(&task, if outcome.is_ok() { "ok" } else { "failed" });
        let delay = match behaviour {
            Some(Behaviour::Sleep(ms)) => Duration::from_millis(ms),
            _ => Duration::ZERO,
        };
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            outcome
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    floe_tools::init_logging("info");
    let mut behaviours = BTreeMap::new();
    for spec in &args.blocks {
        let (name, behaviour) = spec
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--block {spec:?} is not NAME=BEHAVIOUR"))?;
        behaviours.insert(name.to_string(), parse_behaviour(behaviour)?);
    }
    let record = match &args.record {
        Some(path) => Some(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        )),
        None => None,
    };
    let blocks = Arc::new(Blocks {
        behaviours: behaviours.clone(),
        worker_id: args.id.clone(),
        record,
    });
    let options = WorkerOptions {
        client: args.connection.client_options(),
        worker_id: args.id,
        blocks: behaviours.keys().cloned().collect(),
        concurrency: args.concurrency,
        labels: args.labels.into_iter().collect(),
    };
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        on_signal.cancel();
    });
    run_worker(options, blocks, cancel).await
}
