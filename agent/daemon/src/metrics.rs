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

use crate::sync::SyncStatus;

pub use outrider_runtime::metrics::CONTENT_TYPE_TEXT;

/// What `/metrics` reads.
#[derive(Clone)]
struct Sources {
    log: Log,
    sync: Option<watch::Receiver<SyncStatus>>,
}

/// The HTTP routes: `/metrics` and `/healthz`.
pub fn router(log: Log, sync: Option<watch::Receiver<SyncStatus>>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(Sources { log, sync })
}

async fn metrics_handler(State(src): State<Sources>) -> impl IntoResponse {
    let sync = src.sync.as_ref().map(|s| s.borrow().clone());
    (
        [(CONTENT_TYPE, CONTENT_TYPE_TEXT)],
        render(&src.log, sync.as_ref()),
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
    let mut x = Exposition::new();
    outrider_runtime::metrics::write_log(&mut x, log);
    if let Some(st) = sync {
        write_sync(&mut x, st);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_is_known_on_linux() {
        assert!(resident_memory_bytes() > 0);
    }
}
