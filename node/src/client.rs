//! A gRPC client for the CLI, tests and benchmarks: TLS with a client
//! certificate, trying each given endpoint until one connects.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::api::blobs_client::BlobsClient;
use crate::api::cluster_client::ClusterClient;
use crate::api::flows_client::FlowsClient;
use crate::api::runs_client::RunsClient;
use crate::api::workers_client::WorkersClient;
use crate::api::kv_client::KvClient;
use crate::api::models_client::ModelsClient;

/// The DNS name every node certificate carries for its API.
pub const API_SERVER_NAME: &str = "api.floe";

#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// `host:port` of one or more nodes; the first that connects is used.
    pub endpoints: Vec<String>,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub connect_timeout: Duration,
    /// Zero: no deadline (long-lived streams).
    pub request_timeout: Duration,
}

#[derive(Clone)]
pub struct FloeClient {
    pub kv: KvClient<Channel>,
    pub cluster: ClusterClient<Channel>,
    pub flows: FlowsClient<Channel>,
    pub runs: RunsClient<Channel>,
    pub workers: WorkersClient<Channel>,
    pub blobs: BlobsClient<Channel>,
    pub models: ModelsClient<Channel>,
    pub endpoint: String,
}

/// Largest message a client accepts: a node's payload ceiling plus framing.
const CLIENT_MESSAGE_LIMIT: usize = crate::config::MAX_PAYLOAD_CEILING as usize + 1024 * 1024;

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|err| anyhow::anyhow!("{what} {}: {err}", path.display()))
}

impl FloeClient {
    pub async fn connect(options: &ClientOptions) -> anyhow::Result<FloeClient> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&options.ca, "CA certificate")?))
            .identity(Identity::from_pem(read(&options.cert, "client certificate")?, read(&options.key, "client key")?))
            .domain_name(API_SERVER_NAME);
        let mut failures = Vec::new();
        for endpoint in &options.endpoints {
            let uri = if endpoint.contains("://") { endpoint.clone() } else { format!("https://{endpoint}") };
            let attempt = async {
                let mut endpoint = Endpoint::from_shared(uri.clone())?
                    .tls_config(tls.clone())?
                    .connect_timeout(options.connect_timeout)
                    .tcp_nodelay(true);
                if !options.request_timeout.is_zero() {
                    endpoint = endpoint.timeout(options.request_timeout);
                }
                let channel = endpoint.connect().await?;
                anyhow::Ok(channel)
            };
            match attempt.await {
                Ok(channel) => {
                    return Ok(FloeClient {
                        kv: KvClient::new(channel.clone()),
                        cluster: ClusterClient::new(channel.clone()),
                        flows: FlowsClient::new(channel.clone()),
                        runs: RunsClient::new(channel.clone())
                            .max_decoding_message_size(CLIENT_MESSAGE_LIMIT)
                            .max_encoding_message_size(CLIENT_MESSAGE_LIMIT),
                        workers: WorkersClient::new(channel.clone())
                            .max_decoding_message_size(CLIENT_MESSAGE_LIMIT)
                            .max_encoding_message_size(CLIENT_MESSAGE_LIMIT),
                        blobs: BlobsClient::new(channel.clone()).max_decoding_message_size(CLIENT_MESSAGE_LIMIT),
                        models: ModelsClient::new(channel)
                            .max_decoding_message_size(CLIENT_MESSAGE_LIMIT)
                            .max_encoding_message_size(CLIENT_MESSAGE_LIMIT),
                        endpoint: endpoint.clone(),
                    })
                }
                Err(err) => failures.push(format!("{endpoint}: {}", error_chain(&err))),
            }
        }
        anyhow::bail!("could not connect to any endpoint: {}", failures.join("; "))
    }
}

/// Joins an error and its causes, so TLS and connect failures show their root.
pub fn error_chain(err: &anyhow::Error) -> String {
    err.chain().map(|cause| cause.to_string()).collect::<Vec<_>>().join(": ")
}
