//! Crash tests: a child process (this test binary, re-executed) writes
//! through the store and is SIGKILLed at an arbitrary moment; the parent
//! reopens the store and checks what survived.
//!
//! - Log: every append acknowledged by its flush callback, and every saved
//!   vote, must survive with its exact content.
//! - State machine: applies and snapshot installs are not flushed, so some
//!   may be lost, but data and applied log id must always agree.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command as Process, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{log_id, payload, put};
use floe_state::{Command, Store, StoreOptions, Vote};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{EntryPayload, RaftLogReader, RaftSnapshotBuilder};

const LOG_WRITER_ENV: &str = "FLOE_CRASH_WRITER_DIR";
const APPLY_WRITER_ENV: &str = "FLOE_CRASH_APPLIER_DIR";
/// How long the parent waits for the child in one round, at most.
const ROUND_DEADLINE: Duration = Duration::from_secs(10);

/// Votes are saved every this many appends; the term is the entry index.
const VOTE_EVERY: u64 = 7;

fn spawn_child(test_name: &str, env_name: &str, dir: &Path) -> Child {
    let exe = std::env::current_exe().expect("current test binary");
    Process::new(exe)
        .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(env_name, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn writer child")
}

/// Varies the kill point between runs without a random number generator.
fn kill_after(round: u64, bound: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (u64::from(nanos) + round * 7919) % bound + 5
}

/// Reads the child's lines on a thread; yields them until EOF.
fn line_channel(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

/// Collects `prefix <n>` lines until `kill_at` of them arrived (then kills
/// the child) and then until EOF. Returns every number seen.
fn run_round(mut child: Child, prefix: &str, kill_at: u64) -> Vec<u64> {
    let lines = line_channel(&mut child);
    let deadline = Instant::now() + ROUND_DEADLINE;
    let mut seen = Vec::new();
    let mut killed = false;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(remaining) {
            Ok(line) => {
                if let Some(number) = line
                    .strip_prefix(prefix)
                    .and_then(|rest| rest.trim().parse::<u64>().ok())
                {
                    seen.push(number);
                }
                if !killed && seen.len() as u64 >= kill_at {
                    child.kill().expect("SIGKILL child");
                    killed = true;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!(
                    "child made no progress within {ROUND_DEADLINE:?}; saw {} lines",
                    seen.len()
                );
            }
        }
    }
    let status = child.wait().expect("wait for child");
    assert!(
        killed,
        "child exited on its own ({status}) after {} lines",
        seen.len()
    );
    seen
}

// ---- log appends and votes -------------------------------------------------

async fn log_writer(dir: &Path) {
    let store = Store::open(dir, StoreOptions::default()).expect("child: open store");
    let mut log = store.log_store();
    let state = log.get_log_state().await.expect("child: log state");
    let mut index = state.last_log_id.map_or(0, |id| id.index);
    loop {
        index += 1;
        let entry = put(index, &format!("k{index}"), &payload(index));
        log.blocking_append([entry]).await.expect("child: append");
        println!("acked {index}");
        if index % VOTE_EVERY == 0 {
            log.save_vote(&Vote::new(index, 1))
                .await
                .expect("child: save vote");
            println!("voted {index}");
        }
    }
}

#[test]
fn acknowledged_appends_and_votes_survive_sigkill() {
    if let Some(dir) = std::env::var_os(LOG_WRITER_ENV) {
        let runtime = tokio::runtime::Runtime::new().expect("child: runtime");
        runtime.block_on(log_writer(Path::new(&dir)));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut all_acked = Vec::new();
    let mut last_voted_term = 0;
    for round in 0..3 {
        let child = spawn_child(
            "acknowledged_appends_and_votes_survive_sigkill",
            LOG_WRITER_ENV,
            dir.path(),
        );
        let kill_at = kill_after(round, 150);
        let lines = run_round_two_kinds(child, kill_at);
        all_acked.extend(lines.acked);
        last_voted_term = lines
            .voted
            .into_iter()
            .max()
            .unwrap_or(last_voted_term)
            .max(last_voted_term);

        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let store =
                Store::open(dir.path(), StoreOptions::default()).expect("reopen after kill");
            let mut log = store.log_store();
            let max_acked = *all_acked.iter().max().expect("some appends acked");
            let entries = log.try_get_log_entries(1..=max_acked).await.unwrap();
            assert_eq!(
                entries.len() as u64,
                max_acked,
                "round {round}: acked entries lost"
            );
            for entry in &entries {
                let index = entry.log_id.index;
                let expected = Command::KvPut {
                    key: format!("k{index}"),
                    value: payload(index),
                };
                assert_eq!(entry.log_id, log_id(1, index));
                assert!(
                    matches!(&entry.payload, EntryPayload::Normal(command) if *command == expected),
                    "entry {index} changed"
                );
            }
            let vote = log.read_vote().await.unwrap();
            if last_voted_term > 0 {
                let term = vote.expect("vote lost").leader_id().term;
                // The child may have saved one more vote that it never got to report.
                assert!(
                    term == last_voted_term || term == last_voted_term + VOTE_EVERY,
                    "vote term {term}, last acked {last_voted_term}"
                );
                last_voted_term = term;
            }
        });
    }
}

struct LogLines {
    acked: Vec<u64>,
    voted: Vec<u64>,
}

/// Like `run_round`, but tells acks and votes apart; kills after `kill_at` acks.
fn run_round_two_kinds(mut child: Child, kill_at: u64) -> LogLines {
    let lines = line_channel(&mut child);
    let deadline = Instant::now() + ROUND_DEADLINE;
    let mut result = LogLines {
        acked: Vec::new(),
        voted: Vec::new(),
    };
    let mut killed = false;
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                let number = |prefix: &str| {
                    line.strip_prefix(prefix)
                        .and_then(|rest| rest.trim().parse::<u64>().ok())
                };
                if let Some(index) = number("acked ") {
                    result.acked.push(index);
                } else if let Some(term) = number("voted ") {
                    result.voted.push(term);
                }
                if !killed && result.acked.len() as u64 >= kill_at {
                    child.kill().expect("SIGKILL child");
                    killed = true;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!(
                    "child made no progress within {ROUND_DEADLINE:?}; {} acks",
                    result.acked.len()
                );
            }
        }
    }
    let status = child.wait().expect("wait for child");
    assert!(killed, "child exited on its own ({status})");
    result
}

