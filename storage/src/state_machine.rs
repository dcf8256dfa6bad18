//! The replicated state machine: deterministic apply over the active data generation.
//!
//! Apply is a pure function of (state, entry): no clock, no randomness, no
//! I/O but the store. A batch is applied in one sled transaction over the
//! data tree and `sm_meta`, so the applied log id never disagrees with the
//! data, whatever the moment of a crash.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend};
use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use sled::Transactional;

use crate::codec;
use crate::error::{run_blocking, StoreError};
use crate::keys;
use crate::models;
use crate::runs::{self, DefinitionCache, RunTx, StartRun};
use crate::snapshot::SnapshotFile;
use crate::snapshot_store::SnapshotBuilder;
use crate::store::{Shared, KEY_APPLIED, KEY_MEMBERSHIP, KEY_TOMBSTONES, SM_META_TREE};
use crate::types::{
    Command, CommandResponse, Entry, FlowRecord, KvEntry, LogId, NodeId, Snapshot, SnapshotMeta,
    StorageError, StoredMembership, TypeConfig,
};

/// The state machine half of the store. Cheap to clone.
#[derive(Clone)]
pub struct StateMachineStore {
    pub(crate) shared: Arc<Shared>,
}

use crate::state_store::{SledStateTx, StateTx, TxError};

fn abort(error: StoreError) -> TxError {
    TxError::abort(error)
}

fn abort_meta(error: StoreError) -> ConflictableTransactionError<Box<StoreError>> {
    ConflictableTransactionError::Abort(Box::new(error))
}

fn kv_record_name(tree: &str, key: &str) -> impl Fn() -> String {
    let name = format!("{tree} key {key:?}");
    move || name.clone()
}

/// Reads `applied` and `membership` from `sm_meta`.
pub(crate) fn read_applied_state(
    shared: &Shared,
) -> Result<(Option<LogId>, StoredMembership), StoreError> {
    let applied = Shared::get_record(&shared.sm_meta, SM_META_TREE, KEY_APPLIED)?;
    let membership =
        Shared::get_record(&shared.sm_meta, SM_META_TREE, KEY_MEMBERSHIP)?.unwrap_or_default();
    Ok((applied, membership))
}

pub(crate) fn read_tombstones(shared: &Shared) -> Result<BTreeSet<NodeId>, StoreError> {
    Ok(Shared::get_record(&shared.sm_meta, SM_META_TREE, KEY_TOMBSTONES)?.unwrap_or_default())
}

/// What one transaction attempt changes besides the data itself.
struct BatchOutcome {
    responses: Vec<CommandResponse>,
    changes: crate::changes::AppliedChanges,
}

/// How often one batch may be re-applied without a refused command before
/// apply gives up on it: each retry refuses one more command, so this is
/// far above any batch openraft hands over, and only a bug reaches it.
const MAX_REFUSALS_PER_BATCH: usize = 4096;

fn apply_batch(shared: &Shared, entries: &[Entry]) -> Result<Vec<CommandResponse>, StoreError> {
    let started = std::time::Instant::now();
    let _writes = shared.lock_writes();
    let (generation, data_tree) = shared.active_while_locked();
    let data_tree_name = crate::store::data_tree_name(generation);
    // A command that cannot be applied aborts the transaction with its
    // position; the batch is then applied again with that command refused,
    // so nothing it wrote is kept and every replica refuses it alike.
    let mut refused: BTreeMap<Vec<usize>, String> = BTreeMap::new();
    loop {
        let result = (&data_tree, &shared.sm_meta).transaction(|(data, meta)| {
            // May run more than once (sled retries on conflict), so it only
            // reads and writes through the transaction.
            let mut membership: Option<StoredMembership> = None;
            let mut responses = Vec::with_capacity(entries.len());
            let changes = std::cell::RefCell::new(crate::changes::AppliedChanges::default());
            let state_tx = SledStateTx {
                data,
                meta,
                tree_name: &data_tree_name,
            };
            let apply = ApplyTx {
                tx: &state_tx,
                data_tree_name: &data_tree_name,
                definitions: &shared.definitions,
                changes: &changes,
                refused: &refused,
                budget: std::cell::RefCell::new(floe_engine::run::WorkBudget::for_entry()),
            };
            for (position, entry) in entries.iter().enumerate() {
                // Each entry has a budget of its own, so replicas that get
                // entries in other batches still decide alike.
                *apply.budget.borrow_mut() = floe_engine::run::WorkBudget::for_entry();
                let response = match &entry.payload {
                    EntryPayload::Blank => CommandResponse::Applied,
                    EntryPayload::Membership(new_membership) => {
                        membership = Some(StoredMembership::new(
                            Some(entry.log_id),
                            new_membership.clone(),
                        ));
                        CommandResponse::Applied
                    }
                    EntryPayload::Normal(command) => {
                        apply_command(&apply, entry.log_id.index, &[position], command)?
                    }
                };
                responses.push(response);
            }
            if let Some(last) = entries.last() {
                put_tx(meta, KEY_APPLIED, &last.log_id)?;
            }
            if let Some(membership) = &membership {
                put_tx(meta, KEY_MEMBERSHIP, membership)?;
            }
            Ok(BatchOutcome {
                responses,
                changes: changes.into_inner(),
            })
        });
        match result {
            Ok(outcome) => {
                shared.listeners.publish(&outcome.changes);
                shared
                    .apply_stats
                    .record_batch(started.elapsed(), refused.len());
                return Ok(outcome.responses);
            }
            Err(sled::transaction::TransactionError::Abort(error)) => match *error {
                StoreError::CommandRefused { position, reason }
                    if refused.len() < MAX_REFUSALS_PER_BATCH =>
                {
                    let index = position
                        .first()
                        .and_then(|&at| entries.get(at))
                        .map(|entry| entry.log_id.index);
                    tracing::warn!(log_index = ?index, position = ?position, reason = %reason, "command refused by apply; state unchanged");
                    refused.insert(position, reason);
                }
                other => return Err(other),
            },
            Err(sled::transaction::TransactionError::Storage(error)) => {
                return Err(StoreError::sled("apply log entries", error));
            }
        }
    }
}

