//! System steps (decision, fork/join, transform, terminate) and the steps
//! that wait on something other than a task (wait, signal, subflow).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::machine::Machine;
use super::{ChildOutcome, Effect, RunError, StepStatus, TimerKey};
use crate::error::{excerpt, kind_of};
use crate::model::{
    DecisionStep, ForkStep, SignalStep, Step, SubflowStep, TerminateStep, TransformStep, WaitStep,
};

pub(super) const WAIT_TIMER: &str = "wait";
pub(super) const SIGNAL_TIMEOUT_TIMER: &str = "signal-timeout";

/// A fork's `progress`: the state of each branch.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct ForkProgress {
    pub branches: BTreeMap<String, BranchProgress>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct BranchProgress {
    /// "running" or "done" (reached the join).
    pub status: String,
    /// The step that reached the join.
    #[serde(default)]
    pub last_step: Option<String>,
    /// That step's output.
    #[serde(default)]
    pub output: Value,
}

pub(super) fn step_path(index: usize) -> String {
    format!("$.steps[{index}]")
}

impl<'a> Machine<'a> {
    pub(super) fn timer_key(
        &self,
        step_id: &str,
        item: Option<u32>,
        purpose: &str,
        attempt: u32,
    ) -> TimerKey {
        TimerKey {
            run_id: self.run.run_id.clone(),
            step_id: step_id.to_string(),
            item,
            purpose: purpose.to_string(),
            attempt,
        }
    }

    pub(super) fn start_timer(&mut self, timer: TimerKey, due_ms: u64) {
        self.run.outstanding.timers.insert(timer.clone());
        self.emit(Effect::StartTimer { timer, due_ms });
    }

    pub(super) fn cancel_timer(&mut self, timer: &TimerKey) {
        if self.run.outstanding.timers.remove(timer) {
            self.emit(Effect::CancelTimer {
                timer: timer.clone(),
            });
        }
    }

    pub(super) fn enter_decision(&mut self, index: usize, decision: &DecisionStep) {
        let step_id = decision.id.as_str();
        let mut chosen: Option<(Option<usize>, &str)> = None;
        for (case_index, case) in decision.cases.iter().enumerate() {
            let path = format!("{}.cases[{case_index}].when", step_path(index));
            let value = match self.evaluate_expression(step_id, &path, &case.when, self.variables())
            {
                Ok(value) => value,
                Err(error) => return self.fail_step(step_id, error, None),
            };
            match value {
                Value::Bool(true) => {
                    chosen = Some((Some(case_index), case.next.as_str()));
                    break;
                }
                Value::Bool(false) => {}
                other => {
                    let error = format!(
                        "step {step_id:?} at {path}: expression {:?} yielded {} {}, expected a boolean",
                        case.when,
                        kind_of(&other),
                        excerpt(&other)
                    );
                    return self.fail_step(step_id, error, None);
                }
            }
        }
        let (case, next) = chosen.unwrap_or((None, decision.default.as_str()));
        if let Some(record) = self.record_mut(step_id) {
            record.progress = serde_json::json!({ "case": case, "next": next });
        }
        self.complete_step(step_id, Value::Null, Some(next));
    }

    pub(super) fn enter_fork(&mut self, fork: &ForkStep) {
        let mut progress = ForkProgress::default();
        for branch in &fork.branches {
            progress.branches.insert(
                branch.name.clone(),
                BranchProgress {
                    status: "running".to_string(),
                    last_step: None,
                    output: Value::Null,
                },
            );
        }
        if let Some(record) = self.record_mut(&fork.id) {
            record.progress = serde_json::to_value(&progress).unwrap_or(Value::Null);
        }
        for branch in &fork.branches {
            if branch.start == fork.join {
                self.push_arrival(&fork.id, &branch.name);
            } else {
                self.push_enter(&branch.start);
            }
        }
    }

    /// Branch `branch` of fork `fork_id` reached the join; the join
    /// completes once every branch has.
    pub(super) fn arrive_at_join(
        &mut self,
        fork_id: &str,
        branch: &str,
        last_step: Option<String>,
        output: Value,
    ) {
        let Some(Step::Fork(fork)) = self.def.step(fork_id) else {
            return self.fail_run(
                format!("flow {:?} has no fork {fork_id:?}", self.def.name),
                None,
            );
        };
        let Some(record) = self.run.steps.get_mut(fork_id) else {
            return self.fail_run(format!("fork {fork_id:?} was never entered"), None);
        };
        let mut progress: ForkProgress =
            serde_json::from_value(record.progress.clone()).unwrap_or_default();
        progress.branches.insert(
            branch.to_string(),
            BranchProgress {
                status: "done".to_string(),
                last_step,
                output,
            },
        );
        record.progress = serde_json::to_value(&progress).unwrap_or(Value::Null);
        let all_done = fork.branches.iter().all(|declared| {
            progress
                .branches
                .get(&declared.name)
                .is_some_and(|state| state.status == "done")
        });
        if !all_done {
            return;
        }
        let now = self.now;
        record.status = StepStatus::Completed;
        record.finished_at_ms = Some(now);
        record.output = None;
        let mut joined = serde_json::Map::new();
        for declared in &fork.branches {
            let branch_output = progress
                .branches
                .get(&declared.name)
                .map(|state| state.output.clone())
                .unwrap_or(Value::Null);
            joined.insert(declared.name.clone(), branch_output);
        }
        let join_id = fork.join.as_str();
        let join_next = match self.def.step(join_id) {
            Some(Step::Join(join)) => join.next.as_deref(),
            _ => None,
        };
        let mut join_record = self.new_record();
        join_record.progress = serde_json::to_value(&progress).unwrap_or(Value::Null);
        self.run.steps.insert(join_id.to_string(), join_record);
        self.complete_step(join_id, Value::Object(joined), join_next);
    }

