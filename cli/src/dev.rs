//! `outrider dev`: a local cloud and a local agent in one process, on embedded defaults, with
//! events flowing between them over the real sync protocol (mTLS, loopback), a short live status,
//! and a check at the end that every event of the run reached the cloud store exactly once.
//!
//! Nothing here is a mock: the cloud is `outrider_ingest::Server` over its sled store, the agent is
//! `outrider_agent::start` (the daemon the `outrider-agent` binary runs), the certificates come
//! from `outrider certs` logic, and the producer appends through the agent's log.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use outrider_agent::config::{SyncSection, SyncTlsSection};
use outrider_agent::AgentConfig;
use outrider_ingest::{LogStore, Security, Server, ServerConfig, TlsFiles};
use outrider_proto::Event;
use outrider_runtime::{ExpectedVersion, Log};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use crate::certs;

/// `outrider dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Working directory: certificates (`certs/`), the agent's log (`agent/`) and the cloud
    /// store (`cloud/`). Kept between runs: the agent resumes where it stopped.
    #[arg(long, default_value = "./data/dev", value_name = "DIR")]
    pub dir: PathBuf,
    /// Events per second the demo producer appends to the agent's log (0: none; append your own
    /// with `outrider events put`).
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub rate: u64,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<u64>,
    /// The agent's node id (its certificate is issued on first use).
    #[arg(long, default_value = "dev-node", value_name = "NODE")]
    pub node: String,
    /// The agent's gRPC API, so `outrider events ...` work from another shell.
    #[arg(long, default_value = "127.0.0.1:7400", value_name = "ADDR")]
    pub api: SocketAddr,
    /// The agent's Prometheus metrics (`/metrics`, `/healthz`).
    #[arg(long, default_value = "127.0.0.1:9464", value_name = "ADDR")]
    pub metrics: SocketAddr,
    /// The cloud's sync ingest endpoint.
    #[arg(long, default_value = "127.0.0.1:7443", value_name = "ADDR")]
    pub cloud: SocketAddr,
    /// Transport of the sync session: grpc, quic or auto (the agent's `sync.transport`).
    #[arg(long, value_name = "TRANSPORT")]
    pub transport: Option<String>,
}

/// How long the end of a run waits for the agent's outbox to drain into the cloud.
const DRAIN_DEADLINE: Duration = Duration::from_secs(30);
/// Streams the producer spreads its events over.
const STREAMS: u64 = 8;
/// Events the producer appends per tick (and per append call at most).
const TICKS_PER_SECOND: u64 = 10;

pub fn run(args: &DevArgs) -> anyhow::Result<()> {
    certs::validate_node_name(&args.node).context("--node")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(dev(args))
}

/// The certificate files of the demo: a CA with a server certificate for localhost, and the
/// node's client certificate; made on first use and reused afterwards.
fn ensure_certs(dir: &Path, node: &str) -> anyhow::Result<(TlsFiles, SyncTlsSection)> {
    let ca = dir.join("ca.pem");
    if !ca.exists() {
        certs::init(dir, &certs::InitOptions::default())
            .with_context(|| format!("cannot make the demo CA in {}", dir.display()))?;
    }
    let node_cert = dir.join(format!("{node}.pem"));
    if !node_cert.exists() {
        certs::issue_node(dir, node, &certs::IssueOptions::default())
            .with_context(|| format!("cannot issue node {node:?} a certificate"))?;
    }
    let server = TlsFiles {
        ca: ca.clone(),
        cert: dir.join("server.pem"),
        key: dir.join("server-key.pem"),
    };
    let agent = SyncTlsSection {
        ca,
        cert: node_cert,
        key: dir.join(format!("{node}-key.pem")),
    };
    Ok((server, agent))
}

