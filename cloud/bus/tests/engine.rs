//! The bus engine on a real sled store: routing, input transformation, retries, dead letters,
//! restarts, racing dispatchers, archives and replays, schedules, bus-to-bus.
//!
//! Targets here are recording sinks behind the real `Target` trait (the engine's contract);
//! the HTTP, Kinesis and subscriber targets have their own tests against real peers.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use outrider_bus::bus::{BusEngine, PutOutcome, ReplayDef, ReplayState};
use outrider_bus::model::{ArchiveDef, Destination, InputTransformerDef};
use outrider_bus::{names, Delivery, DeliveryError};
use outrider_proto::Event;
use outrider_runtime::{Clock, ManualClock, SystemClock};
use parking_lot::Mutex;
use serde_json::{json, Value};
use support::*;

/// Waits for the store's next change, or 100 ms (a change between a check and this call would
/// otherwise be missed): the callers re-check their condition with a deadline.
async fn wait_a_change(store: &Arc<dyn outrider_store::EventStore>) {
    let mut changes = store.changes();
    let _ = tokio::time::timeout(Duration::from_millis(100), changes.changed()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matching_events_reach_their_targets_once_with_the_transformed_input() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let factory = Arc::new(Factory::default());
    let plain = Recorder::ok();
    let shaped = Recorder::ok();
    factory.targets.lock().insert("plain".into(), plain.clone());
    factory
        .targets
        .lock()
        .insert("shaped".into(), shaped.clone());
    let bus = BusEngine::start(store.clone(), fast(), factory, Arc::new(SystemClock))
        .await
        .unwrap();
    let mut t2 = target("shaped");
    t2.input_transformer = Some(InputTransformerDef {
        input_paths_map: [("city".to_string(), "$.detail.city".to_string())].into(),
        input_template: r#"{"where": <city>, "rule": <aws.events.rule-name>}"#.into(),
    });
    let arn = bus
        .put_rule(rule(
            "rides",
            json!({"source": ["rides"], "detail": {"fare": [{"numeric": [">", 10]}]}}),
            vec![target("plain"), t2],
        ))
        .await
        .unwrap();
    assert_eq!(arn, "arn:aws:events:local:000000000000:rule/rides");

    let ids = accepted(
        &bus.put_events(vec![
            entry("rides", json!({"fare": 12, "city": "Lyon"})),
            entry("rides", json!({"fare": 3, "city": "Nice"})),
            entry("other", json!({"fare": 50, "city": "Pau"})),
            entry("rides", json!({"fare": 99.5, "city": "Metz"})),
        ])
        .await,
    );
    plain.wait_for("two deliveries", |a| a.len() >= 2).await;
    shaped.wait_for("two deliveries", |a| a.len() >= 2).await;
    let got: Vec<String> = plain
        .succeeded()
        .iter()
        .map(|d| d.event.id.clone())
        .collect();
    assert_eq!(
        got,
        vec![ids[0].clone(), ids[3].clone()],
        "only matching events, in order"
    );
    let body: Value = serde_json::from_str(&plain.succeeded()[0].payload).unwrap();
    assert_eq!(body["detail"]["city"], "Lyon");
    assert_eq!(body["source"], "rides");
    let shaped_bodies: Vec<Value> = shaped
        .succeeded()
        .iter()
        .map(|d| serde_json::from_str(&d.payload).unwrap())
        .collect();
    assert_eq!(
        shaped_bodies,
        vec![
            json!({"where": "Lyon", "rule": "rides"}),
            json!({"where": "Metz", "rule": "rides"})
        ]
    );
    // Each (event, target) is queued exactly once.
    assert_eq!(
        stream(&store, &names::queue_stream("default", "rides", "plain"))
            .await
            .len(),
        2
    );
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_with_the_same_delivery_id_then_dead_lettered_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let factory = Arc::new(Factory::default());
    // Fails twice per delivery, then succeeds.
    let counts: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let c = counts.clone();
    let flaky = Recorder::new(Box::new(move |d| {
        let mut g = c.lock();
        let n = g.entry(d.id.clone()).or_default();
        if d.attempt > *n {
            *n = d.attempt;
        }
        if d.attempt <= 2 {
            Err(DeliveryError::retryable("HttpStatus503", "busy"))
        } else {
            Ok(())
        }
    }));
    let broken = Recorder::new(Box::new(|_| {
        Err(DeliveryError::retryable("Timeout", "no answer"))
    }));
    let refusing = Recorder::new(Box::new(|_| {
        Err(DeliveryError::permanent("HttpStatus400", "bad request"))
    }));
    for (id, r) in [
        ("flaky", &flaky),
        ("broken", &broken),
        ("refusing", &refusing),
    ] {
        factory.targets.lock().insert(id.into(), r.clone());
    }
    let bus = BusEngine::start(store.clone(), fast(), factory, Arc::new(SystemClock))
        .await
        .unwrap();
    let mut b = target("broken");
    b.retry_policy.maximum_retry_attempts = 3;
    bus.put_rule(rule(
        "r",
        json!({"source": ["s"]}),
        vec![target("flaky"), b, target("refusing")],
    ))
    .await
    .unwrap();
    let ids = accepted(
        &bus.put_events((0..5).map(|i| entry("s", json!({"i": i}))).collect())
            .await,
    );

    flaky
        .wait_for("5 successes", |a| {
            a.iter().filter(|d| d.attempt == 3).count() == 5
        })
        .await;
    let attempts = flaky.attempts.lock().clone();
    for id in &ids {
        let mine: Vec<&Delivery> = attempts.iter().filter(|d| &d.event.id == id).collect();
        assert_eq!(
            mine.iter().map(|d| d.attempt).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert!(
            mine.iter().all(|d| d.id == mine[0].id),
            "the delivery id is stable across attempts"
        );
    }

    let dlq = names::dlq_stream("default", "r", "broken");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while stream(&store, &dlq).await.len() < 5
        || stream(&store, &names::dlq_stream("default", "r", "refusing"))
            .await
            .len()
            < 5
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead letters did not arrive"
        );
        wait_a_change(&store).await;
    }
    let dead = stream(&store, &dlq).await;
    let d: Value = dead
        .iter()
        .map(|e| serde_json::from_str::<Value>(&e.detail).unwrap())
        .find(|d| d["event"]["id"] == ids[0].as_str())
        .expect("the first event's dead letter");
    assert_eq!(d["exhausted"], "MaximumRetryAttempts");
    assert_eq!(d["errorCode"], "Timeout");
    assert_eq!(d["attempts"], 4, "1 attempt + 3 retries");
    assert_eq!(d["event"]["id"], ids[0].as_str());
    assert_eq!(broken.attempts.lock().len(), 20);
    let refused: Value = serde_json::from_str(
        &stream(&store, &names::dlq_stream("default", "r", "refusing")).await[0].detail,
    )
    .unwrap();
    assert_eq!(refused["exhausted"], "PermanentError");
    assert_eq!(refused["attempts"], 1);
    assert_eq!(
        refusing.attempts.lock().len(),
        5,
        "a permanent error is not retried"
    );
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_on_one_store_dispatch_each_event_once_and_a_restart_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let factory = Arc::new(Factory::default());
    let sink = Recorder::ok();
    factory.targets.lock().insert("t".into(), sink.clone());
    let a = BusEngine::start(
        store.clone(),
        fast(),
        factory.clone(),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    a.put_rule(rule("r", json!({"source": ["s"]}), vec![target("t")]))
        .await
        .unwrap();
    let b = BusEngine::start(
        store.clone(),
        fast(),
        factory.clone(),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let mut ids = Vec::new();
    for round in 0..20 {
        let engine = if round % 2 == 0 { &a } else { &b };
        ids.extend(accepted(
            &engine
                .put_events(
                    (0..10)
                        .map(|i| entry("s", json!({"r": round, "i": i})))
                        .collect(),
                )
                .await,
        ));
    }
    sink.wait_for("200 deliveries", |d| {
        let mut seen: Vec<&str> = d.iter().map(|x| x.event.id.as_str()).collect();
        seen.sort();
        seen.dedup();
        seen.len() == 200
    })
    .await;
    let queue = stream(&store, &names::queue_stream("default", "r", "t")).await;
    assert_eq!(
        queue.len(),
        200,
        "racing dispatchers queued each event exactly once"
    );
    a.shutdown().await;
    b.shutdown().await;

    // Events put while no engine runs are delivered after the restart.
    let c = BusEngine::start(
        store.clone(),
        fast(),
        factory.clone(),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    c.shutdown().await;
    let d = BusEngine::start(
        store.clone(),
        fast(),
        factory.clone(),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let more = accepted(&d.put_events(vec![entry("s", json!({"late": true}))]).await);
    sink.wait_for("the late event", |x| {
        x.iter().any(|e| e.event.id == more[0])
    })
    .await;
    assert_eq!(
        stream(&store, &names::queue_stream("default", "r", "t"))
            .await
            .len(),
        201
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archived_events_replay_in_their_window_marked_with_the_replay_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let factory = Arc::new(Factory::default());
    let sink = Recorder::ok();
    factory.targets.lock().insert("t".into(), sink.clone());
    let bus = BusEngine::start(store.clone(), fast(), factory, Arc::new(SystemClock))
        .await
        .unwrap();
    bus.put_rule(rule("r", json!({"source": ["s"]}), vec![target("t")]))
        .await
        .unwrap();
    bus.create_archive(ArchiveDef {
        archive_name: "keep".into(),
        event_bus_name: "default".into(),
        event_pattern: Some(json!({"detail": {"keep": [true]}}).to_string()),
        retention_days: 0,
        description: None,
    })
    .await
    .unwrap();
    let at = |s: i64| Event {
        time_seconds: s,
        ..entry("s", json!({"keep": true, "t": s}))
    };
    let mut batch: Vec<Event> = (0..10).map(|i| at(1_000 + i)).collect();
    batch.push(entry("s", json!({"keep": false})));
    accepted(&bus.put_events(batch).await);
    let archive = names::archive_stream("default", "keep");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while stream(&store, &archive).await.len() < 10 {
        assert!(tokio::time::Instant::now() < deadline);
        wait_a_change(&store).await;
    }
    sink.wait_for("11 first deliveries", |d| d.len() >= 11)
        .await;

    bus.start_replay(ReplayDef {
        replay_name: "again".into(),
        archive_name: "keep".into(),
        event_start_time_ms: 1_003_000,
        event_end_time_ms: 1_007_000,
        destination_bus: None,
        filter_rules: vec![],
    })
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = bus.describe_replay("again").await.unwrap();
        if s.state == ReplayState::Completed {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replay did not complete: {s:?}"
        );
        wait_a_change(&store).await;
    }
    sink.wait_for("4 replayed deliveries", |d| {
        d.iter().filter(|x| x.event.replay_name == "again").count() == 4
    })
    .await;
    let replayed: Vec<i64> = sink
        .succeeded()
        .iter()
        .filter(|d| d.event.replay_name == "again")
        .map(|d| d.event.time_seconds)
        .collect();
    assert_eq!(replayed, vec![1_003, 1_004, 1_005, 1_006]);
    let body: Value = serde_json::from_str(&sink.succeeded().last().unwrap().payload).unwrap();
    assert_eq!(body["replay-name"], "again");
    let status = bus.describe_replay("again").await.unwrap();
    assert_eq!(status.state, ReplayState::Completed);
    assert_eq!((status.replayed, status.total), (4, 10));
    assert_eq!(status.event_last_replayed_ms, Some(1_006_000));
    assert_eq!(
        stream(&store, &archive).await.len(),
        10,
        "replayed events are not archived again"
    );
    assert!(bus
        .start_replay(ReplayDef {
            replay_name: "again".into(),
            archive_name: "keep".into(),
            event_start_time_ms: 0,
            event_end_time_ms: 1,
            destination_bus: None,
            filter_rules: vec![],
        })
        .await
        .is_err());
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_schedule_fires_once_per_period_by_the_injected_clock() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let factory = Arc::new(Factory::default());
    let sink = Recorder::ok();
    factory.targets.lock().insert("t".into(), sink.clone());
    let t0 = 1_700_000_000_000i64;
    let clock = Arc::new(ManualClock::new(t0 * 1_000_000));
    let bus = BusEngine::start(store.clone(), fast(), factory.clone(), clock.clone())
        .await
        .unwrap();
    let mut r = rule("tick", json!({}), vec![target("t")]);
    r.event_pattern = None;
    r.schedule_expression = Some("rate(1 minute)".into());
    bus.put_rule(r).await.unwrap();
    clock.advance(Duration::from_secs(61));
    sink.wait_for("the first fire", |d| !d.is_empty()).await;
    clock.advance(Duration::from_secs(60));
    sink.wait_for("the second fire", |d| d.len() >= 2).await;
    let got = sink.succeeded();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].event.source, "aws.events");
    assert_eq!(got[0].event.detail_type, "Scheduled Event");
    assert_eq!(
        got[0].event.resources,
        vec!["arn:aws:events:local:000000000000:rule/tick".to_string()]
    );
    assert_eq!(got[0].event.time_seconds * 1000, t0 + 60_000);
    assert_eq!(got[1].event.time_seconds * 1000, t0 + 120_000);
    // A restart does not fire the same time again.
    bus.shutdown().await;
    let again = BusEngine::start(store.clone(), fast(), factory, clock.clone())
        .await
        .unwrap();
    clock.advance(Duration::from_secs(60));
    sink.wait_for("the third fire", |d| d.len() >= 3).await;
    assert_eq!(sink.succeeded()[2].event.time_seconds * 1000, t0 + 180_000);
    assert_eq!(
        stream(&store, &names::queue_stream("default", "tick", "t"))
            .await
            .len(),
        3
    );
    again.shutdown().await;
    let _ = clock.now_unix_millis();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_events_reports_per_entry_errors_and_buses_forward_to_buses() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let factory = Arc::new(Factory::default());
    let sink = Recorder::ok();
    factory.targets.lock().insert("t".into(), sink.clone());
    let bus = BusEngine::start(store.clone(), fast(), factory, Arc::new(SystemClock))
        .await
        .unwrap();
    bus.create_bus("orders").await.unwrap();
    assert!(bus.create_bus("orders").await.is_err());
    assert!(bus.create_bus("bad name").await.is_err());
    let mut fwd = target("fwd");
    fwd.destination = Destination::Bus {
        event_bus_name: "orders".into(),
    };
    bus.put_rule(rule("forward", json!({"source": ["shop"]}), vec![fwd]))
        .await
        .unwrap();
    let mut on_orders = rule("sink", json!({"source": ["shop"]}), vec![target("t")]);
    on_orders.event_bus_name = "orders".into();
    bus.put_rule(on_orders).await.unwrap();

    let out = bus
        .put_events(vec![
            entry("shop", json!({"n": 1})),
            Event {
                event_bus_name: "nope".into(),
                ..entry("shop", json!({}))
            },
            Event {
                source: String::new(),
                ..entry("shop", json!({}))
            },
        ])
        .await;
    assert!(matches!(&out[0], PutOutcome::Accepted { .. }));
    assert!(
        matches!(&out[1], PutOutcome::Failed { code, .. } if code == "ResourceNotFoundException")
    );
    assert!(matches!(&out[2], PutOutcome::Failed { code, .. } if code == "InvalidArgument"));
    sink.wait_for("the forwarded event", |d| !d.is_empty())
        .await;
    let got = &sink.succeeded()[0];
    assert_eq!(got.event.event_bus_name, "orders");
    assert_eq!(got.event.source, "shop");

    // Definitions survive a restart.
    bus.shutdown().await;
    let again = BusEngine::start(
        store.clone(),
        fast(),
        Arc::new(Factory::default()),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    assert_eq!(again.list_rules("orders").unwrap().len(), 1);
    assert_eq!(again.list_rules("default").unwrap()[0].name, "forward");
    assert!(
        again.delete_bus("orders").await.is_err(),
        "a bus with rules is not deleted"
    );
    again.delete_rule("orders", "sink").await.unwrap();
    again.delete_bus("orders").await.unwrap();
    again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_synced_from_agents_enter_the_bus_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let factory = Arc::new(Factory::default());
    let sink = Recorder::ok();
    factory.targets.lock().insert("t".into(), sink.clone());
    let bus = BusEngine::start(
        store.clone(),
        fast(),
        factory.clone(),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    bus.create_bus("telemetry").await.unwrap();
    let mut r = rule("edge", json!({"source": ["edge.app"]}), vec![target("t")]);
    r.event_bus_name = "telemetry".into();
    bus.put_rule(r).await.unwrap();
    let bridge = tokio::spawn(outrider_bus::bridge::run(bus.clone(), "cloud".into()));
    // What the ingest commits: the node's events in `<node>/<stream>`, origin kept.
    let synced = |seq: u64| Event {
        id: format!("edge-1-{seq}"),
        source: "edge.app".into(),
        detail_type: "reading".into(),
        detail: json!({"seq": seq}).to_string(),
        event_bus_name: if seq.is_multiple_of(2) {
            "telemetry".into()
        } else {
            "nope".into()
        },
        origin_node: "edge-1".into(),
        origin_seq: seq,
        ..Event::default()
    };
    for chunk in 0..5u64 {
        store
            .append(
                "edge-1/app",
                outrider_store::ExpectedVersion::Any,
                (chunk * 10..chunk * 10 + 10).map(synced).collect(),
            )
            .await
            .unwrap();
    }
    sink.wait_for("25 telemetry events", |d| d.len() >= 25)
        .await;
    let ids: Vec<String> = sink
        .succeeded()
        .iter()
        .map(|d| d.event.id.clone())
        .collect();
    assert_eq!(
        ids,
        (0..50u64)
            .filter(|s| s.is_multiple_of(2))
            .map(|s| format!("edge-1-{s}"))
            .collect::<Vec<_>>()
    );
    let first = &sink.succeeded()[0].event;
    assert_eq!(
        first.extensions.get("outriderorigin").map(String::as_str),
        Some("\"edge-1/0\"")
    );
    assert_eq!(
        first.origin_node, "cloud",
        "the bus's copy is the cloud's event"
    );
    // Events naming no bus here go to `default`.
    assert_eq!(stream(&store, "bus/default").await.len(), 25);
    assert_eq!(stream(&store, "bus/telemetry").await.len(), 25);
    // A restarted bridge does not put them again.
    bridge.abort();
    let _ = bridge.await;
    let again = tokio::spawn(outrider_bus::bridge::run(bus.clone(), "cloud".into()));
    store
        .append(
            "edge-1/app",
            outrider_store::ExpectedVersion::Any,
            vec![synced(50)],
        )
        .await
        .unwrap();
    sink.wait_for("the 26th", |d| d.len() >= 26).await;
    assert_eq!(stream(&store, "bus/telemetry").await.len(), 26);
    assert_eq!(stream(&store, "bus/default").await.len(), 25);
    bus.shutdown().await;
    again.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_are_discovered_on_put_validate_when_asked_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let bus = BusEngine::start(
        store.clone(),
        fast(),
        Arc::new(Factory::default()),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    accepted(
        &bus.put_events(vec![entry("rides", json!({"fare": 12, "city": "Lyon"}))])
            .await,
    );
    accepted(
        &bus.put_events(vec![entry(
            "rides",
            json!({"fare": 7.5, "city": "Pau", "tip": 1}),
        )])
        .await,
    );
    let (version, schema) = bus.with_schemas(|r| {
        let v = r.latest("rides", "ride").expect("discovered");
        (v.version, v.schema.clone())
    });
    assert_eq!(version, 2, "the second event widened the schema");
    assert_eq!(schema["properties"]["city"]["type"], "string");
    bus.set_schema_validation("rides", "ride", true)
        .await
        .unwrap();
    let out = bus
        .put_events(vec![
            entry("rides", json!({"fare": "twelve", "city": "Nice"})),
            entry("rides", json!({"fare": 3, "city": "Nice"})),
        ])
        .await;
    match &out[0] {
        PutOutcome::Failed { code, message } => {
            assert_eq!(code, "InvalidArgument");
            assert!(message.contains("/detail/fare"), "{message}");
        }
        o => panic!("a wrong type was accepted: {o:?}"),
    }
    assert!(matches!(out[1], PutOutcome::Accepted { .. }));
    bus.shutdown().await;
    let again = BusEngine::start(
        store.clone(),
        fast(),
        Arc::new(Factory::default()),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    assert_eq!(
        again.with_schemas(|r| r.latest("rides", "ride").map(|v| v.version)),
        Some(2)
    );
    assert!(again.with_schemas(|r| r.validation_enabled("rides", "ride")));
    again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_put_through_one_engine_is_followed_by_another_on_the_same_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let factory = Arc::new(Factory::default());
    let a = BusEngine::start(
        store.clone(),
        fast(),
        factory.clone(),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let b = BusEngine::start(
        store.clone(),
        fast(),
        factory.clone(),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    b.create_bus("late").await.unwrap();
    let mut r = rule("r", json!({"source": ["s"]}), vec![target("t")]);
    r.event_bus_name = "late".into();
    b.put_rule(r).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut changes = store.changes();
    while a.list_rules("late").map(|r| r.len()).unwrap_or(0) != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "engine a never saw b's rule"
        );
        let _ = tokio::time::timeout(Duration::from_millis(200), changes.changed()).await;
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_the_store_refuses_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let bus = BusEngine::start(
        store.clone(),
        fast(),
        Arc::new(Factory::default()),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let huge = json!({"blob": "x".repeat(outrider_store::MAX_EVENT_BYTES)});
    let out = bus
        .put_events(vec![
            entry("s", json!({"n": 1})),
            entry("s", huge),
            entry("s", json!({"n": 3})),
        ])
        .await;
    assert!(matches!(&out[0], PutOutcome::Accepted { .. }), "{out:?}");
    assert!(
        matches!(&out[1], PutOutcome::Failed { code, .. } if code == "InvalidArgument"),
        "{out:?}"
    );
    assert!(matches!(&out[2], PutOutcome::Accepted { .. }), "{out:?}");
    assert_eq!(stream(&store, "bus/default").await.len(), 2);
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_event_the_bus_cannot_take_is_recorded_and_does_not_stop_the_bridge() {
    use prost::Message;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let factory = Arc::new(Factory::default());
    let sink = Recorder::ok();
    factory.targets.lock().insert("t".into(), sink.clone());
    let bus = BusEngine::start(store.clone(), fast(), factory, Arc::new(SystemClock))
        .await
        .unwrap();
    bus.put_rule(rule(
        "edge",
        json!({"source": ["edge.app"]}),
        vec![target("t")],
    ))
    .await
    .unwrap();
    let synced = |seq: u64, pad: usize| Event {
        id: format!("edge-1-{seq}"),
        source: "edge.app".into(),
        detail_type: "reading".into(),
        detail: json!({"seq": seq, "pad": "x".repeat(pad)}).to_string(),
        origin_node: "edge-1".into(),
        origin_seq: seq,
        stream: "edge-1/app".into(),
        time_seconds: 1,
        ..Event::default()
    };
    // An event just under the store's limit as the ingest stores it: over it as the bus's copy.
    let limit = outrider_store::MAX_EVENT_BYTES;
    let mut pad = limit - 200;
    while synced(1, pad + 1).encoded_len() < limit - 4 {
        pad += 1;
    }
    let big = synced(1, pad);
    assert!(big.encoded_len() < limit);
    store
        .append(
            "edge-1/app",
            outrider_store::ExpectedVersion::Any,
            vec![synced(0, 1), big, synced(2, 1)],
        )
        .await
        .unwrap();
    let bridge = tokio::spawn(outrider_bus::bridge::run(bus.clone(), "cloud".into()));
    sink.wait_for("the two events around the big one", |d| d.len() >= 2)
        .await;
    let ids: Vec<String> = sink
        .succeeded()
        .iter()
        .map(|d| d.event.id.clone())
        .collect();
    assert_eq!(ids, ["edge-1-0", "edge-1-2"]);
    let skipped = stream(&store, outrider_bus::bridge::SKIPPED_STREAM).await;
    assert_eq!(skipped.len(), 1);
    assert!(
        skipped[0].detail.contains("edge-1-1"),
        "{}",
        skipped[0].detail
    );
    bus.shutdown().await;
    bridge.abort();
}
