//! Apply is total: a command it cannot carry out is refused alike on every
//! replica and keeps nothing it did, and records written before the value
//! limits existed (nested past the JSON parser's limit) still read, cancel
//! and purge. Real sled files, damaged the way a store of an earlier
//! release could be.

mod common;

use common::command_entry;
use floe_state::{Command, CommandResponse, Rejection, Store, StoreOptions};
use openraft::storage::RaftStateMachine;
use serde_json::{json, Value};

/// The first data generation's tree, where a fresh store keeps its records.
const DATA_TREE: &str = "sm_data_0";

fn open(dir: &std::path::Path) -> Store {
    Store::open(dir, StoreOptions::default()).expect("open store")
}

/// Rewrites one raw record of a closed store's data tree.
fn overwrite_raw(dir: &std::path::Path, key: &[u8], bytes: Vec<u8>) {
    let db = sled::open(dir.join("db")).expect("open sled");
    let tree = db.open_tree(DATA_TREE).expect("data tree");
    assert!(
        tree.get(key).unwrap().is_some(),
        "record {:?} exists",
        String::from_utf8_lossy(key)
    );
    tree.insert(key, bytes).unwrap();
    db.flush().unwrap();
}

fn raw(dir: &std::path::Path, key: &[u8]) -> Option<Vec<u8>> {
    let db = sled::open(dir.join("db")).expect("open sled");
    let tree = db.open_tree(DATA_TREE).expect("data tree");
    tree.get(key).unwrap().map(|bytes| bytes.to_vec())
}

fn put(key: &str, value: &[u8]) -> Command {
    Command::KvPut {
        key: key.into(),
        value: value.to_vec(),
    }
}

fn cas(key: &str) -> Command {
    Command::KvCas {
        key: key.into(),
        expected: None,
        new: Some(b"x".to_vec()),
    }
}

fn refused(response: &CommandResponse) -> bool {
    matches!(response, CommandResponse::Rejected(Rejection::Unapplied(reason)) if reason.contains("kv/a") || reason.contains("\"a\""))
}

#[tokio::test]
async fn a_command_whose_record_does_not_decode_is_refused_and_the_rest_apply() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store
            .state_machine()
            .apply(vec![command_entry(1, 1, put("a", b"one"))])
            .await
            .unwrap();
    }
    // Not a decodable key-value record: a format version, then garbage.
    let damaged = vec![1u8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
    overwrite_raw(dir.path(), b"kv/a", damaged.clone());

    let store = open(dir.path());
    let mut sm = store.state_machine();
    let responses = sm
        .apply(vec![
            command_entry(1, 2, cas("a")),
            command_entry(1, 3, put("b", b"two")),
            command_entry(
                1,
                4,
                Command::Batch(vec![put("c", b"three"), cas("a"), put("d", b"four")]),
            ),
        ])
        .await
        .expect("apply never fails on a command's own records");
    assert!(refused(&responses[0]), "{responses:?}");
    assert_eq!(responses[1], CommandResponse::Put { revision: 3 });
    let CommandResponse::Batch(inner) = &responses[2] else {
        panic!("{responses:?}")
    };
    assert_eq!(inner[0], CommandResponse::Put { revision: 4 });
    assert!(refused(&inner[1]), "{inner:?}");
    assert_eq!(inner[2], CommandResponse::Put { revision: 4 });
    if let CommandResponse::Rejected(Rejection::Unapplied(reason)) = &responses[0] {
        assert!(
            reason.contains("log entry 2")
                && reason.contains("kv-cas a")
                && reason.contains("nothing it changed was kept"),
            "{reason}"
        );
    }
    assert_eq!(store.apply_stats().refused(), 2);
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.map(|id| id.index), Some(4));
    let reader = store.reader();
    for (key, value) in [("b", b"two".as_slice()), ("c", b"three"), ("d", b"four")] {
        assert_eq!(
            reader.get(key).unwrap().map(|entry| entry.value),
            Some(value.to_vec()),
            "{key}"
        );
    }
    // A put over the damaged key needs no read of it and repairs it.
    let repaired = sm
        .apply(vec![command_entry(1, 5, put("a", b"fresh"))])
        .await
        .unwrap();
    assert_eq!(repaired, vec![CommandResponse::Put { revision: 5 }]);
    drop(sm);
    drop(reader);
    drop(store);
    assert_ne!(raw(dir.path(), b"kv/a"), Some(damaged));
    let store = open(dir.path());
    assert_eq!(
        store.reader().get("a").unwrap().map(|entry| entry.value),
        Some(b"fresh".to_vec())
    );
}

fn nested(depth: usize) -> Value {
    (0..depth).fold(json!("leaf"), |value, _| json!([value]))
}

