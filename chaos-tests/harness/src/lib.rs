//! A test-cluster harness: real `floe` processes on loopback, each with its
//! own data dir, ports and certificates, driven the way an operator would.
//! Shared by the integration tests, the benchmark and the chaos suite.
//!
//! Every wait polls a condition against a deadline. Dropping the cluster kills
//! its processes; when the thread is panicking the directory (configs, data,
//! logs) is kept and the tail of each log is printed.

pub mod fixture;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use floe_api::client::{ClientOptions, FloeClient};
use floe_api::proto as api;

/// The name of the harness's client certificate, which every CLI call,
/// client and worker of a test cluster presents; the nodes list it in
/// `auth.admins`.
pub const HARNESS_CLIENT: &str = "harness";

/// How the cluster is formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Formation {
    /// Static peers with `bootstrap.expect = n` (the appliance way).
    ExpectN,
    /// `floe cluster init` on node 1, then `floe cluster join` for the rest.
    InitAndJoin,
}

#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub binary: PathBuf,
    pub nodes: u64,
    pub formation: Formation,
    /// `KEY=VALUE` overrides given to every node (`--set`).
    pub overrides: Vec<String>,
    /// Parent for the cluster directory; a fresh temp dir when `None`.
    pub base_dir: Option<PathBuf>,
    pub ready_timeout: Duration,
    /// Give node N its own loopback address, 127.0.0.(10+N), for every
    /// listener and for its outgoing QUIC connections, so that firewall
    /// rules on addresses can cut the links between two nodes (the chaos
    /// suite's partitions). Clients keep using 127.0.0.1 and stay connected.
    pub loopback_per_node: bool,
}

impl ClusterOptions {
    pub fn new(binary: impl Into<PathBuf>, nodes: u64) -> ClusterOptions {
        ClusterOptions {
            binary: binary.into(),
            nodes,
            formation: Formation::ExpectN,
            overrides: Vec::new(),
            base_dir: None,
            ready_timeout: Duration::from_secs(30),
            loopback_per_node: false,
        }
    }
}

/// One node's files, addresses and (while running) process.
pub struct NodeProcess {
    pub id: u64,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub raft_addr: String,
    pub api_addr: String,
    pub http_addr: String,
    pub log_path: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl NodeProcess {
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
}

pub struct TestCluster {
    pub options: ClusterOptions,
    pub dir: PathBuf,
    /// Keeps an owned temp dir alive; `None` when the caller gave a base dir.
    temp: Option<tempfile::TempDir>,
    pub nodes: BTreeMap<u64, NodeProcess>,
    pub ca_dir: PathBuf,
    pub client_dir: PathBuf,
    /// Overrides for nodes whose config is kept across restarts.
    node_overrides: BTreeMap<u64, Vec<String>>,
    /// Extra environment variables for a node's process (e.g. LD_PRELOAD).
    node_env: BTreeMap<u64, Vec<(String, String)>>,
    /// Worker processes started with `spawn_worker`, by worker id.
    pub workers: BTreeMap<String, Child>,
}

/// Ports for test nodes come from below the kernel's ephemeral range
/// (32768+), so a port handed out here cannot be taken meanwhile by some
/// process's outgoing socket (every node's QUIC client binds one). Each
/// process starts at its own offset and skips ports that are in use.
fn free_port(host: &str) -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id() * 97) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        // Free for both protocols, so the port suits QUIC as well as TCP.
        let tcp_free = TcpListener::bind((host, port)).is_ok();
        let udp_free = UdpSocket::bind((host, port)).is_ok();
        if tcp_free && udp_free {
            return Ok(port);
        }
    }
    bail!("no free port between {LOW} and {}", LOW + SPAN)
}

impl TestCluster {
    /// Creates certificates and configs, starts every node, forms the cluster
    /// and waits until every node is ready.
    pub async fn start(options: ClusterOptions) -> anyhow::Result<TestCluster> {
        let mut cluster = TestCluster::prepare(options)?;
        match cluster.form().await {
            Ok(()) => Ok(cluster),
            Err(err) => {
                let kept = cluster.keep();
                Err(err.context(format!("cluster files kept in {}", kept.display())))
            }
        }
    }

