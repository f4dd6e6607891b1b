//! The dispatcher of one bus: reads `bus/<bus>` in order, matches each event against the
//! bus's compiled rules and archives once, and writes every resulting queue entry and archive
//! copy together with the dispatch watermark in one atomic `append_batch`. The watermark is a
//! compare-and-set, so a crash (or a second replica) can neither lose nor duplicate a
//! dispatch: the loser of a race re-reads the watermark and goes on from there.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use outrider_proto::Event;
use outrider_store::{
    EventStore, ExpectedVersion, StoreError, StreamAppend, Watermark, MAX_EVENT_BYTES,
};
use prost::Message;

use super::follow::Follower;
use super::{BusEngine, ARCHIVE_PREFIX, EXT_EVENT_ID, EXT_INGESTED, RULE_PREFIX};
use crate::error::{BusError, Result};
use crate::names;

/// A batch that matched nothing moves the watermark only after this many events (with a tiny
/// marker event, as a commit needs one append); a restart re-reads at most these.
const MARK_EVERY: u64 = 4096;

pub(crate) async fn run(engine: BusEngine, bus: String) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match dispatch(&engine, &bus).await {
            Ok(()) | Err(BusError::Closed) => return,
            Err(e) => {
                tracing::warn!(bus, error = %e, "dispatcher failed; restarting from its watermark");
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

pub(crate) async fn load_watermark(store: &dyn EventStore, name: &str) -> Result<Option<u64>> {
    Ok(store
        .watermarks(name)
        .await?
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v))
}

/// The queue entry of bus event `e` for one target: a copy with the delivery id, the original
/// id and the dispatch time in extensions.
pub(crate) fn queue_entry(e: &Event, bus: &str, rule: &str, target: &str, now_ms: i64) -> Event {
    let mut q = e.clone();
    q.id = names::delivery_id(bus, rule, target, &format!("{}@{}", e.id, e.version));
    q.stream.clear();
    q.position = 0;
    q.version = 0;
    q.extensions.insert(
        EXT_EVENT_ID.into(),
        serde_json::Value::from(e.id.as_str()).to_string(),
    );
    q.extensions.insert(EXT_INGESTED.into(), now_ms.to_string());
    q
}

/// The bus event a queue entry (or archive copy) was made from.
pub(crate) fn original(q: &Event) -> Event {
    let mut e = q.clone();
    if let Some(id) = e
        .extensions
        .remove(EXT_EVENT_ID)
        .and_then(|t| serde_json::from_str::<String>(&t).ok())
    {
        e.id = id;
    }
    e.extensions.remove(EXT_INGESTED);
    e
}

pub(crate) fn ingested_ms(q: &Event) -> Option<i64> {
    q.extensions.get(EXT_INGESTED).and_then(|t| t.parse().ok())
}

fn too_large(e: &Event) -> bool {
    e.encoded_len() + 64 > MAX_EVENT_BYTES
}

async fn dispatch(engine: &BusEngine, bus: &str) -> Result<()> {
    let store = engine.inner.store.clone();
    let stats = &engine.inner.stats;
    let wm_name = names::dispatch_watermark(bus);
    let mut wm = load_watermark(&*store, &wm_name).await?;
    let new_follower = |next: u64| {
        Follower::new(
            &*store,
            names::bus_stream(bus),
            next,
            engine.inner.cfg.poll_interval,
            engine.inner.stop.clone(),
        )
    };
    let mut follower = new_follower(wm.unwrap_or(0));
    let mut unmarked = 0u64;
    loop {
        let events = follower
            .read(&*store, engine.inner.cfg.dispatch_batch)
            .await?;
        if events.is_empty() {
            follower.wait(None).await?;
            continue;
        }
        let Some(compiled) = engine.compiled(bus) else {
            return Ok(()); // the bus was deleted
        };
        let now = engine.now_ms();
        let mut appends: BTreeMap<String, Vec<Event>> = BTreeMap::new();
        let mut matched = 0u64;
        let mut archived = 0u64;
        for e in &events {
            let json = match outrider_proto::eventbridge::to_json(e) {
                Ok(j) => j,
                Err(err) => {
                    tracing::warn!(bus, id = %e.id, error = %err, "bus event has no EventBridge form; not routed");
                    continue;
                }
            };
            let replay_filter = if e.replay_name.is_empty() {
                None
            } else {
                engine.replay_filter(&e.replay_name)
            };
            let hits = compiled.ruleset.matching_rules(&json);
            let mut archives: Vec<&str> = Vec::new();
            if e.replay_name.is_empty() {
                archives.extend(compiled.archive_all.iter().map(String::as_str));
            }
            for id in &hits {
                if let Some(rule) = id.strip_prefix(RULE_PREFIX) {
                    if replay_filter
                        .as_ref()
                        .is_some_and(|f| !f.is_empty() && !f.iter().any(|r| r == rule))
                    {
                        continue;
                    }
                    let Some(def) = compiled.rules.get(rule) else {
                        continue;
                    };
                    for t in &def.targets {
                        let q = queue_entry(e, bus, rule, &t.id, now);
                        let stream = if too_large(&q) {
                            tracing::warn!(bus, rule, target = %t.id, id = %e.id, "queue entry over the store's event limit; dead-lettered");
                            names::dlq_stream(bus, rule, &t.id)
                        } else {
                            names::queue_stream(bus, rule, &t.id)
                        };
                        let q = if too_large(&q) {
                            too_large_record(&q)
                        } else {
                            q
                        };
                        appends.entry(stream).or_default().push(q);
                        matched += 1;
                    }
                } else if let Some(a) = id.strip_prefix(ARCHIVE_PREFIX) {
                    if e.replay_name.is_empty() {
                        archives.push(a);
                    }
                }
            }
            for a in archives {
                let mut c = e.clone();
                c.id = names::derived_id(&["archive", bus, a, &e.id, &e.version.to_string()]);
                c.stream.clear();
                c.position = 0;
                c.version = 0;
                c.extensions.insert(
                    EXT_EVENT_ID.into(),
                    serde_json::Value::from(e.id.as_str()).to_string(),
                );
                if too_large(&c) {
                    tracing::warn!(bus, archive = a, id = %e.id, "event over the store's limit with its archive marks; not archived");
                    continue;
                }
                appends
                    .entry(names::archive_stream(bus, a))
                    .or_default()
                    .push(c);
                archived += 1;
            }
        }
        let new_wm = follower.next_version();
        if appends.is_empty() {
            unmarked += events.len() as u64;
            if unmarked < MARK_EVERY {
                stats
                    .dispatched_events
                    .fetch_add(events.len() as u64, Ordering::Relaxed);
                continue;
            }
            let marker = Event {
                id: names::derived_id(&["dispatched", bus, &new_wm.to_string()]),
                source: "outrider.bus".into(),
                detail_type: "Dispatched".into(),
                detail: format!("{{\"next\":{new_wm}}}"),
                ..Event::default()
            };
            appends.insert(names::dispatched_stream(bus), vec![marker]);
        }
        let batch: Vec<StreamAppend> = appends
            .into_iter()
            .map(|(stream, events)| StreamAppend {
                stream,
                expected: ExpectedVersion::Any,
                events,
            })
            .collect();
        let watermark = Watermark {
            name: wm_name.clone(),
            expected: wm,
            new: new_wm,
        };
        match store.append_batch(batch, Some(watermark)).await {
            Ok(_) => {
                wm = Some(new_wm);
                unmarked = 0;
                stats
                    .dispatched_events
                    .fetch_add(events.len() as u64, Ordering::Relaxed);
                stats
                    .matched_deliveries
                    .fetch_add(matched, Ordering::Relaxed);
                stats.archived.fetch_add(archived, Ordering::Relaxed);
            }
            Err(StoreError::WatermarkConflict { .. }) => {
                // Another dispatcher of this bus committed first: go on from its watermark.
                wm = load_watermark(&*store, &wm_name).await?;
                follower = new_follower(wm.unwrap_or(0));
                unmarked = 0;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A dead-letter record for an entry too large to queue: everything but the detail.
fn too_large_record(q: &Event) -> Event {
    let mut r = q.clone();
    r.detail = serde_json::json!({
        "error": "EventTooLarge",
        "message": format!("the queue entry is over the store's {MAX_EVENT_BYTES}-byte event limit"),
    })
    .to_string();
    r
}
