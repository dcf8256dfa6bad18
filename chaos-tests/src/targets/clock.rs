//! Clock skew for local nodes with libfaketime (Debian's `faketime`
//! package): a node started with `LD_PRELOAD=libfaketime.so.1` reads its
//! offset from a file of its own, re-read every second, so the offset can
//! change while the node runs.
//!
//! Why libfaketime and not a node knob: it shifts every wall-clock read of
//! the real, unmodified binary (run timestamps, timers, TLS validity),
//! where a knob would shift only the reads that consult it. The monotonic
//! clock is left alone (`FAKETIME_DONT_FAKE_MONOTONIC`): Raft timing and
//! leases use it, and real clock skew does not change it either.

use std::path::{Path, PathBuf};

/// The preload library, where Debian installs it.
pub fn library() -> Option<PathBuf> {
    let candidates = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
}

/// Environment for a node whose offset lives in `offset_file`.
pub fn node_env(library: &Path, offset_file: &Path) -> Vec<(String, String)> {
    vec![
        ("LD_PRELOAD".into(), library.display().to_string()),
        (
            "FAKETIME_TIMESTAMP_FILE".into(),
            offset_file.display().to_string(),
        ),
        ("FAKETIME_CACHE_DURATION".into(), "1".into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ]
}

/// Writes an offset in libfaketime's relative format (`+120s`, `-30s`).
pub fn write_offset(offset_file: &Path, offset_s: i64) -> std::io::Result<()> {
    let text = if offset_s >= 0 {
        format!("+{offset_s}s\n")
    } else {
        format!("{offset_s}s\n")
    };
    std::fs::write(offset_file, text)
}