async fn dev(args: &DevArgs) -> anyhow::Result<()> {
    let certs_dir = args.dir.join("certs");
    let (server_tls, agent_tls) = ensure_certs(&certs_dir, &args.node)?;

    // The cloud: its sled store and the ingest server.
    let store_dir = args.dir.join("cloud");
    let store_cfg = outrider_ingest::store::cloud_log_config(&store_dir);
    let (cloud_log, _) = tokio::task::spawn_blocking(move || Log::open(store_cfg))
        .await
        .context("the store task failed")?
        .with_context(|| format!("cannot open the cloud store in {}", store_dir.display()))?;
    let server = Server::bind(ServerConfig::new(args.cloud, Security::Mtls(server_tls)))
        .await
        .context("--cloud")?;
    let cloud_addr = server.local_addr();
    let ingest = server.stats();
    let (stop_cloud, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut cloud = tokio::spawn(server.run(LogStore::new(cloud_log.clone()), async move {
        let _ = stop_rx.await;
    }));

    // The agent: the daemon, syncing to that cloud.
    let mut cfg = AgentConfig {
        node_id: args.node.clone(),
        data_dir: args.dir.join("agent"),
        ..AgentConfig::default()
    };
    cfg.api.listen = args.api;
    cfg.api.metrics_listen = args.metrics;
    let mut sync = SyncSection {
        cloud_url: format!("https://localhost:{}", cloud_addr.port()),
        tls: Some(agent_tls),
        ..SyncSection::default()
    };
    if let Some(t) = &args.transport {
        sync.transport = parse_transport(t)?;
    }
    cfg.sync = Some(sync);
    cfg.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let agent = match outrider_agent::start(cfg).await {
        Ok(a) => a,
        Err(e) => {
            let _ = stop_cloud.send(());
            let _ = cloud.await;
            return Err(e.context("cannot start the agent"));
        }
    };
    let log = agent.log().clone();
    let status = agent.sync_status();

    println!("outrider dev: a local cloud and a local agent, syncing over mTLS on loopback");
    println!(
        "  cloud     {cloud_addr}  store {}  (certificates in {})",
        args.dir.join("cloud").display(),
        certs_dir.display()
    );
    println!(
        "  agent     node {}  gRPC http://{}  metrics http://{}/metrics  log {}",
        args.node,
        agent.grpc_addr(),
        agent.metrics_addr(),
        args.dir.join("agent").display()
    );
    if args.rate > 0 {
        println!(
            "  producer  {} events/s of ride-sharing events on streams ride-0..ride-{}",
            args.rate,
            STREAMS - 1
        );
    }
    println!(
        "  try: cargo run -q -p outrider -- --agent http://{} events tail",
        agent.grpc_addr()
    );
    println!("  Ctrl-C stops; the end checks that every event of this run is in the cloud once.");
    println!();

    let first = log.head();
    let appended = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let producer = tokio::spawn(produce(
        log.clone(),
        args.rate,
        appended.clone(),
        stop_rx.clone(),
    ));

    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick.tick().await;
    let until = args.duration.map(|s| started + Duration::from_secs(s));
    let mut last_committed = 0u64;
    let mut failure: Option<anyhow::Error> = None;
    loop {
        let end = async {
            match until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            () = end => break,
            r = &mut cloud => {
                failure = Some(match r {
                    Ok(Ok(())) => anyhow::anyhow!("the cloud server stopped"),
                    Ok(Err(e)) => e.context("the cloud server failed"),
                    Err(e) => anyhow::Error::new(e).context("the cloud server task failed"),
                });
                break;
            }
            _ = tick.tick() => {
                let committed = ingest.events_committed.load(Ordering::Relaxed);
                println!(
                    "{}",
                    status_line(
                        started.elapsed(),
                        appended.load(Ordering::Relaxed),
                        committed,
                        committed.saturating_sub(last_committed),
                        pending(&log),
                        status.as_ref().map(|s| s.borrow().clone()),
                    )
                );
                last_committed = committed;
            }
        }
    }
    stop_tx.send_replace(true);
    let produced = producer.await.context("the producer task failed")??;
    let last = log.head();

    let mut outcome = Ok(());
    if failure.is_none() {
        println!();
        println!("stopping: waiting for the agent's outbox to drain into the cloud ...");
        let deadline = Instant::now() + DRAIN_DEADLINE;
        let mut poll = tokio::time::interval(Duration::from_millis(50));
        while pending(&log) > 0 {
            if Instant::now() >= deadline {
                outcome = Err(anyhow::anyhow!(
                    "{} events still in the outbox after {} s",
                    pending(&log),
                    DRAIN_DEADLINE.as_secs()
                ));
                break;
            }
            poll.tick().await;
        }
    }
    agent.shutdown().await.context("agent shutdown")?;
    let _ = stop_cloud.send(());
    if failure.is_none() {
        cloud
            .await
            .context("the cloud server task failed")?
            .context("the cloud server failed")?;
    }
    if let Some(e) = failure {
        return Err(e);
    }
    outcome?;

    // Every position of this run's part of the agent's log is in the cloud exactly once.
    let node = args.node.clone();
    let check = tokio::task::spawn_blocking(move || {
        let r = verify(&cloud_log, &node, first, last);
        let closed = cloud_log.close();
        r.and_then(|n| closed.map(|()| n).context("closing the cloud store"))
    })
    .await
    .context("the check task failed")??;
    println!(
        "done: appended {produced} events in {:.1} s; all {check} events of this run (positions {first}..{last}) are in the cloud store exactly once, in order",
        started.elapsed().as_secs_f64(),
    );
    Ok(())
}

/// `sync.transport` from its config spelling.
fn parse_transport(s: &str) -> anyhow::Result<outrider_agent::config::SyncTransport> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|e| anyhow::anyhow!("--transport {s:?}: {e}"))
}

