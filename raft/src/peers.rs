//! Outgoing connections to peers: one reused QUIC connection per node id.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quinn::{Connection, Endpoint};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::tls::{node_dns_name, PeerIdentity, TlsError, TlsMaterial, RAFT_ALPN};
use crate::wire::{
    encode_request, read_frame, AppRequest, FrameError, GroupId, RemoteError, RequestBody,
    RequestFrame, ResponseBody, ResponseFrame, DEFAULT_GROUP,
};
use crate::{NodeId, RaftTypes};

/// Transport settings shared by the client ([`Peers`]) and the server side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportOptions {
    /// QUIC keep-alive interval in milliseconds. Default 1000: keeps idle
    /// connections warm and lets a dead peer be detected quickly.
    pub keep_alive_ms: u64,
    /// A connection with no traffic for this long (ms) is dead. Default 5000.
    pub idle_timeout_ms: u64,
    /// First delay (ms) before redialing a peer that could not be reached. Default 50.
    pub backoff_initial_ms: u64,
    /// Largest delay (ms) between redials. Default 1000, so a restarted peer
    /// is back within about a second.
    pub backoff_max_ms: u64,
    /// Local address outgoing connections are sent from. Default `0.0.0.0:0`.
    pub client_bind_addr: SocketAddr,
    /// The server drops a peer whose handshake has not completed this long
    /// (ms) after its first packet. Default 10000. The idle timeout alone
    /// would let a peer that keeps sending hold a half-open handshake.
    pub handshake_timeout_ms: u64,
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            keep_alive_ms: 1000,
            idle_timeout_ms: 5000,
            backoff_initial_ms: 50,
            backoff_max_ms: 1000,
            client_bind_addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            handshake_timeout_ms: 10_000,
        }
    }
}

impl TransportOptions {
    /// The QUIC transport parameters these options describe.
    pub fn transport_config(&self) -> Result<quinn::TransportConfig, TransportError> {
        let idle = quinn::IdleTimeout::try_from(Duration::from_millis(self.idle_timeout_ms))
            .map_err(|error| TransportError::Setup(format!("idle_timeout_ms: {error}")))?;
        let mut config = quinn::TransportConfig::default();
        config.keep_alive_interval(Some(Duration::from_millis(self.keep_alive_ms)));
        config.max_idle_timeout(Some(idle));
        Ok(config)
    }

    fn backoff(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(16);
        let delay = self.backoff_initial_ms.saturating_mul(1u64 << exponent);
        Duration::from_millis(delay.min(self.backoff_max_ms))
    }
}

/// Errors of outgoing calls; one per way a caller may want to react.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// No connection could be made (address, network, TLS refusal, backoff).
    #[error("node {target} at {addr}: unreachable: {reason}")]
    Unreachable {
        target: NodeId,
        addr: String,
        reason: String,
    },
    /// The peer did not answer in time.
    #[error("node {target}: no response within {after:?}")]
    Timeout { target: NodeId, after: Duration },
    /// The connection broke during the call.
    #[error("node {target}: connection lost: {source}")]
    Connection {
        target: NodeId,
        source: quinn::ConnectionError,
    },
    /// A frame could not be sent or read.
    #[error("node {target}: {source}")]
    Stream { target: NodeId, source: FrameError },
    /// The peer answered with an error (refusal, Raft error, handler error).
    #[error("node {target}: {source}")]
    Remote { target: NodeId, source: RemoteError },
    /// The peer answered a different kind of request.
    #[error("node {target}: {got} response to a {expected} request")]
    UnexpectedResponse {
        target: NodeId,
        expected: &'static str,
        got: &'static str,
    },
    /// The TLS material could not be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The endpoint could not be set up.
    #[error("transport setup: {0}")]
    Setup(String),
}

/// A cheap, clonable handle to outgoing peer connections.
#[derive(Clone)]
pub struct Peers {
    inner: Arc<PeersInner>,
}

struct PeersInner {
    endpoint: Endpoint,
    client_config: quinn::ClientConfig,
    identity: PeerIdentity,
    fingerprint: String,
    options: TransportOptions,
    slots: Mutex<HashMap<NodeId, Arc<tokio::sync::Mutex<PeerSlot>>>>,
}

/// One peer's connection state; the async mutex serializes dials so that
/// concurrent RPCs share one handshake instead of racing several.
#[derive(Default)]
struct PeerSlot {
    addr: String,
    connection: Option<Connection>,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: String,
}

impl Peers {
    /// Creates the client endpoint; our identity is the one in our certificate.
    pub fn new(tls: &TlsMaterial, options: TransportOptions) -> Result<Peers, TransportError> {
        let identity = tls.identity()?;
        Peers::build(tls, identity, tls.ca_fingerprint().to_string(), options)
    }

