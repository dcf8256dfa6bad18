//! openraft's state machine over the active data generation: applied log
//! id, membership, snapshots, and the transaction a batch of entries is
//! applied in. What a command does is the [`Applier`]'s business (floe-state).
//!
//! A batch is applied in one sled transaction over the data tree and
//! `sm_meta`, so the applied log id never disagrees with the data, whatever
//! the moment of a crash.

use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftTypeConfig};
use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use sled::Transactional;

use crate::codec;
use crate::error::{run_blocking, StoreError};
use crate::log_store::StoreConfig;
use crate::snapshot::SnapshotFile;
use crate::snapshot_store::SnapshotBuilder;
use crate::state_store::{SledStateTx, StateTx, TxError};
use crate::store::{Shared, KEY_APPLIED, KEY_MEMBERSHIP, KEY_TOMBSTONES, SM_META_TREE};
use crate::types::{LogId, NodeId, SnapshotMeta, StorageError, StoredMembership};

/// Commands refused by an earlier try of a batch, by position (the entry's
/// place in the batch, then places in nested batches), with the reason.
pub type Refusals = BTreeMap<Vec<usize>, String>;

/// Applies the commands of one Raft type configuration. Apply must be
/// deterministic: no clock, no randomness, no I/O but the [`StateTx`].
pub trait Applier: Send + Sync + 'static {
    /// The Raft type configuration whose commands this applies.
    type Config: StoreConfig<R: Default>;
    /// What one try of a batch gathers besides its responses (what it
    /// changed); handed to [`Applier::committed`] once the batch commits.
    type Batch: Default;

    /// Applies the command of the log entry at `index`, the `position`th of
    /// its batch, inside `tx`. A command that cannot be applied for a
    /// reason of its own aborts with [`StoreError::CommandRefused`] naming
    /// its position: the batch is applied again with it in `refused`.
    fn apply(
        &self,
        tx: &dyn StateTx,
        batch: &mut Self::Batch,
        index: u64,
        position: usize,
        command: &<Self::Config as RaftTypeConfig>::D,
        refused: &Refusals,
    ) -> Result<<Self::Config as RaftTypeConfig>::R, TxError>;

    /// Called on the applying thread after a batch committed.
    fn committed(&self, batch: Self::Batch);

    /// Called after a snapshot replaced the whole state.
    fn snapshot_installed(&self);
}

type Response<A> = <<A as Applier>::Config as RaftTypeConfig>::R;
type Entry<A> = openraft::Entry<<A as Applier>::Config>;

/// The state machine half of the store. Cheap to clone.
pub struct StateMachineStore<A> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) applier: Arc<A>,
}

impl<A> Clone for StateMachineStore<A> {
    fn clone(&self) -> Self {
        StateMachineStore {
            shared: Arc::clone(&self.shared),
            applier: Arc::clone(&self.applier),
        }
    }
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

/// The metadata key of the set of node ids removed for good (a
/// `BTreeSet<NodeId>` in the record codec), written by apply.
pub const TOMBSTONES_KEY: &[u8] = KEY_TOMBSTONES;

/// How often one batch may be re-applied without a refused command before
/// apply gives up on it: each retry refuses one more command, so this is
/// far above any batch openraft hands over, and only a bug reaches it.
const MAX_REFUSALS_PER_BATCH: usize = 4096;

fn apply_batch<A: Applier>(
    shared: &Shared,
    applier: &A,
    entries: &[Entry<A>],
) -> Result<Vec<Response<A>>, StoreError> {
    let started = std::time::Instant::now();
    let _writes = shared.lock_writes();
    let (generation, data_tree) = shared.active_while_locked();
    let data_tree_name = crate::store::data_tree_name(generation);
    // A command that cannot be applied aborts the transaction with its
    // position; the batch is then applied again with that command refused,
    // so nothing it wrote is kept and every replica refuses it alike.
    let mut refused = Refusals::new();
    loop {
        let result = (&data_tree, &shared.sm_meta).transaction(|(data, meta)| {
            // May run more than once (sled retries on conflict), so it only
            // reads and writes through the transaction.
            let mut membership: Option<StoredMembership> = None;
            let mut responses = Vec::with_capacity(entries.len());
            let mut batch = A::Batch::default();
            let tx = SledStateTx {
                data,
                meta,
                tree_name: &data_tree_name,
            };
            for (position, entry) in entries.iter().enumerate() {
                let response = match &entry.payload {
                    EntryPayload::Blank => Response::<A>::default(),
                    EntryPayload::Membership(new_membership) => {
                        membership = Some(StoredMembership::new(
                            Some(entry.log_id),
                            new_membership.clone(),
                        ));
                        Response::<A>::default()
                    }
                    EntryPayload::Normal(command) => applier.apply(
                        &tx,
                        &mut batch,
                        entry.log_id.index,
                        position,
                        command,
                        &refused,
                    )?,
                };
                responses.push(response);
            }
            if let Some(last) = entries.last() {
                put_tx(meta, KEY_APPLIED, &last.log_id)?;
            }
            if let Some(membership) = &membership {
                put_tx(meta, KEY_MEMBERSHIP, membership)?;
            }
            Ok((responses, batch))
        });
        match result {
            Ok((responses, batch)) => {
                applier.committed(batch);
                shared
                    .apply_stats
                    .record_batch(started.elapsed(), refused.len());
                return Ok(responses);
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
    .map_err(|error| ConflictableTransactionError::Abort(Box::new(error)))?;
    meta.insert(key, bytes)?;
    Ok(())
}

impl<A: Applier> RaftStateMachine<A::Config> for StateMachineStore<A> {
    type SnapshotBuilder = SnapshotBuilder<A::Config>;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        read_applied_state(&self.shared)
            .map_err(|error| error.into_storage(ErrorSubject::StateMachine, ErrorVerb::Read))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response<A>>, StorageError>
    where
        I: IntoIterator<Item = Entry<A>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<A>> = entries.into_iter().collect();
        let Some(last_log_id) = entries.last().map(|entry| entry.log_id) else {
            return Ok(Vec::new());
        };
        let shared = Arc::clone(&self.shared);
        let applier = Arc::clone(&self.applier);
        let dir = self.shared.dir.clone();
        let responses = run_blocking("apply log entries", move || {
            apply_batch(&shared, applier.as_ref(), &entries)
        })
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
            config: PhantomData,
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
        let applier = Arc::clone(&self.applier);
        let install_meta = meta.clone();
        run_blocking("install snapshot", move || {
            crate::snapshot_store::install(&shared, &install_meta, *snapshot)?;
            applier.snapshot_installed();
            Ok(())
        })
        .await
        .map_err(|error| {
            error.into_storage(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Write,
            )
        })
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<openraft::Snapshot<A::Config>>, StorageError> {
        let shared = Arc::clone(&self.shared);
        run_blocking("read current snapshot", move || {
            crate::snapshot_store::current::<A::Config>(&shared)
        })
        .await
        .map_err(|error| error.into_storage(ErrorSubject::Snapshot(None), ErrorVerb::Read))
    }
}
