//! The model registry inside apply: model versions (artifacts are blobs,
//! the record holds the hash and the signature), deployments (how many
//! replicas of which version, with which pool settings) and where each
//! replica is placed. The leader decides placement; apply re-checks what
//! must hold whatever the leader believes: the deployment exists, the
//! replica index is in range, and GPU shares on one device never sum
//! above one device.

use serde::{Deserialize, Serialize};

use crate::answers::{CommandResponse, Rejection};
use crate::keys;
use crate::runs::RunTx;
use crate::NodeId;

use floe_storage::state_store::TxError;

/// Thousandths of a device: shares are integers so sums are exact.
pub const GPU_MILLI_PER_DEVICE: u32 = 1000;

/// One immutable version of a registered model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    pub name: String,
    pub version: u64,
    /// sha256 of the ONNX file, the blob holding it.
    pub hash: String,
    pub size: u64,
    /// Inputs, outputs and metadata as read by loading the model.
    pub signature: serde_json::Value,
    pub created_at_ms: u64,
}

/// How a deployment's replicas are built.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploySpec {
    pub replicas: u32,
    /// ONNX Runtime intra-op threads per replica.
    pub threads: u32,
    pub max_batch: u32,
    pub max_delay_ms: u64,
    /// Requests a replica queues before refusing more.
    pub queue: u32,
    /// Share of one GPU per replica in thousandths; 0 runs on the CPU.
    pub gpu_milli: u32,
}

impl DeploySpec {
    /// Every problem with the settings, naming the setting.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, what: &str| {
            if !ok {
                problems.push(what.to_string());
            }
        };
        check(
            (1..=64).contains(&self.replicas),
            "replicas must be 1 to 64",
        );
        check((1..=64).contains(&self.threads), "threads must be 1 to 64");
        check(
            (1..=1024).contains(&self.max_batch),
            "max_batch must be 1 to 1024",
        );
        check(
            self.max_delay_ms <= 10_000,
            "max_delay_ms must be at most 10000",
        );
        check(
            (1..=65_536).contains(&self.queue),
            "queue must be 1 to 65536",
        );
        check(
            self.gpu_milli <= GPU_MILLI_PER_DEVICE,
            "gpu must be a fraction from 0 to 1",
        );
        problems
    }
}

/// Replicas of one model version the cluster should keep warm.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub model: String,
    pub version: u64,
    pub spec: DeploySpec,
    pub created_at_ms: u64,
}

/// A GPU share held by a replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuShare {
    pub device: u32,
    pub milli: u32,
}

/// Where one replica lives. `node: None` with `evicted` means it was
/// evicted under memory pressure and is placed again on demand.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaRecord {
    pub model: String,
    pub version: u64,
    pub replica: u32,
    pub node: Option<NodeId>,
    pub gpu: Option<GpuShare>,
    pub evicted: bool,
    pub since_ms: u64,
    /// Why the leader moved or evicted it, for people.
    pub reason: String,
}

/// One change the leader proposes for a replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaChange {
    pub model: String,
    pub version: u64,
    pub replica: u32,
    /// The node to place it on; `None` takes it off its node.
    pub node: Option<NodeId>,
    pub gpu: Option<GpuShare>,
    /// With `node: None`: keep it as evicted (placed again only on demand)
    /// rather than missing (placed again at once).
    pub evicted: bool,
    pub reason: String,
}

fn refused(reason: String) -> CommandResponse {
    Rejection::FailedPrecondition(reason).into()
}

