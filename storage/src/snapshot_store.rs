//! Building, installing and finding snapshots.
//!
//! Crash safety of an install: records load into a fresh `sm_data_<gen+1>`
//! tree; one `sm_meta` transaction then switches the active generation,
//! applied log id, membership and tombstones; only after a flush is the old
//! tree dropped. A crash before the switch leaves the old state (the new tree
//! is dropped at open), after it the new one.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::BufReader;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::{ErrorSubject, ErrorVerb, RaftSnapshotBuilder};
use sled::Transactional;

use crate::codec;
use crate::error::{run_blocking, StoreError};
use crate::log_store::StoreConfig;
use crate::snapshot::{PositionalReader, SnapshotFile};
use crate::snapshot_format::{SnapshotHeader, SnapshotReader, SnapshotRecord, SnapshotWriter};
use crate::state_machine::{read_applied_state, read_tombstones};
use crate::store::{
    data_tree_name, DataGeneration, Shared, KEY_APPLIED, KEY_GENERATION, KEY_MEMBERSHIP,
    KEY_TOMBSTONES, SM_META_TREE,
};
use crate::types::{NodeId, SnapshotMeta, StorageError};

const SNAPSHOT_PREFIX: &str = "snapshot-";
const SNAPSHOT_SUFFIX: &str = ".snap";
/// Keys loaded per sled batch during install: bounds memory, not atomicity
/// (the generation switch is what makes the install atomic).
const INSTALL_BATCH_RECORDS: usize = 1024;

/// Builds a snapshot file from a consistent view of the state machine.
pub struct SnapshotBuilder<C> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) config: PhantomData<fn() -> C>,
}

impl<C: StoreConfig> RaftSnapshotBuilder<C> for SnapshotBuilder<C> {
    async fn build_snapshot(&mut self) -> Result<openraft::Snapshot<C>, StorageError> {
        let shared = Arc::clone(&self.shared);
        run_blocking("build snapshot", move || build::<C>(&shared))
            .await
            .map_err(|error| error.into_storage(ErrorSubject::Snapshot(None), ErrorVerb::Write))
    }
}

fn snapshot_file_name(snapshot_id: &str) -> String {
    let safe_id: String = snapshot_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{SNAPSHOT_PREFIX}{safe_id}{SNAPSHOT_SUFFIX}")
}

fn io_error(context: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |error| StoreError::io(context, error)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(io_error(format!("sync directory {}", dir.display())))
}

fn ensure_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::create_dir_all(dir).map_err(io_error(format!("create {}", dir.display())))
}

fn build<C: StoreConfig>(shared: &Shared) -> Result<openraft::Snapshot<C>, StoreError> {
    let _files = shared.lock_snapshot_files();
    // Held while streaming: applies wait, so the file is one consistent state.
    let consistent = shared.lock_consistent_view();
    let (generation, data) = shared.active_while_locked();
    let (last_log_id, last_membership) = read_applied_state(shared)?;
    let tombstones = read_tombstones(shared)?;
    let counter = shared
        .db
        .generate_id()
        .map_err(|error| StoreError::sled("generate snapshot id", error))?;
    let snapshot_id = match last_log_id {
        Some(log_id) => format!("{}-{}-{counter}", log_id.index, log_id.leader_id.term),
        None => format!("0-0-{counter}"),
    };
    let meta = SnapshotMeta {
        last_log_id,
        last_membership,
        snapshot_id,
    };

    let dir = shared.snapshot_dir();
    ensure_dir(&dir)?;
    let temp_path = dir.join(format!("building-{}.tmp", meta.snapshot_id));
    let file =
        File::create(&temp_path).map_err(io_error(format!("create {}", temp_path.display())))?;
    let mut writer = SnapshotWriter::new(file, &temp_path, &SnapshotHeader { meta: meta.clone() })?;
    let tree_name = data_tree_name(generation);
    let mut kv_count: u64 = 0;
    for item in data.iter() {
        let (key_bytes, value_bytes) =
            item.map_err(|error| StoreError::sled(format!("read {tree_name}"), error))?;
        writer.write_record(&SnapshotRecord::Data {
            key: key_bytes.to_vec(),
            value: value_bytes.to_vec(),
        })?;
        kv_count += 1;
    }
    for node_id in tombstones {
        writer.write_record(&SnapshotRecord::Tombstone { node_id })?;
    }
    let file = writer.finish()?;
    file.sync_all()
        .map_err(io_error(format!("sync {}", temp_path.display())))?;
    drop(file);
    drop(consistent);

    let final_path = dir.join(snapshot_file_name(&meta.snapshot_id));
    std::fs::rename(&temp_path, &final_path).map_err(io_error(format!(
        "rename {} to {}",
        temp_path.display(),
        final_path.display()
    )))?;
    sync_dir(&dir)?;
    remove_other_snapshots(&dir, &final_path);
    tracing::info!(snapshot_id = %meta.snapshot_id, kv_count, path = %final_path.display(), "snapshot built");
    let snapshot = SnapshotFile::open_existing(&final_path)
        .map_err(io_error(format!("open {}", final_path.display())))?;
    Ok(openraft::Snapshot {
        meta,
        snapshot: Box::new(snapshot),
    })
}