    pub(super) fn enter_transform(&mut self, index: usize, transform: &TransformStep) {
        let path = format!("{}.output", step_path(index));
        match self.evaluate_mapping(&transform.id, &path, &transform.output, self.variables()) {
            Ok(output) => self.complete_step(&transform.id, output, transform.next.as_deref()),
            Err(error) => self.fail_step(&transform.id, error, None),
        }
    }

    pub(super) fn enter_terminate(&mut self, index: usize, terminate: &TerminateStep) {
        let output = match &terminate.output {
            None => Value::Null,
            Some(mapping) => {
                let path = format!("{}.output", step_path(index));
                match self.evaluate_mapping(&terminate.id, &path, mapping, self.variables()) {
                    Ok(output) => output,
                    Err(error) => return self.fail_step(&terminate.id, error, None),
                }
            }
        };
        // No next: completing the step ends the run with its output.
        self.complete_step(&terminate.id, output, None);
    }

    pub(super) fn enter_subflow(&mut self, index: usize, subflow: &SubflowStep) {
        let path = format!("{}.input", step_path(index));
        let input =
            match self.evaluate_mapping(&subflow.id, &path, &subflow.input, self.variables()) {
                Ok(input) => input,
                Err(error) => return self.fail_step(&subflow.id, error, None),
            };
        if let Some(record) = self.record_mut(&subflow.id) {
            record.input = Some(input.clone());
            record.progress = serde_json::json!({
                "flow": subflow.flow,
                "version": subflow.version,
                "child_run_id": null,
            });
        }
        self.run.outstanding.child_runs.insert(subflow.id.clone());
        self.emit(Effect::StartChildRun {
            step_id: subflow.id.clone(),
            flow: subflow.flow.clone(),
            version: u64::from(subflow.version),
            input,
        });
    }

    pub(super) fn on_child_finished(
        &mut self,
        step_id: &str,
        outcome: ChildOutcome,
    ) -> Result<(), RunError> {
        let Some(Step::Subflow(subflow)) = self.def.step(step_id) else {
            return Err(RunError::NotApplicable(format!(
                "run {:?} has no subflow step {step_id:?}",
                self.run.run_id
            )));
        };
        if !self.step_is_running(step_id) || !self.run.outstanding.child_runs.remove(step_id) {
            return Err(RunError::NotApplicable(format!(
                "run {:?}: subflow step {step_id:?} is not waiting for a child run",
                self.run.run_id
            )));
        }
        match outcome {
            ChildOutcome::Completed(output) => {
                self.complete_step(step_id, output, subflow.next.as_deref())
            }
            ChildOutcome::Failed(error) => self.fail_step(
                step_id,
                format!(
                    "step {step_id:?}: child run of flow {:?} v{} failed: {error}",
                    subflow.flow, subflow.version
                ),
                None,
            ),
            ChildOutcome::Cancelled => self.fail_step(
                step_id,
                format!(
                    "step {step_id:?}: child run of flow {:?} v{} was cancelled",
                    subflow.flow, subflow.version
                ),
                None,
            ),
        }
        Ok(())
    }

    pub(super) fn enter_wait(&mut self, index: usize, wait: &WaitStep) {
        let step_id = wait.id.as_str();
        let due_ms = if let Some(duration) = wait.duration_ms {
            self.now.saturating_add(duration)
        } else if let Some(until) = &wait.until {
            let path = format!("{}.until", step_path(index));
            let value = match self.evaluate_expression(step_id, &path, until, self.variables()) {
                Ok(value) => value,
                Err(error) => return self.fail_step(step_id, error, None),
            };
            match epoch_ms(&value) {
                Some(due) => due,
                None => {
                    let error = format!(
                        "step {step_id:?} at {path}: expression {until:?} yielded {} {}, expected epoch milliseconds (a number)",
                        kind_of(&value),
                        excerpt(&value)
                    );
                    return self.fail_step(step_id, error, None);
                }
            }
        } else {
            // Validation requires one of the two; without either there is
            // nothing to wait for.
            self.now
        };
        if let Some(record) = self.record_mut(step_id) {
            record.progress = serde_json::json!({ "due_ms": due_ms });
        }
        if due_ms <= self.now {
            return self.complete_step(step_id, Value::Null, wait.next.as_deref());
        }
        let timer = self.timer_key(step_id, None, WAIT_TIMER, 0);
        self.start_timer(timer, due_ms);
    }

