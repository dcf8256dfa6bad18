//! Checks of the register workload: linearizability per key, and presence
//! of every acknowledged write into the set keyspace.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::linearizable::{self, RegisterOp, TimedOp, Verdict};
use super::{CheckResult, ACKED_WRITES, LINEARIZABLE};
use crate::workload::history::{Op, OpRecord, Outcome};

/// Search budget per key; far above what a few-minute history needs.
const MAX_STEPS_PER_KEY: u64 = 20_000_000;

/// Maps value strings to small ids, the checker's register values.
#[derive(Default)]
struct Interner {
    ids: HashMap<String, u32>,
}

impl Interner {
    fn id(&mut self, value: &str) -> u32 {
        let next = self.ids.len() as u32;
        *self.ids.entry(value.to_string()).or_insert(next)
    }
    fn optional(&mut self, value: &Option<String>) -> Option<u32> {
        value.as_deref().map(|value| self.id(value))
    }
}

fn describe(record: &OpRecord) -> String {
    let outcome = match record.outcome {
        Outcome::Ok => "ok",
        Outcome::Fail => "fail",
        Outcome::Unknown => "unknown",
    };
    let what = match &record.op {
        Op::Get { observed, .. } => format!("get -> {observed:?}"),
        Op::Put { value, .. } => format!("put {value:?}"),
        Op::Cas {
            expected,
            new,
            succeeded,
            current,
            ..
        } => {
            format!("cas {expected:?} -> {new:?}: succeeded {succeeded:?}, current {current:?}")
        }
        other => other.name().to_string(),
    };
    format!(
        "client {} via node {}: {what} ({outcome}) invoked at {:.3}s, completed at {:.3}s",
        record.process,
        record.node,
        record.invoked_us as f64 / 1e6,
        record.completed_us as f64 / 1e6
    )
}

/// Turns one key's records into the checker's operations. Failed operations
/// never happened; reads with no answer say nothing.
fn timed_ops(records: &[&OpRecord], interner: &mut Interner) -> Vec<TimedOp> {
    let mut ops = Vec::new();
    for record in records {
        let completed = match record.outcome {
            Outcome::Ok => Some(record.completed_us),
            Outcome::Unknown => None,
            Outcome::Fail => continue,
        };
        let op = match &record.op {
            Op::Get { observed, .. } => {
                if completed.is_none() {
                    continue;
                }
                RegisterOp::Get {
                    observed: interner.optional(observed),
                }
            }
            Op::Put { value, .. } => RegisterOp::Put {
                value: interner.id(value),
            },
            Op::Cas {
                expected,
                new,
                succeeded,
                current,
                ..
            } => RegisterOp::Cas {
                expected: interner.optional(expected),
                new: Some(interner.id(new)),
                succeeded: if completed.is_some() {
                    *succeeded
                } else {
                    None
                },
                observed: interner.optional(current),
            },
            _ => continue,
        };
        ops.push(TimedOp {
            op,
            invoked: record.invoked_us,
            completed,
            label: describe(record),
        });
    }
    ops
}

fn key_of(op: &Op) -> Option<&str> {
    match op {
        Op::Get { key, .. } | Op::Put { key, .. } | Op::Cas { key, .. } => Some(key),
        _ => None,
    }
}

/// Linearizability of every register key (keys are independent registers,
/// so each is checked on its own: far smaller searches).
pub fn check_linearizable(history: &[OpRecord]) -> CheckResult {
    let mut result = CheckResult::new(LINEARIZABLE);
    let mut by_key: BTreeMap<&str, Vec<&OpRecord>> = BTreeMap::new();
    for record in history {
        if let Some(key) = key_of(&record.op) {
            by_key.entry(key).or_default().push(record);
        }
    }
    let mut interner = Interner::default();
    for (key, records) in by_key {
        let ops = timed_ops(&records, &mut interner);
        let started = std::time::Instant::now();
        match linearizable::check(&ops, None, MAX_STEPS_PER_KEY) {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable { stuck_at, linearized } => result.violation(format!(
                "key {key}: the {} operations have no linearization; after ordering {linearized} of them, \
                 none explains: {stuck_at}",
                ops.len()
            )),
            Verdict::GaveUp { steps } => {
                result.note(format!("key {key}: search gave up after {steps} steps ({} operations); inconclusive", ops.len()))
            }
        }
        tracing::debug!(
            key,
            ops = ops.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "key checked"
        );
    }
    result
}

