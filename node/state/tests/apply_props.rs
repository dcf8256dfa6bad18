//! Apply is total and deterministic: any sequence of commands, however
//! hostile its contents (values nested 200 deep, long strings, bytes that
//! are not JSON, unknown flows, runs and tasks, stale attempts), applies
//! without an error on a real sled store, and two fresh stores that apply
//! the same sequence end with the same state digest.

mod common;

use common::command_entry;
use floe_engine::run::{ChildOutcome, RunEvent, TaskFailure, TaskKey, TimerKey};
use floe_state::runs::{timer_key_text, LimitScope};
use floe_state::slots::NodeSlots;
use floe_state::{Command, Store, StoreOptions};
use openraft::storage::RaftStateMachine;
use proptest::prelude::*;
use serde_json::{json, Value};

static RUNS: &[&str] = &["r0", "r1", "r2", "r3", "r0.sub", "nope"];
static STEPS: &[&str] = &["a", "b", "t", "hold", "items", "pause", "sub", "missing"];
static PURPOSES: &[&str] = &[
    "wait",
    "signal-timeout",
    "retry",
    "schedule-to-start",
    "start-to-close",
    "heartbeat",
    "other",
];
static FLOWS: &[&str] = &[
    "echo", "wrap", "deepen", "chain", "waits", "mapper", "sleeper", "parent", "unknown",
];
/// The flows that exist (the last name of `FLOWS` never does).
const REAL_FLOWS: usize = 8;

fn ten_levels(leaf: &str) -> Value {
    let mut value = json!(leaf);
    for _ in 0..10 {
        value = json!({ "d": value });
    }
    value
}

/// Small real flows, each exercising another kind of step.
fn flow_json(name: &str) -> Value {
    match name {
        "echo" => {
            json!({ "name": "echo", "steps": [{ "id": "t", "type": "transform", "output": "input" }] })
        }
        "wrap" => {
            json!({ "name": "wrap", "steps": [{ "id": "t", "type": "transform", "output": { "a": { "b": "input" } } }] })
        }
        // Ten levels around its input, then ten more.
        "deepen" => json!({ "name": "deepen", "steps": [
            { "id": "t", "type": "transform", "output": ten_levels("input"), "next": "u" },
            { "id": "u", "type": "transform", "output": ten_levels("steps.t.output") }
        ]}),
        "chain" => json!({ "name": "chain", "steps": [
            { "id": "a", "type": "task", "block": "noop", "input": "input", "next": "b",
              "retry": { "max_attempts": 2, "initial_backoff_ms": 10 }, "timeouts": { "start_to_close_ms": 100 } },
            { "id": "b", "type": "task", "block": "noop", "input": { "x": "steps.a.output" }, "next": "t" },
            { "id": "t", "type": "transform", "output": { "y": "steps.b.output" } }
        ]}),
        "waits" => json!({ "name": "waits", "steps": [
            { "id": "hold", "type": "signal", "signal": "go", "timeout_ms": 50, "next": "t" },
            { "id": "t", "type": "transform", "output": { "got": "steps.hold.output" } }
        ]}),
        "mapper" => json!({ "name": "mapper", "steps": [
            { "id": "items", "type": "map", "items": "input", "max_parallelism": 2, "task": { "block": "noop", "input": "item" } }
        ]}),
        "sleeper" => {
            json!({ "name": "sleeper", "steps": [{ "id": "pause", "type": "wait", "duration_ms": 10 }] })
        }
        "parent" => {
            json!({ "name": "parent", "steps": [{ "id": "sub", "type": "subflow", "flow": "echo", "version": 1, "input": "input" }] })
        }
        other => panic!("no flow {other}"),
    }
}

fn put_flow(name: &str, at_ms: u64) -> Command {
    let text = serde_json::to_vec(&flow_json(name)).unwrap();
    let definition = floe_engine::parse_flow(&text).unwrap();
    Command::PutFlow {
        name: name.into(),
        definition: floe_engine::canonical_bytes(&definition),
        hash: floe_engine::content_hash(&definition),
        at_ms,
    }
}

fn nested_arrays(depth: usize) -> Value {
    let mut value = json!("leaf");
    for _ in 0..depth {
        value = Value::Array(vec![value]);
    }
    value
}

fn nested_objects(depth: usize) -> Value {
    let mut value = json!(1);
    for _ in 0..depth {
        value = json!({ "k": value });
    }
    value
}

