//! openraft's storage conformance suite on the sled store, with a type
//! configuration and applier of the test's own: the store needs nothing
//! of floe's commands.

use std::sync::Arc;

use floe_storage::snapshot::SnapshotFile;
use floe_storage::state_machine::Refusals;
use floe_storage::state_store::{StateTx, TxError};
use floe_storage::{
    Applier, LogStore, NodeId, NodeInfo, StateMachineStore, StorageError, Store, StoreOptions,
};
use openraft::testing::{StoreBuilder, Suite};
use serde::{Deserialize, Serialize};
use tempfile::TempDir;

/// The test's only command: store `value` under `key`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Put {
    key: String,
    value: Vec<u8>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Done;

openraft::declare_raft_types!(
    TestConfig:
        D = Put,
        R = Done,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TestConfig>,
        SnapshotData = SnapshotFile,
        AsyncRuntime = openraft::TokioRuntime,
        Responder = openraft::impls::OneshotResponder<TestConfig>,
);

struct PutApplier;

impl Applier for PutApplier {
    type Config = TestConfig;
    type Batch = ();

    fn apply(
        &self,
        tx: &dyn StateTx,
        _batch: &mut (),
        _index: u64,
        _position: usize,
        command: &Put,
        _refused: &Refusals,
    ) -> Result<Done, TxError> {
        tx.insert(command.key.as_bytes(), command.value.as_slice().into())?;
        Ok(Done)
    }

    fn committed(&self, _batch: ()) {}

    fn snapshot_installed(&self) {}
}

struct SledStoreBuilder;

type TestLogStore = LogStore<TestConfig>;
type TestStateMachine = StateMachineStore<PutApplier>;

impl StoreBuilder<TestConfig, TestLogStore, TestStateMachine, TempDir> for SledStoreBuilder {
    async fn build(&self) -> Result<(TempDir, TestLogStore, TestStateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("create temp dir");
        let store = Store::open(dir.path(), StoreOptions::default()).expect("open store");
        Ok((
            dir,
            store.log_store(),
            store.state_machine(Arc::new(PutApplier)),
        ))
    }
}

#[test]
fn openraft_storage_suite_passes_with_any_type_config() {
    Suite::test_all(SledStoreBuilder).expect("openraft storage suite");
}
