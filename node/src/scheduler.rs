//! Placement, timers and node leases.
//!
//! Every node reports its free worker slots and load to the leader over
//! QUIC (not through the Raft log) a few times a second. The leader places
//! each ready task on the least-loaded node with a free slot for its block,
//! as an `AssignTask` command; fires due timers with `FireTimers`; and fails
//! (retryably) the tasks of a node that stopped reporting, so the run engine
//! schedules new attempts elsewhere.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use floe_state::runs::{LimitScope, LimitState, TaskRecord};
use floe_state::slots::NodeSlots;
use floe_state::{Command, NodeId};
use tokio_util::sync::CancellationToken;

use crate::call_context::CallContext;
use crate::changes::ChangeHub;
use crate::clock::Clock;
use crate::cluster::ClusterHandle;
use crate::models::ModelService;
use crate::peer_api::PeerRequest;
use crate::reports::{load_score, NodeReport, Reports};
use crate::runs::RunService;
use crate::workers::WorkerHub;

const REPORT_EVERY: Duration = Duration::from_millis(200);
const SCHEDULE_EVERY: Duration = Duration::from_millis(10);
const BATCH: usize = 256;

/// Handle to the scheduler: this node's load reports to the leader and, on
/// the leader, task placement, timers, node leases, replica placement and
/// retention; cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    cluster: ClusterHandle,
    runs: RunService,
    workers: WorkerHub,
    models: ModelService,
    reports: Arc<Reports>,
    changes: Arc<ChangeHub>,
    clock: Clock,
    options: SchedulerOptions,
}

/// The settings the scheduler reads.
#[derive(Clone, Debug)]
pub struct SchedulerOptions {
    /// `inference.no_replica_wait_ms`.
    pub no_replica_wait_ms: u64,
    /// `inference.memory_budget_bytes` (0: half the memory).
    pub model_memory_budget: u64,
    /// `runs.retention_ms`.
    pub retention_ms: u64,
}

/// What the scheduler is built from.
pub struct SchedulerParts {
    pub cluster: ClusterHandle,
    pub runs: RunService,
    pub workers: WorkerHub,
    pub models: ModelService,
    pub reports: Arc<Reports>,
    pub changes: Arc<ChangeHub>,
    pub options: SchedulerOptions,
}

impl Scheduler {
    pub fn new(parts: SchedulerParts) -> Scheduler {
        Scheduler {
            clock: parts.cluster.clock().clone(),
            cluster: parts.cluster,
            runs: parts.runs,
            workers: parts.workers,
            models: parts.models,
            reports: parts.reports,
            changes: parts.changes,
            options: parts.options,
        }
    }

    /// Its three loops; each ends on `cancel`.
    pub fn spawn(
        &self,
        tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
        cancel: &CancellationToken,
    ) {
        tasks.spawn(self.clone().report(cancel.clone()));
        tasks.spawn(self.clone().schedule(cancel.clone()));
        tasks.spawn(self.clone().retain(cancel.clone()));
    }

    fn id(&self) -> NodeId {
        self.cluster.id()
    }

    fn local_report(&self) -> NodeReport {
        let queued = self.workers.queued_blocks();
        let load = sysinfo::System::load_average().one as f32;
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as f32;
        let mut system = sysinfo::System::new();
        system.refresh_memory();
        let memory_used_ratio = match system.total_memory() {
            0 => 0.0,
            total => system.used_memory() as f32 / total as f32,
        };
        let mut free_slots = self.workers.registry().free_slots(&queued);
        let latest = self
            .cluster
            .reader()
            .deployments()
            .map(|d| crate::models::latest_deployed(&d))
            .unwrap_or_default();
        for (block, room) in self.models.local().free_slots(&latest) {
            let waiting = queued.get(&block).copied().unwrap_or(0);
            *free_slots.entry(block).or_default() += room.saturating_sub(waiting);
        }
        let mut capacity = self.workers.registry().capacity();
        for (block, slots) in self.models.local().capacity(&latest) {
            *capacity.entry(block).or_default() += slots;
        }
        let model_memory_budget = match self.options.model_memory_budget {
            0 => system.total_memory() / 2,
            budget => budget,
        };
        NodeReport {
            node_id: self.id(),
            free_slots,
            capacity,
            running_tasks: self.workers.registry().running() + self.models.local().running_count(),
            cpu_load: load / cores,
            memory_used_ratio,
            model_memory_budget,
            replicas: self.models.local().reports(),
            gpus: self.models.local().gpus().to_vec(),
            model_demand: self.models.local().demand(),
        }
    }

