//! Read barriers: the ReadIndex protocol, with rounds shared between
//! concurrent reads (see `reads.rs`).

use super::{bounded, ClusterHandle};
use crate::cluster::CLIENT_REQUEST_TIMEOUT;
use crate::error::ApiError;
use crate::raft_errors::leadership_error;

impl ClusterHandle {
    /// Makes this node's state at least as new as every write committed
    /// before the call (the ReadIndex protocol): the leader confirms its
    /// leadership with a quorum and names its commit index; this node waits
    /// until it has applied that far. Reads after it are linearizable on any node.
    pub async fn read_barrier(&self) -> Result<(), ApiError> {
        let inner = &self.inner;
        let read_index = inner.reads.read_index(false).await?;
        if let Some(reason) = inner.disk.refusal() {
            // It refuses appends, so it cannot catch up: answer now, not at the timeout.
            let applied = inner
                .raft
                .metrics()
                .borrow()
                .last_applied
                .map(|id| id.index);
            if applied < read_index {
                return Err(ApiError::Unavailable(format!(
                    "node {} has applied up to {applied:?}, behind the read index {read_index:?}, and cannot catch up: {reason}",
                    inner.id
                )));
            }
        }
        let waited = inner
            .raft
            .wait(Some(CLIENT_REQUEST_TIMEOUT))
            .applied_index_at_least(read_index, "read barrier")
            .await;
        waited.map(|_| ()).map_err(|err| {
            let index = read_index.map_or_else(|| "0".to_string(), |index| index.to_string());
            ApiError::Unavailable(format!(
                "node {} did not apply up to the read index {index}: {err}",
                inner.id
            ))
        })
    }

    /// The leader's confirmed read index for a follower's read; refused
    /// unless this node leads when the round runs (no second hop).
    pub async fn read_index_as_leader(&self) -> Result<Option<u64>, ApiError> {
        self.inner.reads.read_index(true).await
    }

    /// Confirms with a quorum that this node still leads, waits until its
    /// state machine has applied everything committed before the call, and
    /// returns that read index.
    pub async fn confirm_leadership(&self) -> Result<Option<u64>, ApiError> {
        self.refuse_if_cut_off()?;
        let inner = &self.inner;
        // Confirming sends heartbeats, which would keep the followers from
        // electing a leader whose disk takes writes.
        if let Some(reason) = inner.disk.refusal() {
            return Err(ApiError::Unavailable(format!(
                "node {} leads but does not confirm reads while it refuses writes, so that another node takes over: {reason}",
                inner.id
            )));
        }
        let confirmed = bounded(
            CLIENT_REQUEST_TIMEOUT,
            "linearizable read",
            inner.raft.ensure_linearizable(),
        )
        .await?;
        match confirmed {
            Ok(read_log_id) => Ok(read_log_id.map(|id| id.index)),
            Err(err) => {
                let voters = self.members().1.len();
                Err(leadership_error(inner.id, voters, inner.heartbeat, err))
            }
        }
    }
}
