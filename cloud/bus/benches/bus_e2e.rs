//! End-to-end bus benchmark: PutEvents over gRPC → dispatcher → a Subscriber target's stream →
//! a gRPC consumer-group member that acknowledges each delivery. Reports throughput (events/s,
//! first put call to last delivery) and the latency of each event from the start of its
//! PutEvents call to its delivery at the subscriber (p50, p99, max).
//!
//! Baseline in the same run, on the same store: the same events appended with
//! `EventStore::append` in batches of ten by the same number of producers — what the store
//! alone does with the write the bus's PutEvents starts from. The ratio says what routing,
//! queueing and the two gRPC hops cost on top of it.
//!
//! `cargo bench -p outrider-bus --bench bus_e2e` (env: `BUS_E2E_EVENTS`, default 20000;
//! `BUS_E2E_PRODUCERS`, default 4).

use std::sync::Arc;
use std::time::{Duration, Instant};

use outrider_bus::api::groups::{GroupSettings, Groups};
use outrider_bus::api::grpc;
use outrider_bus::bus::{BusConfig, BusEngine, PutOutcome, TargetFactory};
use outrider_bus::client::{BusClient, SubscribeOptions};
use outrider_bus::model::{Destination, RetryPolicy, RuleDef, RuleState, TargetDef};
use outrider_bus::{DynTarget, Result};
use outrider_proto::Event;
use outrider_runtime::SystemClock;
use outrider_store::{EventStore, ExpectedVersion, SledConfig, SledStore};
use serde_json::json;

struct NoPush;

