//! [`Prober`]: the tokio runner that probes every link at its interval, feeds the results into
//! the links' [`LinkHealth`] machines (and, if configured, a [`Failover`]) and emits their
//! transitions and decisions on a channel.
//!
//! One task per link runs its [`Probe`] every [`LinkSpec::interval`] (probes of one link are
//! sequential: a probe timeout longer than the interval stretches the interval; keep
//! `timeout ≤ interval`). A coordinator task owns the state machines: it applies each result
//! with `now` = milliseconds since the prober started (tokio's clock, so a paused test clock
//! works), drives their timers, records a [`ProberSnapshot`] for metrics and sends
//! [`ProberEvent`]s. Events are sent with `try_send`, so a slow consumer never delays the
//! health machines; events that do not fit are counted ([`ProberSnapshot::events_dropped`]).
//! Transitions are rare by construction (hysteresis), so the default capacity of 1024 is ample.
//!
//! Dropping the [`Prober`] (or [`Prober::shutdown`]) stops every task.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::failover::{Failover, FailoverConfig, FailoverError, FailoverEvent, LinkPriority};
use crate::health::{Figures, HealthConfig, HealthConfigError, LinkHealth, LinkState, Transition};
use crate::outcome::ProbeOutcome;
use crate::probe::{Probe, ProbeSpec};

/// One link to probe.
#[derive(Debug, Clone)]
pub struct LinkSpec {
    /// Unique name (metric label, failover identity).
    pub name: String,
    pub probe: ProbeSpec,
    /// Time between the starts of two probes (100–300 ms for BFD-like UDP echo).
    pub interval: Duration,
    pub health: HealthConfig,
    /// Failover priority, lower preferred.
    pub priority: u32,
}

/// What the prober runs.
#[derive(Debug, Clone)]
pub struct ProberConfig {
    pub links: Vec<LinkSpec>,
    /// Choose an active link among them (`None`: health only).
    pub failover: Option<FailoverConfig>,
    /// Capacity of the event channel (default 1024).
    pub event_capacity: usize,
}

impl ProberConfig {
    pub fn new(links: Vec<LinkSpec>) -> Self {
        Self {
            links,
            failover: None,
            event_capacity: 1024,
        }
    }
}

/// A configuration the prober refuses; the message names the link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProberError {
    #[error("link {link:?}: {source}")]
    Health {
        link: String,
        #[source]
        source: HealthConfigError,
    },
    #[error("link {link:?}: interval must be more than zero")]
    ZeroInterval { link: String },
    #[error(transparent)]
    Failover(#[from] FailoverError),
    #[error("no links to probe")]
    NoLinks,
}

/// What the prober reports.
#[derive(Debug, Clone, PartialEq)]
pub enum ProberEvent {
    /// A link's health state changed.
    Link {
        link: String,
        transition: Transition,
    },
    /// The failover decided.
    Failover(FailoverEvent),
}

/// One link's figures at a moment, for metrics and status.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkSnapshot {
    pub name: String,
    /// The probe kind (`tcp`, `udp_echo`, ...).
    pub probe: &'static str,
    pub state: LinkState,
    /// The window's figures.
    pub figures: Figures,
    pub transitions: u64,
    /// The last probe's outcome and how long it took (wall time of the probe).
    pub last: Option<(ProbeOutcome, Duration)>,
    /// Probes run, by outcome kind: ok, timeout, refused, error.
    pub probes: [u64; 4],
}

/// All links at a moment.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProberSnapshot {
    pub links: Vec<LinkSnapshot>,
    /// The failover's active link.
    pub active: Option<String>,
    /// Events that did not fit the channel.
    pub events_dropped: u64,
}

/// The running prober.
#[derive(Debug)]
pub struct Prober {
    snapshot: Arc<Mutex<ProberSnapshot>>,
    tasks: Vec<JoinHandle<()>>,
}

struct Result_ {
    link: usize,
    outcome: ProbeOutcome,
    took: Duration,
    at: Instant,
}

