//! The runtime's typed errors.

use std::path::PathBuf;

use crate::ExpectedVersion;

/// Everything that can go wrong in the event log and outbox.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The stream's current version did not match the append's expectation.
    #[error("wrong expected version on stream {stream:?}: expected {expected}, actual {}", fmt_version(*actual))]
    WrongExpectedVersion {
        stream: String,
        expected: ExpectedVersion,
        /// The stream's actual last version; `None` when the stream does not exist.
        actual: Option<u64>,
    },
    /// An encoded event is over the configured limit.
    #[error("event {id:?} is {size} bytes, over the limit of {limit} bytes")]
    EventTooLarge {
        id: String,
        size: usize,
        limit: usize,
    },
    /// The stream name is empty, too long or has forbidden characters.
    #[error("invalid stream name {name:?}: {reason}")]
    InvalidStreamName { name: String, reason: &'static str },
    /// An event's `detail` is not valid JSON.
    #[error("event {id:?}: detail is not valid JSON: {reason}")]
    InvalidDetail { id: String, reason: String },
    /// Another field of an event is invalid.
    #[error("event {id:?}: invalid {field}: {reason}")]
    InvalidEvent {
        id: String,
        field: &'static str,
        reason: String,
    },
    /// The append carried no events.
    #[error("an append must carry at least one event")]
    EmptyAppend,
    /// The append carried more than the allowed number of events.
    #[error("an append carries {count} events, over the limit of {limit}")]
    TooManyEvents { count: usize, limit: usize },
    /// Two events in one append share an id.
    #[error("event id {id:?} appears twice in one append")]
    DuplicateIdInRequest { id: String },
    /// A checkpoint did not have the value an append expected.
    #[error("checkpoint {name:?}: expected {expected:?}, actual {actual:?}")]
    CheckpointConflict {
        name: String,
        expected: Option<u64>,
        actual: Option<u64>,
    },
    /// Some, but not all, events of an append are already in the stream: not a clean retry.
    #[error(
        "event {id:?} is already in stream {stream:?} but other events of the same append are not"
    )]
    PartialDuplicate { stream: String, id: String },
    /// The priority class is not configured.
    #[error("unknown priority class {0:?}")]
    UnknownClass(String),
    /// The destination is not configured.
    #[error("unknown outbox destination {0:?}")]
    UnknownDestination(String),
    /// The class is full and its policy is to reject new events.
    #[error("outbox class {class:?} is full ({pending_events} events, {pending_bytes} bytes pending; caps {max_events} events, {max_bytes} bytes) and rejects new events")]
    OutboxFull {
        class: String,
        pending_events: u64,
        pending_bytes: u64,
        max_events: u64,
        max_bytes: u64,
    },
    /// An acknowledgement for a position that was never appended.
    #[error("cannot acknowledge position {position}: the log head is {head}")]
    AckBeyondHead { position: u64, head: u64 },
    /// A record failed its checksum or could not be decoded.
    #[error("corrupt record at position {position}: {reason}")]
    Corrupt { position: u64, reason: String },
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The data directory could not be used.
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An I/O error from the storage engine or the file system.
    #[error("storage error: {0}")]
    Storage(String),
    /// The log was closed.
    #[error("the log is closed")]
    Closed,
    /// An offline inspection was asked to look at a directory that holds no log.
    #[error("{0} does not exist")]
    NoSuchLog(PathBuf),
}

fn fmt_version(v: Option<u64>) -> String {
    match v {
        Some(v) => v.to_string(),
        None => "no stream".to_string(),
    }
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        Error::Storage(e.to_string())
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Storage(e.to_string())
    }
}

/// Result alias for the runtime.
pub type Result<T, E = Error> = std::result::Result<T, E>;
