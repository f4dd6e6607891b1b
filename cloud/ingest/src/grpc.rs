//! The tonic `outrider.v1.Sync` service: one [`CloudSession`] per bidirectional stream.
//!
//! The node identity comes from the connection ([`PeerInfo`], set by the server's TLS accept loop
//! from the verified client certificate). Each stream runs a task that feeds the session the
//! agent's frames, runs its timers (milliseconds since the stream started, on tokio's monotonic
//! clock), sends the frames it emits, and executes its store actions on the blocking pool, one at
//! a time (the session has at most one commit outstanding).
//!
//! Insecure mode (plain text, no certificate): the node id is taken from the first frame, which
//! must be a Hello with a valid `node_id`. Anyone who can reach the port can then write as any
//! node: development only.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use outrider_proto::v1::sync_server::{Sync as SyncApi, SyncServer};
use outrider_proto::v1::{agent_frame, AgentFrame, CloudFrame};
use outrider_runtime::sync::{CloudAction, CloudConfig, CloudSession, CommitOutcome};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status, Streaming};

use crate::identity::validate_node_name;
use crate::store::{IngestStore, StoreError};

/// Frames buffered towards one agent. The session emits about one frame per batch received,
/// and batches are bounded by the credit window, so this rarely fills; when it does, the session
/// waits (and stops reading the agent) until the agent reads.
const OUTBOUND_FRAMES: usize = 1024;

/// How long a closed session keeps reading (and discarding) what the agent still sends, so its
/// last frames reach the agent before the stream goes.
const LINGER: Duration = Duration::from_secs(2);

/// What the server knows of a connection's peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerInfo {
    /// The node proven by the client certificate; `None` on an insecure (plain-text) connection.
    pub node: Option<String>,
    pub remote: Option<std::net::SocketAddr>,
}

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

/// Counters of the ingest service, over all sessions.
#[derive(Debug, Default)]
pub struct IngestStats {
    pub sessions: AtomicU64,
    /// Streams refused before a session started (no identity).
    pub refused: AtomicU64,
    pub events_committed: AtomicU64,
    pub duplicates_dropped: AtomicU64,
    pub commit_conflicts: AtomicU64,
    pub store_errors: AtomicU64,
}

