//! The Raft type configuration and the replicated command set.
//!
//! Everything that crosses the Raft log is defined here (node ids and
//! addresses in floe-storage), so the log store, the state machine and the
//! transport agree on one set of types. A variant's position in `Command`
//! and `CommandResponse` is its encoding in the log: only ever append.

use std::fmt;

use serde::{Deserialize, Serialize};

pub use crate::answers::{CommandResponse, FlowRecord, KvEntry, Rejection, MAX_BATCH_NESTING};
pub use floe_storage::types::{
    LogId, NodeId, NodeInfo, SnapshotMeta, StorageError, StoredMembership, Vote,
};

/// A command proposed by the leader and applied on every node.
///
/// Anything non-deterministic is decided by the proposer and carried inside
/// the command, so apply stays a pure function of (state, command).
/// Byte fields are serde bytes: in bincode the same length-then-bytes form
/// as a plain `Vec<u8>`, so stored logs read unchanged, but decoded at once
/// instead of byte by byte.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Set `key` to `value`.
    KvPut {
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Remove `key`; a missing key is not an error.
    KvDelete { key: String },
    /// Atomically replace `key`'s value when its current value equals
    /// `expected` (`None` = the key must be absent). `new = None` deletes.
    KvCas {
        key: String,
        #[serde(with = "serde_bytes")]
        expected: Option<Vec<u8>>,
        #[serde(with = "serde_bytes")]
        new: Option<Vec<u8>>,
    },
    /// Records that a node left the membership for good; its id is never
    /// accepted again.
    TombstoneNode { node_id: NodeId },
    /// Stores a validated flow definition (canonical JSON, content hash
    /// computed by the proposer). An identical definition returns its
    /// existing version; a changed one gets the next. `at_ms` is the
    /// proposer's clock, recorded as the creation time.
    PutFlow {
        name: String,
        #[serde(with = "serde_bytes")]
        definition: Vec<u8>,
        hash: String,
        at_ms: u64,
    },
    /// Starts a run of `flow` at `version`; version 0 means the flow's
    /// latest version when the entry applies, so a start needs no read
    /// beforehand to stay linearizable. `input` is JSON. A repeated non-empty idempotency key returns the run
    /// it started first.
    StartRun {
        run_id: String,
        flow: String,
        version: u64,
        #[serde(with = "serde_bytes")]
        input: Vec<u8>,
        correlation_id: String,
        idempotency_key: String,
        at_ms: u64,
    },
    /// Feeds one event to a run; `event` is a JSON `floe_engine::run::RunEvent`.
    /// Written by earlier releases: still applied, no longer proposed
    /// (see `RunEventTyped`).
    RunEvent {
        run_id: String,
        #[serde(with = "serde_bytes")]
        event: Vec<u8>,
        at_ms: u64,
    },
    /// The scheduler's placement of a task's current attempt on a node.
    AssignTask {
        task: String,
        attempt: u32,
        node: NodeId,
        worker: String,
        at_ms: u64,
    },
    /// Returns a placed task's current attempt to the queue (its node has no
    /// worker for it any more); the attempt is not consumed.
    UnassignTask {
        task: String,
        attempt: u32,
        at_ms: u64,
    },
    /// Retention: deletes these runs (by address text, a default run's id)
    /// if they finished at or before `finished_before_ms` (picked by the
    /// leader from the finish index).
    PurgeRuns {
        run_ids: Vec<String>,
        finished_before_ms: u64,
    },
    /// Timers the leader found due at `at_ms` (by timer key text).
    FireTimers { timers: Vec<String>, at_ms: u64 },
    /// Several client commands proposed as one entry (proposal batching),
    /// applied in order; they share the entry's log index as revision.
    Batch(#[serde(deserialize_with = "crate::answers::deserialize_batch")] Vec<Command>),
    /// Sets (`Some`) or clears (`None`) a cluster-wide concurrency limit:
    /// at most `limit` tasks of the block type or flow placed at once.
    /// (Appended last: a variant's position is its encoding in the log.)
    SetLimit {
        scope: crate::runs::LimitScope,
        name: String,
        limit: Option<u32>,
    },
    /// Registers a model artifact already stored as blob `hash` (checked
    /// by loading it on the proposing node); `signature` is JSON. The same
    /// artifact again returns its existing version.
    PutModel {
        name: String,
        hash: String,
        size: u64,
        #[serde(with = "serde_bytes")]
        signature: Vec<u8>,
        at_ms: u64,
    },
    /// Creates or changes a deployment (changed settings rebuild its replicas).
    DeployModel {
        deployment: crate::models::Deployment,
    },
    /// Removes a deployment and its replicas.
    UndeployModel { name: String, version: u64 },
    /// The leader's replica placements, moves and evictions.
    ChangeReplicas {
        changes: Vec<crate::models::ReplicaChange>,
        at_ms: u64,
    },
    /// The slots a node offers to placement inside apply (`slots.rs`); an
    /// empty offer withdraws it (a silent node).
    NodeSlots {
        node: NodeId,
        offer: crate::slots::NodeSlots,
    },
    /// Feeds one event to a run, carried typed (values inside it as their
    /// JSON text). What nodes propose; a node of a release before it cannot
    /// read it. (Appended last: a variant's position is its encoding.)
    RunEventTyped {
        run_id: String,
        event: floe_engine::run::RunEvent,
        at_ms: u64,
    },
    /// Grants a role to a principal (`access.rs`), replacing the same grant.
    GrantRole { grant: crate::access::Grant },
    /// Takes one grant back; answers whether it was there.
    RevokeRole {
        principal: String,
        role: crate::access::Role,
        namespace: Option<String>,
    },
    /// Stores a new API token (its secret hashed by the proposer).
    CreateToken { token: crate::access::TokenRecord },
    /// Removes an API token; answers whether it was there.
    RevokeToken { id: String },
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::KvPut { key, value } => write!(f, "kv-put {key} ({} bytes)", value.len()),
            Command::KvDelete { key } => write!(f, "kv-delete {key}"),
            Command::KvCas { key, .. } => write!(f, "kv-cas {key}"),
            Command::TombstoneNode { node_id } => write!(f, "tombstone-node {node_id}"),
            Command::Batch(commands) => write!(f, "batch of {}", commands.len()),
            Command::PutFlow { name, hash, .. } => write!(f, "put-flow {name} ({hash})"),
            Command::StartRun {
                run_id,
                flow,
                version,
                ..
            } => write!(f, "start-run {run_id} ({flow} v{version})"),
            Command::RunEvent { run_id, .. } | Command::RunEventTyped { run_id, .. } => {
                write!(f, "run-event {run_id}")
            }
            Command::AssignTask {
                task,
                attempt,
                node,
                ..
            } => write!(f, "assign-task {task}#{attempt} to node {node}"),
            Command::FireTimers { timers, .. } => write!(f, "fire {} timers", timers.len()),
            Command::UnassignTask { task, attempt, .. } => {
                write!(f, "unassign-task {task}#{attempt}")
            }
            Command::PurgeRuns { run_ids, .. } => write!(f, "purge {} runs", run_ids.len()),
            Command::SetLimit { scope, name, limit } => {
                write!(f, "set-limit {} {name} {limit:?}", scope.name())
            }
            Command::PutModel { name, hash, .. } => write!(f, "put-model {name} ({hash})"),
            Command::DeployModel { deployment } => write!(
                f,
                "deploy-model {} v{}",
                deployment.model, deployment.version
            ),
            Command::UndeployModel { name, version } => {
                write!(f, "undeploy-model {name} v{version}")
            }
            Command::ChangeReplicas { changes, .. } => {
                write!(f, "change {} model replicas", changes.len())
            }
            Command::NodeSlots { node, offer } => {
                write!(f, "node-slots {node} ({} blocks)", offer.slots.len())
            }
            Command::GrantRole { grant } => write!(
                f,
                "grant {} to {} in {}",
                grant.role.name(),
                grant.principal,
                grant.namespace.as_deref().unwrap_or("the cluster")
            ),
            Command::CreateToken { token } => {
                write!(f, "create-token {} for {}", token.id, token.principal)
            }
            Command::RevokeToken { id } => write!(f, "revoke-token {id}"),
            Command::RevokeRole {
                principal,
                role,
                namespace,
            } => write!(
                f,
                "revoke {} from {principal} in {}",
                role.name(),
                namespace.as_deref().unwrap_or("the cluster")
            ),
        }
    }
}

