//! The sync task: drives the runtime's sans-IO [`AgentSession`] to the cloud over one of two
//! transports, both with mTLS (rustls, ring):
//!
//! * [`grpc`]: a gRPC bidirectional stream (`outrider.v1.Sync/Session`) over HTTP/2 on TCP;
//! * [`quic`]: one bidirectional QUIC stream of length-delimited frames, on UDP to the same
//!   host and port.
//!
//! The driver below does not know which one carries a connection ([`Conn`]: an outbound frame
//! channel and an inbound frame stream):
//!
//! * `Connect`: a new connection (bounded by `sync.connect_timeout_ms`); the outcome is fed back
//!   with `on_connected` / `on_disconnected`. `sync.transport` picks the transport; `auto`
//!   tries QUIC first and, when that fails or times out, gRPC at once. A QUIC connection that
//!   ends before the session streamed on it (handshakes pass, data does not) counts as a
//!   failure too. After a QUIC failure `auto` sticks to gRPC for `sync.quic_retry_ms`, then
//!   tries QUIC again: at the next connection, and by a background QUIC handshake while gRPC
//!   streams (on success the gRPC connection is dropped and the session reconnects over QUIC;
//!   the protocol resumes from the cloud's watermarks, so nothing is lost or duplicated).
//! * `Send`: the frame is queued and moves to the connection's bounded outbound channel as it
//!   has room, while the task keeps reading the cloud's frames (see `Link`).
//! * `Fetch`: `Log::outbox_read` on the blocking pool, then `on_fetched`.
//! * `AckOutbox`: `Log::ack_async` (only ever through a watermark the cloud committed).
//! * `Close`: the connection is dropped (QUIC: closed with code 0).
//! * Timers: `poll_timeout` / `handle_timeout`, in milliseconds since the task started on
//!   tokio's monotonic clock, plus the reconnect backoffs skipped at route changes
//!   ([`SessionClock`]).
//! * A new route (the active `[[links]]` link changed): the connection is dropped and the
//!   session connects through the new route at once, not after a reconnect backoff
//!   ([`reconnect_now`]).
//! * New events: a watch on the log's head calls `on_outbox_changed`.

mod grpc;
mod quic;

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use outrider_proto::v1::{AgentFrame, CloudFrame};
use outrider_runtime::sync::{
    AgentAction, AgentConfig as SessionConfig, AgentSession, AgentStats, LaneLag, LaneSpec,
};
use outrider_runtime::{Durability, Log};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{SyncSection, SyncTransport};
use crate::probing::SyncRoute;

/// Frames buffered in the outbound channel of one connection.
const OUTBOUND_FRAMES: usize = 1024;
/// Most bytes asked of the outbox in one read.
const FETCH_MAX_BYTES: usize = 4 << 20;

/// The transport that carries a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    Grpc,
    Quic,
}

impl TransportKind {
    /// `grpc` or `quic`.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Grpc => "grpc",
            TransportKind::Quic => "quic",
        }
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A new connection, whatever its transport: the outbound frame channel, the inbound frames,
/// and what keeps the connection open.
struct Conn {
    kind: TransportKind,
    tx: mpsc::Sender<AgentFrame>,
    inbound: Inbound,
    keep: Keep,
}

/// The cloud's frames on a connection.
enum Inbound {
    Grpc(tonic::Streaming<CloudFrame>),
    Quic(quic::FrameReader),
}

impl Inbound {
    /// The next frame; `Ok(None)` when the cloud ended the stream. Cancel-safe.
    async fn next(&mut self) -> Result<Option<CloudFrame>, String> {
        match self {
            Inbound::Grpc(s) => s.message().await.map_err(|e| e.to_string()),
            Inbound::Quic(r) => r.next().await,
        }
    }
}

