//! Forwarded writes travel together. A follower sends its clients' and
//! workers' writes to the leader over QUIC; under load that was one
//! request stream per write (two or three per run), each paying QUIC
//! framing, a handler task and a proposal on the leader. This queue takes
//! whatever writes arrived while earlier forwards were in flight and sends
//! them as one `WriteMany`; the leader proposes each (its proposer batches
//! them with its own) and answers each separately, so one write's refusal
//! never fails its neighbours. A lone write goes at once, as itself.

use std::sync::Arc;

use floe_state::{Command, CommandResponse};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use super::proposer::{answer, take_batch, Pending};
use super::queue::{ask, next};
use super::ClusterHandle;
use crate::error::ApiError;
use crate::ops::unexpected;
use crate::peer_api::{PeerRequest, PeerResponse};

/// Forwards in flight at once: enough that a batch reaches the leader while
/// the previous one commits, few enough that batches form under load.
const MAX_IN_FLIGHT: usize = 4;
/// Queued writes before callers wait.
const QUEUE_DEPTH: usize = 4096;

/// The receiving end, handed to `run` once the node exists.
pub type ForwardQueue = mpsc::Receiver<Pending>;

/// Handle to the forwarding queue; cheap to clone.
#[derive(Clone)]
pub struct Forwarder {
    queue: mpsc::Sender<Pending>,
}

impl Forwarder {
    pub fn new() -> (Forwarder, ForwardQueue) {
        let (queue, pending) = mpsc::channel(QUEUE_DEPTH);
        (Forwarder { queue }, pending)
    }

    /// Sends `command` to the leader and waits for its outcome there.
    pub async fn forward(&self, command: Command) -> Result<CommandResponse, ApiError> {
        let dropped = || {
            ApiError::OutcomeUnknown("node stopped before the leader confirmed the write".into())
        };
        ask(&self.queue, |reply| Pending { command, reply }, dropped).await
    }
}

/// Drains the queue until `cancel` fires.
pub async fn run(
    cluster: ClusterHandle,
    mut pending: ForwardQueue,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let Some(first) = next(&mut pending, &cancel).await else {
            return Ok(());
        };
        let permit = in_flight.clone().acquire_owned().await?;
        let batch = take_batch(first, &mut pending);
        let cluster = cluster.clone();
        tokio::spawn(async move {
            send(&cluster, batch).await;
            drop(permit);
        });
    }
}

async fn send(cluster: &ClusterHandle, batch: Vec<Pending>) {
    let (mut commands, replies): (Vec<Command>, Vec<_>) =
        batch.into_iter().map(|p| (p.command, p.reply)).unzip();
    let count = commands.len();
    let outcomes: Vec<Result<CommandResponse, ApiError>> = if cluster.route_is_local() {
        // Leadership came here while these waited: propose them directly.
        futures::future::join_all(
            commands
                .into_iter()
                .map(|command| cluster.write_as_leader(command)),
        )
        .await
    } else if count == 1 {
        cluster.metrics().observe_forward(1);
        let request = PeerRequest::Write(commands.remove(0));
        vec![cluster
            .forward(request)
            .await
            .and_then(|response| match response {
                PeerResponse::Written(response) => Ok(response),
                other => Err(unexpected(&other)),
            })]
    } else {
        cluster.metrics().observe_forward(count);
        match cluster.forward(PeerRequest::WriteMany(commands)).await {
            Ok(PeerResponse::WrittenMany(outcomes)) if outcomes.len() == count => outcomes,
            Ok(other) => vec![Err(unexpected(&other)); count],
            Err(err) => vec![Err(err); count],
        }
    };
    answer(replies, outcomes);
}
