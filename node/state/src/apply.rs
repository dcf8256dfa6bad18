//! Deterministic apply: what each command does to the state, inside the
//! store's transaction ([`StateTx`]).
//!
//! Apply is a pure function of (state, entry): no clock, no randomness, no
//! I/O but the store. The store (floe-storage) runs a batch of entries in
//! one transaction with the applied log id and applies it again, with the
//! command refused, when a command aborts with `CommandRefused`.

use std::cell::RefCell;
use std::collections::BTreeSet;

use floe_storage::state_machine::{Applier, Refusals, TOMBSTONES_KEY};
use floe_storage::state_store::{StateTx, TxError};
use floe_storage::StoreError;

use crate::changes::{AppliedChanges, Listeners};
use crate::codec;
use crate::keys;
use crate::models;
use crate::runs::{self, DefinitionCache, RunTx, StartRun};
use crate::types::{Command, CommandResponse, FlowRecord, KvEntry, NodeId, Rejection, TypeConfig};

/// The metadata tree's name, for error messages.
const SM_META_TREE: &str = "sm_meta";

/// floe's [`Applier`]: applies [`Command`]s, caches parsed flow
/// definitions, and tells a listener what each committed batch changed.
#[derive(Default)]
pub struct StateApplier {
    definitions: DefinitionCache,
    listeners: Listeners,
}

impl StateApplier {
    /// Tells `listener` what each committed batch of entries changed.
    pub fn on_applied(&self, listener: crate::changes::ChangeListener) {
        self.listeners.set(listener);
    }
}

impl Applier for StateApplier {
    type Config = TypeConfig;
    type Batch = AppliedChanges;

    fn apply(
        &self,
        tx: &dyn StateTx,
        batch: &mut AppliedChanges,
        index: u64,
        position: usize,
        command: &Command,
        refused: &Refusals,
    ) -> Result<CommandResponse, TxError> {
        let changes = RefCell::new(std::mem::take(batch));
        let apply = ApplyTx {
            tx,
            data_tree_name: tx.tree_name(),
            definitions: &self.definitions,
            changes: &changes,
            refused,
            // Each entry has a budget of its own, so replicas that get
            // entries in other batches still decide alike.
            budget: RefCell::new(floe_engine::run::WorkBudget::for_entry()),
        };
        let response = apply_command(&apply, index, &[position], command);
        *batch = changes.into_inner();
        response
    }

    fn committed(&self, batch: AppliedChanges) {
        self.listeners.publish(&batch);
    }

    fn snapshot_installed(&self) {
        self.listeners.publish(&AppliedChanges {
            everything: true,
            ..Default::default()
        });
    }
}

fn abort(error: StoreError) -> TxError {
    TxError::abort(error)
}

/// Names a key-value record in errors; formatted only when one is reported.
fn kv_record_name<'a>(tree: &'a str, key: &'a str) -> impl Fn() -> String + 'a {
    move || format!("{tree} key {key:?}")
}

/// The transaction's trees and what apply needs besides them.
struct ApplyTx<'a> {
    tx: &'a dyn StateTx,
    data_tree_name: &'a str,
    definitions: &'a DefinitionCache,
    changes: &'a RefCell<AppliedChanges>,
    /// Commands an earlier try of this batch could not apply, by position,
    /// with the reason they are refused.
    refused: &'a Refusals,
    /// What the current entry may still spend on entering steps.
    budget: RefCell<floe_engine::run::WorkBudget>,
}

/// Applies one command at `position` (its entry's place in the batch, then
/// its place in nested `Command::Batch`es). A command that fails for a
/// reason of its own (an unreadable record, a value that does not encode, a
/// panic in the engine) aborts the transaction as `CommandRefused`, to be
/// refused on the next try; only storage failures pass through as they are.
fn apply_command(
    apply: &ApplyTx<'_>,
    index: u64,
    position: &[usize],
    command: &Command,
) -> Result<CommandResponse, TxError> {
    if let Some(reason) = apply.refused.get(position) {
        return Ok(Rejection::Unapplied(reason.clone()).into());
    }
    if let Command::Batch(commands) = command {
        let mut responses = Vec::with_capacity(commands.len());
        for (at, command) in commands.iter().enumerate() {
            let mut inner = position.to_vec();
            inner.push(at);
            responses.push(apply_command(apply, index, &inner, command)?);
        }
        return Ok(CommandResponse::Batch(responses));
    }
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        apply_one(apply, index, command)
    }));
    let error = match outcome {
        Ok(Ok(response)) => return Ok(response),
        Ok(Err(TxError::Abort(error))) if !error.is_storage_failure() => error.to_string(),
        Ok(Err(other)) => return Err(other),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|text| text.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_string());
            format!("apply panicked: {message}")
        }
    };
    Err(TxError::abort(StoreError::CommandRefused {
        position: position.to_vec(),
        reason: format!("log entry {index}: {}: {error}; the command was refused and nothing it changed was kept", bounded(&command.to_string())),
    }))
}

