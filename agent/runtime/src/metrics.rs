//! Counters and histograms of the log, read by the daemon's `/metrics` endpoint, and
//! [`Exposition`], the Prometheus text format writer the agent's and the cloud's endpoints share.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds (seconds) of the fsync latency histogram buckets.
pub const FSYNC_BUCKETS: [f64; 14] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// A fixed-bucket latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; FSYNC_BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

/// A point-in-time copy of a [`Histogram`].
#[derive(Debug, Clone, Default)]
pub struct HistogramSnapshot {
    /// Cumulative counts per bucket of [`FSYNC_BUCKETS`].
    pub cumulative: Vec<u64>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = FSYNC_BUCKETS.iter().position(|b| s <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_nanos
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut acc = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                acc += b.load(Relaxed);
                acc
            })
            .collect();
        HistogramSnapshot {
            cumulative,
            count: self.count.load(Relaxed),
            sum_seconds: self.sum_nanos.load(Relaxed) as f64 / 1e9,
        }
    }
}

/// The log's counters. All monotonic except where noted.
#[derive(Debug, Default)]
pub struct Metrics {
    pub appends: AtomicU64,
    pub append_errors: AtomicU64,
    pub events_appended: AtomicU64,
    pub bytes_appended: AtomicU64,
    pub duplicate_appends: AtomicU64,
    pub version_conflicts: AtomicU64,
    pub commit_groups: AtomicU64,
    pub fsyncs: AtomicU64,
    pub fsync_seconds: Histogram,
    pub reclaimed_events: AtomicU64,
    pub corrupt_records: AtomicU64,
}

impl Metrics {
    pub(crate) fn inc(c: &AtomicU64, by: u64) {
        c.fetch_add(by, Relaxed);
    }
}

/// Writes the log's and its outbox's metric families (`outrider_log_*`, `outrider_outbox_*`).
pub fn write_log(x: &mut Exposition, log: &crate::Log) {
    let m = log.metrics();
    let counters: [(&str, &str, u64); 10] = [
        (
            "outrider_log_appends_total",
            "Successful appends (requests).",
            m.appends.load(Relaxed),
        ),
        (
            "outrider_log_append_errors_total",
            "Appends that failed.",
            m.append_errors.load(Relaxed),
        ),
        (
            "outrider_log_events_appended_total",
            "Events appended.",
            m.events_appended.load(Relaxed),
        ),
        (
            "outrider_log_bytes_appended_total",
            "Bytes of events appended.",
            m.bytes_appended.load(Relaxed),
        ),
        (
            "outrider_log_duplicate_appends_total",
            "Appends that were idempotent retries of earlier ones.",
            m.duplicate_appends.load(Relaxed),
        ),
        (
            "outrider_log_version_conflicts_total",
            "Appends refused for a wrong expected version.",
            m.version_conflicts.load(Relaxed),
        ),
        (
            "outrider_log_commit_groups_total",
            "Commit groups written.",
            m.commit_groups.load(Relaxed),
        ),
        (
            "outrider_log_fsyncs_total",
            "Flushes to stable storage.",
            m.fsyncs.load(Relaxed),
        ),
        (
            "outrider_log_reclaimed_events_total",
            "Delivered events removed from the log.",
            m.reclaimed_events.load(Relaxed),
        ),
        (
            "outrider_log_corrupt_records_total",
            "Records that failed their checksums.",
            m.corrupt_records.load(Relaxed),
        ),
    ];
    for (name, help, value) in counters {
        x.single(name, "counter", help, value);
    }

    let h = m.fsync_seconds.snapshot();
    x.histogram(
        "outrider_log_fsync_seconds",
        "Time to flush a commit to stable storage.",
        &FSYNC_BUCKETS,
        &h,
    );

    x.single(
        "outrider_log_head_position",
        "gauge",
        "One past the last committed position.",
        log.head(),
    );
    x.single(
        "outrider_log_durable_position",
        "gauge",
        "Positions below this are on stable storage.",
        log.durable_head(),
    );

    let classes = log.outbox_status();
    type Figure = fn(&crate::outbox::ClassStatus) -> u64;
    let per_class: [(&str, &str, &str, Figure); 3] = [
        (
            "outrider_outbox_pending_events",
            "gauge",
            "Undelivered events per class.",
            |c| c.pending_events,
        ),
        (
            "outrider_outbox_pending_bytes",
            "gauge",
            "Undelivered bytes per class.",
            |c| c.pending_bytes,
        ),
        (
            "outrider_outbox_rejected_events_total",
            "counter",
            "Events refused because their class was full (since start).",
            |c| c.rejected_events,
        ),
    ];
    for (name, kind, help, figure) in per_class {
        x.family(name, kind, help);
        for c in &classes {
            x.sample(name, &[("class", &c.name)], figure(c));
        }
    }
    let dropped: [(&str, &str, Figure, Figure); 2] = [
        (
            "outrider_outbox_dropped_events_total",
            "Undelivered events dropped, by reason (full: drop_oldest policy, ttl: expired).",
            |c| c.dropped_events,
            |c| c.expired_events,
        ),
        (
            "outrider_outbox_dropped_bytes_total",
            "Undelivered bytes dropped, by reason (full: drop_oldest policy, ttl: expired).",
            |c| c.dropped_bytes,
            |c| c.expired_bytes,
        ),
    ];
    for (name, help, full, ttl) in dropped {
        x.family(name, "counter", help);
        for c in &classes {
            x.sample(name, &[("class", &c.name), ("reason", "full")], full(c));
            x.sample(name, &[("class", &c.name), ("reason", "ttl")], ttl(c));
        }
    }

    let now_ms = log.clock().now_unix_millis();
    let name = "outrider_outbox_oldest_pending_age_seconds";
    x.family(
        name,
        "gauge",
        "Age of the oldest undelivered event per class (0 when none): the delivery lag in time.",
    );
    for c in &classes {
        let age = c
            .oldest_pending_unix_ms
            .map_or(0.0, |t| (now_ms.saturating_sub(t)).max(0) as f64 / 1000.0);
        x.sample(name, &[("class", &c.name)], float(age));
    }
}

