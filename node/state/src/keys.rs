//! The layout of the state machine's data tree. One tree holds every kind of
//! replicated record under its own prefix, so snapshots, digests and
//! generation switches cover them all at once.
//!
//! - `kv/<key>`                          → `KvEntry` (the key-value API)
//! - `flow/def/<name>/<version:020>`     → `FlowRecord`
//! - `flow/hash/<name>/<sha256>`         → version (identical definitions)
//! - `flow/latest/<name>`                → latest version
//! - `run/<run>`                         → run record (JSON)
//! - `idem/<idempotency key>`            → run (a run of another namespace or
//!   partition: `idem:<namespace>:<partition>/<idempotency key>`)
//! - `runs/created/<ms:020>/<run>`, `runs/status/<status>/<ms:020>/<run>`,
//!   `runs/flow/<flow>/<ms:020>/<run>`, `runs/corr/<correlation id>/<ms:020>/<run>`:
//!   (empty) indexes for listing runs
//! - `runs/finished/<ms:020>/<run>`      → (empty) finished runs, for retention
//! - `task/<task key>`                   → the record of a task waiting for a worker
//! - `taskq/<not before ms:020>/<task key>` → (empty) tasks waiting for a worker
//! - `tasknode/<node:020>/<task key>`    → a task placed on a node: the attempt (u32
//!   big-endian), then its record. Stores of earlier releases hold the attempt
//!   alone (or nothing) and the record under `task/`; both read.
//! - `timer/<due ms:020>/<timer key>`    → timer (JSON); `timerkey/<timer key>` → due ms;
//!   a timer key is `<run>/<step>/<item>/<purpose>/<attempt>`
//! - `limit/<block|flow>/<name>`        → u32 cluster-wide concurrency limit (JSON)
//! - `active/<block|flow>/<name>`       → u64 tasks of it placed on nodes now (JSON)
//! - `blobref/<sha256>/<owner>`          → (empty) a record that refers to a blob
//!   (`run/<run>`, `model/<name>/<version>`); a blob with no owner may be deleted
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
//! - `access/token/<id>`                 → `TokenRecord` (an API token: its
//!   principal, expiry and the secret's argon2 hash)
//!
//! `<run>` is a run's address text, `RunAddress`'s one formatter (and a
//! task key's run part is the same text): the bare run id in the default
//! namespace and partition, so every key of theirs is the bytes earlier
//! releases wrote, and `<namespace>:<partition>:<run id>` in any other.

use floe_engine::run::RunAddress;

pub(crate) const KV_PREFIX: &[u8] = b"kv/";
pub(crate) const GRANT_PREFIX: &str = "access/grant/";

/// One grant's key. Principal and namespace names hold no `|` and no `*`
/// (`access::principal_problem`), so keys of different grants never meet.
/// `role` is the role's name (`Role::name`).
pub(crate) fn grant(principal: &str, namespace: Option<&str>, role: &str) -> Vec<u8> {
    format!(
        "{GRANT_PREFIX}{principal}|{}|{role}",
        namespace.unwrap_or("*")
    )
    .into_bytes()
}

pub(crate) const TOKEN_PREFIX: &str = "access/token/";