// ---- state machine applies and snapshot installs ---------------------------

async fn apply_writer(dir: &Path) {
    let store = Store::open(dir, StoreOptions::default()).expect("child: open store");
    let mut sm = store.state_machine();
    let mut index = store
        .reader()
        .applied_log_id()
        .expect("child: applied")
        .map_or(0, |id| id.index);
    let mut batches_since_snapshot = 0;
    loop {
        let batch: Vec<_> = (index + 1..=index + 20)
            .map(|i| put(i, &format!("k{i:08}"), &payload(i)))
            .collect();
        index += 20;
        sm.apply(batch).await.expect("child: apply");
        println!("applied {index}");
        batches_since_snapshot += 1;
        if batches_since_snapshot == 5 {
            batches_since_snapshot = 0;
            // Reinstall our own snapshot: exercises the generation switch.
            let snapshot = sm
                .get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .expect("child: build");
            let meta = snapshot.meta.clone();
            sm.install_snapshot(&meta, snapshot.snapshot)
                .await
                .expect("child: install");
            println!("installed {index}");
        }
    }
}

#[test]
fn state_machine_stays_consistent_across_sigkill() {
    if let Some(dir) = std::env::var_os(APPLY_WRITER_ENV) {
        let runtime = tokio::runtime::Runtime::new().expect("child: runtime");
        runtime.block_on(apply_writer(Path::new(&dir)));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let child = spawn_child(
            "state_machine_stays_consistent_across_sigkill",
            APPLY_WRITER_ENV,
            dir.path(),
        );
        let applied_lines = run_round(child, "applied ", kill_after(round, 40));
        assert!(!applied_lines.is_empty());

        let store = Store::open(dir.path(), StoreOptions::default()).expect("reopen after kill");
        let reader = store.reader();
        let applied = reader.applied_log_id().unwrap().map_or(0, |id| id.index);
        assert_eq!(
            applied % 20,
            0,
            "a batch was applied partially: applied index {applied}"
        );
        let entries = reader.list("k", None, usize::MAX).unwrap();
        assert_eq!(
            entries.len() as u64,
            applied,
            "data and applied index disagree"
        );
        for (position, (key, entry)) in entries.iter().enumerate() {
            let index = position as u64 + 1;
            assert_eq!(key, &format!("k{index:08}"));
            assert_eq!(entry.revision, index);
            assert_eq!(entry.value, payload(index));
        }
    }
}
