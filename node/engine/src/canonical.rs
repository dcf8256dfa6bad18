//! Canonical serialization and content hashing of definitions.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::model::FlowDefinition;

/// Deterministic JSON bytes of a definition: object keys sorted by their
/// UTF-8 bytes at every level, no whitespace, defaults filled in. Two
/// definitions that differ only in whitespace or key order give the same bytes.
pub fn canonical_bytes(def: &FlowDefinition) -> Vec<u8> {
    // Serializing these plain data types cannot fail: every map key is a
    // string and every float comes from parsed JSON (hence finite). Should it
    // ever fail, Null keeps the function total and the hash still stable.
    let value = serde_json::to_value(def).unwrap_or(Value::Null);
    let mut out = Vec::new();
    write_sorted(&value, &mut out);
    out
}

/// Lowercase hex sha256 of [`canonical_bytes`].
pub fn content_hash(def: &FlowDefinition) -> String {
    hex::encode(Sha256::digest(canonical_bytes(def)))
}

fn write_sorted(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(object) => {
            let mut entries: Vec<(&String, &Value)> = object.iter().collect();
            entries.sort_by(|left, right| left.0.as_bytes().cmp(right.0.as_bytes()));
            out.push(b'{');
            for (position, (key, item)) in entries.into_iter().enumerate() {
                if position > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(key.clone()), out);
                out.push(b':');
                write_sorted(item, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (position, item) in items.iter().enumerate() {
                if position > 0 {
                    out.push(b',');
                }
                write_sorted(item, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(value: &Value, out: &mut Vec<u8>) {
    // Writing a scalar into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}
