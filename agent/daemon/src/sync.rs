//! The sync task: drives the runtime's sans-IO [`AgentSession`] over a gRPC bidirectional stream
//! (`outrider.v1.Sync/Session`) to the cloud, with mTLS (rustls, ring).
//!
//! * `Connect`: a new HTTP/2 connection (TCP + TLS, bounded by `sync.connect_timeout_ms`) and
//!   a `Session` stream; the outcome is fed back with `on_connected` / `on_disconnected`.
//! * `Send`: the frame is queued and moves to the stream's bounded outbound channel as it has
//!   room, while the task keeps reading the cloud's frames (see `Link`).
//! * `Fetch`: `Log::outbox_read` on the blocking pool, then `on_fetched`.
//! * `AckOutbox`: `Log::ack_async` (only ever through a watermark the cloud committed).
//! * `Close`: the stream and its connection are dropped.
//! * Timers: `poll_timeout` / `handle_timeout`, in milliseconds since the task started on
//!   tokio's monotonic clock.
//! * New events: a subscription from the log's head calls `on_outbox_changed` for each batch.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::Context as _;
use outrider_proto::v1::sync_client::SyncClient;
use outrider_proto::v1::{AgentFrame, CloudFrame};
use outrider_runtime::sync::{
    AgentAction, AgentConfig as SessionConfig, AgentSession, AgentStats, LaneSpec,
};
use outrider_runtime::{Durability, Log};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::SyncSection;

/// Frames buffered in the gRPC request stream of one connection.
const OUTBOUND_FRAMES: usize = 1024;
/// Most bytes asked of the outbox in one read.
const FETCH_MAX_BYTES: usize = 4 << 20;

/// A new connection: its stream's outbound queue and inbound frames, and the channel it runs on.
struct Conn {
    tx: mpsc::Sender<AgentFrame>,
    inbound: tonic::Streaming<CloudFrame>,
    channel: Channel,
}

/// The current connection, if any.
///
/// Frames the session emits wait in `queue` and move to the stream's bounded outbound channel
/// as it has room, in the same `select!` that reads the cloud's frames: the task never stops
/// reading acks while it waits to send, so neither side can stall the other. `queue` is bounded
/// by the session itself (at most a credit window of batches in flight, plus a ping).
#[derive(Default)]
struct Link {
    inbound: Option<tonic::Streaming<CloudFrame>>,
    out: Option<mpsc::Sender<AgentFrame>>,
    channel: Option<Channel>,
    queue: VecDeque<AgentFrame>,
    /// Connection attempts are numbered; the result of an abandoned attempt is dropped.
    attempt: u64,
}

impl Link {
    /// Drops the connection (and abandons an attempt in progress).
    fn reset(&mut self) {
        self.inbound = None;
        self.out = None;
        self.channel = None;
        self.queue.clear();
        self.attempt += 1;
    }

    fn set(&mut self, c: Conn) {
        self.inbound = Some(c.inbound);
        self.out = Some(c.tx);
        self.channel = Some(c.channel);
        self.queue.clear();
    }
}

/// The endpoint of every connection, made once from the configuration (TLS files read at start).
#[derive(Clone)]
struct Connector {
    endpoint: Endpoint,
}

impl Connector {
    fn new(cfg: &SyncSection) -> anyhow::Result<Self> {
        let mut endpoint = Endpoint::from_shared(cfg.cloud_url.clone())
            .with_context(|| format!("sync.cloud_url {:?}", cfg.cloud_url))?
            .connect_timeout(Duration::from_millis(cfg.connect_timeout_ms))
            .tcp_nodelay(true);
        if let Some(tls) = &cfg.tls {
            let read = |p: &std::path::Path, what: &str| {
                std::fs::read(p)
                    .with_context(|| format!("sync.tls.{what}: cannot read {}", p.display()))
            };
            let ca = read(&tls.ca, "ca")?;
            let cert = read(&tls.cert, "cert")?;
            let key = read(&tls.key, "key")?;
            let tls_cfg = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .identity(Identity::from_pem(cert, key));
            endpoint = endpoint
                .tls_config(tls_cfg)
                .context("sync.tls: invalid TLS configuration")?;
        }
        Ok(Self { endpoint })
    }

