//! Checkers: each reads what the workloads recorded (and what the cluster
//! reports at the end) and lists the violations of one guarantee.

use serde::Serialize;

pub mod convergence;
pub mod crashes;
pub mod linearizable;
pub mod register;
pub mod workflow;

/// The names checkers report under (stable: tests and docs refer to them).
pub const LINEARIZABLE: &str = "linearizable";
pub const ACKED_WRITES: &str = "acked-writes-present";
pub const RUNS_ACKNOWLEDGED: &str = "runs-acknowledged";
pub const RUNS_TERMINAL: &str = "runs-terminal";
pub const FENCING: &str = "fencing";
pub const CONVERGENCE: &str = "convergence";
pub const NO_CRASH_LOOP: &str = "no-crash-loop";
pub const FAULT_BOUNDS: &str = "fault-bounds";

#[derive(Clone, Debug, Serialize)]
pub struct CheckResult {
    pub checker: &'static str,
    pub passed: bool,
    /// Each violation, naming what was wrong and where.
    pub violations: Vec<String>,
    /// Things worth knowing that are not violations.
    pub notes: Vec<String>,
}

impl CheckResult {
    pub fn new(checker: &'static str) -> CheckResult {
        CheckResult {
            checker,
            passed: true,
            violations: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn violation(&mut self, text: impl Into<String>) {
        self.passed = false;
        // A broken build can produce thousands; the first ones tell the story.
        if self.violations.len() < 50 {
            self.violations.push(text.into());
        } else if self.violations.len() == 50 {
            self.violations.push("… further violations omitted".into());
        }
    }

    pub fn note(&mut self, text: impl Into<String>) {
        if self.notes.len() < 50 {
            self.notes.push(text.into());
        }
    }
}
