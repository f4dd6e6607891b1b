//! Sans-IO failover: which of several links (Direct Connect, VPN, ...) carries traffic.
//!
//! [`Failover`] takes each link's [`LinkState`] (from its [`crate::health::LinkHealth`]) with
//! [`Failover::set_state`]`(now, link, state)` and keeps one **active** link:
//!
//! * **Ranking.** Usable links (Up or Degraded) rank by state first (Up before Degraded), then by
//!   priority (a *lower* number is preferred, as route metrics), then by the order given to
//!   [`Failover::new`].
//! * **Failover is immediate.** When the active link is no longer usable (Down or Unknown), the
//!   best usable link becomes active at once: detection time is the health machine's alone.
//! * **Moving to a better link waits for a hold-down.** While the active link is usable, a
//!   better-ranked link takes over only once it has been in its current state for
//!   [`FailoverConfig::hold_down_ms`] without a change (failing back to the primary after an
//!   outage is the usual case). A link that flaps restarts its hold-down at every change.
//!   [`Failover::poll_timeout`] says when a hold-down ends; call
//!   [`Failover::handle_timeout`] then.
//! * **No usable link.** The active link is kept (traffic still has a path to try, and the first
//!   link back takes over at once) and [`FailoverEvent::NoUsableLink`] is reported once; when
//!   the kept link is usable again before any other, [`FailoverEvent::Restored`] says so.
//!
//! Every decision is a [`FailoverEvent`], drained with [`Failover::poll_event`].

use std::collections::VecDeque;

use crate::health::LinkState;

/// Failover settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverConfig {
    /// How long a better link must hold its state before it takes over from a usable active
    /// link (default 30 s).
    pub hold_down_ms: u64,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        Self {
            hold_down_ms: 30_000,
        }
    }
}

/// A link the failover chooses from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkPriority {
    pub name: String,
    /// Lower is preferred.
    pub priority: u32,
}

impl LinkPriority {
    pub fn new(name: impl Into<String>, priority: u32) -> Self {
        Self {
            name: name.into(),
            priority,
        }
    }
}

/// A failover that cannot be built or a link it does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FailoverError {
    #[error("failover needs at least one link")]
    NoLinks,
    #[error("link {0:?} is listed twice")]
    DuplicateLink(String),
    #[error("unknown link {0:?}")]
    UnknownLink(String),
}

/// Why the active link changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchReason {
    /// The first usable link (there was no active link before).
    Initial,
    /// The active link became unusable (its state is given).
    ActiveUnusable { state: LinkState },
    /// A better-ranked link held its state for the hold-down (`held_ms` ≥ hold-down).
    Preferred { state: LinkState, held_ms: u64 },
}

/// A failover decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailoverEvent {
    /// The active link changed.
    Switched {
        at_ms: u64,
        from: Option<String>,
        to: String,
        reason: SwitchReason,
    },
    /// No link is usable; `kept` stays active (if there was one).
    NoUsableLink { at_ms: u64, kept: Option<String> },
    /// The kept link is usable again and stays active.
    Restored { at_ms: u64, link: String },
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    priority: u32,
    state: LinkState,
    since_ms: u64,
}

/// The failover state machine.
#[derive(Debug)]
pub struct Failover {
    config: FailoverConfig,
    links: Vec<Entry>,
    active: Option<usize>,
    /// No link usable (reported once until one is).
    stranded: bool,
    switches: u64,
    events: VecDeque<FailoverEvent>,
}

impl Failover {
    /// All links start Unknown, with no active link.
    pub fn new(
        config: FailoverConfig,
        links: impl IntoIterator<Item = LinkPriority>,
    ) -> Result<Self, FailoverError> {
        let mut entries: Vec<Entry> = Vec::new();
        for l in links {
            if entries.iter().any(|e| e.name == l.name) {
                return Err(FailoverError::DuplicateLink(l.name));
            }
            entries.push(Entry {
                name: l.name,
                priority: l.priority,
                state: LinkState::Unknown,
                since_ms: 0,
            });
        }
        if entries.is_empty() {
            return Err(FailoverError::NoLinks);
        }
        Ok(Self {
            config,
            links: entries,
            active: None,
            stranded: false,
            switches: 0,
            events: VecDeque::new(),
        })
    }

    /// The active link: the one traffic should use (kept even when no link is usable; see
    /// [`Failover::active_usable`]).
    pub fn active(&self) -> Option<&str> {
        self.active.map(|i| self.links[i].name.as_str())
    }

    /// Whether the active link is usable right now.
    pub fn active_usable(&self) -> bool {
        self.active.is_some_and(|i| self.links[i].state.is_usable())
    }

