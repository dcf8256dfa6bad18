//! Numbers for the report: failover times and throughput held.

use crate::nemesis::ActiveFault;
use crate::workload::history::{OpRecord, Outcome};

/// The `q` quantile (0..=1) of `values`, nearest rank.
pub fn quantile(values: &[u64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1] as f64)
}

/// Per fault: ms from injection until the first write invoked after it
/// completed successfully (none: the cluster never took a write again
/// before the history ended).
pub fn failover_ms(history: &[OpRecord], faults: &[ActiveFault]) -> Vec<u64> {
    let mut times = Vec::new();
    for fault in faults {
        let first_ok = history
            .iter()
            .filter(|record| {
                record.op.is_write()
                    && record.outcome == Outcome::Ok
                    && record.invoked_us >= fault.started_us
            })
            .map(|record| record.completed_us)
            .min();
        if let Some(completed) = first_ok {
            times.push((completed - fault.started_us) / 1000);
        }
    }
    times
}

/// Successful operations completed per second within [from, to) µs.
pub fn ok_rate(history: &[OpRecord], from_us: u64, to_us: u64) -> f64 {
    if to_us <= from_us {
        return 0.0;
    }
    let count = history
        .iter()
        .filter(|record| {
            record.outcome == Outcome::Ok
                && record.completed_us >= from_us
                && record.completed_us < to_us
        })
        .count();
    count as f64 / ((to_us - from_us) as f64 / 1e6)
}

/// Successful operations per second over all fault windows together.
pub fn fault_rate(history: &[OpRecord], faults: &[ActiveFault]) -> f64 {
    let mut count = 0usize;
    let mut span_us = 0u64;
    for fault in faults {
        let end = fault.healed_us.unwrap_or(fault.started_us);
        span_us += end.saturating_sub(fault.started_us);
        count += history
            .iter()
            .filter(|record| {
                record.outcome == Outcome::Ok
                    && record.completed_us >= fault.started_us
                    && record.completed_us < end
            })
            .count();
    }
    if span_us == 0 {
        return 0.0;
    }
    count as f64 / (span_us as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_nearest_rank() {
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[5], 0.99), Some(5.0));
        assert_eq!(quantile(&[1, 2, 3, 4], 0.5), Some(2.0));
        assert_eq!(quantile(&[4, 3, 2, 1], 0.99), Some(4.0));
    }
}