impl IngestStats {
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// The `Sync` service.
pub struct SyncService {
    store: Arc<dyn IngestStore>,
    cfg: CloudConfig,
    insecure: bool,
    stop: watch::Receiver<bool>,
    /// Held by every session task and store call; the server waits for all to drop at shutdown.
    alive: mpsc::Sender<()>,
    stats: Arc<IngestStats>,
}

impl SyncService {
    pub(crate) fn new(
        store: Arc<dyn IngestStore>,
        cfg: CloudConfig,
        insecure: bool,
        stop: watch::Receiver<bool>,
        alive: mpsc::Sender<()>,
        stats: Arc<IngestStats>,
    ) -> Self {
        Self {
            store,
            cfg,
            insecure,
            stop,
            alive,
            stats,
        }
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
        let peer = request
            .extensions()
            .get::<PeerInfo>()
            .cloned()
            .unwrap_or_default();
        if peer.node.is_none() && !self.insecure {
            IngestStats::add(&self.stats.refused, 1);
            return Err(Status::unauthenticated("no verified client certificate"));
        }
        let (tx, rx) = mpsc::channel(OUTBOUND_FRAMES);
        let task = SessionTask {
            store: self.store.clone(),
            cfg: self.cfg.clone(),
            stop: self.stop.clone(),
            alive: self.alive.clone(),
            stats: self.stats.clone(),
            tx,
            peer,
        };
        tokio::spawn(task.run(request.into_inner()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

struct SessionTask {
    store: Arc<dyn IngestStore>,
    cfg: CloudConfig,
    stop: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
    stats: Arc<IngestStats>,
    tx: mpsc::Sender<Result<CloudFrame, Status>>,
    peer: PeerInfo,
}

type StoreCall<T> = Option<JoinHandle<T>>;

/// Waits for a store call, or forever when there is none.
async fn join<T>(call: &mut StoreCall<T>) -> Result<T, tokio::task::JoinError> {
    match call.as_mut() {
        Some(h) => h.await,
        None => std::future::pending().await,
    }
}

impl SessionTask {
    async fn run(self, mut inbound: Streaming<AgentFrame>) {
        let started = Instant::now();
        let now = move || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (node, first) = match self.peer.node.clone() {
            Some(node) => (node, None),
            None => match self.hello_identity(&mut inbound).await {
                Some(x) => x,
                None => return,
            },
        };
        IngestStats::add(&self.stats.sessions, 1);
        tracing::info!(node = %node, remote = ?self.peer.remote, "sync session started");
        let mut s = CloudSession::new(node.clone(), self.cfg.clone(), now());
        if let Some(f) = first {
            s.on_frame(now(), f);
        }
        let mut load: StoreCall<Result<Vec<(String, u64)>, StoreError>> = None;
        let mut commit: StoreCall<CommitOutcome> = None;
        let mut commit_seq = 0u64;
        let mut reason = "closed by the session";
        let mut stop = self.stop.clone();
        let send_timeout = Duration::from_millis(self.cfg.idle_timeout_ms);
        'session: loop {
            while let Some(action) = s.poll_action() {
                match action {
                    CloudAction::Send(f) => {
                        // The agent reads while it sends; one that stops reading is dropped.
                        match tokio::time::timeout(send_timeout, self.tx.send(Ok(f))).await {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) => {
                                reason = "the agent went away";
                                break 'session;
                            }
                            Err(_) => {
                                reason = "the agent stopped reading";
                                break 'session;
                            }
                        }
                    }
                    CloudAction::LoadWatermarks { node, epoch, .. } => {
                        let (store, alive) = (self.store.clone(), self.alive.clone());
                        load = Some(tokio::task::spawn_blocking(move || {
                            let _alive = alive;
                            store.load_watermarks(&node, &epoch)
                        }));
                    }
                    CloudAction::Commit(req) => {
                        commit_seq = req.batch_seq;
                        let (store, alive) = (self.store.clone(), self.alive.clone());
                        commit = Some(tokio::task::spawn_blocking(move || {
                            let _alive = alive;
                            store.commit(req)
                        }));
                    }
                    CloudAction::Close { error } => match error {
                        Some(e) => {
                            tracing::warn!(node = %node, error = %e, "sync session refused or failed")
                        }
                        None => tracing::debug!(node = %node, "sync session closed"),
                    },
                }
            }
            if s.is_closed() {
                break;
            }
            let deadline = s.poll_timeout().map(|t| started + Duration::from_millis(t));
            let timer = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = crate::server::stopped(&mut stop) => {
                    reason = "server shutting down";
                    break;
                }
                r = join(&mut load) => {
                    load = None;
                    let r = match r {
                        Ok(r) => r.map_err(|e| e.0),
                        Err(e) => Err(format!("store task failed: {e}")),
                    };
                    s.on_watermarks(now(), r);
                }
                r = join(&mut commit) => {
                    commit = None;
                    let outcome = r.unwrap_or_else(|e| {
                        CommitOutcome::Unavailable(format!("store task failed: {e}"))
                    });
                    self.count(&outcome, &node);
                    let before = s.stats().events_committed;
                    s.on_committed(now(), commit_seq, outcome);
                    let added = s.stats().events_committed - before;
                    IngestStats::add(&self.stats.events_committed, added);
                }
                m = inbound.message() => match m {
                    Ok(Some(f)) => s.on_frame(now(), f),
                    Ok(None) => {
                        reason = "the agent ended the stream";
                        break;
                    }
                    Err(status) => {
                        tracing::debug!(node = %node, error = %status, "sync stream error");
                        reason = "stream error";
                        break;
                    }
                },
                () = timer => s.handle_timeout(now()),
            }
        }
        // End the response (its last frames and the trailers), but keep reading the agent's side
        // for a moment: dropping it while the agent still sends makes HTTP/2 reset the stream,
        // and a reset can overtake the response's last frames (e.g. the Nack saying why).
        drop(self.tx);
        if reason != "server shutting down" {
            let drain = async { while let Ok(Some(_)) = inbound.message().await {} };
            tokio::select! {
                _ = tokio::time::timeout(LINGER, drain) => {}
                () = crate::server::stopped(&mut stop) => {}
            }
        }
        let st = s.stats();
        IngestStats::add(&self.stats.duplicates_dropped, st.duplicates_dropped);
        tracing::info!(
            node = %node,
            reason,
            batches = st.batches_received,
            events_committed = st.events_committed,
            duplicates_dropped = st.duplicates_dropped,
            "sync session ended"
        );
    }

    fn count(&self, outcome: &CommitOutcome, node: &str) {
        match outcome {
            CommitOutcome::Committed => {}
            CommitOutcome::Conflict { .. } => IngestStats::add(&self.stats.commit_conflicts, 1),
            CommitOutcome::Unavailable(e) => {
                IngestStats::add(&self.stats.store_errors, 1);
                tracing::warn!(node = %node, error = %e, "commit failed");
            }
        }
    }

    /// Insecure mode: the first frame must be a Hello; its node id is the identity.
    async fn hello_identity(
        &self,
        inbound: &mut Streaming<AgentFrame>,
    ) -> Option<(String, Option<AgentFrame>)> {
        let wait = Duration::from_millis(self.cfg.handshake_timeout_ms);
        let refuse = |msg: String| {
            IngestStats::add(&self.stats.refused, 1);
            tracing::warn!(remote = ?self.peer.remote, "insecure sync session refused: {msg}");
            let _ = self.tx.try_send(Err(Status::unauthenticated(msg)));
        };
        let frame = match tokio::time::timeout(wait, inbound.message()).await {
            Ok(Ok(Some(f))) => f,
            Ok(Ok(None)) | Ok(Err(_)) => return None,
            Err(_) => {
                refuse("no Hello in time".into());
                return None;
            }
        };
        let node = match &frame.frame {
            Some(agent_frame::Frame::Hello(h)) => h.node_id.clone(),
            _ => {
                refuse("the first frame must be a Hello".into());
                return None;
            }
        };
        if let Err(e) = validate_node_name(&node) {
            refuse(format!("Hello.node_id: {e}"));
            return None;
        }
        Some((node, Some(frame)))
    }
}
