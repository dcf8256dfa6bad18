//! Black-box cluster tests: real `floe` processes on loopback, driven through
//! the gRPC API and the CLI. Run one at a time (each starts several nodes).

use std::time::Duration;

use floe_harness::{ClusterOptions, Formation, TestCluster};
use floe_node::api;

const BINARY: &str = env!("CARGO_BIN_EXE_floe");
const WAIT: Duration = Duration::from_secs(30);

fn options(nodes: u64) -> ClusterOptions {
    ClusterOptions::new(BINARY, nodes)
}

async fn put(cluster: &TestCluster, via: u64, key: &str, value: &str) -> anyhow::Result<u64> {
    let mut client = cluster.client(via).await?;
    let reply = client
        .kv
        .put(api::PutRequest {
            key: key.into(),
            value: value.as_bytes().to_vec(),
        })
        .await?;
    Ok(reply.into_inner().revision)
}

async fn get(
    cluster: &TestCluster,
    via: u64,
    key: &str,
    local: bool,
) -> anyhow::Result<Option<String>> {
    let mut client = cluster.client(via).await?;
    let consistency = if local {
        api::ReadConsistency::Local
    } else {
        api::ReadConsistency::Linearizable
    } as i32;
    let reply = client
        .kv
        .get(api::GetRequest {
            key: key.into(),
            consistency,
        })
        .await?
        .into_inner();
    Ok(reply
        .found
        .then(|| String::from_utf8_lossy(&reply.value).to_string()))
}

