//! Sans-IO link health: a sliding window of probe results per link, its figures (RTT p50/p99,
//! jitter, loss ratio) and the Up / Degraded / Down state machine with hysteresis.
//!
//! [`LinkHealth`] is a pure state machine in the style of `outrider_runtime::sync`: no sockets,
//! clocks or tasks. Feed it results with [`LinkHealth::observe`]`(now, outcome)`; drain
//! transitions with [`LinkHealth::poll_event`]; when a time window is configured, call
//! [`LinkHealth::handle_timeout`] at [`LinkHealth::poll_timeout`] so results age out even while
//! no new ones arrive. `now` is milliseconds on any monotonic clock the shell chooses.
//!
//! # The window
//!
//! The window holds the latest [`HealthConfig::window`] results, and, if
//! [`HealthConfig::window_ms`] is set, only those younger than that (a result observed at `t`
//! leaves at `t + window_ms`). Its figures ([`Figures`]) are:
//!
//! * **loss ratio**: failures / results. Every outcome but [`ProbeOutcome::Ok`] is a failure.
//! * **RTT p50 / p99**: nearest-rank percentiles of the successes' RTTs (`p` → the
//!   `ceil(p/100 · n)`-th smallest), so with fewer than 100 successes p99 is the largest.
//! * **jitter**: the mean absolute difference of consecutive successes' RTTs in the window
//!   (the "simple" IPDV of RFC 5481, not RFC 3550's exponentially smoothed estimator: over a
//!   bounded window the plain mean is exact, needs no warm-up and does not depend on what has
//!   left the window). A failure between two successes is skipped, not a break.
//!
//! # States and hysteresis
//!
//! ```text
//!            K consecutive successes                 any degraded figure ≥ its `enter`
//!  Unknown ───────────────────────────> Up  <──────────────────────────────────────> Degraded
//!     │         (Degraded at once if the          every figure ≤ its `exit` (Cleared)     │
//!     │          new epoch already is)  │                                                 │
//!     │ N failures in the last M        │ N failures in the last M                        │
//!     └───────────────────────────────> Down <────────────────────────────────────────────┘
//!                                        │ K consecutive successes → Up (or Degraded)
//! ```
//!
//! * **Down**: when a failure makes the failures among the last [`HealthConfig::down_of`] (M)
//!   results reach [`HealthConfig::down_failures`] (N). With consecutive failures that is the
//!   N-th one: a blackhole is detected within N probe intervals (plus one probe timeout).
//! * **Up from Down or Unknown**: after [`HealthConfig::up_successes`] (K) *consecutive*
//!   successes. A flapping link (failures interleaved with fewer than K successes) stays Down.
//! * **Recovery starts an epoch**: the state decisions after a recovery only count results from
//!   the first of the K successes on, so failures from before the outage cannot take the link
//!   straight back Down (nor hold it Degraded); the window's figures (metrics) still show them.
//! * **Degraded**: once the epoch holds at least [`DegradedConfig::min_samples`] results, any
//!   configured figure (loss ratio, p99 RTT, jitter) at or above its `enter` threshold makes an
//!   Up link Degraded; it is Up again only when every configured figure is at or below its
//!   `exit` threshold (`exit ≤ enter`: the band between them is the hysteresis).
//!
//! Each state change is one [`Transition`]: from, to, the [`TransitionReason`] with its numbers,
//! and the [`Figures`] the decision was made on (those of the epoch).

use std::collections::VecDeque;
use std::time::Duration;

use crate::outcome::ProbeOutcome;

/// A link's health state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkState {
    /// Not enough results yet (the state at start).
    Unknown,
    /// Healthy.
    Up,
    /// Carries traffic, but a loss, latency or jitter threshold is crossed.
    Degraded,
    /// Considered not to carry traffic.
    Down,
}

impl LinkState {
    /// All states, in the order metrics list them.
    pub const ALL: [LinkState; 4] = [
        LinkState::Unknown,
        LinkState::Up,
        LinkState::Degraded,
        LinkState::Down,
    ];

    /// The lower-case name (`unknown`, `up`, `degraded`, `down`), as in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Unknown => "unknown",
            LinkState::Up => "up",
            LinkState::Degraded => "degraded",
            LinkState::Down => "down",
        }
    }

    /// Whether the link may carry traffic (Up or Degraded).
    pub fn is_usable(self) -> bool {
        matches!(self, LinkState::Up | LinkState::Degraded)
    }
}

