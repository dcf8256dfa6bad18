//! Large payloads as replicated, content-addressed blobs.
//!
//! A payload over `runs.inline_payload_bytes` is stored here and the run
//! carries a `{"$blob": "sha256:…", "size": N}` reference instead. Before the
//! command holding that reference is proposed, the blob is durable on a
//! majority of voters (this node counts as one), so a committed reference can
//! always be resolved while a majority lives. The other voters get it in the
//! background, and every node's repair loop fetches referenced blobs it
//! lacks; blobs that no record refers to any more are deleted after a grace
//! period (they may belong to a write still on its way through the log).

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use floe_state::blobs::BlobRef;
use floe_state::NodeId;
use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::call_context::CallContext;
use crate::clock::Clock;
use crate::cluster::ClusterHandle;
use crate::config::RunsConfig;
use crate::error::ApiError;
use crate::peer_api::{PeerRequest, PeerResponse};
use floe_engine::names::quote_bounded;

/// How long pushing one blob to one peer may take, plus a share per MiB.
const BLOB_TIMEOUT_BASE: Duration = Duration::from_secs(5);
const BLOB_TIMEOUT_PER_MIB: Duration = Duration::from_millis(200);
/// How often each node sweeps unreferenced blobs and fetches missing ones.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(30);
/// Referenced blobs checked per maintenance pass.
const REPAIR_PAGE: usize = 1_000;

fn blob_timeout(size: usize) -> Duration {
    BLOB_TIMEOUT_BASE + BLOB_TIMEOUT_PER_MIB * (size / (1024 * 1024)) as u32
}

fn blocking_error(err: tokio::task::JoinError) -> ApiError {
    ApiError::Internal(format!("blob store thread: {err}"))
}

/// Handle to the blob component; cheap to clone.
#[derive(Clone)]
pub struct BlobService {
    cluster: ClusterHandle,
    store: floe_state::BlobStore,
    clock: Clock,
    /// The payload limits (`runs.inline_payload_bytes`, `runs.max_payload_bytes`).
    limits: RunsConfig,
    /// How long an unreferenced blob is kept (`storage.blob_gc_grace_ms`).
    gc_grace: Duration,
}

impl BlobService {
    pub fn new(
        cluster: ClusterHandle,
        store: floe_state::BlobStore,
        limits: RunsConfig,
        gc_grace: Duration,
    ) -> BlobService {
        BlobService {
            clock: cluster.clock().clone(),
            cluster,
            store,
            limits,
            gc_grace,
        }
    }

    fn id(&self) -> floe_state::NodeId {
        self.cluster.id()
    }

    /// Parses a client's or worker's JSON payload; one over the inline limit
    /// becomes a replicated blob and the returned value is its reference.
    ///
    /// An object keeps its small fields inline: its largest fields become
    /// blobs one by one until the rest fits, so expressions can still read
    /// the small ones (a count, a status) and pass the large ones on as
    /// references, which workers and model replicas receive resolved.
    pub async fn payload_value(&self, bytes: &[u8], what: &str) -> Result<Value, ApiError> {
        let (value, inline) = check_payload(bytes, what, &self.limits)?;
        if inline {
            return Ok(value);
        }
        let limit = self.limits.inline_payload_bytes as usize;
        let Value::Object(mut fields) = value else {
            return self.payload_blob(bytes.to_vec(), what).await;
        };
        let mut sizes: Vec<(String, usize)> = fields
            .iter()
            .map(|(name, field)| {
                (
                    name.clone(),
                    serde_json::to_vec(field).map_or(0, |bytes| bytes.len()),
                )
            })
            .collect();
        sizes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut total = bytes.len();
        for (name, size) in sizes {
            if total <= limit || size < MIN_FIELD_BLOB_BYTES {
                break;
            }
            let Some(field) = fields.get_mut(&name) else {
                continue;
            };
            let field_bytes =
                serde_json::to_vec(field).map_err(|err| ApiError::Internal(err.to_string()))?;
            let reference = self.payload_blob(field_bytes, what).await?;
            total = total - size + serde_json::to_vec(&reference).map_or(0, |bytes| bytes.len());
            *field = reference;
        }
        if total > limit {
            return self.payload_blob(bytes.to_vec(), what).await;
        }
        Ok(Value::Object(fields))
    }

    async fn payload_blob(&self, bytes: Vec<u8>, what: &str) -> Result<Value, ApiError> {
        let blob = self.store(bytes).await?;
        tracing::debug!(node_id = self.id(), blob = %blob.hash, size = blob.size, what, "payload stored as a blob");
        Ok(blob.to_json())
    }

