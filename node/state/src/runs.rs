//! Runs inside apply: the run engine (floe-engine) decides, this module
//! stores. Every change of one command happens in the caller's store
//! transaction; run records, tasks, timers and indexes never disagree.
//!
//! Run and task records are bincode with their JSON values as text
//! (`codec::encode_structured`); counters, limits and timers are JSON. All
//! go through the versioned record codec, and every JSON reader here also
//! reads the binary form, so records written as JSON by earlier releases
//! still read.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use floe_engine::run::{
    self, ChildOutcome, Effect, NewRun, RunAddress, RunError, RunEvent, RunRecord, RunStatus,
    TaskKey, TaskSpec, TimerKey,
};
use floe_engine::FlowDefinition;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::answers::{CommandResponse, FlowRecord, Rejection};
use crate::codec;
use crate::keys;
use crate::slots;
use floe_storage::blobs;
use floe_storage::StoreError;

/// Names a record in errors; formatted only when one is reported (apply
/// reads and writes dozens of records per entry).
pub(crate) type Label<'a> = std::fmt::Arguments<'a>;

use floe_storage::state_store::StoredBytes;
pub(crate) use floe_storage::state_store::TxError;

pub(crate) fn abort(error: StoreError) -> TxError {
    TxError::abort(error)
}

/// How deep sub-flows may nest (a guard against a flow that starts itself).
const MAX_SUBFLOW_DEPTH: usize = 16;

/// A task waiting for, or assigned to, a worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub spec: TaskSpec,
    pub scheduled_at_ms: u64,
    pub assignment: Option<Assignment>,
    /// The run's flow, for per-flow concurrency limits.
    #[serde(default)]
    pub flow: String,
}

/// What a concurrency limit applies to: every task of a block type, or
/// every task of a flow's runs, across the whole cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LimitScope {
    Block,
    Flow,
}

impl LimitScope {
    pub fn name(self) -> &'static str {
        match self {
            LimitScope::Block => "block",
            LimitScope::Flow => "flow",
        }
    }
}

/// A limit and how many tasks it covers are placed on nodes right now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitState {
    pub scope: LimitScope,
    pub name: String,
    pub limit: Option<u32>,
    pub active: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub node: u64,
    pub worker: String,
    pub at_ms: u64,
}

/// Parsed flow definitions by (name, version); versions are immutable, so
/// the cache never goes stale.
#[derive(Default)]
pub(crate) struct DefinitionCache {
    flows: Mutex<BTreeMap<(String, u64), Arc<FlowDefinition>>>,
}

/// The transaction and what it needs to read definitions.
pub(crate) struct RunTx<'a> {
    pub(crate) data: &'a dyn floe_storage::state_store::StateTx,
    pub(crate) tree_name: &'a str,
    pub(crate) definitions: &'a DefinitionCache,
    pub(crate) changes: &'a std::cell::RefCell<crate::changes::AppliedChanges>,
    /// What the log entry being applied may still spend on entering steps,
    /// shared by all of its commands (`floe_engine::run::WorkBudget`).
    pub(crate) budget: &'a std::cell::RefCell<run::WorkBudget>,
}

