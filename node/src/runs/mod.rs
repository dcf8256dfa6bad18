//! Runs through the API: everything non-deterministic (run ids, the pinned
//! version, the clock) is decided here, on the proposing node, and carried
//! in the command; the state machine and the run engine do the rest.

mod flows;

pub use flows::PutFlowOutcome;

use floe_engine::run::{RunEvent, RunRecord, TaskFailure, TaskKey};
use floe_state::runs::{LimitScope, LimitState};
use floe_state::{Command, CommandResponse, RunFilter, RunPage};

use crate::error::{unexpected_answer, ApiError};
use std::sync::Arc;

use crate::blobs::BlobService;
use crate::call_context::CallContext;
use crate::changes::{ChangeHub, RunWatch};
use crate::clock::Clock;
use crate::cluster::ClusterHandle;
use floe_engine::names::quote_bounded;

pub struct StartedRun {
    pub run_id: String,
    pub created: bool,
    pub version: u64,
}

fn new_run_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Longest correlation id or idempotency key: both are index keys.
pub const MAX_RUN_KEY_BYTES: usize = 256;

/// Handle to the run component (runs, flows and concurrency limits);
/// cheap to clone. Every API operation takes the caller's context, which
/// the authorization check reads.
#[derive(Clone)]
pub struct RunService {
    cluster: ClusterHandle,
    blobs: BlobService,
    changes: Arc<ChangeHub>,
    clock: Clock,
}

impl RunService {
    pub fn new(cluster: ClusterHandle, blobs: BlobService, changes: Arc<ChangeHub>) -> RunService {
        RunService {
            clock: cluster.clock().clone(),
            cluster,
            blobs,
            changes,
        }
    }

    /// The run now and a subscription to its later changes, taken before
    /// the read so no change falls in between. A run already applied here
    /// needs no quorum round; one not here yet (started a moment ago through
    /// another node) takes a read barrier, and one absent after it does not
    /// exist.
    pub async fn watch(
        &self,
        ctx: &CallContext,
        run_id: &str,
    ) -> Result<(RunRecord, RunWatch), ApiError> {
        let changes = self.changes.watch_run(run_id);
        let first = match self.local_run(run_id) {
            Some(run) => run,
            None => self.get_run(ctx, run_id, true).await?,
        };
        Ok((first, changes))
    }

    /// The run as this node has applied it (what watch streams follow).
    pub fn local_run(&self, run_id: &str) -> Option<RunRecord> {
        self.cluster.reader().run(run_id).ok().flatten()
    }

    pub fn node_id(&self) -> floe_state::NodeId {
        self.cluster.id()
    }

    pub async fn start_run(
        &self,
        _ctx: &CallContext,
        flow: &str,
        version: Option<u64>,
        input: &[u8],
        correlation_id: &str,
        idempotency_key: &str,
    ) -> Result<StartedRun, ApiError> {
        // No flow can have such a name; refused here, before the log.
        if !floe_engine::is_flow_name(flow) {
            return Err(ApiError::NotFound(format!(
                "no flow named {}",
                quote_bounded(flow)
            )));
        }
        for (field, text) in [
            ("correlation id", correlation_id),
            ("idempotency key", idempotency_key),
        ] {
            if text.len() > MAX_RUN_KEY_BYTES {
                return Err(ApiError::InvalidArgument(format!(
                    "{field} {} is longer than the limit of {MAX_RUN_KEY_BYTES} bytes (fixed)",
                    quote_bounded(text)
                )));
            }
        }
        let input_value = self.blobs.payload_value(input, "run input").await?;
        // The version is resolved where the start applies (0: the latest
        // then), so a start reads nothing first and still sees every flow
        // put that finished before it.
        let command = Command::StartRun {
            run_id: new_run_id(),
            flow: flow.to_string(),
            version: version.unwrap_or(0),
            input: serde_json::to_vec(&input_value)
                .map_err(|err| ApiError::Internal(err.to_string()))?,
            correlation_id: correlation_id.to_string(),
            idempotency_key: idempotency_key.to_string(),
            at_ms: self.clock.now_ms(),
        };
        match self.cluster.write(command).await? {
            CommandResponse::RunStarted {
                run_id,
                created,
                version,
            } => Ok(StartedRun {
                run_id,
                created,
                version,
            }),
            other => Err(unexpected_answer(&other)),
        }
    }

    pub async fn get_run(
        &self,
        _ctx: &CallContext,
        run_id: &str,
        linearizable: bool,
    ) -> Result<RunRecord, ApiError> {
        if linearizable {
            self.cluster.read_barrier().await?;
        }
        self.cluster
            .reader()
            .run(run_id)
            .map_err(|err| ApiError::Internal(err.to_string()))?
            .ok_or_else(|| ApiError::NotFound(format!("no run {}", quote_bounded(run_id))))
    }

    pub async fn list_runs(
        &self,
        _ctx: &CallContext,
        filter: &RunFilter,
        page_token: &str,
        limit: usize,
        linearizable: bool,
    ) -> Result<RunPage, ApiError> {
        if linearizable {
            self.cluster.read_barrier().await?;
        }
        let page_after = if page_token.is_empty() {
            None
        } else {
            Some(hex::decode(page_token).map_err(|_| {
                ApiError::InvalidArgument(format!(
                    "page token {} is not valid",
                    quote_bounded(page_token)
                ))
            })?)
        };
        let limit = if limit == 0 {
            50
        } else {
            limit.min(crate::ops::MAX_LIST_LIMIT)
        };
        self.cluster
            .reader()
            .runs(filter, page_after.as_deref(), limit)
            .map_err(|err| ApiError::Internal(err.to_string()))
    }

