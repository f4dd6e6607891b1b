//! `outrider-cloud --config FILE`: the cloud server. For now it serves the sync ingest endpoint
//! over the runtime's log (sled) as the cloud store.
//!
//! ```toml
//! listen = "0.0.0.0:7443"     # gRPC on TCP and QUIC on UDP, same address and port
//! quic = true                 # default; false: gRPC only
//! metrics_listen = "127.0.0.1:9465"   # Prometheus /metrics and /healthz (absent: not served)
//! data_dir = "./data/cloud"
//! probe_echo_listen = "0.0.0.0:7444" # UDP echo for the agents' udp_echo link probes (absent: off)
//! [bus]                     # the event bus on the same store (see bus.rs): on by default
//! [store]                   # optional: PostgreSQL instead of data_dir (postgres = "URL", schema, pool_size)
//! [tls]                     # mTLS: the node id comes from the client certificate
//! ca = "certs/ca.pem"
//! cert = "certs/server.pem"
//! key = "certs/server-key.pem"
//! # or, for development only (no client certificates, node id from the Hello, loud warning at
//! # start; gRPC in plain text, QUIC with a self-signed certificate):
//! # insecure = true
//! ```

mod bus;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::Parser;
use std::sync::Arc;

use outrider_ingest::{EventStoreIngest, LogStore, Security, ServerConfig, TlsFiles};
use outrider_runtime::{Log, SystemClock};
use outrider_store::{EventStore, PgConfig, PgStore, SledStore};
use serde::Deserialize;

#[derive(Parser, Debug)]
#[command(name = "outrider-cloud", version, about = "The Outrider cloud server")]
struct Args {
    /// The configuration file (TOML).
    #[arg(long, short)]
    config: PathBuf,
}

/// The server's configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CloudConfig {
    /// The sync ingest endpoint's address: TCP for gRPC, and UDP for QUIC.
    listen: SocketAddr,
    /// Serve QUIC on UDP `listen` too (default true).
    #[serde(default = "yes")]
    quic: bool,
    /// Prometheus `/metrics` and `/healthz`; not served when absent.
    #[serde(default)]
    metrics_listen: Option<SocketAddr>,
    /// Where the cloud store (the runtime's log) lives.
    data_dir: PathBuf,
    /// mTLS files; required unless `insecure = true`.
    #[serde(default)]
    tls: Option<TlsSection>,
    /// Plain text without authentication (development only).
    #[serde(default)]
    insecure: bool,
    /// The UDP echo responder for the agents' `udp_echo` link probes; not served when absent.
    #[serde(default)]
    probe_echo_listen: Option<SocketAddr>,
    /// The event bus (on by default, no listeners unless configured).
    #[serde(default)]
    bus: bus::BusSection,
    /// PostgreSQL instead of the embedded store in `data_dir` (several servers can then share
    /// one database).
    #[serde(default)]
    store: Option<StoreSection>,
}

/// `[store]`: the cloud store on PostgreSQL.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreSection {
    /// A libpq-style connection string or URL (no TLS: loopback or a private network).
    postgres: String,
    /// The schema of the store's tables (created if missing).
    #[serde(default = "default_schema")]
    schema: String,
    #[serde(default = "default_pool")]
    pool_size: usize,
}

fn default_schema() -> String {
    "outrider".into()
}

