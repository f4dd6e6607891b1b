//! Counters and histograms of the log, read by the daemon's `/metrics` endpoint.

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