    /// Changes of the active link so far.
    pub fn switches(&self) -> u64 {
        self.switches
    }

    /// The state the failover holds for `link`.
    pub fn state_of(&self, link: &str) -> Option<LinkState> {
        self.links.iter().find(|e| e.name == link).map(|e| e.state)
    }

    /// Records `link`'s state at `now` and decides.
    pub fn set_state(
        &mut self,
        now: u64,
        link: &str,
        state: LinkState,
    ) -> Result<(), FailoverError> {
        let i = self
            .links
            .iter()
            .position(|e| e.name == link)
            .ok_or_else(|| FailoverError::UnknownLink(link.to_string()))?;
        let e = &mut self.links[i];
        if e.state != state {
            e.state = state;
            e.since_ms = now;
        }
        self.decide(now);
        Ok(())
    }

    /// When a hold-down ends and [`handle_timeout`](Self::handle_timeout) must be called.
    pub fn poll_timeout(&self) -> Option<u64> {
        let a = self.active?;
        if !self.links[a].state.is_usable() {
            return None;
        }
        self.links
            .iter()
            .enumerate()
            .filter(|(i, e)| e.state.is_usable() && self.better(*i, a))
            .map(|(_, e)| e.since_ms.saturating_add(self.config.hold_down_ms))
            .min()
    }

    pub fn handle_timeout(&mut self, now: u64) {
        self.decide(now);
    }

    /// The next decision, oldest first.
    pub fn poll_event(&mut self) -> Option<FailoverEvent> {
        self.events.pop_front()
    }

    fn rank(&self, i: usize) -> (u8, u32, usize) {
        let e = &self.links[i];
        let s = match e.state {
            LinkState::Up => 0,
            LinkState::Degraded => 1,
            LinkState::Unknown | LinkState::Down => 2,
        };
        (s, e.priority, i)
    }

    fn better(&self, a: usize, b: usize) -> bool {
        self.rank(a) < self.rank(b)
    }

    fn best_usable(&self) -> Option<usize> {
        (0..self.links.len())
            .filter(|i| self.links[*i].state.is_usable())
            .min_by_key(|i| self.rank(*i))
    }

    fn decide(&mut self, now: u64) {
        let best = self.best_usable();
        match (self.active, best) {
            (_, None) => {
                if !self.stranded {
                    self.stranded = true;
                    self.events.push_back(FailoverEvent::NoUsableLink {
                        at_ms: now,
                        kept: self.active().map(str::to_string),
                    });
                }
            }
            (None, Some(b)) => {
                self.switch(now, b, SwitchReason::Initial);
            }
            (Some(a), Some(b)) => {
                let active = &self.links[a];
                if !active.state.is_usable() {
                    let reason = SwitchReason::ActiveUnusable {
                        state: active.state,
                    };
                    self.switch(now, b, reason);
                } else {
                    if self.stranded {
                        self.stranded = false;
                        self.events.push_back(FailoverEvent::Restored {
                            at_ms: now,
                            link: active.name.clone(),
                        });
                    }
                    // The best-ranked link whose hold-down has passed, if better than active.
                    let hold = self.config.hold_down_ms;
                    let candidate = (0..self.links.len())
                        .filter(|i| {
                            let e = &self.links[*i];
                            e.state.is_usable()
                                && self.better(*i, a)
                                && now.saturating_sub(e.since_ms) >= hold
                        })
                        .min_by_key(|i| self.rank(*i));
                    if let Some(c) = candidate {
                        let e = &self.links[c];
                        let reason = SwitchReason::Preferred {
                            state: e.state,
                            held_ms: now.saturating_sub(e.since_ms),
                        };
                        self.switch(now, c, reason);
                    }
                }
            }
        }
    }

