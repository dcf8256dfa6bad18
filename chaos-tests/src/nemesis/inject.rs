//! Injecting and healing one fault.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::Serialize;

use super::churn::{self, StormSlot};
use super::Nemesis;
use crate::targets::{NodeId, Target, TargetError, TargetResult};
use crate::workload::history::Clock;

pub type SharedTarget = Arc<Mutex<Box<dyn Target>>>;

/// What injecting and healing need.
pub struct FaultContext {
    pub target: SharedTarget,
    pub clock: Clock,
    /// The node whose data dir can be filled (set up with the cluster).
    pub disk_full_node: Option<NodeId>,
    /// The `rejoin-storm` running now, ended at its heal.
    pub storm: StormSlot,
}

/// How to undo a fault.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "undo", rename_all = "kebab-case")]
pub enum Undo {
    Start {
        nodes: Vec<NodeId>,
    },
    Resume {
        node: NodeId,
    },
    HealNetwork,
    /// Start the follower once the leader purged past its last entry.
    StartAfterPurge {
        node: NodeId,
        leader: NodeId,
        follower_last_index: u64,
    },
    ClockReset {
        node: NodeId,
    },
    /// End the kill/restart cycles and leave the node up.
    EndStorm {
        node: NodeId,
    },
    DiskFree {
        node: NodeId,
    },
    Nothing,
}

/// A fault that was injected; `healed_us` is set when it was undone.
#[derive(Clone, Debug, Serialize)]
pub struct ActiveFault {
    pub nemesis: Nemesis,
    pub nodes: Vec<NodeId>,
    pub description: String,
    pub started_us: u64,
    pub healed_us: Option<u64>,
    pub undo: Undo,
    /// What happened while healing (e.g. whether a snapshot was installed).
    pub notes: Vec<String>,
    /// Bounds the fault itself showed broken (e.g. a node slow to stop);
    /// reported by the `fault-bounds` checker.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<String>,
}

pub fn lock(target: &SharedTarget) -> MutexGuard<'_, Box<dyn Target>> {
    // A panic while holding the lock leaves the target usable for teardown.
    target
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs a synchronous target operation without stalling the runtime.
pub fn with_target<T>(target: &SharedTarget, operation: impl FnOnce(&mut dyn Target) -> T) -> T {
    tokio::task::block_in_place(|| {
        let mut guard = lock(target);
        operation(guard.as_mut())
    })
}

/// `host:port` of every node's HTTP server.
pub fn http_addrs(target: &SharedTarget) -> Vec<(NodeId, String)> {
    with_target(target, |target| {
        target
            .nodes()
            .into_iter()
            .filter_map(|id| target.http_addr(id).ok().map(|addr| (id, addr)))
            .collect()
    })
}

