//! UDP echo: a BFD-like probe (send a small datagram with a sequence number and a timestamp,
//! wait for its echo) and [`serve_udp_echo`], the responder the cloud side runs.
//!
//! # Datagram (28 bytes, big-endian)
//!
//! | bytes | field |
//! | --- | --- |
//! | 0..4 | magic `ORPE` |
//! | 4 | kind: 1 request, 2 reply |
//! | 5..8 | zero |
//! | 8..12 | session: random per client socket |
//! | 12..20 | seq: per client, from 1 |
//! | 20..28 | sender's timestamp (ns on its monotonic clock; echoed, not interpreted) |
//!
//! The responder answers only well-formed *requests*, with the same bytes and kind 2, to the
//! sender: a reply is never the size of more than its request (no amplification) and replies are
//! never answered (two responders cannot ping-pong). Longer requests (padding, for path MTU
//! checks) are echoed whole up to [`MAX_DATAGRAM`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::Bind;
use crate::outcome::{ProbeError, ProbeOutcome};

/// The datagram's magic.
pub const MAGIC: [u8; 4] = *b"ORPE";
/// The size of an echo datagram without padding.
pub const DATAGRAM_LEN: usize = 28;
/// The largest datagram the responder echoes.
pub const MAX_DATAGRAM: usize = 1500;

const KIND_REQUEST: u8 = 1;
const KIND_REPLY: u8 = 2;

/// One echo datagram's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EchoHeader {
    pub reply: bool,
    pub session: u32,
    pub seq: u64,
    pub sent_ns: u64,
}

impl EchoHeader {
    pub fn encode(&self) -> [u8; DATAGRAM_LEN] {
        let mut b = [0u8; DATAGRAM_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = if self.reply { KIND_REPLY } else { KIND_REQUEST };
        b[8..12].copy_from_slice(&self.session.to_be_bytes());
        b[12..20].copy_from_slice(&self.seq.to_be_bytes());
        b[20..28].copy_from_slice(&self.sent_ns.to_be_bytes());
        b
    }

    /// Parses a datagram; `None` if it is not an echo datagram.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < DATAGRAM_LEN || b[0..4] != MAGIC {
            return None;
        }
        let reply = match b[4] {
            KIND_REQUEST => false,
            KIND_REPLY => true,
            _ => return None,
        };
        let u32_at = |i: usize| {
            b.get(i..i + 4)
                .and_then(|s| s.try_into().ok())
                .map(u32::from_be_bytes)
        };
        let u64_at = |i: usize| {
            b.get(i..i + 8)
                .and_then(|s| s.try_into().ok())
                .map(u64::from_be_bytes)
        };
        Some(Self {
            reply,
            session: u32_at(8)?,
            seq: u64_at(12)?,
            sent_ns: u64_at(20)?,
        })
    }
}

/// The client side: a connected UDP socket, kept across probes.
#[derive(Debug)]
pub struct UdpEchoClient {
    socket: UdpSocket,
    target: SocketAddr,
    session: u32,
    seq: u64,
    epoch: Instant,
    late_replies: u64,
}

