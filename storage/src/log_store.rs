//! The Raft log: entries, vote, committed and purged log ids.
//!
//! Every write that openraft treats as durable (append, vote, truncate,
//! purge) is flushed to disk before it is acknowledged.

use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, RaftTypeConfig};

use crate::codec;
use crate::error::{run_blocking, StoreError};
use crate::store::{Shared, KEY_COMMITTED, KEY_LAST_PURGED, KEY_VOTE, RAFT_META_TREE};
use crate::types::{LogId, NodeId, NodeInfo, StorageError, Vote};

/// What the store needs of a Raft type configuration: floe's node id and
/// node, openraft's entry (serde, stored with the record codec) and
/// snapshot files. The commands are the configuration's own business.
pub trait StoreConfig:
    RaftTypeConfig<
    NodeId = NodeId,
    Node = NodeInfo,
    Entry = openraft::Entry<Self>,
    SnapshotData = crate::snapshot::SnapshotFile,
>
{
}

impl<C> StoreConfig for C where
    C: RaftTypeConfig<
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<C>,
        SnapshotData = crate::snapshot::SnapshotFile,
    >
{
}

/// The Raft log half of the store; also its own log reader. Cheap to clone.
pub struct LogStore<C> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) config: PhantomData<fn() -> C>,
}

impl<C> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore {
            shared: Arc::clone(&self.shared),
            config: PhantomData,
        }
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn entry_record_name(index: u64) -> impl FnOnce() -> String {
    move || format!("log entry {index}")
}

fn map_bound(bound: Bound<&u64>) -> Bound<[u8; 8]> {
    match bound {
        Bound::Included(index) => Bound::Included(index_key(*index)),
        Bound::Excluded(index) => Bound::Excluded(index_key(*index)),
        Bound::Unbounded => Bound::Unbounded,
    }
}

fn read_logs_error(error: StoreError) -> StorageError {
    error.into_storage(ErrorSubject::Logs, ErrorVerb::Read)
}

fn write_logs_error(error: StoreError) -> StorageError {
    error.into_storage(ErrorSubject::Logs, ErrorVerb::Write)
}

impl<C: StoreConfig> LogStore<C> {
    fn put_meta<T: serde::Serialize>(&self, key: &[u8], value: &T) -> Result<(), StoreError> {
        let name = || format!("{RAFT_META_TREE} {}", String::from_utf8_lossy(key));
        let bytes = codec::encode(name, value)?;
        self.shared
            .raft_meta
            .insert(key, bytes)
            .map_err(|error| StoreError::sled(format!("write {}", name()), error))?;
        Ok(())
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        Shared::get_record(&self.shared.raft_meta, RAFT_META_TREE, key)
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>, StoreError> {
        let Some((key, bytes)) = self
            .shared
            .log
            .last()
            .map_err(|error| StoreError::sled("read last log entry", error))?
        else {
            return Ok(None);
        };
        let index = u64::from_be_bytes(key.as_ref().try_into().unwrap_or_default());
        let entry: openraft::Entry<C> = codec::decode(entry_record_name(index), &bytes)?;
        Ok(Some(entry.log_id))
    }

    /// Removes every entry in `range` (on a blocking thread: it may be many).
    async fn remove_range(
        &self,
        range: (Bound<[u8; 8]>, Bound<[u8; 8]>),
        what: &'static str,
    ) -> Result<(), StoreError> {
        let shared = Arc::clone(&self.shared);
        run_blocking(what, move || {
            let mut batch = sled::Batch::default();
            for item in shared.log.range(range) {
                let (key, _) = item.map_err(|error| StoreError::sled(what, error))?;
                batch.remove(key);
            }
            shared
                .log
                .apply_batch(batch)
                .map_err(|error| StoreError::sled(what, error))
        })
        .await
    }
}

impl<C: StoreConfig> RaftLogReader<C> for LogStore<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<openraft::Entry<C>>, StorageError> {
        let key_range = (map_bound(range.start_bound()), map_bound(range.end_bound()));
        let shared = Arc::clone(&self.shared);
        run_blocking("read log entries", move || {
            let mut entries = Vec::new();
            for item in shared.log.range(key_range) {
                let (key, bytes) =
                    item.map_err(|error| StoreError::sled("read log entries", error))?;
                let index = u64::from_be_bytes(key.as_ref().try_into().unwrap_or_default());
                let entry: openraft::Entry<C> = codec::decode(entry_record_name(index), &bytes)?;
                entries.push(entry);
            }
            Ok(entries)
        })
        .await
        .map_err(read_logs_error)
    }
}

