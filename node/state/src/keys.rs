//! The layout of the state machine's data tree. One tree holds every kind of
//! replicated record under its own prefix, so snapshots, digests and
//! generation switches cover them all at once.
//!
//! - `kv/<key>`                          → `KvEntry` (the key-value API)
//! - `flow/def/<name>/<version:020>`     → `FlowRecord`
//! - `flow/hash/<name>/<sha256>`         → version (identical definitions)
//! - `flow/latest/<name>`                → latest version
//! - `run/<run id>`                      → run record (JSON)
//! - `idem/<idempotency key>`            → run id
//! - `runs/created/<ms:020>/<run id>`, `runs/status/<status>/<ms:020>/<run id>`,
//!   `runs/flow/<flow>/<ms:020>/<run id>`, `runs/corr/<correlation id>/<ms:020>/<run id>`:
//!   (empty) indexes for listing runs
//! - `runs/finished/<ms:020>/<run id>` → (empty) finished runs, for retention
//! - `task/<task key>`                   → the record of a task waiting for a worker
//! - `taskq/<not before ms:020>/<task key>` → (empty) tasks waiting for a worker
//! - `tasknode/<node:020>/<task key>`    → a task placed on a node: the attempt (u32
//!   big-endian), then its record. Stores of earlier releases hold the attempt
//!   alone (or nothing) and the record under `task/`; both read.
//! - `timer/<due ms:020>/<timer key>`    → timer (JSON); `timerkey/<timer key>` → due ms
//! - `limit/<block|flow>/<name>`        → u32 cluster-wide concurrency limit (JSON)
//! - `active/<block|flow>/<name>`       → u64 tasks of it placed on nodes now (JSON)
//! - `blobref/<sha256>/<owner>`          → (empty) a record that refers to a blob
//!   (`run/<run id>`, `model/<name>/<version>`); a blob with no owner may be deleted
//! - `model/def/<name>/<version:020>`    → model record (JSON: blob hash, size, signature)
//! - `model/hash/<name>/<sha256>`        → version (the same artifact again)
//! - `model/latest/<name>`               → latest version
//! - `model/deploy/<name>/<version:020>` → deployment (JSON: replicas wanted, pool settings)
//! - `model/replica/<name>/<version:020>/<replica:06>` → where one replica is placed (JSON)
//! - `model/gpu/<node:020>/<device>`    → thousandths of that GPU held by placed replicas
//! - `slots`                            → node id → `NodeSlots`: the worker slots each node offers per block
//! - `placed/<node:020>/<pool>`          → u32 tasks placed on the node now in a slot pool:
//!   a placement key (block, or block with labels); a labelled task counts
//!   under its key and under its block
//! - `access/grant/<principal>|<namespace or *>|<role>` → `Grant` (a role
//!   granted to a principal; `*`: cluster-wide)

pub(crate) const KV_PREFIX: &[u8] = b"kv/";
pub(crate) const GRANT_PREFIX: &str = "access/grant/";

/// One grant's key. Principal and namespace names hold no `|` and no `*`
/// (`access::principal_problem`), so keys of different grants never meet.
pub(crate) fn grant(
    principal: &str,
    namespace: Option<&str>,
    role: crate::access::Role,
) -> Vec<u8> {
    format!(
        "{GRANT_PREFIX}{principal}|{}|{}",
        namespace.unwrap_or("*"),
        role.name()
    )
    .into_bytes()
}

/// The prefix of every grant of `principal`.
pub(crate) fn grants_of(principal: &str) -> Vec<u8> {
    format!("{GRANT_PREFIX}{principal}|").into_bytes()
}
const FLOW_DEF_PREFIX: &str = "flow/def/";
pub(crate) const FLOW_LATEST_PREFIX: &str = "flow/latest/";

pub(crate) fn kv(key: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(KV_PREFIX.len() + key.len());
    bytes.extend_from_slice(KV_PREFIX);
    bytes.extend_from_slice(key.as_bytes());
    bytes
}

pub(crate) fn flow_def(name: &str, version: u64) -> Vec<u8> {
    format!("{FLOW_DEF_PREFIX}{name}/{version:020}").into_bytes()
}

pub(crate) fn flow_defs_of(name: &str) -> Vec<u8> {
    format!("{FLOW_DEF_PREFIX}{name}/").into_bytes()
}

pub(crate) fn flow_hash(name: &str, hash: &str) -> Vec<u8> {
    format!("flow/hash/{name}/{hash}").into_bytes()
}

pub(crate) fn flow_latest(name: &str) -> Vec<u8> {
    format!("{FLOW_LATEST_PREFIX}{name}").into_bytes()
}

pub(crate) const RUN_PREFIX: &str = "run/";
pub(crate) const TASK_QUEUE_PREFIX: &str = "taskq/";
pub(crate) const TIMER_PREFIX: &str = "timer/";

pub(crate) fn run(run_id: &str) -> Vec<u8> {
    format!("{RUN_PREFIX}{run_id}").into_bytes()
}

pub(crate) fn idempotency(key: &str) -> Vec<u8> {
    format!("idem/{key}").into_bytes()
}

pub(crate) fn run_by_created(created_ms: u64, run_id: &str) -> Vec<u8> {
    format!("runs/created/{created_ms:020}/{run_id}").into_bytes()
}