    /// Sends this node's report to the leader (or records it, on the leader).
    pub async fn report(self, cancel: CancellationToken) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = self.clock.sleep(REPORT_EVERY) => {}
            }
            let report = {
                let scheduler = self.clone();
                match tokio::task::spawn_blocking(move || scheduler.local_report()).await {
                    Ok(report) => report,
                    Err(_) => continue,
                }
            };
            let leader = self.cluster.leader();
            match leader {
                Some(leader) if leader == self.id() => self.reports.record(report),
                Some(leader) => {
                    let Some(addr) = self
                        .cluster
                        .members()
                        .0
                        .get(&leader)
                        .map(|info| info.raft_addr.clone())
                    else {
                        continue;
                    };
                    let request = PeerRequest::Report(report);
                    if let Err(err) = self
                        .cluster
                        .call(leader, &addr, &request, REPORT_EVERY * 2)
                        .await
                    {
                        tracing::debug!(leader, error = %err, "node report not delivered");
                    }
                }
                None => {}
            }
        }
    }

    /// The leader's loop: place ready tasks, fire due timers, expire silent nodes.
    pub async fn schedule(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let ctx = CallContext::local("scheduler");
        // New ready tasks come with applied changes; timers and reports need the clock too.
        let mut last_placement = self.clock.now();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = self.changes.queue.notified() => {}
                _ = self.clock.sleep(SCHEDULE_EVERY) => {}
            }
            let leading = self.cluster.is_leader();
            self.reports.note_leadership(leading);
            if !leading {
                continue;
            }
            let now = self.clock.now_ms();
            let reader = self.cluster.reader().clone();
            let scanned = tokio::task::spawn_blocking(move || {
                let timers = reader.due_timers(now, BATCH)?;
                let ready = reader.ready_tasks(now, BATCH)?;
                let limits = if ready.is_empty() {
                    Vec::new()
                } else {
                    reader.limits()?
                };
                Ok::<_, floe_state::StoreError>((timers, ready, limits))
            })
            .await;
            let (timers, ready, limits) = match scanned {
                Ok(Ok(found)) => found,
                Ok(Err(err)) => {
                    crate::warn_limited!("scheduler scan failed", error = %err, "scheduler scan failed");
                    continue;
                }
                Err(_) => continue,
            };
            let mut writes = Vec::new();
            if !timers.is_empty() {
                writes.push(Command::FireTimers { timers, at_ms: now });
            }
            let mut reports = self.reports.fresh();
            self.sync_node_slots(&reports).await;
            let reports_before = reports.clone();
            // Inference blocks with ready tasks and no replica to run them.
            let mut waiting_blocks = std::collections::BTreeSet::new();
            // Inference tasks that waited past `inference.no_replica_wait_ms`.
            let mut starved = Vec::new();
            let no_replica_wait_ms = self.options.no_replica_wait_ms;
            let mut headroom = Headroom::new(&limits);
            for task in ready {
                if !headroom.allows(&task) {
                    continue;
                }
                let pools: Vec<_> = task.spec.slot_pools().collect();
                let Some(target) = pick_node(&reports, &pools) else {
                    if task
                        .spec
                        .block
                        .starts_with(floe_engine::INFERENCE_BLOCK_PREFIX)
                    {
                        waiting_blocks.insert(task.spec.block.clone());
                        if now.saturating_sub(task.scheduled_at_ms) >= no_replica_wait_ms {
                            starved.push(task);
                        }
                    }
                    continue;
                };
                headroom.take(&task);
                if let Some(report) = reports.get_mut(&target) {
                    for pool in &pools {
                        if let Some(slots) = report.free_slots.get_mut(pool.as_ref()) {
                            *slots = slots.saturating_sub(1);
                        }
                    }
                    report.running_tasks += 1;
                }
                writes.push(Command::AssignTask {
                    task: task.spec.key.to_string(),
                    attempt: task.spec.attempt,
                    node: target,
                    worker: String::new(),
                    at_ms: now,
                });
            }
            // Concurrent proposals become one batched entry on the leader.
            let results = futures::future::join_all(
                writes
                    .into_iter()
                    .map(|command| self.cluster.write(command)),
            )
            .await;
            for result in results {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "scheduler proposal failed");
                }
            }
            self.fail_starved_inference(&ctx, starved, no_replica_wait_ms)
                .await;
            self.expire_silent_nodes(&ctx).await;
            if self.clock.since(last_placement) >= crate::models::PLACE_EVERY {
                last_placement = self.clock.now();
                self.models
                    .place_replicas(&reports_before, &waiting_blocks)
                    .await;
            }
        }
    }

    /// Fails the attempts of inference tasks that found no replica to run them
    /// for `inference.no_replica_wait_ms`, saying why. A model with no
    /// deployment cannot get one by waiting: its failure is final. A deployed
    /// one whose replicas are not placed or not warm may still come up: that
    /// failure is retryable, so the step's retry policy decides.
    async fn fail_starved_inference(
        &self,
        ctx: &CallContext,
        starved: Vec<TaskRecord>,
        waited_ms: u64,
    ) {
        if starved.is_empty() {
            return;
        }
        let deployments = match self.cluster.reader().deployments() {
            Ok(deployments) => deployments,
            Err(err) => {
                crate::warn_limited!("reading deployments for waiting inference tasks", error = %err, "reading deployments for waiting inference tasks");
                return;
            }
        };
        let failures = starved.into_iter().map(|task| {
        let (error, retryable) = no_replica_failure(&task.spec.block, &deployments, waited_ms);
        async move {
            let failure = floe_engine::run::TaskFailure { error, retryable };
            let attempt = task.spec.attempt;
            if let Err(err) = self.runs.task_result(ctx, task.spec.key.clone(), attempt, None, Err(failure)).await {
                tracing::debug!(task = ?task.spec.key, attempt, error = %err, "failing a starved inference task");
            }
        }
    });
        futures::future::join_all(failures).await;
    }
}

