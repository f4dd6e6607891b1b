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

/// A raw HTTP/1.1 POST with the AWS JSON 1.1 headers; returns (status, body).
fn aws_json(addr: std::net::SocketAddr, action: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: {addr}\r\nX-Amz-Target: AWSEvents.{action}\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_events_over_the_eventbridge_api_reach_a_grpc_consumer_group() {
    let dir = tempfile::tempdir().unwrap();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (api, grpc) = (free(), free());
    let cfg = dir.path().join("cloud.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"listen = "127.0.0.1:{}"
data_dir = {:?}
insecure = true
[bus]
api_listen = "{api}"
grpc_listen = "{grpc}"
buses = ["orders"]
[[bus.rules]]
Name = "big-orders"
EventBusName = "orders"
EventPattern = '{{"detail": {{"total": [{{"numeric": [">=", 100]}}]}}}}'
[[bus.rules.Targets]]
Id = "audit"
Destination = {{ Type = "Subscriber" }}
"#,
            free_port(),
            dir.path().join("cloud")
        ),
    )
    .unwrap();
    let mut cloud = start_cloud(&cfg);
    let entries: Vec<serde_json::Value> = (0..10)
        .map(|i| {
            serde_json::json!({
                "Source": "shop",
                "DetailType": "OrderPlaced",
                "EventBusName": "orders",
                "Detail": serde_json::json!({"n": i, "total": i * 30}).to_string(),
            })
        })
        .collect();
    let (status, body) = aws_json(
        api,
        "PutEvents",
        &serde_json::json!({"Entries": entries}).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let resp: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(resp["FailedEntryCount"], 0, "{body}");
    let ids: Vec<String> = resp["Entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["EventId"].as_str().unwrap().to_string())
        .collect();
    let (status, body) = aws_json(api, "PutEvents", r#"{"Entries": [{"Source": "shop"}]}"#);
    // As EventBridge: a bad entry is a per-entry error, not a failed call.
    assert_eq!(status, 200, "{body}");
    let resp: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(resp["FailedEntryCount"], 1, "{body}");
    assert_eq!(resp["Entries"][0]["ErrorCode"], "InvalidArgument", "{body}");

    let mut client = outrider_bus::client::BusClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let mut sub = client
        .subscribe("orders", "big-orders", "audit", "auditors", "a1")
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 6 {
        let d = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .expect("a delivery in time")
            .unwrap()
            .expect("the stream stays open");
        sub.ack(d.position).await.unwrap();
        got.push(d.event.id.clone());
    }
    // totals 0, 30, 60, 90 stay out; 120..270 (6 events) come in order.
    assert_eq!(got, ids[4..].to_vec());
    cloud.kill().unwrap();
    cloud.wait().unwrap();
}