/// Keeps a connection open while held (dropping it closes the connection).
enum Keep {
    Grpc(#[allow(dead_code)] tonic::transport::Channel),
    Quic(#[allow(dead_code)] quic::Guard),
}

/// The current connection, if any.
///
/// Frames the session emits wait in `queue` and move to the connection's bounded outbound
/// channel as it has room, in the same `select!` that reads the cloud's frames: the task never
/// stops reading acks while it waits to send, so neither side can stall the other. `queue` is
/// bounded by the session itself (at most a credit window of batches in flight, plus a ping).
#[derive(Default)]
struct Link {
    inbound: Option<Inbound>,
    out: Option<mpsc::Sender<AgentFrame>>,
    keep: Option<Keep>,
    kind: Option<TransportKind>,
    queue: VecDeque<AgentFrame>,
    /// Connection attempts are numbered; the result of an abandoned attempt is dropped.
    attempt: u64,
    /// The session reached streaming on the current connection.
    streamed: bool,
    /// A QUIC connection ended before the session streamed on it (`auto` counts it as a QUIC
    /// failure: the handshake got through, the session did not).
    quic_lost_early: bool,
}

impl Link {
    /// Drops the connection (and abandons an attempt in progress).
    fn reset(&mut self) {
        if self.kind == Some(TransportKind::Quic) && !self.streamed {
            self.quic_lost_early = true;
        }
        self.streamed = false;
        self.inbound = None;
        self.out = None;
        self.keep = None;
        self.kind = None;
        self.queue.clear();
        self.attempt += 1;
    }

    fn set(&mut self, c: Conn) {
        self.inbound = Some(c.inbound);
        self.out = Some(c.tx);
        self.keep = Some(c.keep);
        self.kind = Some(c.kind);
        self.streamed = false;
        self.queue.clear();
    }
}

/// The TLS files' contents, read once at start.
struct TlsPem {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

/// Host and port of `sync.cloud_url` (gRPC over TCP and QUIC over UDP both use them).
struct Endpoint {
    host: String,
    port: u16,
}

impl Endpoint {
    fn parse(url: &str) -> anyhow::Result<Self> {
        let uri: tonic::transport::Uri = url
            .parse()
            .map_err(|e| anyhow!("sync.cloud_url {url:?}: {e}"))?;
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| anyhow!("sync.cloud_url {url:?} names no host"))?;
        // An IPv6 literal is written in brackets in a URL, and without them everywhere else.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = match (uri.port_u16(), uri.scheme_str()) {
            (Some(p), _) => p,
            (None, Some("http")) => 80,
            (None, _) => 443,
        };
        Ok(Self { host, port })
    }
}

/// How one connection attempt goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    Grpc,
    Quic,
    /// `auto`: QUIC, and gRPC at once if QUIC fails.
    QuicThenGrpc,
}

/// What a connection attempt gives: the connection (or why there is none), and why QUIC failed
/// when `auto` fell back to gRPC.
struct Attempt {
    conn: anyhow::Result<Conn>,
    quic_failed: Option<String>,
}

/// Makes connections; built from the configuration (TLS files read once at start) and the
/// active link's route (a source address to bind, a cloud URL).
#[derive(Clone)]
struct Connector {
    grpc: Option<grpc::GrpcConnector>,
    quic: Option<quic::QuicConnector>,
    timeout: Duration,
    /// The link whose route this connector follows (`None`: no link route).
    link: Option<String>,
}

/// Reads the TLS files of `[sync.tls]`.
fn read_tls(cfg: &SyncSection) -> anyhow::Result<Option<TlsPem>> {
    Ok(match &cfg.tls {
        Some(tls) => {
            let read = |p: &std::path::Path, what: &str| {
                std::fs::read(p)
                    .with_context(|| format!("sync.tls.{what}: cannot read {}", p.display()))
            };
            Some(TlsPem {
                ca: read(&tls.ca, "ca")?,
                cert: read(&tls.cert, "cert")?,
                key: read(&tls.key, "key")?,
            })
        }
        None => None,
    })
}

impl Connector {
    fn new(
        cfg: &SyncSection,
        tls: Option<&TlsPem>,
        route: Option<&SyncRoute>,
    ) -> anyhow::Result<Self> {
        let timeout = Duration::from_millis(cfg.connect_timeout_ms);
        let url = route
            .and_then(|r| r.cloud_url.as_deref())
            .unwrap_or(&cfg.cloud_url);
        let local = route.and_then(|r| r.local_addr);
        let grpc = match cfg.transport {
            SyncTransport::Grpc | SyncTransport::Auto => {
                Some(grpc::GrpcConnector::new(url, tls, timeout, local)?)
            }
            SyncTransport::Quic => None,
        };
        let quic = match cfg.transport {
            SyncTransport::Quic | SyncTransport::Auto => Some(quic::QuicConnector::new(
                &Endpoint::parse(url)?,
                tls,
                Duration::from_millis(cfg.quic_idle_timeout_ms),
                local,
            )?),
            SyncTransport::Grpc => None,
        };
        Ok(Self {
            grpc,
            quic,
            timeout,
            link: route.map(|r| r.link.clone()),
        })
    }

