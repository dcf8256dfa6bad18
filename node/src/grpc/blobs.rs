//! The blob API: a large payload by its address.

use crate::api::blobs_server::Blobs;
use crate::blobs::BlobService;
use tonic::{Request, Response, Status};

use crate::api;
use crate::call_context::CallContext;

pub(super) struct BlobsApi {
    pub(super) blobs: BlobService,
}

#[tonic::async_trait]
impl Blobs for BlobsApi {
    async fn get(
        &self,
        request: Request<api::GetBlobRequest>,
    ) -> Result<Response<api::GetBlobResponse>, Status> {
        let ctx = CallContext::of(&request);
        let address = request.into_inner().address;
        let hash = address.strip_prefix("sha256:").unwrap_or(&address);
        let data = self.blobs.get(&ctx, hash).await?;
        Ok(Response::new(api::GetBlobResponse { data }))
    }
}