impl TargetFactory for NoPush {
    fn build(
        &self,
        _: &BusEngine,
        _: &str,
        _: &RuleDef,
        _: &TargetDef,
    ) -> Result<Option<DynTarget>> {
        Ok(None)
    }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn event(n: usize, stamp_ns: u128) -> Event {
    Event {
        source: "bench".into(),
        detail_type: "tick".into(),
        detail: json!({ "n": n, "t": stamp_ns.to_string(), "pad": "x".repeat(200) }).to_string(),
        ..Event::default()
    }
}

fn unmatched(n: usize) -> Event {
    Event {
        source: "unmatched".into(),
        ..event(n, 0)
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn baseline(store: Arc<dyn EventStore>, total: usize, producers: usize) -> f64 {
    let base = Instant::now();
    let per = total / producers;
    let mut tasks = Vec::new();
    for p in 0..producers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let stream = format!("baseline-{p}");
            for chunk in (0..per).collect::<Vec<_>>().chunks(10) {
                let stamp = base.elapsed().as_nanos();
                let events = chunk.iter().map(|n| event(*n, stamp)).collect();
                store
                    .append(&stream, ExpectedVersion::Any, events)
                    .await
                    .expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("producer");
    }
    (per * producers) as f64 / base.elapsed().as_secs_f64()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let total = env("BUS_E2E_EVENTS", 20_000);
    let producers = env("BUS_E2E_PRODUCERS", 4).max(1);
    let total = total / producers / 10 * producers * 10;
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn EventStore> =
        Arc::new(SledStore::open(SledConfig::new(dir.path())).expect("store"));
    let engine = BusEngine::start(
        store.clone(),
        BusConfig::default(),
        Arc::new(NoPush),
        Arc::new(SystemClock),
    )
    .await
    .expect("engine");
    engine
        .put_rule(RuleDef {
            name: "r".into(),
            event_bus_name: "default".into(),
            event_pattern: Some(json!({"source": ["bench"]}).to_string()),
            schedule_expression: None,
            state: RuleState::Enabled,
            description: None,
            targets: vec![TargetDef {
                id: "sub".into(),
                destination: Destination::Subscriber,
                input: None,
                input_path: None,
                input_transformer: None,
                retry_policy: RetryPolicy::default(),
                dead_letter: true,
            }],
        })
        .await
        .expect("rule");
    let groups = Groups::new(engine.clone(), GroupSettings::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let g = groups.clone();
    let server = tokio::spawn(async move {
        let _ = grpc::serve(listener, g, async {
            let _ = stopped.await;
        })
        .await;
    });
    let endpoint = format!("http://{addr}");
    let mut client = BusClient::connect(endpoint.clone()).await.expect("connect");
    let mut sub = client
        .subscribe_with(SubscribeOptions {
            event_bus_name: String::new(),
            rule: "r".into(),
            target: "sub".into(),
            group: "bench".into(),
            consumer: "c".into(),
            max_in_flight: 1024,
        })
        .await
        .expect("subscribe");

    // Warm-up: one event through.
    let warm = client.put_events(vec![event(0, 0)]).await.expect("put");
    assert!(matches!(warm[0], PutOutcome::Accepted { .. }));
    let d = sub.next().await.expect("next").expect("delivery");
    sub.ack(d.position).await.expect("ack");

    // Baselines of the put side alone (events no rule matches): in-process and over gRPC.
    let in_process = {
        let t = Instant::now();
        let per = total / producers;
        let mut tasks = Vec::new();
        for _ in 0..producers {
            let engine = engine.clone();
            tasks.push(tokio::spawn(async move {
                for chunk in (0..per).collect::<Vec<_>>().chunks(10) {
                    let out = engine
                        .put_events(chunk.iter().map(|n| unmatched(*n)).collect())
                        .await;
                    assert!(out.iter().all(|o| matches!(o, PutOutcome::Accepted { .. })));
                }
            }));
        }
        for t in tasks {
            t.await.expect("producer");
        }
        total as f64 / t.elapsed().as_secs_f64()
    };
    let over_grpc = {
        let t = Instant::now();
        let per = total / producers;
        let mut tasks = Vec::new();
        for _ in 0..producers {
            let mut c = BusClient::connect(endpoint.clone()).await.expect("connect");
            tasks.push(tokio::spawn(async move {
                for chunk in (0..per).collect::<Vec<_>>().chunks(10) {
                    let out = c
                        .put_events(chunk.iter().map(|n| unmatched(*n)).collect())
                        .await
                        .expect("put");
                    assert!(out.iter().all(|o| matches!(o, PutOutcome::Accepted { .. })));
                }
            }));
        }
        for t in tasks {
            t.await.expect("producer");
        }
        total as f64 / t.elapsed().as_secs_f64()
    };

    let base = Instant::now();
    let consumer = tokio::spawn(async move {
        let mut lat_ms = Vec::with_capacity(total);
        while lat_ms.len() < total {
            let Some(d) = sub.next().await.expect("next") else {
                break;
            };
            let now = base.elapsed().as_nanos();
            let v: serde_json::Value = serde_json::from_str(&d.event.detail).expect("detail");
            let stamp: u128 = v["t"].as_str().and_then(|t| t.parse().ok()).expect("stamp");
            lat_ms.push((now.saturating_sub(stamp)) as f64 / 1e6);
            sub.ack(d.position).await.expect("ack");
        }
        (lat_ms, base.elapsed())
    });
    let per = total / producers;
    let mut tasks = Vec::new();
    for _ in 0..producers {
        let mut c = BusClient::connect(endpoint.clone()).await.expect("connect");
        tasks.push(tokio::spawn(async move {
            for chunk in (0..per).collect::<Vec<_>>().chunks(10) {
                let stamp = base.elapsed().as_nanos();
                let out = c
                    .put_events(chunk.iter().map(|n| event(*n, stamp)).collect())
                    .await
                    .expect("put");
                assert!(out.iter().all(|o| matches!(o, PutOutcome::Accepted { .. })));
            }
        }));
    }
    for t in tasks {
        t.await.expect("producer");
    }
    let put_done = base.elapsed();
    let (mut lat, elapsed) = tokio::time::timeout(Duration::from_secs(600), consumer)
        .await
        .expect("all delivered in time")
        .expect("consumer");
    assert_eq!(lat.len(), total, "every event delivered");
    lat.sort_by(f64::total_cmp);
    let e2e = total as f64 / elapsed.as_secs_f64();
    let put_rate = total as f64 / put_done.as_secs_f64();

    let raw = baseline(store.clone(), total, producers).await;

    println!("bus_e2e: {total} events ({} B detail), {producers} producers x PutEvents of 10 over gRPC, 1 gRPC subscriber (max_in_flight 1024, ack each), sled store", event(0, 0).detail.len());
    println!("  PutEvents in-process (no rule matches)  {in_process:>10.0} events/s");
    println!("  PutEvents over gRPC (no rule matches)   {over_grpc:>10.0} events/s");
    println!("  PutEvents accepted      {put_rate:>10.0} events/s");
    println!(
        "  end to end (delivered)  {e2e:>10.0} events/s  ({:.2} s)",
        elapsed.as_secs_f64()
    );
    println!(
        "  latency put->delivery   p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        pct(&lat, 0.50),
        pct(&lat, 0.99),
        pct(&lat, 1.0)
    );
    println!("  baseline EventStore::append (same events, batches of 10, {producers} producers) {raw:>10.0} events/s");
    println!("  ratio end-to-end / raw append: {:.3}", e2e / raw);

    groups.shutdown().await;
    let _ = stop.send(());
    let _ = server.await;
    engine.shutdown().await;
}
