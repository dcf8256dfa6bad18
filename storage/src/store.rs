//! Opening the database and sharing it between the log, the state machine and readers.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::StoreError;
use crate::group_commit::GroupCommit;
use crate::log_store::LogStore;
use crate::metrics::{ApplyStats, FlushStats};
use crate::snapshot::INCOMING_PREFIX;
use crate::state_machine::{read_applied_state, read_tombstones, Applier, StateMachineStore};
use crate::state_store::DataView;
use crate::types::{LogId, NodeId, StoredMembership};

pub(crate) const LOG_TREE: &str = "log";
pub(crate) const RAFT_META_TREE: &str = "raft_meta";
pub(crate) const SM_META_TREE: &str = "sm_meta";
pub(crate) const IDENTITY_TREE: &str = "identity";
pub(crate) const SM_DATA_PREFIX: &str = "sm_data_";

pub(crate) const KEY_VOTE: &[u8] = b"vote";
pub(crate) const KEY_COMMITTED: &[u8] = b"committed";
pub(crate) const KEY_LAST_PURGED: &[u8] = b"last_purged";
pub(crate) const KEY_APPLIED: &[u8] = b"applied";
pub(crate) const KEY_MEMBERSHIP: &[u8] = b"membership";
pub(crate) const KEY_GENERATION: &[u8] = b"generation";
pub(crate) const KEY_TOMBSTONES: &[u8] = b"tombstones";

/// How the store is opened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreOptions {
    /// sled page cache size in bytes. Default 32 MiB, sized for edge boxes;
    /// raise it on larger machines with big state.
    pub cache_capacity_bytes: u64,
    /// Interval of sled's background flush in milliseconds. Default 500.
    /// Acknowledged writes never depend on it: appends, votes, truncates and
    /// purges flush explicitly before they return.
    pub background_flush_ms: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_capacity_bytes: 32 * 1024 * 1024,
            background_flush_ms: 500,
        }
    }
}

/// The active key-value generation; replaced whole by a snapshot install.
pub(crate) struct DataGeneration {
    pub(crate) generation: u64,
    pub(crate) data: sled::Tree,
}

/// State shared by every handle of one open store.
pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    pub(crate) db: sled::Db,
    pub(crate) log: sled::Tree,
    pub(crate) raft_meta: sled::Tree,
    pub(crate) sm_meta: sled::Tree,
    pub(crate) identity: sled::Tree,
    /// Serializes state changes: applies and installs write-lock it;
    /// snapshot builds and digests read-lock it for one consistent view.
    pub(crate) writes: RwLock<()>,
    /// Which data tree is active. Held only briefly (a read, or the swap at
    /// the end of an install), so API readers never wait for a snapshot build.
    pub(crate) active: RwLock<DataGeneration>,
    /// Serializes changes to the set of snapshot files (build, install,
    /// pick current). Taken before `state` when both are needed.
    pub(crate) snapshot_files: Mutex<()>,
    pub(crate) flush_stats: FlushStats,
    pub(crate) apply_stats: ApplyStats,
    pub(crate) group_commit: GroupCommit,
}

impl Shared {
    pub(crate) fn snapshot_dir(&self) -> PathBuf {
        self.dir.join("snapshots")
    }

    /// Flushes everything written so far to disk, recording its latency.
    pub(crate) async fn flush(&self, what: &str) -> Result<(), StoreError> {
        let started = Instant::now();
        self.db
            .flush_async()
            .await
            .map_err(|error| StoreError::sled(format!("flush after {what}"), error))?;
        self.flush_stats.record(started.elapsed());
        Ok(())
    }

    /// Blocking flush, for code already on a blocking thread.
    pub(crate) fn flush_blocking(&self, what: &str) -> Result<(), StoreError> {
        let started = Instant::now();
        self.db
            .flush()
            .map_err(|error| StoreError::sled(format!("flush after {what}"), error))?;
        self.flush_stats.record(started.elapsed());
        Ok(())
    }

    // These locks guard no data of their own (sled transactions are atomic),
    // so a lock poisoned by a panic is still safe to use.
    // Lock order: `snapshot_files`, then `writes`, then `active`.
    pub(crate) fn lock_writes(&self) -> RwLockWriteGuard<'_, ()> {
        self.writes
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn lock_consistent_view(&self) -> RwLockReadGuard<'_, ()> {
        self.writes
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The active tree; hold the guard while reading it, since an install
    /// drops the previous tree right after swapping.
    pub(crate) fn read_active(&self) -> RwLockReadGuard<'_, DataGeneration> {
        self.active
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The active generation and tree, for a holder of the `writes` lock
    /// (which keeps it from changing).
    pub(crate) fn active_while_locked(&self) -> (u64, sled::Tree) {
        let active = self.read_active();
        (active.generation, active.data.clone())
    }

