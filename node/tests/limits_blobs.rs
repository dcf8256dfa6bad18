//! Large payloads through the replicated blob store, and cluster-wide
//! concurrency limits, on a real three-node cluster with workers in
//! separate processes.

use std::time::{Duration, Instant};

use floe_api::client::FloeClient;
use floe_harness::{ClusterOptions, TestCluster};
use floe_node::api;
use serde_json::{json, Value};

const BINARY: &str = env!("CARGO_BIN_EXE_floe");
const WAIT: Duration = Duration::from_secs(45);

async fn put_flow(client: &mut FloeClient, definition: Value) {
    let definition = serde_json::to_vec(&definition).unwrap();
    client
        .flows
        .put(api::PutFlowRequest { definition })
        .await
        .unwrap();
}

async fn start(client: &mut FloeClient, flow: &str, input: &[u8]) -> Result<String, tonic::Status> {
    let request = api::StartRunRequest {
        flow: flow.into(),
        input: input.to_vec(),
        ..Default::default()
    };
    client
        .runs
        .start(request)
        .await
        .map(|reply| reply.into_inner().run_id)
}

async fn finished(client: &mut FloeClient, run_id: &str) -> Value {
    floe_harness::finished_run(client, run_id, WAIT)
        .await
        .unwrap()
}

fn blob_hash(value: &Value) -> String {
    let address = value["$blob"]
        .as_str()
        .unwrap_or_else(|| panic!("not a blob reference: {value}"));
    address.strip_prefix("sha256:").unwrap().to_string()
}

fn blob_file(cluster: &TestCluster, node: u64, hash: &str) -> std::path::PathBuf {
    cluster
        .node(node)
        .unwrap()
        .data_dir()
        .join("blobs")
        .join(&hash[..2])
        .join(hash)
}

