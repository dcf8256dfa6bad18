//! Proposal batching: concurrent writes on the leader become one Raft entry.
//!
//! openraft pays a fixed cost per entry (a pass of its core loop, a log
//! append and flush, replication bookkeeping, an apply). A queue in front of
//! it takes whatever writes arrived while earlier proposals were in flight
//! and proposes them together as `Command::Batch`, so under load the cost is
//! paid per batch. A lone write is proposed as itself, without waiting.

use std::sync::Arc;
use std::time::Duration;

use floe_state::{Command, CommandResponse, NodeId, Raft};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use super::queue::{ask, next, Reply};
use crate::error::ApiError;
use crate::raft_errors::write_error;

/// Most commands in one entry.
pub const MAX_BATCH_COMMANDS: usize = 256;
/// Most payload bytes in one entry (a batch closes once it passes this).
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Proposals in flight at once; more arrive meanwhile and form the next batch.
const MAX_IN_FLIGHT: usize = 1;
/// Queued writes before callers wait (backpressure instead of unbounded memory).
const QUEUE_DEPTH: usize = 4096;

/// A write waiting in a queue (here or in `forwarder.rs`) and its caller.
pub struct Pending {
    pub(crate) command: Command,
    pub(crate) reply: Reply<CommandResponse>,
}

/// `first` and whatever else is queued now, up to the batch limits.
pub(crate) fn take_batch(first: Pending, pending: &mut mpsc::Receiver<Pending>) -> Vec<Pending> {
    let mut bytes = payload_bytes(&first.command);
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH_COMMANDS && bytes < MAX_BATCH_BYTES {
        match pending.try_recv() {
            Ok(next) => {
                bytes += payload_bytes(&next.command);
                batch.push(next);
            }
            Err(_) => break,
        }
    }
    batch
}

/// Hands each caller its outcome.
pub(crate) fn answer(
    replies: Vec<Reply<CommandResponse>>,
    outcomes: Vec<Result<CommandResponse, ApiError>>,
) {
    for (reply, outcome) in replies.into_iter().zip(outcomes) {
        // A caller that gave up no longer listens; the write stands regardless.
        let _ = reply.send(outcome);
    }
}

/// Handle to the proposal queue; cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::Sender<Pending>,
}

impl Proposer {
    /// Starts the batching task; it stops when `cancel` fires.
    pub fn start(
        raft: Raft,
        node_id: NodeId,
        timeout: Duration,
        cancel: CancellationToken,
    ) -> Proposer {
        let (queue, pending) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(run(raft, node_id, timeout, pending, cancel));
        Proposer { queue }
    }

    /// Proposes `command` and waits until it is applied on this leader.
    pub async fn propose(&self, command: Command) -> Result<CommandResponse, ApiError> {
        let dropped =
            || ApiError::OutcomeUnknown("node stopped before the write was confirmed".into());
        ask(&self.queue, |reply| Pending { command, reply }, dropped).await
    }
}

async fn run(
    raft: Raft,
    node_id: NodeId,
    timeout: Duration,
    mut pending: mpsc::Receiver<Pending>,
    cancel: CancellationToken,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let Some(first) = next(&mut pending, &cancel).await else {
            return;
        };
        // Waiting for a slot is what lets the next batch fill up.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let batch = take_batch(first, &mut pending);
        let raft = raft.clone();
        tokio::spawn(async move {
            commit(&raft, node_id, timeout, batch).await;
            drop(permit);
        });
    }
}

async fn commit(raft: &Raft, node_id: NodeId, timeout: Duration, batch: Vec<Pending>) {
    let (mut commands, replies): (Vec<Command>, Vec<_>) =
        batch.into_iter().map(|p| (p.command, p.reply)).unzip();
    let count = commands.len();
    let proposal = if count == 1 {
        commands.remove(0)
    } else {
        Command::Batch(commands)
    };
    let outcome = match tokio::time::timeout(timeout, raft.client_write(proposal)).await {
        Err(_) => Err(ApiError::OutcomeUnknown(format!(
            "write not confirmed within {} ms: the leader may have lost its quorum",
            timeout.as_millis()
        ))),
        Ok(Err(err)) => Err(write_error(node_id, err)),
        Ok(Ok(written)) => Ok(written.data),
    };
    let responses: Vec<Result<CommandResponse, ApiError>> = match outcome {
        Ok(CommandResponse::Batch(responses)) if count > 1 && responses.len() == count => {
            responses.into_iter().map(Ok).collect()
        }
        Ok(response) if count == 1 => vec![Ok(response)],
        Ok(other) => {
            let err = ApiError::Internal(format!(
                "batch of {count} writes applied with unexpected result {other:?}"
            ));
            vec![Err(err); count]
        }
        Err(err) => vec![Err(err); count],
    };
    answer(replies, responses);
}

fn payload_bytes(command: &Command) -> usize {
    match command {
        Command::KvPut { key, value } => key.len() + value.len(),
        Command::KvDelete { key } => key.len(),
        Command::KvCas { key, expected, new } => {
            key.len() + expected.as_ref().map_or(0, Vec::len) + new.as_ref().map_or(0, Vec::len)
        }
        Command::TombstoneNode { .. } => 8,
        Command::PutFlow {
            name,
            definition,
            hash,
            ..
        } => name.len() + definition.len() + hash.len(),
        Command::StartRun {
            run_id,
            flow,
            input,
            correlation_id,
            idempotency_key,
            ..
        } => run_id.len() + flow.len() + input.len() + correlation_id.len() + idempotency_key.len(),
        Command::RunEvent { run_id, event, .. } => run_id.len() + event.len(),
        Command::RunEventTyped { run_id, event, .. } => run_id.len() + event.payload_bytes(),
        Command::AssignTask { task, worker, .. } => task.len() + worker.len(),
        Command::UnassignTask { task, .. } => task.len(),
        Command::PurgeRuns { run_ids, .. } => run_ids.iter().map(String::len).sum(),
        Command::FireTimers { timers, .. } => timers.iter().map(String::len).sum(),
        Command::Batch(commands) => commands.iter().map(payload_bytes).sum(),
        Command::SetLimit { name, .. } => name.len() + 8,
        Command::PutModel {
            name,
            hash,
            signature,
            ..
        } => name.len() + hash.len() + signature.len(),
        Command::DeployModel { deployment } => deployment.model.len() + 48,
        Command::UndeployModel { name, .. } => name.len() + 8,
        Command::ChangeReplicas { changes, .. } => changes
            .iter()
            .map(|c| c.model.len() + c.reason.len() + 40)
            .sum(),
        Command::NodeSlots { offer, .. } => {
            offer
                .slots
                .keys()
                .map(|block| block.len() + 4)
                .sum::<usize>()
                + 12
        }
        Command::GrantRole { grant } => {
            grant.principal.len()
                + grant.granted_by.len()
                + grant.namespace.as_ref().map_or(0, String::len)
                + 16
        }
        Command::RevokeRole {
            principal,
            namespace,
            ..
        } => principal.len() + namespace.as_ref().map_or(0, String::len) + 8,
        Command::CreateToken { token } => {
            token.id.len() + token.principal.len() + token.hash.len() + token.created_by.len() + 16
        }
        Command::RevokeToken { id } => id.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_size_counts_keys_and_values() {
        let batch = Command::Batch(vec![
            Command::KvPut {
                key: "ab".into(),
                value: vec![0; 10],
            },
            Command::KvCas {
                key: "c".into(),
                expected: Some(vec![0; 3]),
                new: None,
            },
        ]);
        assert_eq!(payload_bytes(&batch), 12 + 4);
    }
}
