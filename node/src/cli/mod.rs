//! The `floe` command line: data on stdout, messages on stderr; tables for
//! people and `--json` for scripts.

mod access;
mod models;
mod watch;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::api;
use crate::config::NodeConfig;
use floe_api::client::{ClientOptions, FloeClient, Repeat};

#[derive(Parser, Debug)]
#[command(
    name = "floe",
    version,
    about = "floe: a Raft-replicated workflow engine in one binary"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a node.
    Serve(ServeArgs),
    /// Create the cluster CA and node or client certificates (offline).
    #[command(subcommand)]
    Cert(CertCommand),
    /// Form, grow, shrink and inspect the cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// The replicated key-value store for settings and operator metadata.
    #[command(subcommand)]
    Kv(KvCommand),
    /// Versioned flow definitions (see docs/flows.md).
    #[command(subcommand)]
    Flow(FlowCommand),
    /// Runs of flows.
    #[command(subcommand)]
    Run(RunCommand),
    /// Large payloads that runs refer to as {"$blob": "sha256:…"}.
    #[command(subcommand)]
    Blob(BlobCommand),
    /// Cluster-wide concurrency limits per block type or per flow.
    #[command(subcommand)]
    Limit(LimitCommand),
    /// ONNX models: register, deploy warm replicas, status, direct inference.
    #[command(subcommand)]
    Model(models::ModelCommand),
    /// Who may do what: grant, revoke and list roles; whoami.
    #[command(subcommand)]
    Access(access::AccessCommand),
    /// API tokens for scripts and the console: create, list, revoke.
    #[command(subcommand)]
    Token(access::TokenCommand),
}

