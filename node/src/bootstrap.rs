//! Expect-N bootstrap for appliances with a static member list.
//!
//! Safety argument: only the lowest listed id ever calls `initialize`, and
//! only after every listed peer answered a probe saying it holds no Raft
//! state. A node with state (a formed cluster, or a restart) makes the whole
//! procedure a no-op, so it can never form a second cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use floe_state::NodeId;
use tokio_util::sync::CancellationToken;

use crate::cluster::ClusterHandle;
use crate::peer_api::{PeerRequest, PeerResponse};

/// Forms the cluster from `peers` (id and Raft address, this node among
/// them) once all of them answer with no Raft state; a no-op otherwise.
pub async fn run(
    cluster: ClusterHandle,
    peers: Vec<(NodeId, String)>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let lowest = peers
        .iter()
        .map(|(id, _)| *id)
        .min()
        .unwrap_or(cluster.id());
    if cluster.store().has_raft_state()? {
        tracing::info!(
            node_id = cluster.id(),
            "raft state present; bootstrap not needed"
        );
        return Ok(());
    }
    if cluster.id() != lowest {
        tracing::info!(
            node_id = cluster.id(),
            initializer = lowest,
            "waiting for the lowest id to form the cluster"
        );
        return Ok(());
    }
    let mut backoff = Duration::from_millis(100);
    loop {
        if cancel.is_cancelled() {
            return Ok(());
        }
        // Anything may have formed the cluster meanwhile (a join, a restart).
        if cluster.store().has_raft_state()? {
            return Ok(());
        }
        match probe_all(&cluster, &peers).await {
            Ok(Some(members)) => {
                let result = cluster.initialize(members).await;
                match result {
                    Ok(()) => {
                        tracing::info!(
                            node_id = cluster.id(),
                            expect = peers.len(),
                            "cluster formed"
                        )
                    }
                    Err(err) => {
                        tracing::info!(node_id = cluster.id(), error = %err, "initialize skipped")
                    }
                }
                return Ok(());
            }
            Ok(None) => {
                tracing::info!(
                    node_id = cluster.id(),
                    "a peer already holds raft state; not bootstrapping"
                );
                return Ok(());
            }
            Err(waiting_for) => {
                tracing::debug!(node_id = cluster.id(), waiting_for = %waiting_for, "bootstrap waiting for peers");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = cluster.clock().sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// `Ok(Some(members))` when every peer is up and empty; `Ok(None)` when one
/// holds state; `Err(description)` while some are unreachable.
async fn probe_all(
    cluster: &ClusterHandle,
    peers: &[(NodeId, String)],
) -> Result<Option<BTreeMap<NodeId, floe_state::NodeInfo>>, String> {
    let mut members = BTreeMap::new();
    let mut missing = Vec::new();
    for (id, addr) in peers {
        if *id == cluster.id() {
            members.insert(cluster.id(), cluster.info().clone());
            continue;
        }
        match cluster
            .call(*id, addr, &PeerRequest::Probe, Duration::from_secs(1))
            .await
        {
            Ok(PeerResponse::Probe(probe)) if probe.node_id == *id => {
                if probe.has_raft_state {
                    return Ok(None);
                }
                members.insert(*id, probe.info);
            }
            Ok(other) => missing.push(format!("node {id} answered {other:?}")),
            Err(err) => missing.push(format!("node {id}: {err}")),
        }
    }
    if missing.is_empty() {
        Ok(Some(members))
    } else {
        Err(missing.join("; "))
    }
}
