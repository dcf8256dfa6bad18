//! The machine that applies one event (or a run start) to a run record:
//! a work list of steps to enter, run until the run waits on something
//! external or finishes, and the effects collected on the way.
//!
//! Step-kind specific parts live in `steps.rs` (system steps and waits) and
//! `tasks.rs` (tasks, map items, attempts and their timers).

use std::collections::{BTreeSet, VecDeque};

use serde_json::{Map, Value};

use super::{Effect, RunError, RunEvent, RunRecord, RunStatus, StepRecord, StepStatus};
use crate::error::EvalError;
use crate::expr::Expression;
use crate::graph::flow_edges;
use crate::mapping::CompiledMapping;
use crate::model::{ErrorAction, FlowDefinition, Mapping, Step};

/// One pending piece of work inside a single apply.
enum Work {
    /// Enter (or re-enter) a step.
    Enter(String),
    /// A fork branch reached its join.
    Arrive {
        fork_id: String,
        branch: String,
        last_step: Option<String>,
        output: Value,
    },
}

pub(super) struct Machine<'a> {
    pub(super) def: &'a FlowDefinition,
    pub(super) run: &'a mut RunRecord,
    pub(super) now: u64,
    effects: Vec<Effect>,
    work: VecDeque<Work>,
}

impl<'a> Machine<'a> {
    pub(super) fn new(def: &'a FlowDefinition, run: &'a mut RunRecord, now: u64) -> Self {
        Machine {
            def,
            run,
            now,
            effects: Vec::new(),
            work: VecDeque::new(),
        }
    }

    pub(super) fn into_effects(self) -> Vec<Effect> {
        self.effects
    }

    pub(super) fn emit(&mut self, effect: Effect) {
        self.effects.push(effect);
    }

    pub(super) fn is_running(&self) -> bool {
        self.run.status == RunStatus::Running
    }

    /// Enters the start step and runs.
    pub(super) fn begin_run(&mut self) {
        match self.def.start_step_id() {
            Some(start) => self.work.push_back(Work::Enter(start.to_string())),
            None => self.fail_run(format!("flow {:?} has no start step", self.def.name), None),
        }
        self.drain();
    }

    pub(super) fn handle(&mut self, event: RunEvent) -> Result<(), RunError> {
        match event {
            RunEvent::Retry => self.retry_run()?,
            RunEvent::Cancel { reason } => {
                self.require_running("cancel")?;
                self.finish(
                    RunStatus::Cancelled,
                    None,
                    Some(format!("cancelled: {reason}")),
                );
            }
            other => {
                self.require_running(event_name(&other))?;
                self.handle_while_running(other)?;
            }
        }
        self.drain();
        Ok(())
    }

    fn handle_while_running(&mut self, event: RunEvent) -> Result<(), RunError> {
        match event {
            RunEvent::TaskCompleted {
                key,
                attempt,
                output,
                worker,
            } => {
                self.on_task_completed(&key, attempt, output)?;
                self.note_worker(&key, attempt, worker);
                Ok(())
            }
            RunEvent::TaskFailed {
                key,
                attempt,
                failure,
                worker,
            } => {
                let slot = self.current_slot(&key, attempt)?;
                self.on_attempt_failed(slot, failure.error, failure.retryable, false);
                self.note_worker(&key, attempt, worker);
                Ok(())
            }
            RunEvent::TaskLost {
                key,
                attempt,
                reason,
            } => {
                let slot = self.current_slot(&key, attempt)?;
                self.on_attempt_lost(slot, reason);
                Ok(())
            }
            RunEvent::TaskStarted {
                key,
                attempt,
                node,
                worker,
            } => self.on_task_started(&key, attempt, node, worker),
            RunEvent::TimerFired { timer } => self.on_timer_fired(timer),
            RunEvent::Signal { name, payload } => self.on_signal(&name, payload),
            RunEvent::ChildFinished { step_id, outcome } => {
                self.on_child_finished(&step_id, outcome)
            }
            RunEvent::Cancel { .. } | RunEvent::Retry => Ok(()),
        }
    }

    fn require_running(&self, what: &str) -> Result<(), RunError> {
        if self.is_running() {
            return Ok(());
        }
        Err(RunError::NotApplicable(format!(
            "run {:?} has already finished ({:?}); {what} does not apply",
            self.run.run_id, self.run.status
        )))
    }

