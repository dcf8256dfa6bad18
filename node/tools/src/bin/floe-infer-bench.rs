//! The extra latency of a cross-node inference hop: a three-node cluster
//! with one warm replica of the PP-OCR orientation model; the same requests
//! sent, in alternating slices, to the node holding the replica (served
//! locally) and to a node without one (forwarded over QUIC with mutual TLS).
//! Prints a Markdown table.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use floe_api::client::FloeClient;
use floe_api::proto as api;
use floe_harness::{ClusterOptions, TestCluster};

#[derive(Parser)]
#[command(about = "Cross-node inference hop latency on a local three-node cluster")]
struct Args {
    #[arg(long, default_value = "target/release/floe")]
    binary: PathBuf,
    /// Requests per slice; slices alternate local and forwarded.
    #[arg(long, default_value_t = 50)]
    slice: usize,
    #[arg(long, default_value_t = 10)]
    slices: usize,
    #[arg(long, default_value = ".bench-infer")]
    dir: PathBuf,
    /// Also write the table here.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn timed(client: &mut FloeClient, request: &api::InferRequest) -> anyhow::Result<(f64, u64)> {
    let started = Instant::now();
    let reply = client.models.infer(request.clone()).await?.into_inner();
    Ok((started.elapsed().as_secs_f64() * 1000.0, reply.node))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let binary = std::fs::canonicalize(&args.binary)
        .with_context(|| format!("floe binary {}", args.binary.display()))?;
    let runtime = floe_inference::DevRuntimeFiles::locate();
    runtime
        .require()
        .map_err(|missing| anyhow::anyhow!("{missing}; run `make inference-runtime`"))?;
    if args.dir.exists() {
        std::fs::remove_dir_all(&args.dir)?;
    }
    let mut options = ClusterOptions::new(&binary, 3);
    options.base_dir = Some(std::env::current_dir()?.join(&args.dir));
    options.overrides = vec![format!(
        "inference.ort_library={}",
        runtime.ort_library.display()
    )];
    let cluster = TestCluster::start(options).await?;
    let mut client = cluster.client(1).await?;
    let onnx = std::fs::read(runtime.models_dir.join("cls.onnx"))?;
    client
        .models
        .put(api::PutModelRequest {
            name: "cls".into(),
            onnx,
        })
        .await?;
    let deploy = api::DeployModelRequest {
        name: "cls".into(),
        version: 0,
        replicas: 1,
        threads: 1,
        max_batch: 1,
        max_delay_ms: 0,
        queue: 64,
        gpu: 0.0,
    };
    client.models.deploy(deploy).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let holder = loop {
        let status = client
            .models
            .status(api::ModelStatusRequest { name: "cls".into() })
            .await?
            .into_inner();
        let warm = status
            .deployments
            .iter()
            .flat_map(|d| &d.replica_status)
            .find(|r| r.state == "warm");
        if let Some(replica) = warm {
            break replica.node;
        }
        anyhow::ensure!(Instant::now() < deadline, "no warm replica within 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let outsider = (1..=3).find(|id| *id != holder).context("no second node")?;
    let tensor = floe_inference::Tensor::from_vec(vec![1, 3, 48, 192], vec![0.5f32; 3 * 48 * 192])?;
    let input = floe_node::grpc::tensor_to_wire(tensor);
    let request = api::InferRequest {
        model: "cls".into(),
        version: 0,
        inputs: [("x".to_string(), input)].into_iter().collect(),
    };
    let mut local_client = cluster.client(holder).await?;
    let mut remote_client = cluster.client(outsider).await?;
    // Warm both paths (connections, the QUIC channel, the session's first runs).
    for _ in 0..20 {
        timed(&mut local_client, &request).await?;
        timed(&mut remote_client, &request).await?;
    }
    let (mut local, mut remote) = (Vec::new(), Vec::new());
    for slice in 0..args.slices * 2 {
        let forwarded = slice % 2 == 1;
        for _ in 0..args.slice {
            if forwarded {
                let (ms, node) = timed(&mut remote_client, &request).await?;
                anyhow::ensure!(node == holder, "forwarded request served by node {node}");
                remote.push(ms);
            } else {
                local.push(timed(&mut local_client, &request).await?.0);
            }
        }
    }
    local.sort_by(f64::total_cmp);
    remote.sort_by(f64::total_cmp);
    let p50_extra = percentile(&remote, 0.5) - percentile(&local, 0.5);
    let mut table = String::new();
    table.push_str(&format!(
        "Cross-node inference hop: PP-OCRv4 cls, input [1,3,48,192] f32 (110 KiB), one replica on node {holder}, \
         {} requests each way in alternating slices of {}\n\n",
        local.len(),
        args.slice
    ));
    table.push_str("| path | p50 ms | p90 ms | p99 ms |\n|---|---|---|---|\n");
    for (name, samples) in [
        (format!("client → node {holder} (local replica)"), &local),
        (
            format!("client → node {outsider} → QUIC → node {holder}"),
            &remote,
        ),
    ] {
        table.push_str(&format!(
            "| {name} | {:.3} | {:.3} | {:.3} |\n",
            percentile(samples, 0.5),
            percentile(samples, 0.9),
            percentile(samples, 0.99)
        ));
    }
    table.push_str(&format!(
        "\nextra latency of the hop at p50: {p50_extra:.3} ms (target: under 1 ms)\n"
    ));
    print!("{table}");
    if let Some(out) = &args.out {
        std::fs::write(out, &table)?;
    }
    Ok(())
}
