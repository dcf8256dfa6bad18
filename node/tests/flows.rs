//! Flow definitions through a real three-node cluster: validation with JSON
//! paths, immutable versions, identical definitions, reads on any node.

use std::path::PathBuf;
use std::time::Duration;

use floe_harness::{ClusterOptions, TestCluster};
use floe_node::api;

const BINARY: &str = env!("CARGO_BIN_EXE_floe");

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/examples/flows")
        .join(name)
}

fn three_step(block: &str) -> String {
    format!(
        r#"{{"name": "chain", "steps": [
            {{"id": "a", "type": "task", "block": "{block}", "input": "input", "next": "b"}},
            {{"id": "b", "type": "task", "block": "{block}", "input": "steps.a.output", "next": "c"}},
            {{"id": "c", "type": "task", "block": "{block}", "input": "steps.b.output"}}
        ]}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_are_versioned_validated_and_readable_on_every_node() {
    let cluster = TestCluster::start(ClusterOptions::new(BINARY, 3))
        .await
        .unwrap();
    let leader = cluster.wait_leader(Duration::from_secs(30)).await.unwrap();
    let follower = cluster
        .running_ids()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();

    // Every example in the docs is accepted.
    let intake = example("document-intake.json");
    let stored = cluster
        .cli_ok(
            follower,
            &["flow", "put", intake.to_str().unwrap(), "--json"],
        )
        .unwrap();
    let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(
        (
            stored["name"].as_str(),
            stored["version"].as_u64(),
            stored["created"].as_bool()
        ),
        (Some("document-intake"), Some(1), Some(true))
    );

    let mut client = cluster.client(follower).await.unwrap();
    let put = |definition: String| api::PutFlowRequest {
        definition: definition.into_bytes(),
    };
    let v1 = client
        .flows
        .put(put(three_step("noop")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((v1.version, v1.created), (1, true));
    // Same definition, other whitespace and key order: same version.
    let reordered =
        r#"{"steps":[{"next":"b","input":"input","block":"noop","type":"task","id":"a"},
        {"input":"steps.a.output","id":"b","type":"task","block":"noop","next":"c"},
        {"block":"noop","type":"task","id":"c","input":"steps.b.output"}],"name":"chain"}"#
            .to_string();
    let again = client.flows.put(put(reordered)).await.unwrap().into_inner();
    assert_eq!(
        (again.version, again.created, again.hash.as_str()),
        (1, false, v1.hash.as_str())
    );
    // A changed definition gets the next version; the old one is untouched.
    let v2 = client
        .flows
        .put(put(three_step("other")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((v2.version, v2.created), (2, true));

    // A start through another node right after the put runs v2 (the
    // version is resolved where the start applies); a pinned start runs
    // its version; an unknown flow or version is NotFound, named.
    let other = cluster
        .running_ids()
        .into_iter()
        .find(|id| *id != follower)
        .unwrap();
    let mut starter = cluster.client(other).await.unwrap();
    let start = |flow: &str, version: u64| api::StartRunRequest {
        flow: flow.into(),
        version,
        input: b"{}".to_vec(),
        ..Default::default()
    };
    assert_eq!(
        starter
            .runs
            .start(start("chain", 0))
            .await
            .unwrap()
            .into_inner()
            .version,
        2
    );
    assert_eq!(
        starter
            .runs
            .start(start("chain", 1))
            .await
            .unwrap()
            .into_inner()
            .version,
        1
    );
    let unknown = starter.runs.start(start("nope", 0)).await.unwrap_err();
    assert_eq!(
        (unknown.code(), unknown.message()),
        (tonic::Code::NotFound, r#"not found: no flow named "nope""#)
    );
    let unknown = starter.runs.start(start("chain", 9)).await.unwrap_err();
    assert_eq!(
        (unknown.code(), unknown.message()),
        (
            tonic::Code::NotFound,
            r#"not found: flow "chain" has no version 9"#
        )
    );

    for node in [1, 2, 3] {
        let mut client = cluster.client(node).await.unwrap();
        let request = api::GetFlowRequest {
            name: "chain".into(),
            version: 1,
            consistency: 0,
        };
        let old = client.flows.get(request).await.unwrap().into_inner();
        assert!(
            String::from_utf8_lossy(&old.definition).contains("\"noop\""),
            "node {node} serves a changed v1"
        );
        let request = api::GetFlowRequest {
            name: "chain".into(),
            version: 0,
            consistency: 0,
        };
        assert_eq!(
            client
                .flows
                .get(request)
                .await
                .unwrap()
                .into_inner()
                .version,
            2
        );
    }
    let listed = cluster.cli_ok(leader, &["flow", "list", "--json"]).unwrap();
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let names: Vec<&str> = listed["flows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["chain", "document-intake"]);
    let versions = cluster
        .cli_ok(follower, &["flow", "versions", "chain"])
        .unwrap();
    assert!(
        versions.contains("VERSION") && versions.lines().count() == 3,
        "{versions}"
    );

    let missing = client
        .flows
        .get(api::GetFlowRequest {
            name: "chain".into(),
            version: 9,
            consistency: 0,
        })
        .await;
    assert_eq!(missing.unwrap_err().code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_definitions_are_refused_with_every_problem_and_store_nothing() {
    let cluster = TestCluster::start(ClusterOptions::new(BINARY, 1))
        .await
        .unwrap();
    let mut client = cluster.client(1).await.unwrap();
    let bad = r#"{"name": "broken", "steps": [
        {"id": "route", "type": "decision", "cases": [{"when": "steps.classify.output.score >", "next": "reveiw"}], "default": "done"},
        {"id": "done", "type": "teleport"}
    ]}"#;
    let refused = client
        .flows
        .put(api::PutFlowRequest {
            definition: bad.as_bytes().to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let message = refused.message();
    assert!(
        message.contains("$.steps[0].cases[0].next") && message.contains("reveiw"),
        "{message}"
    );
    assert!(message.contains("$.steps[0].cases[0].when"), "{message}");
    assert!(
        message.contains("$.steps[1].type") && message.contains("teleport"),
        "{message}"
    );

    let malformed = client
        .flows
        .put(api::PutFlowRequest {
            definition: b"{\"name\": ".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(malformed.code(), tonic::Code::InvalidArgument);
    assert!(
        malformed.message().contains("line 1"),
        "{}",
        malformed.message()
    );

    let subflow = r#"{"name": "parent", "steps": [{"id": "child", "type": "subflow", "flow": "absent", "version": 1, "input": "input"}]}"#;
    let refused = client
        .flows
        .put(api::PutFlowRequest {
            definition: subflow.as_bytes().to_vec(),
        })
        .await
        .unwrap_err();
    assert!(
        refused.message().contains("$.steps[0]") && refused.message().contains("absent"),
        "{}",
        refused.message()
    );

    let listed = client
        .flows
        .list(api::ListFlowsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.flows.is_empty(),
        "a refused definition was stored: {listed:?}"
    );

    let output = cluster
        .cli(1, &["flow", "put", "/nonexistent/flow.json"])
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/flow.json"));
}