    /// Stores `bytes` here and on a majority of voters; returns once they
    /// hold it durably. The remaining voters are served in the background.
    pub async fn store(&self, bytes: Vec<u8>) -> Result<BlobRef, ApiError> {
        let blobs = self.store.clone();
        let bytes = Arc::new(bytes);
        let local_bytes = bytes.clone();
        let blob = tokio::task::spawn_blocking(move || blobs.put(&local_bytes))
            .await
            .map_err(blocking_error)?
            .map_err(|err| ApiError::Internal(err.to_string()))?;

        let (nodes, voters) = self.cluster.members();
        let others: Vec<(NodeId, String)> = voters
            .iter()
            .filter(|id| **id != self.id())
            .filter_map(|id| nodes.get(id).map(|info| (*id, info.raft_addr.clone())))
            .collect();
        let quorum = voters.len() / 2 + 1;
        let local_copies = usize::from(voters.contains(&self.id()));
        let mut needed = quorum.saturating_sub(local_copies);

        let mut pushes: FuturesUnordered<_> = others
            .into_iter()
            .map(|(peer, raft_addr)| {
                let request = PeerRequest::BlobPut {
                    hash: blob.hash.clone(),
                    bytes: serde_bytes::ByteBuf::from(bytes.to_vec()),
                };
                let timeout = blob_timeout(bytes.len());
                let cluster = self.cluster.clone();
                async move {
                    let outcome = cluster.call(peer, &raft_addr, &request, timeout).await;
                    (peer, outcome)
                }
            })
            .collect();
        let mut failures = Vec::new();
        while needed > 0 {
            let Some((peer, outcome)) = pushes.next().await else {
                break;
            };
            match outcome {
                Ok(_) => needed -= 1,
                Err(err) => {
                    crate::warn_limited!(format!("blob not stored on peer {peer}"), node_id = self.id(), peer, blob = %blob.hash, error = %err, "blob not stored on peer");
                    failures.push(format!("node {peer}: {err}"));
                }
            }
        }
        if needed > 0 {
            return Err(ApiError::Unavailable(format!(
                "blob {} ({} bytes) reached too few voters ({quorum} needed): {}",
                blob.hash,
                blob.size,
                failures.join("; ")
            )));
        }
        if !pushes.is_empty() {
            let hash = blob.hash.clone();
            tokio::spawn(async move {
                while let Some((peer, outcome)) = pushes.next().await {
                    if let Err(err) = outcome {
                        // The peer's repair loop fetches it once the reference commits.
                        tracing::debug!(peer, blob = %hash, error = %err, "background blob copy failed");
                    }
                }
            });
        }
        Ok(blob)
    }

    /// The blob at `hash` for an API caller.
    pub async fn get(&self, _ctx: &CallContext, hash: &str) -> Result<Vec<u8>, ApiError> {
        self.load(hash).await
    }

    /// The blob's bytes, from this node or, when missing here, from a peer
    /// (then kept here too).
    pub async fn load(&self, hash: &str) -> Result<Vec<u8>, ApiError> {
        if !floe_state::blobs::is_hash(hash) {
            return Err(ApiError::InvalidArgument(format!(
                "{} is not a sha256 blob address",
                quote_bounded(hash)
            )));
        }
        let blobs = self.store.clone();
        let wanted = hash.to_string();
        let local = tokio::task::spawn_blocking(move || blobs.get(&wanted))
            .await
            .map_err(blocking_error)?
            .map_err(|err| ApiError::Internal(err.to_string()))?;
        if let Some(bytes) = local {
            return Ok(bytes);
        }
        self.fetch(hash).await
    }

    async fn fetch(&self, hash: &str) -> Result<Vec<u8>, ApiError> {
        let (nodes, _) = self.cluster.members();
        let mut problems = Vec::new();
        for (peer, info) in nodes.iter().filter(|(id, _)| **id != self.id()) {
            let request = PeerRequest::BlobGet {
                hash: hash.to_string(),
            };
            match self
                .cluster
                .call(
                    *peer,
                    &info.raft_addr,
                    &request,
                    blob_timeout(64 * 1024 * 1024),
                )
                .await
            {
                Ok(PeerResponse::Blob(Some(bytes))) => {
                    let blobs = self.store.clone();
                    let expected = hash.to_string();
                    let bytes = bytes.into_vec();
                    let stored = tokio::task::spawn_blocking(move || {
                        blobs.put_expecting(&expected, &bytes).map(|_| bytes)
                    })
                    .await
                    .map_err(blocking_error)?;
                    match stored {
                        Ok(bytes) => return Ok(bytes),
                        Err(err) => problems.push(format!("node {peer}: {err}")),
                    }
                }
                Ok(PeerResponse::Blob(None)) => problems.push(format!("node {peer}: not there")),
                Ok(other) => problems.push(format!("node {peer}: unexpected answer {other:?}")),
                Err(err) => problems.push(format!("node {peer}: {err}")),
            }
        }
        Err(ApiError::NotFound(format!(
            "blob sha256:{hash} is on no reachable node ({})",
            problems.join("; ")
        )))
    }

