//! The link-probe, failover and host sections of the agent's configuration: `[[links]]`,
//! `[failover]` and `[host]` (documented in `deploy/config/agent.toml`), their validation (every
//! error names its key) and their conversion to `outrider-probe`'s types.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use outrider_probe::health::{DegradedConfig, HealthConfig, HealthConfigError, Hysteresis};
use outrider_probe::host::AlertConfig;
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, SyncSection};

/// `links[].probe`: what a link is probed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKindName {
    /// TCP connect to `target` = `host:port`.
    Tcp,
    /// UDP echo to an `outrider-cloud` `probe_echo_listen` responder at `target` = `host:port`.
    UdpEcho,
    /// ICMP echo to `target` = `host` (needs CAP_NET_RAW unless the ping group range allows it).
    Icmp,
    /// HTTP(S) GET of `target` = `http://host:port/path` or `https://...`.
    Http,
    /// A DNS query of `query_name` to the resolver `target` = `ip` or `ip:port`.
    Dns,
}

/// `links[].icmp_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IcmpModeName {
    /// The unprivileged datagram socket, else a raw socket.
    #[default]
    Auto,
    Datagram,
    Raw,
}

/// `links[].record`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum DnsRecordName {
    #[default]
    #[serde(rename = "A", alias = "a")]
    A,
    #[serde(rename = "AAAA", alias = "aaaa")]
    Aaaa,
}

fn default_priority() -> u32 {
    100
}
fn default_interval_ms() -> u64 {
    300
}

/// One `[[links]]` entry: a path to the cloud (a Direct Connect VIF, a VPN tunnel, ...), how it
/// is probed, when it counts as down, and how sync uses it when it is the active link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[links]] table")]
pub struct LinkSection {
    /// Unique name (metric label, event field).
    pub name: String,
    /// Failover priority, lower preferred (default 100).
    #[serde(default = "default_priority")]
    pub priority: u32,
    /// `tcp`, `udp_echo`, `icmp`, `http` or `dns`.
    pub probe: ProbeKindName,
    /// What is probed (see [`ProbeKindName`]).
    pub target: String,
    /// http: the exact status expected (default: any 2xx).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<u16>,
    /// http: the body must contain this text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
    /// https: the CA certificate (PEM) the server's certificate must chain to (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// dns: the name to resolve (required for dns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_name: Option<String>,
    /// dns: `A` (default) or `AAAA`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<DnsRecordName>,
    /// dns: the answer must contain this address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_address: Option<IpAddr>,
    /// icmp: `auto` (default), `datagram` or `raw`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_mode: Option<IcmpModeName>,
    /// Time between two probes, in ms (default 300; 10 to 3600000).
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// One probe's deadline, in ms (default: `interval_ms`; at most `interval_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Source address of the probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_address: Option<IpAddr>,
    /// Interface of the probes (SO_BINDTODEVICE; needs CAP_NET_RAW).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// N: failures among the last `down_of` probes that take the link down (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_failures: Option<usize>,
    /// M: how many of the latest probes the down rule looks at (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_of: Option<usize>,
    /// K: consecutive successes that bring a link up (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_successes: Option<usize>,
    /// Probes kept for the figures (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<usize>,
    /// Probes older than this (ms) leave the window too (default: by count only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
    /// Probes needed before the degraded thresholds are judged (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded_min_samples: Option<usize>,
    /// Loss (percent) at which an up link is degraded (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded_loss_percent: Option<f64>,
    /// Loss (percent) at or below which a degraded link is up again (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded_loss_clear_percent: Option<f64>,
    /// p99 RTT (ms) at which an up link is degraded (default: not checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded_rtt_p99_ms: Option<u64>,
    /// p99 RTT (ms) at or below which it clears (default: `degraded_rtt_p99_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded_rtt_p99_clear_ms: Option<u64>,
    /// Jitter (ms) at which an up link is degraded (default: not checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded_jitter_ms: Option<u64>,
    /// Jitter (ms) at or below which it clears (default: `degraded_jitter_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded_jitter_clear_ms: Option<u64>,
    /// Sync failover: the source address the sync connection binds to while this link is
    /// active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_local_addr: Option<IpAddr>,
    /// Sync failover: the cloud URL used while this link is active (default `sync.cloud_url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_url: Option<String>,
}