/// Keeps only `keep` among complete snapshots; failures only cost disk space.
fn remove_other_snapshots(dir: &Path, keep: &Path) {
    for path in list_snapshot_files(dir) {
        if path != keep {
            if let Err(error) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), %error, "could not remove old snapshot");
            }
        }
    }
}

fn list_snapshot_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(SNAPSHOT_PREFIX) && name.ends_with(SNAPSHOT_SUFFIX) {
            paths.push(entry.path());
        }
    }
    paths
}

fn read_header(file: &SnapshotFile) -> Result<SnapshotHeader, StoreError> {
    let input = BufReader::new(PositionalReader::new(file.handle()));
    Ok(SnapshotReader::open(input, file.path())?.header().clone())
}

/// The newest complete snapshot file, with its meta read from the header.
pub(crate) fn current<C: StoreConfig>(
    shared: &Shared,
) -> Result<Option<openraft::Snapshot<C>>, StoreError> {
    let _files = shared.lock_snapshot_files();
    let mut newest: Option<(SnapshotMeta, SnapshotFile)> = None;
    for path in list_snapshot_files(&shared.snapshot_dir()) {
        let file = SnapshotFile::open_existing(&path)
            .map_err(io_error(format!("open {}", path.display())))?;
        let header = match read_header(&file) {
            Ok(header) => header,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "ignoring unreadable snapshot file");
                continue;
            }
        };
        let is_newer = newest
            .as_ref()
            .is_none_or(|(meta, _)| header.meta.last_log_id > meta.last_log_id);
        if is_newer {
            newest = Some((header.meta, file));
        }
    }
    Ok(newest.map(|(meta, file)| openraft::Snapshot {
        meta,
        snapshot: Box::new(file),
    }))
}

/// Loads `file` into `tree`; returns the tombstones. Verifies the whole
/// file, checksum included, before returning success.
fn load_records(
    tree: &sled::Tree,
    tree_name: &str,
    meta: &SnapshotMeta,
    file: &SnapshotFile,
) -> Result<BTreeSet<NodeId>, StoreError> {
    let input = BufReader::new(PositionalReader::new(file.handle()));
    let mut reader = SnapshotReader::open(input, file.path())?;
    let header_meta = &reader.header().meta;
    if header_meta.last_log_id != meta.last_log_id
        || header_meta.last_membership != meta.last_membership
    {
        return Err(StoreError::CorruptSnapshot {
            path: file.path().to_path_buf(),
            reason: format!(
                "header describes snapshot {} up to {:?}, but snapshot {} up to {:?} was being installed",
                header_meta.snapshot_id, header_meta.last_log_id, meta.snapshot_id, meta.last_log_id
            ),
        });
    }
    let mut tombstones = BTreeSet::new();
    let mut batch = sled::Batch::default();
    let mut batched = 0;
    while let Some(record) = reader.next_record()? {
        match record {
            SnapshotRecord::Data { key, value } => {
                batch.insert(key, value);
                batched += 1;
                if batched >= INSTALL_BATCH_RECORDS {
                    tree.apply_batch(std::mem::take(&mut batch))
                        .map_err(|error| StoreError::sled(format!("load {tree_name}"), error))?;
                    batched = 0;
                }
            }
            SnapshotRecord::Tombstone { node_id } => {
                tombstones.insert(node_id);
            }
        }
    }
    tree.apply_batch(batch)
        .map_err(|error| StoreError::sled(format!("load {tree_name}"), error))?;
    Ok(tombstones)
}

