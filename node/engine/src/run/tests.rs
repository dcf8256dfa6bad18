//! Tests of the run engine through `start` and `handle`.

use serde_json::{json, Value};

use super::*;
use crate::model::{Backoff, RetryPolicy};

const RUN: &str = "r1";

pub(super) fn definition(document: Value) -> FlowDefinition {
    match crate::parse_document(&document) {
        Ok(def) => def,
        Err(errors) => panic!("test flow is invalid: {errors:#?}"),
    }
}

pub(super) fn example(name: &str) -> FlowDefinition {
    let path = format!(
        "{}/../../docs/examples/flows/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let bytes = std::fs::read(&path).expect("example flow readable");
    crate::parse_flow(&bytes).expect("example flow valid")
}

pub(super) fn new_run(input: Value) -> NewRun {
    NewRun {
        run_id: RUN.to_string(),
        version: 1,
        input,
        correlation_id: "c1".to_string(),
        idempotency_key: "k1".to_string(),
        parent: None,
    }
}

fn start_ok(def: &FlowDefinition, input: Value) -> (RunRecord, Vec<Effect>) {
    start(def, new_run(input), 1_000).expect("run starts")
}

fn key(step: &str, item: Option<u32>) -> TaskKey {
    TaskKey {
        run_id: RUN.to_string(),
        step_id: step.to_string(),
        item,
    }
}

fn timer(step: &str, item: Option<u32>, purpose: &str, attempt: u32) -> TimerKey {
    TimerKey {
        run_id: RUN.to_string(),
        step_id: step.to_string(),
        item,
        purpose: purpose.to_string(),
        attempt,
    }
}

fn scheduled(effects: &[Effect]) -> Vec<TaskSpec> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::ScheduleTask(spec) => Some(spec.clone()),
            _ => None,
        })
        .collect()
}

fn scheduled_steps(effects: &[Effect]) -> Vec<(String, Option<u32>, u32)> {
    scheduled(effects)
        .into_iter()
        .map(|spec| (spec.key.step_id, spec.key.item, spec.attempt))
        .collect()
}

fn complete(
    def: &FlowDefinition,
    run: &mut RunRecord,
    step: &str,
    item: Option<u32>,
    attempt: u32,
    output: Value,
) -> Vec<Effect> {
    let event = RunEvent::TaskCompleted {
        key: key(step, item),
        attempt,
        output,
        worker: None,
    };
    handle(def, run, event, 2_000).expect("completion accepted")
}

fn fail(
    def: &FlowDefinition,
    run: &mut RunRecord,
    step: &str,
    item: Option<u32>,
    attempt: u32,
    retryable: bool,
) -> Vec<Effect> {
    let failure = TaskFailure {
        error: "boom".to_string(),
        retryable,
    };
    let event = RunEvent::TaskFailed {
        key: key(step, item),
        attempt,
        failure,
        worker: None,
    };
    handle(def, run, event, 2_000).expect("failure accepted")
}

fn finished(effects: &[Effect]) -> Option<RunStatus> {
    effects.iter().find_map(|effect| match effect {
        Effect::RunFinished { status } => Some(*status),
        _ => None,
    })
}

fn flow(steps: Vec<Value>) -> FlowDefinition {
    definition(json!({"name": "test-flow", "steps": steps}))
}

// ---- task ----

#[test]
fn three_tasks_pass_outputs_along_and_complete_the_run() {
    let def = example("three-step");
    let (mut run, effects) = start_ok(&def, json!({"x": 1}));
    assert_eq!(run.status, RunStatus::Running);
    let specs = scheduled(&effects);
    assert_eq!(specs.len(), 1);
    assert_eq!(specs[0].key, key("first", None));
    assert_eq!(specs[0].attempt, 1);
    assert_eq!(specs[0].not_before_ms, 0);
    assert_eq!(specs[0].input, json!({"x": 1}));
    assert_eq!(specs[0].block, "noop");

    let effects = complete(&def, &mut run, "first", None, 1, json!({"y": 2}));
    assert_eq!(scheduled(&effects)[0].input, json!({"y": 2}));
    let effects = complete(&def, &mut run, "second", None, 1, json!({"z": 3}));
    assert_eq!(scheduled(&effects)[0].key.step_id, "third");
    let effects = complete(&def, &mut run, "third", None, 1, json!("done"));
    assert_eq!(finished(&effects), Some(RunStatus::Completed));
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.output, Some(json!("done")));
    assert_eq!(run.finished_at_ms, Some(2_000));
    let first = &run.steps["first"];
    assert_eq!(first.status, StepStatus::Completed);
    assert_eq!(first.input, Some(json!({"x": 1})));
    assert_eq!(first.output, Some(json!({"y": 2})));
    assert_eq!(first.attempts.len(), 1);
    assert_eq!(first.attempts[0].finished_at_ms, Some(2_000));
    assert!(run.outstanding.is_empty());
}

#[test]
fn task_timeouts_start_timers_that_start_and_completion_cancel() {
    let def = flow(vec![
        json!({"id": "a", "type": "task", "block": "noop", "input": "input",
        "timeouts": {"schedule_to_start_ms": 100, "start_to_close_ms": 500, "heartbeat_ms": 50}}),
    ]);
    let (mut run, effects) = start_ok(&def, json!(null));
    assert!(effects.contains(&Effect::StartTimer {
        timer: timer("a", None, "schedule-to-start", 1),
        due_ms: 1_100
    }));
    assert!(effects.contains(&Effect::StartTimer {
        timer: timer("a", None, "start-to-close", 1),
        due_ms: 1_500
    }));
    assert!(!effects.iter().any(
        |effect| matches!(effect, Effect::StartTimer { timer, .. } if timer.purpose == "heartbeat")
    ));
    let started = RunEvent::TaskStarted {
        key: key("a", None),
        attempt: 1,
        node: 7,
        worker: "w1".to_string(),
    };
    let effects = handle(&def, &mut run, started, 1_050).expect("start accepted");
    assert_eq!(
        effects,
        vec![Effect::CancelTimer {
            timer: timer("a", None, "schedule-to-start", 1)
        }]
    );
    let attempt = &run.steps["a"].attempts[0];
    assert_eq!(
        (
            attempt.node,
            attempt.worker.as_deref(),
            attempt.started_at_ms
        ),
        (Some(7), Some("w1"), Some(1_050))
    );
    let effects = complete(&def, &mut run, "a", None, 1, json!(1));
    assert_eq!(
        effects[0],
        Effect::CancelTimer {
            timer: timer("a", None, "start-to-close", 1)
        }
    );
    assert_eq!(finished(&effects), Some(RunStatus::Completed));
}

#[test]
fn runtime_expression_error_fails_the_run_naming_step_and_path() {
    let def = flow(vec![
        json!({"id": "a", "type": "task", "block": "noop", "input": {"doc": "input.document.name"}}),
    ]);
    let (run, effects) = start_ok(&def, json!({"document": 3}));
    assert_eq!(finished(&effects), Some(RunStatus::Failed));
    let error = run.error.clone().unwrap_or_default();
    assert!(error.contains("step \"a\""), "{error}");
    assert!(error.contains("$.steps[0].input.doc"), "{error}");
    assert_eq!(run.steps["a"].status, StepStatus::Failed);
    assert_eq!(run.retry_points, vec!["a".to_string()]);
}

