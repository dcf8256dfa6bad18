//! State machine semantics, snapshots and reopening, through the public API.

mod common;

use common::{command_entry, log_id, payload, put};
use floe_state::{Command, CommandResponse, KvEntry, Rejection, Store, StoreOptions, Vote};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{RaftLogReader, RaftSnapshotBuilder};

fn open(dir: &std::path::Path) -> Store {
    Store::open(dir, StoreOptions::default()).expect("open store")
}

fn cas(index: u64, key: &str, expected: Option<&[u8]>, new: Option<&[u8]>) -> floe_state::Entry {
    command_entry(
        1,
        index,
        Command::KvCas {
            key: key.into(),
            expected: expected.map(<[u8]>::to_vec),
            new: new.map(<[u8]>::to_vec),
        },
    )
}

#[tokio::test]
async fn put_delete_and_cas_follow_their_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut sm = store.state_machine();
    let responses = sm
        .apply(vec![
            put(1, "a", b"one"),
            cas(2, "a", Some(b"wrong"), Some(b"two")),
            cas(3, "a", Some(b"one"), Some(b"two")),
            cas(4, "b", None, Some(b"new")),
            cas(5, "b", None, Some(b"again")),
            command_entry(1, 6, Command::KvDelete { key: "a".into() }),
            command_entry(1, 7, Command::KvDelete { key: "a".into() }),
            cas(8, "b", Some(b"new"), None),
            command_entry(1, 9, Command::TombstoneNode { node_id: 7 }),
        ])
        .await
        .unwrap();
    assert_eq!(
        responses,
        vec![
            CommandResponse::Put { revision: 1 },
            CommandResponse::Cas {
                succeeded: false,
                current: Some(b"one".to_vec()),
                revision: 1
            },
            CommandResponse::Cas {
                succeeded: true,
                current: Some(b"two".to_vec()),
                revision: 3
            },
            CommandResponse::Cas {
                succeeded: true,
                current: Some(b"new".to_vec()),
                revision: 4
            },
            CommandResponse::Cas {
                succeeded: false,
                current: Some(b"new".to_vec()),
                revision: 4
            },
            CommandResponse::Delete { existed: true },
            CommandResponse::Delete { existed: false },
            CommandResponse::Cas {
                succeeded: true,
                current: None,
                revision: 8
            },
            CommandResponse::Applied,
        ]
    );
    let reader = store.reader();
    assert_eq!(reader.get("a").unwrap(), None);
    assert_eq!(reader.get("b").unwrap(), None);
    assert!(reader.is_tombstoned(7).unwrap());
    assert!(!reader.is_tombstoned(8).unwrap());
    assert_eq!(reader.applied_log_id().unwrap(), Some(log_id(1, 9)));
}

#[tokio::test]
async fn list_pages_by_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut sm = store.state_machine();
    let keys = ["a/1", "b/1", "b/2", "b/3", "c/1"];
    let entries = keys
        .iter()
        .enumerate()
        .map(|(i, key)| put(i as u64 + 1, key, key.as_bytes()))
        .collect::<Vec<_>>();
    sm.apply(entries).await.unwrap();
    let reader = store.reader();
    let first_page: Vec<String> = reader
        .list("b/", None, 2)
        .unwrap()
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(first_page, ["b/1", "b/2"]);
    let second_page = reader.list("b/", Some("b/2"), 2).unwrap();
    assert_eq!(
        second_page,
        vec![(
            "b/3".to_string(),
            KvEntry {
                value: b"b/3".to_vec(),
                revision: 4
            }
        )]
    );
    assert_eq!(reader.list("b/", Some("a"), 10).unwrap().len(), 3);
}

async fn fill(store: &Store, count: u64) {
    let mut sm = store.state_machine();
    let mut entries = Vec::new();
    for index in 1..=count {
        entries.push(put(index, &format!("key/{index:06}"), &payload(index)));
        if entries.len() == 1000 {
            sm.apply(std::mem::take(&mut entries)).await.unwrap();
        }
    }
    entries.push(command_entry(
        1,
        count + 1,
        Command::TombstoneNode { node_id: 42 },
    ));
    sm.apply(entries).await.unwrap();
}

