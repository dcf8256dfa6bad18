//! A linearizability checker for one register (one key): the Wing–Gong
//! search with Lowe's memoization, as Porcupine and Knossos do it.
//!
//! Every operation has an invocation and, if its outcome is known, a
//! response. The search walks the history in time order and tries to
//! linearize (give a point of effect to) each pending operation before the
//! first response that is still open, backtracking when a response is
//! reached whose operation could not be placed. A configuration (set of
//! linearized operations, register state) seen before is never explored
//! again, which keeps the search polynomial for histories with little
//! concurrency.
//!
//! Operations whose outcome is unknown (timeout, connection lost) have no
//! response: they may take effect at any point after their invocation, or
//! never. The model offers both choices for them.
//!
//! No maintained crate on crates.io implements this for Rust (the known
//! checkers are Porcupine in Go and Knossos in Clojure), so it is written
//! here, compactly, with its own tests.

use std::collections::HashSet;

/// A register value: `None` is "key absent". Values are interned ids.
pub type Value = Option<u32>;

/// What an operation did, as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterOp {
    /// A write that returned ok (or whose outcome is unknown).
    Put { value: u32 },
    /// A read that returned `observed`.
    Get { observed: Value },
    /// Compare-and-set. `succeeded: None` means the outcome is unknown.
    /// On failure the server reports the value it found (`observed`).
    Cas {
        expected: Value,
        new: Value,
        succeeded: Option<bool>,
        observed: Value,
    },
}

/// One operation of the history, with its times (any monotonic unit).
#[derive(Clone, Debug)]
pub struct TimedOp {
    pub op: RegisterOp,
    pub invoked: u64,
    /// `None`: the outcome is unknown; the operation may take effect at any
    /// time after `invoked`, or never.
    pub completed: Option<u64>,
    /// Free text for reports (client, original values).
    pub label: String,
}

/// The verdict for one key's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order explains the history. `stuck_at` names the operation whose
    /// response could not be explained by the longest partial order found.
    NotLinearizable {
        stuck_at: String,
        linearized: usize,
    },
    /// The search gave up after `steps` steps (reported, not a pass).
    GaveUp {
        steps: u64,
    },
}

/// Possible register states after applying `op` to `state` (empty: the
/// operation cannot take effect in this state).
fn step(state: Value, op: &RegisterOp, unknown: bool) -> Vec<Value> {
    let mut next = Vec::with_capacity(2);
    match op {
        RegisterOp::Put { value } => next.push(Some(*value)),
        RegisterOp::Get { observed } => {
            if *observed == state {
                next.push(state);
            }
        }
        RegisterOp::Cas {
            expected,
            new,
            succeeded,
            observed,
        } => match succeeded {
            Some(true) if state == *expected => next.push(*new),
            Some(false) if state != *expected && state == *observed => next.push(state),
            None if state == *expected => next.push(*new),
            _ => {}
        },
    }
    // An operation with an unknown outcome may also never take effect.
    if unknown && !next.contains(&state) {
        next.push(state);
    }
    next
}

#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
}

/// A doubly linked list over the events, so operations can be lifted out
/// and put back in O(1) while backtracking.
struct Events {
    events: Vec<Event>,
    prev: Vec<Option<usize>>,
    next: Vec<Option<usize>>,
    head: Option<usize>,
    /// For each operation: the index of its call and return events.
    call_of: Vec<usize>,
    return_of: Vec<usize>,
}

impl Events {
    fn new(ops: &[TimedOp]) -> Events {
        // Unknown outcomes respond "at infinity": after every other event.
        let mut keyed: Vec<(u64, u8, usize, bool)> = Vec::with_capacity(ops.len() * 2);
        for (index, op) in ops.iter().enumerate() {
            // At equal times calls sort before returns, so operations that
            // touch are treated as concurrent (never a false violation).
            keyed.push((op.invoked, 0, index, true));
            keyed.push((op.completed.unwrap_or(u64::MAX), 1, index, false));
        }
        keyed.sort_unstable();
        let count = keyed.len();
        let mut call_of = vec![0; ops.len()];
        let mut return_of = vec![0; ops.len()];
        let mut events = Vec::with_capacity(count);
        for (position, (_, _, op, is_call)) in keyed.into_iter().enumerate() {
            if is_call {
                call_of[op] = position;
            } else {
                return_of[op] = position;
            }
            events.push(Event { op, is_call });
        }
        let prev = (0..count).map(|i| i.checked_sub(1)).collect();
        let next = (0..count)
            .map(|i| (i + 1 < count).then_some(i + 1))
            .collect();
        Events {
            events,
            prev,
            next,
            head: (count > 0).then_some(0),
            call_of,
            return_of,
        }
    }

