//! floe-api: what a program needs to talk to floe — the gRPC API generated
//! from `proto/floe.proto`, the Rust client ([`client`]) with its failover
//! rules ([`failover`]), the response headers nodes add ([`headers`]), and the
//! worker library ([`worker`]). The CLI, the chaos suite, the tools and the
//! examples use this crate; none of them links the server.

pub mod proto {
    //! Generated from `proto/floe.proto`.
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("floe.v1");
}
pub mod client;
pub mod failover;
pub mod headers;
pub mod worker;

/// The largest payload any node accepts in one message (run input, task
/// result, blob chunk, model artifact); `runs.max_payload_bytes` and
/// `inference.max_model_bytes` are set at or below it. The client sizes its
/// message limit from it.
pub const MAX_PAYLOAD_CEILING: u64 = 48 * 1024 * 1024;
