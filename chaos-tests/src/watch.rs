//! Watching who leads: every node's term, role and readiness polled about
//! ten times a second by one bounded background task per node, so a report
//! can say how often leadership changed and what a node's `/health/readyz`
//! said during a fault.
//!
//! Each node has a task of its own: a paused node holds its HTTP request
//! for the full 2 s timeout, which must not delay the samples of the others.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::targets::NodeId;
use crate::workload::history::Clock;

/// One poll of one node.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub node: NodeId,
    /// When the poll began, µs on the scenario clock.
    pub at_us: u64,
    /// The node answered both requests.
    pub reachable: bool,
    /// `/health/readyz` answered 200.
    pub ready: bool,
    /// `floe_raft_term` from `/metrics`.
    pub term: Option<u64>,
    /// The node said it leads, in `/metrics` and in `/health/readyz` both.
    pub leading: bool,
}

/// The background pollers; `stop` ends them and returns every sample.
pub struct LeaderWatch {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
}

/// What one poll of a node found.
struct Poll {
    ready: bool,
    term: Option<u64>,
    leading: bool,
}

async fn poll(addr: &str) -> Option<Poll> {
    // Metrics first, readiness second: a node counts as leading only when
    // both agree, so a leadership lost between the two reads is not
    // recorded under the newer term.
    let (_, metrics) = floe_harness::http_get(addr, "/metrics").await.ok()?;
    let (status, readiness) = floe_harness::http_get(addr, "/health/readyz").await.ok()?;
    let gauge = |name: &str| -> Option<f64> {
        metrics.lines().find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    };
    let readiness: serde_json::Value = serde_json::from_str(&readiness).unwrap_or_default();
    let claims_leader = gauge("floe_raft_is_leader") == Some(1.0);
    Some(Poll {
        ready: status == 200,
        term: gauge("floe_raft_term").map(|term| term as u64),
        leading: claims_leader && readiness["role"] == "leader",
    })
}

impl LeaderWatch {
    /// Starts polling `nodes` (id, HTTP `host:port`) every `interval`, for
    /// at most `limit`; addresses are read once here, so polling never
    /// waits on the target's lock while a fault operation holds it.
    pub fn start(
        nodes: Vec<(NodeId, String)>,
        clock: Clock,
        interval: Duration,
        limit: Duration,
    ) -> LeaderWatch {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        for (node, addr) in nodes {
            let (samples, stop) = (samples.clone(), stop.clone());
            tasks.spawn(async move {
                let deadline = Instant::now() + limit;
                while !stop.is_cancelled() && Instant::now() < deadline {
                    let at_us = clock.now_us();
                    let found = poll(&addr).await;
                    let sample = Sample {
                        node,
                        at_us,
                        reachable: found.is_some(),
                        ready: found.as_ref().is_some_and(|poll| poll.ready),
                        term: found.as_ref().and_then(|poll| poll.term),
                        leading: found.as_ref().is_some_and(|poll| poll.leading),
                    };
                    samples
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .push(sample);
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::time::sleep(interval) => {}
                    }
                }
            });
        }
        LeaderWatch {
            samples,
            stop,
            tasks,
        }
    }

    /// The samples so far, in time order.
    pub fn samples(&self) -> Vec<Sample> {
        let mut copy = self
            .samples
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        copy.sort_by_key(|sample| sample.at_us);
        copy
    }

    /// Stops the pollers (each finishes its current request, ≤ 4 s) and
    /// returns every sample.
    pub async fn stop(mut self) -> Vec<Sample> {
        self.stop.cancel();
        let drained = tokio::time::timeout(Duration::from_secs(5), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            self.tasks.abort_all();
        }
        self.samples()
    }
}