/// A command's description, cut short: names in it come from clients.
fn bounded(text: &str) -> String {
    const MAX: usize = 200;
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

fn apply_one(
    apply: &ApplyTx<'_>,
    index: u64,
    command: &Command,
) -> Result<CommandResponse, TxError> {
    let (data, data_tree_name) = (apply.tx, apply.data_tree_name);
    let runs = RunTx {
        data,
        tree_name: data_tree_name,
        definitions: apply.definitions,
        changes: apply.changes,
        budget: &apply.budget,
    };
    match command {
        Command::StartRun {
            run_id,
            flow,
            version,
            input,
            correlation_id,
            idempotency_key,
            at_ms,
        } => {
            let start = StartRun {
                run_id,
                flow,
                version: *version,
                input,
                correlation_id,
                idempotency_key,
                at_ms: *at_ms,
            };
            runs::start_run(&runs, start)
        }
        Command::RunEvent {
            run_id,
            event,
            at_ms,
        } => match serde_json::from_slice::<floe_engine::run::RunEvent>(event) {
            Ok(event) => runs::run_event(&runs, run_id, event, *at_ms),
            Err(err) => Ok(Rejection::FailedPrecondition(format!(
                "run event for {run_id} is not valid: {err}"
            ))
            .into()),
        },
        Command::RunEventTyped {
            run_id,
            event,
            at_ms,
        } => match runs::check_event(run_id, event) {
            Ok(()) => runs::run_event(&runs, run_id, event.clone(), *at_ms),
            Err(rejection) => Ok(rejection.into()),
        },
        Command::AssignTask {
            task,
            attempt,
            node,
            worker,
            at_ms,
        } => runs::assign(&runs, task, *attempt, *node, worker, *at_ms),
        Command::FireTimers { timers, at_ms } => runs::fire_timers(&runs, timers, *at_ms),
        Command::UnassignTask {
            task,
            attempt,
            at_ms,
        } => runs::unassign(&runs, task, *attempt, *at_ms),
        Command::PurgeRuns {
            run_ids,
            finished_before_ms,
        } => runs::purge_runs(&runs, run_ids, *finished_before_ms),
        Command::SetLimit { scope, name, limit } => runs::set_limit(&runs, *scope, name, *limit),
        Command::PutModel {
            name,
            hash,
            size,
            signature,
            at_ms,
        } => models::put_model(&runs, name, hash, *size, signature, *at_ms),
        Command::DeployModel { deployment } => models::deploy(&runs, deployment),
        Command::UndeployModel { name, version } => models::undeploy(&runs, name, *version),
        Command::ChangeReplicas { changes, at_ms } => {
            models::change_replicas(&runs, changes, *at_ms)
        }
        Command::GrantRole { grant } => crate::access::grant(data, grant),
        Command::RevokeRole {
            principal,
            role,
            namespace,
        } => crate::access::revoke(data, principal, *role, namespace.as_deref()),
        Command::CreateToken { token } => crate::access::create_token(data, token),
        Command::RevokeToken { id } => crate::access::revoke_token(data, id),
        Command::NodeSlots { node, offer } => crate::slots::set_node_slots(&runs, *node, offer),
        Command::KvPut { key, value } => {
            let entry = KvEntry {
                value: value.clone(),
                revision: index,
            };
            let bytes =
                codec::encode(kv_record_name(data_tree_name, key), &entry).map_err(abort)?;
            data.insert(&keys::kv(key), bytes.into())?;
            Ok(CommandResponse::Put { revision: index })
        }
        Command::KvDelete { key } => {
            let existed = data.remove(&keys::kv(key))?;
            Ok(CommandResponse::Delete { existed })
        }
        Command::KvCas { key, expected, new } => {
            let current: Option<KvEntry> = match data.get(&keys::kv(key))? {
                Some(bytes) => Some(
                    codec::decode(kv_record_name(data_tree_name, key), &bytes).map_err(abort)?,
                ),
                None => None,
            };
            let current_value = current.as_ref().map(|entry| &entry.value);
            if current_value != expected.as_ref() {
                let revision = current.as_ref().map_or(0, |entry| entry.revision);
                return Ok(CommandResponse::Cas {
                    succeeded: false,
                    current: current.map(|entry| entry.value),
                    revision,
                });
            }
            match new {
                Some(value) => {
                    let entry = KvEntry {
                        value: value.clone(),
                        revision: index,
                    };
                    let bytes = codec::encode(kv_record_name(data_tree_name, key), &entry)
                        .map_err(abort)?;
                    data.insert(&keys::kv(key), bytes.into())?;
                }
                None => {
                    data.remove(&keys::kv(key))?;
                }
            }
            Ok(CommandResponse::Cas {
                succeeded: true,
                current: new.clone(),
                revision: index,
            })
        }
        Command::PutFlow {
            name,
            definition,
            hash,
            at_ms,
        } => {
            let hash_key = keys::flow_hash(name, hash);
            if let Some(bytes) = data.get(&hash_key)? {
                let version: u64 = codec::decode(
                    || format!("{data_tree_name} flow {name} hash {hash}"),
                    &bytes,
                )
                .map_err(abort)?;
                return Ok(CommandResponse::FlowPut {
                    version,
                    created: false,
                });
            }
            let latest: u64 = match data.get(&keys::flow_latest(name))? {
                Some(bytes) => {
                    codec::decode(|| format!("{data_tree_name} flow {name} latest"), &bytes)
                        .map_err(abort)?
                }
                None => 0,
            };
            let version = latest + 1;
            let record = FlowRecord {
                name: name.clone(),
                version,
                hash: hash.clone(),
                definition: definition.clone(),
                created_at_ms: *at_ms,
            };
            let encode_version =
                || codec::encode(|| format!("{data_tree_name} flow {name} version"), &version);
            data.insert(
                &keys::flow_def(name, version),
                codec::encode(
                    || format!("{data_tree_name} flow {name} v{version}"),
                    &record,
                )
                .map_err(abort)?
                .into(),
            )?;
            data.insert(&hash_key, encode_version().map_err(abort)?.into())?;
            data.insert(
                &keys::flow_latest(name),
                encode_version().map_err(abort)?.into(),
            )?;
            Ok(CommandResponse::FlowPut {
                version,
                created: true,
            })
        }
        Command::Batch(_) => {
            // apply_command takes batches apart before they get here.
            debug_assert!(false, "a batch reached apply_one");
            Ok(Rejection::Unapplied(format!(
                "log entry {index}: a batch nested where it is not expected"
            ))
            .into())
        }
        Command::TombstoneNode { node_id } => {
            // Read and written in the transaction: a later command of the
            // batch sees it.
            let name = || format!("{SM_META_TREE} tombstones");
            let mut tombstones: BTreeSet<NodeId> = match data.get_meta(TOMBSTONES_KEY)? {
                Some(bytes) => codec::decode(name, &bytes).map_err(abort)?,
                None => BTreeSet::new(),
            };
            tombstones.insert(*node_id);
            data.insert_meta(
                TOMBSTONES_KEY,
                codec::encode(name, &tombstones).map_err(abort)?.into(),
            )?;
            Ok(CommandResponse::Applied)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ops::Bound;

    use floe_engine::run::{RunEvent, TaskKey};
    use floe_storage::state_store::StateView;
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    use super::*;
    use crate::memory::MemoryState;
    use crate::types::Entry;

    const FLOW: &str = r#"{"name": "chain", "steps": [
        {"id": "a", "type": "task", "block": "noop", "input": "input", "next": "b"},
        {"id": "b", "type": "task", "block": "noop", "input": "steps.a.output"}]}"#;

    fn commands() -> Vec<Command> {
        let task_a = TaskKey {
            run_id: "r1".into(),
            step_id: "a".into(),
            item: None,
        };
        let completed = RunEvent::TaskCompleted {
            key: task_a.clone(),
            attempt: 1,
            output: serde_json::json!({"ok": true}),
            worker: Some("w1".into()),
        };
        vec![
            Command::PutFlow {
                name: "chain".into(),
                definition: FLOW.as_bytes().to_vec(),
                hash: "hash-1".into(),
                at_ms: 1,
            },
            Command::StartRun {
                run_id: "r1".into(),
                flow: "chain".into(),
                version: 0,
                input: br#"{"n": 1}"#.to_vec(),
                correlation_id: "c1".into(),
                idempotency_key: "k1".into(),
                at_ms: 2,
            },
            Command::AssignTask {
                task: task_a.to_string(),
                attempt: 1,
                node: 2,
                worker: "w1".into(),
                at_ms: 3,
            },
            Command::RunEvent {
                run_id: "r1".into(),
                event: serde_json::to_vec(&completed).unwrap(),
                at_ms: 4,
            },
            Command::KvPut {
                key: "greeting".into(),
                value: b"hello".to_vec(),
            },
            Command::TombstoneNode { node_id: 9 },
        ]
    }

    /// Applies `commands` to a fresh in-memory store, one entry each.
    fn apply_in_memory(commands: &[Command]) -> (Vec<CommandResponse>, MemoryState) {
        let applier = StateApplier::default();
        let memory = MemoryState::default();
        let mut responses = Vec::new();
        for (at, command) in commands.iter().enumerate() {
            let index = at as u64 + 1;
            let response = memory
                .transaction(|tx| {
                    applier.apply(
                        tx,
                        &mut AppliedChanges::default(),
                        index,
                        0,
                        command,
                        &Refusals::new(),
                    )
                })
                .unwrap();
            responses.push(response);
        }
        (responses, memory)
    }

    /// Events through a run's life: a result, a failure that fails the
    /// run, a retry, a signal nobody waits for, a cancel.
    fn run_events() -> Vec<(String, RunEvent)> {
        let key = |step: &str| TaskKey {
            run_id: "r1".into(),
            step_id: step.into(),
            item: None,
        };
        vec![
            (
                "r1".into(),
                RunEvent::TaskCompleted {
                    key: key("a"),
                    attempt: 1,
                    output: serde_json::json!({"text": "\u{e9}t\u{e9}", "n": u64::MAX}),
                    worker: Some("w1".into()),
                },
            ),
            (
                "r1".into(),
                RunEvent::TaskFailed {
                    key: key("b"),
                    attempt: 1,
                    failure: floe_engine::run::TaskFailure {
                        error: "bad input".into(),
                        retryable: false,
                    },
                    worker: None,
                },
            ),
            ("r1".into(), RunEvent::Retry),
            (
                "r1".into(),
                RunEvent::Signal {
                    name: "go".into(),
                    payload: serde_json::json!([1.5, null]),
                },
            ),
            (
                "r1".into(),
                RunEvent::Cancel {
                    reason: "enough".into(),
                },
            ),
            ("r9".into(), RunEvent::Retry),
        ]
    }

    fn with_events(typed: bool) -> Vec<Command> {
        let mut commands: Vec<Command> = commands()
            .into_iter()
            .filter(|command| !matches!(command, Command::RunEvent { .. }))
            .collect();
        for (at, (run_id, event)) in run_events().into_iter().enumerate() {
            let at_ms = 10 + at as u64;
            commands.push(if typed {
                Command::RunEventTyped {
                    run_id,
                    event,
                    at_ms,
                }
            } else {
                Command::RunEvent {
                    run_id,
                    event: serde_json::to_vec(&event).unwrap(),
                    at_ms,
                }
            });
        }
        commands
    }

    /// The JSON variant (logs of earlier releases) still applies, and the
    /// typed one leaves the same records and answers.
    #[test]
    fn typed_and_json_events_give_the_same_state() {
        let (json_responses, json_state) = apply_in_memory(&with_events(false));
        let (typed_responses, typed_state) = apply_in_memory(&with_events(true));
        assert_eq!(json_responses, typed_responses);
        assert_eq!(json_state.records(), typed_state.records());
        // The events took effect: the result and the failure were applied,
        // the unknown run was refused.
        let events = &json_responses[json_responses.len() - run_events().len()..];
        assert_eq!(events[0], CommandResponse::RunUpdated);
        assert_eq!(events[1], CommandResponse::RunUpdated);
        assert!(
            matches!(
                events[5],
                CommandResponse::Rejected(Rejection::FailedPrecondition(_))
            ),
            "{:?}",
            events[5]
        );
    }

    /// A typed event whose task names another run, or whose value nests
    /// past the limit, is refused as invalid and changes nothing.
    #[test]
    fn typed_events_that_fail_their_checks_are_refused() {
        let mut nested = serde_json::json!(1);
        for _ in 0..floe_engine::limits::MAX_VALUE_DEPTH {
            nested = serde_json::json!([nested]);
        }
        let too_deep = serde_json::json!([nested.clone()]);
        let refused = [
            RunEvent::TaskCompleted {
                key: TaskKey {
                    run_id: "r2".into(),
                    step_id: "a".into(),
                    item: None,
                },
                attempt: 1,
                output: serde_json::json!(1),
                worker: None,
            },
            RunEvent::Signal {
                name: "go".into(),
                payload: too_deep,
            },
        ];
        let (_, before) = apply_in_memory(&commands()[..3]);
        for event in refused {
            let mut sequence = commands()[..3].to_vec();
            sequence.push(Command::RunEventTyped {
                run_id: "r1".into(),
                event,
                at_ms: 9,
            });
            let (responses, after) = apply_in_memory(&sequence);
            assert!(
                matches!(&responses[3], CommandResponse::Rejected(Rejection::Invalid(message)) if message.contains("r1")),
                "{:?}",
                responses[3]
            );
            assert_eq!(after.records(), before.records());
        }
        // At the limit it reaches the run (which waits on no signal).
        let mut sequence = commands()[..3].to_vec();
        sequence.push(Command::RunEventTyped {
            run_id: "r1".into(),
            event: RunEvent::Signal {
                name: "go".into(),
                payload: nested,
            },
            at_ms: 9,
        });
        let (responses, _) = apply_in_memory(&sequence);
        assert!(
            !matches!(
                responses[3],
                CommandResponse::Rejected(Rejection::Invalid(_))
            ),
            "{:?}",
            responses[3]
        );
    }

    /// The same commands over the in-memory store and over sled leave the
    /// same records and answer alike: apply needs nothing but the interface.
    #[tokio::test]
    async fn apply_gives_the_same_state_over_memory_and_sled() {
        let applier = StateApplier::default();
        let memory = MemoryState::default();
        let mut memory_responses = Vec::new();
        for (at, command) in commands().into_iter().enumerate() {
            let index = at as u64 + 1;
            let response = memory
                .transaction(|tx| {
                    applier.apply(
                        tx,
                        &mut AppliedChanges::default(),
                        index,
                        0,
                        &command,
                        &Refusals::new(),
                    )
                })
                .unwrap();
            memory_responses.push(response);
        }

        let dir = tempfile::tempdir().unwrap();
        let store = crate::Store::open(dir.path(), Default::default()).unwrap();
        let mut state_machine = store.state_machine();
        let entries: Vec<Entry> = commands()
            .into_iter()
            .enumerate()
            .map(|(at, command)| Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), at as u64 + 1),
                payload: EntryPayload::Normal(command),
            })
            .collect();
        let mut sled_responses = Vec::new();
        // One entry per batch, like the memory side's one transaction each.
        for entry in entries {
            sled_responses.extend(state_machine.apply([entry]).await.unwrap());
        }
        let view = store.storage().data_view();
        let sled_records: Vec<(Vec<u8>, Vec<u8>)> = view
            .range((Bound::Unbounded, Bound::Unbounded))
            .map(|item| {
                let (key, value) = item.unwrap();
                (key.to_vec(), value.to_vec())
            })
            .collect();
        drop(view);

        assert_eq!(memory_responses, sled_responses);
        assert!(matches!(
            memory_responses[1],
            CommandResponse::RunStarted { created: true, .. }
        ));
        assert_eq!(memory_responses[2], CommandResponse::RunUpdated);
        assert_eq!(memory_responses[3], CommandResponse::RunUpdated);
        assert_eq!(memory.records(), sled_records);
        let keys: Vec<String> = sled_records
            .iter()
            .map(|(key, _)| String::from_utf8_lossy(key).into_owned())
            .collect();
        for expected in ["kv/greeting", "flow/def/chain", "run/r1", "idem/k1"] {
            assert!(
                keys.iter().any(|key| key.starts_with(expected)),
                "no {expected} among {keys:?}"
            );
        }
        assert!(store.reader().is_tombstoned(9).unwrap());
    }
}
