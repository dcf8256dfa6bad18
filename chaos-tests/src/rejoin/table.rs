//! The rejoin measurement as Markdown: one row per trial, then a summary.

use std::fmt::Write as _;

use super::trial::{Signal, Trial};
use crate::report::stats::quantile;

fn show<T: std::fmt::Display>(value: Option<T>) -> String {
    value
        .map(|value| value.to_string())
        .unwrap_or_else(|| "-".into())
}

/// Trials with at least one leader change, and all changes together.
pub fn changes(trials: &[Trial]) -> (usize, usize) {
    let with_change = trials
        .iter()
        .filter(|trial| trial.leader_changes > 0)
        .count();
    (
        with_change,
        trials.iter().map(|trial| trial.leader_changes).sum(),
    )
}

pub fn markdown(trials: &[Trial], header: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{header}\n");
    let _ = writeln!(
        out,
        "| trial | node | signal | down ms | leader before → after | term before → after | leader changes | writes failed (elsewhere)/ok | ready ms |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for trial in trials {
        let signal = match trial.signal {
            Signal::Kill => "KILL",
            Signal::Term => "TERM",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {signal} | {} | {} → {} | {} → {} | {} | {} ({})/{} | {} |",
            trial.index,
            trial.node,
            trial.down_ms,
            show(trial.leader_before),
            show(trial.leader_after),
            show(trial.term_before),
            show(trial.term_after),
            trial.leader_changes,
            trial.writes_failed,
            trial.writes_failed_elsewhere,
            trial.writes_ok,
            show(trial.time_to_ready_ms),
        );
    }
    let (with_change, total) = changes(trials);
    let ready: Vec<u64> = trials
        .iter()
        .filter_map(|trial| trial.time_to_ready_ms)
        .collect();
    let not_ready = trials.len() - ready.len();
    let failed: usize = trials.iter().map(|trial| trial.writes_failed).sum();
    let elsewhere: usize = trials
        .iter()
        .map(|trial| trial.writes_failed_elsewhere)
        .sum();
    let _ = writeln!(out, "\n**Summary**: {} trials; {with_change} with a leader change, {total} leader changes in all;", trials.len());
    let _ = writeln!(
        out,
        "time to ready p50 {} ms, p99 {} ms ({not_ready} not ready within the bound); {failed} writes failed or unknown,\n{elsewhere} of them through nodes that stayed up.",
        show(quantile(&ready, 0.5)),
        show(quantile(&ready, 0.99)),
    );
    out
}
