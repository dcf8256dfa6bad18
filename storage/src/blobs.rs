//! Content-addressed blob files: large run payloads and model artifacts.
//!
//! A blob lives outside the Raft log, as a file named by the sha256 of its
//! bytes under `<data dir>/blobs/<first two hex digits>/<hash>`. Records in the
//! state machine carry only a [`BlobRef`]; the node replicates the bytes to a
//! majority of voters before it proposes the record that refers to them.
//!
//! Files are written to a temporary name, fsynced, renamed and the directory
//! fsynced, so a blob that exists under its name is complete; every read
//! checks the content against the name, so a damaged file reads as missing
//! (and is fetched again from a peer) instead of returning wrong bytes.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::StoreError;

/// The JSON key that marks a value as a reference to a blob.
pub const BLOB_REF_KEY: &str = "$blob";
/// What a serialized reference starts with: `{"$blob":"sha256:<hex>", ...}`.
const REF_MARKER: &[u8] = b"\"$blob\":\"sha256:";
const HASH_HEX_LEN: usize = 64;

/// A blob's address: the hex sha256 of its bytes, and its length.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlobRef {
    pub hash: String,
    pub size: u64,
}

impl BlobRef {
    pub fn of(bytes: &[u8]) -> BlobRef {
        BlobRef {
            hash: hex::encode(Sha256::digest(bytes)),
            size: bytes.len() as u64,
        }
    }

    /// The JSON form a run record carries in place of the payload.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ BLOB_REF_KEY: format!("sha256:{}", self.hash), "size": self.size })
    }

    /// Reads a reference back from its JSON form; `None` for any other value.
    pub fn from_json(value: &serde_json::Value) -> Option<BlobRef> {
        let object = value.as_object()?;
        let address = object.get(BLOB_REF_KEY)?.as_str()?;
        let hash = address.strip_prefix("sha256:")?;
        if !is_hash(hash) {
            return None;
        }
        let size = object.get("size")?.as_u64()?;
        Some(BlobRef {
            hash: hash.to_string(),
            size,
        })
    }
}

/// Whether `text` is a lowercase hex sha256.
pub fn is_hash(text: &str) -> bool {
    text.len() == HASH_HEX_LEN
        && text
            .bytes()
            .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
}

/// The hashes of every blob reference in serialized JSON, in order of
/// appearance. Works on bytes so the state machine can index the references
/// of a record it is about to store without parsing it again.
pub fn referenced_hashes(json: &[u8]) -> Vec<String> {
    let mut hashes = Vec::new();
    let mut rest = json;
    while let Some(at) = find(rest, REF_MARKER) {
        let start = at + REF_MARKER.len();
        let candidate = rest
            .get(start..start + HASH_HEX_LEN)
            .and_then(|bytes| std::str::from_utf8(bytes).ok());
        if let Some(hash) = candidate.filter(|hash| is_hash(hash)) {
            if !hashes.iter().any(|seen| seen == hash) {
                hashes.push(hash.to_string());
            }
        }
        rest = &rest[start..];
    }
    hashes
}

/// Apply scans every run record it stores, so this skips ahead to each
/// `$` (rare in JSON) instead of comparing the needle at every byte.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let anchor = needle.iter().position(|byte| *byte == b'$')?;
    let mut from = anchor;
    while let Some(offset) = haystack.get(from..)?.iter().position(|byte| *byte == b'$') {
        let at = from + offset - anchor;
        if haystack.get(at..at + needle.len()) == Some(needle) {
            return Some(at);
        }
        from += offset + 1;
    }
    None
}

/// The blob directory of one node. Blocking file I/O: call from a blocking thread.
#[derive(Clone, Debug)]
pub struct BlobStore {
    dir: PathBuf,
    /// Orders "store again" (which refreshes the age) against "remove if
    /// old", so the sweep never deletes a blob that a write is about to
    /// refer to.
    aging: Arc<Mutex<()>>,
}

impl BlobStore {
    pub fn open(dir: &Path) -> Result<BlobStore, StoreError> {
        fs::create_dir_all(dir)
            .map_err(|error| StoreError::io(format!("create blob dir {}", dir.display()), error))?;
        let store = BlobStore {
            dir: dir.to_path_buf(),
            aging: Arc::default(),
        };
        store.remove_partial_files()?;
        Ok(store)
    }

