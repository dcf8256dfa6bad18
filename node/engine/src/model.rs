//! The typed flow definition: what a parsed, structurally valid flow looks like.
//!
//! These types are the storage form too: [`crate::canonical_bytes`] serializes
//! them with sorted keys, so defaults filled in here (for example a retry
//! policy's `backoff`) are part of a definition's identity.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::schema::InputSchema;

/// A complete flow definition (one version of a flow).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowDefinition {
    /// Flow name, `^[a-z][a-z0-9_-]{0,62}$`.
    pub name: String,
    /// Free text for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema (subset) that a run's input must satisfy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<InputSchema>,
    /// Id of the first step; the first listed step when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// The steps, in author order (1..=1000).
    pub steps: Vec<Step>,
}

impl FlowDefinition {
    /// The id of the step a run starts on: `start`, else the first step.
    pub fn start_step_id(&self) -> Option<&str> {
        match &self.start {
            Some(start) => Some(start.as_str()),
            None => self.steps.first().map(Step::id),
        }
    }

    /// The step with this id, if any.
    pub fn step(&self, id: &str) -> Option<&Step> {
        self.steps.iter().find(|step| step.id() == id)
    }
}

/// One step of a flow; the JSON field `type` selects the kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Step {
    /// An external block run by a worker.
    Task(TaskStep),
    /// A model run on a warm replica of a deployed model.
    Inference(InferenceStep),
    /// Picks the next step by the first case whose condition holds.
    Decision(DecisionStep),
    /// Runs several branches in parallel up to a join.
    Fork(ForkStep),
    /// Waits for every branch of its fork.
    Join(JoinStep),
    /// Runs one task per item of a list.
    Map(MapStep),
    /// Computes a value from expressions, no worker involved.
    Transform(TransformStep),
    /// Runs a pinned version of another flow.
    Subflow(SubflowStep),
    /// Sleeps for a duration or until a point in time.
    Wait(WaitStep),
    /// Waits for an external signal.
    Signal(SignalStep),
    /// Ends the run successfully.
    Terminate(TerminateStep),
    /// Ends the run as failed.
    Fail(FailStep),
}

/// The JSON `type` names of every step kind, in documentation order.
pub const STEP_TYPES: [&str; 12] = [
    "task",
    "inference",
    "decision",
    "fork",
    "join",
    "map",
    "transform",
    "subflow",
    "wait",
    "signal",
    "terminate",
    "fail",
];

impl Step {
    /// The step's id.
    pub fn id(&self) -> &str {
        match self {
            Step::Task(step) => &step.id,
            Step::Inference(step) => &step.id,
            Step::Decision(step) => &step.id,
            Step::Fork(step) => &step.id,
            Step::Join(step) => &step.id,
            Step::Map(step) => &step.id,
            Step::Transform(step) => &step.id,
            Step::Subflow(step) => &step.id,
            Step::Wait(step) => &step.id,
            Step::Signal(step) => &step.id,
            Step::Terminate(step) => &step.id,
            Step::Fail(step) => &step.id,
        }
    }

    /// The JSON `type` name of this step's kind.
    pub fn type_name(&self) -> &'static str {
        match self {
            Step::Task(_) => "task",
            Step::Inference(_) => "inference",
            Step::Decision(_) => "decision",
            Step::Fork(_) => "fork",
            Step::Join(_) => "join",
            Step::Map(_) => "map",
            Step::Transform(_) => "transform",
            Step::Subflow(_) => "subflow",
            Step::Wait(_) => "wait",
            Step::Signal(_) => "signal",
            Step::Terminate(_) => "terminate",
            Step::Fail(_) => "fail",
        }
    }

    /// The plain `next` of step kinds that have one.
    pub fn next(&self) -> Option<&str> {
        let next = match self {
            Step::Task(step) => &step.next,
            Step::Inference(step) => &step.next,
            Step::Join(step) => &step.next,
            Step::Map(step) => &step.next,
            Step::Transform(step) => &step.next,
            Step::Subflow(step) => &step.next,
            Step::Wait(step) => &step.next,
            Step::Signal(step) => &step.next,
            Step::Decision(_) | Step::Fork(_) | Step::Terminate(_) | Step::Fail(_) => &None,
        };
        next.as_deref()
    }
}

/// A value computed from expressions: one expression for the whole value, or
/// an object whose leaves are expressions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Mapping {
    /// One CEL expression that yields the whole value.
    Expression(String),
    /// An object; each value is itself a mapping.
    Object(BTreeMap<String, Mapping>),
}

impl Default for Mapping {
    fn default() -> Self {
        Mapping::Object(BTreeMap::new())
    }
}

/// What to do when a task fails for good or a signal times out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ErrorAction {
    /// Continue at this step.
    Goto(String),
    /// Fail the run with this reason.
    Fail(String),
}

/// Backoff shape between task attempts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backoff {
    /// The same delay before every retry.
    #[default]
    Fixed,
    /// The delay grows by `multiplier` after every retry.
    Exponential,
}

/// Retry policy of a task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, 1..=100 (default 1: no retry).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Backoff shape (default fixed).
    #[serde(default)]
    pub backoff: Backoff,
    /// First delay in milliseconds, > 0 (default 1000).
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Largest delay in milliseconds, >= initial (default 60000).
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Growth factor of exponential backoff, >= 1.0 (default 2.0).
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
    /// Whether the proposer randomizes each delay (default true). The random
    /// part is decided outside apply and carried in the command.
    #[serde(default = "default_jitter")]
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: default_max_attempts(),
            backoff: Backoff::Fixed,
            initial_backoff_ms: default_initial_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
            multiplier: default_multiplier(),
            jitter: default_jitter(),
        }
    }
}