#[tokio::test]
async fn snapshot_round_trip_preserves_the_digest() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let leader = open(leader_dir.path());
    let follower = open(follower_dir.path());
    fill(&leader, 12_000).await;
    // The follower has unrelated state that the snapshot must replace.
    follower
        .state_machine()
        .apply(vec![put(1, "stale", b"x")])
        .await
        .unwrap();

    let snapshot = leader
        .state_machine()
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 12_001)));

    // Ship it the way the transport does: chunk by chunk into an incoming file.
    let mut follower_sm = follower.state_machine();
    let mut incoming = follower_sm.begin_receiving_snapshot().await.unwrap();
    let total = snapshot.snapshot.len().await.unwrap();
    let mut offset = 0;
    while offset < total {
        let chunk = snapshot.snapshot.read_at(offset, 64 * 1024).await.unwrap();
        assert!(!chunk.is_empty());
        incoming.write_chunk(&chunk).await.unwrap();
        offset += chunk.len() as u64;
    }
    incoming.finish_receiving().await.unwrap();
    follower_sm
        .install_snapshot(&snapshot.meta, incoming)
        .await
        .unwrap();

    let leader_digest = leader.reader().state_digest().unwrap();
    assert_eq!(follower.reader().state_digest().unwrap(), leader_digest);
    assert_eq!(follower.reader().get("stale").unwrap(), None);
    assert!(follower.reader().is_tombstoned(42).unwrap());
    assert_eq!(
        follower_sm.applied_state().await.unwrap().0,
        Some(log_id(1, 12_001))
    );
    let current = follower_sm
        .get_current_snapshot()
        .await
        .unwrap()
        .expect("current snapshot after install");
    assert_eq!(current.meta, snapshot.meta);

    // Survives a reopen: the new generation is the active one.
    drop(follower_sm);
    drop(follower);
    let reopened = open(follower_dir.path());
    assert_eq!(reopened.reader().state_digest().unwrap(), leader_digest);
    let only_one_snapshot = std::fs::read_dir(reopened.snapshot_dir()).unwrap().count();
    assert_eq!(only_one_snapshot, 1);
}

#[tokio::test]
async fn corrupt_snapshot_is_refused_and_state_untouched() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let leader = open(leader_dir.path());
    let follower = open(follower_dir.path());
    fill(&leader, 500).await;
    follower
        .state_machine()
        .apply(vec![put(1, "mine", b"keep")])
        .await
        .unwrap();
    let digest_before = follower.reader().state_digest().unwrap();

    let snapshot = leader
        .state_machine()
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let total = snapshot.snapshot.len().await.unwrap();
    let bytes = snapshot.snapshot.read_at(0, total as usize).await.unwrap();

    let mut follower_sm = follower.state_machine();
    for flip_at in [total as usize / 2, total as usize - 1] {
        let mut corrupted = bytes.clone();
        corrupted[flip_at] ^= 0x55;
        let mut incoming = follower_sm.begin_receiving_snapshot().await.unwrap();
        incoming.write_chunk(&corrupted).await.unwrap();
        incoming.finish_receiving().await.unwrap();
        let result = follower_sm.install_snapshot(&snapshot.meta, incoming).await;
        assert!(result.is_err(), "corruption at byte {flip_at} was accepted");
    }
    // Truncated as well.
    let mut incoming = follower_sm.begin_receiving_snapshot().await.unwrap();
    incoming
        .write_chunk(&bytes[..bytes.len() - 10])
        .await
        .unwrap();
    assert!(follower_sm
        .install_snapshot(&snapshot.meta, incoming)
        .await
        .is_err());

    assert_eq!(follower.reader().state_digest().unwrap(), digest_before);
    assert_eq!(
        follower.reader().applied_log_id().unwrap(),
        Some(log_id(1, 1))
    );
    assert!(follower_sm.get_current_snapshot().await.unwrap().is_none());
    let leftover_files = std::fs::read_dir(follower.snapshot_dir()).unwrap().count();
    assert_eq!(leftover_files, 0, "refused incoming files are removed");
}

#[tokio::test]
async fn streaming_survives_replacement_by_a_newer_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    fill(&store, 200).await;
    let mut sm = store.state_machine();
    let first = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let first_len = first.snapshot.len().await.unwrap();
    let first_bytes = first.snapshot.read_at(0, first_len as usize).await.unwrap();
    sm.apply(vec![put(202, "later", b"x")]).await.unwrap();
    let second = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_ne!(first.meta.snapshot_id, second.meta.snapshot_id);
    assert!(!first.snapshot.path().exists(), "old snapshot file removed");
    let again = first.snapshot.read_at(0, first_len as usize).await.unwrap();
    assert_eq!(again, first_bytes);
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, second.meta);
}