pub(crate) fn put_model(
    tx: &RunTx<'_>,
    name: &str,
    hash: &str,
    size: u64,
    signature: &[u8],
    at_ms: u64,
) -> Result<CommandResponse, TxError> {
    if let Some(version) = tx.get_json::<u64>(
        &keys::model_hash(name, hash),
        format_args!("model {name} hash"),
    )? {
        return Ok(CommandResponse::ModelPut {
            version,
            created: false,
        });
    }
    let signature: serde_json::Value = match serde_json::from_slice(signature) {
        Ok(signature) => signature,
        Err(err) => {
            return Ok(refused(format!(
                "model {name}: signature is not JSON: {err}"
            )))
        }
    };
    let latest = tx
        .get_json::<u64>(
            &keys::model_latest(name),
            format_args!("model {name} latest"),
        )?
        .unwrap_or(0);
    let version = latest + 1;
    let record = ModelRecord {
        name: name.to_string(),
        version,
        hash: hash.to_string(),
        size,
        signature,
        created_at_ms: at_ms,
    };
    tx.put_json(
        keys::model_def(name, version),
        &record,
        format_args!("model {name} v{version}"),
    )?;
    tx.put_json(
        keys::model_hash(name, hash),
        &version,
        format_args!("model {name} hash"),
    )?;
    tx.put_json(
        keys::model_latest(name),
        &version,
        format_args!("model {name} latest"),
    )?;
    tx.mark(keys::blob_owner(hash, &keys::model_owner(name, version)))?;
    Ok(CommandResponse::ModelPut {
        version,
        created: true,
    })
}

pub(crate) fn deploy(tx: &RunTx<'_>, deployment: &Deployment) -> Result<CommandResponse, TxError> {
    let (name, version) = (&deployment.model, deployment.version);
    if tx
        .get_json::<ModelRecord>(
            &keys::model_def(name, version),
            format_args!("model {name} v{version}"),
        )?
        .is_none()
    {
        return Ok(refused(format!("model {name} has no version {version}")));
    }
    let problems = deployment.spec.problems();
    if !problems.is_empty() {
        return Ok(refused(format!(
            "deployment of {name} v{version}: {}",
            problems.join("; ")
        )));
    }
    let key = keys::model_deployment(name, version);
    let what = format!("deployment {name} v{version}");
    if let Some(previous) = tx.get_json::<Deployment>(&key, format_args!("{what}"))? {
        if previous.spec == deployment.spec {
            return Ok(CommandResponse::Applied);
        }
        // Changed settings: every replica is built again with them.
        remove_replicas(tx, name, version)?;
    }
    tx.put_json(key, deployment, format_args!("{what}"))?;
    Ok(CommandResponse::Applied)
}

pub(crate) fn undeploy(
    tx: &RunTx<'_>,
    name: &str,
    version: u64,
) -> Result<CommandResponse, TxError> {
    let key = keys::model_deployment(name, version);
    if !tx.data.remove(&key)? {
        return Ok(refused(format!("model {name} v{version} is not deployed")));
    }
    remove_replicas(tx, name, version)?;
    Ok(CommandResponse::Applied)
}

/// Removes every replica record of a deployment.
fn remove_replicas(tx: &RunTx<'_>, name: &str, version: u64) -> Result<(), TxError> {
    // Replica indexes are below 64 (DeploySpec::problems).
    for replica in 0..64 {
        let label = format!("replica {replica} of {name} v{version}");
        set_replica(
            tx,
            keys::model_replica(name, version, replica),
            None,
            &label,
        )?;
    }
    Ok(())
}

/// Applies the leader's replica changes one by one; a refused change is
/// skipped and its reason returned, the others still apply.
pub(crate) fn change_replicas(
    tx: &RunTx<'_>,
    changes: &[ReplicaChange],
    at_ms: u64,
) -> Result<CommandResponse, TxError> {
    let mut reasons = Vec::new();
    for change in changes {
        if let Some(reason) = change_replica(tx, change, at_ms)? {
            reasons.push(reason);
        }
    }
    if reasons.is_empty() {
        Ok(CommandResponse::Applied)
    } else {
        Ok(refused(reasons.join("; ")))
    }
}

