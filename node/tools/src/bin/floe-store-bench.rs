//! How a store full of finished runs behaves: fills a real sled store (on
//! disk, through the state machine's apply path, as the log would) with N
//! three-step runs that each went through start, three placements and three
//! completions, then times starting new runs, reading one and listing pages
//! — against the same operations on a store with only a thousand runs, in the
//! same process. Also prints the stored bytes per finished run.
//!
//! `cargo run --release -p floe-node --bin floe-store-bench -- --runs 1000000`

use std::path::Path;
use std::time::{Duration, Instant};

use floe_state::{Command, CommandResponse, Entry, LogId, RunFilter, Store, StoreOptions};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload};

const FLOW: &str = r#"{"name": "three-step", "steps": [
    {"id": "first", "type": "task", "block": "noop", "input": "input", "next": "second"},
    {"id": "second", "type": "task", "block": "noop", "input": "steps.first.output", "next": "third"},
    {"id": "third", "type": "task", "block": "noop", "input": "steps.second.output"}
]}"#;
/// Runs per log entry while filling (the proposer batches like this under load).
const FILL_BATCH: u64 = 500;
const SAMPLES: usize = 300;

struct Bench {
    store: Store,
    sm: floe_state::StateMachineStore,
    index: u64,
    clock_ms: u64,
}

impl Bench {
    fn open(dir: &Path) -> anyhow::Result<Bench> {
        let store = Store::open(dir, StoreOptions::default())?;
        let sm = store.state_machine();
        Ok(Bench {
            store,
            sm,
            index: 0,
            clock_ms: 1_700_000_000_000,
        })
    }

    async fn apply(&mut self, commands: Vec<Command>) -> anyhow::Result<Vec<CommandResponse>> {
        self.index += 1;
        let entry = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), self.index),
            payload: EntryPayload::Normal(Command::Batch(commands)),
        };
        let mut responses = self.sm.apply(vec![entry]).await?;
        match responses.pop() {
            Some(CommandResponse::Batch(responses)) => Ok(responses),
            other => anyhow::bail!("unexpected apply result {other:?}"),
        }
    }

    fn start(&mut self, run_id: &str) -> Command {
        self.clock_ms += 1;
        Command::StartRun {
            run_id: run_id.to_string(),
            flow: "three-step".into(),
            version: 1,
            input: format!(r#"{{"document":"{run_id}","pages":3}}"#).into_bytes(),
            correlation_id: String::new(),
            idempotency_key: format!("key-{run_id}"),
            at_ms: self.clock_ms,
        }
    }

    /// One step's placement and completion, as the scheduler and a worker would propose them.
    fn step(&mut self, run_id: &str, step: &str) -> anyhow::Result<[Command; 2]> {
        self.clock_ms += 1;
        let key = floe_engine::run::TaskKey {
            run_id: run_id.into(),
            step_id: step.into(),
            item: None,
        };
        let event = floe_engine::run::RunEvent::TaskCompleted {
            key: key.clone(),
            attempt: 1,
            output: serde_json::json!({"document": run_id, "pages": 3}),
            worker: None,
        };
        Ok([
            Command::AssignTask {
                task: key.to_string(),
                attempt: 1,
                node: 2,
                worker: String::new(),
                at_ms: self.clock_ms,
            },
            Command::RunEventTyped {
                run_id: run_id.into(),
                event,
                at_ms: self.clock_ms + 1,
            },
        ])
    }

    /// Adds `count` finished runs, `FILL_BATCH` per entry and one entry per stage.
    async fn fill(&mut self, prefix: &str, count: u64) -> anyhow::Result<()> {
        let mut done = 0;
        while done < count {
            let ids: Vec<String> = (done..(done + FILL_BATCH).min(count))
                .map(|n| format!("{prefix}{n:010}"))
                .collect();
            let starts = ids.iter().map(|id| self.start(id)).collect();
            self.apply(starts).await?;
            for step in ["first", "second", "third"] {
                let mut commands = Vec::new();
                for id in &ids {
                    commands.extend(self.step(id, step)?);
                }
                self.apply(commands).await?;
            }
            done += ids.len() as u64;
        }
        Ok(())
    }

    /// Per-operation latencies: new run starts (one entry each), reads, list pages.
    async fn measure(&mut self, label: &str) -> anyhow::Result<Vec<(String, Duration, Duration)>> {
        let mut starts = Vec::new();
        for n in 0..SAMPLES {
            let command = self.start(&format!("{label}-new-{n}"));
            let began = Instant::now();
            self.apply(vec![command]).await?;
            starts.push(began.elapsed());
        }
        let reader = self.store.reader();
        let mut gets = Vec::new();
        let mut lists = Vec::new();
        let filters = [
            RunFilter {
                flow: Some("three-step".into()),
                ..Default::default()
            },
            RunFilter {
                status: Some("completed".into()),
                ..Default::default()
            },
            RunFilter::default(),
        ];
        for n in 0..SAMPLES {
            let began = Instant::now();
            let found = reader.run(&format!("{label}-new-{n}"))?;
            gets.push(began.elapsed());
            anyhow::ensure!(found.is_some(), "run {label}-new-{n} not found");
            let began = Instant::now();
            let page = reader.runs(&filters[n % filters.len()], None, 50)?;
            lists.push(began.elapsed());
            anyhow::ensure!(
                page.runs.len() == 50,
                "a page of 50 runs came back with {}",
                page.runs.len()
            );
        }
        Ok(vec![
            (
                "start a run (apply)".into(),
                percentile(&mut starts, 0.5),
                percentile(&mut starts, 0.99),
            ),
            (
                "get a run".into(),
                percentile(&mut gets, 0.5),
                percentile(&mut gets, 0.99),
            ),
            (
                "list a page of 50".into(),
                percentile(&mut lists, 0.5),
                percentile(&mut lists, 0.99),
            ),
        ])
    }
}

