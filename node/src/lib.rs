//! floe-node: the `floe` binary's library — config, CLI, the gRPC and HTTP
//! API, and the node runtime that ties storage, Raft and transport together.

/// The public gRPC API, generated in `floe-api` from `node/api/proto/floe.proto`.
pub use floe_api::proto as api;
pub mod access;
pub mod blobs;
pub mod bootstrap;
pub mod call_context;
pub mod changes;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod disk;
pub mod error;
pub mod grpc;
pub mod grpc_limits;
pub mod http;
pub mod kv;
pub mod leader_hint;
pub mod log_limit;
pub mod metrics;
pub mod models;
pub mod ops;
pub mod outage;
pub mod peer_api;
pub mod peer_server;
pub mod raft_errors;
pub mod raft_group;
pub mod reports;
pub mod runs;
pub mod scheduler;
pub mod service;
pub mod workers;
