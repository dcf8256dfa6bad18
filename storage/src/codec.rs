//! Record encoding: one format-version byte, then a bincode payload.
//!
//! Every value stored in sled or in a snapshot goes through here, so a build
//! that meets a record from a newer format refuses it by name instead of
//! misreading it.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::StoreError;

/// The record format this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;

/// Most bytes one decode may claim. Without a limit a length prefix in a
/// corrupt record (or in a snapshot a peer sent) makes the decoder allocate
/// whatever it claims before finding the bytes missing, and a claim of
/// exabytes aborts the process. bincode counts every integer at its full
/// width, so this is a multiple of the largest record (a snapshot record,
/// 256 MiB).
const MAX_DECODE_BYTES: usize = 1024 * 1024 * 1024;

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_DECODE_BYTES>()
}

/// Encodes `value` as a versioned record; `record` names it in errors.
pub fn encode<T: Serialize>(
    record: impl FnOnce() -> String,
    value: &T,
) -> Result<Vec<u8>, StoreError> {
    encode_after(vec![FORMAT_VERSION], record, value)
}

/// Appends `value`'s bincode to `bytes` (encoded in place, not copied).
fn encode_after<T: Serialize>(
    mut bytes: Vec<u8>,
    record: impl FnOnce() -> String,
    value: &T,
) -> Result<Vec<u8>, StoreError> {
    bincode::serde::encode_into_std_write(value, &mut bytes, bincode_config()).map_err(
        |source| StoreError::Encode {
            record: record(),
            source,
        },
    )?;
    Ok(bytes)
}