fn flow_put(name: &str, steps: &str) -> Command {
    let json = format!(r#"{{"name": "{name}", "steps": {steps}}}"#);
    let definition = floe_engine::parse_flow(json.as_bytes()).unwrap();
    Command::PutFlow {
        name: name.into(),
        definition: floe_engine::canonical_bytes(&definition),
        hash: floe_engine::content_hash(&definition),
        at_ms: 0,
    }
}

fn start(run_id: &str, flow: &str, at_ms: u64) -> Command {
    Command::StartRun {
        run_id: run_id.into(),
        flow: flow.into(),
        version: 1,
        input: b"{\"n\": 1}".to_vec(),
        correlation_id: String::new(),
        idempotency_key: String::new(),
        at_ms,
    }
}

#[tokio::test]
async fn runs_stored_deeper_than_the_parser_limit_read_cancel_and_purge() {
    let dir = tempfile::tempdir().unwrap();
    let (finished_record, open_record) = {
        let store = open(dir.path());
        let entries = vec![
            command_entry(
                1,
                1,
                flow_put(
                    "quick",
                    r#"[{"id": "t", "type": "transform", "output": "input"}]"#,
                ),
            ),
            command_entry(
                1,
                2,
                flow_put(
                    "waits",
                    r#"[{"id": "s", "type": "signal", "signal": "go"}]"#,
                ),
            ),
            command_entry(1, 3, start("finished", "quick", 1_000)),
            command_entry(1, 4, start("open", "waits", 1_000)),
        ];
        store.state_machine().apply(entries).await.unwrap();
        let reader = store.reader();
        (
            reader.run("finished").unwrap().unwrap(),
            reader.run("open").unwrap().unwrap(),
        )
    };
    // What an earlier release stored for a run whose mapping nested its
    // input: values far past serde_json's parse limit of 128.
    let mut deep_finished = finished_record.clone();
    deep_finished.input = nested(300);
    deep_finished.output = Some(nested(400));
    let mut deep_open = open_record.clone();
    deep_open.input = nested(300);
    for (run_id, record) in [("finished", &deep_finished), ("open", &deep_open)] {
        let bytes =
            floe_state::codec::encode_structured(|| format!("run {run_id}"), record).unwrap();
        overwrite_raw(dir.path(), format!("run/{run_id}").as_bytes(), bytes);
    }

    let store = open(dir.path());
    let reader = store.reader();
    assert_eq!(
        reader.run("finished").unwrap().unwrap(),
        deep_finished,
        "reads back whole"
    );
    let page = reader
        .runs(&floe_state::RunFilter::default(), None, 10)
        .unwrap();
    assert_eq!(page.runs.len(), 2, "listing includes them");

    let mut sm = store.state_machine();
    let cancel = Command::RunEvent {
        run_id: "open".into(),
        event: serde_json::to_vec(&floe_engine::run::RunEvent::Cancel {
            reason: "stop".into(),
        })
        .unwrap(),
        at_ms: 2_000,
    };
    let purge = Command::PurgeRuns {
        run_ids: vec!["finished".into(), "open".into()],
        finished_before_ms: 1_500,
    };
    let responses = sm
        .apply(vec![
            command_entry(1, 5, cancel),
            command_entry(1, 6, purge),
        ])
        .await
        .unwrap();
    assert_eq!(
        responses,
        vec![
            CommandResponse::RunUpdated,
            CommandResponse::RunsPurged { purged: 1 }
        ]
    );
    assert!(reader.run("finished").unwrap().is_none(), "purged");
    let cancelled = reader.run("open").unwrap().unwrap();
    assert_eq!(cancelled.status, floe_engine::run::RunStatus::Cancelled);
    assert_eq!(cancelled.input, nested(300));
    assert_eq!(store.apply_stats().refused(), 0);
}

/// A chain of `count` transforms passing a small value on.
fn chain_flow(count: usize) -> Command {
    let steps: Vec<String> = (0..count)
        .map(|index| {
            let output = if index == 0 {
                "input".to_string()
            } else {
                format!("steps.t{}.output", index - 1)
            };
            let next = if index + 1 < count {
                format!(r#", "next": "t{}""#, index + 1)
            } else {
                String::new()
            };
            format!(r#"{{"id": "t{index}", "type": "transform", "output": "{output}"{next}}}"#)
        })
        .collect();
    flow_put("chain", &format!("[{}]", steps.join(",")))
}

fn steps_entered(store: &Store, runs: usize) -> usize {
    let reader = store.reader();
    (0..runs)
        .map(|index| {
            reader
                .run(&format!("r{index}"))
                .unwrap()
                .unwrap()
                .steps
                .len()
        })
        .sum()
}

#[tokio::test]
async fn one_entry_enters_a_bounded_number_of_steps_and_chains_continue_in_later_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut sm = store.state_machine();
    const RUNS: usize = 20;
    const STEPS: usize = 300;
    let starts: Vec<Command> = (0..RUNS)
        .map(|index| start(&format!("r{index}"), "chain", 1_000))
        .collect();
    sm.apply(vec![
        command_entry(1, 1, chain_flow(STEPS)),
        command_entry(1, 2, Command::Batch(starts)),
    ])
    .await
    .unwrap();
    let first = steps_entered(&store, RUNS);
    // The entry's 256 units, and at least one step for each start.
    assert!(
        first <= floe_engine::run::ENTRY_WORK_UNITS + RUNS,
        "{first} steps in one entry"
    );
    assert!(first >= RUNS, "every start entered its first step");

    let reader = store.reader();
    let mut index = 3;
    let mut entered = first;
    while index < 200 {
        let due = reader.due_timers(u64::MAX, 256).unwrap();
        if due.is_empty() {
            break;
        }
        let responses = sm
            .apply(vec![command_entry(
                1,
                index,
                Command::FireTimers {
                    timers: due,
                    at_ms: 2_000,
                },
            )])
            .await
            .unwrap();
        assert!(
            !matches!(
                responses[0],
                CommandResponse::Rejected(Rejection::Unapplied(_))
            ),
            "{responses:?}"
        );
        let now = steps_entered(&store, RUNS);
        assert!(
            now - entered <= floe_engine::run::ENTRY_WORK_UNITS + RUNS,
            "{} steps in entry {index}",
            now - entered
        );
        entered = now;
        index += 1;
    }
    for run_index in 0..RUNS {
        let run = reader.run(&format!("r{run_index}")).unwrap().unwrap();
        assert_eq!(
            run.status,
            floe_engine::run::RunStatus::Completed,
            "r{run_index} after {index} entries"
        );
        assert_eq!(run.output, Some(json!({"n": 1})));
    }
    assert!(
        index as usize > 3 + (RUNS * STEPS) / (floe_engine::run::ENTRY_WORK_UNITS + RUNS),
        "took {index} entries"
    );
}
