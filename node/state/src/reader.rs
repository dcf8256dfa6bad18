//! Read access to the applied state for the node's API.
//!
//! Methods are synchronous reads through the store's read view
//! ([`StateView`]): cheap for `get`, proportional to the
//! result for `list`, and to the whole state for `state_digest` (call that
//! one from a blocking thread).

use std::collections::BTreeSet;
use std::ops::Bound;

use floe_storage::state_store::StateView;
use floe_storage::StoreError;

use crate::access::{Grant, TokenRecord};
use crate::codec;
use crate::keys;
use crate::models::{Deployment, ModelRecord, ReplicaRecord};
use crate::runs::{placed_attempt, placed_record, LimitScope, LimitState, TaskRecord};
use crate::types::{FlowRecord, KvEntry, LogId, NodeId, StoredMembership};
use floe_engine::run::{RunAddress, RunRecord};

/// Criteria for listing runs; all that are set must hold.
#[derive(Clone, Debug, Default)]
pub struct RunFilter {
    pub flow: Option<String>,
    /// "running", "completed", "failed" or "cancelled".
    pub status: Option<String>,
    pub correlation_id: Option<String>,
    pub created_from_ms: Option<u64>,
    pub created_to_ms: Option<u64>,
}

impl RunFilter {
    fn matches(&self, run: &RunRecord) -> bool {
        let status_ok = self
            .status
            .as_deref()
            .is_none_or(|status| crate::runs::status_name(run.status) == status);
        let flow_ok = self.flow.as_deref().is_none_or(|flow| run.flow == flow);
        let correlation_ok = self
            .correlation_id
            .as_deref()
            .is_none_or(|id| run.correlation_id == id);
        let from_ok = self
            .created_from_ms
            .is_none_or(|from| run.created_at_ms >= from);
        let to_ok = self.created_to_ms.is_none_or(|to| run.created_at_ms < to);
        status_ok && flow_ok && correlation_ok && from_ok && to_ok
    }
}

/// One page of runs, newest first.
#[derive(Clone, Debug, Default)]
pub struct RunPage {
    pub runs: Vec<RunRecord>,
    /// Pass back as `page_after` for the next page.
    pub last_key: Option<Vec<u8>>,
    pub more: bool,
}

/// A cheap, clonable read handle on the applied state machine state.
#[derive(Clone)]
pub struct StateReader {
    pub(crate) store: floe_storage::Store,
}