impl Prober {
    /// Starts probing (must be called within a tokio runtime). Returns the prober and the
    /// receiving end of its events.
    pub fn start(
        config: ProberConfig,
    ) -> Result<(Prober, mpsc::Receiver<ProberEvent>), ProberError> {
        if config.links.is_empty() {
            return Err(ProberError::NoLinks);
        }
        let mut machines = Vec::with_capacity(config.links.len());
        for l in &config.links {
            if l.interval.is_zero() {
                return Err(ProberError::ZeroInterval {
                    link: l.name.clone(),
                });
            }
            machines.push(LinkHealth::new(l.health.clone()).map_err(|source| {
                ProberError::Health {
                    link: l.name.clone(),
                    source,
                }
            })?);
        }
        let failover = match &config.failover {
            Some(fc) => Some(Failover::new(
                fc.clone(),
                config
                    .links
                    .iter()
                    .map(|l| LinkPriority::new(l.name.clone(), l.priority)),
            )?),
            None => None,
        };
        let snapshot = Arc::new(Mutex::new(ProberSnapshot {
            links: config
                .links
                .iter()
                .map(|l| LinkSnapshot {
                    name: l.name.clone(),
                    probe: l.probe.kind.name(),
                    state: LinkState::Unknown,
                    figures: Figures::default(),
                    transitions: 0,
                    last: None,
                    probes: [0; 4],
                })
                .collect(),
            active: None,
            events_dropped: 0,
        }));
        let (events_tx, events_rx) = mpsc::channel(config.event_capacity.max(1));
        let (results_tx, results_rx) = mpsc::channel::<Result_>(config.links.len() * 4);
        let mut tasks = Vec::new();
        for (i, l) in config.links.iter().enumerate() {
            let tx = results_tx.clone();
            let spec = l.probe.clone();
            let interval = l.interval;
            tasks.push(tokio::spawn(async move {
                let mut probe = Probe::new(spec);
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let start = Instant::now();
                    let outcome = probe.run().await;
                    let at = Instant::now();
                    let r = Result_ {
                        link: i,
                        outcome,
                        took: at - start,
                        at,
                    };
                    if tx.send(r).await.is_err() {
                        return;
                    }
                }
            }));
        }
        drop(results_tx);
        let names: Vec<String> = config.links.iter().map(|l| l.name.clone()).collect();
        let coordinator = Coordinator {
            base: Instant::now(),
            names,
            machines,
            failover,
            snapshot: snapshot.clone(),
            events: events_tx,
        };
        tasks.push(tokio::spawn(coordinator.run(results_rx)));
        Ok((Prober { snapshot, tasks }, events_rx))
    }

    /// The links' current figures.
    pub fn snapshot(&self) -> ProberSnapshot {
        self.snapshot.lock().clone()
    }

    /// Stops every task.
    pub fn shutdown(self) {}
}

impl Drop for Prober {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Coordinator {
    base: Instant,
    names: Vec<String>,
    machines: Vec<LinkHealth>,
    failover: Option<Failover>,
    snapshot: Arc<Mutex<ProberSnapshot>>,
    events: mpsc::Sender<ProberEvent>,
}

impl Coordinator {
    fn now_ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX)
    }

    fn next_timeout(&self) -> Option<u64> {
        let health = self.machines.iter().filter_map(|m| m.poll_timeout()).min();
        let failover = self.failover.as_ref().and_then(|f| f.poll_timeout());
        match (health, failover) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    async fn run(mut self, mut results: mpsc::Receiver<Result_>) {
        loop {
            let deadline = self
                .next_timeout()
                .map(|ms| self.base + Duration::from_millis(ms));
            tokio::select! {
                r = results.recv() => {
                    let Some(r) = r else { return };
                    let now = self.now_ms(r.at);
                    self.machines[r.link].observe(now, &r.outcome);
                    self.record(r.link, r.outcome, r.took);
                    self.drain(now);
                }
                _ = sleep_until(deadline) => {
                    let now = self.now_ms(Instant::now());
                    for m in &mut self.machines {
                        m.handle_timeout(now);
                    }
                    if let Some(f) = &mut self.failover {
                        f.handle_timeout(now);
                    }
                    self.drain(now);
                }
            }
        }
    }

    fn record(&self, link: usize, outcome: ProbeOutcome, took: Duration) {
        let mut s = self.snapshot.lock();
        if let Some(l) = s.links.get_mut(link) {
            let k = match outcome {
                ProbeOutcome::Ok { .. } => 0,
                ProbeOutcome::Timeout { .. } => 1,
                ProbeOutcome::Refused => 2,
                ProbeOutcome::Error { .. } => 3,
            };
            l.probes[k] += 1;
            l.last = Some((outcome, took));
        }
    }

    /// Moves transitions into the failover and out as events; refreshes the snapshot.
    fn drain(&mut self, now: u64) {
        let mut out = Vec::new();
        for (i, m) in self.machines.iter_mut().enumerate() {
            while let Some(t) = m.poll_event() {
                if let Some(f) = &mut self.failover {
                    // The failover was built from the same names: it knows every link.
                    let _ = f.set_state(now, &self.names[i], t.to);
                }
                out.push(ProberEvent::Link {
                    link: self.names[i].clone(),
                    transition: t,
                });
            }
        }
        if let Some(f) = &mut self.failover {
            while let Some(e) = f.poll_event() {
                out.push(ProberEvent::Failover(e));
            }
        }
        // The snapshot first, so whoever receives an event sees a snapshot at least as new.
        {
            let mut s = self.snapshot.lock();
            for (l, m) in s.links.iter_mut().zip(&self.machines) {
                l.state = m.state();
                l.figures = m.figures();
                l.transitions = m.transitions();
            }
            s.active = self
                .failover
                .as_ref()
                .and_then(|f| f.active().map(str::to_string));
        }
        let mut dropped = 0;
        for e in out {
            if self.events.try_send(e).is_err() {
                dropped += 1;
            }
        }
        if dropped > 0 {
            self.snapshot.lock().events_dropped += dropped;
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
