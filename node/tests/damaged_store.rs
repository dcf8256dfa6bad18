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

use floe_harness::fixture::FixtureCluster;
use floe_node::api;

const FIXTURE: &str = "tests/fixtures/store-damaged-by-deep-value.tar.gz";

fn unpack() -> FixtureCluster {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    FixtureCluster::unpack(env!("CARGO_BIN_EXE_floe"), &fixture).unwrap()
}

fn depth(value: &serde_json::Value) -> usize {
    floe_engine::limits::value_depth(value, usize::MAX - 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_stopped_by_a_deep_value_serves_again_on_this_release() {
    let mut nodes = unpack();
    let run_id = std::fs::read_to_string(nodes.path().join("run_id.txt"))
        .unwrap()
        .trim()
        .to_string();
    nodes.start().unwrap();
    nodes.wait_ready().await.unwrap();
    let mut client = nodes.client().await.unwrap();

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
    nodes.kill_all();
    nodes.start().unwrap();
    nodes.wait_ready().await.unwrap();
    let mut client = nodes.client().await.unwrap();
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