    async fn connect(self, timeout: Duration) -> anyhow::Result<Conn> {
        let attempt = async {
            let channel = self.endpoint.connect().await.context("cannot connect")?;
            let (tx, rx) = mpsc::channel(OUTBOUND_FRAMES);
            let response = SyncClient::new(channel.clone())
                .session(ReceiverStream::new(rx))
                .await
                .context("the cloud refused the sync stream")?;
            anyhow::Ok(Conn {
                tx,
                inbound: response.into_inner(),
                channel,
            })
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| anyhow::anyhow!("timed out after {} ms", timeout.as_millis()))?
    }
}

/// What the sync task reports, updated as it goes (for status and metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncStatus {
    /// The handshake completed on the current connection.
    pub streaming: bool,
    /// The session's counters.
    pub stats: AgentStats,
    /// The last connection error, if the last connection ended in one.
    pub last_error: Option<String>,
}

/// The running sync task.
#[derive(Debug)]
pub struct SyncTask {
    pub handle: JoinHandle<()>,
    pub status: watch::Receiver<SyncStatus>,
}

/// Starts the sync task; it runs until `stopped` turns true. Fails at once on an unreadable TLS
/// file or a bad URL.
pub fn spawn(
    log: Log,
    node_id: String,
    cfg: SyncSection,
    stopped: watch::Receiver<bool>,
) -> anyhow::Result<SyncTask> {
    let connector = Connector::new(&cfg)?;
    let dest = cfg.destination.clone();
    let mut lanes = Vec::new();
    for class in log.class_names() {
        let cursor = log
            .outbox_cursor(&dest, &class)
            .with_context(|| format!("sync.destination {dest:?}"))?;
        lanes.push(LaneSpec::new(class, cursor));
    }
    if cfg.insecure {
        tracing::warn!(
            cloud_url = %cfg.cloud_url,
            "INSECURE SYNC: events go to the cloud in plain text without a client certificate. \
             Development only: configure [sync.tls] for anything else."
        );
    }
    let (status_tx, status) = watch::channel(SyncStatus::default());
    let handle = tokio::spawn(run(log, node_id, cfg, connector, lanes, stopped, status_tx));
    Ok(SyncTask { handle, status })
}

