//! Every corpus file through its target, then a seeded mutation pass per
//! target: the short fuzzing `make test` runs. A failure names the input.

use std::fs;

/// Mutants per target; the whole file stays well under a minute in a debug
/// build. `FLOE_FUZZ_MUTANTS` changes it for a longer local run.
const MUTANTS_PER_TARGET: usize = 20_000;

fn corpus(name: &str) -> Vec<(String, Vec<u8>)> {
    let dir = floe_fuzz::corpus_dir(name);
    let mut entries: Vec<(String, Vec<u8>)> = fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("corpus {}: {error}", dir.display()))
        .map(|entry| {
            let path = entry.expect("corpus entry").path();
            let bytes = fs::read(&path).expect("read corpus file");
            (path.display().to_string(), bytes)
        })
        .collect();
    entries.sort();
    assert!(!entries.is_empty(), "corpus {} is empty", dir.display());
    entries
}

fn mutants() -> usize {
    std::env::var("FLOE_FUZZ_MUTANTS")
        .ok()
        .and_then(|count| count.parse().ok())
        .unwrap_or(MUTANTS_PER_TARGET)
}

fn replay_and_mutate(name: &str) {
    let target = floe_fuzz::target(name).expect("known target");
    let entries = corpus(name);
    for (path, bytes) in &entries {
        eprintln!("replaying {path}");
        target(bytes);
    }
    let inputs: Vec<Vec<u8>> = entries.into_iter().map(|(_, bytes)| bytes).collect();
    // A fixed seed per target: a failure reproduces with the same run.
    let seed = name.bytes().fold(0u64, |hash, byte| {
        hash.wrapping_mul(31).wrapping_add(u64::from(byte))
    });
    assert_eq!(
        floe_fuzz::mutate::run(target, &inputs, seed, mutants()),
        mutants()
    );
}

#[test]
fn every_target_has_a_test_here() {
    let tested = [
        "flow",
        "expr",
        "peer_frame",
        "snapshot",
        "tensor_json",
        "config",
        "cert",
    ];
    let names: Vec<&str> = floe_fuzz::TARGETS.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, tested);
}

#[test]
fn flow() {
    replay_and_mutate("flow");
}

#[test]
fn expr() {
    replay_and_mutate("expr");
}

#[test]
fn peer_frame() {
    replay_and_mutate("peer_frame");
}

#[test]
fn snapshot() {
    replay_and_mutate("snapshot");
}

#[test]
fn tensor_json() {
    replay_and_mutate("tensor_json");
}

#[test]
fn config() {
    replay_and_mutate("config");
}

#[test]
fn cert() {
    replay_and_mutate("cert");
}

/// The generated seeds are floe's own encodings and must stay readable:
/// a format change that leaves them stale would starve the fuzzer.
#[test]
fn generated_seeds_still_decode() {
    let snapshot =
        fs::read(floe_fuzz::corpus_dir("snapshot").join("three-records")).expect("snapshot seed");
    let (_, records) =
        floe_storage::snapshot_fuzzing::read(&snapshot).expect("seed snapshot reads");
    assert_eq!(records.len(), 3);
    let frame = fs::read(floe_fuzz::corpus_dir("peer_frame").join("raft-append-entries"))
        .expect("append-entries seed");
    floe_raft::wire::reencode_request::<floe_state::TypeConfig>(&frame[1..])
        .expect("seed frame decodes");
    let der = fs::read(floe_fuzz::corpus_dir("cert").join("node-der")).expect("certificate seed");
    let identity = floe_raft::tls::identity_from_cert(&der.as_slice().into()).expect("identity");
    assert_eq!(identity, floe_raft::PeerIdentity::Node(1));
}
