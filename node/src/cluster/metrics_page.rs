//! The node's `/metrics` page (Prometheus text format), from the cluster
//! component's view: Raft, writes and reads, the store, the disk.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use super::ClusterHandle;
use crate::metrics::{
    counter, gauge, histogram, render_disk, resident_memory_bytes, LATENCY_BUCKETS,
};

impl ClusterHandle {
    /// The `/metrics` page: Raft, writes, reads, the store and the disk.
    pub async fn render_metrics(&self) -> String {
        let cluster = self;
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
        let (bounds, cumulative): (Vec<f64>, Vec<u64>) =
            apply_durations.buckets.into_iter().unzip();
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
}
