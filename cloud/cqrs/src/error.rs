//! The CQRS layer's typed errors, and how each maps onto the API (HTTP status, gRPC code).

use outrider_store::StoreError;

/// Everything that can go wrong handling a command, reading an aggregate or running a
/// projection. A domain's own rejection is [`HandleError::Domain`] in the typed API and
/// [`CqrsError::Rejected`] once type-erased (over the wire).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CqrsError {
    /// No aggregate type of this name is registered with the API.
    #[error("unknown aggregate type {0:?}")]
    UnknownAggregateType(String),
    /// The command's `type` names no command of the aggregate.
    #[error("unknown command {command:?} for aggregate type {aggregate_type:?} (known: {known})")]
    UnknownCommand {
        aggregate_type: String,
        command: String,
        known: String,
    },
    /// The command is not valid JSON of its type's shape.
    #[error("malformed {aggregate_type} command {command:?}: {reason}")]
    MalformedCommand {
        aggregate_type: String,
        command: String,
        reason: String,
    },
    /// The request itself is malformed (not JSON, a missing field, a bad query parameter).
    #[error("malformed request: {0}")]
    MalformedRequest(String),
    /// The aggregate id is empty, too long or has control characters.
    #[error("invalid aggregate id {id:?}: {reason}")]
    InvalidAggregateId { id: String, reason: &'static str },
    /// The command id is empty, too long or has control characters.
    #[error("invalid command id {id:?}: {reason}")]
    InvalidCommandId { id: String, reason: &'static str },
    /// The aggregate has no events.
    #[error("{aggregate_type} {id:?} does not exist")]
    AggregateNotFound { aggregate_type: String, id: String },
    /// No read model of this name.
    #[error("unknown read model {0:?}")]
    UnknownReadModel(String),
    /// The read model has no document under this key.
    #[error("read model {read_model:?} has no document {key:?}")]
    DocumentNotFound { read_model: String, key: String },
    /// No projection of this name runs here.
    #[error("unknown projection {0:?}")]
    UnknownProjection(String),
    /// The caller's expected version did not match the aggregate's. Nothing was written.
    #[error("wrong expected version for {stream:?}: expected {expected}, actual {}", fmt_version(*actual))]
    WrongExpectedVersion {
        stream: String,
        expected: u64,
        actual: Option<u64>,
    },
    /// The domain refused the command (a business rule). Nothing was written.
    #[error("{aggregate_type} command rejected: {code}: {message}")]
    Rejected {
        aggregate_type: String,
        code: &'static str,
        message: String,
    },
    /// The command id was already used for a different command (another payload or aggregate).
    #[error("command id {command_id:?} was already used for {reason}")]
    CommandIdReused { command_id: String, reason: String },
    /// An event the command produced is over the store's limit. Nothing was written.
    #[error("event {event_type:?} is {size} bytes encoded, over the limit of {limit} bytes")]
    EventTooLarge {
        event_type: String,
        size: usize,
        limit: usize,
    },
    /// The request body is over the API's limit.
    #[error("request body over the limit of {limit} bytes")]
    RequestTooLarge { limit: usize },
    /// Every attempt lost the optimistic-concurrency race on the stream. Nothing was written.
    #[error("gave up on {stream:?} after {attempts} attempts lost to concurrent writers")]
    TooMuchContention { stream: String, attempts: u32 },
    /// A stored event or snapshot does not decode as the aggregate's type.
    #[error("corrupt {what} in {stream:?} at version {version}: {reason}")]
    Corrupt {
        what: &'static str,
        stream: String,
        version: u64,
        reason: String,
    },
    /// A projection failed on an event.
    #[error("projection {name:?} failed at position {position}: {reason}")]
    Projection {
        name: String,
        position: u64,
        reason: String,
    },
    /// The event store failed.
    #[error("event store: {0}")]
    Store(#[from] StoreError),
}

fn fmt_version(v: Option<u64>) -> String {
    v.map_or_else(|| "no stream".to_string(), |v| v.to_string())
}

impl CqrsError {
    /// A short stable name of the problem (the `code` of the API's error body).
    pub fn code(&self) -> &'static str {
        match self {
            CqrsError::UnknownAggregateType(_) => "unknown_aggregate_type",
            CqrsError::UnknownCommand { .. } => "unknown_command",
            CqrsError::MalformedCommand { .. } => "malformed_command",
            CqrsError::MalformedRequest(_) => "malformed_request",
            CqrsError::InvalidAggregateId { .. } => "invalid_aggregate_id",
            CqrsError::InvalidCommandId { .. } => "invalid_command_id",
            CqrsError::AggregateNotFound { .. } => "aggregate_not_found",
            CqrsError::UnknownReadModel(_) => "unknown_read_model",
            CqrsError::DocumentNotFound { .. } => "document_not_found",
            CqrsError::UnknownProjection(_) => "unknown_projection",
            CqrsError::WrongExpectedVersion { .. } => "wrong_expected_version",
            CqrsError::Rejected { .. } => "rejected",
            CqrsError::CommandIdReused { .. } => "command_id_reused",
            CqrsError::EventTooLarge { .. } => "event_too_large",
            CqrsError::RequestTooLarge { .. } => "request_too_large",
            CqrsError::TooMuchContention { .. } => "too_much_contention",
            CqrsError::Corrupt { .. } => "corrupt",
            CqrsError::Projection { .. } => "projection_failed",
            CqrsError::Store(StoreError::EventTooLarge { .. }) => "event_too_large",
            CqrsError::Store(_) => "store",
        }
    }

    /// The HTTP status of the problem.
    pub fn http_status(&self) -> u16 {
        match self {
            CqrsError::UnknownCommand { .. }
            | CqrsError::MalformedCommand { .. }
            | CqrsError::MalformedRequest(_)
            | CqrsError::InvalidAggregateId { .. }
            | CqrsError::InvalidCommandId { .. } => 400,
            CqrsError::UnknownAggregateType(_)
            | CqrsError::AggregateNotFound { .. }
            | CqrsError::UnknownReadModel(_)
            | CqrsError::DocumentNotFound { .. }
            | CqrsError::UnknownProjection(_) => 404,
            CqrsError::WrongExpectedVersion { .. }
            | CqrsError::Rejected { .. }
            | CqrsError::CommandIdReused { .. } => 409,
            CqrsError::EventTooLarge { .. }
            | CqrsError::RequestTooLarge { .. }
            | CqrsError::Store(StoreError::EventTooLarge { .. }) => 413,
            CqrsError::TooMuchContention { .. } => 503,
            CqrsError::Store(StoreError::PoolExhausted { .. } | StoreError::Closed) => 503,
            CqrsError::Corrupt { .. } | CqrsError::Projection { .. } | CqrsError::Store(_) => 500,
        }
    }

    /// The gRPC status code of the problem.
    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            CqrsError::WrongExpectedVersion { .. } => Code::Aborted,
            CqrsError::Rejected { .. } => Code::FailedPrecondition,
            CqrsError::CommandIdReused { .. } => Code::AlreadyExists,
            CqrsError::Corrupt { .. } => Code::DataLoss,
            _ => match self.http_status() {
                400 | 413 => Code::InvalidArgument,
                404 => Code::NotFound,
                503 => Code::Unavailable,
                _ => Code::Internal,
            },
        }
    }
}

