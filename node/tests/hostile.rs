//! Hostile inputs against a real three-node cluster: values nested past the
//! limit, chains of transforms, expressions that build huge values,
//! malformed worker results, huge names, and retention of runs at the
//! limits. Whatever a client or a worker sends, every node stays up and
//! ready, the cluster keeps answering, what was stored before stays
//! readable, and all of it survives a restart of every node.
//!
//! One test per class, each with its own cluster; they take turns (a lock),
//! so the latency bounds measure the cluster, not the other tests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use floe_api::client::FloeClient;
use floe_harness::{http_get, ClusterOptions, TestCluster};
use floe_node::api;
use floe_node::api::worker_message::Kind;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tonic::Code;

const BINARY: &str = env!("CARGO_BIN_EXE_floe");
const WAIT: Duration = Duration::from_secs(30);
/// How long a node may take to answer `/health/readyz` after the hostile part.
const READY_BOUND: Duration = Duration::from_secs(10);
/// The most one kv call may take while hostile runs are being applied.
const CALL_BOUND: Duration = Duration::from_secs(2);
/// The value nesting limit floe enforces.
const DEPTH_LIMIT: usize = 64;
const NODES: [u64; 3] = [1, 2, 3];

/// One test at a time even when the harness runs them in parallel: the
/// answer-time bounds are measured on an otherwise quiet machine.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn turn() -> tokio::sync::MutexGuard<'static, ()> {
    TURN.lock().await
}

/// `depth` arrays, one inside the other, around `0`.
fn nested_arrays(depth: usize) -> Value {
    let mut value = json!(0);
    for _ in 0..depth {
        value = Value::Array(vec![value]);
    }
    value
}

/// A mapping `depth` objects deep with the expression `leaf` at the bottom.
fn nested_mapping(depth: usize, leaf: &str) -> Value {
    let mut value = json!(leaf);
    for _ in 0..depth {
        value = json!({ "a": value });
    }
    value
}

fn transform_flow(name: &str, step: &str, output: Value) -> Value {
    json!({ "name": name, "steps": [{ "id": step, "type": "transform", "output": output }] })
}

async fn put_flow(client: &mut FloeClient, definition: &Value) -> Result<u64, tonic::Status> {
    let definition = serde_json::to_vec(definition).unwrap();
    client
        .flows
        .put(api::PutFlowRequest { definition })
        .await
        .map(|reply| reply.into_inner().version)
}

async fn start_bytes(
    client: &mut FloeClient,
    flow: &str,
    input: Vec<u8>,
) -> Result<String, tonic::Status> {
    let request = api::StartRunRequest {
        flow: flow.into(),
        input,
        ..Default::default()
    };
    client
        .runs
        .start(request)
        .await
        .map(|reply| reply.into_inner().run_id)
}

async fn start(
    client: &mut FloeClient,
    flow: &str,
    input: &Value,
) -> Result<String, tonic::Status> {
    start_bytes(client, flow, serde_json::to_vec(input).unwrap()).await
}

/// Starts a run under an idempotency key. A start not answered in time (its
/// entry held apply past the write timeout) is a finding; it is asked again
/// with the same key until it answers, which names the run, or a node exits.
async fn start_patiently(
    cluster: &mut TestCluster,
    client: &mut FloeClient,
    findings: &mut Findings,
    flow: &str,
    input: &Value,
) -> String {
    let key = format!("hostile-{flow}");
    let began = Instant::now();
    let deadline = began + Duration::from_secs(90);
    let mut late = false;
    loop {
        let request = api::StartRunRequest {
            flow: flow.into(),
            input: serde_json::to_vec(input).unwrap(),
            idempotency_key: key.clone(),
            ..Default::default()
        };
        match client.runs.start(request).await {
            Ok(reply) => {
                findings.check(!late, || {
                    format!(
                        "starting {flow} was not answered in time; it answered after {:?}",
                        began.elapsed()
                    )
                });
                return reply.into_inner().run_id;
            }
            Err(status)
                if Instant::now() < deadline
                    && status.code() != Code::InvalidArgument
                    && status.code() != Code::NotFound =>
            {
                eprintln!("starting {flow}: {status:?}; asking again");
                late = true;
                for id in NODES {
                    if let Some(exit) = cluster.exited(id).unwrap() {
                        panic!(
                            "starting {flow}: node {id} exited ({exit}) after {:?}; log:\n{}",
                            began.elapsed(),
                            cluster.log_tail(id, 6)
                        );
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => panic!(
                "starting {flow}: no answer after {:?} (apply held?): {status:?}",
                began.elapsed()
            ),
        }
    }
}

async fn get_run(client: &mut FloeClient, run_id: &str) -> Result<Value, tonic::Status> {
    let reply = client
        .runs
        .get(api::GetRunRequest {
            run_id: run_id.into(),
            consistency: 0,
        })
        .await?;
    Ok(serde_json::from_slice(&reply.into_inner().run).expect("a run record is JSON"))
}

async fn finished(client: &mut FloeClient, run_id: &str) -> Value {
    floe_harness::finished_run(client, run_id, WAIT)
        .await
        .unwrap()
}

/// The run's error and its steps' errors, in one text.
fn errors(run: &Value) -> String {
    let mut text = run["error"].as_str().unwrap_or_default().to_string();
    for step in run["steps"]
        .as_object()
        .into_iter()
        .flat_map(|steps| steps.values())
    {
        if let Some(error) = step["error"].as_str() {
            text.push_str(" | ");
            text.push_str(error);
        }
    }
    text
}

fn mentions_depth(text: &str) -> bool {
    let text = text.to_lowercase();
    text.contains("deep") || text.contains("depth") || text.contains("nest")
}

/// Expectations checked without stopping the test, so that one run names
/// every member of a class that misbehaves; the test fails at its end (after
/// the cluster checks) with all of them.
#[derive(Default)]
struct Findings(Vec<String>);

impl Findings {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let what = what();
            eprintln!("FINDING: {what}");
            self.0.push(what);
        }
    }

    /// A refusal with one of `codes` and a message under 1 KiB; the refusal
    /// when there was one.
    fn refused(
        &mut self,
        what: &str,
        result: Result<impl std::fmt::Debug, tonic::Status>,
        codes: &[Code],
    ) -> Option<tonic::Status> {
        match result {
            Ok(answer) => {
                self.check(false, || {
                    format!(
                        "{what}: accepted ({}), expected a refusal with one of {codes:?}",
                        short(&format!("{answer:?}"))
                    )
                });
                None
            }
            Err(status) => {
                let message = status.message();
                self.check(codes.contains(&status.code()), || {
                    format!(
                        "{what}: {:?}, expected one of {codes:?}: {}",
                        status.code(),
                        short(message)
                    )
                });
                self.check(message.len() < 1024, || {
                    format!(
                        "{what}: the message is {} bytes: {}",
                        message.len(),
                        short(message)
                    )
                });
                self.check(!message.is_empty(), || format!("{what}: an empty message"));
                Some(status)
            }
        }
    }

    fn assert_none(self) {
        assert!(
            self.0.is_empty(),
            "{} expectation(s) failed:\n{}",
            self.0.len(),
            self.0.join("\n")
        );
    }
}

fn short(text: &str) -> String {
    if text.len() <= 300 {
        return text.to_string();
    }
    let mut end = 300;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &text[..end], text.len())
}