impl UdpEchoClient {
    /// Opens a socket bound as `bind` says and connected to `target` (so an ICMP port
    /// unreachable comes back as [`ProbeOutcome::Refused`]). Needs a tokio runtime.
    pub fn open(target: SocketAddr, bind: &Bind) -> Result<Self, ProbeError> {
        let local = bind.local_for(target.ip())?;
        let s = socket2::Socket::new(
            socket2::Domain::for_address(target),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .map_err(|e| ProbeError::io("socket", target, &e))?;
        s.set_nonblocking(true)
            .map_err(|e| ProbeError::io("set_nonblocking", target, &e))?;
        bind.apply_device(&s)?;
        s.bind(&local.into())
            .map_err(|e| ProbeError::io("bind", local, &e))?;
        s.connect(&target.into())
            .map_err(|e| ProbeError::io("connect", target, &e))?;
        let socket =
            UdpSocket::from_std(s.into()).map_err(|e| ProbeError::io("register", target, &e))?;
        Ok(Self {
            socket,
            target,
            session: super::random_u64() as u32,
            seq: 0,
            epoch: Instant::now(),
            late_replies: 0,
        })
    }

    /// Replies that arrived after their probe's deadline (skipped).
    pub fn late_replies(&self) -> u64 {
        self.late_replies
    }

    /// Sends one echo request and waits up to `timeout` for its reply.
    pub async fn probe(&mut self, timeout: Duration) -> ProbeOutcome {
        self.seq += 1;
        let seq = self.seq;
        let start = Instant::now();
        let deadline = start + timeout;
        let req = EchoHeader {
            reply: false,
            session: self.session,
            seq,
            sent_ns: u64::try_from(start.duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX),
        }
        .encode();
        match tokio::time::timeout_at(deadline, self.socket.send(&req)).await {
            Err(_) => return ProbeOutcome::Timeout { after: timeout },
            Ok(Err(e)) => return send_error(e, self.target),
            Ok(Ok(_)) => {}
        }
        let mut buf = [0u8; MAX_DATAGRAM];
        loop {
            let n = match tokio::time::timeout_at(deadline, self.socket.recv(&mut buf)).await {
                Err(_) => return ProbeOutcome::Timeout { after: timeout },
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return ProbeOutcome::Refused
                }
                Ok(Err(e)) => return ProbeOutcome::error(ProbeError::io("recv", self.target, &e)),
                Ok(Ok(n)) => n,
            };
            match EchoHeader::decode(&buf[..n]) {
                Some(h) if h.reply && h.session == self.session && h.seq == seq => {
                    return ProbeOutcome::Ok {
                        rtt: start.elapsed(),
                    }
                }
                Some(h) if h.reply && h.session == self.session && h.seq < seq => {
                    self.late_replies += 1;
                }
                _ => {} // not ours
            }
        }
    }
}

fn send_error(e: std::io::Error, target: SocketAddr) -> ProbeOutcome {
    if e.kind() == std::io::ErrorKind::ConnectionRefused {
        ProbeOutcome::Refused
    } else {
        ProbeOutcome::error(ProbeError::io("send", target, &e))
    }
}

/// Counters of a responder.
#[derive(Debug, Default)]
pub struct EchoStats {
    /// Requests answered.
    pub echoed: AtomicU64,
    /// Datagrams that were not echo requests (ignored).
    pub ignored: AtomicU64,
    /// Replies that could not be sent.
    pub send_errors: AtomicU64,
}