/// Ordinary small JSON values.
fn small_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        "[a-z]{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Values from small to extreme: nested up to 200 deep, long strings.
fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => small_value(),
        2 => (0usize..=200).prop_map(nested_arrays),
        1 => (0usize..=200).prop_map(nested_objects),
        // Around serde_json's default parse limit of 128 levels.
        2 => (100usize..=130).prop_map(nested_arrays),
        1 => (100usize..=130).prop_map(nested_objects),
        1 => (0usize..70_000).prop_map(|len| Value::String("s".repeat(len))),
        1 => (0usize..3000).prop_map(|len| Value::Array((0..len as u64).map(Value::from).collect())),
    ]
}

/// JSON bytes, or bytes that are not JSON at all.
fn json_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => value().prop_map(|value| serde_json::to_vec(&value).unwrap()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
        1 => Just(Vec::new()),
        1 => (1usize..300).prop_map(|depth| "[".repeat(depth).into_bytes()),
        1 => Just(b"{\"a\": ".to_vec()),
        1 => Just(vec![0xff, 0xfe, b'"', 0xc3]),
    ]
}

fn pick(names: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::sample::select(names).prop_map(str::to_string)
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9/._-]{0,12}",
        1 => any::<String>(),
        1 => (0usize..20_000).prop_map(|len| "x".repeat(len)),
    ]
}

fn task_key() -> impl Strategy<Value = TaskKey> {
    (pick(RUNS), pick(STEPS), prop::option::of(0u32..4)).prop_map(|(run_id, step_id, item)| {
        TaskKey {
            run_id,
            step_id,
            item,
        }
    })
}

fn task_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => task_key().prop_map(|key| key.to_string()),
        1 => text(),
        1 => Just("r0/a/not-a-number".to_string()),
        1 => Just("/".to_string()),
    ]
}

fn timer_text() -> impl Strategy<Value = String> {
    let purpose = prop::sample::select(PURPOSES);
    let timer = (
        pick(RUNS),
        pick(STEPS),
        prop::option::of(0u32..4),
        purpose,
        0u32..4,
    )
        .prop_map(|(run_id, step_id, item, purpose, attempt)| {
            timer_key_text(&TimerKey {
                run_id,
                step_id,
                item,
                purpose: purpose.to_string(),
                attempt,
            })
        });
    prop_oneof![4 => timer, 1 => text(), 1 => Just("r0/hold/-/wait/x".to_string())]
}

fn run_event() -> impl Strategy<Value = RunEvent> {
    let attempt = prop_oneof![3 => 0u32..4, 1 => any::<u32>()];
    prop_oneof![
        3 => (task_key(), attempt.clone(), value(), prop::option::of("[a-z]{1,6}"))
            .prop_map(|(key, attempt, output, worker)| RunEvent::TaskCompleted { key, attempt, output, worker }),
        2 => (task_key(), attempt.clone(), text(), any::<bool>()).prop_map(|(key, attempt, error, retryable)| RunEvent::TaskFailed {
            key,
            attempt,
            failure: TaskFailure { error, retryable },
            worker: None,
        }),
        1 => (task_key(), attempt.clone(), text()).prop_map(|(key, attempt, reason)| RunEvent::TaskLost { key, attempt, reason }),
        1 => (task_key(), attempt, 0u64..4, "[a-z]{0,6}").prop_map(|(key, attempt, node, worker)| RunEvent::TaskStarted { key, attempt, node, worker }),
        1 => (pick(RUNS), pick(STEPS), "[a-z-]{0,18}", 0u32..3).prop_map(|(run_id, step_id, purpose, attempt)| RunEvent::TimerFired {
            timer: TimerKey { run_id, step_id, item: None, purpose, attempt }
        }),
        2 => (prop_oneof![Just("go".to_string()), text()], value()).prop_map(|(name, payload)| RunEvent::Signal { name, payload }),
        1 => (pick(STEPS), prop_oneof![
            value().prop_map(ChildOutcome::Completed),
            text().prop_map(ChildOutcome::Failed),
            Just(ChildOutcome::Cancelled),
        ])
            .prop_map(|(step_id, outcome)| RunEvent::ChildFinished { step_id, outcome }),
        1 => text().prop_map(|reason| RunEvent::Cancel { reason }),
        1 => Just(RunEvent::Retry),
    ]
}