/// What each test stores before its hostile part and reads back at the end:
/// a kv key, a flow, and a run (finished, or waiting where retention would
/// purge a finished one).
struct Canary {
    run_id: String,
    status: &'static str,
}

const CANARY_KEY: &str = "canary/key";
const CANARY_VALUE: &[u8] = b"still here";

async fn plant_canary(client: &mut FloeClient, finished_run: bool) -> Canary {
    client
        .kv
        .put(api::PutRequest {
            key: CANARY_KEY.into(),
            value: CANARY_VALUE.to_vec(),
        })
        .await
        .unwrap();
    let flow = json!({ "name": "canary", "steps": [
        { "id": "gate", "type": "decision", "cases": [{ "when": "input.wait", "next": "hold" }], "default": "echo" },
        { "id": "hold", "type": "signal", "signal": "go", "next": "echo" },
        { "id": "echo", "type": "transform", "output": { "canary": "input.n" } }
    ]});
    put_flow(client, &flow).await.unwrap();
    let run_id = start(client, "canary", &json!({ "n": 7, "wait": !finished_run }))
        .await
        .unwrap();
    let status = if finished_run {
        let run = finished(client, &run_id).await;
        assert_eq!(run["status"], "Completed", "{run:#}");
        "Completed"
    } else {
        "Running"
    };
    Canary { run_id, status }
}

