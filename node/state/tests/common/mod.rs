//! Helpers shared by the storage integration tests.
#![allow(dead_code)]

use floe_state::{Command, Entry, LogId};
use openraft::{CommittedLeaderId, EntryPayload};

pub fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

pub fn command_entry(term: u64, index: u64, command: Command) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(command),
    }
}

pub fn put(index: u64, key: &str, value: &[u8]) -> Entry {
    command_entry(
        1,
        index,
        Command::KvPut {
            key: key.to_string(),
            value: value.to_vec(),
        },
    )
}

/// A deterministic payload whose length and content depend on `index`.
pub fn payload(index: u64) -> Vec<u8> {
    let length = (index % 97 + 1) as usize;
    (0..length)
        .map(|offset| (index as usize).wrapping_mul(31).wrapping_add(offset) as u8)
        .collect()
}
