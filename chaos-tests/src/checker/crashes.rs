//! No crash loops: a node process must not exit on its own. An exit while
//! its disk is full is tolerated once (refusing to run without a disk is
//! acceptable), but the node must then stay up after the disk is freed and
//! it is restarted.

use serde::Serialize;

use super::{CheckResult, NO_CRASH_LOOP};

/// A node process that exited without the nemesis stopping it.
#[derive(Clone, Debug, Serialize)]
pub struct NodeExit {
    pub node: u64,
    pub at_s: f64,
    pub status: String,
    /// The exit happened while a fault that may legitimately stop the
    /// node (a full disk on that node) was active.
    pub excused: bool,
}

pub fn check(exits: &[NodeExit]) -> CheckResult {
    let mut result = CheckResult::new(NO_CRASH_LOOP);
    let mut per_node: std::collections::BTreeMap<u64, usize> = Default::default();
    for exit in exits {
        *per_node.entry(exit.node).or_default() += 1;
        if exit.excused {
            result.note(format!(
                "node {} exited at {:.1}s while its disk was full ({})",
                exit.node, exit.at_s, exit.status
            ));
        } else {
            result.violation(format!(
                "node {} exited on its own at {:.1}s ({})",
                exit.node, exit.at_s, exit.status
            ));
        }
    }
    for (node, count) in per_node {
        if count > 1 {
            result.violation(format!("node {node} exited {count} times: a crash loop"));
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(node: u64, excused: bool) -> NodeExit {
        NodeExit {
            node,
            at_s: 1.0,
            status: "signal: 6 (SIGABRT)".into(),
            excused,
        }
    }

    #[test]
    fn unexcused_exits_and_loops_are_violations() {
        assert!(check(&[]).passed);
        assert!(check(&[exit(1, true)]).passed);
        assert!(!check(&[exit(1, false)]).passed);
        assert!(!check(&[exit(2, true), exit(2, true)]).passed);
    }
}
