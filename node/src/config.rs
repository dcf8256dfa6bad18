//! Node configuration: one TOML file, every key overridable by `FLOE_*`
//! environment variables and by `--set KEY=VALUE` flags (in that order of
//! precedence, lowest first). Unknown keys and bad values are errors that name
//! the key and where it came from.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

/// Everything `floe serve` needs. Defaults suit a single edge box.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// This node's id: unique in the cluster and never reused.
    pub node_id: u64,
    /// Where the sled store and snapshots live.
    pub data_dir: PathBuf,
    /// QUIC listen address for node-to-node traffic.
    pub raft_addr: String,
    /// gRPC listen address for clients and workers.
    pub api_addr: String,
    /// HTTP listen address for health and metrics.
    pub http_addr: String,
    /// Addresses other nodes and clients use to reach this node; default to
    /// the listen addresses (which then must not be unspecified, like 0.0.0.0).
    pub advertise_raft_addr: String,
    pub advertise_api_addr: String,
    pub advertise_http_addr: String,
    /// Local `IP:PORT` that outgoing QUIC connections to peers are sent
    /// from; empty: any address, any port. The chaos suite gives each local
    /// node its own loopback address so that firewall rules can cut links.
    pub raft_client_bind_addr: String,
    /// `error`, `warn`, `info`, `debug` or a tracing filter directive.
    pub log_level: String,
    /// On SIGTERM, in-flight requests and streams get this long (ms) to end
    /// before they are cut off with `Unavailable`; the Raft core stops first.
    pub shutdown_grace_ms: u64,
    pub tls: TlsConfig,
    pub bootstrap: BootstrapConfig,
    pub raft: RaftTuning,
    pub storage: StorageConfig,
    pub runs: RunsConfig,
    pub inference: InferenceConfig,
    pub auth: AuthConfig,
}