pub(crate) fn run_by_status(status: &str, created_ms: u64, run_id: &str) -> Vec<u8> {
    format!("runs/status/{status}/{created_ms:020}/{run_id}").into_bytes()
}

pub(crate) fn run_by_flow(flow: &str, created_ms: u64, run_id: &str) -> Vec<u8> {
    format!("runs/flow/{flow}/{created_ms:020}/{run_id}").into_bytes()
}

pub(crate) fn run_by_correlation(correlation_id: &str, created_ms: u64, run_id: &str) -> Vec<u8> {
    format!("runs/corr/{correlation_id}/{created_ms:020}/{run_id}").into_bytes()
}

pub(crate) fn task(task: &str) -> Vec<u8> {
    format!("task/{task}").into_bytes()
}

pub(crate) fn task_queue(not_before_ms: u64, task: &str) -> Vec<u8> {
    format!("{TASK_QUEUE_PREFIX}{not_before_ms:020}/{task}").into_bytes()
}

pub(crate) fn task_on_node(node: u64, task: &str) -> Vec<u8> {
    format!("tasknode/{node:020}/{task}").into_bytes()
}

pub(crate) fn tasks_on_node(node: u64) -> Vec<u8> {
    format!("tasknode/{node:020}/").into_bytes()
}

pub(crate) fn timer_due(due_ms: u64, timer: &str) -> Vec<u8> {
    format!("{TIMER_PREFIX}{due_ms:020}/{timer}").into_bytes()
}

pub(crate) fn timer_by_key(timer: &str) -> Vec<u8> {
    format!("timerkey/{timer}").into_bytes()
}

pub(crate) const RUN_FINISHED_PREFIX: &str = "runs/finished/";

pub(crate) fn run_by_finished(finished_ms: u64, run_id: &str) -> Vec<u8> {
    format!("{RUN_FINISHED_PREFIX}{finished_ms:020}/{run_id}").into_bytes()
}

pub(crate) const BLOB_OWNER_PREFIX: &str = "blobref/";

pub(crate) fn blob_owner(hash: &str, owner: &str) -> Vec<u8> {
    format!("{BLOB_OWNER_PREFIX}{hash}/{owner}").into_bytes()
}

pub(crate) fn blob_owners_of(hash: &str) -> Vec<u8> {
    format!("{BLOB_OWNER_PREFIX}{hash}/").into_bytes()
}

pub(crate) fn run_owner(run_id: &str) -> String {
    format!("run/{run_id}")
}

pub(crate) const LIMIT_PREFIX: &str = "limit/";

pub(crate) fn limit(scope: &str, name: &str) -> Vec<u8> {
    format!("{LIMIT_PREFIX}{scope}/{name}").into_bytes()
}

pub(crate) const ACTIVE_PREFIX: &str = "active/";

pub(crate) fn active_count(scope: &str, name: &str) -> Vec<u8> {
    format!("{ACTIVE_PREFIX}{scope}/{name}").into_bytes()
}

pub(crate) const MODEL_DEF_PREFIX: &str = "model/def/";
pub(crate) const MODEL_DEPLOY_PREFIX: &str = "model/deploy/";
pub(crate) const MODEL_REPLICA_PREFIX: &str = "model/replica/";

pub(crate) fn model_def(name: &str, version: u64) -> Vec<u8> {
    format!("{MODEL_DEF_PREFIX}{name}/{version:020}").into_bytes()
}

pub(crate) fn model_defs_of(name: &str) -> Vec<u8> {
    format!("{MODEL_DEF_PREFIX}{name}/").into_bytes()
}

pub(crate) fn model_hash(name: &str, hash: &str) -> Vec<u8> {
    format!("model/hash/{name}/{hash}").into_bytes()
}

pub(crate) fn model_latest(name: &str) -> Vec<u8> {
    format!("model/latest/{name}").into_bytes()
}

pub(crate) fn model_owner(name: &str, version: u64) -> String {
    format!("model/{name}/{version}")
}

pub(crate) fn model_deployment(name: &str, version: u64) -> Vec<u8> {
    format!("{MODEL_DEPLOY_PREFIX}{name}/{version:020}").into_bytes()
}

pub(crate) fn model_replicas_of(name: &str, version: u64) -> Vec<u8> {
    format!("{MODEL_REPLICA_PREFIX}{name}/{version:020}/").into_bytes()
}

pub(crate) fn model_replica(name: &str, version: u64, replica: u32) -> Vec<u8> {
    format!("{MODEL_REPLICA_PREFIX}{name}/{version:020}/{replica:06}").into_bytes()
}

/// Thousandths of a node's GPU held by replicas placed there (u32 JSON).
pub(crate) fn gpu_used(node: u64, device: u32) -> Vec<u8> {
    format!("model/gpu/{node:020}/{device}").into_bytes()
}

/// One record for all nodes: apply reads every offer at each placement, and
/// a transaction cannot scan a prefix.
pub(crate) const NODE_SLOTS: &[u8] = b"slots";

pub(crate) fn placed_count(node: u64, block: &str) -> Vec<u8> {
    format!("placed/{node:020}/{block}").into_bytes()
}