    async fn connect_grpc(&self) -> anyhow::Result<Conn> {
        match &self.grpc {
            Some(g) => g.clone().connect(self.timeout).await,
            None => Err(anyhow!("gRPC is not configured")),
        }
    }

    async fn connect_quic(&self) -> anyhow::Result<Conn> {
        match &self.quic {
            Some(q) => q.clone().connect(self.timeout).await,
            None => Err(anyhow!("QUIC is not configured")),
        }
    }

    async fn attempt(self, plan: Plan) -> Attempt {
        match plan {
            Plan::Grpc => Attempt {
                conn: self.connect_grpc().await,
                quic_failed: None,
            },
            Plan::Quic => Attempt {
                conn: self.connect_quic().await,
                quic_failed: None,
            },
            Plan::QuicThenGrpc => match self.connect_quic().await {
                Ok(c) => Attempt {
                    conn: Ok(c),
                    quic_failed: None,
                },
                Err(e) => Attempt {
                    quic_failed: Some(format!("{e:#}")),
                    conn: self.connect_grpc().await,
                },
            },
        }
    }
}

/// `auto`'s memory of QUIC failures.
struct Auto {
    retry: Duration,
    /// When QUIC last failed; `None`: QUIC is preferred.
    quic_failed_at: Option<Instant>,
    /// A background QUIC handshake is running.
    probing: bool,
}

impl Auto {
    /// When QUIC is to be tried again (`None`: not in this process's lifetime).
    fn quic_at(&self) -> Option<Instant> {
        match self.quic_failed_at {
            Some(t) => t.checked_add(self.retry),
            None => Some(Instant::now()),
        }
    }

    fn quic_due(&self, now: Instant) -> bool {
        match self.quic_failed_at {
            Some(t) => t.checked_add(self.retry).is_some_and(|at| now >= at),
            None => true,
        }
    }
}

/// What the sync task reports, updated as it goes (for status and metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncStatus {
    /// The handshake completed on the current connection.
    pub streaming: bool,
    /// The transport of the current connection (`None` while there is none).
    pub transport: Option<TransportKind>,
    /// The session's counters.
    pub stats: AgentStats,
    /// The last connection error, if the last connection ended in one.
    pub last_error: Option<String>,
    /// Per lane: in flight, read ahead, the age of the oldest uncommitted event the session read.
    pub lanes: Vec<LaneLag>,
    /// The batch codec the handshake picked (empty: none).
    pub codec: String,
    /// The link (`[[links]]`) whose route the current connection took (`None`: no link route,
    /// or no connection).
    pub link: Option<String>,
}

/// The running sync task.
#[derive(Debug)]
pub struct SyncTask {
    pub handle: JoinHandle<()>,
    pub status: watch::Receiver<SyncStatus>,
}

/// Starts the sync task; it runs until `stopped` turns true. Fails at once on an unreadable TLS
/// file or a bad URL.
///
/// `routes` (when links are probed) carries the active link's [`SyncRoute`]: when it changes,
/// the connection is dropped and the session reconnects through the new route (the protocol
/// resumes from the cloud's watermarks: nothing is lost or duplicated). `checked` are every
/// link's routes, built once here so that a bad one fails the start.
pub fn spawn(
    log: Log,
    node_id: String,
    cfg: SyncSection,
    stopped: watch::Receiver<bool>,
    routes: Option<watch::Receiver<Option<SyncRoute>>>,
    checked: &[SyncRoute],
) -> anyhow::Result<SyncTask> {
    let tls = read_tls(&cfg)?;
    let connector = Connector::new(&cfg, tls.as_ref(), None)?;
    for r in checked {
        Connector::new(&cfg, tls.as_ref(), Some(r))
            .with_context(|| format!("link {:?}", r.link))?;
    }
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
            transport = ?cfg.transport,
            "INSECURE SYNC: no client certificate and the cloud's certificate is not verified \
             (gRPC goes in plain text; QUIC is encrypted but unauthenticated). Development only: \
             configure [sync.tls] for anything else."
        );
    }
    let (status_tx, status) = watch::channel(SyncStatus::default());
    let handle = tokio::spawn(run(
        log, node_id, cfg, tls, connector, routes, lanes, stopped, status_tx,
    ));
    Ok(SyncTask { handle, status })
}

