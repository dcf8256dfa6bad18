//! Keeps a node's process up through a data dir that fails under it.
//!
//! `disk.rs` stops writes before the disk is full, but a disk can fill (or
//! turn read-only) faster than it samples. Then sled poisons itself and the
//! Raft core stops on the storage error. Instead of exiting, the node logs
//! one line naming the data dir, the error and the free space, stops its
//! services, answers health checks on its HTTP address while it waits
//! (`/health/livez` 200, `/health/readyz` 503 with the reason, `/metrics`),
//! and once the data dir takes writes again reopens the store and starts
//! again in the same process. Acknowledged entries were flushed before
//! they were acknowledged; reopening the store recovers them from sled's
//! log. Any other failure stops the process, as before.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::NodeConfig;
use crate::disk::{probe_writable, DiskHealth};
use crate::service::NodeFailure;

/// Pause before the first restart, doubled after each failed one.
const FIRST_RESTART_DELAY: Duration = Duration::from_secs(1);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(10);
/// A run that lasted this long resets the restart delay.
const STABLE_RUN: Duration = Duration::from_secs(60);

/// How long to wait before starting the node again: 1 s, doubling up to
/// 10 s while runs keep failing soon after they start.
struct RestartDelay {
    next: Duration,
}

impl RestartDelay {
    fn new() -> Self {
        RestartDelay {
            next: FIRST_RESTART_DELAY,
        }
    }

