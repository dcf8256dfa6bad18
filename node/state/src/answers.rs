//! What apply answers and the plain records it keeps: the `Command` set's
//! response and refusal types, flow versions and key-value entries. Apart
//! from `types.rs`, so the modules that apply commands (runs, slots, models,
//! access) depend on these and `types.rs` on them, never the other way.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What applying one log entry produced.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResponse {
    /// Blank and membership entries, and commands with nothing to report.
    #[default]
    Applied,
    /// A put took effect at `revision` (the log index that applied it).
    Put { revision: u64 },
    /// A delete; `existed` tells whether a value was removed.
    Delete { existed: bool },
    /// A compare-and-set; `current` is the value after the operation.
    Cas {
        succeeded: bool,
        current: Option<Vec<u8>>,
        revision: u64,
    },
    /// A flow definition stored (`created`) or found identical to `version`.
    FlowPut { version: u64, created: bool },
    /// A run was started (`created`) or an earlier run with the same
    /// idempotency key was found; `version` is the flow version it runs.
    RunStarted {
        run_id: String,
        created: bool,
        version: u64,
    },
    /// A run event took effect.
    RunUpdated,
    /// Retention deleted this many runs.
    RunsPurged { purged: u64 },
    /// A run command was refused, changing nothing (unknown flow, bad input,
    /// stale attempt, finished run); the reason names what and where.
    RunRejected { reason: String },
    /// One response per command of a `Command::Batch`, in order.
    Batch(#[serde(deserialize_with = "deserialize_batch")] Vec<CommandResponse>),
    /// A model version stored (`created`) or found identical to `version`.
    ModelPut { version: u64, created: bool },
    /// A command refused, changing nothing it names; the reason says why.
    Refused { reason: String },
    /// A command named something that does not exist (a run start's flow
    /// or flow version); nothing changed.
    Missing { reason: String },
    /// A command apply could not carry out (a record it reads does not
    /// decode, a value it would store does not encode): refused alike on
    /// every replica, nothing changed. The reason names the entry and the
    /// record. (Appended last: a variant's position is its encoding.)
    Unapplied { reason: String },
    /// A command refused by apply, with its kind. Apply answers every
    /// refusal this way; `RunRejected`, `Refused`, `Missing` and `Unapplied`
    /// above are kept for their positions and read through
    /// [`CommandResponse::rejection`]. (Appended last.)
    Rejected(Rejection),
}

impl CommandResponse {
    /// The refusal this response carries, if it is one. The free-text
    /// variants of earlier releases (a leader of the previous release
    /// answering a forwarded write) read as the kind their callers gave
    /// them most often.
    pub fn rejection(&self) -> Option<Rejection> {
        match self {
            CommandResponse::Rejected(rejection) => Some(rejection.clone()),
            CommandResponse::RunRejected { reason } | CommandResponse::Refused { reason } => {
                Some(Rejection::FailedPrecondition(reason.clone()))
            }
            CommandResponse::Missing { reason } => Some(Rejection::NotFound(reason.clone())),
            CommandResponse::Unapplied { reason } => Some(Rejection::Unapplied(reason.clone())),
            _ => None,
        }
    }
}

/// Why apply refused a command. A refused command changes nothing it
/// names (except `ChangeReplicas`, whose other changes still apply). The
/// kind says what a client can do about it; the message names what and
/// where, and is what the client sees.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    /// The command names something that does not exist (a run start's
    /// flow or flow version).
    NotFound(String),
    /// The command itself is not acceptable (a run start's input, a run id
    /// already taken, a start the engine refuses).
    Invalid(String),
    /// The state does not allow it now (a finished run, an unknown task, a
    /// model version not registered or not deployed).
    FailedPrecondition(String),
    /// The command speaks of an attempt that has been superseded.
    Stale(String),
    /// A concurrency limit holds the task back.
    LimitReached(String),
    /// Apply could not carry the command out (a record it reads does not
    /// decode, a value it would store does not encode), alike on every
    /// replica.
    Unapplied(String),
}

impl Rejection {
    /// The message, naming what and where.
    pub fn message(&self) -> &str {
        match self {
            Rejection::NotFound(message)
            | Rejection::Invalid(message)
            | Rejection::FailedPrecondition(message)
            | Rejection::Stale(message)
            | Rejection::LimitReached(message)
            | Rejection::Unapplied(message) => message,
        }
    }

    /// The message, taken out.
    pub fn into_message(self) -> String {
        match self {
            Rejection::NotFound(message)
            | Rejection::Invalid(message)
            | Rejection::FailedPrecondition(message)
            | Rejection::Stale(message)
            | Rejection::LimitReached(message)
            | Rejection::Unapplied(message) => message,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl From<Rejection> for CommandResponse {
    fn from(rejection: Rejection) -> CommandResponse {
        CommandResponse::Rejected(rejection)
    }
}

/// One immutable version of a flow definition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    pub name: String,
    pub version: u64,
    /// sha256 of the canonical definition.
    pub hash: String,
    /// Canonical JSON of the definition.
    pub definition: Vec<u8>,
    pub created_at_ms: u64,
}

/// A stored key-value entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    pub value: Vec<u8>,
    /// Log index of the command that last wrote this key.
    pub revision: u64,
}

/// Deepest nesting of batches a decoded command (or response) may have. The proposer
/// never nests them; the limit is there because decoding (and applying)
/// recurses once per level, and a peer's frame of a few megabytes could
/// otherwise nest batches deep enough to overflow the thread's stack.
pub const MAX_BATCH_NESTING: usize = 8;

thread_local! {
    static BATCH_DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Decodes a batch's commands (or responses), refusing batches nested past
/// [`MAX_BATCH_NESTING`] before decoding deeper.
pub(crate) fn deserialize_batch<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    /// Restores the depth however decoding ends.
    struct Level(usize);
    impl Drop for Level {
        fn drop(&mut self) {
            BATCH_DEPTH.with(|depth| depth.set(self.0));
        }
    }
    let outer = BATCH_DEPTH.with(|depth| depth.get());
    if outer >= MAX_BATCH_NESTING {
        return Err(serde::de::Error::custom(format!(
            "batches nested more than {MAX_BATCH_NESTING} deep"
        )));
    }
    let _level = Level(outer);
    BATCH_DEPTH.with(|depth| depth.set(outer + 1));
    Vec::<T>::deserialize(deserializer)
}