/// Why an inference task found no replica, and whether waiting more may help.
fn no_replica_failure(
    block: &str,
    deployments: &[floe_state::models::Deployment],
    waited_ms: u64,
) -> (String, bool) {
    let named = block
        .strip_prefix(floe_engine::INFERENCE_BLOCK_PREFIX)
        .unwrap_or(block);
    let (model, version) = match named
        .rsplit_once(".v")
        .map(|(model, version)| (model, version.parse::<u64>()))
    {
        Some((model, Ok(version))) => (model, Some(version)),
        _ => (named, None),
    };
    let deployed = deployments
        .iter()
        .any(|d| d.model == model && version.is_none_or(|wanted| d.version == wanted));
    let what = match version {
        Some(version) => format!("model {model} v{version}"),
        None => format!("model {model}"),
    };
    if deployed {
        let reason = format!(
            "{what} had no warm replica for {waited_ms} ms (inference.no_replica_wait_ms): its replicas are not placed or not loaded"
        );
        (reason, true)
    } else {
        let reason = format!(
            "{what} is not deployed; waited {waited_ms} ms (inference.no_replica_wait_ms) for a deployment (floe model deploy)"
        );
        (reason, false)
    }
}

/// Load differences smaller than this (in thousandths) are not proposed:
/// placement needs a coarse load, and the log should not carry every wobble.
const LOAD_STEP_MILLI: u32 = 250;

/// What `report` offers to placement inside apply.
fn offer_of(report: &NodeReport) -> NodeSlots {
    let slots = report
        .capacity
        .iter()
        .filter(|(_, slots)| **slots > 0)
        .map(|(block, slots)| (block.clone(), *slots))
        .collect();
    let load = (report.cpu_load + report.memory_used_ratio).clamp(0.0, 64.0);
    NodeSlots {
        slots,
        load_milli: (load * 1000.0).round() as u32,
    }
}