impl<C: StoreConfig> RaftLogStorage<C> for LogStore<C> {
    type LogReader = LogStore<C>;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError> {
        let last_purged_log_id: Option<LogId> =
            self.get_meta(KEY_LAST_PURGED).map_err(read_logs_error)?;
        let last_entry = self.last_entry_log_id().map_err(read_logs_error)?;
        let last_log_id = last_entry.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let write_vote_error =
            |error: StoreError| error.into_storage(ErrorSubject::Vote, ErrorVerb::Write);
        self.put_meta(KEY_VOTE, vote).map_err(write_vote_error)?;
        self.shared
            .flush("save vote")
            .await
            .map_err(write_vote_error)?;
        tracing::debug!(%vote, "vote saved");
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(KEY_VOTE)
            .map_err(|error| error.into_storage(ErrorSubject::Vote, ErrorVerb::Read))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not flushed: openraft recovers the committed index from a quorum
        // when it is lost; saving it only speeds up restart.
        let result = match committed {
            Some(log_id) => self.put_meta(KEY_COMMITTED, &log_id),
            None => self
                .shared
                .raft_meta
                .remove(KEY_COMMITTED)
                .map(|_| ())
                .map_err(|error| StoreError::sled("remove committed log id", error)),
        };
        result.map_err(write_logs_error)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.get_meta(KEY_COMMITTED).map_err(read_logs_error)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = openraft::Entry<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        let mut last_index = None;
        for entry in entries {
            let index = entry.log_id.index;
            let bytes =
                codec::encode(entry_record_name(index), &entry).map_err(write_logs_error)?;
            batch.insert(&index_key(index), bytes);
            last_index = Some(index);
        }
        self.shared
            .log
            .apply_batch(batch)
            .map_err(|error| write_logs_error(StoreError::sled("append log entries", error)))?;
        // Acknowledge only what is on disk (openraft counts an acknowledged
        // entry towards the commit quorum); the flush is shared with every
        // append queued meanwhile.
        tracing::trace!(last_index, "log entries written, flush queued");
        // Test-only defect for the chaos suite: acknowledges before the
        // flush, so a power cut loses acknowledged entries.
        if cfg!(feature = "defect-ack-before-flush") {
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        let flushed = Box::new(move |result| callback.log_io_completed(result));
        if let Err(flushed) = self.shared.group_commit.submit(flushed) {
            flushed(Err(std::io::Error::other("log flusher thread stopped")));
            let error = std::io::Error::other("the flusher thread stopped");
            return Err(write_logs_error(StoreError::io(
                "append log entries",
                error,
            )));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "truncating log from index");
        let range = (Bound::Included(index_key(log_id.index)), Bound::Unbounded);
        self.remove_range(range, "truncate log")
            .await
            .map_err(write_logs_error)?;
        self.shared
            .flush("truncate")
            .await
            .map_err(write_logs_error)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "purging log up to index");
        // Record the purge point first: if a crash interrupts the removal,
        // the log state still reports everything up to it as purged.
        self.put_meta(KEY_LAST_PURGED, &log_id)
            .map_err(write_logs_error)?;
        let range = (Bound::Unbounded, Bound::Included(index_key(log_id.index)));
        self.remove_range(range, "purge log")
            .await
            .map_err(write_logs_error)?;
        self.shared.flush("purge").await.map_err(write_logs_error)
    }
}