/// Every node process is running and ready, and every node serves the canary.
async fn assert_cluster_whole(cluster: &mut TestCluster, canary: &Canary, when: &str) {
    for id in NODES {
        let exited = cluster.exited(id).unwrap();
        assert!(
            exited.is_none(),
            "{when}: node {id} exited ({exited:?}); log:\n{}",
            cluster.log_tail(id, 40)
        );
        assert!(
            cluster.node(id).unwrap().is_running(),
            "{when}: node {id} is not running"
        );
    }
    if let Err(err) = cluster.wait_ready(&NODES, READY_BOUND).await {
        panic!("{when}: {err:#}");
    }
    for id in NODES {
        let mut client = cluster.client(id).await.unwrap();
        let deadline = Instant::now() + WAIT;
        let kv = loop {
            match client
                .kv
                .get(api::GetRequest {
                    key: CANARY_KEY.into(),
                    consistency: 0,
                })
                .await
            {
                Ok(reply) => break reply.into_inner(),
                Err(status) if Instant::now() < deadline => {
                    eprintln!("{when}: node {id}: canary key: {status:?}; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(status) => panic!("{when}: node {id}: canary key unreadable: {status:?}"),
            }
        };
        assert!(
            kv.found && kv.value == CANARY_VALUE,
            "{when}: node {id}: canary key {kv:?}"
        );
        let flow = client
            .flows
            .get(api::GetFlowRequest {
                name: "canary".into(),
                version: 0,
                consistency: 0,
            })
            .await;
        let flow = flow
            .unwrap_or_else(|status| panic!("{when}: node {id}: canary flow: {status:?}"))
            .into_inner();
        assert_eq!(flow.version, 1, "{when}: node {id}");
        let run = get_run(&mut client, &canary.run_id)
            .await
            .unwrap_or_else(|status| panic!("{when}: node {id}: canary run: {status:?}"));
        assert_eq!(run["status"], canary.status, "{when}: node {id}: {run:#}");
        if canary.status == "Completed" {
            assert_eq!(run["output"], json!({ "canary": 7 }), "{when}: node {id}");
        }
    }
}

/// The end of every test: the cluster is whole now, and again after every
/// node was killed and started again.
async fn assert_survives_restart(cluster: &mut TestCluster, canary: &Canary) {
    assert_cluster_whole(cluster, canary, "after the hostile part").await;
    for id in NODES {
        cluster.kill(id).unwrap();
    }
    for id in NODES {
        cluster.spawn(id).unwrap();
    }
    if let Err(err) = cluster.wait_ready(&NODES, Duration::from_secs(60)).await {
        panic!("after restarting every node: {err:#}");
    }
    assert_cluster_whole(cluster, canary, "after restarting every node").await;
}

async fn start_cluster(overrides: &[&str]) -> TestCluster {
    let mut options = ClusterOptions::new(BINARY, 3);
    options.overrides = overrides.iter().map(|o| o.to_string()).collect();
    TestCluster::start(options).await.unwrap()
}

/// Puts and gets a kv key in a loop until `stop` (at most `count` rounds or
/// `limit` in all); returns each call's duration or error.
fn kv_probe(
    mut client: FloeClient,
    stop: Arc<AtomicBool>,
    count: usize,
    limit: Duration,
) -> tokio::task::JoinHandle<Vec<Result<Duration, String>>> {
    tokio::spawn(async move {
        let began = Instant::now();
        let mut calls = Vec::new();
        for round in 0..count {
            if stop.load(Ordering::SeqCst) || began.elapsed() > limit {
                break;
            }
            let key = format!("probe/{}", round % 8);
            let value = round.to_string().into_bytes();
            let at = Instant::now();
            let put = tokio::time::timeout(
                CALL_BOUND * 3,
                client.kv.put(api::PutRequest {
                    key: key.clone(),
                    value: value.clone(),
                }),
            )
            .await;
            calls.push(match put {
                Ok(Ok(_)) => Ok(at.elapsed()),
                Ok(Err(status)) => Err(format!("put {key}: {status:?}")),
                Err(_) => Err(format!("put {key}: no answer within {:?}", CALL_BOUND * 3)),
            });
            let at = Instant::now();
            let get = tokio::time::timeout(
                CALL_BOUND * 3,
                client.kv.get(api::GetRequest {
                    key: key.clone(),
                    consistency: 0,
                }),
            )
            .await;
            calls.push(match get {
                Ok(Ok(reply)) if reply.get_ref().value == value => Ok(at.elapsed()),
                Ok(Ok(reply)) => Err(format!(
                    "get {key}: {:?}, expected {value:?}",
                    reply.into_inner()
                )),
                Ok(Err(status)) => Err(format!("get {key}: {status:?}")),
                Err(_) => Err(format!("get {key}: no answer within {:?}", CALL_BOUND * 3)),
            });
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        calls
    })
}

fn check_probe_answered(findings: &mut Findings, calls: &[Result<Duration, String>], during: &str) {
    findings.check(calls.len() >= 4, || {
        format!("{during}: only {} kv calls were made", calls.len())
    });
    let slow: Vec<String> = calls
        .iter()
        .enumerate()
        .filter_map(|(i, call)| match call {
            Ok(took) if *took <= CALL_BOUND => None,
            Ok(took) => Some(format!("call {i} took {took:?}")),
            Err(err) => Some(format!("call {i} failed: {err}")),
        })
        .collect();
    findings.check(slow.is_empty(), || {
        format!(
            "{during}: {} of {} kv calls were not answered within {CALL_BOUND:?}: {}",
            slow.len(),
            calls.len(),
            slow.join("; ")
        )
    });
}

/// Class a: a run input nested past the limit is refused at the door; one
/// below it runs and reads back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_run_input_is_refused_at_the_door_and_a_shallower_one_runs() {
    let _turn = turn().await;
    let mut cluster = start_cluster(&[]).await;
    let mut client = cluster.client(1).await.unwrap();
    let canary = plant_canary(&mut client, true).await;
    put_flow(&mut client, &transform_flow("echo", "echo", json!("input")))
        .await
        .unwrap();

    let mut findings = Findings::default();
    let refused = start(&mut client, "echo", &nested_arrays(100)).await;
    if let Some(status) = findings.refused(
        "a run input of 100 nested arrays",
        refused,
        &[Code::InvalidArgument],
    ) {
        let message = status.message();
        findings.check(
            mentions_depth(message) && message.contains(&DEPTH_LIMIT.to_string()),
            || format!("the refusal names neither the depth nor the limit: {message}"),
        );
        let listed = client
            .runs
            .list(api::ListRunsRequest {
                flow: "echo".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            listed.runs.is_empty(),
            "the refused start stored a run: {listed:?}"
        );
    }

    let input = nested_arrays(60);
    let run_id = start(&mut client, "echo", &input).await.unwrap();
    let run = finished(&mut client, &run_id).await;
    assert_eq!(run["status"], "Completed", "{run:#}");
    for id in NODES {
        let run = get_run(&mut cluster.client(id).await.unwrap(), &run_id)
            .await
            .unwrap();
        assert_eq!(run["input"], input, "node {id}");
        assert_eq!(run["output"], input, "node {id}");
    }

    // A signal payload is a value from outside too.
    let waiting = start(&mut client, "canary", &json!({ "n": 1, "wait": true }))
        .await
        .unwrap();
    let payload = serde_json::to_vec(&nested_arrays(100)).unwrap();
    let refused = client
        .runs
        .signal(api::SignalRunRequest {
            run_id: waiting.clone(),
            signal: "go".into(),
            payload,
        })
        .await;
    if let Some(status) = findings.refused(
        "a signal payload of 100 nested arrays",
        refused,
        &[Code::InvalidArgument],
    ) {
        findings.check(mentions_depth(status.message()), || {
            format!("the refusal does not name the depth: {}", status.message())
        });
        assert_eq!(
            get_run(&mut client, &waiting).await.unwrap()["status"],
            "Running"
        );
    }
    let _ = client
        .runs
        .cancel(api::CancelRunRequest {
            run_id: waiting,
            reason: String::new(),
        })
        .await;

    assert_survives_restart(&mut cluster, &canary).await;
    let run = get_run(&mut client_for(&cluster).await, &run_id)
        .await
        .unwrap();
    assert_eq!(run["input"], input, "after the restart");
    findings.assert_none();
}

async fn client_for(cluster: &TestCluster) -> FloeClient {
    FloeClient::connect(&cluster.client_options(&NODES).unwrap())
        .await
        .unwrap()
}

/// Class b: a mapping nested past the limit is refused at flow put; one
/// that produces a value past the limit inside a run fails that run, and
/// the failed run stays readable and answers every run command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_values_built_through_mappings_fail_the_run_not_the_cluster() {
    let _turn = turn().await;
    let mut cluster = start_cluster(&[]).await;
    let mut client = cluster.client(2).await.unwrap();
    let canary = plant_canary(&mut client, true).await;

    let mut findings = Findings::default();
    let refused = put_flow(
        &mut client,
        &transform_flow("deep-map", "wrap", nested_mapping(100, "input")),
    )
    .await;
    if let Some(status) = findings.refused(
        "a transform mapping 100 levels deep",
        refused,
        &[Code::InvalidArgument],
    ) {
        findings.check(mentions_depth(status.message()), || {
            format!("the refusal does not name the depth: {}", status.message())
        });
    }

    put_flow(
        &mut client,
        &transform_flow("wrap-forty", "wrap_forty", nested_mapping(40, "input")),
    )
    .await
    .unwrap();
    let run_id = start(&mut client, "wrap-forty", &nested_arrays(40))
        .await
        .unwrap();
    let run = finished(&mut client, &run_id).await;
    let ended = run["status"].as_str().unwrap().to_string();
    findings.check(ended == "Failed", || {
        format!(
            "the run producing a value 80 deep ended {ended}, not Failed: {}",
            short(&run.to_string())
        )
    });
    let error = errors(&run);
    if ended == "Failed" {
        findings.check(
            error.contains("wrap_forty") && mentions_depth(&error),
            || format!("the error names neither the step nor the depth: {error}"),
        );
    }

    // Every read and command on the failed run answers.
    for id in NODES {
        let mut client = cluster.client(id).await.unwrap();
        assert_eq!(
            get_run(&mut client, &run_id).await.unwrap()["status"],
            ended.as_str(),
            "node {id}"
        );
        let listed = client
            .runs
            .list(api::ListRunsRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(
            listed
                .runs
                .iter()
                .any(|summary| summary.run_id == run_id
                    && summary.status.eq_ignore_ascii_case(&ended)),
            "node {id}: {listed:?}"
        );
        let by_flow = client
            .runs
            .list(api::ListRunsRequest {
                flow: "wrap-forty".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(by_flow.runs.len(), 1, "node {id}: {by_flow:?}");
    }
    let cancel = client
        .runs
        .cancel(api::CancelRunRequest {
            run_id: run_id.clone(),
            reason: "hostile".into(),
        })
        .await;
    assert_eq!(
        cancel.unwrap_err().code(),
        Code::FailedPrecondition,
        "a finished run cannot be cancelled"
    );
    match client
        .runs
        .retry(api::RetryRunRequest {
            run_id: run_id.clone(),
        })
        .await
    {
        Ok(_) => {
            let run = finished(&mut client, &run_id).await;
            assert_eq!(
                run["status"],
                "Failed",
                "the retried step produced the same value: {}",
                short(&run.to_string())
            );
        }
        Err(status) => assert!(
            matches!(
                status.code(),
                Code::FailedPrecondition | Code::InvalidArgument
            ),
            "{status:?}"
        ),
    }
    let run = get_run(&mut client, &run_id).await.unwrap();
    assert_eq!(run["status"], ended.as_str());

    assert_survives_restart(&mut cluster, &canary).await;
    let mut client = client_for(&cluster).await;
    assert_eq!(
        get_run(&mut client, &run_id).await.unwrap()["status"],
        ended.as_str()
    );
    let listed = client
        .runs
        .list(api::ListRunsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.runs.iter().any(|summary| summary.run_id == run_id),
        "{listed:?}"
    );
    findings.assert_none();
}

/// `count` transform steps `s0`..; each wraps the previous output in one
/// more object when `nesting`, else adds one to it.
fn chain_flow(name: &str, count: usize, nesting: bool) -> Value {
    let steps: Vec<Value> = (0..count)
        .map(|i| {
            let previous = if i == 0 {
                "input.n".to_string()
            } else {
                format!("steps.s{}.output", i - 1)
            };
            let output = if nesting {
                json!({ "v": previous })
            } else if i == 0 {
                json!(previous)
            } else {
                json!(format!("{previous} + 1"))
            };
            let mut step = json!({ "id": format!("s{i}"), "type": "transform", "output": output });
            if i + 1 < count {
                step["next"] = json!(format!("s{}", i + 1));
            }
            step
        })
        .collect();
    json!({ "name": name, "steps": steps })
}

/// Class c: a long chain of transforms, one nesting its value deeper at
/// every step and one passing a number on; the cluster answers meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_of_transforms_end_and_the_cluster_answers_meanwhile() {
    let _turn = turn().await;
    let mut cluster = start_cluster(&[]).await;
    let mut client = cluster.client(1).await.unwrap();
    let canary = plant_canary(&mut client, true).await;
    const STEPS: usize = 400;
    put_flow(&mut client, &chain_flow("nesting-chain", STEPS, true))
        .await
        .unwrap();
    put_flow(&mut client, &chain_flow("flat-chain", STEPS, false))
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let probe = kv_probe(
        cluster.client(3).await.unwrap(),
        stop.clone(),
        400,
        Duration::from_secs(90),
    );
    let mut findings = Findings::default();
    let nesting = start_patiently(
        &mut cluster,
        &mut client,
        &mut findings,
        "nesting-chain",
        &json!({ "n": 1 }),
    )
    .await;
    let flat = start_patiently(
        &mut cluster,
        &mut client,
        &mut findings,
        "flat-chain",
        &json!({ "n": 1 }),
    )
    .await;
    let nesting_run =
        floe_harness::finished_run(&mut client, &nesting, Duration::from_secs(60)).await;
    let flat_run = floe_harness::finished_run(&mut client, &flat, Duration::from_secs(60)).await;
    // A few more rounds after the runs ended, then the probe stops.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let calls = probe.await.unwrap();

    check_probe_answered(&mut findings, &calls, "while the chains ran");
    let nesting_run = nesting_run.unwrap_or_else(|err| panic!("the nesting chain: {err:#}"));
    findings.check(
        nesting_run["status"] == "Failed" && mentions_depth(&errors(&nesting_run)),
        || {
            format!(
                "the nesting chain did not fail at the depth limit: {}",
                short(&nesting_run.to_string())
            )
        },
    );
    let flat_run = flat_run.unwrap_or_else(|err| panic!("the flat chain: {err:#}"));
    assert_eq!(
        flat_run["status"],
        "Completed",
        "{}",
        short(&flat_run.to_string())
    );
    assert_eq!(
        flat_run["output"],
        json!(STEPS),
        "1 plus one per step after the first"
    );

    assert_survives_restart(&mut cluster, &canary).await;
    let mut client = client_for(&cluster).await;
    assert_eq!(
        get_run(&mut client, &nesting).await.unwrap()["status"],
        nesting_run["status"]
    );
    assert_eq!(
        get_run(&mut client, &flat).await.unwrap()["output"],
        json!(STEPS)
    );
    findings.assert_none();
}

/// Class d: expressions that build a huge value fail their step (or the
/// flow is refused), and the cluster keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expressions_that_explode_fail_their_step() {
    let _turn = turn().await;
    let mut cluster = start_cluster(&[]).await;
    let mut client = cluster.client(1).await.unwrap();
    let canary = plant_canary(&mut client, true).await;

    // A million strings from three nested comprehensions over 100 items.
    let cube = transform_flow(
        "cube",
        "cube",
        json!("input.xs.map(a, input.xs.map(b, input.xs.map(c, input.s)))"),
    );
    // A string doubled at every step: 5,000 bytes become 1.28 MB at c7.
    let doubling: Vec<Value> = (0..8)
        .map(|i| {
            let source = if i == 0 { "input.s".to_string() } else { format!("steps.c{}.output", i - 1) };
            let mut step = json!({ "id": format!("c{i}"), "type": "transform", "output": format!("{source} + {source}") });
            if i < 7 {
                step["next"] = json!(format!("c{}", i + 1));
            }
            step
        })
        .collect();
    let doubling = json!({ "name": "doubling", "steps": doubling });

    let stop = Arc::new(AtomicBool::new(false));
    let probe = kv_probe(
        cluster.client(2).await.unwrap(),
        stop.clone(),
        400,
        Duration::from_secs(90),
    );
    let mut findings = Findings::default();
    let mut outcomes = Vec::new();
    for (flow, step, input) in [
        (
            &cube,
            "cube",
            json!({ "xs": (0..100).collect::<Vec<u32>>(), "s": "x".repeat(100) }),
        ),
        (&doubling, "c7", json!({ "s": "y".repeat(5000) })),
    ] {
        let name = flow["name"].as_str().unwrap().to_string();
        match put_flow(&mut client, flow).await {
            Ok(_) => {
                let run_id =
                    start_patiently(&mut cluster, &mut client, &mut findings, &name, &input).await;
                let run =
                    floe_harness::finished_run(&mut client, &run_id, Duration::from_secs(60)).await;
                outcomes.push((name, step, Some(run)));
            }
            Err(status) => {
                findings.refused(
                    &format!("flow {name}"),
                    Err::<(), _>(status),
                    &[Code::InvalidArgument],
                );
                outcomes.push((name, step, None));
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let calls = probe.await.unwrap();
    check_probe_answered(&mut findings, &calls, "while expressions exploded");
    for (name, step, run) in outcomes {
        let Some(run) = run else { continue };
        let run = run.unwrap_or_else(|err| panic!("flow {name}: {err:#}"));
        let error = errors(&run);
        let clear = error.contains(step)
            && error.len() < 4096
            && (error.contains("limit") || error.contains("large"));
        findings.check(run["status"] == "Failed" && clear, || {
            format!(
                "flow {name} did not fail with a clear error at {step}: {}",
                short(&run.to_string())
            )
        });
    }
    assert_survives_restart(&mut cluster, &canary).await;
    findings.assert_none();
}

/// A worker spoken to directly over `Workers/Attach`.
struct HandWorker {
    outbound: mpsc::Sender<api::WorkerMessage>,
    tasks: tonic::Streaming<api::WorkerTask>,
}

impl HandWorker {
    async fn attach(
        client: &mut FloeClient,
        id: &str,
        block: &str,
    ) -> Result<HandWorker, tonic::Status> {
        let (outbound, receiver) = mpsc::channel(16);
        let hello = api::WorkerHello {
            worker_id: id.into(),
            blocks: vec![block.into()],
            concurrency: 4,
            labels: Default::default(),
            accepts_refusals: false,
        };
        outbound
            .send(api::WorkerMessage {
                kind: Some(Kind::Hello(hello)),
            })
            .await
            .unwrap();
        let tasks = client
            .workers
            .attach(tokio_stream::wrappers::ReceiverStream::new(receiver))
            .await?
            .into_inner();
        Ok(HandWorker { outbound, tasks })
    }

    async fn answer(&self, task: &str, attempt: u32, output: Vec<u8>) {
        let result = api::TaskResult {
            task: task.into(),
            attempt,
            output,
            ..Default::default()
        };
        // The stream may already be gone (a result over the message limit).
        let _ = self
            .outbound
            .send(api::WorkerMessage {
                kind: Some(Kind::Result(result)),
            })
            .await;
    }

    async fn next_task(&mut self) -> Result<Option<api::WorkerTask>, tonic::Status> {
        match tokio::time::timeout(WAIT, self.tasks.message()).await {
            Ok(message) => message,
            Err(_) => panic!("no task within {WAIT:?}"),
        }
    }
}

/// After a bad result for attempt 1: either the task comes again as a new
/// attempt (answered well, the run completes) or the run fails with an
/// error holding one of `words`. Anything else (a run left running with no
/// attempt open) is a finding.
async fn retried_or_failed(
    worker: &mut HandWorker,
    client: &mut FloeClient,
    run_id: &str,
    words: &[&str],
) -> Result<&'static str, String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        tokio::select! {
            message = worker.tasks.message() => {
                let task = message.expect("the worker stream stays open").expect("the worker stream stays open");
                if task.run_id != run_id || task.attempt < 2 {
                    return Err(format!("after a bad result for attempt 1 of run {run_id} the worker got {task:?}"));
                }
                worker.answer(&task.task, task.attempt, b"\"good\"".to_vec()).await;
                let run = finished(client, run_id).await;
                if (run["status"].as_str(), &run["output"]) != (Some("Completed"), &json!("good")) {
                    return Err(format!("the good result for the next attempt did not complete run {run_id}: {}", short(&run.to_string())));
                }
                let first = run["steps"]["work"]["attempts"][0]["error"].as_str().unwrap_or_default().to_lowercase();
                if !words.iter().any(|word| first.contains(word)) {
                    return Err(format!("attempt 1's error does not say why ({words:?}): {first:?}"));
                }
                return Ok("retried");
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                let run = get_run(client, run_id).await.unwrap();
                if run["status"] == "Failed" {
                    let error = errors(&run).to_lowercase();
                    if !words.iter().any(|word| error.contains(word)) {
                        return Err(format!("run {run_id} failed without saying why ({words:?}): {}", short(&error)));
                    }
                    return Ok("failed");
                }
                assert_eq!(run["status"], "Running", "{}", short(&run.to_string()));
                if Instant::now() > deadline {
                    return Err(format!("run {run_id} is left running: the bad result neither failed it nor released attempt 1 within 20 s: {}", short(&run.to_string())));
                }
            }
        }
    }
}

/// Class e: worker results that are not JSON, over the payload limit, over
/// the message limit, for a stale attempt, or for no task at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversize_worker_results_are_refused() {
    let _turn = turn().await;
    let mut cluster = start_cluster(&["runs.max_payload_bytes=1048576"]).await;
    let mut client = cluster.client(1).await.unwrap();
    let canary = plant_canary(&mut client, true).await;
    let flow = json!({ "name": "manual", "steps": [{ "id": "work", "type": "task", "block": "manual", "input": "input",
        "retry": { "max_attempts": 2, "backoff": "fixed", "initial_backoff_ms": 50 } }] });
    put_flow(&mut client, &flow).await.unwrap();
    let mut worker = HandWorker::attach(&mut client, "hand", "manual")
        .await
        .unwrap();
    let mut findings = Findings::default();

    // Results for tasks that do not exist change nothing.
    worker.answer("no/such/-", 1, b"1".to_vec()).await;
    worker.answer("garbage", 0, b"{".to_vec()).await;
    worker
        .answer(&format!("{}/echo/-", canary.run_id), 1, b"2".to_vec())
        .await;

    let mut seen = Vec::new();
    let oversize = serde_json::to_vec(&"z".repeat(1_500_000)).unwrap();
    for (what, output, words) in [
        ("not JSON", b"{\"half\": ".to_vec(), &["json"][..]),
        (
            "over runs.max_payload_bytes",
            oversize,
            &["max_payload_bytes", "limit"][..],
        ),
    ] {
        let run_id = start(&mut client, "manual", &json!({ "case": what }))
            .await
            .unwrap();
        let task = worker.next_task().await.unwrap().expect("a task");
        assert_eq!((task.run_id.as_str(), task.attempt), (run_id.as_str(), 1));
        worker.answer(&task.task, task.attempt, output).await;
        match retried_or_failed(&mut worker, &mut client, &run_id, words).await {
            Ok(outcome) => seen.push((what, outcome)),
            Err(finding) => findings.check(false, || format!("a result {what}: {finding}")),
        }
    }
    eprintln!("bad results: {seen:?}");

    // A stale attempt number is refused; the current one completes the run.
    let run_id = start(&mut client, "manual", &json!({ "case": "stale" }))
        .await
        .unwrap();
    let task = worker.next_task().await.unwrap().expect("a task");
    for stale in [0, 2, 9, u32::MAX] {
        worker.answer(&task.task, stale, b"\"late\"".to_vec()).await;
    }
    worker
        .answer(&task.task, task.attempt, b"\"current\"".to_vec())
        .await;
    let run = finished(&mut client, &run_id).await;
    assert_eq!(
        (run["status"].as_str(), &run["output"]),
        (Some("Completed"), &json!("current")),
        "{run:#}"
    );

    // Over gRPC's message limit (payload limit + 1 MiB): the stream breaks,
    // and the task is delivered again to the worker attached anew.
    let run_id = start(&mut client, "manual", &json!({ "case": "huge message" }))
        .await
        .unwrap();
    let task = worker.next_task().await.unwrap().expect("a task");
    worker
        .answer(
            &task.task,
            task.attempt,
            serde_json::to_vec(&"q".repeat(3 * 1024 * 1024)).unwrap(),
        )
        .await;
    match tokio::time::timeout(WAIT, worker.tasks.message()).await {
        Ok(Ok(Some(task))) => {
            panic!("the stream went on after a result over the message limit: {task:?}")
        }
        Ok(_) => {}
        Err(_) => panic!("the stream neither ended nor answered"),
    }
    let deadline = Instant::now() + WAIT;
    let mut worker = loop {
        match HandWorker::attach(&mut client, "hand", "manual").await {
            Ok(worker) => break worker,
            Err(status) if Instant::now() < deadline => {
                eprintln!("attaching again: {status:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("cannot attach again: {status:?}"),
        }
    };
    // The task comes again (the same attempt while the node has not yet
    // seen the stream end, then a new one); each delivery is answered until
    // one completes the run.
    let run = loop {
        match tokio::time::timeout(Duration::from_millis(500), worker.tasks.message()).await {
            Ok(Ok(Some(again))) => {
                assert_eq!(
                    (again.run_id.as_str(), again.task.as_str()),
                    (run_id.as_str(), task.task.as_str())
                );
                worker
                    .answer(&again.task, again.attempt, b"\"small\"".to_vec())
                    .await;
            }
            // Refused as still connected: the node had not seen the old stream end.
            Ok(Ok(None) | Err(_)) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if let Ok(attached) = HandWorker::attach(&mut client, "hand", "manual").await {
                    worker = attached;
                }
            }
            Err(_) => {}
        }
        let run = get_run(&mut client, &run_id).await.unwrap();
        if run["status"] != "Running" {
            break run;
        }
        assert!(
            Instant::now() < deadline,
            "the task was not delivered again after its stream broke: {}",
            short(&run.to_string())
        );
    };
    assert_eq!(
        (run["status"].as_str(), &run["output"]),
        (Some("Completed"), &json!("small")),
        "{}",
        short(&run.to_string())
    );

    drop(worker);
    assert_survives_restart(&mut cluster, &canary).await;
    findings.assert_none();
}

/// The status a node ends a worker stream with after refusing its hello
/// (`Err`), or what happened instead (`Ok`).
async fn hello_answer(worker: &mut HandWorker) -> Result<String, tonic::Status> {
    match tokio::time::timeout(Duration::from_secs(5), worker.tasks.message()).await {
        Ok(Err(status)) => Err(status),
        Ok(Ok(answer)) => Ok(format!("the stream answered {answer:?}")),
        Err(_) => Ok("the stream stays open".to_string()),
    }
}

/// Class f: names of 10 KB are refused, with a short message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_names_are_refused_with_short_messages() {
    let _turn = turn().await;
    let mut cluster = start_cluster(&[]).await;
    let mut client = cluster.client(3).await.unwrap();
    let canary = plant_canary(&mut client, true).await;
    let mut findings = Findings::default();
    let huge = "n".repeat(10 * 1024);
    let door = [Code::InvalidArgument, Code::ResourceExhausted];
    // Looking up a name that cannot exist may also say it is not there.
    let lookup = [
        Code::InvalidArgument,
        Code::ResourceExhausted,
        Code::NotFound,
    ];

    let refused = put_flow(&mut client, &transform_flow(&huge, "echo", json!("input"))).await;
    findings.refused("a flow name of 10 KB", refused, &door);
    let block = json!({ "name": "huge-block", "steps": [{ "id": "work", "type": "task", "block": huge, "input": "input" }] });
    findings.refused(
        "a block name of 10 KB",
        put_flow(&mut client, &block).await,
        &door,
    );
    let step = transform_flow("huge-step", &huge, json!("input"));
    findings.refused(
        "a step id of 10 KB",
        put_flow(&mut client, &step).await,
        &door,
    );

    let started = start(&mut client, &huge, &json!(1)).await;
    findings.refused("a run of a flow named with 10 KB", started, &lookup);
    let keyed = client
        .runs
        .start(api::StartRunRequest {
            flow: "canary".into(),
            input: b"{\"n\": 1}".to_vec(),
            idempotency_key: huge.clone(),
            ..Default::default()
        })
        .await;
    findings.refused("an idempotency key of 10 KB", keyed, &door);
    let correlated = client
        .runs
        .start(api::StartRunRequest {
            flow: "canary".into(),
            input: b"{\"n\": 1}".to_vec(),
            correlation_id: huge.clone(),
            ..Default::default()
        })
        .await;
    findings.refused("a correlation id of 10 KB", correlated, &door);
    findings.refused(
        "run get of a 10 KB id",
        get_run(&mut client, &huge).await,
        &lookup,
    );
    let cancel = client
        .runs
        .cancel(api::CancelRunRequest {
            run_id: huge.clone(),
            reason: String::new(),
        })
        .await;
    // Cancelling a run that does not exist is refused as a failed precondition.
    findings.refused(
        "run cancel of a 10 KB id",
        cancel,
        &[
            Code::InvalidArgument,
            Code::ResourceExhausted,
            Code::NotFound,
            Code::FailedPrecondition,
        ],
    );
    let signal = client
        .runs
        .signal(api::SignalRunRequest {
            run_id: canary.run_id.clone(),
            signal: huge.clone(),
            payload: Vec::new(),
        })
        .await;
    findings.refused(
        "a signal name of 10 KB",
        signal,
        &[
            Code::InvalidArgument,
            Code::ResourceExhausted,
            Code::FailedPrecondition,
        ],
    );
    let limit = client
        .runs
        .set_limit(api::SetLimitRequest {
            scope: "block".into(),
            name: huge.clone(),
            limit: Some(1),
        })
        .await;
    findings.refused("a limit on a block named with 10 KB", limit, &door);

    let put = client
        .kv
        .put(api::PutRequest {
            key: huge.clone(),
            value: b"v".to_vec(),
        })
        .await;
    findings.refused("a kv key of 10 KB", put, &door);
    let got = client
        .kv
        .get(api::GetRequest {
            key: huge.clone(),
            consistency: 0,
        })
        .await;
    if let Err(status) = got {
        findings.refused("kv get of a 10 KB key", Err::<(), _>(status), &door);
    }

    // A worker declaring a block named with 10 KB.
    let attached = HandWorker::attach(&mut client, "huge-block", &huge).await;
    let answer = match attached {
        Ok(mut worker) => hello_answer(&mut worker).await,
        Err(status) => Err(status),
    };
    findings.refused("a worker block name of 10 KB", answer, &door);
    let attached = HandWorker::attach(&mut client, &huge, "manual").await;
    let answer = match attached {
        Ok(mut worker) => hello_answer(&mut worker).await,
        Err(status) => Err(status),
    };
    findings.refused("a worker id of 10 KB", answer, &door);

    // The CLI prints the refusal briefly too.
    let output = cluster.cli(1, &["kv", "put", &huge, "v"]).unwrap();
    assert!(!output.status.success());
    findings.check(output.stderr.len() < 2048, || {
        format!(
            "the CLI printed {} bytes for a refused 10 KB key",
            output.stderr.len()
        )
    });

    assert_survives_restart(&mut cluster, &canary).await;
    findings.assert_none();
}

/// Class g: finished runs whose records hold values at the nesting and size
/// limits are purged by retention, and the cluster stays up through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_at_the_limits_are_purged_by_retention() {
    let _turn = turn().await;
    const MAX_PAYLOAD: usize = 1024 * 1024;
    let mut cluster =
        start_cluster(&["runs.retention_ms=5000", "runs.max_payload_bytes=1048576"]).await;
    let mut client = cluster.client(1).await.unwrap();
    // A finished run would be purged too: the canary run waits for a signal.
    let canary = plant_canary(&mut client, false).await;
    put_flow(&mut client, &transform_flow("echo", "echo", json!("input")))
        .await
        .unwrap();
    // A run at the depth limit that wraps its input once more fails.
    put_flow(
        &mut client,
        &transform_flow("wrap-once", "wrap_once", json!({ "a": "input" })),
    )
    .await
    .unwrap();
    // ~800 KB built inside the run from an input kept inline.
    put_flow(
        &mut client,
        &transform_flow("fat", "fat", json!("input.s + input.s + input.s + input.s")),
    )
    .await
    .unwrap();

    let mut runs = Vec::new();
    let deep = nested_arrays(DEPTH_LIMIT - 1);
    for (flow, input) in [
        ("echo", deep.clone()),
        ("wrap-once", deep.clone()),
        ("echo", json!({ "blob": "b".repeat(MAX_PAYLOAD - 64) })),
        ("fat", json!({ "s": "f".repeat(200_000) })),
    ] {
        let run_id = start(&mut client, flow, &input)
            .await
            .unwrap_or_else(|status| panic!("{flow}: {status:?}"));
        let run = finished(&mut client, &run_id).await;
        assert!(
            run["status"] == "Completed" || run["status"] == "Failed",
            "{flow}: {}",
            short(&run.to_string())
        );
        runs.push((flow, run_id));
    }
    let waiting = start(&mut client, "canary", &json!({ "n": 2, "wait": true }))
        .await
        .unwrap();
    client
        .runs
        .cancel(api::CancelRunRequest {
            run_id: waiting.clone(),
            reason: "to be purged".into(),
        })
        .await
        .unwrap();
    runs.push(("canary", waiting));

    let deadline = Instant::now() + Duration::from_secs(40);
    for (flow, run_id) in &runs {
        loop {
            match get_run(&mut client, run_id).await {
                Err(status) if status.code() == Code::NotFound => break,
                answer => {
                    if let Err(status) = &answer {
                        eprintln!("run {run_id} of {flow}: {status:?}");
                    }
                    assert!(
                        Instant::now() < deadline,
                        "run {run_id} of {flow} was not purged: {:?}",
                        answer.map(|run| short(&run.to_string()))
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    for id in NODES {
        let mut client = cluster.client(id).await.unwrap();
        let listed = client
            .runs
            .list(api::ListRunsRequest::default())
            .await
            .unwrap()
            .into_inner();
        let ids: Vec<&str> = listed.runs.iter().map(|run| run.run_id.as_str()).collect();
        assert_eq!(
            ids,
            vec![canary.run_id.as_str()],
            "node {id}: only the waiting canary is left"
        );
    }
    // Health answers on every node while retention has run.
    for id in NODES {
        let (code, _) = http_get(&cluster.node(id).unwrap().http_addr, "/health/readyz")
            .await
            .unwrap();
        assert_eq!(code, 200, "node {id}");
    }
    assert_survives_restart(&mut cluster, &canary).await;
}