    /// A read view of the active data tree, holding it while it lives.
    pub(crate) fn data_view(&self) -> DataView<'_> {
        let active = self.read_active();
        let tree_name = data_tree_name(active.generation);
        DataView { active, tree_name }
    }

    pub(crate) fn swap_active(&self, new: DataGeneration) -> DataGeneration {
        let mut active = self
            .active
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        std::mem::replace(&mut *active, new)
    }

    pub(crate) fn lock_snapshot_files(&self) -> MutexGuard<'_, ()> {
        self.snapshot_files
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn get_record<T: serde::de::DeserializeOwned>(
        tree: &sled::Tree,
        tree_name: &str,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        let name = || format!("{tree_name} {}", String::from_utf8_lossy(key));
        let Some(bytes) = tree
            .get(key)
            .map_err(|error| StoreError::sled(format!("read {}", name()), error))?
        else {
            return Ok(None);
        };
        codec::decode(name, &bytes).map(Some)
    }
}

/// One node's open store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

pub(crate) fn data_tree_name(generation: u64) -> String {
    format!("{SM_DATA_PREFIX}{generation}")
}

impl Store {
    /// Opens (or creates) the store in `dir`. Blocking: call at startup or
    /// from a blocking thread.
    ///
    /// Cleans up what a crash may have left: data generations other than
    /// the active one, and snapshot files that were being built or received.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|error| StoreError::io(format!("create data dir {}", dir.display()), error))?;
        let db_path = dir.join("db");
        let db = open_sled(&db_path, &options)?;
        let open_tree = |name: &str| {
            db.open_tree(name)
                .map_err(|error| StoreError::sled(format!("open tree {name}"), error))
        };
        let log = open_tree(LOG_TREE)?;
        let raft_meta = open_tree(RAFT_META_TREE)?;
        let sm_meta = open_tree(SM_META_TREE)?;
        let identity = open_tree(IDENTITY_TREE)?;

        let generation: u64 =
            Shared::get_record(&sm_meta, SM_META_TREE, KEY_GENERATION)?.unwrap_or(0);
        let active_name = data_tree_name(generation);
        drop_stale_generations(&db, &active_name)?;
        let data = open_tree(&active_name)?;