/// Access control (`access.rs`): every API call is checked against the
/// roles granted in the replicated state; these principals are admins
/// cluster-wide whatever the state says, so a new cluster has its first
/// admin.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Principals (client certificate names) that are always admins.
    pub admins: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InferenceConfig {
    /// ONNX Runtime 1.31 library (`libonnxruntime.so.1.31.1`). Loaded on
    /// first use; a missing or too-old library fails the replicas (and
    /// `model put`) with its path.
    pub ort_library: PathBuf,
    /// Memory model replicas may take on this node; 0: half the machine's.
    pub memory_budget_bytes: u64,
    /// A replica unused this long may be evicted when another needs its
    /// memory. Default: 60 s.
    pub idle_evict_ms: u64,
    /// Largest model file `model put` accepts. Default and ceiling: 48 MiB
    /// (a blob travels between nodes as one QUIC frame).
    pub max_model_bytes: u64,
    /// How long a direct inference request waits for a replica that is
    /// loading (or evicted and placed again on demand). Default: 30 s.
    pub cold_start_wait_ms: u64,
    /// How long an inference step's task waits for a replica of its model
    /// before its attempt fails: finally when the model is not deployed,
    /// retryably when it is but no replica is placed or warm. Default: 30 s.
    pub no_replica_wait_ms: u64,
    /// GPUs this node offers to replicas; empty: what NVML finds (GPU builds).
    pub gpus: Vec<floe_inference::GpuDevice>,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        InferenceConfig {
            ort_library: PathBuf::new(),
            memory_budget_bytes: 0,
            idle_evict_ms: 60_000,
            max_model_bytes: MAX_PAYLOAD_CEILING,
            cold_start_wait_ms: 30_000,
            no_replica_wait_ms: 30_000,
            gpus: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunsConfig {
    /// Finished runs (and their idempotency keys) are deleted, through the
    /// log, this long after they ended. Default: 7 days.
    pub retention_ms: u64,
    /// A run input, signal payload or task output above this many bytes is
    /// stored as a replicated blob and the run carries a reference. Default: 256 KiB.
    pub inline_payload_bytes: u64,
    /// Payloads above this are refused. Default: 16 MiB; at most 48 MiB
    /// (a blob travels between nodes as one QUIC frame of at most 64 MiB).
    pub max_payload_bytes: u64,
}

impl Default for RunsConfig {
    fn default() -> Self {
        RunsConfig {
            retention_ms: 7 * 24 * 3600 * 1000,
            inline_payload_bytes: 256 * 1024,
            max_payload_bytes: 16 * 1024 * 1024,
        }
    }
}

/// The largest `runs.max_payload_bytes` accepted.
pub use floe_api::MAX_PAYLOAD_CEILING;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The cluster CA certificate (never its key).
    pub ca: PathBuf,
    /// This node's certificate, naming `node-<id>.floe`.
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Static-membership bootstrap for appliances: every node lists the same
/// peers; once all `expect` of them are up and none holds Raft state, the
/// lowest id initializes the cluster. Starting again is a no-op.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BootstrapConfig {
    /// 0 disables expect-N bootstrap (use `floe cluster init` and `join`).
    pub expect: u32,
    /// `ID@HOST:PORT` (QUIC address) for every member, this node included.
    pub peers: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTuning {
    /// The leader's heartbeat period.
    pub heartbeat_interval_ms: u64,
    /// A follower that has heard no leader for a random time between these
    /// two asks the voters for pre-votes, and campaigns with a majority.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many applied entries.
    pub snapshot_after_entries: u64,
    /// Log entries kept behind the snapshot for slow followers.
    pub keep_entries_after_snapshot: u64,
    /// Time allowed to send or install one snapshot.
    pub snapshot_timeout_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// sled page cache; small on edge boxes.
    pub cache_capacity_bytes: u64,
    /// A blob no record refers to is deleted once it is this old (the age
    /// covers a blob stored for a write that has not committed yet). Default: 10 minutes.
    pub blob_gc_grace_ms: u64,
    /// Below this many free bytes on the data dir's filesystem the node
    /// refuses writes and log appends until space returns (see `disk.rs`);
    /// room for sled's buffers and a snapshot or two. 0 checks only for a
    /// read-only filesystem. Default: 256 MiB.
    pub min_free_bytes: u64,
}

/// Longest `shutdown_grace_ms`: a minute.
pub const MAX_SHUTDOWN_GRACE_MS: u64 = 60_000;
/// Largest `storage.min_free_bytes`: 64 GiB.
pub const MAX_MIN_FREE_BYTES: u64 = 64 << 30;

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_id: 1,
            data_dir: PathBuf::from("floe-data"),
            raft_addr: "127.0.0.1:7000".into(),
            api_addr: "127.0.0.1:7100".into(),
            http_addr: "127.0.0.1:7200".into(),
            advertise_raft_addr: String::new(),
            advertise_api_addr: String::new(),
            advertise_http_addr: String::new(),
            raft_client_bind_addr: String::new(),
            log_level: "info".into(),
            shutdown_grace_ms: 1500,
            tls: TlsConfig::default(),
            bootstrap: BootstrapConfig::default(),
            raft: RaftTuning::default(),
            storage: StorageConfig::default(),
            runs: RunsConfig::default(),
            inference: InferenceConfig::default(),
            auth: AuthConfig::default(),
        }
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            ca: "certs/ca.pem".into(),
            cert: "certs/node.pem".into(),
            key: "certs/node-key.pem".into(),
        }
    }
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat_interval_ms: 50,
            // Six heartbeats of silence before anyone asks: a loaded two-core
            // box misses one or two, not six; pre-vote keeps a false alarm
            // from deposing a leader that the others still hear.
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 500,
            snapshot_after_entries: 10_000,
            keep_entries_after_snapshot: 1_000,
            snapshot_timeout_ms: 60_000,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            cache_capacity_bytes: 32 * 1024 * 1024,
            blob_gc_grace_ms: 10 * 60 * 1000,
            min_free_bytes: 256 * 1024 * 1024,
        }
    }
}

/// A configuration problem, naming the key and where its value came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("config key `{key}` (from {source_name}): {reason}")]
    BadValue {
        key: String,
        source_name: String,
        reason: String,
    },
    #[error("unknown config key `{key}` (from {source_name}); known keys: {known}")]
    UnknownKey {
        key: String,
        source_name: String,
        known: String,
    },
    #[error("config key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

/// Environment variables under `FLOE_` that are client settings, not node keys.
/// `FLOE_*` variables that are not node settings: the CLI's, and the
/// development runtime files the inference tools and tests read.
const CLIENT_ENV_VARS: &[&str] = &[
    "FLOE_CONFIG",
    "FLOE_ENDPOINT",
    "FLOE_CA",
    "FLOE_CERT",
    "FLOE_KEY",
    "FLOE_LOG",
    "FLOE_ORT_LIB",
    "FLOE_MODELS_DIR",
    "FLOE_FONT",
];

