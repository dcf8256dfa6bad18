//! Nodes as local processes, through floe-node's test-cluster harness.
//! Each node gets its own loopback address so iptables can cut links (see
//! `iptables.rs`); clients and workers use 127.0.0.1 and are never cut.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use floe_api::client::ClientOptions;
use floe_harness::{ClusterOptions, TestCluster};

use super::clock;
use super::disk::TmpfsMount;
use super::iptables::Firewall;
use super::{unsupported, Capabilities, ClusterSpec, NodeId, Target, TargetResult};

/// Size of the tmpfs under a disk-full node's data dir.
const DISK_FULL_TMPFS_MIB: u64 = 256;
/// `storage.min_free_bytes` of that node: the default (256 MiB) would leave
/// it degraded from the start on a disk this small.
const DISK_FULL_MIN_FREE_BYTES: u64 = 32 * 1024 * 1024;

pub struct LocalTarget {
    /// `None` once torn down. Dropped before the mounts (field order).
    cluster: Option<TestCluster>,
    firewall: Option<Firewall>,
    clock_files: BTreeMap<NodeId, PathBuf>,
    mounts: BTreeMap<NodeId, TmpfsMount>,
    dir: PathBuf,
}

impl LocalTarget {
    /// Prepares files, mounts and firewall, starts every node and waits
    /// until all are ready.
    pub async fn start(binary: PathBuf, spec: &ClusterSpec) -> anyhow::Result<LocalTarget> {
        let mut options = ClusterOptions::new(binary, spec.nodes);
        options.overrides = spec.overrides.clone();
        options.base_dir = Some(spec.dir.clone());
        options.loopback_per_node = true;
        let cluster = tokio::task::block_in_place(|| TestCluster::prepare(options))?;
        let mut target = LocalTarget {
            cluster: Some(cluster),
            firewall: None,
            clock_files: BTreeMap::new(),
            mounts: BTreeMap::new(),
            dir: spec.dir.clone(),
        };
        target.firewall =
            Some(Firewall::install().context("installing the firewall chain for partitions")?);
        // Without libfaketime the clock-skew nemesis reports itself skipped.
        let faketime = if spec.clock_skew {
            clock::library()
        } else {
            None
        };
        if spec.clock_skew && faketime.is_none() {
            tracing::warn!(
                "libfaketime is not installed (apt-get install faketime): no clock skew"
            );
        }
        if let Some(library) = faketime {
            for id in 1..=spec.nodes {
                let file = spec.dir.join(format!("node{id}.faketime"));
                clock::write_offset(&file, 0)?;
                target
                    .cluster_mut()?
                    .set_node_env(id, clock::node_env(&library, &file));
                target.clock_files.insert(id, file);
            }
        }
        if let Some(node) = spec.disk_full_node {
            let data_dir = target.cluster()?.node(node)?.data_dir();
            target
                .mounts
                .insert(node, TmpfsMount::mount(&data_dir, DISK_FULL_TMPFS_MIB)?);
            let floor = format!("storage.min_free_bytes={DISK_FULL_MIN_FREE_BYTES}");
            target.cluster_mut()?.set_node_overrides(node, vec![floor]);
        }
        let cluster = target.cluster_mut()?;
        for id in 1..=spec.nodes {
            cluster.spawn(id)?;
        }
        let ids: Vec<u64> = (1..=spec.nodes).collect();
        cluster.wait_ready(&ids, Duration::from_secs(60)).await?;
        Ok(target)
    }

    fn cluster(&self) -> anyhow::Result<&TestCluster> {
        self.cluster
            .as_ref()
            .context("the local cluster was torn down")
    }

    fn cluster_mut(&mut self) -> anyhow::Result<&mut TestCluster> {
        self.cluster
            .as_mut()
            .context("the local cluster was torn down")
    }

    fn host(&self, node: NodeId) -> anyhow::Result<String> {
        Ok(self.cluster()?.node_host(node))
    }

    fn firewall(&self) -> anyhow::Result<&Firewall> {
        self.firewall.as_ref().context("no firewall chain")
    }
}

