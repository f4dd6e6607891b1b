//! ICMP echo (ping) over a datagram ICMP socket or a raw socket, IPv4 and IPv6.
//!
//! * **Datagram** (`socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)`, Linux "ping sockets"): needs no
//!   privilege, only the process's group inside `net.ipv4.ping_group_range` (the default
//!   `1 0` allows nobody). The kernel sets the echo identifier and filters replies to it.
//! * **Raw** (`SOCK_RAW`): needs CAP_NET_RAW (root). Receives every ICMP packet of the host, so
//!   replies are matched by identifier, sequence and an 8-byte random token in the payload.
//!
//! [`IcmpMode::Auto`] tries the datagram socket, then the raw one; if both fail,
//! [`ProbeError::IcmpUnavailable`] carries both reasons.

use std::io::Read as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

use super::Bind;
use crate::outcome::{ProbeError, ProbeOutcome};

/// Which ICMP socket to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IcmpMode {
    /// Datagram, falling back to raw.
    #[default]
    Auto,
    /// Datagram only (unprivileged; `net.ipv4.ping_group_range`).
    Datagram,
    /// Raw only (CAP_NET_RAW).
    Raw,
}

/// The socket kind a pinger ended up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpSocketKind {
    Datagram,
    Raw,
}

const PAYLOAD_LEN: usize = 16; // token (8) + send time (8)

/// An ICMP echo sender for one target, kept across probes.
#[derive(Debug)]
pub struct IcmpPinger {
    fd: AsyncFd<Socket>,
    kind: IcmpSocketKind,
    target: IpAddr,
    ident: u16,
    seq: u16,
    token: u64,
}

impl IcmpPinger {
    /// Opens the socket `mode` asks for, bound as `bind` says and connected to `target`.
    /// Needs a tokio runtime.
    pub fn open(target: IpAddr, mode: IcmpMode, bind: &Bind) -> Result<Self, ProbeError> {
        let (socket, kind) = match mode {
            IcmpMode::Datagram => (
                open_socket(target, Type::DGRAM).map_err(|e| ProbeError::IcmpSocket {
                    mode: "datagram",
                    detail: e.to_string(),
                    hint: "is the process's group in net.ipv4.ping_group_range?",
                })?,
                IcmpSocketKind::Datagram,
            ),
            IcmpMode::Raw => (
                open_socket(target, Type::RAW).map_err(|e| ProbeError::IcmpSocket {
                    mode: "raw",
                    detail: e.to_string(),
                    hint: "raw sockets need CAP_NET_RAW",
                })?,
                IcmpSocketKind::Raw,
            ),
            IcmpMode::Auto => match open_socket(target, Type::DGRAM) {
                Ok(s) => (s, IcmpSocketKind::Datagram),
                Err(dgram) => match open_socket(target, Type::RAW) {
                    Ok(s) => (s, IcmpSocketKind::Raw),
                    Err(raw) => {
                        return Err(ProbeError::IcmpUnavailable {
                            dgram: dgram.to_string(),
                            raw: raw.to_string(),
                        })
                    }
                },
            },
        };
        socket
            .set_nonblocking(true)
            .map_err(|e| ProbeError::io("set_nonblocking", target, &e))?;
        bind.apply_device(&socket)?;
        if bind.source.is_some() || kind == IcmpSocketKind::Datagram {
            let local = bind.local_for(target)?;
            socket
                .bind(&local.into())
                .map_err(|e| ProbeError::io("bind", local, &e))?;
        }
        socket
            .connect(&SocketAddr::new(target, 0).into())
            .map_err(|e| ProbeError::io("connect", target, &e))?;
        // SAFETY: `socket` owns its descriptor, which stays open and the same for as long as the
        // AsyncFd holds it (a socket2::Socket never swaps or closes its fd before drop, and no
        // &mut to it is handed out).
        let fd = unsafe { AsyncFd::register(socket) }
            .map_err(|e| ProbeError::io("register", target, &std::io::Error::from(e)))?;
        let token = super::random_u64();
        Ok(Self {
            fd,
            kind,
            target,
            ident: (token >> 48) as u16,
            seq: 0,
            token,
        })
    }

    /// The kind of socket in use.
    pub fn kind(&self) -> IcmpSocketKind {
        self.kind
    }

