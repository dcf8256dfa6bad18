//! Workloads: what clients do to the cluster while nemeses run, recorded
//! as histories for the checkers.

pub mod history;
pub mod register;
pub mod worker;
pub mod workflow;

/// Which workloads a scenario runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    Register,
    Workflow,
    Both,
}

impl WorkloadKind {
    pub fn register(self) -> bool {
        matches!(self, WorkloadKind::Register | WorkloadKind::Both)
    }
    pub fn workflow(self) -> bool {
        matches!(self, WorkloadKind::Workflow | WorkloadKind::Both)
    }
    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Register => "register",
            WorkloadKind::Workflow => "workflow",
            WorkloadKind::Both => "both",
        }
    }
}