    fn retry_run(&mut self) -> Result<(), RunError> {
        if self.run.status != RunStatus::Failed {
            return Err(RunError::NotApplicable(format!(
                "run {:?} is {:?}; only a failed run can be retried",
                self.run.run_id, self.run.status
            )));
        }
        let points = std::mem::take(&mut self.run.retry_points);
        if points.is_empty() {
            return Err(RunError::NotApplicable(format!(
                "run {:?} failed before entering any step; there is nothing to retry",
                self.run.run_id
            )));
        }
        for point in &points {
            if let Some(Step::Fail(_)) = self.def.step(point) {
                return Err(RunError::NotApplicable(format!(
                    "run {:?} failed at fail step {point:?}; a retry would fail the same way",
                    self.run.run_id
                )));
            }
        }
        self.run.status = RunStatus::Running;
        self.run.error = None;
        self.run.output = None;
        self.run.finished_at_ms = None;
        for point in points {
            if let Some(Step::Fork(_)) = self.def.step(&point) {
                // The fork's branch states are kept; its interrupted
                // branches are retry points of their own.
                if let Some(record) = self.run.steps.get_mut(&point) {
                    record.status = StepStatus::Running;
                    record.finished_at_ms = None;
                    record.error = None;
                }
                continue;
            }
            self.work.push_back(Work::Enter(point));
        }
        Ok(())
    }

    /// Runs queued work until the run waits or finishes.
    fn drain(&mut self) {
        while let Some(work) = self.work.pop_front() {
            if !self.is_running() {
                self.work.clear();
                break;
            }
            match work {
                Work::Enter(step_id) => self.enter(&step_id),
                Work::Arrive {
                    fork_id,
                    branch,
                    last_step,
                    output,
                } => self.arrive_at_join(&fork_id, &branch, last_step, output),
            }
        }
    }

    fn enter(&mut self, step_id: &str) {
        let Some((index, step)) = self.step_at(step_id) else {
            let message = format!("flow {:?} has no step {step_id:?}", self.def.name);
            self.fail_run(message, None);
            return;
        };
        self.begin_step(step_id);
        match step {
            Step::Task(task) => self.enter_task(index, task),
            Step::Inference(step) => self.enter_inference(index, step),
            Step::Decision(decision) => self.enter_decision(index, decision),
            Step::Fork(fork) => self.enter_fork(fork),
            Step::Join(join) => {
                // Reached outside of any fork branch: nothing to wait for.
                self.complete_step(step_id, Value::Null, join.next.as_deref());
            }
            Step::Map(map) => self.enter_map(index, map),
            Step::Transform(transform) => self.enter_transform(index, transform),
            Step::Subflow(subflow) => self.enter_subflow(index, subflow),
            Step::Wait(wait) => self.enter_wait(index, wait),
            Step::Signal(signal) => self.enter_signal(signal),
            Step::Terminate(terminate) => self.enter_terminate(index, terminate),
            Step::Fail(fail) => {
                let reason = fail.reason.clone();
                self.mark_step_failed(step_id, reason.clone());
                self.fail_run(reason, Some(step_id));
            }
        }
    }

    /// The step's position in the definition and the step.
    pub(super) fn step_at(&self, step_id: &str) -> Option<(usize, &'a Step)> {
        self.def
            .steps
            .iter()
            .enumerate()
            .find(|(_, step)| step.id() == step_id)
    }

    /// Creates the step's record, or resets it when the step is re-entered
    /// (run retry), keeping its attempts so numbering stays monotonic.
    fn begin_step(&mut self, step_id: &str) {
        let now = self.now;
        let record = self
            .run
            .steps
            .entry(step_id.to_string())
            .or_insert_with(|| StepRecord {
                status: StepStatus::Running,
                started_at_ms: now,
                finished_at_ms: None,
                input: None,
                output: None,
                error: None,
                attempts: Vec::new(),
                progress: Value::Null,
            });
        record.status = StepStatus::Running;
        record.started_at_ms = now;
        record.finished_at_ms = None;
        record.output = None;
        record.error = None;
    }

    pub(super) fn record_mut(&mut self, step_id: &str) -> Option<&mut StepRecord> {
        self.run.steps.get_mut(step_id)
    }

    pub(super) fn step_is_running(&self, step_id: &str) -> bool {
        self.run
            .steps
            .get(step_id)
            .is_some_and(|record| record.status == StepStatus::Running)
    }

    /// Marks the step completed with `output` and goes on to `next`.
    pub(super) fn complete_step(&mut self, step_id: &str, output: Value, next: Option<&str>) {
        let now = self.now;
        if let Some(record) = self.record_mut(step_id) {
            record.status = StepStatus::Completed;
            record.finished_at_ms = Some(now);
            record.output = stored_output(&output);
            record.error = None;
        }
        self.go_on(step_id, next, output);
    }

