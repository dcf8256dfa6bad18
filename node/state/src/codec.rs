//! The record codec (floe-storage's), with run and task records' JSON
//! form read within the engine's value limits.

pub use floe_storage::codec::*;

use serde::de::DeserializeOwned;

use floe_storage::StoreError;

/// Decodes a run or task record stored by `encode_structured` or as JSON
/// (values nested deeper than serde_json's default, up to the engine's limit).
pub fn decode_structured<T: DeserializeOwned>(
    record: impl Fn() -> String,
    bytes: &[u8],
) -> Result<T, StoreError> {
    decode_structured_with(record, bytes, floe_engine::limits::from_stored_text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A finished two-step run with the JSON shapes records meet: nested
    /// values, a `null` output kept as `Some(Null)`, a missing one, a blob
    /// reference, map-like progress.
    fn sample_run() -> floe_engine::run::RunRecord {
        use floe_engine::run::{AttemptRecord, RunRecord, RunStatus, StepRecord, StepStatus};
        let blob = format!("sha256:{}", "ab".repeat(32));
        let step = |output: Option<serde_json::Value>| StepRecord {
            status: StepStatus::Completed,
            started_at_ms: 10,
            finished_at_ms: Some(12),
            input: Some(serde_json::json!({"pages": [1, 2.5, "three"], "nested": {"ok": true}})),
            output,
            error: None,
            attempts: vec![AttemptRecord {
                attempt: 1,
                item: None,
                scheduled_at_ms: 10,
                node: Some(2),
                worker: Some("w-1".into()),
                started_at_ms: Some(11),
                finished_at_ms: Some(12),
                error: None,
            }],
            progress: serde_json::json!({"items": [{"status": "completed", "first_attempt": 1}]}),
        };
        RunRecord {
            run_id: "r-1".into(),
            flow: "chain".into(),
            version: 3,
            status: RunStatus::Completed,
            input: serde_json::json!({"document": {"$blob": blob, "size": 300000}, "unicode": "\u{e9}\u{1f600}"}),
            output: Some(serde_json::Value::Null),
            error: Some("a \"quoted\" reason".into()),
            correlation_id: "c-7".into(),
            idempotency_key: String::new(),
            parent: Some(("p".into(), "sub".into())),
            created_at_ms: 10,
            updated_at_ms: 12,
            finished_at_ms: Some(12),
            steps: [
                ("first".to_string(), step(Some(serde_json::Value::Null))),
                ("second".to_string(), step(None)),
            ]
            .into_iter()
            .collect(),
            outstanding: Default::default(),
            retry_points: vec!["second".into()],
        }
    }

    #[test]
    fn structured_records_round_trip_and_are_smaller_than_json() {
        let run = sample_run();
        let binary = encode_structured(|| "run r-1".into(), &run).unwrap();
        let back: floe_engine::run::RunRecord =
            decode_structured(|| "run r-1".into(), &binary).unwrap();
        assert_eq!(back, run);
        let json = encode_bytes(|| "run r-1".into(), &serde_json::to_vec(&run).unwrap()).unwrap();
        assert!(
            binary.len() < json.len(),
            "binary {} bytes, JSON {}",
            binary.len(),
            json.len()
        );
        // The API's JSON keeps values as JSON, not as text.
        let api = serde_json::to_value(&run).unwrap();
        assert_eq!(api["input"]["document"]["size"], 300000);
        assert_eq!(
            api["steps"]["first"]["progress"]["items"][0]["status"],
            "completed"
        );
    }

    #[test]
    fn structured_records_keep_blob_references_findable() {
        let run = sample_run();
        let binary = encode_structured(|| "run r-1".into(), &run).unwrap();
        assert_eq!(
            floe_storage::blobs::referenced_hashes(&binary),
            vec!["ab".repeat(32)]
        );
    }

    #[test]
    fn task_records_round_trip_with_labels_and_timeouts() {
        use floe_engine::run::{TaskKey, TaskSpec};
        let spec = TaskSpec {
            key: TaskKey {
                run_id: "r-1".into(),
                step_id: "ocr".into(),
                item: Some(4),
            },
            attempt: 2,
            block: "ocr".into(),
            worker_labels: [("gpu".to_string(), "yes".to_string())]
                .into_iter()
                .collect(),
            input: serde_json::json!([1, {"a": null}]),
            not_before_ms: 99,
            timeouts: floe_engine::Timeouts {
                start_to_close_ms: Some(5000),
                ..Default::default()
            },
        };
        let task = crate::runs::TaskRecord {
            spec,
            scheduled_at_ms: 98,
            assignment: Some(crate::runs::Assignment {
                node: 3,
                worker: "w".into(),
                at_ms: 99,
            }),
            flow: "chain".into(),
        };
        let binary = encode_structured(|| "task t".into(), &task).unwrap();
        assert_eq!(
            decode_structured::<crate::runs::TaskRecord>(|| "task t".into(), &binary).unwrap(),
            task
        );
    }

    #[test]
    fn records_stored_as_json_still_read() {
        // JSON cannot tell a `null` output from none (the engine stores none).
        let mut run = sample_run();
        run.output = None;
        for step in run.steps.values_mut() {
            step.output = step.output.take().filter(|output| !output.is_null());
        }
        let json = encode_bytes(|| "run r-1".into(), &serde_json::to_vec(&run).unwrap()).unwrap();
        assert_eq!(
            decode_structured::<floe_engine::run::RunRecord>(|| "run r-1".into(), &json).unwrap(),
            run
        );
        // A task record written before `worker_labels` was always stored.
        let old_task = br#"{"spec":{"key":{"run_id":"r","step_id":"s","item":null},"attempt":1,"block":"noop","input":{},"not_before_ms":0,"timeouts":{}},"scheduled_at_ms":1,"assignment":null,"flow":"f"}"#;
        let stored = encode_bytes(|| "task r/s/-".into(), old_task).unwrap();
        let task: crate::runs::TaskRecord =
            decode_structured(|| "task r/s/-".into(), &stored).unwrap();
        assert!(task.spec.worker_labels.is_empty());
    }

    #[test]
    fn damaged_structured_records_name_the_record() {
        let binary = encode_structured(|| "run r-1".into(), &sample_run()).unwrap();
        // Cut inside the body (the byte-string wrapper stays consistent).
        let body = decode_bytes(String::new, &binary).unwrap();
        let cut = encode_bytes(String::new, &body[..body.len() / 2]).unwrap();
        let error =
            decode_structured::<floe_engine::run::RunRecord>(|| "sm_data_0 run r-1".into(), &cut)
                .unwrap_err();
        assert!(matches!(error, StoreError::Decode { .. }), "{error}");
        assert!(error.to_string().contains("sm_data_0 run r-1"), "{error}");
        let neither = encode_bytes(String::new, b"\x07garbage").unwrap();
        let error = decode_structured::<floe_engine::run::RunRecord>(
            || "sm_data_0 run r-2".into(),
            &neither,
        )
        .unwrap_err();
        assert!(error.to_string().contains("sm_data_0 run r-2"), "{error}");
    }

    /// Values a client or a flow can put into a run event: nested to the
    /// limit and past it, large, non-ASCII and control characters, numbers
    /// at the edges of what a JSON value holds (integers to u64 and i64,
    /// the rest as f64: a longer integer arrives as its f64).
    fn hostile_values() -> Vec<serde_json::Value> {
        use serde_json::json;
        let mut deep = json!("leaf");
        for level in 0..floe_engine::limits::MAX_VALUE_DEPTH {
            deep = if level % 2 == 0 {
                json!([deep])
            } else {
                json!({ "k\u{0}\"": deep })
            };
        }
        let mut deeper = json!(1);
        for _ in 0..300 {
            deeper = json!([deeper]);
        }
        let beyond_u64: serde_json::Value =
            serde_json::from_str("123456789012345678901234567890").unwrap();
        assert!(beyond_u64.is_f64());
        vec![
            json!(null),
            json!(""),
            deep,
            deeper,
            json!("\u{e9}\u{1f600} \u{202e}rtl \u{0}\u{7f}\"\\\n"),
            json!("x".repeat(1 << 20)),
            json!({"\u{1f600}": vec!["\u{e9}"; 1000]}),
            json!([u64::MAX, i64::MIN, i64::MAX, 0, -1]),
            json!([
                f64::MAX,
                f64::MIN,
                f64::MIN_POSITIVE,
                5e-324,
                0.1,
                -0.0,
                1e300,
                2.5
            ]),
            beyond_u64,
            json!({"$blob": format!("sha256:{}", "ef".repeat(32)), "size": 300000}),
        ]
    }

    fn every_event_kind(value: &serde_json::Value) -> Vec<floe_engine::run::RunEvent> {
        use floe_engine::run::{ChildOutcome, RunEvent, TaskFailure, TaskKey, TimerKey};
        let key = TaskKey {
            run_id: "r-\u{e9}/1".into(),
            step_id: "ocr".into(),
            item: Some(u32::MAX),
        };
        vec![
            RunEvent::TaskCompleted {
                key: key.clone(),
                attempt: u32::MAX,
                output: value.clone(),
                worker: None,
            },
            RunEvent::TaskCompleted {
                key: key.clone(),
                attempt: 1,
                output: value.clone(),
                worker: Some("w-\u{1f600}".into()),
            },
            RunEvent::TaskFailed {
                key: key.clone(),
                attempt: 1,
                failure: TaskFailure {
                    error: "a \"bad\" input\n".into(),
                    retryable: false,
                },
                worker: None,
            },
            RunEvent::TaskFailed {
                key: key.clone(),
                attempt: 2,
                failure: TaskFailure {
                    error: String::new(),
                    retryable: true,
                },
                worker: Some(String::new()),
            },
            RunEvent::TaskLost {
                key: key.clone(),
                attempt: 3,
                reason: "node 2 left".into(),
            },
            RunEvent::TaskStarted {
                key,
                attempt: 4,
                node: u64::MAX,
                worker: "w".into(),
            },
            RunEvent::TimerFired {
                timer: TimerKey {
                    run_id: "r-1".into(),
                    step_id: "wait".into(),
                    item: None,
                    purpose: "heartbeat".into(),
                    attempt: 0,
                },
            },
            RunEvent::Signal {
                name: "\u{e9}".into(),
                payload: value.clone(),
            },
            RunEvent::ChildFinished {
                step_id: "sub".into(),
                outcome: ChildOutcome::Completed(value.clone()),
            },
            RunEvent::ChildFinished {
                step_id: "sub".into(),
                outcome: ChildOutcome::Failed("child failed".into()),
            },
            RunEvent::ChildFinished {
                step_id: "sub".into(),
                outcome: ChildOutcome::Cancelled,
            },
            RunEvent::Cancel {
                reason: "\u{0}".into(),
            },
            RunEvent::Retry,
        ]
    }

    /// Every kind of typed run event, with every hostile value, reads back
    /// from the log as it was proposed, and its JSON form is the one the
    /// old variant carries.
    #[test]
    fn typed_run_events_of_every_kind_round_trip() {
        use crate::types::Command;
        for value in hostile_values() {
            for event in every_event_kind(&value) {
                let json_before = serde_json::to_string(&event).unwrap();
                let command = Command::RunEventTyped {
                    run_id: "r-\u{e9}/1".into(),
                    event,
                    at_ms: u64::MAX,
                };
                let bytes = encode(|| "log entry".into(), &command).unwrap();
                let back: Command = decode(|| "log entry".into(), &bytes).unwrap();
                assert_eq!(back, command);
                let Command::RunEventTyped { event, .. } = back else {
                    unreachable!("decoded as another variant")
                };
                assert_eq!(serde_json::to_string(&event).unwrap(), json_before);
                // The same event through the old variant's JSON reads alike.
                let through_json: floe_engine::run::RunEvent =
                    floe_engine::limits::from_stored_text(json_before.as_bytes()).unwrap();
                assert_eq!(through_json, event);
            }
        }
    }

    /// Values travel as their JSON text: a large value costs its text and
    /// little more, and a blob reference inside stays findable by the byte
    /// scan that keeps blobs alive.
    #[test]
    fn typed_event_values_are_stored_as_their_text() {
        let value = serde_json::json!({"doc": {"$blob": format!("sha256:{}", "ef".repeat(32)), "size": 3}, "pad": "y".repeat(4096)});
        let event = floe_engine::run::RunEvent::Signal {
            name: "go".into(),
            payload: value.clone(),
        };
        let text = serde_json::to_vec(&value).unwrap();
        let command = crate::types::Command::RunEventTyped {
            run_id: "r".into(),
            event,
            at_ms: 1,
        };
        let bytes = encode(|| "log entry".into(), &command).unwrap();
        assert!(bytes
            .windows(text.len())
            .any(|window| window == text.as_slice()));
        assert!(bytes.len() < text.len() + 32, "{} bytes", bytes.len());
        assert_eq!(
            floe_storage::blobs::referenced_hashes(&bytes),
            vec!["ef".repeat(32)]
        );
    }

    /// Appending the typed variant leaves every earlier variant's tag (its
    /// position) as the stored logs of earlier releases hold it.
    #[test]
    fn the_typed_variant_comes_after_every_earlier_one() {
        use crate::types::Command;
        let tag = |command: &Command| encode(|| "log entry".into(), command).unwrap()[1];
        let old = Command::RunEvent {
            run_id: "r".into(),
            event: b"\"Retry\"".to_vec(),
            at_ms: 1,
        };
        let slots = Command::NodeSlots {
            node: 1,
            offer: Default::default(),
        };
        let typed = Command::RunEventTyped {
            run_id: "r".into(),
            event: floe_engine::run::RunEvent::Retry,
            at_ms: 1,
        };
        assert_eq!(tag(&old), 6);
        assert_eq!(tag(&slots), 17);
        assert_eq!(tag(&typed), 18);
    }

    /// A JSON value nested up to the 64-level value limit,
    /// alternating arrays and objects around a leaf that is never `null`
    /// (an optional output of `null` is stored as absent by design).
    fn nested_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            any::<i64>().prop_map(serde_json::Value::from),
            any::<bool>().prop_map(serde_json::Value::from),
            ".{0,40}".prop_map(serde_json::Value::from),
            Just(
                serde_json::json!({"$blob": format!("sha256:{}", "cd".repeat(32)), "size": 300000})
            ),
        ];
        // The blob-reference leaf is an object itself: one level fewer around it.
        (leaf, 0..floe_engine::limits::MAX_VALUE_DEPTH, ".{0,12}").prop_map(|(leaf, depth, key)| {
            let mut value = leaf;
            for level in 0..depth {
                value = if level % 2 == 0 {
                    serde_json::Value::Array(vec![value, serde_json::Value::from(level)])
                } else {
                    serde_json::json!({ key.clone(): value, "n": level })
                };
            }
            value
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Whatever passes the door's value limits stores and reads back,
        /// in every record that carries values: run records, task records,
        /// the log's commands (run start, run events JSON and typed), key-value entries.
        #[test]
        fn records_holding_values_at_the_limits_round_trip(value in nested_value(), other in nested_value()) {
            proptest::prop_assert!(floe_engine::limits::value_depth(&value, 100) <= floe_engine::limits::MAX_VALUE_DEPTH);
            let mut run = sample_run();
            run.input = value.clone();
            run.output = Some(other.clone());
            for step in run.steps.values_mut() {
                step.input = Some(value.clone());
                step.output = Some(other.clone());
                step.progress = value.clone();
            }
            let bytes = encode_structured(|| "run r-1".into(), &run).unwrap();
            proptest::prop_assert_eq!(decode_structured::<floe_engine::run::RunRecord>(|| "run r-1".into(), &bytes).unwrap(), run);

            let task = crate::runs::TaskRecord {
                spec: floe_engine::run::TaskSpec {
                    key: floe_engine::run::TaskKey { run_id: "r-1".into(), step_id: "a".into(), item: Some(3) },
                    attempt: 2,
                    block: "ocr".into(),
                    worker_labels: Default::default(),
                    input: value.clone(),
                    not_before_ms: 0,
                    timeouts: Default::default(),
                },
                scheduled_at_ms: 5,
                assignment: None,
                flow: "chain".into(),
            };
            let bytes = encode_structured(|| "task".into(), &task).unwrap();
            proptest::prop_assert_eq!(decode_structured::<crate::runs::TaskRecord>(|| "task".into(), &bytes).unwrap(), task);

            let event = floe_engine::run::RunEvent::Signal { name: "go".into(), payload: other.clone() };
            let completed = floe_engine::run::RunEvent::TaskCompleted {
                key: floe_engine::run::TaskKey { run_id: "r-1".into(), step_id: "a".into(), item: Some(3) },
                attempt: 2,
                output: value.clone(),
                worker: None,
            };
            let child = floe_engine::run::RunEvent::ChildFinished {
                step_id: "sub".into(),
                outcome: floe_engine::run::ChildOutcome::Completed(other.clone()),
            };
            let commands = vec![
                crate::types::Command::StartRun {
                    run_id: "r-1".into(),
                    flow: "chain".into(),
                    version: 0,
                    input: serde_json::to_vec(&value).unwrap(),
                    correlation_id: String::new(),
                    idempotency_key: String::new(),
                    at_ms: 1,
                },
                crate::types::Command::RunEvent { run_id: "r-1".into(), event: serde_json::to_vec(&event).unwrap(), at_ms: 2 },
                crate::types::Command::RunEventTyped { run_id: "r-1".into(), event: event.clone(), at_ms: 2 },
                crate::types::Command::RunEventTyped { run_id: "r-1".into(), event: completed, at_ms: 3 },
                crate::types::Command::Batch(vec![
                    crate::types::Command::RunEventTyped { run_id: "r-1".into(), event: child, at_ms: 4 },
                    crate::types::Command::KvDelete { key: "k".into() },
                ]),
                crate::types::Command::KvPut { key: "k".into(), value: serde_json::to_vec(&other).unwrap() },
            ];
            for command in commands {
                let bytes = encode(|| "log entry".into(), &command).unwrap();
                let back: crate::types::Command = decode(|| "log entry".into(), &bytes).unwrap();
                proptest::prop_assert_eq!(&back, &command);
            }
            // What apply parses out of a run event reads back as sent.
            let parsed: floe_engine::run::RunEvent = floe_engine::limits::from_stored_text(&serde_json::to_vec(&event).unwrap()).unwrap();
            proptest::prop_assert_eq!(parsed, event);
        }
    }
}
