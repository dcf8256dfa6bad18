//! `make bench`: drives a local three-node floe cluster and, in the same run,
//! a three-node etcd cluster on loopback with the same put workload; prints a
//! Markdown results table (throughput, latency, failover, idle memory).

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use floe_api::client::FloeClient;
use floe_api::proto as api;
use floe_harness::{ClusterOptions, TestCluster};
use tonic::transport::{Channel, Endpoint};

mod etcd {
    #![allow(clippy::all)]
    tonic::include_proto!("etcdserverpb");
}

#[derive(Parser)]
#[command(about = "Benchmark a local three-node floe cluster against etcd")]
struct Args {
    #[arg(long, default_value = "target/release/floe")]
    binary: PathBuf,
    /// etcd binary (Debian's etcd-server); the comparison is skipped when absent.
    #[arg(long)]
    etcd: Option<PathBuf>,
    /// Client concurrencies to measure, comma separated.
    #[arg(long, default_value = "1,8,32,64", value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// Seconds of load per concurrency level.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Leader kills to time.
    #[arg(long, default_value_t = 20)]
    failover_trials: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 64)]
    value_bytes: usize,
    /// Working directory (wiped first).
    #[arg(long, default_value = ".bench")]
    dir: PathBuf,
    /// Also write the Markdown report here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Measure three-step workflow runs instead of key-value writes.
    #[arg(long)]
    runs: bool,
}

/// Upper bound on operations per worker per level, so a level always ends.
const MAX_OPS_PER_WORKER: u64 = 2_000_000;

struct Load {
    ops: u64,
    errors: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Load {
    fn per_second(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// CPU time the cluster's node processes have used so far, in ms (a
/// measure the machine's other load disturbs far less than wall-clock rates).
fn nodes_cpu_ms(cluster: &TestCluster) -> u64 {
    let pids: Vec<sysinfo::Pid> = cluster
        .running_ids()
        .into_iter()
        .filter_map(|id| cluster.node(id).ok()?.pid())
        .map(sysinfo::Pid::from_u32)
        .collect();
    let mut system = sysinfo::System::new();
    system.refresh_processes_specifics(
        sysinfo::ProcessesToUpdate::Some(&pids),
        true,
        sysinfo::ProcessRefreshKind::nothing().with_cpu(),
    );
    pids.iter()
        .filter_map(|pid| system.process(*pid))
        .map(sysinfo::Process::accumulated_cpu_time)
        .sum()
}

fn ms(duration: Duration) -> String {
    format!("{:.2}", duration.as_secs_f64() * 1000.0)
}

/// Runs `concurrency` workers for `seconds`, each calling `op(worker, seq)`.
async fn drive<F, Fut>(concurrency: usize, seconds: u64, op: F) -> Load
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let op = op.clone();
        workers.spawn(async move {
            let (mut ok, mut failed, mut latencies) = (0u64, 0u64, Vec::new());
            for seq in 0..MAX_OPS_PER_WORKER {
                if Instant::now() >= deadline {
                    break;
                }
                let begun = Instant::now();
                if op(worker, seq).await {
                    ok += 1;
                    latencies.push(begun.elapsed());
                } else {
                    failed += 1;
                }
            }
            (ok, failed, latencies)
        });
    }
    let mut load = Load {
        ops: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    while let Some(Ok((ok, failed, latencies))) = workers.join_next().await {
        load.ops += ok;
        load.errors += failed;
        load.latencies.extend(latencies);
    }
    load.elapsed = started.elapsed();
    load.latencies.sort();
    load
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A three-member etcd cluster on loopback; killed on drop.
struct EtcdCluster {
    children: Vec<Child>,
    client_urls: Vec<String>,
}

/// The floe cluster's certificates, reused so etcd runs with the same mutual TLS.
struct EtcdTls {
    /// Per member: (ca.pem, node.pem, node-key.pem).
    members: Vec<(PathBuf, PathBuf, PathBuf)>,
    client: tonic::transport::ClientTlsConfig,
}

impl EtcdTls {
    fn from_cluster(cluster: &TestCluster) -> anyhow::Result<EtcdTls> {
        let mut members = Vec::new();
        for id in 1..=3 {
            let certs = cluster.node(id)?.dir.join("certs");
            members.push((
                certs.join("ca.pem"),
                certs.join("node.pem"),
                certs.join("node-key.pem"),
            ));
        }
        let read = |name: &str| std::fs::read(cluster.client_dir.join(name));
        let client = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read("ca.pem")?))
            .identity(tonic::transport::Identity::from_pem(
                read("client.pem")?,
                read("client-key.pem")?,
            ))
            .domain_name(floe_api::client::API_SERVER_NAME);
        Ok(EtcdTls { members, client })
    }
}

impl EtcdCluster {
    async fn start(binary: &Path, dir: &Path, tls: &EtcdTls) -> anyhow::Result<EtcdCluster> {
        let mut peers = Vec::new();
        let mut client_urls = Vec::new();
        for member in 1..=3 {
            peers.push((
                format!("e{member}"),
                format!("https://127.0.0.1:{}", free_port()?),
            ));
            client_urls.push(format!("https://127.0.0.1:{}", free_port()?));
        }
        let initial: Vec<String> = peers
            .iter()
            .map(|(name, url)| format!("{name}={url}"))
            .collect();
        let mut cluster = EtcdCluster {
            children: Vec::new(),
            client_urls: client_urls.clone(),
        };
        for (((name, peer_url), client_url), (ca, cert, key)) in
            peers.iter().zip(&client_urls).zip(&tls.members)
        {
            let data = dir.join(name);
            std::fs::create_dir_all(&data)?;
            let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
            let child = Command::new(binary)
                .args(["--name", name, "--data-dir"])
                .arg(&data)
                .args([
                    "--listen-peer-urls",
                    peer_url,
                    "--initial-advertise-peer-urls",
                    peer_url,
                ])
                .args([
                    "--listen-client-urls",
                    client_url,
                    "--advertise-client-urls",
                    client_url,
                ])
                .args([
                    "--initial-cluster",
                    &initial.join(","),
                    "--initial-cluster-state",
                    "new",
                ])
                .args([
                    "--heartbeat-interval",
                    "100",
                    "--election-timeout",
                    "1000",
                    "--log-level",
                    "warn",
                ])
                .arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(ca)
                .arg("--cert-file")
                .arg(cert)
                .arg("--key-file")
                .arg(key)
                .arg("--peer-client-cert-auth")
                .arg("--peer-trusted-ca-file")
                .arg(ca)
                .arg("--peer-cert-file")
                .arg(cert)
                .arg("--peer-key-file")
                .arg(key)
                .env("ETCD_UNSUPPORTED_ARCH", "")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {}", binary.display()))?;
            cluster.children.push(child);
        }
        Ok(cluster)
    }

