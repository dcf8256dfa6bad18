//! floe-state: floe's replicated application state.
//!
//! The replicated [`Command`] set and its [`CommandResponse`], the Raft
//! type configuration ([`TypeConfig`]), deterministic apply (runs, task
//! placement, concurrency limits, models, key-value, timers, retention),
//! the data tree's key layout and the API's read handle ([`StateReader`]).
//! Apply reads and writes only through floe-storage's transactional
//! interface ([`floe_storage::state_store::StateTx`]); floe-storage keeps
//! the log, snapshots and the sled trees underneath.

pub mod access;
mod answers;
mod apply;
mod changes;
pub mod codec;
mod keys;
#[cfg(test)]
mod memory;
pub mod models;
mod reader;
pub mod runs;
pub mod slots;
mod store;
pub mod types;

pub use apply::StateApplier;
pub use changes::{AppliedChanges, ChangeListener};
pub use reader::{RunFilter, RunPage, StateReader};
pub use store::{StateMachineStore, Store};
pub use types::*;

// What the node needs of the store beneath, reachable from here.
pub use floe_storage::{
    blobs, ApplyStats, BlobRef, BlobStore, FlushHistogram, FlushStats, StoreError, StoreOptions,
    FLUSH_BUCKETS_SECONDS,
};
