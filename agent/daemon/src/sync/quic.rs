//! The QUIC transport (quinn; rustls with ring, as gRPC's TLS): one connection per attempt, from
//! a fresh UDP socket, to the same host and port as gRPC; the session runs on one bidirectional
//! stream the agent opens, each direction a sequence of length-delimited frames.
//!
//! * mTLS: the cloud's certificate must chain to `sync.tls.ca`; the agent presents its node
//!   certificate. ALPN [`ALPN`].
//! * Insecure (`sync.insecure = true`, development only): still encrypted (QUIC has no plain
//!   text), but the cloud's certificate is not verified and the agent presents none; the cloud
//!   takes the node id from the Hello.
//! * Liveness: QUIC's idle timeout is `sync.quic_idle_timeout_ms`, with QUIC keep-alives every
//!   third of it (the session's own Pings and idle timeout run on top).
//!
//! The frame codec is a copy of `outrider_ingest::framing` (the agent never depends on a cloud
//! crate); the two must agree.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use outrider_proto::framing::{encode_frame, FrameDecoder};
use outrider_proto::v1::{AgentFrame, CloudFrame};
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{ConnectionError, ReadError, RecvStream, SendStream, VarInt, WriteError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::sync::mpsc;

use super::{Conn, Endpoint, Inbound, Keep, TlsPem, TransportKind, OUTBOUND_FRAMES};

use outrider_proto::framing::ALPN;

/// Application close code: closed normally (the cloud's `outrider_ingest::quic::ERR_CLOSED`).
const ERR_CLOSED: u32 = 0;

/// Largest chunk read from the stream at once.
const READ_CHUNK: usize = 64 << 10;

/// Frames written to the stream in one go at most (more wait for the next write).
const WRITE_COALESCE: usize = 256 << 10;

/// Connects over QUIC; made once from the configuration.
#[derive(Clone)]
pub(super) struct QuicConnector {
    host: String,
    port: u16,
    server_name: String,
    client: quinn::ClientConfig,
    /// The active link's `sync_local_addr`: the UDP socket's source address.
    local: Option<IpAddr>,
}

impl QuicConnector {
    pub(super) fn new(
        endpoint: &Endpoint,
        tls: Option<&TlsPem>,
        idle_timeout: Duration,
        local: Option<IpAddr>,
    ) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| anyhow!("TLS protocol versions: {e}"))?;
        let mut tls_cfg = match tls {
            Some(pem) => {
                let mut roots = RootCertStore::empty();
                for c in certs(&pem.ca, "sync.tls.ca")? {
                    roots.add(c).map_err(|e| {
                        anyhow!("sync.tls.ca: cannot be used as a trust anchor: {e}")
                    })?;
                }
                let chain = certs(&pem.cert, "sync.tls.cert")?;
                let key = PrivateKeyDer::from_pem_slice(&pem.key)
                    .map_err(|e| anyhow!("sync.tls.key: not a PEM private key: {e}"))?;
                builder
                    .with_root_certificates(roots)
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| anyhow!("sync.tls.cert and sync.tls.key: {e}"))?
            }
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoServerVerification(provider)))
                .with_no_client_auth(),
        };
        tls_cfg.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = QuicClientConfig::try_from(tls_cfg)
            .map_err(|e| anyhow!("the TLS configuration cannot be used for QUIC: {e}"))?;
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(idle_timeout)
                    .map_err(|e| anyhow!("sync.quic_idle_timeout_ms: {e}"))?,
            ))
            .keep_alive_interval(Some(idle_timeout / 3))
            // The cloud never opens streams.
            .max_concurrent_bidi_streams(VarInt::from_u32(0))
            .max_concurrent_uni_streams(VarInt::from_u32(0));
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(Arc::new(transport));
        // Insecure mode verifies no name, but the TLS layer still needs a syntactically valid one.
        let server_name = match ServerName::try_from(endpoint.host.as_str()) {
            Ok(_) => endpoint.host.clone(),
            Err(_) if tls.is_none() => "outrider".into(),
            Err(e) => return Err(anyhow!("sync.cloud_url: host {:?}: {e}", endpoint.host)),
        };
        Ok(Self {
            host: endpoint.host.clone(),
            port: endpoint.port,
            server_name,
            client,
            local,
        })
    }

    /// A new connection (a fresh UDP socket, the QUIC handshake, the session's stream), within
    /// `timeout`.
    pub(super) async fn connect(self, timeout: Duration) -> anyhow::Result<Conn> {
        let attempt = async {
            let addr = tokio::net::lookup_host((self.host.as_str(), self.port))
                .await
                .with_context(|| format!("cannot resolve {}", self.host))?
                .next()
                .ok_or_else(|| anyhow!("{} has no address", self.host))?;
            let local: SocketAddr = match (self.local, addr) {
                (Some(ip), _) => (ip, 0).into(),
                (None, SocketAddr::V4(_)) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                (None, SocketAddr::V6(_)) => (Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            let endpoint = quinn::Endpoint::client(local)
                .with_context(|| format!("cannot open a UDP socket for QUIC on {local}"))?;
            let connection = endpoint
                .connect_with(self.client.clone(), addr, &self.server_name)
                .map_err(|e| anyhow!("cannot start a QUIC connection to {addr}: {e}"))?
                .await
                .map_err(|e| anyhow!("QUIC handshake with {addr} failed: {}", lost(&e)))?;
            let (send, recv) = match connection.open_bi().await {
                Ok(s) => s,
                Err(e) => return Err(anyhow!("cannot open the QUIC stream: {}", lost(&e))),
            };
            let (tx, rx) = mpsc::channel(OUTBOUND_FRAMES);
            tokio::spawn(write_frames(send, rx));
            anyhow::Ok(Conn {
                kind: TransportKind::Quic,
                tx,
                inbound: Inbound::Quic(FrameReader {
                    recv,
                    decoder: FrameDecoder::default(),
                }),
                keep: Keep::Quic(Guard {
                    connection,
                    _endpoint: endpoint,
                }),
            })
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| anyhow!("QUIC connection timed out after {} ms", timeout.as_millis()))?
    }
}

fn certs(pem: &[u8], key: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("{key}: not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err(anyhow!("{key}: no certificate in it"));
    }
    Ok(certs)
}

/// Keeps the connection (and its endpoint) open; closes it when dropped.
pub(super) struct Guard {
    connection: quinn::Connection,
    _endpoint: quinn::Endpoint,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.connection
            .close(VarInt::from_u32(ERR_CLOSED), b"closed by the agent");
    }
}

