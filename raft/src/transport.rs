//! The seam between the node layer and the network for application requests
//! (forwarded writes, read index, probes, blobs, inference): the node holds a
//! `dyn PeerTransport`, so a simulated cluster can swap QUIC ([`Peers`]) for
//! an in-process network. Raft RPCs go through openraft's network traits.

use std::time::Duration;

use futures::future::BoxFuture;

use crate::peers::{Peers, TransportError};
use crate::NodeId;

/// Sends application requests to other nodes and answers what the node layer
/// reports about its links. Object safe: futures are boxed.
pub trait PeerTransport: Send + Sync + 'static {
    /// Sends an opaque request to node `target` at `addr` and returns its
    /// answer, within `timeout`. Only [`TransportError::Unreachable`] means
    /// the request provably never reached the peer.
    fn call_app<'a>(
        &'a self,
        target: NodeId,
        addr: &'a str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<u8>, TransportError>>;

    /// Round-trip time to each peer with an open link, by node id.
    fn rtts(&self) -> Vec<(NodeId, Duration)>;
}

impl PeerTransport for Peers {
    fn call_app<'a>(
        &'a self,
        target: NodeId,
        addr: &'a str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<u8>, TransportError>> {
        Box::pin(Peers::call_app(self, target, addr, payload, timeout))
    }

    fn rtts(&self) -> Vec<(NodeId, Duration)> {
        Peers::rtts(self)
    }
}
