//! floe's store: floe-storage's sled store with floe's applier, handing
//! out the openraft halves for [`TypeConfig`] and the API's read handle.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use floe_storage::{ApplyStats, FlushStats, StoreError, StoreOptions};

use crate::apply::StateApplier;
use crate::changes::ChangeListener;
use crate::reader::StateReader;
use crate::types::{LogStore, NodeId, TypeConfig};

/// The state machine half for floe's commands.
pub type StateMachineStore = floe_storage::StateMachineStore<StateApplier>;

/// One node's open store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    storage: floe_storage::Store,
    applier: Arc<StateApplier>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("storage", &self.storage)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the store in `dir` (`floe_storage::Store::open`).
    /// Blocking: call at startup or from a blocking thread.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        Ok(Store {
            storage: floe_storage::Store::open(dir, options)?,
            applier: Arc::new(StateApplier::default()),
        })
    }

    /// The sled store underneath.
    pub fn storage(&self) -> &floe_storage::Store {
        &self.storage
    }

    /// The Raft log half, for `openraft::Raft::new`.
    pub fn log_store(&self) -> LogStore {
        self.storage.log_store::<TypeConfig>()
    }

    /// The state machine half, for `openraft::Raft::new`.
    pub fn state_machine(&self) -> StateMachineStore {
        self.storage.state_machine(Arc::clone(&self.applier))
    }

    /// Tells `listener` what each committed batch of entries changed.
    pub fn on_applied(&self, listener: ChangeListener) {
        self.applier.on_applied(listener);
    }

    /// A cheap, clonable read handle on the applied state.
    pub fn reader(&self) -> StateReader {
        StateReader {
            store: self.storage.clone(),
        }
    }

    /// Where snapshot files live; incoming snapshots are created here too.
    pub fn snapshot_dir(&self) -> PathBuf {
        self.storage.snapshot_dir()
    }

    /// The data directory this store was opened in.
    pub fn dir(&self) -> &Path {
        self.storage.dir()
    }

    /// Whether this node ever took part in a Raft group; such a node must
    /// never bootstrap a new cluster.
    pub fn has_raft_state(&self) -> Result<bool, StoreError> {
        self.storage.has_raft_state()
    }

    /// Binds this data directory to `node_id` in the cluster identified by
    /// `cluster_fingerprint` (`floe_storage::Store::claim_identity`).
    pub fn claim_identity(
        &self,
        node_id: NodeId,
        cluster_fingerprint: &str,
    ) -> Result<(), StoreError> {
        self.storage.claim_identity(node_id, cluster_fingerprint)
    }

    /// Flush latency statistics, for `/metrics`.
    pub fn flush_stats(&self) -> FlushStats {
        self.storage.flush_stats()
    }

    /// Apply durations and refused commands, for `/metrics`.
    pub fn apply_stats(&self) -> ApplyStats {
        self.storage.apply_stats()
    }
}
