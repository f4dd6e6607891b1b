//! [`SyncError`]: what can go wrong in a sync session.

/// A protocol violation by the peer, a refusal, or a timeout. Every error a session reports is one
/// of these; no input makes a session panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    /// A frame that is not allowed in the session's current state.
    #[error("unexpected {frame} frame while {state}")]
    UnexpectedFrame {
        frame: &'static str,
        state: &'static str,
    },
    /// A frame whose oneof is empty or unknown to this version.
    #[error("empty or unknown frame")]
    EmptyFrame,
    /// The peer speaks another protocol version.
    #[error("unsupported protocol version {got} (this side speaks {supported})")]
    UnsupportedVersion { got: u32, supported: u32 },
    /// The Hello is malformed (no epoch, bad or too many lanes).
    #[error("invalid hello: {0}")]
    InvalidHello(String),
    /// The Hello claims another node than the client certificate proves.
    #[error("node {claimed:?} claimed by a connection authenticated as {actual:?}")]
    Unauthorized { claimed: String, actual: String },
    /// The cloud refused the session itself (a Nack of the handshake, e.g. UNAUTHORIZED).
    #[error("the cloud refused the session ({reason}): {message}")]
    SessionRefused { reason: String, message: String },
    /// A frame names a lane the session does not know.
    #[error("unknown lane {0:?}")]
    UnknownLane(String),
    /// The cloud acknowledged past anything this agent sent in the lane: acking the outbox that
    /// far could lose events, so the agent refuses.
    #[error("lane {lane:?}: cloud watermark {watermark} is beyond the last event sent ({sent:?})")]
    WatermarkBeyondSent {
        lane: String,
        watermark: u64,
        sent: Option<u64>,
    },
    /// A batch is malformed or over a limit.
    #[error("invalid batch {batch_seq} in lane {lane:?}: {reason}")]
    InvalidBatch {
        batch_seq: u64,
        lane: String,
        reason: String,
    },
    /// The cloud refused a batch as invalid (Nack INVALID_BATCH): the lane is stopped, since
    /// resending it unchanged cannot succeed and skipping it would lose events.
    #[error("lane {lane:?} stopped: the cloud rejected batch {batch_seq} (seqs {first}..={last}): {message}")]
    BatchRejected {
        lane: String,
        batch_seq: u64,
        first: u64,
        last: u64,
        message: String,
    },
    /// The outbox handed the session events out of order or not after the requested point.
    #[error("lane {lane:?}: the outbox returned seq {got} after {after:?}")]
    FetchOutOfOrder {
        lane: String,
        after: Option<u64>,
        got: u64,
    },
    /// The shell reported a commit the session did not ask for.
    #[error("commit result for batch {0}, which is not the outstanding commit")]
    UnexpectedCommit(u64),
    /// The shell reported watermarks the session did not ask for.
    #[error("watermarks delivered while not loading them")]
    UnexpectedWatermarks,
    /// The store failed.
    #[error("store unavailable: {0}")]
    StoreUnavailable(String),
    /// Nothing heard from the peer for too long.
    #[error("peer silent for {0} ms")]
    IdleTimeout(u64),
    /// The handshake did not complete in time.
    #[error("handshake not complete after {0} ms")]
    HandshakeTimeout(u64),
}
