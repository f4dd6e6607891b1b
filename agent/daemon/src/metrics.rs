//! Prometheus text exposition of the log's figures, served at `GET /metrics` (with `GET /healthz`).

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use outrider_runtime::metrics::FSYNC_BUCKETS;
use outrider_runtime::Log;

/// The content type of the Prometheus text format.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The HTTP routes: `/metrics` and `/healthz`.
pub fn router(log: Log) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(log)
}

async fn metrics_handler(State(log): State<Log>) -> impl IntoResponse {
    ([(CONTENT_TYPE, CONTENT_TYPE_TEXT)], render(&log))
}

/// Writes metric families in the text exposition format.
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
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

    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A float as Prometheus writes it.
fn float(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{v}")
    }
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

/// Renders every metric of `log` (and of the process) in the Prometheus text format.
pub fn render(log: &Log) -> String {
    let m = log.metrics();
    let mut x = Exposition {
        out: String::with_capacity(4096),
    };
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
    let name = "outrider_log_fsync_seconds";
    x.family(
        name,
        "histogram",
        "Time to flush a commit to stable storage.",
    );
    for (bound, count) in FSYNC_BUCKETS.iter().zip(&h.cumulative) {
        x.sample(&format!("{name}_bucket"), &[("le", &float(*bound))], count);
    }
    x.sample(&format!("{name}_bucket"), &[("le", "+Inf")], h.count);
    x.sample(&format!("{name}_sum"), &[], float(h.sum_seconds));
    x.sample(&format!("{name}_count"), &[], h.count);

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
    type Figure = fn(&outrider_runtime::outbox::ClassStatus) -> u64;
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
    x.out
}

#[cfg(test)]
mod tests {
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
    fn resident_memory_is_known_on_linux() {
        assert!(resident_memory_bytes() > 0);
    }
}
