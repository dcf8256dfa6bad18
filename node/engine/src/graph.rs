//! The step graph: edges, cycles, reachability, fork/join structure and
//! "precedes on every path" (dominance) for `steps.<id>` references.

use std::collections::BTreeMap;

use crate::error::{push_index, push_key, ValidationError};
use crate::model::{ErrorAction, InferenceStep, Step, TaskStep};

/// One control-flow edge; `path` is the JSONPath of the field that makes it.
#[derive(Clone, Debug)]
pub(crate) struct Edge {
    pub target: usize,
    pub path: String,
}

/// Steps by index with their edges. Edges to unknown steps are left out
/// (they are reported by the reference check).
pub(crate) struct StepGraph {
    pub successors: Vec<Vec<Edge>>,
    pub predecessors: Vec<Vec<usize>>,
}

/// Every (field path, target id) a step points at, `join` of forks excluded
/// (a join is reached through the branches, not from the fork).
pub(crate) fn flow_edges(step: &Step, path: &str) -> Vec<(String, String)> {
    let mut edges = Vec::new();
    if let Some(next) = step.next() {
        edges.push((push_key(path, "next"), next.to_string()));
    }
    match step {
        Step::Task(TaskStep { on_error, .. }) | Step::Inference(InferenceStep { on_error, .. }) => {
            if let Some(ErrorAction::Goto(target)) = on_error {
                edges.push((
                    push_key(&push_key(path, "on_error"), "goto"),
                    target.clone(),
                ));
            }
        }
        Step::Signal(signal) => {
            if let Some(ErrorAction::Goto(target)) = &signal.on_timeout {
                edges.push((
                    push_key(&push_key(path, "on_timeout"), "goto"),
                    target.clone(),
                ));
            }
        }
        Step::Decision(decision) => {
            let cases_path = push_key(path, "cases");
            for (index, case) in decision.cases.iter().enumerate() {
                edges.push((
                    push_key(&push_index(&cases_path, index), "next"),
                    case.next.clone(),
                ));
            }
            edges.push((push_key(path, "default"), decision.default.clone()));
        }
        Step::Fork(fork) => {
            let branches_path = push_key(path, "branches");
            for (index, branch) in fork.branches.iter().enumerate() {
                edges.push((
                    push_key(&push_index(&branches_path, index), "start"),
                    branch.start.clone(),
                ));
            }
        }
        _ => {}
    }
    edges
}

/// Whether reaching this step can end the run (no `next`, or a terminal kind).
pub(crate) fn can_end_run(step: &Step) -> bool {
    match step {
        Step::Decision(_) | Step::Fork(_) => false,
        Step::Terminate(_) | Step::Fail(_) => true,
        other => other.next().is_none(),
    }
}

impl StepGraph {
    /// Builds the graph of `steps`, whose JSONPaths are `paths`.
    pub fn build(steps: &[Step], paths: &[String], index_of: &BTreeMap<String, usize>) -> Self {
        let mut successors = vec![Vec::new(); steps.len()];
        let mut predecessors = vec![Vec::new(); steps.len()];
        for (index, step) in steps.iter().enumerate() {
            for (edge_path, target_id) in flow_edges(step, &paths[index]) {
                if let Some(&target) = index_of.get(&target_id) {
                    successors[index].push(Edge {
                        target,
                        path: edge_path,
                    });
                    predecessors[target].push(index);
                }
            }
        }
        StepGraph {
            successors,
            predecessors,
        }
    }

    /// One error per back edge found, naming the steps on the cycle.
    pub fn cycles(&self, steps: &[Step]) -> Vec<ValidationError> {
        const WHITE: u8 = 0;
        const GRAY: u8 = 1;
        const BLACK: u8 = 2;
        let mut color = vec![WHITE; steps.len()];
        let mut errors = Vec::new();
        for root in 0..steps.len() {
            if color[root] != WHITE {
                continue;
            }
            // Iterative depth-first search: (node, next edge to look at).
            let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
            color[root] = GRAY;
            while let Some(&mut (node, ref mut edge_index)) = stack.last_mut() {
                let Some(edge) = self.successors[node].get(*edge_index) else {
                    color[node] = BLACK;
                    stack.pop();
                    continue;
                };
                *edge_index += 1;
                let target = edge.target;
                if color[target] == GRAY {
                    let cycle_start = stack
                        .iter()
                        .position(|&(on_stack, _)| on_stack == target)
                        .unwrap_or(0);
                    let mut names: Vec<String> = stack[cycle_start..]
                        .iter()
                        .map(|&(on_stack, _)| format!("\"{}\"", steps[on_stack].id()))
                        .collect();
                    names.push(format!("\"{}\"", steps[target].id()));
                    errors.push(ValidationError::new(
                        edge.path.clone(),
                        format!("steps form a cycle: {}", names.join(" -> ")),
                    ));
                } else if color[target] == WHITE {
                    color[target] = GRAY;
                    stack.push((target, 0));
                }
            }
        }
        errors
    }