impl RunTx<'_> {
    pub(crate) fn get_json<T: DeserializeOwned>(
        &self,
        key: &[u8],
        what: Label<'_>,
    ) -> Result<Option<T>, TxError> {
        let Some(bytes) = self.data.get(key)? else {
            return Ok(None);
        };
        codec::decode_structured(|| format!("{} {what}", self.tree_name), &bytes)
            .map(Some)
            .map_err(abort)
    }

    pub(crate) fn put_json<T: Serialize>(
        &self,
        key: Vec<u8>,
        value: &T,
        what: Label<'_>,
    ) -> Result<(), TxError> {
        let json = to_json(value, self.tree_name, what)?;
        let bytes =
            codec::encode_bytes(|| format!("{} {what}", self.tree_name), &json).map_err(abort)?;
        self.data.insert(&key, bytes.into())?;
        Ok(())
    }

    /// Stores a run or task record in its binary form (`get_json` reads
    /// it); hands back the stored bytes so callers can index what it holds.
    fn put_structured<T: Serialize>(
        &self,
        key: Vec<u8>,
        value: &T,
        what: Label<'_>,
    ) -> Result<StoredBytes, TxError> {
        let bytes = StoredBytes::from(encode_structured(self.tree_name, value, what)?);
        self.data.insert(&key, bytes.clone())?;
        Ok(bytes)
    }

    /// A bincode record (counters, node offers).
    pub(crate) fn get_record<T: DeserializeOwned>(
        &self,
        key: &[u8],
        what: Label<'_>,
    ) -> Result<Option<T>, TxError> {
        let Some(bytes) = self.data.get(key)? else {
            return Ok(None);
        };
        codec::decode(|| format!("{} {what}", self.tree_name), &bytes)
            .map(Some)
            .map_err(abort)
    }

    pub(crate) fn put_record<T: Serialize>(
        &self,
        key: Vec<u8>,
        value: &T,
        what: Label<'_>,
    ) -> Result<(), TxError> {
        let bytes = codec::encode(|| format!("{} {what}", self.tree_name), value).map_err(abort)?;
        self.data.insert(&key, bytes.into())?;
        Ok(())
    }

    fn changed_run(&self, run_id: &str) {
        self.changes.borrow_mut().runs.insert(run_id.to_string());
    }

    fn changed_node(&self, node: u64) {
        self.changes.borrow_mut().task_nodes.insert(node);
    }

    fn changed_queue(&self) {
        self.changes.borrow_mut().queue = true;
    }

    pub(crate) fn mark(&self, key: Vec<u8>) -> Result<(), TxError> {
        self.data.insert(&key, StoredBytes::default())?;
        Ok(())
    }

    fn definition(&self, name: &str, version: u64) -> Result<Option<Arc<FlowDefinition>>, TxError> {
        if let Ok(cache) = self.definitions.flows.lock() {
            if let Some(found) = cache.get(&(name.to_string(), version)) {
                return Ok(Some(found.clone()));
            }
        }
        let Some(bytes) = self.data.get(&keys::flow_def(name, version))? else {
            return Ok(None);
        };
        let record: FlowRecord = codec::decode(
            || format!("{} flow {name} v{version}", self.tree_name),
            &bytes,
        )
        .map_err(abort)?;
        let definition = floe_engine::parse_flow(&record.definition).map_err(|errors| {
            abort(StoreError::Json {
                record: format!("{} flow {name} v{version}", self.tree_name),
                reason: format!("stored definition no longer parses: {errors:?}"),
            })
        })?;
        let definition = Arc::new(definition);
        if let Ok(mut cache) = self.definitions.flows.lock() {
            cache.insert((name.to_string(), version), definition.clone());
        }
        Ok(Some(definition))
    }

    fn run(&self, run_id: &str) -> Result<Option<RunRecord>, TxError> {
        self.run_at(&local(run_id))
    }

    fn run_at(&self, address: &RunAddress) -> Result<Option<RunRecord>, TxError> {
        self.get_json(&keys::run(address), format_args!("run {address}"))
    }

    /// Stores the record and moves its status and finish-time index entries
    /// from `previous` (status, finish time) when they changed.
    fn save_run(
        &self,
        record: &RunRecord,
        previous: Option<(RunStatus, Option<u64>)>,
    ) -> Result<(), TxError> {
        let address = local(&record.run_id);
        let stored = self.put_structured(
            keys::run(&address),
            record,
            format_args!("run {}", record.run_id),
        )?;
        self.changed_run(&record.run_id);
        // A run holds its blobs until it is purged: references only ever get
        // added. JSON values sit in the record as their text, so a byte scan finds them.
        for hash in blobs::referenced_hashes(&stored) {
            self.mark(keys::blob_owner(&hash, &keys::run_owner(&address)))?;
        }
        let (previous_status, previous_finished) = match previous {
            Some((status, finished)) => (Some(status), finished),
            None => (None, None),
        };
        if previous_status != Some(record.status) {
            if let Some(previous) = previous_status {
                self.data.remove(&keys::run_by_status(
                    status_name(previous),
                    record.created_at_ms,
                    &address,
                ))?;
            }
            self.mark(keys::run_by_status(
                status_name(record.status),
                record.created_at_ms,
                &address,
            ))?;
        }
        let finished = if record.status == RunStatus::Running {
            None
        } else {
            record.finished_at_ms
        };
        if previous_finished != finished {
            if let Some(previous) = previous_finished {
                self.data
                    .remove(&keys::run_by_finished(previous, &address))?;
            }
            if let Some(finished) = finished {
                self.mark(keys::run_by_finished(finished, &address))?;
            }
        }
        Ok(())
    }

    /// Deletes a finished run (at `address`) and every index entry that names it.
    fn delete_run(&self, address: &RunAddress, record: &RunRecord) -> Result<(), TxError> {
        let run_id = &record.run_id;
        self.data.remove(&keys::run(address))?;
        self.changed_run(run_id);
        self.data
            .remove(&keys::run_by_created(record.created_at_ms, address))?;
        self.data.remove(&keys::run_by_status(
            status_name(record.status),
            record.created_at_ms,
            address,
        ))?;
        self.data.remove(&keys::run_by_flow(
            &record.flow,
            record.created_at_ms,
            address,
        ))?;
        if !record.correlation_id.is_empty() {
            self.data.remove(&keys::run_by_correlation(
                &record.correlation_id,
                record.created_at_ms,
                address,
            ))?;
        }
        if let Some(finished) = record.finished_at_ms {
            self.data
                .remove(&keys::run_by_finished(finished, address))?;
        }
        let stored = encode_structured(self.tree_name, record, format_args!("run {run_id}"))?;
        for hash in blobs::referenced_hashes(&stored) {
            self.data
                .remove(&keys::blob_owner(&hash, &keys::run_owner(address)))?;
        }
        if !record.idempotency_key.is_empty() {
            // Only if the key still names this run.
            let idempotency = keys::idempotency(address, &record.idempotency_key);
            if self.data.get(&idempotency)?.as_deref() == Some(address.to_string().as_bytes()) {
                self.data.remove(&idempotency)?;
            }
        }
        Ok(())
    }
}

fn encode_structured<T: Serialize>(
    tree_name: &str,
    value: &T,
    what: Label<'_>,
) -> Result<Vec<u8>, TxError> {
    codec::encode_structured(|| format!("{tree_name} {what}"), value).map_err(abort)
}

fn to_json<T: Serialize>(value: &T, tree_name: &str, what: Label<'_>) -> Result<Vec<u8>, TxError> {
    serde_json::to_vec(value).map_err(|err| {
        abort(StoreError::Json {
            record: format!("{tree_name} {what}"),
            reason: err.to_string(),
        })
    })
}

pub fn status_name(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Running => "running",
        RunStatus::Completed => "completed",
        RunStatus::Failed => "failed",
        RunStatus::Cancelled => "cancelled",
    }
}

/// Every run is in the default namespace and partition until runs carry
/// their own (records and commands name runs by id alone).
fn local(run_id: impl Into<String>) -> RunAddress {
    RunAddress::local(run_id)
}

/// A timer's key text: `<run>/<step>/<item>/<purpose>/<attempt>`.
pub fn timer_key_text(timer: &TimerKey) -> String {
    let item = timer
        .item
        .map_or_else(|| "-".to_string(), |item| item.to_string());
    format!(
        "{}/{}/{item}/{}/{}",
        local(&timer.run_id),
        timer.step_id,
        timer.purpose,
        timer.attempt
    )
}

/// Parameters of a run start, as decided by the proposer.
pub struct StartRun<'a> {
    pub run_id: &'a str,
    pub flow: &'a str,
    /// 0: the flow's latest version as this entry applies.
    pub version: u64,
    pub input: &'a [u8],
    pub correlation_id: &'a str,
    pub idempotency_key: &'a str,
    pub at_ms: u64,
}

