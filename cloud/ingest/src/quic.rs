//! The QUIC transport (quinn, rustls with ring): a thin adapter that runs one
//! [`crate::session`] task per connection, on the connection's one bidirectional stream.
//!
//! * **Listening**: UDP on the same address and port as the gRPC (TCP) listener.
//! * **mTLS** (the same rules as gRPC): TLS 1.3 with ALPN [`ALPN`]; the handshake fails without a
//!   client certificate signed by the CA, and a verified certificate must name a node
//!   ([`node_identity`]) or the connection is closed with [`ERR_REFUSED`]. Either way the
//!   application never reads a byte of it. The node id comes only from the certificate.
//! * **Insecure** (development only): QUIC always encrypts, so the server presents a self-signed
//!   certificate made at start, which insecure agents do not verify, and asks for no client
//!   certificate; the node id comes from the Hello. Anyone who can reach the port can write as
//!   any node.
//! * **Framing**: the agent opens one bidirectional stream; each direction carries
//!   length-delimited `AgentFrame` / `CloudFrame` messages ([`crate::framing`], at most
//!   [`crate::framing::MAX_FRAME_BYTES`]); a malformed or oversized frame closes the connection
//!   with [`ERR_PROTOCOL`].
//! * **Liveness**: the session's Pings and idle timeout; QUIC's own idle timeout
//!   ([`IDLE_TIMEOUT`] here, the agent asks for less) is longer than the session keepalive.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use outrider_proto::v1::{AgentFrame, CloudFrame};
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{
    Connection, ConnectionError, Endpoint, Incoming, ReadError, RecvStream, SendStream, VarInt,
    WriteError,
};
use rustls::pki_types::CertificateDer;

use crate::framing::{encode_frame, FrameDecoder};
pub use crate::framing::{ALPN, MAX_FRAME_BYTES};
use crate::identity::node_identity;
use crate::server::Security;
use crate::session::{self, IngestStats, PeerInfo, SessionCtx, Transport};
use crate::tls::{
    files_context, insecure_quic_server_config, quic_server_config_from_pem, read_files,
};

/// Application close code: the session ended normally.
pub const ERR_CLOSED: u32 = 0;
/// Application close code: refused (no node identity, or insecure mode without a valid Hello).
pub const ERR_REFUSED: u32 = 1;
/// Application close code: a malformed or oversized frame.
pub const ERR_PROTOCOL: u32 = 2;
/// Application close code: the server is shutting down.
pub const ERR_SHUTDOWN: u32 = 3;

/// QUIC's idle timeout on the server's side (the lower of the two sides' applies). Well above the
/// session keepalive (Pings every few seconds of silence) and the session's own idle timeout, so
/// the session, not QUIC, decides when a quiet connection is dead.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest chunk read from a stream at once.
const READ_CHUNK: usize = 64 << 10;

/// The quinn server configuration for `security`: mTLS from the files (errors name them), or a
/// self-signed certificate and no client authentication when insecure.
pub fn server_config(security: &Security) -> anyhow::Result<quinn::ServerConfig> {
    let tls = match security {
        Security::Mtls(files) => {
            let (ca, cert, key) = read_files(files)?;
            quic_server_config_from_pem(&ca, &cert, &key).with_context(|| files_context(files))?
        }
        Security::Insecure => insecure_quic_server_config()?,
    };
    let crypto = QuicServerConfig::try_from(tls)
        .map_err(|e| anyhow!("the TLS configuration cannot serve QUIC: {e}"))?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(IDLE_TIMEOUT)
                .map_err(|e| anyhow!("QUIC idle timeout: {e}"))?,
        ))
        // One bidirectional stream per connection carries the session; the agent opens it.
        .max_concurrent_bidi_streams(VarInt::from_u32(1))
        .max_concurrent_uni_streams(VarInt::from_u32(0));
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// Accepts connections until the stop flag turns true; each handshake and session runs on its
/// own task.
pub(crate) async fn accept_loop(endpoint: Endpoint, ctx: SessionCtx, handshake_timeout: Duration) {
    let mut stop = ctx.stop.clone();
    loop {
        let incoming = tokio::select! {
            () = session::stopped(&mut stop) => return,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => return,
            },
        };
        tokio::spawn(serve(incoming, ctx.clone(), handshake_timeout));
    }
}

/// The node named by the connection's verified client certificate.
fn peer_node(conn: &Connection) -> Result<String, String> {
    let certs = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or_else(|| "no client certificate".to_string())?;
    let cert = certs
        .first()
        .ok_or_else(|| "no client certificate".to_string())?;
    node_identity(cert.as_ref()).map_err(|e| format!("client certificate names no node: {e}"))
}

