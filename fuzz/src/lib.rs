//! Fuzz targets for floe's input decoders: every way bytes from outside
//! (a client, a peer, a file on disk) reach floe's parsers.
//!
//! Each target feeds the bytes to floe's real entry point and checks what
//! must hold for any input: no panic, errors come back as values with
//! bounded messages, evaluation stays within its limits, and codecs round
//! trip where they promise to. A broken promise is a panic, which the
//! coverage-guided driver (`fuzz/afl/`) records as a crash and the tests
//! (`tests/corpus.rs`) report as a failure.

pub mod mutate;

use std::fmt::Display;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use floe_engine::expr::{Expression, MAX_RESULT_BYTES};
use floe_inference::tensor::{DType, TensorMap};
use floe_inference::tensor_json::{tensors_from_json, tensors_to_json, Encoding};
use floe_node::config::NodeConfig;
use floe_node::error::MAX_STATUS_MESSAGE_BYTES;
use floe_node::peer_api::{self, PeerRequest, PeerResponse};
use floe_raft::tls::{identity_from_cert, TlsMaterial};
use floe_state::TypeConfig;
use floe_storage::snapshot_fuzzing;
use rustls::pki_types::CertificateDer;
use serde_json::{json, Value};

/// A fuzz target: bytes in, a panic on a broken promise.
pub type Target = fn(&[u8]);

/// Every target, by the name `make fuzz FUZZ_TARGET=<name>` and the corpus
/// folder `fuzz/corpus/<name>/` use.
pub const TARGETS: &[(&str, Target)] = &[
    ("flow", flow),
    ("expr", expr),
    ("peer_frame", peer_frame),
    ("snapshot", snapshot),
    ("tensor_json", tensor_json),
    ("config", config),
    ("cert", cert),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS
        .iter()
        .find(|(known, _)| *known == name)
        .map(|(_, target)| *target)
}

/// Where the corpus of `name` lives in the repository.
pub fn corpus_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name)
}

static TIME_BOX: OnceLock<Duration> = OnceLock::new();

/// Makes the targets fail when one call of a bounded operation (compiling
/// and evaluating an expression) takes longer than `limit`. Only the fuzz
/// driver sets it, in a release build: tests run on shared machines in
/// debug builds, where a wall-clock bound would make them flaky.
pub fn set_time_box(limit: Duration) {
    let _ = TIME_BOX.set(limit);
}

fn check_time_box(what: &str, started: Instant) {
    if let Some(limit) = TIME_BOX.get() {
        let took = started.elapsed();
        assert!(
            took <= *limit,
            "{what} took {took:?}, more than the time box of {limit:?}"
        );
    }
}

/// An error message a client may see: floe quotes user text through
/// `quote_bounded` and cuts a status message to [`MAX_STATUS_MESSAGE_BYTES`]
/// only as the last line of defence, so one error must fit within it.
fn assert_bounded(what: &str, message: impl Display) {
    let message = message.to_string();
    assert!(
        message.len() <= MAX_STATUS_MESSAGE_BYTES,
        "{what} is {} bytes, more than {MAX_STATUS_MESSAGE_BYTES}: {}…",
        message.len(),
        message.chars().take(200).collect::<String>()
    );
}

/// A flow definition as the API receives it. An accepted definition is
/// stored as its canonical bytes and read back with `parse_flow`, so those
/// bytes must parse to the same definition and be a fixed point.
pub fn flow(data: &[u8]) {
    match floe_engine::parse_new_flow(data) {
        Ok(definition) => {
            let canonical = floe_engine::canonical_bytes(&definition);
            let stored = match floe_engine::parse_flow(&canonical) {
                Ok(stored) => stored,
                Err(errors) => {
                    panic!("canonical bytes of an accepted flow are refused: {errors:?}")
                }
            };
            assert_eq!(
                stored, definition,
                "stored flow differs from the accepted one"
            );
            assert_eq!(
                floe_engine::canonical_bytes(&stored),
                canonical,
                "canonical bytes are not a fixed point"
            );
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "a refused flow names no problem");
            for error in &errors {
                assert_bounded("flow validation error", error);
            }
        }
    }
}