fn default_hold_down_ms() -> u64 {
    30_000
}
fn default_hook_timeout_ms() -> u64 {
    10_000
}

/// `[failover]`: choosing the active link among `[[links]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a [failover] table")]
pub struct FailoverSection {
    /// How long a better link must hold its state before traffic moves back to it, in ms
    /// (default 30000). Failover away from a failed link is immediate.
    #[serde(default = "default_hold_down_ms")]
    pub hold_down_ms: u64,
    /// A program and its arguments run on every link state change and failover decision, with
    /// `EVENT`, `LINK`, `FROM`, `TO` and `REASON` in its environment (never through a shell).
    pub hook: Vec<String>,
    /// The hook is killed after this long, in ms (default 10000).
    #[serde(default = "default_hook_timeout_ms")]
    pub hook_timeout_ms: u64,
}

impl Default for FailoverSection {
    fn default() -> Self {
        Self {
            hold_down_ms: default_hold_down_ms(),
            hook: Vec::new(),
            hook_timeout_ms: default_hook_timeout_ms(),
        }
    }
}

/// `[host]`: host telemetry and alerts (absent: not sampled).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a [host] table")]
pub struct HostSection {
    /// Sampling interval, in ms (default 10000; at least 100).
    pub interval_ms: u64,
    /// Disk used percent that raises an alert (default 90) and that clears it (default 85).
    pub disk_alert_percent: f64,
    pub disk_clear_percent: f64,
    /// Memory used percent that raises an alert (default 95) and that clears it (default 90).
    pub memory_alert_percent: f64,
    pub memory_clear_percent: f64,
    /// Growth of a NIC error/drop counter between two samples that raises (default 1).
    pub nic_min_increase: u64,
    /// Samples in a row without growth that clear a NIC alert (default 3).
    pub nic_quiet_samples: u32,
    /// File systems whose mounts are not judged (default tmpfs, devtmpfs, overlay, squashfs,
    /// iso9660).
    pub ignore_file_systems: Vec<String>,
    /// Append every sample as a `HostSample` event too (default false: metrics only).
    pub sample_events: bool,
}

impl Default for HostSection {
    fn default() -> Self {
        let a = AlertConfig::default();
        Self {
            interval_ms: 10_000,
            disk_alert_percent: a.disk.enter,
            disk_clear_percent: a.disk.exit,
            memory_alert_percent: a.memory.enter,
            memory_clear_percent: a.memory.exit,
            nic_min_increase: a.nic_min_increase,
            nic_quiet_samples: a.nic_quiet_samples,
            ignore_file_systems: a.ignore_file_systems,
            sample_events: false,
        }
    }
}