#[tokio::test]
async fn reopen_keeps_vote_log_and_applied_state() {
    let dir = tempfile::tempdir().unwrap();
    let vote = Vote::new(5, 2);
    {
        let store = open(dir.path());
        assert!(!store.has_raft_state().unwrap());
        let mut log = store.log_store();
        log.save_vote(&vote).await.unwrap();
        log.blocking_append(
            (1..=20).map(|index| put(index, &format!("k{index}"), &payload(index))),
        )
        .await
        .unwrap();
        log.save_committed(Some(log_id(1, 15))).await.unwrap();
        log.purge(log_id(1, 3)).await.unwrap();
        store
            .state_machine()
            .apply((1..=15).map(|index| put(index, &format!("k{index}"), &payload(index))))
            .await
            .unwrap();
    }
    let store = open(dir.path());
    assert!(store.has_raft_state().unwrap());
    let mut log = store.log_store();
    assert_eq!(log.read_vote().await.unwrap(), Some(vote));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 15)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 3)));
    assert_eq!(state.last_log_id, Some(log_id(1, 20)));
    let entries = log.try_get_log_entries(0..100).await.unwrap();
    assert_eq!(entries.first().map(|entry| entry.log_id.index), Some(4));
    assert_eq!(entries.len(), 17);
    assert_eq!(
        store.reader().applied_log_id().unwrap(),
        Some(log_id(1, 15))
    );
    assert_eq!(
        store.reader().get("k15").unwrap(),
        Some(KvEntry {
            value: payload(15),
            revision: 15
        })
    );
    assert_eq!(store.reader().get("k16").unwrap(), None);
    assert!(
        store.flush_stats().histogram().count == 0,
        "stats are per process"
    );
}

#[tokio::test]
async fn flushes_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.log_store().save_vote(&Vote::new(1, 1)).await.unwrap();
    store
        .log_store()
        .blocking_append([put(1, "a", b"b")])
        .await
        .unwrap();
    let histogram = store.flush_stats().histogram();
    assert_eq!(histogram.count, 2);
    let counted_in_buckets = histogram.buckets.last().map_or(0, |(_, count)| *count);
    assert!(
        counted_in_buckets <= 2,
        "cumulative buckets never exceed the count"
    );
    assert!(histogram.sum_seconds > 0.0);
}

#[tokio::test]
async fn a_batch_applies_its_commands_in_order_at_one_revision() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut sm = store.state_machine();
    let batch = Command::Batch(vec![
        Command::KvPut {
            key: "x".into(),
            value: b"1".to_vec(),
        },
        Command::KvCas {
            key: "x".into(),
            expected: Some(b"1".to_vec()),
            new: Some(b"2".to_vec()),
        },
        Command::KvCas {
            key: "x".into(),
            expected: Some(b"1".to_vec()),
            new: Some(b"3".to_vec()),
        },
        Command::KvDelete { key: "y".into() },
    ]);
    let responses = sm.apply(vec![command_entry(1, 4, batch)]).await.unwrap();
    assert_eq!(
        responses,
        vec![CommandResponse::Batch(vec![
            CommandResponse::Put { revision: 4 },
            CommandResponse::Cas {
                succeeded: true,
                current: Some(b"2".to_vec()),
                revision: 4
            },
            CommandResponse::Cas {
                succeeded: false,
                current: Some(b"2".to_vec()),
                revision: 4
            },
            CommandResponse::Delete { existed: false },
        ])]
    );
    let stored = store.reader().get("x").unwrap().unwrap();
    assert_eq!((stored.value, stored.revision), (b"2".to_vec(), 4));
}

