//! The key-value API.

use floe_state::KvEntry;

use super::linearizable;
use crate::api::kv_server::Kv;
use crate::kv::KvService;
use tonic::{Request, Response, Status};

use crate::api;
use crate::call_context::CallContext;

pub(super) struct KvApi {
    pub(super) kv: KvService,
}

#[tonic::async_trait]
impl Kv for KvApi {
    async fn put(
        &self,
        request: Request<api::PutRequest>,
    ) -> Result<Response<api::PutResponse>, Status> {
        let ctx = CallContext::of(&request);
        let request = request.into_inner();
        let revision = self.kv.put(&ctx, request.key, request.value).await?;
        Ok(Response::new(api::PutResponse { revision }))
    }

    async fn get(
        &self,
        request: Request<api::GetRequest>,
    ) -> Result<Response<api::GetResponse>, Status> {
        let ctx = CallContext::of(&request);
        let request = request.into_inner();
        let entry = self
            .kv
            .get(&ctx, &request.key, linearizable(request.consistency)?)
            .await?;
        Ok(Response::new(match entry {
            Some(KvEntry { value, revision }) => api::GetResponse {
                found: true,
                value,
                revision,
            },
            None => api::GetResponse::default(),
        }))
    }

    async fn cas(
        &self,
        request: Request<api::CasRequest>,
    ) -> Result<Response<api::CasResponse>, Status> {
        let ctx = CallContext::of(&request);
        let request = request.into_inner();
        let outcome = self
            .kv
            .cas(&ctx, request.key, request.expected, request.new_value)
            .await?;
        Ok(Response::new(api::CasResponse {
            succeeded: outcome.succeeded,
            found: outcome.current.is_some(),
            current: outcome.current.unwrap_or_default(),
            revision: outcome.revision,
        }))
    }

    async fn delete(
        &self,
        request: Request<api::DeleteRequest>,
    ) -> Result<Response<api::DeleteResponse>, Status> {
        let ctx = CallContext::of(&request);
        let existed = self.kv.delete(&ctx, request.into_inner().key).await?;
        Ok(Response::new(api::DeleteResponse { existed }))
    }

    async fn list(
        &self,
        request: Request<api::ListRequest>,
    ) -> Result<Response<api::ListResponse>, Status> {
        let ctx = CallContext::of(&request);
        let request = request.into_inner();
        let start_after = (!request.start_after.is_empty()).then_some(request.start_after.as_str());
        let (items, more) = self
            .kv
            .list(
                &ctx,
                &request.prefix,
                start_after,
                request.limit as usize,
                linearizable(request.consistency)?,
            )
            .await?;
        let items = items
            .into_iter()
            .map(|(key, entry)| api::KeyValue {
                key,
                value: entry.value,
                revision: entry.revision,
            })
            .collect();
        Ok(Response::new(api::ListResponse { items, more }))
    }
}
