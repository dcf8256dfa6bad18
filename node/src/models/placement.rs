//! The leader's placement of model replicas.
//!
//! Every half second the leader compares deployments with replica records
//! and the nodes' reports, and proposes one `ChangeReplicas` command:
//!
//! - replicas on a node that stopped reporting are taken off it (and placed
//!   again in the same pass, elsewhere);
//! - a missing replica goes to a node with the memory (the measured
//!   footprint of a warm replica of the same version, else an estimate from
//!   the file size) and the GPU share free, preferring nodes without a
//!   replica of the same deployment, then the least loaded;
//! - when no node has the memory, idle replicas of other deployments
//!   (unused for `inference.idle_evict_ms`) are evicted, least recently
//!   used first, on the node that needs the fewest evictions;
//! - an evicted replica is placed again only on demand: ready inference
//!   tasks or direct requests for its model version.
//!
//! The state machine re-checks the GPU arithmetic; this only decides.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use floe_state::models::{
    Deployment, GpuShare, ReplicaChange, ReplicaRecord, GPU_MILLI_PER_DEVICE,
};
use floe_state::{Command, NodeId};

use crate::models::ModelService;
use crate::reports::{load_score, NodeReport, ReplicaId};

pub const PLACE_EVERY: Duration = Duration::from_millis(500);

/// Footprint assumed before a replica of a version has been measured:
/// sessions hold the weights plus ONNX Runtime's arenas and graph copies.
pub fn estimated_footprint(model_bytes: u64) -> u64 {
    model_bytes.saturating_mul(2) + RUNTIME_OVERHEAD
}

/// Memory a session takes beyond its weights at the least.
const RUNTIME_OVERHEAD: u64 = 16 * 1024 * 1024;

/// What placement decides from.
pub struct PlanInput<'a> {
    pub deployments: &'a [Deployment],
    pub replicas: &'a [ReplicaRecord],
    /// Artifact size per model version.
    pub model_sizes: &'a BTreeMap<(String, u64), u64>,
    /// Fresh reports, by node.
    pub reports: &'a BTreeMap<NodeId, NodeReport>,
    /// Nodes whose replicas must move (silent past the lease, or gone).
    pub lost: &'a BTreeSet<NodeId>,
    /// Model versions with work waiting: evicted replicas come back for them.
    pub wanted: &'a BTreeSet<(String, u64)>,
    pub now_ms: u64,
    pub idle_evict_ms: u64,
}

struct Placed {
    id: ReplicaId,
    footprint: u64,
    gpu: Option<GpuShare>,
    last_used_ms: u64,
    /// Placed in this pass: never evicted by it.
    fresh: bool,
}

struct Plan<'a> {
    input: &'a PlanInput<'a>,
    placed: BTreeMap<NodeId, Vec<Placed>>,
    changes: Vec<ReplicaChange>,
}

/// The replica changes to propose (empty when nothing needs to change).
pub fn plan(input: &PlanInput<'_>) -> Vec<ReplicaChange> {
    let mut plan = Plan {
        input,
        placed: BTreeMap::new(),
        changes: Vec::new(),
    };
    let mut records: BTreeMap<ReplicaId, &ReplicaRecord> = BTreeMap::new();
    for record in input.replicas {
        let id = ReplicaId::of(record);
        match record.node {
            Some(node) if input.lost.contains(&node) => {
                plan.changes.push(change(
                    &id,
                    None,
                    None,
                    false,
                    format!("node {node} stopped reporting"),
                ));
            }
            Some(node) => {
                let placed = Placed {
                    footprint: plan.footprint(&id.model, id.version),
                    gpu: record.gpu,
                    last_used_ms: plan.last_used(node, &id),
                    fresh: false,
                    id: id.clone(),
                };
                plan.placed.entry(node).or_default().push(placed);
                records.insert(id, record);
            }
            None => {
                records.insert(id, record);
            }
        }
    }
    for deployment in input.deployments {
        for replica in 0..deployment.spec.replicas {
            let id = ReplicaId {
                model: deployment.model.clone(),
                version: deployment.version,
                replica,
            };
            let needed = match records.get(&id) {
                None => true,
                Some(record) if record.node.is_none() => {
                    record.evicted && input.wanted.contains(&(id.model.clone(), id.version))
                }
                Some(_) => false,
            };
            if needed {
                plan.place(deployment, &id);
            }
        }
    }
    plan.changes
}

