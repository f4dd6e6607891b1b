//! Injectable time: every timestamp the runtime takes comes from a [`Clock`].

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// A source of wall-clock time in nanoseconds since the Unix epoch.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_unix_nanos(&self) -> i64;

    fn now_unix_millis(&self) -> i64 {
        self.now_unix_nanos().div_euclid(1_000_000)
    }
}

/// The system's real-time clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix_nanos(&self) -> i64 {
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
        }
    }
}

/// A clock that only moves when told to: for deterministic tests.
#[derive(Debug, Default, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new(unix_nanos: i64) -> Self {
        Self(Arc::new(AtomicI64::new(unix_nanos)))
    }

    pub fn set(&self, unix_nanos: i64) {
        self.0.store(unix_nanos, Ordering::SeqCst);
    }

    pub fn advance(&self, d: std::time::Duration) {
        let nanos = i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        self.0.fetch_add(nanos, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_unix_nanos(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}