pub(crate) fn start_run(tx: &RunTx<'_>, start: StartRun<'_>) -> Result<CommandResponse, TxError> {
    let address = local(start.run_id);
    if !start.idempotency_key.is_empty() {
        if let Some(bytes) = tx
            .data
            .get(&keys::idempotency(&address, start.idempotency_key))?
        {
            // The earlier run's address text: its id, in the default namespace.
            let earlier = String::from_utf8_lossy(&bytes).into_owned();
            let Ok(earlier_address) = earlier.parse::<RunAddress>();
            let version = tx.run_at(&earlier_address)?.map_or(0, |run| run.version);
            return Ok(CommandResponse::RunStarted {
                run_id: earlier,
                created: false,
                version,
            });
        }
    }
    let version = match start.version {
        0 => match latest_flow_version(tx, start.flow)? {
            Some(latest) => latest,
            None => {
                return Ok(Rejection::NotFound(format!(
                    "no flow named {}",
                    floe_engine::names::quote_bounded(start.flow)
                ))
                .into())
            }
        },
        pinned => pinned,
    };
    if tx.data.get(&keys::run(&address))?.is_some() {
        return Ok(Rejection::Invalid(format!("run id {} is already taken", start.run_id)).into());
    }
    let input: serde_json::Value = match serde_json::from_slice(start.input) {
        Ok(input) => input,
        Err(err) => return Ok(Rejection::Invalid(format!("run input is not JSON: {err}")).into()),
    };
    let new_run = NewRun {
        run_id: start.run_id.to_string(),
        version,
        input,
        correlation_id: start.correlation_id.to_string(),
        idempotency_key: start.idempotency_key.to_string(),
        parent: None,
    };
    let mut work = VecDeque::new();
    match create_run(tx, start.flow, new_run, start.at_ms, &mut work)? {
        Ok(()) => {}
        Err(Refusal::Missing(reason)) => return Ok(Rejection::NotFound(reason).into()),
        Err(Refusal::Refused(reason)) => return Ok(Rejection::Invalid(reason).into()),
    }
    if !start.idempotency_key.is_empty() {
        tx.data.insert(
            &keys::idempotency(&address, start.idempotency_key),
            address.to_string().into_bytes().into(),
        )?;
    }
    drain(tx, work, start.at_ms, 0)?;
    Ok(CommandResponse::RunStarted {
        run_id: start.run_id.to_string(),
        created: true,
        version,
    })
}

fn latest_flow_version(tx: &RunTx<'_>, flow: &str) -> Result<Option<u64>, TxError> {
    tx.get_record(&keys::flow_latest(flow), format_args!("flow {flow} latest"))
}

/// Why a run was not created.
enum Refusal {
    /// The flow version does not exist.
    Missing(String),
    /// The engine refused the start (bad input, say).
    Refused(String),
}

/// Creates a run record and carries out its first effects; `Ok(Err(_))`
/// when the flow version is missing or the engine refuses the start.
fn create_run(
    tx: &RunTx<'_>,
    flow: &str,
    new_run: NewRun,
    at_ms: u64,
    work: &mut VecDeque<(String, RunEvent)>,
) -> Result<Result<(), Refusal>, TxError> {
    let version = new_run.version;
    let Some(definition) = tx.definition(flow, version)? else {
        return Ok(Err(Refusal::Missing(format!(
            "flow {flow:?} has no version {version}"
        ))));
    };
    // Bound first: the budget's borrow must end before effects start child runs.
    let started = run::start_within(&definition, new_run, at_ms, &mut tx.budget.borrow_mut());
    let (record, effects) = match started {
        Ok(started) => started,
        Err(err) => return Ok(Err(Refusal::Refused(err.to_string()))),
    };
    let mut record = record;
    let mut placed_now = Vec::new();
    apply_effects(tx, &record, effects, at_ms, work, &mut placed_now)?;
    start_placed(tx, &definition, &mut record, placed_now, at_ms)?;
    tx.save_run(&record, None)?;
    let address = local(&record.run_id);
    tx.mark(keys::run_by_created(record.created_at_ms, &address))?;
    tx.mark(keys::run_by_flow(
        &record.flow,
        record.created_at_ms,
        &address,
    ))?;
    if !record.correlation_id.is_empty() {
        tx.mark(keys::run_by_correlation(
            &record.correlation_id,
            record.created_at_ms,
            &address,
        ))?;
    }
    Ok(Ok(()))
}

/// Feeds `event` to run `run_id`; a refusal (stale attempt, finished run)
/// comes back as a `FailedPrecondition` rejection and changes nothing.
pub(crate) fn run_event(
    tx: &RunTx<'_>,
    run_id: &str,
    event: RunEvent,
    at_ms: u64,
) -> Result<CommandResponse, TxError> {
    let mut work = VecDeque::new();
    work.push_back((run_id.to_string(), event));
    match drain(tx, work, at_ms, 0)? {
        Some(reason) => Ok(Rejection::FailedPrecondition(reason).into()),
        None => Ok(CommandResponse::RunUpdated),
    }
}

/// What a typed run event must meet before the engine sees it: the task or
/// timer it names belongs to the run it is for, and its value nests no
/// deeper than values may where they enter. (A JSON event of an earlier
/// release applies as that release applied it.)
pub(crate) fn check_event(run_id: &str, event: &RunEvent) -> Result<(), Rejection> {
    if let Some(named) = event.named_run_id() {
        if named != run_id {
            return Err(Rejection::Invalid(format!(
                "an event for run {} names run {}",
                floe_engine::names::quote_bounded(run_id),
                floe_engine::names::quote_bounded(named)
            )));
        }
    }
    if let Some(value) = event.value() {
        floe_engine::limits::check_value_depth(
            || {
                format!(
                    "the value of an event for run {}",
                    floe_engine::names::quote_bounded(run_id)
                )
            },
            value,
        )
        .map_err(|too_deep| Rejection::Invalid(too_deep.to_string()))?;
    }
    Ok(())
}

/// Processes queued events (the first is the caller's; the rest come from
/// sub-flow starts and completions). Returns the refusal of the first event.
fn drain(
    tx: &RunTx<'_>,
    mut work: VecDeque<(String, RunEvent)>,
    at_ms: u64,
    depth: usize,
) -> Result<Option<String>, TxError> {
    let mut first_refusal = None;
    let mut first = true;
    let mut processed = 0usize;
    while let Some((run_id, event)) = work.pop_front() {
        processed += 1;
        if processed > 10_000 || depth > MAX_SUBFLOW_DEPTH {
            return Err(abort(StoreError::Json {
                record: format!("{} run {run_id}", tx.tree_name),
                reason: "runaway chain of sub-flow events".into(),
            }));
        }
        let refusal = handle_one(tx, &run_id, event, at_ms, &mut work)?;
        if first {
            first_refusal = refusal;
            first = false;
        }
    }
    Ok(first_refusal)
}

