//! floe-tools: binaries around the server, not part of it — the demo, the
//! benchmarks (cluster, store, inference hop), and the example and OCR
//! workers, which use only the public API (`floe-api`).

/// Logs to stderr at `level` unless `FLOE_LOG` says otherwise, as the
/// `floe` binary does.
pub fn init_logging(level: &str) {
    let filter = std::env::var("FLOE_LOG").unwrap_or_else(|_| level.to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
