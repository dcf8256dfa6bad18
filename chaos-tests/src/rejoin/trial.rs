//! One rejoin trial: a follower stopped (SIGKILL or SIGTERM), kept down,
//! started again, waited for until it is ready and caught up, and what the
//! cluster's leadership did meanwhile.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::Serialize;

use crate::nemesis::inject::{find_leader, metric, with_target, SharedTarget};
use crate::targets::NodeId;
use crate::watch::{self, LeaderWatch};
use crate::workload::history::{Clock, History, Outcome};

/// How a trial's follower is stopped; trials alternate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Signal {
    Kill,
    Term,
}

#[derive(Clone, Debug, Serialize)]
pub struct Trial {
    pub index: usize,
    pub node: NodeId,
    pub signal: Signal,
    pub down_ms: u64,
    pub leader_before: Option<NodeId>,
    pub leader_after: Option<NodeId>,
    pub term_before: Option<u64>,
    pub term_after: Option<u64>,
    /// Distinct (term, leader) pairs seen after the incumbent, from the
    /// stop until the end of the settle time.
    pub leader_changes: usize,
    /// Writes invoked during the trial that ended fail or unknown.
    pub writes_failed: usize,
    /// Of those, the ones sent through the nodes that stayed up: the
    /// cluster's unavailability (the stopped node's own writer fails by
    /// design while it is down).
    pub writes_failed_elsewhere: usize,
    pub writes_ok: usize,
    /// From the start of the process until its readyz said ready with its
    /// applied index at the leader's commit index of the restart; `None`:
    /// not within the bound.
    pub time_to_ready_ms: Option<u64>,
}

/// What every trial shares.
pub struct Bench<'a> {
    pub target: &'a SharedTarget,
    pub clock: Clock,
    pub history: &'a History,
    pub watch: &'a LeaderWatch,
    pub down_ms: (u64, u64),
    pub ready_bound: Duration,
    pub settle: Duration,
}

async fn term_of(target: &SharedTarget, node: Option<NodeId>) -> Option<u64> {
    let addr = with_target(target, |target| target.http_addr(node?).ok())?;
    metric(&addr, "floe_raft_term")
        .await
        .map(|term| term as u64)
}

/// Polls `node`'s readiness until it is ready with everything up to
/// `commit_index` applied; the time that took, or `None` past `bound`.
async fn wait_caught_up(addr: &str, commit_index: u64, bound: Duration) -> Option<u64> {
    let started = Instant::now();
    while started.elapsed() < bound {
        if let Ok((200, body)) = floe_harness::http_get(addr, "/health/readyz").await {
            let readiness: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            if readiness["applied_index"]
                .as_u64()
                .is_some_and(|applied| applied >= commit_index)
            {
                return Some(started.elapsed().as_millis() as u64);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

pub async fn run(bench: &Bench<'_>, index: usize, rng: &mut StdRng) -> anyhow::Result<Trial> {
    let target = bench.target;
    let leader_before = find_leader(target, Duration::from_secs(15)).await;
    let term_before = term_of(target, leader_before).await;
    let Some(leader) = leader_before else {
        anyhow::bail!("trial {index}: no leader within 15 s")
    };
    let followers: Vec<NodeId> = with_target(target, |target| target.nodes())
        .into_iter()
        .filter(|id| *id != leader)
        .collect();
    let node = *followers
        .choose(rng)
        .ok_or_else(|| anyhow::anyhow!("trial {index}: no follower"))?;
    let signal = if index.is_multiple_of(2) {
        Signal::Kill
    } else {
        Signal::Term
    };
    let down_ms = rng.gen_range(bench.down_ms.0..=bench.down_ms.1.max(bench.down_ms.0));
    let (leader_addr, node_addr) = with_target(target, |target| {
        Ok::<_, anyhow::Error>((target.http_addr(leader)?, target.http_addr(node)?))
    })?;

    let from_us = bench.clock.now_us();
    match signal {
        Signal::Kill => with_target(target, |target| target.kill(node))?,
        // A stop slower than the target's bound is killed and reported as an error.
        Signal::Term => with_target(target, |target| target.stop(node))?,
    }
    tokio::time::sleep(Duration::from_millis(down_ms)).await;
    let commit_index = metric(&leader_addr, "floe_raft_commit_index")
        .await
        .unwrap_or(0.0) as u64;
    with_target(target, |target| target.start(node))?;
    let time_to_ready_ms = wait_caught_up(&node_addr, commit_index, bench.ready_bound).await;
    // Disruption shows after readiness too: a restarted follower's election
    // timer may fire before the leader's heartbeats reach it.
    tokio::time::sleep(bench.settle).await;
    let to_us = bench.clock.now_us();

    let leader_after = find_leader(target, Duration::from_secs(15)).await;
    let term_after = term_of(target, leader_after).await;
    let samples = bench.watch.samples();
    let writes: Vec<_> = bench
        .history
        .snapshot()
        .into_iter()
        .filter(|record| {
            record.op.is_write() && record.invoked_us >= from_us && record.invoked_us <= to_us
        })
        .collect();
    let writes_failed_elsewhere = writes
        .iter()
        .filter(|record| record.outcome != Outcome::Ok && record.node != node)
        .count();
    let writes_ok = writes
        .iter()
        .filter(|record| record.outcome == Outcome::Ok)
        .count();
    Ok(Trial {
        index,
        node,
        signal,
        down_ms,
        leader_before,
        leader_after,
        term_before,
        term_after,
        leader_changes: watch::leader_changes(&samples, from_us, to_us),
        writes_failed: writes.len() - writes_ok,
        writes_failed_elsewhere,
        writes_ok,
        time_to_ready_ms,
    })
}
