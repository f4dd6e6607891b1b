//! TCP connect probe: the time from `connect()` to the completed handshake (SYN → SYN-ACK).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use super::Bind;
use crate::outcome::{ProbeError, ProbeOutcome};

/// Connects to `target` within `timeout`; the connection is closed at once.
pub async fn probe_tcp(target: SocketAddr, bind: &Bind, timeout: Duration) -> ProbeOutcome {
    let start = Instant::now();
    match tokio::time::timeout(timeout, connect(target, bind)).await {
        Err(_) => ProbeOutcome::Timeout { after: timeout },
        Ok(Ok(_stream)) => ProbeOutcome::Ok {
            rtt: start.elapsed(),
        },
        Ok(Err(outcome)) => outcome,
    }
}

/// A TCP connection to `target` from `bind` (also used by the HTTP probe).
pub(crate) async fn connect(target: SocketAddr, bind: &Bind) -> Result<TcpStream, ProbeOutcome> {
    let local = bind.local_for(target.ip()).map_err(ProbeOutcome::error)?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(target),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(|e| ProbeOutcome::error(ProbeError::io("socket", target, &e)))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| ProbeOutcome::error(ProbeError::io("set_nonblocking", target, &e)))?;
    bind.apply_device(&socket).map_err(ProbeOutcome::error)?;
    if bind.source.is_some() {
        socket
            .bind(&local.into())
            .map_err(|e| ProbeOutcome::error(ProbeError::io("bind", local, &e)))?;
    }
    let std_stream: std::net::TcpStream = socket.into();
    let socket = TcpSocket::from_std_stream(std_stream);
    match socket.connect(target).await {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Err(ProbeOutcome::Refused),
        Err(e) => Err(ProbeOutcome::error(ProbeError::io("connect", target, &e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn connects_to_a_listener() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let o = probe_tcp(addr, &Bind::default(), Duration::from_secs(2)).await;
        let rtt = o.rtt().unwrap_or_else(|| panic!("{o:?}"));
        assert!(rtt < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn closed_port_is_refused() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let o = probe_tcp(addr, &Bind::default(), Duration::from_secs(2)).await;
        assert_eq!(o, ProbeOutcome::Refused);
    }

    #[tokio::test]
    async fn binds_to_a_source_address_and_device() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let bind = Bind {
            source: Some("127.0.0.1".parse().unwrap()),
            device: Some("lo".into()),
        };
        let o = probe_tcp(addr, &bind, Duration::from_secs(2)).await;
        assert!(o.is_ok(), "{o:?}");
        // The accepted peer is the source we bound.
        let (_, peer) = l.accept().await.unwrap();
        assert_eq!(peer.ip().to_string(), "127.0.0.1");
    }

    #[tokio::test]
    async fn bad_bindings_are_named() {
        let target: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let bind = Bind {
            source: Some("::1".parse().unwrap()),
            device: None,
        };
        match probe_tcp(target, &bind, Duration::from_secs(1)).await {
            ProbeOutcome::Error {
                reason: ProbeError::Config(m),
            } => assert!(m.contains("::1"), "{m}"),
            o => panic!("{o:?}"),
        }
        let bind = Bind {
            source: None,
            device: Some("no-such-if0".into()),
        };
        match probe_tcp(target, &bind, Duration::from_secs(1)).await {
            ProbeOutcome::Error {
                reason: ProbeError::Io { op, target, .. },
            } => {
                assert!(op.starts_with("bind_device"));
                assert_eq!(target, "no-such-if0");
            }
            o => panic!("{o:?}"),
        }
    }
}
