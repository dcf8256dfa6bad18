//! The model registry API: register artifacts, deploy and undeploy
//! versions, and report every replica's state. Artifacts are replicated
//! blobs; records, deployments and placements go through the Raft log.

use std::time::Duration;

use floe_state::models::{DeploySpec, Deployment, ModelRecord, GPU_MILLI_PER_DEVICE};
use floe_state::{Command, CommandResponse, NodeId};

use crate::call_context::CallContext;
use crate::error::ApiError;
use crate::models::ModelService;
use crate::peer_api::{PeerRequest, PeerResponse};
use crate::reports::{ReplicaId, ReplicaReport};
use floe_engine::names::quote_bounded;

/// What a registration produced.
pub struct PutModel {
    pub version: u64,
    pub created: bool,
    pub hash: String,
    pub signature_json: String,
}

/// One replica as `model status` shows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplicaView {
    pub replica: u32,
    pub node: Option<NodeId>,
    /// pending, evicted, placed (no report yet), loading, warm, failed.
    pub state: String,
    pub detail: String,
    pub gpu: Option<(u32, u32)>,
    pub report: Option<ReplicaReport>,
}

/// A GPU fraction from the API as thousandths of a device.
pub fn gpu_milli(fraction: f64) -> Result<u32, ApiError> {
    if !(0.0..=1.0).contains(&fraction) || fraction.is_nan() {
        return Err(ApiError::InvalidArgument(format!(
            "gpu {fraction} must be a fraction from 0 to 1"
        )));
    }
    let milli = (fraction * f64::from(GPU_MILLI_PER_DEVICE)).round() as u32;
    if fraction > 0.0 && milli == 0 {
        return Err(ApiError::InvalidArgument(format!(
            "gpu {fraction} is below the smallest share, 0.001"
        )));
    }
    Ok(milli)
}

fn store_error(err: floe_state::StoreError) -> ApiError {
    ApiError::Internal(err.to_string())
}

impl ModelService {
    /// Checks the file by loading it, stores it as a replicated blob, then
    /// commits the record. Nothing is recorded when any step fails.
    pub async fn put_model(
        &self,
        _ctx: &CallContext,
        name: &str,
        bytes: Vec<u8>,
    ) -> Result<PutModel, ApiError> {
        if !floe_engine::is_model_name(name) {
            return Err(ApiError::InvalidArgument(format!(
                "model name {} must match ^[a-z][a-z0-9_-]{{0,39}}$",
                quote_bounded(name)
            )));
        }
        let limit = self.inner.config.max_model_bytes;
        if bytes.is_empty() {
            return Err(ApiError::InvalidArgument(format!(
                "model {name}: the file is empty"
            )));
        }
        if bytes.len() as u64 > limit {
            return Err(ApiError::ResourceExhausted(format!(
                "model {name}: file is {} bytes, more than inference.max_model_bytes ({limit})",
                bytes.len()
            )));
        }
        let runtime = self.inner.manager.runtime(&self.ort_library()).await?;
        let bytes = std::sync::Arc::new(bytes);
        let checked = bytes.clone();
        let model = name.to_string();
        let signature = tokio::task::spawn_blocking(move || {
            floe_inference::inspect_model(&runtime, &model, &checked)
        })
        .await
        .map_err(|err| ApiError::Internal(err.to_string()))?
        .map_err(|err| ApiError::InvalidArgument(err.to_string()))?;
        let signature_json =
            serde_json::to_string(&signature).map_err(|err| ApiError::Internal(err.to_string()))?;
        let blob = self.inner.blobs.store(bytes.to_vec()).await?;
        let command = Command::PutModel {
            name: name.to_string(),
            hash: blob.hash.clone(),
            size: blob.size,
            signature: signature_json.clone().into_bytes(),
            at_ms: self.inner.clock.now_ms(),
        };
        match self.inner.cluster.write(command).await? {
            CommandResponse::ModelPut { version, created } => Ok(PutModel {
                version,
                created,
                hash: blob.hash,
                signature_json,
            }),
            other => Err(ApiError::Internal(format!(
                "model put applied with unexpected result {other:?}"
            ))),
        }
    }

    /// Registered versions: every model's, or one model's.
    pub async fn list_models(
        &self,
        _ctx: &CallContext,
        name: &str,
    ) -> Result<Vec<ModelRecord>, ApiError> {
        self.inner.cluster.read_barrier().await?;
        if name.is_empty() {
            self.inner.cluster.reader().models().map_err(store_error)
        } else {
            self.inner
                .cluster
                .reader()
                .model_versions(name)
                .map_err(store_error)
        }
    }

