//! The HTTP API over real loopback sockets (axum server, hyper client) with a bus engine on a
//! real sled store: the AWS JSON 1.1 protocol (`X-Amz-Target: AWSEvents.<Action>`), EventBridge's
//! request and answer shapes, per-entry PutEvents errors, the limits, and AWS-shaped errors.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use outrider_bus::api::http;
use outrider_bus::bus::{BusConfig, BusEngine, TargetFactory};
use outrider_bus::model::{Destination, RuleDef, TargetDef};
use outrider_bus::{names, DynTarget, Result};
use outrider_runtime::SystemClock;
use outrider_store::{Direction, EventStore, SledConfig, SledStore, StreamFrom};
use serde_json::{json, Value};
use tokio::sync::oneshot;

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

struct Server {
    addr: SocketAddr,
    engine: BusEngine,
    store: Arc<dyn EventStore>,
    _stop: oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> =
        Arc::new(SledStore::open(SledConfig::new(dir.path())).unwrap());
    let engine = BusEngine::start(
        store.clone(),
        BusConfig {
            region: "eu-west-1".into(),
            account: "123456789012".into(),
            ..BusConfig::default()
        },
        Arc::new(NoPush),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let e = engine.clone();
    tokio::spawn(async move {
        http::serve(listener, e, async {
            let _ = stopped.await;
        })
        .await
        .unwrap()
    });
    Server {
        addr,
        engine,
        store,
        _stop: stop,
        _dir: dir,
    }
}

struct Answer {
    status: u16,
    error_type: Option<String>,
    content_type: Option<String>,
    body: Value,
}

async fn raw(addr: SocketAddr, target: Option<&str>, content_type: &str, body: Vec<u8>) -> Answer {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method("POST")
        .uri("/")
        .header("host", "events.localhost")
        .header("content-type", content_type);
    if let Some(t) = target {
        req = req.header("x-amz-target", t);
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let error_type = header("x-amzn-errortype");
    let content_type = header("content-type");
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("non-JSON body {:?}: {e}", String::from_utf8_lossy(&bytes)));
    Answer {
        status,
        error_type,
        content_type,
        body,
    }
}

async fn call(s: &Server, action: &str, body: Value) -> Answer {
    raw(
        s.addr,
        Some(&format!("AWSEvents.{action}")),
        "application/x-amz-json-1.1",
        body.to_string().into_bytes(),
    )
    .await
}

/// A successful call's body.
async fn ok(s: &Server, action: &str, body: Value) -> Value {
    let a = call(s, action, body).await;
    assert_eq!(a.status, 200, "{action}: {}", a.body);
    assert_eq!(
        a.content_type.as_deref(),
        Some("application/x-amz-json-1.1")
    );
    a.body
}

/// A failed call: its status and `__type`, with a message and the `x-amzn-ErrorType` header.
fn assert_error(a: &Answer, status: u16, kind: &str) {
    assert_eq!(a.status, status, "{}", a.body);
    assert_eq!(a.body["__type"], json!(kind), "{}", a.body);
    assert!(
        a.body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        a.body
    );
    assert_eq!(a.error_type.as_deref(), Some(kind));
    assert_eq!(a.body.as_object().map(|o| o.len()), Some(2), "{}", a.body);
}

fn entry(source: &str, detail: Value) -> Value {
    json!({"Source": source, "DetailType": "ride", "Detail": detail.to_string()})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_events_answers_per_entry_in_eventbridge_s_shape() {
    let s = start().await;
    let big = json!({"Source": "s", "DetailType": "t", "Detail": json!({"x": "y".repeat(256 * 1024)}).to_string()});
    let body = ok(
        &s,
        "PutEvents",
        json!({"Entries": [
            entry("s", json!({"n": 1})),
            {"Source": "s", "DetailType": "t", "Detail": "not json"},
            {"Source": "s", "DetailType": "t", "Detail": "[1, 2]"},
            {"DetailType": "t", "Detail": "{}"},
            big,
            {"Source": "s", "DetailType": "t", "Detail": "{}", "EventBusName": "nope"},
            {"Source": "s", "DetailType": "t", "Detail": "{}", "Unknown": 1},
            {"Source": "s", "DetailType": "t", "Detail": "{\"n\":2}", "Time": 1_700_000_000,
             "Resources": ["arn:aws:x"], "EventBusName": "arn:aws:events:eu-west-1:123456789012:event-bus/default"},
        ]}),
    )
    .await;
    assert_eq!(body["FailedEntryCount"], json!(6), "{body}");
    let entries = body["Entries"].as_array().unwrap();
    assert_eq!(entries.len(), 8);
    let code = |i: usize| {
        entries[i]["ErrorCode"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(entries[0]["EventId"].is_string());
    assert_eq!(entries[0].as_object().unwrap().len(), 1, "only EventId");
    assert_eq!(code(1), "MalformedDetail");
    assert_eq!(code(2), "MalformedDetail");
    assert_eq!(code(3), "InvalidArgument");
    assert_eq!(code(4), "InvalidArgument");
    assert!(entries[4]["ErrorMessage"]
        .as_str()
        .unwrap()
        .contains("262144"));
    assert_eq!(code(5), "ResourceNotFoundException");
    assert_eq!(code(6), "InvalidArgument");
    assert!(entries[7]["EventId"].is_string());
    for e in &entries[1..7] {
        assert_eq!(
            e.as_object().unwrap().len(),
            2,
            "ErrorCode and ErrorMessage: {e}"
        );
    }
    // The accepted ones are in the bus's stream, as sent.
    let stored = s
        .store
        .read_stream(
            &names::bus_stream("default"),
            StreamFrom::Start,
            Direction::Forwards,
            100,
        )
        .await
        .unwrap()
        .events;
    let ids: Vec<&str> = stored.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(
        ids,
        vec![
            entries[0]["EventId"].as_str().unwrap(),
            entries[7]["EventId"].as_str().unwrap()
        ]
    );
    assert_eq!(stored[1].detail, "{\"n\":2}");
    assert_eq!(stored[1].time_seconds, 1_700_000_000);
    assert_eq!(stored[1].resources, vec!["arn:aws:x".to_string()]);
    assert_eq!(
        (stored[1].account.as_str(), stored[1].region.as_str()),
        ("123456789012", "eu-west-1")
    );

    // More than ten entries, none, or no Entries: the whole request is refused.
    let eleven: Vec<Value> = (0..11).map(|n| entry("s", json!({ "n": n }))).collect();
    assert_error(
        &call(&s, "PutEvents", json!({ "Entries": eleven })).await,
        400,
        "ValidationException",
    );
    assert_error(
        &call(&s, "PutEvents", json!({ "Entries": [] })).await,
        400,
        "ValidationException",
    );
    assert_error(
        &call(&s, "PutEvents", json!({})).await,
        400,
        "ValidationException",
    );
    assert_error(
        &call(&s, "PutEvents", json!({"Entries": "x"})).await,
        400,
        "SerializationException",
    );
    let stored = s
        .store
        .read_stream(
            &names::bus_stream("default"),
            StreamFrom::Start,
            Direction::Forwards,
            100,
        )
        .await
        .unwrap()
        .events;
    assert_eq!(stored.len(), 2, "refused requests write nothing");
    s.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_look_like_aws_s() {
    let s = start().await;
    let unknown = call(&s, "Frobnicate", json!({})).await;
    assert_error(&unknown, 400, "UnknownOperationException");
    assert!(unknown.body["message"]
        .as_str()
        .unwrap()
        .contains("Frobnicate"));
    let no_target = raw(s.addr, None, "application/x-amz-json-1.1", b"{}".to_vec()).await;
    assert_error(&no_target, 400, "UnknownOperationException");
    let other_service = raw(
        s.addr,
        Some("Kinesis_20131202.PutRecord"),
        "application/x-amz-json-1.1",
        b"{}".to_vec(),
    )
    .await;
    assert_error(&other_service, 400, "UnknownOperationException");
    let not_json = raw(
        s.addr,
        Some("AWSEvents.ListRules"),
        "application/x-amz-json-1.1",
        b"{nope".to_vec(),
    )
    .await;
    assert_error(&not_json, 400, "SerializationException");
    let array = raw(
        s.addr,
        Some("AWSEvents.ListRules"),
        "application/x-amz-json-1.1",
        b"[]".to_vec(),
    )
    .await;
    assert_error(&array, 400, "SerializationException");
    let xml = raw(
        s.addr,
        Some("AWSEvents.ListRules"),
        "text/xml",
        b"{}".to_vec(),
    )
    .await;
    assert_error(&xml, 415, "UnsupportedMediaTypeException");
    // An empty body is `{}`; plain JSON is accepted too.
    let empty = raw(
        s.addr,
        Some("AWSEvents.ListEventBuses"),
        "application/x-amz-json-1.1",
        Vec::new(),
    )
    .await;
    assert_eq!(empty.status, 200, "{}", empty.body);
    let plain = raw(
        s.addr,
        Some("AWSEvents.ListEventBuses"),
        "application/json",
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(plain.status, 200, "{}", plain.body);
    // Over the body limit: 413 with a JSON error, nothing written.
    let huge = vec![b' '; http::MAX_BODY_BYTES + 1];
    let too_large = raw(
        s.addr,
        Some("AWSEvents.PutEvents"),
        "application/x-amz-json-1.1",
        huge,
    )
    .await;
    assert_error(&too_large, 413, "RequestEntityTooLargeException");
    // Wrong member types.
    assert_error(
        &call(&s, "CreateEventBus", json!({"Name": 5})).await,
        400,
        "SerializationException",
    );
    assert_error(
        &call(&s, "CreateEventBus", json!({})).await,
        400,
        "ValidationException",
    );
    s.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buses_rules_and_targets_in_eventbridge_s_shapes() {
    let s = start().await;
    // Buses.
    let b = ok(&s, "CreateEventBus", json!({"Name": "orders"})).await;
    assert_eq!(
        b,
        json!({"EventBusArn": "arn:aws:events:eu-west-1:123456789012:event-bus/orders"})
    );
    assert_error(
        &call(&s, "CreateEventBus", json!({"Name": "orders"})).await,
        400,
        "ResourceAlreadyExistsException",
    );
    assert_error(
        &call(&s, "CreateEventBus", json!({"Name": "bad name"})).await,
        400,
        "ValidationException",
    );
    let l = ok(&s, "ListEventBuses", json!({})).await;
    let names_of = |v: &Value, key: &str| -> Vec<String> {
        v[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["Name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names_of(&l, "EventBuses"), vec!["default", "orders"]);
    let p = ok(&s, "ListEventBuses", json!({"Limit": 1})).await;
    assert_eq!(names_of(&p, "EventBuses"), vec!["default"]);
    let p2 = ok(
        &s,
        "ListEventBuses",
        json!({"Limit": 1, "NextToken": p["NextToken"]}),
    )
    .await;
    assert_eq!(names_of(&p2, "EventBuses"), vec!["orders"]);
    assert!(p2.get("NextToken").is_none());
    assert_eq!(
        ok(&s, "DescribeEventBus", json!({"Name": "orders"})).await["Arn"],
        b["EventBusArn"]
    );

    // Rules.
    let pattern = json!({"source": ["shop"]}).to_string();
    let r = ok(&s, "PutRule", json!({"Name": "paid", "EventBusName": "orders", "EventPattern": pattern, "Description": "d1"})).await;
    assert_eq!(
        r,
        json!({"RuleArn": "arn:aws:events:eu-west-1:123456789012:rule/orders/paid"})
    );
    assert_error(
        &call(
            &s,
            "PutRule",
            json!({"Name": "x", "EventPattern": "{\"source\": \"notalist\"}"}),
        )
        .await,
        400,
        "InvalidEventPatternException",
    );
    assert_error(
        &call(
            &s,
            "PutRule",
            json!({"Name": "x", "EventBusName": "nope", "EventPattern": pattern}),
        )
        .await,
        400,
        "ResourceNotFoundException",
    );
    assert_error(
        &call(
            &s,
            "PutRule",
            json!({"Name": "x", "EventPattern": pattern, "State": "MAYBE"}),
        )
        .await,
        400,
        "ValidationException",
    );

    // Targets: every ARN kind, our own destination object, and one we cannot map.
    let t = ok(&s, "PutTargets", json!({"Rule": "paid", "EventBusName": "orders", "Targets": [
        {"Id": "sub", "Arn": "arn:outrider:subscriber", "InputPath": "$.detail"},
        {"Id": "kin", "Arn": "arn:aws:kinesis:eu-west-1:123456789012:stream/clicks",
         "KinesisParameters": {"PartitionKeyPath": "$.detail.user"},
         "RetryPolicy": {"MaximumRetryAttempts": 3, "MaximumEventAgeInSeconds": 600},
         "DeadLetterConfig": {"Arn": "arn:aws:sqs:eu-west-1:123456789012:dlq"}},
        {"Id": "fwd", "Arn": "arn:aws:events:eu-west-1:123456789012:event-bus/default",
         "InputTransformer": {"InputPathsMap": {"s": "$.source"}, "InputTemplate": "{\"src\": <s>}"}},
        {"Id": "saga", "Arn": "arn:aws:states:eu-west-1:123456789012:stateMachine:checkout", "Input": "{\"k\":1}"},
        {"Id": "bad", "Arn": "arn:aws:lambda:eu-west-1:123456789012:function:f"},
    ]})).await;
    assert_eq!(t["FailedEntryCount"], json!(1), "{t}");
    assert_eq!(t["FailedEntries"][0]["TargetId"], json!("bad"));
    assert_eq!(
        t["FailedEntries"][0]["ErrorCode"],
        json!("ValidationException")
    );
    let hook = ok(&s, "PutTargets", json!({"Rule": "paid", "EventBusName": "orders", "Targets": [
        {"Id": "hook", "Arn": "arn:outrider:webhook",
         "OutriderDestination": {"Type": "Webhook", "Url": "https://example.invalid/h", "SecretEnv": "HOOK_SECRET"}},
    ]})).await;
    assert_eq!(hook, json!({"FailedEntryCount": 0, "FailedEntries": []}));
    let defs = s.engine.definitions();
    let rule = &defs.rule("orders", "paid").unwrap().def;
    let dest = |id: &str| {
        rule.targets
            .iter()
            .find(|t| t.id == id)
            .unwrap()
            .destination
            .clone()
    };
    assert_eq!(dest("sub"), Destination::Subscriber);
    assert_eq!(
        dest("kin"),
        Destination::Kinesis {
            stream_name: "clicks".into(),
            partition_key_path: Some("$.detail.user".into())
        }
    );
    assert_eq!(
        dest("fwd"),
        Destination::Bus {
            event_bus_name: "default".into()
        }
    );
    assert_eq!(
        dest("saga"),
        Destination::Saga {
            state_machine: "checkout".into()
        }
    );
    assert_eq!(
        dest("hook"),
        Destination::Webhook {
            url: "https://example.invalid/h".into(),
            secret_env: Some("HOOK_SECRET".into()),
            timeout_ms: None
        }
    );
    let kin = rule.targets.iter().find(|t| t.id == "kin").unwrap();
    assert_eq!(
        (
            kin.retry_policy.maximum_retry_attempts,
            kin.retry_policy.maximum_event_age_in_seconds
        ),
        (3, 600)
    );

    let lt = ok(
        &s,
        "ListTargetsByRule",
        json!({"Rule": "paid", "EventBusName": "orders"}),
    )
    .await;
    let arns: Vec<(String, String)> = lt["Targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["Id"].as_str().unwrap().to_string(),
                t["Arn"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        arns,
        vec![
            ("sub".into(), "arn:outrider:subscriber".into()),
            (
                "kin".into(),
                "arn:aws:kinesis:eu-west-1:123456789012:stream/clicks".into()
            ),
            (
                "fwd".into(),
                "arn:aws:events:eu-west-1:123456789012:event-bus/default".into()
            ),
            (
                "saga".into(),
                "arn:aws:states:eu-west-1:123456789012:stateMachine:checkout".into()
            ),
            ("hook".into(), "arn:outrider:webhook".into()),
        ]
    );
    let fwd = &lt["Targets"][2];
    assert_eq!(
        fwd["InputTransformer"]["InputPathsMap"],
        json!({"s": "$.source"})
    );
    assert_eq!(
        lt["Targets"][1]["KinesisParameters"],
        json!({"PartitionKeyPath": "$.detail.user"})
    );
    assert_eq!(lt["Targets"][0]["InputPath"], json!("$.detail"));

    // A sixth target is over the limit; a bad input transformer is a validation error.
    let six = call(
        &s,
        "PutTargets",
        json!({"Rule": "paid", "EventBusName": "orders", "Targets": [
        {"Id": "six", "Arn": "arn:outrider:subscriber"}]}),
    )
    .await;
    assert_error(&six, 400, "LimitExceededException");
    let bad = call(
        &s,
        "PutTargets",
        json!({"Rule": "paid", "EventBusName": "orders", "Targets": [
        {"Id": "sub", "Arn": "arn:outrider:subscriber", "Input": "{}", "InputPath": "$.a"}]}),
    )
    .await;
    assert_error(&bad, 400, "ValidationException");
    assert_error(
        &call(
            &s,
            "PutTargets",
            json!({"Rule": "nope", "Targets": [{"Id": "a", "Arn": "arn:outrider:subscriber"}]}),
        )
        .await,
        400,
        "ResourceNotFoundException",
    );

    // PutRule again keeps the targets.
    ok(&s, "PutRule", json!({"Name": "paid", "EventBusName": "orders", "EventPattern": pattern, "Description": "d2", "State": "DISABLED"})).await;
    let d = ok(
        &s,
        "DescribeRule",
        json!({"Name": "paid", "EventBusName": "orders"}),
    )
    .await;
    assert_eq!(d["Description"], json!("d2"));
    assert_eq!(d["State"], json!("DISABLED"));
    assert_eq!(d["EventPattern"], json!(pattern));
    assert_eq!(d["Arn"], r["RuleArn"]);
    assert_eq!(d["EventBusName"], json!("orders"));
    assert_eq!(
        s.engine
            .definitions()
            .rule("orders", "paid")
            .unwrap()
            .def
            .targets
            .len(),
        5
    );

    let lr = ok(
        &s,
        "ListRules",
        json!({"EventBusName": "orders", "NamePrefix": "pa"}),
    )
    .await;
    assert_eq!(names_of(&lr, "Rules"), vec!["paid"]);
    assert_eq!(
        ok(
            &s,
            "ListRules",
            json!({"EventBusName": "orders", "NamePrefix": "x"})
        )
        .await,
        json!({"Rules": []})
    );
    assert_error(
        &call(&s, "ListRules", json!({"EventBusName": "nope"})).await,
        400,
        "ResourceNotFoundException",
    );

    // Deleting: targets first, as EventBridge asks; then the rule; then the bus.
    assert_error(
        &call(
            &s,
            "DeleteRule",
            json!({"Name": "paid", "EventBusName": "orders"}),
        )
        .await,
        400,
        "ValidationException",
    );
    assert_error(
        &call(&s, "DeleteEventBus", json!({"Name": "orders"})).await,
        400,
        "ValidationException",
    );
    let rm = ok(&s, "RemoveTargets", json!({"Rule": "paid", "EventBusName": "orders", "Ids": ["sub", "kin", "fwd", "saga", "hook"]})).await;
    assert_eq!(rm, json!({"FailedEntryCount": 0, "FailedEntries": []}));
    assert_eq!(
        ok(
            &s,
            "ListTargetsByRule",
            json!({"Rule": "paid", "EventBusName": "orders"})
        )
        .await,
        json!({"Targets": []})
    );
    assert_eq!(
        ok(
            &s,
            "DeleteRule",
            json!({"Name": "paid", "EventBusName": "orders"})
        )
        .await,
        json!({})
    );
    assert_error(
        &call(
            &s,
            "DescribeRule",
            json!({"Name": "paid", "EventBusName": "orders"}),
        )
        .await,
        400,
        "ResourceNotFoundException",
    );
    assert_eq!(
        ok(&s, "DeleteEventBus", json!({"Name": "orders"})).await,
        json!({})
    );
    assert_error(
        &call(&s, "DescribeEventBus", json!({"Name": "orders"})).await,
        400,
        "ResourceNotFoundException",
    );
    s.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_event_pattern_archives_and_replays() {
    let s = start().await;
    let event = json!({
        "id": "1", "account": "123456789012", "source": "shop", "time": "2024-01-01T00:00:00Z",
        "region": "eu-west-1", "resources": [], "detail-type": "paid", "detail": {"amount": 12}
    })
    .to_string();
    let yes =
        json!({"source": ["shop"], "detail": {"amount": [{"numeric": [">", 10]}]}}).to_string();
    let no = json!({"source": ["other"]}).to_string();
    assert_eq!(
        ok(
            &s,
            "TestEventPattern",
            json!({"EventPattern": yes, "Event": event})
        )
        .await,
        json!({"Result": true})
    );
    assert_eq!(
        ok(
            &s,
            "TestEventPattern",
            json!({"EventPattern": no, "Event": event})
        )
        .await,
        json!({"Result": false})
    );
    assert_error(
        &call(
            &s,
            "TestEventPattern",
            json!({"EventPattern": "{\"a\": 1}", "Event": event}),
        )
        .await,
        400,
        "InvalidEventPatternException",
    );
    assert_error(
        &call(
            &s,
            "TestEventPattern",
            json!({"EventPattern": yes, "Event": "nope"}),
        )
        .await,
        400,
        "ValidationException",
    );

    // Archive every event of the default bus, put two, replay them.
    let a = ok(&s, "CreateArchive", json!({"ArchiveName": "all", "EventSourceArn": "arn:aws:events:eu-west-1:123456789012:event-bus/default"})).await;
    assert_eq!(
        a["ArchiveArn"],
        json!("arn:aws:events:eu-west-1:123456789012:archive/all")
    );
    assert_eq!(a["State"], json!("ENABLED"));
    assert!(a["CreationTime"].is_number());
    assert_error(
        &call(
            &s,
            "CreateArchive",
            json!({"ArchiveName": "all", "EventSourceArn": "default"}),
        )
        .await,
        400,
        "ResourceAlreadyExistsException",
    );
    let put = ok(
        &s,
        "PutEvents",
        json!({"Entries": [
            {"Source": "shop", "DetailType": "paid", "Detail": "{}", "Time": 1_700_000_000},
            {"Source": "shop", "DetailType": "paid", "Detail": "{}", "Time": 1_700_000_001},
        ]}),
    )
    .await;
    assert_eq!(put["FailedEntryCount"], json!(0));
    let archive = names::archive_stream("default", "all");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while s.store.stream_version(&archive).await.unwrap() != Some(1) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "archive never filled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = ok(&s, "StartReplay", json!({
        "ReplayName": "r1",
        "EventSourceArn": a["ArchiveArn"],
        "EventStartTime": 1_699_999_999,
        "EventEndTime": 1_700_000_002.5,
        "Destination": {"Arn": "arn:aws:events:eu-west-1:123456789012:event-bus/default", "FilterArns": []},
    })).await;
    assert_eq!(
        r["ReplayArn"],
        json!("arn:aws:events:eu-west-1:123456789012:replay/r1")
    );
    assert_eq!(r["State"], json!("STARTING"));
    assert_error(&call(&s, "StartReplay", json!({
        "ReplayName": "r2", "EventSourceArn": a["ArchiveArn"], "EventStartTime": 5, "EventEndTime": 4,
        "Destination": {"Arn": "default"}})).await, 400, "ValidationException");
    assert_error(
        &call(
            &s,
            "StartReplay",
            json!({
        "ReplayName": "r3", "EventSourceArn": "arn:aws:events:eu-west-1:123456789012:archive/nope",
        "EventStartTime": 1, "EventEndTime": 4, "Destination": {"Arn": "default"}}),
        )
        .await,
        400,
        "ResourceNotFoundException",
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let done = loop {
        let d = ok(&s, "DescribeReplay", json!({"ReplayName": "r1"})).await;
        if d["State"] == json!("COMPLETED") {
            break d;
        }
        assert!(
            ["STARTING", "RUNNING"].contains(&d["State"].as_str().unwrap()),
            "{d}"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "replay never completed: {d}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(done["ReplayName"], json!("r1"));
    assert_eq!(done["EventSourceArn"], a["ArchiveArn"]);
    assert_eq!(done["EventStartTime"], json!(1_699_999_999.0));
    assert_eq!(done["EventEndTime"], json!(1_700_000_002.5));
    assert_eq!(
        done["Destination"]["Arn"],
        json!("arn:aws:events:eu-west-1:123456789012:event-bus/default")
    );
    assert_eq!(done["Outrider"]["Replayed"], json!(2));
    assert_error(
        &call(&s, "CancelReplay", json!({"ReplayName": "r1"})).await,
        400,
        "ValidationException",
    );
    assert_error(
        &call(&s, "CancelReplay", json!({"ReplayName": "nope"})).await,
        400,
        "ResourceNotFoundException",
    );
    assert_error(
        &call(&s, "DescribeReplay", json!({"ReplayName": "nope"})).await,
        400,
        "ResourceNotFoundException",
    );
    assert_eq!(
        ok(&s, "DeleteArchive", json!({"ArchiveName": "all"})).await,
        json!({})
    );
    assert_error(
        &call(&s, "DeleteArchive", json!({"ArchiveName": "all"})).await,
        400,
        "ResourceNotFoundException",
    );
    s.engine.shutdown().await;
}

/// Runs the AWS CLI named by `OUTRIDER_TEST_AWS_CLI` against the server (`None` when it cannot
/// be started). Without the variable the test fails and says how to run it.
async fn aws(addr: SocketAddr, args: &[&str]) -> Option<(bool, Value, String)> {
    let program = match std::env::var("OUTRIDER_TEST_AWS_CLI") {
        Ok(p) if !p.trim().is_empty() => p,
        _ => panic!(
            "OUTRIDER_TEST_AWS_CLI is not set: run under `bash cloud/bus/scripts/with-moto.sh cargo test -p outrider-bus --test api_http` (it finds or installs the AWS CLI)"
        ),
    };
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .args([
            "--endpoint-url",
            &format!("http://{addr}"),
            "--region",
            "eu-west-1",
            "--output",
            "json",
        ])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_MAX_ATTEMPTS", "1");
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .ok()?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let value = if stdout.trim().is_empty() {
        json!({})
    } else {
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{stdout}: {e}"))
    };
    Some((
        out.status.success(),
        value,
        String::from_utf8_lossy(&out.stderr).to_string(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_cli_works_with_endpoint_url() {
    let s = start().await;
    let (ok_, v, err) = aws(s.addr, &["events", "create-event-bus", "--name", "cli"])
        .await
        .expect("the AWS CLI named by OUTRIDER_TEST_AWS_CLI could not be started");
    assert!(ok_, "{err}");
    assert_eq!(
        v["EventBusArn"],
        json!("arn:aws:events:eu-west-1:123456789012:event-bus/cli")
    );
    let pattern = json!({"source": ["cli"]}).to_string();
    let (ok_, v, err) = aws(
        s.addr,
        &[
            "events",
            "put-rule",
            "--name",
            "r",
            "--event-bus-name",
            "cli",
            "--event-pattern",
            &pattern,
        ],
    )
    .await
    .unwrap();
    assert!(ok_, "{err}");
    assert_eq!(
        v["RuleArn"],
        json!("arn:aws:events:eu-west-1:123456789012:rule/cli/r")
    );
    let (ok_, v, err) = aws(
        s.addr,
        &[
            "events",
            "put-targets",
            "--rule",
            "r",
            "--event-bus-name",
            "cli",
            "--targets",
            r#"[{"Id":"sub","Arn":"arn:outrider:subscriber","InputPath":"$.detail"}]"#,
        ],
    )
    .await
    .unwrap();
    assert!(ok_, "{err}");
    assert_eq!(v["FailedEntryCount"], json!(0));
    let entries = json!([
        {"Source": "cli", "DetailType": "t", "Detail": "{\"a\":1}", "EventBusName": "cli", "Time": "2024-01-01T00:00:00Z"},
        {"Source": "cli", "DetailType": "t", "Detail": "nope", "EventBusName": "cli"},
    ])
    .to_string();
    let (ok_, v, err) = aws(s.addr, &["events", "put-events", "--entries", &entries])
        .await
        .unwrap();
    assert!(ok_, "{err}");
    assert_eq!(v["FailedEntryCount"], json!(1), "{v}");
    assert!(v["Entries"][0]["EventId"].is_string(), "{v}");
    assert_eq!(
        v["Entries"][1]["ErrorCode"],
        json!("MalformedDetail"),
        "{v}"
    );
    let (ok_, v, err) = aws(s.addr, &["events", "list-rules", "--event-bus-name", "cli"])
        .await
        .unwrap();
    assert!(ok_, "{err}");
    assert_eq!(v["Rules"][0]["Name"], json!("r"));
    let (ok_, v, err) = aws(
        s.addr,
        &[
            "events",
            "list-targets-by-rule",
            "--rule",
            "r",
            "--event-bus-name",
            "cli",
        ],
    )
    .await
    .unwrap();
    assert!(ok_, "{err}");
    assert_eq!(v["Targets"][0]["Arn"], json!("arn:outrider:subscriber"));
    let event = json!({"id": "1", "account": "1", "source": "cli", "time": "2024-01-01T00:00:00Z", "region": "r", "resources": [], "detail-type": "t", "detail": {}}).to_string();
    let (ok_, v, err) = aws(
        s.addr,
        &[
            "events",
            "test-event-pattern",
            "--event-pattern",
            &pattern,
            "--event",
            &event,
        ],
    )
    .await
    .unwrap();
    assert!(ok_, "{err}");
    assert_eq!(v["Result"], json!(true));
    // An error reaches the CLI as the AWS exception.
    let (ok_, _, err) = aws(s.addr, &["events", "describe-rule", "--name", "nope"])
        .await
        .unwrap();
    assert!(!ok_);
    assert!(err.contains("ResourceNotFoundException"), "{err}");
    s.engine.shutdown().await;
}
