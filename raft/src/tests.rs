//! Tests over real QUIC on 127.0.0.1 with real generated certificates.

mod certs;
mod groups;
mod harness;
mod network;
mod snapshot;
mod transport;
mod wire;
