//! A gRPC client for the CLI, tests and benchmarks: TLS with a client
//! certificate and/or an API token, trying each given endpoint until one
//! connects, and
//! [`FloeClient::call`], which sends a call again on another node when the
//! failure shows that is safe (see `failover.rs`).

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Status;

use crate::failover::{jittered_pause, next_endpoint, NO_TIMEOUT_BUDGET};
pub use crate::failover::{Repeat, TRIES_PER_ENDPOINT};

use crate::proto::access_client::AccessClient;
use crate::proto::blobs_client::BlobsClient;
use crate::proto::cluster_client::ClusterClient;
use crate::proto::flows_client::FlowsClient;
use crate::proto::kv_client::KvClient;
use crate::proto::models_client::ModelsClient;
use crate::proto::runs_client::RunsClient;
use crate::proto::workers_client::WorkersClient;

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
    /// An API token, sent as `authorization: Bearer <token>` on every call;
    /// with one, the certificate may be left out (empty paths).
    pub token: Option<String>,
}

/// Adds the API token, if any, to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The channel every service client sends through.
pub type Transport = InterceptedService<Channel, Bearer>;

#[derive(Clone)]
pub struct FloeClient {
    pub kv: KvClient<Transport>,
    pub cluster: ClusterClient<Transport>,
    pub flows: FlowsClient<Transport>,
    pub runs: RunsClient<Transport>,
    pub workers: WorkersClient<Transport>,
    pub blobs: BlobsClient<Transport>,
    pub models: ModelsClient<Transport>,
    pub access: AccessClient<Transport>,
    /// The endpoint this client is bound to now.
    pub endpoint: String,
    options: Arc<ClientOptions>,
    tls: ClientTlsConfig,
}

/// Largest message a client accepts: a node's payload ceiling plus framing.
const CLIENT_MESSAGE_LIMIT: usize = crate::MAX_PAYLOAD_CEILING as usize + 1024 * 1024;

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|err| anyhow::anyhow!("{what} {}: {err}", path.display()))
}

impl FloeClient {
    /// Connects to the first of `options.endpoints` that answers.
    pub async fn connect(options: &ClientOptions) -> anyhow::Result<FloeClient> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&options.ca, "CA certificate")?))
            .domain_name(API_SERVER_NAME);
        if !options.cert.as_os_str().is_empty() {
            tls = tls.identity(Identity::from_pem(
                read(&options.cert, "client certificate")?,
                read(&options.key, "client key")?,
            ));
        }
        let options = Arc::new(options.clone());
        let mut failures = Vec::new();
        for endpoint in &options.endpoints {
            match open(&options, &tls, endpoint).await {
                Ok(client) => return Ok(client),
                Err(err) => failures.push(format!("{endpoint}: {}", error_chain(&err))),
            }
        }
        anyhow::bail!("could not connect to any endpoint: {}", failures.join("; "))
    }

    /// A client of the same options bound to `endpoint` (any `host:port`,
    /// listed or named by a node as the leader).
    pub async fn reconnect_to(&self, endpoint: &str) -> anyhow::Result<FloeClient> {
        open(&self.options, &self.tls, endpoint).await
    }

    /// Binds to the next listed endpoint after the current one that
    /// connects (the current one last), for a stream that was lost.
    pub async fn reconnect_elsewhere(&mut self) -> anyhow::Result<()> {
        let endpoints = &self.options.endpoints;
        let current = endpoints
            .iter()
            .position(|e| *e == self.endpoint)
            .unwrap_or(endpoints.len());
        let mut failures = Vec::new();
        for offset in 1..=endpoints.len() {
            let endpoint = &endpoints[(current + offset) % endpoints.len()];
            match self.reconnect_to(endpoint).await {
                Ok(client) => {
                    *self = client;
                    return Ok(());
                }
                Err(err) => failures.push(format!("{endpoint}: {}", error_chain(&err))),
            }
        }
        anyhow::bail!("could not connect to any endpoint: {}", failures.join("; "))
    }

    /// Sends a call built by `send`, and again on another node (the leader a
    /// refusal names first) while `repeat` allows it: each endpoint at most
    /// [`TRIES_PER_ENDPOINT`] times, all within the request timeout. The
    /// client stays bound to the node that answered.
    pub async fn call<T, F, Fut>(&mut self, repeat: Repeat, mut send: F) -> Result<T, Status>
    where
        F: FnMut(FloeClient) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let budget = if self.options.request_timeout.is_zero() {
            NO_TIMEOUT_BUDGET
        } else {
            self.options.request_timeout
        };
        let deadline = Instant::now() + budget;
        let mut tries: HashMap<String, u32> = HashMap::new();
        loop {
            *tries.entry(self.endpoint.clone()).or_default() += 1;
            let status = match send(self.clone()).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => status,
            };
            if !repeat.allows(&status) {
                return Err(status);
            }
            let hint = crate::headers::leader_of(&status);
            loop {
                let Some(next) = next_endpoint(
                    &self.options.endpoints,
                    &self.endpoint,
                    hint.as_deref(),
                    &tries,
                ) else {
                    return Err(status);
                };
                let pause = jittered_pause(&tries);
                if Instant::now() + pause >= deadline {
                    return Err(status);
                }
                tokio::time::sleep(pause).await;
                match self.reconnect_to(&next).await {
                    Ok(client) => {
                        *self = client;
                        break;
                    }
                    // Not connected: nothing was sent there, so any call may go on.
                    Err(_) => *tries.entry(next).or_default() += 1,
                }
            }
        }
    }
}

async fn open(
    options: &Arc<ClientOptions>,
    tls: &ClientTlsConfig,
    endpoint: &str,
) -> anyhow::Result<FloeClient> {
    let uri = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("https://{endpoint}")
    };
    let mut transport = Endpoint::from_shared(uri)?
        .tls_config(tls.clone())?
        .connect_timeout(options.connect_timeout)
        .tcp_nodelay(true);
    if !options.request_timeout.is_zero() {
        transport = transport.timeout(options.request_timeout);
    }
    let channel = transport.connect().await?;
    let bearer = match &options.token {
        Some(token) => Bearer(Some(format!("Bearer {token}").parse().map_err(|_| {
            anyhow::anyhow!("the API token holds characters a header cannot carry")
        })?)),
        None => Bearer(None),
    };
    let channel = InterceptedService::new(channel, bearer);
    Ok(FloeClient {
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
        access: AccessClient::new(channel.clone()),
        models: ModelsClient::new(channel)
            .max_decoding_message_size(CLIENT_MESSAGE_LIMIT)
            .max_encoding_message_size(CLIENT_MESSAGE_LIMIT),
        endpoint: endpoint.to_string(),
        options: options.clone(),
        tls: tls.clone(),
    })
}

/// Joins an error and its causes, so TLS and connect failures show their root.
pub fn error_chain(err: &anyhow::Error) -> String {
    err.chain()
        .map(|cause| cause.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}