/// Resolves when the stop flag turns true (or its sender is gone).
async fn wait_stop(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// The next frame of the current connection; pending forever without one.
async fn next_frame(inbound: &mut Option<Inbound>) -> Result<Option<CloudFrame>, String> {
    match inbound.as_mut() {
        Some(i) => i.next().await,
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

/// Sleeps until `at`; pending forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The session's clock: milliseconds since the task started on tokio's monotonic clock, plus the
/// reconnect waits [`reconnect_now`] skipped. Every input to the session reads this one clock, so
/// the session's timers stay consistent with each other.
struct SessionClock {
    started: Instant,
    skipped_ms: u64,
}

impl SessionClock {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            skipped_ms: 0,
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(self.skipped_ms)
    }

    /// When the session's time `t` comes.
    fn instant(&self, t: u64) -> Instant {
        self.started + Duration::from_millis(t.saturating_sub(self.skipped_ms))
    }
}

/// Drops the session's connection and connects again at once: for a route change, which is not
/// a connection failure. (`on_disconnected` alone would back off first: a random wait of up to
/// the backoff's ceiling, `backoff_min_ms` = 200 ms after a connection that streamed, seconds
/// after attempts that failed (e.g. through the link that just went down), before the new link
/// carries anything.)
///
/// The session is `Disconnected` until the end of its backoff: the clock skips ahead to that end
/// and the session's timers run, which emits `Connect`. To the session the wait simply passed: the
/// connection's timers are whole; what it measured across the skip counts it (the age of events
/// read before it; a bandwidth cap's bucket refills for it, at most its burst).
fn reconnect_now(s: &mut AgentSession, clock: &mut SessionClock) {
    let now = clock.now();
    s.on_disconnected(now);
    if let Some(at) = s.poll_timeout() {
        clock.skipped_ms = clock.skipped_ms.saturating_add(at.saturating_sub(now));
        s.handle_timeout(clock.now());
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

/// The next change of the active link's route; pending forever without routes.
async fn route_changed(
    routes: &mut Option<watch::Receiver<Option<SyncRoute>>>,
) -> Option<Option<SyncRoute>> {
    match routes {
        Some(rx) => match rx.changed().await {
            Ok(()) => Some(rx.borrow_and_update().clone()),
            Err(_) => {
                *routes = None;
                None
            }
        },
        None => std::future::pending().await,
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    log: Log,
    node_id: String,
    cfg: SyncSection,
    tls: Option<TlsPem>,
    mut connector: Connector,
    mut routes: Option<watch::Receiver<Option<SyncRoute>>>,
    lanes: Vec<LaneSpec>,
    mut stopped: watch::Receiver<bool>,
    status: watch::Sender<SyncStatus>,
) {
    let mut clock = SessionClock::new();
    let mut session_cfg = SessionConfig::default();
    // The outbox hands out durable events only: with periodic flushes, a commit the subscription
    // reports may not be readable yet, so poll again about when the next flush is done.
    if let Durability::Periodic { interval } = log.config().durability {
        let ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        session_cfg.fetch_poll_ms = session_cfg.fetch_poll_ms.min(ms.max(10));
    }
    // The session's handshake timeout runs from Connect to the Welcome: give it the connection
    // attempts' time on top (two attempts with `auto`: QUIC, then gRPC).
    let attempts = if cfg.transport == SyncTransport::Auto {
        2
    } else {
        1
    };
    session_cfg.handshake_timeout_ms = session_cfg
        .handshake_timeout_ms
        .saturating_add(cfg.connect_timeout_ms.saturating_mul(attempts));
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
        clock.now(),
    );
    tracing::info!(cloud_url = %cfg.cloud_url, destination = %dest, transport = ?cfg.transport, "sync started");

    let (changed_tx, mut changed_rx) = mpsc::channel(1);
    let watcher = tokio::spawn(watch_outbox(log.clone(), changed_tx, stopped.clone()));
    let (fetch_tx, mut fetch_rx) = mpsc::unbounded_channel::<(u64, Vec<outrider_proto::Event>)>();
    let (conn_tx, mut conn_rx) = mpsc::channel::<(u64, Attempt)>(4);
    let (probe_tx, mut probe_rx) = mpsc::channel::<anyhow::Result<Conn>>(1);
    let mut link = Link::default();
    // The route in force when the task starts (a link may already be active).
    let mut route: Option<SyncRoute> = None;
    if let Some(rx) = routes.as_mut() {
        let r = rx.borrow_and_update().clone();
        if let Some(r) = r {
            match Connector::new(&cfg, tls.as_ref(), Some(&r)) {
                Ok(c) => {
                    connector = c;
                    route = Some(r);
                }
                Err(e) => {
                    tracing::warn!(link = %r.link, error = format!("{e:#}"), "cannot use the link's sync route")
                }
            }
        }
    }
    // The link of the current connection.
    let mut conn_link: Option<String> = None;
    let mut last_error: Option<String> = None;
    let mut auto = (cfg.transport == SyncTransport::Auto).then(|| Auto {
        retry: Duration::from_millis(cfg.quic_retry_ms),
        quic_failed_at: None,
        probing: false,
    });

    loop {
        while let Some(action) = s.poll_action() {
            match action {
                AgentAction::Connect => {
                    link.reset();
                    let plan = match (&auto, cfg.transport) {
                        (Some(a), _) if a.quic_due(Instant::now()) => Plan::QuicThenGrpc,
                        (Some(_), _) | (None, SyncTransport::Grpc) => Plan::Grpc,
                        (None, _) => Plan::Quic,
                    };
                    let (c, tx, n) = (connector.clone(), conn_tx.clone(), link.attempt);
                    tokio::spawn(async move {
                        let _ = tx.send((n, c.attempt(plan).await)).await;
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
        if s.is_streaming() {
            link.streamed = true;
        }
        if std::mem::take(&mut link.quic_lost_early) {
            if let Some(a) = auto.as_mut() {
                tracing::warn!(
                    cloud_url = %cfg.cloud_url,
                    retry_ms = a.retry.as_millis() as u64,
                    "the QUIC connection ended before the sync session started: using gRPC for now"
                );
                a.quic_failed_at = Some(Instant::now());
            }
        }
        let lanes = s.lane_lag_at(clock.now());
        let cur_link = if link.kind.is_some() {
            conn_link.clone()
        } else {
            None
        };
        status.send_if_modified(|st| {
            let changed = st.streaming != s.is_streaming()
                || st.transport != link.kind
                || st.stats != *s.stats()
                || st.last_error != last_error
                || st.lanes != lanes
                || st.codec != s.codec()
                || st.link != cur_link;
            if changed {
                st.link.clone_from(&cur_link);
                st.streaming = s.is_streaming();
                st.transport = link.kind;
                st.stats = s.stats().clone();
                st.last_error.clone_from(&last_error);
                st.lanes.clone_from(&lanes);
                st.codec = s.codec().to_owned();
            }
            changed
        });
        let deadline = s.poll_timeout().map(|t| clock.instant(t));
        // `auto` on gRPC: when QUIC is due again, try a QUIC handshake in the background.
        let probe_at = match &auto {
            Some(a) if link.kind == Some(TransportKind::Grpc) && !a.probing => a.quic_at(),
            _ => None,
        };
        tokio::select! {
            () = wait_stop(&mut stopped) => break,
            Some(r) = route_changed(&mut routes) => {
                let same = |a: &Option<SyncRoute>, b: &Option<SyncRoute>| {
                    a.as_ref().map(|r| (r.local_addr, &r.cloud_url)) == b.as_ref().map(|r| (r.local_addr, &r.cloud_url))
                };
                let from = route.as_ref().map(|r| r.link.clone());
                let to = r.as_ref().map(|r| r.link.clone());
                if same(&route, &r) {
                    route = r;
                    connector.link.clone_from(&to);
                    conn_link = to;
                    continue;
                }
                match Connector::new(&cfg, tls.as_ref(), r.as_ref()) {
                    Ok(c) => {
                        tracing::info!(from = ?from, to = ?to, "the active link changed: the sync session reconnects through it");
                        connector = c;
                        route = r;
                        // Drop the connection (or abandon the attempt) and reconnect through
                        // the new route; the session resumes from the cloud's watermarks.
                        link.reset();
                        // Not a QUIC failure: `auto` keeps preferring QUIC.
                        link.quic_lost_early = false;
                        conn_link = None;
                        reconnect_now(&mut s, &mut clock);
                    }
                    Err(e) => tracing::warn!(to = ?to, error = format!("{e:#}"), "cannot use the link's sync route; keeping the current one"),
                }
            }
            () = sleep_until(deadline) => s.handle_timeout(clock.now()),
            () = sleep_until(probe_at) => {
                if let Some(a) = auto.as_mut() {
                    a.probing = true;
                    let (c, tx) = (connector.clone(), probe_tx.clone());
                    tokio::spawn(async move {
                        let _ = tx.send(c.connect_quic().await).await;
                    });
                }
            }
            Some(r) = probe_rx.recv() => {
                if let Some(a) = auto.as_mut() {
                    a.probing = false;
                    match r {
                        Ok(probe) => {
                            // Only the handshake was wanted: the session reconnects over QUIC.
                            drop(probe);
                            a.quic_failed_at = None;
                            if link.kind == Some(TransportKind::Grpc) {
                                tracing::info!(cloud_url = %cfg.cloud_url, "QUIC works again: moving the sync session from gRPC to QUIC");
                                link.reset();
                                s.on_disconnected(clock.now());
                            }
                        }
                        Err(e) => {
                            tracing::debug!(error = format!("{e:#}"), "QUIC still fails; staying on gRPC");
                            a.quic_failed_at = Some(Instant::now());
                        }
                    }
                }
            }
            Some((n, Attempt { conn, quic_failed })) = conn_rx.recv() => {
                if let (Some(a), Some(e)) = (auto.as_mut(), &quic_failed) {
                    a.quic_failed_at = Some(Instant::now());
                    tracing::warn!(
                        cloud_url = %cfg.cloud_url,
                        error = %e,
                        retry_ms = a.retry.as_millis() as u64,
                        "QUIC connection failed: falling back to gRPC"
                    );
                }
                if n != link.attempt {
                    continue;
                }
                match conn {
                    Ok(c) => {
                        if let (Some(a), TransportKind::Quic) = (auto.as_mut(), c.kind) {
                            a.quic_failed_at = None;
                        }
                        tracing::debug!(cloud_url = %cfg.cloud_url, transport = %c.kind, "sync connected");
                        link.set(c);
                        conn_link.clone_from(&connector.link);
                        s.on_connected(clock.now());
                    }
                    Err(e) => {
                        let e = match &quic_failed {
                            Some(q) => format!("QUIC: {q}; gRPC: {e:#}"),
                            None => format!("{e:#}"),
                        };
                        tracing::warn!(cloud_url = %cfg.cloud_url, error = %e, "sync connection attempt failed");
                        last_error = Some(e);
                        s.on_disconnected(clock.now());
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
                    s.on_disconnected(clock.now());
                }
            },
            m = next_frame(&mut link.inbound) => match m {
                Ok(Some(f)) => s.on_frame(clock.now(), f),
                Ok(None) => {
                    tracing::info!("the cloud ended the sync stream");
                    link.reset();
                    s.on_disconnected(clock.now());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "sync stream failed");
                    last_error = Some(e);
                    link.reset();
                    s.on_disconnected(clock.now());
                }
            },
            Some((id, events)) = fetch_rx.recv() => s.on_fetched(clock.now(), id, events),
            Some(()) = changed_rx.recv() => s.on_outbox_changed(clock.now(), None),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_prefers_quic_until_it_fails_then_waits_the_retry_interval() {
        let mut a = Auto {
            retry: Duration::from_secs(300),
            quic_failed_at: None,
            probing: false,
        };
        let t0 = Instant::now();
        assert!(a.quic_due(t0));
        a.quic_failed_at = Some(t0);
        assert!(!a.quic_due(t0 + Duration::from_secs(299)));
        assert!(a.quic_due(t0 + Duration::from_secs(300)));
        assert_eq!(a.quic_at(), Some(t0 + Duration::from_secs(300)));
        // A retry interval past the end of time: never again, and no overflow.
        a.retry = Duration::MAX;
        assert!(!a.quic_due(t0 + Duration::from_secs(1 << 40)));
        assert_eq!(a.quic_at(), None);
    }

    /// An agent session streaming to a cloud session (both sans-IO, frames handed over here).
    fn streaming_session() -> AgentSession {
        use outrider_proto::v1::{agent_frame, cloud_frame};
        use outrider_runtime::sync::{CloudAction, CloudConfig, CloudSession};
        let mut a = AgentSession::new(
            SessionConfig::default(),
            "n1",
            "e1",
            vec![LaneSpec::new("normal", 0)],
            7,
            0,
        );
        let mut c = CloudSession::new("n1", CloudConfig::default(), 0);
        a.handle_timeout(0);
        assert!(matches!(a.poll_action(), Some(AgentAction::Connect)));
        a.on_connected(1);
        while let Some(action) = a.poll_action() {
            if let AgentAction::Send(f) = action {
                assert!(matches!(f.frame, Some(agent_frame::Frame::Hello(_))));
                c.on_frame(1, f);
            }
        }
        while let Some(action) = c.poll_action() {
            match action {
                CloudAction::LoadWatermarks { .. } => c.on_watermarks(2, Ok(Vec::new())),
                CloudAction::Send(f) => {
                    if matches!(f.frame, Some(cloud_frame::Frame::Welcome(_))) {
                        a.on_frame(3, f);
                    }
                }
                _ => {}
            }
        }
        assert!(a.is_streaming());
        while a.poll_action().is_some() {}
        a
    }

    fn connects_at(s: &mut AgentSession, now: u64) -> bool {
        s.handle_timeout(now);
        std::iter::from_fn(|| s.poll_action()).any(|a| matches!(a, AgentAction::Connect))
    }

    #[test]
    fn a_route_change_reconnects_at_once_where_a_failure_backs_off() {
        // A lost connection backs off first (at least 1 ms, up to backoff_min_ms).
        let mut s = streaming_session();
        s.on_disconnected(10);
        assert!(
            !connects_at(&mut s, 10),
            "a failure reconnects without backoff"
        );
        let until = s.poll_timeout().unwrap();
        assert!(until > 10 && until <= 10 + SessionConfig::default().backoff_min_ms);
        assert!(connects_at(&mut s, until));

        // A route change: Connect at once, counted; the clock skipped the wait.
        let mut s = streaming_session();
        let connects = s.stats().connects;
        let mut clock = SessionClock::new();
        let before = clock.now();
        reconnect_now(&mut s, &mut clock);
        assert!(!s.is_streaming());
        let actions: Vec<AgentAction> = std::iter::from_fn(|| s.poll_action()).collect();
        assert!(
            actions.iter().any(|a| matches!(a, AgentAction::Connect)),
            "{actions:?}"
        );
        assert_eq!(s.stats().connects, connects + 1);
        assert_eq!(s.stats().reconnects, 1);
        // (The session was at 3 ms when the clock started at 0.)
        let most = 3 + SessionConfig::default().backoff_min_ms;
        assert!(clock.skipped_ms >= 1 && clock.skipped_ms <= most);
        assert!(clock.now() >= before + clock.skipped_ms);
        // Session times map back to real instants without the skipped wait.
        let t = clock.now() + 500;
        let at = clock.instant(t);
        let real = at.duration_since(clock.started).as_millis() as u64;
        assert_eq!(real + clock.skipped_ms, t);
    }

    #[test]
    fn a_route_change_after_failed_attempts_skips_the_grown_backoff() {
        // Attempts through a dead link fail, so the backoff's ceiling grows toward
        // backoff_max_ms (30 s); a route change still connects at once, and the new
        // connection's handshake timeout is whole on the session's clock.
        let mut s = streaming_session();
        let mut clock = SessionClock::new();
        for _ in 0..8 {
            s.on_disconnected(clock.now());
            let until = s.poll_timeout().unwrap();
            clock.skipped_ms += until.saturating_sub(clock.now());
            assert!(connects_at(&mut s, clock.now()));
        }
        reconnect_now(&mut s, &mut clock);
        assert!(std::iter::from_fn(|| s.poll_action()).any(|a| matches!(a, AgentAction::Connect)));
        let connected = clock.now();
        s.on_connected(connected);
        while s.poll_action().is_some() {}
        let handshake = SessionConfig::default().handshake_timeout_ms;
        assert_eq!(s.poll_timeout(), Some(connected + handshake));
    }

    #[test]
    fn endpoints_of_cloud_urls() {
        let e = Endpoint::parse("https://cloud.example.com:7443").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("cloud.example.com", 7443));
        let e = Endpoint::parse("https://[::1]:7443").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 7443));
        assert_eq!(Endpoint::parse("https://c").unwrap().port, 443);
        assert_eq!(Endpoint::parse("http://c").unwrap().port, 80);
        assert!(Endpoint::parse("not a url").is_err());
    }
}
