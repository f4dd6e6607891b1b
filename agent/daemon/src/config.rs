//! The agent's configuration: `agent.toml` (see `deploy/config/agent.toml`), environment
//! overrides, and its conversion to the runtime's [`LogConfig`].
//!
//! Sources, lowest precedence first:
//!
//! 1. built-in defaults ([`AgentConfig::default`]), so the agent runs with no file at all;
//! 2. the TOML file given with `--config`;
//! 3. environment variables: `OUTRIDER_<KEY>` for top-level keys and `OUTRIDER_<TABLE>__<KEY>`
//!    for keys of a table (upper case, double underscore), e.g. `OUTRIDER_NODE_ID=edge-02`,
//!    `OUTRIDER_LOG__DURABILITY=periodic`, `OUTRIDER_OUTBOX__DESTINATIONS=cloud,backup`.
//!
//! Every error names the key it is about and what is wrong, e.g.
//! `log.durability: unknown variant "fast", expected "sync" or "periodic"`; a value that came
//! from the environment also names the variable.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use outrider_runtime::config::{parse_bytes, parse_duration};
use outrider_runtime::{ClassConfig, Durability, FullPolicy, LogConfig, VerifyOnOpen};
use serde::{Deserialize, Serialize};
use toml::{Table, Value};

pub use crate::probe_config::{
    DnsRecordName, FailoverSection, HostSection, IcmpModeName, LinkSection, ProbeKindName,
};

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "OUTRIDER_";

/// Variables with [`ENV_PREFIX`] that belong to other tools and are not configuration overrides:
/// the CLI's agent URL, and the test and benchmark tooling's `OUTRIDER_TEST_*`, `OUTRIDER_PG_*`,
/// `OUTRIDER_E2E_*`, `OUTRIDER_KILL_*`, `OUTRIDER_BENCH_*` (no configuration key starts so).
const FOREIGN_ENV_VARS: &[&str] = &["OUTRIDER_AGENT"];
const FOREIGN_ENV_PREFIXES: &[&str] = &[
    "OUTRIDER_TEST_",
    "OUTRIDER_PG_",
    "OUTRIDER_E2E_",
    "OUTRIDER_KILL_",
    "OUTRIDER_BENCH_",
];

/// Whether `var` is a configuration override (not another tool's variable).
fn is_override(var: &str) -> bool {
    var.starts_with(ENV_PREFIX)
        && !FOREIGN_ENV_VARS.contains(&var)
        && !FOREIGN_ENV_PREFIXES.iter().any(|p| var.starts_with(p))
}

/// Node id used when none is configured and the hostname cannot be read.
pub const FALLBACK_NODE_ID: &str = "edge";

/// Why a configuration could not be loaded. The message names the key (or file, or variable).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML.
    #[error("config file {origin} is not valid TOML: {message}")]
    Syntax {
        /// The file (or `<string>`).
        origin: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A key has an invalid value, is unknown, or is missing.
    #[error("{key}: {message}")]
    Invalid {
        /// The dotted key, e.g. `outbox.classes[1].max_bytes`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// An `OUTRIDER_*` environment variable cannot be applied.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable's name.
        var: String,
        /// What is wrong with it.
        message: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The agent's whole configuration (the schema of `deploy/config/agent.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the configuration")]
pub struct AgentConfig {
    /// This node's id, stamped on events appended here. Default: the hostname (or `edge`).
    pub node_id: String,
    /// Where the event log lives. Default `./data/agent`.
    pub data_dir: PathBuf,
    /// `[api]`: listen addresses.
    pub api: ApiSection,
    /// `[log]`: the embedded event log.
    pub log: LogSection,
    /// `[outbox]`: store-and-forward classes and destinations.
    pub outbox: OutboxSection,
    /// `[logging]`: the agent's own diagnostics.
    pub logging: LoggingSection,
    /// `[sync]`: streaming the outbox to the cloud. Absent: no sync.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncSection>,
    /// `[[links]]`: links to the cloud, probed for health (none by default).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<LinkSection>,
    /// `[failover]`: choosing the active link among `links`.
    pub failover: FailoverSection,
    /// `[host]`: host telemetry and alerts. Absent: not sampled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<HostSection>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            node_id: default_node_id(),
            data_dir: PathBuf::from("./data/agent"),
            api: ApiSection::default(),
            log: LogSection::default(),
            outbox: OutboxSection::default(),
            logging: LoggingSection::default(),
            sync: None,
            links: Vec::new(),
            failover: FailoverSection::default(),
            host: None,
        }
    }
}

