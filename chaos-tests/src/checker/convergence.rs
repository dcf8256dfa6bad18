//! All nodes converge: once the workloads stop and the faults are healed,
//! every node reaches the same applied index with the same state digest
//! (`Cluster/StateDigest`, an admin call, computed under one lock with the
//! index).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use floe_api::client::{error_chain, ClientOptions, FloeClient};
use floe_api::proto as api;

use super::{CheckResult, CONVERGENCE};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeDigest {
    pub node_id: u64,
    pub applied_index: u64,
    pub digest: String,
}

/// One node's digest through `client` (connected to that node alone),
/// connecting first when there is none.
async fn read_digest(
    options: &ClientOptions,
    client: &mut Option<FloeClient>,
) -> Result<NodeDigest, String> {
    if client.is_none() {
        *client = Some(
            FloeClient::connect(options)
                .await
                .map_err(|err| error_chain(&err))?,
        );
    }
    let Some(connected) = client.as_mut() else {
        return Err("not connected".into());
    };
    match connected
        .cluster
        .state_digest(api::StateDigestRequest {})
        .await
    {
        Ok(answer) => {
            let answer = answer.into_inner();
            Ok(NodeDigest {
                node_id: answer.node_id,
                applied_index: answer.applied_index,
                digest: answer.digest,
            })
        }
        Err(status) => {
            *client = None;
            Err(format!("{:?}: {}", status.code(), status.message()))
        }
    }
}

/// Polls every node (its client options name that node alone) until all
/// report one applied index; then their digests must be equal. Nodes still
/// behind at `limit` are a violation too.
pub async fn check(nodes: &BTreeMap<u64, ClientOptions>, limit: Duration) -> CheckResult {
    let mut result = CheckResult::new(CONVERGENCE);
    let deadline = Instant::now() + limit;
    let mut last: BTreeMap<u64, Result<NodeDigest, String>> = BTreeMap::new();
    let mut clients: BTreeMap<u64, Option<FloeClient>> = BTreeMap::new();
    loop {
        last.clear();
        for (id, options) in nodes {
            let client = clients.entry(*id).or_default();
            last.insert(*id, read_digest(options, client).await);
        }
        let digests: Vec<&NodeDigest> = last
            .values()
            .filter_map(|answer| answer.as_ref().ok())
            .collect();
        let all_answered = digests.len() == nodes.len();
        let same_index = digests
            .windows(2)
            .all(|pair| pair[0].applied_index == pair[1].applied_index);
        if all_answered && same_index {
            let first = &digests[0];
            for other in &digests[1..] {
                if other.digest != first.digest {
                    result.violation(format!(
                        "node {} and node {} differ at applied index {}: digest {} vs {}",
                        first.node_id,
                        other.node_id,
                        first.applied_index,
                        first.digest,
                        other.digest
                    ));
                }
            }
            result.note(format!(
                "{} nodes at applied index {}",
                digests.len(),
                first.applied_index
            ));
            return result;
        }
        if Instant::now() > deadline {
            let summary: Vec<String> = last
                .iter()
                .map(|(id, answer)| match answer {
                    Ok(digest) => format!("node {id} at {}", digest.applied_index),
                    Err(err) => format!("node {id}: {err}"),
                })
                .collect();
            result.violation(format!(
                "nodes did not converge within {limit:?}: {}",
                summary.join(", ")
            ));
            return result;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
