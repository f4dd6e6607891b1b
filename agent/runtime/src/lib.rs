//! # outrider-runtime
//!
//! The embeddable heart of Outrider: an event-sourced log and a store-and-forward outbox on sled.
//!
//! ```no_run
//! use outrider_runtime::{ExpectedVersion, Log, LogConfig};
//! use outrider_proto::Event;
//!
//! # fn main() -> Result<(), outrider_runtime::Error> {
//! let (log, _report) = Log::open(LogConfig::new("./data"))?;
//! let ev = Event { source: "app".into(), detail_type: "Hello".into(), detail: "{}".into(), ..Default::default() };
//! let res = log.append("greetings", ExpectedVersion::Any, vec![ev], None)?;
//! println!("appended at position {}", res.positions[0]);
//! log.close()?;
//! # Ok(()) }
//! ```
//!
//! * Appends go through one committer thread ([`committer`]) that batches concurrent appends into
//!   one atomic sled batch and, in [`Durability::Sync`] mode, one flush + fdatasync (group commit).
//! * Reads ([`read`]) go straight to sled and only see committed positions.
//! * The outbox ([`outbox`]) is a view of the log: per destination and priority class, a durable
//!   cursor; caps, drop policies and TTLs; acknowledged prefixes are reclaimed.
//! * No sled type crosses this crate's public API.

pub mod clock;
mod codec;
mod committer;
pub mod config;
mod error;
pub mod inspect;
mod log;
pub mod metrics;
pub mod outbox;
pub mod pattern;
mod read;
mod recover;
mod subscription;
pub mod sync;
mod validate;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{ClassConfig, Durability, FullPolicy, LogConfig, VerifyOnOpen};
pub use error::{Error, Result};
pub use log::{AppendResult, Checkpoint, Log, Snapshot, StreamAppend};
pub use outrider_proto::Event;
pub use read::{Direction, ReadStream, StreamFrom};
pub use recover::{CorruptRecord, OpenReport};
pub use subscription::{Subscription, SubscriptionBatch};
pub use validate::{validate_event, validate_stream_name};

/// The expected version of a stream for an append (KurrentDB semantics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must not exist.
    NoStream,
    /// The stream must hold at least one event.
    StreamExists,
    /// The stream's last event must have this version (versions start at 0).
    Exact(u64),
}

impl std::fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::StreamExists => f.write_str("stream exists"),
            ExpectedVersion::Exact(v) => write!(f, "{v}"),
        }
    }
}

impl ExpectedVersion {
    /// Whether a stream whose last version is `actual` (`None`: no stream) satisfies this.
    pub fn admits(self, actual: Option<u64>) -> bool {
        match (self, actual) {
            (ExpectedVersion::Any, _) => true,
            (ExpectedVersion::NoStream, a) => a.is_none(),
            (ExpectedVersion::StreamExists, a) => a.is_some(),
            (ExpectedVersion::Exact(v), Some(a)) => v == a,
            (ExpectedVersion::Exact(_), None) => false,
        }
    }
}

impl From<&outrider_proto::v1::ExpectedVersion> for ExpectedVersion {
    fn from(e: &outrider_proto::v1::ExpectedVersion) -> Self {
        use outrider_proto::v1::expected_version::Kind;
        match e.kind {
            None | Some(Kind::Any(_)) => ExpectedVersion::Any,
            Some(Kind::NoStream(_)) => ExpectedVersion::NoStream,
            Some(Kind::StreamExists(_)) => ExpectedVersion::StreamExists,
            Some(Kind::Exact(v)) => ExpectedVersion::Exact(v),
        }
    }
}

impl From<ExpectedVersion> for outrider_proto::v1::ExpectedVersion {
    fn from(e: ExpectedVersion) -> Self {
        use outrider_proto::v1::{expected_version::Kind, Empty};
        let kind = match e {
            ExpectedVersion::Any => Kind::Any(Empty {}),
            ExpectedVersion::NoStream => Kind::NoStream(Empty {}),
            ExpectedVersion::StreamExists => Kind::StreamExists(Empty {}),
            ExpectedVersion::Exact(v) => Kind::Exact(v),
        };
        Self { kind: Some(kind) }
    }
}