    /// The pause after a run that lasted `run_lasted` and failed.
    fn after_failure(&mut self, run_lasted: Duration) -> Duration {
        if run_lasted > STABLE_RUN {
            self.next = FIRST_RESTART_DELAY;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(MAX_RESTART_DELAY);
        delay
    }
}
/// How often a waiting node checks whether its data dir takes writes again.
const RECHECK_INTERVAL: Duration = Duration::from_millis(200);

/// OS errors that mean the data dir cannot take writes now but may later.
const DISK_ERRORS: [&str; 8] = [
    "os error 28",
    "os error 30",
    "os error 122",
    "No space left on device",
    "Read-only file system",
    "Disk quota exceeded",
    "StorageFull",
    "ReadOnlyFilesystem",
];

/// Runs the node until `cancel` fires, restarting it in place after a
/// data dir failure.
pub async fn serve(config: NodeConfig, cancel: CancellationToken) -> anyhow::Result<()> {
    // The guard reads the data dir's filesystem, so the dir must exist; if
    // it cannot be created, opening the store says why.
    if let Err(error) = std::fs::create_dir_all(&config.data_dir) {
        tracing::debug!(data_dir = %config.data_dir.display(), error = %error, "cannot create the data dir yet");
    }
    // The process's one clock: the disk sampler, restarts and every
    // component of every run of the node read it.
    let clock = Clock::system();
    let disk = DiskHealth::start(
        &config.data_dir,
        config.storage.min_free_bytes,
        clock.clone(),
        cancel.clone(),
    );
    let mut restart_delays = RestartDelay::new();
    let mut restarting = false;
    loop {
        let started = clock.now();
        let result = crate::service::run(
            config.clone(),
            disk.clone(),
            clock.clone(),
            cancel.child_token(),
        )
        .await;
        let failure = match result {
            Ok(()) => return Ok(()),
            Err(failure) if cancel.is_cancelled() => return Err(failure.into_error()),
            Err(failure) => failure,
        };
        // A restart that cannot start yet (the store still locked, a port
        // not yet released) is retried; the same config started before.
        let retry_start = restarting && matches!(failure, NodeFailure::Starting(_));
        if !retry_start && !is_disk_failure(failure.error(), &disk) {
            return Err(failure.into_error());
        }
        let restart_delay = restart_delays.after_failure(clock.since(started));
        let reason = report(&failure, &disk, restart_delay);
        if !wait_for_disk(&config, &disk, &clock, reason, restart_delay, &cancel).await {
            return Ok(());
        }
        tracing::info!(data_dir = %config.data_dir.display(), free_bytes = disk.free_bytes(), "data dir takes writes again: starting the node");
        restarting = true;
    }
}

fn is_disk_failure(error: &anyhow::Error, disk: &DiskHealth) -> bool {
    let text = format!("{error:#}");
    disk.sample();
    disk.is_degraded() || DISK_ERRORS.iter().any(|marker| text.contains(marker))
}

/// Logs the one line that says what happened; returns the reason readiness gives.
fn report(failure: &NodeFailure, disk: &DiskHealth, restart_delay: Duration) -> String {
    let data_dir = disk.data_dir().display().to_string();
    let free_bytes = disk.free_bytes();
    let error = format!("{:#}", failure.error());
    tracing::error!(
        data_dir,
        free_bytes,
        min_free_bytes = disk.min_free_bytes(),
        error,
        restart_delay_ms = restart_delay.as_millis() as u64,
        "data dir failed: node services stopped; the node starts again by itself once the data dir takes writes (no restart needed)"
    );
    format!("data dir {data_dir} failed ({error}); services stopped until it takes writes again")
}

/// Serves health checks until the data dir takes writes again and at
/// least `delay` has passed. False when `cancel` fired meanwhile.
async fn wait_for_disk(
    config: &NodeConfig,
    disk: &DiskHealth,
    clock: &Clock,
    reason: String,
    delay: Duration,
    cancel: &CancellationToken,
) -> bool {
    let server_cancel = cancel.child_token();
    let state = Arc::new(Waiting {
        node_id: config.node_id,
        disk: disk.clone(),
        reason,
    });
    let server = tokio::spawn(serve_health(
        config.http_addr.clone(),
        state,
        clock.clone(),
        server_cancel.clone(),
    ));
    let earliest = clock.now() + delay;
    let resumed = loop {
        tokio::select! {
            _ = cancel.cancelled() => break false,
            _ = clock.sleep(RECHECK_INTERVAL) => {}
        }
        if clock.now() < earliest || disk.refusal().is_some() {
            continue;
        }
        let dir = config.data_dir.clone();
        match tokio::task::spawn_blocking(move || probe_writable(&dir)).await {
            Ok(Ok(())) => break true,
            Ok(Err(error)) => tracing::debug!(error = %error, "data dir does not take writes yet"),
            Err(error) => tracing::debug!(error = %error, "write probe task failed"),
        }
    };
    // The node's own HTTP server needs the address back.
    server_cancel.cancel();
    if let Err(error) = server.await {
        tracing::warn!(error = %error, "health server task failed");
    }
    resumed
}

struct Waiting {
    node_id: u64,
    disk: DiskHealth,
    reason: String,
}

/// Health checks while the node's services are stopped. Binding is
/// retried (the node's server may still be releasing the address).
async fn serve_health(addr: String, state: Arc<Waiting>, clock: Clock, cancel: CancellationToken) {
    let router = Router::new()
        .route("/health/livez", get(|| async { "ok\n" }))
        .route("/health/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state);
    let mut listener = None;
    for _ in 0..50 {
        match tokio::net::TcpListener::bind(&addr).await {
            Ok(bound) => {
                listener = Some(bound);
                break;
            }
            Err(error) => tracing::debug!(addr, error = %error, "health listener not bound yet"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = clock.sleep(Duration::from_millis(100)) => {}
        }
    }
    let Some(listener) = listener else {
        tracing::warn!(
            addr,
            "cannot listen for health checks while the data dir is failed"
        );
        return;
    };
    if let Err(error) = axum::serve(listener, router)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
    {
        tracing::warn!(addr, error = %error, "health server while the data dir is failed");
    }
}

#[derive(serde::Serialize)]
struct Unready {
    ready: bool,
    node_id: u64,
    role: &'static str,
    free_bytes: u64,
    reason: String,
}

async fn readyz(State(state): State<Arc<Waiting>>) -> (StatusCode, Json<Unready>) {
    let now = state
        .disk
        .reason()
        .map(|now| format!("; now: {now}"))
        .unwrap_or_default();
    let body = Unready {
        ready: false,
        node_id: state.node_id,
        role: "stopped",
        free_bytes: state.disk.free_bytes(),
        reason: format!("{}{now}", state.reason),
    };
    (StatusCode::SERVICE_UNAVAILABLE, Json(body))
}

async fn metrics(
    State(state): State<Arc<Waiting>>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    let mut out = String::new();
    crate::metrics::render_disk(&mut out, state.disk.free_bytes(), true);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_delay_doubles_to_ten_seconds_and_resets_after_a_stable_run() {
        let mut delays = RestartDelay::new();
        let soon = Duration::from_secs(2);
        let waits: Vec<u64> = (0..6)
            .map(|_| delays.after_failure(soon).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
        assert_eq!(delays.after_failure(STABLE_RUN * 2), FIRST_RESTART_DELAY);
        assert_eq!(delays.after_failure(soon), Duration::from_secs(2));
    }

    #[tokio::test]
    async fn only_disk_errors_count_as_a_disk_failure() {
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskHealth::start(dir.path(), 0, Clock::system(), CancellationToken::new());
        let full =
            anyhow::anyhow!("append log entries: IO error: No space left on device (os error 28)");
        let read_only = anyhow::Error::msg(
            "Os { code: 30, kind: ReadOnlyFilesystem, message: \"Read-only file system\" }",
        );
        let corrupt = anyhow::anyhow!("raft core stopped: corrupted log entry at 42");
        assert!(is_disk_failure(&full, &disk));
        assert!(is_disk_failure(&read_only, &disk));
        assert!(!is_disk_failure(&corrupt, &disk));
    }
}
