//! One conformance suite, run against every backend: each case is a generic async fn over
//! [`EventStore`], instantiated by `conformance!` for `SledStore` on a temporary directory and for
//! `PgStore` on a fresh schema of `$OUTRIDER_TEST_PG` (the PostgreSQL cases FAIL when it is unset).

mod common;

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod sled_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (store, _dir) = crate::common::sled_store();
                    crate::cases::$case(store).await;
                }
            )*
        }
        mod pg_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let db = crate::common::PgTestDb::create().await;
                    crate::cases::$case(db.store.clone()).await;
                    db.drop_schema().await;
                }
            )*
        }
    };
}

conformance!(
    expected_version_semantics,
    reappending_event_ids_returns_the_original_positions,
    exact_retry_is_idempotent,
    reads_forwards_backwards_and_all,
    read_all_after_an_unknown_position_is_an_error,
    bad_input_gets_a_typed_error_and_writes_nothing,
    events_are_stamped_with_id_time_and_origin,
    multi_event_appends_are_atomic,
    batch_with_watermark_is_all_or_nothing,
    snapshots_load_as_snapshot_plus_tail,
    subscription_catches_up_then_goes_live_without_gap_or_duplicate,
    subscription_filters_streams_and_resumes_from_a_checkpoint,
    concurrent_optimistic_writers_get_dense_versions,
    leases_pass_to_another_holder_when_not_renewed,
    names_are_checked,
);

mod cases {
    use std::collections::HashSet;
    use std::time::{Duration, Instant};

    use outrider_store::{
        Direction, Event, EventStore, ExpectedVersion as EV, StoreError, StreamAppend,
        StreamFilter, StreamFrom, Subscription, Watermark,
    };
    use serde_json::json;

    use crate::common::{ev, poll_until};

