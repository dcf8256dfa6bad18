//! Counters a pool keeps for metrics, placement and the benchmark.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Latencies kept for percentiles: the most recent ones, so p99 follows current load.
const LATENCY_WINDOW: usize = 4096;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolStats {
    pub name: String,
    pub replicas: usize,
    pub queue_depth: usize,
    pub queue_capacity: usize,
    /// Requests answered with outputs.
    pub completed: u64,
    /// Requests answered with an error after they were queued.
    pub failed: u64,
    /// Requests refused with `QueueFull`.
    pub rejected: u64,
    pub batches: u64,
    /// Requests per run: `{requests in the batch: runs}`.
    pub batch_size_histogram: BTreeMap<usize, u64>,
    pub mean_batch_size: f64,
    /// Enqueue to answer, over the last few thousand requests.
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    /// Resident memory the replicas added when their sessions were created and warmed
    /// up (process RSS deltas; approximate if other threads allocated meanwhile).
    pub memory_bytes: u64,
}

#[derive(Default)]
struct Counters {
    completed: u64,
    failed: u64,
    rejected: u64,
    batches: u64,
    histogram: BTreeMap<usize, u64>,
    latencies: VecDeque<Duration>,
}

#[derive(Default)]
pub(crate) struct StatsRecorder {
    counters: Mutex<Counters>,
}

impl StatsRecorder {
    fn with<T>(&self, update: impl FnOnce(&mut Counters) -> T) -> T {
        // Counters stay valid whatever panicked while holding the lock.
        update(&mut self.counters.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub(crate) fn record_rejected(&self) {
        self.with(|counters| counters.rejected += 1);
    }

    /// One run of `latencies.len()` requests; `succeeded` tells how they were answered.
    pub(crate) fn record_batch(&self, latencies: &[Duration], succeeded: bool) {
        self.with(|counters| {
            counters.batches += 1;
            *counters.histogram.entry(latencies.len()).or_default() += 1;
            let answered = latencies.len() as u64;
            if succeeded {
                counters.completed += answered;
            } else {
                counters.failed += answered;
            }
            for latency in latencies {
                if counters.latencies.len() == LATENCY_WINDOW {
                    counters.latencies.pop_front();
                }
                counters.latencies.push_back(*latency);
            }
        });
    }

    /// Fills the counter fields of `stats`.
    pub(crate) fn fill(&self, stats: &mut PoolStats) {
        self.with(|counters| {
            stats.completed = counters.completed;
            stats.failed = counters.failed;
            stats.rejected = counters.rejected;
            stats.batches = counters.batches;
            stats.batch_size_histogram = counters.histogram.clone();
            let requests: u64 = counters
                .histogram
                .iter()
                .map(|(size, runs)| *size as u64 * runs)
                .sum();
            stats.mean_batch_size = if counters.batches == 0 {
                0.0
            } else {
                requests as f64 / counters.batches as f64
            };
            let mut sorted: Vec<Duration> = counters.latencies.iter().copied().collect();
            sorted.sort_unstable();
            stats.latency_p50_ms = percentile_ms(&sorted, 0.50);
            stats.latency_p99_ms = percentile_ms(&sorted, 0.99);
        });
    }
}

/// Nearest-rank percentile of sorted samples, in milliseconds (0 when empty).
pub(crate) fn percentile_ms(sorted: &[Duration], quantile: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (quantile * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&samples, 0.50), 50.0);
        assert_eq!(percentile_ms(&samples, 0.99), 99.0);
        assert_eq!(percentile_ms(&[], 0.5), 0.0);
        assert_eq!(percentile_ms(&samples[..1], 0.99), 1.0);
    }

    #[test]
    fn batches_fill_the_histogram_and_mean() {
        let recorder = StatsRecorder::default();
        let ms = Duration::from_millis;
        recorder.record_batch(&[ms(1), ms(2), ms(3), ms(4)], true);
        recorder.record_batch(&[ms(5), ms(6)], true);
        recorder.record_batch(&[ms(7)], false);
        recorder.record_rejected();
        let mut stats = PoolStats::default();
        recorder.fill(&mut stats);
        assert_eq!(
            stats.batch_size_histogram,
            BTreeMap::from([(1, 1), (2, 1), (4, 1)])
        );
        assert_eq!(
            (stats.completed, stats.failed, stats.rejected, stats.batches),
            (6, 1, 1, 3)
        );
        assert!((stats.mean_batch_size - 7.0 / 3.0).abs() < 1e-9);
        assert_eq!(stats.latency_p50_ms, 4.0);
    }
}