    /// Deploys `version` (0: the latest registered) with `spec`.
    pub async fn deploy_model(
        &self,
        _ctx: &CallContext,
        name: &str,
        version: u64,
        spec: DeploySpec,
    ) -> Result<u64, ApiError> {
        self.inner.cluster.read_barrier().await?;
        let wanted = (version > 0).then_some(version);
        let Some(model) = self
            .inner
            .cluster
            .reader()
            .model(name, wanted)
            .map_err(store_error)?
        else {
            return Err(ApiError::NotFound(match wanted {
                Some(version) => format!("model {} has no version {version}", quote_bounded(name)),
                None => format!("model {} is not registered", quote_bounded(name)),
            }));
        };
        let problems = spec.problems();
        if !problems.is_empty() {
            return Err(ApiError::InvalidArgument(format!(
                "deployment of {}: {}",
                quote_bounded(name),
                problems.join("; ")
            )));
        }
        let deployment = Deployment {
            model: name.to_string(),
            version: model.version,
            spec,
            created_at_ms: self.inner.clock.now_ms(),
        };
        self.inner
            .cluster
            .write(Command::DeployModel { deployment })
            .await?;
        Ok(model.version)
    }

    /// Removes a deployment (0: the highest deployed version).
    pub async fn undeploy_model(
        &self,
        _ctx: &CallContext,
        name: &str,
        version: u64,
    ) -> Result<u64, ApiError> {
        self.inner.cluster.read_barrier().await?;
        let version = self.resolve_deployed_version(name, version)?;
        self.inner
            .cluster
            .write(Command::UndeployModel {
                name: name.to_string(),
                version,
            })
            .await?;
        Ok(version)
    }

    /// Deployments (one model's, or all) with each replica's live state.
    pub async fn model_status(
        &self,
        _ctx: &CallContext,
        name: &str,
    ) -> Result<Vec<(Deployment, Vec<ReplicaView>)>, ApiError> {
        self.inner.cluster.read_barrier().await?;
        let deployments: Vec<Deployment> = self
            .inner
            .cluster
            .reader()
            .deployments()
            .map_err(store_error)?
            .into_iter()
            .filter(|d| name.is_empty() || d.model == name)
            .collect();
        if !name.is_empty() && deployments.is_empty() {
            return Err(ApiError::NotFound(format!(
                "model {} is not deployed",
                quote_bounded(name)
            )));
        }
        let records = self
            .inner
            .cluster
            .reader()
            .replicas()
            .map_err(store_error)?;
        let reports = self.leader_replica_reports().await;
        let mut out = Vec::new();
        for deployment in deployments {
            let mut views = Vec::new();
            for replica in 0..deployment.spec.replicas {
                let id = ReplicaId {
                    model: deployment.model.clone(),
                    version: deployment.version,
                    replica,
                };
                let record = records.iter().find(|r| ReplicaId::of(r) == id);
                let mut view = ReplicaView {
                    replica,
                    ..ReplicaView::default()
                };
                match record {
                    None => view.state = "pending".into(),
                    Some(record) if record.node.is_none() => {
                        view.state = if record.evicted { "evicted" } else { "pending" }.into();
                        view.detail = record.reason.clone();
                    }
                    Some(record) => {
                        view.node = record.node;
                        view.gpu = record.gpu.map(|share| (share.device, share.milli));
                        let report = reports
                            .as_ref()
                            .and_then(|all| all.iter().find(|(node, _)| Some(*node) == record.node))
                            .and_then(|(_, replicas)| replicas.iter().find(|r| r.id == id))
                            .cloned();
                        match report {
                            Some(report) => {
                                view.state = report.state.clone();
                                view.detail = report.detail.clone();
                                view.report = Some(report);
                            }
                            None => view.state = "placed".into(),
                        }
                    }
                }
                views.push(view);
            }
            out.push((deployment, views));
        }
        Ok(out)
    }

    /// The leader's latest replica reports; `None` when it cannot be asked.
    async fn leader_replica_reports(&self) -> Option<Vec<(NodeId, Vec<ReplicaReport>)>> {
        let leader = self.inner.cluster.leader()?;
        if leader == self.id() {
            return Some(self.inner.reports.replica_reports());
        }
        let addr = self
            .inner
            .cluster
            .members()
            .0
            .get(&leader)?
            .raft_addr
            .clone();
        match self
            .inner
            .cluster
            .call(
                leader,
                &addr,
                &PeerRequest::ModelReports,
                Duration::from_secs(2),
            )
            .await
        {
            Ok(PeerResponse::ModelReports(reports)) => Some(reports),
            Ok(_) | Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_fractions_become_thousandths() {
        assert_eq!(gpu_milli(0.0).unwrap(), 0);
        assert_eq!(gpu_milli(0.5).unwrap(), 500);
        assert_eq!(gpu_milli(1.0).unwrap(), 1000);
        assert!(gpu_milli(1.5).is_err());
        assert!(gpu_milli(-0.1).is_err());
        assert!(gpu_milli(f64::NAN).is_err());
        assert!(gpu_milli(0.0001)
            .unwrap_err()
            .to_string()
            .contains("smallest share"));
    }
}
