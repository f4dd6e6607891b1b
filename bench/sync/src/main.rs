//! `sync-bench`: agent → cloud sync throughput and latency, each beside a raw TCP stream carrying
//! the same bytes over the same path in the same run.
//!
//! For every (transport, event size):
//!
//! 1. **raw TCP** (the ceiling): a sender process (started like the agent, so inside the agent's
//!    network namespace when `--agent-prefix` says so) writes N length-prefixed frames of the
//!    agent's average encoded event size to a receiver in this process, which counts them and
//!    answers with a final ack.
//! 2. **drain**: N events are appended to an agent log (the runtime's `Log`, durable, in the
//!    configuration the agent uses), then the real `outrider-agent` process is started on it with
//!    sync to an in-process cloud (`outrider_ingest::Server` over a `LogStore`, mTLS with
//!    certificates made here). Throughput = events ÷ time from the cloud's first commit to the
//!    commit that makes the cloud log hold all N. The cloud's events are then checked: N, each
//!    once.
//! 3. **latency**: with a fresh agent and cloud (steady state), a producer process appends at a
//!    fixed rate over the agent's gRPC `Append`, stamping each event with the wall-clock time the
//!    call started; a subscription on the cloud log takes the difference when the event is
//!    committed there.
//!
//! Helper subcommands (used by `hil-tests/run.sh`): `produce` (append N events through an agent's
//! gRPC API), `wait-drained` (poll an agent's `/metrics` until its outbox is empty), `verify`
//! (check a stopped cloud's store holds every event of a node exactly once).

mod agent;
mod cloud;
mod cpu;
mod drain;
mod payload;
mod pki;
mod produce;
mod raw;
mod report;
mod verify;
mod wait;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Agent → cloud sync benchmark, with a raw TCP baseline in the same run.
#[derive(Debug, Parser)]
#[command(name = "sync-bench", args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    bench: BenchArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Append events through an agent's gRPC API (each event's detail carries its index and the
    /// wall-clock time its append started).
    Produce(produce::ProduceArgs),
    /// Poll an agent's /metrics until its outbox holds nothing pending.
    WaitDrained(wait::WaitArgs),
    /// Check that a cloud store (stopped) holds every event of a node exactly once.
    Verify(verify::VerifyArgs),
    /// Internal: the raw TCP sender of the baseline.
    #[command(hide = true)]
    RawSend(raw::RawSendArgs),
}

/// Which sync transport the agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransportArg {
    Grpc,
    Quic,
    /// gRPC, and QUIC when the agent binary accepts it.
    All,
}

/// A transport that runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    Quic,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::Quic => "quic",
        }
    }
}

/// The benchmark's flags.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Sync transport of the agent.
    #[arg(long, value_enum, default_value = "all")]
    pub transport: TransportArg,

    /// Encoded event size in bytes (repeat or comma-separate; default: 256 and 1024).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(128..=65536))]
    pub size: Vec<u32>,

    /// Events per drain run (default: about 100 MB of events, a fifth with --quick).
    #[arg(long, value_name = "N")]
    pub events: Option<u64>,

    /// Fewer events and a shorter latency phase.
    #[arg(long)]
    pub quick: bool,

    /// Address the in-process cloud (and the raw TCP receiver) listen on; port 0 picks one.
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    pub cloud_listen: SocketAddr,

    /// Command prefix for the processes on the agent side (the agent, the raw TCP sender, the
    /// latency producer), e.g. "ip netns exec NS". Split on whitespace.
    #[arg(long, value_name = "CMD", default_value = "")]
    pub agent_prefix: String,

    /// The outrider-agent binary (default: next to this one).
    #[arg(long, value_name = "PATH")]
    pub agent_bin: Option<PathBuf>,

    /// Events per second of the latency phase.
    #[arg(long, default_value_t = 5000, value_name = "N")]
    pub rate: u32,

    /// Seconds of the latency phase (default 11, long enough to include two of the agent's 5 s
    /// outbox maintenance passes; 3 with --quick; 0 skips it).
    #[arg(long, value_name = "S")]
    pub latency_secs: Option<u64>,

    /// Scratch directory (default target/bench-tmp/sync-<pid>); removed at the end unless --keep.
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,

    /// Keep the scratch directory (agent and cloud data, logs, certificates).
    #[arg(long)]
    pub keep: bool,

    /// Write every latency sample ("<append start, Unix ns> <latency ms>" per line)
    /// to latency-<transport>-<size>.txt in this directory.
    #[arg(long, value_name = "DIR")]
    pub latency_dump: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::RawSend(a)) => raw::send(&a),
        Some(Command::Verify(a)) => verify::run(&a),
        Some(Command::WaitDrained(a)) => wait::run(&a),
        Some(Command::Produce(a)) => runtime().and_then(|rt| rt.block_on(produce::run(a))),
        None => runtime().and_then(|rt| rt.block_on(drain::bench(cli.bench))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sync-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}
