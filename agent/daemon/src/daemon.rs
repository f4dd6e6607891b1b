//! The daemon's life cycle: open the log, serve the gRPC API and metrics, maintain the outbox, and
//! shut down gracefully (stop serving, flush, close).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use outrider_runtime::{Log, OpenReport};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::AgentService;
use crate::config::AgentConfig;

/// How often the outbox is maintained (TTL expiry, reclaiming delivered events).
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a graceful stop waits for servers to finish in-flight requests.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

type ServerTask<E> = Option<JoinHandle<Result<(), E>>>;

/// A started agent. Stop it with [`Running::shutdown`]; dropping it stops the servers without
/// waiting for them (the log closes when its last user goes).
#[derive(Debug)]
pub struct Running {
    grpc_addr: SocketAddr,
    metrics_addr: SocketAddr,
    log: Log,
    stop: watch::Sender<bool>,
    grpc: ServerTask<tonic::transport::Error>,
    metrics: ServerTask<std::io::Error>,
    maintenance: Option<JoinHandle<()>>,
    /// The sync task, when `[sync]` is configured.
    sync: Option<crate::sync::SyncTask>,
    /// Link probes and host telemetry (`[[links]]`, `[host]`).
    probing: crate::probing::Probing,
}

impl Running {
    /// The address the gRPC API listens on (the real port when configured with port 0).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The address `/metrics` and `/healthz` are served on.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// The open log.
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// The sync task's status, when `[sync]` is configured.
    pub fn sync_status(&self) -> Option<watch::Receiver<crate::sync::SyncStatus>> {
        self.sync.as_ref().map(|t| t.status.clone())
    }

    /// The link probes' figures (`None` without `[[links]]`).
    pub fn links(&self) -> Option<outrider_probe::ProberSnapshot> {
        self.probing.metrics.links()
    }

    /// The active link's sync route (`None` until a link is active, or without `[[links]]`).
    pub fn sync_route(&self) -> watch::Receiver<Option<crate::probing::SyncRoute>> {
        self.probing.route.clone()
    }

    /// Resolves if a server stops on its own (which only an error makes it do) and says why.
    /// Cancel-safe: it can be raced against a shutdown signal and called again.
    pub async fn failed(&mut self) -> anyhow::Error {
        let Self { grpc, metrics, .. } = self;
        let grpc_done = async {
            match grpc.as_mut() {
                Some(h) => h.await,
                None => std::future::pending().await,
            }
        };
        let metrics_done = async {
            match metrics.as_mut() {
                Some(h) => h.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = grpc_done => {
                *grpc = None;
                match r {
                    Ok(Ok(())) => anyhow::anyhow!("the gRPC server stopped unexpectedly"),
                    Ok(Err(e)) => anyhow::Error::new(e).context("the gRPC server failed"),
                    Err(e) => anyhow::Error::new(e).context("the gRPC server task failed"),
                }
            }
            r = metrics_done => {
                *metrics = None;
                match r {
                    Ok(Ok(())) => anyhow::anyhow!("the metrics server stopped unexpectedly"),
                    Ok(Err(e)) => anyhow::Error::new(e).context("the metrics server failed"),
                    Err(e) => anyhow::Error::new(e).context("the metrics server task failed"),
                }
            }
        }
    }

    /// Stops gracefully: stops accepting requests and ends subscriptions, waits (up to
    /// [`DRAIN_TIMEOUT`]) for in-flight requests, then flushes and closes the log.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        tracing::info!("shutting down");
        self.stop.send_replace(true);
        if let Some(h) = self.maintenance.take() {
            h.abort();
            let _ = h.await;
        }
        self.probing.stop();
        if let Some(mut h) = self.sync.take().map(|t| t.handle) {
            if tokio::time::timeout(DRAIN_TIMEOUT, &mut h).await.is_err() {
                tracing::warn!("the sync task did not stop in time; cutting it off");
                h.abort();
            }
        }
        drain("gRPC server", self.grpc.take()).await;
        drain("metrics server", self.metrics.take()).await;
        let flushed = self.log.flush_async().await;
        let log = self.log.clone();
        let closed = tokio::task::spawn_blocking(move || log.close())
            .await
            .context("closing the log: task failed")?;
        flushed.context("flushing the log")?;
        closed.context("closing the log")?;
        tracing::info!(head = self.log.head(), "flushed and closed");
        Ok(())
    }
}

/// Waits for a server task to finish draining; aborts it after [`DRAIN_TIMEOUT`].
async fn drain<E: std::fmt::Display>(what: &str, task: ServerTask<E>) {
    let Some(mut h) = task else { return };
    match tokio::time::timeout(DRAIN_TIMEOUT, &mut h).await {
        Ok(Ok(Ok(()))) => tracing::debug!("{what} stopped"),
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "{what} stopped with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "{what} task failed"),
        Err(_) => {
            tracing::warn!(
                timeout_s = DRAIN_TIMEOUT.as_secs(),
                "{what} did not finish in-flight requests in time; cutting them off"
            );
            h.abort();
        }
    }
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind the {what} on {addr}"))
}

