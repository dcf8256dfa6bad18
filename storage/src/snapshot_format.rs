//! On-disk layout of a snapshot file:
//!
//! ```text
//! "FLOESNAP"                      8-byte magic
//! u32 LE length, header record    SnapshotHeader (versioned via codec)
//! { u32 LE length > 0, record }*  SnapshotRecord (versioned via codec)
//! u32 LE 0                        end of records
//! u64 LE record count
//! [u8; 32]                        sha256 of every byte before it
//! ```
//!
//! Writing and reading both stream record by record.

use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::codec;
use crate::error::StoreError;
use crate::types::{NodeId, SnapshotMeta};

const MAGIC: &[u8; 8] = b"FLOESNAP";
/// A record longer than this is taken as corruption, not allocated.
const MAX_RECORD_BYTES: u32 = 256 * 1024 * 1024;

/// What a snapshot file starts with.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SnapshotHeader {
    pub(crate) meta: SnapshotMeta,
}

/// One piece of state machine state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum SnapshotRecord {
    /// A raw data-tree record: the value is itself a versioned record.
    Data {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Tombstone {
        node_id: NodeId,
    },
}

/// Streams records into a snapshot file, hashing as it goes.
pub(crate) struct SnapshotWriter<W: Write> {
    out: BufWriter<W>,
    hasher: Sha256,
    record_count: u64,
    path: PathBuf,
}

impl<W: Write> SnapshotWriter<W> {
    pub(crate) fn new(out: W, path: &Path, header: &SnapshotHeader) -> Result<Self, StoreError> {
        let mut writer = SnapshotWriter {
            out: BufWriter::new(out),
            hasher: Sha256::new(),
            record_count: 0,
            path: path.to_path_buf(),
        };
        writer.write_hashed(MAGIC)?;
        let bytes = codec::encode(|| format!("snapshot {} header", path.display()), header)?;
        writer.write_framed(&bytes)?;
        Ok(writer)
    }

    pub(crate) fn write_record(&mut self, record: &SnapshotRecord) -> Result<(), StoreError> {
        let bytes = codec::encode(
            || format!("snapshot {} record", self.path.display()),
            record,
        )?;
        self.write_framed(&bytes)?;
        self.record_count += 1;
        Ok(())
    }

    /// Writes the trailer and returns the underlying writer (not yet synced).
    pub(crate) fn finish(mut self) -> Result<W, StoreError> {
        self.write_hashed(&0u32.to_le_bytes())?;
        self.write_hashed(&self.record_count.to_le_bytes())?;
        let checksum = self.hasher.clone().finalize();
        self.write_raw(&checksum)?;
        let path = self.path.clone();
        self.out.into_inner().map_err(|error| {
            StoreError::io(
                format!("write snapshot {}", path.display()),
                error.into_error(),
            )
        })
    }

    fn write_framed(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let length = u32::try_from(bytes.len())
            .ok()
            .filter(|length| *length <= MAX_RECORD_BYTES)
            .ok_or_else(|| StoreError::CorruptSnapshot {
                path: self.path.clone(),
                reason: format!("record of {} bytes is too large", bytes.len()),
            })?;
        self.write_hashed(&length.to_le_bytes())?;
        self.write_hashed(bytes)
    }

    fn write_hashed(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.hasher.update(bytes);
        self.write_raw(bytes)
    }

    fn write_raw(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.out.write_all(bytes).map_err(|error| {
            StoreError::io(format!("write snapshot {}", self.path.display()), error)
        })
    }
}

/// Streams records out of a snapshot file; the checksum is verified when the
/// end is reached, so a caller must not commit anything before `next_record`
/// returned `Ok(None)`.
pub(crate) struct SnapshotReader<R: Read> {
    input: R,
    hasher: Sha256,
    record_count: u64,
    path: PathBuf,
    header: SnapshotHeader,
}

impl<R: Read> SnapshotReader<R> {
    pub(crate) fn open(input: R, path: &Path) -> Result<Self, StoreError> {
        let mut reader = SnapshotReader {
            input,
            hasher: Sha256::new(),
            record_count: 0,
            path: path.to_path_buf(),
            header: SnapshotHeader {
                meta: SnapshotMeta::default(),
            },
        };
        let mut magic = [0u8; 8];
        reader.read_hashed(&mut magic)?;
        if &magic != MAGIC {
            return Err(reader.corrupt("not a floe snapshot (bad magic)"));
        }
        let header_bytes = match reader.read_frame()? {
            Some(bytes) => bytes,
            None => return Err(reader.corrupt("missing header")),
        };
        reader.header = codec::decode(
            || format!("snapshot {} header", path.display()),
            &header_bytes,
        )?;
        Ok(reader)
    }