impl Target for LocalTarget {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn nodes(&self) -> Vec<NodeId> {
        self.cluster
            .as_ref()
            .map(|cluster| cluster.nodes.keys().copied().collect())
            .unwrap_or_default()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            pause: true,
            isolate: true,
            cut_links: true,
            clock_skew: !self.clock_files.is_empty(),
            disk_full: !self.mounts.is_empty(),
            tunable: true,
        }
    }

    fn client_options(&self, nodes: &[NodeId]) -> anyhow::Result<ClientOptions> {
        let mut options = self.cluster()?.client_options(nodes)?;
        options.connect_timeout = Duration::from_secs(1);
        Ok(options)
    }

    fn http_addr(&self, node: NodeId) -> anyhow::Result<String> {
        Ok(self.cluster()?.node(node)?.http_addr.clone())
    }

    fn kill(&mut self, node: NodeId) -> TargetResult<()> {
        self.cluster_mut()?.kill(node)?;
        Ok(())
    }

    fn start(&mut self, node: NodeId) -> TargetResult<()> {
        let cluster = self.cluster_mut()?;
        if cluster.node(node)?.is_running() {
            return Ok(());
        }
        cluster.spawn(node)?;
        Ok(())
    }

    fn stop(&mut self, node: NodeId) -> TargetResult<()> {
        let cluster = self.cluster_mut()?;
        let Some(pid) = cluster.node(node)?.pid() else {
            return Ok(());
        };
        // A paused process cannot handle SIGTERM; resume it first.
        let _ = cluster.resume(node);
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        if !matches!(sent, Ok(status) if status.success()) {
            return Err(anyhow::anyhow!("kill -TERM {pid} (node {node}) failed").into());
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if cluster.exited(node)?.is_some() {
                // Reaps the exited child and marks the node down.
                cluster.kill(node)?;
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        cluster.kill(node)?;
        Err(anyhow::anyhow!("node {node} did not stop within 10 s of SIGTERM; killed").into())
    }

    fn pause(&mut self, node: NodeId) -> TargetResult<()> {
        self.cluster_mut()?.pause(node)?;
        Ok(())
    }

    fn resume(&mut self, node: NodeId) -> TargetResult<()> {
        let cluster = self.cluster_mut()?;
        if cluster.node(node)?.is_running() {
            cluster.resume(node)?;
        }
        Ok(())
    }

    fn isolate(&mut self, node: NodeId) -> TargetResult<()> {
        for other in self.nodes() {
            if other != node {
                self.cut_link(node, other)?;
            }
        }
        Ok(())
    }

    fn cut_link(&mut self, a: NodeId, b: NodeId) -> TargetResult<()> {
        let (host_a, host_b) = (self.host(a)?, self.host(b)?);
        self.firewall()?.cut(&host_a, &host_b)?;
        Ok(())
    }

    fn isolate_peers(&mut self, node: NodeId) -> TargetResult<()> {
        let host = self.host(node)?;
        self.firewall()?.cut_udp(&host)?;
        Ok(())
    }

    fn heal_network(&mut self) -> TargetResult<()> {
        self.firewall()?.heal()?;
        Ok(())
    }

    fn set_clock_offset(&mut self, node: NodeId, offset_s: i64) -> TargetResult<()> {
        let Some(file) = self.clock_files.get(&node) else {
            return unsupported(
                "local",
                "skew the clock of a node started without libfaketime",
            );
        };
        clock::write_offset(file, offset_s).map_err(anyhow::Error::from)?;
        tracing::info!(node, offset_s, "clock offset set");
        Ok(())
    }

    /// Fills (to the last byte, at once) or frees the node's data dir; the
    /// node itself is left alone either way.
    fn set_disk_full(&mut self, node: NodeId, full: bool) -> TargetResult<()> {
        let Some(mount) = self.mounts.get(&node) else {
            return unsupported(
                "local",
                "fill the disk of a node whose data dir is not on a tmpfs",
            );
        };
        if full {
            mount.fill()?;
        } else {
            mount.free()?;
        }
        Ok(())
    }

    fn poll_exits(&mut self) -> Vec<(NodeId, String)> {
        let Some(cluster) = self.cluster.as_mut() else {
            return Vec::new();
        };
        let ids: Vec<NodeId> = cluster.nodes.keys().copied().collect();
        let mut exits = Vec::new();
        for id in ids {
            if let Ok(Some(status)) = cluster.exited(id) {
                exits.push((id, status.to_string()));
                // Reap it so the node counts as down and can be started again.
                let _ = cluster.kill(id);
            }
        }
        exits
    }

    fn is_up(&self, node: NodeId) -> bool {
        self.cluster
            .as_ref()
            .and_then(|cluster| cluster.node(node).ok())
            .is_some_and(|node| node.is_running())
    }

    fn logs_location(&self) -> Option<PathBuf> {
        Some(self.dir.clone())
    }

    fn teardown(&mut self) {
        // Processes first (the harness kills them on drop), then the network
        // rules and the mounts their data dirs are on.
        drop(self.cluster.take());
        drop(self.firewall.take());
        self.mounts.clear();
    }
}

impl Drop for LocalTarget {
    fn drop(&mut self) {
        self.teardown();
    }
}
