//! `outrider`: the Outrider operator CLI.
//!
//! Exit codes: 0 on success, 1 on failure (and for `log inspect`, when corruption was found),
//! 2 for a bad command line. gRPC errors print as `error: <CODE>: <message>`.

mod args;
mod bus;
mod certs;
mod client;
mod dev;
mod events;
mod inspect;
mod render;
mod status;

use std::future::Future;
use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command, EventsCommand, LogCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let agent = cli.agent.as_str();
    let result = match cli.command {
        // Offline and blocking: no async runtime.
        Command::Log(LogCommand::Inspect(args)) => inspect::run(&args),
        Command::Certs(command) => certs::run(&command),
        Command::Bus(command) => bus::run(&command),
        Command::Dev(args) => dev::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Events(EventsCommand::Put(a)) => online(events::put(agent, a)),
        Command::Events(EventsCommand::Read(a)) => online(events::read(agent, a)),
        Command::Events(EventsCommand::Tail(a)) => online(events::tail(agent, a)),
        Command::Status => online(status::status(agent)),
    };
    result.unwrap_or_else(|e| report(&e))
}

/// Runs a command that talks to the agent on a single-threaded runtime.
fn online(command: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(command)?;
    Ok(ExitCode::SUCCESS)
}

/// Prints an error and picks the exit code.
fn report(e: &anyhow::Error) -> ExitCode {
    // A closed pipe (`outrider events read ... | head`) is not a failure.
    if e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    {
        return ExitCode::SUCCESS;
    }
    match e.downcast_ref::<tonic::Status>() {
        Some(s) => eprintln!("error: {}: {}", client::code_name(s.code()), s.message()),
        None => eprintln!("error: {e:#}"),
    }
    ExitCode::FAILURE
}