/// Variables for expressions whose input carries none of its own.
fn default_variables() -> Value {
    json!({
        "input": {
            "n": 7,
            "x": 2.5,
            "text": "hello world",
            "flag": true,
            "items": [1, 2, 3, 4],
            "words": ["a", "bb", "ccc"],
            "map": {"k": "v", "n": 1},
            "nothing": null,
            "l": [0, 1, 2],
            "s": "abc",
            "m": {"a": 1, "k": "v"},
            "i": 5,
            "f": 1.5,
            "t": true
        },
        "steps": {
            "first": {"output": {"score": 0.9, "label": "invoice", "pages": [1, 2]}},
            "second": {"output": {"ok": true}}
        },
        "item": {"id": 3},
        "error": {"kind": "timeout", "message": "took too long"}
    })
}

/// A CEL expression, then optionally a NUL byte and a JSON object of
/// variables. Compiling and evaluating must finish within the time box,
/// give a result within [`MAX_RESULT_BYTES`], give the same outcome twice
/// (every replica evaluates it in apply), and word errors within bounds.
pub fn expr(data: &[u8]) {
    let (source, variables) = match data.iter().position(|byte| *byte == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..]),
        None => (data, &[][..]),
    };
    let Ok(source) = std::str::from_utf8(source) else {
        return;
    };
    let variables = serde_json::from_slice::<Value>(variables)
        .ok()
        .filter(Value::is_object)
        .unwrap_or_else(default_variables);
    let started = Instant::now();
    let compiled = Expression::compile(source);
    check_time_box("compiling an expression", started);
    let expression = match compiled {
        Ok(expression) => expression,
        Err(message) => {
            assert_bounded("expression compile error", message);
            return;
        }
    };
    let started = Instant::now();
    let outcome = expression.evaluate(&variables);
    check_time_box("evaluating an expression", started);
    match &outcome {
        Ok(value) => {
            let size = serde_json::to_vec(value).map_or(0, |bytes| bytes.len());
            assert!(
                size <= MAX_RESULT_BYTES,
                "result of {size} bytes passed the {MAX_RESULT_BYTES} byte limit"
            );
        }
        Err(error) => assert_bounded("expression evaluation error", error),
    }
    assert_eq!(
        expression.evaluate(&variables),
        outcome,
        "evaluating twice gave two outcomes"
    );
}

/// What a peer can send: the first byte picks the decoder, the rest is
/// its input. A Raft request or response frame (with its length prefix),
/// or a node-layer request or response (the `App` payload). What decodes
/// must encode to bytes that decode and encode to the same bytes again.
pub fn peer_frame(data: &[u8]) {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    match selector % 4 {
        0 => assert_fixed_point(
            "raft request",
            bytes,
            floe_raft::wire::reencode_request::<TypeConfig>,
        ),
        1 => assert_fixed_point("raft response", bytes, floe_raft::wire::reencode_response),
        2 => assert_fixed_point("peer request", bytes, reencode_peer_message::<PeerRequest>),
        _ => assert_fixed_point(
            "peer response",
            bytes,
            reencode_peer_message::<PeerResponse>,
        ),
    }
}

fn reencode_peer_message<T>(bytes: &[u8]) -> Result<Vec<u8>, floe_node::error::ApiError>
where
    T: serde::Serialize + for<'de> serde::Deserialize<'de>,
{
    let message: T = peer_api::decode(bytes)?;
    peer_api::encode(&message)
}

fn assert_fixed_point<E: Display>(
    what: &str,
    bytes: &[u8],
    reencode: impl Fn(&[u8]) -> Result<Vec<u8>, E>,
) {
    let first = match reencode(bytes) {
        Ok(first) => first,
        Err(error) => {
            assert_bounded(what, error);
            return;
        }
    };
    let second = match reencode(&first) {
        Ok(second) => second,
        Err(error) => panic!("{what} as encoded does not decode: {error}"),
    };
    assert_eq!(first, second, "{what}: encoding is not a fixed point");
}