impl std::fmt::Display for LinkState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An enter/exit threshold pair: crossing `enter` (≥) raises, falling to `exit` (≤) clears.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hysteresis<T> {
    pub enter: T,
    pub exit: T,
}

/// When an Up link is Degraded. Each `None` threshold is not checked.
#[derive(Debug, Clone, PartialEq)]
pub struct DegradedConfig {
    /// Results the epoch must hold before the figures are judged (default 10).
    pub min_samples: usize,
    /// Loss ratio, 0..=1 (default enter 0.05, exit 0.01).
    pub loss: Option<Hysteresis<f64>>,
    /// p99 RTT (default none: set it per link from its normal RTT).
    pub p99_rtt: Option<Hysteresis<Duration>>,
    /// Jitter (default none).
    pub jitter: Option<Hysteresis<Duration>>,
}

impl Default for DegradedConfig {
    fn default() -> Self {
        Self {
            min_samples: 10,
            loss: Some(Hysteresis {
                enter: 0.05,
                exit: 0.01,
            }),
            p99_rtt: None,
            jitter: None,
        }
    }
}

/// The window and the thresholds of one link.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// Results kept in the window (default 100).
    pub window: usize,
    /// Results older than this (ms) leave the window too (default none: by count only).
    pub window_ms: Option<u64>,
    /// N: failures among the last `down_of` results that take the link Down (default 3).
    pub down_failures: usize,
    /// M: how many of the latest results the Down rule looks at (default 3: N consecutive).
    pub down_of: usize,
    /// K: consecutive successes that bring a Down or Unknown link Up (default 3).
    pub up_successes: usize,
    /// When an Up link is Degraded.
    pub degraded: DegradedConfig,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            window: 100,
            window_ms: None,
            down_failures: 3,
            down_of: 3,
            up_successes: 3,
            degraded: DegradedConfig::default(),
        }
    }
}

/// A [`HealthConfig`] that cannot work; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HealthConfigError {
    #[error("health.{field} must be at least 1")]
    Zero { field: &'static str },
    #[error("health.down_failures ({n}) must not exceed health.down_of ({m})")]
    DownFailuresOverM { n: usize, m: usize },
    #[error("health.down_of ({m}) must not exceed health.window ({window})")]
    DownOfOverWindow { m: usize, window: usize },
    #[error("health.degraded.{field}: exit must not exceed enter")]
    ExitOverEnter { field: &'static str },
    #[error("health.degraded.loss thresholds must lie within 0..=1")]
    LossRange,
}

impl HealthConfig {
    /// Checks the configuration; [`LinkHealth::new`] calls it.
    pub fn validate(&self) -> Result<(), HealthConfigError> {
        for (field, v) in [
            ("window", self.window),
            ("down_failures", self.down_failures),
            ("down_of", self.down_of),
            ("up_successes", self.up_successes),
        ] {
            if v == 0 {
                return Err(HealthConfigError::Zero { field });
            }
        }
        if self.down_failures > self.down_of {
            return Err(HealthConfigError::DownFailuresOverM {
                n: self.down_failures,
                m: self.down_of,
            });
        }
        if self.down_of > self.window {
            return Err(HealthConfigError::DownOfOverWindow {
                m: self.down_of,
                window: self.window,
            });
        }
        if self.window_ms == Some(0) {
            return Err(HealthConfigError::Zero { field: "window_ms" });
        }
        if let Some(h) = self.degraded.loss {
            if !(0.0..=1.0).contains(&h.enter) || !(0.0..=1.0).contains(&h.exit) {
                return Err(HealthConfigError::LossRange);
            }
            if h.exit > h.enter {
                return Err(HealthConfigError::ExitOverEnter { field: "loss" });
            }
        }
        if let Some(h) = self.degraded.p99_rtt {
            if h.exit > h.enter {
                return Err(HealthConfigError::ExitOverEnter { field: "p99_rtt" });
            }
        }
        if let Some(h) = self.degraded.jitter {
            if h.exit > h.enter {
                return Err(HealthConfigError::ExitOverEnter { field: "jitter" });
            }
        }
        Ok(())
    }
}

/// Figures of a set of results (the window, or the epoch for state decisions).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Figures {
    /// Results counted.
    pub samples: usize,
    /// Of which failures.
    pub failures: usize,
    /// failures / samples (0 when there are none).
    pub loss_ratio: f64,
    /// Median RTT of the successes.
    pub rtt_p50: Option<Duration>,
    /// 99th percentile RTT of the successes.
    pub rtt_p99: Option<Duration>,
    /// Mean absolute difference of consecutive successes' RTTs.
    pub jitter: Option<Duration>,
}

