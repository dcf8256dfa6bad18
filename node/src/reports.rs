//! What nodes report about themselves, and the leader's view of those
//! reports: each node's slots, load and model replicas, sent a few times a
//! second over QUIC (not through the Raft log). The scheduler places tasks
//! from them and the model service places replicas and answers status.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use floe_state::models::ReplicaRecord;
use floe_state::NodeId;
use serde::{Deserialize, Serialize};

use crate::clock::Clock;

/// A node silent this long loses its tasks.
pub const NODE_LEASE: Duration = Duration::from_secs(3);

/// One replica of one deployed model version.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReplicaId {
    pub model: String,
    pub version: u64,
    pub replica: u32,
}

impl ReplicaId {
    pub fn of(record: &ReplicaRecord) -> ReplicaId {
        ReplicaId {
            model: record.model.clone(),
            version: record.version,
            replica: record.replica,
        }
    }
}

impl std::fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}#{}", self.model, self.version, self.replica)
    }
}

/// A replica as its node reports it to the leader.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplicaReport {
    pub id: ReplicaId,
    /// `loading`, `warm` or `failed`.
    pub state: String,
    /// Why it failed, when it did.
    pub detail: String,
    pub memory_bytes: u64,
    pub queue_depth: u32,
    pub queue_capacity: u32,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub completed: u64,
    /// Wall clock of its last request (its load, when never used).
    pub last_used_ms: u64,
}

/// What a node tells the leader about itself.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    pub node_id: NodeId,
    /// Free worker slots per placement key (a block, or a block with worker
    /// labels), net of tasks placed and not yet pushed.
    pub free_slots: BTreeMap<String, u32>,
    /// All worker and model replica slots per placement key, busy or not:
    /// what the node offers to placement inside apply.
    pub capacity: BTreeMap<String, u32>,
    pub running_tasks: u32,
    /// 1-minute load average divided by cores.
    pub cpu_load: f32,
    pub memory_used_ratio: f32,
    /// Memory model replicas may take here (`inference.memory_budget_bytes`).
    pub model_memory_budget: u64,
    /// This node's model replicas and their state.
    pub replicas: Vec<ReplicaReport>,
    /// GPUs offered to replicas.
    pub gpus: Vec<floe_inference::GpuDevice>,
    /// Model versions asked for here with no warm replica anywhere.
    pub model_demand: Vec<(String, u64)>,
}

/// The leader's view of the nodes' reports.
pub struct Reports {
    /// Ages reports and leadership.
    clock: Clock,
    latest: Mutex<BTreeMap<NodeId, (Instant, NodeReport)>>,
    /// When this node last became leader; a node never heard from since
    /// then counts as silent once a lease has passed.
    leader_since: Mutex<Option<Instant>>,
}

impl Reports {
    pub fn new(clock: Clock) -> Reports {
        Reports {
            clock,
            latest: Mutex::new(BTreeMap::new()),
            leader_since: Mutex::new(None),
        }
    }

    pub fn record(&self, report: NodeReport) {
        if let Ok(mut latest) = self.latest.lock() {
            latest.insert(report.node_id, (self.clock.now(), report));
        }
    }

    /// Every fresh report's replicas, for model status.
    pub fn replica_reports(&self) -> Vec<(NodeId, Vec<ReplicaReport>)> {
        self.fresh()
            .into_iter()
            .map(|(id, report)| (id, report.replicas))
            .collect()
    }

    pub(crate) fn fresh(&self) -> BTreeMap<NodeId, NodeReport> {
        let Ok(latest) = self.latest.lock() else {
            return BTreeMap::new();
        };
        latest
            .iter()
            .filter(|(_, (at, _))| self.clock.since(*at) < NODE_LEASE)
            .map(|(id, (_, report))| (*id, report.clone()))
            .collect()
    }

    pub(crate) fn silent_nodes(&self, members: &[NodeId]) -> Vec<NodeId> {
        let leading_long_enough = self
            .leader_since
            .lock()
            .ok()
            .and_then(|since| *since)
            .is_some_and(|since| self.clock.since(since) >= NODE_LEASE);
        if !leading_long_enough {
            return Vec::new();
        }
        let Ok(latest) = self.latest.lock() else {
            return Vec::new();
        };
        members
            .iter()
            .copied()
            .filter(|id| {
                latest
                    .get(id)
                    .is_none_or(|(at, _)| self.clock.since(*at) >= NODE_LEASE)
            })
            .collect()
    }

    pub(crate) fn note_leadership(&self, leading: bool) {
        if let Ok(mut since) = self.leader_since.lock() {
            match (leading, since.is_some()) {
                (true, false) => *since = Some(self.clock.now()),
                (false, true) => *since = None,
                _ => {}
            }
        }
    }
}

pub(crate) fn load_score(report: &NodeReport) -> f32 {
    // Labelled keys repeat their block's slots; count each slot once.
    let free: u32 = report
        .free_slots
        .iter()
        .filter(|(key, _)| !key.contains('['))
        .map(|(_, free)| free)
        .sum();
    let busy = report.running_tasks as f32 / (report.running_tasks + free).max(1) as f32;
    busy + report.cpu_load + report.memory_used_ratio
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(node_id: NodeId) -> NodeReport {
        NodeReport {
            node_id,
            ..NodeReport::default()
        }
    }

    #[test]
    fn reports_age_out_and_silent_nodes_count_after_a_lease_of_leadership() {
        let manual = crate::clock::ManualClock::new(0);
        let reports = Reports::new(manual.clock());
        reports.note_leadership(true);
        reports.record(report(1));
        // A new leader waits a lease before calling anyone silent.
        assert!(reports.silent_nodes(&[1, 2]).is_empty());
        manual.advance(NODE_LEASE - Duration::from_millis(1));
        reports.record(report(2));
        assert!(reports.silent_nodes(&[1, 2]).is_empty());
        manual.advance(Duration::from_millis(1));
        assert_eq!(reports.silent_nodes(&[1, 2]), vec![1]);
        assert_eq!(reports.fresh().keys().copied().collect::<Vec<_>>(), vec![2]);
        // Losing leadership resets the wait.
        reports.note_leadership(false);
        reports.note_leadership(true);
        assert!(reports.silent_nodes(&[1, 2]).is_empty());
    }
}
