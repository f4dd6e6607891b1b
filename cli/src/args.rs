//! The command line: `outrider [--agent URL] <command>`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand};
use outrider_runtime::ExpectedVersion;

use crate::certs;

/// Default address of the agent's gRPC API.
pub const DEFAULT_AGENT: &str = "http://127.0.0.1:7400";

/// Operate an Outrider edge agent: append and read events, follow the log, check the agent's
/// status, inspect a log directory offline, and make certificates for mTLS.
#[derive(Debug, Parser)]
#[command(name = "outrider", version, propagate_version = true)]
pub struct Cli {
    /// URL of the agent's gRPC API.
    #[arg(long, global = true, env = "OUTRIDER_AGENT", default_value = DEFAULT_AGENT, value_name = "URL")]
    pub agent: String,

    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Append, read and follow events through the agent.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Show the agent's log positions and outbox figures as JSON.
    Status,
    /// Work on a log data directory offline (the agent must not be running on it).
    #[command(subcommand)]
    Log(LogCommand),
    /// Make certificates for mTLS between agents and the cloud: a private CA with the cloud
    /// server's certificate, and node client certificates (for on-prem and development).
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Event-bus tools (offline): test an EventBridge event pattern against an event.
    #[command(subcommand)]
    Bus(crate::bus::BusCommand),
    /// Start a local cloud and a local agent together (embedded defaults, mTLS on loopback), with
    /// a demo producer, a live status each second, and an exactly-once check at the end.
    Dev(crate::dev::DevArgs),
}

/// `outrider events ...`.
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Append events to a stream, atomically, and print their positions and versions as JSON.
    Put(PutArgs),
    /// Read events of one stream or of the whole log and print them as JSON lines.
    Read(ReadArgs),
    /// Follow the log or one stream: print events as JSON lines as they are appended, until Ctrl-C.
    Tail(TailArgs),
}

/// `outrider log ...`.
#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Summarise a log directory (streams, sizes, outbox cursors) after verifying every checksum;
    /// exits 1 if corruption was found.
    Inspect(InspectArgs),
}

/// `outrider certs ...`.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a CA (ca.pem, ca-key.pem) and a server certificate signed by it (server.pem,
    /// server-key.pem) in DIR.
    Init(CertsInitArgs),
    /// Issue node NODE a client certificate (NODE.pem, NODE-key.pem) signed by the CA in DIR; the
    /// node's identity is the certificate's URI urn:outrider:node:NODE.
    Issue(CertsIssueArgs),
}

/// `outrider certs init`.
#[derive(Debug, Args)]
pub struct CertsInitArgs {
    /// Directory to write to; created with mode 0700 if missing.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,

    /// DNS name of the server certificate (repeat for more).
    #[arg(long = "server-name", value_name = "NAME", default_values_t = [String::from("localhost")])]
    pub server_names: Vec<String>,

    /// IP address of the server certificate (repeat for more).
    #[arg(long = "ip", value_name = "IP", default_values_t = [IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)])]
    pub ips: Vec<IpAddr>,

    /// Validity of the server certificate in days (the CA's is 3650).
    #[arg(long, value_name = "N", default_value_t = certs::DEFAULT_SERVER_DAYS, value_parser = clap::value_parser!(u32).range(1..=i64::from(certs::CA_DAYS)))]
    pub days: u32,

    /// Overwrite existing files. This makes a new CA: certificates issued by the old one stop
    /// being trusted.
    #[arg(long)]
    pub force: bool,
}

/// `outrider certs issue`.
#[derive(Debug, Args)]
pub struct CertsIssueArgs {
    /// The node's name: 1 to 128 characters of A-Z a-z 0-9 . _ -
    #[arg(value_parser = parse_node_name)]
    pub node: String,

    /// Directory of the CA (ca.pem, ca-key.pem), as made by `outrider certs init`.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,

    /// Validity in days.
    #[arg(long, value_name = "N", default_value_t = certs::DEFAULT_NODE_DAYS, value_parser = clap::value_parser!(u32).range(1..))]
    pub days: u32,

    /// Directory to write NODE.pem and NODE-key.pem to (default: DIR); created with mode 0700
    /// if missing.
    #[arg(long, value_name = "OUT")]
    pub out_dir: Option<PathBuf>,

    /// Overwrite an existing certificate and key of this node.
    #[arg(long)]
    pub force: bool,
}