impl NodeConfig {
    /// Loads the file (if any), then `FLOE_*` variables from `env`, then `--set` overrides.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[String],
    ) -> Result<NodeConfig, ConfigError> {
        let mut table = match file {
            Some(path) => read_table(path)?,
            None => Table::new(),
        };
        // Parse the file alone first, so its errors carry line and column.
        if let Some(path) = file {
            table_to_config(table.clone(), &path.display().to_string())?;
        }
        let known = known_keys();
        let mut env_vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("FLOE_"))
            .collect();
        env_vars.sort();
        for (var, raw) in env_vars {
            if CLIENT_ENV_VARS.contains(&var.as_str()) {
                continue;
            }
            let source_name = format!("environment variable {var}");
            let Some(key) = known.iter().find(|k| env_name(k) == var) else {
                return Err(ConfigError::UnknownKey {
                    key: var,
                    source_name,
                    known: known.join(", "),
                });
            };
            set_key(&mut table, key, &raw, &source_name)?;
        }
        for assignment in overrides {
            let source_name = format!("--set {assignment}");
            let Some((key, raw)) = assignment.split_once('=') else {
                return Err(ConfigError::BadValue {
                    key: assignment.clone(),
                    source_name,
                    reason: "expected KEY=VALUE".into(),
                });
            };
            let key = key.trim();
            if !known.iter().any(|k| k == key) {
                return Err(ConfigError::UnknownKey {
                    key: key.into(),
                    source_name,
                    known: known.join(", "),
                });
            }
            set_key(&mut table, key, raw.trim(), &source_name)?;
        }
        let config = table_to_config(table, "the merged configuration")?;
        config.validate()?;
        Ok(config)
    }

    /// Checks relations between keys that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: String| {
            Err(ConfigError::Invalid {
                key: key.into(),
                reason,
            })
        };
        if self.node_id == 0 {
            return invalid("node_id", "must be at least 1".into());
        }
        for (key, addr) in [
            ("raft_addr", &self.raft_addr),
            ("api_addr", &self.api_addr),
            ("http_addr", &self.http_addr),
        ] {
            if addr.parse::<SocketAddr>().is_err() {
                return invalid(key, format!("{addr:?} is not an IP:PORT socket address"));
            }
        }
        if !self.raft_client_bind_addr.is_empty()
            && self.raft_client_bind_addr.parse::<SocketAddr>().is_err()
        {
            return invalid(
                "raft_client_bind_addr",
                format!(
                    "{:?} is not an IP:PORT socket address",
                    self.raft_client_bind_addr
                ),
            );
        }
        for (key, addr) in [
            ("advertise_raft_addr", self.advertised_raft_addr()),
            ("advertise_api_addr", self.advertised_api_addr()),
            ("advertise_http_addr", self.advertised_http_addr()),
        ] {
            match addr.parse::<SocketAddr>() {
                Ok(sock) if sock.ip().is_unspecified() => {
                    return invalid(
                        key,
                        format!("{addr} is not reachable by other nodes; set {key}"),
                    );
                }
                Ok(_) => {}
                Err(_)
                    if addr
                        .rsplit_once(':')
                        .is_some_and(|(_, port)| port.parse::<u16>().is_ok()) => {}
                Err(_) => return invalid(key, format!("{addr:?} is not HOST:PORT")),
            }
        }
        let raft = &self.raft;
        if raft.heartbeat_interval_ms == 0 {
            return invalid("raft.heartbeat_interval_ms", "must be above 0".into());
        }
        // The vote lease is two heartbeats below the minimum timeout and must
        // still cover at least one heartbeat.
        if raft.election_timeout_min_ms < raft.heartbeat_interval_ms.saturating_mul(3) {
            return invalid(
                "raft.election_timeout_min_ms",
                format!(
                    "{} must be at least 3 × raft.heartbeat_interval_ms ({})",
                    raft.election_timeout_min_ms, raft.heartbeat_interval_ms
                ),
            );
        }
        // A stop must stay bounded for the supervisor that sent SIGTERM.
        if self.shutdown_grace_ms > MAX_SHUTDOWN_GRACE_MS {
            return invalid(
                "shutdown_grace_ms",
                format!(
                    "{} exceeds the {MAX_SHUTDOWN_GRACE_MS} ms limit",
                    self.shutdown_grace_ms
                ),
            );
        }
        // Above this a typical edge disk would never take a write.
        if self.storage.min_free_bytes > MAX_MIN_FREE_BYTES {
            return invalid(
                "storage.min_free_bytes",
                format!(
                    "{} exceeds the {MAX_MIN_FREE_BYTES} byte limit (64 GiB)",
                    self.storage.min_free_bytes
                ),
            );
        }
        if raft.election_timeout_max_ms <= raft.election_timeout_min_ms {
            return invalid(
                "raft.election_timeout_max_ms",
                format!(
                    "{} must exceed raft.election_timeout_min_ms ({})",
                    raft.election_timeout_max_ms, raft.election_timeout_min_ms
                ),
            );
        }
        if raft.snapshot_timeout_ms < 1_000 {
            return invalid("raft.snapshot_timeout_ms", "must be at least 1000".into());
        }
        if raft.snapshot_after_entries == 0 {
            return invalid("raft.snapshot_after_entries", "must be above 0".into());
        }
        if self.runs.retention_ms < 1_000 {
            return invalid("runs.retention_ms", "must be at least 1000".into());
        }
        if self.runs.max_payload_bytes > MAX_PAYLOAD_CEILING {
            return invalid(
                "runs.max_payload_bytes",
                format!("must be at most {MAX_PAYLOAD_CEILING}"),
            );
        }
        if self.runs.inline_payload_bytes > self.runs.max_payload_bytes {
            return invalid(
                "runs.inline_payload_bytes",
                "must not be above runs.max_payload_bytes".into(),
            );
        }
        if self.inference.max_model_bytes > MAX_PAYLOAD_CEILING
            || self.inference.max_model_bytes < 1024
        {
            return invalid(
                "inference.max_model_bytes",
                format!("must be 1024 to {MAX_PAYLOAD_CEILING}"),
            );
        }
        if self.inference.idle_evict_ms < 1_000 {
            return invalid("inference.idle_evict_ms", "must be at least 1000".into());
        }
        if let Err(err) = floe_inference::GpuInventory::declared(self.inference.gpus.clone()) {
            return invalid("inference.gpus", err.to_string());
        }
        if self.storage.blob_gc_grace_ms < 1_000 {
            return invalid("storage.blob_gc_grace_ms", "must be at least 1000".into());
        }
        if self.storage.cache_capacity_bytes < 1024 * 1024 {
            return invalid(
                "storage.cache_capacity_bytes",
                "must be at least 1048576 (1 MiB)".into(),
            );
        }
        for (position, admin) in self.auth.admins.iter().enumerate() {
            if let Some(problem) = floe_state::access::principal_problem(admin) {
                return invalid(&format!("auth.admins[{position}]"), problem);
            }
        }
        let peers = self.bootstrap_peers()?;
        if self.bootstrap.expect > 0 {
            if peers.len() != self.bootstrap.expect as usize {
                return invalid(
                    "bootstrap.peers",
                    format!(
                        "lists {} peers but bootstrap.expect is {}",
                        peers.len(),
                        self.bootstrap.expect
                    ),
                );
            }
            if !peers.iter().any(|(id, _)| *id == self.node_id) {
                return invalid(
                    "bootstrap.peers",
                    format!("does not list this node (node_id {})", self.node_id),
                );
            }
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log_level).is_err() {
            return invalid(
                "log_level",
                format!(
                    "{:?} is not a log level or filter directive",
                    self.log_level
                ),
            );
        }
        Ok(())
    }

    /// `bootstrap.peers` parsed as `(id, raft address)`, ids unique.
    pub fn bootstrap_peers(&self) -> Result<Vec<(u64, String)>, ConfigError> {
        let mut peers: Vec<(u64, String)> = Vec::new();
        for (position, entry) in self.bootstrap.peers.iter().enumerate() {
            let bad = |reason: String| ConfigError::Invalid {
                key: format!("bootstrap.peers[{position}]"),
                reason,
            };
            let (id, addr) = entry
                .split_once('@')
                .ok_or_else(|| bad(format!("{entry:?} is not ID@HOST:PORT")))?;
            let id: u64 = id
                .trim()
                .parse()
                .map_err(|_| bad(format!("{id:?} is not a node id")))?;
            if id == 0 {
                return Err(bad("node id 0 is not allowed".into()));
            }
            if peers.iter().any(|(seen, _)| *seen == id) {
                return Err(bad(format!("node id {id} is listed twice")));
            }
            peers.push((id, addr.trim().to_string()));
        }
        Ok(peers)
    }

    pub fn advertised_raft_addr(&self) -> &str {
        non_empty_or(&self.advertise_raft_addr, &self.raft_addr)
    }

    pub fn advertised_api_addr(&self) -> &str {
        non_empty_or(&self.advertise_api_addr, &self.api_addr)
    }

    pub fn advertised_http_addr(&self) -> &str {
        non_empty_or(&self.advertise_http_addr, &self.http_addr)
    }
}