/// Answers echo requests on `socket` until a receive error that is not transient; never returns
/// otherwise (stop it by dropping or aborting its task, or race it with a shutdown signal).
/// Send errors (an unreachable client) are counted and skipped.
pub async fn serve_udp_echo(socket: &UdpSocket, stats: &EchoStats) -> Result<(), ProbeError> {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                let local = socket
                    .local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| "the echo socket".into());
                return Err(ProbeError::io("recv_from", local, &e));
            }
        };
        let datagram = &mut buf[..n];
        match EchoHeader::decode(datagram) {
            Some(h) if !h.reply => {
                datagram[4] = KIND_REPLY;
                match socket.send_to(datagram, from).await {
                    Ok(_) => stats.echoed.fetch_add(1, Relaxed),
                    Err(_) => stats.send_errors.fetch_add(1, Relaxed),
                };
            }
            _ => {
                stats.ignored.fetch_add(1, Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    async fn responder() -> (SocketAddr, Arc<EchoStats>, tokio::task::JoinHandle<()>) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let stats = Arc::new(EchoStats::default());
        let s = stats.clone();
        let task = tokio::spawn(async move {
            let _ = serve_udp_echo(&socket, &s).await;
        });
        (addr, stats, task)
    }

    #[test]
    fn header_round_trips_and_rejects_garbage() {
        let h = EchoHeader {
            reply: false,
            session: 7,
            seq: 42,
            sent_ns: 99,
        };
        assert_eq!(EchoHeader::decode(&h.encode()), Some(h));
        assert_eq!(EchoHeader::decode(b"ORPE"), None);
        let mut b = h.encode();
        b[4] = 9;
        assert_eq!(EchoHeader::decode(&b), None);
        b = h.encode();
        b[0] = b'X';
        assert_eq!(EchoHeader::decode(&b), None);
    }

    #[tokio::test]
    async fn echoes_and_times_each_probe() {
        let (addr, stats, task) = responder().await;
        let mut c = UdpEchoClient::open(addr, &Bind::default()).unwrap();
        for _ in 0..5 {
            let o = c.probe(Duration::from_secs(2)).await;
            assert!(o.is_ok(), "{o:?}");
        }
        assert_eq!(stats.echoed.load(Relaxed), 5);
        task.abort();
    }

    #[tokio::test]
    async fn silent_port_times_out_at_the_deadline() {
        // A bound socket nobody reads: no reply and no ICMP error.
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut c = UdpEchoClient::open(silent.local_addr().unwrap(), &Bind::default()).unwrap();
        let start = Instant::now();
        let o = c.probe(Duration::from_millis(150)).await;
        assert_eq!(
            o,
            ProbeOutcome::Timeout {
                after: Duration::from_millis(150)
            }
        );
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(150) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn closed_port_is_refused() {
        let gone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = gone.local_addr().unwrap();
        drop(gone);
        let mut c = UdpEchoClient::open(addr, &Bind::default()).unwrap();
        // The first send provokes the ICMP port unreachable; the recv reports it.
        let o = c.probe(Duration::from_secs(2)).await;
        assert_eq!(o, ProbeOutcome::Refused);
    }

    #[tokio::test]
    async fn late_replies_are_skipped_not_taken_for_the_current_probe() {
        // A "responder" that answers only when told, so a reply arrives after its deadline.
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut c = UdpEchoClient::open(server.local_addr().unwrap(), &Bind::default()).unwrap();
        let o = c.probe(Duration::from_millis(50)).await;
        assert!(matches!(o, ProbeOutcome::Timeout { .. }));
        // Receive request 1 now and echo it late, then start probe 2 and echo it too.
        let mut buf = [0u8; 64];
        let (n, from) = server.recv_from(&mut buf).await.unwrap();
        buf[4] = KIND_REPLY;
        server.send_to(&buf[..n], from).await.unwrap();
        let probe2 = c.probe(Duration::from_secs(2));
        let echo2 = async {
            let mut b = [0u8; 64];
            let (n, from) = server.recv_from(&mut b).await.unwrap();
            assert_eq!(EchoHeader::decode(&b[..n]).unwrap().seq, 2);
            b[4] = KIND_REPLY;
            server.send_to(&b[..n], from).await.unwrap();
        };
        let (o, ()) = tokio::join!(probe2, echo2);
        assert!(o.is_ok(), "{o:?}");
        assert_eq!(c.late_replies(), 1);
    }

    #[tokio::test]
    async fn responder_ignores_replies_and_garbage() {
        let (addr, stats, task) = responder().await;
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let reply = EchoHeader {
            reply: true,
            session: 1,
            seq: 1,
            sent_ns: 0,
        }
        .encode();
        s.send_to(&reply, addr).await.unwrap();
        s.send_to(b"hello", addr).await.unwrap();
        // Then a real request, whose echo proves the two before it were read and dropped.
        let req = EchoHeader {
            reply: false,
            session: 1,
            seq: 2,
            sent_ns: 0,
        }
        .encode();
        s.send_to(&req, addr).await.unwrap();
        let mut b = [0u8; 64];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), s.recv_from(&mut b))
            .await
            .unwrap()
            .unwrap();
        let h = EchoHeader::decode(&b[..n]).unwrap();
        assert!(h.reply);
        assert_eq!(h.seq, 2);
        assert_eq!(stats.ignored.load(Relaxed), 2);
        task.abort();
    }
}
