//! The summary table: one row per scenario.

use std::fmt::Write as _;

use super::Report;

fn number(value: Option<f64>) -> String {
    value
        .map(|value| format!("{value:.0}"))
        .unwrap_or_else(|| "-".into())
}

/// A Markdown table (readable as plain text too).
pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "target: {}  seed: {}  result: {}\n",
        report.target,
        report.seed,
        if report.passed { "PASS" } else { "FAIL" }
    );
    let _ = writeln!(
        out,
        "| nemesis | workload | result | ops ok/fail/unknown | failover p50/p99 ms | leader changes | longest write gap ms | ops/s steady → fault (held) | notes |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for cell in &report.cells {
        let result = if let Some(reason) = &cell.skipped {
            format!("skip ({reason})")
        } else if cell.passed {
            "pass".to_string()
        } else if let Some(error) = &cell.error {
            format!(
                "FAIL (error: {})",
                error.chars().take(80).collect::<String>()
            )
        } else {
            format!("FAIL ({})", cell.failed_checkers().join(", "))
        };
        let held = cell
            .held_percent()
            .map(|held| format!(" ({held:.0}%)"))
            .unwrap_or_default();
        let notes: Vec<String> = cell
            .faults
            .iter()
            .flat_map(|fault| fault.notes.iter().cloned())
            .take(4)
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {}/{}/{} | {}/{} | {} | {} | {:.0} → {:.0}{} | {} |",
            cell.nemesis,
            cell.workload,
            result,
            cell.ops.ok,
            cell.ops.fail,
            cell.ops.unknown,
            number(cell.failover_p50_ms),
            number(cell.failover_p99_ms),
            cell.availability.leader_changes,
            cell.availability.longest_write_gap_ms,
            cell.steady_ops_per_s,
            cell.fault_ops_per_s,
            held,
            notes.join("; ").replace('|', "/"),
        );
    }
    for cell in report
        .cells
        .iter()
        .filter(|cell| !cell.passed && cell.skipped.is_none())
    {
        let _ = writeln!(
            out,
            "\n### {} — violations (replay: `{}`)",
            cell.label, cell.replay
        );
        if let Some(error) = &cell.error {
            let _ = writeln!(out, "- runner error: {error}");
        }
        for check in cell.checks.iter().filter(|check| !check.passed) {
            for violation in check.violations.iter().take(10) {
                let _ = writeln!(out, "- [{}] {violation}", check.checker);
            }
        }
    }
    out
}
