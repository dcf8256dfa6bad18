//! The worker API: one stream per worker, tasks pushed down it.

use tracing::Instrument;

use crate::api::workers_server::Workers;
use crate::workers::WorkerHub;
use tonic::{Request, Response, Status};

use crate::api;
use crate::call_context::CallContext;

pub(super) struct WorkersApi {
    pub(super) workers: WorkerHub,
}

#[tonic::async_trait]
impl Workers for WorkersApi {
    type AttachStream = tokio_stream::wrappers::ReceiverStream<Result<api::WorkerTask, Status>>;

    async fn attach(
        &self,
        request: Request<tonic::Streaming<api::WorkerMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        // The stream outlives this call: its logs keep naming the caller.
        let call = CallContext::of(&request);
        let span = tracing::info_span!("worker stream", caller = %call.caller());
        let (sender, receiver) = crate::workers::worker_channel();
        tokio::spawn(
            self.workers
                .clone()
                .serve(call, request.into_inner(), sender)
                .instrument(span),
        );
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            receiver,
        )))
    }
}