/// The leader as the up nodes see it: the first node reporting itself
/// leader within `limit`.
pub async fn find_leader(target: &SharedTarget, limit: Duration) -> Option<NodeId> {
    let deadline = Instant::now() + limit;
    loop {
        for (id, addr) in http_addrs(target) {
            if let Ok((_, body)) = floe_harness::http_get(&addr, "/health/readyz").await {
                let readiness: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                if readiness["role"] == "leader" && readiness["leader"].as_u64() == Some(id) {
                    return Some(id);
                }
            }
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every node answers ready (bounded); returns whether they did.
pub async fn wait_all_ready(target: &SharedTarget, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    for (_, addr) in http_addrs(target) {
        loop {
            if matches!(
                floe_harness::http_get(&addr, "/health/readyz").await,
                Ok((200, _))
            ) {
                break;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    true
}

/// One gauge from a node's `/metrics`.
pub async fn metric(addr: &str, name: &str) -> Option<f64> {
    let (_, body) = floe_harness::http_get(addr, "/metrics").await.ok()?;
    body.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn up_nodes(target: &SharedTarget) -> Vec<NodeId> {
    with_target(target, |target| {
        target
            .nodes()
            .into_iter()
            .filter(|id| target.is_up(*id))
            .collect()
    })
}

async fn leader_and_followers(
    ctx: &FaultContext,
    rng: &mut StdRng,
) -> TargetResult<(NodeId, Vec<NodeId>)> {
    let nodes = up_nodes(&ctx.target);
    let leader = match find_leader(&ctx.target, Duration::from_secs(10)).await {
        Some(leader) => leader,
        None => *nodes
            .choose(rng)
            .ok_or_else(|| TargetError::Failed(anyhow::anyhow!("no node is up")))?,
    };
    let followers = nodes.into_iter().filter(|id| *id != leader).collect();
    Ok((leader, followers))
}

fn pick(nodes: &[NodeId], rng: &mut StdRng) -> TargetResult<NodeId> {
    nodes
        .choose(rng)
        .copied()
        .ok_or_else(|| TargetError::Failed(anyhow::anyhow!("no node to pick")))
}

/// Injects `nemesis`. Long faults (rolling restart) run to completion here.
pub async fn inject(
    nemesis: Nemesis,
    ctx: &FaultContext,
    rng: &mut StdRng,
) -> TargetResult<ActiveFault> {
    let target = &ctx.target;
    let caps = with_target(target, |target| target.capabilities());
    let started_us = ctx.clock.now_us();
    let fault = |nodes: Vec<NodeId>, description: String, undo: Undo| ActiveFault {
        nemesis,
        nodes,
        description,
        started_us,
        healed_us: None,
        undo,
        notes: Vec::new(),
        violations: Vec::new(),
    };
    let kind = with_target(target, |target| target.kind());
    let unsupported = |what: &str| TargetError::Unsupported {
        target: kind,
        what: what.to_string(),
    };
    match nemesis {
        Nemesis::KillRandom => {
            let node = pick(&up_nodes(target), rng)?;
            with_target(target, |target| target.kill(node))?;
            Ok(fault(
                vec![node],
                format!("SIGKILL node {node}"),
                Undo::Start { nodes: vec![node] },
            ))
        }
        Nemesis::KillLeader => {
            let (leader, _) = leader_and_followers(ctx, rng).await?;
            with_target(target, |target| target.kill(leader))?;
            Ok(fault(
                vec![leader],
                format!("SIGKILL leader {leader}"),
                Undo::Start {
                    nodes: vec![leader],
                },
            ))
        }
        Nemesis::PauseLeader | Nemesis::PauseFollower => {
            if !caps.pause {
                return Err(unsupported("pause processes"));
            }
            let (leader, followers) = leader_and_followers(ctx, rng).await?;
            let node = if nemesis == Nemesis::PauseLeader {
                leader
            } else {
                pick(&followers, rng)?
            };
            with_target(target, |target| target.pause(node))?;
            let role = if node == leader { "leader" } else { "follower" };
            Ok(fault(
                vec![node],
                format!("SIGSTOP {role} {node}"),
                Undo::Resume { node },
            ))
        }
        Nemesis::PartitionLeader | Nemesis::PartitionFollower => {
            if !caps.isolate {
                return Err(unsupported("isolate nodes"));
            }
            let (leader, followers) = leader_and_followers(ctx, rng).await?;
            let node = if nemesis == Nemesis::PartitionLeader {
                leader
            } else {
                pick(&followers, rng)?
            };
            with_target(target, |target| target.isolate(node))?;
            let role = if node == leader { "leader" } else { "follower" };
            Ok(fault(
                vec![node],
                format!("{role} {node} cut off from its peers"),
                Undo::HealNetwork,
            ))
        }
        Nemesis::PartitionSplit => {
            let (leader, followers) = leader_and_followers(ctx, rng).await?;
            if caps.cut_links && !followers.is_empty() {
                let other = pick(&followers, rng)?;
                with_target(target, |target| target.cut_link(leader, other))?;
                let bridge: Vec<String> = followers
                    .iter()
                    .filter(|id| **id != other)
                    .map(|id| id.to_string())
                    .collect();
                let description = format!(
                    "link {leader}-{other} cut; node(s) {} bridge both sides",
                    bridge.join(",")
                );
                return Ok(fault(vec![leader, other], description, Undo::HealNetwork));
            }
            if !caps.isolate {
                return Err(unsupported("partition nodes"));
            }
            let node = pick(&up_nodes(target), rng)?;
            with_target(target, |target| target.isolate(node))?;
            Ok(fault(
                vec![node],
                format!("node {node} cut off, clients on both sides"),
                Undo::HealNetwork,
            ))
        }
        Nemesis::RejoinStorm => {
            let (_, followers) = leader_and_followers(ctx, rng).await?;
            let node = pick(&followers, rng)?;
            let storm = churn::start_storm(target.clone(), node, rng.gen());
            *ctx.storm
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(storm);
            Ok(fault(
                vec![node],
                format!("follower {node} killed and restarted repeatedly"),
                Undo::EndStorm { node },
            ))
        }
        Nemesis::IsolateLeaderPeers => {
            let (leader, _) = leader_and_followers(ctx, rng).await?;
            with_target(target, |target| target.isolate_peers(leader))?;
            Ok(fault(
                vec![leader],
                format!("leader {leader}'s node-to-node traffic dropped; clients still reach it"),
                Undo::HealNetwork,
            ))
        }
        Nemesis::SlowShutdown => {
            let (leader, followers) = leader_and_followers(ctx, rng).await?;
            let node = if rng.gen_bool(0.5) {
                leader
            } else {
                pick(&followers, rng)?
            };
            let role = if node == leader { "leader" } else { "follower" };
            let outcome = churn::slow_shutdown(target, &http_addrs(target), node, role).await;
            let mut active = fault(
                vec![node],
                format!("SIGTERM {role} {node}"),
                Undo::Start { nodes: vec![node] },
            );
            active.notes = outcome.notes;
            active.violations = outcome.violations;
            Ok(active)
        }
        Nemesis::PowerCut => {
            let nodes = up_nodes(target);
            with_target(target, |target| {
                // All at once: no node gets to notice the others going.
                let mut first_error = None;
                for node in &nodes {
                    if let Err(err) = target.kill(*node) {
                        first_error.get_or_insert(err);
                    }
                }
                first_error.map_or(Ok(()), Err)
            })?;
            Ok(fault(
                nodes.clone(),
                format!("power cut: nodes {nodes:?} killed at once"),
                Undo::Start { nodes },
            ))
        }
        Nemesis::RollingRestart => {
            let nodes = up_nodes(target);
            let mut notes = Vec::new();
            for node in &nodes {
                with_target(target, |target| target.stop(*node))?;
                with_target(target, |target| target.start(*node))?;
                if !wait_all_ready(target, Duration::from_secs(30)).await {
                    notes.push(format!("node {node} not ready within 30 s of its restart"));
                }
            }
            let mut active = fault(
                nodes.clone(),
                format!("rolling restart of nodes {nodes:?}"),
                Undo::Nothing,
            );
            active.notes = notes;
            Ok(active)
        }
        Nemesis::SnapshotCatchup => {
            if !caps.tunable {
                return Err(unsupported("tune snapshot thresholds"));
            }
            let (leader, followers) = leader_and_followers(ctx, rng).await?;
            let node = pick(&followers, rng)?;
            let addr = with_target(target, |target| target.http_addr(node))?;
            let follower_last_index = metric(&addr, "floe_raft_last_log_index")
                .await
                .unwrap_or(0.0) as u64;
            with_target(target, |target| target.kill(node))?;
            let description = format!(
                "follower {node} down at log index {follower_last_index} while the log is purged"
            );
            Ok(fault(
                vec![node],
                description,
                Undo::StartAfterPurge {
                    node,
                    leader,
                    follower_last_index,
                },
            ))
        }
        Nemesis::ClockSkew => {
            if !caps.clock_skew {
                return Err(unsupported(
                    "skew clocks (local only, with libfaketime: apt-get install faketime)",
                ));
            }
            let (leader, _) = leader_and_followers(ctx, rng).await?;
            // Tens of seconds: far beyond NTP drift, small enough that timers
            // set by a skewed leader still fire within the checker's bound.
            let magnitude = rng.gen_range(10..=25i64);
            let offset = if rng.gen_bool(0.5) {
                magnitude
            } else {
                -magnitude
            };
            with_target(target, |target| target.set_clock_offset(leader, offset))?;
            Ok(fault(
                vec![leader],
                format!("leader {leader}'s clock shifted by {offset:+} s"),
                Undo::ClockReset { node: leader },
            ))
        }
        Nemesis::DiskFull => {
            let Some(node) = ctx.disk_full_node.filter(|_| caps.disk_full) else {
                return Err(unsupported("fill disks"));
            };
            with_target(target, |target| target.set_disk_full(node, true))?;
            Ok(fault(
                vec![node],
                format!("node {node}'s disk filled"),
                Undo::DiskFree { node },
            ))
        }
    }
}

/// Undoes `fault`, recording what happened in its notes.
pub async fn heal(fault: &mut ActiveFault, ctx: &FaultContext) -> TargetResult<()> {
    let target = &ctx.target;
    match fault.undo.clone() {
        Undo::Start { nodes } => {
            for node in nodes {
                with_target(target, |target| target.start(node))?;
            }
        }
        Undo::Resume { node } => with_target(target, |target| target.resume(node))?,
        Undo::HealNetwork => with_target(target, |target| target.heal_network())?,
        Undo::StartAfterPurge {
            node,
            leader,
            follower_last_index,
        } => {
            let addr = with_target(target, |target| target.http_addr(leader))?;
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut purged = 0.0;
            while Instant::now() < deadline {
                purged = metric(&addr, "floe_raft_purged_index").await.unwrap_or(0.0);
                if purged as u64 > follower_last_index {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let exercised = purged as u64 > follower_last_index;
            fault.notes.push(if exercised {
                format!("leader {leader} purged its log to {purged} past follower {node}'s last index {follower_last_index}: catch-up needs a snapshot")
            } else {
                format!("leader {leader} purged only to {purged} (follower at {follower_last_index}): snapshot path NOT exercised")
            });
            with_target(target, |target| target.start(node))?;
            let follower_addr = with_target(target, |target| target.http_addr(node))?;
            if exercised && wait_all_ready(target, Duration::from_secs(30)).await {
                let snapshot = metric(&follower_addr, "floe_raft_snapshot_index")
                    .await
                    .unwrap_or(0.0);
                fault.notes.push(format!(
                    "follower {node} caught up; its snapshot index is {snapshot}"
                ));
            }
        }
        Undo::ClockReset { node } => {
            with_target(target, |target| target.set_clock_offset(node, 0))?
        }
        Undo::EndStorm { node } => {
            let notes = churn::end_storm(&ctx.storm, node).await;
            fault.notes.extend(notes);
            with_target(target, |target| target.start(node))?;
        }
        Undo::DiskFree { node } => {
            // The node must ride out a full disk by itself: stay up while it
            // is full and resume once it is freed, never restarted from here.
            let addr = with_target(target, |target| target.http_addr(node))?;
            let stayed_up = with_target(target, |target| target.is_up(node));
            if stayed_up {
                let readiness = match floe_harness::http_get(&addr, "/health/readyz").await {
                    Ok((code, body)) => format!(
                        "readyz {code}: {}",
                        body.chars().take(200).collect::<String>()
                    ),
                    Err(err) => format!("readyz unanswered: {err}"),
                };
                fault.notes.push(format!(
                    "node {node} stayed up while its disk was full ({readiness})"
                ));
            }
            with_target(target, |target| target.set_disk_full(node, false))?;
            if !stayed_up {
                fault
                    .notes
                    .push(format!("node {node} EXITED while its disk was full"));
                return Err(TargetError::Failed(anyhow::anyhow!(
                    "node {node} exited while its disk was full; it must stay up and resume by itself"
                )));
            }
            let freed = Instant::now();
            if !wait_all_ready(target, Duration::from_secs(30)).await {
                fault.notes.push(format!(
                    "node {node} NOT ready 30 s after its disk was freed"
                ));
                return Err(TargetError::Failed(anyhow::anyhow!(
                    "node {node} did not recover by itself within 30 s of its disk being freed"
                )));
            }
            let up = with_target(target, |target| target.is_up(node));
            fault.notes.push(format!(
                "node {node} recovered by itself {:.1} s after its disk was freed{}",
                freed.elapsed().as_secs_f64(),
                if up { "" } else { " (but its process is gone)" }
            ));
        }
        Undo::Nothing => {}
    }
    fault.healed_us = Some(ctx.clock.now_us());
    Ok(())
}