    /// Waits for a leader and returns the leader's client URL.
    async fn leader_url(&self, tls: &EtcdTls, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            for url in &self.client_urls {
                if let Ok(channel) = Endpoint::from_shared(url.clone())?
                    .tls_config(tls.client.clone())?
                    .connect()
                    .await
                {
                    let mut maintenance = etcd::maintenance_client::MaintenanceClient::new(channel);
                    if let Ok(status) = maintenance.status(etcd::StatusRequest {}).await {
                        let status = status.into_inner();
                        let member = status.header.map(|h| h.member_id).unwrap_or(0);
                        if status.leader != 0 && status.leader == member {
                            return Ok(url.clone());
                        }
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("etcd elected no leader within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn floe_channels(
    cluster: &TestCluster,
    node: u64,
    count: usize,
) -> anyhow::Result<Vec<FloeClient>> {
    let mut clients = Vec::new();
    for _ in 0..count {
        clients.push(cluster.client(node).await?);
    }
    Ok(clients)
}

async fn etcd_channels(
    url: &str,
    tls: &EtcdTls,
    count: usize,
) -> anyhow::Result<Vec<etcd::kv_client::KvClient<Channel>>> {
    let mut clients = Vec::new();
    for _ in 0..count {
        let channel = Endpoint::from_shared(url.to_string())?
            .tls_config(tls.client.clone())?
            .tcp_nodelay(true)
            .connect()
            .await?;
        clients.push(etcd::kv_client::KvClient::new(channel));
    }
    Ok(clients)
}

/// Times SIGKILL of the leader → first acknowledged write through a survivor.
async fn failover_trials(
    cluster: &mut TestCluster,
    trials: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::new();
    for trial in 0..trials {
        let leader = cluster.wait_leader(Duration::from_secs(30)).await?;
        let survivors: Vec<u64> = cluster
            .running_ids()
            .into_iter()
            .filter(|id| *id != leader)
            .collect();
        let mut options = cluster.client_options(&survivors)?;
        options.request_timeout = Duration::from_millis(150);
        let mut clients = Vec::new();
        for id in &survivors {
            let mut one = options.clone();
            one.endpoints = vec![cluster.node(*id)?.api_addr.clone()];
            clients.push(FloeClient::connect(&one).await?);
        }
        let killed = Instant::now();
        cluster.kill(leader)?;
        let mut attempt = 0usize;
        loop {
            let slot = attempt % clients.len();
            let client = &mut clients[slot];
            attempt += 1;
            let request = api::PutRequest {
                key: format!("failover/{trial}"),
                value: b"x".to_vec(),
            };
            if client.kv.put(request).await.is_ok() {
                break;
            }
            if killed.elapsed() > Duration::from_secs(30) {
                bail!("trial {trial}: no write succeeded within 30 s of killing node {leader}");
            }
        }
        let elapsed = killed.elapsed();
        eprintln!(
            "failover trial {trial}: killed node {leader}, first write after {} ms",
            elapsed.as_millis()
        );
        times.push(elapsed);
        cluster.spawn(leader)?;
        let all: Vec<u64> = cluster.nodes.keys().copied().collect();
        cluster.wait_ready(&all, Duration::from_secs(30)).await?;
    }
    times.sort();
    Ok(times)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let binary = std::fs::canonicalize(&args.binary)
        .with_context(|| format!("floe binary {}", args.binary.display()))?;
    if args.dir.exists() {
        std::fs::remove_dir_all(&args.dir)?;
    }
    std::fs::create_dir_all(&args.dir)?;
    let dir = std::fs::canonicalize(&args.dir)?;
    if args.runs {
        return bench_runs(&args, &binary, &dir).await;
    }
    let value = vec![b'v'; args.value_bytes];
    let mut report = String::new();
    report.push_str(&format!(
        "Three nodes on loopback, one machine ({} cores); puts of {}-byte values to the leader, {} s per level; both systems with mutual TLS on client and peer traffic, both fsync before acknowledging.\n\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        args.value_bytes,
        args.seconds
    ));

    eprintln!("starting floe cluster");
    let mut options = ClusterOptions::new(&binary, 3);
    options.base_dir = Some(dir.join("floe"));
    options.overrides = vec!["log_level=warn".into()];
    let mut cluster = TestCluster::start(options).await?;
    let leader = cluster.wait_leader(Duration::from_secs(30)).await?;

    tokio::time::sleep(Duration::from_secs(2)).await;
    let floe_rss: Vec<u64> = cluster
        .nodes
        .values()
        .filter_map(|node| node.pid().and_then(rss_bytes))
        .collect();

    let etcd_tls = EtcdTls::from_cluster(&cluster)?;
    let etcd_cluster = match &args.etcd {
        Some(binary) => Some(EtcdCluster::start(binary, &dir.join("etcd"), &etcd_tls).await?),
        None => None,
    };
    let etcd_leader = match &etcd_cluster {
        Some(etcd) => Some(etcd.leader_url(&etcd_tls, Duration::from_secs(30)).await?),
        None => None,
    };
    let etcd_rss: Vec<u64> = match &etcd_cluster {
        Some(etcd) => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            etcd.children
                .iter()
                .filter_map(|child| rss_bytes(child.id()))
                .collect()
        }
        None => Vec::new(),
    };

    report.push_str("| concurrency | floe writes/s | floe p50 ms | floe p99 ms | etcd writes/s | etcd p50 ms | etcd p99 ms | floe/etcd throughput |\n");
    report.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let mut breakdowns = Vec::new();
    for &concurrency in &args.concurrency {
        let connections = concurrency.clamp(1, 8);
        let clients = Arc::new(floe_channels(&cluster, leader, connections).await?);
        let before = LeaderTimes::scrape(&cluster, leader).await?;
        let payload = value.clone();
        let floe = drive(concurrency, args.seconds, move |worker, seq| {
            let mut client = clients[worker % clients.len()].clone();
            let request = api::PutRequest {
                key: format!("bench/{worker}/{}", seq % 1024),
                value: payload.clone(),
            };
            async move { client.kv.put(request).await.is_ok() }
        })
        .await;
        eprintln!(
            "floe c={concurrency}: {:.0} writes/s ({} errors)",
            floe.per_second(),
            floe.errors
        );
        let breakdown = LeaderTimes::scrape(&cluster, leader).await?.since(&before);
        breakdowns.push((
            concurrency,
            floe.latencies.iter().sum::<Duration>() / floe.ops.max(1) as u32,
            breakdown,
        ));
        let etcd = match &etcd_leader {
            Some(url) => {
                let clients = Arc::new(etcd_channels(url, &etcd_tls, connections).await?);
                let payload = value.clone();
                let load = drive(concurrency, args.seconds, move |worker, seq| {
                    let mut client = clients[worker % clients.len()].clone();
                    let request = etcd::PutRequest {
                        key: format!("bench/{worker}/{}", seq % 1024).into_bytes(),
                        value: payload.clone(),
                        ..Default::default()
                    };
                    async move { client.put(request).await.is_ok() }
                })
                .await;
                eprintln!(
                    "etcd c={concurrency}: {:.0} writes/s ({} errors)",
                    load.per_second(),
                    load.errors
                );
                Some(load)
            }
            None => None,
        };
        let (etcd_rate, etcd_p50, etcd_p99, ratio) = match &etcd {
            Some(load) => (
                format!("{:.0}", load.per_second()),
                ms(percentile(&load.latencies, 0.5)),
                ms(percentile(&load.latencies, 0.99)),
                format!("{:.2}", floe.per_second() / load.per_second().max(1.0)),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        report.push_str(&format!(
            "| {concurrency} | {:.0} | {} | {} | {etcd_rate} | {etcd_p50} | {etcd_p99} | {ratio} |\n",
            floe.per_second(),
            ms(percentile(&floe.latencies, 0.5)),
            ms(percentile(&floe.latencies, 0.99)),
        ));
    }
    drop(etcd_cluster);

    report.push_str("\nWhere a floe write's time goes (means, from the leader's own metrics over each level):\n\n| concurrency | client round trip ms | leader propose→applied ms | log flush ms | flushes per write |\n|---:|---:|---:|---:|---:|\n");
    for (concurrency, client_mean, times) in &breakdowns {
        report.push_str(&format!(
            "| {concurrency} | {} | {} | {} | {:.2} |\n",
            ms(*client_mean),
            ms(times.write_mean()),
            ms(times.flush_mean()),
            times.flushes / times.writes.max(1.0),
        ));
    }

    let failovers = failover_trials(&mut cluster, args.failover_trials).await?;
    report.push_str(&format!(
        "\n| failover (SIGKILL leader → first acknowledged write), {} trials | p50 {} ms | p99 {} ms | max {} ms |\n|---|---:|---:|---:|\n",
        failovers.len(),
        ms(percentile(&failovers, 0.5)),
        ms(percentile(&failovers, 0.99)),
        ms(failovers.last().copied().unwrap_or_default()),
    ));
    let mib = |bytes: &[u64]| {
        bytes
            .iter()
            .map(|b| format!("{:.1}", *b as f64 / (1024.0 * 1024.0)))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    report.push_str(&format!(
        "\n| idle RSS per node (MiB) | floe: {} | etcd: {} |\n|---|---|---|\n",
        mib(&floe_rss),
        if etcd_rss.is_empty() {
            "-".into()
        } else {
            mib(&etcd_rss)
        }
    ));

    println!("{report}");
    if let Some(out) = &args.out {
        std::fs::write(out, &report)?;
    }
    Ok(())
}

/// Counters from the leader's `/metrics`, to split a write's latency.
struct LeaderTimes {
    writes: f64,
    write_seconds: f64,
    flushes: f64,
    flush_seconds: f64,
}

impl LeaderTimes {
    async fn scrape(cluster: &TestCluster, leader: u64) -> anyhow::Result<LeaderTimes> {
        Ok(LeaderTimes {
            writes: cluster
                .metric(leader, "floe_api_write_duration_seconds_count")
                .await?,
            write_seconds: cluster
                .metric(leader, "floe_api_write_duration_seconds_sum")
                .await?,
            flushes: cluster
                .metric(leader, "floe_storage_flush_duration_seconds_count")
                .await?,
            flush_seconds: cluster
                .metric(leader, "floe_storage_flush_duration_seconds_sum")
                .await?,
        })
    }

    fn since(&self, earlier: &LeaderTimes) -> LeaderTimes {
        LeaderTimes {
            writes: self.writes - earlier.writes,
            write_seconds: self.write_seconds - earlier.write_seconds,
            flushes: self.flushes - earlier.flushes,
            flush_seconds: self.flush_seconds - earlier.flush_seconds,
        }
    }

    fn write_mean(&self) -> Duration {
        Duration::from_secs_f64(self.write_seconds / self.writes.max(1.0))
    }

    fn flush_mean(&self) -> Duration {
        Duration::from_secs_f64(self.flush_seconds / self.flushes.max(1.0))
    }
}

/// Three-step runs through no-op workers (one per node): completed runs per
/// second at each concurrency, run latency, and the step hop (a step's
/// answer to the next task reaching its worker).
async fn bench_runs(args: &Args, binary: &Path, dir: &Path) -> anyhow::Result<()> {
    let mut options = ClusterOptions::new(binary, 3);
    options.base_dir = Some(dir.join("floe"));
    options.overrides = vec!["log_level=warn".into()];
    let mut cluster = TestCluster::start(options).await?;
    for node in 1..=3 {
        cluster.spawn_worker(&format!("noop-{node}"), &[node], &["noop=stamp"], 64)?;
    }
    let mut client = cluster.client(1).await?;
    let definition = std::fs::read("docs/examples/flows/three-step.json")
        .context("run from the repository root")?;
    client.flows.put(api::PutFlowRequest { definition }).await?;
    let mut report = String::from(
        "Three-step runs (block `noop`, a `stamp` worker on each node), started and watched to completion by N concurrent clients. Node CPU: CPU time of the three node processes per completed run.\n\n| concurrency | completed runs/s | run p50 ms | run p99 ms | step hop p50 ms | step hop p99 ms | node CPU ms/run |\n|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for &concurrency in &args.concurrency {
        let clients: Vec<FloeClient> = {
            let mut clients = Vec::new();
            for index in 0..concurrency.clamp(1, 8) {
                clients.push(cluster.client((index as u64 % 3) + 1).await?);
            }
            clients
        };
        let clients = Arc::new(clients);
        let run_ids = Arc::new(std::sync::Mutex::new(Vec::new()));
        let ids = run_ids.clone();
        let cpu_before = nodes_cpu_ms(&cluster);
        let load = drive(concurrency, args.seconds, move |worker, _seq| {
            let mut client = clients[worker % clients.len()].clone();
            let ids = ids.clone();
            async move {
                let request = api::StartRunRequest {
                    flow: "three-step".into(),
                    input: b"{}".to_vec(),
                    ..Default::default()
                };
                let Ok(started) = client.runs.start(request).await else {
                    return false;
                };
                let run_id = started.into_inner().run_id;
                let Ok(updates) = client
                    .runs
                    .watch(api::WatchRunRequest {
                        run_id: run_id.clone(),
                    })
                    .await
                else {
                    return false;
                };
                let mut updates = updates.into_inner();
                let mut completed = false;
                while let Ok(Some(update)) = updates.message().await {
                    let run: serde_json::Value =
                        serde_json::from_slice(&update.run).unwrap_or_default();
                    completed = run["status"] == "Completed";
                }
                if completed {
                    if let Ok(mut ids) = ids.lock() {
                        ids.push(run_id);
                    }
                }
                completed
            }
        })
        .await;
        let cpu_ms_per_run = (nodes_cpu_ms(&cluster) - cpu_before) as f64 / load.ops.max(1) as f64;
        let ids: Vec<String> = run_ids.lock().map(|ids| ids.clone()).unwrap_or_default();
        let mut hops = Vec::new();
        for run_id in ids.iter().take(500) {
            let reply = client
                .runs
                .get(api::GetRunRequest {
                    run_id: run_id.clone(),
                    consistency: 1,
                })
                .await?;
            let run: serde_json::Value = serde_json::from_slice(&reply.into_inner().run)?;
            // The stamp worker answers at once with the time a task reached
            // it: the difference between two steps is one completion → commit
            // → placement → delivery to the next worker.
            for (before, after) in [("first", "second"), ("second", "third")] {
                let answered = run["steps"][before]["output"]["received_at_us"].as_u64();
                let delivered = run["steps"][after]["output"]["received_at_us"].as_u64();
                if let (Some(answered), Some(delivered)) = (answered, delivered) {
                    hops.push(Duration::from_micros(delivered.saturating_sub(answered)));
                }
            }
        }
        hops.sort();
        eprintln!(
            "runs c={concurrency}: {:.0} completed/s ({} errors)",
            load.per_second(),
            load.errors
        );
        report.push_str(&format!(
            "| {concurrency} | {:.0} | {} | {} | {} | {} | {cpu_ms_per_run:.2} |\n",
            load.per_second(),
            ms(percentile(&load.latencies, 0.5)),
            ms(percentile(&load.latencies, 0.99)),
            ms(percentile(&hops, 0.5)),
            ms(percentile(&hops, 0.99)),
        ));
    }
    println!("{report}");
    if let Some(out) = &args.out {
        std::fs::write(out, &report)?;
    }
    Ok(())
}
