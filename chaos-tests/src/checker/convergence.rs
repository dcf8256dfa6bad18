//! All nodes converge: once the workloads stop and the faults are healed,
//! every node reaches the same applied index with the same state digest
//! (`GET /debug/state-digest`, computed under one lock with the index).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::{CheckResult, CONVERGENCE};

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct NodeDigest {
    pub node_id: u64,
    pub applied_index: u64,
    pub digest: String,
}

async fn read_digest(http_addr: &str) -> Result<NodeDigest, String> {
    let (code, body) = floe_harness::http_get(http_addr, "/debug/state-digest")
        .await
        .map_err(|err| err.to_string())?;
    if code != 200 {
        return Err(format!("HTTP {code}: {}", body.trim()));
    }
    serde_json::from_str(&body).map_err(|err| format!("bad digest answer: {err}"))
}

/// Polls every node until all report one applied index; then their digests
/// must be equal. Nodes still behind at `limit` are a violation too.
pub async fn check(nodes: &BTreeMap<u64, String>, limit: Duration) -> CheckResult {
    let mut result = CheckResult::new(CONVERGENCE);
    let deadline = Instant::now() + limit;
    let mut last: BTreeMap<u64, Result<NodeDigest, String>> = BTreeMap::new();
    loop {
        last.clear();
        for (id, addr) in nodes {
            last.insert(*id, read_digest(addr).await);
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