/// The offers to propose: a fresh report whose slots changed, or whose load
/// moved by a step, and an empty offer for a node that went silent (its
/// tasks are about to be taken back; none may be placed there meanwhile).
fn offer_changes(
    stored: &floe_state::slots::Offers,
    reports: &BTreeMap<NodeId, NodeReport>,
    silent: &[NodeId],
) -> Vec<(NodeId, NodeSlots)> {
    let mut changes = Vec::new();
    for (id, report) in reports {
        if silent.contains(id) {
            continue;
        }
        let wanted = offer_of(report);
        let changed = match stored.get(id) {
            Some(current) => {
                current.slots != wanted.slots
                    || current.load_milli.abs_diff(wanted.load_milli) >= LOAD_STEP_MILLI
            }
            None => !wanted.slots.is_empty(),
        };
        if changed {
            changes.push((*id, wanted));
        }
    }
    for id in silent {
        if stored.contains_key(id) {
            changes.push((*id, NodeSlots::default()));
        }
    }
    changes
}

/// Keeps the replicated offers in step with the nodes' reports.
impl Scheduler {
    async fn sync_node_slots(&self, reports: &BTreeMap<NodeId, NodeReport>) {
        let Ok(stored) = self.cluster.reader().node_slots() else {
            return;
        };
        // A removed node keeps no offer: nodes with one count as members here.
        let members: std::collections::BTreeSet<NodeId> = self
            .cluster
            .members()
            .0
            .into_keys()
            .chain(stored.keys().copied())
            .collect();
        let silent = self
            .reports
            .silent_nodes(&members.into_iter().collect::<Vec<_>>());
        let writes = offer_changes(&stored, reports, &silent)
            .into_iter()
            .map(|(id, offer)| self.cluster.write(Command::NodeSlots { node: id, offer }));
        for result in futures::future::join_all(writes).await {
            if let Err(err) = result {
                tracing::debug!(error = %err, "node slots not proposed");
            }
        }
    }
}

/// What the concurrency limits leave for this pass: the state machine
/// refuses a placement over a limit anyway; this keeps the leader from
/// proposing ones it knows will be refused.
struct Headroom {
    left: BTreeMap<(LimitScope, String), u64>,
}

impl Headroom {
    fn new(limits: &[LimitState]) -> Headroom {
        let left = limits
            .iter()
            .filter_map(|state| {
                let limit = u64::from(state.limit?);
                Some((
                    (state.scope, state.name.clone()),
                    limit.saturating_sub(state.active),
                ))
            })
            .collect();
        Headroom { left }
    }

    fn scopes(task: &TaskRecord) -> [(LimitScope, String); 2] {
        [
            (LimitScope::Block, task.spec.block.clone()),
            (LimitScope::Flow, task.flow.clone()),
        ]
    }

    fn allows(&self, task: &TaskRecord) -> bool {
        Self::scopes(task)
            .iter()
            .all(|scope| self.left.get(scope).is_none_or(|left| *left > 0))
    }

    fn take(&mut self, task: &TaskRecord) {
        for scope in Self::scopes(task) {
            if let Some(left) = self.left.get_mut(&scope) {
                *left = left.saturating_sub(1);
            }
        }
    }
}

/// The least-loaded node with a free slot in every one of a task's slot
/// pools (`TaskSpec::slot_pools`).
fn pick_node<P: AsRef<str>>(reports: &BTreeMap<NodeId, NodeReport>, pools: &[P]) -> Option<NodeId> {
    reports
        .values()
        .filter(|report| {
            pools
                .iter()
                .all(|pool| report.free_slots.get(pool.as_ref()).copied().unwrap_or(0) > 0)
        })
        .min_by(|a, b| {
            load_score(a)
                .total_cmp(&load_score(b))
                .then(a.node_id.cmp(&b.node_id))
        })
        .map(|report| report.node_id)
}

impl Scheduler {
    async fn expire_silent_nodes(&self, ctx: &CallContext) {
        let members: Vec<NodeId> = self.cluster.members().0.keys().copied().collect();
        for silent in self.reports.silent_nodes(&members) {
            let Ok(tasks) = self.cluster.reader().tasks_on_node(silent) else {
                continue;
            };
            for task in tasks {
                let reason = format!("node {silent} stopped reporting; lease expired");
                if let Err(err) = self
                    .runs
                    .task_lost(ctx, task.spec.key.clone(), task.spec.attempt, reason)
                    .await
                {
                    tracing::debug!(node = silent, error = %err, "expiring a silent node's task");
                }
            }
        }
    }

