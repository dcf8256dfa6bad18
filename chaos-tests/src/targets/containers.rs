//! The three-node container appliance from `deploy/compose.yaml`, with
//! faults as docker commands: `docker kill` (power off), `docker pause`
//! (freezer cgroup), `docker network disconnect` from the cluster network
//! (the API network stays, so clients reach both sides).
//!
//! Clock skew and disk-full need tools inside the node's filesystem, and
//! the image holds only the floe binary, so they are local-only.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use floe_api::client::ClientOptions;

use super::commands::{run_shell, ClientTls, CommandCluster, CommandTemplates, NodeAddresses};
use super::{Capabilities, ClusterSpec, NodeId, Target, TargetResult};

pub const IMAGE: &str = "floe:local";
const PROJECT: &str = "floe-chaos";

#[derive(Clone, Debug)]
pub struct ContainerOptions {
    /// The repository's `deploy/` directory.
    pub deploy_dir: PathBuf,
    /// Host floe binary: builds the image when it is missing, creates certificates.
    pub binary: PathBuf,
    /// Rebuild the image even when it exists.
    pub rebuild_image: bool,
}

pub struct ContainerTarget {
    cluster: CommandCluster,
    compose: Vec<String>,
    compose_file: PathBuf,
    certs_dir: PathBuf,
    up: bool,
}

/// `docker compose` (v2 plugin) or `docker-compose` (v1), whichever works.
fn compose_command() -> anyhow::Result<Vec<String>> {
    let plugin = Command::new("docker").args(["compose", "version"]).output();
    if matches!(&plugin, Ok(output) if output.status.success()) {
        return Ok(vec!["docker".into(), "compose".into()]);
    }
    let standalone = Command::new("docker-compose").arg("version").output();
    if matches!(&standalone, Ok(output) if output.status.success()) {
        return Ok(vec!["docker-compose".into()]);
    }
    bail!("neither `docker compose` nor `docker-compose` works here")
}

/// Whether a docker daemon answers.
pub fn docker_available() -> bool {
    let info = Command::new("docker")
        .arg("info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    matches!(info, Ok(status) if status.success()) && compose_command().is_ok()
}

fn checked(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        );
    }
    Ok(())
}

fn image_exists() -> bool {
    let inspect = Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .output();
    matches!(inspect, Ok(output) if output.status.success())
}

pub fn templates() -> CommandTemplates {
    CommandTemplates {
        kill: Some("docker kill --signal KILL floe-node{node}".into()),
        start: Some("docker start floe-node{node}".into()),
        stop: Some("docker stop --time 10 floe-node{node}".into()),
        pause: Some("docker pause floe-node{node}".into()),
        resume: Some("docker unpause floe-node{node}".into()),
        isolate: Some("docker network disconnect floe-cluster floe-node{node}".into()),
        heal: Some(
            "docker network connect --alias node{node}.cluster floe-cluster floe-node{node}".into(),
        ),
        status: Some(
            "test \"$(docker inspect --format '{{.State.Running}}' floe-node{node})\" = true"
                .into(),
        ),
    }
}

impl ContainerTarget {
    /// Builds the image if needed, creates certificates, starts the
    /// appliance and waits until every node is ready.
    pub async fn start(
        options: &ContainerOptions,
        spec: &ClusterSpec,
    ) -> anyhow::Result<ContainerTarget> {
        if spec.nodes != 3 {
            bail!("the container appliance has 3 nodes, not {}", spec.nodes);
        }
        let compose = compose_command()?;
        let compose_file = options.deploy_dir.join("compose.yaml");
        if options.rebuild_image || !image_exists() {
            let script = options.deploy_dir.join("build-image.sh");
            tokio::task::block_in_place(|| {
                checked(
                    Command::new(&script).arg(&options.binary).arg(IMAGE),
                    "deploy/build-image.sh",
                )
            })?;
        }
        let certs_dir = spec.dir.join("certs");
        std::fs::create_dir_all(&spec.dir)?;
        let script = options.deploy_dir.join("certs.sh");
        tokio::task::block_in_place(|| {
            checked(
                Command::new(&script).arg(&certs_dir).arg(&options.binary),
                "deploy/certs.sh",
            )
        })?;
        let nodes = (1..=3)
            .map(|id| NodeAddresses {
                id,
                api: format!("127.0.0.1:{}", 17100 + id),
                http: format!("127.0.0.1:{}", 17200 + id),
            })
            .collect();
        let tls = ClientTls {
            ca: certs_dir.join("client/ca.pem"),
            cert: certs_dir.join("client/client.pem"),
            key: certs_dir.join("client/client-key.pem"),
        };
        let mut target = ContainerTarget {
            cluster: CommandCluster::new("containers", nodes, tls, templates()),
            compose,
            compose_file,
            certs_dir,
            up: false,
        };
        // A previous run that was killed may have left the appliance up.
        tokio::task::block_in_place(|| target.down());
        target.up = true;
        tokio::task::block_in_place(|| target.compose(&["up", "-d", "--force-recreate"]))?;
        wait_ready(&target, Duration::from_secs(90)).await?;
        Ok(target)
    }

    fn compose(&self, args: &[&str]) -> anyhow::Result<()> {
        let (program, rest) = self
            .compose
            .split_first()
            .context("empty compose command")?;
        let mut command = Command::new(program);
        command
            .args(rest)
            .arg("--project-name")
            .arg(PROJECT)
            .arg("--file")
            .arg(&self.compose_file)
            .args(args)
            .env("FLOE_CERTS_DIR", &self.certs_dir)
            .env("FLOE_IMAGE", IMAGE);
        checked(&mut command, &format!("compose {}", args.join(" ")))
    }

    /// Stops and removes the appliance with its volumes (best effort).
    fn down(&mut self) {
        for id in 1..=3 {
            // A paused container cannot be stopped; unpause first.
            let _ = run_shell(
                &format!("docker unpause floe-node{id} 2>/dev/null"),
                Duration::from_secs(20),
            );
        }
        if let Err(err) = self.compose(&["down", "--volumes", "--remove-orphans", "--timeout", "5"])
        {
            tracing::warn!(error = %err, "compose down");
        }
        self.up = false;
    }

    /// Node logs, for a failed run.
    pub fn save_logs(&self, dir: &Path) {
        for id in 1..=3 {
            let path = dir.join(format!("floe-node{id}.log"));
            let _ = run_shell(
                &format!("docker logs floe-node{id} > '{}' 2>&1", path.display()),
                Duration::from_secs(20),
            );
        }
    }
}

async fn wait_ready(target: &ContainerTarget, limit: Duration) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + limit;
    for id in target.nodes() {
        let addr = target.http_addr(id)?;
        loop {
            let answer = floe_harness::http_get(&addr, "/health/readyz").await;
            if matches!(answer, Ok((200, _))) {
                break;
            }
            if std::time::Instant::now() > deadline {
                bail!("container node {id} not ready within {limit:?} (last answer {answer:?})");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

impl Target for ContainerTarget {
    fn kind(&self) -> &'static str {
        "containers"
    }
    crate::delegate_to_command_cluster!();
    fn logs_location(&self) -> Option<PathBuf> {
        self.certs_dir.parent().map(Path::to_path_buf)
    }
    fn teardown(&mut self) {
        if self.up {
            if let Some(dir) = self.logs_location() {
                self.save_logs(&dir);
            }
            self.down();
        }
    }
}

impl Drop for ContainerTarget {
    fn drop(&mut self) {
        self.teardown();
    }
}
