//! A cluster driven by shell command templates, one per fault, with
//! `{node}` (the node id) substituted: the external target, and the
//! container target (whose templates are `docker …` commands).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use floe_api::client::ClientOptions;
use serde::Deserialize;

use super::{unsupported, Capabilities, NodeId, TargetError, TargetResult};

/// Command templates; an absent one makes that fault unsupported.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandTemplates {
    /// Power the node off at once (SIGKILL, `docker kill`, a PDU port).
    pub kill: Option<String>,
    pub start: Option<String>,
    /// Graceful stop; defaults to `kill` when absent.
    pub stop: Option<String>,
    pub pause: Option<String>,
    pub resume: Option<String>,
    /// Cut the node off from its peers (clients may or may not still reach it).
    pub isolate: Option<String>,
    /// Undo `isolate` for this node.
    pub heal: Option<String>,
    /// Exits 0 while the node's process is up; used to notice crashes.
    pub status: Option<String>,
}

/// One node's addresses.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeAddresses {
    pub id: NodeId,
    /// gRPC API `host:port`.
    pub api: String,
    /// HTTP health/metrics `host:port`.
    pub http: String,
}

/// Client certificate files from the cluster's CA.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The `Target` methods a target built on a `CommandCluster` field named
/// `cluster` hands straight to it (node control, addresses, capabilities).
#[macro_export]
macro_rules! delegate_to_command_cluster {
    () => {
        fn nodes(&self) -> Vec<NodeId> {
            self.cluster.node_ids()
        }
        fn capabilities(&self) -> Capabilities {
            self.cluster.capabilities()
        }
        fn client_options(&self, nodes: &[NodeId]) -> anyhow::Result<ClientOptions> {
            self.cluster.client_options(nodes)
        }
        fn http_addr(&self, node: NodeId) -> anyhow::Result<String> {
            self.cluster.http_addr(node)
        }
        fn kill(&mut self, node: NodeId) -> TargetResult<()> {
            self.cluster.kill(node)
        }
        fn start(&mut self, node: NodeId) -> TargetResult<()> {
            self.cluster.start(node)
        }
        fn stop(&mut self, node: NodeId) -> TargetResult<()> {
            self.cluster.stop(node)
        }
        fn pause(&mut self, node: NodeId) -> TargetResult<()> {
            self.cluster.pause(node)
        }
        fn resume(&mut self, node: NodeId) -> TargetResult<()> {
            self.cluster.resume(node)
        }
        fn isolate(&mut self, node: NodeId) -> TargetResult<()> {
            self.cluster.isolate(node)
        }
        fn heal_network(&mut self) -> TargetResult<()> {
            self.cluster.heal_network()
        }
        fn poll_exits(&mut self) -> Vec<(NodeId, String)> {
            self.cluster.poll_exits()
        }
        fn is_up(&self, node: NodeId) -> bool {
            self.cluster.is_up(node)
        }
    };
}

pub struct CommandCluster {
    pub kind: &'static str,
    pub nodes: Vec<NodeAddresses>,
    pub tls: ClientTls,
    pub templates: CommandTemplates,
    /// Nodes this process took down (killed or stopped) and not yet started.
    down: BTreeSet<NodeId>,
    isolated: BTreeSet<NodeId>,
    /// Per command: how long it may run.
    pub command_timeout: Duration,
}

impl CommandCluster {
    pub fn new(
        kind: &'static str,
        nodes: Vec<NodeAddresses>,
        tls: ClientTls,
        templates: CommandTemplates,
    ) -> CommandCluster {
        CommandCluster {
            kind,
            nodes,
            tls,
            templates,
            down: BTreeSet::new(),
            isolated: BTreeSet::new(),
            command_timeout: Duration::from_secs(60),
        }
    }

    fn node(&self, id: NodeId) -> anyhow::Result<&NodeAddresses> {
        self.nodes
            .iter()
            .find(|node| node.id == id)
            .with_context(|| format!("no node {id} in the {} cluster", self.kind))
    }