    /// `value` with every blob reference replaced by the JSON it stands for
    /// (what workers receive: they never see references).
    pub async fn resolve(&self, value: &Value) -> Result<Value, ApiError> {
        if let Some(blob) = BlobRef::from_json(value) {
            let bytes = self.load(&blob.hash).await?;
            return serde_json::from_slice(&bytes).map_err(|err| {
                ApiError::Internal(format!("blob sha256:{} is not JSON: {err}", blob.hash))
            });
        }
        match value {
            Value::Array(items) => {
                let mut resolved = Vec::with_capacity(items.len());
                for item in items {
                    resolved.push(Box::pin(self.resolve(item)).await?);
                }
                Ok(Value::Array(resolved))
            }
            Value::Object(fields) => {
                let mut resolved = serde_json::Map::with_capacity(fields.len());
                for (name, field) in fields {
                    resolved.insert(name.clone(), Box::pin(self.resolve(field)).await?);
                }
                Ok(Value::Object(resolved))
            }
            other => Ok(other.clone()),
        }
    }

    /// Serves a peer's copy of a blob.
    pub async fn accept(&self, hash: String, bytes: Vec<u8>) -> Result<(), ApiError> {
        if bytes.len() as u64 > crate::config::MAX_PAYLOAD_CEILING {
            return Err(ApiError::InvalidArgument(format!(
                "blob {hash} is {} bytes; too large",
                bytes.len()
            )));
        }
        let blobs = self.store.clone();
        tokio::task::spawn_blocking(move || blobs.put_expecting(&hash, &bytes))
            .await
            .map_err(blocking_error)?
            .map(|_| ())
            .map_err(|err| ApiError::InvalidArgument(err.to_string()))
    }

    /// This node's copy of a blob, for a peer.
    pub async fn local(&self, hash: String) -> Result<Option<Vec<u8>>, ApiError> {
        let blobs = self.store.clone();
        tokio::task::spawn_blocking(move || blobs.get(&hash))
            .await
            .map_err(blocking_error)?
            .map_err(|err| ApiError::Internal(err.to_string()))
    }
}

/// Fields smaller than this stay inline even in a payload over the limit.
const MIN_FIELD_BLOB_BYTES: usize = 1024;

/// Parses a payload within the limits; the flag says whether it may stay inline.
pub fn check_payload(
    bytes: &[u8],
    what: &str,
    limits: &RunsConfig,
) -> Result<(Value, bool), ApiError> {
    if bytes.len() as u64 > limits.max_payload_bytes {
        return Err(ApiError::ResourceExhausted(format!(
            "{what} is {} bytes, more than runs.max_payload_bytes ({})",
            bytes.len(),
            limits.max_payload_bytes
        )));
    }
    if bytes.is_empty() {
        return Ok((Value::Null, true));
    }
    // Before parsing: the parser's own limit would answer with less to go on.
    let depth = floe_engine::limits::text_depth(bytes);
    if depth > floe_engine::limits::MAX_VALUE_DEPTH {
        return Err(ApiError::InvalidArgument(format!(
            "{what} nests {depth} levels deep; the limit is {} levels of arrays and objects (fixed)",
            floe_engine::limits::MAX_VALUE_DEPTH
        )));
    }
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|err| ApiError::InvalidArgument(format!("{what} is not JSON: {err}")))?;
    Ok((value, bytes.len() as u64 <= limits.inline_payload_bytes))
}