#[derive(Subcommand, Debug)]
pub enum LimitCommand {
    /// At most LIMIT tasks of this block type (or of this flow's runs) placed at once.
    Set {
        #[command(flatten)]
        client: ClientArgs,
        /// "block" or "flow".
        scope: String,
        name: String,
        limit: u32,
    },
    /// Remove a limit.
    Clear {
        #[command(flatten)]
        client: ClientArgs,
        scope: String,
        name: String,
    },
    /// Limits, and how many tasks each block type and flow has placed now.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum BlobCommand {
    /// Write a blob's bytes to stdout, or to a file.
    Get {
        #[command(flatten)]
        client: ClientArgs,
        /// "sha256:<hex>" as a run shows it, or the bare hex digest.
        address: String,
        /// Write here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TOML config file.
    #[arg(long, env = "FLOE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Override any config key, e.g. `--set raft.heartbeat_interval_ms=50` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    #[arg(long)]
    pub node_id: Option<u64>,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[arg(long)]
    pub raft_addr: Option<String>,
    #[arg(long)]
    pub api_addr: Option<String>,
    #[arg(long)]
    pub http_addr: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Create `ca.pem` and `ca-key.pem`; keep the key off the nodes.
    CreateCa {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "floe")]
        name: String,
    },
    /// Create `node.pem`, `node-key.pem` and a copy of `ca.pem` for one node.
    CreateNode {
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        node_id: u64,
        /// Extra host names or IP addresses the node is reached by (repeatable).
        #[arg(long = "san")]
        sans: Vec<String>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Create `client.pem`, `client-key.pem` and `ca.pem` for the CLI or a worker.
    CreateClient {
        #[arg(long)]
        ca_dir: PathBuf,
        /// The principal the certificate names.
        #[arg(long)]
        name: String,
        /// Confine the client to this namespace (adds floe://NAMESPACE/NAME).
        #[arg(long)]
        namespace: Option<String>,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Node API address(es), comma separated; the first that answers is used.
    #[arg(
        long,
        env = "FLOE_ENDPOINT",
        default_value = "127.0.0.1:7100",
        global = true
    )]
    pub endpoint: String,
    #[arg(long, env = "FLOE_CA", default_value = "certs/ca.pem", global = true)]
    pub ca: PathBuf,
    #[arg(
        long,
        env = "FLOE_CERT",
        default_value = "certs/client.pem",
        global = true
    )]
    pub cert: PathBuf,
    #[arg(
        long = "key",
        id = "client_key",
        env = "FLOE_KEY",
        default_value = "certs/client-key.pem",
        global = true
    )]
    pub key_file: PathBuf,
    /// An API token (`floe token create`), sent with every call; with one,
    /// no client certificate is needed.
    #[arg(long, env = "FLOE_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for an answer.
    #[arg(long, default_value_t = 10, global = true)]
    pub timeout: u64,
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Initialize a new single-member cluster on the endpoint's node.
    Init {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Add a running node (by id and QUIC address) to the cluster.
    Join {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        node_id: u64,
        /// The new node's QUIC address (`host:port`).
        #[arg(long)]
        raft_addr: String,
        /// Keep it a non-voting learner.
        #[arg(long)]
        learner: bool,
    },
    /// Remove a node for good; its id is never accepted again.
    Remove {
        #[command(flatten)]
        client: ClientArgs,
        node_id: u64,
    },
    /// Members, roles, leader, term, indexes and health.
    Status {
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum FlowCommand {
    /// Validate and store a definition (JSON file, `-` for stdin).
    Put {
        #[command(flatten)]
        client: ClientArgs,
        file: PathBuf,
    },
    /// Print a definition (the latest version unless --version).
    Get {
        #[command(flatten)]
        client: ClientArgs,
        name: String,
        #[arg(long)]
        version: Option<u64>,
    },
    /// Flow names and their latest versions.
    List {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long, default_value = "")]
        start_after: String,
    },
    /// Every version of one flow.
    Versions {
        #[command(flatten)]
        client: ClientArgs,
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum RunCommand {
    /// Start a run; prints its id.
    Start {
        #[command(flatten)]
        client: ClientArgs,
        flow: String,
        /// Pin a version (default: the latest).
        #[arg(long)]
        version: Option<u64>,
        /// The input as JSON, or @FILE.
        #[arg(long, default_value = "null")]
        input: String,
        #[arg(long, default_value = "")]
        correlation_id: String,
        /// A repeated key returns the run it started first.
        #[arg(long, default_value = "")]
        idempotency_key: String,
    },
    /// A run with each step's attempts, input, output and error.
    Get {
        #[command(flatten)]
        client: ClientArgs,
        run_id: String,
    },
    /// Runs, newest first.
    List {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long, default_value = "")]
        flow: String,
        /// running, completed, failed or cancelled.
        #[arg(long, default_value = "")]
        status: String,
        #[arg(long, default_value = "")]
        correlation_id: String,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long, default_value = "")]
        page_token: String,
    },
    Cancel {
        #[command(flatten)]
        client: ClientArgs,
        run_id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Retry a failed run from its failed step(s).
    Retry {
        #[command(flatten)]
        client: ClientArgs,
        run_id: String,
    },
    /// Deliver a signal to a waiting step.
    Signal {
        #[command(flatten)]
        client: ClientArgs,
        run_id: String,
        signal: String,
        /// JSON payload, or @FILE.
        #[arg(long, default_value = "null")]
        payload: String,
    },
    /// Stream what happens to the run (its history so far first) until it
    /// ends, then print it; `--json`: each update's events and run record.
    /// Exits 0 when the run completed, 4 when it failed or was cancelled,
    /// 3 when the stream was lost before the run ended, 1 on other errors.
    Watch {
        #[command(flatten)]
        client: ClientArgs,
        run_id: String,
        /// When the stream is lost, go on watching through another endpoint
        /// (up to 10 times), printing only events not printed yet.
        #[arg(long)]
        follow: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum KvCommand {
    Put {
        #[command(flatten)]
        client: ClientArgs,
        key: String,
        value: String,
    },
    Get {
        #[command(flatten)]
        client: ClientArgs,
        key: String,
        /// Read this node's applied state without confirming with a quorum (may be stale).
        #[arg(long)]
        local: bool,
    },
    /// Compare-and-set: replace only if the current value matches.
    Cas {
        #[command(flatten)]
        client: ClientArgs,
        key: String,
        /// The value the key must hold now; leave out to require that it is absent.
        #[arg(long)]
        expect: Option<String>,
        /// The new value; leave out to delete on success.
        #[arg(long)]
        new: Option<String>,
    },
    Delete {
        #[command(flatten)]
        client: ClientArgs,
        key: String,
    },
    List {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(default_value = "")]
        prefix: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long, default_value = "")]
        start_after: String,
        #[arg(long)]
        local: bool,
    },
}

/// Sends a request through `conn`, again on another node when `Repeat`
/// allows (see `failover.rs`); fails the command with the last status.
macro_rules! call {
    ($conn:expr, $repeat:ident, $service:ident . $method:ident ($request:expr)) => {{
        let request = $request;
        $conn
            .call(Repeat::$repeat, |mut client| {
                let request = request.clone();
                async move { client.$service.$method(request).await }
            })
            .await
            .map_err(status_error)?
    }};
}
pub(crate) use call;

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Cert(command) => cert(command),
        Command::Cluster(command) => cluster(command).await,
        Command::Kv(command) => kv(command).await,
        Command::Flow(command) => flow(command).await,
        Command::Run(command) => run_command(command).await,
        Command::Blob(command) => blob(command).await,
        Command::Limit(command) => limit(command).await,
        Command::Model(command) => models::model(command).await,
        Command::Access(command) => access::access(command).await,
        Command::Token(command) => access::token(command).await,
    }
}

