//! The narrow interface the application state machine (floe-state) writes
//! and reads through: get, insert and remove inside one atomic transaction
//! ([`StateTx`]), and get and ordered scans of the applied state
//! ([`StateView`]). Implemented here for sled; apply never sees a sled type.
//! Values and keys come back as [`StoredBytes`], the store's own shared
//! buffers: a read copies nothing.

use std::ops::{Bound, Deref};

use sled::transaction::{
    ConflictableTransactionError, TransactionalTree, UnabortableTransactionError,
};

use crate::error::StoreError;

/// Bytes as the store holds them: a read hands out the store's buffer
/// (reference counted, cloned without copying), and a value built for
/// [`StateTx::insert`] is stored as it is.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StoredBytes(sled::IVec);

impl Deref for StoredBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for StoredBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl std::borrow::Borrow<[u8]> for StoredBytes {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for StoredBytes {
    fn from(bytes: Vec<u8>) -> StoredBytes {
        StoredBytes(bytes.into())
    }
}

impl From<&[u8]> for StoredBytes {
    fn from(bytes: &[u8]) -> StoredBytes {
        StoredBytes(bytes.into())
    }
}

impl std::fmt::Debug for StoredBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

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
    fn get(&self, key: &[u8]) -> Result<Option<StoredBytes>, TxError>;
    /// Stores `value` under `key` in the data tree.
    fn insert(&self, key: &[u8], value: StoredBytes) -> Result<(), TxError>;
    /// Removes `key` from the data tree; whether a record was there.
    fn remove(&self, key: &[u8]) -> Result<bool, TxError>;
    /// The record under `key` in the state machine's metadata.
    fn get_meta(&self, key: &[u8]) -> Result<Option<StoredBytes>, TxError>;
    /// Stores `value` under `key` in the state machine's metadata.
    fn insert_meta(&self, key: &[u8], value: StoredBytes) -> Result<(), TxError>;
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

    fn get(&self, key: &[u8]) -> Result<Option<StoredBytes>, TxError> {
        Ok(self.data.get(key)?.map(StoredBytes))
    }

    fn insert(&self, key: &[u8], value: StoredBytes) -> Result<(), TxError> {
        self.data.insert(key, value.0)?;
        Ok(())
    }

    fn remove(&self, key: &[u8]) -> Result<bool, TxError> {
        Ok(self.data.remove(key)?.is_some())
    }

    fn get_meta(&self, key: &[u8]) -> Result<Option<StoredBytes>, TxError> {
        Ok(self.meta.get(key)?.map(StoredBytes))
    }

    fn insert_meta(&self, key: &[u8], value: StoredBytes) -> Result<(), TxError> {
        self.meta.insert(key, value.0)?;
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
pub type Record = (StoredBytes, StoredBytes);

/// Records in key order, either way.
pub type Records<'a> = Box<dyn DoubleEndedIterator<Item = Result<Record, ReadError>> + 'a>;

/// A read view of the applied data tree.
pub trait StateView {
    /// The data tree's name, for error messages.
    fn tree_name(&self) -> &str;
    /// The record under `key`.
    fn get(&self, key: &[u8]) -> Result<Option<StoredBytes>, ReadError>;
    /// The records whose keys lie in `range`, in key order.
    fn range(&self, range: (Bound<Vec<u8>>, Bound<Vec<u8>>)) -> Records<'_>;
    /// The records whose keys start with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8]) -> Records<'_>;
}

fn records(
    iter: impl DoubleEndedIterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
) -> impl DoubleEndedIterator<Item = Result<Record, ReadError>> {
    iter.map(|item| {
        item.map(|(key, value)| (StoredBytes(key), StoredBytes(value)))
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

    fn get(&self, key: &[u8]) -> Result<Option<StoredBytes>, ReadError> {
        self.active
            .data
            .get(key)
            .map(|found| found.map(StoredBytes))
            .map_err(ReadError)
    }

    fn range(&self, range: (Bound<Vec<u8>>, Bound<Vec<u8>>)) -> Records<'_> {
        Box::new(records(self.active.data.range(range)))
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Records<'_> {
        Box::new(records(self.active.data.scan_prefix(prefix)))
    }
}

#[cfg(test)]
mod tests {
    use sled::Transactional;

    use super::*;

    /// Longer than sled keeps inline, so it lives in a shared buffer.
    const VALUE: [u8; 100] = [7; 100];

    fn store_with_record() -> (tempfile::TempDir, crate::Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::Store::open(dir.path(), Default::default()).unwrap();
        store
            .shared
            .read_active()
            .data
            .insert(b"run/a", &VALUE[..])
            .unwrap();
        (dir, store)
    }

    #[test]
    fn view_reads_share_the_stored_buffer() {
        let (_dir, store) = store_with_record();
        let view = store.data_view();
        let first = view.get(b"run/a").unwrap().unwrap();
        let second = view.get(b"run/a").unwrap().unwrap();
        assert_eq!(&first[..], &VALUE[..]);
        assert_eq!(first.as_ptr(), second.as_ptr(), "a read copied the value");
        let (key, scanned) = view.scan_prefix(b"run/").next().unwrap().unwrap();
        assert_eq!(&key[..], b"run/a");
        assert_eq!(scanned.as_ptr(), first.as_ptr(), "a scan copied the value");
    }

    #[test]
    fn transaction_reads_share_the_stored_and_the_written_buffers() {
        let (_dir, store) = store_with_record();
        let stored = store.data_view().get(b"run/a").unwrap().unwrap();
        let written = StoredBytes::from(vec![9; 100]);
        let data = store.shared.read_active().data.clone();
        (&data, &store.shared.sm_meta)
            .transaction(|(data, meta)| {
                let tx = SledStateTx {
                    data,
                    meta,
                    tree_name: "sm_data_0",
                };
                let read = tx.get(b"run/a")?.unwrap();
                assert_eq!(read.as_ptr(), stored.as_ptr(), "a read copied the value");
                tx.insert(b"run/b", written.clone())?;
                let read_back = tx.get(b"run/b")?.unwrap();
                assert_eq!(
                    read_back.as_ptr(),
                    written.as_ptr(),
                    "insert copied the value"
                );
                Ok::<_, ConflictableTransactionError<Box<StoreError>>>(())
            })
            .unwrap();
        assert_eq!(store.data_view().get(b"run/b").unwrap().unwrap(), written);
    }
}