#[tokio::test]
async fn flow_versions_are_immutable_and_identical_definitions_reuse_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut sm = store.state_machine();
    let put = |index: u64, hash: &str| {
        command_entry(
            1,
            index,
            Command::PutFlow {
                name: "intake".into(),
                definition: hash.as_bytes().to_vec(),
                hash: hash.into(),
                at_ms: index,
            },
        )
    };
    let responses = sm
        .apply(vec![
            put(1, "aaa"),
            put(2, "bbb"),
            put(3, "aaa"),
            put(4, "ccc"),
        ])
        .await
        .unwrap();
    assert_eq!(
        responses,
        vec![
            CommandResponse::FlowPut {
                version: 1,
                created: true
            },
            CommandResponse::FlowPut {
                version: 2,
                created: true
            },
            CommandResponse::FlowPut {
                version: 1,
                created: false
            },
            CommandResponse::FlowPut {
                version: 3,
                created: true
            },
        ]
    );
    let reader = store.reader();
    assert_eq!(reader.flow("intake", None).unwrap().unwrap().version, 3);
    assert_eq!(
        reader.flow("intake", Some(2)).unwrap().unwrap().definition,
        b"bbb".to_vec()
    );
    assert!(reader.flow("intake", Some(9)).unwrap().is_none());
    assert!(reader.flow("other", None).unwrap().is_none());
    let versions: Vec<u64> = reader
        .flow_versions("intake")
        .unwrap()
        .iter()
        .map(|f| f.version)
        .collect();
    assert_eq!(versions, vec![1, 2, 3]);
    assert_eq!(
        reader.flows(None, 10).unwrap(),
        vec![("intake".to_string(), 3)]
    );
    // Flows live beside key-value entries without showing up in key listings.
    sm.apply(vec![command_entry(
        1,
        5,
        Command::KvPut {
            key: "flow/x".into(),
            value: b"v".to_vec(),
        },
    )])
    .await
    .unwrap();
    let keys: Vec<String> = reader
        .list("", None, 10)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, vec!["flow/x".to_string()]);
}