fn handle_one(
    tx: &RunTx<'_>,
    run_id: &str,
    event: RunEvent,
    at_ms: u64,
    work: &mut VecDeque<(String, RunEvent)>,
) -> Result<Option<String>, TxError> {
    let Some(mut record) = tx.run(run_id)? else {
        return Ok(Some(format!(
            "no run {}",
            floe_engine::names::quote_bounded(run_id)
        )));
    };
    let Some(definition) = tx.definition(&record.flow, record.version)? else {
        return Ok(Some(format!(
            "run {run_id}: flow {} v{} is missing",
            record.flow, record.version
        )));
    };
    if let RunEvent::TaskStarted {
        key,
        attempt,
        node,
        worker,
    } = &event
    {
        assign_task(tx, &record, key, *attempt, *node, worker, at_ms)?;
    }
    // A settled attempt leaves the queues (before effects may schedule the next).
    let settled = match &event {
        RunEvent::TaskCompleted { key, attempt, .. }
        | RunEvent::TaskFailed { key, attempt, .. } => Some((key.clone(), *attempt)),
        _ => None,
    };
    let previous = (
        record.status,
        if record.status == RunStatus::Running {
            None
        } else {
            record.finished_at_ms
        },
    );
    let handled = run::handle_within(
        &definition,
        &mut record,
        event,
        at_ms,
        &mut tx.budget.borrow_mut(),
    );
    let effects = match handled {
        Ok(effects) => effects,
        Err(RunError::StaleAttempt {
            key,
            attempt,
            current,
        }) => {
            return Ok(Some(format!(
                "stale attempt {attempt} for {key}: the current attempt is {current}"
            )))
        }
        Err(err) => return Ok(Some(err.to_string())),
    };
    // The settled attempt frees its slot before the next task is placed.
    if let Some((key, attempt)) = settled {
        remove_task_attempt(tx, &record, &key, attempt)?;
    }
    let mut placed_now = Vec::new();
    apply_effects(tx, &record, effects, at_ms, work, &mut placed_now)?;
    start_placed(tx, &definition, &mut record, placed_now, at_ms)?;
    tx.save_run(&record, Some(previous))?;
    Ok(None)
}

/// Records in the run the attempts `apply_effects` placed on a node at once
/// (as a `TaskStarted` would), so the run is stored once per event.
fn start_placed(
    tx: &RunTx<'_>,
    definition: &FlowDefinition,
    record: &mut RunRecord,
    placed_now: Vec<(TaskKey, u32, u64)>,
    at_ms: u64,
) -> Result<(), TxError> {
    for (key, attempt, node) in placed_now {
        let event = RunEvent::TaskStarted {
            key: key.clone(),
            attempt,
            node,
            worker: String::new(),
        };
        let handled = run::handle_within(
            definition,
            record,
            event,
            at_ms,
            &mut tx.budget.borrow_mut(),
        );
        match handled {
            Ok(effects) => {
                // A start only cancels its schedule-to-start timer.
                let (mut unused_work, mut unused_placed) = (VecDeque::new(), Vec::new());
                apply_effects(
                    tx,
                    record,
                    effects,
                    at_ms,
                    &mut unused_work,
                    &mut unused_placed,
                )?;
                debug_assert!(
                    unused_work.is_empty() && unused_placed.is_empty(),
                    "a task start had further effects"
                );
            }
            // Cannot happen (the attempt was scheduled by this very event);
            // failing the whole apply over it would stop every node, so the
            // task stays placed and only its start time is missing. Its node
            // is still noted: that is how `find_task` reaches its record.
            Err(err) => {
                tracing::warn!(run = %record.run_id, error = %err, "a task placed in the same entry did not start");
                debug_assert!(
                    false,
                    "a task placed in the same entry did not start: {err}"
                );
                let attempts = record
                    .steps
                    .get_mut(&key.step_id)
                    .map(|step| &mut step.attempts);
                if let Some(entry) = attempts
                    .into_iter()
                    .flatten()
                    .find(|entry| entry.item == key.item && entry.attempt == attempt)
                {
                    entry.node = Some(node);
                }
            }
        }
    }
    Ok(())
}

fn assign_task(
    tx: &RunTx<'_>,
    run: &RunRecord,
    key: &TaskKey,
    attempt: u32,
    node: u64,
    worker: &str,
    at_ms: u64,
) -> Result<(), TxError> {
    let text = key.to_string();
    let Some(found) = find_task(tx, run, key, &text)? else {
        return Ok(());
    };
    let mut task = found.task;
    if task.spec.attempt != attempt {
        return Ok(());
    }
    if let Some(previous) = &task.assignment {
        tx.data.remove(&keys::task_on_node(previous.node, &text))?;
        tx.changed_node(previous.node);
        slots::move_placed(tx, previous.node, &task.spec, -1)?;
    } else {
        tx.data
            .remove(&keys::task_queue(task.spec.not_before_ms, &text))?;
        tx.changed_queue();
        count_placed(tx, &task, 1)?;
    }
    if found.under_task_key {
        tx.data.remove(&keys::task(&text))?;
    }
    task.assignment = Some(Assignment {
        node,
        worker: worker.to_string(),
        at_ms,
    });
    store_placed(tx, &task, &text)?;
    slots::move_placed(tx, node, &task.spec, 1)?;
    Ok(())
}

/// A stored task, and whether its record is under `task/<key>` (queued, or
/// placed by an earlier release) rather than in its node-index entry.
struct FoundTask {
    task: TaskRecord,
    under_task_key: bool,
}

/// The task `key` of `run`, wherever its record is. A placed task's record
/// sits in its node-index entry (`tasknode/<node>/<key>`, after the
/// attempt), so placing and finishing a task touch one key instead of two.
fn find_task(
    tx: &RunTx<'_>,
    run: &RunRecord,
    key: &TaskKey,
    text: &str,
) -> Result<Option<FoundTask>, TxError> {
    match queued_task(tx, text)? {
        Some(found) => Ok(Some(found)),
        None => placed_task(tx, run, key, text),
    }
}

/// The task named by its key text (commands from the scheduler carry the
/// text, mostly for queued tasks: the run is read only for a placed one).
fn find_task_by_text(tx: &RunTx<'_>, text: &str) -> Result<Option<FoundTask>, TxError> {
    if let Some(found) = queued_task(tx, text)? {
        return Ok(Some(found));
    }
    let Some(key) = text.parse::<TaskKey>().ok() else {
        return Ok(None);
    };
    let Some(run) = tx.run(&key.run_id)? else {
        return Ok(None);
    };
    placed_task(tx, &run, &key, text)
}

/// A record under `task/`: a queued task, or one placed by an earlier release.
fn queued_task(tx: &RunTx<'_>, text: &str) -> Result<Option<FoundTask>, TxError> {
    let task = tx.get_json::<TaskRecord>(&keys::task(text), format_args!("task {text}"))?;
    Ok(task.map(|task| FoundTask {
        task,
        under_task_key: true,
    }))
}

