//! Bad input on every surface of a real node gets a clear answer: oversize
//! requests name the limit and its setting, long names are quoted with a
//! bounded prefix, a worker learns why its result was refused, and a
//! connection that never finishes its TLS handshake is closed.

use std::time::{Duration, Instant};

use floe_api::client::FloeClient;
use floe_harness::{ClusterOptions, TestCluster};
use floe_node::api;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

const BINARY: &str = env!("CARGO_BIN_EXE_floe");
const WAIT: Duration = Duration::from_secs(30);
/// The node under test refuses payloads above this (`runs.max_payload_bytes`).
const MAX_PAYLOAD: usize = 2 * 1024 * 1024;

async fn single_node() -> TestCluster {
    let mut options = ClusterOptions::new(BINARY, 1);
    options.overrides = vec![format!("runs.max_payload_bytes={MAX_PAYLOAD}")];
    TestCluster::start(options).await.unwrap()
}

async fn put_manual_flow(client: &mut FloeClient) {
    let flow = json!({"name": "manual-one", "steps": [{"id": "only", "type": "task", "block": "manual", "input": "input"}]});
    let definition = serde_json::to_vec(&flow).unwrap();
    client
        .flows
        .put(api::PutFlowRequest { definition })
        .await
        .unwrap();
}

async fn start(
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

/// A JSON string of about `bytes` bytes.
fn json_of_size(bytes: usize) -> Vec<u8> {
    serde_json::to_vec(&Value::String("p".repeat(bytes))).unwrap()
}

#[track_caller]
fn assert_exhausted(result: Result<impl std::fmt::Debug, tonic::Status>, fragments: &[&str]) {
    let status = result.expect_err("an oversize request must be refused");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    for fragment in fragments {
        assert!(
            status.message().contains(fragment),
            "no {fragment:?} in {:?}",
            status.message()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_requests_name_the_limit_and_its_setting() {
    let cluster = single_node().await;
    let mut client = cluster.client(1).await.unwrap();
    put_manual_flow(&mut client).await;

    // Under the transport limit, over floe's own: floe's check answers.
    let setting = format!("more than runs.max_payload_bytes ({MAX_PAYLOAD})");
    assert_exhausted(
        start(&mut client, "manual-one", json_of_size(MAX_PAYLOAD + 1000)).await,
        &["run input is", &setting],
    );
    // Over the transport limit too: the transport's refusal names the setting.
    assert_exhausted(
        start(
            &mut client,
            "manual-one",
            json_of_size(MAX_PAYLOAD + 2 * 1024 * 1024),
        )
        .await,
        &["/floe.v1.Runs/Start", "runs.max_payload_bytes (2097152)"],
    );

    let run_id = start(&mut client, "manual-one", b"1".to_vec())
        .await
        .unwrap();
    let signal = api::SignalRunRequest {
        run_id: run_id.clone(),
        signal: "go".into(),
        payload: json_of_size(MAX_PAYLOAD + 1000),
    };
    assert_exhausted(
        client.runs.signal(signal).await,
        &["signal payload is", &setting],
    );

    // Flow definitions: fixed 1 MiB, answered by floe up to 2 MiB and by
    // the transport above that, both naming the limit.
    let padded = |bytes: usize| {
        let flow = json!({"name": "big", "description": "d".repeat(bytes), "steps": []});
        api::PutFlowRequest {
            definition: serde_json::to_vec(&flow).unwrap(),
        }
    };
    assert_exhausted(
        client.flows.put(padded(1_500_000)).await,
        &["flow definition is", "1 MiB"],
    );
    assert_exhausted(
        client.flows.put(padded(5_000_000)).await,
        &["/floe.v1.Flows/Put", "flow definition limit of 1 MiB"],
    );

    // Key-value entries: fixed 1 MiB a value.
    let put = |bytes: usize| api::PutRequest {
        key: "k".into(),
        value: vec![b'v'; bytes],
    };
    assert_exhausted(
        client.kv.put(put(1_500_000)).await,
        &["value for key \"k\" is 1500000 bytes", "1 MiB"],
    );
    assert_exhausted(
        client.kv.put(put(6_000_000)).await,
        &["/floe.v1.Kv/Put", "key-value limits"],
    );
    let err = client
        .kv
        .put(api::PutRequest {
            key: "k".repeat(5000),
            value: b"1".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_names_are_echoed_as_a_bounded_prefix() {
    let cluster = single_node().await;
    let mut client = cluster.client(1).await.unwrap();
    let long = "n".repeat(20_000);

    let err = client
        .runs
        .get(api::GetRunRequest {
            run_id: long.clone(),
            consistency: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(
        err.message().contains("(20000 bytes)") && err.message().len() < 400,
        "{}",
        err.message()
    );

    let err = client
        .flows
        .get(api::GetFlowRequest {
            name: long.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(
        err.message().contains("(20000 bytes)") && err.message().len() < 400,
        "{}",
        err.message()
    );

    let flow = json!({"name": long, "steps": [{"id": long.clone(), "type": "task", "block": long.clone(), "input": "input"}]});
    let err = client
        .flows
        .put(api::PutFlowRequest {
            definition: serde_json::to_vec(&flow).unwrap(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("invalid flow name") && err.message().len() < 2000,
        "{}",
        err.message()
    );

    let err = client
        .runs
        .start(api::StartRunRequest {
            flow: long.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        err.message().len() < 400,
        "{:?}: {}",
        err.code(),
        err.message()
    );
}

/// A worker stream driven by hand; the worker accepts refusals.
struct HandWorker {
    outbound: tokio::sync::mpsc::Sender<api::WorkerMessage>,
    tasks: tonic::Streaming<api::WorkerTask>,
}

impl HandWorker {
    async fn attach(client: &mut FloeClient, worker_id: &str) -> HandWorker {
        let (outbound, receiver) = tokio::sync::mpsc::channel(8);
        let hello = api::WorkerHello {
            worker_id: worker_id.into(),
            blocks: vec!["manual".into()],
            concurrency: 4,
            accepts_refusals: true,
            ..Default::default()
        };
        outbound
            .send(api::WorkerMessage {
                kind: Some(api::worker_message::Kind::Hello(hello)),
            })
            .await
            .unwrap();
        let tasks = client
            .workers
            .attach(tokio_stream::wrappers::ReceiverStream::new(receiver))
            .await
            .unwrap()
            .into_inner();
        HandWorker { outbound, tasks }
    }

    async fn send(&self, kind: api::worker_message::Kind) {
        self.outbound
            .send(api::WorkerMessage { kind: Some(kind) })
            .await
            .unwrap();
    }

    async fn result(&self, task: &str, attempt: u32, output: Vec<u8>) {
        let result = api::TaskResult {
            task: task.into(),
            attempt,
            output,
            ..Default::default()
        };
        self.send(api::worker_message::Kind::Result(result)).await;
    }

    async fn next(&mut self) -> Result<Option<api::WorkerTask>, tonic::Status> {
        tokio::time::timeout(WAIT, self.tasks.message())
            .await
            .expect("the node answers in time")
    }

    async fn refusal(&mut self) -> api::ResultRefused {
        let message = self.next().await.unwrap().expect("stream open");
        match message.refused {
            Some(refused) => refused,
            None => panic!("expected a refusal, got task {:?}", message.task),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_is_told_why_its_result_was_refused() {
    let cluster = single_node().await;
    let mut client = cluster.client(1).await.unwrap();
    put_manual_flow(&mut client).await;
    let mut worker = HandWorker::attach(&mut client, "hand").await;
    let run_id = start(&mut client, "manual-one", b"1".to_vec())
        .await
        .unwrap();
    let task = worker.next().await.unwrap().unwrap();
    assert_eq!(task.run_id, run_id);
    assert!(task.refused.is_none());

    worker
        .result(&task.task, task.attempt + 5, b"1".to_vec())
        .await;
    let refused = worker.refusal().await;
    assert_eq!(
        (refused.task.as_str(), refused.attempt),
        (task.task.as_str(), task.attempt + 5)
    );
    assert!(!refused.reason.is_empty(), "{refused:?}");

    worker.result("no-such-task", 1, b"1".to_vec()).await;
    let refused = worker.refusal().await;
    assert_eq!(refused.code, "INVALID_ARGUMENT", "{refused:?}");

    // A stale attempt leaves the attempt open: a good result completes the run.
    worker
        .result(&task.task, task.attempt, b"\"done\"".to_vec())
        .await;
    let run = floe_harness::finished_run(&mut client, &run_id, WAIT)
        .await
        .unwrap();
    assert_eq!(run["output"], json!("done"), "{run:#}");

    // An output refused for what it is fails its attempt (never left open):
    // the worker is told, and the run ends with the reason.
    for (output, code, reason) in [
        (
            b"{not json".to_vec(),
            "INVALID_ARGUMENT",
            "task output is not JSON",
        ),
        (
            json_of_size(MAX_PAYLOAD + 1000),
            "RESOURCE_EXHAUSTED",
            "runs.max_payload_bytes",
        ),
    ] {
        let run_id = start(&mut client, "manual-one", b"1".to_vec())
            .await
            .unwrap();
        let task = worker.next().await.unwrap().unwrap();
        assert_eq!(task.run_id, run_id);
        worker.result(&task.task, task.attempt, output).await;
        let refused = worker.refusal().await;
        assert_eq!(refused.code, code, "{refused:?}");
        assert!(refused.reason.contains(reason), "{refused:?}");
        let run = floe_harness::finished_run(&mut client, &run_id, WAIT)
            .await
            .unwrap();
        assert_eq!(run["status"], json!("Failed"), "{run:#}");
        let error = run["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("output was refused") && error.contains(reason),
            "{error}"
        );
    }

    // A result past the transport limit ends the stream with a reason.
    worker
        .result(
            &task.task,
            task.attempt,
            json_of_size(MAX_PAYLOAD + 2 * 1024 * 1024),
        )
        .await;
    let ended = loop {
        match worker.next().await {
            Ok(Some(message)) => assert!(message.refused.is_some(), "{message:?}"),
            Ok(None) => panic!("the stream ended with OK and no reason"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), tonic::Code::ResourceExhausted, "{ended:?}");
    assert!(
        ended.message().contains("runs.max_payload_bytes"),
        "{}",
        ended.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_hello_is_refused() {
    let cluster = single_node().await;
    let mut client = cluster.client(1).await.unwrap();
    let mut worker = HandWorker::attach(&mut client, "twice").await;
    let hello = api::WorkerHello {
        worker_id: "other".into(),
        blocks: vec!["manual".into()],
        concurrency: 1,
        ..Default::default()
    };
    worker.send(api::worker_message::Kind::Hello(hello)).await;
    let status = worker
        .next()
        .await
        .expect_err("a second hello ends the stream with an error");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("already said hello"),
        "{}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_a_tls_handshake_is_closed() {
    let cluster = single_node().await;
    let addr = cluster.node(1).unwrap().api_addr.clone();
    let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let opened = Instant::now();
    let bound = floe_node::grpc::TLS_HANDSHAKE_TIMEOUT + Duration::from_secs(5);
    let mut buffer = [0u8; 64];
    // No ClientHello: the server must close the socket on its own.
    let read = tokio::time::timeout(bound, socket.read(&mut buffer)).await;
    match read {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(count)) => panic!("the server sent {count} bytes to a client that never said hello"),
        Err(_) => panic!("connection still open after {:?}", opened.elapsed()),
    }
    assert!(
        opened.elapsed() >= floe_node::grpc::TLS_HANDSHAKE_TIMEOUT - Duration::from_secs(1),
        "closed too early: {:?}",
        opened.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inference_step_for_a_model_with_no_deployment_fails_after_the_wait() {
    let mut options = ClusterOptions::new(BINARY, 1);
    options.overrides = vec!["inference.no_replica_wait_ms=1500".into()];
    let cluster = TestCluster::start(options).await.unwrap();
    let mut client = cluster.client(1).await.unwrap();
    let flow = json!({
        "name": "ghostly",
        "steps": [{ "id": "classify", "type": "inference", "model": "ghost", "input": "input", "outputs": "list" }]
    });
    client
        .flows
        .put(api::PutFlowRequest {
            definition: serde_json::to_vec(&flow).unwrap(),
        })
        .await
        .unwrap();
    let started = Instant::now();
    let run_id = start(&mut client, "ghostly", b"{}".to_vec()).await.unwrap();
    let run = floe_harness::finished_run(&mut client, &run_id, WAIT)
        .await
        .unwrap();
    assert_eq!(run["status"], "Failed", "{run:#}");
    let error = run.to_string();
    assert!(
        error.contains("model ghost is not deployed")
            && error.contains("inference.no_replica_wait_ms"),
        "{run:#}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "failed before the wait: {:?}",
        started.elapsed()
    );
}
