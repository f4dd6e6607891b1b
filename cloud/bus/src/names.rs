//! Names of the bus's streams, checkpoints and watermarks in the event store, ARNs, and the
//! deterministic ids that make every internal write idempotent.
//!
//! | what | stream / name |
//! | --- | --- |
//! | a bus's events (PutEvents, replays, other buses, agents) | `bus/<bus>` |
//! | a target's delivery queue (and a subscriber target's stream) | `bus/<bus>/q/<rule>/<target>` |
//! | a target's dead letters | `bus/<bus>/dlq/<rule>/<target>` |
//! | an archive | `bus/<bus>/archive/<archive>` |
//! | the dispatcher's progress markers (batches that matched nothing) | `bus/<bus>/dispatched` |
//! | definitions (buses, rules, archives), event-sourced | `bus-config` |
//! | the schema registry (snapshot) | `bus-schemas` |
//! | a replay's progress | `bus-replay/<replay>` |
//! | the dispatcher's watermark (next `bus/<bus>` version) | `bus-dispatch/<bus>` |
//! | a schedule's watermark (last fire time, ms) | `bus-schedule/<rule>` |
//! | a delivery worker's checkpoint (last finished queue version) | `bus-deliver/<bus>/<rule>/<target>` |
//! | a subscriber group's checkpoint | `bus-group/<bus>/<rule>/<target>/<group>` |

use uuid::Uuid;

const NAMESPACE: Uuid = Uuid::from_u128(0x6f75_7472_6964_6572_2d62_7573_2d69_6473);

/// A deterministic UUID (v5) from parts: the same parts always give the same id.
pub fn derived_id(parts: &[&str]) -> String {
    let mut joined = Vec::new();
    for p in parts {
        joined.extend_from_slice(&(p.len() as u32).to_be_bytes());
        joined.extend_from_slice(p.as_bytes());
    }
    Uuid::new_v5(&NAMESPACE, &joined).to_string()
}

/// The id of event `event_id`'s delivery to `target` of `rule`: stable across retries,
/// dispatcher restarts and replicas.
pub fn delivery_id(bus: &str, rule: &str, target: &str, event_id: &str) -> String {
    derived_id(&["delivery", bus, rule, target, event_id])
}

pub fn bus_stream(bus: &str) -> String {
    format!("bus/{bus}")
}

pub fn queue_stream(bus: &str, rule: &str, target: &str) -> String {
    format!("bus/{bus}/q/{rule}/{target}")
}

pub fn dlq_stream(bus: &str, rule: &str, target: &str) -> String {
    format!("bus/{bus}/dlq/{rule}/{target}")
}

pub fn archive_stream(bus: &str, archive: &str) -> String {
    format!("bus/{bus}/archive/{archive}")
}

pub fn dispatched_stream(bus: &str) -> String {
    format!("bus/{bus}/dispatched")
}

pub const CONFIG_STREAM: &str = "bus-config";

/// The schema registry: a marker event per change, the registry itself as the snapshot.
pub const SCHEMAS_STREAM: &str = "bus-schemas";

pub fn replay_stream(replay: &str) -> String {
    format!("bus-replay/{replay}")
}

pub fn dispatch_watermark(bus: &str) -> String {
    format!("bus-dispatch/{bus}")
}

pub fn schedule_watermark(bus: &str, rule: &str) -> String {
    format!("bus-schedule/{bus}/{rule}")
}

pub fn deliver_checkpoint(bus: &str, rule: &str, target: &str) -> String {
    format!("bus-deliver/{bus}/{rule}/{target}")
}

pub fn group_checkpoint(bus: &str, rule: &str, target: &str, group: &str) -> String {
    format!("bus-group/{bus}/{rule}/{target}/{group}")
}

/// `arn:aws:events:<region>:<account>:event-bus/<bus>`.
pub fn bus_arn(region: &str, account: &str, bus: &str) -> String {
    format!("arn:aws:events:{region}:{account}:event-bus/{bus}")
}

/// EventBridge's rule ARN: `rule/<rule>` on the default bus, `rule/<bus>/<rule>` elsewhere.
pub fn rule_arn(region: &str, account: &str, bus: &str, rule: &str) -> String {
    if bus == "default" {
        format!("arn:aws:events:{region}:{account}:rule/{rule}")
    } else {
        format!("arn:aws:events:{region}:{account}:rule/{bus}/{rule}")
    }
}

pub fn archive_arn(region: &str, account: &str, archive: &str) -> String {
    format!("arn:aws:events:{region}:{account}:archive/{archive}")
}

pub fn replay_arn(region: &str, account: &str, replay: &str) -> String {
    format!("arn:aws:events:{region}:{account}:replay/{replay}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_and_do_not_collide_on_joins() {
        assert_eq!(
            delivery_id("b", "r", "t", "e"),
            delivery_id("b", "r", "t", "e")
        );
        assert_ne!(derived_id(&["ab", "c"]), derived_id(&["a", "bc"]));
        assert_ne!(
            delivery_id("b", "r", "t", "e1"),
            delivery_id("b", "r", "t", "e2")
        );
    }

    #[test]
    fn rule_arns_follow_eventbridge() {
        assert_eq!(
            rule_arn("eu-west-1", "1", "default", "r"),
            "arn:aws:events:eu-west-1:1:rule/r"
        );
        assert_eq!(
            rule_arn("eu-west-1", "1", "orders", "r"),
            "arn:aws:events:eu-west-1:1:rule/orders/r"
        );
    }
}