/// The hostname from `/proc/sys/kernel/hostname`, or [`FALLBACK_NODE_ID`].
pub fn default_node_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| FALLBACK_NODE_ID.to_string())
}

/// `[api]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "an [api] table")]
pub struct ApiSection {
    /// The gRPC API. Port 0 picks a free port (logged at start).
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// `/metrics` (Prometheus text) and `/healthz`.
    #[serde(deserialize_with = "socket_addr")]
    pub metrics_listen: SocketAddr,
}

impl Default for ApiSection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

/// `log.durability`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DurabilityMode {
    /// fdatasync per group commit before acknowledging.
    #[default]
    Sync,
    /// Acknowledge when applied; flush every `flush_interval_ms`.
    Periodic,
}

/// `log.verify_on_open`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyMode {
    /// Verify the last records only.
    #[default]
    Tail,
    /// Verify every record.
    Full,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a [log] table")]
pub struct LogSection {
    /// `sync` (default) or `periodic`.
    pub durability: DurabilityMode,
    /// Periodic mode's flush interval, in milliseconds (default 100).
    pub flush_interval_ms: u64,
    /// sled's page cache, in MiB (default 4).
    pub cache_capacity_mb: u64,
    /// Largest accepted event, in bytes (default 262144).
    pub max_event_bytes: u64,
    /// Recent event ids remembered for idempotent re-appends (default 65536).
    pub dedupe_window: u64,
    /// `tail` (default) or `full` checksum pass at start.
    pub verify_on_open: VerifyMode,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            durability: DurabilityMode::Sync,
            flush_interval_ms: 100,
            cache_capacity_mb: 4,
            max_event_bytes: 262_144,
            dedupe_window: 65_536,
            verify_on_open: VerifyMode::Tail,
        }
    }
}

/// `[outbox]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "an [outbox] table")]
pub struct OutboxSection {
    /// The class of events appended without one (default `normal`).
    pub default_class: String,
    /// Destinations, each with a cursor per class. A comma-separated string is accepted too
    /// (for `OUTRIDER_OUTBOX__DESTINATIONS=cloud,backup`).
    #[serde(deserialize_with = "string_list")]
    pub destinations: Vec<String>,
    /// `[[outbox.classes]]`, highest priority first. Default: one unbounded class `normal`.
    pub classes: Vec<ClassSection>,
}

impl Default for OutboxSection {
    fn default() -> Self {
        Self {
            default_class: "normal".into(),
            destinations: Vec::new(),
            classes: vec![ClassSection::unbounded("normal")],
        }
    }
}

/// `outbox.classes[].full_policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicyMode {
    /// Refuse new appends to a full class.
    #[default]
    RejectNew,
    /// Drop the class's oldest undelivered events to make room.
    DropOldest,
}

/// One `[[outbox.classes]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an [[outbox.classes]] table")]
pub struct ClassSection {
    /// The class name.
    pub name: String,
    /// Cap on undelivered bytes (`"64MiB"` or an integer); none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<ByteSize>,
    /// Cap on undelivered events; none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_events: Option<u64>,
    /// What happens when a cap is reached (default `reject_new`).
    #[serde(default)]
    pub full_policy: FullPolicyMode,
    /// Maximum age of an undelivered event (`"7d"`, `"24h"`); none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<HumanDuration>,
}

impl ClassSection {
    /// A class without caps or TTL.
    pub fn unbounded(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            max_bytes: None,
            max_events: None,
            full_policy: FullPolicyMode::RejectNew,
            ttl: None,
        }
    }

    fn to_runtime(&self) -> ClassConfig {
        ClassConfig {
            name: self.name.clone(),
            max_bytes: self.max_bytes.map_or(u64::MAX, |b| b.0),
            max_events: self.max_events.unwrap_or(u64::MAX),
            full_policy: match self.full_policy {
                FullPolicyMode::RejectNew => FullPolicy::RejectNew,
                FullPolicyMode::DropOldest => FullPolicy::DropOldest,
            },
            ttl: self.ttl.map(|t| t.0),
        }
    }
}

