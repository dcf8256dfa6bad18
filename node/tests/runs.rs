//! Runs end to end: a three-node cluster, workers in separate processes,
//! flows with tasks, decisions, forks, retries, signals and cancellation.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use floe_api::client::FloeClient;
use floe_harness::{ClusterOptions, TestCluster};
use floe_node::api;
use serde_json::{json, Value};

const BINARY: &str = env!("CARGO_BIN_EXE_floe");
const WAIT: Duration = Duration::from_secs(30);

fn example(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/examples/flows")
        .join(name);
    std::fs::read(path).unwrap()
}

async fn put_flow(client: &mut FloeClient, definition: Vec<u8>) -> u64 {
    client
        .flows
        .put(api::PutFlowRequest { definition })
        .await
        .unwrap()
        .into_inner()
        .version
}

async fn start(client: &mut FloeClient, flow: &str, input: Value, key: &str) -> String {
    let request = api::StartRunRequest {
        flow: flow.into(),
        input: serde_json::to_vec(&input).unwrap(),
        idempotency_key: key.into(),
        ..Default::default()
    };
    client
        .runs
        .start(request)
        .await
        .unwrap()
        .into_inner()
        .run_id
}

/// Reads a run; a read that fails while the cluster is busy (a leader
/// change, a slow quorum) is retried, as a client would.
async fn get(client: &mut FloeClient, run_id: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        match client
            .runs
            .get(api::GetRunRequest {
                run_id: run_id.into(),
                consistency: 0,
            })
            .await
        {
            Ok(reply) => return serde_json::from_slice(&reply.into_inner().run).unwrap(),
            Err(status) if status.code() != tonic::Code::NotFound && Instant::now() < deadline => {
                eprintln!("reading run {run_id}: {status:?}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("reading run {run_id}: {status:?}"),
        }
    }
}

/// Polls until the run leaves Running; returns its record.
async fn finished(client: &mut FloeClient, run_id: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let run = get(client, run_id).await;
        if run["status"] != "Running" {
            return run;
        }
        assert!(
            Instant::now() < deadline,
            "run {run_id} still running: {run:#}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Every event of a run's watch stream, until the stream ends with the run.
async fn watch_events(mut client: FloeClient, run_id: String) -> Vec<api::RunHistoryEvent> {
    let mut stream = client
        .runs
        .watch(api::WatchRunRequest { run_id })
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    while let Some(update) = stream.message().await.unwrap() {
        events.extend(update.events);
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_step_runs_complete_through_workers_on_other_nodes() {
    let mut cluster = TestCluster::start(ClusterOptions::new(BINARY, 3))
        .await
        .unwrap();
    let record = cluster.spawn_worker("w1", &[2], &["noop=echo"], 8).unwrap();
    let mut client = cluster.client(3).await.unwrap();
    put_flow(&mut client, example("three-step.json")).await;

    let mut runs = Vec::new();
    for i in 0..20 {
        runs.push(start(&mut client, "three-step", json!({ "n": i }), "").await);
    }
    // Watched from its start, through another node than the one it started on.
    let watched = tokio::spawn(watch_events(
        cluster.client(1).await.unwrap(),
        runs[19].clone(),
    ));
    for (i, run_id) in runs.iter().enumerate() {
        let run = finished(&mut client, run_id).await;
        assert_eq!(run["status"], "Completed", "{run:#}");
        assert_eq!(run["output"], json!({ "n": i }));
        for step in ["first", "second", "third"] {
            let attempts = run["steps"][step]["attempts"].as_array().unwrap();
            assert_eq!(attempts.len(), 1, "{step}: {run:#}");
            assert_eq!(
                attempts[0]["node"], 2,
                "worker w1 is attached to node 2 only"
            );
            assert_eq!(attempts[0]["worker"], "w1", "{step}: {run:#}");
        }
    }
    // The node names who opened the worker stream: the certificate's client.
    let log = cluster.log_tail(2, 2000);
    assert!(
        log.lines()
            .any(|line| line.contains("worker stream{caller=client harness}")
                && line.contains("worker connected")),
        "{log}"
    );

    // The live stream and a replay after the end tell the same story.
    let live = tokio::time::timeout(WAIT, watched)
        .await
        .expect("watch stream ended with the run")
        .unwrap();
    let replay = watch_events(cluster.client(3).await.unwrap(), runs[19].clone()).await;
    assert_eq!(live, replay);
    let kinds: Vec<String> = live
        .iter()
        .map(|e| format!("{} {}", e.kind, e.step))
        .collect();
    let mut expected = vec!["run_started ".to_string()];
    for step in ["first", "second", "third"] {
        for kind in [
            "step_started",
            "attempt_scheduled",
            "attempt_started",
            "attempt_finished",
            "step_completed",
        ] {
            expected.push(format!("{kind} {step}"));
        }
    }
    expected.push("run_completed ".to_string());
    assert_eq!(kinds, expected);
    assert!(
        live.windows(2).all(|pair| pair[0].at_ms <= pair[1].at_ms),
        "events out of time order: {live:#?}"
    );
    let finished_attempts: Vec<_> = live
        .iter()
        .filter(|e| e.kind == "attempt_finished")
        .collect();
    assert!(
        finished_attempts
            .iter()
            .all(|e| e.node == 2 && e.worker == "w1" && e.attempt == 1),
        "{finished_attempts:#?}"
    );

    // The CLI prints the events, then the run.
    let printed = cluster.cli_ok(2, &["run", "watch", &runs[19]]).unwrap();
    assert!(
        printed.contains("step second attempt 1 finished on node 2 by w1"),
        "{printed}"
    );
    assert!(
        printed.contains("run completed") && printed.contains("WORKER"),
        "{printed}"
    );
    let missing = cluster.cli(2, &["run", "watch", "no-such-run"]).unwrap();
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no-such-run"),
        "{missing:?}"
    );
    // Exactly one execution per step: no step transition was applied twice.
    let executions = std::fs::read_to_string(record).unwrap();
    assert_eq!(executions.lines().count(), 60, "{executions}");

    let listed = client
        .runs
        .list(api::ListRunsRequest {
            flow: "three-step".into(),
            status: "completed".into(),
            limit: 15,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.runs.len(), 15);
    assert!(!listed.next_page_token.is_empty());
    let rest = client
        .runs
        .list(api::ListRunsRequest {
            flow: "three-step".into(),
            status: "completed".into(),
            limit: 15,
            page_token: listed.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.runs.len(), 5);

    // Worker labels: items that require site=south reach only the worker
    // that declared it, whatever else serves the block.
    cluster
        .spawn_labelled_worker("north", &[1], &["sited=echo"], 4, &["site=north"])
        .unwrap();
    cluster
        .spawn_labelled_worker(
            "south",
            &[3],
            &["sited=echo"],
            2,
            &["site=south", "gpu=yes"],
        )
        .unwrap();
    let sited = json!({"name": "sited", "steps": [
        {"id": "items", "type": "map", "items": "input.list", "max_parallelism": 6,
         "task": {"block": "sited", "input": "item", "worker_labels": {"site": "south"}}, "next": "east"},
        {"id": "east", "type": "task", "block": "sited", "input": "input", "worker_labels": {"site": "east"},
         "timeouts": {"schedule_to_start_ms": 1000}}
    ]});
    put_flow(&mut client, serde_json::to_vec(&sited).unwrap()).await;
    let run_id = start(
        &mut client,
        "sited",
        json!({"list": [1, 2, 3, 4, 5, 6]}),
        "",
    )
    .await;
    let run = finished(&mut client, &run_id).await;
    assert_eq!(
        run["steps"]["items"]["output"],
        json!([1, 2, 3, 4, 5, 6]),
        "{run:#}"
    );
    let attempts = run["steps"]["items"]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 6, "{run:#}");
    assert!(
        attempts
            .iter()
            .all(|a| a["worker"] == "south" && a["node"] == 3),
        "{attempts:#?}"
    );
    // No worker declares site=east: the task is never started, and times out.
    assert_eq!(run["status"], "Failed", "{run:#}");
    let error = run["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("east") && error.contains("schedule-to-start"),
        "{error}"
    );
    assert!(
        run["steps"]["east"]["attempts"][0]["worker"].is_null(),
        "{run:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_intake_decides_forks_joins_and_waits_for_review() {
    let mut cluster = TestCluster::start(ClusterOptions::new(BINARY, 3))
        .await
        .unwrap();
    cluster
        .spawn_worker(
            "docs",
            &[1, 2, 3],
            &[
                "classify=classify",
                "extract=echo",
                "validate.schema=valid",
                "validate.totals=valid",
            ],
            8,
        )
        .unwrap();
    let mut client = cluster.client(1).await.unwrap();
    put_flow(&mut client, example("document-intake.json")).await;

    let confident = start(
        &mut client,
        "document-intake",
        json!({ "document": "invoice-17.pdf" }),
        "doc-17",
    )
    .await;
    let run = finished(&mut client, &confident).await;
    assert_eq!(run["status"], "Completed", "{run:#}");
    assert_eq!(run["output"]["valid"], true);
    assert_eq!(run["output"]["document_class"], "invoice");
    assert!(
        run["steps"].get("review").is_none(),
        "a confident document went to review"
    );
    assert_eq!(run["steps"]["check_schema"]["status"], "Completed");
    assert_eq!(run["steps"]["check_totals"]["status"], "Completed");

    // The same idempotency key returns the same run.
    assert_eq!(
        start(
            &mut client,
            "document-intake",
            json!({ "document": "other" }),
            "doc-17"
        )
        .await,
        confident
    );

    // A blurry document waits for a person's review signal.
    let blurry = start(
        &mut client,
        "document-intake",
        json!({ "document": "blurry-receipt.png" }),
        "",
    )
    .await;
    let deadline = Instant::now() + WAIT;
    while get(&mut client, &blurry).await["steps"]
        .get("review")
        .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "the review step was never reached"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let wrong = client
        .runs
        .signal(api::SignalRunRequest {
            run_id: blurry.clone(),
            signal: "approve".into(),
            payload: b"{}".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), tonic::Code::FailedPrecondition, "{wrong:?}");
    client
        .runs
        .signal(api::SignalRunRequest {
            run_id: blurry.clone(),
            signal: "review.done".into(),
            payload: br#"{"total": 12}"#.to_vec(),
        })
        .await
        .unwrap();
    let run = finished(&mut client, &blurry).await;
    assert_eq!(run["status"], "Completed", "{run:#}");
    assert_eq!(run["steps"]["review"]["output"], json!({ "total": 12 }));

    let bad_input = client
        .runs
        .start(api::StartRunRequest {
            flow: "document-intake".into(),
            input: b"{}".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_input.code(), tonic::Code::InvalidArgument);
    assert!(
        bad_input.message().contains("document"),
        "{}",
        bad_input.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_cancellation_and_worker_crash_redelivery() {
    let mut cluster = TestCluster::start(ClusterOptions::new(BINARY, 3))
        .await
        .unwrap();
    let mut client = cluster.client(2).await.unwrap();
    let flaky = r#"{"name": "flaky", "steps": [
        {"id": "try", "type": "task", "block": "flaky", "input": "input",
         "retry": {"max_attempts": 3, "backoff": "fixed", "initial_backoff_ms": 50}}
    ]}"#;
    put_flow(&mut client, flaky.as_bytes().to_vec()).await;
    let slow = r#"{"name": "slow", "steps": [
        {"id": "work", "type": "task", "block": "slow", "input": "input",
         "retry": {"max_attempts": 3, "backoff": "fixed", "initial_backoff_ms": 10}}
    ]}"#;
    put_flow(&mut client, slow.as_bytes().to_vec()).await;
    let waits = r#"{"name": "waits", "steps": [{"id": "hold", "type": "signal", "signal": "go"}]}"#;
    put_flow(&mut client, waits.as_bytes().to_vec()).await;

    cluster
        .spawn_worker("flaky", &[1], &["flaky=fail-first:2"], 4)
        .unwrap();
    let run_id = start(&mut client, "flaky", json!("x"), "").await;
    let run = finished(&mut client, &run_id).await;
    assert_eq!(run["status"], "Completed", "{run:#}");
    assert_eq!(run["steps"]["try"]["attempts"].as_array().unwrap().len(), 3);

    // A worker killed mid-task: its task is re-delivered as a new attempt.
    let hanging = cluster
        .spawn_worker("hangs", &[3], &["slow=sleep:60000"], 1)
        .unwrap();
    let run_id = start(&mut client, "slow", json!("y"), "").await;
    let deadline = Instant::now() + WAIT;
    while std::fs::read_to_string(&hanging)
        .unwrap_or_default()
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the slow task never reached the worker"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    cluster.kill_worker("hangs").unwrap();
    cluster
        .spawn_worker("quick", &[1], &["slow=echo"], 1)
        .unwrap();
    let run = finished(&mut client, &run_id).await;
    assert_eq!(run["status"], "Completed", "{run:#}");
    let attempts = run["steps"]["work"]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{run:#}");
    assert!(
        attempts[0]["error"]
            .as_str()
            .unwrap()
            .contains("disconnected"),
        "{run:#}"
    );

    let waiting = start(&mut client, "waits", Value::Null, "").await;
    client
        .runs
        .cancel(api::CancelRunRequest {
            run_id: waiting.clone(),
            reason: "operator".into(),
        })
        .await
        .unwrap();
    let run = finished(&mut client, &waiting).await;
    assert_eq!(run["status"], "Cancelled", "{run:#}");
    let again = client
        .runs
        .cancel(api::CancelRunRequest {
            run_id: waiting,
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_for_a_stale_attempt_is_refused() {
    let cluster = TestCluster::start(ClusterOptions::new(BINARY, 1))
        .await
        .unwrap();
    let mut client = cluster.client(1).await.unwrap();
    let flow = r#"{"name": "one", "steps": [{"id": "only", "type": "task", "block": "manual", "input": "input"}]}"#;
    put_flow(&mut client, flow.as_bytes().to_vec()).await;
    let (outbound, receiver) = tokio::sync::mpsc::channel(8);
    let hello = api::WorkerHello {
        worker_id: "hand".into(),
        blocks: vec!["manual".into()],
        concurrency: 1,
        ..Default::default()
    };
    outbound
        .send(api::WorkerMessage {
            kind: Some(api::worker_message::Kind::Hello(hello)),
        })
        .await
        .unwrap();
    let mut tasks = client
        .workers
        .attach(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .unwrap()
        .into_inner();
    let run_id = start(&mut client, "one", json!(1), "").await;
    let task = tokio::time::timeout(WAIT, tasks.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((task.run_id.as_str(), task.attempt), (run_id.as_str(), 1));

    let stale = api::TaskResult {
        task: task.task.clone(),
        attempt: 7,
        output: b"\"late\"".to_vec(),
        ..Default::default()
    };
    outbound
        .send(api::WorkerMessage {
            kind: Some(api::worker_message::Kind::Result(stale)),
        })
        .await
        .unwrap();
    // The node handles one stream's results in order: had the stale result
    // been accepted, the run would end with "late" and refuse the current one.
    let current = api::TaskResult {
        task: task.task,
        attempt: 1,
        output: b"\"done\"".to_vec(),
        ..Default::default()
    };
    outbound
        .send(api::WorkerMessage {
            kind: Some(api::worker_message::Kind::Result(current)),
        })
        .await
        .unwrap();
    let run = finished(&mut client, &run_id).await;
    assert_eq!(
        (run["status"].as_str(), &run["output"]),
        (Some("Completed"), &json!("done"))
    );
}

/// Starts a run, retrying through failovers with the same idempotency key.
async fn start_eventually(client: &mut FloeClient, flow: &str, input: Value, key: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let request = api::StartRunRequest {
            flow: flow.into(),
            input: serde_json::to_vec(&input).unwrap(),
            idempotency_key: key.into(),
            ..Default::default()
        };
        match client.runs.start(request).await {
            Ok(reply) => return reply.into_inner().run_id,
            Err(status) if Instant::now() < deadline => {
                eprintln!("retrying start {key}: {status}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("start {key} never succeeded: {status}"),
        }
    }
}

/// Like `finished`, but tolerant of failovers while it polls.
async fn finished_eventually(client: &mut FloeClient, run_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(reply) = client
            .runs
            .get(api::GetRunRequest {
                run_id: run_id.into(),
                consistency: 0,
            })
            .await
        {
            let run: Value = serde_json::from_slice(&reply.into_inner().run).unwrap();
            if run["status"] != "Running" {
                return run;
            }
        }
        assert!(Instant::now() < deadline, "run {run_id} did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_complete_when_the_leader_and_then_a_follower_are_killed_mid_flight() {
    let mut cluster = TestCluster::start(ClusterOptions::new(BINARY, 3))
        .await
        .unwrap();
    let record = cluster
        .spawn_worker("w", &[1, 2, 3], &["noop=sleep:20"], 8)
        .unwrap();
    let mut client = FloeClient::connect(&cluster.client_options(&[1, 2, 3]).unwrap())
        .await
        .unwrap();
    put_flow(&mut client, example("three-step.json")).await;

    let mut runs = Vec::new();
    for i in 0..40 {
        if i == 15 {
            let leader = cluster.wait_leader(WAIT).await.unwrap();
            cluster.kill(leader).unwrap();
            // The client may have been talking to the killed node.
            client = FloeClient::connect(&cluster.client_options(&cluster.running_ids()).unwrap())
                .await
                .unwrap();
        }
        if i == 30 {
            let down: Vec<u64> = [1, 2, 3]
                .into_iter()
                .filter(|id| !cluster.running_ids().contains(id))
                .collect();
            for id in down {
                cluster.spawn(id).unwrap();
            }
            let leader = cluster.wait_leader(WAIT).await.unwrap();
            let follower = cluster
                .running_ids()
                .into_iter()
                .find(|id| *id != leader)
                .unwrap();
            cluster.kill(follower).unwrap();
            client = FloeClient::connect(&cluster.client_options(&cluster.running_ids()).unwrap())
                .await
                .unwrap();
        }
        let key = format!("chaos-{i}");
        runs.push((
            key.clone(),
            start_eventually(&mut client, "three-step", json!({ "n": i }), &key).await,
        ));
    }
    for (i, (key, run_id)) in runs.iter().enumerate() {
        let run = finished_eventually(&mut client, run_id).await;
        assert_eq!(run["status"], "Completed", "{key}: {run:#}");
        assert_eq!(run["output"], json!({ "n": i }), "{key}");
        // Each step completed exactly once, whatever attempts were lost on the way.
        for step in ["first", "second", "third"] {
            assert_eq!(run["steps"][step]["status"], "Completed", "{key} {step}");
        }
        // The idempotency key still names the same run.
        assert_eq!(
            start_eventually(&mut client, "three-step", json!({ "n": i }), key).await,
            *run_id
        );
    }
    let executions = std::fs::read_to_string(record).unwrap();
    let ok_per_run = |run_id: &str| {
        executions
            .lines()
            .filter(|line| line.contains(run_id) && line.contains("\"ok\""))
            .count()
    };
    for (_, run_id) in &runs {
        assert!(
            ok_per_run(run_id) >= 3,
            "run {run_id} has fewer executions than steps"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_runs_are_purged_after_the_retention_and_running_ones_are_kept() {
    let mut options = ClusterOptions::new(BINARY, 3);
    options.overrides = vec!["runs.retention_ms=1000".into()];
    let cluster = TestCluster::start(options).await.unwrap();
    let mut client = cluster.client(2).await.unwrap();
    let quick =
        r#"{"name": "quick", "steps": [{"id": "t", "type": "transform", "output": "input"}]}"#;
    put_flow(&mut client, quick.as_bytes().to_vec()).await;
    let waits = r#"{"name": "waits", "steps": [{"id": "hold", "type": "signal", "signal": "go"}]}"#;
    put_flow(&mut client, waits.as_bytes().to_vec()).await;
    let done = start(&mut client, "quick", json!(1), "once").await;
    let open = start(&mut client, "waits", Value::Null, "").await;
    assert_eq!(finished(&mut client, &done).await["status"], "Completed");

    let deadline = Instant::now() + WAIT;
    loop {
        let found = client
            .runs
            .get(api::GetRunRequest {
                run_id: done.clone(),
                consistency: 0,
            })
            .await;
        match found {
            Err(status) if status.code() == tonic::Code::NotFound => break,
            _ => {
                assert!(
                    Instant::now() < deadline,
                    "the finished run was never purged"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert_eq!(
        get(&mut client, &open).await["status"],
        "Running",
        "a running run was purged"
    );
    let listed = client
        .runs
        .list(api::ListRunsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = listed.runs.iter().map(|run| run.run_id.as_str()).collect();
    assert_eq!(ids, vec![open.as_str()]);
    // Its idempotency key was purged with it: the same key starts a new run.
    assert_ne!(start(&mut client, "quick", json!(2), "once").await, done);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_without_heartbeats_times_out_and_heartbeats_keep_a_long_one_alive() {
    let mut cluster = TestCluster::start(ClusterOptions::new(BINARY, 1))
        .await
        .unwrap();
    let mut client = cluster.client(1).await.unwrap();
    let flow = |name: &str, block: &str| {
        format!(
            r#"{{"name": "{name}", "steps": [{{"id": "long", "type": "task", "block": "{block}", "input": "input",
                "timeouts": {{"heartbeat_ms": 300}}, "retry": {{"max_attempts": 3, "initial_backoff_ms": 10}}}}]}}"#
        )
    };
    put_flow(&mut client, flow("silent", "manual").into_bytes()).await;
    put_flow(&mut client, flow("beating", "slow").into_bytes()).await;

    // A worker that never sends heartbeats loses its attempt after 300 ms.
    let (outbound, receiver) = tokio::sync::mpsc::channel(8);
    let hello = api::WorkerHello {
        worker_id: "mute".into(),
        blocks: vec!["manual".into()],
        concurrency: 1,
        ..Default::default()
    };
    outbound
        .send(api::WorkerMessage {
            kind: Some(api::worker_message::Kind::Hello(hello)),
        })
        .await
        .unwrap();
    let mut tasks = client
        .workers
        .attach(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .unwrap()
        .into_inner();
    let run_id = start(&mut client, "silent", json!("x"), "").await;
    let first = tokio::time::timeout(WAIT, tasks.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((first.attempt, first.heartbeat_ms), (1, 300));
    let second = tokio::time::timeout(WAIT, tasks.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(second.attempt, 2, "the silent attempt was not taken back");
    let done = api::TaskResult {
        task: second.task,
        attempt: 2,
        output: b"\"ok\"".to_vec(),
        ..Default::default()
    };
    outbound
        .send(api::WorkerMessage {
            kind: Some(api::worker_message::Kind::Result(done)),
        })
        .await
        .unwrap();
    let run = finished(&mut client, &run_id).await;
    assert_eq!(run["status"], "Completed", "{run:#}");
    let error = run["steps"]["long"]["attempts"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains("heartbeat"), "{error}");

    // The worker library sends heartbeats, so a task four times longer than the limit survives.
    cluster
        .spawn_worker("patient", &[1], &["slow=sleep:1200"], 1)
        .unwrap();
    let run_id = start(&mut client, "beating", json!("y"), "").await;
    let run = finished(&mut client, &run_id).await;
    assert_eq!(run["status"], "Completed", "{run:#}");
    assert_eq!(
        run["steps"]["long"]["attempts"].as_array().unwrap().len(),
        1,
        "{run:#}"
    );
}