    /// Runs `template` for `node` through `sh -c`; fails on a non-zero exit.
    fn run(&self, what: &str, template: Option<&String>, node: NodeId) -> TargetResult<()> {
        let Some(template) = template else {
            return unsupported(
                self.kind,
                &format!("{what} (no `{what}` command configured)"),
            );
        };
        let command = substitute(template, node);
        tracing::info!(node, what, command = %command, "running fault command");
        let status = run_shell(&command, self.command_timeout)?;
        if !status.0 {
            return Err(TargetError::Failed(anyhow::anyhow!(
                "`{command}` failed: {}",
                status.1
            )));
        }
        Ok(())
    }

    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|node| node.id).collect()
    }

    pub fn capabilities(&self) -> Capabilities {
        Capabilities {
            pause: self.templates.pause.is_some() && self.templates.resume.is_some(),
            isolate: self.templates.isolate.is_some() && self.templates.heal.is_some(),
            cut_links: false,
            clock_skew: false,
            disk_full: false,
            tunable: false,
        }
    }

    pub fn client_options(&self, nodes: &[NodeId]) -> anyhow::Result<ClientOptions> {
        let mut endpoints = Vec::new();
        for id in nodes {
            endpoints.push(self.node(*id)?.api.clone());
        }
        Ok(ClientOptions {
            endpoints,
            ca: self.tls.ca.clone(),
            cert: self.tls.cert.clone(),
            key: self.tls.key.clone(),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(10),
            token: None,
        })
    }

    pub fn http_addr(&self, node: NodeId) -> anyhow::Result<String> {
        Ok(self.node(node)?.http.clone())
    }

    pub fn kill(&mut self, node: NodeId) -> TargetResult<()> {
        self.run("kill", self.templates.kill.as_ref(), node)?;
        self.down.insert(node);
        Ok(())
    }

    pub fn start(&mut self, node: NodeId) -> TargetResult<()> {
        self.run("start", self.templates.start.as_ref(), node)?;
        self.down.remove(&node);
        Ok(())
    }

    pub fn stop(&mut self, node: NodeId) -> TargetResult<()> {
        let template = self
            .templates
            .stop
            .as_ref()
            .or(self.templates.kill.as_ref());
        self.run("stop", template, node)?;
        self.down.insert(node);
        Ok(())
    }

    pub fn pause(&mut self, node: NodeId) -> TargetResult<()> {
        self.run("pause", self.templates.pause.as_ref(), node)
    }

    pub fn resume(&mut self, node: NodeId) -> TargetResult<()> {
        self.run("resume", self.templates.resume.as_ref(), node)
    }

    pub fn isolate(&mut self, node: NodeId) -> TargetResult<()> {
        self.run("isolate", self.templates.isolate.as_ref(), node)?;
        self.isolated.insert(node);
        Ok(())
    }

    pub fn heal_network(&mut self) -> TargetResult<()> {
        let isolated: Vec<NodeId> = self.isolated.iter().copied().collect();
        for node in isolated {
            self.run("heal", self.templates.heal.as_ref(), node)?;
            self.isolated.remove(&node);
        }
        Ok(())
    }

    /// Nodes that are down although this process did not take them down.
    pub fn poll_exits(&mut self) -> Vec<(NodeId, String)> {
        let Some(template) = self.templates.status.clone() else {
            return Vec::new();
        };
        let mut exits = Vec::new();
        for id in self.node_ids() {
            if self.down.contains(&id) {
                continue;
            }
            let command = substitute(&template, id);
            if let Ok((false, detail)) = run_shell(&command, Duration::from_secs(10)) {
                exits.push((id, format!("status command reports it down: {detail}")));
                self.down.insert(id);
            }
        }
        exits
    }

    pub fn is_up(&self, node: NodeId) -> bool {
        !self.down.contains(&node)
    }

    /// Brings back everything this process changed: heals the network,
    /// resumes and starts nodes (best effort, for teardown).
    pub fn restore(&mut self) {
        if let Err(err) = self.heal_network() {
            tracing::warn!(error = %err, "restoring the network");
        }
        let down: Vec<NodeId> = self.down.iter().copied().collect();
        for node in down {
            if let Err(err) = self.start(node) {
                tracing::warn!(node, error = %err, "restarting a node at teardown");
            }
        }
    }
}

pub fn substitute(template: &str, node: NodeId) -> String {
    template.replace("{node}", &node.to_string())
}

/// Runs `sh -c command` with a time limit; returns (success, stderr tail).
pub fn run_shell(command: &str, limit: Duration) -> anyhow::Result<(bool, String)> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{command}`"))?;
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            let output = child.wait_with_output()?;
            let mut detail = String::from_utf8_lossy(&output.stderr).trim().to_string();
            if detail.is_empty() {
                detail = String::from_utf8_lossy(&output.stdout).trim().to_string();
            }
            let tail: String = detail
                .chars()
                .rev()
                .take(400)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            return Ok((status.success(), tail));
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{command}` did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