fn default_max_attempts() -> u32 {
    1
}
fn default_initial_backoff_ms() -> u64 {
    1000
}
fn default_max_backoff_ms() -> u64 {
    60_000
}
fn default_multiplier() -> f64 {
    2.0
}
fn default_jitter() -> bool {
    true
}
fn default_max_parallelism() -> u32 {
    10
}
fn default_min_success_ratio() -> f64 {
    1.0
}

/// Task timeouts in milliseconds; each is > 0 when present.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// From scheduling to a worker starting the attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_to_start_ms: Option<u64>,
    /// From start to completion of one attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_to_close_ms: Option<u64>,
    /// Longest gap between worker heartbeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_ms: Option<u64>,
}

/// `type: "task"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskStep {
    /// Step id.
    pub id: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Block name, `^[a-z][a-z0-9_.-]{0,62}$`.
    pub block: String,
    /// Labels a worker must have declared to get this step's tasks.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub worker_labels: BTreeMap<String, String>,
    /// The block's input.
    pub input: Mapping,
    /// Retry policy; one attempt when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    /// What happens once every attempt failed; the run fails when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<ErrorAction>,
    /// Following step; the run ends with this step's output when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Block names of inference tasks start with this; workers may not serve them.
pub const INFERENCE_BLOCK_PREFIX: &str = "model.";

/// The block an inference step's tasks run as: `model.<name>` (the latest
/// deployed version) or `model.<name>.v<version>`. Nodes holding a warm
/// replica serve it, so placement routes the task to one of them.
pub fn inference_block(model: &str, version: Option<u64>) -> String {
    match version {
        Some(version) => format!("{INFERENCE_BLOCK_PREFIX}{model}.v{version}"),
        None => format!("{INFERENCE_BLOCK_PREFIX}{model}"),
    }
}

/// How an inference step writes output tensors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TensorEncoding {
    /// `b64`: the raw little-endian bytes in base64 (exact, compact).
    #[default]
    Base64,
    /// `data`: a flat list of numbers, for expressions to read.
    List,
}

/// `type: "inference"`: runs a deployed model. The input mapping yields an
/// object of input name → tensor (`{"dtype", "shape", "b64" | "data"}`);
/// the step's output is the object of output name → tensor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferenceStep {
    /// Step id.
    pub id: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Registered model name.
    pub model: String,
    /// Model version; the latest deployed version when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// The model's inputs.
    pub input: Mapping,
    /// How output tensors are written (default base64).
    #[serde(default)]
    pub outputs: TensorEncoding,
    /// Retry policy; one attempt when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    /// What happens once every attempt failed; the run fails when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<ErrorAction>,
    /// Following step; the run ends with this step's output when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

impl InferenceStep {
    pub fn block(&self) -> String {
        inference_block(&self.model, self.version)
    }
}

/// One case of a decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionCase {
    /// Boolean CEL expression.
    pub when: String,
    /// Step taken when `when` is true.
    pub next: String,
}

/// `type: "decision"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionStep {
    /// Step id.
    pub id: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Cases, tried in order (1..=100).
    pub cases: Vec<DecisionCase>,
    /// Step taken when no case holds.
    pub default: String,
}

/// One branch of a fork.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForkBranch {
    /// Branch name, the key of its output in the join's output.
    pub name: String,
    /// First step of the branch.
    pub start: String,
}

/// `type: "fork"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForkStep {
    /// Step id.
    pub id: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Two or more branches.
    pub branches: Vec<ForkBranch>,
    /// The join step every branch ends at.
    pub join: String,
}

/// `type: "join"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinStep {
    /// Step id.
    pub id: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Following step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// The task a map step runs once per item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapTask {
    /// Block name.
    pub block: String,
    /// Labels a worker must have declared to get the items' tasks.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub worker_labels: BTreeMap<String, String>,
    /// The block's input; may use `item` and `index`.
    pub input: Mapping,
    /// Retry policy per item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Timeouts per item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
}

/// `type: "map"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapStep {
    /// Step id.
    pub id: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// CEL expression yielding a list.
    pub items: String,
    /// The task run per item.
    pub task: MapTask,
    /// Items in flight at once, >= 1 (default 10).
    #[serde(default = "default_max_parallelism")]
    pub max_parallelism: u32,
    /// Share of items that must succeed, 0.0..=1.0 (default 1.0).
    #[serde(default = "default_min_success_ratio")]
    pub min_success_ratio: f64,
    /// Following step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// `type: "transform"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformStep {
    /// Step id.
    pub id: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The step's output.
    pub output: Mapping,
    /// Following step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// `type: "subflow"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubflowStep {
    /// Step id.
    pub id: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Name of the flow to run.
    pub flow: String,
    /// Its version, >= 1 (pinned).
    pub version: u32,
    /// The child run's input.
    pub input: Mapping,
    /// Following step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// `type: "wait"`: exactly one of `duration_ms` and `until`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitStep {
    /// Step id.
    pub id: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Sleep this long, > 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// CEL expression yielding epoch milliseconds to sleep until.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Following step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// `type: "signal"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalStep {
    /// Step id.
    pub id: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Signal name.
    pub signal: String,
    /// Give up after this long, > 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// What happens on timeout; the run fails when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_timeout: Option<ErrorAction>,
    /// Following step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// `type: "terminate"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerminateStep {
    /// Step id.
    pub id: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The run's output; null when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Mapping>,
}

/// `type: "fail"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailStep {
    /// Step id.
    pub id: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Literal failure reason.
    pub reason: String,
}
