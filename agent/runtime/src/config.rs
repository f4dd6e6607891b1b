//! Configuration of a [`crate::Log`]: durability, limits, outbox classes and destinations.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

/// When acknowledged appends become durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every commit group is flushed and the database file fdatasync'ed before any append in it is
    /// acknowledged. Concurrent writers share one fsync (group commit).
    Sync,
    /// Appends are acknowledged once applied; a flusher flushes and fdatasyncs every `interval`.
    /// A power cut loses at most `interval` plus one flush of acknowledged appends.
    Periodic { interval: Duration },
}

/// How much of the log is checksum-verified when it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyOnOpen {
    /// The last [`TAIL_VERIFY_RECORDS`] records (where a torn write would be).
    Tail,
    /// Every record.
    Full,
}

/// Records checked by [`VerifyOnOpen::Tail`].
pub const TAIL_VERIFY_RECORDS: usize = 1024;

/// What an outbox class does when an append would take it over a cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullPolicy {
    /// Refuse the append with [`Error::OutboxFull`]; nothing is written.
    RejectNew,
    /// Drop the class's oldest pending events (whole records) until the append fits; count them.
    DropOldest,
}

/// A priority class of the outbox. Classes are listed highest priority first.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassConfig {
    pub name: String,
    /// Cap on pending (unacknowledged) bytes; `u64::MAX` for none.
    pub max_bytes: u64,
    /// Cap on pending events; `u64::MAX` for none.
    pub max_events: u64,
    pub full_policy: FullPolicy,
    /// Pending events older than this are dropped (and counted) by [`crate::Log::maintain`].
    pub ttl: Option<Duration>,
}

impl ClassConfig {
    /// A class with no caps and no TTL.
    pub fn unbounded(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            max_bytes: u64::MAX,
            max_events: u64::MAX,
            full_policy: FullPolicy::RejectNew,
            ttl: None,
        }
    }
}

/// Configuration of a log.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Data directory (created if missing).
    pub dir: PathBuf,
    /// This node's id: stamped as `origin_node` on events appended here.
    pub node_id: String,
    pub durability: Durability,
    /// sled's page cache, in bytes.
    pub cache_capacity_bytes: u64,
    /// Largest encoded event accepted.
    pub max_event_bytes: usize,
    /// Most events in one append.
    pub max_events_per_append: usize,
    /// Recent (stream, event id) pairs remembered for idempotent re-appends.
    pub dedupe_window: usize,
    pub verify_on_open: VerifyOnOpen,
    /// Priority classes, highest priority first. At least one.
    pub classes: Vec<ClassConfig>,
    /// The class of appends that name none.
    pub default_class: String,
    /// Outbox destinations (each with a durable cursor per class).
    pub destinations: Vec<String>,
    /// Appends waiting for the committer; a full queue makes appenders wait (backpressure).
    pub queue_depth: usize,
    /// Most bytes of events in one commit group.
    pub max_group_bytes: usize,
}

/// The largest event EventBridge accepts, and our default.
pub const MAX_EVENT_BYTES: usize = 256 * 1024;
/// Longest stream name, in bytes.
pub const MAX_STREAM_NAME_BYTES: usize = 512;
/// Most priority classes.
pub const MAX_CLASSES: usize = 16;