/// Why the state changed.
#[derive(Debug, Clone, PartialEq)]
pub enum TransitionReason {
    /// `failed` of the last `of` results failed (≥ N): Down.
    Failures { failed: usize, of: usize },
    /// `successes` consecutive successes (= K): out of Down or Unknown.
    Recovered { successes: usize },
    /// These figures crossed their `enter` thresholds: Degraded.
    Degraded { causes: Vec<DegradeCause> },
    /// Every degraded figure is back at or below its `exit` threshold: Up.
    Cleared,
}

/// One figure over its Degraded threshold.
#[derive(Debug, Clone, PartialEq)]
pub enum DegradeCause {
    Loss {
        ratio: f64,
        threshold: f64,
    },
    Latency {
        p99: Duration,
        threshold: Duration,
    },
    Jitter {
        jitter: Duration,
        threshold: Duration,
    },
}

/// A state change of one link.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// `now` of the call that made it.
    pub at_ms: u64,
    pub from: LinkState,
    pub to: LinkState,
    pub reason: TransitionReason,
    /// The figures the decision was made on (the epoch's; see the module docs).
    pub figures: Figures,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    seq: u64,
    at_ms: u64,
    rtt: Option<Duration>,
}

/// The health state machine of one link.
#[derive(Debug)]
pub struct LinkHealth {
    config: HealthConfig,
    window: VecDeque<Sample>,
    next_seq: u64,
    /// State decisions count results with `seq >= epoch`.
    epoch: u64,
    consecutive_successes: usize,
    state: LinkState,
    since_ms: Option<u64>,
    transitions: u64,
    events: VecDeque<Transition>,
}

impl LinkHealth {
    /// A link in state [`LinkState::Unknown`] with an empty window.
    pub fn new(config: HealthConfig) -> Result<Self, HealthConfigError> {
        config.validate()?;
        Ok(Self {
            window: VecDeque::with_capacity(config.window.min(1024)),
            config,
            next_seq: 0,
            epoch: 0,
            consecutive_successes: 0,
            state: LinkState::Unknown,
            since_ms: None,
            transitions: 0,
            events: VecDeque::new(),
        })
    }

    pub fn config(&self) -> &HealthConfig {
        &self.config
    }

    /// The current state.
    pub fn state(&self) -> LinkState {
        self.state
    }

    /// When the current state was entered (`None` while still in the initial Unknown).
    pub fn state_since_ms(&self) -> Option<u64> {
        self.since_ms
    }

    /// State changes so far.
    pub fn transitions(&self) -> u64 {
        self.transitions
    }

    /// The whole window's figures (for metrics; state decisions use the epoch's).
    pub fn figures(&self) -> Figures {
        figures(self.window.iter())
    }

    /// Results in the window.
    pub fn len(&self) -> usize {
        self.window.len()
    }

    pub fn is_empty(&self) -> bool {
        self.window.is_empty()
    }

