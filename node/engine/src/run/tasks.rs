//! Task slots: task steps and the items of map steps. Attempts, fencing,
//! retries with backoff, task timeouts, and the map step's item window.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::backoff::retry_delay_ms;
use super::machine::Machine;
use super::steps::{not_pending, step_path};
use super::{AttemptRecord, Effect, RunError, TaskKey, TaskSpec, TimerKey};
use crate::error::{excerpt, kind_of};
use crate::model::{InferenceStep, MapStep, RetryPolicy, Step, TaskStep, Timeouts};

pub(super) const SCHEDULE_TO_START_TIMER: &str = "schedule-to-start";
pub(super) const START_TO_CLOSE_TIMER: &str = "start-to-close";
pub(super) const HEARTBEAT_TIMER: &str = "heartbeat";

/// The current attempt of an open task slot.
#[derive(Clone, Debug)]
pub(super) struct Slot {
    pub key: TaskKey,
    pub attempt: u32,
}

/// A task step's `progress`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct TaskProgress {
    /// The first attempt number of the current round (1, or more after a
    /// run retry); `max_attempts` counts from here.
    first_attempt: u32,
}

/// A map step's `progress`: one entry per item, in index order.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct MapProgress {
    pub items: Vec<MapItem>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct MapItem {
    pub status: ItemStatus,
    /// First attempt number of this item's current round.
    #[serde(default)]
    pub first_attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum ItemStatus {
    Pending,
    Running,
    Completed,
    Failed,
}

impl MapItem {
    fn pending() -> Self {
        MapItem {
            status: ItemStatus::Pending,
            first_attempt: 0,
            output: None,
            error: None,
        }
    }
}

/// What a slot runs: block, retry policy and timeouts.
struct SlotSpec<'a> {
    block: Cow<'a, str>,
    worker_labels: Option<&'a BTreeMap<String, String>>,
    retry: Option<&'a RetryPolicy>,
    timeouts: Option<&'a Timeouts>,
}

fn item_label(item: Option<u32>) -> String {
    match item {
        Some(index) => format!(" item {index}"),
        None => String::new(),
    }
}

impl<'a> Machine<'a> {
    fn task_key(&self, step_id: &str, item: Option<u32>) -> TaskKey {
        TaskKey {
            run_id: self.run.run_id.clone(),
            step_id: step_id.to_string(),
            item,
        }
    }