/// Every acknowledged set-add is present at the end; none that definitely
/// failed is. `final_keys` is a linearizable listing taken after the faults.
pub fn check_set(history: &[OpRecord], final_keys: Option<&BTreeSet<String>>) -> CheckResult {
    let mut result = CheckResult::new(ACKED_WRITES);
    let Some(final_keys) = final_keys else {
        result.violation("the final listing of the set keyspace could not be read");
        return result;
    };
    let (mut acked, mut failed, mut unknown) = (0, 0, 0);
    for record in history {
        let Op::SetAdd { key } = &record.op else {
            continue;
        };
        match record.outcome {
            Outcome::Ok => {
                acked += 1;
                if !final_keys.contains(key) {
                    result.violation(format!(
                        "acknowledged write of {key} is missing at the end ({})",
                        describe(record)
                    ));
                }
            }
            Outcome::Fail => {
                failed += 1;
                if final_keys.contains(key) {
                    result.violation(format!(
                        "write of {key} was reported as not applied, yet it is present ({})",
                        describe(record)
                    ));
                }
            }
            Outcome::Unknown => unknown += 1,
        }
    }
    result.note(format!(
        "{acked} acknowledged, {failed} failed, {unknown} unknown writes checked"
    ));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(process: usize, op: Op, invoked: u64, completed: u64, outcome: Outcome) -> OpRecord {
        OpRecord {
            process,
            node: 1,
            op,
            invoked_us: invoked,
            completed_us: completed,
            outcome,
            error: None,
        }
    }
    fn put(value: &str, from: u64, to: u64, outcome: Outcome) -> OpRecord {
        record(
            0,
            Op::Put {
                key: "k".into(),
                value: value.into(),
            },
            from,
            to,
            outcome,
        )
    }
    fn get(observed: Option<&str>, from: u64, to: u64) -> OpRecord {
        record(
            1,
            Op::Get {
                key: "k".into(),
                observed: observed.map(String::from),
            },
            from,
            to,
            Outcome::Ok,
        )
    }

    #[test]
    fn a_stale_read_fails_the_checker_and_names_the_key() {
        let history = vec![
            put("a", 0, 10, Outcome::Ok),
            put("b", 20, 30, Outcome::Ok),
            get(Some("a"), 40, 50),
        ];
        let result = check_linearizable(&history);
        assert!(!result.passed);
        assert!(
            result.violations[0].contains("key k"),
            "{:?}",
            result.violations
        );
    }

    #[test]
    fn failed_writes_never_happened_and_unknown_ones_may_have() {
        // A failed put cannot explain a read of its value …
        let history = vec![
            put("a", 0, 10, Outcome::Ok),
            put("b", 20, 30, Outcome::Fail),
            get(Some("b"), 40, 50),
        ];
        assert!(!check_linearizable(&history).passed);
        // … an unknown one can.
        let history = vec![
            put("a", 0, 10, Outcome::Ok),
            put("b", 20, 30, Outcome::Unknown),
            get(Some("b"), 40, 50),
        ];
        assert!(check_linearizable(&history).passed);
    }

    #[test]
    fn keys_are_independent_registers() {
        let other = record(
            2,
            Op::Put {
                key: "other".into(),
                value: "b".into(),
            },
            20,
            30,
            Outcome::Ok,
        );
        let history = vec![put("a", 0, 10, Outcome::Ok), other, get(Some("a"), 40, 50)];
        assert!(check_linearizable(&history).passed);
    }

    #[test]
    fn lost_and_phantom_set_writes_are_caught() {
        let add = |key: &str, outcome| record(0, Op::SetAdd { key: key.into() }, 0, 1, outcome);
        let history = vec![
            add("s/1", Outcome::Ok),
            add("s/2", Outcome::Fail),
            add("s/3", Outcome::Unknown),
        ];
        let present: BTreeSet<String> = ["s/1".to_string()].into();
        assert!(check_set(&history, Some(&present)).passed);
        let lost: BTreeSet<String> = BTreeSet::new();
        let result = check_set(&history, Some(&lost));
        assert!(
            !result.passed && result.violations[0].contains("s/1 is missing"),
            "{:?}",
            result.violations
        );
        let phantom: BTreeSet<String> = ["s/1".to_string(), "s/2".to_string()].into();
        assert!(!check_set(&history, Some(&phantom)).passed);
        assert!(!check_set(&history, None).passed);
    }
}