#[tokio::test]
async fn a_start_without_a_version_runs_the_latest_when_it_applies() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut sm = store.state_machine();
    let flow = |output: &str, at_ms: u64| {
        let json = format!(
            r#"{{"name": "calc", "steps": [{{"id": "t", "type": "transform", "output": "{output}"}}]}}"#
        );
        let definition = floe_engine::parse_flow(json.as_bytes()).unwrap();
        Command::PutFlow {
            name: "calc".into(),
            definition: floe_engine::canonical_bytes(&definition),
            hash: floe_engine::content_hash(&definition),
            at_ms,
        }
    };
    let start = |run_id: &str, flow: &str, version: u64, key: &str| Command::StartRun {
        run_id: run_id.into(),
        flow: flow.into(),
        version,
        input: b"1".to_vec(),
        correlation_id: String::new(),
        idempotency_key: key.into(),
        at_ms: 10,
    };
    // Put v1, start unpinned, put v2, start unpinned, pinned to 1, and a
    // repeat of the first key: all in one batch, so each start sees exactly
    // the puts before it in the log.
    let responses = sm
        .apply(vec![
            command_entry(1, 1, flow("input + 1", 1)),
            command_entry(1, 2, start("a", "calc", 0, "k-a")),
            command_entry(1, 3, flow("input + 2", 2)),
            command_entry(1, 4, start("b", "calc", 0, "")),
            command_entry(1, 5, start("c", "calc", 1, "")),
            command_entry(1, 6, start("d", "calc", 0, "k-a")),
            command_entry(1, 7, start("e", "nope", 0, "")),
            command_entry(1, 8, start("f", "calc", 7, "")),
        ])
        .await
        .unwrap();
    assert_eq!(
        responses[1],
        CommandResponse::RunStarted {
            run_id: "a".into(),
            created: true,
            version: 1
        }
    );
    assert_eq!(
        responses[3],
        CommandResponse::RunStarted {
            run_id: "b".into(),
            created: true,
            version: 2
        }
    );
    assert_eq!(
        responses[4],
        CommandResponse::RunStarted {
            run_id: "c".into(),
            created: true,
            version: 1
        }
    );
    // A repeated key answers with the first run and the version it runs.
    assert_eq!(
        responses[5],
        CommandResponse::RunStarted {
            run_id: "a".into(),
            created: false,
            version: 1
        }
    );
    assert_eq!(
        responses[6],
        CommandResponse::Rejected(Rejection::NotFound(r#"no flow named "nope""#.into()))
    );
    assert_eq!(
        responses[7],
        CommandResponse::Rejected(Rejection::NotFound(
            r#"flow "calc" has no version 7"#.into()
        ))
    );
    let reader = store.reader();
    let output = |run_id: &str| reader.run(run_id).unwrap().unwrap().output;
    assert_eq!(output("a"), Some(serde_json::json!(2)));
    assert_eq!(output("b"), Some(serde_json::json!(3)));
    assert_eq!(output("c"), Some(serde_json::json!(2)));
    assert!(
        reader.run("d").unwrap().is_none()
            && reader.run("e").unwrap().is_none()
            && reader.run("f").unwrap().is_none()
    );
}

#[tokio::test]
async fn retention_purges_only_runs_finished_before_the_cutoff() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut sm = store.state_machine();
    let flow = |name: &str, steps: &str| {
        let json = format!(r#"{{"name": "{name}", "steps": {steps}}}"#);
        let definition = floe_engine::parse_flow(json.as_bytes()).unwrap();
        Command::PutFlow {
            name: name.into(),
            definition: floe_engine::canonical_bytes(&definition),
            hash: floe_engine::content_hash(&definition),
            at_ms: 0,
        }
    };
    let start = |run_id: &str, flow: &str, key: &str, at_ms: u64| Command::StartRun {
        run_id: run_id.into(),
        flow: flow.into(),
        version: 1,
        input: b"1".to_vec(),
        correlation_id: "batch-7".into(),
        idempotency_key: key.into(),
        at_ms,
    };
    let entries = vec![
        command_entry(
            1,
            1,
            flow(
                "quick",
                r#"[{"id": "t", "type": "transform", "output": "input + 1"}]"#,
            ),
        ),
        command_entry(
            1,
            2,
            flow(
                "waits",
                r#"[{"id": "s", "type": "signal", "signal": "go"}]"#,
            ),
        ),
        command_entry(1, 3, start("old", "quick", "k-old", 1_000)),
        command_entry(1, 4, start("new", "quick", "k-new", 9_000)),
        command_entry(1, 5, start("open", "waits", "", 1_000)),
    ];
    sm.apply(entries).await.unwrap();
    let reader = store.reader();
    assert_eq!(
        reader.run("old").unwrap().unwrap().output,
        Some(serde_json::json!(2))
    );
    let due = reader.finished_runs(5_000, 10).unwrap();
    assert_eq!(
        due,
        vec!["old".to_string()],
        "only the run finished by the cutoff is due"
    );

    let purge = Command::PurgeRuns {
        run_ids: vec!["old".into(), "new".into(), "open".into()],
        finished_before_ms: 5_000,
    };
    let responses = sm.apply(vec![command_entry(1, 6, purge)]).await.unwrap();
    assert_eq!(responses, vec![CommandResponse::RunsPurged { purged: 1 }]);
    assert!(reader.run("old").unwrap().is_none());
    assert!(reader.run("new").unwrap().is_some() && reader.run("open").unwrap().is_some());
    let listed: Vec<String> = reader
        .runs(
            &floe_state::RunFilter {
                correlation_id: Some("batch-7".into()),
                ..Default::default()
            },
            None,
            10,
        )
        .unwrap()
        .runs
        .into_iter()
        .map(|run| run.run_id)
        .collect();
    assert_eq!(listed.len(), 2);
    assert!(!listed.contains(&"old".to_string()), "{listed:?}");
    assert!(reader.finished_runs(u64::MAX, 10).unwrap() == vec!["new".to_string()]);
    // The purged run's idempotency key is free again; the kept one still answers.
    let again = sm
        .apply(vec![command_entry(
            1,
            7,
            start("old-2", "quick", "k-old", 20_000),
        )])
        .await
        .unwrap();
    assert_eq!(
        again,
        vec![CommandResponse::RunStarted {
            run_id: "old-2".into(),
            created: true,
            version: 1
        }]
    );
    let repeat = sm
        .apply(vec![command_entry(
            1,
            8,
            start("new-2", "quick", "k-new", 20_000),
        )])
        .await
        .unwrap();
    assert_eq!(
        repeat,
        vec![CommandResponse::RunStarted {
            run_id: "new".into(),
            created: false,
            version: 1
        }]
    );
}

#[tokio::test]
async fn model_versions_deployments_and_gpu_shares_hold_their_rules() {
    use floe_state::models::{DeploySpec, Deployment, GpuShare, ReplicaChange};
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut sm = store.state_machine();
    let put = |index: u64, hash: &str| {
        let signature = br#"{"inputs":[],"outputs":[]}"#.to_vec();
        command_entry(
            1,
            index,
            Command::PutModel {
                name: "det".into(),
                hash: hash.into(),
                size: 10,
                signature,
                at_ms: index,
            },
        )
    };
    let responses = sm
        .apply(vec![put(1, "aa"), put(2, "bb"), put(3, "aa")])
        .await
        .unwrap();
    assert_eq!(
        responses,
        vec![
            CommandResponse::ModelPut {
                version: 1,
                created: true
            },
            CommandResponse::ModelPut {
                version: 2,
                created: true
            },
            CommandResponse::ModelPut {
                version: 1,
                created: false
            },
        ]
    );
    let reader = store.reader();
    assert_eq!(reader.model("det", None).unwrap().unwrap().version, 2);
    assert_eq!(reader.model("det", Some(1)).unwrap().unwrap().hash, "aa");
    assert!(reader.blob_is_referenced("aa").unwrap() && reader.blob_is_referenced("bb").unwrap());

    let spec = DeploySpec {
        replicas: 3,
        threads: 1,
        max_batch: 8,
        max_delay_ms: 2,
        queue: 64,
        gpu_milli: 400,
    };
    let deploy = |index: u64, version: u64, spec: DeploySpec| {
        command_entry(
            1,
            index,
            Command::DeployModel {
                deployment: Deployment {
                    model: "det".into(),
                    version,
                    spec,
                    created_at_ms: 0,
                },
            },
        )
    };
    let bad = DeploySpec {
        replicas: 0,
        gpu_milli: 1500,
        ..spec.clone()
    };
    let responses = sm
        .apply(vec![
            deploy(4, 7, spec.clone()),
            deploy(5, 1, bad),
            deploy(6, 1, spec.clone()),
        ])
        .await
        .unwrap();
    assert!(
        matches!(&responses[0], CommandResponse::Rejected(Rejection::FailedPrecondition(reason)) if reason.contains("no version 7")),
        "{responses:?}"
    );
    assert!(
        matches!(&responses[1], CommandResponse::Rejected(Rejection::FailedPrecondition(reason)) if reason.contains("replicas must be") && reason.contains("gpu must be")),
        "{responses:?}"
    );
    assert_eq!(responses[2], CommandResponse::Applied);

    let place = |replica: u32, node: Option<u64>, gpu: Option<GpuShare>| ReplicaChange {
        model: "det".into(),
        version: 1,
        replica,
        node,
        gpu,
        evicted: false,
        reason: String::new(),
    };
    let share = |milli| Some(GpuShare { device: 0, milli });
    let changes = vec![
        place(0, Some(1), share(400)),
        place(1, Some(1), share(400)),
        place(2, Some(1), share(400)),
    ];
    let responses = sm
        .apply(vec![command_entry(
            1,
            7,
            Command::ChangeReplicas { changes, at_ms: 7 },
        )])
        .await
        .unwrap();
    assert!(
        matches!(&responses[0], CommandResponse::Rejected(Rejection::FailedPrecondition(reason)) if reason.contains("replica 2") && reason.contains("200 thousandths left")),
        "two shares of 0.4 fit on one device, a third does not: {responses:?}"
    );
    let wrong = vec![
        place(2, Some(2), share(300)),
        place(2, Some(2), None),
        place(5, Some(2), share(400)),
    ];
    let responses = sm
        .apply(vec![command_entry(
            1,
            8,
            Command::ChangeReplicas {
                changes: wrong,
                at_ms: 8,
            },
        )])
        .await
        .unwrap();
    let CommandResponse::Rejected(Rejection::FailedPrecondition(reason)) = &responses[0] else {
        panic!("{responses:?}")
    };
    assert!(
        reason.contains("differs")
            && reason.contains("needs a GPU share")
            && reason.contains("has 3 replicas"),
        "{reason}"
    );
    // Moving replica 1 off node 1 frees its share for replica 2.
    let moves = vec![place(1, None, None), place(2, Some(1), share(400))];
    let responses = sm
        .apply(vec![command_entry(
            1,
            9,
            Command::ChangeReplicas {
                changes: moves,
                at_ms: 9,
            },
        )])
        .await
        .unwrap();
    assert_eq!(responses, vec![CommandResponse::Applied]);
    let placed: Vec<(u32, Option<u64>)> = reader
        .replicas()
        .unwrap()
        .iter()
        .map(|r| (r.replica, r.node))
        .collect();
    assert_eq!(placed, vec![(0, Some(1)), (2, Some(1))]);

    // Undeploying drops the replicas and their shares: the device is free again.
    let responses = sm
        .apply(vec![
            command_entry(
                1,
                10,
                Command::UndeployModel {
                    name: "det".into(),
                    version: 1,
                },
            ),
            command_entry(
                1,
                11,
                Command::UndeployModel {
                    name: "det".into(),
                    version: 1,
                },
            ),
        ])
        .await
        .unwrap();
    assert_eq!(responses[0], CommandResponse::Applied);
    assert!(
        matches!(&responses[1], CommandResponse::Rejected(Rejection::FailedPrecondition(reason)) if reason.contains("not deployed"))
    );
    assert!(reader.replicas().unwrap().is_empty() && reader.deployments().unwrap().is_empty());
    let full = DeploySpec {
        replicas: 1,
        gpu_milli: 1000,
        ..spec
    };
    sm.apply(vec![deploy(12, 2, full)]).await.unwrap();
    let whole = vec![ReplicaChange {
        version: 2,
        ..place(0, Some(1), share(1000))
    }];
    let responses = sm
        .apply(vec![command_entry(
            1,
            13,
            Command::ChangeReplicas {
                changes: whole,
                at_ms: 13,
            },
        )])
        .await
        .unwrap();
    assert_eq!(
        responses,
        vec![CommandResponse::Applied],
        "a whole device once the shares are released"
    );
}

#[tokio::test]
async fn ready_tasks_are_placed_in_the_entry_that_makes_them_ready() {
    use floe_engine::run::{RunEvent, TaskKey};
    use floe_state::slots::NodeSlots;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut sm = store.state_machine();
    let reader = store.reader();
    let definition = floe_engine::parse_flow(
        br#"{"name": "chain", "steps": [
            {"id": "a", "type": "task", "block": "noop", "input": "input", "next": "b"},
            {"id": "b", "type": "task", "block": "noop", "input": "steps.a.output"}]}"#,
    )
    .unwrap();
    let offer = |node: u64, slots: u32, load_milli: u32| Command::NodeSlots {
        node,
        offer: NodeSlots {
            slots: [("noop".to_string(), slots)].into_iter().collect(),
            load_milli,
        },
    };
    let start = |run_id: &str, at_ms: u64| Command::StartRun {
        run_id: run_id.into(),
        flow: "chain".into(),
        version: 1,
        input: b"{}".to_vec(),
        correlation_id: String::new(),
        idempotency_key: String::new(),
        at_ms,
    };
    let completed = |run_id: &str, step: &str, attempt: u32| {
        let key = TaskKey {
            run_id: run_id.into(),
            step_id: step.into(),
            item: None,
        };
        let event = RunEvent::TaskCompleted {
            key,
            attempt,
            output: serde_json::json!({"done": step}),
            worker: None,
        };
        Command::RunEvent {
            run_id: run_id.into(),
            event: serde_json::to_vec(&event).unwrap(),
            at_ms: 20,
        }
    };
    let mut index = 0;
    let mut apply = |commands: Vec<Command>| {
        let entries: Vec<_> = commands
            .into_iter()
            .map(|command| {
                index += 1;
                command_entry(1, index, command)
            })
            .collect();
        entries
    };
    let put = Command::PutFlow {
        name: "chain".into(),
        definition: floe_engine::canonical_bytes(&definition),
        hash: floe_engine::content_hash(&definition),
        at_ms: 0,
    };
    // No offers yet: the first task waits in the queue for the scheduler.
    sm.apply(apply(vec![put, start("queued", 10)]))
        .await
        .unwrap();
    assert_eq!(reader.ready_tasks(10, 10).unwrap().len(), 1);

    // Node 2 is less loaded; node 1 has one slot.
    sm.apply(apply(vec![offer(1, 1, 100), offer(2, 2, 600)]))
        .await
        .unwrap();
    assert_eq!(reader.node_slots().unwrap().len(), 2);
    sm.apply(apply(vec![
        start("r1", 10),
        start("r2", 10),
        start("r3", 10),
        start("r4", 10),
    ]))
    .await
    .unwrap();
    let node_of = |run: &str, step: &str| {
        let record = reader.run(run).unwrap().unwrap();
        record
            .steps
            .get(step)
            .and_then(|step| step.attempts.last())
            .and_then(|attempt| attempt.node)
    };
    assert_eq!(
        node_of("r1", "a"),
        Some(1),
        "node 1: 0 of 1 placed + 0.1 load beats node 2's 0.6"
    );
    assert_eq!(node_of("r2", "a"), Some(2), "node 1 is full");
    assert_eq!(node_of("r3", "a"), Some(2));
    assert_eq!(node_of("r4", "a"), None, "no free slot anywhere: queued");
    assert_eq!(reader.placed_count(1, "noop").unwrap(), 1);
    assert_eq!(reader.placed_count(2, "noop").unwrap(), 2);
    let on_two: Vec<(String, u32)> = reader
        .placed_tasks(2, |_, _| false)
        .unwrap()
        .into_iter()
        .map(|(task, attempt, _)| (task, attempt))
        .collect();
    assert_eq!(
        on_two,
        vec![("r2/a/-".to_string(), 1), ("r3/a/-".to_string(), 1)]
    );
    let started = reader.run("r1").unwrap().unwrap().steps["a"].attempts[0].started_at_ms;
    assert_eq!(
        started,
        Some(10),
        "the attempt started in the entry that scheduled it"
    );

    // A completion frees its slot before the next step is placed, in the same entry.
    sm.apply(apply(vec![completed("r1", "a", 1)]))
        .await
        .unwrap();
    assert_eq!(
        node_of("r1", "b"),
        Some(1),
        "step b took the slot step a freed on node 1"
    );
    assert_eq!(reader.placed_count(1, "noop").unwrap(), 1);
    assert_eq!(
        reader.run("r1").unwrap().unwrap().steps["b"].attempts[0].started_at_ms,
        Some(20)
    );

    // A withdrawn node gets nothing new; the slots counted on it stay until its tasks end.
    sm.apply(apply(vec![Command::NodeSlots {
        node: 1,
        offer: NodeSlots::default(),
    }]))
    .await
    .unwrap();
    assert_eq!(
        reader
            .node_slots()
            .unwrap()
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        vec![2]
    );
    sm.apply(apply(vec![completed("r2", "a", 1)]))
        .await
        .unwrap();
    assert_eq!(node_of("r2", "b"), Some(2));
    sm.apply(apply(vec![completed("r1", "b", 1)]))
        .await
        .unwrap();
    assert_eq!(
        reader.placed_count(1, "noop").unwrap(),
        0,
        "counts return to zero"
    );
    assert_eq!(
        reader.run("r1").unwrap().unwrap().status,
        floe_engine::run::RunStatus::Completed
    );
}

