//! The QUIC server: accepts peers, checks who they are, dispatches requests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use floe_state::Snapshot;
use floe_storage::snapshot::SnapshotFile;
use floe_storage::{NodeId, SnapshotMeta, Vote};
use futures::future::BoxFuture;
use openraft::error::{Fatal, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use quinn::{Endpoint, RecvStream, SendStream};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::election::{Elections, PreVoteRequest, PreVoteResponse};
use crate::peers::TransportOptions;
use crate::tls::{peer_identity, PeerIdentity, TlsError, TlsMaterial, RAFT_ALPN};
use crate::wire::{
    read_frame, receive_snapshot_body, write_frame, RemoteError, RequestBody, RequestFrame,
    ResponseBody, ResponseFrame,
};

/// How long a peer may take to send a request header after opening a stream.
const REQUEST_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// QUIC application close code for connections without a floe identity.
const CLOSE_NO_IDENTITY: u32 = 1;

/// Handles the node layer's opaque requests (forwarded writes, reads, status).
pub trait AppHandler: Send + Sync + 'static {
    /// Answers one request from a verified peer.
    fn handle(
        &self,
        from: PeerIdentity,
        request: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, String>>;
}

/// Where the server listens and keeps incoming snapshots.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaftServerOptions {
    /// This node's id; must match the id in its certificate.
    pub node_id: NodeId,
    /// UDP address to listen on.
    pub bind_addr: SocketAddr,
    /// Directory incoming snapshots are written to before install.
    pub snapshot_dir: PathBuf,
    /// QUIC keep-alive and idle timeouts.
    #[serde(default)]
    pub transport: TransportOptions,
    /// Whether Raft requests are served now; every one is by default.
    #[serde(skip)]
    pub admission: RaftAdmission,
}

/// Decides, per request, whether this node serves Raft requests (vote,
/// append-entries, snapshot) now. The node layer sets it, e.g. to refuse
/// them while its disk cannot take writes: a refused peer backs off, as
/// from an unreachable node, and the local Raft core never sees the request.
#[derive(Clone, Default)]
pub struct RaftAdmission {
    refusal: Option<Arc<dyn Fn() -> Option<String> + Send + Sync>>,
}

impl RaftAdmission {
    /// `refusal` answers `Some(reason)` while requests must be refused.
    pub fn new(refusal: impl Fn() -> Option<String> + Send + Sync + 'static) -> Self {
        RaftAdmission {
            refusal: Some(Arc::new(refusal)),
        }
    }

    /// Why a Raft request must be refused now, if it must.
    pub fn refusal(&self) -> Option<String> {
        self.refusal.as_ref().and_then(|refusal| refusal())
    }
}

impl std::fmt::Debug for RaftAdmission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.refusal.is_some() {
            "conditional"
        } else {
            "always"
        };
        f.debug_tuple("RaftAdmission").field(&kind).finish()
    }
}

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Our certificate does not name the configured node id.
    #[error("certificate identity is {found}, but this node is configured as node {expected}")]
    IdentityMismatch {
        expected: NodeId,
        found: PeerIdentity,
    },
    /// The TLS material is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The endpoint could not be created.
    #[error("raft server on {addr}: {reason}")]
    Setup { addr: SocketAddr, reason: String },
}

/// The Raft calls the server dispatches to; a trait so tests can stand in.
pub(crate) trait RaftRpcHandler: Send + Sync + 'static {
    fn vote(
        &self,
        rpc: VoteRequest<NodeId>,
    ) -> BoxFuture<'static, Result<VoteResponse<NodeId>, RaftError<NodeId>>>;
    fn append_entries(
        &self,
        rpc: AppendEntriesRequest<floe_state::TypeConfig>,
    ) -> BoxFuture<'static, Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>>;
    fn install_full_snapshot(
        &self,
        vote: Vote,
        snapshot: Snapshot,
    ) -> BoxFuture<'static, Result<SnapshotResponse<NodeId>, Fatal<NodeId>>>;
    fn pre_vote(&self, from: NodeId, rpc: PreVoteRequest) -> BoxFuture<'static, PreVoteResponse>;
}

