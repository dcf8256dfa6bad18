//! Availability under faults, on real node processes: a leader that loses its
//! quorum says so and refuses at once; followers that restart rejoin without
//! deposing the leader; SIGTERM stops a node within its grace period and
//! the stopping node campaigns for nothing.

use std::time::{Duration, Instant};

use floe_harness::{ClusterOptions, TestCluster};
use floe_node::api;

const BINARY: &str = env!("CARGO_BIN_EXE_floe");
const WAIT: Duration = Duration::from_secs(30);

async fn put(cluster: &TestCluster, via: u64, key: &str) -> Result<(), tonic::Status> {
    let mut client = cluster
        .client(via)
        .await
        .map_err(|err| tonic::Status::unknown(err.to_string()))?;
    let request = api::PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
    };
    client.kv.put(request).await.map(|_| ())
}

async fn readiness(cluster: &TestCluster, id: u64) -> (u16, serde_json::Value) {
    let addr = cluster.node(id).unwrap().http_addr.clone();
    let (code, body) = floe_harness::http_get(&addr, "/health/readyz")
        .await
        .unwrap();
    (code, serde_json::from_str(&body).unwrap())
}

async fn term(cluster: &TestCluster, id: u64) -> u64 {
    cluster.metric(id, "floe_raft_term").await.unwrap() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_its_quorum_is_not_ready_and_refuses_at_once() {
    let mut cluster = TestCluster::start(ClusterOptions::new(BINARY, 3))
        .await
        .unwrap();
    let leader = cluster.wait_leader(WAIT).await.unwrap();
    put(&cluster, leader, "before").await.unwrap();
    let followers: Vec<u64> = cluster
        .running_ids()
        .into_iter()
        .filter(|id| *id != leader)
        .collect();
    for id in &followers {
        cluster.pause(*id).unwrap();
    }

    // Within about one election timeout the leader knows it has no quorum.
    let deadline = Instant::now() + WAIT;
    let reason = loop {
        let (code, body) = readiness(&cluster, leader).await;
        if code == 503 {
            break body["reason"].as_str().unwrap_or_default().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "leader {leader} stayed ready without a quorum: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(reason.contains("without a quorum"), "{reason}");

    // Writes and linearizable reads fail with Unavailable, well before the
    // 5 s request deadline they used to run into.
    let started = Instant::now();
    let refused = put(&cluster, leader, "during").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("cut off"),
        "{}",
        refused.message()
    );
    let mut client = cluster.client(leader).await.unwrap();
    let read = api::GetRequest {
        key: "before".into(),
        consistency: api::ReadConsistency::Linearizable as i32,
    };
    let refused_read = client.kv.get(read).await.unwrap_err();
    assert_eq!(
        refused_read.code(),
        tonic::Code::Unavailable,
        "{refused_read:?}"
    );
    assert!(
        refused_read.message().len() < 300,
        "short message: {}",
        refused_read.message()
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "refusals took {:?}",
        started.elapsed()
    );

    for id in &followers {
        cluster.resume(*id).unwrap();
    }
    let deadline = Instant::now() + WAIT;
    while put(&cluster, leader, "after").await.is_err() {
        assert!(
            Instant::now() < deadline,
            "writes never resumed after the followers came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster
        .wait_ready(&cluster.running_ids(), WAIT)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_followers_rejoin_without_deposing_the_leader() {
    let mut cluster = TestCluster::start(ClusterOptions::new(BINARY, 3))
        .await
        .unwrap();
    let leader = cluster.wait_leader(WAIT).await.unwrap();
    put(&cluster, leader, "warm").await.unwrap();
    let term_before = term(&cluster, leader).await;
    let followers: Vec<u64> = cluster
        .running_ids()
        .into_iter()
        .filter(|id| *id != leader)
        .collect();
    // Down long enough that the node's own election timer would have fired
    // on restart before the leader reached it (the old failure).
    for (round, follower) in followers.iter().cycle().take(4).enumerate() {
        if round % 2 == 0 {
            cluster.kill(*follower).unwrap();
        } else {
            cluster
                .stop(*follower, Duration::from_secs(10))
                .await
                .unwrap();
        }
        for i in 0..5 {
            put(&cluster, leader, &format!("down/{round}/{i}"))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1200)).await;
        cluster.spawn(*follower).unwrap();
        cluster.wait_ready(&[*follower], WAIT).await.unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            cluster.wait_leader(WAIT).await.unwrap(),
            leader,
            "round {round}: leader changed"
        );
        assert_eq!(
            term(&cluster, leader).await,
            term_before,
            "round {round}: the term rose"
        );
    }
    assert_eq!(
        cluster
            .metric(leader, "floe_raft_leader_changes_total")
            .await
            .unwrap(),
        1.0,
        "only the first election"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_node_within_its_grace_and_it_starts_no_election() {
    let mut cluster = TestCluster::start(ClusterOptions::new(BINARY, 3))
        .await
        .unwrap();
    let leader = cluster.wait_leader(WAIT).await.unwrap();
    let term_before = term(&cluster, leader).await;
    let follower = cluster
        .running_ids()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    for stopping in [follower, leader] {
        let started = Instant::now();
        // Default grace 1.5 s; the harness kills (and fails) after 5 s.
        cluster
            .stop(stopping, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "stop took {:?}",
            started.elapsed()
        );
        assert!(
            cluster.log_tail(stopping, 5).contains("node stopped"),
            "{}",
            cluster.log_tail(stopping, 5)
        );
        cluster.spawn(stopping).unwrap();
        cluster.wait_ready(&[stopping], WAIT).await.unwrap();
        if stopping == follower {
            // The follower's stop and restart left the leader and term alone.
            assert_eq!(cluster.wait_leader(WAIT).await.unwrap(), leader);
            assert_eq!(term(&cluster, leader).await, term_before);
        }
    }
    // The leader's stop cost at most one election (none when it was back
    // before the others' timeout and resumed from its stored vote).
    let leader_now = cluster.wait_leader(WAIT).await.unwrap();
    let term_now = term(&cluster, leader_now).await;
    assert!(
        term_now <= term_before + 1,
        "term {term_before} → {term_now}"
    );
}
