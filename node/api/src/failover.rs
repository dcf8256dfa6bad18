//! When a client may send a failed call again on another node, and which
//! node it tries next.
//!
//! A node that is down, restarting, or cut off from the leader refuses with
//! `UNAVAILABLE`; the other nodes may well serve the call. Sending it again
//! is only honest when it cannot apply twice:
//! - reads, always (on `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `UNKNOWN`,
//!   `CANCELLED` — transport failures and timeouts);
//! - writes carrying an idempotency key, likewise: a repeat returns the
//!   outcome of the first;
//! - other writes only when the failure proves nothing was applied: floe's
//!   own `UNAVAILABLE` (raised before forwarding or proposing, marked by
//!   `floe-unapplied`), or a connection that was refused, so the request
//!   was never sent.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tonic::{Code, Status};

use crate::headers::proves_unapplied;

/// Each endpoint is tried at most this often per call.
pub const TRIES_PER_ENDPOINT: u32 = 2;
/// The time a call may take over all its tries when the client sets no
/// request timeout.
pub const NO_TIMEOUT_BUDGET: Duration = Duration::from_secs(30);

/// Whether a call may be sent again after it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repeat {
    /// A read: repeating it changes nothing.
    Read,
    /// A write: repeated only when it provably was not applied.
    Write,
    /// A write that carries an idempotency key: a repeat returns the first outcome.
    Idempotent,
}

impl Repeat {
    /// Whether a call of this kind that failed with `status` may be sent again.
    pub fn allows(self, status: &Status) -> bool {
        let transient = matches!(
            status.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
        );
        match self {
            Repeat::Read | Repeat::Idempotent => transient,
            Repeat::Write => proves_unapplied(status) || never_sent(status),
        }
    }
}

/// Whether the call failed to connect, so it never left this client.
pub fn never_sent(status: &Status) -> bool {
    if status.code() != Code::Unavailable {
        return false;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    // Bounded: error chains are short, and this stops at 16 links regardless.
    for _ in 0..16 {
        let Some(error) = cause else { break };
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        cause = error.source();
    }
    let message = status.message();
    message.contains("tcp connect error") || message.contains("Connection refused")
}

/// The endpoint to try next: the leader a refusal named (if it has tries
/// left), else the next listed endpoint after `current` with the fewest tries
/// so far; `None` when every endpoint has had its tries.
pub fn next_endpoint(
    endpoints: &[String],
    current: &str,
    hint: Option<&str>,
    tries: &HashMap<String, u32>,
) -> Option<String> {
    let tried = |endpoint: &str| tries.get(endpoint).copied().unwrap_or(0);
    if let Some(leader) =
        hint.filter(|leader| *leader != current && tried(leader) < TRIES_PER_ENDPOINT)
    {
        return Some(leader.to_string());
    }
    let start = endpoints
        .iter()
        .position(|e| e == current)
        .map_or(0, |index| index + 1);
    let in_turn = (0..endpoints.len()).map(|offset| &endpoints[(start + offset) % endpoints.len()]);
    in_turn
        .filter(|endpoint| tried(endpoint) < TRIES_PER_ENDPOINT)
        .min_by_key(|endpoint| tried(endpoint))
        .cloned()
}

/// A short pause before the next try, longer once a round of endpoints has
/// been tried, with jitter so that clients refused together do not return
/// together.
pub fn jittered_pause(tries: &HashMap<String, u32>) -> Duration {
    let rounds = tries.values().copied().max().unwrap_or(0);
    let base_ms: u64 = if rounds >= TRIES_PER_ENDPOINT {
        200
    } else {
        50
    };
    let jitter_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|now| u64::from(now.subsec_nanos()) % base_ms)
        .unwrap_or(0);
    Duration::from_millis(base_ms + jitter_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints() -> Vec<String> {
        vec!["a:1".into(), "b:2".into(), "c:3".into()]
    }

    #[test]
    fn the_named_leader_goes_first_then_endpoints_in_turn_each_at_most_twice() {
        let mut tries = HashMap::from([("a:1".to_string(), 1)]);
        assert_eq!(
            next_endpoint(&endpoints(), "a:1", Some("c:3"), &tries).as_deref(),
            Some("c:3")
        );
        // A leader that is not listed is tried too.
        assert_eq!(
            next_endpoint(&endpoints(), "a:1", Some("d:4"), &tries).as_deref(),
            Some("d:4")
        );
        assert_eq!(
            next_endpoint(&endpoints(), "a:1", None, &tries).as_deref(),
            Some("b:2")
        );
        tries.insert("b:2".into(), 1);
        assert_eq!(
            next_endpoint(&endpoints(), "b:2", None, &tries).as_deref(),
            Some("c:3")
        );
        tries.insert("c:3".into(), 1);
        assert_eq!(
            next_endpoint(&endpoints(), "c:3", None, &tries).as_deref(),
            Some("a:1")
        );
        for endpoint in endpoints() {
            tries.insert(endpoint, TRIES_PER_ENDPOINT);
        }
        assert_eq!(
            next_endpoint(&endpoints(), "c:3", Some("a:1"), &tries),
            None
        );
    }

    #[test]
    fn pauses_are_short_and_grow_after_a_round() {
        let first = jittered_pause(&HashMap::from([("a:1".to_string(), 1)]));
        assert!(
            first >= Duration::from_millis(50) && first < Duration::from_millis(100),
            "{first:?}"
        );
        let later = jittered_pause(&HashMap::from([("a:1".to_string(), 2)]));
        assert!(
            later >= Duration::from_millis(200) && later < Duration::from_millis(400),
            "{later:?}"
        );
    }
}