#[tokio::test]
async fn tasks_that_require_worker_labels_go_only_to_nodes_offering_them() {
    use floe_state::slots::NodeSlots;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut sm = store.state_machine();
    let reader = store.reader();
    let definition = floe_engine::parse_flow(
        br#"{"name": "north", "steps": [
            {"id": "a", "type": "task", "block": "noop", "worker_labels": {"site": "north"}, "input": "input"}]}"#,
    )
    .unwrap();
    let put = Command::PutFlow {
        name: "north".into(),
        definition: floe_engine::canonical_bytes(&definition),
        hash: floe_engine::content_hash(&definition),
        at_ms: 0,
    };
    let start = |run_id: &str| Command::StartRun {
        run_id: run_id.into(),
        flow: "north".into(),
        version: 1,
        input: b"{}".to_vec(),
        correlation_id: String::new(),
        idempotency_key: String::new(),
        at_ms: 10,
    };
    let offer = |node: u64, keys: &[(&str, u32)]| Command::NodeSlots {
        node,
        offer: NodeSlots {
            slots: keys
                .iter()
                .map(|(key, slots)| (key.to_string(), *slots))
                .collect(),
            load_milli: 0,
        },
    };
    let node_of = |run: &str| {
        let record = reader.run(run).unwrap().unwrap();
        record.steps["a"]
            .attempts
            .last()
            .and_then(|attempt| attempt.node)
    };
    // Node 1 serves the block without the label; node 2 with a south worker.
    let commands = vec![
        put,
        offer(1, &[("noop", 4)]),
        offer(2, &[("noop", 1), ("noop[site=south]", 1)]),
        start("r1"),
    ];
    let entries: Vec<_> = commands
        .into_iter()
        .enumerate()
        .map(|(i, c)| command_entry(1, i as u64 + 1, c))
        .collect();
    sm.apply(entries).await.unwrap();
    assert_eq!(node_of("r1"), None, "no node offers site=north: queued");
    assert_eq!(
        reader.ready_tasks(10, 10).unwrap()[0].spec.placement_key(),
        "noop[site=north]"
    );

    // Node 3's worker is labelled site=north (and more): it gets the task,
    // though node 1 has more room and a lower id.
    let commands = vec![
        offer(
            3,
            &[
                ("noop", 1),
                ("noop[site=north]", 1),
                ("noop[gpu=yes,site=north]", 1),
            ],
        ),
        start("r2"),
    ];
    let entries: Vec<_> = commands
        .into_iter()
        .enumerate()
        .map(|(i, c)| command_entry(1, i as u64 + 5, c))
        .collect();
    sm.apply(entries).await.unwrap();
    assert_eq!(node_of("r2"), Some(3));
    assert_eq!(reader.placed_count(3, "noop[site=north]").unwrap(), 1);
    assert_eq!(
        reader.placed_count(3, "noop").unwrap(),
        1,
        "and takes a slot of the block"
    );
    assert_eq!(reader.placed_count(1, "noop").unwrap(), 0);
}
