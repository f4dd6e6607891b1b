//! `outrider_bus_*` metric families (Prometheus text), from the engine's counters and
//! definitions.

use std::sync::atomic::Ordering;

use outrider_runtime::metrics::Exposition;

use crate::bus::BusEngine;
use crate::model::RuleState;

/// Writes the bus's families.
pub fn write(x: &mut Exposition, engine: &BusEngine) {
    let s = engine.stats();
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    x.family(
        "outrider_bus_put_events_total",
        "counter",
        "PutEvents entries (and events from agents) by outcome.",
    );
    x.sample(
        "outrider_bus_put_events_total",
        &[("outcome", "accepted")],
        get(&s.put_accepted),
    );
    x.sample(
        "outrider_bus_put_events_total",
        &[("outcome", "failed")],
        get(&s.put_failed),
    );
    x.single(
        "outrider_bus_dispatched_events_total",
        "counter",
        "Bus events matched against the rules by this server's dispatchers.",
        get(&s.dispatched_events),
    );
    x.single(
        "outrider_bus_matched_deliveries_total",
        "counter",
        "(event, target) pairs queued by the dispatchers.",
        get(&s.matched_deliveries),
    );
    x.single(
        "outrider_bus_archived_events_total",
        "counter",
        "Events copied into archives.",
        get(&s.archived),
    );
    x.family(
        "outrider_bus_deliveries_total",
        "counter",
        "Delivery attempts' and deliveries' ends, by outcome.",
    );
    x.sample(
        "outrider_bus_deliveries_total",
        &[("outcome", "delivered")],
        get(&s.delivered),
    );
    x.sample(
        "outrider_bus_deliveries_total",
        &[("outcome", "failed_attempt")],
        get(&s.delivery_failures),
    );
    x.sample(
        "outrider_bus_deliveries_total",
        &[("outcome", "dead_lettered")],
        get(&s.dead_lettered),
    );
    x.sample(
        "outrider_bus_deliveries_total",
        &[("outcome", "dropped")],
        get(&s.dropped),
    );
    x.single(
        "outrider_bus_retries_total",
        "counter",
        "Delivery retries scheduled.",
        get(&s.retries),
    );
    x.single(
        "outrider_bus_schedule_fires_total",
        "counter",
        "Schedule fire times put into target queues.",
        get(&s.schedules_fired),
    );
    x.single(
        "outrider_bus_replayed_events_total",
        "counter",
        "Archived events put back by replays.",
        get(&s.replayed),
    );
    let defs = engine.definitions();
    x.family("outrider_bus_rules", "gauge", "Rules per bus and state.");
    for (bus, rules) in &defs.buses {
        let enabled = rules
            .values()
            .filter(|r| r.def.state == RuleState::Enabled)
            .count();
        x.sample(
            "outrider_bus_rules",
            &[("bus", bus), ("state", "enabled")],
            enabled,
        );
        x.sample(
            "outrider_bus_rules",
            &[("bus", bus), ("state", "disabled")],
            rules.len() - enabled,
        );
    }
    x.single(
        "outrider_bus_archives",
        "gauge",
        "Archives defined.",
        defs.archives.len(),
    );
}

/// The bus's families as text.
pub fn render(engine: &BusEngine) -> String {
    let mut x = Exposition::new();
    write(&mut x, engine);
    x.finish()
}
