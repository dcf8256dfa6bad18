//! An in-memory [`StateTx`] for tests: two ordered maps, a transaction
//! works on copies and keeps them only when it succeeds. Proves apply runs
//! over anything that implements the store interface.

use std::cell::RefCell;
use std::collections::BTreeMap;

use floe_storage::state_store::{StateTx, StoredBytes, TxError};

type Tree = BTreeMap<Vec<u8>, StoredBytes>;

/// The state machine's data and metadata trees, in memory.
#[derive(Default)]
pub(crate) struct MemoryState {
    data: RefCell<Tree>,
    meta: RefCell<Tree>,
}

struct MemoryTx {
    data: RefCell<Tree>,
    meta: RefCell<Tree>,
}

impl MemoryState {
    /// Runs `work` as one transaction: its writes are kept only if it succeeds.
    pub(crate) fn transaction<R>(
        &self,
        work: impl FnOnce(&dyn StateTx) -> Result<R, TxError>,
    ) -> Result<R, TxError> {
        let tx = MemoryTx {
            data: RefCell::new(self.data.borrow().clone()),
            meta: RefCell::new(self.meta.borrow().clone()),
        };
        let result = work(&tx)?;
        *self.data.borrow_mut() = tx.data.into_inner();
        *self.meta.borrow_mut() = tx.meta.into_inner();
        Ok(result)
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.data.borrow().get(key).map(|value| value.to_vec())
    }

    pub(crate) fn insert(&self, key: &[u8], value: &[u8]) {
        self.data.borrow_mut().insert(key.to_vec(), value.into());
    }

    /// Every data record, in key order.
    pub(crate) fn records(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let data = self.data.borrow();
        data.iter()
            .map(|(key, value)| (key.clone(), value.to_vec()))
            .collect()
    }
}

impl StateTx for MemoryTx {
    fn tree_name(&self) -> &str {
        "memory"
    }

    fn get(&self, key: &[u8]) -> Result<Option<StoredBytes>, TxError> {
        Ok(self.data.borrow().get(key).cloned())
    }

    fn insert(&self, key: &[u8], value: StoredBytes) -> Result<(), TxError> {
        self.data.borrow_mut().insert(key.to_vec(), value);
        Ok(())
    }

    fn remove(&self, key: &[u8]) -> Result<bool, TxError> {
        Ok(self.data.borrow_mut().remove(key).is_some())
    }

    fn get_meta(&self, key: &[u8]) -> Result<Option<StoredBytes>, TxError> {
        Ok(self.meta.borrow().get(key).cloned())
    }

    fn insert_meta(&self, key: &[u8], value: StoredBytes) -> Result<(), TxError> {
        self.meta.borrow_mut().insert(key.to_vec(), value);
        Ok(())
    }
}