    /// Like [`Peers::new`] but with a claimed identity and fingerprint, so
    /// tests can impersonate a misbehaving peer.
    pub(crate) fn build(
        tls: &TlsMaterial,
        identity: PeerIdentity,
        fingerprint: String,
        options: TransportOptions,
    ) -> Result<Peers, TransportError> {
        let crypto = tls.client_config(&[RAFT_ALPN])?;
        let quic_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
            .map_err(|error| TransportError::Setup(format!("quic client tls: {error}")))?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(quic_crypto));
        client_config.transport_config(Arc::new(options.transport_config()?));
        let endpoint = Endpoint::client(options.client_bind_addr).map_err(|error| {
            TransportError::Setup(format!("bind {}: {error}", options.client_bind_addr))
        })?;
        Ok(Peers {
            inner: Arc::new(PeersInner {
                endpoint,
                client_config,
                identity,
                fingerprint,
                options,
                slots: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Sends an opaque request to node `target`'s [`crate::AppHandler`].
    /// Such requests are the node's, not a Raft group's: they travel as
    /// group 0 frames, which every release reads.
    pub async fn call_app(
        &self,
        target: NodeId,
        addr: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        let request = self.request_frame(DEFAULT_GROUP, AppRequest(payload));
        let frame =
            encode_request(&request).map_err(|source| TransportError::Stream { target, source })?;
        match self.exchange(target, addr, frame, timeout).await? {
            ResponseBody::App(reply) => Ok(reply),
            other => Err(TransportError::UnexpectedResponse {
                target,
                expected: "app",
                got: other.kind(),
            }),
        }
    }

    /// Smoothed round-trip time of every open peer connection.
    pub fn rtts(&self) -> Vec<(NodeId, Duration)> {
        let slots = self.slots_snapshot();
        let mut rtts = Vec::with_capacity(slots.len());
        for (node_id, slot) in slots {
            // A slot busy dialing has no connection worth reporting.
            let Ok(slot) = slot.try_lock() else { continue };
            if let Some(connection) = slot
                .connection
                .as_ref()
                .filter(|c| c.close_reason().is_none())
            {
                rtts.push((node_id, connection.rtt()));
            }
        }
        rtts.sort_by_key(|(node_id, _)| *node_id);
        rtts
    }

    /// Forgets past dial failures to `target`, so the next call dials at
    /// once: the peer has just shown it is up.
    pub async fn forget_failures(&self, target: NodeId) {
        let slot = self.slot(target);
        let mut slot = slot.lock().await;
        slot.failures = 0;
        slot.retry_at = None;
    }

    /// Closes every connection and the endpoint.
    pub fn close(&self) {
        self.inner.endpoint.close(0u32.into(), b"shutdown");
    }

    /// One request/response exchange with Raft group `group` on node
    /// `target`, on a fresh stream within `timeout`.
    pub(crate) async fn call<C: RaftTypes>(
        &self,
        target: NodeId,
        addr: &str,
        group: GroupId,
        body: RequestBody<C>,
        timeout: Duration,
    ) -> Result<ResponseBody, TransportError> {
        let request = self.request_frame(group, body);
        let frame =
            encode_request(&request).map_err(|source| TransportError::Stream { target, source })?;
        self.exchange(target, addr, frame, timeout).await
    }

    /// Sends one encoded request frame on a fresh stream and reads the
    /// response, within `timeout`.
    async fn exchange(
        &self,
        target: NodeId,
        addr: &str,
        frame: Vec<u8>,
        timeout: Duration,
    ) -> Result<ResponseBody, TransportError> {
        use tokio::io::AsyncWriteExt;
        let started = Instant::now();
        let connection = self.connection(target, addr, timeout).await?;
        let remaining = timeout.saturating_sub(started.elapsed());
        let exchange = async {
            let (mut send, mut recv) = connection
                .open_bi()
                .await
                .map_err(|source| TransportError::Connection { target, source })?;
            let stream_error = |source| TransportError::Stream { target, source };
            // Through tokio's trait, as frames are written everywhere else.
            AsyncWriteExt::write_all(&mut send, &frame)
                .await
                .map_err(|error| stream_error(FrameError::Io(error)))?;
            // Finishing only fails if the stream was already reset; the read below reports why.
            let _ = send.finish();
            let response: ResponseFrame = read_frame(&mut recv).await.map_err(stream_error)?;
            response.map_err(|source| TransportError::Remote { target, source })
        };
        tokio::time::timeout(remaining, exchange)
            .await
            .map_err(|_| TransportError::Timeout {
                target,
                after: timeout,
            })?
    }

    /// Wraps a request body for `group` with our identity and cluster fingerprint.
    pub(crate) fn request_frame<B>(&self, group: GroupId, body: B) -> RequestFrame<B> {
        RequestFrame {
            group,
            from: self.inner.identity.clone(),
            cluster: self.inner.fingerprint.clone(),
            body,
        }
    }

    /// The live connection to `target`, dialing (with backoff) if needed.
    /// Everything that fails here, timeouts included, counts as unreachable.
    pub(crate) async fn connection(
        &self,
        target: NodeId,
        addr: &str,
        timeout: Duration,
    ) -> Result<Connection, TransportError> {
        let slot = self.slot(target);
        let dial = async {
            let mut slot = slot.lock().await;
            self.connect_locked(target, addr, &mut slot).await
        };
        match tokio::time::timeout(timeout, dial).await {
            Ok(result) => result,
            Err(_) => {
                let reason = format!("no connection within {timeout:?}");
                // A silent (black-holed) peer must back off like a refusing one.
                // If another call holds the slot, it is dialing and will record its outcome.
                if let Ok(mut slot) = slot.try_lock() {
                    if slot.connection.is_none() && slot.addr == addr {
                        self.record_failure(target, addr, &mut slot, reason.clone());
                    }
                }
                Err(TransportError::Unreachable {
                    target,
                    addr: addr.to_string(),
                    reason,
                })
            }
        }
    }

    async fn connect_locked(
        &self,
        target: NodeId,
        addr: &str,
        slot: &mut PeerSlot,
    ) -> Result<Connection, TransportError> {
        if slot.addr != addr {
            // Membership moved the node: forget the old connection and backoff.
            *slot = PeerSlot {
                addr: addr.to_string(),
                ..PeerSlot::default()
            };
        }
        if let Some(connection) = &slot.connection {
            if connection.close_reason().is_none() {
                return Ok(connection.clone());
            }
            debug!(target, addr, "peer connection gone, redialing");
            slot.connection = None;
        }
        if let Some(retry_at) = slot.retry_at {
            if Instant::now() < retry_at {
                return Err(TransportError::Unreachable {
                    target,
                    addr: addr.to_string(),
                    reason: format!(
                        "backing off after {} failed dials; last error: {}",
                        slot.failures, slot.last_error
                    ),
                });
            }
        }
        match self.dial(target, addr).await {
            Ok(connection) => {
                slot.connection = Some(connection.clone());
                slot.failures = 0;
                slot.retry_at = None;
                Ok(connection)
            }
            Err(reason) => {
                self.record_failure(target, addr, slot, reason.clone());
                Err(TransportError::Unreachable {
                    target,
                    addr: addr.to_string(),
                    reason,
                })
            }
        }
    }

    /// Schedules the next dial after a failure; warns once per outage.
    fn record_failure(&self, target: NodeId, addr: &str, slot: &mut PeerSlot, reason: String) {
        slot.failures += 1;
        slot.retry_at = Some(Instant::now() + self.inner.options.backoff(slot.failures));
        if slot.failures == 1 {
            warn!(target, addr, reason = %reason, "cannot connect to peer");
        } else {
            debug!(target, addr, failures = slot.failures, reason = %reason, "cannot connect to peer");
        }
        slot.last_error = reason;
    }

    /// Dials `addr`, requiring its certificate to name node `target`.
    async fn dial(&self, target: NodeId, addr: &str) -> Result<Connection, String> {
        let socket_addr = tokio::net::lookup_host(addr)
            .await
            .map_err(|error| format!("cannot resolve address: {error}"))?
            .next()
            .ok_or_else(|| "address resolves to nothing".to_string())?;
        let server_name = node_dns_name(target);
        let connecting = self
            .inner
            .endpoint
            .connect_with(self.inner.client_config.clone(), socket_addr, &server_name)
            .map_err(|error| format!("cannot start connection: {error}"))?;
        connecting
            .await
            .map_err(|error| format!("handshake as {server_name} failed: {error}"))
    }

    fn slot(&self, target: NodeId) -> Arc<tokio::sync::Mutex<PeerSlot>> {
        let mut slots = match self.inner.slots.lock() {
            Ok(slots) => slots,
            // The map holds no invariant a panicking holder could break.
            Err(poisoned) => poisoned.into_inner(),
        };
        slots.entry(target).or_default().clone()
    }

    fn slots_snapshot(&self) -> Vec<(NodeId, Arc<tokio::sync::Mutex<PeerSlot>>)> {
        let slots = match self.inner.slots.lock() {
            Ok(slots) => slots,
            Err(poisoned) => poisoned.into_inner(),
        };
        slots
            .iter()
            .map(|(node_id, slot)| (*node_id, slot.clone()))
            .collect()
    }
}
