//! The ingest server: binds TCP (gRPC) and, unless disabled, UDP (QUIC) on the same address and
//! port, and serves both transports with one set of sessions, store and counters.
//!
//! * TCP: accepts connections, does the mTLS handshake itself (tokio-rustls, ring), and serves
//!   the tonic `Sync` service ([`crate::grpc`]) over the accepted streams.
//! * UDP: a quinn endpoint ([`crate::quic`]) with the same mTLS rules.
//!
//! A connection without a client certificate signed by the CA fails the TLS handshake and is
//! dropped: nothing of it reaches a session, so no application data is read. A verified
//! certificate must also name a node (`urn:outrider:node:NODE`), or the connection is dropped too.
//!
//! `insecure` mode serves plain-text gRPC (and QUIC with a self-signed certificate, see
//! [`crate::quic`]) and takes the node id from the Hello; it logs a loud warning at every start.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use outrider_runtime::sync::CloudConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use crate::grpc::{PeerStream, SyncService};
use crate::identity::node_identity;
use crate::session::{IngestStats, PeerInfo, SessionCtx};
use crate::store::IngestStore;
use crate::tls::{server_config, TlsFiles};

/// How the server authenticates agents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Security {
    /// mTLS: the node id comes from the verified client certificate.
    Mtls(TlsFiles),
    /// Plain text, no authentication: the node id comes from the Hello. Development only.
    Insecure,
}

/// The ingest server's configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// TCP (gRPC), and UDP (QUIC) on the same address and port.
    pub listen: SocketAddr,
    /// Also serve QUIC on UDP `listen` (default true).
    pub quic: bool,
    pub security: Security,
    /// Credit and limits of every session.
    pub session: CloudConfig,
    /// A TLS handshake not done in this long is dropped.
    pub tls_handshake_timeout: Duration,
    /// At shutdown, connections still open after this long are cut off.
    pub drain_timeout: Duration,
}

impl ServerConfig {
    pub fn new(listen: SocketAddr, security: Security) -> Self {
        Self {
            listen,
            quic: true,
            security,
            session: CloudConfig::default(),
            tls_handshake_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// A bound server, not yet serving: [`Server::local_addr`] tells the port when bound to port 0.
pub struct Server {
    cfg: ServerConfig,
    listener: TcpListener,
    addr: SocketAddr,
    quic: Option<quinn::Endpoint>,
    tls: Option<TlsAcceptor>,
    stats: Arc<IngestStats>,
}

impl Server {
    /// Loads the TLS files (errors name them) and binds the address.
    pub async fn bind(cfg: ServerConfig) -> anyhow::Result<Server> {
        let tls = match &cfg.security {
            Security::Mtls(files) => Some(TlsAcceptor::from(server_config(files)?)),
            Security::Insecure => None,
        };
        let quic_cfg = match cfg.quic {
            true => Some(crate::quic::server_config(&cfg.security)?),
            false => None,
        };
        let (listener, quic) = bind_both(cfg.listen, quic_cfg).await?;
        let addr = listener.local_addr().context("ingest listener address")?;
        Ok(Server {
            cfg,
            listener,
            addr,
            quic,
            tls,
            stats: Arc::default(),
        })
    }

    /// The address the server listens on (TCP, and UDP when QUIC is on).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The UDP address of the QUIC endpoint (the same as [`Server::local_addr`]), if QUIC is on.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.quic.as_ref().and_then(|e| e.local_addr().ok())
    }

    /// The service's counters (they stay readable after the server stops).
    pub fn stats(&self) -> Arc<IngestStats> {
        self.stats.clone()
    }

    /// Serves until `shutdown` resolves; then stops accepting, ends every session, and returns
    /// once no session or store call is left (so the store can be closed and reopened).
    pub async fn run<S: IngestStore>(
        self,
        store: S,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let Server {
            cfg,
            listener,
            addr,
            quic,
            tls,
            stats,
        } = self;
        if tls.is_none() {
            tracing::warn!(
                listen = %addr,
                "INSECURE SYNC INGEST: plain text, no client certificates; the node id is taken \
                 from the Hello, so anyone who can reach this port can write as any node. \
                 Development only: configure [tls] for anything else."
            );
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
        let (conn_tx, conn_rx) = mpsc::channel::<std::io::Result<PeerStream<Conn>>>(64);
        let ctx = SessionCtx {
            store: Arc::new(store),
            cfg: cfg.session.clone(),
            insecure: tls.is_none(),
            stop: stop_rx.clone(),
            alive: alive_tx,
            stats,
        };
        let quic_accept = quic.clone().map(|endpoint| {
            tokio::spawn(crate::quic::accept_loop(
                endpoint,
                ctx.clone(),
                cfg.tls_handshake_timeout,
            ))
        });
        let refused = ctx.stats.clone();
        let service = SyncService::new(ctx);
        let accept = tokio::spawn(accept_loop(
            listener,
            tls,
            cfg.tls_handshake_timeout,
            conn_tx,
            stop_rx.clone(),
            refused,
        ));
        let mut stop_wait = stop_rx.clone();
        let mut grpc = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service.into_server())
                .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), async move {
                    let _ = stop_wait.wait_for(|s| *s).await;
                }),
        );
        tracing::info!(listen = %addr, quic = quic.is_some(), "ingest server listening");
        let failed = tokio::select! {
            () = shutdown => None,
            r = &mut grpc => Some(r),
        };
        stop_tx.send_replace(true);
        accept.abort();
        if let Some(endpoint) = &quic {
            // Sessions end on the stop flag; this also ends handshakes and unblocks writes.
            endpoint.close(
                quinn::VarInt::from_u32(crate::quic::ERR_SHUTDOWN),
                b"server shutting down",
            );
        }
        let result = match failed {
            Some(r) => match r {
                Ok(Ok(())) => Err(anyhow::anyhow!("the ingest server stopped unexpectedly")),
                Ok(Err(e)) => Err(anyhow::Error::new(e).context("the ingest server failed")),
                Err(e) => Err(anyhow::Error::new(e).context("the ingest server task failed")),
            },
            None => match tokio::time::timeout(cfg.drain_timeout, &mut grpc).await {
                Ok(Ok(r)) => r.context("the ingest server failed"),
                Ok(Err(e)) => Err(anyhow::Error::new(e).context("the ingest server task failed")),
                Err(_) => {
                    tracing::warn!("connections still open at shutdown were cut off");
                    grpc.abort();
                    let _ = grpc.await;
                    Ok(())
                }
            },
        };
        let _ = accept.await;
        if let Some(h) = quic_accept {
            let _ = h.await;
        }
        // Every session task and store call holds a clone of `alive_tx`.
        let _ = alive_rx.recv().await;
        if let Some(endpoint) = quic {
            // Let the close frames go out; the UDP port is free once the endpoint is dropped.
            let _ = tokio::time::timeout(cfg.drain_timeout, endpoint.wait_idle()).await;
        }
        tracing::info!(listen = %addr, "ingest server stopped");
        result
    }
}

