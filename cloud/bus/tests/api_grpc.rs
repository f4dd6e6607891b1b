//! The gRPC API over real loopback sockets (tonic server and client) with a bus engine on a
//! real sled store: PutEvents (limits and per-entry errors), Subscribe with consumer groups
//! (sharing, independent groups, a member that disconnects, the visibility timeout, a server
//! restart resuming from the group's checkpoint), typed errors, and the client's Deduper.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use outrider_bus::api::groups::{GroupSettings, Groups};
use outrider_bus::api::grpc;
use outrider_bus::bus::{BusConfig, BusEngine, PutOutcome, TargetFactory};
use outrider_bus::client::{BusClient, ClientError, Deduper, SubscribeOptions, Subscriber};
use outrider_bus::model::{Destination, RetryPolicy, RuleDef, RuleState, TargetDef};
use outrider_bus::{names, DynTarget, Result};
use outrider_proto::Event;
use outrider_runtime::SystemClock;
use outrider_store::{EventStore, SledConfig, SledStore};
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::oneshot;

/// Subscriber targets only: nothing is pushed.
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

const WAIT: Duration = Duration::from_secs(20);

struct Server {
    addr: SocketAddr,
    engine: BusEngine,
    groups: Groups,
    store: Arc<dyn EventStore>,
    stop: oneshot::Sender<()>,
    served: tokio::task::JoinHandle<()>,
}

async fn open(dir: &std::path::Path) -> Arc<dyn EventStore> {
    // A store closed a moment ago may still hold the directory's lock while its last handles
    // drop: retry until it opens.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match SledStore::open(SledConfig::new(dir)) {
            Ok(s) => return Arc::new(s),
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("store does not open: {e}"),
        }
    }
}

async fn start(dir: &std::path::Path, settings: GroupSettings) -> Server {
    let store = open(dir).await;
    let engine = BusEngine::start(
        store.clone(),
        BusConfig::default(),
        Arc::new(NoPush),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let groups = Groups::new(engine.clone(), settings);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let g = groups.clone();
    let served = tokio::spawn(async move {
        grpc::serve(listener, g, async {
            let _ = stopped.await;
        })
        .await
        .unwrap()
    });
    Server {
        addr,
        engine,
        groups,
        store,
        stop,
        served,
    }
}

impl Server {
    async fn client(&self) -> BusClient {
        BusClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    async fn shutdown(self) {
        self.groups.shutdown().await;
        let _ = self.stop.send(());
        self.served.await.unwrap();
        self.engine.shutdown().await;
    }
}

fn settings(visibility: Duration) -> GroupSettings {
    GroupSettings {
        visibility_timeout: visibility,
        ..GroupSettings::default()
    }
}

fn target(id: &str, destination: Destination) -> TargetDef {
    TargetDef {
        id: id.into(),
        destination,
        input: None,
        input_path: None,
        input_transformer: None,
        retry_policy: RetryPolicy::default(),
        dead_letter: true,
    }
}

async fn subscriber_rule(engine: &BusEngine) {
    engine
        .put_rule(RuleDef {
            name: "r".into(),
            event_bus_name: "default".into(),
            event_pattern: Some(json!({"source": ["s"]}).to_string()),
            schedule_expression: None,
            state: RuleState::Enabled,
            description: None,
            targets: vec![
                TargetDef {
                    input_path: Some("$.detail".into()),
                    ..target("sub", Destination::Subscriber)
                },
                target(
                    "hook",
                    Destination::Webhook {
                        url: "http://unused.invalid/".into(),
                        secret_env: None,
                        timeout_ms: None,
                    },
                ),
            ],
        })
        .await
        .unwrap();
}

fn entry(n: usize) -> Event {
    Event {
        source: "s".into(),
        detail_type: "t".into(),
        detail: json!({ "n": n }).to_string(),
        ..Event::default()
    }
}

async fn put(client: &mut BusClient, from: usize, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let all: Vec<usize> = (from..from + count).collect();
    for chunk in all.chunks(10) {
        let out = client
            .put_events(chunk.iter().map(|n| entry(*n)).collect())
            .await
            .unwrap();
        for o in out {
            match o {
                PutOutcome::Accepted { event_id } => ids.push(event_id),
                PutOutcome::Failed { code, message } => panic!("{code}: {message}"),
            }
        }
    }
    ids
}

fn opts(group: &str, consumer: &str, max_in_flight: u32) -> SubscribeOptions {
    SubscribeOptions {
        event_bus_name: String::new(),
        rule: "r".into(),
        target: "sub".into(),
        group: group.into(),
        consumer: consumer.into(),
        max_in_flight,
    }
}

/// The next delivery within the deadline.
async fn next(sub: &mut Subscriber) -> outrider_bus::client::SubscribedDelivery {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("timed out waiting for a delivery")
        .unwrap()
        .expect("the subscription ended")
}

#[derive(Default)]
struct Seen {
    by_member: Mutex<BTreeMap<String, Vec<(String, u32)>>>,
    changed: tokio::sync::Notify,
}

impl Seen {
    async fn wait_for(
        &self,
        what: &str,
        cond: impl Fn(&BTreeMap<String, Vec<(String, u32)>>) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = self.changed.notified();
            if cond(&self.by_member.lock()) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("timed out waiting for {what}: {:?}", self.by_member.lock());
            }
        }
    }
}

