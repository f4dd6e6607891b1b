//! Sled-only behaviour: leases on an injected clock, durability across reopening.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::ev;
use outrider_runtime::ManualClock;
use outrider_store::{EventStore, ExpectedVersion as EV, SledConfig, SledStore, StoreError};
use serde_json::json;

#[tokio::test]
async fn leases_expire_on_the_injected_clock() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_700_000_000_000_000_000);
    let s =
        SledStore::open_with_clock(SledConfig::new(dir.path()), Arc::new(clock.clone())).unwrap();
    let ttl = Duration::from_secs(10);
    let a = s.acquire_lease("p", "a", ttl).await.unwrap().unwrap();
    assert!(s.acquire_lease("p", "b", ttl).await.unwrap().is_none());
    clock.advance(Duration::from_secs(9));
    assert!(s.acquire_lease("p", "b", ttl).await.unwrap().is_none());
    let a = s.renew_lease(&a).await.unwrap();
    clock.advance(Duration::from_secs(9));
    assert!(
        s.acquire_lease("p", "b", ttl).await.unwrap().is_none(),
        "the renewal counted from its own time"
    );
    clock.advance(Duration::from_secs(1));
    let b = s.acquire_lease("p", "b", ttl).await.unwrap().unwrap();
    assert_eq!(b.token, a.token + 1);
    assert!(matches!(
        s.renew_lease(&a).await,
        Err(StoreError::LeaseLost { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_checkpoints_and_watermarks_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(SledConfig::new(dir.path())).unwrap();
    let r = s
        .append(
            "s",
            EV::NoStream,
            vec![ev("a", json!({})), ev("b", json!({}))],
        )
        .await
        .unwrap();
    s.save_checkpoint("consumer-1", r.positions[1], None)
        .await
        .unwrap();
    s.save_checkpoint("consumer-2", 0, None).await.unwrap();
    s.append_batch(
        vec![outrider_store::StreamAppend {
            stream: "t".into(),
            expected: EV::Any,
            events: vec![ev("c", json!({}))],
        }],
        Some(outrider_store::Watermark {
            name: "wm/n".into(),
            expected: None,
            new: 5,
        }),
    )
    .await
    .unwrap();
    s.close().unwrap();
    assert!(matches!(
        s.append("s", EV::Any, vec![ev("x", json!({}))]).await,
        Err(StoreError::Closed)
    ));
    drop(s);
    let s = SledStore::open(SledConfig::new(dir.path())).unwrap();
    assert_eq!(
        s.load_checkpoint("consumer-1").await.unwrap(),
        Some(r.positions[1])
    );
    assert_eq!(s.load_checkpoint("consumer-2").await.unwrap(), Some(0));
    assert_eq!(
        s.watermarks("wm/").await.unwrap(),
        vec![("wm/n".to_string(), 5)]
    );
    assert_eq!(s.read_all(None, 10).await.unwrap().len(), 3);
    // The idempotency window survives too.
    let again = s
        .append("s", EV::Any, vec![ev("a", json!({}))])
        .await
        .unwrap();
    assert!(again.duplicate);
    // A corrupt checkpoint file is a typed error at open, not a panic.
    s.close().unwrap();
    drop(s);
    std::fs::write(dir.path().join("checkpoints.json"), b"{not json").unwrap();
    assert!(matches!(
        SledStore::open(SledConfig::new(dir.path())),
        Err(StoreError::File { .. })
    ));
}
