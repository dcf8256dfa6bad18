//! Prometheus metrics, rendered in the text exposition format. Names follow
//! `floe_<subsystem>_<name>_<unit>`; no per-run labels.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

pub(crate) const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Counters the node updates itself; Raft and storage numbers are read when scraped.
#[derive(Default)]
pub struct NodeMetrics {
    leader_changes: AtomicU64,
    pub(crate) writes_ok: AtomicU64,
    pub(crate) writes_failed: AtomicU64,
    pub(crate) forwarded_writes: AtomicU64,
    pub(crate) forwards: AtomicU64,
    pub(crate) linearizable_reads: AtomicU64,
    pub(crate) read_rounds: AtomicU64,
    pub(crate) write_latency: Mutex<Histogram>,
}

#[derive(Default)]
pub(crate) struct Histogram {
    pub(crate) counts: [u64; LATENCY_BUCKETS.len()],
    pub(crate) sum: f64,
    pub(crate) count: u64,
}

impl NodeMetrics {
    pub fn observe_write(&self, elapsed: Duration, ok: bool) {
        let counter = if ok {
            &self.writes_ok
        } else {
            &self.writes_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let seconds = elapsed.as_secs_f64();
        if let Ok(mut histogram) = self.write_latency.lock() {
            for (bound, count) in LATENCY_BUCKETS.iter().zip(histogram.counts.iter_mut()) {
                if seconds <= *bound {
                    *count += 1;
                }
            }
            histogram.sum += seconds;
            histogram.count += 1;
        }
    }

    /// One forward to the leader carrying `writes` writes.
    pub fn observe_forward(&self, writes: usize) {
        self.forwards.fetch_add(1, Ordering::Relaxed);
        self.forwarded_writes
            .fetch_add(writes as u64, Ordering::Relaxed);
    }

    /// One ReadIndex round shared by `reads` linearizable reads.
    pub fn observe_read_round(&self, reads: usize) {
        self.read_rounds.fetch_add(1, Ordering::Relaxed);
        self.linearizable_reads
            .fetch_add(reads as u64, Ordering::Relaxed);
    }

    pub(crate) fn count_leader_change(&self) {
        self.leader_changes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn leader_changes(&self) -> u64 {
        self.leader_changes.load(Ordering::Relaxed)
    }
}

pub(crate) fn gauge(out: &mut String, name: &str, help: &str, value: f64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

pub(crate) fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

pub(crate) fn histogram(
    out: &mut String,
    name: &str,
    help: &str,
    bounds: &[f64],
    cumulative: &[u64],
    sum: f64,
    count: u64,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (bound, bucket) in bounds.iter().zip(cumulative) {
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {bucket}");
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {sum}\n{name}_count {count}"
    );
}

/// The data dir's gauges; also served while the node waits for its disk (`outage.rs`).
pub fn render_disk(out: &mut String, free_bytes: u64, degraded: bool) {
    gauge(
        out,
        "floe_storage_free_bytes",
        "Bytes free on the data dir's filesystem.",
        free_bytes as f64,
    );
    gauge(out, "floe_storage_degraded", "1 while the data dir cannot take writes (under storage.min_free_bytes, read-only, or failed) and the node refuses them.", f64::from(u8::from(degraded)));
}

/// Resident memory of this process, from sysinfo.
pub fn resident_memory_bytes() -> Option<u64> {
    let pid = sysinfo::get_current_pid().ok()?;
    let mut system = sysinfo::System::new();
    system.refresh_processes(sysinfo::ProcessesToUpdate::Some(&[pid]), true);
    system.process(pid).map(|process| process.memory())
}
