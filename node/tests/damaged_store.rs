//! A cluster stopped by the poison-input bug of the previous release starts
//! on this one and serves again.
//!
//! The fixture holds the three data dirs (and their certificates and
//! configs) of a cluster of the release before apply became total
//! (`0c0efe2`): a flow whose transform wraps its input in a mapping 100
//! objects deep, run with an input of 100 nested arrays, so the run's
//! record held a value 200 levels deep; the client's `run cancel` of that
//! run then failed inside apply on every node (`cannot decode: recursion
//! limit exceeded`) and no node could start again from its data. Made with
//! that release's `floe` as an operator would: `cert create-ca/-node/-client`,
//! `serve` ×3, `kv put canary alive`, `flow put`, `run start`, `run cancel`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use floe_api::client::{ClientOptions, FloeClient};
use floe_harness::http_get;
use floe_node::api;

const FIXTURE: &str = "tests/fixtures/store-damaged-by-deep-value.tar.gz";
const DEADLINE: Duration = Duration::from_secs(60);

struct Nodes {
    /// Always `Some` until `stop` hands it on.
    dir: Option<tempfile::TempDir>,
    children: Vec<Child>,
}

impl Nodes {
    fn start(dir: tempfile::TempDir) -> Nodes {
        let children = (1..=3)
            .map(|id| {
                let log = std::fs::File::create(dir.path().join(format!("node{id}.log"))).unwrap();
                Command::new(env!("CARGO_BIN_EXE_floe"))
                    .args(["serve", "--config", &format!("node{id}.toml")])
                    .current_dir(dir.path())
                    .stdout(Stdio::from(log.try_clone().unwrap()))
                    .stderr(Stdio::from(log))
                    .spawn()
                    .unwrap()
            })
            .collect();
        Nodes {
            dir: Some(dir),
            children,
        }
    }

    fn path(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|dir| dir.path())
            .unwrap_or(Path::new("."))
    }

    fn stop(mut self) -> tempfile::TempDir {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.dir
            .take()
            .unwrap_or_else(|| tempfile::tempdir().unwrap())
    }

    fn all_running(&mut self) -> bool {
        self.children
            .iter_mut()
            .all(|child| matches!(child.try_wait(), Ok(None)))
    }

    fn logs(&self) -> String {
        (1..=3)
            .map(|id| {
                let text = std::fs::read_to_string(self.path().join(format!("node{id}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                format!(
                    "--- node {id}\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let mut ready = 0;
            for id in 1..=3 {
                if let Ok((200, _)) =
                    http_get(&format!("127.0.0.1:1720{id}"), "/health/readyz").await
                {
                    ready += 1;
                }
            }
            if ready == 3 {
                return;
            }
            assert!(self.all_running(), "a node exited:\n{}", self.logs());
            assert!(
                Instant::now() < deadline,
                "not ready within {DEADLINE:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn unpack() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    let status = Command::new("tar")
        .arg("xzf")
        .arg(&fixture)
        .arg("-C")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success(), "unpacking {}", fixture.display());
    dir
}

async fn connect(dir: &Path) -> FloeClient {
    let options = ClientOptions {
        endpoints: (1..=3).map(|id| format!("127.0.0.1:1710{id}")).collect(),
        ca: dir.join("pki/admin/ca.pem"),
        cert: dir.join("pki/admin/client.pem"),
        key: dir.join("pki/admin/client-key.pem"),
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
    };
    FloeClient::connect(&options).await.unwrap()
}

fn depth(value: &serde_json::Value) -> usize {
    floe_engine::limits::value_depth(value, usize::MAX - 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_stopped_by_a_deep_value_serves_again_on_this_release() {
    let dir = unpack();
    let run_id = std::fs::read_to_string(dir.path().join("run_id.txt"))
        .unwrap()
        .trim()
        .to_string();
    let mut nodes = Nodes::start(dir);
    nodes.wait_ready().await;
    let mut client = connect(nodes.path()).await;

    // The stuck entry (the cancel) applied: the run had already finished.
    let canary = client
        .kv
        .get(api::GetRequest {
            key: "canary".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(canary.value, b"alive".to_vec(), "{canary:?}");
    let reply = client
        .runs
        .get(api::GetRunRequest {
            run_id: run_id.clone(),
            consistency: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let run: serde_json::Value = floe_engine::limits::from_stored_text(&reply.run).unwrap();
    assert_eq!(run["status"], "Completed", "{}", &reply.run.len());
    assert_eq!(depth(&run["input"]), 100);
    assert_eq!(depth(&run["output"]), 200, "the record reads back whole");
    let listed = client
        .runs
        .list(api::ListRunsRequest {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.runs.len(), 1);
    let cancel = client
        .runs
        .cancel(api::CancelRunRequest {
            run_id: run_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(cancel.code(), tonic::Code::FailedPrecondition, "{cancel:?}");
    assert!(cancel.message().contains("already finished"), "{cancel:?}");
    client
        .kv
        .put(api::PutRequest {
            key: "after".into(),
            value: b"ok".to_vec(),
        })
        .await
        .unwrap();
    assert!(nodes.all_running(), "{}", nodes.logs());

    // And again after a restart of all three.
    let dir = nodes.stop();
    let mut nodes = Nodes::start(dir);
    nodes.wait_ready().await;
    let mut client = connect(nodes.path()).await;
    let after = client
        .kv
        .get(api::GetRequest {
            key: "after".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.value, b"ok".to_vec());
    let reply = client
        .runs
        .get(api::GetRunRequest {
            run_id,
            consistency: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let run: serde_json::Value = floe_engine::limits::from_stored_text(&reply.run).unwrap();
    assert_eq!(depth(&run["output"]), 200);
}
