//! The longest a single log entry holds apply, for the worst inputs we can
//! construct: applies each scenario's entries to a real sled store through
//! the state machine (as the log would), firing the continuation timers the
//! leader would fire, until every run has finished, and prints the slowest
//! entry. Apply holds the node's writes (and so its reads' wait for the
//! applied index and its heartbeats' responses) for that long.
//!
//! `cargo run --release -p floe-node --bin floe-apply-stall`

use std::time::{Duration, Instant};

use floe_state::{Command, CommandResponse, Entry, LogId, Store, StoreOptions};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload};

struct Bench {
    _dir: tempfile::TempDir,
    store: Store,
    sm: floe_state::StateMachineStore,
    index: u64,
    clock_ms: u64,
}

/// What one scenario measured.
struct Outcome {
    entries: usize,
    slowest: Duration,
    /// Which entry was slowest: 1 is the one that started the runs.
    slowest_at: usize,
    total: Duration,
    refused: u64,
    finished: String,
}

impl Bench {
    fn new() -> anyhow::Result<Bench> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path(), StoreOptions::default())?;
        let sm = store.state_machine();
        Ok(Bench {
            _dir: dir,
            store,
            sm,
            index: 0,
            clock_ms: 1_700_000_000_000,
        })
    }

    async fn apply(&mut self, command: Command) -> anyhow::Result<(Duration, CommandResponse)> {
        self.index += 1;
        self.clock_ms += 1;
        let entry = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), self.index),
            payload: EntryPayload::Normal(command),
        };
        let began = Instant::now();
        let mut responses = self.sm.apply(vec![entry]).await?;
        let took = began.elapsed();
        Ok((took, responses.pop().unwrap_or_default()))
    }

    async fn put_flow(&mut self, json: &str) -> anyhow::Result<()> {
        let definition = floe_engine::parse_new_flow(json.as_bytes())
            .map_err(|errors| anyhow::anyhow!("{errors:?}"))?;
        let command = Command::PutFlow {
            name: definition.name.clone(),
            definition: floe_engine::canonical_bytes(&definition),
            hash: floe_engine::content_hash(&definition),
            at_ms: self.clock_ms,
        };
        self.apply(command).await?;
        Ok(())
    }

    fn start(&self, run_id: String, flow: &str, input: &str) -> Command {
        Command::StartRun {
            run_id,
            flow: flow.into(),
            version: 1,
            input: input.as_bytes().to_vec(),
            correlation_id: String::new(),
            idempotency_key: String::new(),
            at_ms: self.clock_ms,
        }
    }

    /// Applies `first`, then fires due timers (256 a command, as the leader
    /// does) until none is due; every entry is timed.
    async fn run_to_end(&mut self, first: Command, runs: &[String]) -> anyhow::Result<Outcome> {
        let (mut slowest, _) = self.apply(first).await?;
        let mut slowest_at = 1;
        let mut total = slowest;
        let mut entries = 1;
        let reader = self.store.reader();
        for _ in 0..10_000 {
            let due = reader.due_timers(u64::MAX, 256)?;
            if due.is_empty() {
                break;
            }
            let at_ms = self.clock_ms;
            let (took, _) = self
                .apply(Command::FireTimers { timers: due, at_ms })
                .await?;
            entries += 1;
            if took > slowest {
                slowest = took;
                slowest_at = entries;
            }
            total += took;
        }
        let mut statuses = std::collections::BTreeMap::new();
        for run_id in runs {
            let status = match reader.run(run_id)? {
                Some(run) => format!("{:?}", run.status).to_lowercase(),
                None => "missing".into(),
            };
            *statuses.entry(status).or_insert(0) += 1;
        }
        let finished = statuses
            .iter()
            .map(|(status, count)| format!("{count} {status}"))
            .collect::<Vec<_>>()
            .join(", ");
        Ok(Outcome {
            entries,
            slowest,
            slowest_at,
            total,
            refused: self.store.apply_stats().refused(),
            finished,
        })
    }
}

