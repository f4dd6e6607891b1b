//! The saga-start target: each delivery starts one execution of a state machine, with the
//! delivery's payload as its input and the delivery id as the execution name, so a retried
//! delivery never starts a second execution. The saga engine implements [`SagaStarter`].

use std::sync::Arc;

use async_trait::async_trait;

use crate::target::{Delivery, DeliveryError, Target};

/// What the bus needs from a saga (Step Functions-style) engine.
#[async_trait]
pub trait SagaStarter: Send + Sync {
    /// Starts an execution of `state_machine` named `execution_name` with `input` (JSON text)
    /// and returns its id. Idempotent by name: starting a name that already ran with the same
    /// input returns the existing execution; with another input it is a permanent error.
    async fn start_execution(
        &self,
        state_machine: &str,
        execution_name: &str,
        input: &str,
    ) -> Result<String, DeliveryError>;
}

/// A rule target that starts executions of one state machine.
pub struct SagaTarget {
    starter: Arc<dyn SagaStarter>,
    state_machine: String,
}

impl SagaTarget {
    pub fn new(starter: Arc<dyn SagaStarter>, state_machine: impl Into<String>) -> Self {
        SagaTarget {
            starter,
            state_machine: state_machine.into(),
        }
    }
}

#[async_trait]
impl Target for SagaTarget {
    fn kind(&self) -> &'static str {
        "saga"
    }

    async fn deliver(&self, batch: &[Delivery]) -> Vec<Result<(), DeliveryError>> {
        let mut out = Vec::with_capacity(batch.len());
        for d in batch {
            if serde_json::from_str::<serde_json::Value>(&d.payload).is_err() {
                out.push(Err(DeliveryError::permanent(
                    "InvalidExecutionInput",
                    "a saga's input must be JSON",
                )));
                continue;
            }
            out.push(
                self.starter
                    .start_execution(&self.state_machine, &d.id, &d.payload)
                    .await
                    .map(|_| ()),
            );
        }
        out
    }
}
