//! The run engine: a deterministic state machine over (flow definition, run
//! record). The Raft state machine feeds it events inside apply and carries
//! out the effects it returns (store tasks, timers, child runs, indexes).
//!
//! CONTRACT (the storage layer compiles against these names; keep them):
//! - `start(def, NewRun, now_ms) -> Result<(RunRecord, Vec<Effect>), RunError>`
//! - `handle(def, &mut RunRecord, RunEvent, now_ms) -> Result<Vec<Effect>, RunError>`
//! - `RunRecord`, `RunStatus`, `StepRecord`, `StepStatus`, `AttemptRecord`,
//!   `TaskSpec`, `TaskKey`, `TimerKey`, `Effect`, `RunEvent`, `ChildOutcome`,
//!   `TaskFailure`, `RunError` with the fields below.
//!
//! No I/O, no clock (time comes in as `now_ms`), no randomness (jitter is a
//! hash of run id, step, item and attempt).
//!
//! Semantics beyond `docs/flows.md`:
//! - System steps (decision, fork, join, transform, terminate, fail, a wait
//!   whose time has passed) run inside `start`/`handle`, in a FIFO work list,
//!   until the run waits on a task, timer, signal or child run, or finishes.
//! - Expressions see `input` and `steps.<id> = {"output", "status"}` for
//!   finished steps only (completed or failed; a failed step's output is
//!   null). A runtime expression error fails the step with an error naming
//!   the step and the JSONPath of the expression (`$.steps[2].input.doc`);
//!   a task's `on_error` applies to it, other kinds fail the run.
//! - A step's `null` output is stored as `None` (see `machine::stored_output`).
//! - Attempt numbers per task slot only grow, across run retries too.
//!   `max_attempts` counts the attempts of the current round. The delay
//!   before retry n of a round is `backoff_delay_ms(policy, n)`, jittered by
//!   a hash factor in [0.5, 1.0); it goes out as `not_before_ms`, and the
//!   attempt's timeout timers count from `max(now, not_before_ms)`.
//! - A `TaskStarted` cancels the attempt's schedule-to-start timer. A timeout
//!   (schedule-to-start, start-to-close, or a heartbeat timer reported by
//!   the node for the current attempt) emits `CancelTask` and counts as a
//!   retryable failure. Timers that are not pending, or belong to an older
//!   attempt, are `NotApplicable` (ignored).
//! - Fork: stays `Running` until its join completes (its progress holds the
//!   branch states); the join's record is created, completed, when the last
//!   branch arrives, with started = finished = that moment.
//! - A signal completes every running step waiting for that name.
//! - Map: item inputs are evaluated when the item starts; an item whose
//!   input fails to evaluate fails (it counts against the ratio, no retry).
//! - Run failure or cancel cancels all outstanding tasks, timers and child
//!   runs (in key order) and marks running steps `Cancelled`. A failed run
//!   remembers its `retry_points`: the failing step, then the steps the
//!   failure interrupted. `Retry` re-enters them (a map keeps its completed
//!   items; a fork just resumes); a run failed by a `fail` step cannot be
//!   retried.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::{FlowDefinition, Timeouts};

mod backoff;
mod event_form;
mod history;
pub mod json_text;
mod machine;
mod run_text;
mod steps;
mod task_text;
mod tasks;

#[cfg(test)]
mod proptests;
#[cfg(test)]
pub(crate) mod tests;

pub use backoff::{backoff_delay_ms, jittered_delay_ms, retry_delay_ms};
pub use history::{history_between, HistoryEvent, HistoryKind};
pub use machine::{
    WorkBudget, ALWAYS_ENTERED_UNITS, BYTES_PER_UNIT, ENTRY_WORK_UNITS, MAX_RUN_VALUE_BYTES,
    MAX_STEPS_PER_EVENT,
};
pub use run_text::{RunAddress, RunTextError, DEFAULT_NAMESPACE, DEFAULT_PARTITION};
pub use task_text::{TaskAddress, TaskTextError};

/// Identifies one task slot: a task step, or one item of a map step.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TaskKey {
    pub run_id: String,
    pub step_id: String,
    /// The item index for map steps.
    pub item: Option<u32>,
}

/// Identifies one timer: a wait step, a signal timeout, a retry backoff or a
/// task timeout.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TimerKey {
    pub run_id: String,
    pub step_id: String,
    pub item: Option<u32>,
    /// What the timer is for, e.g. "wait", "signal-timeout", "retry", "schedule-to-start", "start-to-close", "heartbeat".
    pub purpose: String,
    /// The attempt the timer belongs to (0 for wait/signal timers); a timer
    /// for an older attempt is ignored when it fires.
    pub attempt: u32,
}

