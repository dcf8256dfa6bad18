//! The key-value API: writes as commands through the cluster component,
//! reads of the applied state, optionally behind a read barrier.

use floe_state::{Command, CommandResponse, KvEntry};

use crate::call_context::CallContext;
use crate::cluster::ClusterHandle;
use crate::error::{unexpected_answer, ApiError};
use crate::ops::{clamp_limit, internal, validate_key};

/// A compare-and-set's outcome: whether it swapped, and the value and
/// revision the key holds now.
pub struct CasOutcome {
    pub succeeded: bool,
    pub current: Option<Vec<u8>>,
    pub revision: u64,
}

/// Handle to the key-value API; cheap to clone. Every operation takes the
/// caller's context, which the authorization check reads.
#[derive(Clone)]
pub struct KvService {
    cluster: ClusterHandle,
}

impl KvService {
    pub fn new(cluster: ClusterHandle) -> KvService {
        KvService { cluster }
    }

    /// Stores `value` under `key`; the new revision.
    pub async fn put(
        &self,
        _ctx: &CallContext,
        key: String,
        value: Vec<u8>,
    ) -> Result<u64, ApiError> {
        match self.cluster.write(Command::KvPut { key, value }).await? {
            CommandResponse::Put { revision } => Ok(revision),
            other => Err(unexpected_answer(&other)),
        }
    }

    /// Swaps `key` from `expected` (none: absent) to `new` (none: delete).
    pub async fn cas(
        &self,
        _ctx: &CallContext,
        key: String,
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
    ) -> Result<CasOutcome, ApiError> {
        match self
            .cluster
            .write(Command::KvCas { key, expected, new })
            .await?
        {
            CommandResponse::Cas {
                succeeded,
                current,
                revision,
            } => Ok(CasOutcome {
                succeeded,
                current,
                revision,
            }),
            other => Err(unexpected_answer(&other)),
        }
    }

    /// Removes `key`; whether it was there.
    pub async fn delete(&self, _ctx: &CallContext, key: String) -> Result<bool, ApiError> {
        match self.cluster.write(Command::KvDelete { key }).await? {
            CommandResponse::Delete { existed } => Ok(existed),
            other => Err(unexpected_answer(&other)),
        }
    }

    pub async fn get(
        &self,
        _ctx: &CallContext,
        key: &str,
        linearizable: bool,
    ) -> Result<Option<KvEntry>, ApiError> {
        validate_key(key)?;
        // Test-only defect for the chaos suite: no ReadIndex barrier, so a
        // lagging or cut-off node serves stale "linearizable" reads.
        if linearizable && !cfg!(feature = "defect-stale-reads") {
            self.cluster.read_barrier().await?;
        }
        self.cluster.reader().get(key).map_err(internal)
    }

    /// Up to `limit` entries under `prefix` after `start_after`, and
    /// whether more follow.
    pub async fn list(
        &self,
        _ctx: &CallContext,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        linearizable: bool,
    ) -> Result<(Vec<(String, KvEntry)>, bool), ApiError> {
        let limit = clamp_limit(limit)?;
        if linearizable {
            self.cluster.read_barrier().await?;
        }
        // One extra row tells the caller whether another page exists.
        let mut items = self
            .cluster
            .reader()
            .list(prefix, start_after, limit + 1)
            .map_err(internal)?;
        let more = items.len() > limit;
        items.truncate(limit);
        Ok((items, more))
    }
}