/// A chain of `count` transforms; `output(index, previous)` is each one's output mapping.
fn chain(name: &str, count: usize, output: impl Fn(usize, &str) -> String) -> String {
    let steps: Vec<String> = (0..count)
        .map(|index| {
            let previous = if index == 0 {
                "input".to_string()
            } else {
                format!("steps.t{}.output", index - 1)
            };
            let next = if index + 1 < count {
                format!(r#", "next": "t{}""#, index + 1)
            } else {
                String::new()
            };
            format!(
                r#"{{"id": "t{index}", "type": "transform", "output": {}{next}}}"#,
                output(index, &previous)
            )
        })
        .collect();
    format!(r#"{{"name": "{name}", "steps": [{}]}}"#, steps.join(","))
}

async fn scenario(name: &str, flow: String, starts: usize, input: String) -> anyhow::Result<()> {
    // `--only TEXT` runs the scenarios whose name contains TEXT (for profiling one).
    if let Some(only) = std::env::args().skip_while(|arg| arg != "--only").nth(1) {
        if !name.contains(&only) {
            return Ok(());
        }
    }
    let mut bench = Bench::new()?;
    bench.put_flow(&flow).await?;
    let flow_name = floe_engine::parse_flow(flow.as_bytes())
        .map_err(|errors| anyhow::anyhow!("{errors:?}"))?
        .name;
    let runs: Vec<String> = (0..starts).map(|index| format!("run-{index}")).collect();
    let commands: Vec<Command> = runs
        .iter()
        .map(|run_id| bench.start(run_id.clone(), &flow_name, &input))
        .collect();
    let first = if commands.len() == 1 {
        commands
            .into_iter()
            .next()
            .unwrap_or(Command::Batch(Vec::new()))
    } else {
        Command::Batch(commands)
    };
    let outcome = bench.run_to_end(first, &runs).await?;
    println!(
        "| {name} | {} | {:.1} ms (entry {}) | {:.1} ms | {} | {} |",
        outcome.entries,
        outcome.slowest.as_secs_f64() * 1e3,
        outcome.slowest_at,
        outcome.total.as_secs_f64() * 1e3 / outcome.entries as f64,
        outcome.finished,
        outcome.refused
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    println!(
        "entry budget: {} units (a step costs 1 + 1 per {} KiB of values its run holds), at most {} steps per event, {} MiB of values per run\n",
        floe_engine::run::ENTRY_WORK_UNITS,
        floe_engine::run::BYTES_PER_UNIT / 1024,
        floe_engine::run::MAX_STEPS_PER_EVENT,
        floe_engine::run::MAX_RUN_VALUE_BYTES / (1024 * 1024)
    );
    println!("| scenario | entries | slowest entry | mean entry | runs | refused |");
    println!("|---|---|---|---|---|---|");
    let pass_on = |_: usize, previous: &str| format!("{previous:?}");
    scenario(
        "one run, 1000 transforms passing a small value on",
        chain("small", 1000, pass_on),
        1,
        r#"{"n": 1}"#.into(),
    )
    .await?;
    let nest = |_: usize, previous: &str| format!("{:?}", format!("[{previous}]"));
    scenario(
        "one run, 1000 transforms each nesting one level deeper",
        chain("nest", 1000, nest),
        1,
        "1".into(),
    )
    .await?;
    // Each step outputs about 1 MiB (the expression result limit) from a 200 KiB inline input.
    let big =
        |_: usize, _: &str| r#""input.s + input.s + input.s + input.s + input.s""#.to_string();
    let big_input = format!(r#"{{"s": "{}"}}"#, "x".repeat(200 * 1024));
    scenario(
        "one run, transforms of 1 MiB values each (to the 4 MiB run limit)",
        chain("big", 100, big),
        1,
        big_input.clone(),
    )
    .await?;
    scenario(
        "256 runs of 1000 small transforms started in one entry",
        chain("small", 1000, pass_on),
        256,
        r#"{"n": 1}"#.into(),
    )
    .await?;
    scenario(
        "16 runs of 1 MiB-value transforms started in one entry",
        chain("big", 100, big),
        16,
        big_input,
    )
    .await?;
    // Nested comprehensions over a list from the input (the expression limits bound the rest).
    let list: Vec<String> = (0..2000).map(|index| index.to_string()).collect();
    let explode = |_: usize, _: &str| r#""input.l.map(x, input.l.map(y, x + y))""#.to_string();
    scenario(
        "one transform: a comprehension over 2000 items inside another",
        chain("explode", 1, explode),
        1,
        format!(r#"{{"l": [{}]}}"#, list.join(",")),
    )
    .await?;
    Ok(())
}
