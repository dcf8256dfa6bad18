//! openraft's storage conformance suite, run on the real sled store.

use floe_state::{LogStore, StateMachineStore, StorageError, Store, StoreOptions, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

struct SledStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for SledStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("create temp dir");
        let store = Store::open(dir.path(), StoreOptions::default()).expect("open store");
        Ok((dir, store.log_store(), store.state_machine()))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(SledStoreBuilder).expect("openraft storage suite");
}
