//! Prometheus text exposition of the ingest service's figures (`outrider_ingest_*`), with the cloud
//! store's own (`outrider_log_*`) when it is the runtime's log.

use std::sync::atomic::Ordering::Relaxed;

use outrider_runtime::metrics::{float, Exposition};
use outrider_runtime::Log;

use crate::session::IngestStats;

/// Renders the ingest figures, and `store`'s when given.
pub fn render(stats: &IngestStats, store: Option<&Log>) -> String {
    let mut x = Exposition::new();
    write_ingest(&mut x, stats);
    if let Some(log) = store {
        outrider_runtime::metrics::write_log(&mut x, log);
    }
    x.family("outrider_build_info", "gauge", "The server's version.");
    x.sample(
        "outrider_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    x.finish()
}

/// The ingest service's families.
pub fn write_ingest(x: &mut Exposition, s: &IngestStats) {
    let counters: [(&str, &str, u64); 9] = [
        (
            "outrider_ingest_sessions_total",
            "Sync sessions started (a node proved its identity).",
            s.sessions.load(Relaxed),
        ),
        (
            "outrider_ingest_refused_total",
            "Connections refused before a session started (no valid node identity).",
            s.refused.load(Relaxed),
        ),
        (
            "outrider_ingest_events_committed_total",
            "Events committed to the store.",
            s.events_committed.load(Relaxed),
        ),
        (
            "outrider_ingest_duplicates_dropped_total",
            "Events received again at or below their lane's watermark, dropped.",
            s.duplicates_dropped.load(Relaxed),
        ),
        (
            "outrider_ingest_batches_total",
            "Batch frames received.",
            s.batches_received.load(Relaxed),
        ),
        (
            "outrider_ingest_batches_compressed_total",
            "Batches received compressed.",
            s.batches_compressed.load(Relaxed),
        ),
        (
            "outrider_ingest_merged_batches_total",
            "Batches committed together with an earlier one (queued while the store was busy).",
            s.merged_batches.load(Relaxed),
        ),
        (
            "outrider_ingest_commit_conflicts_total",
            "Commits refused by the watermark compare-and-set (another session of the node won).",
            s.commit_conflicts.load(Relaxed),
        ),
        (
            "outrider_ingest_store_errors_total",
            "Commits the store could not make.",
            s.store_errors.load(Relaxed),
        ),
    ];
    for (name, help, v) in counters {
        x.single(name, "counter", help, v);
    }
    x.single(
        "outrider_ingest_active_sessions",
        "gauge",
        "Sync sessions running now.",
        s.active_sessions.load(Relaxed),
    );
    let name = "outrider_ingest_bytes_total";
    x.family(
        name,
        "counter",
        "Bytes of batches received: wire (frames as sent, compressed or not) and raw (the events' \
         encoding after decompression).",
    );
    x.sample(name, &[("stage", "wire")], s.bytes_wire.load(Relaxed));
    x.sample(name, &[("stage", "raw")], s.bytes_raw.load(Relaxed));
    let name = "outrider_ingest_nacks_total";
    x.family(name, "counter", "Batches refused, by reason.");
    for (reason, c) in [
        ("out_of_order", &s.nacks_out_of_order),
        ("credit_exceeded", &s.nacks_credit_exceeded),
        ("invalid_batch", &s.nacks_invalid),
        ("store_unavailable", &s.nacks_store_unavailable),
    ] {
        x.sample(name, &[("reason", reason)], c.load(Relaxed));
    }
    // A summary without quantiles: rate(sum) / rate(count) is the mean commit time.
    let name = "outrider_ingest_commit_seconds";
    x.family(
        name,
        "summary",
        "Time from a batch's commit request to the store's durable answer.",
    );
    x.sample(
        &format!("{name}_sum"),
        &[],
        float(s.commit_ms_total.load(Relaxed) as f64 / 1000.0),
    );
    x.sample(&format!("{name}_count"), &[], s.commits.load(Relaxed));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_appear_with_their_values() {
        let s = IngestStats::default();
        IngestStats::add(&s.events_committed, 42);
        IngestStats::add(&s.nacks_invalid, 3);
        IngestStats::add(&s.commit_ms_total, 1500);
        IngestStats::add(&s.commits, 2);
        let text = render(&s, None);
        assert!(
            text.contains("\noutrider_ingest_events_committed_total 42\n"),
            "{text}"
        );
        assert!(
            text.contains("\noutrider_ingest_nacks_total{reason=\"invalid_batch\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("\noutrider_ingest_commit_seconds_sum 1.5\n"),
            "{text}"
        );
        assert!(
            text.contains("\noutrider_ingest_commit_seconds_count 2\n"),
            "{text}"
        );
    }
}
