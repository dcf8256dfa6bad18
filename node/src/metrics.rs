//! Prometheus metrics, rendered in the text exposition format. Names follow
//! `floe_<subsystem>_<name>_<unit>`; no per-run labels.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Counters the node updates itself; Raft and storage numbers are read when scraped.
#[derive(Default)]
pub struct NodeMetrics {
    leader_changes: AtomicU64,
    writes_ok: AtomicU64,
    writes_failed: AtomicU64,
    forwarded_writes: AtomicU64,
    forwards: AtomicU64,
    linearizable_reads: AtomicU64,
    read_rounds: AtomicU64,
    write_latency: Mutex<Histogram>,
}

#[derive(Default)]
struct Histogram {
    counts: [u64; LATENCY_BUCKETS.len()],
    sum: f64,
    count: u64,
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

fn gauge(out: &mut String, name: &str, help: &str, value: f64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

fn histogram(
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

/// The `/metrics` page.
pub async fn render(cluster: &crate::cluster::ClusterHandle) -> String {
    let metrics = cluster.raft_metrics();
    let commit_index = cluster.committed_index().await;
    let applied_index = metrics.last_applied.map(|id| id.index).unwrap_or(0);
    let mut out = String::new();
    gauge(
        &mut out,
        "floe_raft_term",
        "Current Raft term.",
        metrics.current_term as f64,
    );
    gauge(
        &mut out,
        "floe_raft_commit_index",
        "Highest log index known committed.",
        commit_index as f64,
    );
    gauge(
        &mut out,
        "floe_raft_applied_index",
        "Highest log index applied to the state machine.",
        applied_index as f64,
    );
    gauge(
        &mut out,
        "floe_raft_apply_lag_entries",
        "Committed entries not yet applied.",
        commit_index.saturating_sub(applied_index) as f64,
    );
    gauge(
        &mut out,
        "floe_raft_last_log_index",
        "Last index in the local log.",
        metrics.last_log_index.unwrap_or(0) as f64,
    );
    gauge(
        &mut out,
        "floe_raft_snapshot_index",
        "Last log index covered by this node's snapshot.",
        metrics.snapshot.map(|id| id.index).unwrap_or(0) as f64,
    );
    gauge(
        &mut out,
        "floe_raft_purged_index",
        "Last log index purged from this node's log.",
        metrics.purged.map(|id| id.index).unwrap_or(0) as f64,
    );
    gauge(
        &mut out,
        "floe_raft_is_leader",
        "1 when this node is the leader.",
        f64::from(u8::from(cluster.is_leader())),
    );
    counter(
        &mut out,
        "floe_raft_leader_changes_total",
        "Leader changes seen by this node.",
        cluster.metrics().leader_changes(),
    );
    let _ = writeln!(out, "# HELP floe_raft_peer_rtt_seconds QUIC round-trip time to each peer.\n# TYPE floe_raft_peer_rtt_seconds gauge");
    for (peer, rtt) in cluster.peer_rtts() {
        let _ = writeln!(
            out,
            "floe_raft_peer_rtt_seconds{{peer=\"{peer}\"}} {}",
            rtt.as_secs_f64()
        );
    }
    let flushes = cluster.store().flush_stats().histogram();
    let (bounds, cumulative): (Vec<f64>, Vec<u64>) = flushes.buckets.into_iter().unzip();
    histogram(
        &mut out,
        "floe_storage_flush_duration_seconds",
        "Time to make a log append, vote or purge durable.",
        &bounds,
        &cumulative,
        flushes.sum_seconds,
        flushes.count,
    );
    let applies = cluster.store().apply_stats();
    let apply_durations = applies.durations();
    let (bounds, cumulative): (Vec<f64>, Vec<u64>) = apply_durations.buckets.into_iter().unzip();
    histogram(
        &mut out,
        "floe_storage_apply_duration_seconds",
        "Time to apply one batch of committed entries to the state machine.",
        &bounds,
        &cumulative,
        apply_durations.sum_seconds,
        apply_durations.count,
    );
    counter(&mut out, "floe_storage_apply_refused_commands_total", "Commands apply refused because they could not be applied (state unchanged; see the node's log).", applies.refused());
    counter(
        &mut out,
        "floe_api_writes_total",
        "Writes proposed on this node as leader that committed.",
        cluster.metrics().writes_ok.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "floe_api_write_failures_total",
        "Writes proposed on this node as leader that failed.",
        cluster.metrics().writes_failed.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "floe_api_forwarded_writes_total",
        "Writes this node sent to the leader.",
        cluster.metrics().forwarded_writes.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "floe_api_forwards_total",
        "Requests to the leader that carried them (several writes travel together under load).",
        cluster.metrics().forwards.load(Ordering::Relaxed),
    );
    counter(&mut out, "floe_api_linearizable_reads_total", "Reads on this node that waited for a ReadIndex round (including followers' rounds served as leader).", cluster.metrics().linearizable_reads.load(Ordering::Relaxed));
    counter(
        &mut out,
        "floe_api_read_rounds_total",
        "ReadIndex rounds this node ran (reads waiting at once share one).",
        cluster.metrics().read_rounds.load(Ordering::Relaxed),
    );
    if let Ok(histo) = cluster.metrics().write_latency.lock() {
        histogram(
            &mut out,
            "floe_api_write_duration_seconds",
            "Propose-to-apply latency of writes on the leader.",
            &LATENCY_BUCKETS,
            &histo.counts,
            histo.sum,
            histo.count,
        );
    }
    render_disk(
        &mut out,
        cluster.disk().free_bytes(),
        cluster.disk().is_degraded(),
    );
    if let Some(rss) = resident_memory_bytes() {
        gauge(
            &mut out,
            "floe_process_resident_memory_bytes",
            "Resident set size of this process.",
            rss as f64,
        );
    }
    out
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