fn put_tx<T: serde::Serialize>(
    meta: &TransactionalTree,
    key: &[u8],
    value: &T,
) -> Result<(), ConflictableTransactionError<Box<StoreError>>> {
    let bytes = codec::encode(
        || format!("{SM_META_TREE} {}", String::from_utf8_lossy(key)),
        value,
    )
    .map_err(abort_meta)?;
    meta.insert(key, bytes)?;
    Ok(())
}

/// The transaction's trees and what apply needs besides them.
struct ApplyTx<'a> {
    tx: &'a dyn StateTx,
    data_tree_name: &'a str,
    definitions: &'a DefinitionCache,
    changes: &'a std::cell::RefCell<crate::changes::AppliedChanges>,
    /// Commands an earlier try of this batch could not apply, by position,
    /// with the reason they are refused.
    refused: &'a BTreeMap<Vec<usize>, String>,
    /// What the current entry may still spend on entering steps.
    budget: std::cell::RefCell<floe_engine::run::WorkBudget>,
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
        return Ok(CommandResponse::Unapplied {
            reason: reason.clone(),
        });
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
            Err(err) => Ok(CommandResponse::RunRejected {
                reason: format!("run event for {run_id} is not valid: {err}"),
            }),
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
        Command::NodeSlots { node, offer } => crate::slots::set_node_slots(&runs, *node, offer),
        Command::KvPut { key, value } => {
            let entry = KvEntry {
                value: value.clone(),
                revision: index,
            };
            let bytes =
                codec::encode(kv_record_name(data_tree_name, key), &entry).map_err(abort)?;
            data.insert(&keys::kv(key), bytes)?;
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
                    data.insert(&keys::kv(key), bytes)?;
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
                .map_err(abort)?,
            )?;
            data.insert(&hash_key, encode_version().map_err(abort)?)?;
            data.insert(&keys::flow_latest(name), encode_version().map_err(abort)?)?;
            Ok(CommandResponse::FlowPut {
                version,
                created: true,
            })
        }
        Command::Batch(_) => {
            // apply_command takes batches apart before they get here.
            debug_assert!(false, "a batch reached apply_one");
            Ok(CommandResponse::Unapplied {
                reason: format!("log entry {index}: a batch nested where it is not expected"),
            })
        }
        Command::TombstoneNode { node_id } => {
            // Read and written in the transaction: a later command of the
            // batch sees it.
            let name = || format!("{SM_META_TREE} tombstones");
            let mut tombstones: BTreeSet<NodeId> = match data.get_meta(KEY_TOMBSTONES)? {
                Some(bytes) => codec::decode(name, &bytes).map_err(abort)?,
                None => BTreeSet::new(),
            };
            tombstones.insert(*node_id);
            data.insert_meta(
                KEY_TOMBSTONES,
                codec::encode(name, &tombstones).map_err(abort)?,
            )?;
            Ok(CommandResponse::Applied)
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        read_applied_state(&self.shared)
            .map_err(|error| error.into_storage(ErrorSubject::StateMachine, ErrorVerb::Read))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let Some(last_log_id) = entries.last().map(|entry| entry.log_id) else {
            return Ok(Vec::new());
        };
        let shared = Arc::clone(&self.shared);
        let dir = self.shared.dir.clone();
        let responses = run_blocking("apply log entries", move || apply_batch(&shared, &entries))
            .await
            .map_err(|error| {
                // Only a failing store gets here (commands that cannot be
                // applied are refused instead): say what to do about it.
                tracing::error!(
                    %last_log_id,
                    data_dir = %dir.display(),
                    error = %error,
                    "the store failed while applying entries; the node stops serving. A full or read-only disk: \
                     the node starts again by itself once the data dir takes writes. Otherwise check the disk and \
                     file system under the data dir (permissions, I/O errors in the kernel log) and restart the node; \
                     if its data is damaged, replace the data dir and let the node catch up from the others \
                     (docs/operations.md, \"When apply refuses or stops\")"
                );
                error.into_storage(ErrorSubject::Apply(last_log_id), ErrorVerb::Write)
            })?;
        tracing::trace!(%last_log_id, count = responses.len(), "entries applied");
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: Arc::clone(&self.shared),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, StorageError> {
        let file = SnapshotFile::create_incoming(&self.shared.snapshot_dir())
            .await
            .map_err(|error| {
                StoreError::io("create incoming snapshot file", error)
                    .into_storage(ErrorSubject::Snapshot(None), ErrorVerb::Write)
            })?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotFile>,
    ) -> Result<(), StorageError> {
        let shared = Arc::clone(&self.shared);
        let install_meta = meta.clone();
        run_blocking("install snapshot", move || {
            crate::snapshot_store::install(&shared, &install_meta, *snapshot)
        })
        .await
        .map_err(|error| {
            error.into_storage(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Write,
            )
        })
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let shared = Arc::clone(&self.shared);
        run_blocking("read current snapshot", move || {
            crate::snapshot_store::current(&shared)
        })
        .await
        .map_err(|error| error.into_storage(ErrorSubject::Snapshot(None), ErrorVerb::Read))
    }
}
