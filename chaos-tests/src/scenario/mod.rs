//! One scenario: a fresh cluster (where the target allows), the workloads
//! running throughout, the fault windows of a schedule, recovery, then the
//! checkers and the report for it.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::nemesis::inject::{find_leader, http_addrs, wait_all_ready, with_target, SharedTarget};
use crate::nemesis::schedule::Window;
use crate::nemesis::{self, ActiveFault, FaultContext, Nemesis};
use crate::report::{availability, stats, CellReport, OpCounts};
use crate::targets::containers::{ContainerOptions, ContainerTarget};
use crate::targets::external::{ExternalConfig, ExternalTarget};
use crate::targets::local::LocalTarget;
use crate::targets::{ClusterSpec, Target, TargetError};
use crate::watch::LeaderWatch;
use crate::workload::history::{Clock, History};
use crate::workload::register::{self, RegisterOptions};
use crate::workload::worker::WorkerProcess;
use crate::workload::workflow::{self, WorkflowOptions};
use crate::workload::WorkloadKind;

mod finish;
mod load;

use finish::{count_ops, final_checks, write_artifacts};
use load::{start_exit_monitor, start_load};

/// Which target to run against, with what it needs.
#[derive(Clone, Debug)]
pub enum TargetChoice {
    Local { binary: PathBuf },
    Containers(ContainerOptions),
    External { config: PathBuf },
}

