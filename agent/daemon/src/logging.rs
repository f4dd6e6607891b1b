//! The agent's own diagnostics: `tracing` to stderr as text or JSON.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

use crate::config::{ConfigError, LogFormat, LoggingSection};

/// Installs the global `tracing` subscriber: `logging.level` as the filter unless `RUST_LOG` is
/// set (and not empty), `logging.format` as the output format, written to stderr.
pub fn init(cfg: &LoggingSection) -> Result<(), ConfigError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => EnvFilter::try_new(&v).map_err(|e| ConfigError::Env {
            var: "RUST_LOG".into(),
            message: format!("{v:?} is not a valid filter: {e}"),
        })?,
        _ => EnvFilter::try_new(&cfg.level).map_err(|e| ConfigError::Invalid {
            key: "logging.level".into(),
            message: format!("{:?} is not a valid filter: {e}", cfg.level),
        })?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match cfg.format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    // Already installed (e.g. by a test harness): keep the existing one.
    let _ = installed;
    Ok(())
}
