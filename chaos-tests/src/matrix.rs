//! A set of scenarios: every nemesis once, one, or a random schedule.

use std::time::Duration;

use crate::nemesis::{schedule, Nemesis, Selection, ALL};
use crate::report::{CellReport, Report};
use crate::scenario::{run_cell, Cell, RunConfig, TargetChoice};

/// Nemeses a target kind can run (containers and external have no clock
/// skew, disk-full or peer-only isolation; external has no tunable config
/// for snapshot catch-up).
pub fn supported(target: &TargetChoice, nemesis: Nemesis) -> bool {
    match target {
        TargetChoice::Local { .. } => true,
        TargetChoice::Containers(_) | TargetChoice::External { .. } => !matches!(
            nemesis,
            Nemesis::ClockSkew
                | Nemesis::DiskFull
                | Nemesis::SnapshotCatchup
                | Nemesis::IsolateLeaderPeers
        ),
    }
}

/// A seed per scenario derived from the run's seed and the scenario's name,
/// so one scenario can be replayed alone with the same draws.
pub fn cell_seed(seed: u64, label: &str) -> u64 {
    label
        .bytes()
        .fold(seed ^ 0xcbf2_9ce4_8422_2325, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        })
}

fn replay_command(config: &RunConfig, nemesis: &str, seconds: u64) -> String {
    format!(
        "floe-chaos --target {} --nemesis {nemesis} --workload {} --seconds {seconds} --seed {}",
        config.target.name(),
        config.workload.name(),
        config.seed
    )
}

/// The scenarios `selection` stands for. `seconds`: the fault window of a
/// single nemesis, or the whole schedule's length for `random`.
pub fn cells(config: &RunConfig, selection: &Selection, seconds: u64) -> Vec<Cell> {
    let timing = &config.timing;
    let fault = Duration::from_secs(seconds.max(1));
    let single = |nemesis: Nemesis| {
        let label = nemesis.name().to_string();
        Cell {
            seed: cell_seed(config.seed, &label),
            nemesis_name: label.clone(),
            windows: schedule::single(nemesis, timing.steady, fault),
            replay: replay_command(config, nemesis.name(), seconds),
            label,
        }
    };
    match selection {
        Selection::One(nemesis) => vec![single(*nemesis)],
        Selection::List(list) => list.iter().copied().map(single).collect(),
        Selection::All => ALL
            .into_iter()
            .filter(|nemesis| supported(&config.target, *nemesis))
            .map(single)
            .collect(),
        Selection::None => vec![Cell {
            label: "none".into(),
            nemesis_name: "none".into(),
            windows: Vec::new(),
            seed: cell_seed(config.seed, "none"),
            replay: replay_command(config, "none", seconds),
        }],
        Selection::Random => {
            let enabled: Vec<Nemesis> = ALL
                .into_iter()
                .filter(|nemesis| supported(&config.target, *nemesis))
                .collect();
            let seed = cell_seed(config.seed, "random");
            let windows = schedule::random(
                seed,
                &enabled,
                timing.steady,
                timing.steady + Duration::from_secs(seconds.max(4)),
            );
            vec![Cell {
                label: "random".into(),
                nemesis_name: format!("random ({} faults)", windows.len()),
                windows,
                seed,
                replay: replay_command(config, "random", seconds),
            }]
        }
    }
}

/// Runs the scenarios one after another and collects the report.
pub async fn run(config: &RunConfig, cells: &[Cell]) -> Report {
    let mut reports: Vec<CellReport> = Vec::new();
    for cell in cells {
        let started = std::time::Instant::now();
        let report = run_cell(config, cell).await;
        let verdict = if report.skipped.is_some() {
            "skipped".to_string()
        } else if report.passed {
            "pass".to_string()
        } else {
            format!(
                "FAIL {:?} {}",
                report.failed_checkers(),
                report.error.clone().unwrap_or_default()
            )
        };
        eprintln!(
            "[floe-chaos] {} × {}: {verdict} ({:.1}s)",
            cell.label,
            config.workload.name(),
            started.elapsed().as_secs_f64()
        );
        reports.push(report);
    }
    let passed = reports.iter().all(|report| report.passed);
    Report {
        target: config.target.name().to_string(),
        workload: config.workload.name().to_string(),
        seed: config.seed,
        passed,
        cells: reports,
    }
}
