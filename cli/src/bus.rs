//! `outrider bus ...`: event-bus tools. `test-event-pattern` works offline, as
//! `aws events test-event-pattern` does: it prints `{"Result":true}` or `{"Result":false}` and
//! exits 0; an invalid pattern prints `InvalidEventPatternException: <message>` on stderr and exits
//! 2; an event that is not a JSON object prints `ValidationException: Parameter Event is not
//! valid.` and exits 2.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use outrider_runtime::pattern::{Pattern, PatternError};
use serde_json::Value;

/// `outrider bus ...`.
#[derive(Debug, Subcommand)]
pub enum BusCommand {
    /// Test whether an event matches an EventBridge event pattern (offline); prints
    /// {"Result":true} or {"Result":false}.
    TestEventPattern(TestEventPatternArgs),
}

/// `outrider bus test-event-pattern`.
#[derive(Debug, Args)]
pub struct TestEventPatternArgs {
    /// The event pattern as JSON, or @PATH to read it from a file.
    #[arg(long, value_name = "JSON")]
    pub event_pattern: String,
    /// The event (EventBridge's JSON view, an object) as JSON, or @PATH to read it from a file.
    #[arg(long, value_name = "JSON")]
    pub event: String,
}

/// Runs a `bus` command.
pub fn run(command: &BusCommand) -> anyhow::Result<ExitCode> {
    match command {
        BusCommand::TestEventPattern(args) => test_event_pattern(args),
    }
}

/// Reads `@path` arguments from files; other arguments are the value itself.
fn argument(value: &str) -> anyhow::Result<String> {
    match value.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("cannot read {path}")),
        None => Ok(value.to_owned()),
    }
}

fn test_event_pattern(args: &TestEventPatternArgs) -> anyhow::Result<ExitCode> {
    let pattern_text = argument(&args.event_pattern)?;
    let event_text = argument(&args.event)?;
    let pattern = match Pattern::parse(&pattern_text) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{}: {e}", PatternError::CODE);
            return Ok(ExitCode::from(2));
        }
    };
    let event = match serde_json::from_str::<Value>(&event_text) {
        Ok(v) if v.is_object() => v,
        _ => {
            eprintln!("ValidationException: Parameter Event is not valid.");
            return Ok(ExitCode::from(2));
        }
    };
    println!(
        "{}",
        serde_json::json!({ "Result": pattern.matches(&event) })
    );
    Ok(ExitCode::SUCCESS)
}