/// Why a connection ended, with the cloud's reason when it closed it.
fn lost(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ApplicationClosed(c) => format!("the cloud closed the connection: {c}"),
        ConnectionError::ConnectionClosed(c) => format!("the cloud aborted the connection: {c}"),
        other => other.to_string(),
    }
}

fn read_error(e: &ReadError) -> String {
    match e {
        ReadError::ConnectionLost(c) => format!("QUIC connection lost: {}", lost(c)),
        other => format!("QUIC stream failed: {other}"),
    }
}

fn write_error(e: &WriteError) -> String {
    match e {
        WriteError::ConnectionLost(c) => format!("QUIC connection lost: {}", lost(c)),
        other => format!("QUIC stream failed: {other}"),
    }
}

/// Moves the session's frames from `rx` to the stream, several per write when they queue up;
/// finishes the stream when `rx` closes. Exits on a write error (dropping `rx`, which the sync
/// task sees as a lost connection).
async fn write_frames(mut send: SendStream, mut rx: mpsc::Receiver<AgentFrame>) {
    let mut buf = Vec::new();
    while let Some(f) = rx.recv().await {
        buf.clear();
        let mut next = Some(f);
        while let Some(f) = next.take() {
            if let Err(e) = encode_frame(&f, &mut buf) {
                tracing::warn!(error = %e, "a sync frame cannot be sent over QUIC");
                return;
            }
            if buf.len() < WRITE_COALESCE {
                next = rx.try_recv().ok();
            }
        }
        if let Err(e) = send.write_all(&buf).await {
            tracing::debug!(error = %write_error(&e), "QUIC write failed");
            return;
        }
    }
    let _ = send.finish();
}

/// The cloud's frames from the session's stream.
pub(super) struct FrameReader {
    recv: RecvStream,
    decoder: FrameDecoder,
}

impl FrameReader {
    /// The next frame; `Ok(None)` when the cloud ended the stream. Cancel-safe: a chunk is
    /// either consumed whole into the decoder or not at all.
    pub(super) async fn next(&mut self) -> Result<Option<CloudFrame>, String> {
        loop {
            if let Some(f) = self.decoder.next_frame().map_err(|e| e.to_string())? {
                return Ok(Some(f));
            }
            match self.recv.read_chunk(READ_CHUNK, true).await {
                Ok(Some(chunk)) => self.decoder.push(&chunk.bytes),
                Ok(None) => {
                    return match self.decoder.pending() {
                        0 => Ok(None),
                        n => Err(format!(
                        "the cloud ended the QUIC stream inside a frame ({n} bytes of it received)"
                    )),
                    }
                }
                Err(e) => return Err(read_error(&e)),
            }
        }
    }
}

/// Insecure mode only: accepts any server certificate (the handshake's signatures are still
/// checked, so the session key is bound to the certificate presented, whatever it is).
#[derive(Debug)]
struct NoServerVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoServerVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
