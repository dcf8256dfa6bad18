//! Serves the node-to-node requests of `peer_api.rs` that are not Raft
//! RPCs: each is handed to the component that owns it.

use std::sync::Arc;

use floe_raft::{AppHandler, PeerIdentity};
use futures::future::BoxFuture;

use crate::blobs::BlobService;
use crate::cluster::ClusterHandle;
use crate::error::ApiError;
use crate::models::ModelService;
use crate::peer_api::{decode, encode, PeerRequest, PeerResponse};
use crate::reports::Reports;

/// Serves peer requests for the transport.
#[derive(Clone)]
pub struct PeerApi {
    pub cluster: ClusterHandle,
    pub blobs: BlobService,
    pub models: ModelService,
    pub reports: Arc<Reports>,
}

impl AppHandler for PeerApi {
    fn handle(
        &self,
        from: PeerIdentity,
        request: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        let api = self.clone();
        Box::pin(async move {
            let outcome = match decode::<PeerRequest>(&request) {
                Ok(request) => api.serve(from, request).await,
                Err(err) => Err(err),
            };
            encode(&outcome).map_err(|err| err.to_string())
        })
    }
}

impl PeerApi {
    async fn serve(
        &self,
        from: PeerIdentity,
        request: PeerRequest,
    ) -> Result<PeerResponse, ApiError> {
        let cluster = &self.cluster;
        match &request {
            PeerRequest::BlobPut { hash, bytes } => {
                tracing::debug!(?from, blob = %hash, size = bytes.len(), "peer blob put")
            }
            other => tracing::debug!(?from, request = ?other, "peer request"),
        }
        // Forwarded requests are served locally only: a second hop could loop while
        // leadership moves, so a stale forward fails and the client retries.
        match request {
            PeerRequest::Probe => Ok(PeerResponse::Probe(cluster.probe_info())),
            PeerRequest::Write(command) => cluster
                .write_as_leader(command)
                .await
                .map(PeerResponse::Written),
            PeerRequest::WriteMany(commands) => {
                let writes = commands
                    .into_iter()
                    .map(|command| cluster.write_as_leader(command));
                Ok(PeerResponse::WrittenMany(
                    futures::future::join_all(writes).await,
                ))
            }
            PeerRequest::ReadIndex => cluster
                .read_index_as_leader()
                .await
                .map(PeerResponse::ReadIndex),
            PeerRequest::Join {
                node_id,
                raft_addr,
                learner_only,
            } => cluster
                .join_as_leader(node_id, &raft_addr, learner_only)
                .await
                .map(|(voters, learners)| PeerResponse::Membership { voters, learners }),
            PeerRequest::Remove { node_id } => cluster
                .remove_as_leader(node_id)
                .await
                .map(|(voters, learners)| PeerResponse::Membership { voters, learners }),
            PeerRequest::LocalStatus => Ok(PeerResponse::LocalStatus(cluster.local_status())),
            PeerRequest::Report(report) => {
                self.reports.record(report);
                Ok(PeerResponse::Ack)
            }
            PeerRequest::BlobPut { hash, bytes } => self
                .blobs
                .accept(hash, bytes.into_vec())
                .await
                .map(|()| PeerResponse::Ack),
            PeerRequest::BlobGet { hash } => self
                .blobs
                .local(hash)
                .await
                .map(|bytes| PeerResponse::Blob(bytes.map(serde_bytes::ByteBuf::from))),
            PeerRequest::Infer {
                model,
                version,
                inputs,
            } => self
                .models
                .infer_local(&model, version, inputs)
                .await
                .map(|served| {
                    PeerResponse::Inferred(served.map(|served| (served.outputs, served.replica)))
                }),
            PeerRequest::ModelReports => {
                Ok(PeerResponse::ModelReports(self.reports.replica_reports()))
            }
        }
    }
}
