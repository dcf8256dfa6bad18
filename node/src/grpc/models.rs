//! The model API: register, deploy, status, and direct inference.

use crate::api::models_server::Models;
use crate::models::ModelService;
use floe_engine::names::quote_bounded;
use tonic::{Request, Response, Status};

use crate::api;
use crate::call_context::CallContext;
use crate::error::ApiError;

pub(super) struct ModelsApi {
    pub(super) models: ModelService,
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
        let ctx = CallContext::of(&request);
        let request = request.into_inner();
        let put = self
            .models
            .put_model(&ctx, &request.name, request.onnx)
            .await?;
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
        let ctx = CallContext::of(&request);
        let models = self
            .models
            .list_models(&ctx, &request.into_inner().name)
            .await?;
        Ok(Response::new(api::ListModelsResponse {
            models: models.into_iter().map(model_info).collect(),
        }))
    }

    async fn deploy(
        &self,
        request: Request<api::DeployModelRequest>,
    ) -> Result<Response<api::DeployModelResponse>, Status> {
        let ctx = CallContext::of(&request);
        let request = request.into_inner();
        let spec = floe_state::models::DeploySpec {
            replicas: request.replicas,
            threads: request.threads,
            max_batch: request.max_batch,
            max_delay_ms: request.max_delay_ms,
            queue: request.queue,
            gpu_milli: crate::models::gpu_milli(request.gpu)?,
        };
        let version = self
            .models
            .deploy_model(&ctx, &request.name, request.version, spec)
            .await?;
        Ok(Response::new(api::DeployModelResponse { version }))
    }

    async fn undeploy(
        &self,
        request: Request<api::UndeployModelRequest>,
    ) -> Result<Response<api::UndeployModelResponse>, Status> {
        let ctx = CallContext::of(&request);
        let request = request.into_inner();
        let version = self
            .models
            .undeploy_model(&ctx, &request.name, request.version)
            .await?;
        Ok(Response::new(api::UndeployModelResponse { version }))
    }

    async fn status(
        &self,
        request: Request<api::ModelStatusRequest>,
    ) -> Result<Response<api::ModelStatusResponse>, Status> {
        let ctx = CallContext::of(&request);
        let statuses = self
            .models
            .model_status(&ctx, &request.into_inner().name)
            .await?;
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
        let ctx = CallContext::of(&request);
        let request = request.into_inner();
        if request.model.is_empty() {
            return Err(ApiError::InvalidArgument("model is empty".into()).into());
        }
        let inputs = tensors_in(request.inputs)?;
        let served = self
            .models
            .infer(&ctx, &request.model, request.version, inputs)
            .await?;
        Ok(Response::new(api::InferResponse {
            outputs: tensors_out(served.outputs),
            node: served.node,
            replica: served.replica,
        }))
    }
}
