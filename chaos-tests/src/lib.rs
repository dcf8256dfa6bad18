//! floe-chaos: runs floe clusters (local processes, the container appliance
//! or an operator's own cluster) under faults while clients record what
//! they see, then checks the records against floe's guarantees.
//!
//! - `targets/`: where the cluster runs and how faults are injected there.
//! - `nemesis/`: the faults and their schedules.
//! - `workload/`: the register and workflow clients, and the chaos worker.
//! - `checker/`: linearizability, acknowledged writes and runs, fencing,
//!   convergence, crash loops.
//! - `report/`: summary table, JSON report, timeline SVG, availability.
//! - `watch.rs`: polls every node's term, role and readiness during a run.
//! - `rejoin/`: the rejoin measurement (`floe-chaos rejoin`).
//! - `scenario/` runs one scenario (load, faults, final checks), `matrix.rs` a set of them.

pub mod checker;
pub mod cli;
pub mod matrix;
pub mod nemesis;
pub mod rejoin;
pub mod report;
pub mod scenario;
pub mod targets;
pub mod watch;
pub mod workload;
