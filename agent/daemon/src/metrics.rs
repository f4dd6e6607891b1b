//! Prometheus text exposition of the log's, the outbox's and the sync session's figures, served at
//! `GET /metrics` (with `GET /healthz`).

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use outrider_runtime::metrics::{float, Exposition};
use outrider_runtime::Log;
use tokio::sync::watch;

use crate::probing::{HostState, ProbeMetrics};
use crate::sync::SyncStatus;
use outrider_probe::ProberSnapshot;

pub use outrider_runtime::metrics::CONTENT_TYPE_TEXT;

/// What `/metrics` reads.
#[derive(Clone)]
struct Sources {
    log: Log,
    sync: Option<watch::Receiver<SyncStatus>>,
    probes: ProbeMetrics,
}

/// The HTTP routes: `/metrics` and `/healthz`.
pub fn router(log: Log, sync: Option<watch::Receiver<SyncStatus>>, probes: ProbeMetrics) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(Sources { log, sync, probes })
}

async fn metrics_handler(State(src): State<Sources>) -> impl IntoResponse {
    let sync = src.sync.as_ref().map(|s| s.borrow().clone());
    let links = src.probes.links();
    let host = src.probes.host();
    (
        [(CONTENT_TYPE, CONTENT_TYPE_TEXT)],
        render_all(&src.log, sync.as_ref(), links.as_ref(), host.as_ref()),
    )
}

/// The process's resident set size, in bytes (0 if unknown).
pub fn resident_memory_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .unwrap_or(0);
    pages.saturating_mul(page_size())
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|s| *s > 0).unwrap_or(4096)
}

/// Renders every metric of `log`, of the sync task when there is one, and of the process, in the
/// Prometheus text format.
pub fn render(log: &Log, sync: Option<&SyncStatus>) -> String {
    render_all(log, sync, None, None)
}

