//! After the load: final reads, settling run starts, waiting for runs,
//! every checker, and the files written for a scenario.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Cell, RunConfig};
use crate::checker::crashes::NodeExit;
use crate::checker::workflow::WorkflowEvidence;
use crate::checker::{self, CheckResult};
use crate::nemesis::inject::{with_target, SharedTarget};
use crate::report::{svg, CellReport, OpCounts};
use crate::workload::history::{Clock, History, Op, OpRecord, Outcome};
use crate::workload::register;
use crate::workload::worker::{read_executions, WorkerProcess};
use crate::workload::workflow;
use floe_api::client::ClientOptions;

pub(super) fn count_ops(records: &[OpRecord]) -> OpCounts {
    let mut counts = OpCounts::default();
    for record in records {
        match record.outcome {
            Outcome::Ok => counts.ok += 1,
            Outcome::Fail => counts.fail += 1,
            Outcome::Unknown => counts.unknown += 1,
        }
    }
    counts
}

/// Final reads, settling, waiting for runs, then every checker.
#[allow(clippy::too_many_arguments)]
pub(super) async fn final_checks(
    config: &RunConfig,
    target: &SharedTarget,
    all_nodes: &floe_api::client::ClientOptions,
    namespace: &str,
    history: &History,
    clock: &Clock,
    workers: &mut [WorkerProcess],
    exits: Arc<Mutex<Vec<NodeExit>>>,
) -> Vec<CheckResult> {
    let mut checks = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut client = match workflow::connect_any(all_nodes, deadline).await {
        Ok(client) => Some(client),
        Err(err) => {
            let mut result = CheckResult::new(checker::CONVERGENCE);
            result.violation(format!("no node accepts clients after the faults: {err:#}"));
            checks.push(result);
            None
        }
    };
    if config.workload.register() {
        if let Some(client) = client.as_mut() {
            final_reads(client, namespace, config.register.keys, history, clock).await;
        }
        let final_set = match client.as_mut() {
            Some(client) => register::list_all(client, &register::set_prefix(namespace))
                .await
                .ok()
                .map(|keys| keys.into_iter().collect::<BTreeSet<_>>()),
            None => None,
        };
        let records = history.snapshot();
        checks.push(checker::register::check_linearizable(&records));
        checks.push(checker::register::check_set(&records, final_set.as_ref()));
    }
    if config.workload.workflow() {
        if let Some(client) = client.as_mut() {
            let evidence = collect_workflow(config, client, history, workers).await;
            checks.extend(checker::workflow::check(&evidence));
        }
    }
    let nodes: BTreeMap<u64, ClientOptions> = with_target(target, |target| {
        target
            .nodes()
            .into_iter()
            .filter_map(|id| {
                target
                    .client_options(&[id])
                    .ok()
                    .map(|options| (id, options))
            })
            .collect()
    });
    checks.push(checker::convergence::check(&nodes, Duration::from_secs(30)).await);
    let exits = exits.lock().unwrap_or_else(|p| p.into_inner()).clone();
    checks.push(checker::crashes::check(&exits));
    checks
}

/// One linearizable read of every register key, retried until it succeeds
/// (bounded), appended to the history: the state the cluster ended in.
async fn final_reads(
    client: &mut floe_api::client::FloeClient,
    namespace: &str,
    keys: usize,
    history: &History,
    clock: &Clock,
) {
    for index in 0..keys {
        let key = register::register_key(namespace, index);
        for _ in 0..50 {
            let invoked_us = clock.now_us();
            let (op, outcome, error) = register::get(client, &key, Duration::from_secs(3)).await;
            if outcome == Outcome::Ok {
                let completed_us = clock.now_us();
                history.push(OpRecord {
                    process: 999,
                    node: 0,
                    op,
                    invoked_us,
                    completed_us,
                    outcome,
                    error,
                });
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

async fn collect_workflow(
    config: &RunConfig,
    client: &mut floe_api::client::FloeClient,
    history: &History,
    workers: &mut [WorkerProcess],
) -> WorkflowEvidence {
    let starts: Vec<OpRecord> = history
        .snapshot()
        .into_iter()
        .filter(|record| matches!(record.op, Op::RunStart { .. }))
        .collect();
    let keys: Vec<String> = starts
        .iter()
        .filter_map(|record| match &record.op {
            Op::RunStart {
                idempotency_key, ..
            } => Some(idempotency_key.clone()),
            _ => None,
        })
        .collect();
    let terminal_deadline = Instant::now() + config.timing.terminal_bound;
    let settled = workflow::settle_keys(client, &keys, terminal_deadline).await;
    let mut run_ids: Vec<String> = settled.run_ids.values().cloned().collect();
    for record in &starts {
        if let Op::RunStart {
            run_id: Some(run_id),
            ..
        } = &record.op
        {
            run_ids.push(run_id.clone());
        }
    }
    run_ids.sort();
    run_ids.dedup();
    let (runs, read_errors) = workflow::wait_terminal(client, &run_ids, terminal_deadline).await;
    // Stop the workers before reading their logs, so the logs are complete.
    for worker in workers.iter_mut() {
        worker.kill();
    }
    let executions = workers
        .iter()
        .flat_map(|worker| read_executions(&worker.record))
        .collect();
    WorkflowEvidence {
        starts,
        settled,
        runs,
        read_errors,
        executions,
        terminal_bound_s: config.timing.terminal_bound.as_secs(),
    }
}

pub(super) fn write_artifacts(
    config: &RunConfig,
    cell: &Cell,
    dir: &std::path::Path,
    report: &mut CellReport,
    records: &[OpRecord],
    end_us: u64,
) -> anyhow::Result<()> {
    let history_path = dir.join("history.jsonl");
    let mut lines = String::new();
    for record in records {
        lines.push_str(&serde_json::to_string(record)?);
        lines.push('\n');
    }
    std::fs::write(&history_path, lines)?;
    let title = format!(
        "{} × {} on {} (seed {})",
        cell.nemesis_name,
        config.workload.name(),
        config.target.name(),
        cell.seed
    );
    let timeline = svg::render(&title, records, &report.faults, end_us);
    let svg_path = dir.join("timeline.svg");
    std::fs::write(&svg_path, timeline)?;
    for path in [&history_path, &svg_path] {
        if let Ok(relative) = path.strip_prefix(&config.out) {
            report.files.push(relative.display().to_string());
        }
    }
    Ok(())
}
