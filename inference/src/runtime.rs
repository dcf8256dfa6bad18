//! Loading ONNX Runtime: once per process, from an explicit file, never by panic.
//!
//! ort keeps the loaded library and its environment in process globals, and any ort
//! call made before `init_from` would try the default library name and panic if it is
//! absent. So every ort call in this crate takes an `OrtRuntime`, which exists only
//! once the library loaded.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tracing::info;

use crate::error::{Error, Result};

/// Handle to the process's ONNX Runtime; cheap to clone.
#[derive(Clone)]
pub struct OrtRuntime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    library_path: PathBuf,
    build_info: String,
    environment: ort::environment::Environment,
}

impl std::fmt::Debug for OrtRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtRuntime")
            .field("library_path", &self.inner.library_path)
            .finish()
    }
}

// A Mutex rather than a OnceLock: initialisation can fail and must then be retryable
// (OnceLock::get_or_try_init is not stable).
static LOADED: Mutex<Option<OrtRuntime>> = Mutex::new(None);

impl OrtRuntime {
    /// Loads `libonnxruntime` from `library_path` (1.31 or newer) and creates the
    /// process-wide environment. Calling it again with the same file returns the same
    /// runtime; a different file is refused, as a process can hold only one.
    pub fn load(library_path: impl AsRef<Path>) -> Result<OrtRuntime> {
        let requested = library_path.as_ref();
        if !requested.is_file() {
            return Err(Error::RuntimeMissing {
                path: requested.to_path_buf(),
            });
        }
        let canonical = std::fs::canonicalize(requested).map_err(|error| Error::RuntimeLoad {
            path: requested.to_path_buf(),
            reason: error.to_string(),
        })?;

        // A poisoned lock only means another thread panicked mid-load; the Option is
        // still either None or a complete runtime.
        let mut loaded = LOADED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(runtime) = loaded.as_ref() {
            if runtime.inner.library_path == canonical {
                return Ok(runtime.clone());
            }
            return Err(Error::RuntimeConflict {
                loaded: runtime.inner.library_path.clone(),
                requested: canonical,
            });
        }

        let load_error = |reason: String| Error::RuntimeLoad {
            path: canonical.clone(),
            reason,
        };
        let builder = ort::init_from(&canonical).map_err(|error| load_error(error.to_string()))?;
        let environment = builder
            .with_name("floe")
            .build()
            .map_err(|error| load_error(format!("creating the environment: {error}")))?;
        let build_info = ort::info().to_string();
        info!(library = %canonical.display(), build = %build_info, "onnx runtime loaded");

        let runtime = OrtRuntime {
            inner: Arc::new(RuntimeInner {
                library_path: canonical,
                build_info,
                environment,
            }),
        };
        *loaded = Some(runtime.clone());
        Ok(runtime)
    }

    /// The runtime loaded earlier in this process, if any.
    pub fn current() -> Option<OrtRuntime> {
        LOADED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn library_path(&self) -> &Path {
        &self.inner.library_path
    }

    /// ONNX Runtime's build string (version branch, commit, flags).
    pub fn build_info(&self) -> &str {
        &self.inner.build_info
    }

    /// The ort environment, for callers that drive ort directly (benchmarks).
    pub fn environment(&self) -> &ort::environment::Environment {
        &self.inner.environment
    }
}

/// Where the files that `inference/fetch-runtime.sh` installs are found by the tests
/// and the benchmark: `$FLOE_ORT_LIB`, `$FLOE_MODELS_DIR`, `$FLOE_FONT`, else under
/// `<workspace>/.floe-runtime/`. A node takes these paths from its config instead.
#[derive(Clone, Debug)]
pub struct DevRuntimeFiles {
    pub ort_library: PathBuf,
    /// Holds `det.onnx`, `rec.onnx`, `cls.onnx` (PP-OCR).
    pub models_dir: PathBuf,
    pub font: PathBuf,
}

impl DevRuntimeFiles {
    pub fn locate() -> DevRuntimeFiles {
        let default_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.floe-runtime");
        let from_env = |name: &str, default: PathBuf| {
            std::env::var_os(name)
                .filter(|value| !value.is_empty())
                .map(PathBuf::from)
                .unwrap_or(default)
        };
        DevRuntimeFiles {
            ort_library: from_env(
                "FLOE_ORT_LIB",
                default_root.join("onnxruntime/libonnxruntime.so.1.31.1"),
            ),
            models_dir: from_env("FLOE_MODELS_DIR", default_root.join("models/ppocr")),
            font: from_env("FLOE_FONT", default_root.join("fonts/DejaVuSans.ttf")),
        }
    }

    /// Every file present, or an error listing what is missing and how to get it.
    pub fn require(&self) -> std::result::Result<(), String> {
        let wanted = [
            self.ort_library.clone(),
            self.models_dir.join("det.onnx"),
            self.models_dir.join("rec.onnx"),
            self.models_dir.join("cls.onnx"),
            self.font.clone(),
        ];
        let missing: Vec<String> = wanted
            .iter()
            .filter(|path| !path.is_file())
            .map(|path| path.display().to_string())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(format!(
            "missing {}; run inference/fetch-runtime.sh (or set FLOE_ORT_LIB, FLOE_MODELS_DIR, FLOE_FONT)",
            missing.join(", ")
        ))
    }
}
