//! What a run reports: a summary table, a JSON report and a timeline SVG
//! per scenario, written to the output directory.

use std::path::Path;

use serde::Serialize;

use crate::checker::crashes::NodeExit;
use crate::checker::CheckResult;
use crate::nemesis::schedule::Window;
use crate::nemesis::ActiveFault;

pub mod availability;
pub mod stats;
pub mod svg;
pub mod table;

#[derive(Clone, Debug, Default, Serialize)]
pub struct OpCounts {
    pub ok: usize,
    pub fail: usize,
    pub unknown: usize,
}

/// One scenario: a nemesis (or schedule) × a workload on one target.
#[derive(Clone, Debug, Serialize)]
pub struct CellReport {
    pub label: String,
    pub target: String,
    pub nemesis: String,
    pub workload: String,
    pub seed: u64,
    pub passed: bool,
    /// Why the scenario did not run its fault (the target cannot inject it).
    pub skipped: Option<String>,
    /// The runner itself failed (cluster did not start, …).
    pub error: Option<String>,
    pub ops: OpCounts,
    /// Per fault window: ms from injection until a write invoked after it
    /// succeeded.
    pub failover_ms: Vec<u64>,
    pub failover_p50_ms: Option<f64>,
    pub failover_p99_ms: Option<f64>,
    /// Leader changes, the longest write outage, failed and unknown writes.
    pub availability: availability::Availability,
    /// Successful operations per second before the first fault and during faults.
    pub steady_ops_per_s: f64,
    pub fault_ops_per_s: f64,
    pub schedule: Vec<Window>,
    pub faults: Vec<ActiveFault>,
    pub checks: Vec<CheckResult>,
    pub exits: Vec<NodeExit>,
    pub duration_s: f64,
    /// Files written for this scenario, relative to the output directory.
    pub files: Vec<String>,
    /// How to run exactly this scenario again.
    pub replay: String,
}

impl CellReport {
    /// Checkers that found a violation.
    pub fn failed_checkers(&self) -> Vec<&'static str> {
        self.checks
            .iter()
            .filter(|check| !check.passed)
            .map(|check| check.checker)
            .collect()
    }

    /// Percentage of the steady throughput kept during faults.
    pub fn held_percent(&self) -> Option<f64> {
        (self.steady_ops_per_s > 0.0).then(|| 100.0 * self.fault_ops_per_s / self.steady_ops_per_s)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub target: String,
    pub workload: String,
    pub seed: u64,
    pub passed: bool,
    pub cells: Vec<CellReport>,
}

impl Report {
    pub fn write(&self, out: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(out)?;
        std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(self)?)?;
        std::fs::write(out.join("summary.md"), table::markdown(self))?;
        Ok(())
    }
}