    /// Every event in the global order, once everything appended before the call is readable.
    ///
    /// An append is in `read_all` once every append that began before it has ended: at once on
    /// sled; on PostgreSQL when no older transaction of the cluster is still running (other
    /// tests run in parallel). So: append a barrier event and read until it shows up; every
    /// append that ended before the barrier began is then visible. Barrier events are left out.
    async fn all_events<S: EventStore>(s: &S) -> Vec<Event> {
        let barrier = format!("barrier/{}", uuid::Uuid::new_v4());
        s.append(&barrier, EV::NoStream, vec![ev("", json!({}))])
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut out = Vec::new();
            let mut after = None;
            loop {
                let page = s.read_all(after, 1000).await.unwrap();
                let Some(last) = page.last() else {
                    break;
                };
                after = Some(last.position);
                out.extend(page);
            }
            if out.iter().any(|e| e.stream == barrier) {
                out.retain(|e| !e.stream.starts_with("barrier/"));
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "the barrier never became readable"
            );
            tokio::task::yield_now().await;
        }
    }

    async fn all_positions<S: EventStore>(s: &S) -> Vec<u64> {
        all_events(s).await.iter().map(|e| e.position).collect()
    }

    pub async fn expected_version_semantics<S: EventStore + Clone + 'static>(s: S) {
        let r = s
            .append(
                "a",
                EV::NoStream,
                vec![ev("1", json!({})), ev("2", json!({}))],
            )
            .await
            .unwrap();
        assert_eq!(r.versions, vec![0, 1]);
        assert_eq!(r.next_expected_version, 1);
        assert!(r.positions[0] < r.positions[1]);
        assert!(!r.duplicate);
        match s.append("a", EV::NoStream, vec![ev("3", json!({}))]).await {
            Err(StoreError::WrongExpectedVersion {
                stream,
                expected,
                actual,
            }) => {
                assert_eq!(
                    (stream.as_str(), expected, actual),
                    ("a", EV::NoStream, Some(1))
                );
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        match s
            .append("b", EV::StreamExists, vec![ev("4", json!({}))])
            .await
        {
            Err(StoreError::WrongExpectedVersion { actual, .. }) => assert_eq!(actual, None),
            other => panic!("expected a conflict, got {other:?}"),
        }
        match s.append("b", EV::Exact(0), vec![ev("4", json!({}))]).await {
            Err(StoreError::WrongExpectedVersion { actual, .. }) => assert_eq!(actual, None),
            other => panic!("expected a conflict, got {other:?}"),
        }
        let r = s
            .append("a", EV::Exact(1), vec![ev("5", json!({}))])
            .await
            .unwrap();
        assert_eq!(r.versions, vec![2]);
        let err = s
            .append("a", EV::Exact(1), vec![ev("6", json!({}))])
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::WrongExpectedVersion {
                    actual: Some(2),
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("expected 1, actual 2"), "{err}");
        let r = s
            .append("a", EV::StreamExists, vec![ev("7", json!({}))])
            .await
            .unwrap();
        assert_eq!(r.versions, vec![3]);
        let r = s
            .append("b", EV::Any, vec![ev("8", json!({}))])
            .await
            .unwrap();
        assert_eq!(r.versions, vec![0]);
        assert_eq!(s.stream_version("a").await.unwrap(), Some(3));
        assert_eq!(s.stream_version("b").await.unwrap(), Some(0));
        assert_eq!(s.stream_version("nope").await.unwrap(), None);
        // Refused appends wrote nothing: 5 events in all.
        assert_eq!(all_positions(&s).await.len(), 5);
    }

    pub async fn reappending_event_ids_returns_the_original_positions<
        S: EventStore + Clone + 'static,
    >(
        s: S,
    ) {
        let first = s
            .append(
                "s",
                EV::NoStream,
                vec![ev("x", json!({"n": 1})), ev("y", json!({"n": 2}))],
            )
            .await
            .unwrap();
        s.append("other", EV::Any, vec![ev("z", json!({}))])
            .await
            .unwrap();
        // The same append retried (same expectation, now stale): idempotent, not a conflict.
        let again = s
            .append(
                "s",
                EV::NoStream,
                vec![ev("x", json!({"n": 1})), ev("y", json!({"n": 2}))],
            )
            .await
            .unwrap();
        assert!(again.duplicate);
        assert_eq!(again.positions, first.positions);
        assert_eq!(again.versions, first.versions);
        assert_eq!(again.next_expected_version, 1);
        // With Any (and the stream's current version: nothing to refuse) too.
        let any = s
            .append("s", EV::Any, vec![ev("x", json!({})), ev("y", json!({}))])
            .await
            .unwrap();
        assert!(any.duplicate);
        assert_eq!(any.positions, first.positions);
        let exact = s
            .append(
                "s",
                EV::Exact(1),
                vec![ev("x", json!({})), ev("y", json!({}))],
            )
            .await
            .unwrap();
        assert!(exact.duplicate);
        assert_eq!(exact.versions, vec![0, 1]);
        // One of them alone, with Any.
        let one = s
            .append("s", EV::Any, vec![ev("y", json!({}))])
            .await
            .unwrap();
        assert!(one.duplicate);
        assert_eq!(one.positions, vec![first.positions[1]]);
        assert_eq!(all_positions(&s).await.len(), 3, "retries wrote nothing");
        // The same id in another stream is another event.
        let t = s
            .append("t", EV::Any, vec![ev("x", json!({}))])
            .await
            .unwrap();
        assert!(!t.duplicate);
        // Old and new ids mixed: not a clean retry, nothing written.
        match s
            .append("s", EV::Any, vec![ev("new", json!({})), ev("y", json!({}))])
            .await
        {
            Err(StoreError::PartialDuplicate { stream, id }) => {
                assert_eq!((stream.as_str(), id.as_str()), ("s", "y"));
            }
            other => panic!("expected a partial duplicate, got {other:?}"),
        }
        assert_eq!(s.stream_version("s").await.unwrap(), Some(1));
        assert_eq!(all_positions(&s).await.len(), 4);
    }

    pub async fn exact_retry_is_idempotent<S: EventStore + Clone + 'static>(s: S) {
        s.append("s", EV::NoStream, vec![ev("a", json!({}))])
            .await
            .unwrap();
        let r = s
            .append(
                "s",
                EV::Exact(0),
                vec![ev("b", json!({})), ev("c", json!({}))],
            )
            .await
            .unwrap();
        s.append("s", EV::Exact(2), vec![ev("d", json!({}))])
            .await
            .unwrap();
        let again = s
            .append(
                "s",
                EV::Exact(0),
                vec![ev("b", json!({})), ev("c", json!({}))],
            )
            .await
            .unwrap();
        assert!(again.duplicate);
        assert_eq!(again.positions, r.positions);
        assert_eq!(again.versions, vec![1, 2]);
        assert_eq!(again.next_expected_version, 3);
    }

    pub async fn reads_forwards_backwards_and_all<S: EventStore + Clone + 'static>(s: S) {
        let mut positions = Vec::new();
        for i in 0..50 {
            let stream = if i % 2 == 0 { "even" } else { "odd" };
            let r = s
                .append(
                    stream,
                    EV::Any,
                    vec![ev(&format!("e{i}"), json!({ "i": i }))],
                )
                .await
                .unwrap();
            positions.push(r.positions[0]);
        }
        let fw = s
            .read_stream("even", StreamFrom::Start, Direction::Forwards, 10)
            .await
            .unwrap();
        assert_eq!(fw.events.len(), 10);
        assert!(!fw.end);
        assert_eq!(fw.events[3].version, 3);
        assert_eq!(fw.events[3].position, positions[6]);
        assert_eq!(fw.events[3].detail, r#"{"i":6}"#);
        assert_eq!(fw.events[3].stream, "even");
        let rest = s
            .read_stream("even", StreamFrom::Version(10), Direction::Forwards, 100)
            .await
            .unwrap();
        assert_eq!(rest.events.len(), 15);
        assert!(rest.end);
        let exact = s
            .read_stream("even", StreamFrom::Version(20), Direction::Forwards, 5)
            .await
            .unwrap();
        assert_eq!(exact.events.len(), 5);
        assert!(exact.end, "the page ends at the last version");
        let past = s
            .read_stream("even", StreamFrom::Version(25), Direction::Forwards, 5)
            .await
            .unwrap();
        assert!(past.events.is_empty() && past.end);
        let end = s
            .read_stream("even", StreamFrom::End, Direction::Forwards, 5)
            .await
            .unwrap();
        assert!(end.events.is_empty() && end.end);
        let bw = s
            .read_stream("odd", StreamFrom::End, Direction::Backwards, 3)
            .await
            .unwrap();
        assert_eq!(
            bw.events.iter().map(|e| e.version).collect::<Vec<_>>(),
            vec![24, 23, 22]
        );
        assert!(!bw.end);
        let bw = s
            .read_stream("odd", StreamFrom::Version(1), Direction::Backwards, 10)
            .await
            .unwrap();
        assert_eq!(
            bw.events.iter().map(|e| e.version).collect::<Vec<_>>(),
            vec![1, 0]
        );
        assert!(bw.end);
        let bw = s
            .read_stream("odd", StreamFrom::Version(99), Direction::Backwards, 2)
            .await
            .unwrap();
        assert_eq!(
            bw.events.iter().map(|e| e.version).collect::<Vec<_>>(),
            vec![24, 23]
        );
        let none = s
            .read_stream("missing", StreamFrom::Start, Direction::Forwards, 10)
            .await
            .unwrap();
        assert!(none.events.is_empty() && none.end);
        // All: the global order, paged after positions.
        let all = all_events(&s).await;
        assert_eq!(all.len(), 50);
        assert_eq!(
            all.iter().map(|e| e.position).collect::<Vec<_>>(),
            positions,
            "one writer: the global order is the append order"
        );
        let tail = s.read_all(Some(positions[44]), 5).await.unwrap();
        assert_eq!(
            tail.iter().map(|e| e.position).collect::<Vec<_>>(),
            positions[45..].to_vec()
        );
        let after_last = s.read_all(Some(positions[49]), 10).await.unwrap();
        assert!(after_last.iter().all(|e| e.stream.starts_with("barrier/")));
        assert!(s.read_all(None, 0).await.unwrap().is_empty());
        let (snap, events) = s.load("odd").await.unwrap();
        assert!(snap.is_none());
        assert_eq!(events.len(), 25);
    }

    pub async fn read_all_after_an_unknown_position_is_an_error<S: EventStore + Clone + 'static>(
        s: S,
    ) {
        let r = s
            .append("s", EV::Any, vec![ev("a", json!({}))])
            .await
            .unwrap();
        let bogus = r.positions[0] + 1000;
        assert!(matches!(
            s.read_all(Some(bogus), 10).await,
            Err(StoreError::UnknownPosition(p)) if p == bogus
        ));
    }

    pub async fn bad_input_gets_a_typed_error_and_writes_nothing<
        S: EventStore + Clone + 'static,
    >(
        s: S,
    ) {
        let big = ev("big", json!({ "pad": "x".repeat(300 * 1024) }));
        match s.append("s", EV::Any, vec![ev("ok", json!({})), big]).await {
            Err(StoreError::EventTooLarge { id, limit, size }) => {
                assert_eq!((id.as_str(), limit), ("big", 262_144));
                assert!(size > 300 * 1024);
            }
            other => panic!("expected EventTooLarge, got {other:?}"),
        }
        // Just under the limit is fine; just over is not.
        let fits = ev("fits", json!({ "pad": "y".repeat(262_000) }));
        s.append("fits", EV::Any, vec![fits]).await.unwrap();
        let msg = s
            .append(
                "s",
                EV::Any,
                vec![ev("x", json!({"pad": "y".repeat(262_144)}))],
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(msg.contains("over the limit of 262144 bytes"), "{msg}");
        assert!(matches!(
            s.append("", EV::Any, vec![ev("a", json!({}))]).await,
            Err(StoreError::InvalidStreamName {
                reason: "empty",
                ..
            })
        ));
        assert!(matches!(
            s.append(&"s".repeat(513), EV::Any, vec![ev("a", json!({}))])
                .await,
            Err(StoreError::InvalidStreamName {
                reason: "longer than 512 bytes",
                ..
            })
        ));
        assert!(matches!(
            s.append("a\nb", EV::Any, vec![ev("a", json!({}))]).await,
            Err(StoreError::InvalidStreamName { .. })
        ));
        let mut bad = ev("bad", json!({}));
        bad.detail = "{\"unterminated\": ".into();
        assert!(matches!(
            s.append("s", EV::Any, vec![ev("good", json!({})), bad]).await,
            Err(StoreError::InvalidDetail { id, .. }) if id == "bad"
        ));
        assert!(matches!(
            s.append("s", EV::Any, vec![]).await,
            Err(StoreError::EmptyAppend)
        ));
        assert!(matches!(
            s.append("s", EV::Any, vec![ev("d", json!({})), ev("d", json!({}))]).await,
            Err(StoreError::DuplicateIdInRequest { id }) if id == "d"
        ));
        let mut long_source = ev("ls", json!({}));
        long_source.source = "s".repeat(300);
        assert!(matches!(
            s.append("s", EV::Any, vec![long_source]).await,
            Err(StoreError::InvalidEvent {
                field: "source",
                ..
            })
        ));
        assert!(matches!(
            s.read_stream("", StreamFrom::Start, Direction::Forwards, 1)
                .await,
            Err(StoreError::InvalidStreamName { .. })
        ));
        // Nothing of any refused append was written.
        assert_eq!(s.stream_version("s").await.unwrap(), None);
        assert_eq!(all_positions(&s).await.len(), 1);
    }

    pub async fn events_are_stamped_with_id_time_and_origin<S: EventStore + Clone + 'static>(s: S) {
        let mut relayed = ev("r1", json!({}));
        relayed.origin_node = "edge-7".into();
        relayed.origin_seq = 4242;
        relayed.time_seconds = 1_700_000_000;
        relayed.time_nanos = 5;
        let r = s
            .append("edge-7/s", EV::Any, vec![relayed, ev("", json!({"a": 1}))])
            .await
            .unwrap();
        let all = all_events(&s).await;
        assert_eq!(all.len(), 2);
        assert_eq!(
            (all[0].origin_node.as_str(), all[0].origin_seq),
            ("edge-7", 4242)
        );
        assert_eq!((all[0].time_seconds, all[0].time_nanos), (1_700_000_000, 5));
        assert_eq!(all[1].origin_node, "cloud");
        assert_eq!(all[1].origin_seq, r.positions[1]);
        assert_eq!(all[1].position, r.positions[1]);
        assert!(all[1].time_seconds > 1_600_000_000);
        assert_eq!(all[1].id.len(), 36, "a UUID: {:?}", all[1].id);
        assert_eq!(all[1].stream, "edge-7/s");
        assert_eq!(all[1].source, "test");
        assert_eq!(all[1].detail, r#"{"a":1}"#);
    }

    pub async fn multi_event_appends_are_atomic<S: EventStore + Clone + 'static>(s: S) {
        let events: Vec<_> = (0..100)
            .map(|i| ev(&format!("m{i}"), json!({"i": i})))
            .collect();
        let r = s.append("multi", EV::NoStream, events).await.unwrap();
        assert_eq!(r.versions, (0..100).collect::<Vec<_>>());
        assert!(r.positions.windows(2).all(|w| w[0] < w[1]));
        // One bad event refuses the whole append.
        let mut events: Vec<_> = (100..150)
            .map(|i| ev(&format!("m{i}"), json!({})))
            .collect();
        events[25].detail = "nope".into();
        assert!(s.append("multi", EV::Exact(99), events).await.is_err());
        // So does a stale version.
        let events: Vec<_> = (100..150)
            .map(|i| ev(&format!("m{i}"), json!({})))
            .collect();
        assert!(s.append("multi", EV::Exact(98), events).await.is_err());
        let page = s
            .read_stream("multi", StreamFrom::Start, Direction::Forwards, 1000)
            .await
            .unwrap();
        assert_eq!(page.events.len(), 100);
        assert!(page.end);
        assert_eq!(
            all_positions(&s).await,
            r.positions,
            "a multi-event append is contiguous in the global order"
        );
    }

    pub async fn batch_with_watermark_is_all_or_nothing<S: EventStore + Clone + 'static>(s: S) {
        let batch = |a: &str, b: &str| {
            vec![
                StreamAppend {
                    stream: "n1/orders".into(),
                    expected: EV::Any,
                    events: vec![ev(a, json!({}))],
                },
                StreamAppend {
                    stream: "n1/stock".into(),
                    expected: EV::Any,
                    events: vec![ev(b, json!({}))],
                },
            ]
        };
        let wm = |expected, new| {
            Some(Watermark {
                name: "wm/n1/e/normal".into(),
                expected,
                new,
            })
        };
        let r = s
            .append_batch(batch("a1", "b1"), wm(None, 10))
            .await
            .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].versions[0], r[1].versions[0]), (0, 0));
        assert_eq!(
            s.watermarks("wm/n1/").await.unwrap(),
            vec![("wm/n1/e/normal".to_string(), 10)]
        );
        // A stale watermark refuses the whole batch.
        match s.append_batch(batch("a2", "b2"), wm(Some(3), 20)).await {
            Err(StoreError::WatermarkConflict {
                actual, expected, ..
            }) => {
                assert_eq!((expected, actual), (Some(3), Some(10)));
            }
            other => panic!("expected a watermark conflict, got {other:?}"),
        }
        match s.append_batch(batch("a2", "b2"), wm(None, 20)).await {
            Err(StoreError::WatermarkConflict { actual, .. }) => assert_eq!(actual, Some(10)),
            other => panic!("expected a watermark conflict, got {other:?}"),
        }
        // So does a version conflict on one stream, even after another stream's append.
        let mut b = batch("a3", "b3");
        b[1].expected = EV::NoStream;
        assert!(matches!(
            s.append_batch(b, wm(Some(10), 20)).await,
            Err(StoreError::WrongExpectedVersion { .. })
        ));
        // And bad input anywhere in it.
        let mut b = batch("a4", "b4");
        b[0].events[0].detail = "{".into();
        assert!(matches!(
            s.append_batch(b, wm(Some(10), 20)).await,
            Err(StoreError::InvalidDetail { .. })
        ));
        assert_eq!(
            all_positions(&s).await.len(),
            2,
            "refused batches wrote nothing"
        );
        assert_eq!(s.stream_version("n1/orders").await.unwrap(), Some(0));
        assert_eq!(
            s.watermarks("wm/").await.unwrap(),
            vec![("wm/n1/e/normal".to_string(), 10)]
        );
        let r = s
            .append_batch(batch("a5", "b5"), wm(Some(10), 20))
            .await
            .unwrap();
        assert_eq!((r[0].versions[0], r[1].versions[0]), (1, 1));
        // A retry of the same batch is a duplicate per stream (its watermark moves as asked).
        let again = s
            .append_batch(batch("a5", "b5"), wm(Some(20), 30))
            .await
            .unwrap();
        assert!(again.iter().all(|r| r.duplicate));
        assert_eq!(again[0].positions, r[0].positions);
        // Batch without a watermark; the same stream twice is refused.
        s.append_batch(batch("a6", "b6"), None).await.unwrap();
        let mut twice = batch("x", "y");
        twice[1].stream = twice[0].stream.clone();
        assert!(matches!(
            s.append_batch(twice, None).await,
            Err(StoreError::InvalidStreamName {
                reason: "appears twice in one batch",
                ..
            })
        ));
        assert!(matches!(
            s.append_batch(vec![], None).await,
            Err(StoreError::EmptyAppend)
        ));
        s.append_batch(
            vec![StreamAppend {
                stream: "z".into(),
                expected: EV::Any,
                events: vec![ev("z", json!({}))],
            }],
            Some(Watermark {
                name: "wm/n2/e/normal".into(),
                expected: None,
                new: 1,
            }),
        )
        .await
        .unwrap();
        assert_eq!(
            s.watermarks("wm/").await.unwrap(),
            vec![
                ("wm/n1/e/normal".to_string(), 30),
                ("wm/n2/e/normal".to_string(), 1)
            ]
        );
        assert_eq!(s.watermarks("wm/n3").await.unwrap(), vec![]);
    }

    pub async fn snapshots_load_as_snapshot_plus_tail<S: EventStore + Clone + 'static>(s: S) {
        for i in 0..10 {
            s.append(
                "acct",
                EV::Any,
                vec![ev(&format!("d{i}"), json!({ "amount": i }))],
            )
            .await
            .unwrap();
        }
        let (snap, tail) = s.load("acct").await.unwrap();
        assert!(snap.is_none());
        assert_eq!(tail.len(), 10);
        s.save_snapshot("acct", 6, b"21").await.unwrap();
        match s.save_snapshot("acct", 10, b"x").await {
            Err(StoreError::SnapshotBeyondStream {
                version, actual, ..
            }) => {
                assert_eq!((version, actual), (10, Some(9)));
            }
            other => panic!("expected SnapshotBeyondStream, got {other:?}"),
        }
        assert!(matches!(
            s.save_snapshot("nope", 0, b"x").await,
            Err(StoreError::SnapshotBeyondStream { actual: None, .. })
        ));
        // An older snapshot never replaces a newer one.
        s.save_snapshot("acct", 2, b"old").await.unwrap();
        let snap = s.load_snapshot("acct").await.unwrap().unwrap();
        assert_eq!((snap.version, snap.payload.as_slice()), (6, &b"21"[..]));
        let (snap, tail) = s.load("acct").await.unwrap();
        assert_eq!(snap.unwrap().version, 6);
        assert_eq!(
            tail.iter().map(|e| e.version).collect::<Vec<_>>(),
            vec![7, 8, 9]
        );
        // The same version again replaces it; a newer one too.
        s.save_snapshot("acct", 6, b"21b").await.unwrap();
        assert_eq!(
            s.load_snapshot("acct").await.unwrap().unwrap().payload,
            b"21b"
        );
        s.save_snapshot("acct", 9, b"45").await.unwrap();
        let (snap, tail) = s.load("acct").await.unwrap();
        assert_eq!(snap.unwrap().version, 9);
        assert!(tail.is_empty());
        assert_eq!(s.load_snapshot("other").await.unwrap(), None);
    }

    pub async fn subscription_catches_up_then_goes_live_without_gap_or_duplicate<
        S: EventStore + Clone + 'static,
    >(
        s: S,
    ) {
        let mut first = Vec::new();
        for i in 0..60 {
            let r = s
                .append(
                    &format!("s{}", i % 3),
                    EV::Any,
                    vec![ev(&format!("h{i}"), json!({ "i": i }))],
                )
                .await
                .unwrap();
            first.push(r.positions[0]);
        }
        let mut sub = Subscription::new(s.clone(), Some(first[9]), None);
        let writer = {
            let s = s.clone();
            tokio::spawn(async move {
                for i in 60..260 {
                    let stream = format!("s{}", i % 3);
                    let events = if i % 10 == 0 {
                        vec![
                            ev(&format!("h{i}"), json!({})),
                            ev(&format!("h{i}b"), json!({})),
                        ]
                    } else {
                        vec![ev(&format!("h{i}"), json!({}))]
                    };
                    s.append(&stream, EV::Any, events).await.unwrap();
                }
            })
        };
        let expected_count = 50 + 200 + 20;
        let mut seen = Vec::new();
        let mut caught_up = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen.len() < expected_count {
            let left = deadline.saturating_duration_since(Instant::now());
            let b = tokio::time::timeout(left, sub.next_batch(37))
                .await
                .expect("subscription stalled")
                .unwrap();
            if b.caught_up {
                caught_up += 1;
                assert!(b.events.is_empty());
            }
            assert!(b.events.len() <= 37);
            seen.extend(b.events.iter().map(|e| e.position));
        }
        writer.await.unwrap();
        assert!(caught_up <= 1);
        let all = all_positions(&s).await;
        assert_eq!(
            seen,
            all[10..].to_vec(),
            "exactly once, in the store's order"
        );
        assert_eq!(sub.position(), all.last().copied());
        // Nothing more: the next batch waits (bounded here).
        assert!(
            tokio::time::timeout(Duration::from_millis(200), sub.next_batch(10))
                .await
                .map_or(true, |b| b
                    .unwrap()
                    .events
                    .iter()
                    .all(|e| e.stream.starts_with("barrier/"))),
        );
    }

    pub async fn subscription_filters_streams_and_resumes_from_a_checkpoint<
        S: EventStore + Clone + 'static,
    >(
        s: S,
    ) {
        for i in 0..20 {
            let stream = if i % 2 == 0 { "order-1" } else { "cart-1" };
            s.append(stream, EV::Any, vec![ev(&format!("f{i}"), json!({}))])
                .await
                .unwrap();
        }
        assert_eq!(s.load_checkpoint("orders-view").await.unwrap(), None);
        let mut sub = Subscription::from_checkpoint(
            s.clone(),
            "orders-view",
            Some(StreamFilter::Prefix("order-".into())),
        )
        .await
        .unwrap();
        // Pages of 4 events hold 2 of the category: two batches.
        let mut ids = Vec::new();
        while ids.len() < 4 {
            let b = sub.next_batch(4).await.unwrap();
            assert!(!b.caught_up && b.events.len() <= 4);
            assert!(b.events.iter().all(|e| e.stream == "order-1"));
            ids.extend(b.events.into_iter().map(|e| e.id));
        }
        assert_eq!(ids, vec!["f0", "f2", "f4", "f6"]);
        let cp = sub.position().unwrap();
        s.save_checkpoint("orders-view", cp, None).await.unwrap();
        assert_eq!(s.load_checkpoint("orders-view").await.unwrap(), Some(cp));
        drop(sub);
        // A new consumer instance resumes after the checkpoint.
        let mut sub = Subscription::from_checkpoint(
            s.clone(),
            "orders-view",
            Some(StreamFilter::Stream("order-1".into())),
        )
        .await
        .unwrap();
        let mut ids = Vec::new();
        while ids.len() < 6 {
            let b = tokio::time::timeout(Duration::from_secs(20), sub.next_batch(100))
                .await
                .expect("subscription stalled")
                .unwrap();
            ids.extend(b.events.into_iter().map(|e| e.id));
        }
        assert_eq!(ids, vec!["f8", "f10", "f12", "f14", "f16", "f18"]);
        // Checkpoints move both ways (a consumer may rewind to replay).
        s.save_checkpoint("orders-view", 0, None).await.unwrap();
        assert_eq!(s.load_checkpoint("orders-view").await.unwrap(), Some(0));
    }

    pub async fn concurrent_optimistic_writers_get_dense_versions<
        S: EventStore + Clone + 'static,
    >(
        s: S,
    ) {
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let s = s.clone();
                tokio::spawn(async move {
                    let mut conflicts = 0;
                    for i in 0..25 {
                        loop {
                            let v = s.stream_version("shared").await.unwrap();
                            let expected = v.map_or(EV::NoStream, EV::Exact);
                            match s
                                .append(
                                    "shared",
                                    expected,
                                    vec![ev(&format!("{w}-{i}"), json!({}))],
                                )
                                .await
                            {
                                Ok(r) => {
                                    assert_eq!(r.versions[0], v.map_or(0, |v| v + 1));
                                    break;
                                }
                                Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                                    assert_ne!(actual, v);
                                    conflicts += 1;
                                }
                                Err(e) => panic!("{e}"),
                            }
                        }
                    }
                    conflicts
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
        let page = s
            .read_stream("shared", StreamFrom::Start, Direction::Forwards, 1000)
            .await
            .unwrap();
        assert_eq!(page.events.len(), 100);
        let ids: HashSet<_> = page.events.iter().map(|e| e.id.clone()).collect();
        assert_eq!(ids.len(), 100);
        for (i, e) in page.events.iter().enumerate() {
            assert_eq!(e.version, i as u64);
        }
    }

    pub async fn leases_pass_to_another_holder_when_not_renewed<S: EventStore + Clone + 'static>(
        s: S,
    ) {
        let ttl = Duration::from_millis(300);
        let a = s
            .acquire_lease("orders-projection", "replica-a", ttl)
            .await
            .unwrap()
            .expect("a free lease");
        assert!(a.is_valid());
        assert_eq!(
            s.acquire_lease("orders-projection", "replica-b", ttl)
                .await
                .unwrap(),
            None,
            "held by a"
        );
        // Another consumer is independent.
        assert!(s
            .acquire_lease("audit-projection", "replica-b", ttl)
            .await
            .unwrap()
            .is_some());
        // Re-acquiring one's own lease renews it and keeps the token.
        let a2 = s
            .acquire_lease("orders-projection", "replica-a", ttl)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(a2.token, a.token);
        s.save_checkpoint("orders-projection", 7, Some(&a))
            .await
            .unwrap();
        // a stops renewing after this; b takes over once the ttl has passed, not before.
        let last_renew = Instant::now();
        let a = s.renew_lease(&a).await.unwrap();
        let b = poll_until("b to take the lease", Duration::from_secs(20), || {
            let s = s.clone();
            async move {
                s.acquire_lease("orders-projection", "replica-b", ttl)
                    .await
                    .unwrap()
            }
        })
        .await;
        let waited = last_renew.elapsed();
        assert!(
            waited >= ttl.mul_f64(0.9),
            "b got the lease after {waited:?}, before the ttl {ttl:?} ran out"
        );
        assert!(
            b.token > a.token,
            "tokens grow when the lease changes hands"
        );
        // a's lease is gone: renewing and fenced writes fail with a typed error.
        assert!(matches!(
            s.renew_lease(&a).await,
            Err(StoreError::LeaseLost { ref holder, .. }) if holder == "replica-a"
        ));
        assert!(matches!(
            s.save_checkpoint("orders-projection", 99, Some(&a)).await,
            Err(StoreError::LeaseLost { .. })
        ));
        assert_eq!(
            s.load_checkpoint("orders-projection").await.unwrap(),
            Some(7)
        );
        s.save_checkpoint("orders-projection", 8, Some(&b))
            .await
            .unwrap();
        assert_eq!(
            s.load_checkpoint("orders-projection").await.unwrap(),
            Some(8)
        );
        assert_eq!(
            s.acquire_lease("orders-projection", "replica-a", ttl)
                .await
                .unwrap(),
            None
        );
        // Releasing hands it over at once.
        s.release_lease(&b).await.unwrap();
        s.release_lease(&b).await.unwrap();
        let a3 = s
            .acquire_lease("orders-projection", "replica-a", ttl)
            .await
            .unwrap()
            .expect("released");
        assert!(a3.token > b.token);
        assert!(matches!(
            s.renew_lease(&b).await,
            Err(StoreError::LeaseLost { .. })
        ));
        assert!(matches!(
            s.acquire_lease("c", "h", Duration::ZERO).await,
            Err(StoreError::InvalidTtl { .. })
        ));
    }

    pub async fn names_are_checked<S: EventStore + Clone + 'static>(s: S) {
        assert!(matches!(
            s.save_checkpoint("", 1, None).await,
            Err(StoreError::InvalidName {
                what: "checkpoint",
                reason: "empty",
                ..
            })
        ));
        assert!(matches!(
            s.load_checkpoint(&"c".repeat(600)).await,
            Err(StoreError::InvalidName { .. })
        ));
        assert!(matches!(
            s.acquire_lease("c\u{7}", "h", Duration::from_secs(1)).await,
            Err(StoreError::InvalidName {
                what: "consumer",
                ..
            })
        ));
        assert!(matches!(
            s.acquire_lease("c", "", Duration::from_secs(1)).await,
            Err(StoreError::InvalidName { what: "holder", .. })
        ));
        let r = s
            .append_batch(
                vec![StreamAppend {
                    stream: "s".into(),
                    expected: EV::Any,
                    events: vec![ev("e", json!({}))],
                }],
                Some(Watermark {
                    name: String::new(),
                    expected: None,
                    new: 1,
                }),
            )
            .await;
        assert!(matches!(
            r,
            Err(StoreError::InvalidName {
                what: "watermark",
                ..
            })
        ));
        assert_eq!(s.stream_version("s").await.unwrap(), None);
    }
}
