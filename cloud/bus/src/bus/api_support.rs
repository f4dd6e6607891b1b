//! What the network API (`crate::api`) needs of the engine: a rule's target definition, and a
//! Subscriber target's stream read as deliveries (the original event and the rendered input).

use outrider_proto::Event;
use outrider_store::{Direction, StreamFrom};

use super::dispatch::original;
use super::BusEngine;
use crate::error::{BusError, Result};
use crate::model::{RuleDef, TargetDef};
use crate::names;
use crate::transform::InputSpec;

/// One entry of a Subscriber target's stream, ready for a consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriberEntry {
    /// The stable delivery id of (bus event, rule, target).
    pub delivery_id: String,
    /// The entry's version in the target's stream.
    pub position: u64,
    /// The original bus event (its id is the one PutEvents returned).
    pub event: Event,
    /// The target's input for the event, or why it could not be rendered.
    pub payload: std::result::Result<String, String>,
}

impl BusEngine {
    /// The definitions of rule `rule` on bus `bus` and of its target `target`.
    /// [`BusError::NotFound`] names what is missing.
    pub fn target_def(&self, bus: &str, rule: &str, target: &str) -> Result<(RuleDef, TargetDef)> {
        let g = self.inner.defs.lock();
        let rules =
            g.0.buses
                .get(bus)
                .ok_or_else(|| BusError::NotFound(format!("Event bus {bus} does not exist.")))?;
        let r = rules.get(rule).ok_or_else(|| {
            BusError::NotFound(format!("Rule {rule} does not exist on EventBus {bus}."))
        })?;
        let t = r
            .def
            .targets
            .iter()
            .find(|t| t.id == target)
            .ok_or_else(|| {
                BusError::NotFound(format!(
                    "Target {target} does not exist on rule {rule} of EventBus {bus}."
                ))
            })?;
        Ok((r.def.clone(), t.clone()))
    }

    /// Reads up to `max` entries of the stream of `target` (a target of `rule`) from version
    /// `from` on, with their payloads rendered by the target's input settings. An empty result:
    /// nothing there yet.
    pub async fn read_subscriber(
        &self,
        rule: &RuleDef,
        target: &TargetDef,
        from: u64,
        max: usize,
    ) -> Result<Vec<SubscriberEntry>> {
        let bus = &rule.event_bus_name;
        let spec = InputSpec::from_target(target)?;
        let rule_arn = self.rule_arn(bus, &rule.name);
        let page = self
            .inner
            .store
            .read_stream(
                &names::queue_stream(bus, &rule.name, &target.id),
                StreamFrom::Version(from),
                Direction::Forwards,
                max.max(1),
            )
            .await?;
        Ok(page
            .events
            .into_iter()
            .map(|q| {
                let event = original(&q);
                let payload = render(&spec, &q, &event, &rule_arn, &rule.name);
                SubscriberEntry {
                    delivery_id: q.id,
                    position: q.version,
                    event,
                    payload,
                }
            })
            .collect())
    }
}

fn render(
    spec: &InputSpec,
    entry: &Event,
    event: &Event,
    rule_arn: &str,
    rule_name: &str,
) -> std::result::Result<String, String> {
    super::deliver::render_payload(spec, entry, event, rule_arn, rule_name).map_err(|e| e.message)
}