impl HostSection {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.interval_ms < 100 {
            return Err(ConfigError::invalid(
                "host.interval_ms",
                format!("{} is too short: at least 100", self.interval_ms),
            ));
        }
        for (key, alert, clear) in [
            ("disk", self.disk_alert_percent, self.disk_clear_percent),
            (
                "memory",
                self.memory_alert_percent,
                self.memory_clear_percent,
            ),
        ] {
            for (k, v) in [("alert", alert), ("clear", clear)] {
                if !(0.0..=100.0).contains(&v) {
                    return Err(ConfigError::invalid(
                        format!("host.{key}_{k}_percent"),
                        format!("{v} is not a percentage (0 to 100)"),
                    ));
                }
            }
            if clear > alert {
                return Err(ConfigError::invalid(
                    format!("host.{key}_clear_percent"),
                    format!("{clear} must not exceed host.{key}_alert_percent ({alert})"),
                ));
            }
        }
        if self.nic_min_increase == 0 {
            return Err(ConfigError::invalid(
                "host.nic_min_increase",
                "must be at least 1",
            ));
        }
        if self.nic_quiet_samples == 0 {
            return Err(ConfigError::invalid(
                "host.nic_quiet_samples",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// The alert evaluator's thresholds.
    pub fn alert_config(&self) -> AlertConfig {
        AlertConfig {
            disk: Hysteresis {
                enter: self.disk_alert_percent,
                exit: self.disk_clear_percent,
            },
            memory: Hysteresis {
                enter: self.memory_alert_percent,
                exit: self.memory_clear_percent,
            },
            nic_min_increase: self.nic_min_increase,
            nic_quiet_samples: self.nic_quiet_samples,
            ignore_file_systems: self.ignore_file_systems.clone(),
        }
    }
}

impl FailoverSection {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.hold_down_ms > 86_400_000 {
            return Err(ConfigError::invalid(
                "failover.hold_down_ms",
                format!(
                    "{} is too long: at most 86400000 (a day)",
                    self.hold_down_ms
                ),
            ));
        }
        if let Some(program) = self.hook.first() {
            if program.trim().is_empty() {
                return Err(ConfigError::invalid(
                    "failover.hook",
                    "the first item (the program) must not be empty",
                ));
            }
        }
        if self.hook_timeout_ms == 0 || self.hook_timeout_ms > 3_600_000 {
            return Err(ConfigError::invalid(
                "failover.hook_timeout_ms",
                format!("{} is out of range: 1 to 3600000", self.hook_timeout_ms),
            ));
        }
        Ok(())
    }
}

/// `host:port` with a port, as text (the host is resolved at start).
fn host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.trim().rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 || host.contains(char::is_whitespace) {
        return None;
    }
    Some((host.to_string(), port))
}

/// A probe target whose host is still to be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Host and port (tcp, udp_echo, http).
    HostPort(String, u16),
    /// Host only (icmp).
    Host(String),
    /// A resolver address (dns).
    Addr(SocketAddr),
}

