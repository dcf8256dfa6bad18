//! `floe-chaos rejoin`: how a three-node cluster under light write load
//! takes a follower leaving and coming back, measured over many trials.
//! A restarted follower must catch up without costing the cluster its
//! leader; each trial records whether it did (docs/chaos.md).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio_util::sync::CancellationToken;

use crate::nemesis::inject::{find_leader, http_addrs, wait_all_ready, with_target, SharedTarget};
use crate::targets::local::LocalTarget;
use crate::targets::ClusterSpec;
use crate::watch::LeaderWatch;
use crate::workload::history::{Clock, History};

mod load;
pub mod table;
pub mod trial;

pub use trial::Trial;

#[derive(Clone, Debug)]
pub struct RejoinOptions {
    /// The floe binary.
    pub binary: PathBuf,
    pub trials: usize,
    /// How long the follower stays down, drawn from this range (ms).
    pub down_ms: (u64, u64),
    pub seed: u64,
    /// How long a restarted node has to become ready and caught up.
    pub ready_bound: Duration,
    /// Watched after readiness, before the trial ends.
    pub settle: Duration,
    /// Markdown table here, the trials as JSON next to it (`.json`).
    pub out: PathBuf,
}

/// Runs every trial on one fresh cluster; returns them (also written to
/// `out`). A trial that cannot run (no leader) ends the measurement.
pub async fn run(options: &RejoinOptions) -> anyhow::Result<Vec<Trial>> {
    let work = tempfile::Builder::new().prefix("floe-rejoin-").tempdir()?;
    let spec = ClusterSpec {
        nodes: 3,
        dir: work.path().join("cluster"),
        ..ClusterSpec::default()
    };
    let cluster = LocalTarget::start(options.binary.clone(), &spec)
        .await
        .context("starting the cluster")?;
    let target: SharedTarget = Arc::new(Mutex::new(Box::new(cluster)));
    let outcome = measure(options, &target).await;
    with_target(&target, |target| target.teardown());
    if outcome.is_err() {
        // Node logs are what explains a failed measurement.
        let kept = work.keep();
        eprintln!("[floe-chaos] cluster files kept in {}", kept.display());
    }
    let trials = outcome?;
    let header = format!(
        "rejoin: {} trials, down {}–{} ms, seed {}, settle {} ms",
        trials.len(),
        options.down_ms.0,
        options.down_ms.1,
        options.seed,
        options.settle.as_millis()
    );
    let text = table::markdown(&trials, &header);
    std::fs::write(&options.out, &text)
        .with_context(|| format!("writing {}", options.out.display()))?;
    std::fs::write(
        options.out.with_extension("json"),
        serde_json::to_vec_pretty(&trials)?,
    )?;
    println!("{text}");
    Ok(trials)
}

async fn measure(options: &RejoinOptions, target: &SharedTarget) -> anyhow::Result<Vec<Trial>> {
    anyhow::ensure!(
        find_leader(target, Duration::from_secs(30)).await.is_some(),
        "no leader within 30 s of the start"
    );
    let clock = Clock::new();
    let history = History::default();
    let stop = CancellationToken::new();
    // Stops the writers on every return.
    let _stop_guard = stop.clone().drop_guard();
    let mut writers = load::start(target, clock, &history, &stop)?;
    // Bounded: every trial's longest possible run, plus the start.
    let per_trial = Duration::from_millis(options.down_ms.1)
        + options.ready_bound
        + options.settle
        + Duration::from_secs(60);
    let limit =
        per_trial * u32::try_from(options.trials).unwrap_or(u32::MAX) + Duration::from_secs(60);
    let watch = LeaderWatch::start(http_addrs(target), clock, Duration::from_millis(100), limit);
    let mut rng = StdRng::seed_from_u64(options.seed);
    let mut trials = Vec::new();
    let bench = trial::Bench {
        target,
        clock,
        history: &history,
        watch: &watch,
        down_ms: options.down_ms,
        ready_bound: options.ready_bound,
        settle: options.settle,
    };
    // Steady load first, so the first trial starts from a working cluster.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for index in 1..=options.trials {
        let trial = trial::run(&bench, index, &mut rng).await?;
        eprintln!(
            "[floe-chaos] trial {index}: node {} {:?} down {} ms, {} leader change(s), ready {:?} ms",
            trial.node, trial.signal, trial.down_ms, trial.leader_changes, trial.time_to_ready_ms
        );
        trials.push(trial);
        if !wait_all_ready(target, options.ready_bound).await {
            eprintln!("[floe-chaos] not every node ready after trial {index}");
        }
    }
    stop.cancel();
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        while writers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        writers.abort_all();
    }
    watch.stop().await;
    Ok(trials)
}
