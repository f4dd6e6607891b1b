//! The daemon in-process on loopback ports: gRPC API, subscriptions, metrics, shutdown.

mod common;

use std::time::Duration;

use common::*;
use outrider_agent::api::ACTUAL_VERSION_METADATA;
use outrider_proto::v1::{
    expected_version::Kind, Direction, Empty, ReadAllRequest, ReadStreamRequest, StatusRequest,
    SubscribeRequest, SubscribeResponse,
};
use tonic::Code;

/// Bounds every wait on the agent, so a broken agent fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(20);

async fn next_message(
    stream: &mut tonic::Streaming<SubscribeResponse>,
) -> Option<SubscribeResponse> {
    tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("no subscription message in time")
        .expect("subscription failed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_then_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let agent = outrider_agent::start(test_config(dir.path()))
        .await
        .unwrap();
    let mut c = client(agent.grpc_addr()).await;

    let events = (0..3)
        .map(|i| event("OrderPlaced", &format!(r#"{{"n":{i}}}"#)))
        .collect();
    let r = c
        .append(append_req(
            "orders-1",
            expected(Kind::NoStream(Empty {})),
            events,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.positions, [0, 1, 2]);
    assert_eq!(r.versions, [0, 1, 2]);
    assert_eq!(r.next_expected_version, 2);
    assert!(!r.duplicate);

    // A second stream, appended with an exact expected version after the first append.
    c.append(append_req("other", any(), vec![event("X", "{}")]))
        .await
        .unwrap();
    let r = c
        .append(append_req(
            "orders-1",
            expected(Kind::Exact(2)),
            vec![event("OrderShipped", "{}")],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.positions.as_slice(), r.next_expected_version),
        (&[4][..], 3)
    );

    let fwd = c
        .read_stream(ReadStreamRequest {
            stream: "orders-1".into(),
            from_version: None,
            direction: Direction::Forwards as i32,
            max_count: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(fwd.end);
    let versions: Vec<u64> = fwd.events.iter().map(|e| e.version).collect();
    assert_eq!(versions, [0, 1, 2, 3]);
    assert_eq!(fwd.events[1].detail, r#"{"n":1}"#);
    assert_eq!(fwd.events[1].stream, "orders-1");
    assert_eq!(fwd.events[1].origin_node, "test-node");
    assert_eq!(fwd.events[3].detail_type, "OrderShipped");
    assert!(!fwd.events[0].id.is_empty(), "the log assigns ids");

    let back = c
        .read_stream(ReadStreamRequest {
            stream: "orders-1".into(),
            from_version: None,
            direction: Direction::Backwards as i32,
            max_count: 2,
        })
        .await
        .unwrap()
        .into_inner();
    let versions: Vec<u64> = back.events.iter().map(|e| e.version).collect();
    assert_eq!(versions, [3, 2]);
    assert!(!back.end);

    let all = c
        .read_all(ReadAllRequest {
            from_position: 1,
            max_count: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let positions: Vec<u64> = all.events.iter().map(|e| e.position).collect();
    assert_eq!(positions, [1, 2, 3, 4]);
    assert_eq!(all.events[2].stream, "other");
    assert!(all.end);

    let missing = c
        .read_stream(ReadStreamRequest {
            stream: "nope".into(),
            from_version: None,
            direction: Direction::Forwards as i32,
            max_count: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(missing.events.is_empty() && missing.end);

    let status = c.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.node_id, "test-node");
    assert_eq!(status.head_position, 5);
    assert_eq!(status.durable_position, 5);
    assert_eq!(status.classes.len(), 1);
    assert_eq!(status.classes[0].name, "normal");

    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_counts_default_to_100_and_cap_at_1000() {
    let dir = tempfile::tempdir().unwrap();
    let agent = outrider_agent::start(test_config(dir.path()))
        .await
        .unwrap();
    let mut c = client(agent.grpc_addr()).await;
    let events = (0..1100).map(|_| event("Tick", "{}")).collect();
    c.append(append_req("ticks", any(), events)).await.unwrap();

    let read = |max_count| ReadStreamRequest {
        stream: "ticks".into(),
        from_version: Some(0),
        direction: Direction::Forwards as i32,
        max_count,
    };
    let page = c.read_stream(read(0)).await.unwrap().into_inner();
    assert_eq!((page.events.len(), page.end), (100, false));
    let page = c.read_stream(read(u32::MAX)).await.unwrap().into_inner();
    assert_eq!((page.events.len(), page.end), (1000, false));
    let all = c
        .read_all(ReadAllRequest {
            from_position: 1000,
            max_count: 5000,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((all.events.len(), all.end), (100, true));

    let bad = c
        .read_stream(ReadStreamRequest {
            direction: 7,
            ..read(1)
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("direction"), "{}", bad.message());
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_expected_version_is_failed_precondition_with_the_actual_version() {
    let dir = tempfile::tempdir().unwrap();
    let agent = outrider_agent::start(test_config(dir.path()))
        .await
        .unwrap();
    let mut c = client(agent.grpc_addr()).await;
    let events = (0..3).map(|_| event("E", "{}")).collect();
    c.append(append_req("s", any(), events)).await.unwrap();

    let e = c
        .append(append_req(
            "s",
            expected(Kind::Exact(5)),
            vec![event("E", "{}")],
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("expected 5, actual 2"),
        "{}",
        e.message()
    );
    assert_eq!(
        e.metadata()
            .get(ACTUAL_VERSION_METADATA)
            .and_then(|v| v.to_str().ok()),
        Some("2")
    );

    let e = c
        .append(append_req(
            "s",
            expected(Kind::NoStream(Empty {})),
            vec![event("E", "{}")],
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("actual 2"), "{}", e.message());

    let e = c
        .append(append_req(
            "fresh",
            expected(Kind::StreamExists(Empty {})),
            vec![event("E", "{}")],
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("actual no stream"), "{}", e.message());
    assert_eq!(
        e.metadata()
            .get(ACTUAL_VERSION_METADATA)
            .and_then(|v| v.to_str().ok()),
        Some("none")
    );
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_appends_are_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let agent = outrider_agent::start(test_config(dir.path()))
        .await
        .unwrap();
    let mut c = client(agent.grpc_addr()).await;

    // Over the 256 KiB event limit, but well under the 4 MiB message limit.
    let big = format!(r#"{{"blob":"{}"}}"#, "x".repeat(300 * 1024));
    let e = c
        .append(append_req("s", any(), vec![event("Big", &big)]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("262144"), "{}", e.message());

    let cases = [
        (
            append_req("", any(), vec![event("E", "{}")]),
            "invalid stream name",
        ),
        (append_req("s", any(), vec![]), "at least one event"),
        (
            append_req("s", any(), vec![event("E", "{not json")]),
            "not valid JSON",
        ),
        (
            {
                let mut r = append_req("s", any(), vec![event("E", "{}")]);
                r.priority = "urgent".into();
                r
            },
            "unknown priority class \"urgent\"",
        ),
    ];
    for (req, want) in cases {
        let e = c.append(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(want), "{} / {want}", e.message());
    }
    // Nothing was written.
    let status = c.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.head_position, 0);
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_catches_up_then_follows() {
    let dir = tempfile::tempdir().unwrap();
    let agent = outrider_agent::start(test_config(dir.path()))
        .await
        .unwrap();
    let mut c = client(agent.grpc_addr()).await;
    c.append(append_req(
        "a",
        any(),
        vec![event("A0", "{}"), event("A1", "{}")],
    ))
    .await
    .unwrap();
    c.append(append_req("b", any(), vec![event("B0", "{}")]))
        .await
        .unwrap();

    let mut all = c
        .subscribe(SubscribeRequest {
            from_position: 1,
            stream: String::new(),
            event_pattern: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut only_b = c
        .subscribe(SubscribeRequest {
            from_position: 0,
            stream: "b".into(),
            event_pattern: String::new(),
        })
        .await
        .unwrap()
        .into_inner();

    // History first, then exactly one caught_up marker.
    let mut history = Vec::new();
    loop {
        let m = next_message(&mut all).await.expect("stream ended early");
        history.extend(m.events.iter().map(|e| e.detail_type.clone()));
        if m.caught_up {
            break;
        }
    }
    assert_eq!(history, ["A1", "B0"]);
    let mut b_history = Vec::new();
    loop {
        let m = next_message(&mut only_b).await.expect("stream ended early");
        b_history.extend(m.events.iter().map(|e| e.detail_type.clone()));
        if m.caught_up {
            break;
        }
    }
    assert_eq!(b_history, ["B0"]);

    // Live events after the catch-up.
    c.append(append_req("a", any(), vec![event("A2", "{}")]))
        .await
        .unwrap();
    c.append(append_req("b", any(), vec![event("B1", "{}")]))
        .await
        .unwrap();
    let mut live = Vec::new();
    while live.len() < 2 {
        let m = next_message(&mut all).await.expect("stream ended early");
        assert!(!m.caught_up, "caught_up is sent once");
        live.extend(m.events.iter().map(|e| (e.detail_type.clone(), e.position)));
    }
    assert_eq!(live, [("A2".to_string(), 3), ("B1".to_string(), 4)]);
    let m = next_message(&mut only_b).await.expect("stream ended early");
    let b_live: Vec<_> = m.events.iter().map(|e| e.detail_type.as_str()).collect();
    assert_eq!(b_live, ["B1"]);

    // Shutting down ends open subscriptions instead of waiting for them.
    agent.shutdown().await.unwrap();
    let end = tokio::time::timeout(PATIENCE, all.message())
        .await
        .expect("subscription not ended by shutdown");
    assert!(!matches!(end, Ok(Some(_))), "{end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_appends() {
    let dir = tempfile::tempdir().unwrap();
    let agent = outrider_agent::start(test_config(dir.path()))
        .await
        .unwrap();
    let mut c = client(agent.grpc_addr()).await;
    for i in 0..3 {
        let events = (0..2).map(|_| event("E", r#"{"k":1}"#)).collect();
        c.append(append_req(&format!("s-{i}"), any(), events))
            .await
            .unwrap();
    }
    let e = c
        .append(append_req(
            "s-0",
            expected(Kind::NoStream(Empty {})),
            vec![event("E", "{}")],
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);

    let (code, body) = http_get(agent.metrics_addr(), "/healthz").await.unwrap();
    assert_eq!((code, body.as_str()), (200, "ok"));
    let (code, body) = http_get(agent.metrics_addr(), "/metrics").await.unwrap();
    assert_eq!(code, 200);
    let m = Scrape::parse(&body);

    let families = [
        ("outrider_log_appends_total", "counter"),
        ("outrider_log_append_errors_total", "counter"),
        ("outrider_log_events_appended_total", "counter"),
        ("outrider_log_bytes_appended_total", "counter"),
        ("outrider_log_duplicate_appends_total", "counter"),
        ("outrider_log_version_conflicts_total", "counter"),
        ("outrider_log_commit_groups_total", "counter"),
        ("outrider_log_fsyncs_total", "counter"),
        ("outrider_log_fsync_seconds", "histogram"),
        ("outrider_log_head_position", "gauge"),
        ("outrider_log_durable_position", "gauge"),
        ("outrider_log_reclaimed_events_total", "counter"),
        ("outrider_outbox_pending_events", "gauge"),
        ("outrider_outbox_pending_bytes", "gauge"),
        ("outrider_outbox_dropped_events_total", "counter"),
        ("outrider_outbox_dropped_bytes_total", "counter"),
        ("outrider_outbox_rejected_events_total", "counter"),
        ("outrider_process_resident_memory_bytes", "gauge"),
        ("outrider_build_info", "gauge"),
    ];
    for (name, kind) in families {
        assert_eq!(
            m.types.get(name).map(String::as_str),
            Some(kind),
            "# TYPE of {name}"
        );
        assert!(m.helps.contains_key(name), "# HELP of {name}");
    }

    assert_eq!(m.get("outrider_log_appends_total"), 3.0);
    assert_eq!(m.get("outrider_log_events_appended_total"), 6.0);
    assert!(m.get("outrider_log_bytes_appended_total") >= 6.0 * 7.0);
    assert_eq!(m.get("outrider_log_append_errors_total"), 1.0);
    assert_eq!(m.get("outrider_log_version_conflicts_total"), 1.0);
    assert_eq!(m.get("outrider_log_head_position"), 6.0);
    assert_eq!(m.get("outrider_log_durable_position"), 6.0);
    let groups = m.get("outrider_log_commit_groups_total");
    assert!((1.0..=3.0).contains(&groups), "{groups}");

    // Sync durability: every commit group was fsynced, and the histogram saw each fsync.
    let fsyncs = m.get("outrider_log_fsyncs_total");
    assert!(fsyncs >= groups, "{fsyncs} fsyncs for {groups} groups");
    assert_eq!(m.get("outrider_log_fsync_seconds_count"), fsyncs);
    assert_eq!(
        m.get("outrider_log_fsync_seconds_bucket{le=\"+Inf\"}"),
        fsyncs
    );
    assert!(m.get("outrider_log_fsync_seconds_sum") > 0.0);
    let mut previous = 0.0;
    for bound in outrider_runtime::metrics::FSYNC_BUCKETS {
        let v = m.get(&format!(
            "outrider_log_fsync_seconds_bucket{{le=\"{bound}\"}}"
        ));
        assert!(v >= previous && v <= fsyncs, "buckets are cumulative");
        previous = v;
    }

    assert_eq!(
        m.get("outrider_outbox_pending_events{class=\"normal\"}"),
        0.0
    );
    assert_eq!(
        m.get("outrider_outbox_dropped_events_total{class=\"normal\",reason=\"full\"}"),
        0.0
    );
    assert_eq!(
        m.get("outrider_outbox_dropped_bytes_total{class=\"normal\",reason=\"ttl\"}"),
        0.0
    );
    assert_eq!(
        m.get("outrider_outbox_rejected_events_total{class=\"normal\"}"),
        0.0
    );
    assert!(m.get("outrider_process_resident_memory_bytes") > 1e6);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        m.get(&format!("outrider_build_info{{version=\"{version}\"}}")),
        1.0
    );

    let (code, _) = http_get(agent.metrics_addr(), "/nope").await.unwrap();
    assert_eq!(code, 404);
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_figures_reach_metrics_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg = outrider_agent::AgentConfig::parse(
        r#"
[outbox]
default_class = "normal"
destinations = ["cloud"]
[[outbox.classes]]
name = "critical"
max_events = 2
[[outbox.classes]]
name = "normal"
"#,
        Vec::new(),
    )
    .map(|mut c| {
        c.node_id = cfg.node_id.clone();
        c.data_dir = cfg.data_dir.clone();
        c.api = cfg.api.clone();
        c
    })
    .unwrap();
    let agent = outrider_agent::start(cfg).await.unwrap();
    let mut c = client(agent.grpc_addr()).await;
    let mut critical = append_req("s", any(), vec![event("E", "{}"), event("E", "{}")]);
    critical.priority = "critical".into();
    c.append(critical.clone()).await.unwrap();
    let e = c.append(critical).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("critical"), "{}", e.message());
    c.append(append_req("s", any(), vec![event("E", "{}")]))
        .await
        .unwrap();
    agent.log().ack_async("cloud", "normal", 2).await.unwrap();

    let status = c.status(StatusRequest {}).await.unwrap().into_inner();
    let pending: Vec<_> = status
        .classes
        .iter()
        .map(|c| (c.name.as_str(), c.pending_events, c.rejected_events))
        .collect();
    assert_eq!(pending, [("critical", 2, 2), ("normal", 0, 0)]);
    assert_eq!(status.destinations.len(), 1);
    assert_eq!(status.destinations[0].name, "cloud");
    assert_eq!(status.destinations[0].acked.get("normal"), Some(&2));
    assert_eq!(status.destinations[0].acked.get("critical"), None);

    let (_, body) = http_get(agent.metrics_addr(), "/metrics").await.unwrap();
    let m = Scrape::parse(&body);
    assert_eq!(
        m.get("outrider_outbox_pending_events{class=\"critical\"}"),
        2.0
    );
    assert!(m.get("outrider_outbox_pending_bytes{class=\"critical\"}") > 0.0);
    assert_eq!(
        m.get("outrider_outbox_pending_events{class=\"normal\"}"),
        0.0
    );
    assert_eq!(
        m.get("outrider_outbox_rejected_events_total{class=\"critical\"}"),
        2.0
    );
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_a_restart_and_busy_ports_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let agent = outrider_agent::start(test_config(dir.path()))
        .await
        .unwrap();
    let mut c = client(agent.grpc_addr()).await;
    c.append(append_req("keep", any(), vec![event("E", r#"{"v":42}"#)]))
        .await
        .unwrap();

    // A second agent on the same gRPC port fails, naming the address (before touching data).
    let other_dir = tempfile::tempdir().unwrap();
    let mut clash = test_config(other_dir.path());
    clash.api.listen = agent.grpc_addr();
    let e = outrider_agent::start(clash).await.unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains(&agent.grpc_addr().to_string()), "{msg}");
    assert!(msg.contains("gRPC"), "{msg}");

    agent.shutdown().await.unwrap();

    let agent = outrider_agent::start(test_config(dir.path()))
        .await
        .unwrap();
    let mut c = client(agent.grpc_addr()).await;
    let page = c
        .read_stream(ReadStreamRequest {
            stream: "keep".into(),
            from_version: None,
            direction: Direction::Forwards as i32,
            max_count: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.events.len(), 1);
    assert_eq!(page.events[0].detail, r#"{"v":42}"#);
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_filters_with_an_event_pattern_and_refuses_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let agent = outrider_agent::start(test_config(dir.path()))
        .await
        .unwrap();
    let mut c = client(agent.grpc_addr()).await;
    c.append(append_req(
        "rides",
        any(),
        vec![
            event("RideCompleted", r#"{"fare": 12}"#),
            event("RideCompleted", r#"{"fare": 3}"#),
            event("RideCancelled", r#"{"fare": 40}"#),
            event("RideCompleted", r#"{"fare": 99}"#),
        ],
    ))
    .await
    .unwrap();
    let mut sub = c
        .subscribe(SubscribeRequest {
            from_position: 0,
            stream: String::new(),
            event_pattern: r#"{"detail-type": ["RideCompleted"], "detail": {"fare": [{"numeric": [">", 10]}]}}"#.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    loop {
        let m = next_message(&mut sub).await.expect("stream ended early");
        got.extend(m.events.iter().map(|e| e.detail.clone()));
        if m.caught_up {
            break;
        }
    }
    assert_eq!(got, [r#"{"fare": 12}"#, r#"{"fare": 99}"#]);
    // Live events are filtered too.
    c.append(append_req(
        "rides",
        any(),
        vec![
            event("RideCompleted", r#"{"fare": 1}"#),
            event("RideCompleted", r#"{"fare": 11}"#),
        ],
    ))
    .await
    .unwrap();
    let m = next_message(&mut sub).await.expect("live event");
    assert_eq!(m.events.len(), 1);
    assert_eq!(m.events[0].detail, r#"{"fare": 11}"#);

    let err = c
        .subscribe(SubscribeRequest {
            from_position: 0,
            stream: String::new(),
            event_pattern: r#"{"detail": {"fare": [{"numeric": [">"]}]}}"#.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("InvalidEventPatternException"),
        "{}",
        err.message()
    );
    agent.shutdown().await.unwrap();
}
