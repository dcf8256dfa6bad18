//! `make demo`: a local three-node cluster as separate processes, driven
//! through the `floe` CLI the way an operator would.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use floe_harness::{ClusterOptions, TestCluster};

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
    let binary = std::fs::canonicalize(&args.binary)
        .with_context(|| format!("floe binary {}", args.binary.display()))?;
    if args.dir.exists() {
        std::fs::remove_dir_all(&args.dir)?;
    }
    let started = Instant::now();
    let mut summary: Vec<(String, String)> = Vec::new();

    step("creating a cluster CA, three node certificates and a client certificate; starting three nodes");
    let runtime = floe_inference::DevRuntimeFiles::locate();
    runtime
        .require()
        .map_err(|missing| anyhow::anyhow!("{missing}; run `make inference-runtime`"))?;
    let mut options = ClusterOptions::new(&binary, 3);
    options.base_dir = Some(std::env::current_dir()?.join(&args.dir));
    options.overrides = vec![format!(
        "inference.ort_library={}",
        runtime.ort_library.display()
    )];
    let formed = Instant::now();
    let mut cluster = TestCluster::start(options).await?;
    let leader = cluster.wait_leader(WAIT).await?;
    summary.push((
        "cluster formed (expect-3 bootstrap)".into(),
        format!("{} ms", formed.elapsed().as_millis()),
    ));
    for node in cluster.nodes.values() {
        eprintln!(
            "node {}: pid {:?}, data {}, log {}",
            node.id,
            node.pid(),
            node.data_dir().display(),
            node.log_path.display()
        );
    }
    floe(&cluster, 1, &["cluster", "status"])?;

    let follower = cluster
        .running_ids()
        .into_iter()
        .find(|id| *id != leader)
        .context("no follower")?;
    step(&format!(
        "writing through follower node {follower} (forwarded to leader node {leader} over QUIC)"
    ));
    let keys = [
        ("site/name", "north-plant"),
        ("site/line", "3"),
        ("model/ocr", "pp-ocrv4"),
        ("owner", "ops@site"),
    ];
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
    while cluster
        .cli(survivor, &["kv", "put", "failover/probe", "written"])?
        .status
        .success()
        .then_some(())
        .is_none()
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "no write succeeded after the leader was killed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first_write = killed_at.elapsed();
    eprintln!(
        "new leader: node {new_leader} after {} ms; first write after {} ms",
        elected.as_millis(),
        first_write.as_millis()
    );
    summary.push((
        "failover: kill → new leader".into(),
        format!("{} ms", elected.as_millis()),
    ));
    summary.push((
        "failover: kill → first write".into(),
        format!("{} ms", first_write.as_millis()),
    ));
    floe(&cluster, survivor, &["cluster", "status"])?;
    let mut intact = 0;
    for (key, value) in keys {
        let read = floe(&cluster, survivor, &["kv", "get", key])?;
        anyhow::ensure!(
            read.trim() == value,
            "{key}: expected {value}, read {}",
            read.trim()
        );
        intact += 1;
    }
    summary.push((
        "acknowledged keys intact after failover".into(),
        format!("{intact}/{}", keys.len()),
    ));

    step(&format!(
        "restarting node {leader}; it catches up from the new leader"
    ));
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
    summary.push((
        format!("node {leader} restart → caught up"),
        format!("{} ms", restarted.elapsed().as_millis()),
    ));
    floe(
        &cluster,
        leader,
        &["kv", "get", "--local", "failover/probe"],
    )?;
    floe(&cluster, leader, &["cluster", "status"])?;

    let intake = document_intake(&mut cluster).await?;
    summary.extend(intake);
    let ocr = ocr_pages(&mut cluster, &runtime).await?;
    summary.extend(ocr);

    step("stopping all nodes (SIGTERM)");
    for id in [1, 2, 3] {
        cluster.stop(id, Duration::from_secs(10)).await?;
    }
    summary.push((
        "total".into(),
        format!("{:.1} s", started.elapsed().as_secs_f64()),
    ));

    println!("\nfloe demo summary");
    let rows: Vec<Vec<String>> = summary
        .into_iter()
        .map(|(what, value)| vec![what, value])
        .collect();
    print!("{}", floe_node::cli::table(&["STEP", "RESULT"], &rows));
    println!(
        "files (certificates, configs, data, logs): {}",
        args.dir.display()
    );
    Ok(())
}

