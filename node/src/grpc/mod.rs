//! The public gRPC API (tonic) over TLS; clients present a certificate signed
//! by the cluster CA. One file per service; each holds the handles of the
//! components it calls and passes every call's context on.

mod access;
mod blobs;
mod cluster;
mod flows;
mod kv;
mod models;
mod runs;
mod workers;

use std::sync::Arc;
use std::time::Duration;

use floe_raft::TlsMaterial;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::access::{AccessControl, AccessLayer};
use crate::api;
use crate::api::access_server::AccessServer;
use crate::api::blobs_server::BlobsServer;
use crate::api::cluster_server::ClusterServer;
use crate::api::flows_server::FlowsServer;
use crate::api::kv_server::KvServer;
use crate::api::models_server::ModelsServer;
use crate::api::runs_server::RunsServer;
use crate::api::workers_server::WorkersServer;
use crate::blobs::BlobService;
use crate::call_context::CallContextLayer;
use crate::cluster::ClusterHandle;
use crate::error::ApiError;
use crate::grpc_limits::{OversizeAnswerLayer, TransportLimits};
use crate::kv::KvService;
use crate::leader_hint::{LeaderHintLayer, LeaderLookup};
use crate::models::ModelService;
use crate::runs::RunService;
use crate::workers::WorkerHub;

pub use models::{tensor_from_wire, tensor_to_wire};

/// The handles the gRPC services call.
#[derive(Clone)]
pub struct GrpcServices {
    pub cluster: ClusterHandle,
    pub access: AccessControl,
    pub kv: KvService,
    pub runs: RunService,
    pub blobs: BlobService,
    pub models: ModelService,
    pub workers: WorkerHub,
    /// The cluster CA's fingerprint, shown in status.
    pub fingerprint: String,
    pub limits: TransportLimits,
}

/// A client that opens a connection and does not finish the TLS handshake
/// within this is disconnected, so idle sockets cannot pile up.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn serve(
    services: GrpcServices,
    api_addr: String,
    material: TlsMaterial,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let addr = api_addr.parse()?;
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(
            material.cert_pem(),
            material.key_pem(),
        ))
        .client_ca_root(tonic::transport::Certificate::from_pem(material.ca_pem()))
        // A client may come with an API token instead of a certificate; a
        // call with neither is refused by the access check.
        .client_auth_optional(true)
        .timeout(TLS_HANDSHAKE_TIMEOUT);
    // Each service decodes at least what floe's own checks accept, so those
    // checks answer; a larger request gets RESOURCE_EXHAUSTED naming the
    // setting (grpc_limits.rs).
    let limits = services.limits.clone();
    tonic::transport::Server::builder()
        .tls_config(tls)?
        .layer(CallContextLayer)
        .layer(AccessLayer::new(services.access.clone()))
        .layer(OversizeAnswerLayer::new(limits.clone()))
        .layer(LeaderHintLayer::new(leader_lookup(&services.cluster)))
        .add_service(
            ClusterServer::new(cluster::ClusterApi {
                cluster: services.cluster.clone(),
                fingerprint: services.fingerprint.clone(),
            })
            .max_decoding_message_size(limits.small),
        )
        .add_service(
            FlowsServer::new(flows::FlowsApi {
                runs: services.runs.clone(),
            })
            .max_decoding_message_size(limits.flows)
            .max_encoding_message_size(limits.flows),
        )
        .add_service(
            RunsServer::new(runs::RunsApi {
                runs: services.runs.clone(),
                shutdown: cancel.clone(),
            })
            .max_decoding_message_size(limits.runs)
            .max_encoding_message_size(limits.runs),
        )
        .add_service(
            WorkersServer::new(workers::WorkersApi {
                workers: services.workers.clone(),
            })
            .max_decoding_message_size(limits.workers)
            .max_encoding_message_size(limits.workers),
        )
        .add_service(
            BlobsServer::new(blobs::BlobsApi {
                blobs: services.blobs.clone(),
            })
            .max_decoding_message_size(limits.small)
            .max_encoding_message_size(limits.runs),
        )
        .add_service(
            ModelsServer::new(models::ModelsApi {
                models: services.models.clone(),
            })
            .max_decoding_message_size(limits.models)
            .max_encoding_message_size(limits.models),
        )
        .add_service(
            AccessServer::new(access::AccessApi {
                access: services.access.clone(),
            })
            .max_decoding_message_size(limits.small),
        )
        .add_service(
            KvServer::new(kv::KvApi { kv: services.kv })
                .max_decoding_message_size(limits.kv)
                .max_encoding_message_size(limits.kv),
        )
        .serve_with_shutdown(addr, cancel.cancelled_owned())
        .await
        .map_err(|err| anyhow::anyhow!("gRPC server on {addr}: {err}"))
}

/// The leader's API address, while this node knows a leader other than itself.
fn leader_lookup(cluster: &ClusterHandle) -> LeaderLookup {
    let cluster = cluster.clone();
    Arc::new(move || cluster.leader_api_addr())
}

pub(crate) fn linearizable(consistency: i32) -> Result<bool, Status> {
    match api::ReadConsistency::try_from(consistency) {
        Ok(api::ReadConsistency::Linearizable) => Ok(true),
        Ok(api::ReadConsistency::Local) => Ok(false),
        Err(_) => {
            Err(ApiError::InvalidArgument(format!("unknown read consistency {consistency}")).into())
        }
    }
}
