//! Consumer groups through their in-process API ([`Groups`] / [`Membership`]) on a real sled
//! store: a group that empties and is joined again resumes from its checkpoint; a second
//! `Groups` (a replica) cannot serve a group another one holds; shutdown closes members.

use std::sync::Arc;
use std::time::Duration;

use outrider_bus::api::groups::{
    GroupError, GroupKey, GroupSettings, Groups, MemberMessage, Membership,
};
use outrider_bus::bus::{BusConfig, BusEngine, TargetFactory};
use outrider_bus::model::{Destination, RetryPolicy, RuleDef, RuleState, TargetDef};
use outrider_bus::{DynTarget, Result};
use outrider_proto::Event;
use outrider_runtime::SystemClock;
use outrider_store::{EventStore, SledConfig, SledStore};
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

async fn engine(dir: &std::path::Path) -> BusEngine {
    let store: Arc<dyn EventStore> = Arc::new(SledStore::open(SledConfig::new(dir)).unwrap());
    let e = BusEngine::start(
        store,
        BusConfig::default(),
        Arc::new(NoPush),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    e.put_rule(RuleDef {
        name: "r".into(),
        event_bus_name: "default".into(),
        event_pattern: Some(json!({"source": ["s"]}).to_string()),
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
    .unwrap();
    e
}

fn key(group: &str) -> GroupKey {
    GroupKey {
        bus: String::new(),
        rule: "r".into(),
        target: "sub".into(),
        group: group.into(),
    }
}

async fn put(e: &BusEngine, n: usize) {
    let events = (0..n)
        .map(|i| Event {
            source: "s".into(),
            detail_type: "t".into(),
            detail: json!({ "i": i }).to_string(),
            ..Event::default()
        })
        .collect();
    e.put_events(events).await;
}

/// Receives `n` deliveries' positions.
async fn positions(m: &mut Membership, n: usize) -> Vec<u64> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(20), m.recv()).await {
            Ok(Some(MemberMessage::Deliveries(d))) => out.extend(d.iter().map(|x| x.position)),
            other => panic!("expected deliveries, got {other:?}"),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_that_empties_resumes_from_its_checkpoint_when_joined_again() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path()).await;
    let groups = Groups::new(e.clone(), GroupSettings::default());
    let mut m = groups.join(key("g"), "a", 10).await.unwrap();
    put(&e, 4).await;
    let got = positions(&mut m, 4).await;
    assert_eq!(got, vec![0, 1, 2, 3]);
    m.ack(vec![0, 1]);
    drop(m); // leaves: the task saves the checkpoint and ends
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while groups.active() != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the group task never ended"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut m = groups.join(key("g"), "b", 10).await.unwrap();
    assert_eq!(
        positions(&mut m, 2).await,
        vec![2, 3],
        "the unacknowledged ones only"
    );
    groups.shutdown().await;
    match tokio::time::timeout(Duration::from_secs(20), m.recv()).await {
        Ok(Some(MemberMessage::Closed(GroupError::Unavailable(_)))) => {}
        other => panic!("expected Closed, got {other:?}"),
    }
    assert!(matches!(
        groups.join(key("g"), "c", 1).await,
        Err(GroupError::Unavailable(_))
    ));
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_is_served_by_one_replica_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path()).await;
    let one = Groups::new(e.clone(), GroupSettings::default());
    let two = Groups::new(e.clone(), GroupSettings::default());
    let _m = one.join(key("g"), "a", 1).await.unwrap();
    match two.join(key("g"), "b", 1).await {
        Err(GroupError::Unavailable(msg)) => assert!(msg.contains("another replica"), "{msg}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    // Another group of the same target is free.
    let _n = two.join(key("other"), "b", 1).await.unwrap();
    one.shutdown().await;
    two.shutdown().await;
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_nobody_acknowledges_goes_to_the_dead_letter_stream_after_its_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path()).await;
    // MaximumRetryAttempts 1: two deliveries at most.
    let mut rule = e.list_rules("default").unwrap().remove(0);
    rule.targets[0].retry_policy.maximum_retry_attempts = 1;
    e.put_rule(rule).await.unwrap();
    let settings = GroupSettings {
        visibility_timeout: Duration::from_millis(100),
        ..GroupSettings::default()
    };
    let groups = Groups::new(e.clone(), settings);
    let mut m = groups.join(key("g"), "a", 10).await.unwrap();
    put(&e, 3).await;
    // Acknowledge 1 and 2, never 0.
    let first = positions(&mut m, 3).await;
    assert_eq!(first, vec![0, 1, 2]);
    m.ack(vec![1, 2]);
    assert_eq!(positions(&mut m, 1).await, vec![0], "redelivered once");
    let dlq = outrider_bus::names::dlq_stream("default", "r", "sub");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let dead = loop {
        let page = e
            .store()
            .read_stream(
                &dlq,
                outrider_store::StreamFrom::Start,
                outrider_store::Direction::Forwards,
                10,
            )
            .await
            .unwrap();
        if !page.events.is_empty() {
            break page.events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(dead.len(), 1);
    let d: serde_json::Value = serde_json::from_str(&dead[0].detail).unwrap();
    assert_eq!(d["exhausted"], "MaximumRetryAttempts");
    assert_eq!(d["errorCode"], "NotAcknowledged");
    assert_eq!(d["attempts"], 2);
    // Not delivered a third time; new entries still flow.
    put(&e, 1).await;
    assert_eq!(positions(&mut m, 1).await, vec![3]);
    groups.shutdown().await;
    e.shutdown().await;
}
