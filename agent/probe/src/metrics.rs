//! Prometheus families for links and probes, written into the agent's
//! [`Exposition`](outrider_runtime::metrics::Exposition).
//!
//! Named as blackbox_exporter names them where they fit, labelled by `link` (blackbox serves one
//! target per scrape; the agent serves every link in one):
//!
//! | family | type | meaning |
//! | --- | --- | --- |
//! | `probe_success{link,probe}` | gauge | 1 if the last probe succeeded |
//! | `probe_duration_seconds{link,probe}` | gauge | how long the last probe took |
//! | `outrider_link_state{link,state}` | gauge | state set: 1 for the current state (`unknown`, `up`, `degraded`, `down`) |
//! | `outrider_link_rtt_seconds{link,quantile}` | gauge | window RTT p50 (`0.5`) and p99 (`0.99`) |
//! | `outrider_link_loss_ratio{link}` | gauge | window loss ratio |
//! | `outrider_link_jitter_seconds{link}` | gauge | window jitter |
//! | `outrider_link_transitions_total{link}` | counter | state changes since start |
//! | `outrider_link_probes_total{link,result}` | counter | probes by result (`ok`, `timeout`, `refused`, `error`) |
//! | `outrider_link_active{link}` | gauge | 1 for the failover's active link (only with failover) |
//!
//! Figures a window does not have yet (no successes: no RTT) are left out rather than written
//! as zero, so dashboards do not plot a fake 0 ms.

use outrider_runtime::metrics::{float, Exposition};

use crate::health::LinkState;
use crate::prober::ProberSnapshot;

/// Writes the link and probe families of `snapshot`.
pub fn write_links(x: &mut Exposition, snapshot: &ProberSnapshot) {
    let links = &snapshot.links;

    x.family(
        "probe_success",
        "gauge",
        "Whether the last probe of the link succeeded.",
    );
    for l in links {
        if let Some((o, _)) = &l.last {
            x.sample(
                "probe_success",
                &[("link", &l.name), ("probe", l.probe)],
                u8::from(o.is_ok()),
            );
        }
    }
    x.family(
        "probe_duration_seconds",
        "gauge",
        "How long the last probe of the link took.",
    );
    for l in links {
        if let Some((_, took)) = &l.last {
            x.sample(
                "probe_duration_seconds",
                &[("link", &l.name), ("probe", l.probe)],
                float(took.as_secs_f64()),
            );
        }
    }

    x.family(
        "outrider_link_state",
        "gauge",
        "The link's health state (1 for the current one).",
    );
    for l in links {
        for s in LinkState::ALL {
            x.sample(
                "outrider_link_state",
                &[("link", &l.name), ("state", s.as_str())],
                u8::from(l.state == s),
            );
        }
    }

    x.family(
        "outrider_link_rtt_seconds",
        "gauge",
        "Round trip time quantiles over the link's probe window.",
    );
    for l in links {
        for (q, v) in [("0.5", l.figures.rtt_p50), ("0.99", l.figures.rtt_p99)] {
            if let Some(v) = v {
                x.sample(
                    "outrider_link_rtt_seconds",
                    &[("link", &l.name), ("quantile", q)],
                    float(v.as_secs_f64()),
                );
            }
        }
    }

    x.family(
        "outrider_link_loss_ratio",
        "gauge",
        "Failed probes over probes in the link's window.",
    );
    for l in links {
        if l.figures.samples > 0 {
            x.sample(
                "outrider_link_loss_ratio",
                &[("link", &l.name)],
                float(l.figures.loss_ratio),
            );
        }
    }

    x.family(
        "outrider_link_jitter_seconds",
        "gauge",
        "Mean absolute difference of consecutive RTTs in the link's window.",
    );
    for l in links {
        if let Some(j) = l.figures.jitter {
            x.sample(
                "outrider_link_jitter_seconds",
                &[("link", &l.name)],
                float(j.as_secs_f64()),
            );
        }
    }

    x.family(
        "outrider_link_transitions_total",
        "counter",
        "Health state changes of the link since start.",
    );
    for l in links {
        x.sample(
            "outrider_link_transitions_total",
            &[("link", &l.name)],
            l.transitions,
        );
    }

    x.family(
        "outrider_link_probes_total",
        "counter",
        "Probes of the link by result.",
    );
    for l in links {
        for (result, n) in ["ok", "timeout", "refused", "error"].iter().zip(l.probes) {
            x.sample(
                "outrider_link_probes_total",
                &[("link", &l.name), ("result", result)],
                n,
            );
        }
    }

    if snapshot.active.is_some() {
        x.family(
            "outrider_link_active",
            "gauge",
            "1 for the link the failover chose.",
        );
        for l in links {
            x.sample(
                "outrider_link_active",
                &[("link", &l.name)],
                u8::from(snapshot.active.as_deref() == Some(l.name.as_str())),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Figures;
    use crate::outcome::ProbeOutcome;
    use crate::prober::LinkSnapshot;
    use std::time::Duration;

    #[test]
    fn families_are_named_and_labelled() {
        let snap = ProberSnapshot {
            links: vec![
                LinkSnapshot {
                    name: "dx".into(),
                    probe: "udp_echo",
                    state: LinkState::Up,
                    figures: Figures {
                        samples: 10,
                        failures: 1,
                        loss_ratio: 0.1,
                        rtt_p50: Some(Duration::from_millis(2)),
                        rtt_p99: Some(Duration::from_millis(9)),
                        jitter: Some(Duration::from_micros(500)),
                    },
                    transitions: 1,
                    last: Some((
                        ProbeOutcome::Ok {
                            rtt: Duration::from_millis(3),
                        },
                        Duration::from_millis(3),
                    )),
                    probes: [9, 1, 0, 0],
                },
                LinkSnapshot {
                    name: "vpn".into(),
                    probe: "tcp",
                    state: LinkState::Unknown,
                    figures: Figures::default(),
                    transitions: 0,
                    last: None,
                    probes: [0; 4],
                },
            ],
            active: Some("dx".into()),
            events_dropped: 0,
        };
        let mut x = Exposition::new();
        write_links(&mut x, &snap);
        let text = x.finish();
        for line in [
            "probe_success{link=\"dx\",probe=\"udp_echo\"} 1",
            "probe_duration_seconds{link=\"dx\",probe=\"udp_echo\"} 0.003",
            "outrider_link_state{link=\"dx\",state=\"up\"} 1",
            "outrider_link_state{link=\"dx\",state=\"down\"} 0",
            "outrider_link_state{link=\"vpn\",state=\"unknown\"} 1",
            "outrider_link_rtt_seconds{link=\"dx\",quantile=\"0.5\"} 0.002",
            "outrider_link_rtt_seconds{link=\"dx\",quantile=\"0.99\"} 0.009",
            "outrider_link_loss_ratio{link=\"dx\"} 0.1",
            "outrider_link_jitter_seconds{link=\"dx\"} 0.0005",
            "outrider_link_transitions_total{link=\"dx\"} 1",
            "outrider_link_probes_total{link=\"dx\",result=\"timeout\"} 1",
            "outrider_link_active{link=\"dx\"} 1",
            "outrider_link_active{link=\"vpn\"} 0",
            "# TYPE outrider_link_transitions_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // No figures invented for a link without results.
        assert!(!text.contains("probe_success{link=\"vpn\""));
        assert!(!text.contains("outrider_link_rtt_seconds{link=\"vpn\""));
        assert!(!text.contains("outrider_link_loss_ratio{link=\"vpn\""));
    }
}
