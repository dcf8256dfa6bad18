//! What happened to a run between two of its records, as events in time
//! order: what `run watch` streams. The run record is the source of truth;
//! events are derived from it, so a watcher that joins late (or misses an
//! update) replays the history from an earlier record, or from none.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{AttemptRecord, RunRecord, RunStatus, StepRecord, StepStatus};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryKind {
    RunStarted,
    StepStarted,
    AttemptScheduled,
    AttemptStarted,
    AttemptFinished,
    StepCompleted,
    StepFailed,
    StepCancelled,
    RunCompleted,
    RunFailed,
    RunCancelled,
}

impl HistoryKind {
    pub fn name(self) -> &'static str {
        match self {
            HistoryKind::RunStarted => "run_started",
            HistoryKind::StepStarted => "step_started",
            HistoryKind::AttemptScheduled => "attempt_scheduled",
            HistoryKind::AttemptStarted => "attempt_started",
            HistoryKind::AttemptFinished => "attempt_finished",
            HistoryKind::StepCompleted => "step_completed",
            HistoryKind::StepFailed => "step_failed",
            HistoryKind::StepCancelled => "step_cancelled",
            HistoryKind::RunCompleted => "run_completed",
            HistoryKind::RunFailed => "run_failed",
            HistoryKind::RunCancelled => "run_cancelled",
        }
    }
}

/// One thing that happened to a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEvent {
    pub at_ms: u64,
    pub kind: HistoryKind,
    /// Empty for run events.
    pub step: String,
    /// Map item.
    pub item: Option<u32>,
    /// 0 for step and run events.
    pub attempt: u32,
    pub node: Option<u64>,
    pub worker: Option<String>,
    /// The error of a failed attempt, step or run.
    pub error: Option<String>,
}

impl HistoryEvent {
    fn new(at_ms: u64, kind: HistoryKind) -> HistoryEvent {
        HistoryEvent {
            at_ms,
            kind,
            step: String::new(),
            item: None,
            attempt: 0,
            node: None,
            worker: None,
            error: None,
        }
    }

    fn of_step(at_ms: u64, kind: HistoryKind, step: &str) -> HistoryEvent {
        HistoryEvent {
            step: step.to_string(),
            ..HistoryEvent::new(at_ms, kind)
        }
    }

    /// Node and worker are left to the events that learn them, so a replay
    /// from an old record reads the same as the updates did.
    fn of_attempt(
        at_ms: u64,
        kind: HistoryKind,
        step: &str,
        attempt: &AttemptRecord,
    ) -> HistoryEvent {
        HistoryEvent {
            item: attempt.item,
            attempt: attempt.attempt,
            ..HistoryEvent::of_step(at_ms, kind, step)
        }
    }
}

/// The events that lead from `before` (none: the run's beginning) to
/// `after`, ordered by time; at equal times, the run's start first, its end
/// last, and between them the events of the step that started first.
pub fn history_between(before: Option<&RunRecord>, after: &RunRecord) -> Vec<HistoryEvent> {
    // (step start, event): the tie-breaker at equal times; the sort is
    // stable, so a step's own events keep the order they were found in.
    let mut events: Vec<(u64, HistoryEvent)> = Vec::new();
    if before.is_none() {
        events.push((
            0,
            HistoryEvent::new(after.created_at_ms, HistoryKind::RunStarted),
        ));
    }
    for (id, step) in &after.steps {
        let mut found = Vec::new();
        step_history(
            id,
            before.and_then(|run| run.steps.get(id)),
            step,
            &mut found,
        );
        events.extend(found.into_iter().map(|event| (step.started_at_ms, event)));
    }
    let ended_before = before.is_some_and(|run| {
        run.status != RunStatus::Running && run.finished_at_ms == after.finished_at_ms
    });
    if let (Some(kind), Some(at_ms), false) =
        (run_end(after.status), after.finished_at_ms, ended_before)
    {
        events.push((
            u64::MAX,
            HistoryEvent {
                error: after.error.clone(),
                ..HistoryEvent::new(at_ms, kind)
            },
        ));
    }
    events.sort_by_key(|(group, event)| (event.at_ms, *group));
    events.into_iter().map(|(_, event)| event).collect()
}

fn step_history(
    id: &str,
    before: Option<&StepRecord>,
    after: &StepRecord,
    events: &mut Vec<HistoryEvent>,
) {
    // A retried step is entered again: a new start time, its history anew.
    let before = before.filter(|step| step.started_at_ms == after.started_at_ms);
    if before.is_none() {
        events.push(HistoryEvent::of_step(
            after.started_at_ms,
            HistoryKind::StepStarted,
            id,
        ));
    }
    // Indexed: a map step can hold many thousands of attempts.
    let known: BTreeMap<(Option<u32>, u32), &AttemptRecord> = before
        .map(|step| {
            step.attempts
                .iter()
                .map(|old| ((old.item, old.attempt), old))
                .collect()
        })
        .unwrap_or_default();
    for attempt in &after.attempts {
        let earlier = known.get(&(attempt.item, attempt.attempt)).copied();
        if earlier.is_none() {
            events.push(HistoryEvent::of_attempt(
                attempt.scheduled_at_ms,
                HistoryKind::AttemptScheduled,
                id,
                attempt,
            ));
        }
        if let (Some(at_ms), None) = (
            attempt.started_at_ms,
            earlier.and_then(|old| old.started_at_ms),
        ) {
            events.push(HistoryEvent {
                node: attempt.node,
                ..HistoryEvent::of_attempt(at_ms, HistoryKind::AttemptStarted, id, attempt)
            });
        }
        if let (Some(at_ms), None) = (
            attempt.finished_at_ms,
            earlier.and_then(|old| old.finished_at_ms),
        ) {
            let finished =
                HistoryEvent::of_attempt(at_ms, HistoryKind::AttemptFinished, id, attempt);
            events.push(HistoryEvent {
                node: attempt.node,
                worker: attempt.worker.clone(),
                error: attempt.error.clone(),
                ..finished
            });
        }
    }
    let ended_before = before.is_some_and(|step| step.status != StepStatus::Running);
    if let (Some(kind), false) = (step_end(after.status), ended_before) {
        let at_ms = after.finished_at_ms.unwrap_or(after.started_at_ms);
        events.push(HistoryEvent {
            error: after.error.clone(),
            ..HistoryEvent::of_step(at_ms, kind, id)
        });
    }
}