async fn limit(command: LimitCommand) -> anyhow::Result<()> {
    match command {
        LimitCommand::Set {
            client,
            scope,
            name,
            limit,
        } => {
            let mut conn = connect(&client).await?;
            let request = api::SetLimitRequest {
                scope: scope.clone(),
                name: name.clone(),
                limit: Some(limit),
            };
            call!(conn, Write, runs.set_limit(request));
            eprintln!("{scope} {name}: at most {limit} tasks placed at once");
        }
        LimitCommand::Clear {
            client,
            scope,
            name,
        } => {
            let mut conn = connect(&client).await?;
            let request = api::SetLimitRequest {
                scope: scope.clone(),
                name: name.clone(),
                limit: None,
            };
            call!(conn, Write, runs.set_limit(request));
            eprintln!("{scope} {name}: no limit");
        }
        LimitCommand::List { client } => {
            let mut conn = connect(&client).await?;
            let reply = call!(
                conn,
                Read,
                runs.list_limits(api::ListLimitsRequest {
                    consistency: consistency(false)
                })
            );
            let limits = reply.limits;
            if client.json {
                let rows: Vec<_> = limits
                    .iter()
                    .map(|l| serde_json::json!({"scope": l.scope, "name": l.name, "limit": l.limit, "active": l.active}))
                    .collect();
                print_json(serde_json::Value::Array(rows));
            } else {
                let rows: Vec<Vec<String>> = limits
                    .iter()
                    .map(|l| {
                        let limit = l
                            .limit
                            .map_or_else(|| "-".to_string(), |limit| limit.to_string());
                        vec![l.scope.clone(), l.name.clone(), limit, l.active.to_string()]
                    })
                    .collect();
                print!("{}", table(&["SCOPE", "NAME", "LIMIT", "PLACED"], &rows));
            }
        }
    }
    Ok(())
}

async fn blob(command: BlobCommand) -> anyhow::Result<()> {
    match command {
        BlobCommand::Get {
            client,
            address,
            out,
        } => {
            let mut conn = connect(&client).await?;
            let reply = call!(conn, Read, blobs.get(api::GetBlobRequest { address }));
            let data = reply.data;
            match out {
                Some(path) => std::fs::write(&path, &data)
                    .map_err(|err| anyhow::anyhow!("writing {}: {err}", path.display()))?,
                None => std::io::Write::write_all(&mut std::io::stdout(), &data)?,
            }
        }
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut overrides = Vec::new();
    let flags = [
        ("node_id", args.node_id.map(|id| id.to_string())),
        (
            "data_dir",
            args.data_dir.map(|dir| dir.display().to_string()),
        ),
        ("raft_addr", args.raft_addr),
        ("api_addr", args.api_addr),
        ("http_addr", args.http_addr),
    ];
    for (key, value) in flags {
        if let Some(value) = value {
            overrides.push(format!("{key}={value}"));
        }
    }
    overrides.extend(args.overrides);
    let config = NodeConfig::load(args.config.as_deref(), std::env::vars(), &overrides)?;
    init_logging(&config.log_level);
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        wait_for_shutdown_signal().await;
        tracing::info!("shutdown signal received");
        on_signal.cancel();
    });
    crate::outage::serve(config, cancel).await
}

async fn wait_for_shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

pub fn init_logging(level: &str) {
    let filter = std::env::var("FLOE_LOG").unwrap_or_else(|_| level.to_string());
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .finish();
    // openraft's per-request failure lines repeat many times a second while a
    // node is down (see log_limit.rs).
    let _ = tracing_subscriber::util::SubscriberInitExt::try_init(
        tracing_subscriber::layer::SubscriberExt::with(subscriber, crate::log_limit::OpenraftNoise),
    );
}

fn cert(command: CertCommand) -> anyhow::Result<()> {
    match command {
        CertCommand::CreateCa { out, name } => {
            let paths = floe_raft::certs::create_ca(&out, &name)?;
            eprintln!(
                "created CA {} and key {} (keep the key off the nodes)",
                paths.cert.display(),
                paths.key.display()
            );
        }
        CertCommand::CreateNode {
            ca_dir,
            node_id,
            sans,
            out,
        } => {
            let paths = floe_raft::certs::create_node(&ca_dir, node_id, &sans, &out)?;
            eprintln!(
                "created node {node_id} certificate {} and key {}",
                paths.cert.display(),
                paths.key.display()
            );
        }
        CertCommand::CreateClient {
            ca_dir,
            name,
            namespace,
            out,
        } => {
            let paths =
                floe_raft::certs::create_client_in(&ca_dir, &name, namespace.as_deref(), &out)?;
            eprintln!(
                "created client {name:?} certificate {} and key {}",
                paths.cert.display(),
                paths.key.display()
            );
        }
    }
    Ok(())
}