/// Events waiting in the agent's outbox, all classes.
fn pending(log: &Log) -> u64 {
    log.outbox_status().iter().map(|c| c.pending_events).sum()
}

fn status_line(
    elapsed: Duration,
    appended: u64,
    committed: u64,
    per_second: u64,
    pending: u64,
    sync: Option<outrider_agent::sync::SyncStatus>,
) -> String {
    let link = match &sync {
        Some(s) if s.streaming => match s.transport {
            Some(t) => format!("streaming over {t}"),
            None => "streaming".to_owned(),
        },
        Some(s) => match &s.last_error {
            Some(e) => format!("reconnecting ({e})"),
            None => "connecting".to_owned(),
        },
        None => "sync off".to_owned(),
    };
    format!(
        "{:>4}s  appended {appended:>9}  in cloud {committed:>9} (+{per_second}/s)  outbox {pending:>7}  {link}",
        elapsed.as_secs()
    )
}

/// Appends `rate` events per second in ten ticks a second until `stop`; returns how many.
async fn produce(
    log: Log,
    rate: u64,
    appended: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<u64> {
    if rate == 0 {
        let _ = stop.wait_for(|s| *s).await;
        return Ok(0);
    }
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / TICKS_PER_SECOND));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut n = 0u64;
    // Spread `rate` over the ticks exactly (the remainder goes to the first ticks of a second).
    let mut tick_no = 0u64;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return Ok(n),
            _ = tick.tick() => {}
        }
        let k = rate / TICKS_PER_SECOND
            + u64::from(tick_no % TICKS_PER_SECOND < rate % TICKS_PER_SECOND);
        tick_no += 1;
        let mut by_stream: BTreeMap<u64, Vec<Event>> = BTreeMap::new();
        for i in n..n + k {
            by_stream
                .entry(i % STREAMS)
                .or_default()
                .push(ride_event(i));
        }
        for (s, events) in by_stream {
            let count = events.len() as u64;
            log.append_async(&format!("ride-{s}"), ExpectedVersion::Any, events, None)
                .await
                .context("the demo producer's append failed")?;
            n += count;
            appended.store(n, Ordering::Relaxed);
        }
    }
}

/// A ride-sharing event (the blueprint's first workload), deterministic in `i`.
fn ride_event(i: u64) -> Event {
    const KINDS: [&str; 4] = [
        "RideRequested",
        "DriverAssigned",
        "RideStarted",
        "RideCompleted",
    ];
    let kind = KINDS[(i % 4) as usize];
    Event {
        source: "dev.rides".into(),
        detail_type: kind.into(),
        detail: format!(
            "{{\"ride\":{},\"city\":\"{}\",\"fare_cents\":{}}}",
            i / 4,
            ["lisbon", "oslo", "austin"][(i % 3) as usize],
            500 + (i * 37) % 4000
        ),
        ..Default::default()
    }
}

/// Checks that the cloud store holds every position in `first..last` of `node` exactly once and in
/// order; returns how many.
fn verify(cloud: &Log, node: &str, first: u64, last: u64) -> anyhow::Result<u64> {
    let mut seen: Vec<u64> = Vec::new();
    let mut last_of_stream: BTreeMap<String, u64> = BTreeMap::new();
    let mut out_of_order = 0u64;
    let mut from = 0;
    loop {
        let batch = cloud
            .read_all(from, 4096)
            .context("reading the cloud store")?;
        let Some(tail) = batch.last() else { break };
        from = tail.position + 1;
        for e in batch
            .iter()
            .filter(|e| e.origin_node == node && (first..last).contains(&e.origin_seq))
        {
            seen.push(e.origin_seq);
            let prev = last_of_stream.insert(e.stream.clone(), e.origin_seq);
            if prev.is_some_and(|p| p >= e.origin_seq) {
                out_of_order += 1;
            }
        }
    }
    let want = last - first;
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != seen.len() {
        bail!(
            "{} duplicate events of {node} in the cloud store",
            seen.len() - sorted.len()
        );
    }
    if sorted.len() as u64 != want {
        bail!(
            "the cloud store holds {} of the {want} events of this run",
            sorted.len()
        );
    }
    // Per stream, the cloud's order is the agent's: origin seqs increase in store order.
    if out_of_order > 0 {
        bail!("{out_of_order} events of {node} are out of order in their cloud streams");
    }
    Ok(want)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ride_events_are_valid_json() {
        for i in 0..20 {
            let e = ride_event(i);
            let v: serde_json::Value = serde_json::from_str(&e.detail).expect("JSON");
            assert_eq!(v["ride"], i / 4);
        }
    }

    #[test]
    fn transport_names_follow_the_config() {
        assert!(parse_transport("grpc").is_ok());
        let e = parse_transport("carrier-pigeon").expect_err("unknown transport");
        assert!(e.to_string().contains("carrier-pigeon"), "{e}");
    }
}