fn event_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => run_event().prop_map(|event| serde_json::to_vec(&event).unwrap()),
        1 => json_bytes(),
        1 => (1usize..250).prop_map(|depth| {
            // A well-formed event whose output nests deeper than any parser default.
            let event = RunEvent::TaskCompleted {
                key: TaskKey { run_id: "r0".into(), step_id: "a".into(), item: None },
                attempt: 1,
                output: nested_arrays(depth),
                worker: None,
            };
            serde_json::to_vec(&event).unwrap()
        }),
    ]
}

/// A typed event: any kind, or a result whose output nests past the value
/// limit (apply refuses it; the JSON variant's parser stopped at 128).
fn typed_event() -> impl Strategy<Value = RunEvent> {
    prop_oneof![
        6 => run_event(),
        1 => (1usize..250).prop_map(|depth| RunEvent::TaskCompleted {
            key: TaskKey { run_id: "r0".into(), step_id: "a".into(), item: None },
            attempt: 1,
            output: nested_arrays(depth),
            worker: None,
        }),
    ]
}

/// A flow put: a real flow, or (with `garbage`) bytes no proposer would
/// let through, which apply must refuse or store without failing later.
fn flow_put(garbage: bool) -> BoxedStrategy<Command> {
    let real = (pick(&FLOWS[..REAL_FLOWS]), 0u64..100_000)
        .prop_map(|(name, at_ms)| put_flow(&name, at_ms));
    if !garbage {
        return real.boxed();
    }
    prop_oneof![
        1 => real,
        1 => (pick(FLOWS), prop::collection::vec(any::<u8>(), 0..40), "[a-f0-9]{0,64}", 0u64..100_000)
            .prop_map(|(name, definition, hash, at_ms)| Command::PutFlow { name, definition, hash, at_ms }),
    ]
    .boxed()
}

/// Every command but a batch.
fn single_command(garbage: bool) -> BoxedStrategy<Command> {
    let at_ms = 0u64..100_000;
    prop_oneof![
        3 => flow_put(garbage),
        6 => (pick(RUNS), pick(FLOWS), 0u64..4, json_bytes(), text(), prop_oneof![Just(String::new()), "k[0-3]", text()], at_ms.clone())
            .prop_map(|(run_id, flow, version, input, correlation_id, idempotency_key, at_ms)| Command::StartRun {
                run_id,
                flow,
                version,
                input,
                correlation_id,
                idempotency_key,
                at_ms,
            }),
        // A flow that nests its input further, started with an input just
        // under the parse limit: the record holds a value past it.
        3 => (pick(RUNS), prop::sample::select(&["deepen", "wrap", "echo"][..]), 100usize..128, prop_oneof![Just(String::new()), "k[0-3]"], at_ms.clone())
            .prop_map(|(run_id, flow, depth, idempotency_key, at_ms)| Command::StartRun {
                run_id,
                flow: flow.to_string(),
                version: 0,
                input: serde_json::to_vec(&nested_arrays(depth)).unwrap(),
                correlation_id: String::new(),
                idempotency_key,
                at_ms,
            }),
        6 => (prop_oneof![4 => pick(RUNS), 1 => text()], event_bytes(), at_ms.clone())
            .prop_map(|(run_id, event, at_ms)| Command::RunEvent { run_id, event, at_ms }),
        6 => (prop_oneof![4 => pick(RUNS), 1 => text()], typed_event(), at_ms.clone())
            .prop_map(|(run_id, event, at_ms)| Command::RunEventTyped { run_id, event, at_ms }),
        3 => (task_text(), 0u32..4, 0u64..5, text(), at_ms.clone())
            .prop_map(|(task, attempt, node, worker, at_ms)| Command::AssignTask { task, attempt, node, worker, at_ms }),
        2 => (task_text(), 0u32..4, at_ms.clone()).prop_map(|(task, attempt, at_ms)| Command::UnassignTask { task, attempt, at_ms }),
        2 => (prop::collection::vec(timer_text(), 0..4), at_ms.clone()).prop_map(|(timers, at_ms)| Command::FireTimers { timers, at_ms }),
        2 => (prop::collection::vec(prop_oneof![4 => pick(RUNS), 1 => text()], 0..5), prop_oneof![Just(0u64), Just(50_000u64), Just(u64::MAX)])
            .prop_map(|(run_ids, finished_before_ms)| Command::PurgeRuns { run_ids, finished_before_ms }),
        2 => ("[a-c]{1,2}", prop::collection::vec(any::<u8>(), 0..16)).prop_map(|(key, value)| Command::KvPut { key, value }),
        1 => "[a-c]{1,2}".prop_map(|key| Command::KvDelete { key }),
        1 => ("[a-c]{1,2}", prop::option::of(prop::collection::vec(any::<u8>(), 0..4)), prop::option::of(prop::collection::vec(any::<u8>(), 0..4)))
            .prop_map(|(key, expected, new)| Command::KvCas { key, expected, new }),
        2 => (prop_oneof![Just(LimitScope::Block), Just(LimitScope::Flow)], prop_oneof![Just("noop".to_string()), pick(FLOWS), text()], prop::option::of(0u32..3))
            .prop_map(|(scope, name, limit)| Command::SetLimit { scope, name, limit }),
        2 => (1u64..4, prop::collection::btree_map(prop_oneof![Just("noop".to_string()), text()], 0u32..4, 0..3), 0u32..2000)
            .prop_map(|(node, slots, load_milli)| Command::NodeSlots { node, offer: NodeSlots { slots, load_milli } }),
        1 => (1u64..6).prop_map(|node_id| Command::TombstoneNode { node_id }),
    ]
    .boxed()
}

