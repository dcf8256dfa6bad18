//! Retry backoff: the delay before the next attempt of a task slot.
//!
//! Deterministic: the jitter is derived from a hash of (run id, step, item,
//! attempt), never from a random source, so every node computes the same
//! delay inside apply.

use sha2::{Digest, Sha256};

use super::TaskKey;
use crate::model::{Backoff, RetryPolicy};

/// The delay before retry number `retry` (1 = the retry after the first
/// failed attempt), before jitter: `fixed` → `initial_backoff_ms`;
/// `exponential` → `initial × multiplier^(retry-1)`; both capped at
/// `max_backoff_ms`.
pub fn backoff_delay_ms(policy: &RetryPolicy, retry: u32) -> u64 {
    let cap = policy.max_backoff_ms.max(policy.initial_backoff_ms);
    let uncapped = match policy.backoff {
        Backoff::Fixed => policy.initial_backoff_ms,
        Backoff::Exponential => {
            // Repeated multiplication (not `powf`) so that the result is the
            // same IEEE value on every platform.
            let mut delay = policy.initial_backoff_ms as f64;
            for _ in 1..retry.max(1) {
                if delay >= cap as f64 {
                    break;
                }
                delay *= policy.multiplier;
            }
            if !delay.is_finite() || delay >= cap as f64 {
                cap
            } else {
                delay.round() as u64
            }
        }
    };
    uncapped.min(cap)
}

/// `delay` scaled by a factor in [0.5, 1.0] that depends only on the run,
/// the task slot and the attempt.
pub fn jittered_delay_ms(delay: u64, run_id: &str, key: &TaskKey, attempt: u32) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(run_id.as_bytes());
    hasher.update([0u8]);
    hasher.update(key.step_id.as_bytes());
    hasher.update([0u8]);
    match key.item {
        Some(item) => hasher.update(item.to_be_bytes()),
        None => hasher.update([0xff; 4]),
    }
    hasher.update(attempt.to_be_bytes());
    let digest = hasher.finalize();
    let mut first_four = [0u8; 4];
    first_four.copy_from_slice(&digest[..4]);
    let fraction = u128::from(u32::from_be_bytes(first_four));
    // delay × (2^32 + fraction) / 2^33, i.e. delay × [0.5, 1.0).
    let scaled = (u128::from(delay) * ((1u128 << 32) + fraction)) >> 33;
    u64::try_from(scaled).unwrap_or(delay)
}

/// The delay before attempt `next_attempt` of slot `key`, which is retry
/// number `retry` of the slot in this round: backoff, then jitter when the
/// policy asks for it.
pub fn retry_delay_ms(
    policy: &RetryPolicy,
    run_id: &str,
    key: &TaskKey,
    next_attempt: u32,
    retry: u32,
) -> u64 {
    let delay = backoff_delay_ms(policy, retry);
    if policy.jitter {
        jittered_delay_ms(delay, run_id, key, next_attempt)
    } else {
        delay
    }
}
