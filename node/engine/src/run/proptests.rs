//! Property test: random valid event sequences over the example flows,
//! checked against a driver that does the storage layer's bookkeeping.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use serde_json::{json, Value};

use super::tests::{example, new_run};
use super::*;
use crate::model::Step;

const FLOWS: [&str; 5] = [
    "document-intake",
    "invoice-approval",
    "pages-map",
    "reminder",
    "three-step",
];

fn input_for(flow: &str, pages: usize) -> Value {
    match flow {
        "document-intake" => json!({"document": "d"}),
        "invoice-approval" => json!({"invoice_id": "i"}),
        "pages-map" => {
            let pages: Vec<Value> = (0..pages).map(|page| json!(format!("p{page}"))).collect();
            json!({"document": "d", "pages": pages})
        }
        "reminder" => json!({"email": "e"}),
        _ => json!({"x": 1}),
    }
}

fn output_for(choice: u16) -> Value {
    match choice % 5 {
        0 => {
            json!({"label": "invoice", "confidence": 0.9, "valid": true, "amount": 20000, "due_at_ms": 500_000, "approved": true})
        }
        1 => {
            json!({"label": "memo", "confidence": 0.1, "valid": false, "amount": 10, "due_at_ms": 0, "approved": false})
        }
        2 => {
            json!({"label": "x", "confidence": 0.85, "valid": true, "amount": 10001, "due_at_ms": 90_000_000, "approved": true})
        }
        3 => json!("not an object"),
        _ => Value::Null,
    }
}

/// What the storage layer would hold for the run: tasks, timers, children.
struct Driver {
    def: FlowDefinition,
    run: RunRecord,
    now: u64,
    tasks: BTreeMap<TaskKey, u32>,
    timers: BTreeSet<TimerKey>,
    children: BTreeSet<String>,
    highest_attempt: BTreeMap<TaskKey, u32>,
}

impl Driver {
    /// Carries out effects. (That a finished run emits nothing is checked
    /// by the caller: every event but `Retry` must be refused.)
    fn apply_effects(&mut self, effects: &[Effect]) -> Result<(), TestCaseError> {
        for effect in effects {
            match effect {
                Effect::ScheduleTask(spec) => {
                    let previous = self.highest_attempt.get(&spec.key).copied().unwrap_or(0);
                    prop_assert!(
                        spec.attempt > previous,
                        "attempt {} after {previous} for {:?}",
                        spec.attempt,
                        spec.key
                    );
                    self.highest_attempt.insert(spec.key.clone(), spec.attempt);
                    prop_assert!(
                        !self.tasks.contains_key(&spec.key),
                        "{:?} scheduled while still outstanding",
                        spec.key
                    );
                    self.tasks.insert(spec.key.clone(), spec.attempt);
                }
                Effect::CancelTask { key } => {
                    self.tasks.remove(key);
                }
                Effect::StartTimer { timer, .. } => {
                    prop_assert!(
                        self.timers.insert(timer.clone()),
                        "timer {timer:?} started twice"
                    );
                }
                Effect::CancelTimer { timer } => {
                    prop_assert!(
                        self.timers.remove(timer),
                        "cancelled unknown timer {timer:?}"
                    );
                }
                Effect::StartChildRun { step_id, .. } => {
                    prop_assert!(self.children.insert(step_id.clone()));
                }
                Effect::CancelChildRun { step_id } => {
                    prop_assert!(self.children.remove(step_id));
                }
                Effect::RunFinished { status } => {
                    prop_assert_eq!(*status, self.run.status);
                    prop_assert!(*status != RunStatus::Running);
                }
            }
        }
        Ok(())
    }

    fn check_invariants(&self) -> Result<(), TestCaseError> {
        let engine_tasks: BTreeSet<TaskKey> = self.tasks.keys().cloned().collect();
        prop_assert_eq!(&engine_tasks, &self.run.outstanding.tasks);
        prop_assert_eq!(&self.timers, &self.run.outstanding.timers);
        prop_assert_eq!(&self.children, &self.run.outstanding.child_runs);
        if self.run.status == RunStatus::Running {
            let waits_for_signal = self.run.steps.iter().any(|(step_id, record)| {
                record.status == StepStatus::Running
                    && matches!(self.def.step(step_id), Some(Step::Signal(_)))
            });
            prop_assert!(
                waits_for_signal || !self.run.outstanding.is_empty(),
                "a running run waits on nothing: {:?}",
                self.run
            );
        } else {
            prop_assert!(
                self.tasks.is_empty() && self.timers.is_empty() && self.children.is_empty()
            );
            prop_assert!(self.run.finished_at_ms.is_some());
        }
        Ok(())
    }