impl std::fmt::Debug for StateReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateReader")
            .field("dir", &self.store.dir())
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
        let state = self.store.data_view();
        let tree_name = state.tree_name();
        let bytes = state
            .get(&keys::kv(key))
            .map_err(|error| error.context(format!("read {tree_name} key {key:?}")))?;
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
        let state = self.store.data_view();
        let tree_name = state.tree_name();
        let prefix_key = keys::kv(prefix);
        let start = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(keys::kv(after)),
            _ => Bound::Included(prefix_key.clone()),
        };
        let mut entries = Vec::new();
        for item in state.range((start, Bound::Unbounded)) {
            if entries.len() >= limit {
                break;
            }
            let (key, bytes) = item.map_err(|error| error.context(format!("list {tree_name}")))?;
            if !key.starts_with(&prefix_key) {
                break;
            }
            entries.push(decode_kv(tree_name, &key[keys::KV_PREFIX.len()..], &bytes)?);
        }
        Ok(entries)
    }

    /// Flow `name` at `version`, or its latest version when `None`.
    pub fn flow(&self, name: &str, version: Option<u64>) -> Result<Option<FlowRecord>, StoreError> {
        let state = self.store.data_view();
        let tree_name = state.tree_name();
        let read = |key: Vec<u8>| {
            state
                .get(&key)
                .map_err(|error| error.context(format!("read {tree_name} flow {name}")))
        };
        let version = match version {
            Some(version) => version,
            None => match read(keys::flow_latest(name))? {
                Some(bytes) => codec::decode(|| format!("{tree_name} flow {name} latest"), &bytes)?,
                None => return Ok(None),
            },
        };
        match read(keys::flow_def(name, version))? {
            Some(bytes) => {
                codec::decode(|| format!("{tree_name} flow {name} v{version}"), &bytes).map(Some)
            }
            None => Ok(None),
        }
    }

    /// Up to `limit` flow names with their latest version, in name order,
    /// after `start_after` when given.
    pub fn flows(
        &self,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let state = self.store.data_view();
        let tree_name = state.tree_name();
        let prefix = keys::FLOW_LATEST_PREFIX.as_bytes();
        let start = match start_after {
            Some(after) => Bound::Excluded(keys::flow_latest(after)),
            None => Bound::Included(prefix.to_vec()),
        };
        let mut flows = Vec::new();
        for item in state.range((start, Bound::Unbounded)) {
            if flows.len() >= limit {
                break;
            }
            let (key, bytes) =
                item.map_err(|error| error.context(format!("list {tree_name} flows")))?;
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
        let state = self.store.data_view();
        let tree_name = state.tree_name();
        let mut versions = Vec::new();
        for item in state.scan_prefix(&keys::flow_defs_of(name)) {
            let (_, bytes) =
                item.map_err(|error| error.context(format!("list {tree_name} flow {name}")))?;
            versions.push(codec::decode(
                || format!("{tree_name} flow {name}"),
                &bytes,
            )?);
        }
        Ok(versions)
    }

    fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
        what: &str,
    ) -> Result<Option<T>, StoreError> {
        let state = self.store.data_view();
        json_in(&state, key, what)
    }

    /// Model `name` at `version`, or its latest version.
    pub fn model(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<Option<ModelRecord>, StoreError> {
        let state = self.store.data_view();
        let version = match version {
            Some(version) => version,
            None => match json_in::<u64>(
                &state,
                &keys::model_latest(name),
                &format!("model {name} latest"),
            )? {
                Some(version) => version,
                None => return Ok(None),
            },
        };
        json_in(
            &state,
            &keys::model_def(name, version),
            &format!("model {name} v{version}"),
        )
    }

    /// Every version of model `name`, oldest first.
    pub fn model_versions(&self, name: &str) -> Result<Vec<ModelRecord>, StoreError> {
        self.json_records(&keys::model_defs_of(name), &format!("model {name}"))
    }

    /// Every version of every model, by name then version.
    pub fn models(&self) -> Result<Vec<ModelRecord>, StoreError> {
        self.json_records(keys::MODEL_DEF_PREFIX.as_bytes(), "models")
    }

    /// Every deployment, by model then version.
    pub fn deployments(&self) -> Result<Vec<Deployment>, StoreError> {
        self.json_records(keys::MODEL_DEPLOY_PREFIX.as_bytes(), "deployments")
    }

    /// Every replica record (placed or evicted), by model, version, index.
    pub fn replicas(&self) -> Result<Vec<ReplicaRecord>, StoreError> {
        self.json_records(keys::MODEL_REPLICA_PREFIX.as_bytes(), "model replicas")
    }

    /// The replicas of one deployment.
    pub fn replicas_of(&self, name: &str, version: u64) -> Result<Vec<ReplicaRecord>, StoreError> {
        self.json_records(
            &keys::model_replicas_of(name, version),
            &format!("replicas of {name} v{version}"),
        )
    }

    fn json_records<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &[u8],
        what: &str,
    ) -> Result<Vec<T>, StoreError> {
        let state = self.store.data_view();
        let tree_name = state.tree_name();
        let mut records = Vec::new();
        for item in state.scan_prefix(prefix) {
            let (key, _) =
                item.map_err(|error| error.context(format!("list {tree_name} {what}")))?;
            if let Some(record) = json_in(&state, &key, what)? {
                records.push(record);
            }
        }
        Ok(records)
    }

    /// Run `run_id`'s record (a run of the default namespace and partition).
    pub fn run(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        self.run_at(&RunAddress::local(run_id))
    }

    /// The record of the run at `address`.
    pub fn run_at(&self, address: &RunAddress) -> Result<Option<RunRecord>, StoreError> {
        self.get_json(&keys::run(address), &format!("run {address}"))
    }

    /// Runs matching `filter`, newest first, from the index that narrows it
    /// most (correlation id, then flow, then status, then creation time);
    /// the remaining criteria are checked on the records. `page_after` is
    /// the last index key of the previous page.
    pub fn runs(
        &self,
        filter: &RunFilter,
        page_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<RunPage, StoreError> {
        let state = self.store.data_view();
        let tree_name = state.tree_name();
        let prefix = match (&filter.correlation_id, &filter.flow, &filter.status) {
            (Some(correlation), _, _) => keys::runs_with_correlation(correlation),
            (None, Some(flow), _) => keys::runs_of_flow(flow),
            (None, None, Some(status)) => keys::runs_with_status(status),
            (None, None, None) => keys::RUN_CREATED_PREFIX.to_string(),
        };
        let lower = format!("{prefix}{:020}", filter.created_from_ms.unwrap_or(0)).into_bytes();
        let upper = match filter.created_to_ms {
            Some(to) => Bound::Excluded(format!("{prefix}{to:020}").into_bytes()),
            None => Bound::Excluded(format!("{prefix}~").into_bytes()),
        };
        let upper = match page_after {
            Some(after) if after.starts_with(prefix.as_bytes()) => Bound::Excluded(after.to_vec()),
            _ => upper,
        };
        let mut page = RunPage::default();
        // Scanned index entries are bounded too, so a selective filter cannot scan everything.
        let mut scanned = 0usize;
        for item in state.range((Bound::Included(lower), upper)).rev() {
            let (key, _) = item.map_err(|error| error.context(format!("list {tree_name} runs")))?;
            scanned += 1;
            let listed = keys::run_in_index(&key, prefix.as_bytes());
            if let Some(address) = listed {
                let record =
                    json_in::<RunRecord>(&state, &keys::run(&address), &format!("run {address}"))?;
                if let Some(run) = record {
                    if filter.matches(&run) {
                        page.runs.push(run);
                    }
                }
            }
            page.last_key = Some(key.to_vec());
            if page.runs.len() >= limit || scanned >= limit.saturating_mul(20).max(1000) {
                page.more = true;
                break;
            }
        }
        if page.runs.len() < limit && !page.more {
            page.last_key = None;
        }
        Ok(page)
    }

    /// Runs that finished at or before `finished_before_ms`, oldest first,
    /// by address text (a default run's is its id).
    pub fn finished_runs(
        &self,
        finished_before_ms: u64,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let state = self.store.data_view();
        let tree_name = state.tree_name();
        let upper = keys::runs_finished_through(finished_before_ms);
        let mut run_ids = Vec::new();
        for item in state
            .range((
                Bound::Included(keys::RUN_FINISHED_PREFIX.as_bytes().to_vec()),
                Bound::Excluded(upper),
            ))
            .take(limit)
        {
            let (key, _) =
                item.map_err(|error| error.context(format!("scan {tree_name} finished runs")))?;
            if let Some(address) = keys::run_in_index(&key, keys::RUN_FINISHED_PREFIX.as_bytes()) {
                run_ids.push(address.to_string());
            }
        }
        Ok(run_ids)
    }

    /// Tasks waiting for a worker whose backoff has passed by `now_ms`, oldest first.
    pub fn ready_tasks(&self, now_ms: u64, limit: usize) -> Result<Vec<TaskRecord>, StoreError> {
        let state = self.store.data_view();
        let tree_name = state.tree_name();
        let upper = keys::task_queue(now_ms, "~");
        let mut tasks = Vec::new();
        for item in state.range((
            Bound::Included(keys::TASK_QUEUE_PREFIX.as_bytes().to_vec()),
            Bound::Excluded(upper),
        )) {
            if tasks.len() >= limit {
                break;
            }
            let (key, _) =
                item.map_err(|error| error.context(format!("scan {tree_name} task queue")))?;
            let text =
                String::from_utf8_lossy(&key[keys::TASK_QUEUE_PREFIX.len() + 21..]).into_owned();
            if let Some(task) =
                json_in::<TaskRecord>(&state, &keys::task(&text), &format!("task {text}"))?
            {
                tasks.push(task);
            }
        }
        Ok(tasks)
    }

    /// Tasks placed on `node` as (task key text, attempt), with the record
    /// of those `wanted` picks: a dispatcher decodes only the records of
    /// the attempts it has not handed out yet.
    pub fn placed_tasks(
        &self,
        node: NodeId,
        wanted: impl Fn(&str, u32) -> bool,
    ) -> Result<Vec<(String, u32, Option<TaskRecord>)>, StoreError> {
        let state = self.store.data_view();
        let tree_name = state.tree_name();
        let prefix = keys::tasks_on_node(node);
        let mut tasks = Vec::new();
        for item in state.scan_prefix(&prefix) {
            let (key, entry) =
                item.map_err(|error| error.context(format!("scan {tree_name} node tasks")))?;
            let text = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            let (attempt, record) = match placed_attempt(&entry) {
                Some(attempt) if !wanted(&text, attempt) => (attempt, None),
                Some(attempt) => (attempt, placed_in(&state, &text, &entry)?),
                // An entry from before attempts were kept in the index.
                None => match placed_in(&state, &text, &entry)? {
                    Some(record) => {
                        let attempt = record.spec.attempt;
                        (attempt, Some(record).filter(|_| wanted(&text, attempt)))
                    }
                    None => continue,
                },
            };
            tasks.push((text, attempt, record));
        }
        Ok(tasks)
    }

    /// Tasks the scheduler placed on `node`.
    pub fn tasks_on_node(&self, node: NodeId) -> Result<Vec<TaskRecord>, StoreError> {
        let state = self.store.data_view();
        let tree_name = state.tree_name();
        let prefix = keys::tasks_on_node(node);
        let mut tasks = Vec::new();
        for item in state.scan_prefix(&prefix) {
            let (key, entry) =
                item.map_err(|error| error.context(format!("scan {tree_name} node tasks")))?;
            let text = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            if let Some(task) = placed_in(&state, &text, &entry)? {
                tasks.push(task);
            }
        }
        Ok(tasks)
    }

    /// Keys of timers due by `now_ms`, earliest first.
    pub fn due_timers(&self, now_ms: u64, limit: usize) -> Result<Vec<String>, StoreError> {
        let state = self.store.data_view();
        let tree_name = state.tree_name();
        let upper = keys::timer_due(now_ms, "~");
        let mut timers = Vec::new();
        for item in state
            .range((
                Bound::Included(keys::TIMER_PREFIX.as_bytes().to_vec()),
                Bound::Excluded(upper),
            ))
            .take(limit)
        {
            let (key, _) =
                item.map_err(|error| error.context(format!("scan {tree_name} timers")))?;
            timers
                .push(String::from_utf8_lossy(&key[keys::TIMER_PREFIX.len() + 21..]).into_owned());
        }
        Ok(timers)
    }

    /// What each node offers to placement inside apply, and how many tasks
    /// of each block are placed on it now.
    pub fn node_slots(&self) -> Result<crate::slots::Offers, StoreError> {
        let state = self.store.data_view();
        let tree_name = state.tree_name();
        match state
            .get(keys::NODE_SLOTS)
            .map_err(|error| error.context(format!("read {tree_name} node slots")))?
        {
            Some(bytes) => codec::decode(|| format!("{tree_name} node slots"), &bytes),
            None => Ok(Default::default()),
        }
    }

    /// Tasks of `block` placed on `node` now (as apply counts them).
    pub fn placed_count(&self, node: NodeId, block: &str) -> Result<u32, StoreError> {
        let state = self.store.data_view();
        let tree_name = state.tree_name();
        match state
            .get(&keys::placed_count(node, block))
            .map_err(|error| error.context(format!("read {tree_name} placed count")))?
        {
            Some(bytes) => codec::decode(|| format!("{tree_name} placed count"), &bytes),
            None => Ok(0),
        }
    }

    /// The API token `id`, if it exists.
    pub fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let state = self.store.data_view();
        let tree_name = state.tree_name();
        match state
            .get(&keys::token(id))
            .map_err(|error| error.context(format!("read {tree_name} token")))?
        {
            Some(bytes) => codec::decode(|| format!("{tree_name} token {id}"), &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Up to `limit` API tokens, ordered by id.
    pub fn tokens(&self, limit: usize) -> Result<Vec<TokenRecord>, StoreError> {
        let state = self.store.data_view();
        let tree_name = state.tree_name();
        let mut tokens = Vec::new();
        for item in state.scan_prefix(keys::TOKEN_PREFIX.as_bytes()).take(limit) {
            let (key, bytes) =
                item.map_err(|error| error.context(format!("scan {tree_name} tokens")))?;
            let what = || format!("{tree_name} {}", String::from_utf8_lossy(&key));
            tokens.push(codec::decode(what, &bytes)?);
        }
        Ok(tokens)
    }

    /// Every grant of `principal`.
    pub fn grants_of(&self, principal: &str) -> Result<Vec<Grant>, StoreError> {
        self.grants_under(&keys::grants_of(principal), usize::MAX)
    }

    /// Up to `limit` grants, ordered by principal.
    pub fn grants(&self, limit: usize) -> Result<Vec<Grant>, StoreError> {
        self.grants_under(keys::GRANT_PREFIX.as_bytes(), limit)
    }

    fn grants_under(&self, prefix: &[u8], limit: usize) -> Result<Vec<Grant>, StoreError> {
        let state = self.store.data_view();
        let tree_name = state.tree_name();
        let mut grants = Vec::new();
        for item in state.scan_prefix(prefix).take(limit) {
            let (key, bytes) =
                item.map_err(|error| error.context(format!("scan {tree_name} grants")))?;
            let what = || format!("{tree_name} {}", String::from_utf8_lossy(&key));
            grants.push(codec::decode(what, &bytes)?);
        }
        Ok(grants)
    }

    /// Every concurrency limit and every block or flow with tasks placed now.
    pub fn limits(&self) -> Result<Vec<LimitState>, StoreError> {
        let state = self.store.data_view();
        let tree_name = state.tree_name();
        let mut found: std::collections::BTreeMap<(LimitScope, String), LimitState> =
            Default::default();
        for (prefix, is_limit) in [(keys::LIMIT_PREFIX, true), (keys::ACTIVE_PREFIX, false)] {
            for item in state.scan_prefix(prefix.as_bytes()) {
                let (key, bytes) =
                    item.map_err(|error| error.context(format!("scan {tree_name} limits")))?;
                let rest = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
                let Some((scope, name)) = rest.split_once('/') else {
                    continue;
                };
                let scope = match scope {
                    "block" => LimitScope::Block,
                    "flow" => LimitScope::Flow,
                    _ => continue,
                };
                let what = format!("{tree_name} {rest}");
                let json = codec::decode_bytes(|| what.clone(), &bytes)?;
                let entry = found
                    .entry((scope, name.to_string()))
                    .or_insert_with(|| LimitState {
                        scope,
                        name: name.to_string(),
                        limit: None,
                        active: 0,
                    });
                let parse_error = |err: serde_json::Error| StoreError::Json {
                    record: what.clone(),
                    reason: err.to_string(),
                };
                if is_limit {
                    entry.limit = Some(serde_json::from_slice(json).map_err(parse_error)?);
                } else {
                    entry.active = serde_json::from_slice(json).map_err(parse_error)?;
                }
            }
        }
        Ok(found.into_values().collect())
    }

    /// Whether any record still refers to blob `hash`.
    pub fn blob_is_referenced(&self, hash: &str) -> Result<bool, StoreError> {
        let state = self.store.data_view();
        let first = state.scan_prefix(&keys::blob_owners_of(hash)).next();
        match first {
            Some(Err(error)) => {
                Err(error.context(format!("scan {} blob owners", state.tree_name())))
            }
            Some(Ok(_)) => Ok(true),
            None => Ok(false),
        }
    }

    /// Referenced blob hashes after `start_after`, in order, at most `limit`
    /// (for the repair loop, which walks them in pages).
    pub fn referenced_blobs(
        &self,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let state = self.store.data_view();
        let tree_name = state.tree_name();
        let start = match start_after {
            // '0' follows '/': this skips every owner of `hash` and nothing else.
            Some(hash) => format!("{}{hash}0", keys::BLOB_OWNER_PREFIX).into_bytes(),
            None => keys::BLOB_OWNER_PREFIX.as_bytes().to_vec(),
        };
        let end = format!("{}~", keys::BLOB_OWNER_PREFIX).into_bytes();
        let mut hashes: Vec<String> = Vec::new();
        for item in state.range((Bound::Included(start), Bound::Excluded(end))) {
            let (key, _) =
                item.map_err(|error| error.context(format!("scan {tree_name} blob owners")))?;
            let rest = &key[keys::BLOB_OWNER_PREFIX.len()..];
            let Some(hash) = rest.split(|byte| *byte == b'/').next() else {
                continue;
            };
            let hash = String::from_utf8_lossy(hash).into_owned();
            if hashes.last() != Some(&hash) {
                if hashes.len() >= limit {
                    break;
                }
                hashes.push(hash);
            }
        }
        Ok(hashes)
    }

    /// Whether `node_id` was removed for good.
    pub fn is_tombstoned(&self, node_id: NodeId) -> Result<bool, StoreError> {
        Ok(self.tombstones()?.contains(&node_id))
    }

    /// Every node id removed for good.
    pub fn tombstones(&self) -> Result<BTreeSet<NodeId>, StoreError> {
        self.store.tombstones()
    }

    /// The last log id applied to the state machine.
    pub fn applied_log_id(&self) -> Result<Option<LogId>, StoreError> {
        Ok(self.store.applied_state()?.0)
    }

    /// The last membership applied to the state machine.
    pub fn last_membership(&self) -> Result<StoredMembership, StoreError> {
        Ok(self.store.applied_state()?.1)
    }

    /// sha256 (hex) over every applied record (key-value entries, flows, …)
    /// and tombstone, in order: equal on nodes that applied the same log
    /// prefix. Reads the whole state; call from a blocking thread.
    pub fn state_digest(&self) -> Result<String, StoreError> {
        self.store.state_digest()
    }

    /// The applied log id and the state digest, read under one lock so the
    /// two describe the same state (the chaos suite compares nodes by them).
    /// Reads the whole state; call from a blocking thread.
    pub fn applied_state_digest(&self) -> Result<(Option<LogId>, String), StoreError> {
        self.store.applied_state_digest()
    }
}

/// The record of placed task `text` from its node-index entry, or from
/// `task/` for an entry an earlier release wrote (the attempt alone).
fn placed_in(
    state: &dyn StateView,
    text: &str,
    entry: &[u8],
) -> Result<Option<TaskRecord>, StoreError> {
    let tree_name = state.tree_name();
    match placed_record(|| format!("{tree_name} task {text}"), entry)? {
        Some(record) => Ok(Some(record)),
        None => json_in::<TaskRecord>(state, &keys::task(text), &format!("task {text}")),
    }
}

/// Reads one JSON record from a generation the caller already holds: a
/// second `read_active` while holding one deadlocks as soon as a snapshot
/// install waits for the write lock (std's RwLock queues new readers
/// behind a waiting writer). Found by the chaos suite (snapshot-catchup).
fn json_in<T: serde::de::DeserializeOwned>(
    state: &dyn StateView,
    key: &[u8],
    what: &str,
) -> Result<Option<T>, StoreError> {
    let tree_name = state.tree_name();
    let Some(bytes) = state
        .get(key)
        .map_err(|error| error.context(format!("read {tree_name} {what}")))?
    else {
        return Ok(None);
    };
    codec::decode_structured(|| format!("{tree_name} {what}"), &bytes).map(Some)
}