        let flush_stats = FlushStats::default();
        let group_commit = GroupCommit::start(db.clone(), flush_stats.clone())
            .map_err(|error| StoreError::io("start the log flusher thread", error))?;
        let shared = Shared {
            dir: dir.to_path_buf(),
            db,
            log,
            raft_meta,
            sm_meta,
            identity,
            writes: RwLock::new(()),
            active: RwLock::new(DataGeneration { generation, data }),
            snapshot_files: Mutex::new(()),
            flush_stats,
            apply_stats: ApplyStats::default(),
            group_commit,
        };
        remove_partial_snapshot_files(&shared.snapshot_dir())?;
        tracing::info!(dir = %dir.display(), generation, "store opened");
        Ok(Store {
            shared: Arc::new(shared),
        })
    }

    /// The Raft log half, for `openraft::Raft::new`.
    pub fn log_store<C>(&self) -> LogStore<C> {
        LogStore {
            shared: Arc::clone(&self.shared),
            config: std::marker::PhantomData,
        }
    }

    /// The state machine half, for `openraft::Raft::new`: `applier` decides
    /// what each command does. Give every half of one store the same applier.
    pub fn state_machine<A: Applier>(&self, applier: Arc<A>) -> StateMachineStore<A> {
        StateMachineStore {
            shared: Arc::clone(&self.shared),
            applier,
        }
    }

    /// A read view of the applied data, holding the active generation
    /// while it lives (keep it short: a snapshot install waits for it).
    pub fn data_view(&self) -> DataView<'_> {
        self.shared.data_view()
    }

    /// The last log id applied to the state machine, and the last membership.
    pub fn applied_state(&self) -> Result<(Option<LogId>, StoredMembership), StoreError> {
        read_applied_state(&self.shared)
    }

    /// Every node id removed for good.
    pub fn tombstones(&self) -> Result<std::collections::BTreeSet<NodeId>, StoreError> {
        read_tombstones(&self.shared)
    }

    /// sha256 (hex) over every applied record and tombstone, in order:
    /// equal on nodes that applied the same log prefix. Reads the whole
    /// state; call from a blocking thread.
    pub fn state_digest(&self) -> Result<String, StoreError> {
        let _consistent = self.shared.lock_consistent_view();
        self.digest_locked()
    }

    /// The applied log id and the state digest, read under one lock so the
    /// two describe the same state (the chaos suite compares nodes by them).
    /// Reads the whole state; call from a blocking thread.
    pub fn applied_state_digest(&self) -> Result<(Option<LogId>, String), StoreError> {
        let _consistent = self.shared.lock_consistent_view();
        let applied = read_applied_state(&self.shared)?.0;
        Ok((applied, self.digest_locked()?))
    }

    fn digest_locked(&self) -> Result<String, StoreError> {
        use sha2::{Digest, Sha256};
        let state = self.shared.read_active();
        let tree_name = data_tree_name(state.generation);
        let mut hasher = Sha256::new();
        for item in state.data.iter() {
            let (key, bytes) =
                item.map_err(|error| StoreError::sled(format!("digest {tree_name}"), error))?;
            // Records are deterministic encodings, so raw bytes compare states.
            hasher.update(b"record");
            hasher.update((key.len() as u64).to_be_bytes());
            hasher.update(&key);
            hasher.update((bytes.len() as u64).to_be_bytes());
            hasher.update(&bytes);
        }
        for node_id in read_tombstones(&self.shared)? {
            hasher.update(b"tombstone");
            hasher.update(node_id.to_be_bytes());
        }
        Ok(hex::encode(hasher.finalize()))
    }

    /// Where snapshot files live; incoming snapshots are created here too.
    pub fn snapshot_dir(&self) -> PathBuf {
        self.shared.snapshot_dir()
    }

    /// The data directory this store was opened in.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Whether this node ever took part in a Raft group (a vote, a log entry
    /// or a purge exists). A node with Raft state must never bootstrap a new
    /// cluster.
    pub fn has_raft_state(&self) -> Result<bool, StoreError> {
        let sled_error = |error| StoreError::sled("check for raft state", error);
        let has_vote = self
            .shared
            .raft_meta
            .contains_key(KEY_VOTE)
            .map_err(sled_error)?;
        let has_purged = self
            .shared
            .raft_meta
            .contains_key(KEY_LAST_PURGED)
            .map_err(sled_error)?;
        let has_log = !self.shared.log.is_empty();
        Ok(has_vote || has_purged || has_log)
    }

    /// Flush latency statistics, for `/metrics`.
    pub fn flush_stats(&self) -> FlushStats {
        self.shared.flush_stats.clone()
    }

    /// Apply durations and refused commands, for `/metrics`.
    pub fn apply_stats(&self) -> ApplyStats {
        self.shared.apply_stats.clone()
    }
}

/// How long `open` waits for a data dir's lock: sled's own background work
/// for a store dropped in this process releases it a moment after the drop.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn open_sled(db_path: &Path, options: &StoreOptions) -> Result<sled::Db, StoreError> {
    let started = Instant::now();
    loop {
        let opened = sled::Config::new()
            .path(db_path)
            .cache_capacity(options.cache_capacity_bytes)
            .flush_every_ms(Some(options.background_flush_ms.max(1)))
            .open();
        match opened {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(error)) if error.to_string().contains("could not acquire lock") => {
                if started.elapsed() > LOCK_WAIT {
                    return Err(StoreError::io(
                        format!(
                            "data dir {} is in use by another process (its lock is held)",
                            db_path.display()
                        ),
                        error,
                    ));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(error) => {
                return Err(StoreError::sled(
                    format!("open sled database {}", db_path.display()),
                    error,
                ));
            }
        }
    }
}

fn drop_stale_generations(db: &sled::Db, active_name: &str) -> Result<(), StoreError> {
    for name in db.tree_names() {
        let name = String::from_utf8_lossy(&name).into_owned();
        if name.starts_with(SM_DATA_PREFIX) && name != active_name {
            tracing::info!(tree = %name, "dropping stale state machine generation");
            db.drop_tree(name.as_bytes())
                .map_err(|error| StoreError::sled(format!("drop tree {name}"), error))?;
        }
    }
    Ok(())
}

fn remove_partial_snapshot_files(snapshot_dir: &Path) -> Result<(), StoreError> {
    let entries = match std::fs::read_dir(snapshot_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => {
            return Err(StoreError::io(
                format!("list {}", snapshot_dir.display()),
                error,
            ))
        }
    };
    for entry in entries {
        let entry = entry
            .map_err(|error| StoreError::io(format!("list {}", snapshot_dir.display()), error))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(INCOMING_PREFIX) || name.ends_with(".tmp") {
            let path = entry.path();
            std::fs::remove_file(&path)
                .map_err(|error| StoreError::io(format!("remove {}", path.display()), error))?;
        }
    }
    Ok(())
}
