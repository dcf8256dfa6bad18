//! Process churn: a follower killed and restarted again and again for the
//! whole fault window (`rejoin-storm`), and a node stopped with SIGTERM
//! whose time to exit and effect on the term are measured (`slow-shutdown`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use super::inject::{metric, with_target, SharedTarget};
use crate::targets::NodeId;

/// Restart cycles of one storm at most, whatever the window (a cycle is
/// at least 2 s, so this covers windows of well over a minute).
const MAX_CYCLES: usize = 50;
/// A node that takes longer than this to exit after SIGTERM fails the
/// scenario: an operator's `systemctl stop` would have to wait that long.
pub const SHUTDOWN_BOUND: Duration = Duration::from_secs(10);

/// A storm in progress; ended by `end_storm` at the heal.
pub struct Storm {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<StormLog>,
}

/// The storm running in a scenario, if any (at most one fault at a time).
pub type StormSlot = Mutex<Option<Storm>>;

#[derive(Default)]
struct StormLog {
    cycles: usize,
    errors: Vec<String>,
}

/// Waits `duration` unless `stop` fires first; returns whether it fired.
async fn wait_or_stop(stop: &CancellationToken, duration: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(duration) => false,
    }
}

/// Starts killing and restarting `node`: down 1–3 s, up 1–3 s, until
/// `end_storm` (or `MAX_CYCLES`). The node is always started again before
/// the task ends, so the heal finds it up.
pub fn start_storm(target: SharedTarget, node: NodeId, seed: u64) -> Storm {
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut log = StormLog::default();
        for _ in 0..MAX_CYCLES {
            if token.is_cancelled() {
                break;
            }
            if let Err(err) = with_target(&target, |target| target.kill(node)) {
                log.errors.push(format!("kill: {err}"));
            }
            let stopped_early =
                wait_or_stop(&token, Duration::from_millis(rng.gen_range(1_000..=3_000))).await;
            if let Err(err) = with_target(&target, |target| target.start(node)) {
                log.errors.push(format!("start: {err}"));
            }
            log.cycles += 1;
            if stopped_early
                || wait_or_stop(&token, Duration::from_millis(rng.gen_range(1_000..=3_000))).await
            {
                break;
            }
        }
        log
    });
    Storm { stop, task }
}

/// Ends the storm (if one runs) and says what it did.
pub async fn end_storm(slot: &StormSlot, node: NodeId) -> Vec<String> {
    let storm = slot
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take();
    let Some(storm) = storm else {
        return vec![format!("no storm was running for node {node}")];
    };
    storm.stop.cancel();
    // A cycle in progress finishes its start (one target call): bounded.
    let log = match tokio::time::timeout(Duration::from_secs(15), storm.task).await {
        Ok(Ok(log)) => log,
        Ok(Err(err)) => StormLog {
            cycles: 0,
            errors: vec![format!("storm task failed: {err}")],
        },
        Err(_) => StormLog {
            cycles: 0,
            errors: vec!["storm task did not end within 15 s".into()],
        },
    };
    let mut notes = vec![format!(
        "follower {node} SIGKILLed and restarted {} time(s)",
        log.cycles
    )];
    notes.extend(log.errors.into_iter().take(5));
    notes
}

/// What stopping a node with SIGTERM showed.
pub struct ShutdownOutcome {
    pub notes: Vec<String>,
    pub violations: Vec<String>,
}

async fn highest_term(addrs: &[(NodeId, String)], except: Option<NodeId>) -> Option<u64> {
    let mut highest = None;
    for (id, addr) in addrs {
        if Some(*id) == except {
            continue;
        }
        if let Some(term) = metric(addr, "floe_raft_term").await {
            highest = highest.max(Some(term as u64));
        }
    }
    highest
}

/// SIGTERMs `node` and waits for it to exit (the target kills it after
/// `SHUTDOWN_BOUND`), polling its own term meanwhile; then reads the others'
/// term once an election it caused would have happened.
pub async fn slow_shutdown(
    target: &SharedTarget,
    addrs: &[(NodeId, String)],
    node: NodeId,
    role: &str,
) -> ShutdownOutcome {
    let own_addr = addrs
        .iter()
        .find(|(id, _)| *id == node)
        .map(|(_, addr)| addr.clone())
        .unwrap_or_default();
    let term_before = highest_term(addrs, None).await;
    let started = Instant::now();
    let stopping = {
        let target = target.clone();
        tokio::spawn(async move { with_target(&target, |target| target.stop(node)) })
    };
    // The node's own term while it stops, for as long as it still answers.
    let mut own_terms = Vec::new();
    while !stopping.is_finished() && started.elapsed() < SHUTDOWN_BOUND + Duration::from_secs(5) {
        if let Some(term) = metric(&own_addr, "floe_raft_term").await {
            own_terms.push(term as u64);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stopped = stopping.await;
    let exit_ms = started.elapsed().as_millis() as u64;
    // Time for the election a campaign (or the leader's departure) causes.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let term_after = highest_term(addrs, Some(node)).await;
    let show = |term: Option<u64>| {
        term.map(|term| term.to_string())
            .unwrap_or_else(|| "?".into())
    };
    let mut outcome = ShutdownOutcome {
        notes: Vec::new(),
        violations: Vec::new(),
    };
    outcome.notes.push(format!(
        "{role} {node} exited {exit_ms} ms after SIGTERM; term {} before, {} after (others)",
        show(term_before),
        show(term_after)
    ));
    if let (Some(first), Some(last)) = (own_terms.first(), own_terms.iter().max()) {
        if last > first {
            outcome.notes.push(format!(
                "node {node}'s own term rose from {first} to {last} while it was stopping"
            ));
        }
    }
    if role == "follower" && term_after > term_before {
        outcome.notes.push(format!(
            "the term rose while follower {node} stopped: someone campaigned"
        ));
    }
    match stopped {
        Ok(Ok(())) if exit_ms <= SHUTDOWN_BOUND.as_millis() as u64 => {}
        Ok(Ok(())) => outcome.violations.push(format!(
            "node {node} took {exit_ms} ms to exit after SIGTERM (bound {SHUTDOWN_BOUND:?})"
        )),
        Ok(Err(err)) => outcome
            .violations
            .push(format!("stopping node {node}: {err}")),
        Err(err) => outcome
            .violations
            .push(format!("stopping node {node}: {err}")),
    }
    outcome
}
