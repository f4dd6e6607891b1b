//! The gRPC transport: the tonic `outrider.v1.Sync` service, a thin adapter that runs one
//! [`crate::session`] task (a sans-IO `CloudSession`) per bidirectional stream.
//!
//! The node identity comes from the connection ([`PeerInfo`], set by the server's TLS accept loop
//! from the verified client certificate); a stream without one is refused with UNAUTHENTICATED
//! unless the server is insecure (plain text; the node id then comes from the Hello).

use std::pin::Pin;
use std::task::{Context, Poll};

use outrider_proto::v1::sync_server::{Sync as SyncApi, SyncServer};
use outrider_proto::v1::{AgentFrame, CloudFrame};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status, Streaming};

use crate::session::{self, SessionCtx, Transport};
pub use crate::session::{IngestStats, PeerInfo};

/// Frames buffered towards one agent. The session emits about one frame per batch received,
/// and batches are bounded by the credit window, so this rarely fills; when it does, the session
/// waits (and stops reading the agent) until the agent reads.
const OUTBOUND_FRAMES: usize = 1024;

/// A connection's byte stream (plain TCP or TLS) with what is known of its peer, which tonic
/// hands to every request as the [`PeerInfo`] extension.
pub struct PeerStream<S> {
    inner: S,
    info: PeerInfo,
}

impl<S> PeerStream<S> {
    pub fn new(inner: S, info: PeerInfo) -> Self {
        Self { inner, info }
    }
}

impl<S> Connected for PeerStream<S> {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PeerStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PeerStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The `Sync` service.
pub struct SyncService {
    ctx: SessionCtx,
}

impl SyncService {
    pub(crate) fn new(ctx: SessionCtx) -> Self {
        Self { ctx }
    }

    pub fn into_server(self) -> SyncServer<Self> {
        SyncServer::new(self)
    }
}

#[tonic::async_trait]
impl SyncApi for SyncService {
    type SessionStream = ReceiverStream<Result<CloudFrame, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<AgentFrame>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut peer = request
            .extensions()
            .get::<PeerInfo>()
            .cloned()
            .unwrap_or_default();
        peer.transport = "grpc";
        if peer.node.is_none() && !self.ctx.insecure {
            IngestStats::add(&self.ctx.stats.refused, 1);
            return Err(Status::unauthenticated("no verified client certificate"));
        }
        let (tx, rx) = mpsc::channel(OUTBOUND_FRAMES);
        let transport = GrpcTransport {
            inbound: request.into_inner(),
            tx: Some(tx),
        };
        tokio::spawn(session::run(self.ctx.clone(), peer, transport));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A session's gRPC stream: the request stream in, the response channel out.
struct GrpcTransport {
    inbound: Streaming<AgentFrame>,
    /// `None` once the response ended.
    tx: Option<mpsc::Sender<Result<CloudFrame, Status>>>,
}

impl Transport for GrpcTransport {
    async fn recv(&mut self) -> Result<Option<AgentFrame>, String> {
        self.inbound.message().await.map_err(|s| s.to_string())
    }

    async fn send(&mut self, frame: CloudFrame) -> Result<(), String> {
        match &self.tx {
            Some(tx) => tx
                .send(Ok(frame))
                .await
                .map_err(|_| "the response stream is gone".to_string()),
            None => Err("the response stream has ended".into()),
        }
    }

    fn refuse(&mut self, message: &str) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.try_send(Err(Status::unauthenticated(message.to_string())));
        }
    }

    fn finish(&mut self) {
        // The response ends (its last frames, then the trailers) once the sender is gone.
        self.tx = None;
    }

    fn close(&mut self, _reason: &str) {
        self.tx = None;
    }
}