impl LogConfig {
    /// Defaults for a log in `dir`: durable (sync) mode, one unbounded class `normal`, no destinations.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            node_id: "local".into(),
            durability: Durability::Sync,
            cache_capacity_bytes: 4 * 1024 * 1024,
            max_event_bytes: MAX_EVENT_BYTES,
            max_events_per_append: 10_000,
            dedupe_window: 65_536,
            verify_on_open: VerifyOnOpen::Tail,
            classes: vec![ClassConfig::unbounded("normal")],
            default_class: "normal".into(),
            destinations: Vec::new(),
            queue_depth: 1024,
            max_group_bytes: 4 * 1024 * 1024,
        }
    }

    /// Checks the configuration's shape; the error names the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.node_id.is_empty() || self.node_id.len() > 128 {
            return bad("node_id: must be 1..=128 bytes".into());
        }
        if self.classes.is_empty() {
            return bad("outbox.classes: at least one class is required".into());
        }
        if self.classes.len() > MAX_CLASSES {
            return bad(format!("outbox.classes: at most {MAX_CLASSES} classes"));
        }
        for (i, c) in self.classes.iter().enumerate() {
            if c.name.is_empty() || c.name.len() > 64 {
                return bad(format!("outbox.classes[{i}].name: must be 1..=64 bytes"));
            }
            if self.classes[..i].iter().any(|o| o.name == c.name) {
                return bad(format!(
                    "outbox.classes[{i}].name: duplicate class {:?}",
                    c.name
                ));
            }
            if c.max_bytes == 0 || c.max_events == 0 {
                return bad(format!("outbox.classes[{i}]: caps must be positive"));
            }
        }
        if !self.classes.iter().any(|c| c.name == self.default_class) {
            return bad(format!(
                "outbox.default_class: {:?} is not a configured class",
                self.default_class
            ));
        }
        for (i, d) in self.destinations.iter().enumerate() {
            if d.is_empty() || d.len() > 128 || d.contains('\0') {
                return bad(format!(
                    "outbox.destinations[{i}]: must be 1..=128 bytes, no NUL"
                ));
            }
            if self.destinations[..i].contains(d) {
                return bad(format!(
                    "outbox.destinations[{i}]: duplicate destination {d:?}"
                ));
            }
        }
        if self.max_event_bytes == 0 || self.max_event_bytes > 4 * MAX_EVENT_BYTES {
            return bad(format!(
                "log.max_event_bytes: must be 1..={} bytes",
                4 * MAX_EVENT_BYTES
            ));
        }
        if self.max_events_per_append == 0 {
            return bad("log.max_events_per_append: must be positive".into());
        }
        if self.queue_depth == 0 {
            return bad("log.queue_depth: must be positive".into());
        }
        if self.cache_capacity_bytes < 1024 * 1024 {
            return bad("log.cache_capacity_mb: must be at least 1".into());
        }
        if let Durability::Periodic { interval } = self.durability {
            if interval.is_zero() || interval > Duration::from_secs(60) {
                return bad("log.flush_interval_ms: must be 1..=60000".into());
            }
        }
        Ok(())
    }
}

/// Parses a byte size such as `512`, `64KiB`, `64MiB`, `1GiB`, `10MB` (SI) or `1.5GiB`.
pub fn parse_bytes(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (expected e.g. 64MiB)"))?;
    let mult: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "K" | "KB" | "kB" => 1e3,
        "M" | "MB" => 1e6,
        "G" | "GB" => 1e9,
        "T" | "TB" => 1e12,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "TiB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        u => return Err(format!("unknown size unit {u:?} in {s:?}")),
    };
    let v = num * mult;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(v as u64)
}

/// Parses a duration such as `250ms`, `30s`, `5m`, `24h`, `7d`.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (expected e.g. 30s, 24h, 7d)"))?;
    let secs = |m: u64| {
        n.checked_mul(m)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{s:?} is out of range"))
    };
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        u => Err(format!("unknown duration unit {u:?} in {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes_and_durations() {
        assert_eq!(parse_bytes("64MiB"), Ok(64 * 1024 * 1024));
        assert_eq!(parse_bytes("10MB"), Ok(10_000_000));
        assert_eq!(parse_bytes("512"), Ok(512));
        assert!(parse_bytes("12XB").is_err());
        assert!(parse_bytes("MiB").is_err());
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn validate_names_the_key() {
        let mut c = LogConfig::new("/tmp/x");
        c.default_class = "nope".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("outbox.default_class"), "{e}");
    }
}