/// `logging.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[logging]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a [logging] table")]
pub struct LoggingSection {
    /// `text` (default) or `json`.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `info,outrider_runtime=debug` (default `info`).
    /// `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LoggingSection {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// `sync.transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncTransport {
    /// gRPC bidirectional streaming over TCP (HTTP/2 + TLS).
    Grpc,
    /// QUIC (UDP) to the same host and port: one bidirectional stream of length-delimited frames.
    Quic,
    /// QUIC, falling back to gRPC when a QUIC connection cannot be made (UDP blocked, no QUIC
    /// listener); QUIC is tried again `quic_retry_ms` later.
    #[default]
    Auto,
}

/// `[sync.tls]`: the node's client certificate and the CA that signed the cloud's certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [sync.tls] table")]
pub struct SyncTlsSection {
    /// The CA certificate (PEM) the cloud's server certificate must chain to.
    pub ca: PathBuf,
    /// This node's certificate (PEM), naming it as `urn:outrider:node:NODE`.
    pub cert: PathBuf,
    /// This node's private key (PEM).
    pub key: PathBuf,
}

/// `[sync]`: the outbox destination streamed to the cloud.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a [sync] table")]
pub struct SyncSection {
    /// The cloud's ingest endpoint: `https://host:port` (`http://` only with `insecure`). gRPC
    /// goes to TCP host:port, QUIC to UDP host:port.
    pub cloud_url: String,
    /// The outbox destination synced (default `cloud`); added to `outbox.destinations` if missing.
    pub destination: String,
    /// `auto` (default: QUIC, falling back to gRPC), `quic` or `grpc`.
    pub transport: SyncTransport,
    /// Development only (logged loudly at start): no client certificate, the cloud's certificate
    /// is not verified. gRPC is then plain text; QUIC is still encrypted, but unauthenticated.
    pub insecure: bool,
    /// mTLS files; required unless `insecure = true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<SyncTlsSection>,
    /// Give up a connection attempt (gRPC: TCP + TLS + HTTP/2; QUIC: its handshake) after this
    /// long, in ms (default 10000). With `auto`, a QUIC attempt that fails or times out is
    /// followed at once by a gRPC attempt.
    pub connect_timeout_ms: u64,
    /// `auto`: after QUIC failed, connect over gRPC for this long, in ms (default 300000, 1000 to
    /// 86400000), then try QUIC again: at the next connection, and in the background while gRPC streams (the
    /// session moves to QUIC once a QUIC handshake succeeds).
    pub quic_retry_ms: u64,
    /// QUIC's idle timeout, in ms (default 15000, 1000 to 600000): a connection that hears
    /// nothing from the cloud for this long is dead. QUIC keep-alives go out every third of it,
    /// so it may be shorter than the session's own keepalive and idle timeout.
    pub quic_idle_timeout_ms: u64,
}

impl Default for SyncSection {
    fn default() -> Self {
        Self {
            cloud_url: String::new(),
            destination: "cloud".into(),
            transport: SyncTransport::Auto,
            insecure: false,
            tls: None,
            connect_timeout_ms: 10_000,
            quic_retry_ms: 300_000,
            quic_idle_timeout_ms: 15_000,
        }
    }
}

