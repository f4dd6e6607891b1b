//! The target contract: what a rule's target receives and how it answers.
//!
//! The bus hands each target a batch of [`Delivery`]s and gets one result per delivery. A
//! delivery's `id` is stable across retries and replays of the same event to the same target
//! (it is derived from the event id, the rule and the target id), so a receiver can dedupe on
//! it. Errors say whether a retry can help: a `retryable: false` error goes straight to the
//! target's dead-letter stream.

use std::sync::Arc;

use async_trait::async_trait;
use outrider_proto::Event;

/// One event on its way to one target.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Stable idempotency key of (event, rule, target): the same on every attempt.
    pub id: String,
    pub bus: String,
    pub rule: String,
    pub target_id: String,
    /// The bus event the rule matched.
    pub event: Arc<Event>,
    /// What the target receives: the event's EventBridge JSON, or what the target's input
    /// settings (Input, InputPath, InputTransformer) made of it. Not always JSON: a string
    /// input template can produce plain text.
    pub payload: String,
    /// 1 on the first attempt.
    pub attempt: u32,
}

/// Why a delivery failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct DeliveryError {
    /// A short machine-readable code (`"Timeout"`, `"HttpStatus500"`, `"ProvisionedThroughputExceededException"` ...).
    pub code: String,
    pub message: String,
    /// Whether another attempt may succeed (network errors, throttling, 5xx, 429) or not (4xx,
    /// a payload the target can never take).
    pub retryable: bool,
}

impl DeliveryError {
    pub fn retryable(code: impl Into<String>, message: impl Into<String>) -> Self {
        DeliveryError {
            code: code.into(),
            message: message.into(),
            retryable: true,
        }
    }

    pub fn permanent(code: impl Into<String>, message: impl Into<String>) -> Self {
        DeliveryError {
            code: code.into(),
            message: message.into(),
            retryable: false,
        }
    }
}

/// A destination of a rule. Implementations: `targets::webhook`, `targets::kinesis`,
/// `targets::bus` (another bus), `targets::saga` (starts a saga), and the gRPC subscriber
/// streams served by the bus itself.
#[async_trait]
pub trait Target: Send + Sync {
    /// A short name of the kind of target (`"webhook"`, `"kinesis"` ...), for metrics and logs.
    fn kind(&self) -> &'static str;

    /// The most deliveries one [`Target::deliver`] call takes (Kinesis PutRecords: 500).
    fn max_batch(&self) -> usize {
        1
    }

    /// Delivers a batch; returns exactly one result per delivery, in the same order. A target
    /// that fails part of a batch (Kinesis' partially failed PutRecords) reports which.
    async fn deliver(&self, batch: &[Delivery]) -> Vec<Result<(), DeliveryError>>;
}

/// Shared handle to a target.
pub type DynTarget = Arc<dyn Target>;