/// [`render`] with the link probes' families (`outrider_probe::metrics::write_links`) and the
/// host's (`outrider_host_*`) when they run.
pub fn render_all(
    log: &Log,
    sync: Option<&SyncStatus>,
    links: Option<&ProberSnapshot>,
    host: Option<&HostState>,
) -> String {
    let mut x = Exposition::new();
    outrider_runtime::metrics::write_log(&mut x, log);
    if let Some(st) = sync {
        write_sync(&mut x, st);
    }
    if let Some(l) = links {
        outrider_probe::metrics::write_links(&mut x, l);
    }
    if let Some(h) = host {
        write_host(&mut x, h);
    }
    x.single(
        "outrider_process_resident_memory_bytes",
        "gauge",
        "Resident memory of the agent process.",
        resident_memory_bytes(),
    );
    x.family("outrider_build_info", "gauge", "The agent's version.");
    x.sample(
        "outrider_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    x.finish()
}

/// The sync task's figures (`outrider_sync_*`).
fn write_sync(x: &mut Exposition, st: &SyncStatus) {
    let s = &st.stats;
    x.single(
        "outrider_sync_up",
        "gauge",
        "1 while the sync session is streaming (handshake done), else 0.",
        u8::from(st.streaming),
    );
    x.family(
        "outrider_sync_transport_info",
        "gauge",
        "The transport of the current sync connection (none while disconnected) and the batch codec.",
    );
    x.sample(
        "outrider_sync_transport_info",
        &[
            ("transport", st.transport.map_or("none", |t| t.as_str())),
            (
                "codec",
                if st.codec.is_empty() {
                    "none"
                } else {
                    &st.codec
                },
            ),
        ],
        1,
    );
    if let Some(link) = &st.link {
        x.family(
            "outrider_sync_link_info",
            "gauge",
            "The [[links]] link whose route the current sync connection took.",
        );
        x.sample("outrider_sync_link_info", &[("link", link)], 1);
    }
    let counters: [(&str, &str, u64); 15] = [
        (
            "outrider_sync_connects_total",
            "Connection attempts.",
            s.connects,
        ),
        (
            "outrider_sync_handshakes_total",
            "Handshakes completed (Welcome received).",
            s.handshakes,
        ),
        (
            "outrider_sync_reconnects_total",
            "Connections lost after a handshake.",
            s.reconnects,
        ),
        (
            "outrider_sync_batches_sent_total",
            "Batches sent (including resends).",
            s.batches_sent,
        ),
        (
            "outrider_sync_events_sent_total",
            "Events sent (including resends).",
            s.events_sent,
        ),
        (
            "outrider_sync_retransmitted_events_total",
            "Events sent again after a rewind (nack, timeout or reconnect).",
            s.retransmitted_events,
        ),
        ("outrider_sync_acks_total", "Acks received.", s.acks),
        ("outrider_sync_nacks_total", "Nacks received.", s.nacks),
        (
            "outrider_sync_response_timeouts_total",
            "Batches presumed lost after no answer.",
            s.response_timeouts,
        ),
        (
            "outrider_sync_duplicates_total",
            "Events the cloud reported as already committed (dropped there).",
            s.duplicates,
        ),
        (
            "outrider_sync_batches_compressed_total",
            "Batches sent compressed.",
            s.batches_compressed,
        ),
        (
            "outrider_sync_control_bytes_total",
            "Encoded bytes of Hello and Ping frames.",
            s.bytes_control,
        ),
        (
            "outrider_sync_pings_total",
            "Keepalive pings sent.",
            s.pings_sent,
        ),
        (
            "outrider_sync_throttle_holds_total",
            "Times the bandwidth cap held a batch back.",
            s.throttle_holds,
        ),
        (
            "outrider_sync_rtt_samples_total",
            "Ping round trips measured.",
            s.rtt_samples,
        ),
    ];
    for (name, help, v) in counters {
        x.single(name, "counter", help, v);
    }
    let name = "outrider_sync_bytes_total";
    x.family(
        name,
        "counter",
        "Encoded bytes of the events sent: raw (before compression) and wire (batch frames as sent).",
    );
    x.sample(name, &[("stage", "raw")], s.bytes_raw);
    x.sample(name, &[("stage", "wire")], s.bytes_wire);
    x.single(
        "outrider_sync_throttled_seconds_total",
        "counter",
        "Time batches waited for the bandwidth cap.",
        float(s.throttled_ms as f64 / 1000.0),
    );
    x.single(
        "outrider_sync_last_batch_events",
        "gauge",
        "Events in the last batch sent (the mean is events_sent / batches_sent).",
        s.last_batch_events,
    );
    x.single(
        "outrider_sync_last_batch_bytes",
        "gauge",
        "Wire bytes of the last batch sent.",
        s.last_batch_bytes,
    );
    let name = "outrider_sync_rtt_seconds";
    x.family(
        name,
        "gauge",
        "Round-trip time to the cloud: ping (Ping to Pong) and ack (batch sent to its ack, \
         including the cloud's commit); last sample and smoothed (1/8 weight).",
    );
    for (kind, last, smoothed) in [
        ("ping", s.rtt_last_ms, s.rtt_smoothed_ms),
        ("ack", s.ack_latency_last_ms, s.ack_latency_smoothed_ms),
    ] {
        x.sample(
            name,
            &[("kind", kind), ("estimate", "last")],
            float(last as f64 / 1000.0),
        );
        x.sample(
            name,
            &[("kind", kind), ("estimate", "smoothed")],
            float(smoothed as f64 / 1000.0),
        );
    }
    type Figure = fn(&outrider_runtime::sync::LaneLag) -> String;
    let per_lane: [(&str, &str, Figure); 4] = [
        (
            "outrider_sync_in_flight_events",
            "Events sent on the current connection and not yet answered, per lane.",
            |l| l.in_flight_events.to_string(),
        ),
        (
            "outrider_sync_read_ahead_events",
            "Events read from the outbox and waiting to be sent, per lane.",
            |l| l.pending_events.to_string(),
        ),
        (
            "outrider_sync_oldest_unacked_age_seconds",
            "Time since the session read the oldest event of the lane the cloud has not committed \
             (0 when none; see outrider_outbox_oldest_pending_age_seconds for the whole backlog).",
            |l| float(l.oldest_unacked_age_ms.unwrap_or(0) as f64 / 1000.0),
        ),
        (
            "outrider_sync_lane_stopped",
            "1 if the cloud refused a batch of the lane as invalid and the lane stopped.",
            |l| u8::from(l.stopped).to_string(),
        ),
    ];
    for (name, help, figure) in per_lane {
        x.family(name, "gauge", help);
        for l in &st.lanes {
            x.sample(name, &[("lane", &l.lane)], figure(l));
        }
    }
}

/// The host's figures (`outrider_host_*`) from its latest sample; nothing before the first one.
pub fn write_host(x: &mut Exposition, h: &HostState) {
    x.single(
        "outrider_host_alerts_active",
        "gauge",
        "Host alerts raised now (disk, memory, NIC errors).",
        h.active_alerts,
    );
    let Some(s) = &h.sample else { return };
    x.single(
        "outrider_host_cpu_percent",
        "gauge",
        "Global CPU usage in percent (0 on the first sample).",
        float(f64::from(s.cpu_percent)),
    );
    x.single("outrider_host_cpus", "gauge", "Logical CPUs.", s.cpus);
    x.single(
        "outrider_host_memory_total_bytes",
        "gauge",
        "Total memory.",
        s.memory_total_bytes,
    );
    x.single(
        "outrider_host_memory_available_bytes",
        "gauge",
        "Available memory.",
        s.memory_available_bytes,
    );
    x.single(
        "outrider_host_swap_total_bytes",
        "gauge",
        "Total swap.",
        s.swap_total_bytes,
    );
    x.single(
        "outrider_host_swap_used_bytes",
        "gauge",
        "Used swap.",
        s.swap_used_bytes,
    );
    if let Some(load) = s.load {
        x.family("outrider_host_load", "gauge", "Load averages.");
        for (period, v) in ["1m", "5m", "15m"].iter().zip(load) {
            x.sample("outrider_host_load", &[("period", period)], float(v));
        }
    }
    if let Some(u) = s.uptime_seconds {
        x.single(
            "outrider_host_uptime_seconds",
            "gauge",
            "Seconds since the host booted.",
            u,
        );
    }
    x.family(
        "outrider_host_disk_total_bytes",
        "gauge",
        "Size of the file system of a mount point.",
    );
    for d in &s.disks {
        x.sample(
            "outrider_host_disk_total_bytes",
            &[("mount", &d.mount), ("fs", &d.file_system)],
            d.total_bytes,
        );
    }
    x.family(
        "outrider_host_disk_available_bytes",
        "gauge",
        "Space available on the file system of a mount point.",
    );
    for d in &s.disks {
        x.sample(
            "outrider_host_disk_available_bytes",
            &[("mount", &d.mount), ("fs", &d.file_system)],
            d.available_bytes,
        );
    }
    type Counter = fn(&outrider_probe::host::NicCounters) -> u64;
    let nic: [(&str, &str, Counter); 6] = [
        ("outrider_host_nic_rx_bytes_total", "Bytes received.", |c| {
            c.rx_bytes
        }),
        ("outrider_host_nic_tx_bytes_total", "Bytes sent.", |c| {
            c.tx_bytes
        }),
        (
            "outrider_host_nic_rx_errors_total",
            "Receive errors.",
            |c| c.rx_errors,
        ),
        ("outrider_host_nic_tx_errors_total", "Send errors.", |c| {
            c.tx_errors
        }),
        (
            "outrider_host_nic_rx_drops_total",
            "Received packets dropped.",
            |c| c.rx_drops,
        ),
        (
            "outrider_host_nic_tx_drops_total",
            "Packets to send dropped.",
            |c| c.tx_drops,
        ),
    ];
    for (name, help, get) in nic {
        x.family(name, "counter", help);
        for (iface, c) in &s.nics {
            x.sample(name, &[("interface", iface)], get(c));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_is_known_on_linux() {
        assert!(resident_memory_bytes() > 0);
    }
}
