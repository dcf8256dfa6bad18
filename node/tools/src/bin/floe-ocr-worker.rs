//! The image work of the OCR flow (`docs/examples/flows/ocr.json`) as a worker:
//! blocks `ocr.prepare`, `ocr.lines`, `ocr.orient` and `ocr.decode`, each one of
//! `floe_ocr::stages`. The three model runs between them are the
//! flow's `inference` steps, served by the nodes' pools, not by this worker.
//!
//! At start-up the worker reads the models' input names and the rec model's
//! character list (its `character` metadata); it never runs a model itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use floe_api::worker::{run_worker, Handler, Task, TaskError, WorkerConnection, WorkerOptions};
use floe_inference::{inspect_model, DevRuntimeFiles, ModelSignature, OrtRuntime};
use floe_ocr::stages::{self, StageError};
use floe_ocr::{Charset, OcrOptions};
use futures::future::BoxFuture;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::info;

#[derive(Parser)]
#[command(about = "floe worker for the OCR flow's image stages")]
struct Args {
    #[command(flatten)]
    connection: WorkerConnection,
    #[arg(long, default_value = "ocr-worker")]
    id: String,
    /// Stages run at once (each on a blocking thread).
    #[arg(long, default_value_t = 4)]
    concurrency: u32,
    /// PP-OCR det model (default: `det.onnx` in the dev runtime's models dir).
    #[arg(long)]
    det_model: Option<PathBuf>,
    /// PP-OCR cls model (default: `cls.onnx` there).
    #[arg(long)]
    cls_model: Option<PathBuf>,
    /// PP-OCR rec model, whose `character` metadata is the charset (default: `rec.onnx` there).
    #[arg(long)]
    rec_model: Option<PathBuf>,
    /// libonnxruntime (default: `$FLOE_ORT_LIB`, else the dev runtime's copy).
    #[arg(long)]
    ort_lib: Option<PathBuf>,
    /// `OcrOptions` as JSON (thresholds, det side limits, rec widths); default:
    /// the defaults. A smaller `det_preprocess.max_side` makes smaller det tensors.
    #[arg(long)]
    options: Option<PathBuf>,
}

/// A block this worker serves.
#[derive(Clone, Copy, Debug)]
enum Stage {
    Prepare,
    Lines,
    Orient,
    Decode,
}

impl Stage {
    const ALL: [Stage; 4] = [Stage::Prepare, Stage::Lines, Stage::Orient, Stage::Decode];

    fn block(self) -> &'static str {
        match self {
            Stage::Prepare => "ocr.prepare",
            Stage::Lines => "ocr.lines",
            Stage::Orient => "ocr.orient",
            Stage::Decode => "ocr.decode",
        }
    }

    fn from_block(block: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|stage| stage.block() == block)
    }
}

/// What the stages need from the models: input names and the charset.
struct OcrModels {
    det_input: String,
    cls_input: String,
    rec_input: String,
    charset: Charset,
}

impl OcrModels {
    fn load(runtime: &OrtRuntime, det: &Path, cls: &Path, rec: &Path) -> anyhow::Result<OcrModels> {
        let det_signature = signature(runtime, det)?;
        let cls_signature = signature(runtime, cls)?;
        let rec_signature = signature(runtime, rec)?;
        let characters = rec_signature.metadata.get("character").with_context(|| {
            format!(
                "{}: the rec model has no `character` metadata",
                rec.display()
            )
        })?;
        let charset =
            Charset::from_metadata(characters).with_context(|| format!("{}", rec.display()))?;
        Ok(OcrModels {
            det_input: single_input_name(&det_signature, det)?,
            cls_input: single_input_name(&cls_signature, cls)?,
            rec_input: single_input_name(&rec_signature, rec)?,
            charset,
        })
    }
}

fn signature(runtime: &OrtRuntime, path: &Path) -> anyhow::Result<ModelSignature> {
    let bytes =
        std::fs::read(path).with_context(|| format!("model {}: cannot read", path.display()))?;
    let name = path.display().to_string();
    Ok(inspect_model(runtime, &name, &bytes)?)
}

