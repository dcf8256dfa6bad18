//! The machine that applies one event (or a run start) to a run record:
//! a work list of steps to enter, run until the run waits on something
//! external or finishes, and the effects collected on the way.
//!
//! Step-kind specific parts live in `steps.rs` (system steps and waits) and
//! `tasks.rs` (tasks, map items, attempts and their timers).

use std::collections::{BTreeSet, VecDeque};

use serde_json::{Map, Value};

use super::{Effect, RunError, RunEvent, RunRecord, RunStatus, StepRecord, StepStatus, TimerKey};
use crate::error::EvalError;
use crate::expr::Expression;
use crate::graph::flow_edges;
use crate::mapping::CompiledMapping;
use crate::model::{ErrorAction, FlowDefinition, Mapping, Step};

/// Most steps one event (or run start) enters before the rest of the work
/// continues in a later entry. Fixed: every replica must cut alike.
pub const MAX_STEPS_PER_EVENT: usize = 32;

/// Work units one log entry may spend entering steps, shared by all the
/// events it carries (a batch of completions, a timer firing for many
/// runs). Entering a step costs one unit plus one per [`BYTES_PER_UNIT`]
/// of values its run holds (its record is read and rewritten). An event
/// still enters one cheap step when the budget is spent (see
/// [`ALWAYS_ENTERED_UNITS`]). Fixed: every replica must cut alike.
/// BENCHMARKS.md ("Worst-case apply stall") has what it bounds.
pub const ENTRY_WORK_UNITS: usize = 256;

/// Value bytes per work unit (see [`ENTRY_WORK_UNITS`]).
pub const BYTES_PER_UNIT: usize = 16 * 1024;

/// A step this cheap (its run holds under 64 KiB of values) is entered
/// even once the entry's budget is spent, so that a task completion in a
/// busy entry schedules its next task at once.
pub const ALWAYS_ENTERED_UNITS: usize = 4;

/// What one log entry may still spend on entering steps.
#[derive(Debug)]
pub struct WorkBudget {
    units: usize,
    /// Events started in this entry so far; the first always enters a step,
    /// so every entry makes progress whatever its runs hold.
    events: usize,
}

impl WorkBudget {
    /// A whole entry's budget.
    pub fn for_entry() -> WorkBudget {
        WorkBudget {
            units: ENTRY_WORK_UNITS,
            events: 0,
        }
    }

    /// Units left.
    pub fn units(&self) -> usize {
        self.units
    }

    /// Spends `units` (the storage layer's share: reading and writing a
    /// record costs one unit per [`BYTES_PER_UNIT`] of it).
    pub fn spend(&mut self, units: usize) {
        self.units = self.units.saturating_sub(units);
    }
}

/// The purpose of a continuation timer (see `Machine::defer`).
pub(super) const CONTINUE_TIMER: &str = "continue";

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
    budget: &'a mut WorkBudget,
    pub(super) def: &'a FlowDefinition,
    pub(super) run: &'a mut RunRecord,
    pub(super) now: u64,
    effects: Vec<Effect>,
    work: VecDeque<Work>,
    /// Bytes of JSON values the run holds, counted on first need and
    /// raised by every value produced since (see `note_produced`).
    value_bytes: std::cell::Cell<Option<usize>>,
}

/// Most bytes of JSON values (input, step inputs and outputs, progress)
/// one run's record may hold inline. Every event reads and rewrites the
/// record, so this bounds what one entry does; large content belongs in
/// blobs (payloads over `runs.inline_payload_bytes` become references).
/// Fixed: every replica must decide alike.
pub const MAX_RUN_VALUE_BYTES: usize = 4 * 1024 * 1024;