    /// Sends one echo request and waits up to `timeout` for its reply.
    pub async fn ping(&mut self, timeout: Duration) -> ProbeOutcome {
        self.seq = self.seq.wrapping_add(1);
        let start = Instant::now();
        let deadline = start + timeout;
        let request = encode_echo(self.target.is_ipv4(), self.ident, self.seq, self.token);
        match tokio::time::timeout_at(deadline, self.send(&request)).await {
            Err(_) => return ProbeOutcome::Timeout { after: timeout },
            Ok(Err(e)) => return ProbeOutcome::error(ProbeError::io("send", self.target, &e)),
            Ok(Ok(())) => {}
        }
        let mut buf = [0u8; 2048];
        loop {
            let n = match tokio::time::timeout_at(deadline, self.recv(&mut buf)).await {
                Err(_) => return ProbeOutcome::Timeout { after: timeout },
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return ProbeOutcome::Refused
                }
                Ok(Err(e)) => return ProbeOutcome::error(ProbeError::io("recv", self.target, &e)),
                Ok(Ok(n)) => n,
            };
            match self.classify(&buf[..n]) {
                Reply::Ours => {
                    return ProbeOutcome::Ok {
                        rtt: start.elapsed(),
                    }
                }
                Reply::Error { icmp_type, code } => {
                    return ProbeOutcome::error(ProbeError::IcmpError {
                        kind: error_kind(self.target.is_ipv4(), icmp_type),
                        icmp_type,
                        code,
                        from: self.target.to_string(),
                        target: self.target.to_string(),
                    })
                }
                Reply::Other => {}
            }
        }
    }

    async fn send(&self, packet: &[u8]) -> std::io::Result<()> {
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|s| s.get_ref().send(packet)) {
                Ok(r) => return r.map(|_| ()),
                Err(_would_block) => continue,
            }
        }
    }

    async fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|s| s.get_ref().read(buf)) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Finds the ICMP message in a received packet and decides whether it answers us.
    fn classify(&self, packet: &[u8]) -> Reply {
        let v4 = self.target.is_ipv4();
        // Raw IPv4 sockets deliver the IP header; datagram sockets and raw IPv6 do not.
        let icmp = if v4 && self.kind == IcmpSocketKind::Raw {
            match packet.first() {
                Some(b) => packet.get(usize::from(b & 0x0f) * 4..).unwrap_or(&[]),
                None => &[],
            }
        } else {
            packet
        };
        if icmp.len() < 8 {
            return Reply::Other;
        }
        let (echo_reply, echo_request) = if v4 { (0, 8) } else { (129, 128) };
        let ty = icmp[0];
        let seq = u16::from_be_bytes([icmp[6], icmp[7]]);
        let ident = u16::from_be_bytes([icmp[4], icmp[5]]);
        if ty == echo_reply {
            let token_ok = icmp.get(8..16) == Some(&self.token.to_be_bytes()[..]);
            // A datagram socket's identifier is the kernel's; its replies are already filtered.
            let ident_ok = self.kind == IcmpSocketKind::Datagram || ident == self.ident;
            if token_ok && ident_ok && seq == self.seq {
                return Reply::Ours;
            }
            return Reply::Other;
        }
        if ty == echo_request {
            return Reply::Other;
        }
        // An error quoting our request: [type, code, csum, 4 unused, original IP header, 8 bytes].
        let quoted = &icmp[8..];
        let inner = if v4 {
            match quoted.first() {
                Some(b) => quoted.get(usize::from(b & 0x0f) * 4..).unwrap_or(&[]),
                None => &[],
            }
        } else {
            quoted.get(40..).unwrap_or(&[])
        };
        if inner.len() >= 8
            && inner[0] == echo_request
            && u16::from_be_bytes([inner[6], inner[7]]) == self.seq
            && (self.kind == IcmpSocketKind::Datagram
                || u16::from_be_bytes([inner[4], inner[5]]) == self.ident)
        {
            return Reply::Error {
                icmp_type: ty,
                code: icmp[1],
            };
        }
        Reply::Other
    }
}

enum Reply {
    Ours,
    Error { icmp_type: u8, code: u8 },
    Other,
}

fn open_socket(target: IpAddr, ty: Type) -> std::io::Result<Socket> {
    if target.is_ipv4() {
        Socket::new(Domain::IPV4, ty, Some(Protocol::ICMPV4))
    } else {
        Socket::new(Domain::IPV6, ty, Some(Protocol::ICMPV6))
    }
}

