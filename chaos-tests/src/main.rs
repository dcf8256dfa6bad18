//! `floe-chaos`: see docs/chaos.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use floe_chaos::cli::{Cli, Command, RejoinArgs, RunArgs, TargetKind};
use floe_chaos::scenario::{RunConfig, TargetChoice, Timing};
use floe_chaos::targets::containers::ContainerOptions;
use floe_chaos::workload::register::RegisterOptions;
use floe_chaos::workload::workflow::WorkflowOptions;
use floe_chaos::{matrix, report};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = std::env::var("FLOE_CHAOS_LOG").unwrap_or_else(|_| "warn,floe_chaos=info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
    // Multi-threaded: target operations run under `block_in_place`.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: starting the runtime: {err}");
            return ExitCode::from(2);
        }
    };
    let outcome = match cli.command {
        Some(Command::Worker(args)) => runtime
            .block_on(floe_chaos::workload::worker::run(args.into_options()))
            .map(|()| true),
        Some(Command::Rejoin(args)) => runtime.block_on(rejoin(args)),
        None => runtime.block_on(run(cli.run)),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn default_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("locating floe-chaos")?;
    Ok(me.with_file_name("floe"))
}

fn seed_from_clock() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or(1)
}

/// Passes unless a restarted node never became ready, or the trials saw
/// more leader changes than `--max-leader-changes`.
async fn rejoin(args: RejoinArgs) -> anyhow::Result<bool> {
    let seed = args.seed.unwrap_or_else(seed_from_clock);
    eprintln!("[floe-chaos] rejoin seed {seed}");
    let binary = match args.binary {
        Some(binary) => binary,
        None => default_binary()?,
    };
    anyhow::ensure!(
        binary.exists(),
        "floe binary {} not found; pass --binary",
        binary.display()
    );
    anyhow::ensure!(
        args.down_min_ms <= args.down_max_ms,
        "--down-min-ms is above --down-max-ms"
    );
    let options = floe_chaos::rejoin::RejoinOptions {
        binary: std::fs::canonicalize(&binary)?,
        trials: args.trials,
        down_ms: (args.down_min_ms, args.down_max_ms),
        seed,
        ready_bound: Duration::from_secs(args.ready_timeout_seconds),
        settle: Duration::from_millis(args.settle_ms),
        out: args.out,
    };
    let trials = floe_chaos::rejoin::run(&options).await?;
    let (_, total_changes) = floe_chaos::rejoin::table::changes(&trials);
    let all_ready = trials.iter().all(|trial| trial.time_to_ready_ms.is_some());
    let within = args
        .max_leader_changes
        .is_none_or(|max| total_changes <= max);
    Ok(all_ready && within)
}

async fn run(args: RunArgs) -> anyhow::Result<bool> {
    let seed = args.seed.unwrap_or_else(seed_from_clock);
    eprintln!("[floe-chaos] seed {seed} (replay with --seed {seed})");
    let binary = match args.binary {
        Some(binary) => binary,
        None => default_binary()?,
    };
    let target = match args.target {
        TargetKind::Local => {
            anyhow::ensure!(
                binary.exists(),
                "floe binary {} not found; pass --binary",
                binary.display()
            );
            TargetChoice::Local {
                binary: std::fs::canonicalize(&binary)?,
            }
        }
        TargetKind::Containers => TargetChoice::Containers(ContainerOptions {
            deploy_dir: std::fs::canonicalize(&args.deploy_dir)
                .with_context(|| format!("deploy dir {}", args.deploy_dir.display()))?,
            binary: std::fs::canonicalize(&binary)
                .with_context(|| format!("floe binary {}", binary.display()))?,
            rebuild_image: args.rebuild_image,
        }),
        TargetKind::External => TargetChoice::External {
            config: args
                .cluster_file
                .context("--target external needs --cluster-file")?,
        },
    };
    std::fs::create_dir_all(&args.out)?;
    let out = std::fs::canonicalize(&args.out)?;
    let config = RunConfig {
        target,
        chaos_binary: std::env::current_exe()?,
        workload: args.workload,
        seed,
        out: out.clone(),
        timing: Timing {
            steady: Duration::from_secs(args.steady_seconds),
            fault: Duration::from_secs(args.seconds),
            recovery: Duration::from_secs(args.recovery_seconds),
            ..Timing::default()
        },
        register: RegisterOptions {
            clients: args.clients,
            ..RegisterOptions::default()
        },
        workflow: WorkflowOptions::default(),
        workers: 3,
    };
    let cells = matrix::cells(&config, &args.nemesis, args.seconds);
    let report = matrix::run(&config, &cells).await;
    report.write(&out)?;
    println!("{}", report::table::markdown(&report));
    eprintln!("[floe-chaos] report: {}", out.join("report.json").display());
    if !report.passed {
        let failed: Vec<String> = report
            .cells
            .iter()
            .filter(|cell| !cell.passed)
            .map(|cell| format!("{} [{}]", cell.label, cell.failed_checkers().join(", ")))
            .collect();
        eprintln!("[floe-chaos] VIOLATIONS in: {}", failed.join("; "));
        eprintln!("[floe-chaos] replay with --seed {seed}");
    }
    Ok(report.passed)
}