fn non_empty_or<'a>(preferred: &'a str, fallback: &'a str) -> &'a str {
    if preferred.is_empty() {
        fallback
    } else {
        preferred
    }
}

fn read_table(path: &Path) -> Result<Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|err| ConfigError::File {
        path: path.to_path_buf(),
        reason: err.to_string(),
    })?;
    text.parse::<Table>().map_err(|err| ConfigError::File {
        path: path.to_path_buf(),
        reason: err.to_string(),
    })
}

fn table_to_config(table: Table, source_name: &str) -> Result<NodeConfig, ConfigError> {
    // Re-serializing keeps serde's error (which names the unknown or mistyped key).
    let text = toml::to_string(&table).map_err(|err| ConfigError::Invalid {
        key: "<root>".into(),
        reason: err.to_string(),
    })?;
    toml::from_str::<NodeConfig>(&text).map_err(|err| ConfigError::File {
        path: PathBuf::from(source_name),
        // The full message quotes the offending line, so the key is named.
        reason: err.to_string().trim_end().to_string(),
    })
}

/// Dotted paths of every key, derived from the defaults so the list cannot drift.
pub fn known_keys() -> Vec<String> {
    let mut keys = Vec::new();
    if let Ok(Value::Table(table)) = Value::try_from(NodeConfig::default()) {
        collect_keys(&table, "", &mut keys);
    }
    keys
}

