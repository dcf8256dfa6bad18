//! The data dir's health: free space and whether its filesystem is writable.
//!
//! sled poisons itself on a write error (after one ENOSPC or EROFS every
//! later operation fails until the store is reopened) and openraft stops
//! its core on a storage error, so the node stops writing *before* the disk
//! is full: a sampler reads the data dir's filesystem (statvfs) every
//! [`SAMPLE_INTERVAL`], and write paths re-read it when the last sample is
//! older than [`FRESH_FOR`]. While free space is under
//! `storage.min_free_bytes`, or the filesystem is read-only, the node is
//! *degraded*: proposals fail fast, peers' Raft requests are refused, a
//! leader stops heartbeating and the node does not campaign (`service.rs`).
//! Writes resume once free space is back above the floor plus an eighth of
//! it, so a node at the edge does not flap. A disk that fills faster than
//! the sampler reads it is handled by `outage.rs`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock::Clock;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often the sampler reads the data dir's filesystem.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);
/// A write path re-reads the filesystem when the last sample is older.
const FRESH_FOR: Duration = Duration::from_millis(20);

/// What the sampler saw last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskState {
    /// Bytes an unprivileged process may still write (statvfs `f_bavail`).
    pub free_bytes: u64,
    pub read_only: bool,
    /// Why the node must not write now; `None` while the disk takes writes.
    pub degraded: Option<String>,
}

struct Shared {
    data_dir: PathBuf,
    min_free_bytes: u64,
    /// Free bytes needed to leave the degraded state.
    resume_free_bytes: u64,
    started: Instant,
    /// Times the samples (the node's clock).
    clock: Clock,
    /// Milliseconds after `started` of the last sample.
    sampled_at_ms: AtomicU64,
    free_bytes: AtomicU64,
    degraded: AtomicBool,
    state: watch::Sender<DiskState>,
}

/// Handle to the data dir's health; cheap to clone, lives as long as the process.
#[derive(Clone)]
pub struct DiskHealth {
    shared: Arc<Shared>,
}

impl DiskHealth {
    /// Reads the filesystem once, then keeps sampling it until `cancel` fires.
    pub fn start(
        data_dir: &Path,
        min_free_bytes: u64,
        clock: Clock,
        cancel: CancellationToken,
    ) -> DiskHealth {
        let health = DiskHealth::new(data_dir, min_free_bytes, clock);
        health.sample();
        let sampler = health.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = sampler.shared.clock.sleep(SAMPLE_INTERVAL) => sampler.sample(),
                }
            }
        });
        health
    }

    fn new(data_dir: &Path, min_free_bytes: u64, clock: Clock) -> DiskHealth {
        let initial = DiskState {
            free_bytes: 0,
            read_only: false,
            degraded: None,
        };
        let shared = Shared {
            data_dir: data_dir.to_path_buf(),
            min_free_bytes,
            resume_free_bytes: min_free_bytes.saturating_add(min_free_bytes / 8),
            started: clock.now(),
            clock,
            sampled_at_ms: AtomicU64::new(0),
            free_bytes: AtomicU64::new(0),
            degraded: AtomicBool::new(false),
            state: watch::Sender::new(initial),
        };
        DiskHealth {
            shared: Arc::new(shared),
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.shared.data_dir
    }

    pub fn min_free_bytes(&self) -> u64 {
        self.shared.min_free_bytes
    }

    /// Whether the node must not write now (as of the last sample).
    pub fn is_degraded(&self) -> bool {
        self.shared.degraded.load(Ordering::Relaxed)
    }

    /// Free bytes at the last sample.
    pub fn free_bytes(&self) -> u64 {
        self.shared.free_bytes.load(Ordering::Relaxed)
    }

    /// Why the node is degraded, if it is.
    pub fn reason(&self) -> Option<String> {
        self.shared.state.borrow().degraded.clone()
    }

    /// Every change of the state, starting from the current one.
    pub fn subscribe(&self) -> watch::Receiver<DiskState> {
        self.shared.state.subscribe()
    }

    /// For write paths: re-reads the filesystem if the last sample is
    /// stale (one statvfs call, no data I/O), then says why not to write.
    pub fn refusal(&self) -> Option<String> {
        let now_ms = self.shared.clock.since(self.shared.started).as_millis() as u64;
        let sampled_ms = self.shared.sampled_at_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(sampled_ms) > FRESH_FOR.as_millis() as u64 {
            self.sample();
        }
        if self.is_degraded() {
            return self.reason();
        }
        None
    }

    /// Reads the filesystem and records what it says.
    pub fn sample(&self) {
        let shared = &self.shared;
        shared.sampled_at_ms.store(
            shared.clock.since(shared.started).as_millis() as u64,
            Ordering::Relaxed,
        );
        let was_degraded = self.is_degraded();
        let state = match rustix::fs::statvfs(&shared.data_dir) {
            Ok(stat) => {
                let free_bytes = stat.f_bavail.saturating_mul(stat.f_frsize);
                let read_only = stat.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY);
                let degraded = self.judge(free_bytes, read_only, was_degraded);
                DiskState {
                    free_bytes,
                    read_only,
                    degraded,
                }
            }
            Err(error) => DiskState {
                free_bytes: 0,
                read_only: false,
                degraded: Some(format!(
                    "cannot read the filesystem of data dir {}: {error}",
                    shared.data_dir.display()
                )),
            },
        };
        shared.free_bytes.store(state.free_bytes, Ordering::Relaxed);
        // Swapped, so that of two samples at once only one logs the change.
        let previously_degraded = shared
            .degraded
            .swap(state.degraded.is_some(), Ordering::Relaxed);
        match (&state.degraded, previously_degraded) {
            (Some(reason), false) => tracing::warn!(
                data_dir = %shared.data_dir.display(),
                free_bytes = state.free_bytes,
                min_free_bytes = shared.min_free_bytes,
                read_only = state.read_only,
                "node degraded, refusing writes and log appends: {reason}"
            ),
            (None, true) => tracing::info!(
                data_dir = %shared.data_dir.display(),
                free_bytes = state.free_bytes,
                "data dir takes writes again: node resumes writing"
            ),
            _ => {}
        }
        shared.state.send_if_modified(|current| {
            // Free bytes move all the time; subscribers care about the condition.
            let changed =
                current.degraded != state.degraded || current.read_only != state.read_only;
            *current = state;
            changed
        });
    }

    /// Why a filesystem with `free_bytes` free must not be written to.
    fn judge(&self, free_bytes: u64, read_only: bool, was_degraded: bool) -> Option<String> {
        let shared = &self.shared;
        let dir = shared.data_dir.display();
        if read_only {
            return Some(format!(
                "data dir {dir} is on a read-only filesystem ({free_bytes} bytes free)"
            ));
        }
        let floor = shared.min_free_bytes;
        if free_bytes < floor {
            return Some(format!(
                "data dir {dir} has {free_bytes} bytes ({}) free, under storage.min_free_bytes = {floor} ({})",
                mib(free_bytes),
                mib(floor)
            ));
        }
        if was_degraded && free_bytes < shared.resume_free_bytes {
            return Some(format!(
                "data dir {dir} has {free_bytes} bytes ({}) free; writes resume above {} bytes ({}), storage.min_free_bytes plus an eighth",
                mib(free_bytes),
                shared.resume_free_bytes,
                mib(shared.resume_free_bytes)
            ));
        }
        None
    }
}