/// A task to hand to a worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub key: TaskKey,
    /// The fencing number: a result for another attempt is refused.
    pub attempt: u32,
    pub block: String,
    /// Only workers that declared these labels get the task.
    #[serde(default)]
    pub worker_labels: BTreeMap<String, String>,
    #[serde(with = "json_text")]
    pub input: Value,
    /// Not to be delivered before this time (retry backoff); 0 = now.
    pub not_before_ms: u64,
    #[serde(with = "json_text")]
    pub timeouts: Timeouts,
}

impl TaskSpec {
    /// What placement matches on: the block and the required labels
    /// (borrowed when there are none, as for most tasks; apply asks often).
    pub fn placement_key(&self) -> std::borrow::Cow<'_, str> {
        if self.worker_labels.is_empty() {
            std::borrow::Cow::Borrowed(&self.block)
        } else {
            std::borrow::Cow::Owned(crate::names::placement_key(
                &self.block,
                &self.worker_labels,
            ))
        }
    }

    /// The slot pools a placed task takes one slot of: its placement key
    /// and, when labelled, its block too. A labelled worker's slots are
    /// offered under its block as well as under each label subset, so only
    /// counting a labelled task against the block keeps a node's tasks of a
    /// block within its workers' slots.
    pub fn slot_pools(&self) -> impl Iterator<Item = std::borrow::Cow<'_, str>> {
        let labelled = !self.worker_labels.is_empty();
        std::iter::once(self.placement_key())
            .chain(labelled.then_some(std::borrow::Cow::Borrowed(self.block.as_str())))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunStatus {
    Running,
    Completed,
    Failed,
    Cancelled,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepStatus {
    /// Waiting on a task, timer, signal or child run.
    Running,
    Completed,
    Failed,
    Cancelled,
}

/// One attempt of a task slot, for `run get`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub item: Option<u32>,
    pub scheduled_at_ms: u64,
    /// Filled in when the attempt is placed on a node.
    pub node: Option<u64>,
    /// The worker (or model replica) that answered the attempt.
    pub worker: Option<String>,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub status: StepStatus,
    pub started_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    #[serde(default, with = "json_text::option")]
    pub input: Option<Value>,
    #[serde(default, with = "json_text::option")]
    pub output: Option<Value>,
    pub error: Option<String>,
    pub attempts: Vec<AttemptRecord>,
    /// Step-kind specific progress (map items, fork branches, child run id …).
    #[serde(with = "json_text")]
    pub progress: Value,
}

/// Everything about one run; stored as one record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub flow: String,
    pub version: u64,
    pub status: RunStatus,
    #[serde(with = "json_text")]
    pub input: Value,
    #[serde(default, with = "json_text::option")]
    pub output: Option<Value>,
    pub error: Option<String>,
    pub correlation_id: String,
    pub idempotency_key: String,
    /// (parent run id, parent step id) for sub-flow runs.
    pub parent: Option<(String, String)>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    /// By step id; steps never entered are absent.
    pub steps: BTreeMap<String, StepRecord>,
    /// What the run waits on right now (engine bookkeeping; what a cancel
    /// or the end of the run cancels). Empty once the run has finished.
    #[serde(default)]
    pub outstanding: Outstanding,
    /// For a failed run: the steps that `Retry` re-enters, in order — the
    /// step whose failure failed the run, then the steps the failure
    /// interrupted (other fork branches). Empty otherwise.
    #[serde(default)]
    pub retry_points: Vec<String>,
}

/// Work a running run has handed out and not yet heard back about. Sets, so
/// that the order of cancellations is deterministic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outstanding {
    /// Task slots with a scheduled or running attempt.
    pub tasks: BTreeSet<TaskKey>,
    /// Timers started and neither fired nor cancelled.
    pub timers: BTreeSet<TimerKey>,
    /// Sub-flow step ids whose child run has not finished.
    pub child_runs: BTreeSet<String>,
}

impl Outstanding {
    /// Whether nothing is outstanding.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty() && self.timers.is_empty() && self.child_runs.is_empty()
    }
}