    /// On the leader: deletes runs that finished longer ago than the retention,
    /// a bounded batch per second, through the log.
    pub async fn retain(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let retention = self.options.retention_ms;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = self.clock.sleep(Duration::from_secs(1)) => {}
            }
            if !self.cluster.is_leader() {
                continue;
            }
            let cutoff = self.clock.now_ms().saturating_sub(retention);
            let reader = self.cluster.reader().clone();
            let expired = match tokio::task::spawn_blocking(move || {
                reader.finished_runs(cutoff, BATCH)
            })
            .await
            {
                Ok(Ok(expired)) => expired,
                Ok(Err(err)) => {
                    crate::warn_limited!("retention scan failed", error = %err, "retention scan failed");
                    continue;
                }
                Err(_) => continue,
            };
            if expired.is_empty() {
                continue;
            }
            let count = expired.len();
            match self
                .cluster
                .write(Command::PurgeRuns {
                    run_ids: expired,
                    finished_before_ms: cutoff,
                })
                .await
            {
                Ok(_) => tracing::info!(count, "finished runs past retention purged"),
                Err(err) => tracing::debug!(error = %err, "retention purge not committed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_starved_inference_task_is_told_why() {
        let spec = floe_state::models::DeploySpec {
            replicas: 1,
            threads: 1,
            max_batch: 1,
            max_delay_ms: 1,
            queue: 1,
            gpu_milli: 0,
        };
        let deployments = vec![floe_state::models::Deployment {
            model: "det".into(),
            version: 2,
            spec,
            created_at_ms: 0,
        }];
        let (reason, retryable) = no_replica_failure("model.ghost", &deployments, 30_000);
        assert!(!retryable);
        assert_eq!(reason, "model ghost is not deployed; waited 30000 ms (inference.no_replica_wait_ms) for a deployment (floe model deploy)");
        let (reason, retryable) = no_replica_failure("model.det.v3", &deployments, 5);
        assert!(
            !retryable && reason.starts_with("model det v3 is not deployed"),
            "{reason}"
        );
        let (reason, retryable) = no_replica_failure("model.det.v2", &deployments, 5);
        assert!(
            retryable && reason.starts_with("model det v2 had no warm replica for 5 ms"),
            "{reason}"
        );
        let (_, retryable) = no_replica_failure("model.det", &deployments, 5);
        assert!(retryable);
    }

    use super::*;

    fn report(node_id: NodeId, block: &str, free: u32, running: u32, cpu: f32) -> NodeReport {
        NodeReport {
            node_id,
            free_slots: [(block.to_string(), free)].into_iter().collect(),
            running_tasks: running,
            cpu_load: cpu,
            ..NodeReport::default()
        }
    }

    #[test]
    fn picks_the_least_loaded_node_with_a_free_slot() {
        let reports: BTreeMap<NodeId, NodeReport> = [
            (1, report(1, "ocr", 0, 4, 0.1)),
            (2, report(2, "ocr", 2, 2, 0.5)),
            (3, report(3, "ocr", 3, 1, 0.2)),
        ]
        .into_iter()
        .collect();
        assert_eq!(pick_node(&reports, &["ocr"]), Some(3));
        assert_eq!(
            pick_node(&reports, &["classify"]),
            None,
            "no node serves the block"
        );
    }

    #[test]
    fn offers_follow_slot_changes_and_large_load_moves_only() {
        let mut reports: BTreeMap<NodeId, NodeReport> = BTreeMap::new();
        let mut first = report(1, "ocr", 2, 2, 0.30);
        first.capacity = [("ocr".to_string(), 4), ("idle".to_string(), 0)]
            .into_iter()
            .collect();
        reports.insert(1, first.clone());
        let stored = floe_state::slots::Offers::new();
        let changes = offer_changes(&stored, &reports, &[]);
        assert_eq!(changes.len(), 1);
        assert_eq!(
            changes[0].1.slots,
            [("ocr".to_string(), 4)].into_iter().collect(),
            "blocks without slots are left out"
        );
        assert_eq!(changes[0].1.load_milli, 300);
        let stored: floe_state::slots::Offers = changes.into_iter().collect();
        assert!(
            offer_changes(&stored, &reports, &[]).is_empty(),
            "nothing changed"
        );
        reports.get_mut(&1).unwrap().cpu_load = 0.5;
        assert!(
            offer_changes(&stored, &reports, &[]).is_empty(),
            "a small load move is not proposed"
        );
        reports.get_mut(&1).unwrap().cpu_load = 0.6;
        assert_eq!(
            offer_changes(&stored, &reports, &[]).len(),
            1,
            "a load step is"
        );
        reports.get_mut(&1).unwrap().cpu_load = 0.3;
        reports
            .get_mut(&1)
            .unwrap()
            .capacity
            .insert("ocr".into(), 5);
        assert_eq!(
            offer_changes(&stored, &reports, &[])[0].1.slots["ocr"],
            5,
            "a worker came"
        );
        let withdrawn = offer_changes(&stored, &BTreeMap::new(), &[1]);
        assert_eq!(
            withdrawn,
            vec![(1, NodeSlots::default())],
            "a silent node offers nothing"
        );
        assert!(
            offer_changes(&BTreeMap::new(), &BTreeMap::new(), &[1]).is_empty(),
            "nothing to withdraw"
        );
    }

    #[test]
    fn a_labelled_task_needs_a_free_slot_of_its_block_too() {
        // Node 1's labelled worker is busy with unlabelled tasks: its labelled
        // pool shows a free slot only because those tasks do not count there.
        let mut busy = report(1, "ocr", 0, 2, 0.0);
        busy.free_slots.insert("ocr[gpu=yes]".into(), 1);
        let mut free = report(2, "ocr", 1, 1, 0.9);
        free.free_slots.insert("ocr[gpu=yes]".into(), 1);
        let mut reports: BTreeMap<NodeId, NodeReport> =
            [(1, busy), (2, free)].into_iter().collect();
        assert_eq!(pick_node(&reports, &["ocr[gpu=yes]", "ocr"]), Some(2));
        reports
            .get_mut(&2)
            .unwrap()
            .free_slots
            .insert("ocr".into(), 0);
        assert_eq!(pick_node(&reports, &["ocr[gpu=yes]", "ocr"]), None);
    }

    #[test]
    fn ties_break_by_node_id() {
        let reports: BTreeMap<NodeId, NodeReport> = [
            (2, report(2, "a", 1, 0, 0.0)),
            (1, report(1, "a", 1, 0, 0.0)),
        ]
        .into_iter()
        .collect();
        assert_eq!(pick_node(&reports, &["a"]), Some(1));
    }

    fn task(block: &str, flow: &str, step: &str) -> TaskRecord {
        let spec: floe_engine::run::TaskSpec = serde_json::from_value(serde_json::json!({
            "key": {"run_id": "r", "step_id": step, "item": null},
            "attempt": 1, "block": block, "input": null, "not_before_ms": 0,
            "timeouts": {}
        }))
        .unwrap();
        TaskRecord {
            spec,
            scheduled_at_ms: 0,
            assignment: None,
            flow: flow.to_string(),
        }
    }

    #[test]
    fn headroom_counts_down_per_block_and_per_flow() {
        let limits = vec![
            LimitState {
                scope: LimitScope::Block,
                name: "ocr".into(),
                limit: Some(3),
                active: 1,
            },
            LimitState {
                scope: LimitScope::Flow,
                name: "intake".into(),
                limit: Some(1),
                active: 0,
            },
            LimitState {
                scope: LimitScope::Block,
                name: "free".into(),
                limit: None,
                active: 9,
            },
        ];
        let mut headroom = Headroom::new(&limits);
        let (first, second, third) = (
            task("ocr", "other", "a"),
            task("ocr", "other", "b"),
            task("ocr", "other", "c"),
        );
        for placed in [&first, &second] {
            assert!(headroom.allows(placed));
            headroom.take(placed);
        }
        assert!(
            !headroom.allows(&third),
            "block ocr: 1 active + 2 placed = its limit of 3"
        );
        let intake = task("classify", "intake", "d");
        assert!(headroom.allows(&intake));
        headroom.take(&intake);
        assert!(
            !headroom.allows(&task("classify", "intake", "e")),
            "flow intake allows one"
        );
        assert!(headroom.allows(&task("free", "other", "f")), "no limit set");
    }
}
