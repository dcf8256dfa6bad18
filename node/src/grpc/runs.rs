//! The runs API: start, read, list, act on and watch runs; concurrency limits.

use tokio_util::sync::CancellationToken;

use super::linearizable;
use crate::api::runs_server::Runs;
use crate::error::shutting_down;
use crate::runs::RunService;
use floe_engine::names::quote_bounded;
use tonic::{Request, Response, Status};

use crate::api;
use crate::call_context::CallContext;
use crate::error::ApiError;

pub(super) struct RunsApi {
    pub(super) runs: RunService,
    /// Ends watch streams when the node stops.
    pub(super) shutdown: CancellationToken,
}

#[tonic::async_trait]
impl Runs for RunsApi {
    async fn start(
        &self,
        request: Request<api::StartRunRequest>,
    ) -> Result<Response<api::StartRunResponse>, Status> {
        let ctx = CallContext::of(&request);
        let request = request.into_inner();
        let version = (request.version > 0).then_some(request.version);
        let started = self
            .runs
            .start_run(
                &ctx,
                &request.flow,
                version,
                &request.input,
                &request.correlation_id,
                &request.idempotency_key,
            )
            .await?;
        Ok(Response::new(api::StartRunResponse {
            run_id: started.run_id,
            created: started.created,
            version: started.version,
        }))
    }

    async fn get(
        &self,
        request: Request<api::GetRunRequest>,
    ) -> Result<Response<api::GetRunResponse>, Status> {
        let ctx = CallContext::of(&request);
        let request = request.into_inner();
        let run = self
            .runs
            .get_run(&ctx, &request.run_id, linearizable(request.consistency)?)
            .await?;
        Ok(Response::new(api::GetRunResponse {
            run: run_json(&run)?,
        }))
    }

    async fn list(
        &self,
        request: Request<api::ListRunsRequest>,
    ) -> Result<Response<api::ListRunsResponse>, Status> {
        let ctx = CallContext::of(&request);
        let request = request.into_inner();
        let filter = floe_state::RunFilter {
            flow: non_empty(request.flow),
            status: non_empty(request.status),
            correlation_id: non_empty(request.correlation_id),
            created_from_ms: (request.created_from_ms > 0).then_some(request.created_from_ms),
            created_to_ms: (request.created_to_ms > 0).then_some(request.created_to_ms),
        };
        if let Some(status) = &filter.status {
            if !["running", "completed", "failed", "cancelled"].contains(&status.as_str()) {
                return Err(ApiError::InvalidArgument(format!(
                    "status {} is not running, completed, failed or cancelled",
                    quote_bounded(status)
                ))
                .into());
            }
        }
        let page = self
            .runs
            .list_runs(
                &ctx,
                &filter,
                &request.page_token,
                request.limit as usize,
                linearizable(request.consistency)?,
            )
            .await?;
        let runs = page
            .runs
            .iter()
            .map(|run| api::RunSummary {
                run_id: run.run_id.clone(),
                flow: run.flow.clone(),
                version: run.version,
                status: floe_state::runs::status_name(run.status).to_string(),
                created_at_ms: run.created_at_ms,
                finished_at_ms: run.finished_at_ms.unwrap_or(0),
                correlation_id: run.correlation_id.clone(),
                error: run.error.clone().unwrap_or_default(),
            })
            .collect();
        let next_page_token = match (&page.last_key, page.more) {
            (Some(key), true) => hex::encode(key),
            _ => String::new(),
        };
        Ok(Response::new(api::ListRunsResponse {
            runs,
            next_page_token,
        }))
    }

    async fn cancel(
        &self,
        request: Request<api::CancelRunRequest>,
    ) -> Result<Response<api::RunActionResponse>, Status> {
        let ctx = CallContext::of(&request);
        let request = request.into_inner();
        self.runs
            .cancel_run(&ctx, &request.run_id, &request.reason)
            .await?;
        Ok(Response::new(api::RunActionResponse {}))
    }

