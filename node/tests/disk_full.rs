//! A node whose data dir fills up or turns read-only stays up, refuses
//! writes with an error naming its data dir, and carries on by itself once
//! the disk takes writes again; no acknowledged write is lost.
//!
//! Every node's data dir is a small tmpfs (needs root to mount: without it
//! each test says why and returns). Run one at a time:
//! `cargo test -p floe-node --test disk_full -- --test-threads=1`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use floe_api::client::FloeClient;
use floe_harness::{http_get, ClusterOptions, TestCluster};
use floe_node::api;
use tokio_util::sync::CancellationToken;

const BINARY: &str = env!("CARGO_BIN_EXE_floe");
const TMPFS_MIB: u64 = 64;
/// `storage.min_free_bytes` of the nodes under test.
const FLOOR: u64 = 16 * 1024 * 1024;
const WAIT: Duration = Duration::from_secs(30);
const BALLAST: &str = "test-ballast";

/// Three nodes on tmpfs data dirs. Field order is drop order: the nodes
/// stop before their filesystems are unmounted, and the directory goes last.
struct DiskCluster {
    cluster: TestCluster,
    mounts: Mounts,
    _dir: tempfile::TempDir,
}

/// Mount points, unmounted (lazily) in reverse order when dropped.
struct Mounts(Vec<PathBuf>);

impl Drop for Mounts {
    fn drop(&mut self) {
        for path in self.0.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(path).status();
        }
    }
}

