//! Node ids and addresses, and openraft's types over them: what the log
//! store, snapshots and the transport agree on whatever the commands.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Node ids are never reused: a removed id stays tombstoned in the state machine.
pub type NodeId = u64;

/// Where a member can be reached, as recorded in the Raft membership.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// QUIC address for node-to-node traffic (`host:port`).
    pub raft_addr: String,
    /// gRPC address for clients (`host:port`).
    pub api_addr: String,
    /// HTTP address for health and metrics (`host:port`).
    pub http_addr: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "raft={} api={} http={}",
            self.raft_addr, self.api_addr, self.http_addr
        )
    }
}

pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
pub type StorageError = openraft::StorageError<NodeId>;