/// The typed outcome of [`crate::Repository::handle`]: the domain's own error, or the
/// framework's.
#[derive(Debug, thiserror::Error)]
pub enum HandleError<E> {
    /// The domain refused the command. Nothing was written.
    #[error(transparent)]
    Domain(E),
    /// Anything else (bad ids, wrong expected version, contention, the store).
    #[error(transparent)]
    Cqrs(#[from] CqrsError),
}

impl<E> From<StoreError> for HandleError<E> {
    fn from(e: StoreError) -> Self {
        HandleError::Cqrs(CqrsError::Store(e))
    }
}

/// Result alias of the framework.
pub type Result<T, E = CqrsError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_maps_to_its_status_and_code() {
        let cases: Vec<(CqrsError, u16, tonic::Code, &str)> = vec![
            (
                CqrsError::UnknownCommand {
                    aggregate_type: "order".into(),
                    command: "Ship".into(),
                    known: "CreateOrder".into(),
                },
                400,
                tonic::Code::InvalidArgument,
                "unknown_command",
            ),
            (
                CqrsError::MalformedCommand {
                    aggregate_type: "order".into(),
                    command: "AddItem".into(),
                    reason: "x".into(),
                },
                400,
                tonic::Code::InvalidArgument,
                "malformed_command",
            ),
            (
                CqrsError::UnknownAggregateType("x".into()),
                404,
                tonic::Code::NotFound,
                "unknown_aggregate_type",
            ),
            (
                CqrsError::WrongExpectedVersion {
                    stream: "s".into(),
                    expected: 1,
                    actual: None,
                },
                409,
                tonic::Code::Aborted,
                "wrong_expected_version",
            ),
            (
                CqrsError::Rejected {
                    aggregate_type: "sku".into(),
                    code: "out_of_stock",
                    message: "m".into(),
                },
                409,
                tonic::Code::FailedPrecondition,
                "rejected",
            ),
            (
                CqrsError::EventTooLarge {
                    event_type: "E".into(),
                    size: 2,
                    limit: 1,
                },
                413,
                tonic::Code::InvalidArgument,
                "event_too_large",
            ),
            (
                CqrsError::TooMuchContention {
                    stream: "s".into(),
                    attempts: 3,
                },
                503,
                tonic::Code::Unavailable,
                "too_much_contention",
            ),
        ];
        for (e, http, grpc, code) in cases {
            assert_eq!(
                (e.http_status(), e.grpc_code(), e.code()),
                (http, grpc, code),
                "{e}"
            );
        }
        let msg = CqrsError::WrongExpectedVersion {
            stream: "order-1".into(),
            expected: 3,
            actual: Some(5),
        }
        .to_string();
        assert!(msg.contains("order-1") && msg.contains("expected 3") && msg.contains("actual 5"));
    }
}