/// Resolves when the stop flag turns true (or its sender is gone).
async fn wait_stop(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// The next frame of the current connection; pending forever without one.
async fn next_frame(
    inbound: &mut Option<tonic::Streaming<CloudFrame>>,
) -> Result<Option<CloudFrame>, tonic::Status> {
    match inbound.as_mut() {
        Some(i) => i.message().await,
        None => std::future::pending().await,
    }
}

/// Room for one frame in the current connection's outbound channel; pending forever without one.
async fn reserve(
    out: &Option<mpsc::Sender<AgentFrame>>,
) -> Result<mpsc::OwnedPermit<AgentFrame>, mpsc::error::SendError<()>> {
    match out {
        Some(tx) => tx.clone().reserve_owned().await,
        None => std::future::pending().await,
    }
}

/// Notifies `tx` (coalescing) whenever the log's head moves or more of it becomes durable.
async fn watch_outbox(log: Log, tx: mpsc::Sender<()>, mut stopped: watch::Receiver<bool>) {
    let mut head = log.watch_head();
    loop {
        tokio::select! {
            () = wait_stop(&mut stopped) => return,
            changed = head.changed() => {
                if changed.is_err() {
                    return;
                }
                let _ = tx.try_send(());
            }
        }
    }
}

async fn run(
    log: Log,
    node_id: String,
    cfg: SyncSection,
    connector: Connector,
    lanes: Vec<LaneSpec>,
    mut stopped: watch::Receiver<bool>,
    status: watch::Sender<SyncStatus>,
) {
    let started = Instant::now();
    let now = move || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut session_cfg = SessionConfig::default();
    // The outbox hands out durable events only: with periodic flushes, a commit the subscription
    // reports may not be readable yet, so poll again about when the next flush is done.
    if let Durability::Periodic { interval } = log.config().durability {
        let ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        session_cfg.fetch_poll_ms = session_cfg.fetch_poll_ms.min(ms.max(10));
    }
    let connect_timeout = Duration::from_millis(cfg.connect_timeout_ms);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id());
    let dest = cfg.destination.clone();
    let mut s = AgentSession::new(
        session_cfg,
        node_id.clone(),
        log.log_id(),
        lanes,
        seed,
        now(),
    );
    tracing::info!(cloud_url = %cfg.cloud_url, destination = %dest, "sync started");

    let (changed_tx, mut changed_rx) = mpsc::channel(1);
    let watcher = tokio::spawn(watch_outbox(log.clone(), changed_tx, stopped.clone()));
    let (fetch_tx, mut fetch_rx) = mpsc::unbounded_channel::<(u64, Vec<outrider_proto::Event>)>();
    let (conn_tx, mut conn_rx) = mpsc::channel::<(u64, anyhow::Result<Conn>)>(4);
    let mut link = Link::default();
    let mut last_error: Option<String> = None;

    loop {
        while let Some(action) = s.poll_action() {
            match action {
                AgentAction::Connect => {
                    link.reset();
                    let (c, tx, n) = (connector.clone(), conn_tx.clone(), link.attempt);
                    tokio::spawn(async move {
                        let _ = tx.send((n, c.connect(connect_timeout).await)).await;
                    });
                }
                AgentAction::Send(frame) => {
                    if link.out.is_some() {
                        link.queue.push_back(frame);
                    }
                }
                AgentAction::Close => link.reset(),
                AgentAction::Fetch {
                    id,
                    lane,
                    after,
                    max_events,
                } => {
                    let (log, dest, tx) = (log.clone(), dest.clone(), fetch_tx.clone());
                    tokio::task::spawn_blocking(move || {
                        let events = log
                            .outbox_read(&dest, &lane, after, max_events, FETCH_MAX_BYTES)
                            .unwrap_or_else(|e| {
                                tracing::warn!(lane = %lane, error = %e, "outbox read failed");
                                Vec::new()
                            });
                        let _ = tx.send((id, events));
                    });
                }
                AgentAction::AckOutbox { lane, through } => {
                    if let Err(e) = log.ack_async(&dest, &lane, through).await {
                        tracing::warn!(lane = %lane, through, error = %e, "outbox ack failed");
                    }
                }
                AgentAction::Error(e) => {
                    tracing::warn!(error = %e, "sync connection failed");
                    last_error = Some(e.to_string());
                }
                AgentAction::LaneStopped { lane, error } => {
                    tracing::error!(lane = %lane, error = %error, "SYNC LANE STOPPED: the cloud rejected a batch; nothing more is sent on this lane until the agent restarts")
                }
            }
        }
        status.send_if_modified(|st| {
            let changed = st.streaming != s.is_streaming()
                || st.stats != *s.stats()
                || st.last_error != last_error;
            if changed {
                st.streaming = s.is_streaming();
                st.stats = s.stats().clone();
                st.last_error.clone_from(&last_error);
            }
            changed
        });
        let deadline = s.poll_timeout().map(|t| started + Duration::from_millis(t));
        let timer = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = wait_stop(&mut stopped) => break,
            () = timer => s.handle_timeout(now()),
            Some((n, r)) = conn_rx.recv() => {
                if n != link.attempt {
                    continue;
                }
                match r {
                    Ok(c) => {
                        tracing::debug!(cloud_url = %cfg.cloud_url, "sync connected");
                        link.set(c);
                        s.on_connected(now());
                    }
                    Err(e) => {
                        tracing::warn!(cloud_url = %cfg.cloud_url, error = format!("{e:#}"), "sync connection attempt failed");
                        last_error = Some(format!("{e:#}"));
                        s.on_disconnected(now());
                    }
                }
            }
            permit = reserve(&link.out), if !link.queue.is_empty() => match permit {
                Ok(p) => {
                    if let Some(f) = link.queue.pop_front() {
                        p.send(f);
                    }
                }
                Err(_) => {
                    tracing::warn!("the sync stream closed while sending");
                    link.reset();
                    s.on_disconnected(now());
                }
            },
            m = next_frame(&mut link.inbound) => match m {
                Ok(Some(f)) => s.on_frame(now(), f),
                Ok(None) => {
                    tracing::info!("the cloud ended the sync stream");
                    link.reset();
                    s.on_disconnected(now());
                }
                Err(st) => {
                    tracing::warn!(error = %st, "sync stream failed");
                    last_error = Some(st.to_string());
                    link.reset();
                    s.on_disconnected(now());
                }
            },
            Some((id, events)) = fetch_rx.recv() => s.on_fetched(now(), id, events),
            Some(()) = changed_rx.recv() => s.on_outbox_changed(now(), None),
        }
    }
    watcher.abort();
    let st = s.stats();
    tracing::info!(
        connects = st.connects,
        batches_sent = st.batches_sent,
        events_sent = st.events_sent,
        acks = st.acks,
        nacks = st.nacks,
        "sync stopped"
    );
}