pub(crate) fn install(
    shared: &Shared,
    meta: &SnapshotMeta,
    mut file: SnapshotFile,
) -> Result<(), StoreError> {
    let _files = shared.lock_snapshot_files();
    let writes = shared.lock_writes();
    let (old_generation, _) = shared.active_while_locked();
    let new_generation = old_generation + 1;
    let new_name = data_tree_name(new_generation);
    let drop_tree = |name: &str| {
        shared
            .db
            .drop_tree(name.as_bytes())
            .map_err(|error| StoreError::sled(format!("drop tree {name}"), error))
    };
    drop_tree(&new_name)?;
    let new_tree = shared
        .db
        .open_tree(&new_name)
        .map_err(|error| StoreError::sled(format!("open tree {new_name}"), error))?;

    let tombstones = match load_records(&new_tree, &new_name, meta, &file) {
        Ok(tombstones) => tombstones,
        Err(error) => {
            drop(new_tree);
            drop_tree(&new_name)?;
            tracing::warn!(snapshot_id = %meta.snapshot_id, %error, "snapshot refused");
            return Err(error);
        }
    };

    let encode_meta =
        |key: &[u8], bytes: Result<Vec<u8>, StoreError>| bytes.map(|bytes| (key.to_vec(), bytes));
    let meta_name = |key: &'static str| move || format!("{SM_META_TREE} {key}");
    let mut updates = vec![
        encode_meta(
            KEY_GENERATION,
            codec::encode(meta_name("generation"), &new_generation),
        )?,
        encode_meta(
            KEY_MEMBERSHIP,
            codec::encode(meta_name("membership"), &meta.last_membership),
        )?,
        encode_meta(
            KEY_TOMBSTONES,
            codec::encode(meta_name("tombstones"), &tombstones),
        )?,
    ];
    if let Some(last_log_id) = &meta.last_log_id {
        updates.push(encode_meta(
            KEY_APPLIED,
            codec::encode(meta_name("applied"), last_log_id),
        )?);
    }
    let switched = (&shared.sm_meta,).transaction(|(sm_meta,)| {
        if meta.last_log_id.is_none() {
            sm_meta.remove(KEY_APPLIED)?;
        }
        for (key, bytes) in &updates {
            sm_meta.insert(key.as_slice(), bytes.as_slice())?;
        }
        Ok::<(), sled::transaction::ConflictableTransactionError<Box<StoreError>>>(())
    });
    switched.map_err(|source| StoreError::Transaction {
        context: "switch state machine generation".into(),
        source,
    })?;
    shared.flush_blocking("install snapshot")?;
    let old = shared.swap_active(DataGeneration {
        generation: new_generation,
        data: new_tree,
    });
    drop(old);
    // No reader can still use the old tree: readers hold `active` while reading.
    let old_name = data_tree_name(old_generation);
    if let Err(error) = drop_tree(&old_name) {
        // Harmless: stale generations are dropped at the next open.
        tracing::warn!(tree = %old_name, %error, "could not drop old state machine generation");
    }
    drop(writes);
    tracing::info!(snapshot_id = %meta.snapshot_id, last_log_id = ?meta.last_log_id, generation = new_generation, "snapshot installed");

    // The state is installed; keeping the file only spares a rebuild, so a
    // failure here is logged, not returned.
    if let Err(error) = adopt_file(shared, meta, &mut file) {
        tracing::warn!(snapshot_id = %meta.snapshot_id, %error, "installed snapshot file not kept");
    }
    Ok(())
}

/// Makes the installed file this node's current snapshot.
fn adopt_file(
    shared: &Shared,
    meta: &SnapshotMeta,
    file: &mut SnapshotFile,
) -> Result<(), StoreError> {
    let dir = shared.snapshot_dir();
    ensure_dir(&dir)?;
    let final_path = dir.join(snapshot_file_name(&meta.snapshot_id));
    if file.path() == final_path {
        return Ok(());
    }
    if file.is_incoming() && file.path().parent() == Some(dir.as_path()) {
        std::fs::rename(file.path(), &final_path).map_err(io_error(format!(
            "rename {} to {}",
            file.path().display(),
            final_path.display()
        )))?;
        file.mark_adopted();
    } else {
        // Someone else's file (another store's snapshot): copy it in.
        let temp_path = dir.join(format!("adopting-{}.tmp", meta.snapshot_id));
        let mut output = File::create(&temp_path)
            .map_err(io_error(format!("create {}", temp_path.display())))?;
        let mut input = BufReader::new(PositionalReader::new(file.handle()));
        std::io::copy(&mut input, &mut output).map_err(io_error(format!(
            "copy snapshot to {}",
            temp_path.display()
        )))?;
        output
            .sync_all()
            .map_err(io_error(format!("sync {}", temp_path.display())))?;
        std::fs::rename(&temp_path, &final_path).map_err(io_error(format!(
            "rename {} to {}",
            temp_path.display(),
            final_path.display()
        )))?;
    }
    sync_dir(&dir)?;
    remove_other_snapshots(&dir, &final_path);
    Ok(())
}
