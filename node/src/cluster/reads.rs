//! Linearizable reads share ReadIndex rounds. Each round costs the leader a
//! heartbeat to a quorum, and a follower one more QUIC request to the
//! leader; under load that was one round per read (every `run get` and
//! every watch of a run not yet applied here). Reads that arrive while a
//! round is in flight wait for the next round and share it: its index is
//! taken after each of them began, which is all linearizability asks. A
//! lone read starts a round at once.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::queue::{ask, next, Reply};
use super::ClusterHandle;
use crate::error::ApiError;
use crate::ops::unexpected;
use crate::peer_api::{PeerRequest, PeerResponse};

/// Queued reads before callers wait.
const QUEUE_DEPTH: usize = 4096;

/// A read waiting for a round.
struct Waiter {
    /// Asked by a follower: served only while this node leads, since a
    /// second hop could loop while leadership moves.
    leader_only: bool,
    reply: Reply<Option<u64>>,
}

/// The receiving end, handed to `run` once the node exists.
pub struct ReadQueue(mpsc::Receiver<Waiter>);

/// Handle to the read-round queue; cheap to clone.
#[derive(Clone)]
pub struct ReadRounds {
    queue: mpsc::Sender<Waiter>,
}

impl ReadRounds {
    pub fn new() -> (ReadRounds, ReadQueue) {
        let (queue, waiting) = mpsc::channel(QUEUE_DEPTH);
        (ReadRounds { queue }, ReadQueue(waiting))
    }

    /// The leader's commit index as confirmed by a round that began after
    /// this call; `leader_only` refuses it unless this node leads then.
    pub async fn read_index(&self, leader_only: bool) -> Result<Option<u64>, ApiError> {
        let dropped =
            || ApiError::Unavailable("node stopped before the read index was confirmed".into());
        ask(&self.queue, |reply| Waiter { leader_only, reply }, dropped).await
    }
}

/// Runs rounds one after another until `cancel` fires.
pub async fn run(
    cluster: ClusterHandle,
    queue: ReadQueue,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut waiting = queue.0;
    loop {
        let Some(first) = next(&mut waiting, &cancel).await else {
            return Ok(());
        };
        let mut batch = vec![first];
        while let Ok(next) = waiting.try_recv() {
            batch.push(next);
        }
        let local = cluster.route_is_local();
        let outcome = if local {
            cluster.confirm_leadership().await
        } else {
            forwarded_round(&cluster).await
        };
        cluster.metrics().observe_read_round(batch.len());
        if let Err(err) = &outcome {
            // Every round fails the same way while the quorum is gone; a
            // round that reached its quorum is no failure, whoever missed it.
            if let Some(suppressed) = crate::log_limit::allow("read round failed") {
                tracing::warn!(node_id = cluster.id(), suppressed, error = %err, "read round failed");
            }
        }
        for waiter in batch {
            let outcome = if waiter.leader_only && !local {
                Err(ApiError::Unavailable(format!(
                    "node {} is not the leader",
                    cluster.id()
                )))
            } else {
                outcome.clone()
            };
            // A caller that gave up no longer listens.
            let _ = waiter.reply.send(outcome);
        }
    }
}

async fn forwarded_round(cluster: &ClusterHandle) -> Result<Option<u64>, ApiError> {
    match cluster.forward(PeerRequest::ReadIndex).await? {
        PeerResponse::ReadIndex(index) => Ok(index),
        other => Err(unexpected(&other)),
    }
}