    fn path(&self, hash: &str) -> PathBuf {
        self.dir.join(&hash[..2]).join(hash)
    }

    /// Stores `bytes` durably; returns its reference. Storing a blob that is
    /// already here is a no-op.
    pub fn put(&self, bytes: &[u8]) -> Result<BlobRef, StoreError> {
        let blob = BlobRef::of(bytes);
        {
            let _aging = self
                .aging
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if self.has(&blob.hash) {
                // A new reference is coming: restart its grace period.
                let touched = File::options()
                    .append(true)
                    .open(self.path(&blob.hash))
                    .and_then(|file| file.set_modified(SystemTime::now()));
                match touched {
                    Ok(()) => return Ok(blob),
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => {
                        return Err(StoreError::io(format!("refresh blob {}", blob.hash), error))
                    }
                }
            }
        }
        let final_path = self.path(&blob.hash);
        let parent = final_path.parent().unwrap_or(&self.dir).to_path_buf();
        fs::create_dir_all(&parent).map_err(|error| {
            StoreError::io(format!("create blob dir {}", parent.display()), error)
        })?;
        let temp_path = parent.join(format!("{}.partial-{}", blob.hash, std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut file = File::create(&temp_path)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            fs::rename(&temp_path, &final_path)?;
            File::open(&parent)?.sync_all()
        };
        if let Err(error) = write() {
            let _ = fs::remove_file(&temp_path);
            return Err(StoreError::io(format!("write blob {}", blob.hash), error));
        }
        Ok(blob)
    }

    /// Stores bytes that a peer says have hash `hash`; refused when they do not.
    pub fn put_expecting(&self, hash: &str, bytes: &[u8]) -> Result<BlobRef, StoreError> {
        let blob = BlobRef::of(bytes);
        if blob.hash != hash {
            return Err(StoreError::io(
                format!("blob {hash}"),
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("content hashes to {}", blob.hash),
                ),
            ));
        }
        self.put(bytes)
    }

    pub fn has(&self, hash: &str) -> bool {
        is_hash(hash) && self.path(hash).is_file()
    }