/// Deletes unreferenced blobs past their grace and fetches referenced ones
/// this node lacks, every [`MAINTENANCE_INTERVAL`].
impl BlobService {
    pub async fn maintain(self, cancel: CancellationToken) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = self.clock.sleep(MAINTENANCE_INTERVAL) => {}
            }
            if let Err(err) = self.sweep().await {
                crate::warn_limited!("blob sweep failed", node_id = self.id(), error = %err, "blob sweep failed");
            }
            if let Err(err) = self.repair().await {
                crate::warn_limited!("blob repair failed", node_id = self.id(), error = %err, "blob repair failed");
            }
        }
    }

    /// Removes blobs that no applied record refers to and that are older than
    /// `storage.blob_gc_grace_ms`. Returns how many went.
    pub async fn sweep(&self) -> Result<usize, ApiError> {
        let blobs = self.store.clone();
        let reader = self.cluster.reader().clone();
        let grace = self.gc_grace;
        let node_id = self.id();
        // Blob ages are file modification times, so the node clock's wall time.
        let now = UNIX_EPOCH + Duration::from_millis(self.clock.now_ms());
        tokio::task::spawn_blocking(move || -> Result<usize, ApiError> {
        let internal = |err: floe_state::StoreError| ApiError::Internal(err.to_string());
        let mut removed = 0;
        for (blob, modified) in blobs.list().map_err(internal)? {
            let old_enough = now.duration_since(modified).is_ok_and(|age| age >= grace);
            if !old_enough || reader.blob_is_referenced(&blob.hash).map_err(internal)? {
                continue;
            }
            // Checked again under the store's lock: a write may have just stored it anew.
            if blobs.remove_if_older(&blob.hash, grace).map_err(internal)? {
                tracing::info!(node_id, blob = %blob.hash, size = blob.size, "unreferenced blob deleted");
                removed += 1;
            }
        }
        Ok(removed)
    })
    .await
    .map_err(blocking_error)?
    }

    /// Fetches referenced blobs missing here (a voter that was down when they
    /// were written, or that caught up by snapshot). Returns how many it fetched.
    pub async fn repair(&self) -> Result<usize, ApiError> {
        let (_, voters) = self.cluster.members();
        if !voters.contains(&self.id()) {
            return Ok(0);
        }
        let mut fetched = 0;
        let mut after: Option<String> = None;
        loop {
            let reader = self.cluster.reader().clone();
            let blobs = self.store.clone();
            let start = after.clone();
            let (page, missing) = tokio::task::spawn_blocking(move || {
                let page = reader.referenced_blobs(start.as_deref(), REPAIR_PAGE)?;
                let missing: Vec<String> = page
                    .iter()
                    .filter(|hash| !blobs.has(hash))
                    .cloned()
                    .collect();
                Ok::<_, floe_state::StoreError>((page, missing))
            })
            .await
            .map_err(blocking_error)?
            .map_err(|err| ApiError::Internal(err.to_string()))?;
            for hash in missing {
                match self.fetch(&hash).await {
                    Ok(_) => fetched += 1,
                    Err(err) => {
                        crate::warn_limited!("referenced blob not fetched", node_id = self.id(), blob = %hash, error = %err, "referenced blob missing here and not fetched")
                    }
                }
            }
            if page.len() < REPAIR_PAGE {
                return Ok(fetched);
            }
            after = page.last().cloned();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_checked_against_both_limits() {
        let limits = crate::config::RunsConfig {
            inline_payload_bytes: 16,
            max_payload_bytes: 64,
            ..Default::default()
        };
        assert_eq!(
            check_payload(b"", "x", &limits).unwrap(),
            (Value::Null, true)
        );
        assert_eq!(
            check_payload(b"[1,2]", "x", &limits).unwrap(),
            (serde_json::json!([1, 2]), true)
        );
        let large = format!("\"{}\"", "a".repeat(30));
        assert!(
            !check_payload(large.as_bytes(), "x", &limits).unwrap().1,
            "over the inline limit: a blob"
        );
        let err = check_payload(b"{", "run input", &limits)
            .unwrap_err()
            .to_string();
        assert!(err.contains("run input is not JSON"), "{err}");
        let err = check_payload(&[b' '; 65], "task output", &limits).unwrap_err();
        assert!(matches!(err, ApiError::ResourceExhausted(_)), "{err:?}");
        let err = err.to_string();
        assert!(
            err.contains("task output is 65 bytes, more than runs.max_payload_bytes (64)"),
            "{err}"
        );
        let deep = format!("{}1{}", "[".repeat(65), "]".repeat(65));
        let err = check_payload(
            deep.as_bytes(),
            "run input",
            &crate::config::RunsConfig::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("run input nests 65 levels deep") && err.contains("64"),
            "{err}"
        );
        let at_limit = format!("{}1{}", "[".repeat(64), "]".repeat(64));
        assert!(check_payload(
            at_limit.as_bytes(),
            "run input",
            &crate::config::RunsConfig::default()
        )
        .is_ok());
    }

    #[test]
    fn timeouts_grow_with_size() {
        assert_eq!(blob_timeout(10), BLOB_TIMEOUT_BASE);
        assert!(blob_timeout(40 * 1024 * 1024) > blob_timeout(1024 * 1024));
    }
}
