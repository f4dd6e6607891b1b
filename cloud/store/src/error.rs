//! The store's typed errors: the same variants from every backend.

use outrider_runtime::ExpectedVersion;

/// Everything that can go wrong in the event store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The stream's current version did not match the append's expectation. Nothing was written.
    #[error("wrong expected version on stream {stream:?}: expected {expected}, actual {}", fmt_version(*actual))]
    WrongExpectedVersion {
        stream: String,
        expected: ExpectedVersion,
        /// The stream's actual last version; `None` when the stream does not exist.
        actual: Option<u64>,
    },
    /// Some, but not all, events of an append are already in the stream: not a clean retry.
    #[error(
        "event {id:?} is already in stream {stream:?} but other events of the same append are not"
    )]
    PartialDuplicate { stream: String, id: String },
    /// Two events in one append share an id.
    #[error("event id {id:?} appears twice in one append")]
    DuplicateIdInRequest { id: String },
    /// An encoded event is over the limit.
    #[error("event {id:?} is {size} bytes, over the limit of {limit} bytes")]
    EventTooLarge {
        id: String,
        size: usize,
        limit: usize,
    },
    /// The stream name is empty, too long or has forbidden characters (or is used twice in one
    /// batch).
    #[error("invalid stream name {name:?}: {reason}")]
    InvalidStreamName { name: String, reason: &'static str },
    /// A consumer, holder, checkpoint or watermark name is empty, too long or has control
    /// characters.
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        what: &'static str,
        name: String,
        reason: &'static str,
    },
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
    /// The append carried no events (or a batch no appends).
    #[error("an append must carry at least one event")]
    EmptyAppend,
    /// The append carried more than the allowed number of events.
    #[error("an append carries {count} events, over the limit of {limit}")]
    TooManyEvents { count: usize, limit: usize },
    /// A lease's ttl is zero or too long.
    #[error("invalid lease ttl {ttl:?}: must be 1 ms ..= 1 day")]
    InvalidTtl { ttl: std::time::Duration },
    /// A watermark did not have the value an append batch expected. Nothing was written.
    #[error("watermark {name:?}: expected {expected:?}, actual {actual:?}")]
    WatermarkConflict {
        name: String,
        expected: Option<u64>,
        actual: Option<u64>,
    },
    /// A snapshot for a version the stream does not have (yet).
    #[error("cannot snapshot stream {stream:?} at version {version}: its last version is {}", fmt_version(*actual))]
    SnapshotBeyondStream {
        stream: String,
        version: u64,
        actual: Option<u64>,
    },
    /// `read_all` after a position that names no event.
    #[error("no event at position {0}: a read cursor must be the position of an event")]
    UnknownPosition(u64),
    /// The lease expired and may be held by someone else now (or was released).
    #[error("lease on {consumer:?} (token {token}) is no longer held by {holder:?}")]
    LeaseLost {
        consumer: String,
        holder: String,
        token: u64,
    },
    /// The transaction conflicts with a concurrent one (a younger transaction appended to the
    /// stream first, or a deadlock); it was rolled back and can be retried as a whole. The
    /// store retries its own appends and batches; callers of explicit transactions retry.
    #[error("transaction conflict on stream {stream:?}: {reason}; retry the transaction")]
    TransactionConflict { stream: String, reason: String },
    /// A stored record could not be decoded.
    #[error("corrupt event at position {position}: {reason}")]
    Corrupt { position: u64, reason: String },
    /// PostgreSQL answered with an error, or the connection failed.
    #[error("postgres: {context}: {source}")]
    Postgres {
        context: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    /// A schema migration failed; the schema is left at the version before it.
    #[error("schema migration {version} ({name}) failed: {source}")]
    Migration {
        version: i32,
        name: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    /// Every pooled connection stayed busy for the pool's acquire timeout.
    #[error("no postgres connection became free within {waited:?} (pool exhausted)")]
    PoolExhausted { waited: std::time::Duration },
    /// The database's schema is newer than this build knows.
    #[error("the database schema is at version {found}, newer than this build's {known}: upgrade outrider")]
    SchemaTooNew { found: i32, known: i32 },
    /// The PostgreSQL configuration is invalid (the message names the setting).
    #[error("invalid postgres configuration: {0}")]
    Config(String),
    /// The embedded log failed (I/O, closed, corruption) — see the runtime's error.
    #[error("sled store: {0}")]
    Log(#[source] outrider_runtime::Error),
    /// A file of the sled store (checkpoints) could not be read or written.
    #[error("sled store file {path}: {source}")]
    File {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
}

fn fmt_version(v: Option<u64>) -> String {
    match v {
        Some(v) => v.to_string(),
        None => "no stream".to_string(),
    }
}

impl StoreError {
    pub(crate) fn pg(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
        move |source| StoreError::Postgres { context, source }
    }
}

/// Result alias for the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
