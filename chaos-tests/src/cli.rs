//! The command line: `floe-chaos [run options]` and `floe-chaos worker …`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::nemesis::Selection;
use crate::workload::WorkloadKind;

#[derive(Parser, Debug)]
#[command(
    name = "floe-chaos",
    about = "Chaos tests for floe clusters: faults, workloads, checkers",
    version
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the workflow workload's blocks (started by floe-chaos itself).
    #[command(hide = true)]
    Worker(WorkerArgs),
    /// Measure follower restarts: per trial, stop a follower, restart it,
    /// and record leader changes, failed writes and its time to ready.
    Rejoin(RejoinArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TargetKind {
    /// Nodes as local processes (needs root for partitions and disk-full).
    Local,
    /// The three-node container appliance from deploy/ (docker).
    Containers,
    /// An existing cluster described by --cluster-file.
    External,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[arg(long, value_enum, default_value = "local")]
    pub target: TargetKind,
    /// A nemesis name, `all` (each once), `random` (a seeded schedule) or `none`.
    #[arg(long, default_value = "all", value_parser = Selection::parse)]
    pub nemesis: Selection,
    #[arg(long, value_enum, default_value = "both")]
    pub workload: WorkloadKind,
    /// Fault window per nemesis; for `random`, the length of the schedule.
    #[arg(long, default_value_t = 3)]
    pub seconds: u64,
    /// Load before the first fault, in seconds.
    #[arg(long, default_value_t = 3)]
    pub steady_seconds: u64,
    /// Load after the last heal, in seconds.
    #[arg(long, default_value_t = 3)]
    pub recovery_seconds: u64,
    /// Seed for every random choice; printed so a run can be replayed.
    /// Default: drawn from the clock.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Output directory for the report, timelines, histories and node logs.
    #[arg(long, default_value = "chaos-out")]
    pub out: PathBuf,
    /// The floe binary (local target; the container image is built from it
    /// when missing). Default: `floe` next to this program.
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// The repository's deploy/ directory (container target).
    #[arg(long, default_value = "deploy")]
    pub deploy_dir: PathBuf,
    /// Rebuild the floe:local image from --binary even if it exists.
    #[arg(long)]
    pub rebuild_image: bool,
    /// TOML file describing an existing cluster (external target).
    #[arg(long)]
    pub cluster_file: Option<PathBuf>,
    /// Register clients (each pinned to one node).
    #[arg(long, default_value_t = 6)]
    pub clients: usize,
}

#[derive(Args, Debug)]
pub struct RejoinArgs {
    #[arg(long, default_value_t = 50)]
    pub trials: usize,
    /// Shortest time a follower stays down, ms.
    #[arg(long, default_value_t = 1_000)]
    pub down_min_ms: u64,
    /// Longest time a follower stays down, ms.
    #[arg(long, default_value_t = 10_000)]
    pub down_max_ms: u64,
    /// Seed for the choice of follower and down time. Default: from the clock.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Time watched after the restarted node is ready, ms.
    #[arg(long, default_value_t = 1_000)]
    pub settle_ms: u64,
    /// Time a restarted node has to become ready and caught up, s.
    #[arg(long, default_value_t = 60)]
    pub ready_timeout_seconds: u64,
    /// Exit 1 when the trials saw more leader changes than this in all.
    #[arg(long)]
    pub max_leader_changes: Option<usize>,
    /// The Markdown table; the trials as JSON go next to it (`.json`).
    #[arg(long, default_value = "rejoin.md")]
    pub out: PathBuf,
    /// The floe binary. Default: `floe` next to this program.
    #[arg(long)]
    pub binary: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct WorkerArgs {
    #[arg(long)]
    pub endpoint: String,
    #[arg(long)]
    pub ca: PathBuf,
    #[arg(long)]
    pub cert: PathBuf,
    #[arg(long)]
    pub key: PathBuf,
    #[arg(long)]
    pub id: String,
    #[arg(long)]
    pub record: PathBuf,
    #[arg(long, default_value_t = 4)]
    pub concurrency: u32,
    /// Exit after this many seconds whatever happens.
    #[arg(long, default_value_t = 3600)]
    pub max_seconds: u64,
}

impl WorkerArgs {
    pub fn into_options(self) -> crate::workload::worker::WorkerArgs {
        crate::workload::worker::WorkerArgs {
            client: floe_api::client::ClientOptions {
                endpoints: self
                    .endpoint
                    .split(',')
                    .map(|endpoint| endpoint.trim().to_string())
                    .collect(),
                ca: self.ca,
                cert: self.cert,
                key: self.key,
                connect_timeout: Duration::from_secs(1),
                // The task stream lives as long as the worker.
                request_timeout: Duration::ZERO,
                token: None,
            },
            worker_id: self.id,
            record: self.record,
            concurrency: self.concurrency,
            max_lifetime: Duration::from_secs(self.max_seconds),
        }
    }
}
