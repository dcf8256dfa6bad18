//! Read access to the applied state for the node's API.
//!
//! Methods are synchronous sled reads: cheap for `get`, proportional to the
//! result for `list`, and to the whole state for `state_digest` (call that
//! one from a blocking thread).

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::codec;
use crate::keys;
use crate::error::StoreError;
use crate::state_machine::{read_applied_state, read_tombstones};
use crate::store::{data_tree_name, Shared};
use crate::types::{FlowRecord, KvEntry, LogId, NodeId, StoredMembership};

/// A cheap, clonable read handle on the applied state machine state.
#[derive(Clone)]
pub struct StateReader {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for StateReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateReader")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

fn decode_kv(tree_name: &str, key: &[u8], bytes: &[u8]) -> Result<(String, KvEntry), StoreError> {
    let key = String::from_utf8(key.to_vec()).map_err(|_| StoreError::Decode {
        record: format!("{tree_name} key {:?}", String::from_utf8_lossy(key)),
        source: bincode::error::DecodeError::Other("key is not UTF-8"),
    })?;
    let entry = codec::decode(|| format!("{tree_name} key {key:?}"), bytes)?;
    Ok((key, entry))
}

impl StateReader {
    /// The entry stored under `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<KvEntry>, StoreError> {
        let state = self.shared.read_active();
        let tree_name = data_tree_name(state.generation);
        let bytes = state
            .data
            .get(keys::kv(key))
            .map_err(|error| StoreError::sled(format!("read {tree_name} key {key:?}"), error))?;
        match bytes {
            Some(bytes) => codec::decode(|| format!("{tree_name} key {key:?}"), &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Up to `limit` entries whose key starts with `prefix`, in key order,
    /// beginning after `start_after` when given (for paging).
    pub fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, KvEntry)>, StoreError> {
        let state = self.shared.read_active();
        let tree_name = data_tree_name(state.generation);
        let prefix_key = keys::kv(prefix);
        let start = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(keys::kv(after)),
            _ => Bound::Included(prefix_key.clone()),
        };
        let mut entries = Vec::new();
        for item in state.data.range::<Vec<u8>, _>((start, Bound::Unbounded)) {
            if entries.len() >= limit {
                break;
            }
            let (key, bytes) =
                item.map_err(|error| StoreError::sled(format!("list {tree_name}"), error))?;
            if !key.starts_with(&prefix_key) {
                break;
            }
            entries.push(decode_kv(&tree_name, &key[keys::KV_PREFIX.len()..], &bytes)?);
        }
        Ok(entries)
    }

    /// Flow `name` at `version`, or its latest version when `None`.
    pub fn flow(&self, name: &str, version: Option<u64>) -> Result<Option<FlowRecord>, StoreError> {
        let state = self.shared.read_active();
        let tree_name = data_tree_name(state.generation);
        let read = |key: Vec<u8>| {
            state.data.get(key).map_err(|error| StoreError::sled(format!("read {tree_name} flow {name}"), error))
        };
        let version = match version {
            Some(version) => version,
            None => match read(keys::flow_latest(name))? {
                Some(bytes) => codec::decode(|| format!("{tree_name} flow {name} latest"), &bytes)?,
                None => return Ok(None),
            },
        };
        match read(keys::flow_def(name, version))? {
            Some(bytes) => codec::decode(|| format!("{tree_name} flow {name} v{version}"), &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Up to `limit` flow names with their latest version, in name order,
    /// after `start_after` when given.
    pub fn flows(&self, start_after: Option<&str>, limit: usize) -> Result<Vec<(String, u64)>, StoreError> {
        let state = self.shared.read_active();
        let tree_name = data_tree_name(state.generation);
        let prefix = keys::FLOW_LATEST_PREFIX.as_bytes();
        let start = match start_after {
            Some(after) => Bound::Excluded(keys::flow_latest(after)),
            None => Bound::Included(prefix.to_vec()),
        };
        let mut flows = Vec::new();
        for item in state.data.range::<Vec<u8>, _>((start, Bound::Unbounded)) {
            if flows.len() >= limit {
                break;
            }
            let (key, bytes) = item.map_err(|error| StoreError::sled(format!("list {tree_name} flows"), error))?;
            if !key.starts_with(prefix) {
                break;
            }
            let name = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            let version: u64 = codec::decode(|| format!("{tree_name} flow {name} latest"), &bytes)?;
            flows.push((name, version));
        }
        Ok(flows)
    }

    /// Every version of flow `name`, oldest first.
    pub fn flow_versions(&self, name: &str) -> Result<Vec<FlowRecord>, StoreError> {
        let state = self.shared.read_active();
        let tree_name = data_tree_name(state.generation);
        let mut versions = Vec::new();
        for item in state.data.scan_prefix(keys::flow_defs_of(name)) {
            let (_, bytes) = item.map_err(|error| StoreError::sled(format!("list {tree_name} flow {name}"), error))?;
            versions.push(codec::decode(|| format!("{tree_name} flow {name}"), &bytes)?);
        }
        Ok(versions)
    }

    /// Whether `node_id` was removed for good.
    pub fn is_tombstoned(&self, node_id: NodeId) -> Result<bool, StoreError> {
        Ok(self.tombstones()?.contains(&node_id))
    }

    /// Every node id removed for good.
    pub fn tombstones(&self) -> Result<BTreeSet<NodeId>, StoreError> {
        read_tombstones(&self.shared)
    }

    /// The last log id applied to the state machine.
    pub fn applied_log_id(&self) -> Result<Option<LogId>, StoreError> {
        Ok(read_applied_state(&self.shared)?.0)
    }

    /// The last membership applied to the state machine.
    pub fn last_membership(&self) -> Result<StoredMembership, StoreError> {
        Ok(read_applied_state(&self.shared)?.1)
    }

    /// sha256 (hex) over every applied record (key-value entries, flows, …)
    /// and tombstone, in order: equal on nodes that applied the same log
    /// prefix. Reads the whole state; call from a blocking thread.
    pub fn state_digest(&self) -> Result<String, StoreError> {
        let _consistent = self.shared.lock_consistent_view();
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
}