fn change(
    id: &ReplicaId,
    node: Option<NodeId>,
    gpu: Option<GpuShare>,
    evicted: bool,
    reason: String,
) -> ReplicaChange {
    ReplicaChange {
        model: id.model.clone(),
        version: id.version,
        replica: id.replica,
        node,
        gpu,
        evicted,
        reason,
    }
}

/// A node a replica could go to, and what it would take.
struct Candidate {
    node: NodeId,
    gpu: Option<GpuShare>,
    evictions: Vec<ReplicaId>,
    same_deployment: usize,
    load: f32,
}

impl Plan<'_> {
    fn footprint(&self, model: &str, version: u64) -> u64 {
        let measured = self
            .input
            .reports
            .values()
            .flat_map(|report| &report.replicas)
            .filter(|r| r.id.model == model && r.id.version == version && r.state == "warm")
            .map(|r| r.memory_bytes)
            .max()
            .unwrap_or(0);
        let size = self
            .input
            .model_sizes
            .get(&(model.to_string(), version))
            .copied()
            .unwrap_or(0);
        // RSS deltas are noisy (other threads allocate and free meanwhile):
        // a replica is never counted below its weights plus the runtime's
        // fixed overhead.
        if measured > 0 {
            measured.max(size + RUNTIME_OVERHEAD)
        } else {
            estimated_footprint(size)
        }
    }

    fn last_used(&self, node: NodeId, id: &ReplicaId) -> u64 {
        self.input
            .reports
            .get(&node)
            .and_then(|report| report.replicas.iter().find(|r| r.id == *id))
            .map_or(self.input.now_ms, |r| r.last_used_ms)
    }

    fn gpu_free(&self, node: NodeId, device: u32) -> u32 {
        let used: u32 = self
            .placed
            .get(&node)
            .into_iter()
            .flatten()
            .filter_map(|placed| placed.gpu.filter(|share| share.device == device))
            .map(|share| share.milli)
            .sum();
        GPU_MILLI_PER_DEVICE.saturating_sub(used)
    }

    fn candidate(
        &self,
        report: &NodeReport,
        deployment: &Deployment,
        footprint: u64,
    ) -> Option<Candidate> {
        let node = report.node_id;
        let gpu = match deployment.spec.gpu_milli {
            0 => None,
            milli => {
                let device = report
                    .gpus
                    .iter()
                    .map(|device| (self.gpu_free(node, device.id), device.id))
                    .filter(|(free, _)| *free >= milli)
                    .max_by_key(|(free, id)| (*free, std::cmp::Reverse(*id)))?;
                Some(GpuShare {
                    device: device.1,
                    milli,
                })
            }
        };
        let here: &[Placed] = self.placed.get(&node).map_or(&[], Vec::as_slice);
        let used: u64 = here.iter().map(|placed| placed.footprint).sum();
        let mut free = report.model_memory_budget.saturating_sub(used);
        let mut evictions = Vec::new();
        if free < footprint {
            let idle_before = self.input.now_ms.saturating_sub(self.input.idle_evict_ms);
            let mut idle: Vec<&Placed> = here
                .iter()
                .filter(|placed| !placed.fresh && placed.last_used_ms <= idle_before)
                .filter(|placed| {
                    !(placed.id.model == deployment.model
                        && placed.id.version == deployment.version)
                })
                .collect();
            idle.sort_by_key(|placed| (placed.last_used_ms, placed.id.clone()));
            for victim in idle {
                if free >= footprint {
                    break;
                }
                free += victim.footprint;
                evictions.push(victim.id.clone());
            }
            if free < footprint {
                return None;
            }
        }
        let same_deployment = here
            .iter()
            .filter(|p| p.id.model == deployment.model && p.id.version == deployment.version)
            .count();
        Some(Candidate {
            node,
            gpu,
            evictions,
            same_deployment,
            load: load_score(report),
        })
    }

    fn place(&mut self, deployment: &Deployment, id: &ReplicaId) {
        let footprint = self.footprint(&id.model, id.version);
        let best = self
            .input
            .reports
            .values()
            .filter(|report| !self.input.lost.contains(&report.node_id))
            .filter_map(|report| self.candidate(report, deployment, footprint))
            .min_by(|a, b| {
                (a.evictions.len(), a.same_deployment)
                    .cmp(&(b.evictions.len(), b.same_deployment))
                    .then(a.load.total_cmp(&b.load))
                    .then(a.node.cmp(&b.node))
            });
        let Some(best) = best else { return };
        let placed_here = self.placed.entry(best.node).or_default();
        for victim in &best.evictions {
            placed_here.retain(|placed| placed.id != *victim);
            let reason = format!(
                "evicted from node {} (idle) to make room for {id}",
                best.node
            );
            self.changes.push(change(victim, None, None, true, reason));
        }
        placed_here.push(Placed {
            id: id.clone(),
            footprint,
            gpu: best.gpu,
            last_used_ms: self.input.now_ms,
            fresh: true,
        });
        let reason = format!(
            "placed on node {} ({} MiB)",
            best.node,
            footprint / (1024 * 1024)
        );
        self.changes
            .push(change(id, Some(best.node), best.gpu, false, reason));
    }
}

