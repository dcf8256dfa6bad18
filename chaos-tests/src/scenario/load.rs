//! The load that runs during a scenario: register clients, run starters,
//! and the supervisor that notices node processes exiting on their own.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Cell, RunConfig};
use crate::checker::crashes::NodeExit;
use crate::nemesis::inject::{with_target, SharedTarget};
use crate::targets::NodeId;
use crate::workload::history::{Clock, History};
use crate::workload::{register, workflow};

pub(super) struct Load {
    pub(super) stop: CancellationToken,
    pub(super) tasks: tokio::task::JoinSet<()>,
}

pub(super) fn start_load(
    config: &RunConfig,
    cell: &Cell,
    target: &SharedTarget,
    clock: Clock,
    history: &History,
) -> anyhow::Result<Load> {
    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let nodes = with_target(target, |target| target.nodes());
    if config.workload.register() {
        for process in 0..config.register.clients {
            let node = nodes[process % nodes.len()];
            let mut options = with_target(target, |target| target.client_options(&[node]))?;
            options.request_timeout = config.register.request_timeout;
            let client = register::run_client(
                process,
                node,
                options,
                config.register.clone(),
                register::namespace(&cell.label, cell.seed),
                cell.seed,
                clock,
                history.clone(),
                stop.clone(),
            );
            tasks.spawn(client);
        }
    }
    if config.workload.workflow() {
        for starter in 0..2usize {
            let process = 100 + starter;
            let node = nodes[starter % nodes.len()];
            let options = with_target(target, |target| target.client_options(&[node]))?;
            let key_prefix = format!("chaos-{}-{}", cell.seed, cell.label);
            let run = workflow::run_starter(
                process,
                node,
                options,
                config.workflow.clone(),
                key_prefix,
                clock,
                history.clone(),
                stop.clone(),
            );
            tasks.spawn(run);
        }
    }
    Ok(Load { stop, tasks })
}

/// Watches for node processes that exit on their own and restarts them
/// (at most three times per node), as a supervisor would.
pub(super) fn start_exit_monitor(
    target: SharedTarget,
    clock: Clock,
    exits: Arc<Mutex<Vec<NodeExit>>>,
    disk_full_active: Arc<Mutex<Option<NodeId>>>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut restarts: BTreeMap<NodeId, usize> = BTreeMap::new();
        while !stop.is_cancelled() {
            let found = with_target(&target, |target| target.poll_exits());
            for (node, status) in found {
                let excused =
                    *disk_full_active.lock().unwrap_or_else(|p| p.into_inner()) == Some(node);
                tracing::warn!(node, status = %status, excused, "node exited on its own");
                let at_s = clock.now_us() as f64 / 1e6;
                exits
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(NodeExit {
                        node,
                        at_s,
                        status,
                        excused,
                    });
                let count = restarts.entry(node).or_default();
                // A node stopped by a full disk is restarted when the disk is freed.
                if *count < 3 && !excused {
                    *count += 1;
                    if let Err(err) = with_target(&target, |target| target.start(node)) {
                        tracing::warn!(node, error = %err, "restarting an exited node");
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            }
        }
    })
}