    fn mark_step_failed(&mut self, step_id: &str, error: String) {
        let now = self.now;
        if let Some(record) = self.record_mut(step_id) {
            record.status = StepStatus::Failed;
            record.finished_at_ms = Some(now);
            record.output = None;
            record.error = Some(error);
        }
    }

    /// Marks the step failed and follows its error route: `goto` continues
    /// there (the step's output reads as null), `fail` or none fails the run.
    pub(super) fn fail_step(&mut self, step_id: &str, error: String, route: Option<&ErrorAction>) {
        self.mark_step_failed(step_id, error.clone());
        match route {
            Some(ErrorAction::Goto(target)) => self.go_on(step_id, Some(target), Value::Null),
            Some(ErrorAction::Fail(reason)) => self.fail_run(reason.clone(), Some(step_id)),
            None => self.fail_run(error, Some(step_id)),
        }
    }

    /// Continues after `from`: ends the run with `output` when there is no
    /// next step, arrives at a join when the next step is the join of the
    /// fork branch `from` belongs to, else enters the next step.
    pub(super) fn go_on(&mut self, from: &str, next: Option<&str>, output: Value) {
        let Some(next_id) = next else {
            self.finish(RunStatus::Completed, Some(output), None);
            return;
        };
        if let Some(Step::Join(_)) = self.def.step(next_id) {
            if let Some((fork_id, branch)) = branch_containing(self.def, next_id, from) {
                self.work.push_back(Work::Arrive {
                    fork_id,
                    branch,
                    last_step: Some(from.to_string()),
                    output,
                });
                return;
            }
        }
        self.work.push_back(Work::Enter(next_id.to_string()));
    }

    pub(super) fn push_arrival(&mut self, fork_id: &str, branch: &str) {
        self.work.push_back(Work::Arrive {
            fork_id: fork_id.to_string(),
            branch: branch.to_string(),
            last_step: None,
            output: Value::Null,
        });
    }

    pub(super) fn push_enter(&mut self, step_id: &str) {
        self.work.push_back(Work::Enter(step_id.to_string()));
    }

    /// Fails the run; `cause` is the step whose failure did it (re-entered
    /// by a later `Retry`).
    pub(super) fn fail_run(&mut self, error: String, cause: Option<&str>) {
        if !self.is_running() {
            return;
        }
        self.run.retry_points.clear();
        if let Some(cause) = cause {
            self.run.retry_points.push(cause.to_string());
        }
        self.finish(RunStatus::Failed, None, Some(error));
    }

    /// Ends the run: cancels everything outstanding, marks running steps
    /// cancelled (remembering them for a retry when the run failed) and
    /// emits `RunFinished`.
    pub(super) fn finish(
        &mut self,
        status: RunStatus,
        output: Option<Value>,
        error: Option<String>,
    ) {
        if !self.is_running() {
            return;
        }
        let now = self.now;
        self.run.status = status;
        self.run.output = output.as_ref().and_then(stored_output);
        self.run.error = error;
        self.run.finished_at_ms = Some(now);
        if status != RunStatus::Failed {
            self.run.retry_points.clear();
        }
        let outstanding = std::mem::take(&mut self.run.outstanding);
        for key in outstanding.tasks {
            self.emit(Effect::CancelTask { key });
        }
        for timer in outstanding.timers {
            self.emit(Effect::CancelTimer { timer });
        }
        for step_id in outstanding.child_runs {
            self.emit(Effect::CancelChildRun { step_id });
        }
        let mut interrupted = Vec::new();
        for (step_id, record) in self.run.steps.iter_mut() {
            if record.status == StepStatus::Running {
                record.status = StepStatus::Cancelled;
                record.finished_at_ms = Some(now);
                interrupted.push(step_id.clone());
            }
        }
        if status == RunStatus::Failed {
            for step_id in interrupted {
                if !self.run.retry_points.contains(&step_id) {
                    self.run.retry_points.push(step_id);
                }
            }
        }
        self.work.clear();
        self.emit(Effect::RunFinished { status });
    }

