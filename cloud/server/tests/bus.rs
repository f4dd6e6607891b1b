//! The event bus inside the real `outrider-cloud` binary: an agent's synced events enter the
//! `default` bus, a rule from the configuration file sends the matching ones to a signed webhook
//! (a real HTTP server here), and a kill -9 of the cloud in the middle loses none of them: after
//! the restart every matching event has reached the webhook (at least once; deduplicated by the
//! delivery id, exactly the matching set), with a valid signature.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use outrider_agent::config::SyncSection;
use outrider_agent::AgentConfig;
use outrider_bus::targets::webhook::{
    verify_signature, HEADER_DELIVERY_ID, HEADER_EVENT_ID, HEADER_SIGNATURE,
};
use outrider_proto::Event;
use outrider_runtime::ExpectedVersion;

const BIN: &str = env!("CARGO_BIN_EXE_outrider-cloud");
const SECRET: &str = "a-webhook-secret-of-some-length";

fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// What the webhook received: delivery id → (event id, body source).
#[derive(Default)]
struct Received {
    by_delivery: BTreeMap<String, String>,
    posts: usize,
    bad_signatures: usize,
}

fn start_cloud(cfg: &std::path::Path) -> Child {
    let mut child = Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .env("RIDES_HOOK_SECRET", SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("event bus running") {
                let _ = tx.send(());
            }
            eprintln!("cloud: {line}");
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the cloud and its bus did not start");
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synced_events_reach_a_signed_webhook_through_a_rule_across_a_cloud_crash() {
    // The webhook receiver.
    let received: Arc<Mutex<Received>> = Arc::default();
    let r = received.clone();
    let app = axum::Router::new().route(
        "/hooks/rides",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let r = r.clone();
            async move {
                let h = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string()
                };
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                let mut g = r.lock().unwrap();
                g.posts += 1;
                if verify_signature(SECRET.as_bytes(), &h(HEADER_SIGNATURE), &body, now, 300)
                    .is_err()
                {
                    g.bad_signatures += 1;
                    return StatusCode::UNAUTHORIZED;
                }
                g.by_delivery
                    .insert(h(HEADER_DELIVERY_ID), h(HEADER_EVENT_ID));
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let data = dir.path().join("cloud");
    let cfg = dir.path().join("cloud.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"listen = "127.0.0.1:{port}"
data_dir = {data:?}
insecure = true

[bus]
[[bus.rules]]
Name = "paid-rides"
EventPattern = '{{"source": ["rides"], "detail": {{"fare": [{{"numeric": [">", 10]}}]}}}}'
[[bus.rules.Targets]]
Id = "billing"
Destination = {{ Type = "Webhook", Url = "http://{hook}/hooks/rides", SecretEnv = "RIDES_HOOK_SECRET" }}
RetryPolicy = {{ MaximumRetryAttempts = 185, MaximumEventAgeInSeconds = 3600 }}
"#
        ),
    )
    .unwrap();
    let mut cloud = start_cloud(&cfg);

    let mut acfg = AgentConfig {
        node_id: "car-7".into(),
        data_dir: dir.path().join("agent"),
        ..AgentConfig::default()
    };
    acfg.api.listen = "127.0.0.1:0".parse().unwrap();
    acfg.api.metrics_listen = "127.0.0.1:0".parse().unwrap();
    acfg.sync = Some(SyncSection {
        cloud_url: format!("http://127.0.0.1:{port}"),
        insecure: true,
        ..SyncSection::default()
    });
    let agent = outrider_agent::start(acfg).await.unwrap();
    let mut expected = BTreeSet::new();
    let mut append = |from: u64, to: u64| {
        let events: Vec<Event> = (from..to)
            .map(|i| {
                let id = format!("ride-{i}");
                let source = if i % 5 == 0 { "maintenance" } else { "rides" };
                let fare = i % 20;
                if source == "rides" && fare > 10 {
                    expected.insert(id.clone());
                }
                Event {
                    id,
                    source: source.into(),
                    detail_type: "RideCompleted".into(),
                    detail: format!("{{\"fare\":{fare}}}"),
                    ..Default::default()
                }
            })
            .collect();
        events
    };
    let first = append(0, 200);
    let second = append(200, 400);
    agent
        .log()
        .append_async("rides", ExpectedVersion::Any, first, None)
        .await
        .unwrap();

    // Some deliveries done, then the cloud dies mid-stream.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while received.lock().unwrap().by_delivery.len() < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no webhook deliveries"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cloud.kill().unwrap();
    cloud.wait().unwrap();
    agent
        .log()
        .append_async("rides", ExpectedVersion::Any, second, None)
        .await
        .unwrap();
    let mut cloud = start_cloud(&cfg);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let got: BTreeSet<String> = received
            .lock()
            .unwrap()
            .by_delivery
            .values()
            .cloned()
            .collect();
        if got == expected {
            break;
        }
        assert!(
            got.is_subset(&expected),
            "a non-matching event reached the webhook: {:?}",
            got.difference(&expected).collect::<Vec<_>>()
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "missing after the restart: {} of {}",
            expected.difference(&got).count(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    {
        let g = received.lock().unwrap();
        assert_eq!(g.bad_signatures, 0);
        assert_eq!(
            g.by_delivery.len(),
            expected.len(),
            "one delivery id per matching event"
        );
        assert!(g.posts >= expected.len());
    }
    agent.shutdown().await.unwrap();
    cloud.kill().unwrap();
    cloud.wait().unwrap();
}