    pub(super) fn enter_signal(&mut self, signal: &SignalStep) {
        let timeout_at_ms = signal
            .timeout_ms
            .map(|timeout| self.now.saturating_add(timeout));
        let progress =
            serde_json::json!({ "signal": signal.signal, "timeout_at_ms": timeout_at_ms });
        if let Some(due_ms) = timeout_at_ms {
            let timer = self.timer_key(&signal.id, None, SIGNAL_TIMEOUT_TIMER, 0);
            self.start_timer(timer, due_ms);
        }
        if let Some(record) = self.record_mut(&signal.id) {
            record.progress = progress;
        }
    }

    /// Running signal steps waiting for `name`, in step-id order.
    pub(super) fn waiting_signal_steps(&self) -> Vec<&'a SignalStep> {
        let mut waiting = Vec::new();
        for (step_id, record) in &self.run.steps {
            if record.status != StepStatus::Running {
                continue;
            }
            if let Some((_, Step::Signal(signal))) = self.step_at(step_id) {
                waiting.push(signal);
            }
        }
        waiting
    }

    /// Delivers a signal to every running step waiting for it.
    pub(super) fn on_signal(&mut self, name: &str, payload: Value) -> Result<(), RunError> {
        let waiting = self.waiting_signal_steps();
        let receivers: Vec<&SignalStep> = waiting
            .iter()
            .filter(|signal| signal.signal == name)
            .copied()
            .collect();
        if receivers.is_empty() {
            let mut names: Vec<&str> = waiting
                .iter()
                .map(|signal| signal.signal.as_str())
                .collect();
            names.sort_unstable();
            names.dedup();
            return Err(RunError::NotApplicable(format!(
                "run {:?} is not waiting for signal {name:?}; it waits for: [{}]",
                self.run.run_id,
                names
                    .iter()
                    .map(|name| format!("{name:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        for signal in receivers {
            let timer = self.timer_key(&signal.id, None, SIGNAL_TIMEOUT_TIMER, 0);
            self.cancel_timer(&timer);
            self.complete_step(&signal.id, payload.clone(), signal.next.as_deref());
        }
        Ok(())
    }

    pub(super) fn on_timer_fired(&mut self, timer: TimerKey) -> Result<(), RunError> {
        if timer.run_id != self.run.run_id {
            return Err(RunError::NotApplicable(format!(
                "timer {timer:?} belongs to run {:?}, not {:?}",
                timer.run_id, self.run.run_id
            )));
        }
        match timer.purpose.as_str() {
            WAIT_TIMER => {
                let Some(Step::Wait(wait)) = self.def.step(&timer.step_id) else {
                    return Err(not_pending(&timer));
                };
                if !self.step_is_running(&wait.id) || !self.run.outstanding.timers.remove(&timer) {
                    return Err(not_pending(&timer));
                }
                self.complete_step(&wait.id, Value::Null, wait.next.as_deref());
                Ok(())
            }
            SIGNAL_TIMEOUT_TIMER => {
                let Some(Step::Signal(signal)) = self.def.step(&timer.step_id) else {
                    return Err(not_pending(&timer));
                };
                if !self.step_is_running(&signal.id) || !self.run.outstanding.timers.remove(&timer)
                {
                    return Err(not_pending(&timer));
                }
                let error = format!(
                    "step {:?}: no signal {:?} within {} ms",
                    signal.id,
                    signal.signal,
                    signal.timeout_ms.unwrap_or_default()
                );
                self.fail_step(&signal.id, error, signal.on_timeout.as_ref());
                Ok(())
            }
            super::machine::CONTINUE_TIMER => self.on_continue(&timer),
            _ => self.on_task_timer_fired(timer),
        }
    }

    pub(super) fn new_record(&self) -> super::StepRecord {
        super::StepRecord {
            status: StepStatus::Running,
            started_at_ms: self.now,
            finished_at_ms: None,
            input: None,
            output: None,
            error: None,
            attempts: Vec::new(),
            progress: Value::Null,
        }
    }
}

pub(super) fn not_pending(timer: &TimerKey) -> RunError {
    RunError::NotApplicable(format!(
        "timer {:?} of step {:?} (attempt {}) is not pending in run {:?}; ignored",
        timer.purpose, timer.step_id, timer.attempt, timer.run_id
    ))
}

/// Epoch milliseconds from a number: integers as they are (negative → 0),
/// doubles rounded up; anything else is not a time.
fn epoch_ms(value: &Value) -> Option<u64> {
    let Value::Number(number) = value else {
        return None;
    };
    if let Some(unsigned) = number.as_u64() {
        return Some(unsigned);
    }
    if number.as_i64().is_some() {
        return Some(0);
    }
    let double = number.as_f64()?;
    if !double.is_finite() {
        return None;
    }
    if double <= 0.0 {
        return Some(0);
    }
    if double >= u64::MAX as f64 {
        return Some(u64::MAX);
    }
    Some(double.ceil() as u64)
}
