//! The light write load of the rejoin measurement: one writer per node,
//! a put every 300 ms, each recorded in the history.

use std::time::Duration;

use floe_api::client::FloeClient;
use floe_api::proto as api;
use tokio_util::sync::CancellationToken;

use crate::nemesis::inject::{with_target, SharedTarget};
use crate::workload::connected;
use crate::workload::history::{classify, error_text, Clock, History, Op, OpRecord, Outcome};

/// Pause between one writer's puts: a few writes per second in all.
const THINK: Duration = Duration::from_millis(300);
/// Upper bound on one writer's puts, whatever the run's length (50 trials
/// of ≤ 80 s each at 300 ms per put stay well below it).
const MAX_PUTS: u64 = 100_000;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Starts the writers; they stop when `stop` fires.
pub fn start(
    target: &SharedTarget,
    clock: Clock,
    history: &History,
    stop: &CancellationToken,
) -> anyhow::Result<tokio::task::JoinSet<()>> {
    let mut tasks = tokio::task::JoinSet::new();
    for node in with_target(target, |target| target.nodes()) {
        let mut options = with_target(target, |target| target.client_options(&[node]))?;
        options.request_timeout = REQUEST_TIMEOUT;
        let (history, stop) = (history.clone(), stop.clone());
        tasks.spawn(async move {
            let mut client: Option<FloeClient> = None;
            for sequence in 0..MAX_PUTS {
                if stop.is_cancelled() {
                    break;
                }
                let Some(kv) =
                    connected(&mut client, &options, &stop, Duration::from_millis(200)).await
                else {
                    continue;
                };
                let key = format!("rejoin/n{node}");
                let value = format!("{sequence}");
                let request = api::PutRequest {
                    key: key.clone(),
                    value: value.clone().into_bytes(),
                };
                let invoked_us = clock.now_us();
                let (outcome, error) =
                    match tokio::time::timeout(REQUEST_TIMEOUT, kv.kv.put(request)).await {
                        Err(_) => (Outcome::Unknown, Some("client-side timeout".to_string())),
                        Ok(Err(status)) => (classify(&status), Some(error_text(&status))),
                        Ok(Ok(_)) => (Outcome::Ok, None),
                    };
                let completed_us = clock.now_us();
                history.push(OpRecord {
                    process: node as usize,
                    node,
                    op: Op::Put { key, value },
                    invoked_us,
                    completed_us,
                    outcome,
                    error,
                });
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(THINK) => {}
                }
            }
        });
    }
    Ok(tasks)
}
