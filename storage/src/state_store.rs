//! The narrow interface the application state machine (floe-state) writes
//! and reads through: get, insert and remove inside one atomic transaction
//! ([`StateTx`]), and get and ordered scans of the applied state
//! ([`StateView`]). Implemented here for sled; apply never sees a sled type.

use std::ops::Bound;

use sled::transaction::{
    ConflictableTransactionError, TransactionalTree, UnabortableTransactionError,
};

use crate::error::StoreError;

/// Why a transaction's work stopped.
#[derive(Debug)]
pub enum TxError {
    /// The work refuses to go on (a record does not decode, a value does
    /// not encode, a command is refused): nothing written in the
    /// transaction is kept, and the error reaches the transaction's caller.
    Abort(Box<StoreError>),
    /// The store failed, or must run the transaction again: pass it on
    /// unchanged, the store deals with it.
    Store(StoreFailure),
}

impl TxError {
    /// Aborts the transaction with `error`.
    pub fn abort(error: StoreError) -> TxError {
        TxError::Abort(Box::new(error))
    }
}

/// A failure of the store under a transaction (opaque to its users).
#[derive(Debug)]
pub struct StoreFailure(pub(crate) UnabortableTransactionError);

impl From<UnabortableTransactionError> for TxError {
    fn from(error: UnabortableTransactionError) -> TxError {
        TxError::Store(StoreFailure(error))
    }
}

impl From<TxError> for ConflictableTransactionError<Box<StoreError>> {
    fn from(error: TxError) -> Self {
        match error {
            TxError::Abort(error) => ConflictableTransactionError::Abort(error),
            TxError::Store(StoreFailure(UnabortableTransactionError::Conflict)) => {
                ConflictableTransactionError::Conflict
            }
            TxError::Store(StoreFailure(UnabortableTransactionError::Storage(error))) => {
                ConflictableTransactionError::Storage(error)
            }
        }
    }
}

/// The state machine's trees inside one atomic transaction: the data tree
/// (every replicated record) and, for what the store keeps beside it, the
/// state machine's metadata. Reads see the transaction's own writes.
pub trait StateTx {
    /// The data tree's name, for error messages.
    fn tree_name(&self) -> &str;
    /// The record under `key` in the data tree.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, TxError>;
    /// Stores `value` under `key` in the data tree.
    fn insert(&self, key: &[u8], value: Vec<u8>) -> Result<(), TxError>;
    /// Removes `key` from the data tree; whether a record was there.
    fn remove(&self, key: &[u8]) -> Result<bool, TxError>;
    /// The record under `key` in the state machine's metadata.
    fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, TxError>;
    /// Stores `value` under `key` in the state machine's metadata.
    fn insert_meta(&self, key: &[u8], value: Vec<u8>) -> Result<(), TxError>;
}

/// [`StateTx`] over a sled transaction of the data tree and `sm_meta`.
pub(crate) struct SledStateTx<'a> {
    pub(crate) data: &'a TransactionalTree,
    pub(crate) meta: &'a TransactionalTree,
    pub(crate) tree_name: &'a str,
}

impl StateTx for SledStateTx<'_> {
    fn tree_name(&self) -> &str {
        self.tree_name
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, TxError> {
        Ok(self.data.get(key)?.map(|bytes| bytes.to_vec()))
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> Result<(), TxError> {
        self.data.insert(key, value)?;
        Ok(())
    }

    fn remove(&self, key: &[u8]) -> Result<bool, TxError> {
        Ok(self.data.remove(key)?.is_some())
    }

    fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, TxError> {
        Ok(self.meta.get(key)?.map(|bytes| bytes.to_vec()))
    }

    fn insert_meta(&self, key: &[u8], value: Vec<u8>) -> Result<(), TxError> {
        self.meta.insert(key, value)?;
        Ok(())
    }
}

/// A failed read of the applied state; the caller names what it read.
#[derive(Debug)]
pub struct ReadError(sled::Error);

impl ReadError {
    /// The error, saying what was being read (`list sm_data_3 flows`).
    pub fn context(self, context: impl Into<String>) -> StoreError {
        StoreError::sled(context, self.0)
    }
}

/// One record: key and value.
pub type Record = (Vec<u8>, Vec<u8>);

/// Records in key order, either way.
pub type Records<'a> = Box<dyn DoubleEndedIterator<Item = Result<Record, ReadError>> + 'a>;

/// A read view of the applied data tree.
pub trait StateView {
    /// The data tree's name, for error messages.
    fn tree_name(&self) -> &str;
    /// The record under `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError>;
    /// The records whose keys lie in `range`, in key order.
    fn range(&self, range: (Bound<Vec<u8>>, Bound<Vec<u8>>)) -> Records<'_>;
    /// The records whose keys start with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8]) -> Records<'_>;
}

fn records(
    iter: impl DoubleEndedIterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
) -> impl DoubleEndedIterator<Item = Result<Record, ReadError>> {
    iter.map(|item| {
        item.map(|(key, value)| (key.to_vec(), value.to_vec()))
            .map_err(ReadError)
    })
}

/// [`StateView`] over the active data tree, holding it for its lifetime
/// (an install drops the previous tree right after swapping).
pub struct DataView<'a> {
    pub(crate) active: std::sync::RwLockReadGuard<'a, crate::store::DataGeneration>,
    pub(crate) tree_name: String,
}

impl StateView for DataView<'_> {
    fn tree_name(&self) -> &str {
        &self.tree_name
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError> {
        self.active
            .data
            .get(key)
            .map(|found| found.map(|bytes| bytes.to_vec()))
            .map_err(ReadError)
    }

    fn range(&self, range: (Bound<Vec<u8>>, Bound<Vec<u8>>)) -> Records<'_> {
        Box::new(records(self.active.data.range(range)))
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Records<'_> {
        Box::new(records(self.active.data.scan_prefix(prefix)))
    }
}