    async fn form(&mut self) -> anyhow::Result<()> {
        let cluster = self;
        let ids: Vec<u64> = (1..=cluster.options.nodes).collect();
        match cluster.options.formation {
            Formation::ExpectN => {
                for id in &ids {
                    cluster.spawn(*id)?;
                }
            }
            Formation::InitAndJoin => {
                cluster.spawn(1)?;
                cluster
                    .wait_http_up(1, cluster.options.ready_timeout)
                    .await?;
                cluster.cli_ok(1, &["cluster", "init"])?;
                for id in ids.iter().skip(1) {
                    cluster.spawn(*id)?;
                    cluster
                        .wait_http_up(*id, cluster.options.ready_timeout)
                        .await?;
                    let raft_addr = cluster.node(*id)?.raft_addr.clone();
                    cluster.cli_ok(
                        1,
                        &[
                            "cluster",
                            "join",
                            "--node-id",
                            &id.to_string(),
                            "--raft-addr",
                            &raft_addr,
                        ],
                    )?;
                }
            }
        }
        cluster
            .wait_ready(&ids, cluster.options.ready_timeout)
            .await
    }

    /// Directories, certificates and configs for `options.nodes` nodes; starts nothing.
    pub fn prepare(options: ClusterOptions) -> anyhow::Result<TestCluster> {
        let (dir, temp) = match &options.base_dir {
            Some(base) => {
                std::fs::create_dir_all(base)?;
                (base.clone(), None)
            }
            None => {
                let temp = tempfile::Builder::new().prefix("floe-cluster-").tempdir()?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        let ca_dir = dir.join("ca");
        let client_dir = dir.join("client");
        let mut cluster = TestCluster {
            options,
            dir,
            temp,
            nodes: BTreeMap::new(),
            ca_dir,
            client_dir,
            node_overrides: BTreeMap::new(),
            node_env: BTreeMap::new(),
            workers: BTreeMap::new(),
        };
        cluster.run_floe(&["cert", "create-ca", "--out", &path_str(&cluster.ca_dir)])?;
        cluster.run_floe(&[
            "cert",
            "create-client",
            "--ca-dir",
            &path_str(&cluster.ca_dir),
            "--name",
            HARNESS_CLIENT,
            "--out",
            &path_str(&cluster.client_dir),
        ])?;
        for id in 1..=cluster.options.nodes {
            cluster.add_node_files(id)?;
        }
        if cluster.options.formation == Formation::ExpectN {
            cluster.write_configs()?;
        }
        Ok(cluster)
    }

    /// Files for a node that is not part of the static peer list (for join tests).
    pub fn add_node_files(&mut self, id: u64) -> anyhow::Result<()> {
        let dir = self.dir.join(format!("node{id}"));
        std::fs::create_dir_all(&dir)?;
        let host = self.node_host(id);
        let certs = dir.join("certs");
        if !certs.join("node.pem").exists() {
            self.run_floe(&[
                "cert",
                "create-node",
                "--ca-dir",
                &path_str(&self.ca_dir),
                "--node-id",
                &id.to_string(),
                "--san",
                &host,
                "--out",
                &path_str(&certs),
            ])?;
        }
        let node = NodeProcess {
            id,
            config_path: dir.join("floe.toml"),
            log_path: dir.join("floe.log"),
            raft_addr: format!("{host}:{}", free_port(&host)?),
            api_addr: format!("{host}:{}", free_port(&host)?),
            http_addr: format!("{host}:{}", free_port(&host)?),
            dir,
            child: None,
            paused: false,
        };
        self.nodes.insert(id, node);
        self.write_config(id)?;
        Ok(())
    }

    /// The loopback address node `id` listens on.
    pub fn node_host(&self, id: u64) -> String {
        if self.options.loopback_per_node {
            format!("127.0.0.{}", 10 + id)
        } else {
            "127.0.0.1".to_string()
        }
    }

    fn write_configs(&self) -> anyhow::Result<()> {
        for id in self.nodes.keys() {
            self.write_config(*id)?;
        }
        Ok(())
    }

    fn write_config(&self, id: u64) -> anyhow::Result<()> {
        let node = self.node(id)?;
        let mut text = format!(
            "node_id = {id}\ndata_dir = {data:?}\nraft_addr = {raft:?}\napi_addr = {api:?}\nhttp_addr = {http:?}\nlog_level = \"info\"\n\n[tls]\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n",
            data = path_str(&node.data_dir()),
            raft = node.raft_addr,
            api = node.api_addr,
            http = node.http_addr,
            ca = path_str(&node.dir.join("certs/ca.pem")),
            cert = path_str(&node.dir.join("certs/node.pem")),
            key = path_str(&node.dir.join("certs/node-key.pem")),
        );
        // The harness's one client certificate administers the cluster.
        text.push_str(&format!("\n[auth]\nadmins = [{HARNESS_CLIENT:?}]\n"));
        if self.options.loopback_per_node {
            text.insert_str(
                0,
                &format!("raft_client_bind_addr = \"{}:0\"\n", self.node_host(id)),
            );
        }
        if self.options.formation == Formation::ExpectN && id <= self.options.nodes {
            let peers: Vec<String> = self
                .nodes
                .values()
                .filter(|peer| peer.id <= self.options.nodes)
                .map(|peer| format!("\"{}@{}\"", peer.id, peer.raft_addr))
                .collect();
            text.push_str(&format!(
                "\n[bootstrap]\nexpect = {}\npeers = [{}]\n",
                self.options.nodes,
                peers.join(", ")
            ));
        }
        std::fs::write(&node.config_path, text)?;
        Ok(())
    }

    pub fn node(&self, id: u64) -> anyhow::Result<&NodeProcess> {
        self.nodes
            .get(&id)
            .with_context(|| format!("no node {id} in this cluster"))
    }

    fn node_mut(&mut self, id: u64) -> anyhow::Result<&mut NodeProcess> {
        self.nodes
            .get_mut(&id)
            .with_context(|| format!("no node {id} in this cluster"))
    }

    /// Extra `--set` overrides for one node, used from its next start on.
    pub fn set_node_overrides(&mut self, id: u64, overrides: Vec<String>) {
        self.node_overrides.insert(id, overrides);
    }

    /// Extra environment variables for one node's process, from its next start on.
    pub fn set_node_env(&mut self, id: u64, env: Vec<(String, String)>) {
        self.node_env.insert(id, env);
    }

    /// Starts node `id`'s process (its log is appended to across restarts).
    pub fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let binary = self.options.binary.clone();
        let mut overrides = self.options.overrides.clone();
        overrides.extend(self.node_overrides.get(&id).cloned().unwrap_or_default());
        let env = self.node_env.get(&id).cloned().unwrap_or_default();
        let node = self.node_mut(id)?;
        if node.child.is_some() {
            bail!("node {id} is already running");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)?;
        let mut command = Command::new(&binary);
        command.arg("serve").arg("--config").arg(&node.config_path);
        for assignment in &overrides {
            command.arg("--set").arg(assignment);
        }
        scrub_floe_env(&mut command);
        command.envs(env);
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    /// Starts the example worker (`floe-worker`, next to the `floe` binary)
    /// attached to the given nodes, serving `blocks` (`NAME=BEHAVIOUR`).
    /// Its executions are recorded to `<cluster dir>/<id>.executions`.
    pub fn spawn_worker(
        &mut self,
        id: &str,
        nodes: &[u64],
        blocks: &[&str],
        concurrency: u32,
    ) -> anyhow::Result<PathBuf> {
        self.spawn_labelled_worker(id, nodes, blocks, concurrency, &[])
    }

    /// [`spawn_worker`](Self::spawn_worker) declaring `labels` (`KEY=VALUE`).
    pub fn spawn_labelled_worker(
        &mut self,
        id: &str,
        nodes: &[u64],
        blocks: &[&str],
        concurrency: u32,
        labels: &[&str],
    ) -> anyhow::Result<PathBuf> {
        let record = self.dir.join(format!("{id}.executions"));
        let mut args = vec![
            "--concurrency".to_string(),
            concurrency.to_string(),
            "--record".to_string(),
        ];
        args.push(record.display().to_string());
        for block in blocks {
            args.push("--block".into());
            args.push(block.to_string());
        }
        for label in labels {
            args.push("--label".into());
            args.push(label.to_string());
        }
        self.spawn_client_process("floe-worker", id, nodes, &args)?;
        Ok(record)
    }

    /// Starts `binary` (next to the `floe` binary) as a worker process with
    /// the client certificates, `--endpoint` for `nodes`, `--id` and `args`;
    /// its output goes to `<cluster dir>/<id>.log`.
    pub fn spawn_client_process(
        &mut self,
        binary: &str,
        id: &str,
        nodes: &[u64],
        args: &[String],
    ) -> anyhow::Result<()> {
        let binary = tool_binary(&self.options.binary, binary)?;
        let mut endpoints = Vec::new();
        for node in nodes {
            endpoints.push(self.node(*node)?.api_addr.clone());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{id}.log")))?;
        let mut command = Command::new(&binary);
        scrub_floe_env(&mut command);
        command
            .arg("--endpoint")
            .arg(endpoints.join(","))
            .arg("--ca")
            .arg(self.client_dir.join("ca.pem"))
            .arg("--cert")
            .arg(self.client_dir.join("client.pem"))
            .arg("--key")
            .arg(self.client_dir.join("client-key.pem"))
            .arg("--id")
            .arg(id)
            .args(args);
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        self.workers.insert(id.to_string(), child);
        Ok(())
    }

    /// SIGKILL a worker process.
    pub fn kill_worker(&mut self, id: &str) -> anyhow::Result<()> {
        if let Some(mut child) = self.workers.remove(id) {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGKILL: the process gets no chance to flush anything.
    pub fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        let node = self.node_mut(id)?;
        if let Some(mut child) = node.child.take() {
            child.kill()?;
            child.wait()?;
        }
        node.paused = false;
        Ok(())
    }

    /// SIGTERM and wait for a clean exit (SIGKILL after `grace`).
    pub async fn stop(&mut self, id: u64, grace: Duration) -> anyhow::Result<()> {
        let node = self.node_mut(id)?;
        let Some(mut child) = node.child.take() else {
            return Ok(());
        };
        if node.paused {
            signal(child.id(), "CONT")?;
            node.paused = false;
        }
        signal(child.id(), "TERM")?;
        let deadline = Instant::now() + grace;
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                child.kill()?;
                child.wait()?;
                bail!("node {id} did not stop within {grace:?} of SIGTERM; killed");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGSTOP: the process is frozen but keeps its sockets.
    pub fn pause(&mut self, id: u64) -> anyhow::Result<()> {
        let node = self.node_mut(id)?;
        let pid = node
            .child
            .as_ref()
            .map(Child::id)
            .with_context(|| format!("node {id} is not running"))?;
        signal(pid, "STOP")?;
        node.paused = true;
        Ok(())
    }

    pub fn resume(&mut self, id: u64) -> anyhow::Result<()> {
        let node = self.node_mut(id)?;
        let pid = node
            .child
            .as_ref()
            .map(Child::id)
            .with_context(|| format!("node {id} is not running"))?;
        signal(pid, "CONT")?;
        node.paused = false;
        Ok(())
    }

    pub fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        self.kill(id)?;
        self.spawn(id)
    }

    /// Whether the process has exited on its own (a crash), with its status.
    pub fn exited(&mut self, id: u64) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let node = self.node_mut(id)?;
        match node.child.as_mut() {
            Some(child) => Ok(child.try_wait()?),
            None => Ok(None),
        }
    }

    pub fn running_ids(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|node| node.child.is_some() && !node.paused)
            .map(|node| node.id)
            .collect()
    }

    /// Polls `/health/livez` until the HTTP server answers.
    pub async fn wait_http_up(&self, id: u64, timeout: Duration) -> anyhow::Result<()> {
        let addr = self.node(id)?.http_addr.clone();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok((200, _)) = http_get(&addr, "/health/livez").await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "node {id} HTTP {addr} not up within {timeout:?}; log: {}",
                    self.log_tail(id, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls `/health/readyz` on each node until all answer 200.
    pub async fn wait_ready(&self, ids: &[u64], timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        for id in ids {
            let addr = self.node(*id)?.http_addr.clone();
            loop {
                let answer = http_get(&addr, "/health/readyz").await;
                if let Ok((200, _)) = answer {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "node {id} not ready within {timeout:?} (last answer {answer:?}); log: {}",
                        self.log_tail(*id, 30)
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// The leader as seen by the running nodes: polls until a running node
    /// says it is the leader and every other running node agrees.
    pub async fn wait_leader(&self, timeout: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(leader) = self.agreed_leader().await {
                return Ok(leader);
            }
            if Instant::now() > deadline {
                bail!(
                    "no agreed leader among nodes {:?} within {timeout:?}",
                    self.running_ids()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn agreed_leader(&self) -> Option<u64> {
        let running = self.running_ids();
        let mut agreed = None;
        for id in &running {
            let node = self.node(*id).ok()?;
            let (code, body) = http_get(&node.http_addr, "/health/readyz").await.ok()?;
            if code != 200 {
                return None;
            }
            let readiness: serde_json::Value = serde_json::from_str(&body).ok()?;
            let leader = readiness.get("leader")?.as_u64()?;
            if agreed.is_some_and(|seen| seen != leader) {
                return None;
            }
            if leader == *id && readiness.get("role")?.as_str()? != "leader" {
                return None;
            }
            agreed = Some(leader);
        }
        agreed.filter(|leader| running.contains(leader))
    }

    pub fn client_options(&self, ids: &[u64]) -> anyhow::Result<ClientOptions> {
        let mut endpoints = Vec::new();
        for id in ids {
            endpoints.push(self.node(*id)?.api_addr.clone());
        }
        Ok(ClientOptions {
            endpoints,
            ca: self.client_dir.join("ca.pem"),
            cert: self.client_dir.join("client.pem"),
            key: self.client_dir.join("client-key.pem"),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            token: None,
        })
    }

    /// Client options for nodes `ids` presenting client certificate `name`
    /// (confined to `namespace` when given), made on first use.
    pub fn client_options_as(
        &self,
        name: &str,
        namespace: Option<&str>,
        ids: &[u64],
    ) -> anyhow::Result<ClientOptions> {
        let dir = self.dir.join("clients").join(match namespace {
            Some(namespace) => format!("{namespace}.{name}"),
            None => name.to_string(),
        });
        if !dir.join("client.pem").exists() {
            let (ca_dir, out) = (path_str(&self.ca_dir), path_str(&dir));
            let mut args = vec!["cert", "create-client", "--ca-dir", &ca_dir, "--name", name];
            if let Some(namespace) = namespace {
                args.extend(["--namespace", namespace]);
            }
            args.extend(["--out", &out]);
            self.run_floe(&args)?;
        }
        Ok(ClientOptions {
            ca: dir.join("ca.pem"),
            cert: dir.join("client.pem"),
            key: dir.join("client-key.pem"),
            ..self.client_options(ids)?
        })
    }

    /// Client options for nodes `ids` presenting node `node`'s own certificate.
    pub fn client_options_as_node(&self, node: u64, ids: &[u64]) -> anyhow::Result<ClientOptions> {
        let certs = self.node(node)?.dir.join("certs");
        Ok(ClientOptions {
            ca: certs.join("ca.pem"),
            cert: certs.join("node.pem"),
            key: certs.join("node-key.pem"),
            ..self.client_options(ids)?
        })
    }

    /// A gRPC client bound to one node.
    pub async fn client(&self, id: u64) -> anyhow::Result<FloeClient> {
        FloeClient::connect(&self.client_options(&[id])?).await
    }

    /// Runs `floe` with this cluster's client certificates against node `id`.
    pub fn cli(&self, id: u64, args: &[&str]) -> anyhow::Result<Output> {
        let node = self.node(id)?;
        let mut command = Command::new(&self.options.binary);
        scrub_floe_env(&mut command);
        command
            .args(args)
            .env("FLOE_ENDPOINT", &node.api_addr)
            .env("FLOE_CA", self.client_dir.join("ca.pem"))
            .env("FLOE_CERT", self.client_dir.join("client.pem"))
            .env("FLOE_KEY", self.client_dir.join("client-key.pem"))
            .stdin(Stdio::null());
        Ok(command.output()?)
    }

    /// Like `cli`, but fails with the command's stderr when it exits non-zero.
    pub fn cli_ok(&self, id: u64, args: &[&str]) -> anyhow::Result<String> {
        let output = self.cli(id, args)?;
        if !output.status.success() {
            bail!(
                "floe {} on node {id} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).to_string())
    }

    fn run_floe(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut command = Command::new(&self.options.binary);
        scrub_floe_env(&mut command);
        let output = command.args(args).stdin(Stdio::null()).output()?;
        if !output.status.success() {
            bail!(
                "floe {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    /// Cluster status as answered by node `id`.
    pub async fn status(&self, id: u64) -> anyhow::Result<api::StatusResponse> {
        let mut client = self.client(id).await?;
        Ok(client
            .cluster
            .status(api::StatusRequest {})
            .await?
            .into_inner())
    }

    /// Scrapes one gauge or counter from node `id`'s `/metrics`.
    pub async fn metric(&self, id: u64, name: &str) -> anyhow::Result<f64> {
        let (_, body) = http_get(&self.node(id)?.http_addr, "/metrics").await?;
        for line in body.lines() {
            if let Some(value) = line
                .strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
            {
                return Ok(value.trim().parse()?);
            }
        }
        bail!("metric {name} not exported by node {id}")
    }

    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let Ok(node) = self.node(id) else {
            return String::new();
        };
        let text = std::fs::read_to_string(&node.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Keeps the cluster directory after drop (for a failed run's logs).
    pub fn keep(&mut self) -> PathBuf {
        if let Some(temp) = self.temp.take() {
            return temp.keep();
        }
        self.dir.clone()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for worker in self.workers.values_mut() {
            let _ = worker.kill();
            let _ = worker.wait();
        }
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                if node.paused {
                    let _ = signal(child.id(), "CONT");
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            let kept = self.keep();
            eprintln!("test failed; cluster files kept in {}", kept.display());
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            for id in ids {
                eprintln!("--- node {id} log (tail) ---\n{}", self.log_tail(id, 40));
            }
        }
    }
}

fn path_str(path: &Path) -> String {
    path.display().to_string()
}

/// Node and CLI processes must not inherit the caller's `FLOE_*` settings.
fn scrub_floe_env(command: &mut Command) {
    for (key, _) in std::env::vars() {
        if key.starts_with("FLOE_") && key != "FLOE_LOG" {
            command.env_remove(key);
        }
    }
}

fn signal(pid: u32, name: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()?;
    if !status.success() {
        bail!("kill -{name} {pid} failed");
    }
    Ok(())
}

/// A minimal HTTP/1.0 GET, enough for health and metrics on loopback.
/// Polls a run until it leaves Running and returns its record (JSON).
/// Reads that fail while the cluster is busy (a leader change, a slow
/// quorum) are retried, as a client would; a missing run or the deadline
/// is an error.
pub async fn finished_run(
    client: &mut FloeClient,
    run_id: &str,
    timeout: Duration,
) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let request = api::GetRunRequest {
            run_id: run_id.into(),
            consistency: 0,
        };
        match client.runs.get(request).await {
            Ok(reply) => {
                let run: serde_json::Value = serde_json::from_slice(&reply.into_inner().run)?;
                if run["status"] != "Running" {
                    return Ok(run);
                }
                if Instant::now() >= deadline {
                    bail!("run {run_id} still running after {timeout:?}: {run:#}");
                }
            }
            Err(status) if status.code() != tonic::Code::NotFound && Instant::now() < deadline => {
                tracing::debug!(run_id, ?status, "reading a run failed; retrying");
            }
            Err(status) => bail!("reading run {run_id}: {status:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A tool binary (a worker) next to the `floe` binary under test. The
/// workers live in floe-tools: `cargo test -p floe-node` alone does not
/// build them, so a missing one is named with the command that does.
pub fn tool_binary(floe: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let binary = floe.with_file_name(name);
    if !binary.is_file() {
        bail!(
            "{} not found next to the floe binary; build it with `cargo build -p floe-tools`",
            binary.display()
        );
    }
    Ok(binary)
}

pub async fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let socket: SocketAddr = addr.parse()?;
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(socket).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .context("HTTP request timed out")??;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .context("malformed HTTP response")?;
    Ok((code, body.to_string()))
}
