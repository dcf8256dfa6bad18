//! What an applied batch changed, told to the node after the batch commits,
//! so watchers wake for their own run and dispatchers for their own node's
//! tasks instead of re-reading state on every applied entry.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use floe_storage::types::NodeId;

/// The changes of one committed batch of entries (or of a snapshot install,
/// where `everything` is set: anything may have changed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppliedChanges {
    /// Runs whose record was stored or deleted.
    pub runs: BTreeSet<String>,
    /// Nodes whose set of placed tasks changed.
    pub task_nodes: BTreeSet<NodeId>,
    /// Tasks waiting for placement or timers were added or removed.
    pub queue: bool,
    pub everything: bool,
}

impl AppliedChanges {
    pub fn is_empty(&self) -> bool {
        !self.everything && !self.queue && self.runs.is_empty() && self.task_nodes.is_empty()
    }

    /// Whether tasks placed on `node` may have changed.
    pub fn touches_node(&self, node: NodeId) -> bool {
        self.everything || self.task_nodes.contains(&node)
    }
}

/// Called on the applying thread after each commit; it must not block.
pub type ChangeListener = Arc<dyn Fn(&AppliedChanges) + Send + Sync>;

#[derive(Default)]
pub(crate) struct Listeners {
    listener: RwLock<Option<ChangeListener>>,
}

impl Listeners {
    pub(crate) fn set(&self, listener: ChangeListener) {
        if let Ok(mut slot) = self.listener.write() {
            *slot = Some(listener);
        }
    }

    pub(crate) fn publish(&self, changes: &AppliedChanges) {
        if changes.is_empty() {
            return;
        }
        let listener = self.listener.read().ok().and_then(|slot| slot.clone());
        if let Some(listener) = listener {
            listener(changes);
        }
    }
}