/// The example document-intake flow across the three nodes, with workers in
/// separate processes: confident documents are extracted automatically, the
/// others wait for a review signal; both are validated two ways in parallel.
async fn document_intake(cluster: &mut TestCluster) -> anyhow::Result<Vec<(String, String)>> {
    step("running the document-intake flow: workers in separate processes, runs started on every node");
    floe(
        cluster,
        1,
        &["flow", "put", "docs/examples/flows/document-intake.json"],
    )?;
    let blocks = [
        "classify=classify",
        "extract=sleep:30",
        "validate.schema=valid",
        "validate.totals=valid",
    ];
    cluster.spawn_worker("intake-a", &[1, 2], &blocks, 4)?;
    cluster.spawn_worker("intake-b", &[3], &blocks, 4)?;
    let documents: Vec<String> = (1..=12)
        .map(|n| {
            if n % 4 == 0 {
                format!("blurry-receipt-{n}.png")
            } else {
                format!("invoice-{n}.pdf")
            }
        })
        .collect();
    let started = Instant::now();
    let mut runs = Vec::new();
    for (position, document) in documents.iter().enumerate() {
        let via = (position as u64 % 3) + 1;
        let input = serde_json::json!({ "document": document }).to_string();
        let run_id = cluster.cli_ok(
            via,
            &[
                "run",
                "start",
                "document-intake",
                "--input",
                &input,
                "--idempotency-key",
                document,
            ],
        )?;
        runs.push((document.clone(), run_id.trim().to_string()));
    }
    let mut finished: std::collections::BTreeMap<String, serde_json::Value> = Default::default();
    let mut reviewed = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while finished.len() < runs.len() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "document-intake runs did not finish within 60 s"
        );
        for (document, run_id) in &runs {
            if finished.contains_key(run_id) {
                continue;
            }
            let run: serde_json::Value =
                serde_json::from_str(&cluster.cli_ok(1, &["run", "get", run_id, "--json"])?)?;
            if run["status"] != "Running" {
                finished.insert(run_id.clone(), run);
            } else if run["steps"]["review"]["status"] == "Running"
                && reviewed.insert(run_id.clone())
            {
                eprintln!("  {document}: low confidence, a reviewer approves it");
                let payload =
                    serde_json::json!({ "reviewer": "ops", "approved": true }).to_string();
                cluster.cli_ok(
                    2,
                    &[
                        "run",
                        "signal",
                        run_id,
                        "review.done",
                        "--payload",
                        &payload,
                    ],
                )?;
            }
        }
        let done = finished.len();
        eprint!(
            "\r  [{}{}] {done}/{} runs finished",
            "#".repeat(done * 24 / runs.len()),
            ".".repeat(24 - done * 24 / runs.len()),
            runs.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!();
    let took = started.elapsed();
    let mut rows = Vec::new();
    let mut completed = 0;
    for (document, run_id) in &runs {
        let run = &finished[run_id];
        if run["status"] == "Completed" {
            completed += 1;
        }
        let path = if run["steps"].get("review").is_some() {
            "review"
        } else {
            "automatic"
        };
        let nodes: std::collections::BTreeSet<String> = run["steps"]
            .as_object()
            .map(|steps| {
                steps
                    .values()
                    .filter_map(|step| {
                        step["attempts"]
                            .as_array()
                            .and_then(|a| a.last())
                            .and_then(|a| a["node"].as_u64())
                    })
                    .map(|node| node.to_string())
                    .collect()
            })
            .unwrap_or_default();
        rows.push(vec![
            run_id[..12.min(run_id.len())].to_string(),
            document.clone(),
            run["status"].as_str().unwrap_or("?").to_lowercase(),
            path.to_string(),
            run["output"]["document_class"]
                .as_str()
                .unwrap_or("-")
                .to_string(),
            run["output"]["valid"].to_string(),
            nodes.into_iter().collect::<Vec<_>>().join(","),
        ]);
    }
    println!();
    print!(
        "{}",
        floe_node::cli::table(
            &[
                "RUN",
                "DOCUMENT",
                "STATUS",
                "PATH",
                "CLASS",
                "VALID",
                "TASK NODES"
            ],
            &rows
        )
    );
    anyhow::ensure!(
        completed == runs.len(),
        "{} of {} runs completed",
        completed,
        runs.len()
    );
    Ok(vec![
        (
            "document-intake runs completed".into(),
            format!("{completed}/{}", runs.len()),
        ),
        (
            "document-intake wall time (12 runs, 4 via review)".into(),
            format!("{} ms", took.as_millis()),
        ),
    ])
}