pub struct NewRun {
    pub run_id: String,
    pub version: u64,
    pub input: Value,
    pub correlation_id: String,
    pub idempotency_key: String,
    pub parent: Option<(String, String)>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskFailure {
    pub error: String,
    /// False: do not retry (the worker says the input is bad).
    pub retryable: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ChildOutcome {
    Completed(#[serde(with = "json_text")] Value),
    Failed(String),
    Cancelled,
}

/// What happens to a run. The JSON form (the log entries of earlier
/// releases) leaves out an absent `worker`; the binary form (the log's
/// typed run events) writes every field in order and JSON values as their
/// text, as run records do (see `event_form` and `json_text`). A variant's
/// position is its binary encoding in the log: only ever append.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RunEvent {
    #[serde(
        serialize_with = "event_form::task_completed::serialize",
        deserialize_with = "event_form::task_completed::deserialize"
    )]
    TaskCompleted {
        key: TaskKey,
        attempt: u32,
        output: Value,
        /// The worker that answered (recorded on the attempt).
        worker: Option<String>,
    },
    #[serde(
        serialize_with = "event_form::task_failed::serialize",
        deserialize_with = "event_form::task_failed::deserialize"
    )]
    TaskFailed {
        key: TaskKey,
        attempt: u32,
        failure: TaskFailure,
        worker: Option<String>,
    },
    /// The attempt was lost with its worker or node (not the task's fault):
    /// it is re-delivered as a new attempt (fencing the old one) without
    /// counting against `max_attempts`.
    TaskLost {
        key: TaskKey,
        attempt: u32,
        reason: String,
    },
    /// The storage layer recorded an assignment (for attempt bookkeeping).
    TaskStarted {
        key: TaskKey,
        attempt: u32,
        node: u64,
        worker: String,
    },
    TimerFired {
        timer: TimerKey,
    },
    Signal {
        name: String,
        #[serde(with = "json_text")]
        payload: Value,
    },
    ChildFinished {
        step_id: String,
        outcome: ChildOutcome,
    },
    Cancel {
        reason: String,
    },
    /// Retry a failed run from its failed step(s).
    Retry,
}

impl RunEvent {
    /// The run the event itself names (a task's or a timer's), if any.
    pub fn named_run_id(&self) -> Option<&str> {
        match self {
            RunEvent::TaskCompleted { key, .. }
            | RunEvent::TaskFailed { key, .. }
            | RunEvent::TaskLost { key, .. }
            | RunEvent::TaskStarted { key, .. } => Some(&key.run_id),
            RunEvent::TimerFired { timer } => Some(&timer.run_id),
            RunEvent::Signal { .. }
            | RunEvent::ChildFinished { .. }
            | RunEvent::Cancel { .. }
            | RunEvent::Retry => None,
        }
    }

    /// The JSON value the event carries (a task's output, a signal's
    /// payload, a child run's output), if any.
    pub fn value(&self) -> Option<&Value> {
        match self {
            RunEvent::TaskCompleted { output, .. } => Some(output),
            RunEvent::Signal { payload, .. } => Some(payload),
            RunEvent::ChildFinished {
                outcome: ChildOutcome::Completed(output),
                ..
            } => Some(output),
            _ => None,
        }
    }

    /// About how many bytes the event takes in a log entry: its texts and
    /// the JSON text of its value. Counts the value's text without
    /// building it.
    pub fn payload_bytes(&self) -> usize {
        let texts = match self {
            RunEvent::TaskCompleted { key, worker, .. } => {
                task_key_bytes(key) + worker.as_ref().map_or(0, String::len)
            }
            RunEvent::TaskFailed {
                key,
                failure,
                worker,
                ..
            } => task_key_bytes(key) + failure.error.len() + worker.as_ref().map_or(0, String::len),
            RunEvent::TaskLost { key, reason, .. } => task_key_bytes(key) + reason.len(),
            RunEvent::TaskStarted { key, worker, .. } => task_key_bytes(key) + worker.len(),
            RunEvent::TimerFired { timer } => {
                timer.run_id.len() + timer.step_id.len() + timer.purpose.len()
            }
            RunEvent::Signal { name, .. } => name.len(),
            RunEvent::ChildFinished { step_id, outcome } => {
                step_id.len()
                    + match outcome {
                        ChildOutcome::Failed(error) => error.len(),
                        ChildOutcome::Completed(_) | ChildOutcome::Cancelled => 0,
                    }
            }
            RunEvent::Cancel { reason } => reason.len(),
            RunEvent::Retry => 0,
        };
        texts + self.value().map_or(0, crate::expr::serialized_size)
    }
}