/// `path`, or none (empty) when a token is given and no file is there.
fn certificate_or_none(path: &std::path::Path, has_token: bool) -> PathBuf {
    if has_token && !path.exists() {
        PathBuf::new()
    } else {
        path.to_path_buf()
    }
}

pub(crate) async fn connect(args: &ClientArgs) -> anyhow::Result<FloeClient> {
    let options = ClientOptions {
        endpoints: args
            .endpoint
            .split(',')
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect(),
        ca: args.ca.clone(),
        // A token stands in for a certificate the caller does not have.
        cert: certificate_or_none(&args.cert, args.token.is_some()),
        key: certificate_or_none(&args.key_file, args.token.is_some()),
        connect_timeout: Duration::from_secs(3),
        request_timeout: Duration::from_secs(args.timeout),
        token: args.token.clone(),
    };
    FloeClient::connect(&options).await
}

/// gRPC errors as one line naming the code and the server's message.
pub(crate) fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

pub(crate) fn print_json(value: serde_json::Value) {
    println!("{value}");
}

/// Left-aligned columns, two spaces apart.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    out.push_str(&line(headers.to_vec()));
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

async fn cluster(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Init { client } => {
            let mut conn = connect(&client).await?;
            let reply = call!(conn, Write, cluster.init(api::InitRequest {}));
            if client.json {
                print_json(json!({ "initialized": reply.node_id }));
            } else {
                eprintln!(
                    "cluster initialized with node {} as its first member",
                    reply.node_id
                );
            }
        }
        ClusterCommand::Join {
            client,
            node_id,
            raft_addr,
            learner,
        } => {
            let mut conn = connect(&client).await?;
            let request = api::JoinRequest {
                node_id,
                raft_addr,
                learner_only: learner,
            };
            let reply = call!(conn, Write, cluster.join(request));
            membership_out(
                client.json,
                &format!("node {node_id} joined"),
                &reply.voters,
                &reply.learners,
            );
        }
        ClusterCommand::Remove { client, node_id } => {
            let mut conn = connect(&client).await?;
            let reply = call!(conn, Write, cluster.remove(api::RemoveRequest { node_id }));
            membership_out(
                client.json,
                &format!("node {node_id} removed"),
                &reply.voters,
                &reply.learners,
            );
        }
        ClusterCommand::Status { client } => {
            let mut conn = connect(&client).await?;
            let status = call!(conn, Read, cluster.status(api::StatusRequest {}));
            print_status(&status, client.json);
        }
    }
    Ok(())
}

fn membership_out(as_json: bool, message: &str, voters: &[u64], learners: &[u64]) {
    if as_json {
        print_json(json!({ "voters": voters, "learners": learners }));
    } else {
        eprintln!("{message}");
        println!("voters: {voters:?}  learners: {learners:?}");
    }
}

fn print_status(status: &api::StatusResponse, as_json: bool) {
    if as_json {
        let nodes: Vec<_> = status
            .nodes
            .iter()
            .map(|n| {
                json!({
                    "node_id": n.node_id, "raft_addr": n.raft_addr, "api_addr": n.api_addr, "http_addr": n.http_addr,
                    "membership": n.membership, "role": n.role, "reachable": n.reachable, "term": n.term,
                    "last_log_index": n.last_log_index, "applied_index": n.applied_index,
                    "error": if n.error.is_empty() { None } else { Some(&n.error) },
                })
            })
            .collect();
        print_json(json!({
            "answered_by": status.answered_by,
            "leader": if status.has_leader { Some(status.leader_id) } else { None },
            "term": status.term, "commit_index": status.commit_index, "applied_index": status.applied_index,
            "cluster_fingerprint": status.cluster_fingerprint, "nodes": nodes,
        }));
        return;
    }
    let leader = if status.has_leader {
        status.leader_id.to_string()
    } else {
        "none".into()
    };
    println!(
        "leader: {leader}  term: {}  commit: {}  applied: {}  (answered by node {})",
        status.term, status.commit_index, status.applied_index, status.answered_by
    );
    let rows: Vec<Vec<String>> = status
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.node_id.to_string(),
                n.membership.clone(),
                n.role.clone(),
                if n.reachable {
                    "ok".into()
                } else {
                    format!("down ({})", n.error)
                },
                n.term.to_string(),
                n.last_log_index.to_string(),
                n.applied_index.to_string(),
                n.raft_addr.clone(),
                n.api_addr.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["NODE", "MEMBER", "ROLE", "HEALTH", "TERM", "LAST-LOG", "APPLIED", "RAFT", "API"],
            &rows
        )
    );
}

fn consistency(local: bool) -> i32 {
    let level = if local {
        api::ReadConsistency::Local
    } else {
        api::ReadConsistency::Linearizable
    };
    level as i32
}

