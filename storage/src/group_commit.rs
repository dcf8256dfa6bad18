//! Group commit for log appends.
//!
//! openraft awaits `append` inside its core loop, so flushing there would
//! serialize one fsync per proposal. Instead an append writes its entries to
//! sled and hands its flush callback to this thread, which flushes once for
//! every callback queued meanwhile and then fires them in order. An entry is
//! still acknowledged only after it is on disk.

use std::sync::mpsc;
use std::time::Instant;

use crate::metrics::FlushStats;

/// openraft's flush callback of one append (`LogFlushed`), whatever the
/// type configuration: it is told how the flush went.
pub(crate) type FlushCallback = Box<dyn FnOnce(std::io::Result<()>) + Send>;

pub(crate) struct GroupCommit {
    queue: Option<mpsc::Sender<FlushCallback>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GroupCommit {
    /// Starts the flusher thread; it ends when the store (the sender) is dropped.
    pub(crate) fn start(db: sled::Db, stats: FlushStats) -> std::io::Result<GroupCommit> {
        let (queue, pending) = mpsc::channel::<FlushCallback>();
        let thread = std::thread::Builder::new()
            .name("floe-log-flush".into())
            .spawn(move || run(db, stats, pending))?;
        Ok(GroupCommit {
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    /// Queues `callback` to fire after the next flush. Fails (handing the
    /// callback back) only if the flusher thread is gone.
    pub(crate) fn submit(&self, callback: FlushCallback) -> Result<(), FlushCallback> {
        match &self.queue {
            Some(queue) => queue.send(callback).map_err(|returned| returned.0),
            None => Err(callback),
        }
    }
}

impl Drop for GroupCommit {
    /// Flushes what is queued and waits for the thread, so the database
    /// (and its lock file) is released when the store is dropped.
    fn drop(&mut self) {
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(db: sled::Db, stats: FlushStats, pending: mpsc::Receiver<FlushCallback>) {
    while let Ok(first) = pending.recv() {
        let mut callbacks = vec![first];
        callbacks.extend(pending.try_iter());
        let started = Instant::now();
        let flushed = db.flush();
        stats.record(started.elapsed());
        match flushed {
            Ok(_) => {
                tracing::trace!(appends = callbacks.len(), "log appends flushed");
                for callback in callbacks {
                    callback(Ok(()));
                }
            }
            Err(error) => {
                tracing::error!(error = %error, "log flush failed");
                for callback in callbacks {
                    callback(Err(std::io::Error::other(format!(
                        "flush log appends: {error}"
                    ))));
                }
            }
        }
    }
}