fn error_kind(v4: bool, ty: u8) -> &'static str {
    match (v4, ty) {
        (true, 3) | (false, 1) => "destination unreachable",
        (true, 11) | (false, 3) => "time exceeded",
        (false, 2) => "packet too big",
        (true, 12) | (false, 4) => "parameter problem",
        _ => "error",
    }
}

/// An echo request: type, code, checksum, identifier, sequence, payload (token, zero).
/// ICMPv6's checksum covers a pseudo-header the kernel fills in, so it is left zero there.
fn encode_echo(v4: bool, ident: u16, seq: u16, token: u64) -> Vec<u8> {
    let mut p = vec![0u8; 8 + PAYLOAD_LEN];
    p[0] = if v4 { 8 } else { 128 };
    p[4..6].copy_from_slice(&ident.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..16].copy_from_slice(&token.to_be_bytes());
    if v4 {
        let c = checksum(&p);
        p[2..4].copy_from_slice(&c.to_be_bytes());
    }
    p
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = match chunk {
            [a, b] => u16::from_be_bytes([*a, *b]),
            [a] => u16::from_be_bytes([*a, 0]),
            _ => 0,
        };
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_verifies_to_zero() {
        let p = encode_echo(true, 0x1234, 7, 0xdead_beef);
        assert_eq!(checksum(&p), 0);
        // RFC 1071's example words.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
    }

    fn can_open(ty: Type) -> Result<(), String> {
        open_socket("127.0.0.1".parse().unwrap(), ty)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn pings_loopback_with_whatever_socket_is_allowed() {
        let dgram = can_open(Type::DGRAM);
        let raw = can_open(Type::RAW);
        let target: IpAddr = "127.0.0.1".parse().unwrap();
        match IcmpPinger::open(target, IcmpMode::Auto, &Bind::default()) {
            Ok(mut p) => {
                assert_eq!(
                    p.kind(),
                    if dgram.is_ok() {
                        IcmpSocketKind::Datagram
                    } else {
                        IcmpSocketKind::Raw
                    }
                );
                for _ in 0..3 {
                    let o = p.ping(Duration::from_secs(2)).await;
                    assert!(o.is_ok(), "{o:?} with {:?}", p.kind());
                }
            }
            Err(e) => {
                // Only acceptable when neither socket can be opened here, and then both
                // reasons must be named.
                assert!(dgram.is_err() && raw.is_err(), "{e}");
                match e {
                    ProbeError::IcmpUnavailable { .. } => {
                        let msg = e.to_string();
                        assert!(msg.contains("ping_group_range") && msg.contains("CAP_NET_RAW"));
                    }
                    e => panic!("{e:?}"),
                }
            }
        }
    }

    #[tokio::test]
    async fn each_mode_works_or_says_why_not() {
        let target: IpAddr = "127.0.0.1".parse().unwrap();
        for (mode, ty, hint) in [
            (IcmpMode::Datagram, Type::DGRAM, "ping_group_range"),
            (IcmpMode::Raw, Type::RAW, "CAP_NET_RAW"),
        ] {
            match (
                IcmpPinger::open(target, mode, &Bind::default()),
                can_open(ty),
            ) {
                (Ok(mut p), Ok(())) => {
                    let o = p.ping(Duration::from_secs(2)).await;
                    assert!(o.is_ok(), "{mode:?}: {o:?}");
                }
                (Err(e), Err(_)) => {
                    assert!(e.to_string().contains(hint), "{mode:?}: {e}");
                }
                (Ok(_), Err(e)) => panic!("{mode:?} opened although a plain open fails: {e}"),
                (Err(e), Ok(())) => panic!("{mode:?} failed although a plain open works: {e}"),
            }
        }
    }

    #[tokio::test]
    async fn pings_ipv6_loopback_when_available() {
        let target: IpAddr = "::1".parse().unwrap();
        if std::net::UdpSocket::bind("[::1]:0").is_err() {
            return; // no IPv6 on this host
        }
        if let Ok(mut p) = IcmpPinger::open(target, IcmpMode::Auto, &Bind::default()) {
            let o = p.ping(Duration::from_secs(2)).await;
            assert!(o.is_ok(), "{o:?} with {:?}", p.kind());
        }
    }
}
