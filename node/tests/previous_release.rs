//! Data dirs written by the previous release open on this one, and their
//! runs go on: finished runs read back, runs waiting for a worker complete
//! once one attaches, a run waiting on a timer completes, idempotency keys
//! still find their runs, and new writes work — again after a restart of all
//! three nodes.
//!
//! The fixture is made by `tests/fixtures/make-previous-release-store.sh`
//! with the `floe` of the release before the workspace was re-layered
//! (`3edfd4d`: floe-storage holding the state machine); it lists what it
//! wrote in `runs.txt`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use floe_api::client::{FloeClient, Repeat};
use floe_harness::finished_run;
use floe_harness::fixture::FixtureCluster;
use floe_node::api;
use serde_json::json;

const FIXTURE: &str = "tests/fixtures/previous-release-store.tar.gz";
const WAIT: Duration = Duration::from_secs(60);

fn runs_written(cluster: &FixtureCluster) -> BTreeMap<String, String> {
    std::fs::read_to_string(cluster.path().join("runs.txt"))
        .unwrap()
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(name, id)| (name.to_string(), id.trim().to_string()))
        .collect()
}

// Every call goes through `FloeClient::call`, which tries again where that is
// safe: right after the nodes start, a read barrier may miss its quorum.
async fn kv_get(client: &mut FloeClient, key: &str) -> Vec<u8> {
    let key = key.to_string();
    client
        .call(Repeat::Read, |mut node| {
            let key = key.clone();
            async move {
                node.kv
                    .get(api::GetRequest {
                        key,
                        ..Default::default()
                    })
                    .await
            }
        })
        .await
        .unwrap()
        .value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dirs_of_the_previous_release_open_and_their_runs_complete() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    let mut cluster = FixtureCluster::unpack(env!("CARGO_BIN_EXE_floe"), &fixture).unwrap();
    let runs = runs_written(&cluster);
    assert_eq!(runs.len(), 5, "{runs:?}");
    cluster.start().unwrap();
    cluster.wait_ready().await.unwrap();
    let mut client = cluster.client().await.unwrap();

    assert_eq!(kv_get(&mut client, "canary").await, b"alive".to_vec());
    let versions = client
        .call(Repeat::Read, |mut node| async move {
            node.flows
                .versions(api::FlowVersionsRequest {
                    name: "chain".into(),
                    ..Default::default()
                })
                .await
        })
        .await
        .unwrap()
        .versions;
    assert_eq!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        [1, 2]
    );

    // Finished before the upgrade: read back whole.
    let v1 = finished_run(&mut client, &runs["chain_v1"], WAIT)
        .await
        .unwrap();
    assert_eq!(v1["status"], "Completed", "{v1:#}");
    assert_eq!(v1["output"], json!({"n": 10, "version": 1}), "{v1:#}");
    let v2 = finished_run(&mut client, &runs["chain_v2"], WAIT)
        .await
        .unwrap();
    assert_eq!(v2["output"], json!({"n": 15, "version": 2}), "{v2:#}");

    // The idempotency key written by the previous release still finds its run.
    let again = client
        .call(Repeat::Idempotent, |mut node| async move {
            node.runs
                .start(api::StartRunRequest {
                    flow: "chain".into(),
                    input: br#"{"n": 5}"#.to_vec(),
                    idempotency_key: "fixture-key".into(),
                    ..Default::default()
                })
                .await
        })
        .await
        .unwrap();
    assert_eq!(again.run_id, runs["chain_v2"]);
    assert!(!again.created);

    // The timer set by the previous release fires on this one.
    let paused = finished_run(&mut client, &runs["pause"], WAIT)
        .await
        .unwrap();
    assert_eq!(paused["status"], "Completed", "{paused:#}");
    assert_eq!(paused["output"], json!({"held": "p"}), "{paused:#}");

    // Runs that waited for a worker complete once one attaches.
    let mut worker = cluster
        .spawn_worker(
            "floe-worker",
            &["--id", "fixture-worker", "--block", "fixture.echo=echo"],
        )
        .unwrap();
    for (name, doc) in [("work_a", "a"), ("work_b", "b")] {
        let run = finished_run(&mut client, &runs[name], WAIT).await.unwrap();
        assert_eq!(
            run["status"],
            "Completed",
            "{name}: {run:#}\n{}",
            cluster.logs()
        );
        assert_eq!(run["output"]["echoed"], json!({"doc": doc}), "{run:#}");
    }
    let correlated = client
        .call(Repeat::Read, |mut node| async move {
            node.runs
                .list(api::ListRunsRequest {
                    correlation_id: "fixture-corr".into(),
                    limit: 10,
                    ..Default::default()
                })
                .await
        })
        .await
        .unwrap()
        .runs;
    assert_eq!(correlated.len(), 1);
    assert_eq!(correlated[0].run_id, runs["work_a"]);

    // New writes on the old data: a key and a run of each flow version.
    client
        .call(Repeat::Write, |mut node| async move {
            node.kv
                .put(api::PutRequest {
                    key: "after".into(),
                    value: b"upgraded".to_vec(),
                })
                .await
        })
        .await
        .unwrap();
    let fresh = client
        .call(Repeat::Idempotent, |mut node| async move {
            node.runs
                .start(api::StartRunRequest {
                    flow: "work".into(),
                    input: br#"{"doc": "c"}"#.to_vec(),
                    idempotency_key: "after-upgrade".into(),
                    ..Default::default()
                })
                .await
        })
        .await
        .unwrap();
    let run = finished_run(&mut client, &fresh.run_id, WAIT)
        .await
        .unwrap();
    assert_eq!(run["output"]["echoed"], json!({"doc": "c"}), "{run:#}");
    let _ = worker.kill();
    let _ = worker.wait();
    assert!(cluster.all_running(), "{}", cluster.logs());

    // Everything again after all three restart.
    cluster.kill_all();
    cluster.start().unwrap();
    cluster.wait_ready().await.unwrap();
    let mut client = cluster.client().await.unwrap();
    assert_eq!(kv_get(&mut client, "after").await, b"upgraded".to_vec());
    assert_eq!(kv_get(&mut client, "canary").await, b"alive".to_vec());
    for name in ["chain_v1", "chain_v2", "pause", "work_a", "work_b"] {
        let run = finished_run(&mut client, &runs[name], WAIT).await.unwrap();
        assert_eq!(run["status"], "Completed", "{name}: {run:#}");
    }
}