    /// Which steps can be reached from `start`.
    pub fn reachable_from(&self, start: usize) -> Vec<bool> {
        let mut reached = vec![false; self.successors.len()];
        let mut pending = vec![start];
        reached[start] = true;
        while let Some(node) = pending.pop() {
            for edge in &self.successors[node] {
                if !reached[edge.target] {
                    reached[edge.target] = true;
                    pending.push(edge.target);
                }
            }
        }
        reached
    }

    /// Reachable steps in an order where every step comes after all its
    /// reachable predecessors (the graph must be acyclic).
    pub fn topological_order(&self, reached: &[bool]) -> Vec<usize> {
        let mut incoming: Vec<usize> = (0..self.successors.len())
            .map(|node| {
                self.predecessors[node]
                    .iter()
                    .filter(|&&pred| reached[pred])
                    .count()
            })
            .collect();
        let mut ready: Vec<usize> = (0..self.successors.len())
            .filter(|&node| reached[node] && incoming[node] == 0)
            .collect();
        let mut order = Vec::new();
        while let Some(node) = ready.pop() {
            order.push(node);
            for edge in &self.successors[node] {
                incoming[edge.target] -= 1;
                if incoming[edge.target] == 0 {
                    ready.push(edge.target);
                }
            }
        }
        order
    }
}

/// A fixed-size set of step indices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StepSet {
    words: Vec<u64>,
}

impl StepSet {
    pub fn empty(size: usize) -> Self {
        StepSet {
            words: vec![0; size.div_ceil(64)],
        }
    }

    pub fn full(size: usize) -> Self {
        StepSet {
            words: vec![u64::MAX; size.div_ceil(64)],
        }
    }

    pub fn insert(&mut self, index: usize) {
        self.words[index / 64] |= 1 << (index % 64);
    }

    pub fn contains(&self, index: usize) -> bool {
        self.words[index / 64] & (1 << (index % 64)) != 0
    }

    pub fn intersect(&mut self, other: &StepSet) {
        for (mine, theirs) in self.words.iter_mut().zip(&other.words) {
            *mine &= *theirs;
        }
    }

    pub fn union(&mut self, other: &StepSet) {
        for (mine, theirs) in self.words.iter_mut().zip(&other.words) {
            *mine |= *theirs;
        }
    }
}

/// The branches of one well-formed fork: for each branch, its member steps.
pub(crate) struct ForkShape {
    pub join: usize,
    pub branch_members: Vec<StepSet>,
}

/// For every reachable step, the steps that have completed on every path
/// to it (itself included). At a join, the steps that precede it in each
/// branch of its fork count as well, since a join waits for all branches.
pub(crate) fn completed_before(
    graph: &StepGraph,
    start: usize,
    reached: &[bool],
    forks: &[ForkShape],
) -> Vec<Option<StepSet>> {
    let size = graph.successors.len();
    let mut sets: Vec<Option<StepSet>> = vec![None; size];
    let join_branches: BTreeMap<usize, &ForkShape> =
        forks.iter().map(|fork| (fork.join, fork)).collect();
    for node in graph.topological_order(reached) {
        let mut set = if node == start {
            StepSet::empty(size)
        } else if let Some(fork) = join_branches.get(&node) {
            let mut union = StepSet::empty(size);
            for members in &fork.branch_members {
                let mut branch_common: Option<StepSet> = None;
                for &pred in &graph.predecessors[node] {
                    if !reached[pred] || !members.contains(pred) {
                        continue;
                    }
                    if let Some(pred_set) = &sets[pred] {
                        match &mut branch_common {
                            Some(common) => common.intersect(pred_set),
                            None => branch_common = Some(pred_set.clone()),
                        }
                    }
                }
                if let Some(common) = branch_common {
                    union.union(&common);
                }
            }
            union
        } else {
            let mut common = StepSet::full(size);
            for &pred in &graph.predecessors[node] {
                if let (true, Some(pred_set)) = (reached[pred], &sets[pred]) {
                    common.intersect(pred_set);
                }
            }
            common
        };
        set.insert(node);
        sets[node] = Some(set);
    }
    sets
}
