//! Honest tools under faults: the CLI fails over to the next endpoint, a
//! watch says when its stream was lost (and `--follow` goes on elsewhere),
//! and a leader with a follower down does not log every read round.
//! Real `floe` processes on loopback, driven through the CLI.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use floe_harness::{ClusterOptions, TestCluster};

const BINARY: &str = env!("CARGO_BIN_EXE_floe");
const WAIT: Duration = Duration::from_secs(30);

/// A run that waits on a timer, so it is still running while a node stops.
const HOLD_FLOW: &str =
    r#"{"name": "hold", "steps": [{"id": "pause", "type": "wait", "duration_ms": 8000}]}"#;

fn floe(cluster: &TestCluster, endpoints: &[u64], args: &[&str]) -> Command {
    let endpoints: Vec<String> = endpoints
        .iter()
        .map(|id| cluster.node(*id).unwrap().api_addr.clone())
        .collect();
    let mut command = Command::new(BINARY);
    command
        .args(args)
        .arg("--endpoint")
        .arg(endpoints.join(","))
        .env("FLOE_CA", cluster.client_dir.join("ca.pem"))
        .env("FLOE_CERT", cluster.client_dir.join("client.pem"))
        .env("FLOE_KEY", cluster.client_dir.join("client-key.pem"))
        .stdin(Stdio::null());
    command
}

fn run_floe(cluster: &TestCluster, endpoints: &[u64], args: &[&str]) -> Output {
    floe(cluster, endpoints, args).output().unwrap()
}

fn floe_ok(cluster: &TestCluster, endpoints: &[u64], args: &[&str]) -> String {
    let output = run_floe(cluster, endpoints, args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "floe {args:?} via {endpoints:?} failed: {stderr}"
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// `floe run watch` in the background, its output going to files.
fn spawn_watch(
    cluster: &TestCluster,
    endpoints: &[u64],
    run_id: &str,
    follow: bool,
    name: &str,
) -> Child {
    let stdout = std::fs::File::create(cluster.dir.join(format!("{name}.out"))).unwrap();
    let stderr = std::fs::File::create(cluster.dir.join(format!("{name}.err"))).unwrap();
    let mut args = vec!["run", "watch", run_id];
    if follow {
        args.push("--follow");
    }
    floe(cluster, endpoints, &args)
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

async fn wait_for_text(path: &Path, text: &str) {
    let deadline = Instant::now() + WAIT;
    while !read(path).contains(text) {
        assert!(
            Instant::now() < deadline,
            "{} never showed {text:?}: {}",
            path.display(),
            read(path)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_exit(child: &mut Child, what: &str) -> i32 {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not exit within {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_tells_a_lost_stream_and_follow_goes_on_and_the_cli_fails_over() {
    let mut cluster = TestCluster::start(ClusterOptions::new(BINARY, 3))
        .await
        .unwrap();
    let leader = cluster.wait_leader(WAIT).await.unwrap();
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let (stopped, other) = (followers[0], followers[1]);
    let flow = cluster.dir.join("hold.json");
    std::fs::write(&flow, HOLD_FLOW).unwrap();
    floe_ok(
        &cluster,
        &[leader],
        &["flow", "put", flow.to_str().unwrap()],
    );
    let run_id = floe_ok(&cluster, &[leader], &["run", "start", "hold"]);

    // Two watches through the node about to stop: one plain, one following.
    let mut plain = spawn_watch(&cluster, &[stopped], &run_id, false, "plain");
    let mut following = spawn_watch(&cluster, &[stopped, other], &run_id, true, "following");
    for name in ["plain", "following"] {
        wait_for_text(
            &cluster.dir.join(format!("{name}.out")),
            "step pause started",
        )
        .await;
    }
    cluster
        .stop(stopped, Duration::from_secs(15))
        .await
        .unwrap();

    let code = wait_exit(&mut plain, "plain watch").await;
    let stderr = read(&cluster.dir.join("plain.err"));
    assert_eq!(code, 3, "a lost stream is not the run's end: {stderr}");
    assert!(
        stderr.contains(&format!("node {stopped} is shutting down")),
        "{stderr}"
    );
    assert!(!read(&cluster.dir.join("plain.out")).contains("run completed"));

    let code = wait_exit(&mut following, "following watch").await;
    let stdout = read(&cluster.dir.join("following.out"));
    let stderr = read(&cluster.dir.join("following.err"));
    assert_eq!(code, 0, "the followed run completed: {stdout}\n{stderr}");
    assert!(
        stderr.contains("following through another endpoint"),
        "{stderr}"
    );
    // The second stream replays the history; nothing is printed twice.
    assert_eq!(stdout.matches("step pause started").count(), 1, "{stdout}");
    assert_eq!(stdout.matches("run completed").count(), 1, "{stdout}");

    // The first endpoint is down: the next one answers reads and writes.
    let all = [stopped, other, leader];
    floe_ok(&cluster, &all, &["kv", "put", "site", "north"]);
    for _ in 0..5 {
        assert!(floe_ok(&cluster, &all, &["flow", "get", "hold"]).contains("pause"));
    }
    let keyed = floe_ok(
        &cluster,
        &all,
        &["run", "start", "hold", "--idempotency-key", "k1"],
    );
    assert_eq!(
        floe_ok(
            &cluster,
            &all,
            &["run", "start", "hold", "--idempotency-key", "k1"]
        ),
        keyed
    );
    // Read rounds that reach their quorum are not failures in the leader's log.
    let log = read(&cluster.node(leader).unwrap().log_path);
    assert!(
        !log.contains("timeout while confirming leadership"),
        "{log}"
    );

    // A node that is up but knows no leader refuses; the call goes on to the next endpoint.
    cluster.add_node_files(4).unwrap();
    cluster.spawn(4).unwrap();
    cluster.wait_http_up(4, WAIT).await.unwrap();
    let refused = run_floe(&cluster, &[4], &["kv", "get", "site"]);
    let reason = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{reason}");
    assert!(reason.contains("no leader known to node 4"), "{reason}");
    assert_eq!(
        floe_ok(&cluster, &[4, other], &["kv", "get", "site"]),
        "north"
    );
    floe_ok(&cluster, &[4, other], &["kv", "put", "site", "south"]);
    let started = floe_ok(&cluster, &[4, leader], &["run", "start", "hold"]);
    assert!(!started.is_empty() && started != keyed);
    assert_eq!(
        floe_ok(&cluster, &[4, leader], &["kv", "get", "site"]),
        "south"
    );
}