fn mount(args: &[&str], path: &Path) -> Result<(), String> {
    let output = Command::new("mount")
        .args(args)
        .arg(path)
        .output()
        .map_err(|error| format!("running mount: {error}"))?;
    if !output.status.success() {
        return Err(format!(
            "mount {} {}: {}",
            args.join(" "),
            path.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(())
}

/// Starts the cluster, or says why it cannot (no root) and returns `None`.
/// `node_overrides` apply to one node on top of the shared floor.
async fn start(node_overrides: &[(u64, &str)]) -> Option<DiskCluster> {
    let dir = tempfile::Builder::new()
        .prefix("floe-disk-")
        .tempdir()
        .unwrap();
    let mut options = ClusterOptions::new(BINARY, 3);
    options.base_dir = Some(dir.path().to_path_buf());
    options.overrides = vec![format!("storage.min_free_bytes={FLOOR}")];
    let mut cluster = TestCluster::prepare(options).unwrap();
    let mut mounts = Mounts(Vec::new());
    for id in 1..=3 {
        let data_dir = cluster.node(id).unwrap().data_dir();
        std::fs::create_dir_all(&data_dir).unwrap();
        if let Err(why) = mount(
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={TMPFS_MIB}m"),
                "floe-test",
            ],
            &data_dir,
        ) {
            eprintln!("skipping: cannot mount a tmpfs for the data dirs (root needed): {why}");
            return None;
        }
        mounts.0.push(data_dir);
    }
    for (id, assignment) in node_overrides {
        cluster.set_node_overrides(*id, vec![assignment.to_string()]);
    }
    for id in 1..=3 {
        cluster.spawn(id).unwrap();
    }
    cluster.wait_ready(&[1, 2, 3], WAIT).await.unwrap();
    cluster.wait_leader(WAIT).await.unwrap();
    Some(DiskCluster {
        cluster,
        mounts,
        _dir: dir,
    })
}

fn free_bytes(path: &Path) -> u64 {
    let stat = rustix::fs::statvfs(path).unwrap();
    stat.f_bavail * stat.f_frsize
}

/// Leaves `leave_free` bytes free on `path`'s filesystem.
fn fill_leaving(path: &Path, leave_free: u64) {
    let size = free_bytes(path).saturating_sub(leave_free);
    let file = std::fs::File::create(path.join(BALLAST)).unwrap();
    // Real blocks, not a sparse file: tmpfs counts only written pages.
    write_ballast(&file, size);
    assert!(
        free_bytes(path) < FLOOR,
        "ballast left {} bytes free",
        free_bytes(path)
    );
}

/// Writes ballast until the filesystem is full (ENOSPC), at once.
fn fill_completely(path: &Path) {
    let file = std::fs::File::create(path.join(BALLAST)).unwrap();
    write_ballast(&file, u64::MAX);
}

fn write_ballast(mut file: &std::fs::File, size: u64) {
    use std::io::Write as _;
    let chunk = vec![1u8; 64 * 1024];
    let mut written = 0u64;
    // Bounded by the filesystem: 64 MiB in 64 KiB chunks.
    for _ in 0..(TMPFS_MIB * 16 + 16) {
        let length = (size - written).min(chunk.len() as u64) as usize;
        if length == 0 || file.write_all(&chunk[..length]).is_err() {
            break;
        }
        written += length as u64;
    }
}

fn free_ballast(path: &Path) {
    std::fs::remove_file(path.join(BALLAST)).unwrap();
}

async fn readiness(cluster: &TestCluster, id: u64) -> (u16, serde_json::Value) {
    let addr = &cluster.node(id).unwrap().http_addr;
    match http_get(addr, "/health/readyz").await {
        Ok((code, body)) => (code, serde_json::from_str(&body).unwrap_or_default()),
        Err(error) => (0, serde_json::json!({ "error": error.to_string() })),
    }
}

/// Polls until node `id`'s readiness is 503 with a reason containing `needle`.
async fn wait_unready(cluster: &TestCluster, id: u64, needle: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, body) = readiness(cluster, id).await;
        let reason = body["reason"].as_str().unwrap_or_default().to_string();
        if code == 503 && reason.contains(needle) {
            return reason;
        }
        assert!(
            Instant::now() < deadline,
            "node {id} did not report {needle:?}; last: {code} {body}; log: {}",
            cluster.log_tail(id, 30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A write through node `id` fails fast with Unavailable naming `data_dir`.
async fn assert_write_refused(cluster: &TestCluster, id: u64, data_dir: &Path) {
    let mut client = cluster.client(id).await.unwrap();
    let started = Instant::now();
    let put = client
        .kv
        .put(api::PutRequest {
            key: "refused".into(),
            value: b"x".to_vec(),
        })
        .await;
    let status = put.expect_err("a degraded node accepted a write");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains(&data_dir.display().to_string()),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("bytes") && status.message().contains("free"),
        "{}",
        status.message()
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refusal took {:?}",
        started.elapsed()
    );
}

/// A degraded node still answers local (possibly stale) reads.
async fn assert_local_read_served(cluster: &TestCluster, id: u64) {
    let mut client = cluster.client(id).await.unwrap();
    let request = api::GetRequest {
        key: "gradual/00000".into(),
        consistency: api::ReadConsistency::Local as i32,
    };
    let reply = client
        .kv
        .get(request)
        .await
        .expect("a degraded node refused a local read")
        .into_inner();
    assert!(
        reply.found && reply.value == b"gradual/00000",
        "node {id} lost the first write"
    );
}

/// A leader other than `not` that the other nodes agree on.
async fn wait_other_leader(cluster: &TestCluster, not: u64) -> u64 {
    let deadline = Instant::now() + WAIT;
    let others: Vec<u64> = (1..=3).filter(|id| *id != not).collect();
    loop {
        let mut leaders = BTreeSet::new();
        for id in &others {
            let (code, body) = readiness(cluster, *id).await;
            leaders.insert((code == 200).then(|| body["leader"].as_u64()).flatten());
        }
        if let [Some(leader)] = leaders.into_iter().collect::<Vec<_>>()[..] {
            if leader != not {
                return leader;
            }
        }
        assert!(
            Instant::now() < deadline,
            "nodes {others:?} elected no leader but {not}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Keys written in the background through whichever node takes them.
struct Writer {
    acknowledged: Arc<Mutex<Vec<String>>>,
    attempted: Arc<Mutex<BTreeSet<String>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(cluster: &TestCluster, prefix: &str) -> Writer {
        let options: Vec<_> = (1..=3)
            .map(|id| cluster.client_options(&[id]).unwrap())
            .collect();
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let attempted = Arc::new(Mutex::new(BTreeSet::new()));
        let stop = CancellationToken::new();
        let (acked, tried, stopped, prefix) = (
            acknowledged.clone(),
            attempted.clone(),
            stop.clone(),
            prefix.to_string(),
        );
        let task = tokio::spawn(async move {
            let mut via = 0;
            let mut index = 0;
            while !stopped.is_cancelled() {
                let key = format!("{prefix}/{index:05}");
                tried.lock().unwrap().insert(key.clone());
                let put = async {
                    let mut client = FloeClient::connect(&options[via]).await?;
                    client
                        .kv
                        .put(api::PutRequest {
                            key: key.clone(),
                            value: key.clone().into_bytes(),
                        })
                        .await?;
                    anyhow::Ok(())
                };
                match tokio::time::timeout(Duration::from_secs(3), put).await {
                    Ok(Ok(())) => {
                        acked.lock().unwrap().push(key);
                        index += 1;
                    }
                    // The same key again, elsewhere: a put is idempotent.
                    _ => via = (via + 1) % options.len(),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Writer {
            acknowledged,
            attempted,
            stop,
            task,
        }
    }

    /// Stops writing; returns the acknowledged and the attempted keys.
    async fn finish(self) -> (Vec<String>, BTreeSet<String>) {
        self.stop.cancel();
        self.task.await.unwrap();
        let acknowledged = self.acknowledged.lock().unwrap().clone();
        let attempted = self.attempted.lock().unwrap().clone();
        (acknowledged, attempted)
    }

    fn acknowledged_count(&self) -> usize {
        self.acknowledged.lock().unwrap().len()
    }
}

/// Linearizable reads through every node in turn, until dropped: a
/// leader's read confirmations must not keep a degraded leader in place.
struct Reader(CancellationToken);

impl Reader {
    fn start(cluster: &TestCluster) -> Reader {
        let options: Vec<_> = (1..=3)
            .map(|id| cluster.client_options(&[id]).unwrap())
            .collect();
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            for via in (0..options.len()).cycle() {
                if stopped.is_cancelled() {
                    return;
                }
                let read = async {
                    let mut client = FloeClient::connect(&options[via]).await?;
                    let consistency = api::ReadConsistency::Linearizable as i32;
                    client
                        .kv
                        .get(api::GetRequest {
                            key: "gradual/00000".into(),
                            consistency,
                        })
                        .await?;
                    anyhow::Ok(())
                };
                // Refusals are expected while a node is degraded.
                let _ = tokio::time::timeout(Duration::from_secs(3), read).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Reader(stop)
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// Waits until `count` more writes were acknowledged.
async fn wait_more_writes(writer: &Writer, count: usize) {
    let target = writer.acknowledged_count() + count;
    let deadline = Instant::now() + WAIT;
    while writer.acknowledged_count() < target {
        assert!(
            Instant::now() < deadline,
            "writes stalled at {}",
            writer.acknowledged_count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every node holds each acknowledged key once, with its value, and no key
/// that was never written; a recovered node catches up (local reads).
async fn assert_all_hold(
    cluster: &TestCluster,
    prefix: &str,
    acknowledged: &[String],
    attempted: &BTreeSet<String>,
) {
    assert!(!acknowledged.is_empty());
    for id in 1..=3 {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut client = cluster.client(id).await.unwrap();
            let request = api::ListRequest {
                prefix: format!("{prefix}/"),
                start_after: String::new(),
                limit: 10_000,
                consistency: api::ReadConsistency::Local as i32,
            };
            let items = client.kv.list(request).await.unwrap().into_inner().items;
            let keys: Vec<String> = items.iter().map(|item| item.key.clone()).collect();
            let distinct: BTreeSet<String> = keys.iter().cloned().collect();
            assert_eq!(distinct.len(), keys.len(), "node {id} lists a key twice");
            assert!(
                distinct.is_subset(attempted),
                "node {id} holds keys never written"
            );
            for item in &items {
                assert_eq!(
                    item.value,
                    item.key.as_bytes(),
                    "node {id}: wrong value for {}",
                    item.key
                );
            }
            let missing: Vec<&String> = acknowledged
                .iter()
                .filter(|key| !distinct.contains(*key))
                .collect();
            if missing.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} lacks {} acknowledged keys, e.g. {:?}",
                missing.len(),
                missing.first()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn follower_and_leader(cluster: &TestCluster) -> (u64, u64) {
    let leader = cluster.wait_leader(WAIT).await.unwrap();
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    (follower, leader)
}

/// A follower, then the leader, go under the floor: each refuses writes,
/// the cluster keeps writing (electing another leader), and each recovers
/// once the ballast is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_under_the_free_space_floor_refuses_writes_and_recovers() {
    let Some(disks) = start(&[]).await else {
        return;
    };
    let cluster = &disks.cluster;
    let writer = Writer::start(cluster, "gradual");
    wait_more_writes(&writer, 10).await;
    let _reader = Reader::start(cluster);

    let (follower, leader) = follower_and_leader(cluster).await;
    for (node, role) in [(follower, "follower"), (leader, "leader")] {
        eprintln!("filling the data dir of {role} {node}");
        let data_dir = cluster.node(node).unwrap().data_dir();
        fill_leaving(&data_dir, FLOOR / 2);
        let reason = wait_unready(cluster, node, "min_free_bytes").await;
        assert!(reason.contains(&data_dir.display().to_string()), "{reason}");
        assert_eq!(
            cluster.metric(node, "floe_storage_degraded").await.unwrap(),
            1.0
        );
        assert!(
            cluster
                .metric(node, "floe_storage_free_bytes")
                .await
                .unwrap()
                < FLOOR as f64
        );
        assert_write_refused(cluster, node, &data_dir).await;
        assert_local_read_served(cluster, node).await;
        if role == "leader" {
            let new_leader = wait_other_leader(cluster, node).await;
            eprintln!("node {new_leader} leads while {node} is degraded");
        }
        // The others still take writes.
        wait_more_writes(&writer, 10).await;

        free_ballast(&data_dir);
        cluster.wait_ready(&[node], WAIT).await.unwrap();
        assert_eq!(
            cluster.metric(node, "floe_storage_degraded").await.unwrap(),
            0.0
        );
        wait_more_writes(&writer, 10).await;
    }
    let (acknowledged, attempted) = writer.finish().await;
    assert_all_hold(cluster, "gradual", &acknowledged, &attempted).await;
    assert!(disks.cluster.running_ids().len() == 3);
}

/// A disk filled to the last byte at once, with no floor to stop writes
/// first: sled and the Raft core fail, the process stays up answering
/// health checks, and starts its node again once the disk is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_whose_disk_fills_at_once_stays_up_and_restarts_by_itself() {
    let Some(mut disks) = start(&[(3, "storage.min_free_bytes=0")]).await else {
        return;
    };
    let writer = Writer::start(&disks.cluster, "abrupt");
    wait_more_writes(&writer, 10).await;

    let data_dir = disks.cluster.node(3).unwrap().data_dir();
    fill_completely(&data_dir);
    wait_unready(&disks.cluster, 3, "data dir").await;
    let deadline = Instant::now() + WAIT;
    while !disks.cluster.log_tail(3, 200).contains("data dir failed") {
        assert!(
            Instant::now() < deadline,
            "node 3 never reported its failed data dir: {}",
            disks.cluster.log_tail(3, 40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = disks.cluster.log_tail(3, 200);
    let failed = log
        .lines()
        .find(|line| line.contains("data dir failed"))
        .unwrap_or_default();
    eprintln!("node 3 logged: {failed}");
    let reason = wait_unready(&disks.cluster, 3, "services stopped").await;
    assert!(reason.contains(&data_dir.display().to_string()), "{reason}");
    let addr = disks.cluster.node(3).unwrap().http_addr.clone();
    assert_eq!(http_get(&addr, "/health/livez").await.unwrap().0, 200);
    assert_eq!(
        disks
            .cluster
            .metric(3, "floe_storage_degraded")
            .await
            .unwrap(),
        1.0
    );
    assert_eq!(
        disks.cluster.exited(3).unwrap(),
        None,
        "node 3 exited on a full disk"
    );
    // The other two carry on.
    wait_more_writes(&writer, 10).await;

    free_ballast(&data_dir);
    disks.cluster.wait_ready(&[3], WAIT).await.unwrap();
    wait_more_writes(&writer, 10).await;
    let (acknowledged, attempted) = writer.finish().await;
    assert_all_hold(&disks.cluster, "abrupt", &acknowledged, &attempted).await;
    assert_eq!(disks.cluster.exited(3).unwrap(), None, "node 3 exited");
    assert!(disks.cluster.log_tail(3, 400).contains("starting the node"));
}

/// A data dir that turns read-only degrades the node like a full one.
///
/// `mount -o remount,ro` on the tmpfs itself is refused (EBUSY) while sled
/// holds its files open for writing, so the data dir gets a read-only bind
/// mount over it: statvfs there reports the read-only flag, as for a
/// filesystem the kernel remounted read-only after an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_whose_data_dir_turns_read_only_refuses_writes_and_recovers() {
    let Some(disks) = start(&[]).await else {
        return;
    };
    let cluster = &disks.cluster;
    let writer = Writer::start(cluster, "readonly");
    wait_more_writes(&writer, 10).await;

    let (follower, _) = follower_and_leader(cluster).await;
    let data_dir = cluster.node(follower).unwrap().data_dir();
    mount(&["--bind", &data_dir.display().to_string()], &data_dir).unwrap();
    let bind = Mounts(vec![data_dir.clone()]);
    mount(&["-o", "remount,bind,ro"], &data_dir).unwrap();
    let reason = wait_unready(cluster, follower, "read-only").await;
    assert!(reason.contains(&data_dir.display().to_string()), "{reason}");
    assert_eq!(
        cluster
            .metric(follower, "floe_storage_degraded")
            .await
            .unwrap(),
        1.0
    );
    assert_write_refused(cluster, follower, &data_dir).await;
    wait_more_writes(&writer, 10).await;

    mount(&["-o", "remount,bind,rw"], &data_dir).unwrap();
    drop(bind);
    cluster.wait_ready(&[follower], WAIT).await.unwrap();
    wait_more_writes(&writer, 10).await;
    let (acknowledged, attempted) = writer.finish().await;
    assert_all_hold(cluster, "readonly", &acknowledged, &attempted).await;
    assert_eq!(disks.mounts.0.len(), 3);
}