/// The content type of the Prometheus text format.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Writes metric families in the Prometheus text exposition format (version 0.0.4).
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Self {
        Self {
            out: String::with_capacity(4096),
        }
    }

    /// `# HELP` and `# TYPE` lines; `kind` is `counter`, `gauge`, `histogram` or `summary`.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample line; label values are escaped.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// A histogram family (`_bucket`, `_sum`, `_count`) from cumulative bucket counts.
    pub fn histogram(&mut self, name: &str, help: &str, bounds: &[f64], h: &HistogramSnapshot) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for (le, n) in bounds.iter().zip(&h.cumulative) {
            self.sample(&bucket, &[("le", &float(*le))], n);
        }
        self.sample(&bucket, &[("le", "+Inf")], h.count);
        self.sample(&format!("{name}_sum"), &[], float(h.sum_seconds));
        self.sample(&format!("{name}_count"), &[], h.count);
    }

    /// The text written so far.
    pub fn finish(self) -> String {
        self.out
    }
}

/// A label value escaped for the text format.
pub fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A float as Prometheus writes it.
pub fn float(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod exposition_tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn floats_render_like_prometheus() {
        assert_eq!(float(0.00005), "0.00005");
        assert_eq!(float(1.0), "1");
        assert_eq!(float(f64::INFINITY), "+Inf");
    }

    #[test]
    fn samples_have_escaped_labels_and_families_their_headers() {
        let mut x = Exposition::new();
        x.family("a_total", "counter", "Things.");
        x.sample("a_total", &[("k", "v\"w"), ("z", "1")], 3);
        assert_eq!(
            x.finish(),
            "# HELP a_total Things.\n# TYPE a_total counter\na_total{k=\"v\\\"w\",z=\"1\"} 3\n"
        );
    }
}