    fn event_for(&self, action: u8, pick: u16, flag: bool) -> Option<RunEvent> {
        let tasks: Vec<(&TaskKey, &u32)> = self.tasks.iter().collect();
        let timers: Vec<&TimerKey> = self.timers.iter().collect();
        let children: Vec<&String> = self.children.iter().collect();
        let nth = |len: usize| usize::from(pick) % len.max(1);
        match action {
            0..=2 if !tasks.is_empty() => {
                let (key, attempt) = tasks[nth(tasks.len())];
                Some(RunEvent::TaskCompleted {
                    key: key.clone(),
                    attempt: *attempt,
                    output: output_for(pick / 7),
                    worker: None,
                })
            }
            3 if !tasks.is_empty() => {
                let (key, attempt) = tasks[nth(tasks.len())];
                let failure = TaskFailure {
                    error: "worker error".to_string(),
                    retryable: flag,
                };
                Some(RunEvent::TaskFailed {
                    key: key.clone(),
                    attempt: *attempt,
                    failure,
                    worker: None,
                })
            }
            4 if !tasks.is_empty() => {
                let (key, attempt) = tasks[nth(tasks.len())];
                if flag && *attempt > 1 {
                    // A stale completion.
                    return Some(RunEvent::TaskCompleted {
                        key: key.clone(),
                        attempt: attempt - 1,
                        output: json!(1),
                        worker: None,
                    });
                }
                Some(RunEvent::TaskStarted {
                    key: key.clone(),
                    attempt: *attempt,
                    node: 1,
                    worker: "w".to_string(),
                })
            }
            5 if !timers.is_empty() => Some(RunEvent::TimerFired {
                timer: timers[nth(timers.len())].clone(),
            }),
            6 => {
                let name = if flag {
                    "review.done"
                } else {
                    "unknown.signal"
                };
                Some(RunEvent::Signal {
                    name: name.to_string(),
                    payload: output_for(pick),
                })
            }
            7 if !children.is_empty() => {
                let outcome = match pick % 3 {
                    0 => ChildOutcome::Completed(json!({"approved": flag})),
                    1 => ChildOutcome::Failed("child failed".to_string()),
                    _ => ChildOutcome::Cancelled,
                };
                Some(RunEvent::ChildFinished {
                    step_id: children[nth(children.len())].clone(),
                    outcome,
                })
            }
            8 if matches!(pick % 8, 0) => Some(RunEvent::Cancel {
                reason: "test".to_string(),
            }),
            9 => Some(RunEvent::Retry),
            _ => None,
        }
    }

    fn step(&mut self, action: u8, pick: u16, flag: bool) -> Result<(), TestCaseError> {
        let Some(event) = self.event_for(action, pick, flag) else {
            return Ok(());
        };
        self.now += u64::from(pick % 1000);
        let before = self.run.clone();
        let was_finished = before.status != RunStatus::Running;
        let outcome = handle(&self.def, &mut self.run, event.clone(), self.now);
        match outcome {
            Ok(effects) => {
                prop_assert!(
                    !was_finished || matches!(event, RunEvent::Retry),
                    "event {event:?} applied to a finished run"
                );
                match &event {
                    RunEvent::TaskCompleted { key, .. } | RunEvent::TaskFailed { key, .. } => {
                        self.tasks.remove(key);
                    }
                    RunEvent::TimerFired { timer } => {
                        self.timers.remove(timer);
                    }
                    RunEvent::ChildFinished { step_id, .. } => {
                        self.children.remove(step_id);
                    }
                    _ => {}
                }
                self.apply_effects(&effects)?;
            }
            Err(error) => {
                prop_assert_eq!(
                    &self.run,
                    &before,
                    "refused event {:?} ({}) changed the record",
                    event,
                    error
                );
                if let RunEvent::TaskCompleted { key, attempt, .. } = &event {
                    if let Some(current) = self.tasks.get(key) {
                        if attempt < current {
                            prop_assert!(
                                matches!(error, RunError::StaleAttempt { .. }),
                                "{error:?}"
                            );
                        }
                    }
                }
            }
        }
        self.check_invariants()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn random_event_sequences_keep_the_engine_invariants(
        flow_index in 0..FLOWS.len(),
        pages in 0usize..7,
        actions in proptest::collection::vec((0u8..10, any::<u16>(), any::<bool>()), 1..80),
    ) {
        let flow = FLOWS[flow_index];
        let def = example(flow);
        let (run, effects) = start(&def, new_run(input_for(flow, pages)), 1_000).expect("valid input starts");
        let mut driver = Driver {
            def,
            run,
            now: 1_000,
            tasks: BTreeMap::new(),
            timers: BTreeSet::new(),
            children: BTreeSet::new(),
            highest_attempt: BTreeMap::new(),
        };
        driver.apply_effects(&effects)?;
        driver.check_invariants()?;
        for (action, pick, flag) in actions {
            driver.step(action, pick, flag)?;
        }
        // Drive the run to its end: complete tasks and children, fire
        // timers, send the awaited signal. Every scheduled task, started
        // timer and child run must then be matched by an outcome or a
        // cancellation.
        for round in 0..500u16 {
            if driver.run.status != RunStatus::Running {
                break;
            }
            let action = if !driver.tasks.is_empty() {
                0
            } else if !driver.children.is_empty() {
                7
            } else if !driver.timers.is_empty() {
                5
            } else {
                6
            };
            driver.step(action, round, true)?;
        }
        prop_assert!(driver.run.status != RunStatus::Running, "run did not finish: {:?}", driver.run);
        prop_assert!(driver.tasks.is_empty() && driver.timers.is_empty() && driver.children.is_empty());
        let before = driver.run.clone();
        let late = RunEvent::Signal { name: "review.done".to_string(), payload: json!(1) };
        prop_assert!(handle(&driver.def, &mut driver.run, late, driver.now).is_err());
        prop_assert_eq!(&driver.run, &before);
    }
}
