//! Availability numbers for a scenario: how often leadership changed, the
//! longest stretch without a successful write while writes were being
//! attempted, and what a node cut off from its peers told its clients.

use serde::Serialize;

use crate::nemesis::{ActiveFault, Nemesis};
use crate::watch::{self, Sample};
use crate::workload::history::{OpRecord, Outcome};

#[derive(Clone, Debug, Default, Serialize)]
pub struct Availability {
    /// Distinct (term, leader) pairs seen after the first.
    pub leader_changes: usize,
    /// Every (term, leader) pair seen, in order.
    pub leaderships: Vec<(u64, u64)>,
    /// Highest term seen minus the first term seen.
    pub term_rise: u64,
    /// Longest interval with no successful write completion while at least
    /// one write was in flight.
    pub longest_write_gap_ms: u64,
    pub writes_failed: usize,
    pub writes_unknown: usize,
}

pub fn measure(records: &[OpRecord], samples: &[Sample], from_us: u64, to_us: u64) -> Availability {
    let leaderships = watch::leaderships(samples, from_us, to_us);
    let terms: Vec<u64> = samples
        .iter()
        .filter(|s| s.at_us >= from_us && s.at_us <= to_us)
        .filter_map(|s| s.term)
        .collect();
    let first_term = terms.first().copied().unwrap_or(0);
    let writes = records.iter().filter(|record| record.op.is_write());
    Availability {
        leader_changes: leaderships.len().saturating_sub(1),
        leaderships,
        term_rise: terms
            .iter()
            .max()
            .copied()
            .unwrap_or(0)
            .saturating_sub(first_term),
        longest_write_gap_ms: longest_write_gap_us(records, from_us, to_us) / 1000,
        writes_failed: writes
            .clone()
            .filter(|record| record.outcome == Outcome::Fail)
            .count(),
        writes_unknown: writes
            .filter(|record| record.outcome == Outcome::Unknown)
            .count(),
    }
}

/// The longest interval within `[from_us, to_us]` between two successful
/// write completions (or a bound) during which some write was in flight.
pub fn longest_write_gap_us(records: &[OpRecord], from_us: u64, to_us: u64) -> u64 {
    let writes: Vec<&OpRecord> = records
        .iter()
        .filter(|record| record.op.is_write())
        .collect();
    let mut marks: Vec<u64> = writes
        .iter()
        .filter(|record| {
            record.outcome == Outcome::Ok
                && record.completed_us > from_us
                && record.completed_us < to_us
        })
        .map(|record| record.completed_us)
        .collect();
    marks.push(from_us);
    marks.push(to_us);
    marks.sort_unstable();
    let mut longest = 0;
    for pair in marks.windows(2) {
        let (start, end) = (pair[0], pair[1]);
        let attempted = writes
            .iter()
            .any(|record| record.invoked_us < end && record.completed_us > start);
        if attempted {
            longest = longest.max(end - start);
        }
    }
    longest
}

/// For a peer-isolated leader: what its `/health/readyz` said during the
/// fault, and how writes sent to it ended and how long they took.
pub fn isolation_notes(
    fault: &ActiveFault,
    records: &[OpRecord],
    samples: &[Sample],
) -> Vec<String> {
    if fault.nemesis != Nemesis::IsolateLeaderPeers {
        return Vec::new();
    }
    let Some(&node) = fault.nodes.first() else {
        return Vec::new();
    };
    let (from, to) = (fault.started_us, fault.healed_us.unwrap_or(u64::MAX));
    let mine: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.node == node && s.at_us >= from && s.at_us <= to)
        .collect();
    let ready = mine.iter().filter(|s| s.ready).count();
    let first_not_ready = mine
        .iter()
        .find(|s| !s.ready)
        .map(|s| format!("{} ms", (s.at_us - from) / 1000));
    let mut notes = vec![format!(
        "isolated node {node}: readyz 200 in {ready} of {} polls; first not-ready after {}",
        mine.len(),
        first_not_ready.unwrap_or_else(|| "never".into())
    )];
    let writes: Vec<&OpRecord> = records
        .iter()
        .filter(|r| r.node == node && r.op.is_write() && r.invoked_us >= from && r.invoked_us <= to)
        .collect();
    let mut latencies: Vec<u64> = writes.iter().map(|r| r.latency_us() / 1000).collect();
    let count = |outcome: Outcome| writes.iter().filter(|r| r.outcome == outcome).count();
    latencies.sort_unstable();
    notes.push(format!(
        "writes to node {node}: {} ok/{} fail/{} unknown, latency p50 {} ms, max {} ms",
        count(Outcome::Ok),
        count(Outcome::Fail),
        count(Outcome::Unknown),
        super::stats::quantile(&latencies, 0.5).unwrap_or(0.0),
        latencies.last().copied().unwrap_or(0)
    ));
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::history::Op;

    fn put(invoked_us: u64, completed_us: u64, outcome: Outcome) -> OpRecord {
        let op = Op::Put {
            key: "k".into(),
            value: "v".into(),
        };
        OpRecord {
            process: 0,
            node: 1,
            op,
            invoked_us,
            completed_us,
            outcome,
            error: None,
        }
    }

    #[test]
    fn the_gap_spans_only_time_with_writes_in_flight() {
        let records = vec![
            put(0, 100, Outcome::Ok),
            // Attempted from 150 to 2_150 without success; next ok at 2_500.
            put(150, 2_150, Outcome::Unknown),
            put(2_200, 2_500, Outcome::Ok),
            put(2_600, 2_700, Outcome::Ok),
        ];
        assert_eq!(longest_write_gap_us(&records, 0, 2_800), 2_400);
        // Nothing in flight between 2_700 and 10_000: not unavailability.
        assert_eq!(longest_write_gap_us(&records, 0, 10_000), 2_400);
    }

    #[test]
    fn no_writes_means_no_gap() {
        assert_eq!(longest_write_gap_us(&[], 0, 10_000), 0);
    }
}