    async fn retry(
        &self,
        request: Request<api::RetryRunRequest>,
    ) -> Result<Response<api::RunActionResponse>, Status> {
        let ctx = CallContext::of(&request);
        self.runs
            .retry_run(&ctx, &request.into_inner().run_id)
            .await?;
        Ok(Response::new(api::RunActionResponse {}))
    }

    async fn signal(
        &self,
        request: Request<api::SignalRunRequest>,
    ) -> Result<Response<api::RunActionResponse>, Status> {
        let ctx = CallContext::of(&request);
        let request = request.into_inner();
        self.runs
            .signal_run(&ctx, &request.run_id, &request.signal, &request.payload)
            .await?;
        Ok(Response::new(api::RunActionResponse {}))
    }

    type WatchStream = tokio_stream::wrappers::ReceiverStream<Result<api::RunUpdate, Status>>;

    async fn set_limit(
        &self,
        request: Request<api::SetLimitRequest>,
    ) -> Result<Response<api::SetLimitResponse>, Status> {
        let ctx = CallContext::of(&request);
        let request = request.into_inner();
        let scope = crate::runs::parse_limit_scope(&request.scope)?;
        self.runs
            .set_limit(&ctx, scope, &request.name, request.limit)
            .await?;
        Ok(Response::new(api::SetLimitResponse {}))
    }

    async fn list_limits(
        &self,
        request: Request<api::ListLimitsRequest>,
    ) -> Result<Response<api::ListLimitsResponse>, Status> {
        let ctx = CallContext::of(&request);
        let request = request.into_inner();
        let limits = self
            .runs
            .list_limits(&ctx, linearizable(request.consistency)?)
            .await?;
        let limits = limits
            .into_iter()
            .map(|state| api::LimitInfo {
                scope: state.scope.name().to_string(),
                name: state.name,
                limit: state.limit,
                active: state.active,
            })
            .collect();
        Ok(Response::new(api::ListLimitsResponse { limits }))
    }

    async fn watch(
        &self,
        request: Request<api::WatchRunRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let ctx = CallContext::of(&request);
        let run_id = request.into_inner().run_id;
        let (first, mut changes) = self.runs.watch(&ctx, &run_id).await?;
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        let (runs, shutdown) = (self.runs.clone(), self.shutdown.clone());
        tokio::spawn(async move {
            if sender.send(run_update(None, &first)).await.is_err() {
                return;
            }
            let mut last = first;
            while last.status == floe_engine::run::RunStatus::Running {
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        // Not a clean end: the run goes on, and the watcher
                        // must be able to tell (and watch it on another node).
                        let _ = sender.send(Err(shutting_down(runs.node_id()))).await;
                        return;
                    }
                    _ = sender.closed() => return,
                    _ = changes.changed() => {}
                }
                let Some(current) = runs.local_run(&run_id) else {
                    continue;
                };
                if current != last {
                    if sender
                        .send(run_update(Some(&last), &current))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    last = current;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            receiver,
        )))
    }
}

fn run_json(run: &floe_engine::run::RunRecord) -> Result<Vec<u8>, Status> {
    serde_json::to_vec(run)
        .map_err(|err| Status::internal(format!("encoding run {}: {err}", run.run_id)))
}

/// A watch update: the run as it is now and the events that led there
/// from `before` (none: from its start).
fn run_update(
    before: Option<&floe_engine::run::RunRecord>,
    run: &floe_engine::run::RunRecord,
) -> Result<api::RunUpdate, Status> {
    let events = floe_engine::run::history_between(before, run)
        .into_iter()
        .map(|event| api::RunHistoryEvent {
            at_ms: event.at_ms,
            kind: event.kind.name().to_string(),
            step: event.step,
            item: event.item.map_or(-1, i64::from),
            attempt: event.attempt,
            node: event.node.unwrap_or(0),
            worker: event.worker.unwrap_or_default(),
            error: event.error.unwrap_or_default(),
        })
        .collect();
    Ok(api::RunUpdate {
        run: run_json(run)?,
        events,
    })
}

fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}