/// One connection: handshake (mTLS), identity, the session's stream, the session.
async fn serve(incoming: Incoming, ctx: SessionCtx, handshake_timeout: Duration) {
    let remote = incoming.remote_address();
    let mut stop = ctx.stop.clone();
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(remote = %remote, error = %e, "QUIC connection refused");
            return;
        }
    };
    let conn = tokio::select! {
        r = tokio::time::timeout(handshake_timeout, connecting) => match r {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::warn!(remote = %remote, error = %e, "QUIC TLS handshake refused");
                return;
            }
            Err(_) => {
                tracing::warn!(remote = %remote, "QUIC TLS handshake timed out");
                return;
            }
        },
        () = session::stopped(&mut stop) => return,
    };
    let node = if ctx.insecure {
        None
    } else {
        match peer_node(&conn) {
            Ok(node) => Some(node),
            Err(e) => {
                IngestStats::add(&ctx.stats.refused, 1);
                tracing::warn!(remote = %remote, error = %e, "QUIC connection refused");
                conn.close(VarInt::from_u32(ERR_REFUSED), e.as_bytes());
                return;
            }
        }
    };
    tracing::debug!(remote = %remote, node = ?node, "QUIC connection accepted");
    let (send, recv) = tokio::select! {
        r = tokio::time::timeout(handshake_timeout, conn.accept_bi()) => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(remote = %remote, error = %e, "QUIC connection ended before its stream");
                return;
            }
            Err(_) => {
                tracing::warn!(remote = %remote, "QUIC connection opened no stream in time");
                conn.close(VarInt::from_u32(ERR_PROTOCOL), b"no stream in time");
                return;
            }
        },
        () = session::stopped(&mut stop) => {
            conn.close(VarInt::from_u32(ERR_SHUTDOWN), b"server shutting down");
            return;
        }
    };
    let peer = PeerInfo {
        node,
        remote: Some(remote),
        transport: "quic",
    };
    let t = QuicTransport {
        conn,
        send,
        recv,
        decoder: FrameDecoder::new(),
        code: ERR_CLOSED,
        out: Vec::new(),
    };
    session::run(ctx, peer, t).await;
}

/// A session's QUIC connection and its stream.
struct QuicTransport {
    conn: Connection,
    send: SendStream,
    recv: RecvStream,
    decoder: FrameDecoder,
    /// The close code: [`ERR_PROTOCOL`] once a frame was malformed.
    code: u32,
    out: Vec<u8>,
}

impl Transport for QuicTransport {
    async fn recv(&mut self) -> Result<Option<AgentFrame>, String> {
        loop {
            match self.decoder.next_frame::<AgentFrame>() {
                Ok(Some(f)) => return Ok(Some(f)),
                Ok(None) => {}
                Err(e) => {
                    self.code = ERR_PROTOCOL;
                    return Err(e.to_string());
                }
            }
            // Cancel-safe: a chunk is either consumed whole into the decoder or not at all.
            match self.recv.read_chunk(READ_CHUNK, true).await {
                Ok(Some(chunk)) => self.decoder.push(&chunk.bytes),
                Ok(None) => {
                    return self
                        .decoder
                        .finish()
                        .map(|()| None)
                        .map_err(|e| e.to_string())
                }
                // The agent closed the connection normally: it ended the session.
                Err(ReadError::ConnectionLost(ConnectionError::ApplicationClosed(c)))
                    if c.error_code == VarInt::from_u32(ERR_CLOSED)
                        && self.decoder.pending() == 0 =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(describe(&e)),
            }
        }
    }

    async fn send(&mut self, frame: CloudFrame) -> Result<(), String> {
        self.out.clear();
        encode_frame(&frame, &mut self.out).map_err(|e| e.to_string())?;
        self.send.write_all(&self.out).await.map_err(|e| match e {
            WriteError::ConnectionLost(c) => format!("connection lost: {c}"),
            other => other.to_string(),
        })
    }

    fn refuse(&mut self, message: &str) {
        self.code = ERR_REFUSED;
        self.conn
            .close(VarInt::from_u32(ERR_REFUSED), message.as_bytes());
    }

    fn finish(&mut self) {
        let _ = self.send.finish();
    }

    fn close(&mut self, reason: &str) {
        let code = if reason == "server shutting down" {
            ERR_SHUTDOWN
        } else {
            self.code
        };
        self.conn.close(VarInt::from_u32(code), reason.as_bytes());
    }
}

/// A read error with its cause (quinn's "connection lost" alone does not say why).
fn describe(e: &ReadError) -> String {
    match e {
        ReadError::ConnectionLost(c) => format!("connection lost: {c}"),
        other => other.to_string(),
    }
}

/// Binds the QUIC endpoint on `addr` (UDP).
pub(crate) fn bind(cfg: quinn::ServerConfig, addr: SocketAddr) -> std::io::Result<Endpoint> {
    Endpoint::server(cfg, addr)
}