/// Consumes and acknowledges everything, recording (event id, attempt) per member name.
fn consume(mut sub: Subscriber, name: &str, seen: Arc<Seen>) -> tokio::task::JoinHandle<()> {
    let name = name.to_string();
    tokio::spawn(async move {
        while let Ok(Some(d)) = sub.next().await {
            assert_eq!(
                d.payload.as_deref().ok(),
                Some(d.event.detail.as_str()),
                "InputPath $.detail"
            );
            seen.by_member
                .lock()
                .entry(name.clone())
                .or_default()
                .push((d.event.id.clone(), d.attempt));
            seen.changed.notify_waiters();
            if sub.ack(d.position).await.is_err() {
                return;
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_a_group_share_the_stream_and_every_group_gets_everything() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), settings(Duration::from_secs(30))).await;
    subscriber_rule(&server.engine).await;
    let mut client = server.client().await;
    let a = client.subscribe_with(opts("g1", "a", 4)).await.unwrap();
    let b = client.subscribe_with(opts("g1", "b", 4)).await.unwrap();
    let c = client.subscribe_with(opts("g2", "c", 0)).await.unwrap();
    let seen = Arc::new(Seen::default());
    let tasks = vec![
        consume(a, "a", seen.clone()),
        consume(b, "b", seen.clone()),
        consume(c, "c", seen.clone()),
    ];
    let ids = put(&mut client, 0, 40).await;
    let all: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(all.len(), 40);
    let count = |m: &BTreeMap<String, Vec<(String, u32)>>, k: &str| m.get(k).map_or(0, Vec::len);
    seen.wait_for("g1 to get all 40 and g2 all 40", |m| {
        count(m, "a") + count(m, "b") >= 40 && count(m, "c") >= 40
    })
    .await;
    let m = seen.by_member.lock().clone();
    let a_ids: BTreeSet<String> = m["a"].iter().map(|x| x.0.clone()).collect();
    let b_ids: BTreeSet<String> = m["b"].iter().map(|x| x.0.clone()).collect();
    let c_ids: BTreeSet<String> = m["c"].iter().map(|x| x.0.clone()).collect();
    assert!(a_ids.is_disjoint(&b_ids), "one member at a time");
    assert_eq!(
        m["a"].len() + m["b"].len(),
        40,
        "no redelivery within the timeout"
    );
    assert!(
        !a_ids.is_empty() && !b_ids.is_empty(),
        "both members got work"
    );
    assert_eq!(
        &a_ids | &b_ids,
        all,
        "the union is every event (original ids)"
    );
    assert_eq!(c_ids, all, "another group gets every event");
    assert!(m.values().flatten().all(|(_, attempt)| *attempt == 1));
    // The group checkpoints reach the end of the stream.
    let stream_head = server
        .store
        .stream_version(&names::queue_stream("default", "r", "sub"))
        .await
        .unwrap();
    for g in ["g1", "g2"] {
        let name = names::group_checkpoint("default", "r", "sub", g);
        wait_until(&format!("checkpoint of {g}"), || {
            let store = server.store.clone();
            let name = name.clone();
            async move { store.load_checkpoint(&name).await.unwrap() == stream_head }
        })
        .await;
    }
    for t in &tasks {
        t.abort();
    }
    server.shutdown().await;
}

async fn wait_until<F, Fut>(what: &str, cond: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_member_s_deliveries_go_to_the_other_member() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), settings(Duration::from_secs(30))).await;
    subscriber_rule(&server.engine).await;
    let mut client = server.client().await;
    let mut a = client.subscribe_with(opts("g", "a", 10)).await.unwrap();
    let ids = put(&mut client, 0, 5).await;
    let mut got_a = Vec::new();
    for _ in 0..5 {
        let d = next(&mut a).await;
        assert_eq!(d.attempt, 1);
        got_a.push(d);
    }
    let mut b = client.subscribe_with(opts("g", "b", 10)).await.unwrap();
    drop(a); // disconnects with five unacknowledged deliveries
    let mut got_b = Vec::new();
    for _ in 0..5 {
        let d = next(&mut b).await;
        b.ack(d.position).await.unwrap();
        got_b.push(d);
    }
    let ids_b: Vec<String> = got_b.iter().map(|d| d.event.id.clone()).collect();
    assert_eq!(ids_b, ids, "the same events, in order");
    for (x, y) in got_a.iter().zip(&got_b) {
        assert_eq!(x.delivery_id, y.delivery_id, "stable delivery id");
        assert_eq!(x.position, y.position);
        assert_eq!(y.attempt, 2);
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_delivery_comes_again_after_the_visibility_timeout_and_the_deduper_skips_it(
) {
    let dir = tempfile::tempdir().unwrap();
    let visibility = Duration::from_millis(300);
    let server = start(dir.path(), settings(visibility)).await;
    subscriber_rule(&server.engine).await;
    let mut client = server.client().await;
    // Credit 1: the second event waits behind the first until the first is acknowledged.
    let mut sub = client.subscribe_with(opts("g", "a", 1)).await.unwrap();
    let mut dedupe = Deduper::new(100);
    let put_at = tokio::time::Instant::now();
    let ids = put(&mut client, 0, 2).await;
    let first = tokio::time::timeout(WAIT, sub.next_new(&mut dedupe))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (first.event.id.as_str(), first.attempt),
        (ids[0].as_str(), 1)
    );
    dedupe.processed(&first).await.unwrap();
    // Processed but not acknowledged (a consumer that crashed between the two): the first
    // event comes again after the timeout with attempt 2; the deduper skips (and acknowledges)
    // it, and the second event follows.
    let second = tokio::time::timeout(WAIT, sub.next_new(&mut dedupe))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(put_at.elapsed() >= visibility, "not before the timeout");
    assert_eq!(
        dedupe.skipped(),
        1,
        "the redelivery of the first event was skipped"
    );
    assert_eq!(
        (second.event.id.as_str(), second.attempt),
        (ids[1].as_str(), 1)
    );
    sub.ack(second.position).await.unwrap();
    let name = names::group_checkpoint("default", "r", "sub", "g");
    wait_until("both acknowledged", || {
        let store = server.store.clone();
        let name = name.clone();
        async move { store.load_checkpoint(&name).await.unwrap() == Some(1) }
    })
    .await;

    // Without the deduper the redelivery is visible: same id and position, attempt 2.
    let third_id = put(&mut client, 2, 1).await;
    let d1 = next(&mut sub).await;
    let d2 = next(&mut sub).await;
    assert_eq!(d1.event.id, third_id[0]);
    assert_eq!(
        (d2.delivery_id.as_str(), d2.position, d2.attempt),
        (d1.delivery_id.as_str(), d1.position, 2)
    );
    sub.ack(d2.position).await.unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_server_restart_unacknowledged_deliveries_come_again_and_acknowledged_ones_do_not()
{
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), settings(Duration::from_secs(30))).await;
    subscriber_rule(&server.engine).await;
    let mut client = server.client().await;
    let mut sub = client.subscribe_with(opts("g", "a", 10)).await.unwrap();
    let ids = put(&mut client, 0, 6).await;
    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(next(&mut sub).await);
    }
    got.sort_by_key(|d| d.position);
    for d in &got[..3] {
        sub.ack(d.position).await.unwrap();
    }
    let name = names::group_checkpoint("default", "r", "sub", "g");
    let acked_to = got[2].position;
    wait_until("the checkpoint of the acknowledged prefix", || {
        let store = server.store.clone();
        let name = name.clone();
        async move { store.load_checkpoint(&name).await.unwrap() == Some(acked_to) }
    })
    .await;
    drop(sub);
    drop(client);
    server.shutdown().await;

    let server = start(dir.path(), settings(Duration::from_secs(30))).await;
    let mut client = server.client().await;
    let mut sub = client.subscribe_with(opts("g", "b", 10)).await.unwrap();
    let mut again = Vec::new();
    for _ in 0..3 {
        again.push(next(&mut sub).await);
    }
    let want: Vec<(String, u64)> = got[3..]
        .iter()
        .map(|d| (d.delivery_id.clone(), d.position))
        .collect();
    let have: Vec<(String, u64)> = again
        .iter()
        .map(|d| (d.delivery_id.clone(), d.position))
        .collect();
    assert_eq!(have, want, "exactly the unacknowledged ones, first");
    let have_ids: HashSet<&str> = again.iter().map(|d| d.event.id.as_str()).collect();
    let want_ids: HashSet<&str> = ids[3..].iter().map(String::as_str).collect();
    assert_eq!(have_ids, want_ids);
    // A new event after the restart follows them.
    let more = put(&mut client, 6, 1).await;
    assert_eq!(next(&mut sub).await.event.id, more[0]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_events_limits_and_subscribe_errors_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), settings(Duration::from_secs(30))).await;
    subscriber_rule(&server.engine).await;
    let mut client = server.client().await;

    // Eleven entries: the call fails as a whole; none: too.
    let err = client
        .put_events((0..11).map(entry).collect())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Status(s) if s.code() == tonic::Code::InvalidArgument),
        "{err}"
    );
    let err = client.put_events(vec![]).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Status(s) if s.code() == tonic::Code::InvalidArgument),
        "{err}"
    );

    // A bad entry fails alone.
    let big = Event {
        detail: json!({ "x": "y".repeat(256 * 1024) }).to_string(),
        ..entry(1)
    };
    let not_object = Event {
        detail: "[1]".into(),
        ..entry(2)
    };
    let unknown_bus = Event {
        event_bus_name: "nope".into(),
        ..entry(3)
    };
    let out = client
        .put_events(vec![entry(0), big, not_object, unknown_bus, entry(4)])
        .await
        .unwrap();
    assert!(matches!(&out[0], PutOutcome::Accepted { .. }));
    assert!(
        matches!(&out[1], PutOutcome::Failed { code, message } if code == "InvalidArgument" && message.contains("262144")),
        "{:?}",
        out[1]
    );
    assert!(
        matches!(&out[2], PutOutcome::Failed { code, .. } if code == "MalformedDetail"),
        "{:?}",
        out[2]
    );
    assert!(
        matches!(&out[3], PutOutcome::Failed { code, message } if code == "ResourceNotFoundException" && message.contains("nope")),
        "{:?}",
        out[3]
    );
    assert!(matches!(&out[4], PutOutcome::Accepted { .. }));
    let raw = client
        .raw()
        .put_events(outrider_proto::v1::PutEventsRequest {
            entries: vec![entry(0), Event::default()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(raw.failed_entry_count, 1);
    assert!(!raw.entries[0].event_id.is_empty());
    assert_eq!(raw.entries[1].error_code, "InvalidArgument");

    // EventBridge's formula counts source, detail type and detail: an entry 1 KiB under the
    // limit is accepted. One of exactly 256 KiB is within EventBridge's limit but not the
    // store's (256 KiB for the stored event, which also holds the id, time, account, region
    // and, once queued, the delivery marks): it fails alone, with InvalidArgument, and does not
    // take the entry beside it down (the engine appends a bus's entries atomically).
    let sized = |total: usize| {
        let detail_len = total - "s".len() - "t".len();
        let pad = detail_len - json!({ "x": "" }).to_string().len();
        let e = Event {
            detail: json!({ "x": "y".repeat(pad) }).to_string(),
            ..entry(5)
        };
        assert_eq!(e.detail.len(), detail_len);
        e
    };
    let out = client
        .put_events(vec![sized(255 * 1024), sized(256 * 1024)])
        .await
        .unwrap();
    assert!(
        matches!(&out[0], PutOutcome::Accepted { .. }),
        "{:?}",
        out[0]
    );
    assert!(
        matches!(&out[1], PutOutcome::Failed { code, message } if code == "InvalidArgument" && message.contains("store")),
        "{:?}",
        out[1]
    );

    // Subscribe errors name what is wrong.
    let cases = [
        (
            SubscribeOptions {
                event_bus_name: "nope".into(),
                ..opts("g", "a", 1)
            },
            tonic::Code::NotFound,
            "nope",
        ),
        (
            SubscribeOptions {
                rule: "nope".into(),
                ..opts("g", "a", 1)
            },
            tonic::Code::NotFound,
            "Rule nope",
        ),
        (
            SubscribeOptions {
                target: "nope".into(),
                ..opts("g", "a", 1)
            },
            tonic::Code::NotFound,
            "Target nope",
        ),
        (
            SubscribeOptions {
                target: "hook".into(),
                ..opts("g", "a", 1)
            },
            tonic::Code::FailedPrecondition,
            "hook",
        ),
        (
            opts("bad group", "a", 1),
            tonic::Code::InvalidArgument,
            "group",
        ),
        (opts("g", "", 1), tonic::Code::InvalidArgument, "consumer"),
        (
            opts("g", "a", 1_000_000),
            tonic::Code::InvalidArgument,
            "max_in_flight",
        ),
    ];
    for (o, code, names_it) in cases {
        let err = client.subscribe_with(o.clone()).await.unwrap_err();
        match &err {
            ClientError::Status(s) => {
                assert_eq!(s.code(), code, "{o:?}: {err}");
                assert!(s.message().contains(names_it), "{o:?}: {err}");
            }
            other => panic!("{o:?}: {other}"),
        }
    }
    server.shutdown().await;
}