/// Decodes a versioned record; `record` names it in errors, e.g. "log entry 42".
pub fn decode<T: DeserializeOwned>(
    record: impl FnOnce() -> String,
    bytes: &[u8],
) -> Result<T, StoreError> {
    let Some((&version, payload)) = bytes.split_first() else {
        return Err(StoreError::EmptyRecord { record: record() });
    };
    if version != FORMAT_VERSION {
        return Err(StoreError::UnknownFormatVersion {
            record: record(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let (value, _read) =
        bincode::serde::decode_from_slice(payload, bincode_config()).map_err(|source| {
            StoreError::Decode {
                record: record(),
                source,
            }
        })?;
    Ok(value)
}

/// Encodes a byte string as a versioned record (JSON records). The payload
/// is the same as `encode` of a `Vec<u8>` (a length, then the bytes), so
/// either function reads what the other wrote.
pub fn encode_bytes(record: impl FnOnce() -> String, value: &[u8]) -> Result<Vec<u8>, StoreError> {
    let mut bytes = Vec::with_capacity(1 + MAX_LENGTH_PREFIX + value.len());
    bytes.push(FORMAT_VERSION);
    encode_after(bytes, record, &serde_bytes::Bytes::new(value))
}

/// The longest length bincode writes before a byte string (a marker byte
/// and a `u64`).
const MAX_LENGTH_PREFIX: usize = 9;

/// Decodes a versioned byte-string record without copying it: the bytes
/// come back as a slice of `bytes` (a `Vec<u8>` through serde is read one
/// element at a time, which dominated reading JSON run records).
pub fn decode_bytes(record: impl FnOnce() -> String, bytes: &[u8]) -> Result<&[u8], StoreError> {
    let Some((&version, payload)) = bytes.split_first() else {
        return Err(StoreError::EmptyRecord { record: record() });
    };
    if version != FORMAT_VERSION {
        return Err(StoreError::UnknownFormatVersion {
            record: record(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let (value, _read): (&serde_bytes::Bytes, usize) =
        bincode::serde::borrow_decode_from_slice(payload, bincode_config()).map_err(|source| {
            StoreError::Decode {
                record: record(),
                source,
            }
        })?;
    Ok(value)
}

/// Marks a structured record's body as bincode. JSON bodies (what earlier
/// releases wrote for runs and tasks, and still the form of other JSON
/// records) never start with a zero byte.
const BINARY_BODY: u8 = 0;

/// Encodes a structured record (floe-state's runs and tasks): bincode (the
/// value's JSON-only fields held as text by its own serde) behind a marker
/// byte, in the byte record form JSON records use. About a third of the
/// JSON's size and several times faster to write and read, which apply
/// does for every step.
pub fn encode_structured<T: Serialize>(
    record: impl Fn() -> String,
    value: &T,
) -> Result<Vec<u8>, StoreError> {
    let mut body = vec![BINARY_BODY];
    bincode::serde::encode_into_std_write(value, &mut body, bincode_config()).map_err(
        |source| StoreError::Encode {
            record: record(),
            source,
        },
    )?;
    encode_bytes(record, &body)
}

/// Decodes a record stored by `encode_structured` or as JSON: the body's
/// first byte tells which; `from_json` reads the JSON form (the caller
/// knows its values' limits).
pub fn decode_structured_with<T: DeserializeOwned>(
    record: impl Fn() -> String,
    bytes: &[u8],
    from_json: impl FnOnce(&[u8]) -> Result<T, serde_json::Error>,
) -> Result<T, StoreError> {
    let body = decode_bytes(&record, bytes)?;
    match body.split_first() {
        Some((&BINARY_BODY, payload)) => {
            bincode::serde::decode_from_slice(payload, bincode_config())
                .map(|(value, _read)| value)
                .map_err(|source| StoreError::Decode {
                    record: record(),
                    source,
                })
        }
        _ => from_json(body).map_err(|err| StoreError::Json {
            record: record(),
            reason: err.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record shaped like a key-value entry.
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct KvEntry {
        value: Vec<u8>,
        revision: u64,
    }

    #[test]
    fn round_trip_keeps_the_value() {
        let entry = KvEntry {
            value: b"hello".to_vec(),
            revision: 7,
        };
        let bytes = encode(|| "kv a".into(), &entry).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        let decoded: KvEntry = decode(|| "kv a".into(), &bytes).unwrap();
        assert_eq!(decoded, entry);
    }

    /// A string whose length prefix claims 2^62 bytes: refused as over the
    /// limit instead of allocated (which aborts the process).
    #[test]
    fn a_length_past_the_limit_is_refused_not_allocated() {
        let mut bytes = vec![FORMAT_VERSION, 253];
        bytes.extend_from_slice(&(1u64 << 62).to_le_bytes());
        let error = decode::<String>(|| "snapshot header".into(), &bytes).unwrap_err();
        assert!(
            matches!(&error, StoreError::Decode { record, .. } if record == "snapshot header"),
            "{error:?}"
        );
        assert!(error.to_string().contains("LimitExceeded"), "{error}");
    }

    #[test]
    fn unknown_version_names_the_record() {
        let mut bytes = encode(|| "x".into(), &5u64).unwrap();
        bytes[0] = 9;
        let error = decode::<u64>(|| "log entry 42".into(), &bytes).unwrap_err();
        assert!(matches!(
            error,
            StoreError::UnknownFormatVersion {
                found: 9,
                supported: 1,
                ..
            }
        ));
        assert_eq!(
            error.to_string(),
            "log entry 42: record format version 9, this build reads 1"
        );
    }

    #[test]
    fn byte_records_read_and_write_like_byte_vectors() {
        let json = br#"{"a":[1,2,3],"b":"\u00ff"}"#.repeat(20);
        let as_vec = encode(|| "run a".into(), &json.to_vec()).unwrap();
        let as_bytes = encode_bytes(|| "run a".into(), &json).unwrap();
        assert_eq!(as_vec, as_bytes, "same stored form");
        assert_eq!(decode_bytes(|| "run a".into(), &as_vec).unwrap(), &json[..]);
        let back: Vec<u8> = decode(|| "run a".into(), &as_bytes).unwrap();
        assert_eq!(back, json);
        let error = decode_bytes(|| "run a".into(), &as_vec[..10]).unwrap_err();
        assert!(error.to_string().contains("run a"), "{error}");
    }

    #[test]
    fn empty_record_is_refused() {
        let error = decode::<u64>(|| "raft_meta vote".into(), &[]).unwrap_err();
        assert!(error.to_string().contains("raft_meta vote"), "{error}");
    }

    #[test]
    fn truncated_payload_is_a_decode_error() {
        let bytes = encode(
            || "x".into(),
            &KvEntry {
                value: vec![1; 100],
                revision: 1,
            },
        )
        .unwrap();
        let error = decode::<KvEntry>(|| "sm_data_0 key \"a\"".into(), &bytes[..10]).unwrap_err();
        assert!(matches!(error, StoreError::Decode { .. }), "{error}");
    }
}
