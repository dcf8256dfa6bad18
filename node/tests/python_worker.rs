//! Blocks are language-agnostic: the Python example worker
//! (node/examples/python-worker) serves a flow's task on a one-node cluster.
//! Skipped, with a message, when Python lacks grpcio / grpcio-tools
//! (`make python-worker-deps` installs them).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use floe_api::client::FloeClient;
use floe_harness::{ClusterOptions, TestCluster};
use floe_node::api;
use serde_json::{json, Value};

const BINARY: &str = env!("CARGO_BIN_EXE_floe");
const WAIT: Duration = Duration::from_secs(30);

fn example_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/python-worker")
}

/// Kills the worker process when the test ends, passes or panics, and
/// prints its log when the test failed.
struct WorkerGuard {
    child: Child,
    log: PathBuf,
}

impl Drop for WorkerGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- python worker log ({}) ---\n{log}", self.log.display());
        }
    }
}

fn python_has_grpc() -> Result<(), String> {
    match Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .output()
    {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        Err(err) => Err(format!("python3: {err}")),
    }
}

fn generate_stubs(out: &Path) {
    let status = Command::new("bash")
        .arg(example_dir().join("generate.sh"))
        .arg(out)
        .status()
        .expect("running generate.sh");
    assert!(status.success(), "generate.sh failed: {status}");
    assert!(out.join("floe_pb2_grpc.py").exists());
}

async fn start(client: &mut FloeClient, input: &[u8]) -> String {
    let request = api::StartRunRequest {
        flow: "shout".into(),
        input: input.to_vec(),
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

async fn finished(client: &mut FloeClient, run_id: &str) -> Value {
    floe_harness::finished_run(client, run_id, WAIT)
        .await
        .unwrap()
}

/// Every error string in a run record: the run's and its attempts'.
fn errors(run: &Value) -> Vec<String> {
    fn collect(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    match value {
                        Value::String(text) if key == "error" => out.push(text.clone()),
                        _ => collect(value, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| collect(item, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    collect(run, &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_worker_serves_a_flow() {
    if let Err(reason) = python_has_grpc() {
        println!("skipping python_worker_serves_a_flow: python3 cannot import grpc, grpc_tools ({reason}); run `make python-worker-deps`");
        return;
    }
    let stubs = tempfile::tempdir().unwrap();
    generate_stubs(stubs.path());

    let cluster = TestCluster::start(ClusterOptions::new(BINARY, 1))
        .await
        .unwrap();
    let log = cluster.dir.join("python-worker.log");
    let log_file = File::create(&log).unwrap();
    let child = Command::new("python3")
        .arg(example_dir().join("worker.py"))
        .arg("--endpoint")
        .arg(&cluster.node(1).unwrap().api_addr)
        .arg("--ca")
        .arg(cluster.client_dir.join("ca.pem"))
        .arg("--cert")
        .arg(cluster.client_dir.join("client.pem"))
        .arg("--key")
        .arg(cluster.client_dir.join("client-key.pem"))
        .args([
            "--id",
            "py1",
            "--block",
            "upper",
            "--block",
            "word_count",
            "--concurrency",
            "2",
            "--label",
            "lang=python",
        ])
        .arg("--stubs")
        .arg(stubs.path())
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .expect("starting worker.py");
    let _worker = WorkerGuard { child, log };

    let mut client = cluster.client(1).await.unwrap();
    // The step requires a label only the Python worker declares.
    let definition =
        br#"{"name":"shout","steps":[{"id":"up","type":"task","block":"upper","input":"input",
        "worker_labels":{"lang":"python"}}]}"#
            .to_vec();
    client
        .flows
        .put(api::PutFlowRequest { definition })
        .await
        .unwrap();

    // The run waits for a worker serving `upper`: the Python one, once attached.
    let run_id = start(&mut client, b"\"hello\"").await;
    let run = finished(&mut client, &run_id).await;
    assert_eq!(run["status"], "Completed", "{run:#}");
    assert_eq!(run["output"], json!("HELLO"), "{run:#}");
    let attempts = run["steps"]["up"]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{run:#}");
    assert_eq!(attempts[0]["worker"], "py1", "{run:#}");

    // A non-string input fails for good (retryable = false), with the reason.
    let run_id = start(&mut client, b"5").await;
    let run = finished(&mut client, &run_id).await;
    assert_eq!(run["status"], "Failed", "{run:#}");
    let errors = errors(&run);
    assert!(
        errors.iter().any(|e| e.contains("must be a JSON string")),
        "errors {errors:?} in {run:#}"
    );
    let attempts = run["steps"]["up"]["attempts"].as_array().unwrap();
    assert_eq!(
        attempts.len(),
        1,
        "a non-retryable failure is not retried: {run:#}"
    );
}