/// A snapshot file, as a follower receives it from its leader and reads it
/// before installing. One that reads in full (its SHA-256 matches) must be
/// exactly what the writer writes for its contents.
pub fn snapshot(data: &[u8]) {
    match snapshot_fuzzing::read(data) {
        Ok((meta, records)) => {
            let written = match snapshot_fuzzing::write(&meta, &records) {
                Ok(written) => written,
                Err(error) => panic!("a snapshot that was read cannot be written: {error}"),
            };
            assert!(written == data, "a snapshot read and written again differs");
        }
        Err(error) => assert_bounded("snapshot error", error),
    }
}

/// Inference inputs as JSON text (text that is not JSON is skipped: the
/// API parses it first). Tensors read must come back the same from their
/// base64 form, and from their list form where JSON can hold every value.
pub fn tensor_json(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let tensors = match tensors_from_json(&value, "$") {
        Ok(tensors) => tensors,
        Err(error) => {
            assert_bounded("tensor JSON error", error);
            return;
        }
    };
    for encoding in [Encoding::Base64, Encoding::List] {
        if encoding == Encoding::List && !list_form_is_exact(&tensors) {
            continue;
        }
        let written = tensors_to_json(&tensors, encoding);
        let read = match tensors_from_json(&written, "$") {
            Ok(read) => read,
            Err(error) => panic!("tensors written as {encoding:?} are refused: {error}"),
        };
        assert!(
            read == tensors,
            "tensors written as {encoding:?} read back different"
        );
    }
}

/// The list form writes NaN and infinities as null and a bool as `true` or
/// `false`, so it is exact only without them and with bools of 0 and 1.
fn list_form_is_exact(tensors: &TensorMap) -> bool {
    tensors.values().all(|tensor| {
        let data = tensor.data();
        match tensor.dtype() {
            DType::F32 => data
                .chunks_exact(4)
                .all(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite()),
            DType::F64 => data.chunks_exact(8).all(|b| {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(b);
                f64::from_le_bytes(bytes).is_finite()
            }),
            DType::Bool => data.iter().all(|byte| *byte <= 1),
            _ => true,
        }
    })
}

/// Writes `data` to a file of this thread's own and calls `read` on it:
/// the config and certificate loaders read files.
fn with_file<T>(name: &str, data: &[u8], read: impl FnOnce(&std::path::Path) -> T) -> Option<T> {
    thread_local! {
        static DIR: Option<tempfile::TempDir> = tempfile::tempdir().ok();
    }
    DIR.with(|dir| {
        let path = dir.as_ref()?.path().join(name);
        std::fs::write(&path, data).ok()?;
        Some(read(&path))
    })
}

/// A node's TOML config file, loaded the way `floe serve` loads it (no
/// environment variables, no `--set`). A config that loads must serialise
/// to TOML that loads as the same config.
pub fn config(data: &[u8]) {
    let no_env: Vec<(String, String)> = Vec::new();
    let Some(loaded) = with_file("floe.toml", data, |path| {
        NodeConfig::load(Some(path), no_env, &[])
    }) else {
        return;
    };
    let Ok(config) = loaded else {
        return;
    };
    let text = match toml::to_string(&config) {
        Ok(text) => text,
        Err(error) => panic!("a loaded config cannot be written as TOML: {error}"),
    };
    let Some(reloaded) = with_file("floe.toml", text.as_bytes(), |path| {
        NodeConfig::load(Some(path), Vec::<(String, String)>::new(), &[])
    }) else {
        return;
    };
    match reloaded {
        Ok(reloaded) => assert_eq!(reloaded, config, "config written and loaded again differs"),
        Err(error) => panic!("a loaded config written as TOML does not load: {error}"),
    }
}

/// Certificates: the bytes as a peer's DER certificate (the identity a
/// connection carries), and, when they look like PEM, as the CA,
/// certificate and key files a node loads.
pub fn cert(data: &[u8]) {
    if let Err(error) = identity_from_cert(&CertificateDer::from(data)) {
        assert_bounded("certificate identity error", error);
    }
    if !data.windows(5).any(|window| window == b"-----") {
        return;
    }
    let _ = with_file("node.pem", data, |path| {
        if let Ok(material) = TlsMaterial::load(path, path, path) {
            let _ = material.identity();
        }
    });
}
