//! The workflow workload: runs of a flow with a fork/join, a map, retries
//! and a wait timer, each started with a unique idempotency key, executed
//! by chaos workers in separate processes (see `worker.rs`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use floe_api::client::{ClientOptions, FloeClient};
use floe_api::proto as api;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::history::{classify, error_text, Clock, History, Op, OpRecord, Outcome};
use super::{connected, pause};

pub const FLOW_NAME: &str = "chaos-fanout";
/// Items per run's map step.
pub const MAP_ITEMS: usize = 3;

/// prepare (task, retries) → fork [left: flaky task with retries | right:
/// 300 ms wait] → join → pages (map over the input's items) → done.
pub fn flow_definition() -> Value {
    let retry = json!({ "max_attempts": 10, "backoff": "fixed", "initial_backoff_ms": 50, "jitter": false });
    json!({
        "name": FLOW_NAME,
        "description": "floe-chaos workflow workload: fork/join, map, retries, a wait timer",
        "input": { "type": "object", "required": ["items"], "properties": { "items": { "type": "array" } } },
        "steps": [
            { "id": "prepare", "type": "task", "block": "chaos.work", "input": "input", "retry": retry, "next": "split" },
            { "id": "split", "type": "fork", "join": "joined",
              "branches": [ { "name": "left", "start": "left" }, { "name": "right", "start": "right" } ] },
            { "id": "left", "type": "task", "block": "chaos.flaky", "input": "input", "retry": retry, "next": "joined" },
            { "id": "right", "type": "wait", "duration_ms": 300, "next": "joined" },
            { "id": "joined", "type": "join", "next": "pages" },
            { "id": "pages", "type": "map", "items": "input.items", "max_parallelism": 2,
              "task": { "block": "chaos.work", "input": { "item": "item", "index": "index" }, "retry": retry },
              "next": "done" },
            { "id": "done", "type": "transform", "output": { "pages": "steps.pages.output", "left": "steps.joined.output" } }
        ]
    })
}

