//! The flow definitions API.

use super::linearizable;
use crate::api::flows_server::Flows;
use crate::runs::RunService;
use tonic::{Request, Response, Status};

use crate::api;
use crate::call_context::CallContext;

pub(super) struct FlowsApi {
    pub(super) runs: RunService,
}

#[tonic::async_trait]
impl Flows for FlowsApi {
    async fn put(
        &self,
        request: Request<api::PutFlowRequest>,
    ) -> Result<Response<api::PutFlowResponse>, Status> {
        let ctx = CallContext::of(&request);
        let outcome = self
            .runs
            .put_flow(&ctx, &request.into_inner().definition)
            .await?;
        Ok(Response::new(api::PutFlowResponse {
            name: outcome.name,
            version: outcome.version,
            created: outcome.created,
            hash: outcome.hash,
        }))
    }

    async fn get(
        &self,
        request: Request<api::GetFlowRequest>,
    ) -> Result<Response<api::GetFlowResponse>, Status> {
        let ctx = CallContext::of(&request);
        let request = request.into_inner();
        let version = (request.version > 0).then_some(request.version);
        let flow = self
            .runs
            .get_flow(
                &ctx,
                &request.name,
                version,
                linearizable(request.consistency)?,
            )
            .await?;
        Ok(Response::new(api::GetFlowResponse {
            name: flow.name,
            version: flow.version,
            hash: flow.hash,
            definition: flow.definition,
            created_at_ms: flow.created_at_ms,
        }))
    }

    async fn list(
        &self,
        request: Request<api::ListFlowsRequest>,
    ) -> Result<Response<api::ListFlowsResponse>, Status> {
        let ctx = CallContext::of(&request);
        let request = request.into_inner();
        let start_after = (!request.start_after.is_empty()).then_some(request.start_after.as_str());
        let (flows, more) = self
            .runs
            .list_flows(
                &ctx,
                start_after,
                request.limit as usize,
                linearizable(request.consistency)?,
            )
            .await?;
        let flows = flows
            .into_iter()
            .map(|(name, latest_version)| api::FlowSummary {
                name,
                latest_version,
            })
            .collect();
        Ok(Response::new(api::ListFlowsResponse { flows, more }))
    }

    async fn versions(
        &self,
        request: Request<api::FlowVersionsRequest>,
    ) -> Result<Response<api::FlowVersionsResponse>, Status> {
        let ctx = CallContext::of(&request);
        let request = request.into_inner();
        let versions = self
            .runs
            .flow_versions(&ctx, &request.name, linearizable(request.consistency)?)
            .await?;
        let versions = versions
            .into_iter()
            .map(|flow| api::FlowVersion {
                version: flow.version,
                hash: flow.hash,
                created_at_ms: flow.created_at_ms,
            })
            .collect();
        Ok(Response::new(api::FlowVersionsResponse { versions }))
    }
}
