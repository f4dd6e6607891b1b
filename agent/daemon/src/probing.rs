//! Link probes, failover and host health in the daemon (`[[links]]`, `[failover]`, `[host]`).
//!
//! * The [`Prober`] of `outrider-probe` probes every link; each of its events is appended to the
//!   local log (so it syncs upstream like any event): stream [`LINKS_STREAM`], source
//!   [`PROBE_SOURCE`], detail-type `LinkStateChanged`, `LinkFailover`, `LinkNoUsable` or
//!   `LinkRestored`, the figures in the JSON detail.
//! * Each failover decision also publishes the active link's [`SyncRoute`] on a watch channel:
//!   the sync task reconnects through it (its `sync_local_addr` and `cloud_url`).
//! * `[failover] hook`: a program run (with arguments, never through a shell) on every link
//!   transition and failover decision, with `EVENT`, `LINK`, `FROM`, `TO` and `REASON` in its
//!   environment; one at a time, killed after `hook_timeout_ms`.
//! * `[host]`: a sample every `interval_ms` (kept for `/metrics`, optionally appended as a
//!   `HostSample` event); alerts are appended as `HostAlert` events (stream [`HOST_STREAM`],
//!   source [`HOST_SOURCE`]).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use outrider_probe::failover::{FailoverConfig, FailoverEvent, SwitchReason};
use outrider_probe::health::{DegradeCause, Figures, Transition, TransitionReason};
use outrider_probe::host::{AlertEvaluator, HostAlert, HostSample, HostSampler};
use outrider_probe::probe::http::{ExpectStatus, HttpProbe};
use outrider_probe::probe::{Bind, DnsProbe, IcmpMode, ProbeKind, ProbeSpec, RecordType};
use outrider_probe::{LinkSpec, Prober, ProberConfig, ProberEvent, ProberSnapshot};
use outrider_proto::Event;
use outrider_runtime::{ExpectedVersion, Log};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{
    AgentConfig, DnsRecordName, FailoverSection, HostSection, IcmpModeName, LinkSection,
    ProbeKindName,
};
use crate::probe_config::Target;

/// The stream link events are appended to.
pub const LINKS_STREAM: &str = "outrider.links";
/// The source of link events.
pub const PROBE_SOURCE: &str = "outrider.probe";
/// The stream host events are appended to.
pub const HOST_STREAM: &str = "outrider.host";
/// The source of host events.
pub const HOST_SOURCE: &str = "outrider.host";

/// How sync reaches the cloud while a link is active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRoute {
    /// The active link.
    pub link: String,
    /// The source address of the sync connection (`None`: the OS picks).
    pub local_addr: Option<IpAddr>,
    /// The cloud URL (`None`: `sync.cloud_url`).
    pub cloud_url: Option<String>,
}

impl SyncRoute {
    fn of(l: &LinkSection) -> Self {
        Self {
            link: l.name.clone(),
            local_addr: l.sync_local_addr,
            cloud_url: l.cloud_url.clone(),
        }
    }
}

/// The routes of every link that changes how sync connects (for checking them at start).
pub fn sync_routes(cfg: &AgentConfig) -> Vec<SyncRoute> {
    cfg.links
        .iter()
        .filter(|l| l.sync_local_addr.is_some() || l.cloud_url.is_some())
        .map(SyncRoute::of)
        .collect()
}

/// What `/metrics` reads of the probes and the host.
#[derive(Debug, Clone, Default)]
pub struct ProbeMetrics {
    prober: Option<Arc<Prober>>,
    host: Option<Arc<Mutex<HostState>>>,
}

/// The host's latest sample and its raised alerts.
#[derive(Debug, Default, Clone)]
pub struct HostState {
    pub sample: Option<HostSample>,
    pub active_alerts: usize,
}

impl ProbeMetrics {
    /// The links' figures (when links are probed).
    pub fn links(&self) -> Option<ProberSnapshot> {
        self.prober.as_ref().map(|p| p.snapshot())
    }

