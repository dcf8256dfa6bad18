//! The public gRPC API (tonic) over TLS; clients present a certificate signed
//! by the cluster CA.

use std::sync::Arc;
use std::time::Duration;

use floe_raft::TlsMaterial;
use floe_storage::{Command, CommandResponse, KvEntry};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::api;
use crate::api::cluster_server::{Cluster, ClusterServer};
use crate::api::flows_server::{Flows, FlowsServer};
use crate::api::kv_server::{Kv, KvServer};
use crate::error::ApiError;
use crate::peer_api::{self, PeerRequest, PeerResponse};
use crate::service::Node;

pub async fn serve(node: Arc<Node>, material: TlsMaterial, cancel: CancellationToken) -> anyhow::Result<()> {
    let addr = node.config.api_addr.parse()?;
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(material.cert_pem(), material.key_pem()))
        .client_ca_root(tonic::transport::Certificate::from_pem(material.ca_pem()));
    tonic::transport::Server::builder()
        .tls_config(tls)?
        .add_service(ClusterServer::new(ClusterApi { node: node.clone() }))
        .add_service(FlowsServer::new(FlowsApi { node: node.clone() }))
        .add_service(KvServer::new(KvApi { node }))
        .serve_with_shutdown(addr, cancel.cancelled_owned())
        .await
        .map_err(|err| anyhow::anyhow!("gRPC server on {addr}: {err}"))
}

struct ClusterApi {
    node: Arc<Node>,
}

struct KvApi {
    node: Arc<Node>,
}

#[tonic::async_trait]
impl Cluster for ClusterApi {
    async fn init(&self, _request: Request<api::InitRequest>) -> Result<Response<api::InitResponse>, Status> {
        self.node.init_cluster().await?;
        Ok(Response::new(api::InitResponse { node_id: self.node.id }))
    }

    async fn join(&self, request: Request<api::JoinRequest>) -> Result<Response<api::JoinResponse>, Status> {
        let request = request.into_inner();
        if request.raft_addr.is_empty() {
            return Err(ApiError::InvalidArgument("raft_addr is empty".into()).into());
        }
        let (voters, learners) = self.node.join(request.node_id, &request.raft_addr, request.learner_only).await?;
        Ok(Response::new(api::JoinResponse { voters, learners }))
    }

    async fn remove(&self, request: Request<api::RemoveRequest>) -> Result<Response<api::RemoveResponse>, Status> {
        let (voters, learners) = self.node.remove(request.into_inner().node_id).await?;
        Ok(Response::new(api::RemoveResponse { voters, learners }))
    }

    async fn status(&self, _request: Request<api::StatusRequest>) -> Result<Response<api::StatusResponse>, Status> {
        Ok(Response::new(cluster_status(&self.node).await))
    }
}

