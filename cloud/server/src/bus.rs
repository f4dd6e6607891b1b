//! The event bus inside the cloud server: `[bus]` in the configuration file.
//!
//! ```toml
//! [bus]
//! enabled = true                    # default
//! api_listen = "127.0.0.1:7480"     # EventBridge's AWS JSON 1.1 API (aws CLI/SDKs: --endpoint-url); absent: off
//! grpc_listen = "127.0.0.1:7481"    # outrider.v1.Bus: PutEvents and Subscribe (consumer groups); absent: off
//! region = "local"                  # in ARNs and events that carry none
//! account = "000000000000"
//! from_agents = true                # events synced from agents enter the bus they name (default: `default`)
//! buses = ["orders"]                # created at start if missing
//! kinesis_region = "eu-west-1"      # Kinesis targets (SDK default chain when absent)
//! kinesis_endpoint = "http://127.0.0.1:5000"
//! webhook_ca = "certs/webhooks-ca.pem"   # CA for https webhooks
//!
//! [[bus.rules]]                     # created or replaced at start (EventBridge's PutRule + PutTargets shape)
//! Name = "rides-to-billing"
//! EventBusName = "default"
//! EventPattern = '{"source": ["rides"], "detail-type": ["RideCompleted"]}'
//! [[bus.rules.Targets]]
//! Id = "billing"
//! Destination = { Type = "Webhook", Url = "https://billing.internal/hooks/rides", SecretEnv = "BILLING_HOOK_SECRET" }
//!
//! [[bus.archives]]
//! ArchiveName = "all-rides"
//! EventBusName = "default"
//! RetentionDays = 2555
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use outrider_bus::api::groups::{GroupSettings, Groups};
use outrider_bus::bus::{BusConfig, BusEngine};
use outrider_bus::model::{ArchiveDef, RuleDef};
use outrider_bus::targets::factory::{DefaultFactory, FactoryConfig};
use outrider_runtime::{Clock, SystemClock};
use outrider_store::EventStore;
use serde::Deserialize;

/// `[bus]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusSection {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub api_listen: Option<SocketAddr>,
    #[serde(default)]
    pub grpc_listen: Option<SocketAddr>,
    #[serde(default = "region")]
    pub region: String,
    #[serde(default = "account")]
    pub account: String,
    #[serde(default = "yes")]
    pub from_agents: bool,
    #[serde(default)]
    pub buses: Vec<String>,
    #[serde(default)]
    pub rules: Vec<RuleDef>,
    #[serde(default)]
    pub archives: Vec<ArchiveDef>,
    #[serde(default)]
    pub kinesis_region: Option<String>,
    #[serde(default)]
    pub kinesis_endpoint: Option<String>,
    #[serde(default)]
    pub webhook_ca: Option<PathBuf>,
}

fn yes() -> bool {
    true
}

fn region() -> String {
    "local".into()
}

fn account() -> String {
    "000000000000".into()
}

impl Default for BusSection {
    fn default() -> Self {
        BusSection {
            enabled: true,
            api_listen: None,
            grpc_listen: None,
            region: region(),
            account: account(),
            from_agents: true,
            buses: Vec::new(),
            rules: Vec::new(),
            archives: Vec::new(),
            kinesis_region: None,
            kinesis_endpoint: None,
            webhook_ca: None,
        }
    }
}

/// The running bus: the engine, its bridge and its listeners.
pub struct RunningBus {
    pub engine: BusEngine,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    groups: Option<Groups>,
}

impl RunningBus {
    /// Stops the listeners, the bridge and the engine's tasks.
    pub async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(g) = &self.groups {
            g.shutdown().await;
        }
        self.engine.shutdown().await;
    }
}

/// Starts the bus on the server's store (the one the ingest commits to).
pub async fn start(
    section: &BusSection,
    store: Arc<dyn EventStore>,
) -> anyhow::Result<Option<RunningBus>> {
    if !section.enabled {
        return Ok(None);
    }
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let factory = DefaultFactory::new(FactoryConfig {
        kinesis_region: section.kinesis_region.clone(),
        kinesis_endpoint: section.kinesis_endpoint.clone(),
        kinesis_credentials: None,
        webhook_ca_file: section.webhook_ca.clone(),
        saga: None,
    });
    let cfg = BusConfig {
        region: section.region.clone(),
        account: section.account.clone(),
        ..BusConfig::default()
    };
    let engine = BusEngine::start(store, cfg, Arc::new(factory), clock)
        .await
        .context("bus: cannot start")?;
    seed(&engine, section).await?;
    let mut tasks = Vec::new();
    if section.from_agents {
        tasks.push(tokio::spawn(outrider_bus::bridge::run(
            engine.clone(),
            "cloud".into(),
        )));
    }
    let (api, groups) = serve(&engine, section).await?;
    tasks.extend(api);
    tracing::info!(
        buses = engine.definitions().buses.len(),
        from_agents = section.from_agents,
        "event bus running"
    );
    Ok(Some(RunningBus {
        engine,
        tasks,
        groups,
    }))
}

/// Creates the configured buses, rules and archives that are missing or different.
async fn seed(engine: &BusEngine, section: &BusSection) -> anyhow::Result<()> {
    let defs = engine.definitions();
    for b in &section.buses {
        if !defs.buses.contains_key(b) {
            engine
                .create_bus(b)
                .await
                .with_context(|| format!("bus: creating bus {b}"))?;
        }
    }
    let defs = engine.definitions();
    for r in &section.rules {
        if defs.rule(&r.event_bus_name, &r.name).map(|s| &s.def) != Some(r) {
            engine
                .put_rule(r.clone())
                .await
                .with_context(|| format!("bus: rule {} in the configuration", r.name))?;
        }
    }
    for a in &section.archives {
        match defs.archives.get(&a.archive_name) {
            Some(existing) if &existing.def == a => {}
            Some(_) => {
                tracing::warn!(archive = %a.archive_name, "an archive with this name exists with other settings; kept as it is")
            }
            None => {
                engine.create_archive(a.clone()).await.with_context(|| {
                    format!("bus: archive {} in the configuration", a.archive_name)
                })?;
            }
        }
    }
    Ok(())
}

/// Starts the API listeners: EventBridge's HTTP API and the gRPC `outrider.v1.Bus` service.
/// They stop when their tasks are aborted ([`RunningBus::stop`]).
async fn serve(
    engine: &BusEngine,
    section: &BusSection,
) -> anyhow::Result<(Vec<tokio::task::JoinHandle<()>>, Option<Groups>)> {
    let mut tasks = Vec::new();
    if let Some(addr) = section.api_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("bus.api_listen: cannot bind {addr}"))?;
        let local = listener.local_addr().context("bus API address")?;
        tracing::info!(listen = %local, "bus HTTP API (EventBridge, AWS JSON 1.1) listening");
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) =
                outrider_bus::api::http::serve(listener, engine, std::future::pending()).await
            {
                tracing::error!(error = %e, "the bus HTTP API stopped");
            }
        }));
    }
    let mut groups = None;
    if let Some(addr) = section.grpc_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("bus.grpc_listen: cannot bind {addr}"))?;
        let local = listener.local_addr().context("bus gRPC address")?;
        tracing::info!(listen = %local, "bus gRPC API (PutEvents, Subscribe) listening");
        let g = Groups::new(engine.clone(), GroupSettings::default());
        groups = Some(g.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) =
                outrider_bus::api::grpc::serve(listener, g, std::future::pending()).await
            {
                tracing::error!(error = %e, "the bus gRPC API stopped");
            }
        }));
    }
    Ok((tasks, groups))
}