async fn kv(command: KvCommand) -> anyhow::Result<()> {
    match command {
        KvCommand::Put { client, key, value } => {
            let mut conn = connect(&client).await?;
            let reply = call!(
                conn,
                Write,
                kv.put(api::PutRequest {
                    key: key.clone(),
                    value: value.into_bytes()
                })
            );
            let revision = reply.revision;
            if client.json {
                print_json(json!({ "key": key, "revision": revision }));
            } else {
                println!("{key} written at revision {revision}");
            }
        }
        KvCommand::Get { client, key, local } => {
            let mut conn = connect(&client).await?;
            let request = api::GetRequest {
                key: key.clone(),
                consistency: consistency(local),
            };
            let reply = call!(conn, Read, kv.get(request));
            if client.json {
                let value = reply
                    .found
                    .then(|| String::from_utf8_lossy(&reply.value).to_string());
                print_json(
                    json!({ "key": key, "found": reply.found, "value": value, "revision": reply.revision }),
                );
            } else if reply.found {
                println!("{}", String::from_utf8_lossy(&reply.value));
            } else {
                anyhow::bail!("key {key:?} not found");
            }
        }
        KvCommand::Cas {
            client,
            key,
            expect,
            new,
        } => {
            let mut conn = connect(&client).await?;
            let request = api::CasRequest {
                key: key.clone(),
                expected: expect.map(String::into_bytes),
                new_value: new.map(String::into_bytes),
            };
            let reply = call!(conn, Write, kv.cas(request));
            let current = reply
                .found
                .then(|| String::from_utf8_lossy(&reply.current).to_string());
            if client.json {
                print_json(
                    json!({ "key": key, "succeeded": reply.succeeded, "current": current, "revision": reply.revision }),
                );
            } else if reply.succeeded {
                println!("{key} swapped at revision {}", reply.revision);
            } else {
                anyhow::bail!(
                    "compare-and-set on {key:?} failed: current value is {}",
                    current
                        .map(|v| format!("{v:?}"))
                        .unwrap_or_else(|| "absent".into())
                );
            }
        }
        KvCommand::Delete { client, key } => {
            let mut conn = connect(&client).await?;
            let reply = call!(
                conn,
                Write,
                kv.delete(api::DeleteRequest { key: key.clone() })
            );
            if client.json {
                print_json(json!({ "key": key, "existed": reply.existed }));
            } else if reply.existed {
                println!("{key} deleted");
            } else {
                println!("{key} was not set");
            }
        }
        KvCommand::List {
            client,
            prefix,
            limit,
            start_after,
            local,
        } => {
            let mut conn = connect(&client).await?;
            let request = api::ListRequest {
                prefix,
                start_after,
                limit,
                consistency: consistency(local),
            };
            let reply = call!(conn, Read, kv.list(request));
            if client.json {
                let items: Vec<_> = reply
                    .items
                    .iter()
                    .map(|kv| json!({ "key": kv.key, "value": String::from_utf8_lossy(&kv.value), "revision": kv.revision }))
                    .collect();
                print_json(json!({ "items": items, "more": reply.more }));
            } else {
                let rows: Vec<Vec<String>> = reply
                    .items
                    .iter()
                    .map(|kv| {
                        vec![
                            kv.key.clone(),
                            kv.revision.to_string(),
                            String::from_utf8_lossy(&kv.value).to_string(),
                        ]
                    })
                    .collect();
                print!("{}", table(&["KEY", "REVISION", "VALUE"], &rows));
                if reply.more {
                    eprintln!(
                        "(more keys: pass --start-after {:?})",
                        reply.items.last().map(|kv| kv.key.as_str()).unwrap_or("")
                    );
                }
            }
        }
    }
    Ok(())
}

fn read_definition(file: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    if file == std::path::Path::new("-") {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)?;
        return Ok(bytes);
    }
    std::fs::read(file).map_err(|err| anyhow::anyhow!("flow file {}: {err}", file.display()))
}