#[test]
fn input_expression_error_follows_the_error_route() {
    let def = flow(vec![
        json!({"id": "a", "type": "task", "block": "noop", "input": "input.missing.deeper",
               "on_error": {"goto": "b"}, "next": "b"}),
        json!({"id": "b", "type": "transform", "output": {"status": "steps.a.status", "out": "steps.a.output"}}),
    ]);
    let (run, effects) = start_ok(&def, json!({}));
    assert_eq!(finished(&effects), Some(RunStatus::Completed));
    assert_eq!(run.output, Some(json!({"status": "failed", "out": null})));
}

#[test]
fn bad_input_is_refused_with_paths() {
    let def = example("document-intake");
    let error = start(&def, new_run(json!({"document": 3})), 1).expect_err("bad input");
    match error {
        RunError::BadInput { flow, problems, .. } => {
            assert_eq!(flow, "document-intake");
            assert!(
                problems
                    .iter()
                    .any(|problem| problem.starts_with("$.input.document")),
                "{problems:?}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
}

// ---- retries, backoff, fencing ----

fn retrying_flow(retry: Value, on_error: Option<Value>) -> FlowDefinition {
    let mut step = json!({"id": "a", "type": "task", "block": "noop", "input": "input", "retry": retry,
                          "timeouts": {"start_to_close_ms": 1000}, "next": "b"});
    if let Some(on_error) = on_error {
        step["on_error"] = on_error;
    }
    flow(vec![
        step,
        json!({"id": "b", "type": "transform", "output": "steps.a.status"}),
    ])
}

#[test]
fn failed_attempt_is_retried_after_backoff_and_old_timers_cancelled() {
    let def = retrying_flow(
        json!({"max_attempts": 3, "initial_backoff_ms": 100, "jitter": false}),
        None,
    );
    let (mut run, _) = start_ok(&def, json!(null));
    let effects = fail(&def, &mut run, "a", None, 1, true);
    assert!(effects.contains(&Effect::CancelTimer {
        timer: timer("a", None, "start-to-close", 1)
    }));
    let specs = scheduled(&effects);
    assert_eq!(specs.len(), 1);
    assert_eq!(specs[0].attempt, 2);
    assert_eq!(specs[0].not_before_ms, 2_100);
    // The new attempt's timeout counts from when it may be delivered.
    assert!(effects.contains(&Effect::StartTimer {
        timer: timer("a", None, "start-to-close", 2),
        due_ms: 3_100
    }));
    assert_eq!(run.steps["a"].attempts.len(), 2);
    assert_eq!(run.steps["a"].attempts[0].error.as_deref(), Some("boom"));
}

#[test]
fn attempts_record_the_node_they_were_placed_on_and_the_worker_that_answered() {
    let def = retrying_flow(json!({"max_attempts": 3, "jitter": false}), None);
    let (mut run, _) = start_ok(&def, json!(null));
    // Placement inside apply knows the node, not the worker.
    let placed = |attempt| RunEvent::TaskStarted {
        key: key("a", None),
        attempt,
        node: 2,
        worker: String::new(),
    };
    handle(&def, &mut run, placed(1), 1_010).expect("start accepted");
    assert_eq!(run.steps["a"].attempts[0].worker, None);
    let failed = RunEvent::TaskFailed {
        key: key("a", None),
        attempt: 1,
        failure: TaskFailure {
            error: "boom".to_string(),
            retryable: true,
        },
        worker: Some("ocr-1".to_string()),
    };
    handle(&def, &mut run, failed, 1_020).expect("failure accepted");
    handle(&def, &mut run, placed(2), 1_500).expect("start accepted");
    let completed = RunEvent::TaskCompleted {
        key: key("a", None),
        attempt: 2,
        output: json!(1),
        worker: Some("ocr-2".to_string()),
    };
    handle(&def, &mut run, completed, 1_600).expect("completion accepted");
    let attempts: Vec<_> = run.steps["a"]
        .attempts
        .iter()
        .map(|a| (a.attempt, a.node, a.worker.as_deref(), a.error.as_deref()))
        .collect();
    assert_eq!(
        attempts,
        vec![
            (1, Some(2), Some("ocr-1"), Some("boom")),
            (2, Some(2), Some("ocr-2"), None),
        ]
    );
    // A stale answer names no worker on the attempt it does not own.
    let stale = RunEvent::TaskCompleted {
        key: key("a", None),
        attempt: 1,
        output: json!(1),
        worker: Some("late".to_string()),
    };
    assert!(handle(&def, &mut run, stale, 1_700).is_err());
    assert_eq!(run.steps["a"].attempts[0].worker.as_deref(), Some("ocr-1"));
}

#[test]
fn retries_exhausted_fail_the_run() {
    let def = retrying_flow(json!({"max_attempts": 2, "jitter": false}), None);
    let (mut run, _) = start_ok(&def, json!(null));
    fail(&def, &mut run, "a", None, 1, true);
    let effects = fail(&def, &mut run, "a", None, 2, true);
    assert_eq!(finished(&effects), Some(RunStatus::Failed));
    let error = run.error.clone().unwrap_or_default();
    assert!(
        error.contains("step \"a\"") && error.contains("2 of 2") && error.contains("boom"),
        "{error}"
    );
}

#[test]
fn non_retryable_failure_is_not_retried() {
    let def = retrying_flow(json!({"max_attempts": 5}), None);
    let (mut run, _) = start_ok(&def, json!(null));
    let effects = fail(&def, &mut run, "a", None, 1, false);
    assert!(scheduled(&effects).is_empty());
    assert_eq!(run.status, RunStatus::Failed);
    assert!(run
        .error
        .clone()
        .unwrap_or_default()
        .contains("not retryable"));
}

#[test]
fn error_route_goto_continues_with_a_failed_step() {
    let def = retrying_flow(json!({"max_attempts": 1}), Some(json!({"goto": "b"})));
    let (mut run, _) = start_ok(&def, json!(null));
    let effects = fail(&def, &mut run, "a", None, 1, true);
    assert_eq!(finished(&effects), Some(RunStatus::Completed));
    assert_eq!(run.output, Some(json!("failed")));
    assert_eq!(run.steps["a"].status, StepStatus::Failed);
    assert_eq!(run.steps["a"].output, None);
}

#[test]
fn error_route_fail_fails_the_run_with_the_reason() {
    let def = retrying_flow(
        json!({"max_attempts": 1}),
        Some(json!({"fail": "could not classify"})),
    );
    let (mut run, _) = start_ok(&def, json!(null));
    let effects = fail(&def, &mut run, "a", None, 1, true);
    assert_eq!(finished(&effects), Some(RunStatus::Failed));
    assert_eq!(run.error.as_deref(), Some("could not classify"));
}

#[test]
fn start_to_close_timeout_cancels_the_attempt_and_retries() {
    let def = retrying_flow(
        json!({"max_attempts": 2, "jitter": false, "initial_backoff_ms": 10}),
        None,
    );
    let (mut run, _) = start_ok(&def, json!(null));
    let fired = RunEvent::TimerFired {
        timer: timer("a", None, "start-to-close", 1),
    };
    let effects = handle(&def, &mut run, fired.clone(), 2_000).expect("timeout applies");
    assert!(effects.contains(&Effect::CancelTask {
        key: key("a", None)
    }));
    assert_eq!(scheduled_steps(&effects), vec![("a".to_string(), None, 2)]);
    assert!(run.steps["a"].attempts[0]
        .error
        .clone()
        .unwrap_or_default()
        .contains("start-to-close timeout of 1000 ms"));
    // The same timer again is no longer pending.
    let before = run.clone();
    assert!(matches!(
        handle(&def, &mut run, fired, 2_001),
        Err(RunError::NotApplicable(_))
    ));
    assert_eq!(run, before);
    // The second attempt times out too: the run fails.
    let fired = RunEvent::TimerFired {
        timer: timer("a", None, "start-to-close", 2),
    };
    let effects = handle(&def, &mut run, fired, 4_000).expect("timeout applies");
    assert_eq!(finished(&effects), Some(RunStatus::Failed));
    assert!(effects.contains(&Effect::CancelTask {
        key: key("a", None)
    }));
}

#[test]
fn heartbeat_timer_for_current_attempt_is_a_timeout_and_stale_one_is_ignored() {
    let def = retrying_flow(json!({"max_attempts": 3, "jitter": false}), None);
    let (mut run, _) = start_ok(&def, json!(null));
    let effects = handle(
        &def,
        &mut run,
        RunEvent::TimerFired {
            timer: timer("a", None, "heartbeat", 1),
        },
        1_500,
    )
    .expect("heartbeat timeout applies");
    assert_eq!(scheduled_steps(&effects), vec![("a".to_string(), None, 2)]);
    let before = run.clone();
    let stale = handle(
        &def,
        &mut run,
        RunEvent::TimerFired {
            timer: timer("a", None, "heartbeat", 1),
        },
        1_600,
    );
    assert!(
        matches!(stale, Err(RunError::NotApplicable(_))),
        "{stale:?}"
    );
    assert_eq!(run, before);
}

#[test]
fn completion_for_a_stale_attempt_is_refused_and_changes_nothing() {
    let def = retrying_flow(json!({"max_attempts": 3}), None);
    let (mut run, _) = start_ok(&def, json!(null));
    fail(&def, &mut run, "a", None, 1, true);
    let before = run.clone();
    let stale = RunEvent::TaskCompleted {
        key: key("a", None),
        attempt: 1,
        output: json!(1),
        worker: None,
    };
    let error = handle(&def, &mut run, stale, 3_000).expect_err("stale");
    assert_eq!(
        error,
        RunError::StaleAttempt {
            key: key("a", None),
            attempt: 1,
            current: 2
        }
    );
    assert_eq!(run, before);
    // A duplicate completion of the current attempt is not applied twice.
    complete(&def, &mut run, "a", None, 2, json!(1));
    let duplicate = RunEvent::TaskCompleted {
        key: key("a", None),
        attempt: 2,
        output: json!(2),
        worker: None,
    };
    assert!(handle(&def, &mut run, duplicate, 3_000).is_err());
}

#[test]
fn backoff_sequences() {
    let fixed = RetryPolicy {
        initial_backoff_ms: 300,
        jitter: false,
        ..RetryPolicy::default()
    };
    let fixed_delays: Vec<u64> = (1..=4)
        .map(|retry| backoff_delay_ms(&fixed, retry))
        .collect();
    assert_eq!(fixed_delays, vec![300, 300, 300, 300]);

    let exponential = RetryPolicy {
        backoff: Backoff::Exponential,
        initial_backoff_ms: 100,
        max_backoff_ms: 1_000,
        multiplier: 2.0,
        jitter: false,
        ..RetryPolicy::default()
    };
    let delays: Vec<u64> = (1..=6)
        .map(|retry| backoff_delay_ms(&exponential, retry))
        .collect();
    assert_eq!(delays, vec![100, 200, 400, 800, 1_000, 1_000]);
    let huge = RetryPolicy {
        multiplier: 1e300,
        ..exponential.clone()
    };
    assert_eq!(backoff_delay_ms(&huge, 100), 1_000);

    let jittered = RetryPolicy {
        jitter: true,
        ..exponential
    };
    let slot = TaskKey {
        run_id: "r".to_string(),
        step_id: "s".to_string(),
        item: None,
    };
    let mut seen = std::collections::BTreeSet::new();
    for attempt in 2..=20 {
        let delay = retry_delay_ms(&jittered, "r", &slot, attempt, 4);
        assert!((400..=800).contains(&delay), "{delay}");
        assert_eq!(
            delay,
            retry_delay_ms(&jittered, "r", &slot, attempt, 4),
            "deterministic"
        );
        seen.insert(delay);
    }
    assert!(seen.len() > 5, "jitter varies with the attempt: {seen:?}");
    let other_item = TaskKey {
        item: Some(0),
        ..slot.clone()
    };
    let differs = (2..=10).any(|attempt| {
        jittered_delay_ms(1_000_000, "r", &slot, attempt)
            != jittered_delay_ms(1_000_000, "r", &other_item, attempt)
    });
    assert!(differs);
}

#[test]
fn retry_uses_exponential_jittered_backoff_from_the_policy() {
    let def = example("document-intake");
    let (mut run, _) = start_ok(&def, json!({"document": "d"}));
    let policy = RetryPolicy {
        max_attempts: 3,
        backoff: Backoff::Exponential,
        initial_backoff_ms: 500,
        ..RetryPolicy::default()
    };
    let effects = fail(&def, &mut run, "classify", None, 1, true);
    let expected = 2_000 + retry_delay_ms(&policy, RUN, &key("classify", None), 2, 1);
    assert_eq!(scheduled(&effects)[0].not_before_ms, expected);
    let effects = fail(&def, &mut run, "classify", None, 2, true);
    let expected = 2_000 + retry_delay_ms(&policy, RUN, &key("classify", None), 3, 2);
    assert_eq!(scheduled(&effects)[0].not_before_ms, expected);
    assert!(expected >= 2_000 + 500);
    let effects = fail(&def, &mut run, "classify", None, 3, true);
    assert_eq!(finished(&effects), Some(RunStatus::Failed));
}

// ---- decision ----

fn decision_flow(when: &str) -> FlowDefinition {
    flow(vec![
        json!({"id": "route", "type": "decision", "cases": [{"when": when, "next": "yes"}], "default": "no"}),
        json!({"id": "yes", "type": "terminate", "output": "'yes'"}),
        json!({"id": "no", "type": "terminate", "output": "'no'"}),
    ])
}

#[test]
fn decision_takes_the_first_true_case_else_the_default() {
    let def = decision_flow("input.n > 2");
    let (run, effects) = start_ok(&def, json!({"n": 3}));
    assert_eq!(finished(&effects), Some(RunStatus::Completed));
    assert_eq!(run.output, Some(json!("yes")));
    assert_eq!(
        run.steps["route"].progress,
        json!({"case": 0, "next": "yes"})
    );
    let (run, _) = start_ok(&def, json!({"n": 1}));
    assert_eq!(run.output, Some(json!("no")));
}

#[test]
fn decision_on_a_non_boolean_fails_the_run() {
    let def = decision_flow("input.n");
    let (run, effects) = start_ok(&def, json!({"n": 3}));
    assert_eq!(finished(&effects), Some(RunStatus::Failed));
    let error = run.error.clone().unwrap_or_default();
    assert!(
        error.contains("$.steps[0].cases[0].when") && error.contains("expected a boolean"),
        "{error}"
    );
}

// ---- fork / join / transform ----

fn to_fork(def: &FlowDefinition) -> RunRecord {
    let (mut run, _) = start_ok(def, json!({"document": "doc-1"}));
    complete(
        def,
        &mut run,
        "classify",
        None,
        1,
        json!({"label": "invoice", "confidence": 0.95}),
    );
    let effects = complete(def, &mut run, "extract", None, 1, json!({"fields": 1}));
    assert_eq!(
        scheduled_steps(&effects),
        vec![
            ("check_schema".to_string(), None, 1),
            ("check_totals".to_string(), None, 1)
        ]
    );
    run
}

#[test]
fn fork_runs_branches_and_join_collects_their_outputs() {
    let def = example("document-intake");
    let mut run = to_fork(&def);
    let effects = complete(
        &def,
        &mut run,
        "check_totals",
        None,
        1,
        json!({"valid": true}),
    );
    assert!(effects.is_empty(), "{effects:?}");
    assert!(!run.steps.contains_key("validated"));
    let effects = complete(
        &def,
        &mut run,
        "check_schema",
        None,
        1,
        json!({"valid": false}),
    );
    assert_eq!(finished(&effects), Some(RunStatus::Completed));
    let checks = json!({"schema": {"valid": false}, "totals": {"valid": true}});
    assert_eq!(run.steps["validated"].output, Some(checks.clone()));
    assert_eq!(run.steps["validate"].status, StepStatus::Completed);
    assert_eq!(
        run.output,
        Some(
            json!({"document": "doc-1", "document_class": "invoice", "confidence": 0.95, "checks": checks, "valid": false})
        )
    );
}

#[test]
fn branch_failure_fails_the_run_and_cancels_the_other_branch() {
    let def = example("document-intake");
    let mut run = to_fork(&def);
    let effects = fail(&def, &mut run, "check_schema", None, 1, true);
    assert_eq!(finished(&effects), Some(RunStatus::Failed));
    assert!(effects.contains(&Effect::CancelTask {
        key: key("check_totals", None)
    }));
    assert_eq!(run.steps["check_totals"].status, StepStatus::Cancelled);
    assert_eq!(
        run.retry_points,
        vec![
            "check_schema".to_string(),
            "check_totals".to_string(),
            "validate".to_string()
        ]
    );
    // A late completion from the cancelled branch does not apply.
    let late = RunEvent::TaskCompleted {
        key: key("check_totals", None),
        attempt: 1,
        output: json!(1),
        worker: None,
    };
    assert!(matches!(
        handle(&def, &mut run, late, 3_000),
        Err(RunError::NotApplicable(_))
    ));
}

#[test]
fn retry_after_branch_failure_resumes_both_branches() {
    let def = example("document-intake");
    let mut run = to_fork(&def);
    complete(
        &def,
        &mut run,
        "check_totals",
        None,
        1,
        json!({"valid": true}),
    );
    fail(&def, &mut run, "check_schema", None, 1, true);
    assert_eq!(
        run.retry_points,
        vec!["check_schema".to_string(), "validate".to_string()]
    );
    let effects = handle(&def, &mut run, RunEvent::Retry, 5_000).expect("retry applies");
    assert_eq!(run.status, RunStatus::Running);
    assert_eq!(run.error, None);
    assert_eq!(
        scheduled_steps(&effects),
        vec![("check_schema".to_string(), None, 2)]
    );
    let effects = complete(
        &def,
        &mut run,
        "check_schema",
        None,
        2,
        json!({"valid": true}),
    );
    assert_eq!(finished(&effects), Some(RunStatus::Completed));
    assert_eq!(
        run.output.as_ref().and_then(|output| output.get("valid")),
        Some(&json!(true))
    );
}

#[test]
fn transform_runtime_error_fails_the_run() {
    let def = flow(vec![
        json!({"id": "t", "type": "transform", "output": {"a": {"b": "1 / input.zero"}}}),
    ]);
    let (run, effects) = start_ok(&def, json!({"zero": 0}));
    assert_eq!(finished(&effects), Some(RunStatus::Failed));
    let error = run.error.clone().unwrap_or_default();
    assert!(error.contains("$.steps[0].output.a.b"), "{error}");
}

// ---- wait / signal ----

#[test]
fn wait_duration_sets_a_timer_and_its_firing_goes_on() {
    let def = example("reminder");
    let (mut run, effects) = start_ok(&def, json!({"email": "a@b"}));
    assert_eq!(
        effects,
        vec![Effect::StartTimer {
            timer: timer("pause", None, "wait", 0),
            due_ms: 3_601_000
        }]
    );
    let effects = handle(
        &def,
        &mut run,
        RunEvent::TimerFired {
            timer: timer("pause", None, "wait", 0),
        },
        3_601_000,
    )
    .expect("timer applies");
    assert_eq!(run.steps["pause"].status, StepStatus::Completed);
    assert_eq!(
        run.steps["pause"].output, None,
        "null outputs are stored as None"
    );
    assert_eq!(
        scheduled(&effects)[0].input,
        json!({"to": "a@b", "subject": "reminder"})
    );
}

fn until_flow() -> FlowDefinition {
    flow(vec![
        json!({"id": "hold", "type": "wait", "until": "input.at", "next": "done"}),
        json!({"id": "done", "type": "terminate"}),
    ])
}

#[test]
fn wait_until_in_the_past_completes_at_once_and_future_sets_a_timer() {
    let def = until_flow();
    let (run, effects) = start_ok(&def, json!({"at": 999}));
    assert_eq!(finished(&effects), Some(RunStatus::Completed));
    assert_eq!(run.output, None);
    let (_, effects) = start_ok(&def, json!({"at": 5000.5}));
    assert_eq!(
        effects,
        vec![Effect::StartTimer {
            timer: timer("hold", None, "wait", 0),
            due_ms: 5_001
        }]
    );
    let (run, effects) = start_ok(&def, json!({"at": "tomorrow"}));
    assert_eq!(finished(&effects), Some(RunStatus::Failed));
    assert!(run
        .error
        .clone()
        .unwrap_or_default()
        .contains("$.steps[0].until"));
}

fn signal_flow(on_timeout: Option<Value>) -> FlowDefinition {
    let mut step = json!({"id": "review", "type": "signal", "signal": "review.done", "timeout_ms": 100, "next": "done"});
    if let Some(on_timeout) = on_timeout {
        step["on_timeout"] = on_timeout;
    }
    flow(vec![
        step,
        json!({"id": "done", "type": "transform", "output": "steps.review.status"}),
    ])
}

#[test]
fn signal_payload_becomes_the_output() {
    let def = flow(vec![
        json!({"id": "review", "type": "signal", "signal": "review.done"}),
    ]);
    let (mut run, effects) = start_ok(&def, json!(null));
    assert!(effects.is_empty());
    let effects = handle(
        &def,
        &mut run,
        RunEvent::Signal {
            name: "review.done".to_string(),
            payload: json!({"ok": true}),
        },
        1_500,
    )
    .expect("signal applies");
    assert_eq!(finished(&effects), Some(RunStatus::Completed));
    assert_eq!(run.output, Some(json!({"ok": true})));
}

#[test]
fn signal_with_timeout_cancels_its_timer_when_it_arrives() {
    let def = signal_flow(None);
    let (mut run, effects) = start_ok(&def, json!(null));
    assert_eq!(
        effects,
        vec![Effect::StartTimer {
            timer: timer("review", None, "signal-timeout", 0),
            due_ms: 1_100
        }]
    );
    let effects = handle(
        &def,
        &mut run,
        RunEvent::Signal {
            name: "review.done".to_string(),
            payload: json!(1),
        },
        1_050,
    )
    .expect("signal applies");
    assert_eq!(
        effects[0],
        Effect::CancelTimer {
            timer: timer("review", None, "signal-timeout", 0)
        }
    );
    assert_eq!(run.output, Some(json!("completed")));
}

#[test]
fn unknown_signal_is_not_applicable_and_names_the_waited_signals() {
    let def = signal_flow(None);
    let (mut run, _) = start_ok(&def, json!(null));
    let before = run.clone();
    let error = handle(
        &def,
        &mut run,
        RunEvent::Signal {
            name: "other".to_string(),
            payload: json!(1),
        },
        1_050,
    )
    .expect_err("not waited for");
    let RunError::NotApplicable(message) = error else {
        panic!("unexpected error")
    };
    assert!(
        message.contains("\"r1\"")
            && message.contains("\"other\"")
            && message.contains("\"review.done\""),
        "{message}"
    );
    assert_eq!(run, before);
}

#[test]
fn signal_timeout_follows_on_timeout() {
    let fire = RunEvent::TimerFired {
        timer: timer("review", None, "signal-timeout", 0),
    };
    let def = signal_flow(None);
    let (mut run, _) = start_ok(&def, json!(null));
    let effects = handle(&def, &mut run, fire.clone(), 1_100).expect("timeout applies");
    assert_eq!(finished(&effects), Some(RunStatus::Failed));
    assert!(run
        .error
        .clone()
        .unwrap_or_default()
        .contains("no signal \"review.done\" within 100 ms"));

    let def = signal_flow(Some(json!({"fail": "no review in time"})));
    let (mut run, _) = start_ok(&def, json!(null));
    handle(&def, &mut run, fire.clone(), 1_100).expect("timeout applies");
    assert_eq!(run.error.as_deref(), Some("no review in time"));

    let def = signal_flow(Some(json!({"goto": "done"})));
    let (mut run, _) = start_ok(&def, json!(null));
    let effects = handle(&def, &mut run, fire, 1_100).expect("timeout applies");
    assert_eq!(finished(&effects), Some(RunStatus::Completed));
    assert_eq!(run.output, Some(json!("failed")));
}

// ---- terminate / fail / cancel / finished runs / retry ----

#[test]
fn terminate_and_fail_end_the_run() {
    let def = example("invoice-approval");
    let (mut run, _) = start_ok(&def, json!({"invoice_id": "i1"}));
    complete(&def, &mut run, "fetch", None, 1, json!({"amount": 10}));
    let effects = complete(&def, &mut run, "pay", None, 1, json!({}));
    assert_eq!(finished(&effects), Some(RunStatus::Completed));
    assert_eq!(run.output, Some(json!({"paid": true, "amount": 10})));

    let (mut run, _) = start_ok(&def, json!({"invoice_id": "i2"}));
    let effects = fail(&def, &mut run, "fetch", None, 1, false);
    assert_eq!(finished(&effects), Some(RunStatus::Failed));
    assert_eq!(run.error.as_deref(), Some("invoice rejected"));
    assert_eq!(run.steps["rejected"].status, StepStatus::Failed);
    // Retrying a run that failed at a fail step would fail the same way.
    assert!(matches!(
        handle(&def, &mut run, RunEvent::Retry, 3_000),
        Err(RunError::NotApplicable(_))
    ));
}

#[test]
fn cancel_cancels_everything_outstanding() {
    let def = example("document-intake");
    let mut run = to_fork(&def);
    let effects = handle(
        &def,
        &mut run,
        RunEvent::Cancel {
            reason: "operator".to_string(),
        },
        3_000,
    )
    .expect("cancel applies");
    assert_eq!(
        effects,
        vec![
            Effect::CancelTask {
                key: key("check_schema", None)
            },
            Effect::CancelTask {
                key: key("check_totals", None)
            },
            Effect::RunFinished {
                status: RunStatus::Cancelled
            },
        ]
    );
    assert_eq!(run.status, RunStatus::Cancelled);
    assert_eq!(run.steps["check_schema"].status, StepStatus::Cancelled);
    assert!(run.outstanding.is_empty());
    assert!(run.retry_points.is_empty());
    assert!(matches!(
        handle(&def, &mut run, RunEvent::Retry, 3_000),
        Err(RunError::NotApplicable(_))
    ));
}

#[test]
fn events_after_the_run_finished_are_not_applicable() {
    let def = signal_flow(None);
    let (mut run, _) = start_ok(&def, json!(null));
    handle(
        &def,
        &mut run,
        RunEvent::Signal {
            name: "review.done".to_string(),
            payload: json!(1),
        },
        1_050,
    )
    .expect("applies");
    assert_eq!(run.status, RunStatus::Completed);
    let before = run.clone();
    let events = vec![
        RunEvent::Signal {
            name: "review.done".to_string(),
            payload: json!(1),
        },
        RunEvent::Cancel {
            reason: "late".to_string(),
        },
        RunEvent::Retry,
        RunEvent::TimerFired {
            timer: timer("review", None, "signal-timeout", 0),
        },
        RunEvent::TaskCompleted {
            key: key("review", None),
            attempt: 1,
            output: json!(1),
            worker: None,
        },
        RunEvent::ChildFinished {
            step_id: "x".to_string(),
            outcome: ChildOutcome::Cancelled,
        },
    ];
    for event in events {
        let outcome = handle(&def, &mut run, event.clone(), 9_000);
        assert!(
            matches!(outcome, Err(RunError::NotApplicable(_))),
            "{event:?}: {outcome:?}"
        );
        assert_eq!(run, before);
    }
}

#[test]
fn retry_of_a_failed_run_continues_attempt_numbering() {
    let def = retrying_flow(json!({"max_attempts": 2, "jitter": false}), None);
    let (mut run, _) = start_ok(&def, json!(null));
    fail(&def, &mut run, "a", None, 1, true);
    fail(&def, &mut run, "a", None, 2, true);
    assert_eq!(run.status, RunStatus::Failed);
    let effects = handle(&def, &mut run, RunEvent::Retry, 5_000).expect("retry applies");
    assert_eq!(scheduled_steps(&effects), vec![("a".to_string(), None, 3)]);
    // A fresh round: max_attempts counts again from attempt 3.
    let effects = fail(&def, &mut run, "a", None, 3, true);
    assert_eq!(scheduled_steps(&effects), vec![("a".to_string(), None, 4)]);
    let effects = complete(&def, &mut run, "a", None, 4, json!(1));
    assert_eq!(finished(&effects), Some(RunStatus::Completed));
    assert_eq!(run.steps["a"].attempts.len(), 4);
}

// ---- map ----

fn pages(count: usize) -> Value {
    let pages: Vec<Value> = (0..count).map(|page| json!(format!("p{page}"))).collect();
    json!({"document": "d", "pages": pages})
}

#[test]
fn map_runs_items_in_a_window_and_collects_outputs_in_order() {
    let def = example("pages-map");
    let (mut run, effects) = start_ok(&def, pages(6));
    let started: Vec<Option<u32>> = scheduled(&effects)
        .iter()
        .map(|spec| spec.key.item)
        .collect();
    assert_eq!(started, vec![Some(0), Some(1), Some(2), Some(3)]);
    assert_eq!(
        scheduled(&effects)[1].input,
        json!({"document": "d", "page": "p1", "page_number": 2})
    );
    let effects = complete(&def, &mut run, "ocr", Some(2), 1, json!("t2"));
    assert_eq!(
        scheduled_steps(&effects),
        vec![("ocr".to_string(), Some(4), 1)]
    );
    for item in [0, 1, 3, 4] {
        complete(
            &def,
            &mut run,
            "ocr",
            Some(item),
            1,
            json!(format!("t{item}")),
        );
    }
    let effects = complete(&def, &mut run, "ocr", Some(5), 1, json!("t5"));
    assert_eq!(finished(&effects), Some(RunStatus::Completed));
    assert_eq!(
        run.steps["ocr"].output,
        Some(json!(["t0", "t1", "t2", "t3", "t4", "t5"]))
    );
    assert_eq!(
        run.output
            .as_ref()
            .and_then(|output| output.get("failed_pages")),
        Some(&json!(0))
    );
}

fn map_with_failures(total: usize, failures: u32) -> RunRecord {
    let def = example("pages-map");
    let (mut run, _) = start_ok(&def, pages(total));
    for item in 0..total as u32 {
        if item < failures {
            fail(&def, &mut run, "ocr", Some(item), 1, true);
            fail(&def, &mut run, "ocr", Some(item), 2, true);
        } else if run.status == RunStatus::Running {
            complete(&def, &mut run, "ocr", Some(item), 1, json!(item));
        }
    }
    run
}

#[test]
fn map_min_success_ratio_met() {
    let run = map_with_failures(10, 1);
    assert_eq!(run.status, RunStatus::Completed);
    let output = run.steps["ocr"].output.clone().unwrap_or_default();
    assert_eq!(output[0], Value::Null);
    assert_eq!(output[9], json!(9));
    assert_eq!(
        run.output
            .as_ref()
            .and_then(|output| output.get("failed_pages")),
        Some(&json!(1))
    );
}

#[test]
fn map_min_success_ratio_not_met_fails_the_run() {
    let run = map_with_failures(10, 2);
    assert_eq!(run.status, RunStatus::Failed);
    assert!(run
        .error
        .clone()
        .unwrap_or_default()
        .contains("8 of 10 items succeeded"));
    let def = example("pages-map");
    let mut retried = run.clone();
    let effects = handle(&def, &mut retried, RunEvent::Retry, 9_000).expect("retry applies");
    // Only the failed items run again, with fresh attempt numbers.
    assert_eq!(
        scheduled_steps(&effects),
        vec![
            ("ocr".to_string(), Some(0), 3),
            ("ocr".to_string(), Some(1), 3)
        ]
    );
}

#[test]
fn map_over_an_empty_list_completes_at_once_and_over_a_non_list_fails() {
    let def = example("pages-map");
    let (run, effects) = start_ok(&def, pages(0));
    assert_eq!(finished(&effects), Some(RunStatus::Completed));
    assert_eq!(run.steps["ocr"].output, Some(json!([])));

    let def = flow(vec![json!({"id": "m", "type": "map", "items": "input.n",
        "task": {"block": "noop", "input": "item"}})]);
    let (run, effects) = start_ok(&def, json!({"n": 3}));
    assert_eq!(finished(&effects), Some(RunStatus::Failed));
    let error = run.error.clone().unwrap_or_default();
    assert!(
        error.contains("$.steps[0].items") && error.contains("expected a list"),
        "{error}"
    );
}

// ---- subflow ----

#[test]
fn subflow_starts_a_child_and_its_outcome_completes_or_fails_the_step() {
    let def = example("invoice-approval");
    let start_child = |run: &mut RunRecord| {
        complete(
            &def,
            run,
            "fetch",
            None,
            1,
            json!({"amount": 20000, "due_at_ms": 0}),
        )
    };
    let (mut run, _) = start_ok(&def, json!({"invoice_id": "i1"}));
    let effects = start_child(&mut run);
    assert_eq!(
        effects,
        vec![Effect::StartChildRun {
            step_id: "audit".to_string(),
            flow: "invoice-audit".to_string(),
            version: 2,
            input: json!({"invoice": {"amount": 20000, "due_at_ms": 0}}),
        }]
    );
    let done = RunEvent::ChildFinished {
        step_id: "audit".to_string(),
        outcome: ChildOutcome::Completed(json!({"approved": true})),
    };
    let effects = handle(&def, &mut run, done, 3_000).expect("child outcome applies");
    assert_eq!(
        scheduled_steps(&effects),
        vec![("pay".to_string(), None, 1)]
    );

    let (mut run, _) = start_ok(&def, json!({"invoice_id": "i2"}));
    start_child(&mut run);
    let failed = RunEvent::ChildFinished {
        step_id: "audit".to_string(),
        outcome: ChildOutcome::Failed("audit broke".to_string()),
    };
    let effects = handle(&def, &mut run, failed, 3_000).expect("child outcome applies");
    assert_eq!(finished(&effects), Some(RunStatus::Failed));
    assert!(run
        .error
        .clone()
        .unwrap_or_default()
        .contains("audit broke"));

    let (mut run, _) = start_ok(&def, json!({"invoice_id": "i3"}));
    start_child(&mut run);
    let effects = handle(
        &def,
        &mut run,
        RunEvent::Cancel {
            reason: "stop".to_string(),
        },
        3_000,
    )
    .expect("cancel applies");
    assert!(effects.contains(&Effect::CancelChildRun {
        step_id: "audit".to_string()
    }));
}

// ---- determinism ----

#[test]
fn the_same_events_on_two_copies_give_identical_records_and_effects() {
    let def = example("document-intake");
    let (run, _) = start_ok(&def, json!({"document": "d"}));
    let events = vec![
        RunEvent::TaskFailed {
            key: key("classify", None),
            attempt: 1,
            failure: TaskFailure {
                error: "x".to_string(),
                retryable: true,
            },
            worker: None,
        },
        RunEvent::TaskCompleted {
            key: key("classify", None),
            attempt: 2,
            output: json!({"label": "l", "confidence": 0.1}),
            worker: None,
        },
        RunEvent::Signal {
            name: "review.done".to_string(),
            payload: json!({"a": 1}),
        },
        RunEvent::TaskCompleted {
            key: key("check_schema", None),
            attempt: 1,
            output: json!({"valid": true}),
            worker: None,
        },
        RunEvent::TaskCompleted {
            key: key("check_totals", None),
            attempt: 1,
            output: json!({"valid": true}),
            worker: None,
        },
    ];
    let mut first = run.clone();
    let mut second = run;
    for (offset, event) in events.into_iter().enumerate() {
        let now = 2_000 + offset as u64;
        let first_effects = handle(&def, &mut first, event.clone(), now);
        let second_effects = handle(&def, &mut second, event, now);
        assert_eq!(first_effects, second_effects);
        assert_eq!(first, second);
    }
    assert_eq!(first.status, RunStatus::Completed);
    let first_bytes = serde_json::to_vec(&first).expect("serializes");
    let second_bytes = serde_json::to_vec(&second).expect("serializes");
    assert_eq!(first_bytes, second_bytes);
    let decoded: RunRecord = serde_json::from_slice(&first_bytes).expect("round trips");
    assert_eq!(decoded, first);
}

#[test]
fn nested_forks_join_inner_then_outer() {
    let def = flow(vec![
        json!({"id": "outer", "type": "fork", "join": "outer_join", "branches": [
            {"name": "left", "start": "inner"}, {"name": "right", "start": "r"}]}),
        json!({"id": "inner", "type": "fork", "join": "inner_join", "branches": [
            {"name": "a", "start": "la"}, {"name": "b", "start": "lb"}]}),
        json!({"id": "la", "type": "task", "block": "noop", "input": "input", "next": "inner_join"}),
        json!({"id": "lb", "type": "task", "block": "noop", "input": "input", "next": "inner_join"}),
        json!({"id": "inner_join", "type": "join", "next": "after_inner"}),
        json!({"id": "after_inner", "type": "transform", "output": "steps.inner_join.output", "next": "outer_join"}),
        json!({"id": "r", "type": "signal", "signal": "go", "next": "outer_join"}),
        json!({"id": "outer_join", "type": "join"}),
    ]);
    let (mut run, effects) = start_ok(&def, json!(null));
    assert_eq!(
        scheduled_steps(&effects),
        vec![("la".to_string(), None, 1), ("lb".to_string(), None, 1)]
    );
    complete(&def, &mut run, "lb", None, 1, json!("B"));
    complete(&def, &mut run, "la", None, 1, json!("A"));
    assert_eq!(
        run.steps["after_inner"].output,
        Some(json!({"a": "A", "b": "B"}))
    );
    assert_eq!(run.status, RunStatus::Running);
    let effects = handle(
        &def,
        &mut run,
        RunEvent::Signal {
            name: "go".to_string(),
            payload: json!("R"),
        },
        3_000,
    )
    .expect("signal applies");
    assert_eq!(finished(&effects), Some(RunStatus::Completed));
    assert_eq!(
        run.output,
        Some(json!({"left": {"a": "A", "b": "B"}, "right": "R"}))
    );
}

#[test]
fn a_signal_reaches_every_step_waiting_for_it() {
    let def = flow(vec![
        json!({"id": "f", "type": "fork", "join": "j", "branches": [
            {"name": "x", "start": "sx"}, {"name": "y", "start": "sy"}]}),
        json!({"id": "sx", "type": "signal", "signal": "go", "next": "j"}),
        json!({"id": "sy", "type": "signal", "signal": "go", "next": "j"}),
        json!({"id": "j", "type": "join"}),
    ]);
    let (mut run, _) = start_ok(&def, json!(null));
    let effects = handle(
        &def,
        &mut run,
        RunEvent::Signal {
            name: "go".to_string(),
            payload: json!(7),
        },
        2_000,
    )
    .expect("signal applies");
    assert_eq!(finished(&effects), Some(RunStatus::Completed));
    assert_eq!(run.output, Some(json!({"x": 7, "y": 7})));
}

#[test]
fn a_lost_attempt_is_redelivered_at_once_without_using_a_retry() {
    let def = retrying_flow(json!({"max_attempts": 1, "jitter": false}), None);
    let (mut run, _) = start_ok(&def, json!(null));
    let lost = RunEvent::TaskLost {
        key: key("a", None),
        attempt: 1,
        reason: "node 2 stopped reporting".into(),
    };
    let effects = handle(&def, &mut run, lost, 2_000).unwrap();
    let specs = scheduled(&effects);
    assert_eq!(
        (specs.len(), specs[0].attempt, specs[0].not_before_ms),
        (1, 2, 2_000)
    );
    assert_eq!(
        run.steps["a"].attempts[0].error.as_deref(),
        Some("node 2 stopped reporting")
    );
    // The old attempt is fenced off.
    let stale = RunEvent::TaskCompleted {
        key: key("a", None),
        attempt: 1,
        output: json!("late"),
        worker: None,
    };
    assert!(matches!(
        handle(&def, &mut run, stale, 2_001),
        Err(RunError::StaleAttempt { .. })
    ));
    // With max_attempts 1, a real failure of the new attempt is final: the loss did not count.
    let effects = fail(&def, &mut run, "a", None, 2, true);
    assert_eq!(finished(&effects), Some(RunStatus::Failed));
    let error = run.error.clone().unwrap_or_default();
    assert!(error.contains("1 of 1"), "{error}");
}

// ---- inference ----

#[test]
fn an_inference_step_schedules_its_model_block_with_inputs_and_encoding() {
    let def = flow(vec![
        json!({"id": "score", "type": "inference", "model": "cls", "input": {"x": "input.t"}, "outputs": "list", "next": "pinned"}),
        json!({"id": "pinned", "type": "inference", "model": "cls", "version": 3, "input": "steps.score.output",
               "retry": {"max_attempts": 2, "jitter": false, "initial_backoff_ms": 10}}),
    ]);
    let tensor = json!({"dtype": "f32", "shape": [1], "data": [0.5]});
    let (mut run, effects) = start_ok(&def, json!({ "t": tensor }));
    let specs = scheduled(&effects);
    assert_eq!(
        specs[0].block, "model.cls",
        "unversioned: the latest deployed version serves it"
    );
    assert_eq!(
        specs[0].input,
        json!({"inputs": {"x": tensor}, "outputs": "list"})
    );
    assert_eq!(run.steps["score"].input, Some(specs[0].input.clone()));

    let outputs = json!({"y": {"dtype": "f32", "shape": [1, 2], "data": [0.1, 0.9]}});
    let effects = complete(&def, &mut run, "score", None, 1, outputs.clone());
    let specs = scheduled(&effects);
    assert_eq!(specs[0].block, "model.cls.v3");
    assert_eq!(
        specs[0].input,
        json!({"inputs": outputs, "outputs": "base64"})
    );
    // Retries follow the step's policy like any task.
    let effects = fail(&def, &mut run, "pinned", None, 1, true);
    assert!(finished(&effects).is_none());
    let effects = fail(&def, &mut run, "pinned", None, 2, true);
    assert_eq!(finished(&effects), Some(RunStatus::Failed));
}

// ---- bounded work and value limits ----

/// `count` transforms in a chain; each wraps the previous output in one
/// more array when `nesting`, else passes it on.
fn transform_chain(count: usize, nesting: bool) -> FlowDefinition {
    let steps: Vec<Value> = (0..count)
        .map(|index| {
            let previous = if index == 0 {
                "input".to_string()
            } else {
                format!("steps.t{}.output", index - 1)
            };
            let output = if nesting {
                json!(format!("[{previous}]"))
            } else {
                json!(previous)
            };
            let mut step =
                json!({"id": format!("t{index}"), "type": "transform", "output": output});
            if index + 1 < count {
                step["next"] = json!(format!("t{}", index + 1));
            }
            step
        })
        .collect();
    flow(steps)
}

/// Fires every continuation timer the effects started, in order, until
/// none is left; returns the final effects and how many entries it took.
fn continue_until_done(
    def: &FlowDefinition,
    run: &mut RunRecord,
    mut effects: Vec<Effect>,
) -> (Vec<Effect>, usize) {
    let mut entries = 1;
    loop {
        let continuations: Vec<TimerKey> = effects
            .iter()
            .filter_map(|effect| match effect {
                Effect::StartTimer { timer, due_ms } if timer.purpose == "continue" => {
                    assert_eq!(*due_ms, run.updated_at_ms, "a continuation is due at once");
                    Some(timer.clone())
                }
                _ => None,
            })
            .collect();
        if continuations.is_empty() {
            return (effects, entries);
        }
        let mut next = Vec::new();
        for timer in continuations {
            next.extend(
                handle(
                    def,
                    run,
                    RunEvent::TimerFired { timer },
                    1_000 + entries as u64,
                )
                .expect("continuation applies"),
            );
        }
        entries += 1;
        effects = next;
    }
}

#[test]
fn a_long_chain_of_system_steps_continues_in_later_entries() {
    let def = transform_chain(200, false);
    let (mut run, effects) = start_ok(&def, json!({"n": 1}));
    assert_eq!(
        run.status,
        RunStatus::Running,
        "200 steps do not fit in one entry"
    );
    assert_eq!(run.steps.len(), MAX_STEPS_PER_EVENT);
    assert_eq!(run.outstanding.timers.len(), 1);
    let (effects, entries) = continue_until_done(&def, &mut run, effects);
    assert_eq!(finished(&effects), Some(RunStatus::Completed));
    assert_eq!(entries, 200_usize.div_ceil(MAX_STEPS_PER_EVENT));
    assert_eq!(run.output, Some(json!({"n": 1})));
    assert!(run.outstanding.is_empty());
}

#[test]
fn a_pending_continuation_is_cancelled_with_its_run_and_a_stale_one_refused() {
    let def = transform_chain(100, false);
    let (mut run, effects) = start_ok(&def, json!(1));
    let pending = run
        .outstanding
        .timers
        .iter()
        .next()
        .cloned()
        .expect("a continuation");
    let effects_after_cancel = handle(
        &def,
        &mut run,
        RunEvent::Cancel {
            reason: "stop".into(),
        },
        2_000,
    )
    .unwrap();
    assert!(
        effects_after_cancel.contains(&Effect::CancelTimer {
            timer: pending.clone()
        }),
        "{effects_after_cancel:?}"
    );
    assert_eq!(run.status, RunStatus::Cancelled);
    assert!(handle(
        &def,
        &mut run,
        RunEvent::TimerFired { timer: pending },
        2_001
    )
    .is_err());
    drop(effects);
}

#[test]
fn a_value_nested_past_the_limit_fails_the_step_that_builds_it() {
    let def = transform_chain(100, true);
    let (mut run, effects) = start_ok(&def, json!(1));
    let (effects, _) = continue_until_done(&def, &mut run, effects);
    assert_eq!(finished(&effects), Some(RunStatus::Failed));
    let error = run.error.clone().unwrap_or_default();
    // t0 holds [1] (depth 1), so t64 would build depth 65.
    assert!(
        error.contains("\"t64\"") && error.contains("limit of 64"),
        "{error}"
    );
    assert_eq!(run.steps["t63"].status, StepStatus::Completed);
    let stored = run.steps["t63"].output.clone().unwrap();
    assert_eq!(crate::limits::value_depth(&stored, 100), 64);
}

#[test]
fn deep_input_signal_and_task_output_are_refused_or_fail_the_attempt() {
    let deep = (0..70).fold(json!(1), |value, _| json!([value]));
    let def = example("three-step");
    let err = start(&def, new_run(deep.clone()), 1_000).unwrap_err();
    assert!(
        err.to_string()
            .contains("run input nests deeper than the limit of 64"),
        "{err}"
    );

    let (mut run, _) = start_ok(&def, json!({"x": 1}));
    let effects = complete(&def, &mut run, "first", None, 1, deep);
    assert_eq!(
        finished(&effects),
        Some(RunStatus::Failed),
        "a deep output is not retried"
    );
    assert!(run.steps["first"].attempts[0]
        .error
        .clone()
        .unwrap_or_default()
        .contains("limit of 64"));

    let def = signal_flow(None);
    let (mut run, _) = start_ok(&def, json!({}));
    let before = run.clone();
    let deep = (0..70).fold(json!(1), |value, _| json!({"a": value}));
    let err = handle(
        &def,
        &mut run,
        RunEvent::Signal {
            name: "review.done".into(),
            payload: deep,
        },
        2_000,
    )
    .unwrap_err();
    assert!(err.to_string().contains("limit of 64"), "{err}");
    assert_eq!(run, before);
}

#[test]
fn a_run_that_would_hold_more_than_its_value_budget_fails_the_step() {
    let big = "x".repeat(900 * 1024);
    let def = transform_chain(40, false);
    let (mut run, effects) = start_ok(&def, json!(big));
    let (effects, _) = continue_until_done(&def, &mut run, effects);
    assert_eq!(finished(&effects), Some(RunStatus::Failed));
    let error = run.error.clone().unwrap_or_default();
    assert!(
        error.contains("more than the limit of 4194304"),
        "{}",
        &error[..error.len().min(300)]
    );
    let held: usize = run
        .steps
        .values()
        .filter_map(|step| step.output.as_ref())
        .map(crate::expr::serialized_size)
        .sum();
    assert!(held <= MAX_RUN_VALUE_BYTES, "{held}");
}