impl SyncSection {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let scheme = self
            .cloud_url
            .split_once("://")
            .map(|(s, _)| s.to_ascii_lowercase());
        match (scheme.as_deref(), self.insecure) {
            (None, _) | (Some(""), _) => {
                return Err(ConfigError::invalid(
                    "sync.cloud_url",
                    format!(
                        "{:?} is not a URL such as \"https://cloud.example.com:7443\"",
                        self.cloud_url
                    ),
                ))
            }
            (Some("https"), false) | (Some("http"), true) => {}
            (Some("http"), false) => return Err(ConfigError::invalid(
                "sync.cloud_url",
                "http:// is plain text: use https://, or set sync.insecure = true for development",
            )),
            (Some("https"), true) => {
                return Err(ConfigError::invalid(
                    "sync.cloud_url",
                    "sync.insecure = true does not authenticate the cloud: use http://",
                ))
            }
            (Some(other), _) => {
                return Err(ConfigError::invalid(
                    "sync.cloud_url",
                    format!("unsupported scheme {other:?} (https, or http with insecure)"),
                ))
            }
        }
        let uri = match self.cloud_url.parse::<tonic::transport::Uri>() {
            Ok(u) => u,
            Err(_) => {
                return Err(ConfigError::invalid(
                    "sync.cloud_url",
                    format!("{:?} is not a valid URL", self.cloud_url),
                ))
            }
        };
        if uri.host().is_none_or(str::is_empty) {
            return Err(ConfigError::invalid(
                "sync.cloud_url",
                format!("{:?} names no host", self.cloud_url),
            ));
        }
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(ConfigError::invalid(
                "sync.cloud_url",
                format!(
                    "{:?}: only scheme://host:port is used; remove the path",
                    self.cloud_url
                ),
            ));
        }
        if self.destination.is_empty() {
            return Err(ConfigError::invalid(
                "sync.destination",
                "must not be empty",
            ));
        }
        if self.connect_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "sync.connect_timeout_ms",
                "must be at least 1",
            ));
        }
        if self.quic_retry_ms < 1_000 {
            return Err(ConfigError::invalid(
                "sync.quic_retry_ms",
                format!("{} is too short: at least 1000", self.quic_retry_ms),
            ));
        }
        if self.quic_retry_ms > 86_400_000 {
            return Err(ConfigError::invalid(
                "sync.quic_retry_ms",
                format!(
                    "{} is too long: at most 86400000 (a day)",
                    self.quic_retry_ms
                ),
            ));
        }
        if self.quic_idle_timeout_ms < 1_000 {
            return Err(ConfigError::invalid(
                "sync.quic_idle_timeout_ms",
                format!("{} is too short: at least 1000", self.quic_idle_timeout_ms),
            ));
        }
        if self.quic_idle_timeout_ms > 600_000 {
            return Err(ConfigError::invalid(
                "sync.quic_idle_timeout_ms",
                format!("{} is too long: at most 600000", self.quic_idle_timeout_ms),
            ));
        }
        match (&self.tls, self.insecure) {
            (None, false) => Err(ConfigError::invalid(
                "sync.tls",
                "required: ca, cert and key (or sync.insecure = true for development)",
            )),
            (Some(_), true) => Err(ConfigError::invalid(
                "sync.tls",
                "set either [sync.tls] or sync.insecure = true, not both",
            )),
            _ => Ok(()),
        }
    }
}