    /// Proposes one event for a run; a refusal names its reason.
    pub async fn run_event(
        &self,
        _ctx: &CallContext,
        run_id: &str,
        event: RunEvent,
    ) -> Result<(), ApiError> {
        let command = Command::RunEventTyped {
            run_id: run_id.to_string(),
            event,
            at_ms: self.clock.now_ms(),
        };
        match self.cluster.write(command).await? {
            CommandResponse::RunUpdated => Ok(()),
            other => Err(unexpected_answer(&other)),
        }
    }

    pub async fn cancel_run(
        &self,
        ctx: &CallContext,
        run_id: &str,
        reason: &str,
    ) -> Result<(), ApiError> {
        let reason = if reason.is_empty() {
            "cancelled by request".to_string()
        } else {
            reason.to_string()
        };
        self.run_event(ctx, run_id, RunEvent::Cancel { reason })
            .await
    }

    pub async fn retry_run(&self, ctx: &CallContext, run_id: &str) -> Result<(), ApiError> {
        self.run_event(ctx, run_id, RunEvent::Retry).await
    }

    pub async fn signal_run(
        &self,
        ctx: &CallContext,
        run_id: &str,
        name: &str,
        payload: &[u8],
    ) -> Result<(), ApiError> {
        let payload = self.blobs.payload_value(payload, "signal payload").await?;
        self.run_event(
            ctx,
            run_id,
            RunEvent::Signal {
                name: name.to_string(),
                payload,
            },
        )
        .await
    }

    /// A result for one attempt, from `worker` (none: the node failed the
    /// attempt itself); a stale attempt is refused.
    pub async fn task_result(
        &self,
        ctx: &CallContext,
        key: TaskKey,
        attempt: u32,
        worker: Option<&str>,
        outcome: Result<&[u8], TaskFailure>,
    ) -> Result<(), ApiError> {
        let run_id = key.run_id.clone();
        let worker = worker.map(str::to_string);
        let event = match outcome {
            Ok(output) => RunEvent::TaskCompleted {
                key,
                attempt,
                output: self.blobs.payload_value(output, "task output").await?,
                worker,
            },
            Err(failure) => RunEvent::TaskFailed {
                key,
                attempt,
                failure,
                worker,
            },
        };
        self.run_event(ctx, &run_id, event).await
    }
}

/// "block" or "flow".
pub fn parse_limit_scope(text: &str) -> Result<LimitScope, ApiError> {
    match text {
        "block" => Ok(LimitScope::Block),
        "flow" => Ok(LimitScope::Flow),
        other => Err(ApiError::InvalidArgument(format!(
            "limit scope {} is not \"block\" or \"flow\"",
            quote_bounded(other)
        ))),
    }
}

impl RunService {
    /// Sets (`Some`) or clears a cluster-wide concurrency limit.
    pub async fn set_limit(
        &self,
        _ctx: &CallContext,
        scope: LimitScope,
        name: &str,
        limit: Option<u32>,
    ) -> Result<(), ApiError> {
        let valid_name = match scope {
            LimitScope::Block => floe_engine::is_block_name(name),
            LimitScope::Flow => floe_engine::is_flow_name(name),
        };
        if !valid_name {
            return Err(ApiError::InvalidArgument(format!(
                "{} name {} is not valid",
                scope.name(),
                quote_bounded(name)
            )));
        }
        if limit == Some(0) {
            return Err(ApiError::InvalidArgument(format!(
                "a limit of 0 would hold every task of {} {name} forever; clear the limit or pause its workers instead",
                scope.name()
            )));
        }
        self.cluster
            .write(Command::SetLimit {
                scope,
                name: name.to_string(),
                limit,
            })
            .await
            .map(|_| ())
    }

    pub async fn list_limits(
        &self,
        _ctx: &CallContext,
        linearizable: bool,
    ) -> Result<Vec<LimitState>, ApiError> {
        if linearizable {
            self.cluster.read_barrier().await?;
        }
        self.cluster
            .reader()
            .limits()
            .map_err(|err| ApiError::Internal(err.to_string()))
    }

    /// An attempt lost with its worker or node: re-delivered as a new attempt.
    pub async fn task_lost(
        &self,
        ctx: &CallContext,
        key: TaskKey,
        attempt: u32,
        reason: String,
    ) -> Result<(), ApiError> {
        let run_id = key.run_id.clone();
        self.run_event(
            ctx,
            &run_id,
            RunEvent::TaskLost {
                key,
                attempt,
                reason,
            },
        )
        .await
    }
}

/// A task's text (`TaskKey`'s one parser) as the API takes it.
pub fn parse_task_key(text: &str) -> Result<TaskKey, ApiError> {
    text.parse()
        .map_err(|err: floe_engine::run::TaskTextError| ApiError::InvalidArgument(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_keys_round_trip() {
        let key = TaskKey {
            run_id: "abc.child".into(),
            step_id: "ocr".into(),
            item: Some(7),
        };
        assert_eq!(parse_task_key(&key.to_string()).unwrap(), key);
        let key = TaskKey {
            run_id: "abc".into(),
            step_id: "a".into(),
            item: None,
        };
        assert_eq!(parse_task_key(&key.to_string()).unwrap(), key);
        assert!(parse_task_key("nothing").is_err());
    }
}
