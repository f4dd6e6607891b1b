//! The probes: async tokio shells that each send one probe and time its answer.
//!
//! | kind | what is timed | success |
//! | --- | --- | --- |
//! | [`tcp`] | `connect()` until the SYN-ACK completes it | connected |
//! | [`udp`] | an echo datagram (seq + timestamp) until the [`udp::serve_udp_echo`] responder's reply | the reply with the same session and seq |
//! | [`icmp`] | an ICMP echo request until the echo reply | the reply with the same id/seq/token |
//! | [`http`] | connect + (TLS) + `GET` + body, as blackbox_exporter's `probe_duration_seconds` | expected status, body contains the text |
//! | [`dns`] | one A/AAAA query over UDP until the response | NOERROR with at least one address (the expected one, if set) |
//!
//! Every probe has a deadline ([`ProbeSpec::timeout`]): past it the result is
//! [`ProbeOutcome::Timeout`]. Every probe can be bound ([`Bind`]) to a source address and, on
//! Linux, to an interface (`SO_BINDTODEVICE`; needs CAP_NET_RAW), so each link is probed over
//! its own path (a Direct Connect VIF and a VPN tunnel to the same cloud prefix).
//!
//! [`Probe`] holds a probe's socket between runs where that matters (the UDP echo and ICMP
//! sockets are opened once and reopened after an error; late replies of earlier probes are
//! recognised by their sequence number and skipped).

pub mod dns;
pub mod http;
pub mod icmp;
pub mod tcp;
pub mod udp;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::outcome::{ProbeError, ProbeOutcome};

pub use dns::{DnsProbe, RecordType};
pub use http::HttpProbe;
pub use icmp::IcmpMode;

/// Where a probe's packets leave from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bind {
    /// Source address (port chosen by the OS). Must be of the target's family.
    pub source: Option<IpAddr>,
    /// Interface name (`SO_BINDTODEVICE`, Linux only; needs CAP_NET_RAW).
    pub device: Option<String>,
}

impl Bind {
    /// The local address to bind for a target of `target`'s family.
    pub(crate) fn local_for(&self, target: IpAddr) -> Result<SocketAddr, ProbeError> {
        match self.source {
            Some(src) if src.is_ipv4() != target.is_ipv4() => Err(ProbeError::Config(format!(
                "source address {src} is not of the family of target {target}"
            ))),
            Some(src) => Ok(SocketAddr::new(src, 0)),
            None if target.is_ipv4() => Ok(SocketAddr::from(([0, 0, 0, 0], 0))),
            None => Ok(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))),
        }
    }

    /// Applies `device` to a socket (no-op without one).
    pub(crate) fn apply_device(&self, socket: &socket2::Socket) -> Result<(), ProbeError> {
        let Some(dev) = &self.device else {
            return Ok(());
        };
        #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
        {
            socket
                .bind_device(Some(dev.as_bytes()))
                .map_err(|e| ProbeError::io("bind_device (SO_BINDTODEVICE)", dev, &e))
        }
        #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "fuchsia")))]
        {
            let _ = socket;
            Err(ProbeError::Config(format!(
                "binding to interface {dev} is not supported on this OS; bind a source address"
            )))
        }
    }
}

/// What to probe.
#[derive(Debug, Clone)]
pub enum ProbeKind {
    /// TCP connect to `target`.
    Tcp { target: SocketAddr },
    /// UDP echo to a [`udp::serve_udp_echo`] responder at `target`.
    UdpEcho { target: SocketAddr },
    /// ICMP echo to `target`.
    Icmp { target: IpAddr, mode: IcmpMode },
    /// HTTP(S) GET.
    Http(HttpProbe),
    /// A DNS query to a resolver.
    Dns(DnsProbe),
}

impl ProbeKind {
    /// A short name (`tcp`, `udp_echo`, `icmp`, `http`, `dns`), for labels and logs.
    pub fn name(&self) -> &'static str {
        match self {
            ProbeKind::Tcp { .. } => "tcp",
            ProbeKind::UdpEcho { .. } => "udp_echo",
            ProbeKind::Icmp { .. } => "icmp",
            ProbeKind::Http(_) => "http",
            ProbeKind::Dns(_) => "dns",
        }
    }
}

/// A probe: what, from where, and its deadline.
#[derive(Debug, Clone)]
pub struct ProbeSpec {
    pub kind: ProbeKind,
    pub bind: Bind,
    /// The deadline of one probe (default in [`ProbeSpec::new`]: 1 s).
    pub timeout: Duration,
}

impl ProbeSpec {
    pub fn new(kind: ProbeKind) -> Self {
        Self {
            kind,
            bind: Bind::default(),
            timeout: Duration::from_secs(1),
        }
    }

    pub fn with_bind(mut self, bind: Bind) -> Self {
        self.bind = bind;
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// A probe and the sockets it keeps between runs.
#[derive(Debug)]
pub struct Probe {
    spec: ProbeSpec,
    udp: Option<udp::UdpEchoClient>,
    icmp: Option<icmp::IcmpPinger>,
}

impl Probe {
    pub fn new(spec: ProbeSpec) -> Self {
        Self {
            spec,
            udp: None,
            icmp: None,
        }
    }

    pub fn spec(&self) -> &ProbeSpec {
        &self.spec
    }

    /// Runs the probe once; never takes (much) longer than [`ProbeSpec::timeout`].
    pub async fn run(&mut self) -> ProbeOutcome {
        let timeout = self.spec.timeout;
        let bind = &self.spec.bind;
        match &self.spec.kind {
            ProbeKind::Tcp { target } => tcp::probe_tcp(*target, bind, timeout).await,
            ProbeKind::UdpEcho { target } => {
                if self.udp.is_none() {
                    match udp::UdpEchoClient::open(*target, bind) {
                        Ok(c) => self.udp = Some(c),
                        Err(e) => return ProbeOutcome::error(e),
                    }
                }
                let Some(client) = self.udp.as_mut() else {
                    return ProbeOutcome::error(ProbeError::Config("no UDP socket".into()));
                };
                let outcome = client.probe(timeout).await;
                if matches!(outcome, ProbeOutcome::Error { .. }) {
                    self.udp = None; // reopen next time
                }
                outcome
            }
            ProbeKind::Icmp { target, mode } => {
                if self.icmp.is_none() {
                    match icmp::IcmpPinger::open(*target, *mode, bind) {
                        Ok(p) => self.icmp = Some(p),
                        Err(e) => return ProbeOutcome::error(e),
                    }
                }
                let Some(pinger) = self.icmp.as_mut() else {
                    return ProbeOutcome::error(ProbeError::Config("no ICMP socket".into()));
                };
                let outcome = pinger.ping(timeout).await;
                if matches!(
                    outcome,
                    ProbeOutcome::Error {
                        reason: ProbeError::Io { .. }
                    }
                ) {
                    self.icmp = None;
                }
                outcome
            }
            ProbeKind::Http(h) => http::probe_http(h, bind, timeout).await,
            ProbeKind::Dns(d) => match dns::resolve(d, bind, timeout).await {
                Ok(answer) => ProbeOutcome::Ok { rtt: answer.rtt },
                Err(outcome) => outcome,
            },
        }
    }
}

/// A session token for matching replies: random per process and call (std's hasher keys are
/// seeded from the OS), so two probers on one host do not take each other's replies.
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}
