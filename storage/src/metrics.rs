//! Flush latency statistics, exported by the node as a Prometheus histogram.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Upper bounds (seconds) of the flush latency buckets.
pub const FLUSH_BUCKETS_SECONDS: [f64; 11] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Durations of sled flushes (log appends, votes, truncates, purges, installs).
///
/// Cheap to clone; all clones share the same counters.
#[derive(Clone, Debug, Default)]
pub struct FlushStats {
    inner: Arc<FlushStatsInner>,
}

#[derive(Debug, Default)]
struct FlushStatsInner {
    /// Non-cumulative counts per bucket; the cumulative view is computed on read.
    bucket_counts: [AtomicU64; FLUSH_BUCKETS_SECONDS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

/// A point-in-time read of [`FlushStats`].
#[derive(Clone, Debug, PartialEq)]
pub struct FlushHistogram {
    /// `(upper bound in seconds, cumulative count)`, Prometheus `le` style;
    /// flushes slower than the last bound only appear in `count`.
    pub buckets: Vec<(f64, u64)>,
    /// Total seconds spent flushing.
    pub sum_seconds: f64,
    /// Number of flushes.
    pub count: u64,
}

impl FlushStats {
    /// Records one flush that took `elapsed`.
    pub fn record(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(bucket) = FLUSH_BUCKETS_SECONDS
            .iter()
            .position(|&bound| seconds <= bound)
        {
            self.inner.bucket_counts[bucket].fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.inner.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.inner.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Cumulative buckets, sum (seconds) and count.
    pub fn histogram(&self) -> FlushHistogram {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(FLUSH_BUCKETS_SECONDS.len());
        for (bound, counter) in FLUSH_BUCKETS_SECONDS.iter().zip(&self.inner.bucket_counts) {
            cumulative += counter.load(Ordering::Relaxed);
            buckets.push((*bound, cumulative));
        }
        let sum_seconds = self.inner.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        FlushHistogram {
            buckets,
            sum_seconds,
            count: self.inner.count.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative() {
        let stats = FlushStats::default();
        stats.record(Duration::from_micros(100));
        stats.record(Duration::from_millis(3));
        stats.record(Duration::from_secs(2));
        let histogram = stats.clone().histogram();
        assert_eq!(histogram.count, 3);
        assert_eq!(histogram.buckets[0], (0.0005, 1));
        assert_eq!(histogram.buckets[3], (0.005, 2));
        assert_eq!(histogram.buckets.last(), Some(&(1.0, 2)));
        assert!((histogram.sum_seconds - 2.0031).abs() < 1e-6);
    }
}

/// What apply did: how long each batch of entries took, and how many
/// commands it refused because they could not be applied.
#[derive(Clone, Debug, Default)]
pub struct ApplyStats {
    durations: FlushStats,
    refused: Arc<AtomicU64>,
}

impl ApplyStats {
    pub(crate) fn record_batch(&self, elapsed: Duration, refused: usize) {
        self.durations.record(elapsed);
        self.refused.fetch_add(refused as u64, Ordering::Relaxed);
    }

    /// Durations of applied batches (same buckets as flushes).
    pub fn durations(&self) -> FlushHistogram {
        self.durations.histogram()
    }

    /// Commands apply refused since the node started.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}