/// A size in bytes, written as `"64MiB"`, `"1GiB"`, `"10MB"` or a plain integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 4] = [
            (1 << 40, "TiB"),
            (1 << 30, "GiB"),
            (1 << 20, "MiB"),
            (1 << 10, "KiB"),
        ];
        for (mult, unit) in UNITS {
            if self.0 >= mult && self.0.is_multiple_of(mult) {
                return write!(f, "{}{unit}", self.0 / mult);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"64MiB\" or a number of bytes")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_bytes(v).map(ByteSize).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("{v} is negative")))
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration, written as `"250ms"`, `"30s"`, `"5m"`, `"24h"` or `"7d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if !ms.is_multiple_of(1000) {
            return write!(f, "{ms}ms");
        }
        let s = self.0.as_secs();
        for (mult, unit) in [(86_400, "d"), (3600, "h"), (60, "m")] {
            if s >= mult && s.is_multiple_of(mult) {
                return write!(f, "{}{unit}", s / mult);
            }
        }
        write!(f, "{s}s")
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"30s\", \"24h\" or \"7d\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                parse_duration(v).map(HumanDuration).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// An `IP:port` address, with the offending text in the error.
fn socket_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.trim().parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "{text:?} is not an IP:port address (e.g. \"127.0.0.1:7400\"; port 0 picks a free one)"
        ))
    })
}

/// An array of strings, or one string of comma-separated items.
fn string_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(
        untagged,
        expecting = "expected an array of strings or a comma-separated string"
    )]
    enum List {
        Items(Vec<String>),
        Joined(String),
    }
    Ok(match List::deserialize(d)? {
        List::Items(v) => v,
        List::Joined(s) => split_list(&s),
    })
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

impl AgentConfig {
    /// Loads the configuration: defaults, then the file at `path` (if given), then the process's
    /// `OUTRIDER_*` environment variables. The result is validated.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(path, process_env()?)
    }

    /// [`AgentConfig::load`] with explicit environment variables instead of the process's.
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let table = match path {
            None => Table::new(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                parse_table(&text, &path.display().to_string())?
            }
        };
        Self::from_table(table, env)
    }

    /// Parses configuration text (as in `agent.toml`), then applies `env` overrides, and validates.
    pub fn parse(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::from_table(parse_table(text, "<string>")?, env)
    }

    fn from_table(
        mut table: Table,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let sources = apply_env(&mut table, env)?;
        let attribute = |e: ConfigError| attribute_to_env(e, &sources);
        let cfg = deserialize(table).map_err(attribute)?;
        cfg.validate().map_err(attribute)?;
        Ok(cfg)
    }

    /// Checks what deserialization cannot: the runtime's rules (via [`LogConfig::validate`]), the
    /// logging filter, and distinct listen addresses.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.log_config()?;
        if let Some(sync) = &self.sync {
            sync.validate()?;
        }
        crate::probe_config::validate_links(&self.links, &self.failover, self.sync.as_ref())?;
        if let Some(host) = &self.host {
            host.validate()?;
        }
        if let Err(e) = crate::logging::parse_filter(&self.logging.level) {
            return Err(ConfigError::invalid(
                "logging.level",
                format!("{:?} is not a valid filter: {e}", self.logging.level),
            ));
        }
        if self.api.listen == self.api.metrics_listen && self.api.listen.port() != 0 {
            return Err(ConfigError::invalid(
                "api.metrics_listen",
                format!("{} is also api.listen", self.api.metrics_listen),
            ));
        }
        Ok(())
    }

    /// The runtime configuration of the event log. Errors name the offending key.
    pub fn log_config(&self) -> Result<LogConfig, ConfigError> {
        let mut c = LogConfig::new(&self.data_dir);
        c.node_id = self.node_id.clone();
        c.durability = match self.log.durability {
            DurabilityMode::Sync => Durability::Sync,
            DurabilityMode::Periodic => Durability::Periodic {
                interval: Duration::from_millis(self.log.flush_interval_ms),
            },
        };
        c.cache_capacity_bytes = self
            .log
            .cache_capacity_mb
            .checked_mul(1024 * 1024)
            .ok_or_else(|| ConfigError::invalid("log.cache_capacity_mb", "too large"))?;
        c.max_event_bytes = usize::try_from(self.log.max_event_bytes)
            .map_err(|_| ConfigError::invalid("log.max_event_bytes", "too large"))?;
        c.dedupe_window = usize::try_from(self.log.dedupe_window)
            .map_err(|_| ConfigError::invalid("log.dedupe_window", "too large"))?;
        c.verify_on_open = match self.log.verify_on_open {
            VerifyMode::Tail => VerifyOnOpen::Tail,
            VerifyMode::Full => VerifyOnOpen::Full,
        };
        c.classes = self
            .outbox
            .classes
            .iter()
            .map(ClassSection::to_runtime)
            .collect();
        c.default_class = self.outbox.default_class.clone();
        c.destinations = self.outbox.destinations.clone();
        if let Some(sync) = &self.sync {
            if !c.destinations.contains(&sync.destination) {
                c.destinations.push(sync.destination.clone());
            }
        }
        c.validate().map_err(|e| match e {
            // The runtime's configuration errors read "<key>: <problem>".
            outrider_runtime::Error::Config(m) => match m.split_once(": ") {
                Some((key, message)) => ConfigError::invalid(key, message),
                None => ConfigError::invalid("config", m),
            },
            other => ConfigError::invalid("config", other.to_string()),
        })?;
        Ok(c)
    }

    /// The configuration as TOML (what `--print-config` shows).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|e| ConfigError::invalid("config", e.to_string()))
    }
}

/// The process's `OUTRIDER_*` variables.
fn process_env() -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (k, v) in std::env::vars_os() {
        let Some(k) = k.to_str() else { continue };
        if !k.starts_with(ENV_PREFIX) {
            continue;
        }
        let v = v.into_string().map_err(|_| ConfigError::Env {
            var: k.to_string(),
            message: "value is not valid UTF-8".into(),
        })?;
        out.push((k.to_string(), v));
    }
    Ok(out)
}

fn parse_table(text: &str, origin: &str) -> Result<Table, ConfigError> {
    text.parse::<Table>().map_err(|e| ConfigError::Syntax {
        origin: origin.to_string(),
        message: e.to_string().trim_end().to_string(),
    })
}

/// Applies `OUTRIDER_*` variables onto `table`; returns dotted key → variable name.
fn apply_env(
    table: &mut Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let defaults = Table::try_from(AgentConfig::default()).unwrap_or_default();
    let mut vars: Vec<(String, String)> = env.into_iter().filter(|(k, _)| is_override(k)).collect();
    vars.sort();
    let mut sources = BTreeMap::new();
    for (var, raw) in vars {
        let path: Vec<String> = var[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if path.len() > 2 || path.iter().any(String::is_empty) {
            return Err(ConfigError::Env {
                var,
                message: "expected OUTRIDER_<KEY> or OUTRIDER_<TABLE>__<KEY>".into(),
            });
        }
        let dotted = path.join(".");
        let expected = match path.as_slice() {
            [key] => defaults.get(key),
            [t, key] => defaults
                .get(t)
                .and_then(Value::as_table)
                .and_then(|t| t.get(key)),
            _ => None,
        };
        let value = env_value(&raw, expected);
        match path.as_slice() {
            [key] => {
                table.insert(key.clone(), value);
            }
            [t, key] => {
                let entry = table
                    .entry(t.clone())
                    .or_insert_with(|| Value::Table(Table::new()));
                let Value::Table(section) = entry else {
                    return Err(ConfigError::invalid(
                        t.clone(),
                        format!("is not a table, so {var} cannot set {dotted}"),
                    ));
                };
                section.insert(key.clone(), value);
            }
            _ => {}
        }
        sources.insert(dotted, var);
    }
    Ok(sources)
}

/// Reads a variable's text as a TOML value. Where the default tells the key's type, that type is
/// used (a string key keeps `123` as text; a list key splits `a,b` on commas); otherwise the
/// text is an integer, boolean or array when it parses as one, else a string.
fn env_value(raw: &str, expected: Option<&Value>) -> Value {
    let parsed = || {
        format!("v = {raw}")
            .parse::<Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
    };
    match expected {
        Some(Value::String(_)) => Value::String(raw.to_string()),
        Some(Value::Array(_)) => match parsed() {
            Some(v @ Value::Array(_)) => v,
            _ => Value::Array(split_list(raw).into_iter().map(Value::String).collect()),
        },
        _ => match parsed() {
            Some(v @ (Value::Integer(_) | Value::Boolean(_) | Value::Array(_))) => v,
            _ => Value::String(raw.to_string()),
        },
    }
}

/// Deserializes the merged table, turning serde's errors into keyed ones.
fn deserialize(table: Table) -> Result<AgentConfig, ConfigError> {
    // toml's errors name the keys but not array indices: check each class on its own first, so
    // an error says which one.
    if let Some(Value::Array(classes)) = table
        .get("outbox")
        .and_then(Value::as_table)
        .and_then(|o| o.get("classes"))
    {
        for (i, class) in classes.iter().enumerate() {
            if let Err(e) = ClassSection::deserialize(class.clone()) {
                return Err(keyed(&e, &format!("outbox.classes[{i}]")));
            }
        }
    }
    if let Some(Value::Array(links)) = table.get("links") {
        for (i, link) in links.iter().enumerate() {
            if let Err(e) = LinkSection::deserialize(link.clone()) {
                return Err(keyed(&e, &format!("links[{i}]")));
            }
        }
    }
    AgentConfig::deserialize(Value::Table(table)).map_err(|e| keyed(&e, ""))
}

/// A keyed error from a toml deserialization error found under `prefix`.
fn keyed(e: &toml::de::Error, prefix: &str) -> ConfigError {
    let message = e.message().trim_end();
    // Errors without a source span print as "<message>\nin `<dotted keys>`".
    let shown = e.to_string();
    let keys = shown
        .trim_end()
        .rsplit_once("\nin `")
        .and_then(|(_, k)| k.strip_suffix('`'))
        .unwrap_or("");
    let join = |a: &str, b: &str| match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}.{b}"),
    };
    let mut key = join(prefix, keys);
    let mut message = message.to_string();
    // Name the unknown or missing key itself rather than its table.
    for (pattern, replacement) in [
        ("unknown field `", "unknown key"),
        ("missing field `", "missing"),
    ] {
        if let Some((field, tail)) = message
            .strip_prefix(pattern)
            .and_then(|rest| rest.split_once('`'))
        {
            key = join(&key, field);
            message = format!("{replacement}{tail}");
            break;
        }
    }
    if key.is_empty() {
        key = "config".into();
    }
    ConfigError::invalid(key, message.replace('`', "\""))
}

/// Adds the environment variable that set the offending key to an error's message.
fn attribute_to_env(e: ConfigError, sources: &BTreeMap<String, String>) -> ConfigError {
    let ConfigError::Invalid { key, message } = e else {
        return e;
    };
    let var = sources.iter().rev().find(|(k, _)| {
        key == **k || key.starts_with(&format!("{k}.")) || key.starts_with(&format!("{k}["))
    });
    match var {
        Some((_, var)) => ConfigError::Invalid {
            key,
            message: format!("{message} (set by environment variable {var})"),
        },
        None => ConfigError::Invalid { key, message },
    }
}