/// The parts of an `http(s)://` target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl LinkSection {
    fn key(&self, i: usize, field: &str) -> String {
        format!("links[{i}].{field}")
    }

    /// Parses `target` for the probe kind.
    pub fn target(&self, i: usize) -> Result<Target, ConfigError> {
        let bad = |what: &str| {
            ConfigError::invalid(
                self.key(i, "target"),
                format!("{:?} is not {what}", self.target),
            )
        };
        match self.probe {
            ProbeKindName::Tcp | ProbeKindName::UdpEcho => host_port(&self.target)
                .map(|(h, p)| Target::HostPort(h, p))
                .ok_or_else(|| bad("host:port (e.g. \"10.0.0.1:7444\")")),
            ProbeKindName::Icmp => {
                let h = self
                    .target
                    .trim()
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                if h.is_empty()
                    || h.contains(char::is_whitespace)
                    || h.parse::<SocketAddr>().is_ok()
                {
                    return Err(bad("a host name or address without a port"));
                }
                Ok(Target::Host(h.to_string()))
            }
            ProbeKindName::Http => {
                let h = self.http_target(i)?;
                Ok(Target::HostPort(h.host, h.port))
            }
            ProbeKindName::Dns => {
                let t = self.target.trim();
                if let Ok(a) = t.parse::<SocketAddr>() {
                    return Ok(Target::Addr(a));
                }
                t.trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .map(|ip| Target::Addr(SocketAddr::new(ip, 53)))
                    .map_err(|_| bad("a resolver address (\"10.0.0.2\" or \"10.0.0.2:53\")"))
            }
        }
    }

    /// Parses an `http(s)://host[:port][/path]` target.
    pub fn http_target(&self, i: usize) -> Result<HttpTarget, ConfigError> {
        let bad = |what: String| ConfigError::invalid(self.key(i, "target"), what);
        let uri: tonic::transport::Uri = self
            .target
            .trim()
            .parse()
            .map_err(|_| bad(format!("{:?} is not a URL", self.target)))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(bad(format!(
                    "{:?}: the URL must start with http:// or https://",
                    self.target
                )))
            }
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad(format!("{:?} names no host", self.target)))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path = uri
            .path_and_query()
            .map_or("/".to_string(), |p| p.as_str().to_string());
        Ok(HttpTarget {
            tls,
            host,
            port,
            path,
        })
    }

    /// The health machine's configuration.
    pub fn health(&self) -> HealthConfig {
        let d = HealthConfig::default();
        let loss = match (self.degraded_loss_percent, self.degraded_loss_clear_percent) {
            (None, None) => d.degraded.loss,
            (enter, exit) => {
                let enter = enter.unwrap_or(5.0) / 100.0;
                let exit = exit.map_or(enter.min(0.01), |e| e / 100.0);
                Some(Hysteresis { enter, exit })
            }
        };
        let ms = Duration::from_millis;
        let p99_rtt = self.degraded_rtt_p99_ms.map(|e| Hysteresis {
            enter: ms(e),
            exit: ms(self.degraded_rtt_p99_clear_ms.unwrap_or(e)),
        });
        let jitter = self.degraded_jitter_ms.map(|e| Hysteresis {
            enter: ms(e),
            exit: ms(self.degraded_jitter_clear_ms.unwrap_or(e)),
        });
        HealthConfig {
            window: self.window.unwrap_or(d.window),
            window_ms: self.window_ms.or(d.window_ms),
            down_failures: self.down_failures.unwrap_or(d.down_failures),
            down_of: self.down_of.unwrap_or(d.down_of),
            up_successes: self.up_successes.unwrap_or(d.up_successes),
            degraded: DegradedConfig {
                min_samples: self.degraded_min_samples.unwrap_or(d.degraded.min_samples),
                loss,
                p99_rtt,
                jitter,
            },
        }
    }

    /// One probe's deadline.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.unwrap_or(self.interval_ms))
    }

    pub(crate) fn validate(&self, i: usize, sync: Option<&SyncSection>) -> Result<(), ConfigError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            return Err(ConfigError::invalid(
                self.key(i, "name"),
                format!(
                    "{:?}: 1 to 64 characters of A-Z, a-z, 0-9, '-', '_' and '.'",
                    self.name
                ),
            ));
        }
        self.target(i)?;
        let only = |field: &str, set: bool, kind: &str| {
            if set {
                Err(ConfigError::invalid(
                    self.key(i, field),
                    format!("only applies to probe = \"{kind}\""),
                ))
            } else {
                Ok(())
            }
        };
        let is = |k: ProbeKindName| self.probe == k;
        only(
            "expect_status",
            self.expect_status.is_some() && !is(ProbeKindName::Http),
            "http",
        )?;
        only(
            "body_contains",
            self.body_contains.is_some() && !is(ProbeKindName::Http),
            "http",
        )?;
        only(
            "tls_ca",
            self.tls_ca.is_some() && !is(ProbeKindName::Http),
            "http",
        )?;
        only(
            "query_name",
            self.query_name.is_some() && !is(ProbeKindName::Dns),
            "dns",
        )?;
        only(
            "record",
            self.record.is_some() && !is(ProbeKindName::Dns),
            "dns",
        )?;
        only(
            "expect_address",
            self.expect_address.is_some() && !is(ProbeKindName::Dns),
            "dns",
        )?;
        only(
            "icmp_mode",
            self.icmp_mode.is_some() && !is(ProbeKindName::Icmp),
            "icmp",
        )?;
        if is(ProbeKindName::Http) {
            let h = self.http_target(i)?;
            if h.tls && self.tls_ca.is_none() {
                return Err(ConfigError::invalid(
                    self.key(i, "tls_ca"),
                    "required for an https:// target: the CA certificate (PEM) to trust",
                ));
            }
            if !h.tls && self.tls_ca.is_some() {
                return Err(ConfigError::invalid(
                    self.key(i, "tls_ca"),
                    "only applies to an https:// target",
                ));
            }
            if let Some(s) = self.expect_status {
                if !(100..=599).contains(&s) {
                    return Err(ConfigError::invalid(
                        self.key(i, "expect_status"),
                        format!("{s} is not an HTTP status (100 to 599)"),
                    ));
                }
            }
        }
        if is(ProbeKindName::Dns) {
            match &self.query_name {
                None => {
                    return Err(ConfigError::invalid(
                        self.key(i, "query_name"),
                        "required for probe = \"dns\"",
                    ))
                }
                Some(n) if n.trim_end_matches('.').is_empty() || n.len() > 253 => {
                    return Err(ConfigError::invalid(
                        self.key(i, "query_name"),
                        format!("{n:?} is not a DNS name"),
                    ))
                }
                Some(_) => {}
            }
        }
        if !(10..=3_600_000).contains(&self.interval_ms) {
            return Err(ConfigError::invalid(
                self.key(i, "interval_ms"),
                format!("{} is out of range: 10 to 3600000", self.interval_ms),
            ));
        }
        if let Some(t) = self.timeout_ms {
            if t == 0 || t > self.interval_ms {
                return Err(ConfigError::invalid(
                    self.key(i, "timeout_ms"),
                    format!(
                        "{t} is out of range: 1 to interval_ms ({})",
                        self.interval_ms
                    ),
                ));
            }
        }
        if let Some(dev) = &self.interface {
            if dev.is_empty() || dev.len() > 15 || dev.contains(['/', ' ', '\0']) {
                return Err(ConfigError::invalid(
                    self.key(i, "interface"),
                    format!("{dev:?} is not an interface name"),
                ));
            }
        }
        if let Some(p) = self.degraded_loss_percent {
            // 0 would call every link degraded: loss is never below it.
            if !(p > 0.0 && p <= 100.0) {
                return Err(ConfigError::invalid(
                    self.key(i, "degraded_loss_percent"),
                    format!("{p} is out of range: more than 0, at most 100"),
                ));
            }
        }
        if let Some(p) = self.degraded_loss_clear_percent {
            if !(0.0..=100.0).contains(&p) {
                return Err(ConfigError::invalid(
                    self.key(i, "degraded_loss_clear_percent"),
                    format!("{p} is not a percentage (0 to 100)"),
                ));
            }
        }
        for (field, set) in [
            (
                "degraded_rtt_p99_clear_ms",
                self.degraded_rtt_p99_clear_ms.is_some() && self.degraded_rtt_p99_ms.is_none(),
            ),
            (
                "degraded_jitter_clear_ms",
                self.degraded_jitter_clear_ms.is_some() && self.degraded_jitter_ms.is_none(),
            ),
        ] {
            if set {
                return Err(ConfigError::invalid(
                    self.key(i, field),
                    format!("needs {}", field.replace("_clear", "")),
                ));
            }
        }
        self.health().validate().map_err(|e| {
            let (field, message) = match &e {
                HealthConfigError::Zero { field } => (*field, "must be at least 1".to_string()),
                HealthConfigError::DownFailuresOverM { n, m } => (
                    "down_failures",
                    format!("{n} must not exceed down_of ({m})"),
                ),
                HealthConfigError::DownOfOverWindow { m, window } => {
                    ("down_of", format!("{m} must not exceed window ({window})"))
                }
                HealthConfigError::ExitOverEnter { field } => (
                    match *field {
                        "loss" => "degraded_loss_clear_percent",
                        "p99_rtt" => "degraded_rtt_p99_clear_ms",
                        _ => "degraded_jitter_clear_ms",
                    },
                    "must not exceed the threshold that raises it".to_string(),
                ),
                HealthConfigError::LossRange => (
                    "degraded_loss_percent",
                    "must lie within 0 to 100".to_string(),
                ),
            };
            ConfigError::invalid(self.key(i, field), message)
        })?;
        if self.sync_local_addr.is_some() && sync.is_none() {
            return Err(ConfigError::invalid(
                self.key(i, "sync_local_addr"),
                "only applies with a [sync] section",
            ));
        }
        if let Some(url) = &self.cloud_url {
            let Some(sync) = sync else {
                return Err(ConfigError::invalid(
                    self.key(i, "cloud_url"),
                    "only applies with a [sync] section",
                ));
            };
            let mut s = sync.clone();
            s.cloud_url = url.clone();
            s.validate().map_err(|e| match e {
                ConfigError::Invalid { key, message } if key == "sync.cloud_url" => {
                    ConfigError::invalid(self.key(i, "cloud_url"), message)
                }
                other => other,
            })?;
        }
        Ok(())
    }
}

/// Validates `[[links]]` as a whole: each link, and distinct names.
pub(crate) fn validate_links(
    links: &[LinkSection],
    failover: &FailoverSection,
    sync: Option<&SyncSection>,
) -> Result<(), ConfigError> {
    for (i, l) in links.iter().enumerate() {
        l.validate(i, sync)?;
        if links[..i].iter().any(|o| o.name == l.name) {
            return Err(ConfigError::invalid(
                format!("links[{i}].name"),
                format!("{:?} is used by another link", l.name),
            ));
        }
    }
    failover.validate()
}
