//! `outrider-agent`: the Outrider edge agent daemon.
//!
//! Exit codes: 0 after a clean shutdown (SIGTERM or SIGINT), 1 when the agent fails, 2 for a
//! bad configuration or command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use outrider_agent::{AgentConfig, ConfigError};

/// Worker threads of the async runtime: the agent is I/O bound and must stay small.
const WORKER_THREADS: usize = 2;
/// Threads for blocking work (reads, open, close); idle ones exit.
const MAX_BLOCKING_THREADS: usize = 16;

/// The Outrider edge agent: a local event log and outbox with a gRPC API.
#[derive(Debug, Parser)]
#[command(name = "outrider-agent", version)]
struct Cli {
    /// Configuration file (TOML, see deploy/config/agent.toml). Without it, built-in defaults
    /// apply. OUTRIDER_<KEY> and OUTRIDER_<TABLE>__<KEY> environment variables override keys.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,

    /// Print the effective configuration (file, environment and defaults merged) as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

fn config_error(e: &ConfigError) -> ExitCode {
    eprintln!("outrider-agent: configuration error: {e}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match AgentConfig::load(cli.config.as_deref()) {
        Ok(cfg) => cfg,
        Err(e) => return config_error(&e),
    };
    if cli.print_config {
        return match cfg.to_toml() {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => config_error(&e),
        };
    }
    if let Err(e) = outrider_agent::logging::init(&cfg.logging) {
        return config_error(&e);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .thread_name("outrider-agent")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("outrider-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        "outrider-agent starting"
    );
    match runtime.block_on(outrider_agent::run(cfg, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "outrider-agent failed");
            eprintln!("outrider-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the agent");
            None
        }
    };
    let sigterm = async {
        match term.as_mut() {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    let sigint = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT; only SIGTERM stops the agent");
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = sigterm => tracing::info!("SIGTERM received"),
        () = sigint => tracing::info!("SIGINT received"),
    }
}