fn collect_keys(table: &Table, prefix: &str, keys: &mut Vec<String>) {
    for (name, value) in table {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match value {
            Value::Table(inner) => collect_keys(inner, &path, keys),
            _ => keys.push(path),
        }
    }
}

/// `raft.heartbeat_interval_ms` → `FLOE_RAFT_HEARTBEAT_INTERVAL_MS`.
pub fn env_name(key: &str) -> String {
    format!("FLOE_{}", key.replace('.', "_").to_uppercase())
}

/// Writes `raw` at `key`, typed like the default value found there.
fn set_key(table: &mut Table, key: &str, raw: &str, source_name: &str) -> Result<(), ConfigError> {
    let defaults = Value::try_from(NodeConfig::default()).map_err(|err| ConfigError::Invalid {
        key: key.into(),
        reason: err.to_string(),
    })?;
    let mut template = &defaults;
    for part in key.split('.') {
        template = template.get(part).ok_or_else(|| ConfigError::UnknownKey {
            key: key.into(),
            source_name: source_name.into(),
            known: known_keys().join(", "),
        })?;
    }
    let bad = |reason: String| ConfigError::BadValue {
        key: key.into(),
        source_name: source_name.into(),
        reason,
    };
    let value = match template {
        Value::Integer(_) => Value::Integer(
            raw.parse::<i64>()
                .map_err(|_| bad(format!("expected a whole number, got {raw:?}")))?,
        ),
        Value::Boolean(_) => Value::Boolean(
            raw.parse::<bool>()
                .map_err(|_| bad(format!("expected true or false, got {raw:?}")))?,
        ),
        Value::Array(_) => Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| Value::String(item.into()))
                .collect(),
        ),
        _ => Value::String(raw.into()),
    };
    let mut cursor = table;
    let parts: Vec<&str> = key.split('.').collect();
    let (last, parents) = parts.split_last().ok_or_else(|| bad("empty key".into()))?;
    for part in parents {
        let entry = cursor
            .entry(part.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        cursor = match entry {
            Value::Table(inner) => inner,
            _ => return Err(bad(format!("`{part}` is not a table in the config file"))),
        };
    }
    cursor.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn write(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn file_env_and_flags_layer_in_order() {
        let file = write("node_id = 2\n[raft]\nheartbeat_interval_ms = 50\n");
        let config = NodeConfig::load(
            Some(file.path()),
            env(&[
                ("FLOE_RAFT_HEARTBEAT_INTERVAL_MS", "60"),
                ("FLOE_DATA_DIR", "/tmp/x"),
                ("PATH", "/bin"),
            ]),
            &["raft.heartbeat_interval_ms=70".into()],
        )
        .unwrap();
        assert_eq!(config.node_id, 2);
        assert_eq!(config.raft.heartbeat_interval_ms, 70);
        assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn unknown_file_key_is_named() {
        let file = write("node_id = 2\n[raft]\nhearbeat_interval_ms = 50\n");
        let err = NodeConfig::load(Some(file.path()), env(&[]), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("hearbeat_interval_ms"), "{err}");
    }

    #[test]
    fn unknown_env_key_is_named() {
        let err = NodeConfig::load(None, env(&[("FLOE_NODE_IDX", "3")]), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("FLOE_NODE_IDX"), "{err}");
    }

    #[test]
    fn bad_value_names_key_and_source() {
        let err = NodeConfig::load(None, env(&[("FLOE_NODE_ID", "three")]), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("node_id") && err.contains("FLOE_NODE_ID") && err.contains("three"),
            "{err}"
        );
        let err = NodeConfig::load(
            None,
            env(&[]),
            &["storage.cache_capacity_bytes=lots".into()],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("storage.cache_capacity_bytes"), "{err}");
    }

    #[test]
    fn mistyped_file_value_is_named() {
        let file = write("node_id = \"two\"\n");
        let err = NodeConfig::load(Some(file.path()), env(&[]), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("node_id"), "{err}");
    }

    #[test]
    fn relations_are_validated() {
        let err = NodeConfig::load(None, env(&[]), &["raft.election_timeout_min_ms=50".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("raft.election_timeout_min_ms"), "{err}");
        let err = NodeConfig::load(None, env(&[]), &["shutdown_grace_ms=600000".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("shutdown_grace_ms") && err.contains("60000 ms limit"),
            "{err}"
        );
        let err = NodeConfig::load(
            None,
            env(&[]),
            &["storage.min_free_bytes=99999999999999".into()],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("storage.min_free_bytes") && err.contains("64 GiB"),
            "{err}"
        );
        let err = NodeConfig::load(None, env(&[]), &["runs.retention_ms=5".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("runs.retention_ms"), "{err}");
        let err = NodeConfig::load(None, env(&[]), &["raft_addr=nowhere".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("raft_addr"), "{err}");
        let err = NodeConfig::load(None, env(&[]), &["raft_addr=0.0.0.0:7000".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("advertise_raft_addr"), "{err}");
    }

    #[test]
    fn bootstrap_peers_are_checked() {
        let overrides = [
            "bootstrap.expect=3".to_string(),
            "bootstrap.peers=1@127.0.0.1:1,2@127.0.0.1:2".to_string(),
        ];
        let err = NodeConfig::load(None, env(&[]), &overrides)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bootstrap.peers"), "{err}");
        let overrides = ["bootstrap.peers=1@a:1,1@b:2".to_string()];
        let err = NodeConfig::load(None, env(&[]), &overrides)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bootstrap.peers[1]") && err.contains("twice"),
            "{err}"
        );
        let overrides = [
            "bootstrap.expect=2".to_string(),
            "bootstrap.peers=1@127.0.0.1:1, 2@127.0.0.1:2".to_string(),
        ];
        let config = NodeConfig::load(None, env(&[]), &overrides).unwrap();
        assert_eq!(
            config.bootstrap_peers().unwrap(),
            vec![(1, "127.0.0.1:1".into()), (2, "127.0.0.1:2".into())]
        );
    }

    #[test]
    fn every_key_has_an_env_name() {
        let keys = known_keys();
        assert!(keys.contains(&"raft.snapshot_timeout_ms".to_string()));
        assert!(keys.contains(&"tls.ca".to_string()));
        assert_eq!(env_name("tls.ca"), "FLOE_TLS_CA");
    }
}