/// Sample pages: rendered text, so the recognised text can be checked.
const PAGES: [&[&str]; 4] = [
    &["FLOE 42 INVOICE TOTAL"],
    &["SHIP TO NORTH PLANT", "LINE 3 DOCK 7"],
    &["PART 1187 QTY 24"],
    &["RECEIPT 2026 11 21", "PAID"],
];

/// The PP-OCR models registered and deployed once as shared replicas; the
/// OCR flow on several pages at once, its model steps served by them.
async fn ocr_pages(
    cluster: &mut TestCluster,
    runtime: &floe_inference::DevRuntimeFiles,
) -> anyhow::Result<Vec<(String, String)>> {
    use base64::Engine as _;
    step("registering the PP-OCRv4 models and deploying one warm replica of each (shared by every flow)");
    for (name, file) in [
        ("ppocr-det", "det.onnx"),
        ("ppocr-cls", "cls.onnx"),
        ("ppocr-rec", "rec.onnx"),
    ] {
        let path = runtime.models_dir.join(file);
        floe(
            cluster,
            1,
            &["model", "put", name, &path.display().to_string()],
        )?;
        floe(
            cluster,
            2,
            &[
                "model",
                "deploy",
                name,
                "--replicas",
                "1",
                "--max-batch",
                "8",
                "--max-delay-ms",
                "5",
            ],
        )?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status: serde_json::Value =
            serde_json::from_str(&cluster.cli_ok(3, &["model", "status", "--json"])?)?;
        let warm = status
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|d| d["replica_status"].as_array().cloned().unwrap_or_default())
            .filter(|r| r["state"] == "warm")
            .count();
        if warm == 3 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "model replicas not warm within 60 s: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    floe(cluster, 3, &["model", "status"])?;

    step("running the OCR flow on four pages at once: image stages in floe-ocr-worker, models on the shared replicas");
    floe(cluster, 1, &["flow", "put", "docs/examples/flows/ocr.json"])?;
    cluster.spawn_client_process(
        "floe-ocr-worker",
        "ocr-worker",
        &[1, 2, 3],
        &["--concurrency".into(), "2".into()],
    )?;
    let font = std::fs::read(&runtime.font)?;
    let pages_dir = cluster.dir.join("pages");
    std::fs::create_dir_all(&pages_dir)?;
    let started = Instant::now();
    let mut runs = Vec::new();
    for (index, lines) in PAGES.iter().enumerate() {
        let rendered = lines
            .iter()
            .map(|text| floe_ocr::render_text_line(&font, text, 40.0, 24))
            .collect::<Result<Vec<_>, _>>()?;
        let page = floe_ocr::stack_lines(&rendered, 16);
        let path = pages_dir.join(format!("page-{}.png", index + 1));
        page.save(&path)?;
        let image = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&path)?);
        let input = serde_json::json!({ "image": image }).to_string();
        let via = (index as u64 % 3) + 1;
        let run_id = cluster.cli_ok(via, &["run", "start", "ocr", "--input", &input])?;
        eprintln!("  {} → run {}", path.display(), run_id.trim());
        runs.push((path, lines.join(" / "), run_id.trim().to_string()));
    }
    let mut client = cluster.client(1).await?;
    let mut rows = Vec::new();
    let mut matched = 0;
    for (path, expected, run_id) in &runs {
        let run = floe_harness::finished_run(&mut client, run_id, Duration::from_secs(120)).await?;
        let text = run["output"]["text"]
            .as_str()
            .unwrap_or("")
            .replace('\n', " / ");
        if run["status"] == "Completed" && text == *expected {
            matched += 1;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        rows.push(vec![
            name,
            run["status"].as_str().unwrap_or("?").to_lowercase(),
            text,
            expected.clone(),
        ]);
    }
    let took = started.elapsed();
    println!();
    print!(
        "{}",
        floe_node::cli::table(&["PAGE", "STATUS", "RECOGNISED", "RENDERED"], &rows)
    );
    floe(cluster, 3, &["model", "status"])?;
    anyhow::ensure!(
        matched == runs.len(),
        "{matched} of {} pages read back exactly",
        runs.len()
    );
    Ok(vec![
        (
            "OCR pages read back exactly (shared det/cls/rec replicas)".into(),
            format!("{matched}/{}", runs.len()),
        ),
        (
            "OCR wall time (4 pages at once)".into(),
            format!("{} ms", took.as_millis()),
        ),
    ])
}
