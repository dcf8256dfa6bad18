//! Checks of the workflow workload: acknowledged run starts survive, runs
//! end, and no stale attempt's result is accepted nor any step completed
//! twice (from the run records and the workers' execution logs).

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::{CheckResult, FENCING, RUNS_ACKNOWLEDGED, RUNS_TERMINAL};
use crate::workload::history::{Op, OpRecord, Outcome};
use crate::workload::worker::Execution;
use crate::workload::workflow::{Settled, MAP_ITEMS};

/// Everything the final phase collected.
#[derive(Debug, Default)]
pub struct WorkflowEvidence {
    pub starts: Vec<OpRecord>,
    pub settled: Settled,
    /// Run id → its last record.
    pub runs: BTreeMap<String, Value>,
    /// Run id → why it could not be read.
    pub read_errors: BTreeMap<String, String>,
    pub executions: Vec<Execution>,
    /// How long runs had after the faults healed (for messages).
    pub terminal_bound_s: u64,
}

pub fn check(evidence: &WorkflowEvidence) -> Vec<CheckResult> {
    vec![
        check_acknowledged(evidence),
        check_terminal(evidence),
        check_fencing(evidence),
    ]
}

/// Every acknowledged start still names its run, and the run exists.
fn check_acknowledged(evidence: &WorkflowEvidence) -> CheckResult {
    let mut result = CheckResult::new(RUNS_ACKNOWLEDGED);
    let mut acknowledged = 0;
    for record in &evidence.starts {
        let Op::RunStart {
            idempotency_key,
            run_id: Some(run_id),
        } = &record.op
        else {
            continue;
        };
        if record.outcome != Outcome::Ok {
            continue;
        }
        acknowledged += 1;
        match evidence.settled.run_ids.get(idempotency_key) {
            Some(now) if now != run_id => result.violation(format!(
                "idempotency key {idempotency_key}: acknowledged run {run_id} at {:.3}s, but the key now names run {now} (the start was lost)",
                record.completed_us as f64 / 1e6
            )),
            Some(_) => {}
            None => result.note(format!("idempotency key {idempotency_key} could not be re-checked after the faults")),
        }
        if let Some(error) = evidence.read_errors.get(run_id) {
            if error.contains("NotFound") {
                result.violation(format!(
                    "acknowledged run {run_id} (key {idempotency_key}) is gone: {error}"
                ));
            }
        }
    }
    for (key, error) in &evidence.settled.unsettled {
        result.note(format!("key {key} could not be settled: {error}"));
    }
    result.note(format!("{acknowledged} acknowledged run starts checked"));
    result
}

/// Every run reached a terminal state within the bound after the faults.
fn check_terminal(evidence: &WorkflowEvidence) -> CheckResult {
    let mut result = CheckResult::new(RUNS_TERMINAL);
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    let mut run_ids: Vec<&String> = evidence.settled.run_ids.values().collect();
    run_ids.sort();
    run_ids.dedup();
    for run_id in run_ids {
        let Some(run) = evidence.runs.get(run_id) else {
            let error = evidence
                .read_errors
                .get(run_id)
                .map(String::as_str)
                .unwrap_or("never read");
            result.violation(format!(
                "run {run_id} could not be read after the faults: {error}"
            ));
            continue;
        };
        let status = run["status"].as_str().unwrap_or("?").to_string();
        if status == "Running" {
            result.violation(format!(
                "run {run_id} still running {} s after the faults healed (waiting on {})",
                evidence.terminal_bound_s, run["outstanding"]
            ));
        }
        if status == "Failed" {
            result.note(format!("run {run_id} failed: {}", run["error"]));
        }
        *by_status.entry(status).or_default() += 1;
    }
    result.note(format!("runs by status: {by_status:?}"));
    result
}

/// Attempts of one task slot (a task step, or one map item), in record order.
fn slots(step: &Value) -> BTreeMap<Option<u64>, Vec<&Value>> {
    let mut slots: BTreeMap<Option<u64>, Vec<&Value>> = BTreeMap::new();
    for attempt in step["attempts"].as_array().into_iter().flatten() {
        slots
            .entry(attempt["item"].as_u64())
            .or_default()
            .push(attempt);
    }
    slots
}

fn succeeded(attempt: &Value) -> bool {
    !attempt["finished_at_ms"].is_null() && attempt["error"].is_null()
}

/// Checks that the output accepted for a slot came from its last attempt
/// and from a recorded, non-stale execution of that attempt.
fn check_output(
    result: &mut CheckResult,
    place: &str,
    output: &Value,
    last_attempt: u64,
    executions: &HashMap<&str, &Execution>,
) {
    if output["stale"] == Value::Bool(true) {
        result.violation(format!(
            "{place}: accepted the late result of superseded attempt {} (current attempt {last_attempt})",
            output["attempt"]
        ));
        return;
    }
    if output["attempt"].as_u64() != Some(last_attempt) {
        result.violation(format!(
            "{place}: accepted the result of attempt {} but its last attempt is {last_attempt}",
            output["attempt"]
        ));
    }
    let Some(exec) = output["exec"].as_str() else {
        return;
    };
    match executions.get(exec) {
        None => result.note(format!("{place}: execution {exec} is not in the workers' logs (worker killed before its line was written?)")),
        Some(execution) if u64::from(execution.attempt) != last_attempt || execution.kind != "ok" => result.violation(format!(
            "{place}: accepted execution {exec} of attempt {} ({}), last attempt is {last_attempt}",
            execution.attempt, execution.kind
        )),
        Some(_) => {}
    }
}