/// The (term, leader) pairs seen in `[from_us, to_us]`, in the order first
/// seen, starting with the incumbent: the last pair seen before `from_us`.
/// Consecutive distinct pairs are leader changes, so changes = len − 1.
pub fn leaderships(samples: &[Sample], from_us: u64, to_us: u64) -> Vec<(u64, NodeId)> {
    let mut pairs: Vec<(u64, NodeId)> = Vec::new();
    let incumbent = samples
        .iter()
        .filter(|sample| sample.leading && sample.at_us < from_us)
        .filter_map(|sample| Some((sample.term?, sample.node)))
        .max_by_key(|(term, _)| *term);
    pairs.extend(incumbent);
    for sample in samples
        .iter()
        .filter(|sample| sample.leading && sample.at_us >= from_us && sample.at_us <= to_us)
    {
        let Some(term) = sample.term else { continue };
        // A pair with an older term than one already seen is a deposed
        // leader that has not heard the news yet: not a new leadership.
        let newest = pairs.iter().map(|(seen, _)| *seen).max().unwrap_or(0);
        if term >= newest && !pairs.contains(&(term, sample.node)) {
            pairs.push((term, sample.node));
        }
    }
    pairs
}

/// Leader changes in `[from_us, to_us]`.
pub fn leader_changes(samples: &[Sample], from_us: u64, to_us: u64) -> usize {
    leaderships(samples, from_us, to_us).len().saturating_sub(1)
}

/// The highest term any node reported at or before `at_us`.
pub fn term_at(samples: &[Sample], at_us: u64) -> Option<u64> {
    samples
        .iter()
        .filter(|sample| sample.at_us <= at_us)
        .filter_map(|sample| sample.term)
        .max()
}

/// Per node: (samples, ready samples) in `[from_us, to_us]`.
pub fn readiness(samples: &[Sample], from_us: u64, to_us: u64) -> BTreeMap<NodeId, (usize, usize)> {
    let mut counts: BTreeMap<NodeId, (usize, usize)> = BTreeMap::new();
    for sample in samples
        .iter()
        .filter(|sample| sample.at_us >= from_us && sample.at_us <= to_us)
    {
        let entry = counts.entry(sample.node).or_default();
        entry.0 += 1;
        entry.1 += usize::from(sample.ready);
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leading(node: NodeId, at_us: u64, term: u64) -> Sample {
        Sample {
            node,
            at_us,
            reachable: true,
            ready: true,
            term: Some(term),
            leading: true,
        }
    }

    fn following(node: NodeId, at_us: u64, term: u64) -> Sample {
        Sample {
            leading: false,
            ..leading(node, at_us, term)
        }
    }

    #[test]
    fn a_steady_leader_is_no_change() {
        let samples = vec![
            leading(1, 0, 3),
            following(2, 10, 3),
            leading(1, 100, 3),
            leading(1, 200, 3),
        ];
        assert_eq!(leaderships(&samples, 50, 300), vec![(3, 1)]);
        assert_eq!(leader_changes(&samples, 50, 300), 0);
    }

    #[test]
    fn new_terms_and_leaders_are_counted_once_each() {
        let samples = vec![
            leading(1, 0, 3),
            leading(2, 100, 4),
            // The old leader still claims term 3 until it hears of term 4.
            leading(1, 110, 3),
            leading(2, 200, 4),
            leading(2, 300, 5),
        ];
        assert_eq!(leaderships(&samples, 50, 400), vec![(3, 1), (4, 2), (5, 2)]);
        assert_eq!(leader_changes(&samples, 50, 400), 2);
        // Outside the window nothing changed.
        assert_eq!(leader_changes(&samples, 310, 400), 0);
    }

    #[test]
    fn readiness_counts_per_node() {
        let mut not_ready = following(3, 20, 3);
        not_ready.ready = false;
        let samples = vec![following(3, 10, 3), not_ready, leading(1, 30, 3)];
        let counts = readiness(&samples, 0, 100);
        assert_eq!(counts[&3], (2, 1));
        assert_eq!(counts[&1], (1, 1));
        assert_eq!(term_at(&samples, 15), Some(3));
    }
}