    /// Records one probe result observed at `now` and updates the state.
    pub fn observe(&mut self, now: u64, outcome: &ProbeOutcome) {
        self.prune(now);
        let rtt = outcome.rtt();
        let seq = self.next_seq;
        self.next_seq += 1;
        self.window.push_back(Sample {
            seq,
            at_ms: now,
            rtt,
        });
        if self.window.len() > self.config.window {
            self.window.pop_front();
        }
        if rtt.is_some() {
            self.consecutive_successes += 1;
        } else {
            self.consecutive_successes = 0;
        }

        match self.state {
            LinkState::Down | LinkState::Unknown => {
                let k = self.config.up_successes;
                if self.consecutive_successes >= k {
                    self.epoch = seq + 1 - k as u64;
                    let to = if self.degraded_causes().is_empty() {
                        LinkState::Up
                    } else {
                        LinkState::Degraded
                    };
                    self.transition(now, to, TransitionReason::Recovered { successes: k });
                } else if self.state == LinkState::Unknown && rtt.is_none() {
                    self.check_down(now);
                }
            }
            LinkState::Up | LinkState::Degraded => {
                if rtt.is_none() && self.check_down(now) {
                    return;
                }
                self.check_degraded(now);
            }
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called: the oldest result leaves
    /// the time window then. `None` without a time window or with an empty window.
    pub fn poll_timeout(&self) -> Option<u64> {
        let ms = self.config.window_ms?;
        self.window.front().map(|s| s.at_ms.saturating_add(ms))
    }

    /// Ages results out of the time window and re-judges Degraded (aging can neither take a
    /// link Down nor bring it Up from Down).
    pub fn handle_timeout(&mut self, now: u64) {
        self.prune(now);
        if self.state.is_usable() {
            self.check_degraded(now);
        }
    }

    /// The next transition, oldest first.
    pub fn poll_event(&mut self) -> Option<Transition> {
        self.events.pop_front()
    }

    fn prune(&mut self, now: u64) {
        if let Some(ms) = self.config.window_ms {
            while self
                .window
                .front()
                .is_some_and(|s| s.at_ms.saturating_add(ms) <= now)
            {
                self.window.pop_front();
            }
        }
    }

    fn epoch_samples(&self) -> impl Iterator<Item = &Sample> + Clone {
        let epoch = self.epoch;
        self.window.iter().filter(move |s| s.seq >= epoch)
    }

    /// Applies the N-of-M rule; true if the link went Down.
    fn check_down(&mut self, now: u64) -> bool {
        let m = self.config.down_of;
        let recent: Vec<&Sample> = self.epoch_samples().collect();
        let last = &recent[recent.len().saturating_sub(m)..];
        let failed = last.iter().filter(|s| s.rtt.is_none()).count();
        if failed >= self.config.down_failures {
            self.transition(
                now,
                LinkState::Down,
                TransitionReason::Failures {
                    failed,
                    of: last.len(),
                },
            );
            true
        } else {
            false
        }
    }

    fn check_degraded(&mut self, now: u64) {
        let causes = self.degraded_causes();
        match self.state {
            LinkState::Up if !causes.is_empty() => self.transition(
                now,
                LinkState::Degraded,
                TransitionReason::Degraded { causes },
            ),
            LinkState::Degraded if causes.is_empty() && self.cleared() => {
                self.transition(now, LinkState::Up, TransitionReason::Cleared)
            }
            _ => {}
        }
    }

    /// The figures at or over their `enter` thresholds (judged only with enough results).
    fn degraded_causes(&self) -> Vec<DegradeCause> {
        let f = figures(self.epoch_samples());
        let d = &self.config.degraded;
        let mut causes = Vec::new();
        if f.samples < d.min_samples {
            return causes;
        }
        if let Some(h) = d.loss {
            if f.loss_ratio >= h.enter {
                causes.push(DegradeCause::Loss {
                    ratio: f.loss_ratio,
                    threshold: h.enter,
                });
            }
        }
        if let (Some(h), Some(p99)) = (d.p99_rtt, f.rtt_p99) {
            if p99 >= h.enter {
                causes.push(DegradeCause::Latency {
                    p99,
                    threshold: h.enter,
                });
            }
        }
        if let (Some(h), Some(jitter)) = (d.jitter, f.jitter) {
            if jitter >= h.enter {
                causes.push(DegradeCause::Jitter {
                    jitter,
                    threshold: h.enter,
                });
            }
        }
        causes
    }

    /// Whether every configured figure is at or below its `exit` threshold. With fewer than
    /// `min_samples` results nothing can be judged, so a Degraded link stays Degraded.
    fn cleared(&self) -> bool {
        let f = figures(self.epoch_samples());
        let d = &self.config.degraded;
        if f.samples < d.min_samples {
            return false;
        }
        let loss_ok = d.loss.is_none_or(|h| f.loss_ratio <= h.exit);
        let rtt_ok = d
            .p99_rtt
            .is_none_or(|h| f.rtt_p99.is_none_or(|v| v <= h.exit));
        let jitter_ok = d
            .jitter
            .is_none_or(|h| f.jitter.is_none_or(|v| v <= h.exit));
        loss_ok && rtt_ok && jitter_ok
    }

    fn transition(&mut self, now: u64, to: LinkState, reason: TransitionReason) {
        let from = self.state;
        if from == to {
            return;
        }
        let figures = figures(self.epoch_samples());
        self.state = to;
        self.since_ms = Some(now);
        self.transitions += 1;
        if to == LinkState::Down {
            self.consecutive_successes = 0;
        }
        self.events.push_back(Transition {
            at_ms: now,
            from,
            to,
            reason,
            figures,
        });
    }
}

fn figures<'a>(samples: impl Iterator<Item = &'a Sample> + Clone) -> Figures {
    let mut n = 0usize;
    let mut failures = 0usize;
    let mut rtts: Vec<Duration> = Vec::new();
    let mut jitter_sum = Duration::ZERO;
    let mut jitter_pairs = 0u32;
    let mut prev: Option<Duration> = None;
    for s in samples {
        n += 1;
        match s.rtt {
            Some(r) => {
                if let Some(p) = prev {
                    jitter_sum += r.abs_diff(p);
                    jitter_pairs += 1;
                }
                prev = Some(r);
                rtts.push(r);
            }
            None => failures += 1,
        }
    }
    rtts.sort_unstable();
    Figures {
        samples: n,
        failures,
        loss_ratio: if n == 0 {
            0.0
        } else {
            failures as f64 / n as f64
        },
        rtt_p50: percentile(&rtts, 50),
        rtt_p99: percentile(&rtts, 99),
        jitter: (jitter_pairs > 0).then(|| jitter_sum / jitter_pairs),
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], p: usize) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: u64 = 200;