/// `outrider events put`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("input").required(true).args(["detail", "file"])))]
pub struct PutArgs {
    /// Stream to append to.
    #[arg(long)]
    pub stream: String,

    /// The stream's expected version: `any`, `no-stream`, `exists`, or the version number of
    /// its last event. A mismatch appends nothing and fails.
    #[arg(long, default_value = "any", value_parser = parse_expected, value_name = "any|no-stream|exists|N")]
    pub expected: ExpectedVersion,

    /// Outbox priority class of the events (default: the agent's default class).
    #[arg(long, value_name = "CLASS")]
    pub priority: Option<String>,

    /// Source of the event given with --detail.
    #[arg(long, requires = "detail", value_name = "SRC")]
    pub source: Option<String>,

    /// Detail type of the event given with --detail.
    #[arg(long, requires = "detail", value_name = "T")]
    pub detail_type: Option<String>,

    /// Detail of one event, a JSON object; `@PATH` reads it from a file. Needs --source and
    /// --detail-type.
    #[arg(long, requires_all = ["source", "detail_type"], value_name = "JSON|@PATH")]
    pub detail: Option<String>,

    /// Id of the event given with --detail (default: the agent assigns one). Re-sending an event
    /// with the same id to the same stream is an idempotent retry.
    #[arg(long, requires = "detail")]
    pub id: Option<String>,

    /// JSON-lines file (`-` for stdin): one event per line, as EventBridge delivers it, as a
    /// PutEvents entry, or as a minimal {"source", "detail-type", "detail"} object. All lines
    /// are appended in one atomic append.
    #[arg(long, value_name = "FILE.jsonl")]
    pub file: Option<PathBuf>,
}

/// `outrider events read`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["stream", "all"])))]
pub struct ReadArgs {
    /// Stream to read.
    #[arg(long)]
    pub stream: Option<String>,

    /// Read the whole log in global position order instead of one stream.
    #[arg(long)]
    pub all: bool,

    /// First version to read (with --stream; with --backwards the newest one), or first
    /// position (with --all).
    #[arg(long, value_name = "N")]
    pub from: Option<u64>,

    /// Read the stream newest first.
    #[arg(long, conflicts_with = "all")]
    pub backwards: bool,

    /// Stop after this many events (default: read to the end).
    #[arg(long, value_name = "N")]
    pub max: Option<u64>,
}

/// `outrider events tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// Only events of this stream.
    #[arg(long)]
    pub stream: Option<String>,

    /// Start at this global position (0: the whole log). Default: only events appended from now on.
    #[arg(long, value_name = "POS")]
    pub from: Option<u64>,

    /// Only events matching this EventBridge event pattern (JSON, or @FILE), filtered by the agent.
    #[arg(long, value_name = "JSON")]
    pub pattern: Option<String>,
}

/// `outrider log inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The log's data directory (the agent's `data_dir`).
    pub dir: PathBuf,

    /// The agent's configuration file, for its outbox classes and destinations (cursors are
    /// shown by name). `OUTRIDER_*` environment overrides apply as for the agent.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Parses `any`, `no-stream`, `exists` or a version number.
pub fn parse_expected(s: &str) -> Result<ExpectedVersion, String> {
    match s {
        "any" => Ok(ExpectedVersion::Any),
        "no-stream" => Ok(ExpectedVersion::NoStream),
        "exists" => Ok(ExpectedVersion::StreamExists),
        n => n
            .parse()
            .map(ExpectedVersion::Exact)
            .map_err(|_| format!("{s:?} is not any, no-stream, exists or a version number")),
    }
}

/// Checks a node name (see [`certs::validate_node_name`]).
pub fn parse_node_name(s: &str) -> Result<String, String> {
    certs::validate_node_name(s)
        .map(|()| s.to_owned())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn expected_versions() {
        assert_eq!(parse_expected("any"), Ok(ExpectedVersion::Any));
        assert_eq!(parse_expected("no-stream"), Ok(ExpectedVersion::NoStream));
        assert_eq!(parse_expected("exists"), Ok(ExpectedVersion::StreamExists));
        assert_eq!(parse_expected("12"), Ok(ExpectedVersion::Exact(12)));
        assert!(parse_expected("-1").is_err());
        assert!(parse_expected("some").is_err());
    }
}
