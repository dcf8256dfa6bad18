//! floe-inference-bench: pools against calling ONNX Runtime directly, on the PP-OCR
//! models. Prints a Markdown table. Every loop stops after `--seconds` or
//! `--max-requests`, whichever comes first.
//!
//! (a) throughput of a pool vs ort direct (same model, threads, input)
//! (b) dynamic batching at concurrency 8 and 32 vs max_batch = 1
//! (c) warm-pool latency vs a session created per request
//! (d) resident memory of 4 workflows sharing one pool vs 4 private sessions
//!     (each measured in a child process, so freed memory cannot blur the numbers)

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Parser, ValueEnum};
use floe_inference::memory::resident_bytes;
use floe_inference::session::build_session;
use floe_inference::{
    DevRuntimeFiles, OrtRuntime, Pool, PoolHandle, PoolOptions, SessionConfig, Tensor, TensorMap,
};

#[derive(Parser, Debug)]
#[command(about = "Benchmarks floe-inference pools on the PP-OCR models")]
struct Args {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Cap on requests per measurement.
    #[arg(long, default_value_t = 100_000)]
    max_requests: u64,
    /// ONNX Runtime intra-op threads per session.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Defaults to $FLOE_ORT_LIB or <workspace>/.floe-runtime.
    #[arg(long)]
    ort_lib: Option<PathBuf>,
    /// Holds det.onnx, rec.onnx, cls.onnx. Defaults to $FLOE_MODELS_DIR or <workspace>/.floe-runtime.
    #[arg(long)]
    models_dir: Option<PathBuf>,
    /// Also write the table here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Internal: measure memory for one layout in this process and print it.
    #[arg(long, hide = true)]
    memory_child: Option<Layout>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Layout {
    Shared,
    Private,
}

const WORKFLOWS: usize = 4;

struct Bench {
    args: Args,
    runtime: OrtRuntime,
    rec_bytes: Arc<[u8]>,
    cls_bytes: Arc<[u8]>,
    rec_input: Tensor,
    cls_input: Tensor,
    tokio: tokio::runtime::Runtime,
}

/// Items done in a slice of wall time, and the CPU time this process spent on it.
#[derive(Clone, Copy, Default)]
struct Measure {
    items: u64,
    wall: Duration,
    cpu: Duration,
}

impl Measure {
    fn add(&mut self, other: Measure) {
        self.items += other.items;
        self.wall += other.wall;
        self.cpu += other.cpu;
    }

    fn per_second(&self) -> f64 {
        self.items as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    fn per_cpu_second(&self) -> f64 {
        self.items as f64 / self.cpu.as_secs_f64().max(1e-9)
    }
}

/// CPU time of the whole process (all threads), from /proc/self/stat, in clock
/// ticks of 10 ms (USER_HZ is 100 on Linux).
fn process_cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after_name = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|field| field.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// Runs `work` for one slice and measures it.
fn measure(work: impl FnOnce() -> anyhow::Result<u64>) -> anyhow::Result<Measure> {
    let (wall_start, cpu_start) = (Instant::now(), process_cpu_time());
    let items = work()?;
    Ok(Measure {
        items,
        wall: wall_start.elapsed(),
        cpu: process_cpu_time().saturating_sub(cpu_start),
    })
}

/// Slices per comparison: A and B alternate, so a change in the machine's load
/// hits both sides alike.
const ROUNDS: u32 = 3;

struct Row {
    scenario: String,
    setting: String,
    result: String,
    baseline: String,
    ratio: String,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let bench = Bench::new(Args::parse())?;
    if let Some(layout) = bench.args.memory_child {
        return bench.memory_child(layout);
    }
    let started = Instant::now();
    let load_before = load_average();
    let mut rows = Vec::new();
    eprintln!("(a) throughput");
    rows.push(bench.throughput()?);
    eprintln!("(b) batching");
    for (model, concurrency) in [("cls", 8), ("cls", 32), ("rec", 8), ("rec", 32)] {
        rows.push(bench.batching(model, concurrency)?);
    }
    eprintln!("(c) latency");
    rows.push(bench.latency()?);
    eprintln!("(d) memory");
    rows.push(bench.memory()?);