fn default_pool() -> usize {
    16
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsSection {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl CloudConfig {
    fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let cfg: CloudConfig =
            toml::from_str(&text).with_context(|| format!("config file {}", path.display()))?;
        Ok(cfg)
    }

    fn security(&self) -> anyhow::Result<Security> {
        match (&self.tls, self.insecure) {
            (Some(_), true) => bail!("tls: set either [tls] or insecure = true, not both"),
            (None, false) => bail!("tls: required (or insecure = true for development)"),
            (None, true) => Ok(Security::Insecure),
            (Some(t), false) => Ok(Security::Mtls(TlsFiles {
                ca: t.ca.clone(),
                cert: t.cert.clone(),
                key: t.key.clone(),
            })),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cfg = CloudConfig::load(&args.config)?;
    let security = cfg.security()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    rt.block_on(run(cfg, security))
}

async fn run(cfg: CloudConfig, security: Security) -> anyhow::Result<()> {
    match cfg.store.clone() {
        Some(pg) => run_on_postgres(cfg, pg, security).await,
        None => run_on_sled(cfg, security).await,
    }
}

/// The embedded store: the runtime's log in `data_dir`, shared by the ingest and the bus.
async fn run_on_sled(cfg: CloudConfig, security: Security) -> anyhow::Result<()> {
    let log_cfg = outrider_ingest::store::cloud_log_config(&cfg.data_dir);
    let dir = cfg.data_dir.clone();
    let (log, report) = tokio::task::spawn_blocking(move || Log::open(log_cfg))
        .await
        .context("opening the store: task failed")?
        .with_context(|| format!("cannot open the store in {}", dir.display()))?;
    if let Some(c) = &report.corrupt {
        tracing::warn!(position = c.position, reason = %c.reason, "STORE CORRUPTION FOUND: cut back to the intact prefix");
    }
    tracing::info!(data_dir = %cfg.data_dir.display(), head = report.head, "store opened");
    let bus_store: Arc<dyn EventStore> = Arc::new(
        SledStore::from_log(log.clone(), &cfg.data_dir, "cloud", Arc::new(SystemClock))
            .context("bus: cannot open the store's checkpoints")?,
    );
    let result = serve_all(
        &cfg,
        security,
        LogStore::new(log.clone()),
        bus_store,
        Some(log.clone()),
    )
    .await;
    let closed = tokio::task::spawn_blocking(move || log.close())
        .await
        .context("closing the store: task failed")?;
    result?;
    closed.context("closing the store")?;
    Ok(())
}

/// PostgreSQL: the ingest commits through `EventStoreIngest`, the bus runs on the same store.
async fn run_on_postgres(
    cfg: CloudConfig,
    pg: StoreSection,
    security: Security,
) -> anyhow::Result<()> {
    let mut pcfg = PgConfig::new(pg.postgres.clone());
    pcfg.schema.clone_from(&pg.schema);
    pcfg.pool_size = pg.pool_size;
    let store: Arc<dyn EventStore> = Arc::new(PgStore::connect(pcfg).await.with_context(|| {
        format!(
            "store.postgres: cannot open the store in schema {}",
            pg.schema
        )
    })?);
    tracing::info!(schema = %pg.schema, "store opened on PostgreSQL");
    serve_all(
        &cfg,
        security,
        EventStoreIngest::new(store.clone()),
        store,
        None,
    )
    .await
}

/// Runs the ingest, the probe echo, the bus and `/metrics` until SIGTERM/SIGINT.
async fn serve_all<S: outrider_ingest::IngestStore>(
    cfg: &CloudConfig,
    security: Security,
    ingest_store: S,
    bus_store: Arc<dyn EventStore>,
    log: Option<Log>,
) -> anyhow::Result<()> {
    let mut server_cfg = ServerConfig::new(cfg.listen, security);
    server_cfg.quic = cfg.quic;
    let server = outrider_ingest::Server::bind(server_cfg).await?;
    let echo = match cfg.probe_echo_listen {
        Some(addr) => Some(serve_echo(addr).await?),
        None => None,
    };
    let bus = bus::start(&cfg.bus, bus_store).await?;
    let stats = server.stats();
    let metrics = match cfg.metrics_listen {
        Some(addr) => {
            Some(serve_metrics(addr, stats, log, bus.as_ref().map(|b| b.engine.clone())).await?)
        }
        None => None,
    };
    let result = server
        .run(ingest_store, async {
            shutdown_signal().await;
            tracing::info!("shutting down");
        })
        .await;
    if let Some(m) = metrics {
        m.abort();
    }
    if let Some(e) = echo {
        e.abort();
    }
    if let Some(b) = bus {
        b.stop().await;
    }
    result
}

/// Serves `/metrics` (the ingest's and the store's figures) and `/healthz` on `addr`.
async fn serve_metrics(
    addr: SocketAddr,
    stats: std::sync::Arc<outrider_ingest::IngestStats>,
    log: Option<Log>,
    bus: Option<outrider_bus::bus::BusEngine>,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("metrics_listen: cannot bind {addr}"))?;
    let local = listener.local_addr().context("metrics listener address")?;
    tracing::info!(listen = %local, "metrics on /metrics");
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let (stats, log, bus) = (stats.clone(), log.clone(), bus.clone());
                async move {
                    let mut text = outrider_ingest::metrics::render(&stats, log.as_ref());
                    if let Some(bus) = &bus {
                        text.push_str(&outrider_bus::metrics::render(bus));
                    }
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            outrider_runtime::metrics::CONTENT_TYPE_TEXT,
                        )],
                        text,
                    )
                }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }));
    Ok(tokio::spawn(
        async move { axum::serve(listener, app).await },
    ))
}

/// Answers the agents' UDP echo link probes on `addr` (`outrider_probe::probe::udp`).
async fn serve_echo(addr: SocketAddr) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let socket = tokio::net::UdpSocket::bind(addr)
        .await
        .with_context(|| format!("probe_echo_listen: cannot bind UDP {addr}"))?;
    let local = socket.local_addr().context("probe echo socket address")?;
    tracing::info!(listen = %local, "probe echo listening");
    Ok(tokio::spawn(async move {
        let stats = outrider_probe::probe::udp::EchoStats::default();
        if let Err(e) = outrider_probe::probe::udp::serve_udp_echo(&socket, &stats).await {
            tracing::error!(error = %e, "the probe echo responder stopped");
        }
    }))
}

/// Resolves on SIGTERM (systemd, Kubernetes) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops gracefully");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_needs_tls_or_insecure() {
        let parse = |s: &str| toml::from_str::<CloudConfig>(s).unwrap();
        let c = parse("listen = \"127.0.0.1:0\"\ndata_dir = \"d\"\n");
        assert!(c.security().is_err());
        let c = parse("listen = \"127.0.0.1:0\"\ndata_dir = \"d\"\ninsecure = true\n");
        assert_eq!(c.security().unwrap(), Security::Insecure);
        let c = parse(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"d\"\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n",
        );
        assert!(matches!(c.security().unwrap(), Security::Mtls(_)));
        assert!(toml::from_str::<CloudConfig>("listen = \"x\"\ndata_dir = \"d\"\n").is_err());
        let example = parse(include_str!("../cloud.example.toml"));
        assert!(matches!(example.security().unwrap(), Security::Mtls(_)));
        assert!(example.quic);
        // QUIC is on unless turned off.
        assert!(c.quic);
        let c =
            parse("listen = \"127.0.0.1:0\"\ndata_dir = \"d\"\ninsecure = true\nquic = false\n");
        assert!(!c.quic);
        assert_eq!(c.probe_echo_listen, None);
        assert_eq!(
            example.probe_echo_listen,
            Some("0.0.0.0:7444".parse().unwrap())
        );
        assert!(example.bus.enabled);
        assert_eq!(example.bus.rules[0].name, "completed-rides");
        assert_eq!(example.bus.rules[0].targets.len(), 1);
        assert_eq!(example.bus.archives[0].retention_days, 2555);
        assert!(c.bus.enabled, "the bus is on by default");
    }
}
