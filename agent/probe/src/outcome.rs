//! What one probe found: [`ProbeOutcome`], and why a probe could not succeed: [`ProbeError`].

use std::time::Duration;

/// The result of one probe, as the health machines ([`crate::health::LinkHealth`]) consume it.
///
/// Only [`ProbeOutcome::Ok`] counts as a success. `Refused` (a TCP RST or an ICMP
/// port/host unreachable came back) proves the path carries packets but not that the probed
/// service answers; it counts as a failure, as every other variant does.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeOutcome {
    /// The target answered as expected after `rtt` (probe sent → answer received).
    Ok { rtt: Duration },
    /// No answer before the probe's deadline (`after` = the deadline that passed).
    Timeout { after: Duration },
    /// The target actively refused (TCP RST, ICMP port unreachable on a connected UDP socket).
    Refused,
    /// The probe failed for another reason, named by `reason`.
    Error { reason: ProbeError },
}

impl ProbeOutcome {
    /// The round trip time of a success.
    pub fn rtt(&self) -> Option<Duration> {
        match self {
            ProbeOutcome::Ok { rtt } => Some(*rtt),
            _ => None,
        }
    }

    /// Whether the probe succeeded.
    pub fn is_ok(&self) -> bool {
        matches!(self, ProbeOutcome::Ok { .. })
    }

    /// A short, stable name of the variant (`ok`, `timeout`, `refused`, `error`), for labels.
    pub fn kind(&self) -> &'static str {
        match self {
            ProbeOutcome::Ok { .. } => "ok",
            ProbeOutcome::Timeout { .. } => "timeout",
            ProbeOutcome::Refused => "refused",
            ProbeOutcome::Error { .. } => "error",
        }
    }

    pub(crate) fn error(reason: ProbeError) -> Self {
        ProbeOutcome::Error { reason }
    }
}

/// Why a probe failed other than by timing out or being refused. Every variant names the
/// operation and the target, so a log line alone tells what to fix. OS errors are kept as their
/// text (`io::Error` is neither `Clone` nor `PartialEq`, and outcomes travel in events).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// A socket operation failed (`op`: socket, bind, bind_device, connect, send, recv, ...).
    #[error("{op} failed for {target}: {detail}")]
    Io {
        op: &'static str,
        target: String,
        detail: String,
    },
    /// Neither kind of ICMP socket could be opened: the unprivileged datagram socket (needs the
    /// process's group in `net.ipv4.ping_group_range`) nor the raw one (needs CAP_NET_RAW).
    #[error(
        "no ICMP socket: datagram (ping) socket: {dgram} (is the group in net.ipv4.ping_group_range?); raw socket: {raw} (needs CAP_NET_RAW)"
    )]
    IcmpUnavailable { dgram: String, raw: String },
    /// The ICMP socket of the mode asked for could not be opened.
    #[error("{mode} ICMP socket: {detail} ({hint})")]
    IcmpSocket {
        mode: &'static str,
        detail: String,
        hint: &'static str,
    },
    /// An ICMP error came back instead of an echo reply (type and code as received).
    #[error("ICMP {kind} (type {icmp_type}, code {code}) from {from} for {target}")]
    IcmpError {
        kind: &'static str,
        icmp_type: u8,
        code: u8,
        from: String,
        target: String,
    },
    /// The TLS handshake failed.
    #[error("TLS handshake with {target} (name {server_name}): {detail}")]
    Tls {
        target: String,
        server_name: String,
        detail: String,
    },
    /// The server name is not valid for TLS (SNI).
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    /// The HTTP exchange failed (request could not be built, connection broke, bad response).
    #[error("HTTP {op} with {target}: {detail}")]
    Http {
        op: &'static str,
        target: String,
        detail: String,
    },
    /// The HTTP status was not the one expected.
    #[error("HTTP status {got} from {target}, expected {expected}")]
    HttpStatus {
        got: u16,
        expected: String,
        target: String,
    },
    /// The response body did not contain the expected text (within the first `searched` bytes).
    #[error("HTTP body from {target} does not contain {needle:?} (searched {searched} bytes)")]
    BodyMismatch {
        needle: String,
        searched: usize,
        target: String,
    },
    /// The DNS name could not be encoded (empty label, label over 63 bytes, name over 255).
    #[error("invalid DNS name {name:?}: {why}")]
    DnsName { name: String, why: &'static str },
    /// The resolver's answer could not be parsed.
    #[error("malformed DNS response from {resolver}: {why}")]
    DnsMalformed { resolver: String, why: &'static str },
    /// The resolver answered with an error code (2 SERVFAIL, 3 NXDOMAIN, 5 REFUSED, ...).
    #[error("DNS {rcode_name} (rcode {rcode}) from {resolver} for {name}")]
    DnsRcode {
        rcode: u8,
        rcode_name: &'static str,
        name: String,
        resolver: String,
    },
    /// The resolver answered without any address of the type asked for.
    #[error("no {record} record for {name} from {resolver}")]
    DnsNoAnswer {
        record: &'static str,
        name: String,
        resolver: String,
    },
    /// The answer does not contain the address expected.
    #[error("DNS answer for {name} is {got}, expected {expected} among them")]
    DnsUnexpected {
        name: String,
        expected: String,
        got: String,
    },
    /// The probe's configuration cannot work (e.g. a source address of the other family).
    #[error("invalid probe configuration: {0}")]
    Config(String),
}

impl ProbeError {
    pub(crate) fn io(op: &'static str, target: impl std::fmt::Display, e: &std::io::Error) -> Self {
        ProbeError::Io {
            op,
            target: target.to_string(),
            detail: e.to_string(),
        }
    }
}
