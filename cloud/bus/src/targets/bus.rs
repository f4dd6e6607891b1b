//! Another bus as a target: the delivery's payload is put into that bus as an event.
//!
//! The payload must be an EventBridge event (the default input: the whole event) or a
//! PutEvents entry; the event keeps its source, detail-type, detail, resources and time, gets
//! the destination bus, and an id derived from the delivery id, so a retried delivery is one
//! event in the destination bus.

use outrider_proto::eventbridge;

use crate::bus::{BusEngine, PutOutcome};
use crate::names;
use crate::target::{Delivery, DeliveryError};

/// Puts each delivery into `bus`; one result per delivery.
pub async fn deliver_to_bus(
    engine: &BusEngine,
    bus: &str,
    batch: &[Delivery],
) -> Vec<Result<(), DeliveryError>> {
    let mut results: Vec<Option<Result<(), DeliveryError>>> = vec![None; batch.len()];
    let mut events = Vec::new();
    let mut idx = Vec::new();
    for (i, d) in batch.iter().enumerate() {
        let parsed = serde_json::from_str::<serde_json::Value>(&d.payload)
            .map_err(|e| e.to_string())
            .and_then(|v| {
                if v.get("detail-type").is_some() {
                    eventbridge::from_json(&v).map_err(|e| e.to_string())
                } else {
                    eventbridge::entry_to_event(&v).map_err(|e| e.to_string())
                }
            });
        match parsed {
            Ok(mut e) => {
                e.id = names::derived_id(&["to-bus", bus, &d.id]);
                e.event_bus_name = bus.to_string();
                e.stream.clear();
                e.position = 0;
                e.version = 0;
                events.push(e);
                idx.push(i);
            }
            Err(why) => {
                results[i] = Some(Err(DeliveryError::permanent(
                    "InvalidEvent",
                    format!("the payload is not an event or a PutEvents entry: {why}"),
                )))
            }
        }
    }
    if !events.is_empty() {
        for (i, outcome) in idx.into_iter().zip(engine.put_events(events).await) {
            results[i] = Some(match outcome {
                PutOutcome::Accepted { .. } => Ok(()),
                PutOutcome::Failed { code, message } if code == "InternalFailure" => {
                    Err(DeliveryError::retryable(code, message))
                }
                PutOutcome::Failed { code, message } => {
                    Err(DeliveryError::permanent(code, message))
                }
            });
        }
    }
    results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| Err(DeliveryError::retryable("InternalFailure", "not processed")))
        })
        .collect()
}
