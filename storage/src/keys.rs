//! The layout of the state machine's data tree. One tree holds every kind of
//! replicated record under its own prefix, so snapshots, digests and
//! generation switches cover them all at once.
//!
//! - `kv/<key>`                          → `KvEntry` (the key-value API)
//! - `flow/def/<name>/<version:020>`     → `FlowRecord`
//! - `flow/hash/<name>/<sha256>`         → version (identical definitions)
//! - `flow/latest/<name>`                → latest version

pub(crate) const KV_PREFIX: &[u8] = b"kv/";
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
