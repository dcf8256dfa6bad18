//! The node's one source of time. Production uses [`Clock::system`]; tests
//! build a [`ManualClock`] and advance it by hand, so code that stamps
//! commands (`at_ms`), ages reports or sleeps can be driven without waiting.
//!
//! Apply (floe-state) never reads a clock: the leader stamps each command
//! with the time it proposes it, and every replica applies that stamp.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use tokio::sync::watch;

/// Wall and monotonic time, and sleeping on them; cheap to clone.
#[derive(Clone)]
pub struct Clock {
    source: Arc<dyn TimeSource>,
}

trait TimeSource: Send + Sync {
    fn now_ms(&self) -> u64;
    fn now(&self) -> Instant;
    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()>;
}

impl Clock {
    /// The operating system's clocks and tokio's timer.
    pub fn system() -> Clock {
        Clock {
            source: Arc::new(SystemClock),
        }
    }

    /// Wall time: milliseconds since the Unix epoch (0 before it).
    pub fn now_ms(&self) -> u64 {
        self.source.now_ms()
    }

    /// Monotonic time, for measuring how long something took or has been quiet.
    pub fn now(&self) -> Instant {
        self.source.now()
    }

    /// Time passed since `earlier`, by this clock.
    pub fn since(&self, earlier: Instant) -> Duration {
        self.now().saturating_duration_since(earlier)
    }

    pub fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        let deadline = self.now() + duration;
        self.sleep_until(deadline)
    }

    pub fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()> {
        self.source.sleep_until(deadline)
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

struct SystemClock;

impl TimeSource for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis() as u64)
            .unwrap_or(0)
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep_until(deadline.into()))
    }
}

/// A clock that moves only when told to; for tests.
#[derive(Clone)]
pub struct ManualClock {
    shared: Arc<ManualShared>,
}

struct ManualShared {
    wall_start_ms: u64,
    mono_start: Instant,
    /// Time advanced so far; sleepers watch it.
    advanced: watch::Sender<Duration>,
}

impl ManualClock {
    /// Starts at `wall_ms` on the wall clock and never moves on its own.
    pub fn new(wall_ms: u64) -> ManualClock {
        let (advanced, _) = watch::channel(Duration::ZERO);
        ManualClock {
            shared: Arc::new(ManualShared {
                wall_start_ms: wall_ms,
                mono_start: Instant::now(),
                advanced,
            }),
        }
    }

    /// Moves both clocks forward by `by` and wakes sleepers now due.
    pub fn advance(&self, by: Duration) {
        self.shared.advanced.send_modify(|advanced| *advanced += by);
    }

    /// A [`Clock`] reading this manual clock.
    pub fn clock(&self) -> Clock {
        Clock {
            source: Arc::new(self.clone()),
        }
    }

    fn advanced(&self) -> Duration {
        *self.shared.advanced.borrow()
    }
}

impl TimeSource for ManualClock {
    fn now_ms(&self) -> u64 {
        self.shared.wall_start_ms + self.advanced().as_millis() as u64
    }

    fn now(&self) -> Instant {
        self.shared.mono_start + self.advanced()
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()> {
        let due = deadline.saturating_duration_since(self.shared.mono_start);
        let mut advanced = self.shared.advanced.subscribe();
        Box::pin(async move {
            // The sender lives as long as any clone of the clock; once it is
            // gone time cannot move, so the sleep never ends, as a real one at
            // a far deadline would not.
            if advanced.wait_for(|now| *now >= due).await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_reads_the_wall_clock() {
        let clock = Clock::system();
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let read = clock.now_ms();
        let after = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(before <= read && read <= after, "{before} {read} {after}");
        let earlier = clock.now();
        assert!(clock.now() >= earlier);
    }

    #[tokio::test]
    async fn system_clock_sleeps() {
        let clock = Clock::system();
        let started = clock.now();
        clock.sleep(Duration::from_millis(20)).await;
        assert!(clock.since(started) >= Duration::from_millis(20));
    }

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let manual = ManualClock::new(1_000);
        let clock = manual.clock();
        let start = clock.now();
        assert_eq!(clock.now_ms(), 1_000);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(clock.now_ms(), 1_000);
        assert_eq!(clock.since(start), Duration::ZERO);
        manual.advance(Duration::from_millis(250));
        assert_eq!(clock.now_ms(), 1_250);
        assert_eq!(clock.since(start), Duration::from_millis(250));
        // Clones share one time line.
        manual.clone().advance(Duration::from_secs(1));
        assert_eq!(manual.clock().now_ms(), 2_250);
    }

    #[tokio::test]
    async fn manual_sleep_ends_once_time_reaches_its_deadline() {
        let manual = ManualClock::new(0);
        let clock = manual.clock();
        let mut sleeping = tokio::spawn(clock.sleep(Duration::from_secs(10)));
        manual.advance(Duration::from_secs(4));
        let early = tokio::time::timeout(Duration::from_millis(50), &mut sleeping).await;
        assert!(early.is_err(), "woke at 4 s of a 10 s sleep");
        manual.advance(Duration::from_secs(6));
        tokio::time::timeout(Duration::from_secs(5), sleeping)
            .await
            .expect("sleep ended once its deadline passed")
            .unwrap();
        // A deadline already passed does not wait.
        let past = clock.now() - Duration::from_secs(1);
        tokio::time::timeout(Duration::from_secs(5), clock.sleep_until(past))
            .await
            .expect("a past deadline returns at once");
    }
}