fn percentile(samples: &mut [Duration], fraction: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 - 1.0) * fraction).round() as usize]
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

async fn prepared(dir: &Path, runs: u64) -> anyhow::Result<(Bench, Duration)> {
    let mut bench = Bench::open(dir)?;
    let flow =
        floe_engine::parse_flow(FLOW.as_bytes()).map_err(|errors| anyhow::anyhow!("{errors:?}"))?;
    let put = Command::PutFlow {
        name: flow.name.clone(),
        definition: floe_engine::canonical_bytes(&flow),
        hash: floe_engine::content_hash(&flow),
        at_ms: 1,
    };
    bench.apply(vec![put]).await?;
    let began = Instant::now();
    bench.fill("run-", runs).await?;
    Ok((bench, began.elapsed()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs: u64 = match std::env::args().skip_while(|arg| arg != "--runs").nth(1) {
        Some(text) => text.parse()?,
        None => 1_000_000,
    };
    let work = tempfile::tempdir()?;
    let (mut small, _) = prepared(&work.path().join("small"), 1_000).await?;
    let baseline = small.measure("small").await?;
    drop(small);

    let big_dir = work.path().join("big");
    let (mut big, fill_time) = prepared(&big_dir, runs).await?;
    let scaled = big.measure("big").await?;
    // sled writes everything out when the last handle closes.
    drop(big);
    let disk = dir_bytes(&big_dir);

    println!("store with {runs} finished three-step runs: filled in {:.1} s ({:.0} runs/s through apply)", fill_time.as_secs_f64(), runs as f64 / fill_time.as_secs_f64());
    println!(
        "on disk: {:.1} MiB, {} bytes per finished run (sled files, including its own overhead)\n",
        disk as f64 / 1048576.0,
        disk / runs.max(1)
    );
    println!("| operation | 1,000 runs p50 | p99 | {runs} runs p50 | p99 | p50 ratio |");
    println!("|---|---|---|---|---|---|");
    for ((name, small_p50, small_p99), (_, big_p50, big_p99)) in baseline.iter().zip(&scaled) {
        println!(
            "| {name} | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms | {:.2} |",
            small_p50.as_secs_f64() * 1e3,
            small_p99.as_secs_f64() * 1e3,
            big_p50.as_secs_f64() * 1e3,
            big_p99.as_secs_f64() * 1e3,
            big_p50.as_secs_f64() / small_p50.as_secs_f64().max(1e-9)
        );
    }
    Ok(())
}