/// Creates, syncs and removes a small file in `dir`: whether it takes
/// writes now. Blocking.
pub fn probe_writable(dir: &Path) -> std::io::Result<()> {
    use std::io::Write as _;
    let probe = dir.join(".floe-write-probe");
    let written = std::fs::File::create(&probe).and_then(|mut file| {
        file.write_all(b"floe")?;
        file.sync_all()
    });
    let removed = std::fs::remove_file(&probe);
    written.and(removed)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degrades_under_the_floor_and_resumes_above_it_plus_an_eighth() {
        let health = DiskHealth::new(Path::new("/data"), 800, Clock::system());
        assert_eq!(health.judge(800, false, false), None);
        let under = health.judge(799, false, false).expect("under the floor");
        assert!(
            under.contains("/data")
                && under.contains("799 bytes")
                && under.contains("min_free_bytes = 800"),
            "{under}"
        );
        // Back over the floor but not over floor + 1/8 = 900: still degraded.
        assert!(health.judge(850, false, true).is_some());
        assert_eq!(health.judge(900, false, true), None);
        let read_only = health.judge(10_000, true, false).expect("read-only");
        assert!(read_only.contains("read-only"), "{read_only}");
    }

    #[tokio::test]
    async fn samples_a_real_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let health = DiskHealth::start(dir.path(), 0, Clock::system(), CancellationToken::new());
        assert!(!health.is_degraded(), "{:?}", health.reason());
        assert!(health.free_bytes() > 0);
        assert_eq!(health.refusal(), None);
        probe_writable(dir.path()).unwrap();
        let full = DiskHealth::start(
            dir.path(),
            u64::MAX,
            Clock::system(),
            CancellationToken::new(),
        );
        assert!(full.is_degraded());
        assert!(full
            .refusal()
            .is_some_and(|reason| reason.contains(&dir.path().display().to_string())));
        let missing = DiskHealth::start(
            &dir.path().join("missing"),
            0,
            Clock::system(),
            CancellationToken::new(),
        );
        assert!(missing
            .reason()
            .is_some_and(|reason| reason.contains("cannot read the filesystem")));
    }
}
