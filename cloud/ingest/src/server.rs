//! The ingest server: binds, accepts TCP connections, does the mTLS handshake itself (tokio-rustls,
//! ring), and serves the tonic `Sync` service over the accepted streams.
//!
//! A connection without a client certificate signed by the CA fails the TLS handshake and is
//! dropped: nothing of it reaches gRPC, so no application data is read. A verified certificate
//! must also name a node (`urn:outrider:node:NODE`), or the connection is dropped too.
//!
//! `insecure` mode serves plain-text gRPC and takes the node id from the Hello; it logs a loud
//! warning at every start.

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

use crate::grpc::{IngestStats, PeerInfo, PeerStream, SyncService};
use crate::identity::node_identity;
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
    pub listen: SocketAddr,
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
        let listener = TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("cannot bind the ingest server on {}", cfg.listen))?;
        let addr = listener.local_addr().context("ingest listener address")?;
        Ok(Server {
            cfg,
            listener,
            addr,
            tls,
            stats: Arc::default(),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
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
        let service = SyncService::new(
            Arc::new(store),
            cfg.session.clone(),
            tls.is_none(),
            stop_rx.clone(),
            alive_tx,
            stats,
        );
        let accept = tokio::spawn(accept_loop(
            listener,
            tls,
            cfg.tls_handshake_timeout,
            conn_tx,
            stop_rx.clone(),
        ));
        let mut stop_wait = stop_rx.clone();
        let mut grpc = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service.into_server())
                .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), async move {
                    let _ = stop_wait.wait_for(|s| *s).await;
                }),
        );
        tracing::info!(listen = %addr, "ingest server listening");
        let failed = tokio::select! {
            () = shutdown => None,
            r = &mut grpc => Some(r),
        };
        stop_tx.send_replace(true);
        accept.abort();
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
        // Every session task and store call holds a clone of `alive_tx`.
        let _ = alive_rx.recv().await;
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

/// Resolves when the stop flag turns true (or its sender is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
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
        let conns = conns.clone();
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
                    tracing::warn!(remote = %remote, error = %e, "client certificate names no node: refused");
                    return;
                }
                None => {
                    tracing::warn!(remote = %remote, "no client certificate: refused");
                    return;
                }
            };
            tracing::debug!(remote = %remote, node = %node, "TLS connection accepted");
            let info = PeerInfo {
                node: Some(node),
                remote: Some(remote),
            };
            let _ = conns
                .send(Ok(PeerStream::new(Conn::Tls(Box::new(stream)), info)))
                .await;
        });
    }
}