/// Retries a write until it succeeds or the deadline passes (elections in flight).
async fn put_eventually(cluster: &TestCluster, via: u64, key: &str, value: &str) -> u64 {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match put(cluster, via, key, value).await {
            Ok(revision) => return revision,
            Err(err) if std::time::Instant::now() < deadline => {
                eprintln!("retrying put {key}: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("put {key} via node {via} never succeeded: {err}"),
        }
    }
}

/// Polls node `id`'s local (unconfirmed) read until it sees `value`.
async fn wait_local_value(cluster: &TestCluster, id: u64, key: &str, value: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Ok(Some(seen)) = get(cluster, id, key, true).await {
            if seen == value {
                return;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node {id} never applied {key}={value}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn follower_of(cluster: &TestCluster, leader: u64) -> u64 {
    cluster
        .running_ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower is running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_keeps_acknowledged_writes_and_restarted_node_catches_up() {
    let mut cluster = TestCluster::start(options(3)).await.unwrap();
    let leader = cluster.wait_leader(WAIT).await.unwrap();
    let follower = follower_of(&cluster, leader);

    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let key = format!("before/{i:03}");
        put(&cluster, follower, &key, &format!("v{i}"))
            .await
            .unwrap();
        acknowledged.push((key, format!("v{i}")));
    }

    cluster.kill(leader).unwrap();
    let new_leader = cluster.wait_leader(WAIT).await.unwrap();
    assert_ne!(new_leader, leader, "a killed node cannot stay leader");

    for (key, value) in &acknowledged {
        assert_eq!(
            get(&cluster, new_leader, key, false)
                .await
                .unwrap()
                .as_deref(),
            Some(value.as_str()),
            "{key} lost"
        );
    }
    let survivor = follower_of(&cluster, new_leader);
    put_eventually(&cluster, survivor, "after/failover", "yes").await;
    assert_eq!(
        get(&cluster, survivor, "after/failover", false)
            .await
            .unwrap()
            .as_deref(),
        Some("yes")
    );

    cluster.spawn(leader).unwrap();
    cluster.wait_ready(&[leader], WAIT).await.unwrap();
    wait_local_value(&cluster, leader, "after/failover", "yes").await;
    for (key, value) in &acknowledged {
        assert_eq!(
            get(&cluster, leader, key, true).await.unwrap().as_deref(),
            Some(value.as_str())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_down_past_log_purge_catches_up_by_snapshot() {
    let mut opts = options(3);
    opts.overrides = vec![
        "raft.snapshot_after_entries=40".into(),
        "raft.keep_entries_after_snapshot=5".into(),
    ];
    let mut cluster = TestCluster::start(opts).await.unwrap();
    let leader = cluster.wait_leader(WAIT).await.unwrap();
    let lagging = follower_of(&cluster, leader);
    cluster.kill(lagging).unwrap();

    for i in 0..150 {
        put_eventually(
            &cluster,
            leader,
            &format!("bulk/{i:04}"),
            &format!("value-{i}"),
        )
        .await;
    }
    // The leader must have purged entries the stopped node still needs.
    let deadline = std::time::Instant::now() + WAIT;
    while cluster
        .metric(leader, "floe_raft_purged_index")
        .await
        .unwrap()
        < 50.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "leader never purged its log"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    cluster.spawn(lagging).unwrap();
    cluster.wait_ready(&[lagging], WAIT).await.unwrap();
    wait_local_value(&cluster, lagging, "bulk/0149", "value-149").await;
    assert_eq!(
        get(&cluster, lagging, "bulk/0000", true)
            .await
            .unwrap()
            .as_deref(),
        Some("value-0")
    );
    assert!(
        cluster
            .metric(lagging, "floe_raft_snapshot_index")
            .await
            .unwrap()
            > 0.0,
        "the lagging node caught up without installing a snapshot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_every_node_keeps_state_without_manual_steps() {
    let mut cluster = TestCluster::start(options(3)).await.unwrap();
    let leader = cluster.wait_leader(WAIT).await.unwrap();
    for i in 0..30 {
        put(&cluster, leader, &format!("k{i}"), &format!("{i}"))
            .await
            .unwrap();
    }
    for id in [1, 2, 3] {
        cluster.kill(id).unwrap();
    }
    for id in [1, 2, 3] {
        cluster.spawn(id).unwrap();
    }
    cluster.wait_ready(&[1, 2, 3], WAIT).await.unwrap();
    let leader = cluster.wait_leader(WAIT).await.unwrap();
    for i in 0..30 {
        assert_eq!(
            get(&cluster, leader, &format!("k{i}"), false)
                .await
                .unwrap(),
            Some(i.to_string())
        );
    }
    put_eventually(&cluster, leader, "after/restart", "ok").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_refuses_writes_and_linearizable_reads() {
    let mut cluster = TestCluster::start(options(3)).await.unwrap();
    let leader = cluster.wait_leader(WAIT).await.unwrap();
    put(&cluster, leader, "settled", "old").await.unwrap();
    let survivor = follower_of(&cluster, leader);
    // A follower learns that an entry committed only from the leader's next
    // message; killing the leader first could leave "settled" unapplied here.
    wait_local_value(&cluster, survivor, "settled", "old").await;
    for id in [1, 2, 3] {
        if id != survivor {
            cluster.kill(id).unwrap();
        }
    }

    let mut client = cluster.client(survivor).await.unwrap();
    let write = client
        .kv
        .put(api::PutRequest {
            key: "minority".into(),
            value: b"x".to_vec(),
        })
        .await;
    let status = write.expect_err("a minority accepted a write");
    assert!(
        matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
        ),
        "unexpected code {status:?}"
    );
    assert!(
        status.message().contains("leader")
            || status.message().contains("quorum")
            || status.message().contains("unreachable"),
        "error does not explain the refusal: {}",
        status.message()
    );

    let read = client
        .kv
        .get(api::GetRequest {
            key: "settled".into(),
            consistency: api::ReadConsistency::Linearizable as i32,
        })
        .await;
    assert!(
        read.is_err(),
        "a minority served a linearizable read: {read:?}"
    );
    // An explicitly stale read is still served from the node's own state.
    assert_eq!(
        get(&cluster, survivor, "settled", true)
            .await
            .unwrap()
            .as_deref(),
        Some("old")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_join_remove_and_a_removed_id_is_never_reused() {
    let mut opts = options(3);
    opts.formation = Formation::InitAndJoin;
    let cluster = TestCluster::start(opts).await.unwrap();
    let status = cluster.status(1).await.unwrap();
    assert_eq!(
        status
            .nodes
            .iter()
            .filter(|n| n.membership == "voter")
            .count(),
        3,
        "{status:?}"
    );

    let json = cluster.cli_ok(2, &["cluster", "status", "--json"]).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed["nodes"].as_array().unwrap().len(), 3);
    assert!(parsed["leader"].as_u64().is_some());
    let table = cluster.cli_ok(2, &["cluster", "status"]).unwrap();
    assert!(
        table.contains("NODE") && table.contains("leader"),
        "{table}"
    );

    cluster.cli_ok(2, &["cluster", "remove", "3"]).unwrap();
    let status = cluster.status(1).await.unwrap();
    assert!(
        status.nodes.iter().all(|n| n.node_id != 3),
        "node 3 still a member: {status:?}"
    );

    let raft_addr = cluster.node(3).unwrap().raft_addr.clone();
    let output = cluster
        .cli(
            1,
            &[
                "cluster",
                "join",
                "--node-id",
                "3",
                "--raft-addr",
                &raft_addr,
            ],
        )
        .unwrap();
    assert!(!output.status.success(), "a removed id was accepted again");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("node id 3") && stderr.contains("never reused"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_cli_put_get_cas_delete_list() {
    let cluster = TestCluster::start(options(3)).await.unwrap();
    cluster
        .cli_ok(2, &["kv", "put", "site/name", "north"])
        .unwrap();
    assert_eq!(
        cluster
            .cli_ok(3, &["kv", "get", "site/name"])
            .unwrap()
            .trim(),
        "north"
    );

    let swapped = cluster
        .cli_ok(
            1,
            &[
                "kv",
                "cas",
                "site/name",
                "--expect",
                "north",
                "--new",
                "south",
                "--json",
            ],
        )
        .unwrap();
    let swapped: serde_json::Value = serde_json::from_str(&swapped).unwrap();
    assert_eq!(swapped["succeeded"], true);
    let refused = cluster
        .cli(
            1,
            &[
                "kv",
                "cas",
                "site/name",
                "--expect",
                "north",
                "--new",
                "east",
            ],
        )
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("\"south\""));
    let create = cluster
        .cli_ok(1, &["kv", "cas", "site/new", "--new", "1", "--json"])
        .unwrap();
    assert!(create.contains("\"succeeded\":true"), "{create}");

    cluster.cli_ok(3, &["kv", "put", "site/zone", "a"]).unwrap();
    let listed = cluster
        .cli_ok(1, &["kv", "list", "site/", "--json"])
        .unwrap();
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let keys: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, vec!["site/name", "site/new", "site/zone"]);
    let page = cluster
        .cli_ok(
            1,
            &[
                "kv",
                "list",
                "site/",
                "--limit",
                "1",
                "--start-after",
                "site/name",
                "--json",
            ],
        )
        .unwrap();
    let page: serde_json::Value = serde_json::from_str(&page).unwrap();
    assert_eq!(page["items"][0]["key"], "site/new");
    assert_eq!(page["more"], true);

    cluster.cli_ok(2, &["kv", "delete", "site/zone"]).unwrap();
    let missing = cluster.cli(1, &["kv", "get", "site/zone"]).unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));

    let empty_key = cluster.cli(1, &["kv", "put", "", "x"]).unwrap();
    assert!(String::from_utf8_lossy(&empty_key.stderr).contains("key is empty"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_certificate_from_another_ca_is_refused() {
    let mut cluster = TestCluster::start(options(3)).await.unwrap();
    // A fourth node whose certificates come from a different CA.
    let rogue_ca = cluster.dir.join("rogue-ca");
    let rogue_certs = cluster.dir.join("node4/certs");
    for args in [
        vec!["cert", "create-ca", "--out", rogue_ca.to_str().unwrap()],
        vec![
            "cert",
            "create-node",
            "--ca-dir",
            rogue_ca.to_str().unwrap(),
            "--node-id",
            "4",
            "--san",
            "127.0.0.1",
            "--out",
            rogue_certs.to_str().unwrap(),
        ],
    ] {
        let status = std::process::Command::new(BINARY)
            .args(&args)
            .status()
            .unwrap();
        assert!(status.success());
    }
    cluster.add_node_files(4).unwrap();
    cluster.spawn(4).unwrap();
    cluster.wait_http_up(4, WAIT).await.unwrap();

    let raft_addr = cluster.node(4).unwrap().raft_addr.clone();
    let output = cluster
        .cli(
            1,
            &[
                "cluster",
                "join",
                "--node-id",
                "4",
                "--raft-addr",
                &raft_addr,
            ],
        )
        .unwrap();
    assert!(!output.status.success(), "a node from another CA joined");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("node 4"), "{stderr}");
    let status = cluster.status(1).await.unwrap();
    assert!(status.nodes.iter().all(|n| n.node_id != 4));
    // The leader, which tried to reach the rogue node, logged why the handshake failed.
    let log: String = [1, 2, 3]
        .iter()
        .map(|id| std::fs::read_to_string(&cluster.node(*id).unwrap().log_path).unwrap())
        .collect();
    let refusal = log
        .lines()
        .find(|line| line.contains("target=4"))
        .unwrap_or_default()
        .to_lowercase();
    assert!(
        refusal.contains("certificate") || refusal.contains("unknownissuer"),
        "no refusal logged: {refusal}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_and_foreign_data_dirs_are_refused_at_start() {
    let cluster = TestCluster::start(options(1)).await.unwrap();
    let node = cluster.node(1).unwrap();

    let bad = cluster.dir.join("bad.toml");
    std::fs::write(&bad, "node_id = 1\n[raft]\nheartbeat_interval = 50\n").unwrap();
    let output = std::process::Command::new(BINARY)
        .args(["serve", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("heartbeat_interval"), "{stderr}");

    let output = std::process::Command::new(BINARY)
        .args(["serve", "--config", node.config_path.to_str().unwrap()])
        .env("FLOE_RAFT_SNAPSHOT_TIMEOUT_MS", "soon")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("raft.snapshot_timeout_ms")
            && stderr.contains("FLOE_RAFT_SNAPSHOT_TIMEOUT_MS"),
        "{stderr}"
    );

    // The availability settings are bounded; the running node is untouched.
    for (key, setting) in [
        ("shutdown_grace_ms", "shutdown_grace_ms=600000"),
        (
            "storage.min_free_bytes",
            "storage.min_free_bytes=99999999999999",
        ),
        (
            "raft.election_timeout_min_ms",
            "raft.election_timeout_min_ms=100",
        ),
    ] {
        let output = std::process::Command::new(BINARY)
            .args([
                "serve",
                "--config",
                node.config_path.to_str().unwrap(),
                "--set",
                setting,
            ])
            .output()
            .unwrap();
        assert!(!output.status.success(), "{setting} accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(key), "{setting}: {stderr}");
    }

    // Node 1's data dir started as node 2: refused, naming both ids.
    let copy = cluster.dir.join("copied-data");
    cluster_copy(&node.data_dir(), &copy).unwrap();
    let output = std::process::Command::new(BINARY)
        .args([
            "serve",
            "--config",
            node.config_path.to_str().unwrap(),
            "--node-id",
            "2",
            "--set",
            "bootstrap.expect=0",
        ])
        .args([
            "--data-dir",
            copy.to_str().unwrap(),
            "--raft-addr",
            "127.0.0.1:0",
            "--api-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("node") && stderr.contains('1') && stderr.contains('2'),
        "{stderr}"
    );

    // The same data dir under another cluster's CA: refused.
    let other_ca = cluster.dir.join("other-ca");
    let other_certs = cluster.dir.join("other-certs");
    for args in [
        vec!["cert", "create-ca", "--out", other_ca.to_str().unwrap()],
        vec![
            "cert",
            "create-node",
            "--ca-dir",
            other_ca.to_str().unwrap(),
            "--node-id",
            "1",
            "--out",
            other_certs.to_str().unwrap(),
        ],
    ] {
        assert!(std::process::Command::new(BINARY)
            .args(&args)
            .status()
            .unwrap()
            .success());
    }
    let output = std::process::Command::new(BINARY)
        .args(["serve", "--config", node.config_path.to_str().unwrap()])
        .args([
            "--data-dir",
            copy.to_str().unwrap(),
            "--raft-addr",
            "127.0.0.1:0",
            "--api-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .args([
            "--set",
            &format!("tls.ca={}", other_certs.join("ca.pem").display()),
        ])
        .args([
            "--set",
            &format!("tls.cert={}", other_certs.join("node.pem").display()),
        ])
        .args([
            "--set",
            &format!("tls.key={}", other_certs.join("node-key.pem").display()),
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cluster"), "{stderr}");
}

/// Copies a live node's data dir (sled tolerates a crash-consistent copy).
fn cluster_copy(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            cluster_copy(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// A follower sends the writes waiting on it to the leader together; each
/// caller must still get its own write's answer, refusals included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_through_a_follower_each_get_their_own_answer() {
    let cluster = TestCluster::start(options(3)).await.unwrap();
    let leader = cluster.wait_leader(WAIT).await.unwrap();
    let via = follower_of(&cluster, leader);
    for index in 0..8 {
        put(
            &cluster,
            via,
            &format!("seed/{index}"),
            &format!("value-{index}"),
        )
        .await
        .unwrap();
    }
    let client = cluster.client(via).await.unwrap();
    let mut writes = tokio::task::JoinSet::new();
    for index in 0..96u32 {
        let mut client = client.clone();
        writes.spawn(async move {
            if index % 12 == 0 {
                // Refused: the stored value is not the one expected.
                let key = format!("seed/{}", index / 12);
                let reply = client
                    .kv
                    .cas(api::CasRequest {
                        key: key.clone(),
                        expected: Some(b"wrong".to_vec()),
                        new_value: Some(b"x".to_vec()),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                (
                    key,
                    None,
                    Some((
                        reply.succeeded,
                        String::from_utf8_lossy(&reply.current).to_string(),
                    )),
                )
            } else {
                let key = format!("burst/{index}");
                let reply = client
                    .kv
                    .put(api::PutRequest {
                        key: key.clone(),
                        value: format!("v{index}").into_bytes(),
                    })
                    .await
                    .unwrap();
                (key, Some(reply.into_inner().revision), None)
            }
        });
    }
    let mut written = 0;
    while let Some(outcome) = writes.join_next().await {
        let (key, revision, refused) = outcome.unwrap();
        if let Some((succeeded, current)) = refused {
            let index: u32 = key.trim_start_matches("seed/").parse().unwrap();
            assert!(
                !succeeded,
                "a CAS expecting the wrong value succeeded on {key}"
            );
            assert_eq!(
                current,
                format!("value-{index}"),
                "the refusal for {key} names another key's value"
            );
            continue;
        }
        // Writes in one Raft entry share its index as their revision.
        let revision = revision.unwrap();
        written += 1;
        let mut reader = cluster.client(leader).await.unwrap();
        let stored = reader
            .kv
            .get(api::GetRequest {
                key: key.clone(),
                consistency: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let index = key.trim_start_matches("burst/");
        assert_eq!(stored.value, format!("v{index}").into_bytes(), "{key}");
        assert_eq!(
            stored.revision, revision,
            "the answer for {key} carries another write's revision"
        );
    }
    assert_eq!(written, 88);
    let forwarded = cluster
        .metric(via, "floe_api_forwarded_writes_total")
        .await
        .unwrap();
    let forwards = cluster
        .metric(via, "floe_api_forwards_total")
        .await
        .unwrap();
    assert!(
        forwarded >= 104.0,
        "the follower forwarded {forwarded} writes"
    );
    assert!(
        forwards < forwarded,
        "{forwarded} writes took {forwards} forwards: none travelled together"
    );
}