    fn slot_spec(&self, step_id: &str) -> Option<SlotSpec<'a>> {
        match self.step_at(step_id)?.1 {
            Step::Task(task) => Some(SlotSpec {
                block: Cow::Borrowed(&task.block),
                worker_labels: Some(&task.worker_labels),
                retry: task.retry.as_ref(),
                timeouts: task.timeouts.as_ref(),
            }),
            Step::Inference(inference) => Some(SlotSpec {
                block: Cow::Owned(inference.block()),
                worker_labels: None,
                retry: inference.retry.as_ref(),
                timeouts: inference.timeouts.as_ref(),
            }),
            Step::Map(map) => Some(SlotSpec {
                block: Cow::Borrowed(&map.task.block),
                worker_labels: Some(&map.task.worker_labels),
                retry: map.task.retry.as_ref(),
                timeouts: map.task.timeouts.as_ref(),
            }),
            _ => None,
        }
    }

    fn current_attempt(&self, step_id: &str, item: Option<u32>) -> Option<&AttemptRecord> {
        self.run
            .steps
            .get(step_id)?
            .attempts
            .iter()
            .rev()
            .find(|attempt| attempt.item == item)
    }

    fn next_attempt_number(&self, step_id: &str, item: Option<u32>) -> u32 {
        self.current_attempt(step_id, item)
            .map_or(1, |attempt| attempt.attempt.saturating_add(1))
    }

    /// Records and schedules attempt `attempt` of a slot, with its timeout
    /// timers (measured from when the attempt may be delivered).
    fn schedule_attempt(&mut self, key: TaskKey, attempt: u32, input: Value, not_before_ms: u64) {
        let Some(spec) = self.slot_spec(&key.step_id) else {
            return;
        };
        let now = self.now;
        if let Some(record) = self.record_mut(&key.step_id) {
            record.attempts.push(AttemptRecord {
                attempt,
                item: key.item,
                scheduled_at_ms: now,
                node: None,
                worker: None,
                started_at_ms: None,
                finished_at_ms: None,
                error: None,
            });
        }
        self.run.outstanding.tasks.insert(key.clone());
        let timeouts = spec.timeouts.cloned().unwrap_or_default();
        self.emit(Effect::ScheduleTask(TaskSpec {
            key: key.clone(),
            attempt,
            block: spec.block.to_string(),
            worker_labels: spec.worker_labels.cloned().unwrap_or_default(),
            input,
            not_before_ms,
            timeouts: timeouts.clone(),
        }));
        let deliverable_at = now.max(not_before_ms);
        if let Some(limit) = timeouts.schedule_to_start_ms {
            let timer = self.timer_key(&key.step_id, key.item, SCHEDULE_TO_START_TIMER, attempt);
            self.start_timer(timer, deliverable_at.saturating_add(limit));
        }
        if let Some(limit) = timeouts.start_to_close_ms {
            let timer = self.timer_key(&key.step_id, key.item, START_TO_CLOSE_TIMER, attempt);
            self.start_timer(timer, deliverable_at.saturating_add(limit));
        }
    }

    fn cancel_attempt_timers(&mut self, key: &TaskKey, attempt: u32) {
        let timers: Vec<TimerKey> = self
            .run
            .outstanding
            .timers
            .iter()
            .filter(|timer| {
                timer.step_id == key.step_id
                    && timer.item == key.item
                    && timer.attempt == attempt
                    && matches!(
                        timer.purpose.as_str(),
                        SCHEDULE_TO_START_TIMER | START_TO_CLOSE_TIMER | HEARTBEAT_TIMER
                    )
            })
            .cloned()
            .collect();
        for timer in &timers {
            self.cancel_timer(timer);
        }
    }

    pub(super) fn enter_task(&mut self, index: usize, task: &TaskStep) {
        let path = format!("{}.input", step_path(index));
        let input = match self.evaluate_mapping(&task.id, &path, &task.input, self.variables()) {
            Ok(input) => input,
            Err(error) => return self.fail_step(&task.id, error, task.on_error.as_ref()),
        };
        self.schedule_first_attempt(&task.id, input);
    }

    /// An inference step is a task of its model's block; the task input
    /// carries the evaluated inputs and the output encoding.
    pub(super) fn enter_inference(&mut self, index: usize, step: &InferenceStep) {
        let path = format!("{}.input", step_path(index));
        let inputs = match self.evaluate_mapping(&step.id, &path, &step.input, self.variables()) {
            Ok(inputs) => inputs,
            Err(error) => return self.fail_step(&step.id, error, step.on_error.as_ref()),
        };
        let input = serde_json::json!({ "inputs": inputs, "outputs": step.outputs });
        self.schedule_first_attempt(&step.id, input);
    }

    fn schedule_first_attempt(&mut self, step_id: &str, input: Value) {
        let attempt = self.next_attempt_number(step_id, None);
        if let Some(record) = self.record_mut(step_id) {
            record.input = Some(input.clone());
            record.progress = serde_json::to_value(TaskProgress {
                first_attempt: attempt,
            })
            .unwrap_or(Value::Null);
        }
        let key = self.task_key(step_id, None);
        self.schedule_attempt(key, attempt, input, 0);
    }

    /// The open slot `key` if `attempt` is its current attempt.
    pub(super) fn current_slot(&self, key: &TaskKey, attempt: u32) -> Result<Slot, RunError> {
        let not_applicable = |why: &str| {
            RunError::NotApplicable(format!(
                "run {:?}: task {:?}{}: {why}",
                self.run.run_id,
                key.step_id,
                item_label(key.item)
            ))
        };
        if key.run_id != self.run.run_id {
            return Err(not_applicable("the task belongs to another run"));
        }
        let shape_matches = match self.def.step(&key.step_id) {
            Some(Step::Task(_) | Step::Inference(_)) => key.item.is_none(),
            Some(Step::Map(_)) => key.item.is_some(),
            _ => false,
        };
        if !shape_matches {
            return Err(not_applicable("no such task step or map item in the flow"));
        }
        let Some(current) = self.current_attempt(&key.step_id, key.item) else {
            return Err(not_applicable("no attempt was ever scheduled"));
        };
        // Test-only defect for the chaos suite: no fencing, so a stale
        // attempt's result is taken for the current attempt's.
        let fenced = !cfg!(feature = "defect-skip-fencing");
        if fenced && current.attempt != attempt {
            return Err(RunError::StaleAttempt {
                key: key.clone(),
                attempt,
                current: current.attempt,
            });
        }
        let open = current.finished_at_ms.is_none()
            && self.step_is_running(&key.step_id)
            && self.run.outstanding.tasks.contains(key);
        if !open {
            return Err(not_applicable(&format!(
                "attempt {attempt} has already finished"
            )));
        }
        // `current.attempt` equals `attempt` unless fencing is off (above).
        Ok(Slot {
            key: key.clone(),
            attempt: current.attempt,
        })
    }

    /// The attempt record of `attempt` of the task `key`, if it was opened.
    fn attempt_mut(&mut self, key: &TaskKey, attempt: u32) -> Option<&mut AttemptRecord> {
        self.record_mut(&key.step_id)?
            .attempts
            .iter_mut()
            .rev()
            .find(|entry| entry.item == key.item && entry.attempt == attempt)
    }

    /// Marks the slot's current attempt finished.
    fn close_attempt(&mut self, slot: &Slot, error: Option<String>) {
        let now = self.now;
        if let Some(entry) = self.attempt_mut(&slot.key, slot.attempt) {
            entry.finished_at_ms = Some(now);
            entry.error = error;
        }
    }

    /// Records the worker that answered `attempt` (results carry it; the
    /// placement inside apply knows only the node).
    pub(super) fn note_worker(&mut self, key: &TaskKey, attempt: u32, worker: Option<String>) {
        if let Some(worker) = worker.filter(|worker| !worker.is_empty()) {
            if let Some(entry) = self.attempt_mut(key, attempt) {
                entry.worker = Some(worker);
            }
        }
    }

    pub(super) fn on_task_started(
        &mut self,
        key: &TaskKey,
        attempt: u32,
        node: u64,
        worker: String,
    ) -> Result<(), RunError> {
        let slot = self.current_slot(key, attempt)?;
        let now = self.now;
        if let Some(entry) = self.attempt_mut(&slot.key, attempt) {
            entry.node = Some(node);
            entry.worker = Some(worker).filter(|worker| !worker.is_empty());
            entry.started_at_ms = Some(now);
        }
        let timer = self.timer_key(&key.step_id, key.item, SCHEDULE_TO_START_TIMER, attempt);
        self.cancel_timer(&timer);
        Ok(())
    }

    pub(super) fn on_task_completed(
        &mut self,
        key: &TaskKey,
        attempt: u32,
        output: Value,
    ) -> Result<(), RunError> {
        let slot = self.current_slot(key, attempt)?;
        self.close_attempt(&slot, None);
        self.cancel_attempt_timers(&slot.key, attempt);
        self.run.outstanding.tasks.remove(&slot.key);
        match (
            self.step_at(&slot.key.step_id).map(|(_, step)| step),
            slot.key.item,
        ) {
            (Some(Step::Task(task)), None) => {
                self.complete_step(&task.id, output, task.next.as_deref())
            }
            (Some(Step::Inference(step)), None) => {
                self.complete_step(&step.id, output, step.next.as_deref())
            }
            (Some(Step::Map(map)), Some(item)) => {
                self.update_item(&map.id, item, |entry| {
                    entry.status = ItemStatus::Completed;
                    entry.output = Some(output);
                    entry.error = None;
                });
                self.advance_map(map);
            }
            _ => {}
        }
        Ok(())
    }

    /// The current attempt failed (worker report or timeout): retry after
    /// backoff while the policy allows, else the slot fails for good.
    pub(super) fn on_attempt_failed(
        &mut self,
        slot: Slot,
        error: String,
        retryable: bool,
        timed_out: bool,
    ) {
        self.close_attempt(&slot, Some(error.clone()));
        self.cancel_attempt_timers(&slot.key, slot.attempt);
        if timed_out {
            // The worker may still be running the attempt; take it back.
            self.emit(Effect::CancelTask {
                key: slot.key.clone(),
            });
        }
        let step_id = slot.key.step_id.clone();
        let policy = self
            .slot_spec(&step_id)
            .and_then(|spec| spec.retry.cloned())
            .unwrap_or_default();
        let first_attempt = self.first_attempt_of_round(&slot.key);
        let attempts_this_round = slot.attempt.saturating_sub(first_attempt).saturating_add(1);
        if retryable && attempts_this_round < policy.max_attempts {
            match self.slot_input(&slot.key) {
                Ok(input) => {
                    let next_attempt = slot.attempt.saturating_add(1);
                    let delay = retry_delay_ms(
                        &policy,
                        &self.run.run_id,
                        &slot.key,
                        next_attempt,
                        attempts_this_round,
                    );
                    let not_before = self.now.saturating_add(delay);
                    self.schedule_attempt(slot.key, next_attempt, input, not_before);
                    return;
                }
                Err(input_error) => return self.slot_failed(&slot, input_error),
            }
        }
        let message = format!(
            "step {step_id:?}{}: attempt {} failed ({} of {} attempts{}): {error}",
            item_label(slot.key.item),
            slot.attempt,
            attempts_this_round,
            policy.max_attempts,
            if retryable { "" } else { ", not retryable" }
        );
        self.slot_failed(&slot, message);
    }

    /// Re-delivers a lost attempt as the next one at once; the round's first
    /// attempt moves with it, so the loss does not use up a retry.
    pub(super) fn on_attempt_lost(&mut self, slot: Slot, reason: String) {
        self.close_attempt(&slot, Some(reason));
        self.cancel_attempt_timers(&slot.key, slot.attempt);
        match slot.key.item {
            None => {
                if let Some(record) = self.record_mut(&slot.key.step_id) {
                    let mut progress =
                        serde_json::from_value::<TaskProgress>(record.progress.clone())
                            .unwrap_or_default();
                    progress.first_attempt = progress.first_attempt.max(1).saturating_add(1);
                    record.progress = serde_json::to_value(progress).unwrap_or(Value::Null);
                }
            }
            Some(item) => self.update_item(&slot.key.step_id, item, |entry| {
                entry.first_attempt = entry.first_attempt.max(1).saturating_add(1);
            }),
        }
        match self.slot_input(&slot.key) {
            Ok(input) => {
                let next_attempt = slot.attempt.saturating_add(1);
                let now = self.now;
                self.schedule_attempt(slot.key, next_attempt, input, now);
            }
            Err(input_error) => self.slot_failed(&slot, input_error),
        }
    }

    /// The slot failed for good.
    fn slot_failed(&mut self, slot: &Slot, message: String) {
        self.run.outstanding.tasks.remove(&slot.key);
        match (
            self.step_at(&slot.key.step_id).map(|(_, step)| step),
            slot.key.item,
        ) {
            (Some(Step::Task(task)), None) => {
                self.fail_step(&task.id, message, task.on_error.as_ref())
            }
            (Some(Step::Inference(step)), None) => {
                self.fail_step(&step.id, message, step.on_error.as_ref())
            }
            (Some(Step::Map(map)), Some(item)) => {
                self.update_item(&map.id, item, |entry| {
                    entry.status = ItemStatus::Failed;
                    entry.output = None;
                    entry.error = Some(message);
                });
                self.advance_map(map);
            }
            _ => {}
        }
    }

    fn first_attempt_of_round(&self, key: &TaskKey) -> u32 {
        let Some(record) = self.run.steps.get(&key.step_id) else {
            return 1;
        };
        let first = match key.item {
            None => serde_json::from_value::<TaskProgress>(record.progress.clone())
                .map(|progress| progress.first_attempt)
                .unwrap_or(1),
            Some(item) => load_map_progress(&record.progress)
                .items
                .get(item as usize)
                .map_or(1, |entry| entry.first_attempt),
        };
        first.max(1)
    }

    /// The input of a slot's next attempt: the task step's evaluated input,
    /// or the map item's input evaluated again (the same variables give the
    /// same value).
    fn slot_input(&self, key: &TaskKey) -> Result<Value, String> {
        let record = self.run.steps.get(&key.step_id);
        match (self.step_at(&key.step_id), key.item) {
            (Some((_, Step::Task(_) | Step::Inference(_))), None) => Ok(record
                .and_then(|record| record.input.clone())
                .unwrap_or(Value::Null)),
            (Some((index, Step::Map(map))), Some(item)) => {
                let items = record.and_then(|record| record.input.as_ref());
                let element = items
                    .and_then(|items| items.get(item as usize))
                    .cloned()
                    .unwrap_or(Value::Null);
                self.item_input(index, map, item, element)
            }
            _ => Err(format!("step {:?} is not a task slot", key.step_id)),
        }
    }

    pub(super) fn on_task_timer_fired(&mut self, timer: TimerKey) -> Result<(), RunError> {
        let purpose = timer.purpose.as_str();
        if !matches!(
            purpose,
            SCHEDULE_TO_START_TIMER | START_TO_CLOSE_TIMER | HEARTBEAT_TIMER
        ) {
            return Err(RunError::NotApplicable(format!(
                "timer {:?} of step {:?} has an unknown purpose",
                timer.purpose, timer.step_id
            )));
        }
        // Heartbeat timers are kept by the node, not here.
        if purpose != HEARTBEAT_TIMER && !self.run.outstanding.timers.contains(&timer) {
            return Err(not_pending(&timer));
        }
        let key = self.task_key(&timer.step_id, timer.item);
        let slot = match self.current_slot(&key, timer.attempt) {
            Ok(slot) => slot,
            Err(RunError::StaleAttempt { .. }) => return Err(not_pending(&timer)),
            Err(other) => return Err(other),
        };
        self.run.outstanding.timers.remove(&timer);
        let limit = self
            .slot_spec(&timer.step_id)
            .and_then(|spec| spec.timeouts)
            .and_then(|timeouts| match purpose {
                SCHEDULE_TO_START_TIMER => timeouts.schedule_to_start_ms,
                START_TO_CLOSE_TIMER => timeouts.start_to_close_ms,
                _ => timeouts.heartbeat_ms,
            });
        let error = match limit {
            Some(limit) => format!(
                "attempt {} timed out: {purpose} timeout of {limit} ms",
                timer.attempt
            ),
            None => format!("attempt {} timed out: {purpose} timeout", timer.attempt),
        };
        self.on_attempt_failed(slot, error, true, true);
        Ok(())
    }

    // ---- map steps ----

    fn item_input(
        &self,
        index: usize,
        map: &MapStep,
        item: u32,
        element: Value,
    ) -> Result<Value, String> {
        let mut variables = self.variables();
        variables.insert("item".to_string(), element);
        variables.insert("index".to_string(), Value::from(item));
        let path = format!("{}.task.input", step_path(index));
        self.evaluate_mapping(&map.id, &path, &map.task.input, variables)
            .map_err(|error| format!("item {item}: {error}"))
    }

    pub(super) fn enter_map(&mut self, index: usize, map: &MapStep) {
        let path = format!("{}.items", step_path(index));
        let value = match self.evaluate_expression(&map.id, &path, &map.items, self.variables()) {
            Ok(value) => value,
            Err(error) => return self.fail_step(&map.id, error, None),
        };
        let Value::Array(elements) = value else {
            let error = format!(
                "step {:?} at {path}: expression {:?} yielded {} {}, expected a list",
                map.id,
                map.items,
                kind_of(&value),
                excerpt(&value)
            );
            return self.fail_step(&map.id, error, None);
        };
        if u32::try_from(elements.len()).is_err() {
            let error = format!(
                "step {:?} at {path}: {} items is too many",
                map.id,
                elements.len()
            );
            return self.fail_step(&map.id, error, None);
        }
        // On re-entry (run retry) items that succeeded are kept.
        let previous = self
            .run
            .steps
            .get(&map.id)
            .map(|record| load_map_progress(&record.progress))
            .unwrap_or_default();
        let items: Vec<MapItem> = if previous.items.len() == elements.len() {
            previous
                .items
                .into_iter()
                .map(|entry| {
                    if entry.status == ItemStatus::Completed {
                        entry
                    } else {
                        MapItem::pending()
                    }
                })
                .collect()
        } else {
            vec![MapItem::pending(); elements.len()]
        };
        let is_empty = elements.is_empty();
        if let Some(record) = self.record_mut(&map.id) {
            record.input = Some(Value::Array(elements));
            record.progress = serde_json::to_value(MapProgress { items }).unwrap_or(Value::Null);
        }
        if is_empty {
            return self.complete_step(&map.id, Value::Array(Vec::new()), map.next.as_deref());
        }
        self.advance_map(map);
    }

    fn update_item(&mut self, step_id: &str, item: u32, change: impl FnOnce(&mut MapItem)) {
        if let Some(record) = self.record_mut(step_id) {
            let mut progress = load_map_progress(&record.progress);
            if let Some(entry) = progress.items.get_mut(item as usize) {
                change(entry);
            }
            record.progress = serde_json::to_value(progress).unwrap_or(Value::Null);
        }
    }

    /// Starts pending items while fewer than `max_parallelism` run; when
    /// every item has finished, completes or fails the step.
    fn advance_map(&mut self, map: &MapStep) {
        if !self.step_is_running(&map.id) {
            return;
        }
        let Some((index, _)) = self.step_at(&map.id) else {
            return;
        };
        let Some(record) = self.run.steps.get(&map.id) else {
            return;
        };
        let mut progress = load_map_progress(&record.progress);
        let elements = match &record.input {
            Some(Value::Array(elements)) => elements.clone(),
            _ => Vec::new(),
        };
        let limit = map.max_parallelism.max(1) as usize;
        let mut running = progress
            .items
            .iter()
            .filter(|entry| entry.status == ItemStatus::Running)
            .count();
        for position in 0..progress.items.len() {
            if running >= limit {
                break;
            }
            if progress.items[position].status != ItemStatus::Pending {
                continue;
            }
            // Item counts were checked to fit in u32 when the map was entered.
            let item = u32::try_from(position).unwrap_or(u32::MAX);
            let element = elements.get(position).cloned().unwrap_or(Value::Null);
            match self.item_input(index, map, item, element) {
                Ok(input) => {
                    let attempt = self.next_attempt_number(&map.id, Some(item));
                    progress.items[position].status = ItemStatus::Running;
                    progress.items[position].first_attempt = attempt;
                    let key = self.task_key(&map.id, Some(item));
                    self.schedule_attempt(key, attempt, input, 0);
                    running += 1;
                }
                Err(error) => {
                    progress.items[position].status = ItemStatus::Failed;
                    progress.items[position].error = Some(error);
                }
            }
        }
        let all_finished = progress
            .items
            .iter()
            .all(|entry| matches!(entry.status, ItemStatus::Completed | ItemStatus::Failed));
        let total = progress.items.len();
        let successes = progress
            .items
            .iter()
            .filter(|entry| entry.status == ItemStatus::Completed)
            .count();
        let outputs: Vec<Value> = progress
            .items
            .iter()
            .map(|entry| entry.output.clone().unwrap_or(Value::Null))
            .collect();
        if let Some(record) = self.record_mut(&map.id) {
            record.progress = serde_json::to_value(&progress).unwrap_or(Value::Null);
        }
        if !all_finished {
            return;
        }
        let ratio = if total == 0 {
            1.0
        } else {
            successes as f64 / total as f64
        };
        if ratio >= map.min_success_ratio {
            self.complete_step(&map.id, Value::Array(outputs), map.next.as_deref());
        } else {
            let error = format!(
                "step {:?}: {successes} of {total} items succeeded, below min_success_ratio {}",
                map.id, map.min_success_ratio
            );
            self.fail_step(&map.id, error, None);
        }
    }
}

pub(super) fn load_map_progress(progress: &Value) -> MapProgress {
    serde_json::from_value(progress.clone()).unwrap_or_default()
}