    let table = render(&bench, &rows, started.elapsed(), &load_before);
    println!("{table}");
    if let Some(path) = &bench.args.out {
        std::fs::write(path, &table).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

impl Bench {
    fn new(args: Args) -> anyhow::Result<Bench> {
        let mut files = DevRuntimeFiles::locate();
        if let Some(path) = &args.ort_lib {
            files.ort_library = path.clone();
        }
        if let Some(path) = &args.models_dir {
            files.models_dir = path.clone();
        }
        files.require().map_err(|message| anyhow!(message))?;
        if args.seconds <= 0.0 || args.seconds > 600.0 {
            bail!("--seconds must be in (0, 600]");
        }
        let runtime = OrtRuntime::load(&files.ort_library)?;
        let read = |name: &str| -> anyhow::Result<Arc<[u8]>> {
            let path = files.models_dir.join(name);
            Ok(std::fs::read(&path)
                .with_context(|| format!("reading {}", path.display()))?
                .into())
        };
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        Ok(Bench {
            rec_bytes: read("rec.onnx")?,
            cls_bytes: read("cls.onnx")?,
            rec_input: line_tensor(320)?,
            cls_input: line_tensor(192)?,
            runtime,
            args,
            tokio,
        })
    }

    fn budget(&self) -> Duration {
        Duration::from_secs_f64(self.args.seconds)
    }

    fn model(&self, name: &str) -> (Arc<[u8]>, &Tensor) {
        match name {
            "cls" => (Arc::clone(&self.cls_bytes), &self.cls_input),
            _ => (Arc::clone(&self.rec_bytes), &self.rec_input),
        }
    }

    fn start_pool(&self, model: &str, max_batch: usize) -> anyhow::Result<PoolHandle> {
        let (bytes, _) = self.model(model);
        let options = PoolOptions {
            name: format!("bench-{model}"),
            intra_threads: self.args.threads,
            max_batch,
            max_delay: Duration::from_millis(5),
            queue_capacity: 1024,
            ..PoolOptions::default()
        };
        Ok(Pool::start_blocking(&self.runtime, bytes, options)?)
    }

    fn slice(&self) -> Duration {
        self.budget() / ROUNDS
    }

    /// Closed loop for one slice: `callers` tasks each send one request at a time.
    fn drive(&self, pool: &PoolHandle, input: &Tensor, callers: usize) -> anyhow::Result<Measure> {
        let inputs = TensorMap::from([("x".to_string(), input.clone())]);
        let slice = self.slice();
        let cap = self.args.max_requests / u64::from(ROUNDS);
        measure(|| {
            let completed = Arc::new(AtomicU64::new(0));
            let started = Instant::now();
            self.tokio.block_on(async {
                let mut tasks = Vec::new();
                for _ in 0..callers {
                    let (pool, inputs, completed) =
                        (pool.clone(), inputs.clone(), Arc::clone(&completed));
                    tasks.push(tokio::spawn(async move {
                        while started.elapsed() < slice && completed.load(Ordering::Relaxed) < cap {
                            pool.infer(inputs.clone()).await?;
                            completed.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok::<(), floe_inference::Error>(())
                    }));
                }
                for task in tasks {
                    task.await??;
                }
                Ok::<(), anyhow::Error>(())
            })?;
            Ok(completed.load(Ordering::Relaxed))
        })
    }

    /// A and B in alternating slices, totals of each.
    fn alternate(
        &self,
        mut first: impl FnMut() -> anyhow::Result<Measure>,
        mut second: impl FnMut() -> anyhow::Result<Measure>,
    ) -> anyhow::Result<(Measure, Measure)> {
        let (mut a, mut b) = (Measure::default(), Measure::default());
        for _ in 0..ROUNDS {
            a.add(first()?);
            b.add(second()?);
        }
        Ok((a, b))
    }

    fn throughput(&self) -> anyhow::Result<Row> {
        let (bytes, input) = self.model("rec");
        let config = SessionConfig::cpu(self.args.threads);
        let mut session = build_session(&self.runtime, "rec-direct", &bytes, &config)?;
        let shape: Vec<i64> = input.shape().iter().map(|&dim| dim as i64).collect();
        let value = ort::value::Tensor::from_array((shape, input.to_vec::<f32>()?))?;
        // Warm-up, as the pool does.
        session.run(ort::inputs!["x" => &value])?;
        let pool = self.start_pool("rec", 1)?;
        let (slice, cap) = (self.slice(), self.args.max_requests / u64::from(ROUNDS));
        let mut direct_loop = || {
            measure(|| {
                let started = Instant::now();
                let mut count = 0u64;
                while started.elapsed() < slice && count < cap {
                    let outputs = session.run(ort::inputs!["x" => &value])?;
                    let (_, probabilities) = outputs[0].try_extract_tensor::<f32>()?;
                    std::hint::black_box(probabilities.first());
                    count += 1;
                }
                Ok(count)
            })
        };
        // Two callers keep the single replica busy, as the direct loop is.
        let (pooled, direct) = self.alternate(|| self.drive(&pool, input, 2), &mut direct_loop)?;
        Ok(Row {
            scenario: format!(
                "(a) throughput, rec 1×3×48×320, {} threads",
                self.args.threads
            ),
            setting: "pool (1 replica, max_batch 1, 2 callers) vs ort `Session::run` loop".into(),
            result: format!("{:.1} req/s", pooled.per_second()),
            baseline: format!("{:.1} req/s", direct.per_second()),
            ratio: ratios(&pooled, &direct),
        })
    }

    fn batching(&self, model: &str, concurrency: usize) -> anyhow::Result<Row> {
        let (_, input) = self.model(model);
        let unbatched_pool = self.start_pool(model, 1)?;
        let batched_pool = self.start_pool(model, concurrency)?;
        let (batched, unbatched) = self.alternate(
            || self.drive(&batched_pool, input, concurrency),
            || self.drive(&unbatched_pool, input, concurrency),
        )?;
        let stats = batched_pool.stats();
        let shape: Vec<String> = input.shape()[1..].iter().map(usize::to_string).collect();
        Ok(Row {
            scenario: format!(
                "(b) batching, {model} {}, concurrency {concurrency}",
                shape.join("×")
            ),
            setting: format!(
                "max_batch {concurrency} (mean batch {:.1}) vs max_batch 1",
                stats.mean_batch_size
            ),
            result: format!("{:.1} items/s", batched.per_second()),
            baseline: format!("{:.1} items/s", unbatched.per_second()),
            ratio: ratios(&batched, &unbatched),
        })
    }

    fn latency(&self) -> anyhow::Result<Row> {
        let (bytes, input) = self.model("rec");
        let pool = self.start_pool("rec", 1)?;
        let inputs = TensorMap::from([("x".to_string(), input.clone())]);
        let mut warm = Vec::new();
        let started = Instant::now();
        while started.elapsed() < self.budget() && (warm.len() as u64) < self.args.max_requests {
            let request = Instant::now();
            self.tokio.block_on(pool.infer(inputs.clone()))?;
            warm.push(request.elapsed());
        }
        let config = SessionConfig::cpu(self.args.threads);
        let mut cold = Vec::new();
        let started = Instant::now();
        // At least one, at most 10: each costs a model load.
        while cold.is_empty() || (started.elapsed() < self.budget() && cold.len() < 10) {
            let request = Instant::now();
            let mut session = build_session(&self.runtime, "rec-cold", &bytes, &config)?;
            floe_inference::session::run_session(&mut session, &inputs)
                .map_err(|reason| anyhow!(reason))?;
            cold.push(request.elapsed());
        }
        let (warm_p50, cold_p50) = (median_ms(&mut warm), median_ms(&mut cold));
        Ok(Row {
            scenario: "(c) latency, rec, one caller".into(),
            setting: format!(
                "warm pool p50 ({} req) vs new session per request p50 ({} req)",
                warm.len(),
                cold.len()
            ),
            result: format!("{warm_p50:.1} ms"),
            baseline: format!("{cold_p50:.1} ms"),
            ratio: format!("{:.1}× faster |", cold_p50 / warm_p50),
        })
    }

    fn memory(&self) -> anyhow::Result<Row> {
        let shared = self.memory_in_child(Layout::Shared)?;
        let private = self.memory_in_child(Layout::Private)?;
        Ok(Row {
            scenario: format!("(d) memory, rec, {WORKFLOWS} workflows"),
            setting: format!(
                "one shared pool vs {WORKFLOWS} private sessions (RSS growth, own process)"
            ),
            result: format!("{:.1} MiB", mib(shared)),
            baseline: format!("{:.1} MiB", mib(private)),
            ratio: format!("{:.2} |", shared as f64 / private as f64),
        })
    }

    fn memory_in_child(&self, layout: Layout) -> anyhow::Result<u64> {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg("--memory-child")
            .arg(format!("{layout:?}").to_lowercase())
            .arg("--seconds")
            .arg(self.args.seconds.to_string())
            .arg("--threads")
            .arg(self.args.threads.to_string())
            .arg("--ort-lib")
            .arg(self.runtime.library_path());
        if let Some(models) = &self.args.models_dir {
            command.arg("--models-dir").arg(models);
        }
        let output = command.output().context("running the memory child")?;
        if !output.status.success() {
            bail!(
                "memory child ({layout:?}) failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let value = stdout
            .lines()
            .find_map(|line| line.strip_prefix("rss_growth_bytes="))
            .ok_or_else(|| anyhow!("memory child printed no result: {stdout}"))?;
        Ok(value.trim().parse()?)
    }

    /// Baseline after the runtime loaded; then `WORKFLOWS` callers run requests for
    /// `--seconds` through one pool (shared) or one pool each (private).
    fn memory_child(&self, layout: Layout) -> anyhow::Result<()> {
        let baseline = resident_bytes().ok_or_else(|| anyhow!("no /proc/self/statm"))?;
        let pools: Vec<PoolHandle> = match layout {
            Layout::Shared => vec![self.start_pool("rec", WORKFLOWS)?],
            Layout::Private => (0..WORKFLOWS)
                .map(|_| self.start_pool("rec", 1))
                .collect::<anyhow::Result<_>>()?,
        };
        let input = self.rec_input.clone();
        let budget = self.budget();
        let cap = self.args.max_requests;
        self.tokio.block_on(async {
            let mut tasks = Vec::new();
            for workflow in 0..WORKFLOWS {
                let pool = pools[workflow % pools.len()].clone();
                let inputs = TensorMap::from([("x".to_string(), input.clone())]);
                tasks.push(tokio::spawn(async move {
                    let started = Instant::now();
                    let mut sent = 0u64;
                    while started.elapsed() < budget && sent < cap {
                        pool.infer(inputs.clone()).await?;
                        sent += 1;
                    }
                    Ok::<(), floe_inference::Error>(())
                }));
            }
            for task in tasks {
                task.await??;
            }
            Ok::<(), anyhow::Error>(())
        })?;
        let after = resident_bytes().ok_or_else(|| anyhow!("no /proc/self/statm"))?;
        println!("rss_growth_bytes={}", after.saturating_sub(baseline));
        Ok(())
    }
}

/// A text line as the PP-OCR cls and rec models take it, `[1, 3, 48, width]`
/// normalised to [-1, 1]: white with dark vertical strokes. These models cost
/// the same whatever the pixels, so the shape is what matters.
fn line_tensor(width: usize) -> anyhow::Result<Tensor> {
    const CHANNELS: usize = 3;
    const HEIGHT: usize = 48;
    let row: Vec<f32> = (0..width)
        .map(|x| if x % 7 < 2 { -1.0 } else { 1.0 })
        .collect();
    let values = row.repeat(CHANNELS * HEIGHT);
    Ok(Tensor::from_vec(vec![1, CHANNELS, HEIGHT, width], values)?)
}

/// Wall-clock ratio, then the ratio of items per CPU-second (robust to other load).
fn ratios(result: &Measure, baseline: &Measure) -> String {
    format!(
        "{:.2} | {:.2}",
        result.per_second() / baseline.per_second(),
        result.per_cpu_second() / baseline.per_cpu_second()
    )
}

fn median_ms(samples: &mut [Duration]) -> f64 {
    samples.sort_unstable();
    samples
        .get(samples.len() / 2)
        .map_or(0.0, |sample| sample.as_secs_f64() * 1000.0)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// 1-minute load average: other processes competing for the cores skew every row.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn render(bench: &Bench, rows: &[Row], elapsed: Duration, load_before: &str) -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let mut table = format!(
        "floe-inference-bench: {cores} CPU cores (load average {load_before} before, {} after), ONNX Runtime {}, {} s per measurement, {} intra-op threads per session, total {:.0} s\n\n",
        load_average(),
        bench.runtime.library_path().file_name().map_or_else(String::new, |name| name.to_string_lossy().into_owned()),
        bench.args.seconds,
        bench.args.threads,
        elapsed.as_secs_f64()
    );
    table.push_str("| scenario | comparison | floe pool | baseline | ratio | ratio per CPU-s |\n|---|---|---|---|---|---|\n");
    for row in rows {
        table.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            row.scenario, row.setting, row.result, row.baseline, row.ratio
        ));
    }
    table
}