    fn unlink(&mut self, index: usize) {
        let (before, after) = (self.prev[index], self.next[index]);
        match before {
            Some(before) => self.next[before] = after,
            None => self.head = after,
        }
        if let Some(after) = after {
            self.prev[after] = before;
        }
    }

    /// Puts an unlinked event back; its neighbours are unchanged since it
    /// was unlinked, because lifts and unlifts happen in stack order.
    fn relink(&mut self, index: usize) {
        let (before, after) = (self.prev[index], self.next[index]);
        match before {
            Some(before) => self.next[before] = Some(index),
            None => self.head = Some(index),
        }
        if let Some(after) = after {
            self.prev[after] = Some(index);
        }
    }

    fn lift(&mut self, op: usize) {
        self.unlink(self.call_of[op]);
        self.unlink(self.return_of[op]);
    }

    fn unlift(&mut self, op: usize) {
        self.relink(self.return_of[op]);
        self.relink(self.call_of[op]);
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct BitSet(Vec<u64>);

impl BitSet {
    fn new(size: usize) -> BitSet {
        BitSet(vec![0; size.div_ceil(64)])
    }
    fn set(&mut self, bit: usize) {
        self.0[bit / 64] |= 1 << (bit % 64);
    }
    fn clear(&mut self, bit: usize) {
        self.0[bit / 64] &= !(1 << (bit % 64));
    }
}

/// Values some operation depends on: read results, cas expectations and
/// the values failed cas operations reported.
fn observed_values(ops: &[TimedOp]) -> HashSet<u32> {
    let mut observed = HashSet::new();
    for timed in ops {
        match &timed.op {
            RegisterOp::Put { .. } => {}
            RegisterOp::Get { observed: seen } => observed.extend(*seen),
            RegisterOp::Cas {
                expected,
                observed: seen,
                succeeded,
                ..
            } => {
                observed.extend(*expected);
                if *succeeded == Some(false) {
                    observed.extend(*seen);
                }
            }
        }
    }
    observed
}

/// Drops writes with an unknown outcome whose value nothing depends on.
/// Sound because no operation can tell whether such a write happened (it
/// would only have set a value that no one read or expected before the
/// next write), and it keeps the search from branching on each of them.
/// Deleting writes (`new: None`) are kept: "absent" is observable.
fn without_unobserved_unknowns(ops: &[TimedOp]) -> Vec<TimedOp> {
    let observed = observed_values(ops);
    let written = |op: &RegisterOp| match op {
        RegisterOp::Put { value } => Some(Some(*value)),
        RegisterOp::Cas { new, .. } => Some(*new),
        RegisterOp::Get { .. } => None,
    };
    ops.iter()
        .filter(|timed| {
            let unknown = timed.completed.is_none();
            match written(&timed.op) {
                Some(Some(value)) if unknown => observed.contains(&value),
                _ => true,
            }
        })
        .cloned()
        .collect()
}

/// Checks one key's history, starting from `initial`, within `max_steps`.
pub fn check(ops: &[TimedOp], initial: Value, max_steps: u64) -> Verdict {
    let pruned = without_unobserved_unknowns(ops);
    search(&pruned, initial, max_steps)
}

fn search(ops: &[TimedOp], initial: Value, max_steps: u64) -> Verdict {
    if ops.is_empty() {
        return Verdict::Linearizable;
    }
    let mut events = Events::new(ops);
    let mut linearized = BitSet::new(ops.len());
    let mut seen: HashSet<(BitSet, Value)> = HashSet::new();
    // (operation, state before it, index of the candidate state chosen)
    let mut stack: Vec<(usize, Value, usize)> = Vec::new();
    let mut state = initial;
    let mut cursor = events.head;
    // Where to resume among an operation's candidate states after a backtrack.
    let mut first_candidate = 0;
    let mut steps = 0u64;
    let mut deepest = (0usize, 0usize);
    while let Some(index) = cursor {
        steps += 1;
        if steps > max_steps {
            return Verdict::GaveUp { steps };
        }
        let event = events.events[index];
        if event.is_call {
            let timed = &ops[event.op];
            let candidates = step(state, &timed.op, timed.completed.is_none());
            let mut placed = false;
            for (choice, next_state) in candidates.into_iter().enumerate().skip(first_candidate) {
                let mut with_op = linearized.clone();
                with_op.set(event.op);
                if seen.insert((with_op.clone(), next_state)) {
                    stack.push((event.op, state, choice));
                    linearized = with_op;
                    state = next_state;
                    events.lift(event.op);
                    placed = true;
                    break;
                }
            }
            first_candidate = 0;
            cursor = if placed {
                events.head
            } else {
                events.next[index]
            };
        } else {
            // The response of an operation not yet placed: undo the last placement.
            if stack.len() >= deepest.0 {
                deepest = (stack.len(), event.op);
            }
            let Some((op, previous_state, choice)) = stack.pop() else {
                return not_linearizable(ops, deepest);
            };
            events.unlift(op);
            linearized.clear(op);
            state = previous_state;
            first_candidate = choice + 1;
            cursor = Some(events.call_of[op]);
        }
    }
    Verdict::Linearizable
}

fn not_linearizable(ops: &[TimedOp], deepest: (usize, usize)) -> Verdict {
    Verdict::NotLinearizable {
        stuck_at: ops[deepest.1].label.clone(),
        linearized: deepest.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEPS: u64 = 1_000_000;

    fn op(op: RegisterOp, invoked: u64, completed: Option<u64>) -> TimedOp {
        TimedOp {
            label: format!("{op:?} [{invoked}, {completed:?}]"),
            op,
            invoked,
            completed,
        }
    }
    fn put(value: u32, from: u64, to: u64) -> TimedOp {
        op(RegisterOp::Put { value }, from, Some(to))
    }
    fn put_unknown(value: u32, from: u64) -> TimedOp {
        op(RegisterOp::Put { value }, from, None)
    }
    fn get(observed: Value, from: u64, to: u64) -> TimedOp {
        op(RegisterOp::Get { observed }, from, Some(to))
    }
    fn cas(
        expected: Value,
        new: u32,
        succeeded: bool,
        observed: Value,
        from: u64,
        to: u64,
    ) -> TimedOp {
        op(
            RegisterOp::Cas {
                expected,
                new: Some(new),
                succeeded: Some(succeeded),
                observed,
            },
            from,
            Some(to),
        )
    }
    fn is_ok(ops: &[TimedOp]) -> bool {
        check(ops, None, STEPS) == Verdict::Linearizable
    }

    #[test]
    fn sequential_history_is_accepted() {
        assert!(is_ok(&[
            put(1, 0, 1),
            get(Some(1), 2, 3),
            put(2, 4, 5),
            get(Some(2), 6, 7)
        ]));
        assert!(is_ok(&[get(None, 0, 1)]));
    }

    #[test]
    fn stale_read_is_rejected() {
        // 2 overwrote 1 before the read began, yet the read saw 1.
        let history = [put(1, 0, 1), put(2, 2, 3), get(Some(1), 4, 5)];
        assert!(matches!(
            check(&history, None, STEPS),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn lost_write_is_rejected() {
        // An acknowledged write followed by a read of the initial state.
        let history = [put(1, 0, 1), get(None, 2, 3)];
        assert!(!is_ok(&history));
    }

    #[test]
    fn read_of_a_value_never_written_is_rejected() {
        assert!(!is_ok(&[put(1, 0, 1), get(Some(9), 2, 3)]));
    }

    #[test]
    fn concurrent_reads_may_see_either_value() {
        // The read overlaps the write: old or new value are both fine.
        assert!(is_ok(&[put(1, 0, 1), put(2, 2, 6), get(Some(1), 3, 4)]));
        assert!(is_ok(&[put(1, 0, 1), put(2, 2, 6), get(Some(2), 3, 4)]));
    }

    #[test]
    fn reads_may_not_go_back_in_time() {
        // Two sequential reads during one write: new then old is impossible.
        let history = [
            put(1, 0, 1),
            put(2, 2, 10),
            get(Some(2), 3, 4),
            get(Some(1), 5, 6),
        ];
        assert!(!is_ok(&history));
    }

    #[test]
    fn cas_that_succeeded_twice_is_rejected() {
        // Two successful cas from the same expected value cannot both be right.
        let history = [
            put(1, 0, 1),
            cas(Some(1), 2, true, None, 2, 5),
            cas(Some(1), 3, true, None, 3, 6),
        ];
        assert!(!is_ok(&history));
        // One succeeding and one failing (seeing the other's value) is fine.
        let history = [
            put(1, 0, 1),
            cas(Some(1), 2, true, None, 2, 5),
            cas(Some(1), 3, false, Some(2), 3, 6),
        ];
        assert!(is_ok(&history));
    }

    #[test]
    fn failed_cas_must_report_a_real_current_value() {
        let history = [put(1, 0, 1), cas(Some(5), 2, false, Some(7), 2, 3)];
        assert!(!is_ok(&history));
        let history = [put(1, 0, 1), cas(Some(5), 2, false, Some(1), 2, 3)];
        assert!(is_ok(&history));
    }

    #[test]
    fn unknown_write_may_take_effect_late_or_never() {
        // Never: reads keep seeing 1.
        assert!(is_ok(&[
            put(1, 0, 1),
            put_unknown(2, 2),
            get(Some(1), 3, 4),
            get(Some(1), 5, 6)
        ]));
        // Late: long after the client gave up.
        assert!(is_ok(&[
            put(1, 0, 1),
            put_unknown(2, 2),
            get(Some(1), 30, 31),
            get(Some(2), 50, 51)
        ]));
        // But never before it was invoked.
        assert!(!is_ok(&[
            put(1, 0, 1),
            get(Some(2), 2, 3),
            put_unknown(2, 4)
        ]));
        // And once seen, it cannot be unseen.
        assert!(!is_ok(&[
            put(1, 0, 1),
            put_unknown(2, 2),
            get(Some(2), 3, 4),
            get(Some(1), 5, 6)
        ]));
    }

    #[test]
    fn unknown_cas_needs_its_expected_value_to_take_effect() {
        let unknown = op(
            RegisterOp::Cas {
                expected: Some(1),
                new: Some(2),
                succeeded: None,
                observed: None,
            },
            2,
            None,
        );
        assert!(is_ok(&[put(1, 0, 1), unknown.clone(), get(Some(2), 5, 6)]));
        let wrong = op(
            RegisterOp::Cas {
                expected: Some(9),
                new: Some(2),
                succeeded: None,
                observed: None,
            },
            2,
            None,
        );
        assert!(!is_ok(&[put(1, 0, 1), wrong, get(Some(2), 5, 6)]));
    }

    #[test]
    fn backtracking_finds_the_only_order() {
        // Three overlapping writes and reads that pin down one order: 3, 1, 2.
        let history = [
            put(1, 0, 10),
            put(2, 0, 10),
            put(3, 0, 10),
            get(Some(3), 1, 2),
            get(Some(1), 3, 4),
            get(Some(2), 11, 12),
        ];
        assert!(is_ok(&history));
        let impossible = [
            put(1, 0, 10),
            put(2, 0, 10),
            get(Some(1), 1, 2),
            get(Some(2), 3, 4),
            get(Some(1), 11, 12),
        ];
        assert!(!is_ok(&impossible));
    }

    #[test]
    fn many_concurrent_unknowns_stay_tractable() {
        let mut history = vec![put(0, 0, 1)];
        for value in 1..40 {
            history.push(put_unknown(value, 2 + value as u64));
        }
        for (time, value) in [(100, 5), (102, 7), (104, 30)] {
            history.push(get(Some(value), time, time + 1));
        }
        assert!(is_ok(&history));
        history.push(get(Some(5), 200, 201));
        assert!(!is_ok(&history));
    }

    #[test]
    fn pruning_keeps_unknown_writes_that_something_depends_on() {
        let unknown_cas = op(
            RegisterOp::Cas {
                expected: Some(2),
                new: Some(3),
                succeeded: None,
                observed: None,
            },
            5,
            None,
        );
        // The unknown put of 2 is only "observed" by the unknown cas's
        // expectation; the read of 3 needs both to have happened.
        let history = [
            put(1, 0, 1),
            put_unknown(2, 2),
            unknown_cas,
            get(Some(3), 10, 11),
        ];
        assert!(is_ok(&history));
        assert_eq!(without_unobserved_unknowns(&history).len(), 4);
        let unobserved = [put(1, 0, 1), put_unknown(2, 2), get(Some(1), 10, 11)];
        assert_eq!(without_unobserved_unknowns(&unobserved).len(), 2);
    }

    #[test]
    fn the_step_budget_is_reported() {
        let history = [put(1, 0, 1), get(Some(1), 2, 3)];
        assert!(matches!(check(&history, None, 1), Verdict::GaveUp { .. }));
    }
}