fn chain_flow(name: &str, block: &str) -> Value {
    json!({
        "name": name,
        "steps": [
            { "id": "first", "type": "task", "block": block, "input": "input", "next": "second" },
            { "id": "second", "type": "task", "block": block, "input": "steps.first.output" }
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_payloads_travel_as_replicated_blobs() {
    let mut options = ClusterOptions::new(BINARY, 3);
    options.overrides = vec!["runs.max_payload_bytes=2097152".into()];
    let mut cluster = TestCluster::start(options).await.unwrap();
    let record = cluster
        .spawn_worker("echo", &[2], &["big=echo"], 4)
        .unwrap();
    let mut client = cluster.client(3).await.unwrap();
    put_flow(&mut client, chain_flow("big-chain", "big")).await;

    // 600 KB: over the 256 KiB inline limit, under the 2 MiB hard limit.
    let input = json!({ "pages": "x".repeat(600_000), "id": 7 });
    let input_bytes = serde_json::to_vec(&input).unwrap();
    let run_id = start(&mut client, "big-chain", &input_bytes).await.unwrap();
    let run = finished(&mut client, &run_id).await;
    assert_eq!(run["status"], "Completed", "{run:#}");

    // The record holds a reference for the large field and keeps the small
    // one inline; the worker saw (and echoed) the payload itself.
    let input_hash = blob_hash(&run["input"]["pages"]);
    assert_eq!(run["input"]["id"], 7, "small fields stay inline");
    assert_eq!(
        blob_hash(&run["steps"]["first"]["output"]["pages"]),
        input_hash,
        "echoed bytes hash the same"
    );
    assert_eq!(blob_hash(&run["output"]["pages"]), input_hash);
    let executions = std::fs::read_to_string(&record).unwrap();
    assert_eq!(executions.lines().count(), 2, "{executions}");

    let fetched = client
        .blobs
        .get(api::GetBlobRequest {
            address: format!("sha256:{input_hash}"),
        })
        .await
        .unwrap();
    let fetched: Value = serde_json::from_slice(&fetched.into_inner().data).unwrap();
    assert_eq!(fetched, input["pages"]);

    // A majority held the blob before the start committed; the third gets it in the background.
    let deadline = Instant::now() + WAIT;
    while !(1..=3).all(|node| blob_file(&cluster, node, &input_hash).is_file()) {
        assert!(
            Instant::now() < deadline,
            "blob {input_hash} not on every node"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Over the hard limit: refused, naming what and the limit; nothing started.
    let too_big = serde_json::to_vec(&json!({ "pages": "y".repeat(2_200_000) })).unwrap();
    let err = start(&mut client, "big-chain", &too_big).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("run input") && err.message().contains("runs.max_payload_bytes"),
        "{}",
        err.message()
    );
    let listed = client
        .runs
        .list(api::ListRunsRequest {
            flow: "big-chain".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.runs.len(), 1, "the refused start stored nothing");

    // Malformed address and unknown blob: clear errors.
    let err = client
        .blobs
        .get(api::GetBlobRequest {
            address: "sha256:zz".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let unknown = "0".repeat(64);
    let err = client
        .blobs
        .get(api::GetBlobRequest {
            address: unknown.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(err.message().contains(&unknown), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_missed_a_blob_fetches_it_from_a_peer() {
    let mut cluster = TestCluster::start(ClusterOptions::new(BINARY, 3))
        .await
        .unwrap();
    let mut client = cluster.client(3).await.unwrap();
    put_flow(&mut client, chain_flow("big-chain", "big")).await;

    // A follower other than the client's node misses the write.
    let leader = cluster.wait_leader(WAIT).await.unwrap();
    let absent = if leader == 1 { 2 } else { 1 };
    let worker_node = 6 - absent - 3;
    cluster
        .spawn_worker("echo", &[worker_node], &["big=echo"], 4)
        .unwrap();
    cluster.kill(absent).unwrap();
    let input = json!({ "scan": "z".repeat(400_000) });
    let run_id = start(
        &mut client,
        "big-chain",
        &serde_json::to_vec(&input).unwrap(),
    )
    .await
    .unwrap();
    let run = finished(&mut client, &run_id).await;
    assert_eq!(run["status"], "Completed", "{run:#}");
    let hash = blob_hash(&run["input"]["scan"]);
    assert!(
        !blob_file(&cluster, absent, &hash).exists(),
        "node {absent} was down when the blob was written"
    );

    cluster.restart(absent).unwrap();
    cluster.wait_ready(&[absent], WAIT).await.unwrap();
    let mut on_absent = cluster.client(absent).await.unwrap();
    let fetched = on_absent
        .blobs
        .get(api::GetBlobRequest {
            address: hash.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&fetched.into_inner().data).unwrap(),
        input["scan"]
    );
    assert!(
        blob_file(&cluster, absent, &hash).is_file(),
        "node {absent} keeps the copy it fetched"
    );
}

/// The most attempts of `steps` whose [start, finish] overlap at once.
fn peak_overlap(runs: &[Value], steps: &[&str]) -> usize {
    let mut edges = Vec::new();
    for run in runs {
        for step in steps {
            for attempt in run["steps"][step]["attempts"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let started = attempt["started_at_ms"].as_u64().expect("attempt started");
                let finished = attempt["finished_at_ms"]
                    .as_u64()
                    .expect("attempt finished");
                // At equal times a finish comes before a start: the slot was freed first.
                edges.push((started, 1i64));
                edges.push((finished, -1i64));
            }
        }
    }
    edges.sort();
    let (mut current, mut peak) = (0i64, 0i64);
    for (_, delta) in edges {
        current += delta;
        peak = peak.max(current);
    }
    peak as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limits_hold_across_the_cluster() {
    let mut cluster = TestCluster::start(ClusterOptions::new(BINARY, 3))
        .await
        .unwrap();
    // Plenty of worker slots on every node: only the limits hold tasks back.
    cluster
        .spawn_worker(
            "slow",
            &[1, 2, 3],
            &["slow=sleep:200", "other=sleep:200"],
            8,
        )
        .unwrap();
    let mut client = cluster.client(1).await.unwrap();
    put_flow(&mut client, chain_flow("by-block", "slow")).await;
    put_flow(&mut client, chain_flow("by-flow", "other")).await;

    let set = |scope: &str, name: &str, limit: Option<u32>| api::SetLimitRequest {
        scope: scope.into(),
        name: name.into(),
        limit,
    };
    client
        .runs
        .set_limit(set("block", "slow", Some(2)))
        .await
        .unwrap();
    client
        .runs
        .set_limit(set("flow", "by-flow", Some(3)))
        .await
        .unwrap();

    let err = client
        .runs
        .set_limit(set("block", "slow", Some(0)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let err = client
        .runs
        .set_limit(set("shelf", "slow", Some(1)))
        .await
        .unwrap_err();
    assert!(err.message().contains("shelf"), "{}", err.message());

    let mut block_runs = Vec::new();
    let mut flow_runs = Vec::new();
    for i in 0..6 {
        let input = serde_json::to_vec(&json!({ "i": i })).unwrap();
        block_runs.push(start(&mut client, "by-block", &input).await.unwrap());
        flow_runs.push(start(&mut client, "by-flow", &input).await.unwrap());
    }
    let mut limits_seen = Vec::new();
    let mut block_done = Vec::new();
    for run_id in &block_runs {
        block_done.push(finished(&mut client, run_id).await);
        let listed = client
            .runs
            .list_limits(api::ListLimitsRequest { consistency: 0 })
            .await
            .unwrap()
            .into_inner();
        limits_seen.extend(
            listed
                .limits
                .into_iter()
                .filter(|limit| limit.scope == "block" && limit.name == "slow"),
        );
    }
    let mut flow_done = Vec::new();
    for run_id in &flow_runs {
        flow_done.push(finished(&mut client, run_id).await);
    }
    for run in block_done.iter().chain(&flow_done) {
        assert_eq!(run["status"], "Completed", "{run:#}");
    }
    assert!(
        limits_seen
            .iter()
            .all(|limit| limit.limit == Some(2) && limit.active <= 2),
        "{limits_seen:?}"
    );

    let block_peak = peak_overlap(&block_done, &["first", "second"]);
    let flow_peak = peak_overlap(&flow_done, &["first", "second"]);
    assert!(
        block_peak <= 2,
        "block slow ran {block_peak} tasks at once over its limit of 2"
    );
    assert!(
        flow_peak <= 3,
        "flow by-flow ran {flow_peak} tasks at once over its limit of 3"
    );
    assert!(
        block_peak == 2 && flow_peak >= 2,
        "the limits, not the workers, held the tasks back: {block_peak} {flow_peak}"
    );

    // Cleared, the block runs as wide as its workers allow.
    client
        .runs
        .set_limit(set("block", "slow", None))
        .await
        .unwrap();
    let mut wide = Vec::new();
    for i in 0..6 {
        wide.push(
            start(
                &mut client,
                "by-block",
                &serde_json::to_vec(&json!({ "i": i })).unwrap(),
            )
            .await
            .unwrap(),
        );
    }
    let mut wide_done = Vec::new();
    for run_id in &wide {
        wide_done.push(finished(&mut client, run_id).await);
    }
    assert!(
        peak_overlap(&wide_done, &["first", "second"]) > 2,
        "without the limit more than two ran at once"
    );
    let listed = client
        .runs
        .list_limits(api::ListLimitsRequest { consistency: 0 })
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed
            .limits
            .iter()
            .all(|limit| !(limit.name == "slow" && limit.limit.is_some())),
        "{listed:?}"
    );
    assert!(
        listed.limits.iter().all(|limit| limit.active == 0),
        "every placed task finished: {listed:?}"
    );
}