impl ModelService {
    /// On the leader: proposes the changes `plan` finds.
    pub async fn place_replicas(
        &self,
        reports: &BTreeMap<NodeId, NodeReport>,
        waiting_blocks: &BTreeSet<String>,
    ) {
        let read = (|| {
            let deployments = self.inner.cluster.reader().deployments()?;
            let replicas = self.inner.cluster.reader().replicas()?;
            if deployments.is_empty() && replicas.is_empty() {
                return Ok(None);
            }
            let mut sizes = BTreeMap::new();
            for deployment in &deployments {
                if let Some(model) = self
                    .inner
                    .cluster
                    .reader()
                    .model(&deployment.model, Some(deployment.version))?
                {
                    sizes.insert((model.name, model.version), model.size);
                }
            }
            Ok::<_, floe_state::StoreError>(Some((deployments, replicas, sizes)))
        })();
        let (deployments, replicas, sizes) = match read {
            Ok(Some(found)) => found,
            Ok(None) => return,
            Err(err) => {
                crate::warn_limited!("reading deployments for placement", error = %err, "reading deployments for placement");
                return;
            }
        };
        let members: Vec<NodeId> = self.inner.cluster.members().0.keys().copied().collect();
        let mut lost: BTreeSet<NodeId> = self
            .inner
            .reports
            .silent_nodes(&members)
            .into_iter()
            .collect();
        lost.extend(
            replicas
                .iter()
                .filter_map(|r| r.node)
                .filter(|id| !members.contains(id)),
        );
        let latest = crate::models::latest_deployed(&deployments);
        let mut wanted: BTreeSet<(String, u64)> = reports
            .values()
            .flat_map(|r| r.model_demand.iter().cloned())
            .collect();
        for block in waiting_blocks {
            if let Some(found) = model_of_block(block, &latest) {
                wanted.insert(found);
            }
        }
        let input = PlanInput {
            deployments: &deployments,
            replicas: &replicas,
            model_sizes: &sizes,
            reports,
            lost: &lost,
            wanted: &wanted,
            now_ms: self.inner.clock.now_ms(),
            idle_evict_ms: self.inner.config.idle_evict_ms,
        };
        let changes = plan(&input);
        if changes.is_empty() {
            return;
        }
        for change in &changes {
            tracing::info!(model = %change.model, version = change.version, replica = change.replica, node = ?change.node, reason = %change.reason, "model replica change");
        }
        let command = Command::ChangeReplicas {
            changes,
            at_ms: self.inner.clock.now_ms(),
        };
        match self.inner.cluster.write_answer(command).await {
            Ok(response) if response.rejection().is_some() => {
                let reason = response
                    .rejection()
                    .map(|r| r.into_message())
                    .unwrap_or_default();
                tracing::info!(%reason, "replica changes partly refused")
            }
            Ok(_) => {}
            Err(err) => tracing::debug!(error = %err, "replica changes not committed"),
        }
    }
}

