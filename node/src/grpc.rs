//! The public gRPC API (tonic) over TLS; clients present a certificate signed
//! by the cluster CA.

use std::sync::Arc;
use std::time::Duration;

use floe_raft::TlsMaterial;
use floe_state::{Command, CommandResponse, KvEntry};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::api;
use crate::api::blobs_server::{Blobs, BlobsServer};
use crate::api::cluster_server::{Cluster, ClusterServer};
use crate::api::flows_server::{Flows, FlowsServer};
use crate::api::kv_server::{Kv, KvServer};
use crate::api::models_server::{Models, ModelsServer};
use crate::api::runs_server::{Runs, RunsServer};
use crate::api::workers_server::{Workers, WorkersServer};
use crate::call_context::{CallContext, CallContextLayer};
use crate::error::ApiError;
use crate::grpc_limits::{OversizeAnswerLayer, TransportLimits};
use crate::leader_hint::{LeaderHintLayer, LeaderLookup};
use crate::peer_api::{PeerRequest, PeerResponse};
use crate::service::Node;
use floe_engine::names::quote_bounded;
use tracing::Instrument;

/// A client that opens a connection and does not finish the TLS handshake
/// within this is disconnected, so idle sockets cannot pile up.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn serve(
    node: Arc<Node>,
    material: TlsMaterial,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let addr = node.config.api_addr.parse()?;
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(
            material.cert_pem(),
            material.key_pem(),
        ))
        .client_ca_root(tonic::transport::Certificate::from_pem(material.ca_pem()))
        .timeout(TLS_HANDSHAKE_TIMEOUT);
    // Each service decodes at least what floe's own checks accept, so those
    // checks answer; a larger request gets RESOURCE_EXHAUSTED naming the
    // setting (grpc_limits.rs).
    let limits = TransportLimits::from_config(&node.config);
    tonic::transport::Server::builder()
        .tls_config(tls)?
        .layer(CallContextLayer)
        .layer(OversizeAnswerLayer::new(limits.clone()))
        .layer(LeaderHintLayer::new(leader_lookup(&node)))
        .add_service(
            ClusterServer::new(ClusterApi { node: node.clone() })
                .max_decoding_message_size(limits.small),
        )
        .add_service(
            FlowsServer::new(FlowsApi { node: node.clone() })
                .max_decoding_message_size(limits.flows)
                .max_encoding_message_size(limits.flows),
        )
        .add_service(
            RunsServer::new(RunsApi { node: node.clone() })
                .max_decoding_message_size(limits.runs)
                .max_encoding_message_size(limits.runs),
        )
        .add_service(
            WorkersServer::new(WorkersApi { node: node.clone() })
                .max_decoding_message_size(limits.workers)
                .max_encoding_message_size(limits.workers),
        )
        .add_service(
            BlobsServer::new(BlobsApi { node: node.clone() })
                .max_decoding_message_size(limits.small)
                .max_encoding_message_size(limits.runs),
        )
        .add_service(
            ModelsServer::new(ModelsApi { node: node.clone() })
                .max_decoding_message_size(limits.models)
                .max_encoding_message_size(limits.models),
        )
        .add_service(
            KvServer::new(KvApi { node })
                .max_decoding_message_size(limits.kv)
                .max_encoding_message_size(limits.kv),
        )
        .serve_with_shutdown(addr, cancel.cancelled_owned())
        .await
        .map_err(|err| anyhow::anyhow!("gRPC server on {addr}: {err}"))
}

/// The leader's API address, while this node knows a leader other than itself.
fn leader_lookup(node: &Arc<Node>) -> LeaderLookup {
    let cluster = node.cluster.clone();
    Arc::new(move || cluster.leader_api_addr())
}

struct ClusterApi {
    node: Arc<Node>,
}

struct KvApi {
    node: Arc<Node>,
}

