//! Link health probes, failover and host health for the Outrider agent (issue 6: Direct
//! Connect / VPN link health probes with sub-second failover, and host health).
//!
//! The crate is a library; the agent daemon wires it to its configuration, sync failover,
//! events and `/metrics`. Layers, from the pure core out:
//!
//! * [`health`]: sans-IO per-link health — a sliding window of probe results (RTT p50/p99,
//!   jitter, loss) and the Up / Degraded / Down machine with hysteresis, reporting typed
//!   [`health::Transition`]s with their reason and figures.
//! * [`failover`]: sans-IO choice of the active link among several by state and priority:
//!   immediate failover, fail-back after a hold-down, typed [`failover::FailoverEvent`]s.
//! * [`probe`]: async tokio probes, each bindable to a source address or interface — TCP
//!   connect, UDP echo (with the responder the cloud runs, [`probe::udp::serve_udp_echo`]),
//!   ICMP echo (datagram or raw socket), HTTP(S) GET, DNS A/AAAA — each returning a
//!   [`ProbeOutcome`] within its deadline.
//! * [`prober`]: the runner that probes each link at its interval and emits transitions and
//!   failover decisions on a channel; [`metrics`]: its Prometheus families.
//! * [`host`]: host telemetry (sysinfo) and a sans-IO alert evaluator with hysteresis.
//!
//! The sans-IO machines follow `outrider_runtime::sync`: inputs are method calls that take
//! `now` in milliseconds on any monotonic clock, outputs are polled (`poll_event`), timers are
//! `poll_timeout` → `handle_timeout(now)`.
//!
//! ```
//! use outrider_probe::health::{HealthConfig, LinkHealth, LinkState};
//! use outrider_probe::ProbeOutcome;
//! use std::time::Duration;
//!
//! let mut h = LinkHealth::new(HealthConfig::default()).unwrap();
//! for t in [200, 400, 600] {
//!     h.observe(t, &ProbeOutcome::Ok { rtt: Duration::from_millis(4) });
//! }
//! assert_eq!(h.state(), LinkState::Up);
//! for t in [800, 1000, 1200] {
//!     h.observe(t, &ProbeOutcome::Timeout { after: Duration::from_millis(200) });
//! }
//! assert_eq!(h.state(), LinkState::Down); // 3 consecutive failures
//! let up = h.poll_event().unwrap();
//! let down = h.poll_event().unwrap();
//! assert_eq!((up.to, down.to, down.at_ms), (LinkState::Up, LinkState::Down, 1200));
//! ```

pub mod failover;
pub mod health;
pub mod host;
pub mod metrics;
pub mod outcome;
pub mod probe;
pub mod prober;

pub use failover::{Failover, FailoverConfig, FailoverEvent, LinkPriority};
pub use health::{HealthConfig, LinkHealth, LinkState, Transition};
pub use outcome::{ProbeError, ProbeOutcome};
pub use probe::{Bind, Probe, ProbeKind, ProbeSpec};
pub use prober::{LinkSpec, Prober, ProberConfig, ProberEvent, ProberSnapshot};