fn change_replica(
    tx: &RunTx<'_>,
    change: &ReplicaChange,
    at_ms: u64,
) -> Result<Option<String>, TxError> {
    let (name, version, replica) = (&change.model, change.version, change.replica);
    let label = format!("replica {replica} of {name} v{version}");
    let Some(deployment) = tx.get_json::<Deployment>(
        &keys::model_deployment(name, version),
        format_args!("deployment {name} v{version}"),
    )?
    else {
        return Ok(Some(format!("{label}: model is not deployed")));
    };
    if replica >= deployment.spec.replicas {
        return Ok(Some(format!(
            "{label}: the deployment has {} replicas",
            deployment.spec.replicas
        )));
    }
    let key = keys::model_replica(name, version, replica);
    let Some(node) = change.node else {
        if change.evicted {
            let record = ReplicaRecord {
                model: name.clone(),
                version,
                replica,
                node: None,
                gpu: None,
                evicted: true,
                since_ms: at_ms,
                reason: change.reason.clone(),
            };
            set_replica(tx, key, Some(&record), &label)?;
        } else {
            set_replica(tx, key, None, &label)?;
        }
        return Ok(None);
    };
    match (deployment.spec.gpu_milli, change.gpu) {
        (0, None) => {}
        (0, Some(_)) => return Ok(Some(format!("{label}: the deployment runs on the CPU"))),
        (_, None) => return Ok(Some(format!("{label}: the deployment needs a GPU share"))),
        (wanted, Some(share)) if share.milli != wanted => {
            return Ok(Some(format!(
                "{label}: share {} differs from the deployment's {wanted}",
                share.milli
            )));
        }
        (_, Some(share)) => {
            let mine = tx
                .get_json::<ReplicaRecord>(&key, format_args!("{label}"))?
                .filter(|old| old.node == Some(node))
                .and_then(|old| old.gpu)
                .filter(|old| old.device == share.device)
                .map_or(0, |old| old.milli);
            let used = gpu_used(tx, node, share.device)?.saturating_sub(mine);
            if used + share.milli > GPU_MILLI_PER_DEVICE {
                return Ok(Some(format!(
                    "{label}: GPU {} of node {node} has {} thousandths left, {} asked",
                    share.device,
                    GPU_MILLI_PER_DEVICE.saturating_sub(used),
                    share.milli
                )));
            }
        }
    }
    let record = ReplicaRecord {
        model: name.clone(),
        version,
        replica,
        node: Some(node),
        gpu: change.gpu,
        evicted: false,
        since_ms: at_ms,
        reason: change.reason.clone(),
    };
    set_replica(tx, key, Some(&record), &label)?;
    Ok(None)
}

/// Writes (or with `None` removes) a replica record, moving the GPU share
/// counters of the record it replaces and of the new one.
fn set_replica(
    tx: &RunTx<'_>,
    key: Vec<u8>,
    record: Option<&ReplicaRecord>,
    label: &str,
) -> Result<(), TxError> {
    if let Some(old) = tx.get_json::<ReplicaRecord>(&key, format_args!("{label}"))? {
        if let (Some(node), Some(share)) = (old.node, old.gpu) {
            let used = gpu_used(tx, node, share.device)?;
            put_gpu_used(tx, node, share.device, used.saturating_sub(share.milli))?;
        }
    }
    match record {
        Some(record) => {
            if let (Some(node), Some(share)) = (record.node, record.gpu) {
                let used = gpu_used(tx, node, share.device)?;
                put_gpu_used(tx, node, share.device, used + share.milli)?;
            }
            tx.put_json(key, record, format_args!("{label}"))
        }
        None => {
            tx.data.remove(&key)?;
            Ok(())
        }
    }
}

/// Thousandths of GPU `device` on `node` held by placed replicas.
fn gpu_used(tx: &RunTx<'_>, node: NodeId, device: u32) -> Result<u32, TxError> {
    Ok(tx
        .get_json::<u32>(
            &keys::gpu_used(node, device),
            format_args!("GPU {device} of node {node}"),
        )?
        .unwrap_or(0))
}

fn put_gpu_used(tx: &RunTx<'_>, node: NodeId, device: u32, used: u32) -> Result<(), TxError> {
    let key = keys::gpu_used(node, device);
    if used == 0 {
        tx.data.remove(&key)?;
        return Ok(());
    }
    tx.put_json(key, &used, format_args!("GPU {device} of node {node}"))
}