    /// The blob's bytes, or `None` when it is missing here or its file no
    /// longer matches its name (then the damaged file is removed).
    pub fn get(&self, hash: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if !is_hash(hash) {
            return Ok(None);
        }
        let path = self.path(hash);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(StoreError::io(format!("read blob {hash}"), error)),
        };
        if BlobRef::of(&bytes).hash != hash {
            tracing::warn!(blob = %hash, path = %path.display(), "blob file does not match its hash; removed");
            let _ = fs::remove_file(&path);
            return Ok(None);
        }
        Ok(Some(bytes))
    }

    /// Removes the blob if it was last stored at least `grace` ago; true when it went.
    pub fn remove_if_older(
        &self,
        hash: &str,
        grace: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let _aging = self
            .aging
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let modified = match fs::metadata(self.path(hash)).and_then(|metadata| metadata.modified())
        {
            Ok(modified) => modified,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(error) => return Err(StoreError::io(format!("stat blob {hash}"), error)),
        };
        if SystemTime::now()
            .duration_since(modified)
            .map_or(true, |age| age < grace)
        {
            return Ok(false);
        }
        self.remove(hash)?;
        Ok(true)
    }

    pub fn remove(&self, hash: &str) -> Result<(), StoreError> {
        if !is_hash(hash) {
            return Ok(());
        }
        match fs::remove_file(self.path(hash)) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(StoreError::io(format!("remove blob {hash}"), error)),
        }
    }

    /// Every blob here with its size and last modification time.
    pub fn list(&self) -> Result<Vec<(BlobRef, SystemTime)>, StoreError> {
        let mut blobs = Vec::new();
        let read_dir = |dir: &Path| {
            fs::read_dir(dir)
                .map_err(|error| StoreError::io(format!("list {}", dir.display()), error))
        };
        for shard in read_dir(&self.dir)? {
            let shard = shard.map_err(|error| StoreError::io("list blob dir", error))?;
            if !shard.path().is_dir() {
                continue;
            }
            for entry in read_dir(&shard.path())? {
                let entry = entry.map_err(|error| StoreError::io("list blob dir", error))?;
                let name = entry.file_name().to_string_lossy().to_string();
                if !is_hash(&name) {
                    continue;
                }
                let metadata = entry
                    .metadata()
                    .map_err(|error| StoreError::io(format!("stat blob {name}"), error))?;
                let modified = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                blobs.push((
                    BlobRef {
                        hash: name,
                        size: metadata.len(),
                    },
                    modified,
                ));
            }
        }
        blobs.sort();
        Ok(blobs)
    }

    /// Temporary files a crash left behind.
    fn remove_partial_files(&self) -> Result<(), StoreError> {
        let Ok(shards) = fs::read_dir(&self.dir) else {
            return Ok(());
        };
        for shard in shards.flatten() {
            let Ok(entries) = fs::read_dir(shard.path()) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().contains(".partial-") {
                    fs::remove_file(entry.path()).map_err(|error| {
                        StoreError::io(format!("remove {}", entry.path().display()), error)
                    })?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_remove_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let blob = store.put(b"hello blob").unwrap();
        assert_eq!(blob.size, 10);
        assert!(store.has(&blob.hash));
        assert_eq!(store.get(&blob.hash).unwrap().unwrap(), b"hello blob");
        assert_eq!(
            store.put(b"hello blob").unwrap(),
            blob,
            "a second put is the same blob"
        );
        assert_eq!(store.list().unwrap().len(), 1);
        store.remove(&blob.hash).unwrap();
        assert!(store.get(&blob.hash).unwrap().is_none());
    }

    #[test]
    fn storing_again_restarts_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let blob = store.put(b"kept").unwrap();
        let old = SystemTime::now() - std::time::Duration::from_secs(3600);
        File::options()
            .append(true)
            .open(store.path(&blob.hash))
            .unwrap()
            .set_modified(old)
            .unwrap();
        store.put(b"kept").unwrap();
        assert!(!store
            .remove_if_older(&blob.hash, std::time::Duration::from_secs(60))
            .unwrap());
        assert!(store.has(&blob.hash));
        File::options()
            .append(true)
            .open(store.path(&blob.hash))
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(store
            .remove_if_older(&blob.hash, std::time::Duration::from_secs(60))
            .unwrap());
        assert!(!store.has(&blob.hash));
    }

    #[test]
    fn damaged_file_reads_as_missing() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let blob = store.put(b"original").unwrap();
        fs::write(store.path(&blob.hash), b"tampered").unwrap();
        assert!(store.get(&blob.hash).unwrap().is_none());
        assert!(!store.has(&blob.hash), "the damaged file is removed");
    }

    #[test]
    fn wrong_content_for_a_hash_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let other = BlobRef::of(b"something else");
        let err = store
            .put_expecting(&other.hash, b"payload")
            .unwrap_err()
            .to_string();
        assert!(err.contains(&other.hash), "{err}");
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn partial_files_are_cleared_on_open() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("ab")).unwrap();
        fs::write(dir.path().join("ab").join("abcd.partial-7"), b"x").unwrap();
        BlobStore::open(dir.path()).unwrap();
        assert!(!dir.path().join("ab").join("abcd.partial-7").exists());
    }

    #[test]
    fn references_round_trip_and_are_found_in_bytes() {
        let first = BlobRef::of(b"one");
        let second = BlobRef::of(b"two");
        assert_eq!(BlobRef::from_json(&first.to_json()), Some(first.clone()));
        assert_eq!(
            BlobRef::from_json(&serde_json::json!({"$blob": "sha256:xyz", "size": 1})),
            None
        );
        assert_eq!(BlobRef::from_json(&serde_json::json!({"size": 1})), None);
        let record = serde_json::json!({"input": first.to_json(), "steps": [{"output": second.to_json()}, {"output": first.to_json()}]});
        let bytes = serde_json::to_vec(&record).unwrap();
        assert_eq!(
            referenced_hashes(&bytes),
            vec![first.hash.clone(), second.hash.clone()]
        );
        assert!(referenced_hashes(br#"{"$blob":"sha256:short"}"#).is_empty());
        // Other dollars around (and at the very start of) the text are skipped.
        let noisy = format!(
            r#"$"$$blob","$blob":"sha256:{}","price":"$3","$blob":"sha256:{}""#,
            first.hash, second.hash
        );
        assert_eq!(
            referenced_hashes(noisy.as_bytes()),
            vec![first.hash, second.hash]
        );
        assert!(referenced_hashes(b"$").is_empty() && referenced_hashes(b"").is_empty());
    }
}