#[tonic::async_trait]
impl Cluster for ClusterApi {
    async fn init(
        &self,
        _request: Request<api::InitRequest>,
    ) -> Result<Response<api::InitResponse>, Status> {
        self.node.cluster.init_cluster().await?;
        Ok(Response::new(api::InitResponse {
            node_id: self.node.id,
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
            .node
            .cluster
            .join(request.node_id, &request.raft_addr, request.learner_only)
            .await?;
        Ok(Response::new(api::JoinResponse { voters, learners }))
    }

    async fn remove(
        &self,
        request: Request<api::RemoveRequest>,
    ) -> Result<Response<api::RemoveResponse>, Status> {
        let (voters, learners) = self
            .node
            .cluster
            .remove(request.into_inner().node_id)
            .await?;
        Ok(Response::new(api::RemoveResponse { voters, learners }))
    }

    async fn status(
        &self,
        _request: Request<api::StatusRequest>,
    ) -> Result<Response<api::StatusResponse>, Status> {
        Ok(Response::new(cluster_status(&self.node).await))
    }
}

/// This node's metrics plus every member's own answer, asked concurrently.
async fn cluster_status(node: &Arc<Node>) -> api::StatusResponse {
    let metrics = node.cluster.raft_metrics();
    let commit_index = node.cluster.committed_index().await;
    let (nodes, voters) = node.cluster.members();
    let mut answers = Vec::new();
    for (id, info) in nodes {
        let node = node.clone();
        answers.push(async move {
            let status = if id == node.id {
                Ok(node.cluster.local_status())
            } else {
                match node
                    .cluster
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
        answered_by: node.id,
        leader_id: metrics.current_leader.unwrap_or(0),
        has_leader: metrics.current_leader.is_some(),
        term: metrics.current_term,
        commit_index,
        applied_index: metrics.last_applied.map(|id| id.index).unwrap_or(0),
        nodes,
        cluster_fingerprint: node.fingerprint.clone(),
    }
}

fn linearizable(consistency: i32) -> Result<bool, Status> {
    match api::ReadConsistency::try_from(consistency) {
        Ok(api::ReadConsistency::Linearizable) => Ok(true),
        Ok(api::ReadConsistency::Local) => Ok(false),
        Err(_) => {
            Err(ApiError::InvalidArgument(format!("unknown read consistency {consistency}")).into())
        }
    }
}

fn unexpected(response: CommandResponse) -> Status {
    crate::error::unexpected_answer(&response).into()
}

#[tonic::async_trait]
impl Kv for KvApi {
    async fn put(
        &self,
        request: Request<api::PutRequest>,
    ) -> Result<Response<api::PutResponse>, Status> {
        let request = request.into_inner();
        match self
            .node
            .cluster
            .write(Command::KvPut {
                key: request.key,
                value: request.value,
            })
            .await?
        {
            CommandResponse::Put { revision } => Ok(Response::new(api::PutResponse { revision })),
            other => Err(unexpected(other)),
        }
    }

    async fn get(
        &self,
        request: Request<api::GetRequest>,
    ) -> Result<Response<api::GetResponse>, Status> {
        let request = request.into_inner();
        let entry = self
            .node
            .get(&request.key, linearizable(request.consistency)?)
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
        let request = request.into_inner();
        let command = Command::KvCas {
            key: request.key,
            expected: request.expected,
            new: request.new_value,
        };
        match self.node.cluster.write(command).await? {
            CommandResponse::Cas {
                succeeded,
                current,
                revision,
            } => Ok(Response::new(api::CasResponse {
                succeeded,
                found: current.is_some(),
                current: current.unwrap_or_default(),
                revision,
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn delete(
        &self,
        request: Request<api::DeleteRequest>,
    ) -> Result<Response<api::DeleteResponse>, Status> {
        match self
            .node
            .cluster
            .write(Command::KvDelete {
                key: request.into_inner().key,
            })
            .await?
        {
            CommandResponse::Delete { existed } => {
                Ok(Response::new(api::DeleteResponse { existed }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn list(
        &self,
        request: Request<api::ListRequest>,
    ) -> Result<Response<api::ListResponse>, Status> {
        let request = request.into_inner();
        let start_after = (!request.start_after.is_empty()).then_some(request.start_after.as_str());
        let (items, more) = self
            .node
            .list(
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

struct FlowsApi {
    node: Arc<Node>,
}

#[tonic::async_trait]
impl Flows for FlowsApi {
    async fn put(
        &self,
        request: Request<api::PutFlowRequest>,
    ) -> Result<Response<api::PutFlowResponse>, Status> {
        let outcome = self.node.put_flow(&request.into_inner().definition).await?;
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
        let request = request.into_inner();
        let version = (request.version > 0).then_some(request.version);
        let flow = self
            .node
            .get_flow(&request.name, version, linearizable(request.consistency)?)
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
        let request = request.into_inner();
        let start_after = (!request.start_after.is_empty()).then_some(request.start_after.as_str());
        let (flows, more) = self
            .node
            .list_flows(
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
        let request = request.into_inner();
        let versions = self
            .node
            .flow_versions(&request.name, linearizable(request.consistency)?)
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

struct RunsApi {
    node: Arc<Node>,
}

struct BlobsApi {
    node: Arc<Node>,
}

#[tonic::async_trait]
impl Blobs for BlobsApi {
    async fn get(
        &self,
        request: Request<api::GetBlobRequest>,
    ) -> Result<Response<api::GetBlobResponse>, Status> {
        let address = request.into_inner().address;
        let hash = address.strip_prefix("sha256:").unwrap_or(&address);
        let data = self.node.load_blob(hash).await?;
        Ok(Response::new(api::GetBlobResponse { data }))
    }
}

struct ModelsApi {
    node: Arc<Node>,
}

fn tensors_in(
    tensors: std::collections::HashMap<String, api::TensorData>,
) -> Result<floe_inference::TensorMap, ApiError> {
    tensors
        .into_iter()
        .map(|(name, data)| {
            let tensor = tensor_from_wire(data).map_err(|err| {
                ApiError::InvalidArgument(format!("input {}: {err}", quote_bounded(&name)))
            })?;
            Ok((name, tensor))
        })
        .collect()
}

fn tensors_out(
    tensors: floe_inference::TensorMap,
) -> std::collections::HashMap<String, api::TensorData> {
    tensors
        .into_iter()
        .map(|(name, tensor)| (name, tensor_to_wire(tensor)))
        .collect()
}

/// A tensor as the gRPC API carries it.
pub fn tensor_to_wire(tensor: floe_inference::Tensor) -> api::TensorData {
    api::TensorData {
        dtype: tensor.dtype().name().to_string(),
        shape: tensor.shape().iter().map(|&dim| dim as u64).collect(),
        data: tensor.into_data(),
    }
}

/// A tensor from the gRPC API; the error says what does not fit.
pub fn tensor_from_wire(data: api::TensorData) -> Result<floe_inference::Tensor, String> {
    let dtype = floe_inference::tensor_json::dtype_from_name(&data.dtype)
        .ok_or_else(|| format!("unknown dtype {}", quote_bounded(&data.dtype)))?;
    let shape = data.shape.iter().map(|&dim| dim as usize).collect();
    floe_inference::Tensor::new(dtype, shape, data.data).map_err(|err| err.to_string())
}

fn model_info(record: floe_state::models::ModelRecord) -> api::ModelInfo {
    api::ModelInfo {
        name: record.name,
        version: record.version,
        hash: record.hash,
        size: record.size,
        signature_json: record.signature.to_string(),
        created_at_ms: record.created_at_ms,
    }
}

#[tonic::async_trait]
impl Models for ModelsApi {
    async fn put(
        &self,
        request: Request<api::PutModelRequest>,
    ) -> Result<Response<api::PutModelResponse>, Status> {
        let request = request.into_inner();
        let put = self.node.put_model(&request.name, request.onnx).await?;
        Ok(Response::new(api::PutModelResponse {
            version: put.version,
            created: put.created,
            hash: put.hash,
            signature_json: put.signature_json,
        }))
    }

    async fn list(
        &self,
        request: Request<api::ListModelsRequest>,
    ) -> Result<Response<api::ListModelsResponse>, Status> {
        let models = self.node.list_models(&request.into_inner().name).await?;
        Ok(Response::new(api::ListModelsResponse {
            models: models.into_iter().map(model_info).collect(),
        }))
    }

    async fn deploy(
        &self,
        request: Request<api::DeployModelRequest>,
    ) -> Result<Response<api::DeployModelResponse>, Status> {
        let request = request.into_inner();
        let spec = floe_state::models::DeploySpec {
            replicas: request.replicas,
            threads: request.threads,
            max_batch: request.max_batch,
            max_delay_ms: request.max_delay_ms,
            queue: request.queue,
            gpu_milli: crate::registry::gpu_milli(request.gpu)?,
        };
        let version = self
            .node
            .deploy_model(&request.name, request.version, spec)
            .await?;
        Ok(Response::new(api::DeployModelResponse { version }))
    }

    async fn undeploy(
        &self,
        request: Request<api::UndeployModelRequest>,
    ) -> Result<Response<api::UndeployModelResponse>, Status> {
        let request = request.into_inner();
        let version = self
            .node
            .undeploy_model(&request.name, request.version)
            .await?;
        Ok(Response::new(api::UndeployModelResponse { version }))
    }

    async fn status(
        &self,
        request: Request<api::ModelStatusRequest>,
    ) -> Result<Response<api::ModelStatusResponse>, Status> {
        let statuses = self.node.model_status(&request.into_inner().name).await?;
        let deployments = statuses
            .into_iter()
            .map(|(deployment, views)| api::DeploymentStatus {
                model: deployment.model,
                version: deployment.version,
                replicas: deployment.spec.replicas,
                threads: deployment.spec.threads,
                max_batch: deployment.spec.max_batch,
                max_delay_ms: deployment.spec.max_delay_ms,
                queue: deployment.spec.queue,
                gpu: f64::from(deployment.spec.gpu_milli) / 1000.0,
                replica_status: views
                    .into_iter()
                    .map(|view| {
                        let report = view.report.unwrap_or_default();
                        api::ReplicaStatus {
                            replica: view.replica,
                            node: view.node.unwrap_or(0),
                            state: view.state,
                            detail: view.detail,
                            gpu_device: view.gpu.map_or(0, |(device, _)| device),
                            gpu: view.gpu.map_or(0.0, |(_, milli)| f64::from(milli) / 1000.0),
                            memory_bytes: report.memory_bytes,
                            queue_depth: report.queue_depth,
                            queue_capacity: report.queue_capacity,
                            p50_ms: report.p50_ms,
                            p99_ms: report.p99_ms,
                            completed: report.completed,
                            last_used_ms: report.last_used_ms,
                        }
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(api::ModelStatusResponse { deployments }))
    }

    async fn infer(
        &self,
        request: Request<api::InferRequest>,
    ) -> Result<Response<api::InferResponse>, Status> {
        let request = request.into_inner();
        if request.model.is_empty() {
            return Err(ApiError::InvalidArgument("model is empty".into()).into());
        }
        let inputs = tensors_in(request.inputs)?;
        let served = self
            .node
            .infer(&request.model, request.version, inputs)
            .await?;
        Ok(Response::new(api::InferResponse {
            outputs: tensors_out(served.outputs),
            node: served.node,
            replica: served.replica,
        }))
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

#[tonic::async_trait]
impl Runs for RunsApi {
    async fn start(
        &self,
        request: Request<api::StartRunRequest>,
    ) -> Result<Response<api::StartRunResponse>, Status> {
        let request = request.into_inner();
        let version = (request.version > 0).then_some(request.version);
        let started = self
            .node
            .start_run(
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
        let request = request.into_inner();
        let run = self
            .node
            .get_run(&request.run_id, linearizable(request.consistency)?)
            .await?;
        Ok(Response::new(api::GetRunResponse {
            run: run_json(&run)?,
        }))
    }

    async fn list(
        &self,
        request: Request<api::ListRunsRequest>,
    ) -> Result<Response<api::ListRunsResponse>, Status> {
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
            .node
            .list_runs(
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
        let request = request.into_inner();
        self.node
            .cancel_run(&request.run_id, &request.reason)
            .await?;
        Ok(Response::new(api::RunActionResponse {}))
    }

    async fn retry(
        &self,
        request: Request<api::RetryRunRequest>,
    ) -> Result<Response<api::RunActionResponse>, Status> {
        self.node.retry_run(&request.into_inner().run_id).await?;
        Ok(Response::new(api::RunActionResponse {}))
    }

    async fn signal(
        &self,
        request: Request<api::SignalRunRequest>,
    ) -> Result<Response<api::RunActionResponse>, Status> {
        let request = request.into_inner();
        self.node
            .signal_run(&request.run_id, &request.signal, &request.payload)
            .await?;
        Ok(Response::new(api::RunActionResponse {}))
    }

    type WatchStream = tokio_stream::wrappers::ReceiverStream<Result<api::RunUpdate, Status>>;

    async fn set_limit(
        &self,
        request: Request<api::SetLimitRequest>,
    ) -> Result<Response<api::SetLimitResponse>, Status> {
        let request = request.into_inner();
        let scope = crate::runs::parse_limit_scope(&request.scope)?;
        self.node
            .set_limit(scope, &request.name, request.limit)
            .await?;
        Ok(Response::new(api::SetLimitResponse {}))
    }

    async fn list_limits(
        &self,
        request: Request<api::ListLimitsRequest>,
    ) -> Result<Response<api::ListLimitsResponse>, Status> {
        let request = request.into_inner();
        let limits = self
            .node
            .list_limits(linearizable(request.consistency)?)
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
        let run_id = request.into_inner().run_id;
        // Subscribed before the first read, so no change falls in between.
        let mut changes = self.node.changes.watch_run(&run_id);
        // Every later change streams from this node's applied state, so a
        // run already here needs no quorum round; one not here yet (started
        // a moment ago through another node) takes a read barrier, and one
        // absent after it does not exist.
        let first = match self.node.reader.run(&run_id) {
            Ok(Some(run)) => run,
            _ => self.node.get_run(&run_id, true).await?,
        };
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        let node = self.node.clone();
        tokio::spawn(async move {
            if sender.send(run_update(None, &first)).await.is_err() {
                return;
            }
            let mut last = first;
            while last.status == floe_engine::run::RunStatus::Running {
                tokio::select! {
                    _ = node.shutdown.cancelled() => {
                        // Not a clean end: the run goes on, and the watcher
                        // must be able to tell (and watch it on another node).
                        let _ = sender.send(Err(shutting_down(&node))).await;
                        return;
                    }
                    _ = sender.closed() => return,
                    _ = changes.changed() => {}
                }
                let Ok(Some(current)) = node.reader.run(&run_id) else {
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

/// How a stream ends when its node stops: `UNAVAILABLE`, safe to resume elsewhere.
pub(crate) fn shutting_down(node: &Node) -> Status {
    ApiError::Unavailable(format!("node {} is shutting down", node.id)).into()
}

struct WorkersApi {
    node: Arc<Node>,
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
            crate::workers::serve_worker(self.node.clone(), request.into_inner(), sender)
                .instrument(span),
        );
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            receiver,
        )))
    }
}