/// Stores the flow (idempotent: an identical definition keeps its version).
pub async fn install_flow(client: &mut FloeClient) -> anyhow::Result<u64> {
    let definition = serde_json::to_vec(&flow_definition())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client
            .flows
            .put(api::PutFlowRequest {
                definition: definition.clone(),
            })
            .await
        {
            Ok(reply) => return Ok(reply.into_inner().version),
            Err(status)
                if Instant::now() < deadline && status.code() != tonic::Code::InvalidArgument =>
            {
                tracing::debug!(error = %status, "flow put retried");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => return Err(anyhow::anyhow!("storing flow {FLOW_NAME}: {status}")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct WorkflowOptions {
    pub interval: Duration,
    pub max_runs: usize,
    pub request_timeout: Duration,
}

impl Default for WorkflowOptions {
    fn default() -> Self {
        WorkflowOptions {
            interval: Duration::from_millis(250),
            max_runs: 5_000,
            request_timeout: Duration::from_secs(3),
        }
    }
}

pub fn run_input(sequence: usize) -> Value {
    let items: Vec<usize> = (0..MAP_ITEMS).map(|index| sequence * 10 + index).collect();
    json!({ "items": items, "sequence": sequence })
}

/// Starts runs until `stop`; every attempt is recorded in `history`.
#[allow(clippy::too_many_arguments)]
pub async fn run_starter(
    process: usize,
    node: u64,
    client_options: ClientOptions,
    options: WorkflowOptions,
    key_prefix: String,
    clock: Clock,
    history: History,
    stop: CancellationToken,
) {
    let mut client: Option<FloeClient> = None;
    for sequence in 0..options.max_runs {
        if stop.is_cancelled() {
            break;
        }
        let Some(connected) = connected(
            &mut client,
            &client_options,
            &stop,
            Duration::from_millis(200),
        )
        .await
        else {
            continue;
        };
        let key = format!("{key_prefix}-p{process}-{sequence}");
        let invoked_us = clock.now_us();
        let (run_id, outcome, error) =
            start(connected, &key, sequence, options.request_timeout).await;
        let completed_us = clock.now_us();
        let op = Op::RunStart {
            idempotency_key: key,
            run_id,
        };
        history.push(OpRecord {
            process,
            node,
            op,
            invoked_us,
            completed_us,
            outcome,
            error,
        });
        pause(&stop, options.interval).await;
    }
}

/// Starts (or finds, by its idempotency key) the run for `sequence`.
pub async fn start(
    client: &mut FloeClient,
    key: &str,
    sequence: usize,
    limit: Duration,
) -> (Option<String>, Outcome, Option<String>) {
    let request = api::StartRunRequest {
        flow: FLOW_NAME.into(),
        input: serde_json::to_vec(&run_input(sequence)).unwrap_or_default(),
        idempotency_key: key.into(),
        ..Default::default()
    };
    match tokio::time::timeout(limit, client.runs.start(request)).await {
        Err(_) => (None, Outcome::Unknown, Some("client-side timeout".into())),
        Ok(Err(status)) => (None, classify(&status), Some(error_text(&status))),
        Ok(Ok(reply)) => (Some(reply.into_inner().run_id), Outcome::Ok, None),
    }
}

/// The sequence number inside an idempotency key made by `run_starter`.
pub fn sequence_of(key: &str) -> Option<usize> {
    key.rsplit('-').next()?.parse().ok()
}

/// What the final phase learned about every idempotency key.
#[derive(Debug, Default)]
pub struct Settled {
    /// Key → run id answered when the key was retried after the faults.
    pub run_ids: BTreeMap<String, String>,
    /// Key → why it could not be settled.
    pub unsettled: BTreeMap<String, String>,
}

/// After the faults: starts every key again (idempotent), so keys whose
/// start had an unknown or failed outcome get their run, and acknowledged
/// keys show whether they still name the same run.
pub async fn settle_keys(client: &mut FloeClient, keys: &[String], deadline: Instant) -> Settled {
    let mut settled = Settled::default();
    for key in keys {
        let Some(sequence) = sequence_of(key) else {
            continue;
        };
        loop {
            let (run_id, outcome, error) =
                start(client, key, sequence, Duration::from_secs(3)).await;
            if let (Some(run_id), Outcome::Ok) = (run_id, outcome) {
                settled.run_ids.insert(key.clone(), run_id);
                break;
            }
            if Instant::now() > deadline {
                settled
                    .unsettled
                    .insert(key.clone(), error.unwrap_or_default());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    settled
}

/// Polls runs until none is running or `deadline`; returns the last record
/// of each (runs that could not be read are absent, with the error).
pub async fn wait_terminal(
    client: &mut FloeClient,
    run_ids: &[String],
    deadline: Instant,
) -> (BTreeMap<String, Value>, BTreeMap<String, String>) {
    let mut records: BTreeMap<String, Value> = BTreeMap::new();
    let mut errors: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let mut pending = 0;
        for run_id in run_ids {
            let finished = records
                .get(run_id)
                .is_some_and(|run| run["status"] != "Running");
            if finished {
                continue;
            }
            match get_run(client, run_id).await {
                Ok(run) => {
                    if run["status"] == "Running" {
                        pending += 1;
                    }
                    errors.remove(run_id);
                    records.insert(run_id.clone(), run);
                }
                Err(err) => {
                    pending += 1;
                    errors.insert(run_id.clone(), err);
                }
            }
        }
        if pending == 0 || Instant::now() > deadline {
            return (records, errors);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn get_run(client: &mut FloeClient, run_id: &str) -> Result<Value, String> {
    let request = api::GetRunRequest {
        run_id: run_id.into(),
        consistency: api::ReadConsistency::Linearizable as i32,
    };
    match tokio::time::timeout(Duration::from_secs(3), client.runs.get(request)).await {
        Err(_) => Err("timed out".into()),
        Ok(Err(status)) => Err(error_text(&status)),
        Ok(Ok(reply)) => serde_json::from_slice(&reply.into_inner().run)
            .map_err(|err| format!("run record is not JSON: {err}")),
    }
}

/// Connects to any of the given nodes, retrying until `deadline`.
pub async fn connect_any(options: &ClientOptions, deadline: Instant) -> anyhow::Result<FloeClient> {
    loop {
        match FloeClient::connect(options).await {
            Ok(client) => return Ok(client),
            Err(err) if Instant::now() > deadline => {
                return Err(err).context("connecting for the final checks")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
