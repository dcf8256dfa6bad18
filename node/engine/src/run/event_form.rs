//! The two forms of `RunEvent`'s task results. JSON leaves an absent
//! `worker` out, as it always has; a binary format (the log's typed run
//! events, bincode) knows fields by position, not by name, so a skipped
//! field would shift every field after it: there every field is written,
//! and a JSON value as its text (`json_text`). Reading takes either form.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::{json_text, TaskFailure, TaskKey};

pub(super) mod task_completed {
    use super::*;

    #[derive(Serialize)]
    struct Named<'a> {
        key: &'a TaskKey,
        attempt: u32,
        output: &'a Value,
        #[serde(skip_serializing_if = "Option::is_none")]
        worker: Option<&'a str>,
    }

    #[derive(Serialize)]
    struct Positional<'a> {
        key: &'a TaskKey,
        attempt: u32,
        #[serde(with = "json_text")]
        output: &'a Value,
        worker: Option<&'a str>,
    }

    #[derive(Deserialize)]
    struct Fields {
        key: TaskKey,
        attempt: u32,
        #[serde(with = "json_text")]
        output: Value,
        #[serde(default)]
        worker: Option<String>,
    }

    pub fn serialize<S: Serializer>(
        key: &TaskKey,
        attempt: &u32,
        output: &Value,
        worker: &Option<String>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let (attempt, worker) = (*attempt, worker.as_deref());
        if serializer.is_human_readable() {
            Named {
                key,
                attempt,
                output,
                worker,
            }
            .serialize(serializer)
        } else {
            Positional {
                key,
                attempt,
                output,
                worker,
            }
            .serialize(serializer)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<(TaskKey, u32, Value, Option<String>), D::Error> {
        let fields = Fields::deserialize(deserializer)?;
        Ok((fields.key, fields.attempt, fields.output, fields.worker))
    }
}

pub(super) mod task_failed {
    use super::*;

    #[derive(Serialize)]
    struct Named<'a> {
        key: &'a TaskKey,
        attempt: u32,
        failure: &'a TaskFailure,
        #[serde(skip_serializing_if = "Option::is_none")]
        worker: Option<&'a str>,
    }

    #[derive(Serialize)]
    struct Positional<'a> {
        key: &'a TaskKey,
        attempt: u32,
        failure: &'a TaskFailure,
        worker: Option<&'a str>,
    }

    #[derive(Deserialize)]
    struct Fields {
        key: TaskKey,
        attempt: u32,
        failure: TaskFailure,
        #[serde(default)]
        worker: Option<String>,
    }

    pub fn serialize<S: Serializer>(
        key: &TaskKey,
        attempt: &u32,
        failure: &TaskFailure,
        worker: &Option<String>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let (attempt, worker) = (*attempt, worker.as_deref());
        if serializer.is_human_readable() {
            Named {
                key,
                attempt,
                failure,
                worker,
            }
            .serialize(serializer)
        } else {
            Positional {
                key,
                attempt,
                failure,
                worker,
            }
            .serialize(serializer)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<(TaskKey, u32, TaskFailure, Option<String>), D::Error> {
        let fields = Fields::deserialize(deserializer)?;
        Ok((fields.key, fields.attempt, fields.failure, fields.worker))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::{ChildOutcome, RunEvent, TimerKey};
    use super::*;

    fn key() -> TaskKey {
        TaskKey {
            run_id: "r1".into(),
            step_id: "a".into(),
            item: None,
        }
    }

    /// The JSON form as earlier releases wrote it into the log: the text
    /// of every kind stays these bytes, and these texts read back.
    #[test]
    fn json_form_is_unchanged() {
        let cases = [
            (
                RunEvent::TaskCompleted {
                    key: key(),
                    attempt: 1,
                    output: json!({"ok": true}),
                    worker: None,
                },
                r#"{"TaskCompleted":{"key":{"run_id":"r1","step_id":"a","item":null},"attempt":1,"output":{"ok":true}}}"#,
            ),
            (
                RunEvent::TaskCompleted {
                    key: key(),
                    attempt: 2,
                    output: json!(null),
                    worker: Some("w1".into()),
                },
                r#"{"TaskCompleted":{"key":{"run_id":"r1","step_id":"a","item":null},"attempt":2,"output":null,"worker":"w1"}}"#,
            ),
            (
                RunEvent::TaskFailed {
                    key: key(),
                    attempt: 1,
                    failure: TaskFailure {
                        error: "bad".into(),
                        retryable: false,
                    },
                    worker: None,
                },
                r#"{"TaskFailed":{"key":{"run_id":"r1","step_id":"a","item":null},"attempt":1,"failure":{"error":"bad","retryable":false}}}"#,
            ),
            (
                RunEvent::TaskFailed {
                    key: key(),
                    attempt: 1,
                    failure: TaskFailure {
                        error: "bad".into(),
                        retryable: true,
                    },
                    worker: Some("w".into()),
                },
                r#"{"TaskFailed":{"key":{"run_id":"r1","step_id":"a","item":null},"attempt":1,"failure":{"error":"bad","retryable":true},"worker":"w"}}"#,
            ),
            (
                RunEvent::TaskLost {
                    key: key(),
                    attempt: 3,
                    reason: "gone".into(),
                },
                r#"{"TaskLost":{"key":{"run_id":"r1","step_id":"a","item":null},"attempt":3,"reason":"gone"}}"#,
            ),
            (
                RunEvent::TaskStarted {
                    key: key(),
                    attempt: 1,
                    node: 2,
                    worker: "w".into(),
                },
                r#"{"TaskStarted":{"key":{"run_id":"r1","step_id":"a","item":null},"attempt":1,"node":2,"worker":"w"}}"#,
            ),
            (
                RunEvent::TimerFired {
                    timer: TimerKey {
                        run_id: "r1".into(),
                        step_id: "w".into(),
                        item: Some(4),
                        purpose: "wait".into(),
                        attempt: 0,
                    },
                },
                r#"{"TimerFired":{"timer":{"run_id":"r1","step_id":"w","item":4,"purpose":"wait","attempt":0}}}"#,
            ),
            (
                RunEvent::Signal {
                    name: "go".into(),
                    payload: json!([1, "x"]),
                },
                r#"{"Signal":{"name":"go","payload":[1,"x"]}}"#,
            ),
            (
                RunEvent::ChildFinished {
                    step_id: "sub".into(),
                    outcome: ChildOutcome::Completed(json!({"n": 1})),
                },
                r#"{"ChildFinished":{"step_id":"sub","outcome":{"Completed":{"n":1}}}}"#,
            ),
            (
                RunEvent::ChildFinished {
                    step_id: "sub".into(),
                    outcome: ChildOutcome::Failed("no".into()),
                },
                r#"{"ChildFinished":{"step_id":"sub","outcome":{"Failed":"no"}}}"#,
            ),
            (
                RunEvent::ChildFinished {
                    step_id: "sub".into(),
                    outcome: ChildOutcome::Cancelled,
                },
                r#"{"ChildFinished":{"step_id":"sub","outcome":"Cancelled"}}"#,
            ),
            (
                RunEvent::Cancel {
                    reason: "stop".into(),
                },
                r#"{"Cancel":{"reason":"stop"}}"#,
            ),
            (RunEvent::Retry, r#""Retry""#),
        ];
        for (event, text) in cases {
            assert_eq!(serde_json::to_string(&event).unwrap(), text);
            assert_eq!(serde_json::from_str::<RunEvent>(text).unwrap(), event);
        }
        // A result written with an explicit `null` worker reads as none.
        let explicit = r#"{"TaskCompleted":{"key":{"run_id":"r1","step_id":"a","item":null},"attempt":1,"output":1,"worker":null}}"#;
        assert!(matches!(
            serde_json::from_str::<RunEvent>(explicit).unwrap(),
            RunEvent::TaskCompleted { worker: None, .. }
        ));
    }

    #[test]
    fn payload_bytes_counts_the_value_text() {
        let event = RunEvent::Signal {
            name: "go".into(),
            payload: json!({"text": "é".repeat(100)}),
        };
        let value_text = serde_json::to_vec(&json!({"text": "é".repeat(100)})).unwrap();
        assert_eq!(event.payload_bytes(), 2 + value_text.len());
        assert_eq!(RunEvent::Retry.payload_bytes(), 0);
    }
}