/// This node's metrics plus every member's own answer, asked concurrently.
async fn cluster_status(node: &Arc<Node>) -> api::StatusResponse {
    let metrics = node.raft.metrics().borrow().clone();
    let committed = node.raft.with_raft_state(|state| state.committed).await.ok().flatten();
    let (nodes, voters) = node.members();
    let mut answers = Vec::new();
    for (id, info) in nodes {
        let node = node.clone();
        answers.push(async move {
            let status = if id == node.id {
                Ok(node.local_status())
            } else {
                match peer_api::call(&node, id, &info.raft_addr, &PeerRequest::LocalStatus, Duration::from_secs(1)).await {
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
            let membership = if voters.contains(&id) { "voter" } else { "learner" }.to_string();
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
        answered_by: node.id,
        leader_id: metrics.current_leader.unwrap_or(0),
        has_leader: metrics.current_leader.is_some(),
        term: metrics.current_term,
        commit_index: committed.map(|id| id.index).unwrap_or(0),
        applied_index: metrics.last_applied.map(|id| id.index).unwrap_or(0),
        nodes,
        cluster_fingerprint: node.fingerprint.clone(),
    }
}

fn linearizable(consistency: i32) -> Result<bool, Status> {
    match api::ReadConsistency::try_from(consistency) {
        Ok(api::ReadConsistency::Linearizable) => Ok(true),
        Ok(api::ReadConsistency::Local) => Ok(false),
        Err(_) => Err(ApiError::InvalidArgument(format!("unknown read consistency {consistency}")).into()),
    }
}

fn unexpected(response: CommandResponse) -> Status {
    ApiError::Internal(format!("unexpected apply result {response:?}")).into()
}

#[tonic::async_trait]
impl Kv for KvApi {
    async fn put(&self, request: Request<api::PutRequest>) -> Result<Response<api::PutResponse>, Status> {
        let request = request.into_inner();
        match self.node.write(Command::KvPut { key: request.key, value: request.value }).await? {
            CommandResponse::Put { revision } => Ok(Response::new(api::PutResponse { revision })),
            other => Err(unexpected(other)),
        }
    }

    async fn get(&self, request: Request<api::GetRequest>) -> Result<Response<api::GetResponse>, Status> {
        let request = request.into_inner();
        let entry = self.node.get(&request.key, linearizable(request.consistency)?).await?;
        Ok(Response::new(match entry {
            Some(KvEntry { value, revision }) => api::GetResponse { found: true, value, revision },
            None => api::GetResponse::default(),
        }))
    }

    async fn cas(&self, request: Request<api::CasRequest>) -> Result<Response<api::CasResponse>, Status> {
        let request = request.into_inner();
        let command = Command::KvCas { key: request.key, expected: request.expected, new: request.new_value };
        match self.node.write(command).await? {
            CommandResponse::Cas { succeeded, current, revision } => Ok(Response::new(api::CasResponse {
                succeeded,
                found: current.is_some(),
                current: current.unwrap_or_default(),
                revision,
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn delete(&self, request: Request<api::DeleteRequest>) -> Result<Response<api::DeleteResponse>, Status> {
        match self.node.write(Command::KvDelete { key: request.into_inner().key }).await? {
            CommandResponse::Delete { existed } => Ok(Response::new(api::DeleteResponse { existed })),
            other => Err(unexpected(other)),
        }
    }

    async fn list(&self, request: Request<api::ListRequest>) -> Result<Response<api::ListResponse>, Status> {
        let request = request.into_inner();
        let start_after = (!request.start_after.is_empty()).then_some(request.start_after.as_str());
        let (items, more) = self
            .node
            .list(&request.prefix, start_after, request.limit as usize, linearizable(request.consistency)?)
            .await?;
        let items = items
            .into_iter()
            .map(|(key, entry)| api::KeyValue { key, value: entry.value, revision: entry.revision })
            .collect();
        Ok(Response::new(api::ListResponse { items, more }))
    }
}

struct FlowsApi {
    node: Arc<Node>,
}

#[tonic::async_trait]
impl Flows for FlowsApi {
    async fn put(&self, request: Request<api::PutFlowRequest>) -> Result<Response<api::PutFlowResponse>, Status> {
        let outcome = self.node.put_flow(&request.into_inner().definition).await?;
        Ok(Response::new(api::PutFlowResponse {
            name: outcome.name,
            version: outcome.version,
            created: outcome.created,
            hash: outcome.hash,
        }))
    }

    async fn get(&self, request: Request<api::GetFlowRequest>) -> Result<Response<api::GetFlowResponse>, Status> {
        let request = request.into_inner();
        let version = (request.version > 0).then_some(request.version);
        let flow = self.node.get_flow(&request.name, version, linearizable(request.consistency)?).await?;
        Ok(Response::new(api::GetFlowResponse {
            name: flow.name,
            version: flow.version,
            hash: flow.hash,
            definition: flow.definition,
            created_at_ms: flow.created_at_ms,
        }))
    }

    async fn list(&self, request: Request<api::ListFlowsRequest>) -> Result<Response<api::ListFlowsResponse>, Status> {
        let request = request.into_inner();
        let start_after = (!request.start_after.is_empty()).then_some(request.start_after.as_str());
        let (flows, more) =
            self.node.list_flows(start_after, request.limit as usize, linearizable(request.consistency)?).await?;
        let flows = flows.into_iter().map(|(name, latest_version)| api::FlowSummary { name, latest_version }).collect();
        Ok(Response::new(api::ListFlowsResponse { flows, more }))
    }

    async fn versions(&self, request: Request<api::FlowVersionsRequest>) -> Result<Response<api::FlowVersionsResponse>, Status> {
        let request = request.into_inner();
        let versions = self.node.flow_versions(&request.name, linearizable(request.consistency)?).await?;
        let versions = versions
            .into_iter()
            .map(|flow| api::FlowVersion { version: flow.version, hash: flow.hash, created_at_ms: flow.created_at_ms })
            .collect();
        Ok(Response::new(api::FlowVersionsResponse { versions }))
    }
}
