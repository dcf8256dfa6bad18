//! floe-storage: the sled-backed Raft log and state machine.
//!
//! One sled database per node, with separate trees:
//! - `log`: Raft log entries, key = big-endian log index
//! - `raft_meta`: vote, committed log id, last purged log id
//! - `sm_meta`: applied log id, last membership, active data generation, tombstones
//! - `sm_data_<generation>`: the key-value state; a snapshot install loads a
//!   new generation and switches to it atomically
//! - `identity`: the node id and cluster fingerprint this directory belongs to
//!
//! Every stored record carries a format version (see [`codec`]).
//! [`Store`] hands out the openraft storage halves ([`LogStore`],
//! [`StateMachineStore`]) and a read handle for the API ([`StateReader`]).

pub mod blobs;
mod changes;
pub mod codec;
mod error;
mod group_commit;
mod identity;
mod keys;
mod log_store;
#[cfg(test)]
mod memory;
mod metrics;
pub mod models;
mod reader;
pub mod runs;
pub mod slots;
pub mod snapshot;
mod snapshot_format;
mod snapshot_store;
mod state_machine;
pub mod state_store;
mod store;
pub mod types;

pub use blobs::{BlobRef, BlobStore};
pub use changes::{AppliedChanges, ChangeListener};
pub use error::StoreError;
pub use log_store::LogStore;
pub use metrics::{ApplyStats, FlushHistogram, FlushStats, FLUSH_BUCKETS_SECONDS};
pub use reader::{RunFilter, RunPage, StateReader};
pub use snapshot_store::SnapshotBuilder;
pub use state_machine::StateMachineStore;
pub use store::{Store, StoreOptions};
pub use types::*;