    pub(crate) fn header(&self) -> &SnapshotHeader {
        &self.header
    }

    /// The next record, or `None` after the trailer was read and verified.
    pub(crate) fn next_record(&mut self) -> Result<Option<SnapshotRecord>, StoreError> {
        let Some(bytes) = self.read_frame()? else {
            self.verify_trailer()?;
            return Ok(None);
        };
        let index = self.record_count;
        let record = codec::decode(
            || format!("snapshot {} record {index}", self.path.display()),
            &bytes,
        )?;
        self.record_count += 1;
        Ok(Some(record))
    }

    fn verify_trailer(&mut self) -> Result<(), StoreError> {
        let mut count_bytes = [0u8; 8];
        self.read_hashed(&mut count_bytes)?;
        let expected_checksum = self.hasher.clone().finalize();
        let mut stored_checksum = [0u8; 32];
        self.read_raw(&mut stored_checksum)?;
        if stored_checksum[..] != expected_checksum[..] {
            return Err(self.corrupt("checksum mismatch"));
        }
        let stored_count = u64::from_le_bytes(count_bytes);
        if stored_count != self.record_count {
            return Err(self.corrupt(&format!(
                "trailer says {stored_count} records, found {}",
                self.record_count
            )));
        }
        let mut extra = [0u8; 1];
        let trailing = self
            .input
            .read(&mut extra)
            .map_err(|error| self.io_error(error))?;
        if trailing != 0 {
            return Err(self.corrupt("bytes after the checksum"));
        }
        Ok(())
    }

    /// Reads a length-prefixed frame; `None` for the end marker.
    fn read_frame(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        let mut length_bytes = [0u8; 4];
        self.read_hashed(&mut length_bytes)?;
        let length = u32::from_le_bytes(length_bytes);
        if length == 0 {
            return Ok(None);
        }
        if length > MAX_RECORD_BYTES {
            return Err(self.corrupt(&format!("record length {length} exceeds the limit")));
        }
        let mut bytes = vec![0u8; length as usize];
        self.read_hashed(&mut bytes)?;
        Ok(Some(bytes))
    }

    fn read_hashed(&mut self, buffer: &mut [u8]) -> Result<(), StoreError> {
        self.read_raw(buffer)?;
        self.hasher.update(&*buffer);
        Ok(())
    }

    fn read_raw(&mut self, buffer: &mut [u8]) -> Result<(), StoreError> {
        match self.input.read_exact(buffer) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
                Err(self.corrupt("truncated"))
            }
            Err(error) => Err(self.io_error(error)),
        }
    }

    fn corrupt(&self, reason: &str) -> StoreError {
        StoreError::CorruptSnapshot {
            path: self.path.clone(),
            reason: reason.to_string(),
        }
    }

    fn io_error(&self, error: io::Error) -> StoreError {
        StoreError::io(format!("read snapshot {}", self.path.display()), error)
    }
}

/// The snapshot reader and writer for floe's fuzz targets (`fuzz/`), which
/// feed the reader arbitrary bytes and build seed snapshots with the writer.
#[doc(hidden)]
pub mod fuzzing {
    use std::path::Path;

    use super::{SnapshotHeader, SnapshotReader, SnapshotRecord, SnapshotWriter};
    use crate::error::StoreError;
    use crate::types::{NodeId, SnapshotMeta};

    /// One record of a snapshot file.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum Record {
        Data { key: Vec<u8>, value: Vec<u8> },
        Tombstone { node_id: NodeId },
    }

    /// Reads a whole snapshot file from `bytes`, checksum included.
    pub fn read(bytes: &[u8]) -> Result<(SnapshotMeta, Vec<Record>), StoreError> {
        let mut reader = SnapshotReader::open(bytes, Path::new("<bytes>"))?;
        let meta = reader.header().meta.clone();
        let mut records = Vec::new();
        while let Some(record) = reader.next_record()? {
            records.push(match record {
                SnapshotRecord::Data { key, value } => Record::Data { key, value },
                SnapshotRecord::Tombstone { node_id } => Record::Tombstone { node_id },
            });
        }
        Ok((meta, records))
    }

    /// Writes a snapshot file holding `records` in order.
    pub fn write(meta: &SnapshotMeta, records: &[Record]) -> Result<Vec<u8>, StoreError> {
        let header = SnapshotHeader { meta: meta.clone() };
        let mut writer = SnapshotWriter::new(Vec::new(), Path::new("<bytes>"), &header)?;
        for record in records {
            writer.write_record(&match record.clone() {
                Record::Data { key, value } => SnapshotRecord::Data { key, value },
                Record::Tombstone { node_id } => SnapshotRecord::Tombstone { node_id },
            })?;
        }
        writer.finish()
    }
}
