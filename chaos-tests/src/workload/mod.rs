//! Workloads: what clients do to the cluster while nemeses run, recorded
//! as histories for the checkers.

pub mod history;
pub mod register;
pub mod worker;
pub mod workflow;

use std::time::Duration;

use floe_api::client::{ClientOptions, FloeClient};
use tokio_util::sync::CancellationToken;

/// Waits `duration`, or less when the workload is told to stop.
pub(crate) async fn pause(stop: &CancellationToken, duration: Duration) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(duration) => {}
    }
}

/// The client's connection, made now if it has none; `None` (after waiting
/// `retry`) while the node cannot be reached — the caller tries again.
pub(crate) async fn connected<'a>(
    client: &'a mut Option<FloeClient>,
    options: &ClientOptions,
    stop: &CancellationToken,
    retry: Duration,
) -> Option<&'a mut FloeClient> {
    if client.is_none() {
        match FloeClient::connect(options).await {
            Ok(fresh) => *client = Some(fresh),
            Err(err) => {
                tracing::debug!(endpoint = ?options.endpoints, error = %err, "client cannot connect");
                pause(stop, retry).await;
                return None;
            }
        }
    }
    client.as_mut()
}

/// Which workloads a scenario runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    Register,
    Workflow,
    Both,
}

impl WorkloadKind {
    pub fn register(self) -> bool {
        matches!(self, WorkloadKind::Register | WorkloadKind::Both)
    }
    pub fn workflow(self) -> bool {
        matches!(self, WorkloadKind::Workflow | WorkloadKind::Both)
    }
    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Register => "register",
            WorkloadKind::Workflow => "workflow",
            WorkloadKind::Both => "both",
        }
    }
}
