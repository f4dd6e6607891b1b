//! The delivery worker of one target: follows the target's queue stream, renders each entry's
//! payload (Input / InputPath / InputTransformer), hands batches to the [`Target`], and feeds
//! the outcomes to the sans-IO [`Tracker`] (retries with backoff, attempt and age limits).
//! Exhausted deliveries are written to the target's dead-letter stream (with the error and the
//! limit that ended them) before the checkpoint moves past them, so nothing leaves the queue
//! unaccounted. One worker per target across replicas (a lease fences its checkpoint).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use outrider_proto::Event;
use outrider_store::{ExpectedVersion, Lease, StoreError};
use time::format_description::well_known::Rfc3339;

use super::dispatch::{ingested_ms, original};
use super::follow::Follower;
use super::BusEngine;
use crate::error::{BusError, Result};
use crate::model::{RuleDef, TargetDef};
use crate::names;
use crate::retry::{Exhausted, Tracker, Verdict};
use crate::target::{Delivery, DeliveryError, DynTarget};
use crate::transform::{InputSpec, RenderContext};

const LEASE_TTL: Duration = Duration::from_secs(15);
/// Parallel `deliver` calls per worker.
const PARALLEL_CALLS: usize = 16;

pub(crate) async fn run(
    engine: BusEngine,
    bus: String,
    rule: RuleDef,
    tdef: TargetDef,
    target: DynTarget,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match work(&engine, &bus, &rule, &tdef, &target).await {
            Ok(()) | Err(BusError::Closed) => return,
            Err(e) => {
                tracing::warn!(bus, rule = %rule.name, target = %tdef.id, error = %e, "delivery worker failed; restarting from its checkpoint");
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

async fn take_lease(engine: &BusEngine, name: &str, holder: &str) -> Result<Lease> {
    let store = &engine.inner.store;
    let mut stop = engine.inner.stop.clone();
    loop {
        if let Some(l) = store.acquire_lease(name, holder, LEASE_TTL).await? {
            return Ok(l);
        }
        tokio::select! {
            _ = tokio::time::sleep(LEASE_TTL / 3) => {}
            _ = stop.changed() => return Err(BusError::Closed),
        }
    }
}

struct Item {
    entry: Arc<Event>,
    original: Arc<Event>,
}

impl Clone for Item {
    fn clone(&self) -> Self {
        Item {
            entry: self.entry.clone(),
            original: self.original.clone(),
        }
    }
}

async fn work(
    engine: &BusEngine,
    bus: &str,
    rule: &RuleDef,
    tdef: &TargetDef,
    target: &DynTarget,
) -> Result<()> {
    let store = engine.inner.store.clone();
    let cp_name = names::deliver_checkpoint(bus, &rule.name, &tdef.id);
    let mut lease = take_lease(engine, &cp_name, &engine.inner.holder).await?;
    let result = deliver_loop(engine, bus, rule, tdef, target, &cp_name, &mut lease).await;
    if matches!(result, Err(BusError::Closed)) {
        // A graceful stop hands the target over at once (a restarted server or another
        // replica need not wait for the lease to expire).
        let _ = store.release_lease(&lease).await;
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn deliver_loop(
    engine: &BusEngine,
    bus: &str,
    rule: &RuleDef,
    tdef: &TargetDef,
    target: &DynTarget,
    cp_name: &str,
    lease: &mut Lease,
) -> Result<()> {
    let store = engine.inner.store.clone();
    let stats = &engine.inner.stats;
    let cfg = &engine.inner.cfg;
    let mut renewed_at = tokio::time::Instant::now();
    let floor = store.load_checkpoint(cp_name).await?.map_or(0, |v| v + 1);
    let spec = InputSpec::from_target(tdef)?;
    let rule_arn = engine.rule_arn(bus, &rule.name);
    let dlq = names::dlq_stream(bus, &rule.name, &tdef.id);
    let mut tracker: Tracker<Item> = Tracker::new(
        tdef.retry_policy,
        cfg.backoff,
        cfg.delivery_window,
        floor,
        uuid::Uuid::new_v4().as_u64_pair().0,
    );
    let mut follower = Follower::new(
        &*store,
        names::queue_stream(bus, &rule.name, &tdef.id),
        floor,
        cfg.poll_interval,
        engine.inner.stop.clone(),
    );
    let max_batch = target.max_batch().max(1);
    loop {
        if renewed_at.elapsed() > LEASE_TTL / 3 {
            *lease = store.renew_lease(lease).await?;
            renewed_at = tokio::time::Instant::now();
        }
        // Fill the window.
        let room = tracker.room();
        let mut read_any = false;
        if room > 0 {
            let now = engine.now_ms();
            for q in follower.read(&*store, room).await? {
                read_any = true;
                let ingested = ingested_ms(&q).unwrap_or(now);
                let version = q.version;
                let orig = Arc::new(original(&q));
                tracker.offer(
                    version,
                    Item {
                        entry: Arc::new(q),
                        original: orig,
                    },
                    ingested,
                    now,
                );
            }
        }
        // Attempt what is due.
        let now = engine.now_ms();
        let due = tracker.take_due(now, max_batch * PARALLEL_CALLS);
        let mut dead: Vec<Event> = Vec::new();
        if !due.is_empty() {
            let mut deliveries = Vec::with_capacity(due.len());
            let mut versions = Vec::with_capacity(due.len());
            for (version, item, attempt) in due {
                match render(&spec, &item, &rule_arn, &rule.name) {
                    Ok(payload) => {
                        versions.push(version);
                        deliveries.push(Delivery {
                            id: item.entry.id.clone(),
                            bus: bus.to_string(),
                            rule: rule.name.clone(),
                            target_id: tdef.id.clone(),
                            event: item.original.clone(),
                            payload,
                            attempt,
                        });
                    }
                    Err(err) => {
                        tracker.complete(version, false, false, now);
                        dead.push(dead_letter(
                            &item,
                            &rule_arn,
                            rule,
                            tdef,
                            &err,
                            attempt,
                            Exhausted::PermanentError,
                        ));
                    }
                }
            }
            let calls = deliveries
                .chunks(max_batch)
                .map(|chunk| target.deliver(chunk));
            let results: Vec<Result<(), DeliveryError>> = futures_util::future::join_all(calls)
                .await
                .into_iter()
                .flatten()
                .collect();
            let now = engine.now_ms();
            for (i, version) in versions.into_iter().enumerate() {
                let outcome = results.get(i).cloned().unwrap_or_else(|| {
                    Err(DeliveryError::retryable(
                        "MissingResult",
                        "the target returned fewer results than deliveries",
                    ))
                });
                let (ok, retryable) = match &outcome {
                    Ok(()) => (true, false),
                    Err(e) => (false, e.retryable),
                };
                match tracker.complete(version, ok, retryable, now) {
                    Verdict::Delivered => {
                        stats.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    Verdict::RetryAt(_) => {
                        stats.delivery_failures.fetch_add(1, Ordering::Relaxed);
                        stats.retries.fetch_add(1, Ordering::Relaxed);
                    }
                    Verdict::DeadLetter(why) => {
                        stats.delivery_failures.fetch_add(1, Ordering::Relaxed);
                        let err = outcome
                            .err()
                            .unwrap_or_else(|| DeliveryError::permanent("Unknown", ""));
                        let d = &deliveries[i];
                        let item = Item {
                            entry: Arc::new(Event {
                                id: d.id.clone(),
                                ..(*d.event).clone()
                            }),
                            original: d.event.clone(),
                        };
                        dead.push(dead_letter(
                            &item, &rule_arn, rule, tdef, &err, d.attempt, why,
                        ));
                    }
                }
            }
        }
        if !dead.is_empty() {
            let n = dead.len() as u64;
            if tdef.dead_letter {
                match store.append(&dlq, ExpectedVersion::Any, dead.clone()).await {
                    Ok(_) => {}
                    // Some were written before a restart: write the others one by one.
                    Err(StoreError::PartialDuplicate { .. }) => {
                        for d in dead {
                            store.append(&dlq, ExpectedVersion::Any, vec![d]).await?;
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
                stats.dead_lettered.fetch_add(n, Ordering::Relaxed);
            } else {
                tracing::warn!(bus, rule = %rule.name, target = %tdef.id, dropped = n, "deliveries exhausted; no dead-letter stream configured");
                stats.dropped.fetch_add(n, Ordering::Relaxed);
            }
        }
        if let Some(floor) = tracker.advance() {
            store
                .save_checkpoint(cp_name, floor - 1, Some(lease))
                .await?;
        }
        if read_any && tracker.room() > 0 {
            continue; // more may be waiting in the queue
        }
        if tracker.next_due().is_some_and(|d| d <= engine.now_ms()) {
            continue;
        }
        let wait = tracker
            .next_due()
            .map(|d| Duration::from_millis((d - engine.now_ms()).max(1) as u64));
        let wait = wait.map_or(LEASE_TTL / 3, |w| w.min(LEASE_TTL / 3));
        if tracker.room() == 0 {
            // The window is full of waiting retries: only time frees it.
            let mut stop = engine.inner.stop.clone();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return Err(BusError::Closed),
            }
        } else {
            follower.wait(Some(wait)).await?;
        }
    }
}

fn render(
    spec: &InputSpec,
    item: &Item,
    rule_arn: &str,
    rule_name: &str,
) -> std::result::Result<String, DeliveryError> {
    render_payload(spec, &item.entry, &item.original, rule_arn, rule_name)
}

/// The target's input for queue entry `entry` (made from bus event `original`): the rule's
/// Input / InputPath / InputTransformer with the `aws.events.*` values (ingestion time = when
/// the dispatcher queued it).
pub(crate) fn render_payload(
    spec: &InputSpec,
    entry: &Event,
    original: &Event,
    rule_arn: &str,
    rule_name: &str,
) -> std::result::Result<String, DeliveryError> {
    let json = outrider_proto::eventbridge::to_json(original)
        .map_err(|e| DeliveryError::permanent("InvalidEvent", e.to_string()))?;
    let ingested = ingested_ms(entry)
        .and_then(|ms| {
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
        })
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default();
    let ctx = RenderContext {
        rule_arn,
        rule_name,
        ingestion_time: &ingested,
    };
    spec.render(&json, &ctx)
        .map_err(|e| DeliveryError::permanent("InputTransformationFailed", e.to_string()))
}

fn dead_letter(
    item: &Item,
    rule_arn: &str,
    rule: &RuleDef,
    tdef: &TargetDef,
    err: &DeliveryError,
    attempts: u32,
    why: Exhausted,
) -> Event {
    dead_letter_record(
        &item.entry.id,
        &item.original,
        rule_arn,
        &rule.name,
        &tdef.id,
        &err.code,
        &err.message,
        attempts,
        why.as_str(),
    )
}

/// A dead-letter record (`Delivery Failed`, id = the delivery id): the rule, the target, the
/// last error, the attempts, the limit that ended them, and the event (left out, with its id
/// kept, when it would push the record over the store's event limit).
#[allow(clippy::too_many_arguments)]
pub(crate) fn dead_letter_record(
    delivery_id: &str,
    original: &Event,
    rule_arn: &str,
    rule: &str,
    target: &str,
    code: &str,
    message: &str,
    attempts: u32,
    exhausted: &str,
) -> Event {
    let event = outrider_proto::eventbridge::to_json(original).unwrap_or(serde_json::Value::Null);
    let mut detail = serde_json::json!({
        "rule": rule,
        "ruleArn": rule_arn,
        "target": target,
        "errorCode": code,
        "errorMessage": message,
        "attempts": attempts,
        "exhausted": exhausted,
        "event": event,
    });
    let mut text = detail.to_string();
    if text.len() + 1024 > outrider_store::MAX_EVENT_BYTES {
        detail["event"] =
            serde_json::json!({"id": original.id, "omitted": "over the store's event limit"});
        text = detail.to_string();
    }
    Event {
        id: delivery_id.to_string(),
        source: "outrider.bus".into(),
        detail_type: "Delivery Failed".into(),
        detail: text,
        resources: vec![rule_arn.to_string()],
        account: original.account.clone(),
        region: original.region.clone(),
        ..Event::default()
    }
}