impl RaftRpcHandler for Elections {
    fn vote(
        &self,
        rpc: VoteRequest<NodeId>,
    ) -> BoxFuture<'static, Result<VoteResponse<NodeId>, RaftError<NodeId>>> {
        let raft = self.raft().clone();
        Box::pin(async move { raft.vote(rpc).await })
    }

    fn append_entries(
        &self,
        rpc: AppendEntriesRequest<floe_state::TypeConfig>,
    ) -> BoxFuture<'static, Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>> {
        let raft = self.raft().clone();
        Box::pin(async move { raft.append_entries(rpc).await })
    }

    fn install_full_snapshot(
        &self,
        vote: Vote,
        snapshot: Snapshot,
    ) -> BoxFuture<'static, Result<SnapshotResponse<NodeId>, Fatal<NodeId>>> {
        let raft = self.raft().clone();
        Box::pin(async move { raft.install_full_snapshot(vote, snapshot).await })
    }

    fn pre_vote(&self, from: NodeId, rpc: PreVoteRequest) -> BoxFuture<'static, PreVoteResponse> {
        let elections = self.clone();
        Box::pin(async move { elections.answer_pre_vote(from, &rpc).await })
    }
}

/// Handle to the running server; dropping it does not stop the server,
/// cancelling the token given to [`RaftServer::start`] does.
pub struct RaftServer {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

struct ServerState {
    fingerprint: String,
    snapshot_dir: PathBuf,
    raft: Arc<dyn RaftRpcHandler>,
    app: Arc<dyn AppHandler>,
    admission: RaftAdmission,
    handshake_timeout: Duration,
}

impl RaftServer {
    /// Binds the QUIC endpoint and starts accepting peers until `shutdown`.
    /// Must be called inside a tokio runtime.
    pub fn start(
        options: RaftServerOptions,
        tls: &TlsMaterial,
        elections: Elections,
        app: Arc<dyn AppHandler>,
        shutdown: CancellationToken,
    ) -> Result<RaftServer, ServerError> {
        RaftServer::start_with(options, tls, Arc::new(elections), app, shutdown)
    }

    pub(crate) fn start_with(
        options: RaftServerOptions,
        tls: &TlsMaterial,
        raft: Arc<dyn RaftRpcHandler>,
        app: Arc<dyn AppHandler>,
        shutdown: CancellationToken,
    ) -> Result<RaftServer, ServerError> {
        let identity = tls.identity()?;
        if identity != PeerIdentity::Node(options.node_id) {
            return Err(ServerError::IdentityMismatch {
                expected: options.node_id,
                found: identity,
            });
        }
        let addr = options.bind_addr;
        let setup_error = |reason: String| ServerError::Setup { addr, reason };
        let crypto =
            quinn::crypto::rustls::QuicServerConfig::try_from(tls.server_config(&[RAFT_ALPN])?)
                .map_err(|error| setup_error(format!("quic server tls: {error}")))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let transport = options
            .transport
            .transport_config()
            .map_err(|error| setup_error(error.to_string()))?;
        server_config.transport_config(Arc::new(transport));
        let socket = std::net::UdpSocket::bind(addr)
            .map_err(|error| setup_error(format!("bind: {error}")))?;
        let runtime =
            quinn::default_runtime().ok_or_else(|| setup_error("no async runtime".into()))?;
        let endpoint = Endpoint::new(
            stable_endpoint_config(tls),
            Some(server_config),
            socket,
            runtime,
        )
        .map_err(|error| setup_error(format!("bind: {error}")))?;
        let local_addr = endpoint
            .local_addr()
            .map_err(|error| setup_error(error.to_string()))?;

        let state = Arc::new(ServerState {
            fingerprint: tls.ca_fingerprint().to_string(),
            snapshot_dir: options.snapshot_dir,
            raft,
            app,
            admission: options.admission,
            handshake_timeout: Duration::from_millis(options.transport.handshake_timeout_ms),
        });
        info!(node_id = options.node_id, addr = %local_addr, "raft server listening");
        let task = tokio::spawn(accept_loop(endpoint, state, shutdown));
        Ok(RaftServer { local_addr, task })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Waits until the server has stopped (after its token was cancelled).
    pub async fn stopped(self) {
        if let Err(error) = self.task.await {
            warn!(error = %error, "raft server task failed");
        }
    }
}

async fn accept_loop(endpoint: Endpoint, state: Arc<ServerState>, shutdown: CancellationToken) {
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            incoming = endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else { break };
        tokio::spawn(serve_connection(incoming, state.clone(), shutdown.clone()));
    }
    // Tell peers now rather than letting them wait for the idle timeout.
    endpoint.close(0u32.into(), b"shutdown");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    info!("raft server stopped");
}

async fn serve_connection(
    incoming: quinn::Incoming,
    state: Arc<ServerState>,
    shutdown: CancellationToken,
) {
    let peer_addr = incoming.remote_address();
    // The idle timeout alone would let a peer that keeps sending packets
    // hold a half-open handshake for ever; dropping the attempt closes it.
    // A handshake that goes silent ends sooner, at the idle timeout.
    let handshake_timeout = state.handshake_timeout;
    let connection = match tokio::time::timeout(handshake_timeout, incoming).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => {
            warn!(peer = %peer_addr, error = %error, "peer handshake refused");
            return;
        }
        Err(_) => {
            warn!(peer = %peer_addr, timeout_ms = handshake_timeout.as_millis() as u64, "peer handshake did not complete in time");
            return;
        }
    };
    let identity = match peer_identity(&connection) {
        Ok(identity) => identity,
        Err(error) => {
            warn!(peer = %peer_addr, error = %error, "peer connection refused");
            connection.close(
                CLOSE_NO_IDENTITY.into(),
                b"certificate carries no floe identity",
            );
            return;
        }
    };
    debug!(peer = %peer_addr, identity = %identity, "peer connected");
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            stream = connection.accept_bi() => stream,
        };
        let Ok((send, recv)) = stream else { break };
        let stream_context = StreamContext {
            peer_addr,
            identity: identity.clone(),
            state: state.clone(),
        };
        tokio::spawn(stream_context.serve(send, recv));
    }
}