openraft::declare_raft_types!(
    /// floe's Raft type configuration.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = floe_storage::snapshot::SnapshotFile,
        AsyncRuntime = openraft::TokioRuntime,
        Responder = openraft::impls::OneshotResponder<TypeConfig>,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
/// The store's log half for floe's commands.
pub type LogStore = floe_storage::LogStore<TypeConfig>;

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte fields' encoding before they became serde bytes; the
    /// variants mirror `Command`'s first three (their position is their tag).
    #[allow(clippy::enum_variant_names)]
    #[derive(Serialize)]
    enum PlainCommand {
        KvPut {
            key: String,
            value: Vec<u8>,
        },
        KvDelete {
            key: String,
        },
        KvCas {
            key: String,
            expected: Option<Vec<u8>>,
            new: Option<Vec<u8>>,
        },
    }

    #[test]
    fn byte_fields_keep_the_stored_log_format() {
        let value = (0..=255u8).collect::<Vec<u8>>();
        let pairs = [
            (
                crate::codec::encode(
                    || "x".into(),
                    &Command::KvPut {
                        key: "k".into(),
                        value: value.clone(),
                    },
                )
                .unwrap(),
                crate::codec::encode(
                    || "x".into(),
                    &PlainCommand::KvPut {
                        key: "k".into(),
                        value: value.clone(),
                    },
                )
                .unwrap(),
            ),
            (
                crate::codec::encode(
                    || "x".into(),
                    &Command::KvCas {
                        key: "k".into(),
                        expected: None,
                        new: Some(value.clone()),
                    },
                )
                .unwrap(),
                crate::codec::encode(
                    || "x".into(),
                    &PlainCommand::KvCas {
                        key: "k".into(),
                        expected: None,
                        new: Some(value.clone()),
                    },
                )
                .unwrap(),
            ),
        ];
        for (new, plain) in pairs {
            assert_eq!(new, plain);
            let _: Command = crate::codec::decode(|| "x".into(), &plain).unwrap();
        }
        let _ = PlainCommand::KvDelete { key: String::new() };
    }

    /// Forwarded writes carry responses between nodes: the variants of
    /// earlier releases keep their tags, the typed refusal comes after them.
    #[test]
    fn response_tags_are_stable() {
        // As the peer API encodes them (bincode, standard config).
        let encode = |response: &CommandResponse| {
            bincode::serde::encode_to_vec(response, bincode::config::standard()).unwrap()
        };
        let tag = |response: &CommandResponse| encode(response)[0];
        let reason = || "r".to_string();
        assert_eq!(tag(&CommandResponse::RunRejected { reason: reason() }), 8);
        assert_eq!(tag(&CommandResponse::Refused { reason: reason() }), 11);
        assert_eq!(tag(&CommandResponse::Missing { reason: reason() }), 12);
        assert_eq!(tag(&CommandResponse::Unapplied { reason: reason() }), 13);
        let rejected = CommandResponse::Rejected(Rejection::Stale(reason()));
        assert_eq!(tag(&rejected), 14);
        let (decoded, _): (CommandResponse, usize) =
            bincode::serde::decode_from_slice(&encode(&rejected), bincode::config::standard())
                .unwrap();
        assert_eq!(decoded, rejected);
    }

    fn nested_batch(levels: usize) -> Command {
        let mut command = Command::KvDelete { key: "k".into() };
        for _ in 0..levels {
            command = Command::Batch(vec![command]);
        }
        command
    }

    fn decode_command(bytes: &[u8]) -> Result<Command, bincode::error::DecodeError> {
        bincode::serde::decode_from_slice(bytes, bincode::config::standard()).map(|(c, _)| c)
    }

    /// Batches nest at most MAX_BATCH_NESTING deep when decoded; a deeper
    /// nesting (one from a peer's frame of a million levels overflowed the
    /// stack) is refused, and the depth count starts afresh afterwards.
    #[test]
    fn batches_nested_past_the_limit_are_refused_when_decoded() {
        let standard = bincode::config::standard();
        let deepest = nested_batch(MAX_BATCH_NESTING);
        let bytes = bincode::serde::encode_to_vec(&deepest, standard).unwrap();
        assert_eq!(decode_command(&bytes).unwrap(), deepest);
        let deeper =
            bincode::serde::encode_to_vec(nested_batch(MAX_BATCH_NESTING + 1), standard).unwrap();
        let error = decode_command(&deeper).unwrap_err().to_string();
        assert!(error.contains("batches nested more than 8 deep"), "{error}");
        // Batch's tag then a length of one, a million times over: 2 MB.
        let mut hostile = [11u8, 1].repeat(1_000_000);
        hostile.extend(
            bincode::serde::encode_to_vec(Command::KvDelete { key: "k".into() }, standard).unwrap(),
        );
        assert!(decode_command(&hostile).is_err());
        assert_eq!(decode_command(&bytes).unwrap(), deepest);
        // Responses to batches nest the same way.
        let tag =
            bincode::serde::encode_to_vec(CommandResponse::Batch(Vec::new()), standard).unwrap()[0];
        let mut hostile = [tag, 1].repeat(1_000_000);
        hostile.extend(bincode::serde::encode_to_vec(CommandResponse::Applied, standard).unwrap());
        let decoded: Result<(CommandResponse, usize), _> =
            bincode::serde::decode_from_slice(&hostile, standard);
        assert!(decoded.is_err());
    }
}