/// Logs what opening the log found; corruption is logged loudly with its position.
fn report_open(report: &OpenReport, cfg: &AgentConfig) {
    if let Some(dir) = &report.quarantined_dir {
        tracing::error!(
            data_dir = %cfg.data_dir.display(),
            quarantined_to = %dir.display(),
            "THE DATA DIRECTORY COULD NOT BE OPENED: it was moved aside and a NEW, EMPTY log started"
        );
    }
    if let Some(c) = &report.corrupt {
        tracing::warn!(
            position = c.position,
            reason = %c.reason,
            truncated_from = ?report.truncated_from,
            quarantined_records = report.quarantined_records,
            "LOG CORRUPTION FOUND: the log was cut back to its intact prefix before this position"
        );
    } else if let Some(pos) = report.truncated_from {
        tracing::warn!(truncated_from = pos, "the log was cut back at open");
    }
    tracing::info!(
        data_dir = %cfg.data_dir.display(),
        node_id = %cfg.node_id,
        head = report.head,
        start = report.start,
        verified_records = report.verified_records,
        "log opened"
    );
}

/// Opens the log and starts serving. Returns once both listeners are bound and the log is open.
pub async fn start(cfg: AgentConfig) -> anyhow::Result<Running> {
    let log_cfg = cfg.log_config().context("invalid configuration")?;
    // Bind first: a taken port fails fast, before the data is touched.
    let grpc_listener = bind(cfg.api.listen, "gRPC API").await?;
    let metrics_listener = bind(cfg.api.metrics_listen, "metrics endpoint").await?;
    let grpc_addr = grpc_listener
        .local_addr()
        .context("gRPC listener address")?;
    let metrics_addr = metrics_listener
        .local_addr()
        .context("metrics listener address")?;

    let dir = cfg.data_dir.clone();
    let (log, report) = tokio::task::spawn_blocking(move || Log::open(log_cfg))
        .await
        .context("opening the log: task failed")?
        .with_context(|| format!("cannot open the log in {}", dir.display()))?;
    report_open(&report, &cfg);

    let (stop, stopped) = watch::channel(false);
    let stop_signal = |mut rx: watch::Receiver<bool>| async move {
        // Ends when the flag turns true or the sender is dropped.
        let _ = rx.wait_for(|s| *s).await;
    };

    // Before serving: a bad [[links]] or [sync] setting (an unresolvable target, an unreadable
    // TLS file) stops the start.
    let probing = crate::probing::start(&cfg, log.clone(), stopped.clone())
        .await
        .context("cannot start the link probes")?;
    let checked = crate::probing::sync_routes(&cfg);
    let sync = match &cfg.sync {
        Some(sync_cfg) => Some(
            crate::sync::spawn(
                log.clone(),
                cfg.node_id.clone(),
                sync_cfg.clone(),
                stopped.clone(),
                (!checked.is_empty()).then(|| probing.route.clone()),
                &checked,
            )
            .context("cannot start sync")?,
        ),
        None => None,
    };
    let service = AgentService::new(log.clone(), stopped.clone()).into_server();
    let incoming =
        tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, stop_signal(stopped.clone())),
    );

    let app = crate::metrics::router(
        log.clone(),
        sync.as_ref().map(|t| t.status.clone()),
        probing.metrics.clone(),
    );
    let metrics_stop = stop_signal(stopped.clone());
    let metrics = tokio::spawn(async move {
        axum::serve(metrics_listener, app)
            .with_graceful_shutdown(metrics_stop)
            .await
    });

    let maintenance = tokio::spawn(maintain(log.clone(), stopped));
    tracing::info!(
        grpc_addr = %grpc_addr,
        metrics_addr = %metrics_addr,
        "agent listening"
    );
    Ok(Running {
        grpc_addr,
        metrics_addr,
        log,
        stop,
        grpc: Some(grpc),
        metrics: Some(metrics),
        maintenance: Some(maintenance),
        sync,
        probing,
    })
}

/// Runs the agent until `shutdown` resolves (or a server fails), then stops gracefully.
pub async fn run(cfg: AgentConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let mut running = start(cfg).await?;
    tokio::select! {
        () = shutdown => running.shutdown().await,
        e = running.failed() => {
            tracing::error!(error = format!("{e:#}"), "stopping after a server failure");
            if let Err(close) = running.shutdown().await {
                tracing::error!(error = format!("{close:#}"), "shutdown after the failure also failed");
            }
            Err(e)
        }
    }
}

/// Calls [`Log::maintain_async`] every [`MAINTENANCE_INTERVAL`] until stopped.
async fn maintain(log: Log, mut stopped: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        // Bounded passes, one after another while there is more to reclaim: appends queue
        // behind one pass at a time, never behind a whole backlog's reclaim.
        let (mut expired, mut reclaimed, mut records) = (0, 0, 0);
        loop {
            match log.maintain_async().await {
                Ok(r) => {
                    expired += r.expired_events;
                    reclaimed += r.reclaimed_events;
                    records += r.reclaimed_records;
                    if expired > 0 || reclaimed > 0 {
                        tracing::debug!(start = r.start, more = r.more, "outbox maintenance pass");
                    }
                    if !r.more || *stopped.borrow() {
                        if expired > 0 || reclaimed > 0 {
                            tracing::info!(
                                expired_events = expired,
                                reclaimed_events = reclaimed,
                                reclaimed_records = records,
                                start = r.start,
                                "outbox maintenance"
                            );
                        }
                        break;
                    }
                }
                Err(outrider_runtime::Error::Closed) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox maintenance failed");
                    break;
                }
            }
        }
    }
}
