//! The crate's error type, and its mapping onto openraft's `StorageError`.

use std::path::PathBuf;

use openraft::{ErrorSubject, ErrorVerb, StorageIOError};

use crate::types::{NodeId, StorageError};

/// Everything that can go wrong in the store. Messages name the record or
/// the data directory involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled refused an operation.
    #[error("{context}: {source}")]
    Sled {
        context: String,
        #[source]
        source: sled::Error,
    },
    /// A sled transaction over several trees failed.
    #[error("{context}: transaction failed: {source}")]
    Transaction {
        context: String,
        #[source]
        source: sled::transaction::TransactionError<Box<StoreError>>,
    },
    /// File system trouble (snapshot files, data directory).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A JSON-bodied record (runs, tasks) that does not parse or encode.
    #[error("{record}: {reason}")]
    Json { record: String, reason: String },
    /// A record written by a newer (or unknown) build.
    #[error("{record}: record format version {found}, this build reads {supported}")]
    UnknownFormatVersion {
        record: String,
        found: u8,
        supported: u8,
    },
    /// A record with no bytes at all, not even its version byte.
    #[error("{record}: empty record, expected a format version byte")]
    EmptyRecord { record: String },
    /// The payload after a known version byte did not decode.
    #[error("{record}: cannot decode: {source}")]
    Decode {
        record: String,
        #[source]
        source: bincode::error::DecodeError,
    },
    /// A value could not be encoded.
    #[error("{record}: cannot encode: {source}")]
    Encode {
        record: String,
        #[source]
        source: bincode::error::EncodeError,
    },
    /// The data directory belongs to another node id.
    #[error(
        "data dir {dir} belongs to node {stored}, but this node is configured as node {configured}; \
         node ids are never reused, use a fresh data dir or the right node id"
    )]
    WrongNode {
        dir: PathBuf,
        stored: NodeId,
        configured: NodeId,
    },
    /// The data directory belongs to another cluster.
    #[error(
        "data dir {dir} belongs to cluster {stored:?}, but this node is configured for cluster {configured:?}; \
         use a fresh data dir to join another cluster"
    )]
    WrongCluster {
        dir: PathBuf,
        stored: String,
        configured: String,
    },
    /// A snapshot file failed verification; nothing was changed.
    #[error("snapshot {path}: {reason}")]
    CorruptSnapshot { path: PathBuf, reason: String },
    /// A command that cannot be applied (a record it reads does not decode,
    /// a value it would store does not encode, the engine panicked on it).
    /// Apply refuses it alike on every replica and keeps nothing it did;
    /// `position` is where it sits in the batch being applied.
    #[error("{reason}")]
    CommandRefused {
        position: Vec<usize>,
        reason: String,
    },
    /// A blocking task panicked or was cancelled.
    #[error("{context}: background task failed: {source}")]
    Task {
        context: String,
        #[source]
        source: tokio::task::JoinError,
    },
}

impl StoreError {
    pub(crate) fn sled(context: impl Into<String>, source: sled::Error) -> Self {
        StoreError::Sled {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }

    /// Whether this error means the store itself failed (I/O, corruption
    /// sled detected, a lost background task), rather than one command's
    /// records or values: only these may stop apply.
    pub fn is_storage_failure(&self) -> bool {
        match self {
            StoreError::Json { .. }
            | StoreError::UnknownFormatVersion { .. }
            | StoreError::EmptyRecord { .. }
            | StoreError::Decode { .. }
            | StoreError::Encode { .. }
            | StoreError::CommandRefused { .. } => false,
            StoreError::Sled { .. }
            | StoreError::Transaction { .. }
            | StoreError::Io { .. }
            | StoreError::WrongNode { .. }
            | StoreError::WrongCluster { .. }
            | StoreError::CorruptSnapshot { .. }
            | StoreError::Task { .. } => true,
        }
    }

    /// Wraps this error for openraft, saying what was being done to what.
    pub(crate) fn into_storage(
        self,
        subject: ErrorSubject<NodeId>,
        verb: ErrorVerb,
    ) -> StorageError {
        StorageError::IO {
            source: StorageIOError::new(subject, verb, openraft::AnyError::new(&self)),
        }
    }
}

/// Runs blocking store work off the async executor.
pub(crate) async fn run_blocking<T, F>(context: &str, work: F) -> Result<T, StoreError>
where
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(source) => Err(StoreError::Task {
            context: context.to_string(),
            source,
        }),
    }
}