impl TargetChoice {
    pub fn name(&self) -> &'static str {
        match self {
            TargetChoice::Local { .. } => "local",
            TargetChoice::Containers(_) => "containers",
            TargetChoice::External { .. } => "external",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Timing {
    /// Load before the first fault.
    pub steady: Duration,
    /// Length of a single nemesis's fault window.
    pub fault: Duration,
    /// Load after the last heal, before the workloads stop.
    pub recovery: Duration,
    /// How long runs have, after the load stops, to become terminal.
    pub terminal_bound: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            steady: Duration::from_secs(3),
            fault: Duration::from_secs(3),
            recovery: Duration::from_secs(3),
            terminal_bound: Duration::from_secs(30),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RunConfig {
    pub target: TargetChoice,
    /// This program (workers run as `<chaos_binary> worker …`).
    pub chaos_binary: PathBuf,
    pub workload: WorkloadKind,
    pub seed: u64,
    pub out: PathBuf,
    pub timing: Timing,
    pub register: RegisterOptions,
    pub workflow: WorkflowOptions,
    /// Workers for the workflow workload (one attached per node, rotating).
    pub workers: usize,
}

/// One scenario to run.
#[derive(Clone, Debug)]
pub struct Cell {
    pub label: String,
    /// The nemesis name shown in the report (`random` for schedules).
    pub nemesis_name: String,
    pub windows: Vec<Window>,
    pub seed: u64,
    pub replay: String,
}

/// The nemeses a schedule uses, which decide how its cluster is set up.
fn nemeses_of(windows: &[Window]) -> BTreeSet<Nemesis> {
    windows.iter().map(|window| window.nemesis).collect()
}

async fn create_target(config: &RunConfig, spec: &ClusterSpec) -> anyhow::Result<Box<dyn Target>> {
    Ok(match &config.target {
        TargetChoice::Local { binary } => Box::new(LocalTarget::start(binary.clone(), spec).await?),
        TargetChoice::Containers(options) => Box::new(ContainerTarget::start(options, spec).await?),
        TargetChoice::External { config } => {
            Box::new(ExternalTarget::new(ExternalConfig::load(config)?))
        }
    })
}

fn empty_report(config: &RunConfig, cell: &Cell) -> CellReport {
    CellReport {
        label: cell.label.clone(),
        target: config.target.name().to_string(),
        nemesis: cell.nemesis_name.clone(),
        workload: config.workload.name().to_string(),
        seed: cell.seed,
        passed: false,
        skipped: None,
        error: None,
        ops: OpCounts::default(),
        failover_ms: Vec::new(),
        failover_p50_ms: None,
        failover_p99_ms: None,
        availability: Default::default(),
        steady_ops_per_s: 0.0,
        fault_ops_per_s: 0.0,
        schedule: cell.windows.clone(),
        faults: Vec::new(),
        checks: Vec::new(),
        exits: Vec::new(),
        duration_s: 0.0,
        files: Vec::new(),
        replay: cell.replay.clone(),
    }
}

/// Runs one scenario end to end; never panics on cluster trouble, it
/// reports it.
pub async fn run_cell(config: &RunConfig, cell: &Cell) -> CellReport {
    let started = Instant::now();
    let mut report = empty_report(config, cell);
    let dir = config.out.join("cells").join(&cell.label);
    let outcome = run_cell_inner(config, cell, &dir, &mut report).await;
    if let Err(err) = outcome {
        report.error = Some(format!("{err:#}"));
        report.passed = false;
    }
    report.duration_s = started.elapsed().as_secs_f64();
    report
}

async fn sleep_until(clock: &Clock, at_us: u64) {
    let now = clock.now_us();
    if at_us > now {
        tokio::time::sleep(Duration::from_micros(at_us - now)).await;
    }
}

async fn run_cell_inner(
    config: &RunConfig,
    cell: &Cell,
    dir: &std::path::Path,
    report: &mut CellReport,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut rng = StdRng::seed_from_u64(cell.seed);
    let nemeses = nemeses_of(&cell.windows);
    let disk_full_node = nemeses
        .contains(&Nemesis::DiskFull)
        .then(|| rng.gen_range(1..=3u64));
    let spec = ClusterSpec {
        nodes: 3,
        overrides: nemeses
            .iter()
            .flat_map(|nemesis| nemesis.overrides())
            .collect(),
        clock_skew: nemeses.contains(&Nemesis::ClockSkew)
            && matches!(config.target, TargetChoice::Local { .. }),
        disk_full_node: disk_full_node
            .filter(|_| matches!(config.target, TargetChoice::Local { .. })),
        dir: dir.join("cluster"),
    };
    tracing::info!(cell = %cell.label, seed = cell.seed, "starting scenario");
    let target: SharedTarget = Arc::new(Mutex::new(create_target(config, &spec).await?));
    let result = drive(config, cell, dir, report, &target, &spec, &mut rng).await;
    with_target(&target, |target| target.teardown());
    if result.is_ok() && report.passed {
        // Data dirs of a passing local scenario are not worth their space.
        for id in 1..=spec.nodes {
            let _ = std::fs::remove_dir_all(spec.dir.join(format!("node{id}/data")));
        }
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    config: &RunConfig,
    cell: &Cell,
    dir: &std::path::Path,
    report: &mut CellReport,
    target: &SharedTarget,
    spec: &ClusterSpec,
    rng: &mut StdRng,
) -> anyhow::Result<()> {
    let clock = Clock::new();
    let history = History::default();
    let nodes = with_target(target, |target| target.nodes());
    let all_nodes = with_target(target, |target| target.client_options(&nodes))?;
    let setup_deadline = Instant::now() + Duration::from_secs(60);
    if find_leader(target, Duration::from_secs(30)).await.is_none() {
        anyhow::bail!("no leader within 30 s of the cluster starting");
    }

    // Workflow set-up: the flow and one worker per node.
    let planned_end_ms = cell
        .windows
        .iter()
        .map(|w| w.start_ms + w.length_ms)
        .max()
        .unwrap_or(0);
    let mut workers: Vec<WorkerProcess> = Vec::new();
    if config.workload.workflow() {
        let mut client = workflow::connect_any(&all_nodes, setup_deadline).await?;
        workflow::install_flow(&mut client).await?;
        let lifetime = Duration::from_millis(planned_end_ms)
            + config.timing.recovery
            + config.timing.terminal_bound
            + Duration::from_secs(120);
        for index in 0..config.workers {
            let mut rotated = nodes.clone();
            rotated.rotate_left(index % nodes.len());
            let options = with_target(target, |target| target.client_options(&rotated))?;
            workers.push(WorkerProcess::spawn(
                &config.chaos_binary,
                dir,
                &format!("w{index}"),
                &options,
                lifetime,
            )?);
        }
    }

    let exits = Arc::new(Mutex::new(Vec::new()));
    let disk_full_active = Arc::new(Mutex::new(None));
    let monitor_stop = CancellationToken::new();
    let monitor = start_exit_monitor(
        target.clone(),
        clock,
        exits.clone(),
        disk_full_active.clone(),
        monitor_stop.clone(),
    );
    // Stops the monitor on every early return too.
    let _monitor_guard = monitor_stop.clone().drop_guard();
    let mut load = start_load(config, cell, target, clock, &history)?;
    let load_start_us = clock.now_us();
    // Bounded: the whole planned run plus generous time for recovery.
    let watch_limit =
        Duration::from_millis(planned_end_ms) + config.timing.recovery + Duration::from_secs(180);
    let watch = LeaderWatch::start(
        http_addrs(target),
        clock,
        Duration::from_millis(100),
        watch_limit,
    );
    let context = FaultContext {
        target: target.clone(),
        clock,
        disk_full_node: spec.disk_full_node,
        storm: Default::default(),
    };

    let mut faults: Vec<ActiveFault> = Vec::new();
    let mut skipped = Vec::new();
    for (index, window) in cell.windows.iter().enumerate() {
        sleep_until(&clock, load_start_us + window.start_ms * 1000).await;
        let injected = nemesis::inject(window.nemesis, &context, rng).await;
        let mut fault = match injected {
            Ok(fault) => fault,
            Err(TargetError::Unsupported { target, what }) => {
                skipped.push(format!("{}: {target} cannot {what}", window.nemesis.name()));
                continue;
            }
            Err(TargetError::Failed(err)) => {
                // The target may be half-changed: heal what can be healed.
                let _ = with_target(target, |target| target.heal_network());
                return Err(err.context(format!("injecting {}", window.nemesis.name())));
            }
        };
        tracing::info!(cell = %cell.label, fault = %fault.description, "fault injected");
        if window.nemesis == Nemesis::DiskFull {
            *disk_full_active.lock().unwrap_or_else(|p| p.into_inner()) =
                fault.nodes.first().copied();
        }
        // Workers die too: every other fault takes one down until it heals.
        let killed_worker =
            (!workers.is_empty() && index % 2 == 0).then(|| rng.gen_range(0..workers.len()));
        if let Some(worker) = killed_worker {
            workers[worker].kill();
            fault
                .notes
                .push(format!("worker {} killed", workers[worker].id));
        }
        sleep_until(
            &clock,
            load_start_us + (window.start_ms + window.length_ms) * 1000,
        )
        .await;
        nemesis::heal(&mut fault, &context)
            .await
            .map_err(|err| anyhow::anyhow!("healing {}: {err}", window.nemesis.name()))?;
        *disk_full_active.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if let Some(worker) = killed_worker {
            workers[worker].start(&config.chaos_binary)?;
        }
        tracing::info!(cell = %cell.label, fault = %fault.description, "fault healed");
        faults.push(fault);
    }
    if !skipped.is_empty() && faults.is_empty() && !cell.windows.is_empty() {
        report.skipped = Some(skipped.join("; "));
    }

    // Recovery: the cluster must be whole again, and take load for a while.
    if !wait_all_ready(target, Duration::from_secs(30)).await {
        tracing::warn!(cell = %cell.label, "not every node ready 30 s after the last heal");
    }
    tokio::time::sleep(config.timing.recovery).await;
    let load_end_us = clock.now_us();
    load.stop.cancel();
    let drained = tokio::time::timeout(Duration::from_secs(15), async {
        while load.tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        load.tasks.abort_all();
    }
    let samples = watch.stop().await;

    let namespace = register::namespace(&cell.label, cell.seed);
    let mut checks = final_checks(
        config,
        target,
        &all_nodes,
        &namespace,
        &history,
        &clock,
        &mut workers,
        exits.clone(),
    )
    .await;
    checks.push(fault_bounds(&faults));
    monitor_stop.cancel();
    let _ = monitor.await;
    for worker in &mut workers {
        worker.kill();
    }

    let records = history.snapshot();
    report.ops = count_ops(&records);
    let first_fault_us = faults
        .first()
        .map(|fault| fault.started_us)
        .unwrap_or(load_end_us);
    report.steady_ops_per_s = stats::ok_rate(&records, load_start_us + 500_000, first_fault_us);
    report.fault_ops_per_s = stats::fault_rate(&records, &faults);
    report.failover_ms = stats::failover_ms(&records, &faults);
    report.failover_p50_ms = stats::quantile(&report.failover_ms, 0.5);
    report.failover_p99_ms = stats::quantile(&report.failover_ms, 0.99);
    report.availability = availability::measure(&records, &samples, load_start_us, load_end_us);
    for fault in &mut faults {
        let notes = availability::isolation_notes(fault, &records, &samples);
        fault.notes.extend(notes);
    }
    report.exits = exits.lock().unwrap_or_else(|p| p.into_inner()).clone();
    report.passed = checks.iter().all(|check| check.passed);
    report.checks = checks;
    report.faults = faults;
    write_artifacts(config, cell, dir, report, &records, clock.now_us())?;
    Ok(())
}

/// The `fault-bounds` checker: bounds a fault itself found broken (a node
/// that took too long to stop).
fn fault_bounds(faults: &[ActiveFault]) -> crate::checker::CheckResult {
    let mut result = crate::checker::CheckResult::new(crate::checker::FAULT_BOUNDS);
    for violation in faults.iter().flat_map(|fault| fault.violations.iter()) {
        result.violation(violation.clone());
    }
    result
}
