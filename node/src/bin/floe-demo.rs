//! `make demo`: a local three-node cluster as separate processes, driven
//! through the `floe` CLI the way an operator would.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use floe_node::harness::{ClusterOptions, TestCluster};

#[derive(Parser)]
#[command(about = "Run the floe demo on a local three-node cluster")]
struct Args {
    /// The `floe` binary to run.
    #[arg(long, default_value = "target/release/floe")]
    binary: PathBuf,
    /// Where certificates, configs, data and logs go (wiped first).
    #[arg(long, default_value = ".demo")]
    dir: PathBuf,
}

const WAIT: Duration = Duration::from_secs(30);

fn step(title: &str) {
    eprintln!("\n== {title}");
}

/// Runs a CLI command against node `id`, echoing it and its output.
fn floe(cluster: &TestCluster, id: u64, args: &[&str]) -> anyhow::Result<String> {
    eprintln!("$ floe {}    # via node {id}", args.join(" "));
    let out = cluster.cli_ok(id, args)?;
    print!("{out}");
    Ok(out)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let binary = std::fs::canonicalize(&args.binary).with_context(|| format!("floe binary {}", args.binary.display()))?;
    if args.dir.exists() {
        std::fs::remove_dir_all(&args.dir)?;
    }
    let started = Instant::now();
    let mut summary: Vec<(String, String)> = Vec::new();

    step("creating a cluster CA, three node certificates and a client certificate; starting three nodes");
    let mut options = ClusterOptions::new(&binary, 3);
    options.base_dir = Some(std::env::current_dir()?.join(&args.dir));
    let formed = Instant::now();
    let mut cluster = TestCluster::start(options).await?;
    let leader = cluster.wait_leader(WAIT).await?;
    summary.push(("cluster formed (expect-3 bootstrap)".into(), format!("{} ms", formed.elapsed().as_millis())));
    for node in cluster.nodes.values() {
        eprintln!("node {}: pid {:?}, data {}, log {}", node.id, node.pid(), node.data_dir().display(), node.log_path.display());
    }
    floe(&cluster, 1, &["cluster", "status"])?;

    let follower = cluster.running_ids().into_iter().find(|id| *id != leader).context("no follower")?;
    step(&format!("writing through follower node {follower} (forwarded to leader node {leader} over QUIC)"));
    let keys = [("site/name", "north-plant"), ("site/line", "3"), ("model/ocr", "pp-ocrv4"), ("owner", "ops@site")];
    for (key, value) in keys {
        floe(&cluster, follower, &["kv", "put", key, value])?;
    }
    floe(&cluster, leader, &["kv", "list"])?;

    step(&format!("SIGKILL the leader, node {leader}"));
    let killed_at = Instant::now();
    cluster.kill(leader)?;
    let survivor = cluster.running_ids()[0];
    let new_leader = cluster.wait_leader(WAIT).await?;
    let elected = killed_at.elapsed();
    let deadline = Instant::now() + WAIT;
    while cluster.cli(survivor, &["kv", "put", "failover/probe", "written"])?.status.success().then_some(()).is_none() {
        anyhow::ensure!(Instant::now() < deadline, "no write succeeded after the leader was killed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first_write = killed_at.elapsed();
    eprintln!("new leader: node {new_leader} after {} ms; first write after {} ms", elected.as_millis(), first_write.as_millis());
    summary.push(("failover: kill → new leader".into(), format!("{} ms", elected.as_millis())));
    summary.push(("failover: kill → first write".into(), format!("{} ms", first_write.as_millis())));
    floe(&cluster, survivor, &["cluster", "status"])?;
    let mut intact = 0;
    for (key, value) in keys {
        let read = floe(&cluster, survivor, &["kv", "get", key])?;
        anyhow::ensure!(read.trim() == value, "{key}: expected {value}, read {}", read.trim());
        intact += 1;
    }
    summary.push(("acknowledged keys intact after failover".into(), format!("{intact}/{}", keys.len())));

    step(&format!("restarting node {leader}; it catches up from the new leader"));
    let restarted = Instant::now();
    cluster.spawn(leader)?;
    cluster.wait_ready(&[leader], WAIT).await?;
    let deadline = Instant::now() + WAIT;
    loop {
        let read = cluster.cli(leader, &["kv", "get", "--local", "failover/probe"])?;
        if String::from_utf8_lossy(&read.stdout).trim() == "written" {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "node {leader} never caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    summary.push((format!("node {leader} restart → caught up"), format!("{} ms", restarted.elapsed().as_millis())));
    floe(&cluster, leader, &["kv", "get", "--local", "failover/probe"])?;
    floe(&cluster, leader, &["cluster", "status"])?;

    step("stopping all nodes (SIGTERM)");
    for id in [1, 2, 3] {
        cluster.stop(id, Duration::from_secs(10)).await?;
    }
    summary.push(("total".into(), format!("{:.1} s", started.elapsed().as_secs_f64())));

    println!("\nfloe demo summary");
    let rows: Vec<Vec<String>> = summary.into_iter().map(|(what, value)| vec![what, value]).collect();
    print!("{}", floe_node::cli::table(&["STEP", "RESULT"], &rows));
    println!("files (certificates, configs, data, logs): {}", args.dir.display());
    Ok(())
}