/// Binds and serves until `shutdown` resolves. See [`Server`].
pub async fn serve<S: IngestStore>(
    cfg: ServerConfig,
    store: S,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    Server::bind(cfg).await?.run(store, shutdown).await
}

pub(crate) use crate::session::stopped;

/// Binds TCP on `addr` and, with a QUIC configuration, UDP on the same address and port. For
/// port 0 the UDP port is the one TCP got; if that one is taken on UDP, another is tried.
async fn bind_both(
    addr: SocketAddr,
    quic: Option<quinn::ServerConfig>,
) -> anyhow::Result<(TcpListener, Option<quinn::Endpoint>)> {
    let mut attempt = 0;
    loop {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot bind the ingest server on {addr} (TCP)"))?;
        let Some(qc) = &quic else {
            return Ok((listener, None));
        };
        let local = listener.local_addr().context("ingest listener address")?;
        match crate::quic::bind(qc.clone(), local) {
            Ok(endpoint) => return Ok((listener, Some(endpoint))),
            Err(e)
                if addr.port() == 0
                    && attempt < 16
                    && e.kind() == std::io::ErrorKind::AddrInUse =>
            {
                attempt += 1;
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "cannot bind the ingest server's QUIC endpoint on {local} (UDP; \
                     set quic = false to serve gRPC only)"
                )))
            }
        }
    }
}

/// A connection's transport.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Conn::Plain($s) => {
                let $s = std::pin::Pin::new($s);
                $e
            }
            Conn::Tls($s) => {
                let $s = std::pin::Pin::new(&mut **$s);
                $e
            }
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    conns: mpsc::Sender<std::io::Result<PeerStream<Conn>>>,
    mut stop: watch::Receiver<bool>,
    stats: Arc<IngestStats>,
) {
    loop {
        let (tcp, remote) = tokio::select! {
            () = stopped(&mut stop) => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let Some(tls) = tls.clone() else {
            let info = PeerInfo {
                node: None,
                remote: Some(remote),
                transport: "grpc",
            };
            if conns
                .send(Ok(PeerStream::new(Conn::Plain(tcp), info)))
                .await
                .is_err()
            {
                return;
            }
            continue;
        };
        // Handshakes run on their own so a slow client cannot hold up the others.
        let (conns, stats) = (conns.clone(), stats.clone());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(handshake_timeout, tls.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::warn!(remote = %remote, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::warn!(remote = %remote, "TLS handshake timed out");
                    return;
                }
            };
            let cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first());
            let node = match cert.map(|c| node_identity(c.as_ref())) {
                Some(Ok(node)) => node,
                Some(Err(e)) => {
                    IngestStats::add(&stats.refused, 1);
                    tracing::warn!(remote = %remote, error = %e, "client certificate names no node: refused");
                    return;
                }
                None => {
                    IngestStats::add(&stats.refused, 1);
                    tracing::warn!(remote = %remote, "no client certificate: refused");
                    return;
                }
            };
            tracing::debug!(remote = %remote, node = %node, "TLS connection accepted");
            let info = PeerInfo {
                node: Some(node),
                remote: Some(remote),
                transport: "grpc",
            };
            let _ = conns
                .send(Ok(PeerStream::new(Conn::Tls(Box::new(stream)), info)))
                .await;
        });
    }
}
