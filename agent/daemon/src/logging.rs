//! The agent's own diagnostics: `tracing` to stderr as text or JSON.

use std::io::IsTerminal as _;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::{ConfigError, LogFormat, LoggingSection};

/// Parses a filter: `LEVEL` or `TARGET=LEVEL` directives separated by commas, e.g.
/// `info,outrider_runtime=debug`.
///
/// This is `tracing_subscriber`'s `Targets` syntax, the target/level subset of `EnvFilter`'s
/// (no span or field filters): it needs no regular-expression engine, which keeps the agent small.
pub fn parse_filter(s: &str) -> Result<Targets, String> {
    s.parse::<Targets>().map_err(|e| e.to_string())
}

/// Installs the global `tracing` subscriber: `logging.level` as the filter unless `RUST_LOG` is
/// set (and not empty), `logging.format` as the output format, written to stderr.
pub fn init(cfg: &LoggingSection) -> Result<(), ConfigError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => parse_filter(&v).map_err(|e| ConfigError::Env {
            var: "RUST_LOG".into(),
            message: format!("{v:?} is not a valid filter: {e}"),
        })?,
        _ => parse_filter(&cfg.level).map_err(|e| ConfigError::Invalid {
            key: "logging.level".into(),
            message: format!("{:?} is not a valid filter: {e}", cfg.level),
        })?,
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let installed = match cfg.format {
        LogFormat::Text => tracing_subscriber::registry()
            .with(fmt.with_ansi(std::io::stderr().is_terminal()))
            .with(filter)
            .try_init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(fmt.json())
            .with(filter)
            .try_init(),
    };
    // Already installed (e.g. by a test harness): keep the existing one.
    let _ = installed;
    Ok(())
}
