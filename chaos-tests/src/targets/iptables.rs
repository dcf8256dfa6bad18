//! Partitions between local node processes with iptables.
//!
//! Each local node has its own loopback address (127.0.0.(10+N)) for its
//! listeners and its outgoing QUIC connections, so a link is cut by
//! dropping packets between two addresses. Drops happen in INPUT, not
//! OUTPUT: a drop in OUTPUT makes the sender's `sendto` fail with EPERM,
//! which a real partition never does; a drop on input is silent loss.
//!
//! Every rule lives in a chain of our own, `FLOE-CHAOS-<pid>`, reached
//! from INPUT through one jump rule tagged with a comment. `Firewall`'s
//! `Drop` removes the jump and the chain, so rules go away on errors and
//! panics; `sweep_stale` removes chains left by a process that was killed
//! (its pid no longer exists).

use std::process::Command;

use anyhow::{bail, Context};

const CHAIN_PREFIX: &str = "FLOE-CHAOS-";
const COMMENT: &str = "floe-chaos";

/// Owns one iptables chain; dropping it removes every rule it added.
pub struct Firewall {
    chain: String,
    installed: bool,
}

fn iptables(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("iptables")
        .args(["-w", "5"])
        .args(args)
        .output()
        .context("running iptables (is it installed, and are we root?)")?;
    if !output.status.success() {
        bail!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

impl Firewall {
    /// Creates the chain and the jump to it.
    pub fn install() -> anyhow::Result<Firewall> {
        sweep_stale();
        let chain = format!("{CHAIN_PREFIX}{}", std::process::id());
        iptables(&["-N", &chain])?;
        let mut firewall = Firewall {
            chain,
            installed: true,
        };
        if let Err(err) = iptables(&[
            "-I",
            "INPUT",
            "-m",
            "comment",
            "--comment",
            COMMENT,
            "-j",
            &firewall.chain,
        ]) {
            firewall.remove();
            return Err(err);
        }
        tracing::debug!(chain = %firewall.chain, "firewall chain installed");
        Ok(firewall)
    }

    /// Drops packets between two addresses, both ways.
    pub fn cut(&self, a: &str, b: &str) -> anyhow::Result<()> {
        for (source, destination) in [(a, b), (b, a)] {
            iptables(&[
                "-A",
                &self.chain,
                "-s",
                source,
                "-d",
                destination,
                "-j",
                "DROP",
            ])?;
        }
        tracing::info!(a, b, "link cut");
        Ok(())
    }

    /// Drops every UDP packet from or to `host`: node-to-node traffic is
    /// QUIC, so this cuts the node off from its peers (both directions, its
    /// own server port and the connections it opens) while clients, which
    /// speak gRPC and HTTP over TCP, still reach it.
    pub fn cut_udp(&self, host: &str) -> anyhow::Result<()> {
        for direction in ["-s", "-d"] {
            iptables(&[
                "-A",
                &self.chain,
                "-p",
                "udp",
                direction,
                host,
                "-j",
                "DROP",
            ])?;
        }
        tracing::info!(host, "node-to-node traffic cut");
        Ok(())
    }

    /// Removes every cut.
    pub fn heal(&self) -> anyhow::Result<()> {
        iptables(&["-F", &self.chain])?;
        Ok(())
    }

    fn remove(&mut self) {
        if !self.installed {
            return;
        }
        remove_chain(&self.chain);
        self.installed = false;
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Removes the jump to `chain`, its rules and the chain itself; failures
/// are logged, since there is nothing better to do during cleanup.
fn remove_chain(chain: &str) {
    // A jump may have been inserted more than once by a crashed run; bounded.
    for _ in 0..8 {
        if iptables(&[
            "-D",
            "INPUT",
            "-m",
            "comment",
            "--comment",
            COMMENT,
            "-j",
            chain,
        ])
        .is_err()
        {
            break;
        }
    }
    for step in [&["-F", chain][..], &["-X", chain][..]] {
        if let Err(err) = iptables(step) {
            tracing::warn!(chain, error = %err, "firewall cleanup");
        }
    }
}

/// Removes chains of floe-chaos processes that no longer exist.
pub fn sweep_stale() {
    let Ok(rules) = iptables(&["-S"]) else { return };
    for line in rules.lines() {
        let Some(chain) = line.strip_prefix("-N ") else {
            continue;
        };
        let Some(pid) = chain.strip_prefix(CHAIN_PREFIX) else {
            continue;
        };
        let alive = pid
            .parse::<u32>()
            .is_ok_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            tracing::info!(chain, "removing a stale firewall chain");
            remove_chain(chain);
        }
    }
}

/// Whether iptables works here (root, module available).
pub fn available() -> bool {
    iptables(&["-S", "INPUT"]).is_ok()
}
