//! Wake-ups from applied state: the store tells the hub what each committed
//! batch changed, and the hub wakes only who cares — the watch streams of
//! the runs that changed, this node's dispatcher when tasks placed here
//! changed, the scheduler when the queue did. Nobody re-reads state on
//! every applied entry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use floe_state::{AppliedChanges, NodeId};
use tokio::sync::{watch, Notify};

pub struct ChangeHub {
    node_id: NodeId,
    /// Watched runs: a change counter and how many watchers share it.
    runs: Mutex<HashMap<String, (watch::Sender<u64>, usize)>>,
    /// Tasks placed on this node changed.
    pub tasks_here: Notify,
    /// Tasks waiting for placement, timers, or placements anywhere changed.
    pub queue: Notify,
}

impl ChangeHub {
    pub fn new(node_id: NodeId) -> Arc<ChangeHub> {
        Arc::new(ChangeHub {
            node_id,
            runs: Mutex::default(),
            tasks_here: Notify::new(),
            queue: Notify::new(),
        })
    }

    /// The store's listener; runs on the applying thread, so it only signals.
    pub fn listener(self: &Arc<Self>) -> floe_state::ChangeListener {
        let hub = Arc::downgrade(self);
        Arc::new(move |changes: &AppliedChanges| {
            if let Some(hub) = hub.upgrade() {
                hub.applied(changes);
            }
        })
    }

    fn applied(&self, changes: &AppliedChanges) {
        if changes.touches_node(self.node_id) {
            self.tasks_here.notify_one();
        }
        if changes.everything || changes.queue || !changes.task_nodes.is_empty() {
            self.queue.notify_one();
        }
        let Ok(runs) = self.runs.lock() else { return };
        let bump =
            |sender: &watch::Sender<u64>| sender.send_modify(|seen| *seen = seen.wrapping_add(1));
        if changes.everything || changes.runs.len() > runs.len() {
            for (run_id, (sender, _)) in runs.iter() {
                if changes.everything || changes.runs.contains(run_id) {
                    bump(sender);
                }
            }
        } else {
            for run_id in &changes.runs {
                if let Some((sender, _)) = runs.get(run_id) {
                    bump(sender);
                }
            }
        }
    }

    /// Changes of one run from now on; drop the guard to stop watching.
    pub fn watch_run(self: &Arc<Self>, run_id: &str) -> RunWatch {
        let mut runs = self
            .runs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = runs
            .entry(run_id.to_string())
            .or_insert_with(|| (watch::channel(0).0, 0));
        entry.1 += 1;
        let mut receiver = entry.0.subscribe();
        receiver.mark_unchanged();
        RunWatch {
            hub: self.clone(),
            run_id: run_id.to_string(),
            receiver,
        }
    }
}

/// A watcher's subscription to one run's changes.
pub struct RunWatch {
    hub: Arc<ChangeHub>,
    run_id: String,
    receiver: watch::Receiver<u64>,
}

impl RunWatch {
    /// Waits until the run changed since the last call (or since subscribing).
    pub async fn changed(&mut self) {
        // The sender lives in the hub while this guard does, so this never errs.
        let _ = self.receiver.changed().await;
    }
}

impl Drop for RunWatch {
    fn drop(&mut self) {
        let mut runs = self
            .hub
            .runs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(entry) = runs.get_mut(&self.run_id) {
            entry.1 -= 1;
            if entry.1 == 0 {
                runs.remove(&self.run_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn changed_runs(ids: &[&str]) -> AppliedChanges {
        AppliedChanges {
            runs: ids.iter().map(|id| id.to_string()).collect(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_watch_wakes_for_its_own_run_only() {
        let hub = ChangeHub::new(1);
        let listener = hub.listener();
        let mut mine = hub.watch_run("a");
        listener(&changed_runs(&["b", "c"]));
        assert!(
            tokio::time::timeout(Duration::from_millis(50), mine.changed())
                .await
                .is_err(),
            "other runs changed"
        );
        listener(&changed_runs(&["a"]));
        tokio::time::timeout(Duration::from_secs(1), mine.changed())
            .await
            .expect("its run changed");
        // A change between two waits is not lost.
        listener(&changed_runs(&["a"]));
        tokio::time::timeout(Duration::from_secs(1), mine.changed())
            .await
            .expect("change before the wait");
        let everything = AppliedChanges {
            everything: true,
            ..Default::default()
        };
        listener(&everything);
        tokio::time::timeout(Duration::from_secs(1), mine.changed())
            .await
            .expect("a snapshot install wakes everyone");
    }

    #[tokio::test]
    async fn watches_share_a_run_and_leave_no_entry_behind() {
        let hub = ChangeHub::new(1);
        let mut first = hub.watch_run("a");
        let mut second = hub.watch_run("a");
        hub.listener()(&changed_runs(&["a"]));
        tokio::time::timeout(Duration::from_secs(1), first.changed())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(1), second.changed())
            .await
            .unwrap();
        drop(first);
        assert_eq!(hub.runs.lock().unwrap().len(), 1);
        drop(second);
        assert!(hub.runs.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn dispatcher_wakes_only_for_this_nodes_tasks() {
        let hub = ChangeHub::new(2);
        let listener = hub.listener();
        listener(&AppliedChanges {
            task_nodes: [3].into_iter().collect(),
            ..Default::default()
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(50), hub.tasks_here.notified())
                .await
                .is_err()
        );
        tokio::time::timeout(Duration::from_secs(1), hub.queue.notified())
            .await
            .expect("placements changed");
        listener(&AppliedChanges {
            task_nodes: [2].into_iter().collect(),
            ..Default::default()
        });
        tokio::time::timeout(Duration::from_secs(1), hub.tasks_here.notified())
            .await
            .expect("a task placed here");
    }
}