    fn ok(ms: u64) -> ProbeOutcome {
        ProbeOutcome::Ok {
            rtt: Duration::from_millis(ms),
        }
    }

    fn rep(pattern: &[ProbeOutcome], times: usize) -> Vec<ProbeOutcome> {
        (0..times).flat_map(|_| pattern.iter().cloned()).collect()
    }

    fn lost() -> ProbeOutcome {
        ProbeOutcome::Timeout {
            after: Duration::from_millis(INTERVAL),
        }
    }

    /// Feeds outcomes at INTERVAL steps from `*now`; returns the transitions.
    fn feed(h: &mut LinkHealth, now: &mut u64, outcomes: &[ProbeOutcome]) -> Vec<Transition> {
        let mut out = Vec::new();
        for o in outcomes {
            *now += INTERVAL;
            h.observe(*now, o);
            while let Some(t) = h.poll_event() {
                out.push(t);
            }
        }
        out
    }

    fn up_link(config: HealthConfig, now: &mut u64) -> LinkHealth {
        let mut h = LinkHealth::new(config).unwrap();
        let k = h.config.up_successes;
        let t = feed(&mut h, now, &vec![ok(10); k]);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].to, LinkState::Up);
        h
    }

    #[test]
    fn starts_unknown_and_comes_up_after_k_successes() {
        let mut h = LinkHealth::new(HealthConfig::default()).unwrap();
        assert_eq!(h.state(), LinkState::Unknown);
        let mut now = 0;
        assert!(feed(&mut h, &mut now, &[ok(10), ok(10)]).is_empty());
        let t = feed(&mut h, &mut now, &[ok(10)]);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].from, LinkState::Unknown);
        assert_eq!(t[0].to, LinkState::Up);
        assert_eq!(t[0].reason, TransitionReason::Recovered { successes: 3 });
        assert_eq!(t[0].at_ms, 3 * INTERVAL);
    }

    #[test]
    fn unknown_link_that_never_answers_goes_down() {
        let mut h = LinkHealth::new(HealthConfig::default()).unwrap();
        let mut now = 0;
        let t = feed(&mut h, &mut now, &[lost(), lost(), lost()]);
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].from, t[0].to), (LinkState::Unknown, LinkState::Down));
    }

    #[test]
    fn blackhole_is_detected_within_n_intervals() {
        for n in [2usize, 3, 5] {
            let config = HealthConfig {
                down_failures: n,
                down_of: n + 2,
                ..HealthConfig::default()
            };
            let mut now = 0;
            let mut h = up_link(config, &mut now);
            let start = now;
            let mut detected = None;
            for i in 1..=20u64 {
                now += INTERVAL;
                h.observe(now, &lost());
                if let Some(t) = h.poll_event() {
                    assert_eq!(t.to, LinkState::Down);
                    assert_eq!(
                        t.reason,
                        TransitionReason::Failures {
                            failed: n,
                            of: n + 2
                        }
                    );
                    assert_eq!(t.figures.failures, n);
                    detected = Some(i);
                    break;
                }
            }
            assert_eq!(detected, Some(n as u64), "N={n}");
            assert_eq!(now - start, n as u64 * INTERVAL);
        }
    }

    #[test]
    fn n_of_m_counts_scattered_failures() {
        // 3 of the last 5: F S F S F → Down on the third failure.
        let config = HealthConfig {
            down_failures: 3,
            down_of: 5,
            degraded: DegradedConfig {
                loss: None,
                ..DegradedConfig::default()
            },
            ..HealthConfig::default()
        };
        let mut now = 0;
        let mut h = up_link(config, &mut now);
        let t = feed(&mut h, &mut now, &[lost(), ok(10), lost(), ok(10)]);
        assert!(t.is_empty(), "{t:?}");
        let t = feed(&mut h, &mut now, &[lost()]);
        assert_eq!(t[0].to, LinkState::Down);
        assert_eq!(t[0].reason, TransitionReason::Failures { failed: 3, of: 5 });
        // F S S S F S S S F: never 3 of the last 5.
        let mut now = 0;
        let config = h.config().clone();
        let mut h = up_link(config, &mut now);
        let pattern = rep(&[lost(), ok(9), ok(9), ok(9)], 5);
        assert!(feed(&mut h, &mut now, &pattern).is_empty());
        assert_eq!(h.state(), LinkState::Up);
    }

    #[test]
    fn recovery_needs_k_consecutive_successes() {
        let config = HealthConfig {
            up_successes: 4,
            ..HealthConfig::default()
        };
        let mut now = 0;
        let mut h = up_link(config, &mut now);
        feed(&mut h, &mut now, &[lost(), lost(), lost()]);
        assert_eq!(h.state(), LinkState::Down);
        // K-1 successes, a failure: the count restarts.
        let t = feed(&mut h, &mut now, &[ok(10), ok(10), ok(10), lost()]);
        assert!(t.is_empty());
        assert!(feed(&mut h, &mut now, &[ok(10), ok(10), ok(10)]).is_empty());
        assert_eq!(h.state(), LinkState::Down);
        let t = feed(&mut h, &mut now, &[ok(10)]);
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].from, t[0].to), (LinkState::Down, LinkState::Up));
        assert_eq!(t[0].reason, TransitionReason::Recovered { successes: 4 });
        // The epoch starts at the first of the K successes: the outage's failures don't count.
        assert_eq!(t[0].figures.samples, 4);
        assert_eq!(t[0].figures.failures, 0);
        // ...but the window's figures still show them.
        assert!(h.figures().failures >= 3);
    }

    #[test]
    fn a_single_loss_after_recovery_does_not_go_straight_back_down() {
        let config = HealthConfig {
            down_failures: 3,
            down_of: 10,
            degraded: DegradedConfig {
                loss: None,
                ..DegradedConfig::default()
            },
            ..HealthConfig::default()
        };
        let mut now = 0;
        let mut h = up_link(config, &mut now);
        feed(&mut h, &mut now, &[lost(), lost(), lost()]);
        feed(&mut h, &mut now, &[ok(10), ok(10), ok(10)]);
        assert_eq!(h.state(), LinkState::Up);
        // Without the epoch, 4 failures among the last 10 would take it Down again.
        assert!(feed(&mut h, &mut now, &[lost()]).is_empty());
        assert_eq!(h.state(), LinkState::Up);
    }

    #[test]
    fn flapping_is_suppressed() {
        let config = HealthConfig {
            down_failures: 2,
            down_of: 4,
            up_successes: 3,
            degraded: DegradedConfig {
                loss: None,
                ..DegradedConfig::default()
            },
            ..HealthConfig::default()
        };
        let mut now = 0;
        let mut h = up_link(config, &mut now);
        // A link that drops every other probe: down once, then stays down.
        let pattern = rep(&[lost(), ok(10)], 50);
        let t = feed(&mut h, &mut now, &pattern);
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!(t[0].to, LinkState::Down);
        assert_eq!(h.state(), LinkState::Down);
        // Two successes out of three (never K = 3 in a row, the last pattern ended on one): still
        // down.
        let t = feed(&mut h, &mut now, &rep(&[lost(), ok(10), ok(10)], 20));
        assert!(t.is_empty());
        assert_eq!(h.transitions(), 2); // Unknown→Up, Up→Down
    }

    #[test]
    fn degraded_on_loss_with_hysteresis() {
        let config = HealthConfig {
            window: 20,
            down_failures: 3,
            down_of: 5,
            degraded: DegradedConfig {
                min_samples: 10,
                loss: Some(Hysteresis {
                    enter: 0.15,
                    exit: 0.05,
                }),
                p99_rtt: None,
                jitter: None,
            },
            ..HealthConfig::default()
        };
        let mut now = 0;
        let mut h = up_link(config, &mut now);
        // One loss in four (25%), never 3 of 5. Up counts 3 successes already (epoch).
        let mut degraded_at = None;
        for (i, o) in rep(&[ok(10), ok(10), ok(10), lost()], 5).iter().enumerate() {
            now += INTERVAL;
            h.observe(now, o);
            if let Some(t) = h.poll_event() {
                assert_eq!(t.to, LinkState::Degraded);
                match &t.reason {
                    TransitionReason::Degraded { causes } => match causes.as_slice() {
                        [DegradeCause::Loss { ratio, threshold }] => {
                            assert!(*ratio >= 0.15);
                            assert_eq!(*threshold, 0.15);
                        }
                        other => panic!("causes {other:?}"),
                    },
                    r => panic!("reason {r:?}"),
                }
                degraded_at = Some(i);
                break;
            }
        }
        // 1 loss in 3 + 4 results is 14%; 2 in 3 + 8 = 18% first crosses 15%.
        let i = degraded_at.expect("degraded");
        assert_eq!(i, 7);
        // 10% loss: between exit (5%) and enter (15%): stays Degraded.
        let mut tenth = vec![ok(10); 9];
        tenth.push(lost());
        let t = feed(&mut h, &mut now, &rep(&tenth, 2));
        assert!(t.is_empty(), "{t:?}");
        assert_eq!(h.state(), LinkState::Degraded);
        // Clean results until loss ≤ 5% in the 20-result window: at most 1 failure.
        let mut cleared_after = None;
        for i in 1..=40 {
            now += INTERVAL;
            h.observe(now, &ok(10));
            if let Some(t) = h.poll_event() {
                assert_eq!(t.to, LinkState::Up);
                assert_eq!(t.reason, TransitionReason::Cleared);
                assert!(t.figures.loss_ratio <= 0.05);
                cleared_after = Some(i);
                break;
            }
        }
        // The window's failures are its 10th and 20th results: 1 failure (5%) remains once
        // the first has slid out, after 10 more results.
        assert_eq!(cleared_after, Some(10));
    }

    #[test]
    fn degraded_on_latency_and_back() {
        let config = HealthConfig {
            window: 10,
            degraded: DegradedConfig {
                min_samples: 5,
                loss: None,
                p99_rtt: Some(Hysteresis {
                    enter: Duration::from_millis(100),
                    exit: Duration::from_millis(50),
                }),
                jitter: None,
            },
            ..HealthConfig::default()
        };
        let mut now = 0;
        let mut h = up_link(config, &mut now);
        assert!(feed(&mut h, &mut now, &vec![ok(20); 10]).is_empty());
        let t = feed(&mut h, &mut now, &[ok(150)]);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].to, LinkState::Degraded);
        assert_eq!(
            t[0].reason,
            TransitionReason::Degraded {
                causes: vec![DegradeCause::Latency {
                    p99: Duration::from_millis(150),
                    threshold: Duration::from_millis(100),
                }]
            }
        );
        assert_eq!(t[0].figures.rtt_p99, Some(Duration::from_millis(150)));
        assert_eq!(t[0].figures.rtt_p50, Some(Duration::from_millis(20)));
        // p99 = 150 ms stays in the window for 10 results; 70 ms is inside the band.
        assert!(feed(&mut h, &mut now, &vec![ok(70); 9]).is_empty());
        assert_eq!(h.state(), LinkState::Degraded);
        // The 150 leaves: p99 = 70 > exit 50 — still Degraded (hysteresis).
        assert!(feed(&mut h, &mut now, &[ok(20)]).is_empty());
        assert_eq!(h.figures().rtt_p99, Some(Duration::from_millis(70)));
        assert_eq!(h.state(), LinkState::Degraded);
        // Once every 70 ms result has left: Up.
        let t = feed(&mut h, &mut now, &vec![ok(20); 9]);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].to, LinkState::Up);
        assert_eq!(t[0].reason, TransitionReason::Cleared);
    }

    #[test]
    fn degraded_on_jitter() {
        let config = HealthConfig {
            window: 10,
            degraded: DegradedConfig {
                min_samples: 4,
                loss: None,
                p99_rtt: None,
                jitter: Some(Hysteresis {
                    enter: Duration::from_millis(20),
                    exit: Duration::from_millis(5),
                }),
            },
            ..HealthConfig::default()
        };
        let mut now = 0;
        let mut h = up_link(config, &mut now);
        // 10, 10, 10, 60, 10: differences 0, 0, 50, 50 → mean 25 ms ≥ 20.
        let t = feed(&mut h, &mut now, &[ok(60), ok(10), ok(60)]);
        assert_eq!(t.len(), 1, "{t:?}");
        match &t[0].reason {
            TransitionReason::Degraded { causes } => {
                assert!(matches!(causes.as_slice(), [DegradeCause::Jitter { .. }]))
            }
            r => panic!("{r:?}"),
        }
        assert!(t[0].figures.jitter.unwrap() >= Duration::from_millis(20));
    }

    #[test]
    fn figures_and_count_window_slide() {
        let config = HealthConfig {
            window: 4,
            down_failures: 4,
            down_of: 4,
            degraded: DegradedConfig {
                loss: None,
                ..DegradedConfig::default()
            },
            ..HealthConfig::default()
        };
        let mut h = LinkHealth::new(config).unwrap();
        let mut now = 0;
        feed(&mut h, &mut now, &[ok(1), ok(2), ok(3), ok(4)]);
        assert_eq!(h.len(), 4);
        let f = h.figures();
        assert_eq!(f.rtt_p50, Some(Duration::from_millis(2)));
        assert_eq!(f.rtt_p99, Some(Duration::from_millis(4)));
        assert_eq!(f.jitter, Some(Duration::from_millis(1)));
        // 1 and 2 slide out; jitter over 3, 4, (lost), 10 = (1 + 6) / 2.
        feed(&mut h, &mut now, &[lost(), ok(10)]);
        assert_eq!(h.len(), 4);
        let f = h.figures();
        assert_eq!(f.samples, 4);
        assert_eq!(f.failures, 1);
        assert_eq!(f.loss_ratio, 0.25);
        assert_eq!(f.rtt_p50, Some(Duration::from_millis(4)));
        assert_eq!(f.jitter, Some(Duration::from_micros(3500)));
    }

    #[test]
    fn time_window_ages_results_out() {
        let config = HealthConfig {
            window: 1000,
            window_ms: Some(1000),
            down_failures: 3,
            down_of: 3,
            degraded: DegradedConfig {
                min_samples: 1,
                loss: Some(Hysteresis {
                    enter: 0.3,
                    exit: 0.0,
                }),
                p99_rtt: None,
                jitter: None,
            },
            ..HealthConfig::default()
        };
        let mut now = 0;
        let mut h = up_link(config, &mut now); // results at 200, 400, 600
        assert_eq!(h.poll_timeout(), Some(1200));
        let t = feed(&mut h, &mut now, &[lost(), lost()]); // 800, 1000: 2/5 = 40%
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].to, LinkState::Degraded);
        // Nothing arrives; the successes age out first (40% → 2/2), then the failures.
        h.handle_timeout(1199);
        assert_eq!(h.len(), 5);
        h.handle_timeout(1200);
        assert_eq!(h.len(), 4);
        assert_eq!(h.poll_timeout(), Some(1400));
        h.handle_timeout(2000);
        assert!(h.is_empty());
        assert_eq!(h.poll_timeout(), None);
        // Empty: nothing to judge, so no Cleared either (min_samples 1).
        assert_eq!(h.state(), LinkState::Degraded);
        assert!(h.poll_event().is_none());
        now = 2000;
        let t = feed(&mut h, &mut now, &[ok(5)]);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].to, LinkState::Up);
        assert_eq!(t[0].figures.samples, 1);
    }

    #[test]
    fn invalid_configs_name_the_field() {
        let bad = HealthConfig {
            down_failures: 4,
            down_of: 3,
            ..HealthConfig::default()
        };
        assert_eq!(
            LinkHealth::new(bad).unwrap_err().to_string(),
            "health.down_failures (4) must not exceed health.down_of (3)"
        );
        let bad = HealthConfig {
            up_successes: 0,
            ..HealthConfig::default()
        };
        assert!(LinkHealth::new(bad)
            .unwrap_err()
            .to_string()
            .contains("up_successes"));
        let bad = HealthConfig {
            degraded: DegradedConfig {
                loss: Some(Hysteresis {
                    enter: 0.1,
                    exit: 0.2,
                }),
                ..DegradedConfig::default()
            },
            ..HealthConfig::default()
        };
        assert_eq!(
            LinkHealth::new(bad).unwrap_err(),
            HealthConfigError::ExitOverEnter { field: "loss" }
        );
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&v, 99), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&v[..1], 99), Some(Duration::from_millis(1)));
        assert_eq!(percentile(&[], 50), None);
    }
}