    fn switch(&mut self, now: u64, to: usize, reason: SwitchReason) {
        let from = self.active().map(str::to_string);
        self.active = Some(to);
        self.stranded = false;
        self.switches += 1;
        self.events.push_back(FailoverEvent::Switched {
            at_ms: now,
            from,
            to: self.links[to].name.clone(),
            reason,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{HealthConfig, LinkHealth};
    use crate::outcome::ProbeOutcome;
    use std::time::Duration;

    const HOLD: u64 = 10_000;

    fn two_links() -> Failover {
        Failover::new(
            FailoverConfig { hold_down_ms: HOLD },
            [LinkPriority::new("dx", 10), LinkPriority::new("vpn", 20)],
        )
        .unwrap()
    }

    fn events(f: &mut Failover) -> Vec<FailoverEvent> {
        std::iter::from_fn(|| f.poll_event()).collect()
    }

    fn switched_to(ev: &FailoverEvent) -> Option<&str> {
        match ev {
            FailoverEvent::Switched { to, .. } => Some(to),
            _ => None,
        }
    }

    #[test]
    fn first_usable_link_is_chosen_at_once() {
        let mut f = two_links();
        assert_eq!(f.active(), None);
        f.set_state(100, "vpn", LinkState::Up).unwrap();
        assert_eq!(f.active(), Some("vpn"));
        assert_eq!(
            events(&mut f),
            vec![FailoverEvent::Switched {
                at_ms: 100,
                from: None,
                to: "vpn".into(),
                reason: SwitchReason::Initial
            }]
        );
        // dx comes up 50 ms later: it is preferred, but must hold for the hold-down.
        f.set_state(150, "dx", LinkState::Up).unwrap();
        assert_eq!(f.active(), Some("vpn"));
        assert_eq!(f.poll_timeout(), Some(150 + HOLD));
        f.handle_timeout(150 + HOLD);
        assert_eq!(f.active(), Some("dx"));
    }

    /// The health machines and the failover driven together by simulated probes.
    struct Sim {
        now: u64,
        dx: LinkHealth,
        vpn: LinkHealth,
        f: Failover,
        log: Vec<FailoverEvent>,
    }

    const INTERVAL: u64 = 200;

    impl Sim {
        fn new() -> Self {
            let config = HealthConfig::default(); // N = 3 of 3, K = 3
            Self {
                now: 0,
                dx: LinkHealth::new(config.clone()).unwrap(),
                vpn: LinkHealth::new(config).unwrap(),
                f: two_links(),
                log: Vec::new(),
            }
        }

        /// One probe interval: each link's result (true = answered), then timers.
        fn step(&mut self, dx_ok: bool, vpn_ok: bool) {
            self.now += INTERVAL;
            let now = self.now;
            let o = |ok: bool| {
                if ok {
                    ProbeOutcome::Ok {
                        rtt: Duration::from_millis(5),
                    }
                } else {
                    ProbeOutcome::Timeout {
                        after: Duration::from_millis(INTERVAL),
                    }
                }
            };
            self.dx.observe(now, &o(dx_ok));
            self.vpn.observe(now, &o(vpn_ok));
            while let Some(t) = self.dx.poll_event() {
                self.f.set_state(now, "dx", t.to).unwrap();
            }
            while let Some(t) = self.vpn.poll_event() {
                self.f.set_state(now, "vpn", t.to).unwrap();
            }
            if self.f.poll_timeout().is_some_and(|t| t <= now) {
                self.f.handle_timeout(now);
            }
            self.log.extend(std::iter::from_fn(|| self.f.poll_event()));
        }
    }

    #[test]
    fn primary_blackholed_fails_over_within_detection_time_and_fails_back_after_hold_down() {
        let mut s = Sim::new();
        for _ in 0..3 {
            s.step(true, true);
        }
        assert_eq!(s.f.active(), Some("dx"));
        // Steady state long enough that hold-downs are irrelevant.
        for _ in 0..100 {
            s.step(true, true);
        }
        s.log.clear();
        let blackhole_at = s.now;
        let mut switched_at = None;
        for _ in 0..10 {
            s.step(false, true);
            if s.f.active() == Some("vpn") && switched_at.is_none() {
                switched_at = Some(s.now);
            }
        }
        let detection = 3 * INTERVAL; // N = 3 consecutive failures
        assert_eq!(switched_at, Some(blackhole_at + detection));
        assert_eq!(
            s.log,
            vec![FailoverEvent::Switched {
                at_ms: blackhole_at + detection,
                from: Some("dx".into()),
                to: "vpn".into(),
                reason: SwitchReason::ActiveUnusable {
                    state: LinkState::Down
                }
            }]
        );

        // dx comes back: Up after K = 3 successes, but traffic stays on vpn for the hold-down.
        s.log.clear();
        let mut dx_up_at = None;
        let mut back_at = None;
        for _ in 0..200 {
            s.step(true, true);
            if dx_up_at.is_none() && s.f.state_of("dx") == Some(LinkState::Up) {
                dx_up_at = Some(s.now);
            }
            if back_at.is_none() && s.f.active() == Some("dx") {
                back_at = Some(s.now);
            }
            if let Some(up) = dx_up_at {
                if s.now < up + HOLD {
                    assert_eq!(s.f.active(), Some("vpn"), "failed back early at {}", s.now);
                }
            }
        }
        let up = dx_up_at.expect("dx up");
        assert_eq!(back_at, Some(up + HOLD));
        assert_eq!(
            s.log.iter().filter_map(switched_to).collect::<Vec<_>>(),
            vec!["dx"]
        );
        match &s.log[0] {
            FailoverEvent::Switched { reason, .. } => assert_eq!(
                *reason,
                SwitchReason::Preferred {
                    state: LinkState::Up,
                    held_ms: HOLD
                }
            ),
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn a_flapping_primary_restarts_its_hold_down() {
        let mut f = two_links();
        f.set_state(0, "vpn", LinkState::Up).unwrap();
        f.set_state(0, "dx", LinkState::Up).unwrap();
        assert_eq!(f.active(), Some("vpn"));
        f.set_state(HOLD / 2, "dx", LinkState::Down).unwrap();
        f.set_state(HOLD / 2 + 1, "dx", LinkState::Up).unwrap();
        f.handle_timeout(HOLD);
        assert_eq!(f.active(), Some("vpn"));
        assert_eq!(f.poll_timeout(), Some(HOLD / 2 + 1 + HOLD));
        f.handle_timeout(HOLD / 2 + HOLD);
        assert_eq!(f.active(), Some("vpn"));
        f.handle_timeout(HOLD / 2 + 1 + HOLD);
        assert_eq!(f.active(), Some("dx"));
    }

    #[test]
    fn both_down_keeps_the_last_and_reports_no_link() {
        let mut f = two_links();
        f.set_state(0, "dx", LinkState::Up).unwrap();
        f.set_state(0, "vpn", LinkState::Up).unwrap();
        events(&mut f);
        f.set_state(1000, "dx", LinkState::Down).unwrap();
        assert_eq!(f.active(), Some("vpn"));
        f.set_state(2000, "vpn", LinkState::Down).unwrap();
        assert_eq!(f.active(), Some("vpn"));
        assert!(!f.active_usable());
        let ev = events(&mut f);
        assert_eq!(
            ev.last(),
            Some(&FailoverEvent::NoUsableLink {
                at_ms: 2000,
                kept: Some("vpn".into())
            })
        );
        // Reported once.
        f.set_state(2500, "dx", LinkState::Down).unwrap();
        assert!(events(&mut f).is_empty());
        // The kept link comes back first: restored, no switch.
        f.set_state(3000, "vpn", LinkState::Up).unwrap();
        assert_eq!(
            events(&mut f),
            vec![FailoverEvent::Restored {
                at_ms: 3000,
                link: "vpn".into()
            }]
        );
        // Both down again, then dx first: switch at once (the active link is unusable).
        f.set_state(4000, "vpn", LinkState::Down).unwrap();
        f.set_state(5000, "dx", LinkState::Up).unwrap();
        let ev = events(&mut f);
        assert_eq!(ev.len(), 2);
        assert_eq!(switched_to(&ev[1]), Some("dx"));
        assert_eq!(f.active(), Some("dx"));
    }

    #[test]
    fn no_link_ever_usable_reports_none_kept() {
        let mut f = two_links();
        f.set_state(0, "dx", LinkState::Down).unwrap();
        assert_eq!(
            events(&mut f),
            vec![FailoverEvent::NoUsableLink {
                at_ms: 0,
                kept: None
            }]
        );
        assert_eq!(f.active(), None);
    }

    #[test]
    fn up_backup_is_preferred_over_degraded_primary_after_hold_down() {
        let mut f = two_links();
        f.set_state(0, "dx", LinkState::Up).unwrap();
        f.set_state(0, "vpn", LinkState::Up).unwrap();
        assert_eq!(f.active(), Some("dx"));
        f.set_state(50_000, "dx", LinkState::Degraded).unwrap();
        // vpn has been Up since 0: well past its hold-down, so the move is immediate.
        assert_eq!(f.active(), Some("vpn"));
        // dx clears: it must hold Up for the hold-down before taking back over.
        f.set_state(60_000, "dx", LinkState::Up).unwrap();
        assert_eq!(f.active(), Some("vpn"));
        f.handle_timeout(60_000 + HOLD);
        assert_eq!(f.active(), Some("dx"));
        // A degraded link is still used when it is the only usable one.
        f.set_state(80_000, "vpn", LinkState::Down).unwrap();
        f.set_state(80_000, "dx", LinkState::Degraded).unwrap();
        assert_eq!(f.active(), Some("dx"));
        assert!(f.active_usable());
    }

    #[test]
    fn errors_name_the_link() {
        assert_eq!(
            Failover::new(FailoverConfig::default(), []).unwrap_err(),
            FailoverError::NoLinks
        );
        assert_eq!(
            Failover::new(
                FailoverConfig::default(),
                [LinkPriority::new("a", 1), LinkPriority::new("a", 2)]
            )
            .unwrap_err(),
            FailoverError::DuplicateLink("a".into())
        );
        let mut f = two_links();
        assert_eq!(
            f.set_state(0, "x", LinkState::Up).unwrap_err().to_string(),
            "unknown link \"x\""
        );
    }
}
