//! A cluster from a tarball of data dirs: the data, configs and
//! certificates an earlier release wrote, started on the `floe` under test
//! the way an operator would (`floe serve --config nodeN.toml` in the
//! unpacked directory). Used by the compatibility tests.
//!
//! The tarball holds `node1.toml` … `nodeN.toml` (with fixed loopback
//! ports), their `data_dir`s and `pki/`, with the client certificate in
//! `pki/admin/`. Dropping the cluster kills its processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use floe_api::client::{ClientOptions, FloeClient};

/// How long the nodes get to become ready.
const READY_DEADLINE: Duration = Duration::from_secs(60);

pub struct FixtureCluster {
    binary: PathBuf,
    dir: tempfile::TempDir,
    nodes: Vec<FixtureNode>,
}

struct FixtureNode {
    id: u64,
    api_addr: String,
    http_addr: String,
    child: Option<Child>,
}

impl FixtureCluster {
    /// Unpacks `tarball` into a new temporary directory; starts nothing.
    pub fn unpack(binary: impl Into<PathBuf>, tarball: &Path) -> anyhow::Result<FixtureCluster> {
        let dir = tempfile::Builder::new().prefix("floe-fixture-").tempdir()?;
        let status = Command::new("tar")
            .arg("xzf")
            .arg(tarball)
            .arg("-C")
            .arg(dir.path())
            .status()
            .context("running tar")?;
        if !status.success() {
            bail!("unpacking {} failed: {status}", tarball.display());
        }
        let mut nodes = Vec::new();
        for id in 1.. {
            let config = dir.path().join(format!("node{id}.toml"));
            if !config.is_file() {
                break;
            }
            let text = std::fs::read_to_string(&config)?;
            let address = |key: &str| -> anyhow::Result<String> {
                text.lines()
                    .find_map(|line| {
                        let (name, value) = line.split_once('=')?;
                        (name.trim() == key).then(|| value.trim().trim_matches('"').to_string())
                    })
                    .with_context(|| format!("{} has no {key}", config.display()))
            };
            nodes.push(FixtureNode {
                id,
                api_addr: address("api_addr")?,
                http_addr: address("http_addr")?,
                child: None,
            });
        }
        if nodes.is_empty() {
            bail!("{} holds no node1.toml", tarball.display());
        }
        Ok(FixtureCluster {
            binary: binary.into(),
            dir,
            nodes,
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Starts every node that is not running.
    pub fn start(&mut self) -> anyhow::Result<()> {
        for node in &mut self.nodes {
            if node.child.is_some() {
                continue;
            }
            let log_path = self.dir.path().join(format!("node{}.log", node.id));
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)?;
            // The fixtures' client certificate (`pki/admin`, named admin)
            // administers the cluster: they predate access control.
            let child = Command::new(&self.binary)
                .args(["serve", "--config", &format!("node{}.toml", node.id)])
                .args(["--set", "auth.admins=admin"])
                .current_dir(self.dir.path())
                .stdout(Stdio::from(log.try_clone()?))
                .stderr(Stdio::from(log))
                .spawn()
                .with_context(|| format!("starting {}", self.binary.display()))?;
            node.child = Some(child);
        }
        Ok(())
    }

    /// Kills every node (SIGKILL) and waits for them to exit.
    pub fn kill_all(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Whether every started node is still running.
    pub fn all_running(&mut self) -> bool {
        self.nodes.iter_mut().all(|node| match &mut node.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        })
    }

    /// The last lines of every node's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for node in &self.nodes {
            let log = std::fs::read_to_string(self.dir.path().join(format!("node{}.log", node.id)))
                .unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(15)..];
            text.push_str(&format!("--- node {}\n{}\n", node.id, tail.join("\n")));
        }
        text
    }

    /// Waits until every node answers `/health/readyz` with 200; fails when a
    /// node exits or the deadline passes, with the logs.
    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            let mut ready = 0;
            for node in &self.nodes {
                if let Ok((200, _)) = crate::http_get(&node.http_addr, "/health/readyz").await {
                    ready += 1;
                }
            }
            if ready == self.nodes.len() {
                return self.wait_for_linearizable_read(deadline).await;
            }
            if !self.all_running() {
                bail!("a node exited:\n{}", self.logs());
            }
            if Instant::now() >= deadline {
                bail!("not ready within {READY_DEADLINE:?}:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Ready nodes may still miss the first read barrier's quorum on a busy
    /// machine; a read that went through proves the cluster serves.
    async fn wait_for_linearizable_read(&self, deadline: Instant) -> anyhow::Result<()> {
        let mut client = self.client().await?;
        loop {
            let read = client
                .call(floe_api::client::Repeat::Read, |mut node| async move {
                    node.kv
                        .get(floe_api::proto::GetRequest {
                            key: "floe-fixture-ready".into(),
                            ..Default::default()
                        })
                        .await
                })
                .await;
            match read {
                Ok(_) => return Ok(()),
                Err(status) if Instant::now() >= deadline => {
                    bail!(
                        "no linearizable read within {READY_DEADLINE:?}: {status}\n{}",
                        self.logs()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// The client options for every node, with the fixture's admin certificate.
    pub fn client_options(&self) -> ClientOptions {
        let pki = self.dir.path().join("pki/admin");
        ClientOptions {
            endpoints: self
                .nodes
                .iter()
                .map(|node| node.api_addr.clone())
                .collect(),
            ca: pki.join("ca.pem"),
            cert: pki.join("client.pem"),
            key: pki.join("client-key.pem"),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            token: None,
        }
    }

    pub async fn client(&self) -> anyhow::Result<FloeClient> {
        FloeClient::connect(&self.client_options()).await
    }

    /// Starts a client process (a worker) next to the `floe` binary against
    /// every node, with the fixture's admin certificate; its output goes to
    /// `<name>.log` in the fixture directory. Killed when the returned child
    /// is dropped by the caller with `kill`.
    pub fn spawn_worker(&self, binary_name: &str, args: &[&str]) -> anyhow::Result<Child> {
        let binary = crate::tool_binary(&self.binary, binary_name)?;
        let options = self.client_options();
        let log = std::fs::File::create(self.dir.path().join(format!("{binary_name}.log")))?;
        Command::new(&binary)
            .arg("--endpoint")
            .arg(options.endpoints.join(","))
            .arg("--ca")
            .arg(&options.ca)
            .arg("--cert")
            .arg(&options.cert)
            .arg("--key")
            .arg(&options.key)
            .args(args)
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))
    }
}

impl Drop for FixtureCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}
