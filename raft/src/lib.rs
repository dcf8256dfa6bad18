//! floe-raft: the node-to-node transport of a floe cluster.
//!
//! - [`certs`]: an offline cluster CA and node/client certificates (PEM).
//! - [`tls`]: loading that material, rustls configs (for QUIC and tonic) and
//!   reading a peer's identity from its certificate.
//! - [`wire`]: the frame format spoken on QUIC streams; request frames name
//!   the Raft group they are for.
//! - [`peers`]: outgoing connections, one per peer, with backoff.
//! - [`transport`]: [`PeerTransport`], the node layer's view of [`Peers`]
//!   for application requests, so a simulated network can stand in.
//! - [`group`]: one Raft group's side of the transport ([`GroupTransport`]):
//!   its id, how to find a member's address, how to stream its snapshots.
//! - [`network`]: openraft's `RaftNetworkFactory`/`RaftNetwork` over [`Peers`].
//! - [`election`]: pre-vote rounds and the decision to campaign (openraft's
//!   own election timer is off).
//! - [`server`]: the QUIC server that checks identities and dispatches to a
//!   Raft group or to the node layer's [`AppHandler`].
//!
//! The transport is generic over openraft's type configuration ([`RaftTypes`])
//! and knows neither the store nor the state machine. It never interprets
//! `App` payloads and never decides membership: it proves who a peer is and
//! moves bytes.

pub mod certs;
pub mod election;
pub mod group;
pub mod network;
pub mod peers;
pub mod server;
pub mod tls;
pub mod transport;
pub mod wire;

#[cfg(test)]
mod tests;

pub use election::{ElectionOptions, Elections, LastLogId, PreVoteRequest, PreVoteResponse};
pub use group::{GroupTransport, NodeAddress, SnapshotBodies};
pub use network::{NetworkFactory, PeerNetwork};
pub use peers::{Peers, TransportError, TransportOptions};
pub use server::{AppHandler, RaftAdmission, RaftServer, RaftServerOptions, ServerError};
pub use tls::{PeerIdentity, TlsError, TlsMaterial, RAFT_ALPN};
pub use transport::PeerTransport;
pub use wire::{GroupId, RemoteError, DEFAULT_GROUP};

/// A node id: the number in a node's certificate (`node-<id>.floe`).
pub type NodeId = u64;

/// The openraft type configurations the transport carries: node ids are
/// the numbers node certificates name, and snapshot bodies are `Sync` (a
/// transfer's futures hold a reference to the body across awaits).
pub trait RaftTypes: openraft::RaftTypeConfig<NodeId = NodeId, SnapshotData: Sync> {}

impl<C> RaftTypes for C where C: openraft::RaftTypeConfig<NodeId = NodeId, SnapshotData: Sync> {}
