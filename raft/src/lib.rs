//! floe-raft: the node-to-node transport of a floe cluster.
//!
//! - [`certs`]: an offline cluster CA and node/client certificates (PEM).
//! - [`tls`]: loading that material, rustls configs (for QUIC and tonic) and
//!   reading a peer's identity from its certificate.
//! - [`wire`]: the frame format spoken on QUIC streams.
//! - [`peers`]: outgoing connections, one per peer, with backoff.
//! - [`network`]: openraft's `RaftNetworkFactory`/`RaftNetwork` over [`Peers`].
//! - [`election`]: pre-vote rounds and the decision to campaign (openraft's
//!   own election timer is off).
//! - [`server`]: the QUIC server that checks identities and dispatches to Raft
//!   or to the node layer's [`AppHandler`].
//!
//! The transport never interprets `App` payloads and never decides membership:
//! it proves who a peer is and moves bytes.

pub mod certs;
pub mod election;
pub mod network;
pub mod peers;
pub mod server;
pub mod tls;
pub mod wire;

#[cfg(test)]
mod tests;

pub use election::{ElectionOptions, Elections, PreVoteRequest, PreVoteResponse};
pub use network::{NetworkFactory, PeerNetwork};
pub use peers::{Peers, TransportError, TransportOptions};
pub use server::{AppHandler, RaftAdmission, RaftServer, RaftServerOptions, ServerError};
pub use tls::{PeerIdentity, TlsError, TlsMaterial, RAFT_ALPN};
pub use wire::RemoteError;
