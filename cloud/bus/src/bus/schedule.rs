//! A scheduled rule's task: at each fire time of its `rate(...)`/`cron(...)` expression it puts
//! one "Scheduled Event" into each of the rule's target queues, together with the schedule's
//! watermark (the fire time) in one atomic commit — a restart or a second replica cannot fire
//! the same time twice. After downtime, only the latest missed fire time is fired.

use std::sync::atomic::Ordering;
use std::time::Duration;

use outrider_proto::Event;
use outrider_store::{ExpectedVersion, StoreError, StreamAppend, Watermark};

use super::dispatch::{load_watermark, queue_entry};
use super::BusEngine;
use crate::error::{BusError, Result};
use crate::model::RuleDef;
use crate::names;
use crate::schedule::Schedule;

pub(crate) async fn run(
    engine: BusEngine,
    bus: String,
    rule: RuleDef,
    sched: Schedule,
    created_ms: i64,
) {
    loop {
        match fire_loop(&engine, &bus, &rule, &sched, created_ms).await {
            Ok(()) | Err(BusError::Closed) => return,
            Err(e) => {
                tracing::warn!(bus, rule = %rule.name, error = %e, "schedule failed; retrying");
                let mut stop = engine.inner.stop.clone();
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

/// The event a schedule puts at `at_ms`.
pub(crate) fn scheduled_event(engine: &BusEngine, bus: &str, rule: &str, at_ms: i64) -> Event {
    let cfg = &engine.inner.cfg;
    Event {
        id: names::derived_id(&["schedule", bus, rule, &at_ms.to_string()]),
        source: "aws.events".into(),
        detail_type: "Scheduled Event".into(),
        detail: "{}".into(),
        time_seconds: at_ms.div_euclid(1000),
        time_nanos: (at_ms.rem_euclid(1000) * 1_000_000) as u32,
        account: cfg.account.clone(),
        region: cfg.region.clone(),
        resources: vec![engine.rule_arn(bus, rule)],
        event_bus_name: bus.to_string(),
        ..Event::default()
    }
}

async fn fire_loop(
    engine: &BusEngine,
    bus: &str,
    rule: &RuleDef,
    sched: &Schedule,
    created_ms: i64,
) -> Result<()> {
    let store = engine.inner.store.clone();
    let wm_name = names::schedule_watermark(bus, &rule.name);
    let mut stop = engine.inner.stop.clone();
    loop {
        let last = load_watermark(&*store, &wm_name).await?;
        let now = engine.now_ms();
        let from = match last {
            Some(l) => l as i64,
            None => created_ms,
        };
        let Some(mut next) = sched.next_after(created_ms, from) else {
            return Ok(()); // never fires again
        };
        // After downtime: skip to the latest missed time.
        let mut guard = 0;
        while let Some(n2) = sched.next_after(created_ms, next) {
            if n2 > now || guard > 100_000 {
                break;
            }
            next = n2;
            guard += 1;
        }
        if next > now {
            let wait = Duration::from_millis((next - now) as u64);
            tokio::select! {
                _ = tokio::time::sleep(wait.min(engine.inner.cfg.schedule_tick)) => {}
                _ = stop.changed() => return Err(BusError::Closed),
            }
            continue; // re-check the clock (and the watermark) after waking
        }
        let event = scheduled_event(engine, bus, &rule.name, next);
        let appends: Vec<StreamAppend> = rule
            .targets
            .iter()
            .map(|t| StreamAppend {
                stream: names::queue_stream(bus, &rule.name, &t.id),
                expected: ExpectedVersion::Any,
                events: vec![queue_entry(&event, bus, &rule.name, &t.id, now)],
            })
            .collect();
        if appends.is_empty() {
            // No targets: nothing to record; wait for the following time.
            let wait = sched
                .next_after(created_ms, now)
                .map(|n| (n - now).max(1) as u64);
            let Some(wait) = wait else { return Ok(()) };
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(wait).min(engine.inner.cfg.schedule_tick)) => {}
                _ = stop.changed() => return Err(BusError::Closed),
            }
            continue;
        }
        let wm = Watermark {
            name: wm_name.clone(),
            expected: last,
            new: next as u64,
        };
        match store.append_batch(appends, Some(wm)).await {
            Ok(_) => {
                engine
                    .inner
                    .stats
                    .schedules_fired
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(bus, rule = %rule.name, at_ms = next, "schedule fired");
            }
            Err(StoreError::WatermarkConflict { .. }) => {} // another replica fired it
            Err(e) => return Err(e.into()),
        }
    }
}
