//! Operation histories: what each client invoked, when, and how it ended.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

/// How an operation ended, as far as the client can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    /// Definitely not applied (refused before it could be proposed).
    Fail,
    /// May or may not have been applied (timeout, connection lost).
    Unknown,
}

/// What an operation was, with its result when it succeeded.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Op {
    Get {
        key: String,
        observed: Option<String>,
    },
    Put {
        key: String,
        value: String,
    },
    Cas {
        key: String,
        expected: Option<String>,
        new: String,
        succeeded: Option<bool>,
        current: Option<String>,
    },
    /// A put of a fresh key into the "set" keyspace (presence check).
    SetAdd {
        key: String,
    },
    RunStart {
        idempotency_key: String,
        run_id: Option<String>,
    },
}

impl Op {
    pub fn name(&self) -> &'static str {
        match self {
            Op::Get { .. } => "get",
            Op::Put { .. } => "put",
            Op::Cas { .. } => "cas",
            Op::SetAdd { .. } => "set-add",
            Op::RunStart { .. } => "run-start",
        }
    }

    pub fn is_write(&self) -> bool {
        !matches!(self, Op::Get { .. })
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct OpRecord {
    /// The client (logical process) that ran it.
    pub process: usize,
    /// The node the client talks to.
    pub node: u64,
    pub op: Op,
    /// Microseconds since the scenario began.
    pub invoked_us: u64,
    pub completed_us: u64,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl OpRecord {
    pub fn latency_us(&self) -> u64 {
        self.completed_us.saturating_sub(self.invoked_us)
    }
}

/// The scenario's clock: microseconds since it began.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            start: Instant::now(),
        }
    }

    pub fn now_us(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// A history shared by concurrent clients.
#[derive(Clone, Default)]
pub struct History {
    records: Arc<Mutex<Vec<OpRecord>>>,
}

impl History {
    pub fn push(&self, record: OpRecord) {
        // A poisoned lock only means another client panicked mid-push;
        // the vector itself is still consistent.
        let mut records = self
            .records
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        records.push(record);
    }

    pub fn snapshot(&self) -> Vec<OpRecord> {
        let records = self
            .records
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut copy = records.clone();
        copy.sort_by_key(|record| record.invoked_us);
        copy
    }
}

/// Classifies a gRPC error. A status the server sent is trusted: floe
/// answers UNAVAILABLE (and argument/precondition errors) only for requests
/// that were provably not applied, DEADLINE_EXCEEDED when the outcome is
/// unknown. A status made up by the client library (transport broke,
/// client-side timeout) is unknown, unless the connection was never made.
pub fn classify(status: &tonic::Status) -> Outcome {
    use tonic::Code;
    let from_server = status.metadata().get("content-type").is_some();
    if from_server {
        return match status.code() {
            Code::Unavailable
            | Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::NotFound
            | Code::AlreadyExists
            | Code::ResourceExhausted
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::OutOfRange
            | Code::Unimplemented => Outcome::Fail,
            _ => Outcome::Unknown,
        };
    }
    let text = error_text(status);
    let never_connected = [
        "Connection refused",
        "tcp connect error",
        "error trying to connect",
    ]
    .iter()
    .any(|marker| text.contains(marker));
    if never_connected {
        Outcome::Fail
    } else {
        Outcome::Unknown
    }
}

/// The status message with its causes, for records and classification.
pub fn error_text(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut source = std::error::Error::source(status);
    let mut depth = 0;
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
        depth += 1;
        if depth > 8 {
            break;
        }
    }
    text
}