/// A record in a node-index entry. The node comes from the run's attempts,
/// the newest first (a task has one record at a time).
fn placed_task(
    tx: &RunTx<'_>,
    run: &RunRecord,
    key: &TaskKey,
    text: &str,
) -> Result<Option<FoundTask>, TxError> {
    let Some(step) = run.steps.get(&key.step_id) else {
        return Ok(None);
    };
    let mut tried = Vec::new();
    for node in step
        .attempts
        .iter()
        .rev()
        .filter(|attempt| attempt.item == key.item)
        .filter_map(|attempt| attempt.node)
    {
        if tried.contains(&node) {
            continue;
        }
        tried.push(node);
        if let Some(bytes) = tx.data.get(&keys::task_on_node(node, text))? {
            let label = || format!("{} task {text} on node {node}", tx.tree_name);
            if let Some(task) = placed_record(label, &bytes).map_err(abort)? {
                return Ok(Some(FoundTask {
                    task,
                    under_task_key: false,
                }));
            }
        }
    }
    Ok(None)
}

/// Stores a placed task in its node-index entry: the attempt (big-endian
/// u32, all that entries written by earlier releases hold), then the record.
fn store_placed(tx: &RunTx<'_>, task: &TaskRecord, text: &str) -> Result<(), TxError> {
    let node = task
        .assignment
        .as_ref()
        .map_or(0, |assignment| assignment.node);
    let record = encode_structured(tx.tree_name, task, format_args!("task {text}"))?;
    let mut entry = Vec::with_capacity(4 + record.len());
    entry.extend_from_slice(&task.spec.attempt.to_be_bytes());
    entry.extend_from_slice(&record);
    tx.data
        .insert(&keys::task_on_node(node, text), entry.into())?;
    tx.changed_node(node);
    Ok(())
}

/// The record in a node-index entry; `None` for an entry of an earlier
/// release (the attempt alone, or nothing), whose record is under `task/`.
pub(crate) fn placed_record(
    record: impl Fn() -> String,
    entry: &[u8],
) -> Result<Option<TaskRecord>, StoreError> {
    match entry.get(4..) {
        Some(stored) if !stored.is_empty() => codec::decode_structured(record, stored).map(Some),
        _ => Ok(None),
    }
}

/// The attempt a node-index entry names, if it holds one.
pub(crate) fn placed_attempt(entry: &[u8]) -> Option<u32> {
    entry
        .get(..4)
        .and_then(|bytes| <[u8; 4]>::try_from(bytes).ok())
        .map(u32::from_be_bytes)
}

/// Removes the task only if it is still at `attempt`.
fn remove_task_attempt(
    tx: &RunTx<'_>,
    run: &RunRecord,
    key: &TaskKey,
    attempt: u32,
) -> Result<(), TxError> {
    let text = key.to_string();
    match find_task(tx, run, key, &text)? {
        Some(found) if found.task.spec.attempt == attempt => drop_task(tx, &text, &found),
        _ => Ok(()),
    }
}

fn remove_task(tx: &RunTx<'_>, run: &RunRecord, key: &TaskKey) -> Result<(), TxError> {
    let text = key.to_string();
    match find_task(tx, run, key, &text)? {
        Some(found) => drop_task(tx, &text, &found),
        None => Ok(()),
    }
}

/// Deletes the stored task `text` and frees what it held (its node's slot
/// and counters, or its place in the queue).
fn drop_task(tx: &RunTx<'_>, text: &str, found: &FoundTask) -> Result<(), TxError> {
    let task = &found.task;
    match &task.assignment {
        Some(assignment) => {
            tx.data.remove(&keys::task_on_node(assignment.node, text))?;
            tx.changed_node(assignment.node);
            count_placed(tx, task, -1)?;
            slots::move_placed(tx, assignment.node, &task.spec, -1)?;
        }
        None => {
            tx.data
                .remove(&keys::task_queue(task.spec.not_before_ms, text))?;
            tx.changed_queue();
        }
    };
    if found.under_task_key {
        tx.data.remove(&keys::task(text))?;
    }
    Ok(())
}

/// Moves the placed-task counters of the task's block and flow by `delta`.
fn count_placed(tx: &RunTx<'_>, task: &TaskRecord, delta: i64) -> Result<(), TxError> {
    let mut scopes = vec![(LimitScope::Block, task.spec.block.as_str())];
    if !task.flow.is_empty() {
        scopes.push((LimitScope::Flow, task.flow.as_str()));
    }
    for (scope, name) in scopes {
        let key = keys::active_count(scope.name(), name);
        let current: u64 = tx
            .get_json(&key, format_args!("{} {name} placed count", scope.name()))?
            .unwrap_or(0);
        let next = current.saturating_add_signed(delta);
        debug_assert!(
            delta >= 0 || current > 0,
            "a placed-task counter went below zero"
        );
        if next == 0 {
            tx.data.remove(&key)?;
        } else {
            tx.put_json(
                key,
                &next,
                format_args!("{} {name} placed count", scope.name()),
            )?;
        }
    }
    Ok(())
}

/// The first limit that placing `task` would exceed, as a refusal reason.
fn limit_reached(tx: &RunTx<'_>, task: &TaskRecord) -> Result<Option<String>, TxError> {
    let mut scopes = vec![(LimitScope::Block, task.spec.block.as_str())];
    if !task.flow.is_empty() {
        scopes.push((LimitScope::Flow, task.flow.as_str()));
    }
    for (scope, name) in scopes {
        let what = format!("{} {name}", scope.name());
        let Some(limit) = tx.get_json::<u32>(
            &keys::limit(scope.name(), name),
            format_args!("{what} limit"),
        )?
        else {
            continue;
        };
        let active: u64 = tx
            .get_json(
                &keys::active_count(scope.name(), name),
                format_args!("{what} placed count"),
            )?
            .unwrap_or(0);
        if active >= u64::from(limit) {
            return Ok(Some(format!(
                "{what} is at its concurrency limit ({active} of {limit} placed)"
            )));
        }
    }
    Ok(None)
}

/// Sets (or with `None` clears) a cluster-wide concurrency limit. Tasks
/// placed already keep running; a lowered limit holds new placements back
/// until enough of them finish.
pub(crate) fn set_limit(
    tx: &RunTx<'_>,
    scope: LimitScope,
    name: &str,
    limit: Option<u32>,
) -> Result<CommandResponse, TxError> {
    let key = keys::limit(scope.name(), name);
    match limit {
        Some(limit) => tx.put_json(key, &limit, format_args!("{} {name} limit", scope.name()))?,
        None => {
            tx.data.remove(&key)?;
        }
    }
    Ok(CommandResponse::Applied)
}

