//! The bus engine on PostgreSQL, as replicas run it: two engines with their own connection
//! pools on one database. Definitions made through one reach the other; events put through both
//! are dispatched exactly once (the dispatchers race on the watermark) and delivered by one
//! worker per target (a lease in the database), each at least once. Needs `OUTRIDER_TEST_PG`
//! (run under cloud/store/scripts/with-pg.sh); fails without it, never skips.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use outrider_bus::bus::BusEngine;
use outrider_bus::names;
use outrider_runtime::SystemClock;
use outrider_store::{EventStore, PgConfig, PgStore};
use serde_json::json;
use support::*;

const PG_ENV: &str = "OUTRIDER_TEST_PG";

async fn pg(schema: &str) -> Arc<dyn EventStore> {
    let url = match std::env::var(PG_ENV) {
        Ok(u) if !u.trim().is_empty() => u,
        _ => panic!(
            "{PG_ENV} is not set: run these tests under `bash cloud/store/scripts/with-pg.sh cargo test -p outrider-bus --test engine_pg`"
        ),
    };
    let mut cfg = PgConfig::new(url);
    cfg.schema = schema.to_string();
    cfg.pool_size = 4;
    cfg.poll_interval = Duration::from_millis(10);
    Arc::new(
        PgStore::connect(cfg)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {PG_ENV}: {e}")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_postgres_share_definitions_dispatch_once_and_deliver_everything() {
    let schema = format!("bus{}", uuid::Uuid::new_v4().simple());
    let (s1, s2) = (pg(&schema).await, pg(&schema).await);
    let factory = Arc::new(Factory::default());
    let sink = Recorder::ok();
    factory.targets.lock().insert("t".into(), sink.clone());
    let cfg = || outrider_bus::bus::BusConfig {
        poll_interval: Some(Duration::from_millis(10)),
        ..fast()
    };
    let a = BusEngine::start(s1.clone(), cfg(), factory.clone(), Arc::new(SystemClock))
        .await
        .unwrap();
    let b = BusEngine::start(s2.clone(), cfg(), factory.clone(), Arc::new(SystemClock))
        .await
        .unwrap();
    a.create_bus("rides").await.unwrap();
    let mut r = rule("r", json!({"source": ["s"]}), vec![target("t")]);
    r.event_bus_name = "rides".into();
    a.put_rule(r).await.unwrap();
    // b follows a's definitions (it polls the definitions stream).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while b.list_rules("rides").map(|r| r.len()).unwrap_or(0) != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "b never saw a's rule"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut ids = BTreeSet::new();
    for round in 0..20 {
        let engine = if round % 2 == 0 { &a } else { &b };
        let batch = (0..10)
            .map(|i| outrider_proto::Event {
                event_bus_name: "rides".into(),
                ..entry("s", json!({"r": round, "i": i}))
            })
            .collect();
        ids.extend(accepted(&engine.put_events(batch).await));
    }
    sink.wait_for("every event delivered", |d| {
        d.iter()
            .map(|x| x.event.id.clone())
            .collect::<BTreeSet<_>>()
            == ids
    })
    .await;
    let queue = stream(&s1, &names::queue_stream("rides", "r", "t")).await;
    assert_eq!(
        queue.len(),
        200,
        "each event queued exactly once by the racing dispatchers"
    );
    a.shutdown().await;
    b.shutdown().await;
}
