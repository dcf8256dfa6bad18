//! When faults happen: one window for a single nemesis, or a seeded random
//! schedule of many, reproducible from the printed seed.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::Nemesis;

/// One fault window, relative to the start of the load.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Window {
    pub nemesis: Nemesis,
    pub start_ms: u64,
    pub length_ms: u64,
}

/// Steady load, then one fault for `fault`.
pub fn single(nemesis: Nemesis, steady: Duration, fault: Duration) -> Vec<Window> {
    vec![Window {
        nemesis,
        start_ms: steady.as_millis() as u64,
        length_ms: fault.as_millis() as u64,
    }]
}

/// Faults drawn from `enabled`, each 2–5 s with 2–4 s of quiet after it,
/// filling `total` after `steady`. Same seed, same schedule.
pub fn random(seed: u64, enabled: &[Nemesis], steady: Duration, total: Duration) -> Vec<Window> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut windows = Vec::new();
    let mut at = steady.as_millis() as u64;
    let end = total.as_millis() as u64;
    // Bounded: at least 4 s per window.
    while at + 2_000 <= end && windows.len() < 10_000 {
        let Some(nemesis) = enabled.choose(&mut rng).copied() else {
            break;
        };
        let length_ms = rng.gen_range(2_000..=5_000).min(end - at);
        windows.push(Window {
            nemesis,
            start_ms: at,
            length_ms,
        });
        at += length_ms + rng.gen_range(2_000..=4_000);
    }
    windows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_the_same_schedule() {
        let enabled = [
            Nemesis::KillLeader,
            Nemesis::PauseFollower,
            Nemesis::PowerCut,
        ];
        let first = random(
            42,
            &enabled,
            Duration::from_secs(3),
            Duration::from_secs(120),
        );
        assert_eq!(
            first,
            random(
                42,
                &enabled,
                Duration::from_secs(3),
                Duration::from_secs(120)
            )
        );
        assert_ne!(
            first,
            random(
                43,
                &enabled,
                Duration::from_secs(3),
                Duration::from_secs(120)
            )
        );
        assert!(first.len() > 10);
        assert!(first
            .iter()
            .all(|window| window.start_ms + window.length_ms <= 120_000));
        assert!(first
            .windows(2)
            .all(|pair| pair[0].start_ms + pair[0].length_ms < pair[1].start_ms));
    }
}