struct StreamContext {
    peer_addr: SocketAddr,
    identity: PeerIdentity,
    state: Arc<ServerState>,
}

impl StreamContext {
    async fn serve(self, mut send: SendStream, mut recv: RecvStream) {
        let header = tokio::time::timeout(
            REQUEST_HEADER_TIMEOUT,
            read_frame::<_, RequestFrame>(&mut recv),
        )
        .await;
        let request = match header {
            Ok(Ok(request)) => request,
            Ok(Err(error)) => {
                warn!(peer = %self.peer_addr, identity = %self.identity, error = %error, "unreadable peer request");
                let _ = send.reset(1u32.into());
                return;
            }
            Err(_) => {
                warn!(peer = %self.peer_addr, identity = %self.identity, "peer request header timed out");
                let _ = send.reset(1u32.into());
                return;
            }
        };

        let admission_refusal = match request.body.is_raft() {
            true => self.state.admission.refusal(),
            false => None,
        };
        let response = match (self.refusal(&request), admission_refusal) {
            (Some(reason), _) => {
                warn!(
                    peer = %self.peer_addr,
                    claimed = %request.from,
                    identity = %self.identity,
                    kind = request.body.kind(),
                    reason = %reason,
                    "peer request refused"
                );
                Err(RemoteError::Refused(reason))
            }
            // Expected while it lasts, with peers retrying every few hundred
            // ms: no warning each time.
            (None, Some(reason)) => {
                debug!(peer = %self.peer_addr, kind = request.body.kind(), reason = %reason, "raft request not admitted");
                Err(RemoteError::Refused(reason))
            }
            (None, None) => self.dispatch(request.body, &mut recv).await,
        };
        if let Err(error) = write_frame(&mut send, &response).await {
            debug!(peer = %self.peer_addr, error = %error, "cannot send response");
            return;
        }
        let _ = send.finish();
    }

