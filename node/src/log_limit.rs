//! Failure logs that repeat are written at most once per key per interval.
//!
//! A cluster is designed to run with a node down; while it is, every read
//! round, forward, report or peer call that touches that node fails the same
//! way, many times a second. One line per key (a place and, where it matters,
//! a peer) per [`INTERVAL`] says it; the next line written for that key
//! carries `suppressed = N`, how many were left out since.
//!
//! openraft logs some of its own per-request failures at ERROR (a heartbeat
//! to a down follower during each read round). [`OpenraftNoise`] drops the
//! one that says nothing a read's own outcome does not, and limits every
//! other openraft WARN/ERROR line to one per line of openraft source per
//! interval (those lines cannot carry the count: they are openraft's).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tracing::subscriber::Interest;
use tracing::{Level, Metadata};
use tracing_subscriber::layer::{Context, Layer};

/// At most one line per key this often.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Keys remembered at once; past it, keys quiet for an interval are forgotten.
const MAX_KEYS: usize = 1024;

/// Per-key state of the lines written and left out.
pub struct LogLimit {
    interval: Duration,
    keys: Mutex<HashMap<String, KeyState>>,
}

struct KeyState {
    last_written: Instant,
    suppressed: u64,
}

impl LogLimit {
    pub fn new(interval: Duration) -> LogLimit {
        LogLimit {
            interval,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(suppressed)` when a line for `key` may be written now (with the
    /// count of lines left out since the last one); `None` leaves it out.
    pub fn allow(&self, key: &str) -> Option<u64> {
        self.allow_at(key, Instant::now())
    }

    fn allow_at(&self, key: &str, now: Instant) -> Option<u64> {
        // A poisoned lock only means another thread panicked mid-update of
        // counters; they are still usable.
        let mut keys = self
            .keys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(state) = keys.get_mut(key) {
            if now.saturating_duration_since(state.last_written) < self.interval {
                state.suppressed += 1;
                return None;
            }
            let suppressed = state.suppressed;
            *state = KeyState {
                last_written: now,
                suppressed: 0,
            };
            return Some(suppressed);
        }
        if keys.len() >= MAX_KEYS {
            let interval = self.interval;
            keys.retain(|_, state| now.saturating_duration_since(state.last_written) < interval);
        }
        keys.insert(
            key.to_string(),
            KeyState {
                last_written: now,
                suppressed: 0,
            },
        );
        Some(0)
    }
}

/// `tracing::warn!` at most once per `key` per [`INTERVAL`], with the
/// number of lines left out since as `suppressed`.
#[macro_export]
macro_rules! warn_limited {
    ($key:expr, $($rest:tt)+) => {
        if let Some(suppressed) = $crate::log_limit::allow(&$key) {
            tracing::warn!(suppressed, $($rest)+);
        }
    };
}

/// The node's shared limiter, at [`INTERVAL`].
pub fn global() -> &'static LogLimit {
    static GLOBAL: OnceLock<LogLimit> = OnceLock::new();
    GLOBAL.get_or_init(|| LogLimit::new(INTERVAL))
}

/// `Some(suppressed)` when a line for `key` may be written now.
pub fn allow(key: &str) -> Option<u64> {
    global().allow(key)
}

/// A subscriber layer that quiets openraft's repeating failure lines.
pub struct OpenraftNoise;

/// openraft 0.9.25 logs this at ERROR for every follower that misses a
/// heartbeat of a read round, even when the round reaches its quorum; a
/// round that fails is reported by floe's read path (`reads.rs`).
fn is_read_round_heartbeat(metadata: &Metadata<'_>) -> bool {
    let file = metadata.file().unwrap_or_default().replace('\\', "/");
    metadata.target() == "openraft::core::raft_core"
        && file.ends_with("core/raft_core.rs")
        && metadata.line() == Some(383)
}

fn is_openraft_failure(metadata: &Metadata<'_>) -> bool {
    metadata.is_event()
        && metadata.target().starts_with("openraft")
        && *metadata.level() <= Level::WARN
}

impl<S: tracing::Subscriber> Layer<S> for OpenraftNoise {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if is_openraft_failure(metadata) {
            // Asked per event, so the limit can decide each time.
            Interest::sometimes()
        } else {
            Interest::always()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>, _context: Context<'_, S>) -> bool {
        if !is_openraft_failure(metadata) {
            return true;
        }
        if is_read_round_heartbeat(metadata) {
            return false;
        }
        let key = format!(
            "openraft {}:{}",
            metadata.file().unwrap_or_default(),
            metadata.line().unwrap_or_default()
        );
        allow(&key).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn first_line_is_written_then_repeats_are_counted_until_the_interval_passes() {
        let limit = LogLimit::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(limit.allow_at("reads", start), Some(0));
        for offset in 1..=5 {
            assert_eq!(
                limit.allow_at("reads", start + Duration::from_secs(offset)),
                None
            );
        }
        // Another key has its own interval.
        assert_eq!(
            limit.allow_at("forward", start + Duration::from_secs(1)),
            Some(0)
        );
        assert_eq!(
            limit.allow_at("reads", start + Duration::from_secs(10)),
            Some(5)
        );
        assert_eq!(
            limit.allow_at("reads", start + Duration::from_secs(11)),
            None
        );
        assert_eq!(
            limit.allow_at("reads", start + Duration::from_secs(25)),
            Some(1)
        );
    }

    #[test]
    fn quiet_keys_are_forgotten_when_the_table_is_full() {
        let limit = LogLimit::new(Duration::from_secs(10));
        let start = Instant::now();
        for key in 0..MAX_KEYS {
            assert_eq!(limit.allow_at(&key.to_string(), start), Some(0));
        }
        let later = start + Duration::from_secs(11);
        assert_eq!(limit.allow_at("new", later), Some(0));
        let keys = limit.keys.lock().unwrap();
        assert_eq!(keys.len(), 1, "stale keys dropped, the new one kept");
    }

    /// Counts the events that reach it.
    struct Count(Arc<AtomicUsize>);
    impl<S: tracing::Subscriber> Layer<S> for Count {
        fn on_event(&self, _event: &tracing::Event<'_>, _context: Context<'_, S>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn openraft_failure_lines_repeat_once_per_interval_and_others_pass() {
        let written = Arc::new(AtomicUsize::new(0));
        let subscriber = tracing_subscriber::registry()
            .with(Count(written.clone()))
            .with(OpenraftNoise);
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..20 {
                tracing::error!(target: "openraft::core::test_only", "peer unreachable");
            }
            assert_eq!(written.load(Ordering::SeqCst), 1);
            for _ in 0..3 {
                tracing::error!(target: "floe_node::reads", "a floe line");
                tracing::info!(target: "openraft::core::test_only", "not a failure");
            }
            assert_eq!(written.load(Ordering::SeqCst), 7);
        });
    }
}