fn single_input_name(signature: &ModelSignature, path: &Path) -> anyhow::Result<String> {
    match &signature.inputs[..] {
        [input] => Ok(input.name.clone()),
        inputs => anyhow::bail!(
            "model {}: expected one input, it has {}",
            path.display(),
            inputs.len()
        ),
    }
}

fn read_options(path: &Path) -> anyhow::Result<OcrOptions> {
    let bytes =
        std::fs::read(path).with_context(|| format!("options {}: cannot read", path.display()))?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("options {}: not valid OcrOptions", path.display()))
}

struct OcrStages {
    models: OcrModels,
    options: OcrOptions,
}

impl OcrStages {
    fn run(&self, stage: Stage, input: &Value) -> Result<Value, StageError> {
        let (models, options) = (&self.models, &self.options);
        match stage {
            Stage::Prepare => stages::prepare(input, options, &models.det_input),
            Stage::Lines => stages::lines(input, options, &models.cls_input),
            Stage::Orient => stages::orient(input, options, &models.rec_input),
            Stage::Decode => stages::decode(input, options, &models.charset),
        }
    }
}

/// Serves the stages; each runs on a blocking thread (image decoding, resizing
/// and PNG encoding are CPU work).
#[derive(Clone)]
struct OcrHandler {
    stages: Arc<OcrStages>,
}

impl Handler for OcrHandler {
    fn run(&self, task: Task) -> BoxFuture<'static, Result<Value, TaskError>> {
        let stages = Arc::clone(&self.stages);
        Box::pin(async move {
            let Some(stage) = Stage::from_block(&task.block) else {
                return Err(TaskError {
                    message: format!("this worker does not serve block {}", task.block),
                    retryable: false,
                });
            };
            let input = task.input;
            let outcome = tokio::task::spawn_blocking(move || stages.run(stage, &input)).await;
            match outcome {
                Ok(Ok(output)) => Ok(output),
                // The same input fails the same way: retrying cannot help.
                Ok(Err(error)) => Err(TaskError {
                    message: format!("{}: {error}", stage.block()),
                    retryable: false,
                }),
                Err(join_error) => Err(TaskError {
                    message: format!("{}: the stage did not finish: {join_error}", stage.block()),
                    retryable: true,
                }),
            }
        })
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    floe_tools::init_logging("info");
    let dev_files = DevRuntimeFiles::locate();
    let ort_lib = args.ort_lib.clone().unwrap_or(dev_files.ort_library);
    let model_path = |given: &Option<PathBuf>, file: &str| {
        given
            .clone()
            .unwrap_or_else(|| dev_files.models_dir.join(file))
    };
    let (det, cls, rec) = (
        model_path(&args.det_model, "det.onnx"),
        model_path(&args.cls_model, "cls.onnx"),
        model_path(&args.rec_model, "rec.onnx"),
    );
    // Start-up work (file reads, model inspection) runs before the async runtime.
    let runtime = OrtRuntime::load(&ort_lib)?;
    let models = OcrModels::load(&runtime, &det, &cls, &rec)?;
    info!(
        det_input = %models.det_input,
        cls_input = %models.cls_input,
        rec_input = %models.rec_input,
        classes = models.charset.len(),
        "ocr models inspected"
    );
    let options = match &args.options {
        Some(path) => read_options(path)?,
        None => OcrOptions::default(),
    };
    let handler = OcrHandler {
        stages: Arc::new(OcrStages { models, options }),
    };
    let worker_options = WorkerOptions {
        client: args.connection.client_options(),
        worker_id: args.id,
        blocks: Stage::ALL
            .iter()
            .map(|stage| stage.block().to_string())
            .collect(),
        concurrency: args.concurrency,
        labels: Default::default(),
    };
    tokio::runtime::Runtime::new()?.block_on(async move {
        let cancel = CancellationToken::new();
        let on_signal = cancel.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            on_signal.cancel();
        });
        run_worker(worker_options, Arc::new(handler), cancel).await
    })
}