    /// Why a request must not be served, if it must not.
    fn refusal(&self, request: &RequestFrame) -> Option<String> {
        if request.cluster != self.state.fingerprint {
            return Some(format!(
                "cluster CA fingerprint {} differs from ours {}",
                request.cluster, self.state.fingerprint
            ));
        }
        if request.from != self.identity {
            return Some(format!(
                "request claims to come from {} but the certificate is {}",
                request.from, self.identity
            ));
        }
        if request.body.is_raft() && !matches!(self.identity, PeerIdentity::Node(_)) {
            return Some(format!(
                "{} may not send raft {} requests",
                self.identity,
                request.body.kind()
            ));
        }
        None
    }

    async fn dispatch(&self, body: RequestBody, recv: &mut RecvStream) -> ResponseFrame {
        let raft = &self.state.raft;
        match body {
            RequestBody::Vote(rpc) => raft
                .vote(rpc)
                .await
                .map(ResponseBody::Vote)
                .map_err(|e| RemoteError::Raft(Box::new(e))),
            RequestBody::AppendEntries(rpc) => raft
                .append_entries(rpc)
                .await
                .map(ResponseBody::AppendEntries)
                .map_err(|error| RemoteError::Raft(Box::new(error))),
            RequestBody::Snapshot {
                vote,
                meta,
                total_len,
            } => self.receive_snapshot(vote, meta, total_len, recv).await,
            RequestBody::PreVote(rpc) => match &self.identity {
                PeerIdentity::Node(from) => {
                    Ok(ResponseBody::PreVote(raft.pre_vote(*from, rpc).await))
                }
                // `refusal` lets only nodes send Raft requests.
                other => Err(RemoteError::Refused(format!(
                    "{other} may not ask for pre-votes"
                ))),
            },
            RequestBody::App(payload) => self
                .state
                .app
                .handle(self.identity.clone(), payload)
                .await
                .map(ResponseBody::App)
                .map_err(RemoteError::App),
        }
    }

    async fn receive_snapshot(
        &self,
        vote: Vote,
        meta: SnapshotMeta,
        total_len: u64,
        recv: &mut RecvStream,
    ) -> ResponseFrame {
        let snapshot_id = meta.snapshot_id.clone();
        let failed = |what: &str, error: &dyn std::fmt::Display| {
            warn!(peer = %self.peer_addr, snapshot_id = %snapshot_id, error = %error, "{what}");
            RemoteError::Failed(format!("snapshot {snapshot_id}: {what}: {error}"))
        };
        let mut file = SnapshotFile::create_incoming(&self.state.snapshot_dir)
            .await
            .map_err(|error| failed("cannot create incoming snapshot file", &error))?;
        let received = async {
            receive_snapshot_body(recv, &mut file, total_len)
                .await
                .map_err(|error| failed("snapshot transfer failed", &error))?;
            file.finish_receiving()
                .await
                .map_err(|error| failed("cannot sync snapshot file", &error))
        };
        if let Err(error) = received.await {
            // A partial file must never be mistaken for a snapshot.
            let _ = tokio::fs::remove_file(file.path()).await;
            return Err(error);
        }
        info!(peer = %self.peer_addr, snapshot_id = %snapshot_id, bytes = total_len, "snapshot received");
        let snapshot = Snapshot {
            meta,
            snapshot: Box::new(file),
        };
        self.state
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map(ResponseBody::Snapshot)
            .map_err(|error| RemoteError::Fatal(Box::new(error)))
    }
}

/// An endpoint config whose stateless-reset key survives restarts.
///
/// After a crash, peers still hold connections to our old process. With the
/// same reset key, the restarted endpoint answers their packets with a valid
/// stateless reset and they reconnect at once, instead of timing out for the
/// idle timeout while this node, hearing no leader, starts needless elections.
/// Both keys are derived from the node's private key, so they stay secret.
fn stable_endpoint_config(tls: &TlsMaterial) -> quinn::EndpointConfig {
    use sha2::{Digest, Sha256};
    let secret = Sha256::new()
        .chain_update(b"floe quic stateless reset v1")
        .chain_update(tls.key_pem())
        .finalize();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
    let mut config = quinn::EndpointConfig::new(Arc::new(key));
    // The restarted endpoint only answers packets whose connection ids it
    // recognises as its own, so the id generator's key must be stable too.
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&secret[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    config
}