fn format_ms(at_ms: u64) -> String {
    let seconds = at_ms / 1000;
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

async fn flow(command: FlowCommand) -> anyhow::Result<()> {
    match command {
        FlowCommand::Put { client, file } => {
            let definition = read_definition(&file)?;
            let mut conn = connect(&client).await?;
            let reply = call!(conn, Write, flows.put(api::PutFlowRequest { definition }));
            if client.json {
                print_json(
                    json!({ "name": reply.name, "version": reply.version, "created": reply.created, "hash": reply.hash }),
                );
            } else if reply.created {
                println!("flow {} version {} stored", reply.name, reply.version);
            } else {
                println!(
                    "flow {} unchanged: identical to version {}",
                    reply.name, reply.version
                );
            }
        }
        FlowCommand::Get {
            client,
            name,
            version,
        } => {
            let mut conn = connect(&client).await?;
            let request = api::GetFlowRequest {
                name,
                version: version.unwrap_or(0),
                consistency: consistency(false),
            };
            let reply = call!(conn, Read, flows.get(request));
            let definition: serde_json::Value = serde_json::from_slice(&reply.definition)?;
            if client.json {
                print_json(
                    json!({ "name": reply.name, "version": reply.version, "hash": reply.hash, "created_at_ms": reply.created_at_ms, "definition": definition }),
                );
            } else {
                eprintln!(
                    "flow {} version {} ({}), stored {}",
                    reply.name,
                    reply.version,
                    &reply.hash[..12.min(reply.hash.len())],
                    format_ms(reply.created_at_ms)
                );
                println!("{}", serde_json::to_string_pretty(&definition)?);
            }
        }
        FlowCommand::List {
            client,
            limit,
            start_after,
        } => {
            let mut conn = connect(&client).await?;
            let request = api::ListFlowsRequest {
                start_after,
                limit,
                consistency: consistency(false),
            };
            let reply = call!(conn, Read, flows.list(request));
            if client.json {
                let flows: Vec<_> = reply
                    .flows
                    .iter()
                    .map(|f| json!({ "name": f.name, "latest_version": f.latest_version }))
                    .collect();
                print_json(json!({ "flows": flows, "more": reply.more }));
            } else {
                let rows: Vec<Vec<String>> = reply
                    .flows
                    .iter()
                    .map(|f| vec![f.name.clone(), f.latest_version.to_string()])
                    .collect();
                print!("{}", table(&["FLOW", "LATEST"], &rows));
            }
        }
        FlowCommand::Versions { client, name } => {
            let mut conn = connect(&client).await?;
            let request = api::FlowVersionsRequest {
                name: name.clone(),
                consistency: consistency(false),
            };
            let reply = call!(conn, Read, flows.versions(request));
            if client.json {
                let versions: Vec<_> = reply
                    .versions
                    .iter()
                    .map(|v| json!({ "version": v.version, "hash": v.hash, "created_at_ms": v.created_at_ms }))
                    .collect();
                print_json(json!({ "name": name, "versions": versions }));
            } else {
                let rows: Vec<Vec<String>> = reply
                    .versions
                    .iter()
                    .map(|v| {
                        vec![
                            v.version.to_string(),
                            v.hash.clone(),
                            format_ms(v.created_at_ms),
                        ]
                    })
                    .collect();
                print!("{}", table(&["VERSION", "HASH", "STORED"], &rows));
            }
        }
    }
    Ok(())
}

/// JSON given inline or as `@FILE`, checked before it is sent.
fn json_argument(text: &str, what: &str) -> anyhow::Result<Vec<u8>> {
    let bytes = match text.strip_prefix('@') {
        Some(path) => {
            std::fs::read(path).map_err(|err| anyhow::anyhow!("{what} file {path}: {err}"))?
        }
        None => text.as_bytes().to_vec(),
    };
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .map_err(|err| anyhow::anyhow!("{what} is not JSON: {err}"))?;
    Ok(bytes)
}

pub(crate) fn print_run(run: &serde_json::Value) {
    let text = |field: &str| {
        run.get(field)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    println!(
        "run {}  flow {} v{}  status {}",
        text("run_id"),
        text("flow"),
        run.get("version").and_then(|v| v.as_u64()).unwrap_or(0),
        run.get("status")
            .map(|s| s.to_string().trim_matches('"').to_lowercase())
            .unwrap_or_default()
    );
    if let Some(error) = run.get("error").and_then(|e| e.as_str()) {
        println!("error: {error}");
    }
    let mut rows = Vec::new();
    if let Some(steps) = run.get("steps").and_then(|s| s.as_object()) {
        for (id, step) in steps {
            let attempts = step
                .get("attempts")
                .and_then(|a| a.as_array())
                .cloned()
                .unwrap_or_default();
            let last = attempts.last();
            let node = last
                .and_then(|a| a.get("node"))
                .and_then(|n| n.as_u64())
                .map(|n| n.to_string())
                .unwrap_or_default();
            let worker = last
                .and_then(|a| a.get("worker"))
                .and_then(|w| w.as_str())
                .unwrap_or("")
                .to_string();
            let status = step
                .get("status")
                .map(|s| s.to_string().trim_matches('"').to_lowercase())
                .unwrap_or_default();
            let started = step
                .get("started_at_ms")
                .and_then(|v| v.as_u64())
                .unwrap_or(0);
            let took = step
                .get("finished_at_ms")
                .and_then(|v| v.as_u64())
                .map(|finished| format!("{} ms", finished.saturating_sub(started)))
                .unwrap_or_default();
            let error = step
                .get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("")
                .to_string();
            rows.push(vec![
                id.clone(),
                status,
                attempts.len().to_string(),
                node,
                worker,
                took,
                error,
            ]);
        }
    }
    print!(
        "{}",
        table(
            &["STEP", "STATUS", "ATTEMPTS", "NODE", "WORKER", "TOOK", "ERROR"],
            &rows
        )
    );
    if let Some(output) = run.get("output").filter(|o| !o.is_null()) {
        println!("output: {output}");
    }
}

async fn run_command(command: RunCommand) -> anyhow::Result<()> {
    match command {
        RunCommand::Start {
            client,
            flow,
            version,
            input,
            correlation_id,
            idempotency_key,
        } => {
            let input = json_argument(&input, "run input")?;
            let mut conn = connect(&client).await?;
            let request = api::StartRunRequest {
                flow,
                version: version.unwrap_or(0),
                input,
                correlation_id,
                idempotency_key,
            };
            // A start with a key returns the first run on a repeat, so it may
            // go to another node whatever the failure.
            let repeat = if request.idempotency_key.is_empty() {
                Repeat::Write
            } else {
                Repeat::Idempotent
            };
            let reply = conn
                .call(repeat, |mut client| {
                    let request = request.clone();
                    async move { client.runs.start(request).await }
                })
                .await
                .map_err(status_error)?;
            if client.json {
                print_json(
                    json!({ "run_id": reply.run_id, "created": reply.created, "version": reply.version }),
                );
            } else {
                if !reply.created {
                    eprintln!("idempotency key already used: this is the run it started");
                }
                println!("{}", reply.run_id);
            }
        }
        RunCommand::Get { client, run_id } => {
            let mut conn = connect(&client).await?;
            let reply = call!(
                conn,
                Read,
                runs.get(api::GetRunRequest {
                    run_id,
                    consistency: consistency(false)
                })
            );
            // Any depth: a run stored before the nesting limit may hold deeper values.
            let run: serde_json::Value = floe_engine::limits::from_stored_text(&reply.run)?;
            if client.json {
                print_json(run);
            } else {
                print_run(&run);
            }
        }
        RunCommand::List {
            client,
            flow,
            status,
            correlation_id,
            limit,
            page_token,
        } => {
            let mut conn = connect(&client).await?;
            let request = api::ListRunsRequest {
                flow,
                status,
                correlation_id,
                limit,
                page_token,
                consistency: consistency(false),
                ..Default::default()
            };
            let reply = call!(conn, Read, runs.list(request));
            if client.json {
                let runs: Vec<_> = reply
                    .runs
                    .iter()
                    .map(|r| json!({ "run_id": r.run_id, "flow": r.flow, "version": r.version, "status": r.status,
                                     "created_at_ms": r.created_at_ms, "finished_at_ms": r.finished_at_ms,
                                     "correlation_id": r.correlation_id, "error": r.error }))
                    .collect();
                print_json(json!({ "runs": runs, "next_page_token": reply.next_page_token }));
            } else {
                let rows: Vec<Vec<String>> = reply
                    .runs
                    .iter()
                    .map(|r| {
                        vec![
                            r.run_id.clone(),
                            format!("{} v{}", r.flow, r.version),
                            r.status.clone(),
                            format_ms(r.created_at_ms),
                            r.error.clone(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(&["RUN", "FLOW", "STATUS", "CREATED", "ERROR"], &rows)
                );
                if !reply.next_page_token.is_empty() {
                    eprintln!("(more runs: pass --page-token {})", reply.next_page_token);
                }
            }
        }
        RunCommand::Cancel {
            client,
            run_id,
            reason,
        } => {
            let mut conn = connect(&client).await?;
            call!(
                conn,
                Write,
                runs.cancel(api::CancelRunRequest {
                    run_id: run_id.clone(),
                    reason
                })
            );
            eprintln!("run {run_id} cancelled");
        }
        RunCommand::Retry { client, run_id } => {
            let mut conn = connect(&client).await?;
            call!(
                conn,
                Write,
                runs.retry(api::RetryRunRequest {
                    run_id: run_id.clone()
                })
            );
            eprintln!("run {run_id} retried from its failed step");
        }
        RunCommand::Signal {
            client,
            run_id,
            signal,
            payload,
        } => {
            let payload = json_argument(&payload, "signal payload")?;
            let mut conn = connect(&client).await?;
            call!(
                conn,
                Write,
                runs.signal(api::SignalRunRequest {
                    run_id: run_id.clone(),
                    signal: signal.clone(),
                    payload
                })
            );
            eprintln!("signal {signal} delivered to run {run_id}");
        }
        RunCommand::Watch {
            client,
            run_id,
            follow,
        } => watch::watch(&client, run_id, follow).await?,
    }
    Ok(())
}

pub(crate) fn event_json(event: &api::RunHistoryEvent) -> serde_json::Value {
    let mut value = json!({ "at_ms": event.at_ms, "kind": event.kind });
    let optional = [
        ("step", (!event.step.is_empty()).then(|| json!(event.step))),
        ("item", (event.item >= 0).then(|| json!(event.item))),
        ("attempt", (event.attempt > 0).then(|| json!(event.attempt))),
        ("node", (event.node > 0).then(|| json!(event.node))),
        (
            "worker",
            (!event.worker.is_empty()).then(|| json!(event.worker)),
        ),
        (
            "error",
            (!event.error.is_empty()).then(|| json!(event.error)),
        ),
    ];
    for (field, present) in optional {
        if let Some(present) = present {
            value[field] = present;
        }
    }
    value
}

/// `17:02:03.456Z  step classify[2] attempt 1 started on node 2`.
pub(crate) fn event_line(event: &api::RunHistoryEvent) -> String {
    let stamp = format_ms(event.at_ms);
    let time = stamp
        .split(' ')
        .nth(1)
        .unwrap_or(&stamp)
        .trim_end_matches('Z');
    let mut line = format!("{time}.{:03}Z  ", event.at_ms % 1000);
    let (subject, what) = event
        .kind
        .split_once('_')
        .unwrap_or((event.kind.as_str(), ""));
    if subject == "run" {
        line += &format!("run {what}");
    } else {
        line += &format!("step {}", event.step);
        if event.item >= 0 {
            line += &format!("[{}]", event.item);
        }
        if subject == "attempt" {
            line += &format!(" attempt {}", event.attempt);
        }
        line += &format!(" {what}");
        if event.node > 0 {
            line += &format!(" on node {}", event.node);
        }
        if !event.worker.is_empty() {
            line += &format!(" by {}", event.worker);
        }
    }
    if !event.error.is_empty() {
        line += &format!(": {}", event.error);
    }
    line
}

/// Exit code and message for a failed command; errors go to stderr.
pub fn report(err: &anyhow::Error) -> i32 {
    if let Some(exit) = err.downcast_ref::<Exit>() {
        eprintln!("{}", exit.message);
        return exit.code;
    }
    eprintln!("error: {}", floe_api::client::error_chain(err));
    EXIT_ERROR
}

/// Any failed command.
pub const EXIT_ERROR: i32 = 1;
/// `run watch`: the stream ended before the run did.
pub const EXIT_STREAM_LOST: i32 = 3;
/// `run watch`: the run ended failed or cancelled.
pub const EXIT_RUN_NOT_COMPLETED: i32 = 4;

/// A command's outcome that is not a plain error: its own exit code and
/// the one line that explains it on stderr.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    pub code: i32,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn kv_put_takes_key_value_and_client_key_file() {
        let cli = Cli::try_parse_from(["floe", "kv", "put", "a/b", "v", "--key", "k.pem"]).unwrap();
        let Command::Kv(KvCommand::Put { client, key, value }) = cli.command else {
            panic!("parsed as another command")
        };
        assert_eq!((key.as_str(), value.as_str()), ("a/b", "v"));
        assert_eq!(client.key_file, PathBuf::from("k.pem"));
    }

    #[test]
    fn timestamps_print_as_utc() {
        assert_eq!(format_ms(0), "1970-01-01 00:00:00Z");
        assert_eq!(format_ms(1_795_219_200_000), "2026-11-21 00:00:00Z");
        assert_eq!(
            format_ms(951_782_400_000 + 3_723_000),
            "2000-02-29 01:02:03Z"
        );
    }

    #[test]
    fn watch_events_print_as_one_line_each() {
        let at_ms = 1_795_219_200_000 + 3_723_045;
        let attempt = api::RunHistoryEvent {
            at_ms,
            kind: "attempt_finished".into(),
            step: "pages".into(),
            item: 2,
            attempt: 1,
            node: 3,
            worker: "ocr-1".into(),
            error: "bad page".into(),
        };
        assert_eq!(
            event_line(&attempt),
            "01:02:03.045Z  step pages[2] attempt 1 finished on node 3 by ocr-1: bad page"
        );
        let run = api::RunHistoryEvent {
            at_ms,
            kind: "run_completed".into(),
            item: -1,
            ..Default::default()
        };
        assert_eq!(event_line(&run), "01:02:03.045Z  run completed");
        assert_eq!(
            event_json(&run),
            json!({"at_ms": at_ms, "kind": "run_completed"})
        );
        assert_eq!(event_json(&attempt)["worker"], "ocr-1");
    }

    #[test]
    fn table_pads_columns() {
        let out = table(&["A", "LONGER"], &[vec!["wide-cell".into(), "x".into()]]);
        assert_eq!(out, "A          LONGER\nwide-cell  x\n");
    }
}
