//! Snapshot files: built from a consistent view, streamed, never held whole in memory.
//!
//! CONTRACT (floe-node streams snapshots over floe-raft's transport with
//! these, in `node/src/raft_group.rs`; keep these signatures):
//! - `SnapshotFile::create_incoming(dir)`  receiver side: a fresh empty file in `dir`
//! - `write_chunk(&mut self, &[u8])`       receiver side: append bytes
//! - `finish_receiving(&mut self)`         receiver side: fsync before install
//! - `read_at(&self, offset, len)`         sender side: positional read, independent of other readers
//! - `len(&self)`                          total size in bytes
//! - `path(&self)`
//!
//! A `SnapshotFile` holds an open handle, so a sender keeps streaming the
//! bytes it started with even when a newer snapshot replaces (unlinks) the
//! file meanwhile. The on-disk layout lives in `snapshot_format`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// File name prefix of snapshots being received from a leader.
pub(crate) const INCOMING_PREFIX: &str = "incoming-";

/// Distinguishes incoming files created by this process.
static INCOMING_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A snapshot's bytes on disk.
#[derive(Debug)]
pub struct SnapshotFile {
    path: PathBuf,
    file: Arc<File>,
    /// Receiver side: where the next chunk goes.
    write_offset: u64,
    /// An incoming file that was never installed is garbage: removed on drop.
    remove_on_drop: bool,
}

impl SnapshotFile {
    /// Receiver side: creates a fresh, empty file in `dir` (created if missing).
    pub async fn create_incoming(dir: &Path) -> io::Result<SnapshotFile> {
        let dir = dir.to_path_buf();
        blocking(move || {
            std::fs::create_dir_all(&dir)?;
            let sequence = INCOMING_COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!(
                "{INCOMING_PREFIX}{}-{sequence}.snap",
                std::process::id()
            ));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)?;
            Ok(SnapshotFile {
                path,
                file: Arc::new(file),
                write_offset: 0,
                remove_on_drop: true,
            })
        })
        .await
    }

    /// Opens an existing, complete snapshot file for reading.
    pub(crate) fn open_existing(path: &Path) -> io::Result<SnapshotFile> {
        let file = File::open(path)?;
        Ok(SnapshotFile {
            path: path.to_path_buf(),
            file: Arc::new(file),
            write_offset: 0,
            remove_on_drop: false,
        })
    }

    /// Where the bytes are (the file may have been replaced since it was opened).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Total size in bytes of the opened file.
    pub async fn len(&self) -> io::Result<u64> {
        let file = Arc::clone(&self.file);
        blocking(move || Ok(file.metadata()?.len())).await
    }

    /// Receiver side: appends `chunk` at the end of what was written so far.
    pub async fn write_chunk(&mut self, chunk: &[u8]) -> io::Result<()> {
        let file = Arc::clone(&self.file);
        let offset = self.write_offset;
        let bytes = chunk.to_vec();
        blocking(move || file.write_all_at(&bytes, offset)).await?;
        self.write_offset += chunk.len() as u64;
        Ok(())
    }

    /// Receiver side: makes the received bytes durable before install.
    pub async fn finish_receiving(&mut self) -> io::Result<()> {
        let file = Arc::clone(&self.file);
        blocking(move || file.sync_all()).await
    }

    /// Sender side: reads up to `len` bytes at `offset`; fewer only at the end of the file.
    pub async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let file = Arc::clone(&self.file);
        blocking(move || read_full_at(&file, offset, len)).await
    }

    /// The shared open handle, for blocking readers.
    pub(crate) fn handle(&self) -> Arc<File> {
        Arc::clone(&self.file)
    }

    /// Whether this is an incoming file not yet adopted by an install.
    pub(crate) fn is_incoming(&self) -> bool {
        self.remove_on_drop
    }

    /// The file was moved into place by an install; keep it on drop.
    pub(crate) fn mark_adopted(&mut self) {
        self.remove_on_drop = false;
    }
}

impl Drop for SnapshotFile {
    fn drop(&mut self) {
        if self.remove_on_drop {
            // Best effort: a leftover incoming file is also removed at the next open.
            if let Err(error) = std::fs::remove_file(&self.path) {
                if error.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %self.path.display(), %error, "could not remove unused incoming snapshot");
                }
            }
        }
    }
}

/// Reads `len` bytes at `offset`, stopping early only at end of file.
pub(crate) fn read_full_at(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buffer = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        let read = file.read_at(&mut buffer[filled..], offset + filled as u64)?;
        if read == 0 {
            break;
        }
        filled += read;
    }
    buffer.truncate(filled);
    Ok(buffer)
}

/// A sequential `io::Read` over a shared handle using positional reads, so
/// several readers of one file never disturb each other's position.
pub(crate) struct PositionalReader {
    file: Arc<File>,
    offset: u64,
}

impl PositionalReader {
    pub(crate) fn new(file: Arc<File>) -> Self {
        PositionalReader { file, offset: 0 }
    }
}

impl io::Read for PositionalReader {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let read = self.file.read_at(buffer, self.offset)?;
        self.offset += read as u64;
        Ok(read)
    }
}

/// Runs blocking file I/O off the async executor.
async fn blocking<T, F>(work: F) -> io::Result<T>
where
    F: FnOnce() -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(io::Error::other)?
}
