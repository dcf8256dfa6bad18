//! An existing cluster (an operator's own appliance), given by a TOML file:
//! node addresses, client certificates and a shell command template per
//! fault. See docs/chaos.md for an example.

use std::path::{Path, PathBuf};

use anyhow::Context;
use floe_api::client::ClientOptions;
use serde::Deserialize;

use super::commands::{ClientTls, CommandCluster, CommandTemplates, NodeAddresses};
use super::{Capabilities, NodeId, Target, TargetResult};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalConfig {
    pub tls: ClientTls,
    #[serde(rename = "node")]
    pub nodes: Vec<NodeAddresses>,
    #[serde(default)]
    pub commands: CommandTemplates,
}

impl ExternalConfig {
    pub fn load(path: &Path) -> anyhow::Result<ExternalConfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config: ExternalConfig =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if config.nodes.is_empty() {
            anyhow::bail!("{}: no [[node]] entries", path.display());
        }
        Ok(config)
    }
}

pub struct ExternalTarget {
    cluster: CommandCluster,
}

impl ExternalTarget {
    pub fn new(config: ExternalConfig) -> ExternalTarget {
        ExternalTarget {
            cluster: CommandCluster::new("external", config.nodes, config.tls, config.commands),
        }
    }
}

impl Target for ExternalTarget {
    fn kind(&self) -> &'static str {
        "external"
    }
    crate::delegate_to_command_cluster!();
    fn logs_location(&self) -> Option<PathBuf> {
        None
    }
    /// Leaves the cluster as it found it: healed, every node started.
    fn teardown(&mut self) {
        self.cluster.restore();
    }
}
