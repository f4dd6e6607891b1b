//! Events synced from agents enter the bus: the bridge follows the store's global order from
//! its watermark and puts every event that came from another node (the ingest's
//! `<node>/<stream>` streams) into the bus it names (`event_bus_name`, or `default` when that is
//! empty or not a bus here). Each page is one atomic append per bus together with the bridge's
//! watermark (compare-and-set), so an agent's event enters the bus exactly once, across
//! restarts and replicas.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use outrider_proto::Event;
use outrider_store::{
    EventStore, ExpectedVersion, StoreError, StreamAppend, Subscription, Watermark,
};

use crate::bus::{bus_of, BusEngine};
use crate::error::{BusError, Result};
use crate::names;

/// The extension holding an agent event's origin (`"<node>/<seq>"`) on its bus copy.
pub const EXT_ORIGIN: &str = "outriderorigin";

/// The bridge's watermark: the global position of the last event it looked at.
pub const BRIDGE_WATERMARK: &str = "bus-bridge";

/// Runs the bridge until the engine stops. `local_node` is the store's own node id: events it
/// stamped (the bus's own writes, local appends) are not agents' events.
pub async fn run(engine: BusEngine, local_node: String) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match bridge(&engine, &local_node).await {
            Ok(()) | Err(BusError::Closed) => return,
            Err(e) => {
                tracing::warn!(error = %e, "agent-to-bus bridge failed; restarting from its watermark");
                let mut stop = engine.inner.stop.clone();
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn from_agent(e: &Event, local_node: &str) -> bool {
    !e.origin_node.is_empty()
        && e.origin_node != local_node
        && !e.stream.starts_with("bus/")
        && !e.stream.starts_with("bus-")
}

async fn bridge(engine: &BusEngine, local_node: &str) -> Result<()> {
    let store = engine.inner.store.clone();
    let mut stop = engine.inner.stop.clone();
    let mut wm = super::bus::load_watermark(&*store, BRIDGE_WATERMARK).await?;
    let mut sub = Subscription::new(store.clone(), wm, None)
        .with_poll_interval(engine.inner.cfg.poll_interval.or(store.poll_interval()));
    loop {
        let batch = tokio::select! {
            b = sub.next_batch(engine.inner.cfg.dispatch_batch) => b?,
            _ = stop.changed() => return Err(BusError::Closed),
        };
        let Some(last) = batch.events.last().map(|e| e.position) else {
            continue;
        };
        let buses = engine.definitions().buses;
        let mut by_bus: BTreeMap<String, Vec<Event>> = BTreeMap::new();
        let mut items: Vec<(u64, String, Event)> = Vec::new();
        for e in batch.events.iter().filter(|e| from_agent(e, local_node)) {
            let named = bus_of(&e.event_bus_name);
            let bus = if buses.contains_key(named) {
                named
            } else {
                "default"
            };
            let mut b = e.clone();
            b.event_bus_name = bus.to_string();
            // The bus's copy is the cloud's event (its origin becomes this store's); where it
            // came from stays readable.
            b.extensions.insert(
                EXT_ORIGIN.into(),
                serde_json::Value::from(format!("{}/{}", e.origin_node, e.origin_seq)).to_string(),
            );
            b.origin_node.clear();
            b.origin_seq = 0;
            b.stream.clear();
            b.version = 0;
            b.position = 0;
            items.push((e.position, bus.to_string(), b.clone()));
            by_bus.entry(bus.to_string()).or_default().push(b);
        }
        if by_bus.is_empty() {
            // Nothing from agents on this page: the watermark moves with the next page that has.
            continue;
        }
        let n: usize = by_bus.values().map(Vec::len).sum();
        let appends: Vec<StreamAppend> = by_bus
            .into_iter()
            .map(|(bus, events)| StreamAppend {
                stream: names::bus_stream(&bus),
                expected: ExpectedVersion::Any,
                events,
            })
            .collect();
        match store
            .append_batch(
                appends,
                Some(Watermark {
                    name: BRIDGE_WATERMARK.into(),
                    expected: wm,
                    new: last,
                }),
            )
            .await
        {
            Ok(_) => {
                wm = Some(last);
                engine
                    .inner
                    .stats
                    .put_accepted
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(StoreError::WatermarkConflict { .. }) => {
                wm = super::bus::load_watermark(&*store, BRIDGE_WATERMARK).await?;
                sub = Subscription::new(store.clone(), wm, None);
            }
            Err(e) if crate::bus::per_entry(&e) => {
                // One event the bus cannot take (e.g. an agent event at the size limit that is
                // over it with its bus marks) must not stop the others: one by one, each with
                // the watermark; a refused one leaves a record in `bus-bridge-skipped` instead.
                match one_by_one(engine, &*store, wm, items).await? {
                    Some(new) => wm = Some(new),
                    None => {
                        wm = super::bus::load_watermark(&*store, BRIDGE_WATERMARK).await?;
                        sub = Subscription::new(store.clone(), wm, None);
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Where the bridge records the agents' events the bus refused.
pub const SKIPPED_STREAM: &str = "bus-bridge-skipped";

/// Puts a page's events one at a time, each with the watermark moved to its position; an event
/// the store refuses is replaced by a record in [`SKIPPED_STREAM`] (so the watermark still
/// moves past it, durably noted). `Ok(None)`: another bridge moved the watermark meanwhile.
async fn one_by_one(
    engine: &BusEngine,
    store: &dyn EventStore,
    mut wm: Option<u64>,
    items: Vec<(u64, String, Event)>,
) -> Result<Option<u64>> {
    let mut last = wm;
    for (position, bus, event) in items {
        let mark = |wm: Option<u64>| Watermark {
            name: BRIDGE_WATERMARK.into(),
            expected: wm,
            new: position,
        };
        let id = event.id.clone();
        let put = store
            .append_batch(
                vec![StreamAppend {
                    stream: names::bus_stream(&bus),
                    expected: ExpectedVersion::Any,
                    events: vec![event],
                }],
                Some(mark(wm)),
            )
            .await;
        match put {
            Ok(_) => {
                engine
                    .inner
                    .stats
                    .put_accepted
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(StoreError::WatermarkConflict { .. }) => return Ok(None),
            Err(e) if crate::bus::per_entry(&e) => {
                tracing::warn!(id = %id, position, error = %e, "an agent's event was not put into the bus; recorded in {SKIPPED_STREAM}");
                engine
                    .inner
                    .stats
                    .put_failed
                    .fetch_add(1, Ordering::Relaxed);
                let record = Event {
                    id: names::derived_id(&["bridge-skip", &id, &position.to_string()]),
                    source: "outrider.bus".into(),
                    detail_type: "Bridge Skipped".into(),
                    detail: serde_json::json!({"event": id, "position": position, "bus": bus, "error": e.to_string()}).to_string(),
                    ..Event::default()
                };
                match store
                    .append_batch(
                        vec![StreamAppend {
                            stream: SKIPPED_STREAM.into(),
                            expected: ExpectedVersion::Any,
                            events: vec![record],
                        }],
                        Some(mark(wm)),
                    )
                    .await
                {
                    Ok(_) => {}
                    Err(StoreError::WatermarkConflict { .. }) => return Ok(None),
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
        wm = Some(position);
        last = wm;
    }
    Ok(last)
}
