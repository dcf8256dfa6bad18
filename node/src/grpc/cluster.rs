//! The cluster API: form, grow and shrink the cluster, and its status.

use std::time::Duration;

use crate::api::cluster_server::Cluster;
use crate::cluster::ClusterHandle;
use crate::peer_api::{PeerRequest, PeerResponse};
use tonic::{Request, Response, Status};

use crate::api;
use crate::error::ApiError;

pub(super) struct ClusterApi {
    pub(super) cluster: ClusterHandle,
    /// The cluster CA's fingerprint, shown in status.
    pub(super) fingerprint: String,
}

#[tonic::async_trait]
impl Cluster for ClusterApi {
    async fn init(
        &self,
        _request: Request<api::InitRequest>,
    ) -> Result<Response<api::InitResponse>, Status> {
        self.cluster.init_cluster().await?;
        Ok(Response::new(api::InitResponse {
            node_id: self.cluster.id(),
        }))
    }

    async fn join(
        &self,
        request: Request<api::JoinRequest>,
    ) -> Result<Response<api::JoinResponse>, Status> {
        let request = request.into_inner();
        if request.raft_addr.is_empty() {
            return Err(ApiError::InvalidArgument("raft_addr is empty".into()).into());
        }
        let (voters, learners) = self
            .cluster
            .join(request.node_id, &request.raft_addr, request.learner_only)
            .await?;
        Ok(Response::new(api::JoinResponse { voters, learners }))
    }

    async fn remove(
        &self,
        request: Request<api::RemoveRequest>,
    ) -> Result<Response<api::RemoveResponse>, Status> {
        let (voters, learners) = self.cluster.remove(request.into_inner().node_id).await?;
        Ok(Response::new(api::RemoveResponse { voters, learners }))
    }

    async fn state_digest(
        &self,
        _request: Request<api::StateDigestRequest>,
    ) -> Result<Response<api::StateDigestResponse>, Status> {
        // Hashes the whole state: on a blocking thread.
        let reader = self.cluster.reader().clone();
        let (applied, digest) = tokio::task::spawn_blocking(move || reader.applied_state_digest())
            .await
            .map_err(|error| ApiError::Internal(format!("state digest task: {error}")))?
            .map_err(|error| ApiError::Internal(format!("state digest: {error}")))?;
        Ok(Response::new(api::StateDigestResponse {
            node_id: self.cluster.id(),
            applied_index: applied.map(|id| id.index).unwrap_or(0),
            applied_term: applied.map(|id| id.leader_id.term).unwrap_or(0),
            digest,
        }))
    }

    async fn status(
        &self,
        _request: Request<api::StatusRequest>,
    ) -> Result<Response<api::StatusResponse>, Status> {
        Ok(Response::new(
            cluster_status(&self.cluster, &self.fingerprint).await,
        ))
    }
}

/// This node's metrics plus every member's own answer, asked concurrently.
async fn cluster_status(cluster: &ClusterHandle, fingerprint: &str) -> api::StatusResponse {
    let metrics = cluster.raft_metrics();
    let commit_index = cluster.committed_index().await;
    let (nodes, voters) = cluster.members();
    let mut answers = Vec::new();
    for (id, info) in nodes {
        answers.push(async move {
            let status = if id == cluster.id() {
                Ok(cluster.local_status())
            } else {
                match cluster
                    .call(
                        id,
                        &info.raft_addr,
                        &PeerRequest::LocalStatus,
                        Duration::from_secs(1),
                    )
                    .await
                {
                    Ok(PeerResponse::LocalStatus(status)) => Ok(status),
                    Ok(other) => Err(format!("unexpected answer {other:?}")),
                    Err(err) => Err(err.to_string()),
                }
            };
            (id, info, status)
        });
    }
    let answers = futures::future::join_all(answers).await;
    let nodes = answers
        .into_iter()
        .map(|(id, info, status)| {
            let membership = if voters.contains(&id) {
                "voter"
            } else {
                "learner"
            }
            .to_string();
            let mut row = api::NodeStatus {
                node_id: id,
                raft_addr: info.raft_addr,
                api_addr: info.api_addr,
                http_addr: info.http_addr,
                membership,
                ..Default::default()
            };
            match status {
                Ok(status) => {
                    row.role = status.role;
                    row.reachable = true;
                    row.term = status.term;
                    row.last_log_index = status.last_log_index;
                    row.applied_index = status.applied_index;
                }
                Err(err) => {
                    row.role = "unreachable".into();
                    row.error = err;
                }
            }
            row
        })
        .collect();
    api::StatusResponse {
        answered_by: cluster.id(),
        leader_id: metrics.current_leader.unwrap_or(0),
        has_leader: metrics.current_leader.is_some(),
        term: metrics.current_term,
        commit_index,
        applied_index: metrics.last_applied.map(|id| id.index).unwrap_or(0),
        nodes,
        cluster_fingerprint: fingerprint.to_string(),
    }
}
