//! The bus's errors.

use thiserror::Error;

/// What the bus refuses or fails at. Names follow EventBridge's exceptions where one exists.
#[derive(Debug, Error)]
pub enum BusError {
    /// A name, pattern, schedule, target or input setting that EventBridge would refuse.
    #[error("ValidationException: {0}")]
    Validation(String),
    #[error("InvalidEventPatternException: {0}")]
    InvalidPattern(#[from] outrider_runtime::pattern::PatternError),
    #[error("ResourceNotFoundException: {0}")]
    NotFound(String),
    #[error("ResourceAlreadyExistsException: {0}")]
    AlreadyExists(String),
    #[error("LimitExceededException: {0}")]
    LimitExceeded(String),
    #[error("store: {0}")]
    Store(#[from] outrider_store::StoreError),
    #[error("shutting down")]
    Closed,
}

pub type Result<T, E = BusError> = std::result::Result<T, E>;