pub(crate) fn token(id: &str) -> Vec<u8> {
    format!("{TOKEN_PREFIX}{id}").into_bytes()
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

pub(crate) fn run(run: &RunAddress) -> Vec<u8> {
    format!("{RUN_PREFIX}{run}").into_bytes()
}

/// The idempotency entry of `key` among runs of `scope`'s namespace and
/// partition. Another namespace's entries go under `idem:`, which no key
/// of the default namespace (all under `idem/`, whatever the client's key
/// holds) can equal.
pub(crate) fn idempotency(scope: &RunAddress, key: &str) -> Vec<u8> {
    if scope.is_default() {
        return format!("idem/{key}").into_bytes();
    }
    format!("idem:{}:{}/{key}", scope.namespace(), scope.partition()).into_bytes()
}

pub(crate) fn run_by_created(created_ms: u64, run: &RunAddress) -> Vec<u8> {
    format!("{RUN_CREATED_PREFIX}{created_ms:020}/{run}").into_bytes()
}

pub(crate) fn run_by_status(status: &str, created_ms: u64, run: &RunAddress) -> Vec<u8> {
    format!("{}{created_ms:020}/{run}", runs_with_status(status)).into_bytes()
}

pub(crate) fn run_by_flow(flow: &str, created_ms: u64, run: &RunAddress) -> Vec<u8> {
    format!("{}{created_ms:020}/{run}", runs_of_flow(flow)).into_bytes()
}

pub(crate) fn run_by_correlation(
    correlation_id: &str,
    created_ms: u64,
    run: &RunAddress,
) -> Vec<u8> {
    format!(
        "{}{created_ms:020}/{run}",
        runs_with_correlation(correlation_id)
    )
    .into_bytes()
}

pub(crate) const RUN_CREATED_PREFIX: &str = "runs/created/";

/// The prefix of the status index's entries for `status`.
pub(crate) fn runs_with_status(status: &str) -> String {
    format!("runs/status/{status}/")
}

pub(crate) fn runs_of_flow(flow: &str) -> String {
    format!("runs/flow/{flow}/")
}

pub(crate) fn runs_with_correlation(correlation_id: &str) -> String {
    format!("runs/corr/{correlation_id}/")
}

/// The run an index entry names: its key is `prefix`, the 20-digit time,
/// `/`, the run's address text (which may hold `/` itself).
pub(crate) fn run_in_index(key: &[u8], prefix: &[u8]) -> Option<RunAddress> {
    let rest = key.strip_prefix(prefix)?;
    let text = rest.get(21..)?;
    let Ok(address) = std::str::from_utf8(text).ok()?.parse();
    Some(address)
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

pub(crate) fn run_by_finished(finished_ms: u64, run: &RunAddress) -> Vec<u8> {
    format!("{RUN_FINISHED_PREFIX}{finished_ms:020}/{run}").into_bytes()
}

/// Past every finished-run entry of times up to `finished_ms` (`~` sorts
/// after the first character of every generated run id and namespace).
pub(crate) fn runs_finished_through(finished_ms: u64) -> Vec<u8> {
    format!("{RUN_FINISHED_PREFIX}{finished_ms:020}/~").into_bytes()
}

pub(crate) const BLOB_OWNER_PREFIX: &str = "blobref/";

pub(crate) fn blob_owner(hash: &str, owner: &str) -> Vec<u8> {
    format!("{BLOB_OWNER_PREFIX}{hash}/{owner}").into_bytes()
}

pub(crate) fn blob_owners_of(hash: &str) -> Vec<u8> {
    format!("{BLOB_OWNER_PREFIX}{hash}/").into_bytes()
}

pub(crate) fn run_owner(run: &RunAddress) -> String {
    format!("{RUN_PREFIX}{run}")
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

#[cfg(test)]
mod tests {
    use super::*;

    const RUN_ID: &str = "3f2a9c0d1e4b5a6978c0d1e2f3a4b5c6";

    /// Every run-keyed record and index entry of the default namespace, as
    /// earlier releases wrote it.
    fn default_keys(address: &RunAddress) -> Vec<(Vec<u8>, String)> {
        vec![
            (run(address), format!("run/{RUN_ID}")),
            (
                run_by_created(7, address),
                format!("runs/created/00000000000000000007/{RUN_ID}"),
            ),
            (
                run_by_status("failed", 7, address),
                format!("runs/status/failed/00000000000000000007/{RUN_ID}"),
            ),
            (
                run_by_flow("chain", 7, address),
                format!("runs/flow/chain/00000000000000000007/{RUN_ID}"),
            ),
            (
                run_by_correlation("c/1", 7, address),
                format!("runs/corr/c/1/00000000000000000007/{RUN_ID}"),
            ),
            (
                run_by_finished(9, address),
                format!("runs/finished/00000000000000000009/{RUN_ID}"),
            ),
            (run_owner(address).into_bytes(), format!("run/{RUN_ID}")),
            (idempotency(address, "k:1:x"), "idem/k:1:x".to_string()),
        ]
    }

    #[test]
    fn default_runs_keep_their_keys() {
        let local = RunAddress::local(RUN_ID);
        for (key, earlier) in default_keys(&local) {
            assert_eq!(String::from_utf8(key).unwrap(), earlier);
        }
        let child = RunAddress::local(format!("{RUN_ID}.sub.2"));
        assert_eq!(run(&child), format!("run/{RUN_ID}.sub.2").into_bytes());
    }

    #[test]
    fn index_entries_read_back_their_run() {
        let addresses = [
            RunAddress::local(RUN_ID),
            RunAddress::local("site/north/r1"),
            RunAddress::new("billing", 7, "r1").unwrap(),
            RunAddress::new("billing", 7, "a/b").unwrap(),
            RunAddress::local("billing:7:r1"),
        ];
        for address in addresses {
            let entries = [
                (run_by_created(5, &address), RUN_CREATED_PREFIX.to_string()),
                (
                    run_by_status("running", 5, &address),
                    runs_with_status("running"),
                ),
                (run_by_flow("chain", 5, &address), runs_of_flow("chain")),
                (
                    run_by_correlation("c/1", 5, &address),
                    runs_with_correlation("c/1"),
                ),
                (
                    run_by_finished(5, &address),
                    RUN_FINISHED_PREFIX.to_string(),
                ),
            ];
            for (key, prefix) in entries {
                assert_eq!(run_in_index(&key, prefix.as_bytes()), Some(address.clone()));
            }
            assert!(run_by_finished(5, &address) < runs_finished_through(5));
            assert!(run_by_finished(6, &address) > runs_finished_through(5));
        }
    }

    /// A run of another namespace or partition never gets a key of the
    /// default namespace, not even one whose run id or idempotency key
    /// spells out its address.
    #[test]
    fn other_namespaces_cannot_collide_with_the_default() {
        let other = RunAddress::new("billing", 7, "r1").unwrap();
        let lookalike = RunAddress::local("billing:7:r1");
        let other_keys: Vec<Vec<u8>> = vec![
            run(&other),
            run_by_created(7, &other),
            run_by_status("failed", 7, &other),
            run_by_flow("chain", 7, &other),
            run_by_correlation("c", 7, &other),
            run_by_finished(9, &other),
            run_owner(&other).into_bytes(),
            idempotency(&other, "k"),
        ];
        let lookalike_keys: Vec<Vec<u8>> = vec![
            run(&lookalike),
            run_by_created(7, &lookalike),
            run_by_status("failed", 7, &lookalike),
            run_by_flow("chain", 7, &lookalike),
            run_by_correlation("c", 7, &lookalike),
            run_by_finished(9, &lookalike),
            run_owner(&lookalike).into_bytes(),
            idempotency(&lookalike, "billing:7/k"),
            idempotency(&lookalike, ":billing:7/k"),
        ];
        for key in &other_keys {
            assert!(
                !lookalike_keys.contains(key),
                "{}",
                String::from_utf8_lossy(key)
            );
        }
        assert_eq!(run(&other), b"run/billing:7:r1".to_vec());
        assert_eq!(idempotency(&other, "k"), b"idem:billing:7/k".to_vec());
    }
}
