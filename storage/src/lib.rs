//! floe-storage: the sled-backed Raft log store, snapshots and blobs, and
//! the narrow transactional interface the application state machine
//! (floe-state) applies through. It knows nothing of runs, flows or models.
//!
//! One sled database per node, with separate trees:
//! - `log`: Raft log entries, key = big-endian log index
//! - `raft_meta`: vote, committed log id, last purged log id
//! - `sm_meta`: applied log id, last membership, active data generation, tombstones
//! - `sm_data_<generation>`: the replicated records; a snapshot install
//!   loads a new generation and switches to it atomically
//! - `identity`: the node id and cluster fingerprint this directory belongs to
//!
//! Every stored record carries a format version (see [`codec`]).
//! [`Store`] hands out the openraft storage halves ([`LogStore`], generic
//! over the type configuration, and [`StateMachineStore`], generic over an
//! [`Applier`]) and a read view of the applied data ([`state_store::StateView`]).

pub mod blobs;
pub mod codec;
mod error;
mod group_commit;
mod identity;
mod log_store;
mod metrics;
pub mod snapshot;
mod snapshot_format;
mod snapshot_store;
pub mod state_machine;
pub mod state_store;
mod store;
pub mod types;

pub use blobs::{BlobRef, BlobStore};
pub use error::StoreError;
pub use log_store::{LogStore, StoreConfig};
pub use metrics::{ApplyStats, FlushHistogram, FlushStats, FLUSH_BUCKETS_SECONDS};
#[doc(hidden)]
pub use snapshot_format::fuzzing as snapshot_fuzzing;
pub use snapshot_store::SnapshotBuilder;
pub use state_machine::{Applier, StateMachineStore};
pub use store::{Store, StoreOptions};
pub use types::*;