fn task_key_bytes(key: &TaskKey) -> usize {
    key.run_id.len() + key.step_id.len()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Effect {
    ScheduleTask(TaskSpec),
    /// Drop a scheduled or running task (cancel, or superseded by a timeout).
    CancelTask {
        key: TaskKey,
    },
    StartTimer {
        timer: TimerKey,
        due_ms: u64,
    },
    CancelTimer {
        timer: TimerKey,
    },
    /// Start a child run of `flow` `version` for sub-flow step `step_id`;
    /// the storage layer picks the child's run id deterministically
    /// (e.g. "<run_id>.<step_id>") and reports back with `ChildFinished`.
    StartChildRun {
        step_id: String,
        flow: String,
        version: u64,
        input: Value,
    },
    CancelChildRun {
        step_id: String,
    },
    /// The run reached a terminal status (indexes, parent notification).
    RunFinished {
        status: RunStatus,
    },
}

#[derive(Clone, Debug, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum RunError {
    /// The run input does not match the flow's input schema (paths like $.input.x).
    #[error("run input does not match flow {flow:?} v{version}: {problems:?}")]
    BadInput {
        flow: String,
        version: u64,
        problems: Vec<String>,
    },
    /// A result for an attempt that is not the current one (fencing).
    #[error("stale attempt {attempt} for {key:?}: the current attempt is {current}")]
    StaleAttempt {
        key: TaskKey,
        attempt: u32,
        current: u32,
    },
    /// The event does not apply to the run's current state (names why).
    #[error("{0}")]
    NotApplicable(String),
}

/// Starts a run: checks the input against the flow's input schema, then
/// enters the start step and runs system steps until the run waits on
/// something external (a task, timer, signal or child run) or finishes.
pub fn start(
    def: &FlowDefinition,
    new_run: NewRun,
    now_ms: u64,
) -> Result<(RunRecord, Vec<Effect>), RunError> {
    start_within(def, new_run, now_ms, &mut WorkBudget::for_entry())
}

/// [`start`], spending from `budget`: the entry's budget, shared by all of
/// its events (see [`WorkBudget`]).
pub fn start_within(
    def: &FlowDefinition,
    new_run: NewRun,
    now_ms: u64,
    budget: &mut WorkBudget,
) -> Result<(RunRecord, Vec<Effect>), RunError> {
    if let Err(too_deep) =
        crate::limits::check_value_depth(|| "run input".to_string(), &new_run.input)
    {
        return Err(RunError::BadInput {
            flow: def.name.clone(),
            version: new_run.version,
            problems: vec![too_deep.to_string()],
        });
    }
    if let Some(schema) = &def.input {
        let problems = crate::schema::validate_input(schema, &new_run.input);
        if !problems.is_empty() {
            return Err(RunError::BadInput {
                flow: def.name.clone(),
                version: new_run.version,
                problems: problems.iter().map(ToString::to_string).collect(),
            });
        }
    }
    let mut run = RunRecord {
        run_id: new_run.run_id,
        flow: def.name.clone(),
        version: new_run.version,
        status: RunStatus::Running,
        input: new_run.input,
        output: None,
        error: None,
        correlation_id: new_run.correlation_id,
        idempotency_key: new_run.idempotency_key,
        parent: new_run.parent,
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
        finished_at_ms: None,
        steps: BTreeMap::new(),
        outstanding: Outstanding::default(),
        retry_points: Vec::new(),
    };
    let mut machine = machine::Machine::new(def, &mut run, now_ms, budget);
    machine.begin_run();
    let effects = machine.into_effects();
    Ok((run, effects))
}

/// Applies one event to a run. On `Err` the record is left exactly as it
/// was and nothing is to be done; on `Ok` the record is updated and the
/// effects are to be carried out in order.
pub fn handle(
    def: &FlowDefinition,
    run: &mut RunRecord,
    event: RunEvent,
    now_ms: u64,
) -> Result<Vec<Effect>, RunError> {
    handle_within(def, run, event, now_ms, &mut WorkBudget::for_entry())
}

/// [`handle`], spending from the entry's `budget` (see [`WorkBudget`]).
pub fn handle_within(
    def: &FlowDefinition,
    run: &mut RunRecord,
    event: RunEvent,
    now_ms: u64,
    budget: &mut WorkBudget,
) -> Result<Vec<Effect>, RunError> {
    // Work on a copy so that a refused event cannot leave a half-applied
    // record behind.
    let mut working = run.clone();
    let mut machine = machine::Machine::new(def, &mut working, now_ms, budget);
    machine.handle(event)?;
    let effects = machine.into_effects();
    working.updated_at_ms = now_ms;
    *run = working;
    Ok(effects)
}