/// The model version an inference block stands for.
fn model_of_block(block: &str, latest: &BTreeMap<String, u64>) -> Option<(String, u64)> {
    let rest = block.strip_prefix(floe_engine::INFERENCE_BLOCK_PREFIX)?;
    if let Some((model, version)) = rest.rsplit_once(".v") {
        if let Ok(version) = version.parse() {
            return Some((model.to_string(), version));
        }
    }
    latest.get(rest).map(|version| (rest.to_string(), *version))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reports::ReplicaReport;
    use floe_inference::GpuDevice;
    use floe_state::models::DeploySpec;

    const MIB: u64 = 1024 * 1024;

    fn deployment(model: &str, replicas: u32, gpu_milli: u32) -> Deployment {
        let spec = DeploySpec {
            replicas,
            threads: 1,
            max_batch: 8,
            max_delay_ms: 2,
            queue: 64,
            gpu_milli,
        };
        Deployment {
            model: model.into(),
            version: 1,
            spec,
            created_at_ms: 0,
        }
    }

    fn node(id: NodeId, budget_mib: u64, gpus: &[u32]) -> NodeReport {
        NodeReport {
            node_id: id,
            model_memory_budget: budget_mib * MIB,
            gpus: gpus
                .iter()
                .map(|&id| GpuDevice {
                    id,
                    name: String::new(),
                    memory_bytes: 16 << 30,
                })
                .collect(),
            ..NodeReport::default()
        }
    }

    fn record(
        model: &str,
        replica: u32,
        node: Option<NodeId>,
        gpu: Option<GpuShare>,
        evicted: bool,
    ) -> ReplicaRecord {
        ReplicaRecord {
            model: model.into(),
            version: 1,
            replica,
            node,
            gpu,
            evicted,
            since_ms: 0,
            reason: String::new(),
        }
    }

    fn warm(model: &str, replica: u32, memory_mib: u64, last_used_ms: u64) -> ReplicaReport {
        ReplicaReport {
            id: ReplicaId {
                model: model.into(),
                version: 1,
                replica,
            },
            state: "warm".into(),
            detail: String::new(),
            memory_bytes: memory_mib * MIB,
            queue_depth: 0,
            queue_capacity: 64,
            p50_ms: 0.0,
            p99_ms: 0.0,
            completed: 0,
            last_used_ms,
        }
    }

    struct World {
        deployments: Vec<Deployment>,
        replicas: Vec<ReplicaRecord>,
        sizes: BTreeMap<(String, u64), u64>,
        reports: BTreeMap<NodeId, NodeReport>,
        lost: BTreeSet<NodeId>,
        wanted: BTreeSet<(String, u64)>,
    }

    impl World {
        fn new(nodes: Vec<NodeReport>) -> World {
            World {
                deployments: Vec::new(),
                replicas: Vec::new(),
                sizes: BTreeMap::new(),
                reports: nodes.into_iter().map(|r| (r.node_id, r)).collect(),
                lost: BTreeSet::new(),
                wanted: BTreeSet::new(),
            }
        }

        fn model(&mut self, deployment: Deployment, size_mib: u64) {
            self.sizes
                .insert((deployment.model.clone(), 1), size_mib * MIB);
            self.deployments.push(deployment);
        }

        fn plan(&self) -> Vec<ReplicaChange> {
            plan(&PlanInput {
                deployments: &self.deployments,
                replicas: &self.replicas,
                model_sizes: &self.sizes,
                reports: &self.reports,
                lost: &self.lost,
                wanted: &self.wanted,
                now_ms: 1_000_000,
                idle_evict_ms: 60_000,
            })
        }
    }

    fn placements(changes: &[ReplicaChange]) -> Vec<(String, u32, Option<NodeId>)> {
        changes
            .iter()
            .map(|c| (c.model.clone(), c.replica, c.node))
            .collect()
    }

    #[test]
    fn replicas_spread_over_nodes_with_memory() {
        let mut world = World::new(vec![
            node(1, 1000, &[]),
            node(2, 1000, &[]),
            node(3, 40, &[]),
        ]);
        world.model(deployment("det", 3, 0), 10);
        // det needs 2 × 10 + 16 = 36 MiB before it is measured: node 3 fits one.
        let changes = world.plan();
        assert_eq!(
            placements(&changes),
            vec![
                ("det".into(), 0, Some(1)),
                ("det".into(), 1, Some(2)),
                ("det".into(), 2, Some(3))
            ]
        );
        // With a measured footprint of 50 MiB node 3 no longer fits; node 1 takes two.
        world
            .reports
            .get_mut(&1)
            .unwrap()
            .replicas
            .push(warm("det", 9, 50, 0));
        let changes = world.plan();
        assert_eq!(changes[2].node, Some(1), "{changes:?}");
    }

    #[test]
    fn gpu_shares_never_exceed_a_device() {
        let mut world = World::new(vec![node(1, 1000, &[0]), node(2, 1000, &[])]);
        world.model(deployment("rec", 3, 500), 10);
        let changes = world.plan();
        let placed: Vec<_> = changes
            .iter()
            .map(|c| (c.replica, c.node, c.gpu.map(|g| (g.device, g.milli))))
            .collect();
        assert_eq!(
            placed,
            vec![(0, Some(1), Some((0, 500))), (1, Some(1), Some((0, 500)))],
            "the third fits nowhere"
        );
    }

    #[test]
    fn a_lost_nodes_replicas_move() {
        let mut world = World::new(vec![node(1, 1000, &[]), node(2, 1000, &[])]);
        world.model(deployment("det", 1, 0), 10);
        world.replicas.push(record("det", 0, Some(3), None, false));
        world.lost.insert(3);
        let changes = world.plan();
        assert_eq!(
            placements(&changes),
            vec![("det".into(), 0, None), ("det".into(), 0, Some(1))]
        );
        assert!(changes[0].reason.contains("node 3 stopped reporting"));
    }

    #[test]
    fn idle_replicas_are_evicted_least_recently_used_first() {
        let mut world = World::new(vec![node(1, 100, &[])]);
        world.model(deployment("old", 1, 0), 10);
        world.model(deployment("older", 1, 0), 10);
        world.model(deployment("new", 1, 0), 10);
        world.replicas.push(record("old", 0, Some(1), None, false));
        world
            .replicas
            .push(record("older", 0, Some(1), None, false));
        let report = world.reports.get_mut(&1).unwrap();
        report.replicas.push(warm("old", 0, 40, 500_000));
        report.replicas.push(warm("older", 0, 40, 100_000));
        // 80 of 100 MiB used; "new" needs 36: the least recently used goes.
        let changes = world.plan();
        assert_eq!(
            placements(&changes),
            vec![("older".into(), 0, None), ("new".into(), 0, Some(1))]
        );
        assert!(changes[0].evicted && changes[0].reason.contains("to make room for new@1#0"));

        // A replica used within the idle window is never evicted.
        let report = world.reports.get_mut(&1).unwrap();
        report.replicas[1].last_used_ms = 990_000;
        report.replicas[0].last_used_ms = 990_000;
        assert!(world.plan().is_empty(), "nothing idle: new stays pending");
    }

    #[test]
    fn evicted_replicas_come_back_only_on_demand() {
        let mut world = World::new(vec![node(1, 1000, &[])]);
        world.model(deployment("det", 1, 0), 10);
        world.replicas.push(record("det", 0, None, None, true));
        assert!(world.plan().is_empty());
        world.wanted.insert(("det".into(), 1));
        assert_eq!(placements(&world.plan()), vec![("det".into(), 0, Some(1))]);
    }

    #[test]
    fn blocks_name_their_model_version() {
        let latest: BTreeMap<String, u64> = [("det".to_string(), 4)].into_iter().collect();
        assert_eq!(
            model_of_block("model.det.v2", &latest),
            Some(("det".into(), 2))
        );
        assert_eq!(
            model_of_block("model.det", &latest),
            Some(("det".into(), 4))
        );
        assert_eq!(model_of_block("model.rec", &latest), None);
        assert_eq!(model_of_block("ocr", &latest), None);
    }
}