/// No stale attempt accepted; no slot completed twice; attempt numbers only grow.
fn check_fencing(evidence: &WorkflowEvidence) -> CheckResult {
    let mut result = CheckResult::new(FENCING);
    let executions: HashMap<&str, &Execution> = evidence
        .executions
        .iter()
        .map(|e| (e.exec.as_str(), e))
        .collect();
    let mut slots_checked = 0;
    for (run_id, run) in &evidence.runs {
        let Some(steps) = run["steps"].as_object() else {
            continue;
        };
        for (step_id, step) in steps {
            for (item, attempts) in slots(step) {
                slots_checked += 1;
                let place = match item {
                    Some(item) => format!("run {run_id} step {step_id} item {item}"),
                    None => format!("run {run_id} step {step_id}"),
                };
                let numbers: Vec<u64> = attempts
                    .iter()
                    .filter_map(|attempt| attempt["attempt"].as_u64())
                    .collect();
                if numbers.windows(2).any(|pair| pair[0] >= pair[1]) {
                    result.violation(format!(
                        "{place}: attempt numbers do not only grow: {numbers:?}"
                    ));
                }
                let successes = attempts.iter().filter(|attempt| succeeded(attempt)).count();
                if successes > 1 {
                    result.violation(format!("{place}: {successes} attempts succeeded; the step completed more than once"));
                }
                let last = numbers.last().copied().unwrap_or(0);
                let last_succeeded = attempts.last().is_some_and(|attempt| succeeded(attempt));
                if successes == 1 && !last_succeeded {
                    result.violation(format!("{place}: an attempt before the last one succeeded, yet another was scheduled: {numbers:?}"));
                }
                let output = match item {
                    None => &step["output"],
                    Some(index) => &step["output"][index as usize],
                };
                let completed = match item {
                    None => step["status"] == "Completed",
                    Some(_) => !output.is_null(),
                };
                if completed && output.is_object() {
                    check_output(&mut result, &place, output, last, &executions);
                }
            }
            if step_id == "pages" && step["status"] == "Completed" {
                let items = step["output"].as_array().map(Vec::len).unwrap_or(0);
                if items != MAP_ITEMS {
                    result.violation(format!(
                        "run {run_id} step pages: {items} item outputs for {MAP_ITEMS} items"
                    ));
                }
            }
        }
    }
    let stale_replays = evidence
        .executions
        .iter()
        .filter(|execution| execution.kind == "stale-replay")
        .count();
    result.note(format!("{slots_checked} task slots checked; {stale_replays} late answers for superseded attempts were sent"));
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn execution(exec: &str, attempt: u32, kind: &str) -> Execution {
        Execution {
            worker: "w".into(),
            exec: exec.into(),
            run_id: "r".into(),
            step_id: "left".into(),
            item: None,
            attempt,
            block: "chaos.flaky".into(),
            kind: kind.into(),
        }
    }

    fn run_with_left(output: Value) -> WorkflowEvidence {
        let run = json!({
            "status": "Completed",
            "steps": { "left": {
                "status": "Completed",
                "output": output,
                "attempts": [
                    { "attempt": 1, "item": null, "finished_at_ms": 5, "error": "the first attempt fails by design" },
                    { "attempt": 2, "item": null, "finished_at_ms": 9, "error": null }
                ]
            }}
        });
        WorkflowEvidence {
            runs: [("r".to_string(), run)].into(),
            executions: vec![execution("e1", 1, "stale-replay"), execution("e2", 2, "ok")],
            ..Default::default()
        }
    }

    fn fencing(evidence: &WorkflowEvidence) -> CheckResult {
        check(evidence)
            .into_iter()
            .find(|result| result.checker == FENCING)
            .unwrap()
    }

    #[test]
    fn the_current_attempts_result_passes() {
        let evidence = run_with_left(json!({ "attempt": 2, "exec": "e2" }));
        assert!(fencing(&evidence).passed, "{:?}", fencing(&evidence));
    }

    #[test]
    fn a_stale_attempts_result_is_a_violation() {
        let evidence = run_with_left(json!({ "attempt": 1, "exec": "e1", "stale": true }));
        let result = fencing(&evidence);
        assert!(!result.passed);
        assert!(
            result.violations[0].contains("superseded attempt 1"),
            "{:?}",
            result.violations
        );
        let evidence = run_with_left(json!({ "attempt": 1, "exec": "e1" }));
        assert!(!fencing(&evidence).passed);
    }

    #[test]
    fn two_successful_attempts_are_a_violation() {
        let mut evidence = run_with_left(json!({ "attempt": 2, "exec": "e2" }));
        evidence.runs.get_mut("r").unwrap()["steps"]["left"]["attempts"][0]["error"] = Value::Null;
        assert!(!fencing(&evidence).passed);
    }

    #[test]
    fn a_lost_acknowledged_start_is_a_violation() {
        let start = OpRecord {
            process: 0,
            node: 1,
            op: Op::RunStart {
                idempotency_key: "k-p0-1".into(),
                run_id: Some("r1".into()),
            },
            invoked_us: 0,
            completed_us: 5,
            outcome: Outcome::Ok,
            error: None,
        };
        let mut evidence = WorkflowEvidence {
            starts: vec![start],
            ..Default::default()
        };
        evidence
            .settled
            .run_ids
            .insert("k-p0-1".into(), "r2".into());
        let results = check(&evidence);
        assert!(!results[0].passed, "{:?}", results[0]);
        evidence
            .settled
            .run_ids
            .insert("k-p0-1".into(), "r1".into());
        evidence
            .runs
            .insert("r1".into(), json!({ "status": "Running", "steps": {} }));
        let results = check(&evidence);
        assert!(results[0].passed);
        assert!(
            !results[1].passed,
            "a running run must fail the terminal check"
        );
    }
}