    /// The host's latest figures (when `[host]` is set).
    pub fn host(&self) -> Option<HostState> {
        self.host
            .as_ref()
            .map(|h| h.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// The running probes and host sampler.
#[derive(Debug)]
pub struct Probing {
    pub metrics: ProbeMetrics,
    /// The active link's sync route (`None` until a link is active, or without links).
    pub route: watch::Receiver<Option<SyncRoute>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Probing {
    /// Stops every task.
    pub fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        self.metrics.prober = None;
    }
}

impl Drop for Probing {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts probing `cfg.links` (if any) and sampling the host (if `[host]`). Host names are
/// resolved and TLS files read here: an error names the key.
pub async fn start(
    cfg: &AgentConfig,
    log: Log,
    stopped: watch::Receiver<bool>,
) -> anyhow::Result<Probing> {
    let (route_tx, route) = watch::channel(None);
    let mut tasks = Vec::new();
    let mut metrics = ProbeMetrics::default();
    if !cfg.links.is_empty() {
        let mut specs = Vec::with_capacity(cfg.links.len());
        for (i, l) in cfg.links.iter().enumerate() {
            specs.push(link_spec(i, l).await?);
        }
        let mut pc = ProberConfig::new(specs);
        pc.failover = Some(FailoverConfig {
            hold_down_ms: cfg.failover.hold_down_ms,
        });
        let (prober, events) = Prober::start(pc).context("[[links]]")?;
        let routes: HashMap<String, SyncRoute> = cfg
            .links
            .iter()
            .map(|l| (l.name.clone(), SyncRoute::of(l)))
            .collect();
        let hook = spawn_hook(&cfg.failover, &mut tasks);
        tasks.push(tokio::spawn(run_events(
            events,
            log.clone(),
            routes,
            route_tx,
            hook,
            stopped.clone(),
        )));
        tracing::info!(
            links = cfg.links.len(),
            hold_down_ms = cfg.failover.hold_down_ms,
            "link probes started"
        );
        metrics.prober = Some(Arc::new(prober));
    }
    if let Some(host) = &cfg.host {
        let state = Arc::new(Mutex::new(HostState::default()));
        tasks.push(tokio::spawn(run_host(
            host.clone(),
            log,
            state.clone(),
            stopped,
        )));
        metrics.host = Some(state);
    }
    Ok(Probing {
        metrics,
        route,
        tasks,
    })
}

/// Resolves `host` (port `port`), preferring the family of `source` when there is one.
async fn resolve(
    key: &str,
    host: &str,
    port: u16,
    source: Option<IpAddr>,
) -> anyhow::Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("{key}: cannot resolve {host:?}"))?
        .collect();
    addrs
        .iter()
        .find(|a| source.is_none_or(|s| s.is_ipv4() == a.is_ipv4()))
        .or(addrs.first())
        .copied()
        .ok_or_else(|| anyhow!("{key}: {host:?} has no address"))
}

async fn link_spec(i: usize, l: &LinkSection) -> anyhow::Result<LinkSpec> {
    let key = format!("links[{i}].target");
    let target = l.target(i)?;
    let src = l.bind_address;
    let kind = match (l.probe, target) {
        (ProbeKindName::Tcp, Target::HostPort(h, p)) => ProbeKind::Tcp {
            target: resolve(&key, &h, p, src).await?,
        },
        (ProbeKindName::UdpEcho, Target::HostPort(h, p)) => ProbeKind::UdpEcho {
            target: resolve(&key, &h, p, src).await?,
        },
        (ProbeKindName::Icmp, Target::Host(h)) => ProbeKind::Icmp {
            target: resolve(&key, &h, 0, src).await?.ip(),
            mode: match l.icmp_mode.unwrap_or_default() {
                IcmpModeName::Auto => IcmpMode::Auto,
                IcmpModeName::Datagram => IcmpMode::Datagram,
                IcmpModeName::Raw => IcmpMode::Raw,
            },
        },
        (ProbeKindName::Http, _) => {
            let t = l.http_target(i)?;
            let addr = resolve(&key, &t.host, t.port, src).await?;
            let mut p = HttpProbe::new(addr, t.host.clone(), t.path.clone());
            if let Some(ca) = &l.tls_ca {
                p.tls = Some(https_config(i, ca)?);
            }
            if let Some(s) = l.expect_status {
                p.expect_status = ExpectStatus::Exactly(s);
            }
            p.body_contains.clone_from(&l.body_contains);
            ProbeKind::Http(p)
        }
        (ProbeKindName::Dns, Target::Addr(resolver)) => {
            let record = match l.record.unwrap_or_default() {
                DnsRecordName::A => RecordType::A,
                DnsRecordName::Aaaa => RecordType::Aaaa,
            };
            let mut d = DnsProbe::new(resolver, l.query_name.clone().unwrap_or_default(), record);
            d.expect = l.expect_address;
            ProbeKind::Dns(d)
        }
        (kind, t) => return Err(anyhow!("{key}: {t:?} does not fit probe {kind:?}")),
    };
    let probe = ProbeSpec::new(kind)
        .with_bind(Bind {
            source: l.bind_address,
            device: l.interface.clone(),
        })
        .with_timeout(l.timeout());
    Ok(LinkSpec {
        name: l.name.clone(),
        probe,
        interval: Duration::from_millis(l.interval_ms),
        health: l.health(),
        priority: l.priority,
    })
}

/// A TLS client trusting the CA in `ca` (ring, as the rest of the agent).
fn https_config(i: usize, ca: &std::path::Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::CertificateDer;
    let key = format!("links[{i}].tls_ca");
    let pem = std::fs::read(ca).with_context(|| format!("{key}: cannot read {}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    let mut n = 0;
    for c in CertificateDer::pem_slice_iter(&pem) {
        let c = c.map_err(|e| anyhow!("{key}: not PEM certificates: {e}"))?;
        roots
            .add(c)
            .map_err(|e| anyhow!("{key}: cannot be used as a trust anchor: {e}"))?;
        n += 1;
    }
    if n == 0 {
        return Err(anyhow!("{key}: no certificate in {}", ca.display()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("{key}: TLS protocol versions: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// One hook run: the environment it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookCall {
    pub event: &'static str,
    pub link: String,
    pub from: String,
    pub to: String,
    pub reason: String,
}

/// Starts the hook runner when a hook is configured; returns its queue.
fn spawn_hook(
    cfg: &FailoverSection,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Option<mpsc::Sender<HookCall>> {
    let (program, args) = cfg.hook.split_first()?;
    let (tx, mut rx) = mpsc::channel::<HookCall>(64);
    let (program, args) = (program.clone(), args.to_vec());
    let timeout = Duration::from_millis(cfg.hook_timeout_ms);
    tasks.push(tokio::spawn(async move {
        while let Some(call) = rx.recv().await {
            run_hook(&program, &args, timeout, &call).await;
        }
    }));
    Some(tx)
}

/// Runs the hook once for `call` and waits for it (killed after `timeout`).
pub async fn run_hook(program: &str, args: &[String], timeout: Duration, call: &HookCall) {
    let spawned = tokio::process::Command::new(program)
        .args(args)
        .env("EVENT", call.event)
        .env("LINK", &call.link)
        .env("FROM", &call.from)
        .env("TO", &call.to)
        .env("REASON", &call.reason)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(hook = %program, error = %e, "failover.hook: cannot start");
            return;
        }
    };
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(st)) if st.success() => {
            tracing::debug!(hook = %program, event = call.event, link = %call.link, "failover.hook ran")
        }
        Ok(Ok(st)) => {
            tracing::warn!(hook = %program, event = call.event, link = %call.link, status = %st, "failover.hook failed")
        }
        Ok(Err(e)) => tracing::warn!(hook = %program, error = %e, "failover.hook: wait failed"),
        Err(_) => {
            tracing::warn!(
                hook = %program,
                timeout_ms = timeout.as_millis() as u64,
                "failover.hook did not finish in time: killed"
            );
            let _ = child.kill().await;
        }
    }
}

async fn run_events(
    mut events: mpsc::Receiver<ProberEvent>,
    log: Log,
    routes: HashMap<String, SyncRoute>,
    route_tx: watch::Sender<Option<SyncRoute>>,
    hook: Option<mpsc::Sender<HookCall>>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let e = tokio::select! {
            _ = stopped.wait_for(|s| *s) => return,
            e = events.recv() => match e {
                Some(e) => e,
                None => return,
            },
        };
        // The route first: sync moves as soon as the decision is made.
        if let ProberEvent::Failover(FailoverEvent::Switched { to, .. }) = &e {
            if let Some(r) = routes.get(to) {
                route_tx.send_replace(Some(r.clone()));
            }
        }
        let (detail_type, detail, call) = describe(&e);
        match &e {
            ProberEvent::Link { link, transition } => tracing::info!(
                link = %link,
                from = %transition.from,
                to = %transition.to,
                reason = %call.reason,
                "link state changed"
            ),
            ProberEvent::Failover(_) => tracing::warn!(
                event = detail_type,
                link = %call.link,
                from = %call.from,
                to = %call.to,
                reason = %call.reason,
                "link failover"
            ),
        }
        append(&log, LINKS_STREAM, PROBE_SOURCE, detail_type, detail).await;
        if let Some(h) = &hook {
            if h.try_send(call).is_err() {
                tracing::warn!("failover.hook is behind: a call was skipped");
            }
        }
    }
}

async fn append(log: &Log, stream: &str, source: &str, detail_type: &str, detail: String) {
    let ev = Event {
        source: source.into(),
        detail_type: detail_type.into(),
        detail,
        ..Default::default()
    };
    if let Err(e) = log
        .append_async(stream, ExpectedVersion::Any, vec![ev], None)
        .await
    {
        tracing::warn!(stream, detail_type, error = %e, "cannot append the event");
    }
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON number (non-finite: null).
fn json_f64(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "null".into()
    }
}

fn json_ms(d: Option<Duration>) -> String {
    d.map_or("null".into(), |d| json_f64(d.as_secs_f64() * 1000.0))
}

fn json_opt_str(s: Option<&str>) -> String {
    s.map_or("null".into(), json_str)
}

fn figures_json(f: &Figures) -> String {
    format!(
        "{{\"samples\":{},\"failures\":{},\"loss_ratio\":{},\"rtt_p50_ms\":{},\"rtt_p99_ms\":{},\"jitter_ms\":{}}}",
        f.samples,
        f.failures,
        json_f64(f.loss_ratio),
        json_ms(f.rtt_p50),
        json_ms(f.rtt_p99),
        json_ms(f.jitter)
    )
}

fn transition_reason(t: &Transition) -> String {
    match &t.reason {
        TransitionReason::Failures { failed, of } => format!("{failed} of {of} probes failed"),
        TransitionReason::Recovered { successes } => {
            format!("{successes} probes in a row succeeded")
        }
        TransitionReason::Degraded { causes } => {
            let parts: Vec<String> = causes
                .iter()
                .map(|c| match c {
                    DegradeCause::Loss { ratio, threshold } => {
                        format!("loss {:.1}% >= {:.1}%", ratio * 100.0, threshold * 100.0)
                    }
                    DegradeCause::Latency { p99, threshold } => format!(
                        "p99 rtt {} ms >= {} ms",
                        p99.as_millis(),
                        threshold.as_millis()
                    ),
                    DegradeCause::Jitter { jitter, threshold } => format!(
                        "jitter {} ms >= {} ms",
                        jitter.as_millis(),
                        threshold.as_millis()
                    ),
                })
                .collect();
            format!("degraded: {}", parts.join(", "))
        }
        TransitionReason::Cleared => "degraded figures cleared".into(),
    }
}

fn switch_reason(r: &SwitchReason) -> String {
    match r {
        SwitchReason::Initial => "initial".into(),
        SwitchReason::ActiveUnusable { state } => format!("active link {state}"),
        SwitchReason::Preferred { state, held_ms } => {
            format!("preferred link {state} for {held_ms} ms")
        }
    }
}

/// The event's detail-type, its JSON detail and the hook's environment.
pub fn describe(e: &ProberEvent) -> (&'static str, String, HookCall) {
    match e {
        ProberEvent::Link { link, transition } => {
            let reason = transition_reason(transition);
            let detail = format!(
                "{{\"link\":{},\"from\":{},\"to\":{},\"reason\":{},\"at_ms\":{},\"figures\":{}}}",
                json_str(link),
                json_str(transition.from.as_str()),
                json_str(transition.to.as_str()),
                json_str(&reason),
                transition.at_ms,
                figures_json(&transition.figures)
            );
            let call = HookCall {
                event: "LinkStateChanged",
                link: link.clone(),
                from: transition.from.as_str().into(),
                to: transition.to.as_str().into(),
                reason,
            };
            ("LinkStateChanged", detail, call)
        }
        ProberEvent::Failover(FailoverEvent::Switched {
            at_ms,
            from,
            to,
            reason,
        }) => {
            let r = switch_reason(reason);
            let held = match reason {
                SwitchReason::Preferred { held_ms, .. } => held_ms.to_string(),
                _ => "null".into(),
            };
            let detail = format!(
                "{{\"from\":{},\"to\":{},\"reason\":{},\"held_ms\":{},\"at_ms\":{}}}",
                json_opt_str(from.as_deref()),
                json_str(to),
                json_str(&r),
                held,
                at_ms
            );
            let call = HookCall {
                event: "LinkFailover",
                link: to.clone(),
                from: from.clone().unwrap_or_default(),
                to: to.clone(),
                reason: r,
            };
            ("LinkFailover", detail, call)
        }
        ProberEvent::Failover(FailoverEvent::NoUsableLink { at_ms, kept }) => {
            let detail = format!(
                "{{\"kept\":{},\"at_ms\":{}}}",
                json_opt_str(kept.as_deref()),
                at_ms
            );
            let k = kept.clone().unwrap_or_default();
            let call = HookCall {
                event: "LinkNoUsable",
                link: k.clone(),
                from: k.clone(),
                to: k,
                reason: "no usable link".into(),
            };
            ("LinkNoUsable", detail, call)
        }
        ProberEvent::Failover(FailoverEvent::Restored { at_ms, link }) => {
            let detail = format!("{{\"link\":{},\"at_ms\":{}}}", json_str(link), at_ms);
            let call = HookCall {
                event: "LinkRestored",
                link: link.clone(),
                from: link.clone(),
                to: link.clone(),
                reason: "the kept link is usable again".into(),
            };
            ("LinkRestored", detail, call)
        }
    }
}

/// The JSON detail of a host alert.
pub fn alert_json(a: &HostAlert) -> String {
    match a {
        HostAlert::DiskFull {
            at_ms,
            mount,
            used_percent,
            threshold,
        } => format!(
            "{{\"alert\":\"DiskFull\",\"raised\":true,\"mount\":{},\"used_percent\":{},\"threshold\":{},\"at_ms\":{at_ms}}}",
            json_str(mount),
            json_f64(*used_percent),
            json_f64(*threshold)
        ),
        HostAlert::DiskCleared {
            at_ms,
            mount,
            used_percent,
        } => format!(
            "{{\"alert\":\"DiskCleared\",\"raised\":false,\"mount\":{},\"used_percent\":{},\"at_ms\":{at_ms}}}",
            json_str(mount),
            json_f64(*used_percent)
        ),
        HostAlert::MemoryHigh {
            at_ms,
            used_percent,
            threshold,
        } => format!(
            "{{\"alert\":\"MemoryHigh\",\"raised\":true,\"used_percent\":{},\"threshold\":{},\"at_ms\":{at_ms}}}",
            json_f64(*used_percent),
            json_f64(*threshold)
        ),
        HostAlert::MemoryCleared {
            at_ms,
            used_percent,
        } => format!(
            "{{\"alert\":\"MemoryCleared\",\"raised\":false,\"used_percent\":{},\"at_ms\":{at_ms}}}",
            json_f64(*used_percent)
        ),
        HostAlert::NicErrors {
            at_ms,
            interface,
            increase,
        } => format!(
            "{{\"alert\":\"NicErrors\",\"raised\":true,\"interface\":{},\"rx_errors\":{},\"tx_errors\":{},\"rx_drops\":{},\"tx_drops\":{},\"at_ms\":{at_ms}}}",
            json_str(interface),
            increase.rx_errors,
            increase.tx_errors,
            increase.rx_drops,
            increase.tx_drops
        ),
        HostAlert::NicCleared {
            at_ms,
            interface,
            quiet_samples,
        } => format!(
            "{{\"alert\":\"NicCleared\",\"raised\":false,\"interface\":{},\"quiet_samples\":{quiet_samples},\"at_ms\":{at_ms}}}",
            json_str(interface)
        ),
    }
}

/// The JSON detail of a host sample.
pub fn sample_json(s: &HostSample) -> String {
    let disks: Vec<String> = s
        .disks
        .iter()
        .map(|d| {
            format!(
                "{{\"mount\":{},\"used_percent\":{},\"total_bytes\":{},\"available_bytes\":{}}}",
                json_str(&d.mount),
                json_f64(d.used_percent()),
                d.total_bytes,
                d.available_bytes
            )
        })
        .collect();
    let load = s.load.map_or("null".into(), |l| {
        format!("[{},{},{}]", json_f64(l[0]), json_f64(l[1]), json_f64(l[2]))
    });
    format!(
        "{{\"cpu_percent\":{},\"cpus\":{},\"memory_used_percent\":{},\"memory_total_bytes\":{},\"memory_available_bytes\":{},\"load\":{},\"uptime_seconds\":{},\"disks\":[{}]}}",
        json_f64(f64::from(s.cpu_percent)),
        s.cpus,
        json_f64(s.memory_used_percent()),
        s.memory_total_bytes,
        s.memory_available_bytes,
        load,
        s.uptime_seconds.map_or("null".into(), |u| u.to_string()),
        disks.join(",")
    )
}

async fn run_host(
    cfg: HostSection,
    log: Log,
    state: Arc<Mutex<HostState>>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut sampler = match tokio::task::spawn_blocking(HostSampler::new).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "[host]: cannot read the host; host telemetry is off");
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "[host]: sampler task failed");
            return;
        }
    };
    let mut alerts = AlertEvaluator::new(cfg.alert_config());
    let base = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        let at_ms = u64::try_from(base.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (s, sample) = match tokio::task::spawn_blocking(move || {
            let sample = sampler.sample(at_ms);
            (sampler, sample)
        })
        .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "[host]: sampler task failed; host telemetry is off");
                return;
            }
        };
        sampler = s;
        for a in alerts.evaluate(&sample) {
            tracing::warn!(alert = ?a, "host alert");
            append(&log, HOST_STREAM, HOST_SOURCE, "HostAlert", alert_json(&a)).await;
        }
        if cfg.sample_events {
            append(
                &log,
                HOST_STREAM,
                HOST_SOURCE,
                "HostSample",
                sample_json(&sample),
            )
            .await;
        }
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        st.active_alerts = alerts.active().count();
        st.sample = Some(sample);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outrider_probe::health::LinkState;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
        assert_eq!(json_f64(f64::NAN), "null");
    }

    #[test]
    fn failover_events_carry_their_figures() {
        let e = ProberEvent::Failover(FailoverEvent::Switched {
            at_ms: 1200,
            from: Some("dx".into()),
            to: "vpn".into(),
            reason: SwitchReason::ActiveUnusable {
                state: LinkState::Down,
            },
        });
        let (t, detail, call) = describe(&e);
        assert_eq!(t, "LinkFailover");
        assert_eq!(
            detail,
            "{\"from\":\"dx\",\"to\":\"vpn\",\"reason\":\"active link down\",\"held_ms\":null,\"at_ms\":1200}"
        );
        assert_eq!(
            (call.link.as_str(), call.from.as_str(), call.to.as_str()),
            ("vpn", "dx", "vpn")
        );
        let e = ProberEvent::Link {
            link: "dx".into(),
            transition: Transition {
                at_ms: 900,
                from: LinkState::Up,
                to: LinkState::Down,
                reason: TransitionReason::Failures { failed: 3, of: 3 },
                figures: Figures {
                    samples: 10,
                    failures: 3,
                    loss_ratio: 0.3,
                    rtt_p50: Some(Duration::from_millis(2)),
                    rtt_p99: None,
                    jitter: None,
                },
            },
        };
        let (t, detail, call) = describe(&e);
        assert_eq!(t, "LinkStateChanged");
        assert!(
            detail.contains("\"from\":\"up\",\"to\":\"down\",\"reason\":\"3 of 3 probes failed\""),
            "{detail}"
        );
        assert!(
            detail.contains("\"loss_ratio\":0.3,\"rtt_p50_ms\":2,\"rtt_p99_ms\":null"),
            "{detail}"
        );
        assert_eq!((call.from.as_str(), call.to.as_str()), ("up", "down"));
    }

    #[tokio::test]
    async fn the_hook_gets_its_environment_and_is_killed_after_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env");
        let call = HookCall {
            event: "LinkFailover",
            link: "vpn".into(),
            from: "dx".into(),
            to: "vpn".into(),
            reason: "active link down; $(touch /tmp/x)".into(),
        };
        // The script writes its environment; the reason is data, never shell text.
        let script = format!(
            "printf '%s|%s|%s|%s|%s' \"$EVENT\" \"$LINK\" \"$FROM\" \"$TO\" \"$REASON\" > {}",
            out.display()
        );
        run_hook(
            "/bin/sh",
            &["-c".into(), script],
            Duration::from_secs(10),
            &call,
        )
        .await;
        let got = std::fs::read_to_string(&out).unwrap();
        assert_eq!(
            got,
            "LinkFailover|vpn|dx|vpn|active link down; $(touch /tmp/x)"
        );

        let started = std::time::Instant::now();
        run_hook(
            "/bin/sh",
            &["-c".into(), "exec sleep 30".into()],
            Duration::from_millis(200),
            &call,
        )
        .await;
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
