//! HTTP for operators and orchestrators: liveness, readiness and metrics.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::cluster::{role_name, ClusterHandle};

pub async fn serve(
    cluster: ClusterHandle,
    addr: String,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let router = Router::new()
        .route("/health/livez", get(|| async { "ok\n" }))
        .route("/health/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(cluster);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|err| anyhow::anyhow!("HTTP listener on {addr}: {err}"))?;
    axum::serve(listener, router)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
        .map_err(|err| anyhow::anyhow!("HTTP server on {addr}: {err}"))
}

#[derive(Serialize)]
struct Readiness {
    ready: bool,
    node_id: u64,
    role: String,
    leader: Option<u64>,
    member: bool,
    commit_index: u64,
    applied_index: u64,
    reason: Option<String>,
}

/// Ready = a data dir that takes writes, a member of a cluster with a known
/// leader, applied up to the commit index.
async fn readyz(State(cluster): State<ClusterHandle>) -> (StatusCode, Json<Readiness>) {
    let metrics = cluster.raft_metrics();
    let commit_index = cluster.committed_index().await;
    let applied_index = metrics.last_applied.map(|id| id.index).unwrap_or(0);
    let member = metrics
        .membership_config
        .membership()
        .get_node(&cluster.id())
        .is_some();
    let reason = if let Some(disk) = cluster.disk().reason() {
        Some(disk)
    } else if !member {
        Some("not a member of a cluster yet".to_string())
    } else if metrics.current_leader.is_none() {
        Some("no known leader".to_string())
    } else if metrics.current_leader == Some(cluster.id())
        && metrics.state != openraft::ServerState::Leader
    {
        Some("leadership from the stored vote is not confirmed yet".to_string())
    } else if let Some(age) = cluster.quorum_lost_for() {
        Some(format!(
            "leader without a quorum: no majority has acknowledged it for {} ms",
            age.as_millis()
        ))
    } else if applied_index < commit_index {
        Some(format!("applying: {applied_index} of {commit_index}"))
    } else {
        None
    };
    let ready = reason.is_none();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Readiness {
        ready,
        node_id: cluster.id(),
        role: role_name(&metrics),
        leader: metrics.current_leader,
        member,
        commit_index,
        applied_index,
        reason,
    };
    (status, Json(body))
}

async fn metrics(
    State(cluster): State<ClusterHandle>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    let body = cluster.render_metrics().await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        body,
    )
}