fn step_end(status: StepStatus) -> Option<HistoryKind> {
    match status {
        StepStatus::Running => None,
        StepStatus::Completed => Some(HistoryKind::StepCompleted),
        StepStatus::Failed => Some(HistoryKind::StepFailed),
        StepStatus::Cancelled => Some(HistoryKind::StepCancelled),
    }
}

fn run_end(status: RunStatus) -> Option<HistoryKind> {
    match status {
        RunStatus::Running => None,
        RunStatus::Completed => Some(HistoryKind::RunCompleted),
        RunStatus::Failed => Some(HistoryKind::RunFailed),
        RunStatus::Cancelled => Some(HistoryKind::RunCancelled),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::run::{handle, start, RunEvent, TaskFailure, TaskKey};

    fn definition() -> crate::model::FlowDefinition {
        crate::run::tests::definition(json!({
            "name": "chain",
            "steps": [
                {"id": "a", "type": "task", "block": "noop", "input": "input", "next": "b",
                 "retry": {"max_attempts": 2, "initial_backoff_ms": 10, "jitter": false}},
                {"id": "b", "type": "task", "block": "noop", "input": "steps.a.output"}
            ]
        }))
    }

    fn key(step: &str) -> TaskKey {
        TaskKey {
            run_id: "r1".to_string(),
            step_id: step.to_string(),
            item: None,
        }
    }

    fn summary(events: &[HistoryEvent]) -> Vec<String> {
        events
            .iter()
            .map(|event| {
                let mut line = format!("{} {}", event.at_ms, event.kind.name());
                if !event.step.is_empty() {
                    line += &format!(" {}#{}", event.step, event.attempt);
                }
                if let Some(worker) = &event.worker {
                    line += &format!(" by {worker}");
                }
                if let Some(error) = &event.error {
                    line += &format!(" error {error}");
                }
                line
            })
            .collect()
    }

    #[test]
    fn updates_add_only_what_changed_and_a_late_watcher_replays_everything() {
        let def = definition();
        let (mut run, _) =
            start(&def, crate::run::tests::new_run(json!(1)), 100).expect("run starts");
        let mut seen = Vec::new();
        let mut last: Option<RunRecord> = None;
        let mut step = |run: &RunRecord, seen: &mut Vec<HistoryEvent>| {
            seen.extend(history_between(last.as_ref(), run));
            last = Some(run.clone());
        };
        step(&run, &mut seen);
        let placed = |attempt, step: &str| RunEvent::TaskStarted {
            key: key(step),
            attempt,
            node: 3,
            worker: String::new(),
        };
        handle(&def, &mut run, placed(1, "a"), 110).unwrap();
        step(&run, &mut seen);
        let failure = TaskFailure {
            error: "boom".to_string(),
            retryable: true,
        };
        let failed = RunEvent::TaskFailed {
            key: key("a"),
            attempt: 1,
            failure,
            worker: Some("w1".to_string()),
        };
        handle(&def, &mut run, failed, 120).unwrap();
        handle(&def, &mut run, placed(2, "a"), 130).unwrap();
        step(&run, &mut seen);
        let done = |step: &str, attempt| RunEvent::TaskCompleted {
            key: key(step),
            attempt,
            output: json!(2),
            worker: Some("w2".to_string()),
        };
        handle(&def, &mut run, done("a", 2), 140).unwrap();
        step(&run, &mut seen);
        step(&run, &mut seen);
        handle(&def, &mut run, placed(1, "b"), 150).unwrap();
        handle(&def, &mut run, done("b", 1), 160).unwrap();
        step(&run, &mut seen);

        let expected = vec![
            "100 run_started",
            "100 step_started a#0",
            "100 attempt_scheduled a#1",
            "110 attempt_started a#1",
            "120 attempt_finished a#1 by w1 error boom",
            "120 attempt_scheduled a#2",
            "130 attempt_started a#2",
            "140 attempt_finished a#2 by w2",
            "140 step_completed a#0",
            "140 step_started b#0",
            "140 attempt_scheduled b#1",
            "150 attempt_started b#1",
            "160 attempt_finished b#1 by w2",
            "160 step_completed b#0",
            "160 run_completed",
        ];
        assert_eq!(summary(&seen), expected, "incremental updates");
        // Nothing new between two equal records.
        assert!(history_between(Some(&run), &run).is_empty());
        // A watcher that joins at the end is told the same story.
        assert_eq!(history_between(None, &run), seen);
    }
}