/// Carries out the engine's effects. A task ready now is placed on a node
/// with a free slot right away when one has it (see `slots.rs`); those
/// placements are added to `placed_now` for the run record.
fn apply_effects(
    tx: &RunTx<'_>,
    record: &RunRecord,
    effects: Vec<Effect>,
    at_ms: u64,
    work: &mut VecDeque<(String, RunEvent)>,
    placed_now: &mut Vec<(TaskKey, u32, u64)>,
) -> Result<(), TxError> {
    for effect in effects {
        match effect {
            Effect::ScheduleTask(spec) => {
                // A new attempt replaces the previous one's record and index entry.
                remove_task(tx, record, &spec.key)?;
                let text = spec.key.to_string();
                let mut task = TaskRecord {
                    spec,
                    scheduled_at_ms: at_ms,
                    assignment: None,
                    flow: record.flow.clone(),
                };
                let node =
                    if task.spec.not_before_ms <= at_ms && limit_reached(tx, &task)?.is_none() {
                        slots::choose_node(tx, &task.spec)?
                    } else {
                        None
                    };
                match node {
                    Some(node) => {
                        task.assignment = Some(Assignment {
                            node,
                            worker: String::new(),
                            at_ms,
                        });
                        count_placed(tx, &task, 1)?;
                        slots::move_placed(tx, node, &task.spec, 1)?;
                        store_placed(tx, &task, &text)?;
                        placed_now.push((task.spec.key.clone(), task.spec.attempt, node));
                    }
                    None => {
                        tx.mark(keys::task_queue(task.spec.not_before_ms, &text))?;
                        tx.changed_queue();
                        tx.put_structured(keys::task(&text), &task, format_args!("task {text}"))?;
                    }
                }
            }
            Effect::CancelTask { key } => remove_task(tx, record, &key)?,
            Effect::StartTimer { timer, due_ms } => {
                let text = timer_key_text(&timer);
                if let Some(old_due) =
                    tx.get_json::<u64>(&keys::timer_by_key(&text), format_args!("timer {text}"))?
                {
                    tx.data.remove(&keys::timer_due(old_due, &text))?;
                }
                tx.put_json(
                    keys::timer_by_key(&text),
                    &due_ms,
                    format_args!("timer {text}"),
                )?;
                tx.put_json(
                    keys::timer_due(due_ms, &text),
                    &timer,
                    format_args!("timer {text}"),
                )?;
                tx.changed_queue();
            }
            Effect::CancelTimer { timer } => {
                let text = timer_key_text(&timer);
                if let Some(due) =
                    tx.get_json::<u64>(&keys::timer_by_key(&text), format_args!("timer {text}"))?
                {
                    tx.data.remove(&keys::timer_due(due, &text))?;
                    tx.data.remove(&keys::timer_by_key(&text))?;
                }
            }
            Effect::StartChildRun {
                step_id,
                flow,
                version,
                input,
            } => {
                // A retried parent re-enters the step: later children get a suffix.
                let base = child_run_id(&record.run_id, &step_id);
                let mut child_id = base.clone();
                let mut round = 1;
                while tx.data.get(&keys::run(&local(&child_id)))?.is_some() {
                    round += 1;
                    child_id = format!("{base}.{round}");
                }
                let new_run = NewRun {
                    run_id: child_id,
                    version,
                    input,
                    correlation_id: record.correlation_id.clone(),
                    idempotency_key: String::new(),
                    parent: Some((record.run_id.clone(), step_id.clone())),
                };
                if let Err(Refusal::Missing(reason) | Refusal::Refused(reason)) =
                    create_run(tx, &flow, new_run, at_ms, work)?
                {
                    let outcome = ChildOutcome::Failed(format!(
                        "sub-flow {flow} v{version} did not start: {reason}"
                    ));
                    work.push_back((
                        record.run_id.clone(),
                        RunEvent::ChildFinished { step_id, outcome },
                    ));
                }
            }
            Effect::CancelChildRun { step_id } => {
                let base = child_run_id(&record.run_id, &step_id);
                let mut child_id = base.clone();
                let mut round = 1;
                // Only the newest child can still be running.
                while tx
                    .data
                    .get(&keys::run(&local(format!("{base}.{}", round + 1))))?
                    .is_some()
                {
                    round += 1;
                    child_id = format!("{base}.{round}");
                }
                work.push_back((
                    child_id,
                    RunEvent::Cancel {
                        reason: format!("parent run {} ended", record.run_id),
                    },
                ));
            }
            Effect::RunFinished { status } => {
                if let Some((parent_run, parent_step)) = &record.parent {
                    let outcome = match status {
                        RunStatus::Completed => ChildOutcome::Completed(
                            record.output.clone().unwrap_or(serde_json::Value::Null),
                        ),
                        RunStatus::Cancelled => ChildOutcome::Cancelled,
                        RunStatus::Failed | RunStatus::Running => ChildOutcome::Failed(
                            record
                                .error
                                .clone()
                                .unwrap_or_else(|| "sub-flow failed".into()),
                        ),
                    };
                    work.push_back((
                        parent_run.clone(),
                        RunEvent::ChildFinished {
                            step_id: parent_step.clone(),
                            outcome,
                        },
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Child run ids derive from the parent's, so a retried apply picks the same one.
pub fn child_run_id(run_id: &str, step_id: &str) -> String {
    format!("{run_id}.{step_id}")
}

pub(crate) fn assign(
    tx: &RunTx<'_>,
    task: &str,
    attempt: u32,
    node: u64,
    worker: &str,
    at_ms: u64,
) -> Result<CommandResponse, TxError> {
    let Some(FoundTask { task: record, .. }) = find_task_by_text(tx, task)? else {
        return Ok(Rejection::FailedPrecondition(format!("no task {task}")).into());
    };
    if record.spec.attempt != attempt {
        return Ok(Rejection::Stale(format!(
            "stale attempt {attempt} for {task}: the current attempt is {}",
            record.spec.attempt
        ))
        .into());
    }
    if record.assignment.is_none() {
        if let Some(reason) = limit_reached(tx, &record)? {
            return Ok(Rejection::LimitReached(format!("task {task} not placed: {reason}")).into());
        }
    }
    let event = RunEvent::TaskStarted {
        key: record.spec.key.clone(),
        attempt,
        node,
        worker: worker.to_string(),
    };
    run_event(tx, &record.spec.key.run_id.clone(), event, at_ms)
}

pub(crate) fn fire_timers(
    tx: &RunTx<'_>,
    timers: &[String],
    at_ms: u64,
) -> Result<CommandResponse, TxError> {
    for (position, text) in timers.iter().enumerate() {
        // Once the entry's work budget is spent, the rest stay due and the
        // leader fires them in its next entry (the first always fires).
        if position > 0 && tx.budget.borrow().units() == 0 {
            break;
        }
        let Some(due) =
            tx.get_json::<u64>(&keys::timer_by_key(text), format_args!("timer {text}"))?
        else {
            continue;
        };
        if due > at_ms {
            continue;
        }
        let Some(timer): Option<TimerKey> =
            tx.get_json(&keys::timer_due(due, text), format_args!("timer {text}"))?
        else {
            continue;
        };
        // Firing reads and rewrites the run's record: charge it before.
        let record_bytes = tx
            .data
            .get(&keys::run(&local(&timer.run_id)))?
            .map_or(0, |bytes| bytes.len());
        let cost = 1 + record_bytes / run::BYTES_PER_UNIT;
        if position > 0 && cost > tx.budget.borrow().units() {
            break;
        }
        tx.budget.borrow_mut().spend(cost);
        tx.data.remove(&keys::timer_due(due, text))?;
        tx.data.remove(&keys::timer_by_key(text))?;
        let run_id = timer.run_id.clone();
        // A refusal (the run moved on) is expected here and changes nothing.
        run_event(tx, &run_id, RunEvent::TimerFired { timer }, at_ms)?;
    }
    Ok(CommandResponse::RunUpdated)
}

pub(crate) fn unassign(
    tx: &RunTx<'_>,
    task: &str,
    attempt: u32,
    at_ms: u64,
) -> Result<CommandResponse, TxError> {
    let Some(FoundTask {
        task: mut record, ..
    }) = find_task_by_text(tx, task)?
    else {
        return Ok(Rejection::FailedPrecondition(format!("no task {task}")).into());
    };
    let Some(assignment) = record.assignment.take() else {
        return Ok(
            Rejection::FailedPrecondition(format!("task {task} is not placed on a node")).into(),
        );
    };
    if record.spec.attempt != attempt {
        return Ok(Rejection::Stale(format!(
            "stale attempt {attempt} for {task}: the current attempt is {}",
            record.spec.attempt
        ))
        .into());
    }
    tx.data.remove(&keys::task_on_node(assignment.node, task))?;
    tx.changed_node(assignment.node);
    count_placed(tx, &record, -1)?;
    slots::move_placed(tx, assignment.node, &record.spec, -1)?;
    record.spec.not_before_ms = at_ms;
    tx.mark(keys::task_queue(at_ms, task))?;
    tx.changed_queue();
    // Back in the queue: the record lives under `task/` again.
    tx.put_structured(keys::task(task), &record, format_args!("task {task}"))?;
    Ok(CommandResponse::RunUpdated)
}

/// Deletes the given runs if they ended at or before `finished_before_ms`
/// (retention). The leader picks them from the finish-time index; apply
/// checks again, so a run retried meanwhile is kept.
pub(crate) fn purge_runs(
    tx: &RunTx<'_>,
    runs: &[String],
    finished_before_ms: u64,
) -> Result<CommandResponse, TxError> {
    let mut purged = 0u64;
    for run_text in runs {
        let Ok(address) = run_text.parse::<RunAddress>();
        let record = match tx.run_at(&address) {
            Ok(Some(record)) => record,
            Ok(None) => continue,
            // One unreadable record must not hold back the others' purge.
            Err(TxError::Abort(error)) if !error.is_storage_failure() => {
                tracing::warn!(run = %run_text, error = %error, "retention skips a run whose record does not read");
                continue;
            }
            Err(other) => return Err(other),
        };
        let expired = record.status != RunStatus::Running
            && record
                .finished_at_ms
                .is_some_and(|at| at <= finished_before_ms);
        if expired {
            tx.delete_run(&address, &record)?;
            purged += 1;
        }
    }
    Ok(CommandResponse::RunsPurged { purged })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changes::AppliedChanges;

    const FLOW: &str = r#"{"name": "chain", "steps": [
        {"id": "a", "type": "task", "block": "noop", "input": "input", "next": "b"},
        {"id": "b", "type": "task", "block": "noop", "input": "steps.a.output"}]}"#;

    struct Fixture {
        state: crate::memory::MemoryState,
        definitions: DefinitionCache,
    }

    impl Fixture {
        fn new() -> Fixture {
            let definitions = DefinitionCache::default();
            let flow = floe_engine::parse_flow(FLOW.as_bytes()).unwrap();
            definitions
                .flows
                .lock()
                .unwrap()
                .insert(("chain".into(), 1), Arc::new(flow));
            Fixture {
                state: Default::default(),
                definitions,
            }
        }

        fn apply<R>(&self, step: impl Fn(&RunTx<'_>) -> Result<R, TxError>) -> R {
            let changes = std::cell::RefCell::new(AppliedChanges::default());
            let budget = std::cell::RefCell::new(run::WorkBudget::for_entry());
            self.state
                .transaction(|data| {
                    step(&RunTx {
                        data,
                        tree_name: "memory",
                        definitions: &self.definitions,
                        changes: &changes,
                        budget: &budget,
                    })
                })
                .unwrap()
        }

        fn has(&self, key: Vec<u8>) -> bool {
            self.state.get(&key).is_some()
        }

        fn start(&self, run_id: &str) {
            let start = |tx: &RunTx<'_>| {
                let command = StartRun {
                    run_id,
                    flow: "chain",
                    version: 1,
                    input: br#"{"n": 1}"#,
                    correlation_id: "",
                    idempotency_key: "",
                    at_ms: 10,
                };
                start_run(tx, command)
            };
            assert!(matches!(
                self.apply(start),
                CommandResponse::RunStarted { created: true, .. }
            ));
        }

        fn complete(&self, run_id: &str, step: &str) -> CommandResponse {
            let key = TaskKey {
                run_id: run_id.into(),
                step_id: step.into(),
                item: None,
            };
            let event = RunEvent::TaskCompleted {
                key,
                attempt: 1,
                output: serde_json::json!({"ok": step}),
                worker: None,
            };
            self.apply(|tx| run_event(tx, run_id, event.clone(), 30))
        }

        fn counts_on(&self, node: u64) -> (u32, u64) {
            self.apply(|tx| {
                let active: u64 = tx
                    .get_json(&keys::active_count("block", "noop"), format_args!("count"))?
                    .unwrap_or(0);
                Ok((slots::placed(tx, node, "noop")?, active))
            })
        }
    }

    #[test]
    fn a_placed_task_lives_in_its_node_entry_and_moves_with_it() {
        let store = Fixture::new();
        store.start("r1");
        // No offers: the first task waits in the queue, its record under `task/`.
        assert!(store.has(keys::task("r1/a/-")));
        assert!(store.has(keys::task_queue(0, "r1/a/-")));

        let placed = store.apply(|tx| assign(tx, "r1/a/-", 1, 2, "w", 20));
        assert_eq!(placed, CommandResponse::RunUpdated);
        assert!(
            !store.has(keys::task("r1/a/-")),
            "a placed task has no separate record"
        );
        assert!(!store.has(keys::task_queue(0, "r1/a/-")));
        let entry = store.state.get(&keys::task_on_node(2, "r1/a/-")).unwrap();
        assert_eq!(placed_attempt(&entry), Some(1));
        let record = placed_record(|| "entry".into(), &entry).unwrap().unwrap();
        assert_eq!(
            record.assignment.as_ref().map(|assignment| assignment.node),
            Some(2)
        );
        assert_eq!(store.counts_on(2), (1, 1));

        // The node is lost: back to the queue, then placed on node 3.
        assert_eq!(
            store.apply(|tx| unassign(tx, "r1/a/-", 1, 25)),
            CommandResponse::RunUpdated
        );
        assert!(!store.has(keys::task_on_node(2, "r1/a/-")));
        assert!(store.has(keys::task("r1/a/-")) && store.has(keys::task_queue(25, "r1/a/-")));
        assert_eq!(store.counts_on(2), (0, 0));
        assert_eq!(
            store.apply(|tx| assign(tx, "r1/a/-", 1, 3, "w", 26)),
            CommandResponse::RunUpdated
        );
        assert!(!store.has(keys::task("r1/a/-")));
        assert!(store.has(keys::task_on_node(3, "r1/a/-")));

        // A stale attempt is refused by text, wherever the record lives.
        let stale = store.apply(|tx| assign(tx, "r1/a/-", 7, 2, "w", 27));
        assert!(
            matches!(stale, CommandResponse::Rejected(Rejection::Stale(ref reason)) if reason.contains("stale attempt 7")),
            "{stale:?}"
        );

        // Completing frees node 3 and queues step b.
        assert_eq!(store.complete("r1", "a"), CommandResponse::RunUpdated);
        assert!(!store.has(keys::task_on_node(3, "r1/a/-")));
        assert_eq!(store.counts_on(3), (0, 0));
        assert!(store.has(keys::task("r1/b/-")));
    }

    #[test]
    fn a_labelled_task_takes_a_slot_of_its_block_as_well() {
        let store = Fixture::new();
        // One worker on node 2 labelled gpu=yes with two slots: a node offers
        // them under the block and under each label subset.
        let offer = slots::NodeSlots {
            slots: [("noop".to_string(), 2), ("noop[gpu=yes]".to_string(), 2)]
                .into_iter()
                .collect(),
            load_milli: 0,
        };
        store.apply(|tx| slots::set_node_slots(tx, 2, &offer));
        let spec = |step: &str, labels: serde_json::Value| -> floe_engine::run::TaskSpec {
            serde_json::from_value(serde_json::json!({
                "key": {"run_id": "r", "step_id": step, "item": null},
                "attempt": 1, "block": "noop", "worker_labels": labels, "input": null,
                "not_before_ms": 0, "timeouts": {}
            }))
            .unwrap()
        };
        let (plain, gpu) = (
            spec("p", serde_json::json!({})),
            spec("g", serde_json::json!({"gpu": "yes"})),
        );
        let choose =
            |task: &floe_engine::run::TaskSpec| store.apply(|tx| slots::choose_node(tx, task));
        let place = |task: &floe_engine::run::TaskSpec, delta: i64| {
            store.apply(|tx| slots::move_placed(tx, 2, task, delta))
        };
        let placed = |pool: &str| store.apply(|tx| slots::placed(tx, 2, pool));

        place(&plain, 1);
        place(&plain, 1);
        assert_eq!(
            choose(&gpu),
            None,
            "both of the worker's slots hold unlabelled tasks"
        );
        assert_eq!(choose(&plain), None);
        place(&plain, -1);
        assert_eq!(choose(&gpu), Some(2));
        place(&gpu, 1);
        assert_eq!(
            (placed("noop"), placed("noop[gpu=yes]")),
            (2, 1),
            "a labelled task counts in both pools"
        );
        assert_eq!(
            choose(&plain),
            None,
            "its labelled sibling took the block's last slot"
        );
        assert_eq!(choose(&gpu), None);
        place(&gpu, -1);
        assert_eq!((placed("noop"), placed("noop[gpu=yes]")), (1, 0));
        assert!(
            !store.has(keys::placed_count(2, "noop[gpu=yes]")),
            "an empty pool leaves no counter"
        );
        // A node that offers the block without the labels never gets it.
        let plain_only = slots::NodeSlots {
            slots: [("noop".to_string(), 8)].into_iter().collect(),
            load_milli: 0,
        };
        store.apply(|tx| slots::set_node_slots(tx, 3, &plain_only));
        place(&plain, 1);
        assert_eq!(choose(&gpu), None);
        assert_eq!(choose(&plain), Some(3));
    }

    #[test]
    fn a_task_placed_by_an_earlier_release_still_completes() {
        let store = Fixture::new();
        store.start("r1");
        store.apply(|tx| assign(tx, "r1/a/-", 1, 2, "w", 20));
        // Rewrite the placement as earlier releases stored it: a JSON record
        // under `task/`, the attempt alone in the node entry.
        let entry = store.state.get(&keys::task_on_node(2, "r1/a/-")).unwrap();
        let record = placed_record(|| "entry".into(), &entry).unwrap().unwrap();
        let json =
            codec::encode_bytes(|| "task".into(), &serde_json::to_vec(&record).unwrap()).unwrap();
        store.state.insert(&keys::task("r1/a/-"), &json);
        store
            .state
            .insert(&keys::task_on_node(2, "r1/a/-"), &1u32.to_be_bytes());

        let on_node = store.apply(|tx| {
            Ok(find_task_by_text(tx, "r1/a/-")?.map(|found| (found.task, found.under_task_key)))
        });
        assert_eq!(on_node, Some((record, true)));
        assert_eq!(store.complete("r1", "a"), CommandResponse::RunUpdated);
        assert!(!store.has(keys::task("r1/a/-")), "the old record is gone");
        assert!(
            !store.has(keys::task_on_node(2, "r1/a/-")),
            "and its node entry"
        );
        assert_eq!(store.counts_on(2), (0, 0));
    }
}
