//! Where the cluster under test runs, behind one trait: local processes
//! (`local`), the three-node container appliance from `deploy/`
//! (`containers`), or an operator's own cluster driven by shell command
//! templates (`external`).
//!
//! Fault operations are synchronous (they signal a process or run a short
//! command); the async runner calls them through `block_in_place`.

use std::path::PathBuf;

use floe_api::client::ClientOptions;

pub mod clock;
pub mod commands;
pub mod containers;
pub mod disk;
pub mod external;
pub mod iptables;
pub mod local;

pub type NodeId = u64;

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The target cannot inject this fault; the nemesis is skipped.
    #[error("the {target} target cannot {what}")]
    Unsupported { target: &'static str, what: String },
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

pub type TargetResult<T> = Result<T, TargetError>;

/// What a target can do beyond kill/start/stop.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Capabilities {
    pub pause: bool,
    /// Cut one node off from all others (clients still reach it).
    pub isolate: bool,
    /// Cut individual links between two nodes (bridge partitions).
    pub cut_links: bool,
    pub clock_skew: bool,
    pub disk_full: bool,
    /// The cluster is created per scenario, so node config can be tuned
    /// (small snapshot and purge thresholds).
    pub tunable: bool,
}

/// How a per-scenario cluster should be set up.
#[derive(Clone, Debug, Default)]
pub struct ClusterSpec {
    pub nodes: u64,
    /// `--set KEY=VALUE` given to every node.
    pub overrides: Vec<String>,
    /// Start every node able to have its wall clock shifted (libfaketime).
    pub clock_skew: bool,
    /// This node's data dir lives on a small filesystem that can be filled.
    pub disk_full_node: Option<NodeId>,
    /// Where cluster files (configs, data, logs) go.
    pub dir: PathBuf,
}

pub trait Target: Send {
    fn kind(&self) -> &'static str;
    fn nodes(&self) -> Vec<NodeId>;
    fn capabilities(&self) -> Capabilities;
    /// gRPC client settings for the given nodes (first that connects wins).
    fn client_options(&self, nodes: &[NodeId]) -> anyhow::Result<ClientOptions>;
    /// `host:port` of the node's HTTP health and metrics server.
    fn http_addr(&self, node: NodeId) -> anyhow::Result<String>;

    /// SIGKILL (or the target's equivalent: power off).
    fn kill(&mut self, node: NodeId) -> TargetResult<()>;
    fn start(&mut self, node: NodeId) -> TargetResult<()>;
    /// Graceful stop (SIGTERM and wait).
    fn stop(&mut self, node: NodeId) -> TargetResult<()>;
    fn pause(&mut self, node: NodeId) -> TargetResult<()>;
    fn resume(&mut self, node: NodeId) -> TargetResult<()>;
    /// Cuts `node` off from every other node; clients still reach it where
    /// the target allows (local, containers).
    fn isolate(&mut self, node: NodeId) -> TargetResult<()>;
    /// Cuts the link between two nodes, both ways.
    fn cut_link(&mut self, a: NodeId, b: NodeId) -> TargetResult<()> {
        let _ = (a, b);
        Err(TargetError::Unsupported {
            target: self.kind(),
            what: "cut single links".into(),
        })
    }
    /// Drops only the node's node-to-node traffic (Raft over QUIC), both
    /// ways; its client API and HTTP ports stay reachable.
    fn isolate_peers(&mut self, node: NodeId) -> TargetResult<()> {
        let _ = node;
        Err(TargetError::Unsupported {
            target: self.kind(),
            what: "drop only node-to-node traffic".into(),
        })
    }
    /// Restores every link cut by `isolate`, `isolate_peers` and `cut_link`.
    fn heal_network(&mut self) -> TargetResult<()>;
    /// Shifts the node's wall clock by `offset_s` seconds (0 resets it).
    fn set_clock_offset(&mut self, node: NodeId, offset_s: i64) -> TargetResult<()> {
        let _ = (node, offset_s);
        Err(TargetError::Unsupported {
            target: self.kind(),
            what: "skew clocks".into(),
        })
    }
    /// Fills (or frees) the filesystem under the node's data dir.
    fn set_disk_full(&mut self, node: NodeId, full: bool) -> TargetResult<()> {
        let _ = (node, full);
        Err(TargetError::Unsupported {
            target: self.kind(),
            what: "fill disks".into(),
        })
    }
    /// Nodes that exited on their own since the last call, with how; the
    /// target then counts them as down (a later `start` brings them back).
    fn poll_exits(&mut self) -> Vec<(NodeId, String)>;
    /// Whether the target believes the node's process is up (not killed).
    fn is_up(&self, node: NodeId) -> bool;
    /// Where node logs can be read after a failure, if anywhere.
    fn logs_location(&self) -> Option<PathBuf>;
    /// Releases everything (processes, containers, firewall rules, mounts).
    /// Also done on drop; calling it twice is harmless.
    fn teardown(&mut self);
}

pub fn unsupported<T>(target: &'static str, what: &str) -> TargetResult<T> {
    Err(TargetError::Unsupported {
        target,
        what: what.to_string(),
    })
}