fn command(garbage: bool) -> impl Strategy<Value = Command> {
    prop_oneof![
        8 => single_command(garbage),
        1 => prop::collection::vec(single_command(garbage), 0..6).prop_map(Command::Batch),
    ]
}

/// Applies `commands` to a fresh store, `chunk` entries per `apply` call,
/// and returns its digest; an apply error is returned with the command.
async fn apply_all(commands: &[Command], chunk: usize) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).expect("open store");
    let mut sm = store.state_machine();
    let entries: Vec<_> = commands
        .iter()
        .enumerate()
        .map(|(i, command)| command_entry(1, i as u64 + 1, command.clone()))
        .collect();
    for (n, entries) in entries.chunks(chunk).enumerate() {
        if let Err(err) = sm.apply(entries.to_vec()).await {
            let first = n * chunk;
            let shown: Vec<String> = commands[first..first + entries.len()]
                .iter()
                .map(ToString::to_string)
                .collect();
            return Err(format!(
                "apply of entries {}.. ({shown:?}) failed: {err}",
                first + 1
            ));
        }
    }
    store
        .reader()
        .state_digest()
        .map_err(|err| format!("digest: {err}"))
}

/// Applies `commands` (after flow puts of `flows`) to two fresh stores.
fn check(flows: &[String], commands: Vec<Command>, chunk: usize) -> Result<(), TestCaseError> {
    let mut all: Vec<Command> = flows
        .iter()
        .enumerate()
        .map(|(i, name)| put_flow(name, i as u64))
        .collect();
    all.extend(commands);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (first, second) =
        runtime.block_on(async { (apply_all(&all, chunk).await, apply_all(&all, chunk).await) });
    let first = first.map_err(TestCaseError::fail)?;
    let second = second.map_err(TestCaseError::fail)?;
    prop_assert_eq!(
        first,
        second,
        "two stores applied the same commands to different states"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, max_shrink_iters: 200, failure_persistence: None, ..ProptestConfig::default() })]

    /// Commands as a proposer makes them: flows validated before they are
    /// put, but any values, names, events and attempts.
    #[test]
    fn apply_never_fails_and_two_stores_agree(
        // Flows first, so most starts find one; then anything.
        flows in prop::collection::vec(pick(&FLOWS[..REAL_FLOWS]), 0..8),
        commands in prop::collection::vec(command(false), 1..40),
        chunk in 1usize..5,
    ) {
        check(&flows, commands, chunk)?;
    }

    /// The same with flow definitions that are not flows at all: a command
    /// that cannot apply is refused, it does not stop apply.
    #[test]
    fn apply_never_fails_on_garbage_flow_definitions(
        flows in prop::collection::vec(pick(&FLOWS[..REAL_FLOWS]), 0..8),
        commands in prop::collection::vec(command(true), 1..40),
        chunk in 1usize..5,
    ) {
        check(&flows, commands, chunk)?;
    }
}