    /// The variables expressions see: `input` and `steps` (finished steps).
    pub(super) fn variables(&self) -> Map<String, Value> {
        let mut steps = Map::new();
        for (step_id, record) in &self.run.steps {
            let status = match record.status {
                StepStatus::Completed => "completed",
                StepStatus::Failed => "failed",
                StepStatus::Running | StepStatus::Cancelled => continue,
            };
            let mut entry = Map::new();
            entry.insert(
                "output".to_string(),
                record.output.clone().unwrap_or(Value::Null),
            );
            entry.insert("status".to_string(), Value::String(status.to_string()));
            steps.insert(step_id.clone(), Value::Object(entry));
        }
        let mut variables = Map::new();
        variables.insert("input".to_string(), self.run.input.clone());
        variables.insert("steps".to_string(), Value::Object(steps));
        variables
    }

    /// Evaluates a mapping of step `step_id`; `field_path` is its JSONPath in
    /// the definition (`$.steps[2].input`). Errors name the step and the
    /// path of the failing leaf.
    pub(super) fn evaluate_mapping(
        &self,
        step_id: &str,
        field_path: &str,
        mapping: &Mapping,
        variables: Map<String, Value>,
    ) -> Result<Value, String> {
        let describe = |error: EvalError| describe_eval_error(step_id, field_path, error);
        let compiled = CompiledMapping::compile(mapping).map_err(describe)?;
        compiled
            .evaluate(&Value::Object(variables))
            .map_err(describe)
    }

    /// Evaluates one expression of step `step_id` at `path`.
    pub(super) fn evaluate_expression(
        &self,
        step_id: &str,
        path: &str,
        source: &str,
        variables: Map<String, Value>,
    ) -> Result<Value, String> {
        let expression = Expression::compile(source).map_err(|reason| {
            format!("step {step_id:?} at {path}: expression {source:?} does not compile: {reason}")
        })?;
        expression
            .evaluate(&Value::Object(variables))
            .map_err(|error| describe_eval_error(step_id, path, error))
    }
}

/// A JSON `null` output is stored as `None`: `Some(Value::Null)` would not
/// survive a JSON round trip (serde reads `null` as `None`), and a record
/// must compare equal to its stored copy. Expressions see `null` either way.
fn stored_output(output: &Value) -> Option<Value> {
    if output.is_null() {
        None
    } else {
        Some(output.clone())
    }
}

fn describe_eval_error(step_id: &str, field_path: &str, error: EvalError) -> String {
    match error {
        EvalError::InMapping { path, source } => {
            let leaf_path = format!("{field_path}{}", path.strip_prefix('$').unwrap_or(&path));
            format!("step {step_id:?} at {leaf_path}: {source}")
        }
        EvalError::Compile { path, reason } => {
            let leaf_path = format!("{field_path}{}", path.strip_prefix('$').unwrap_or(&path));
            format!("step {step_id:?} at {leaf_path}: expression does not compile: {reason}")
        }
        other => format!("step {step_id:?} at {field_path}: {other}"),
    }
}

fn event_name(event: &RunEvent) -> &'static str {
    match event {
        RunEvent::TaskCompleted { .. } => "a task completion",
        RunEvent::TaskFailed { .. } => "a task failure",
        RunEvent::TaskLost { .. } => "a lost task",
        RunEvent::TaskStarted { .. } => "a task start",
        RunEvent::TimerFired { .. } => "a timer",
        RunEvent::Signal { .. } => "a signal",
        RunEvent::ChildFinished { .. } => "a child run's end",
        RunEvent::Cancel { .. } => "cancel",
        RunEvent::Retry => "retry",
    }
}

/// The fork whose join is `join_id` and the name of its branch that
/// contains step `step_id`, if any.
pub(super) fn branch_containing(
    def: &FlowDefinition,
    join_id: &str,
    step_id: &str,
) -> Option<(String, String)> {
    for step in &def.steps {
        let Step::Fork(fork) = step else { continue };
        if fork.join != join_id {
            continue;
        }
        for branch in &fork.branches {
            if branch_reaches(def, &branch.start, step_id, join_id) {
                return Some((fork.id.clone(), branch.name.clone()));
            }
        }
    }
    None
}

/// Whether `target` is reachable from `start` without passing `stop`.
fn branch_reaches(def: &FlowDefinition, start: &str, target: &str, stop: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut stack = vec![start.to_string()];
    while let Some(current) = stack.pop() {
        if current == stop || !seen.insert(current.clone()) {
            continue;
        }
        if current == target {
            return true;
        }
        let Some(step) = def.step(&current) else {
            continue;
        };
        for (_, successor) in flow_edges(step, "$") {
            stack.push(successor);
        }
        if let Step::Fork(inner) = step {
            // A nested fork continues after its own join.
            stack.push(inner.join.clone());
        }
    }
    false
}