impl<'a> Machine<'a> {
    pub(super) fn new(
        def: &'a FlowDefinition,
        run: &'a mut RunRecord,
        now: u64,
        budget: &'a mut WorkBudget,
    ) -> Self {
        budget.events += 1;
        Machine {
            budget,
            def,
            run,
            now,
            effects: Vec::new(),
            work: VecDeque::new(),
            value_bytes: std::cell::Cell::new(None),
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
                let within_limits = crate::limits::check_value_depth(
                    || format!("the output of task {key:?} attempt {attempt}"),
                    &output,
                )
                .map_err(|too_deep| too_deep.to_string())
                .and_then(|()| {
                    self.note_produced(
                        || format!("the output of task {key:?} attempt {attempt}"),
                        &output,
                    )
                });
                match within_limits {
                    Ok(()) => self.on_task_completed(&key, attempt, output)?,
                    // Refused at the door too; a worker cannot retry its way past it.
                    Err(over_limit) => {
                        let slot = self.current_slot(&key, attempt)?;
                        self.on_attempt_failed(slot, over_limit, false, false);
                    }
                }
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
            RunEvent::Signal { name, payload } => {
                crate::limits::check_value_depth(
                    || format!("the payload of signal {name:?}"),
                    &payload,
                )
                .map_err(|too_deep| RunError::NotApplicable(too_deep.to_string()))?;
                self.on_signal(&name, payload)
            }
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

    /// Runs queued work until the run waits or finishes, entering at most
    /// [`MAX_STEPS_PER_EVENT`] steps and spending at most what is left of
    /// the entry's [`WorkBudget`] (but entering one when the step is cheap
    /// or the event is its entry's first): the rest is
    /// deferred to continuation timers due at once, so one log entry does a
    /// bounded amount of work however long a chain of system steps is.
    fn drain(&mut self) {
        let mut entered = 0usize;
        while let Some(work) = self.work.pop_front() {
            if !self.is_running() {
                self.work.clear();
                break;
            }
            match work {
                Work::Enter(step_id) => {
                    let cost = 1 + self.held_value_bytes() / BYTES_PER_UNIT;
                    let must_enter =
                        entered == 0 && (self.budget.events == 1 || cost <= ALWAYS_ENTERED_UNITS);
                    if !must_enter && (entered >= MAX_STEPS_PER_EVENT || cost > self.budget.units) {
                        self.defer(step_id);
                        continue;
                    }
                    self.budget.units = self.budget.units.saturating_sub(cost);
                    entered += 1;
                    self.enter(&step_id);
                }
                Work::Arrive {
                    fork_id,
                    branch,
                    last_step,
                    output,
                } => self.arrive_at_join(&fork_id, &branch, last_step, output),
            }
        }
    }

    /// Enters `step_id` in a later entry: a continuation timer due now,
    /// which the leader fires like any other (`on_timer_fired`). Its
    /// `attempt` only tells several pending continuations apart.
    fn defer(&mut self, step_id: String) {
        let mut timer = TimerKey {
            run_id: self.run.run_id.clone(),
            step_id,
            item: None,
            purpose: CONTINUE_TIMER.to_string(),
            attempt: 0,
        };
        while self.run.outstanding.timers.contains(&timer) {
            timer.attempt += 1;
        }
        self.run.outstanding.timers.insert(timer.clone());
        let due_ms = self.now;
        self.emit(Effect::StartTimer { timer, due_ms });
    }

    /// A continuation timer fired: enter its step now.
    pub(super) fn on_continue(&mut self, timer: &TimerKey) -> Result<(), RunError> {
        if !self.run.outstanding.timers.remove(timer) {
            return Err(RunError::NotApplicable(format!(
                "continuation {timer:?} is not pending"
            )));
        }
        self.work.push_back(Work::Enter(timer.step_id.clone()));
        Ok(())
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

    /// The variables expressions see but `steps`: `input`. Evaluation adds
    /// `steps` with only the finished steps its expressions read, so a step
    /// costs what it reads rather than what the whole run holds.
    pub(super) fn variables(&self) -> Map<String, Value> {
        let mut variables = Map::new();
        variables.insert("input".to_string(), self.run.input.clone());
        variables
    }

    /// `steps.<id> = {"output", "status"}` for the finished steps in
    /// `needed` (every finished step when `None`).
    fn steps_variable(&self, needed: Option<&BTreeSet<String>>) -> Value {
        let mut steps = Map::new();
        let mut add = |step_id: &String, record: &StepRecord| {
            let status = match record.status {
                StepStatus::Completed => "completed",
                StepStatus::Failed => "failed",
                StepStatus::Running | StepStatus::Cancelled => return,
            };
            let mut entry = Map::new();
            entry.insert(
                "output".to_string(),
                record.output.clone().unwrap_or(Value::Null),
            );
            entry.insert("status".to_string(), Value::String(status.to_string()));
            steps.insert(step_id.clone(), Value::Object(entry));
        };
        match needed {
            Some(needed) => {
                for step_id in needed {
                    if let Some(record) = self.run.steps.get(step_id) {
                        add(step_id, record);
                    }
                }
            }
            None => {
                for (step_id, record) in &self.run.steps {
                    add(step_id, record);
                }
            }
        }
        Value::Object(steps)
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
        let mut variables = variables;
        variables.insert(
            "steps".to_string(),
            self.steps_variable(mapping_steps(&compiled).as_ref()),
        );
        let value = compiled
            .evaluate(&Value::Object(variables))
            .map_err(describe)?;
        self.check_produced(step_id, field_path, value)
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
        let needed =
            (!expression.has_dynamic_steps_access()).then(|| expression.referenced_steps());
        let mut variables = variables;
        variables.insert("steps".to_string(), self.steps_variable(needed.as_ref()));
        let value = expression
            .evaluate(&Value::Object(variables))
            .map_err(|error| describe_eval_error(step_id, path, error))?;
        self.check_produced(step_id, path, value)
    }

    /// A value produced inside the run must meet the limits values at the
    /// door do, so that whatever is stored reads back: a deeper one, or
    /// one that would take the run past [`MAX_RUN_VALUE_BYTES`], fails the
    /// step.
    fn check_produced(&self, step_id: &str, path: &str, value: Value) -> Result<Value, String> {
        crate::limits::check_value_depth(
            || format!("the value step {step_id:?} produced at {path}"),
            &value,
        )
        .map_err(|too_deep| too_deep.to_string())?;
        self.note_produced(|| format!("step {step_id:?} at {path}"), &value)?;
        Ok(value)
    }

    /// Bytes of values the run holds (counted once per event, then kept up).
    fn held_value_bytes(&self) -> usize {
        match self.value_bytes.get() {
            Some(held) => held,
            None => {
                let held = record_value_bytes(self.run);
                self.value_bytes.set(Some(held));
                held
            }
        }
    }

    /// Counts `value` against the run's [`MAX_RUN_VALUE_BYTES`].
    pub(super) fn note_produced(
        &self,
        what: impl FnOnce() -> String,
        value: &Value,
    ) -> Result<(), String> {
        let held = self.held_value_bytes();
        let total = held.saturating_add(crate::expr::serialized_size(value));
        if total > MAX_RUN_VALUE_BYTES {
            return Err(format!(
                "{}: the run would hold {total} bytes of values, more than the limit of {MAX_RUN_VALUE_BYTES} (fixed); \
                 pass large content through task outputs over runs.inline_payload_bytes, which are kept as blobs",
                what()
            ));
        }
        self.value_bytes.set(Some(total));
        Ok(())
    }
}

/// The finished steps a mapping's expressions read (`None`: any of them,
/// when one reads `steps` other than by id).
fn mapping_steps(mapping: &CompiledMapping) -> Option<BTreeSet<String>> {
    let mut needed = BTreeSet::new();
    let mut pending = vec![mapping];
    while let Some(current) = pending.pop() {
        match current {
            CompiledMapping::Expression(expression) => {
                if expression.has_dynamic_steps_access() {
                    return None;
                }
                needed.extend(expression.referenced_steps());
            }
            CompiledMapping::Object(fields) => pending.extend(fields.values()),
        }
    }
    Some(needed)
}

/// Bytes of the JSON values a run record holds.
fn record_value_bytes(run: &RunRecord) -> usize {
    let size = crate::expr::serialized_size;
    let mut total = size(&run.input) + run.output.as_ref().map_or(0, size);
    for record in run.steps.values() {
        total += record.input.as_ref().map_or(0, size)
            + record.output.as_ref().map_or(0, size)
            + size(&record.progress);
    }
    total
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
