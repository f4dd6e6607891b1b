//! The event log's contract: expected versions, idempotency, reads, snapshots, subscriptions,
//! bad input.

mod common;

use std::time::Duration;

use common::{ev, open, open_with};
use outrider_runtime::{Direction, Error, ExpectedVersion as EV, LogConfig, StreamFrom};
use serde_json::json;

#[test]
fn expected_version_semantics() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    // NoStream on a new stream works; versions start at 0; positions are global.
    let r = log
        .append(
            "a",
            EV::NoStream,
            vec![ev("1", json!({})), ev("2", json!({}))],
            None,
        )
        .unwrap();
    assert_eq!(r.versions, vec![0, 1]);
    assert_eq!(r.positions, vec![0, 1]);
    assert_eq!(r.next_expected_version, 1);
    // NoStream again conflicts and reports the actual version.
    match log.append("a", EV::NoStream, vec![ev("3", json!({}))], None) {
        Err(Error::WrongExpectedVersion { actual, .. }) => assert_eq!(actual, Some(1)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // StreamExists on a missing stream conflicts with actual = no stream.
    match log.append("b", EV::StreamExists, vec![ev("4", json!({}))], None) {
        Err(Error::WrongExpectedVersion { actual, .. }) => assert_eq!(actual, None),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // Exact: right version succeeds, stale version conflicts.
    let r = log
        .append("a", EV::Exact(1), vec![ev("5", json!({}))], None)
        .unwrap();
    assert_eq!((r.versions[0], r.positions[0]), (2, 2));
    assert!(matches!(
        log.append("a", EV::Exact(1), vec![ev("6", json!({}))], None),
        Err(Error::WrongExpectedVersion {
            actual: Some(2),
            ..
        })
    ));
    let r = log
        .append("b", EV::Any, vec![ev("7", json!({}))], None)
        .unwrap();
    assert_eq!((r.versions[0], r.positions[0]), (0, 3));
    assert_eq!(log.stream_version("a").unwrap(), Some(2));
    assert_eq!(log.stream_version("nope").unwrap(), None);
}

#[test]
fn reappending_an_event_id_returns_the_original_positions() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let first = log
        .append(
            "s",
            EV::NoStream,
            vec![ev("x", json!({"n":1})), ev("y", json!({"n":2}))],
            None,
        )
        .unwrap();
    log.append("other", EV::Any, vec![ev("z", json!({}))], None)
        .unwrap();
    // Retry with the same expectation: idempotent, not a conflict.
    let again = log
        .append(
            "s",
            EV::NoStream,
            vec![ev("x", json!({"n":1})), ev("y", json!({"n":2}))],
            None,
        )
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.positions, first.positions);
    assert_eq!(again.versions, first.versions);
    assert_eq!(log.head(), 3, "nothing was written by the retry");
    // The same id in another stream is a different event.
    let other = log
        .append("t", EV::Any, vec![ev("x", json!({}))], None)
        .unwrap();
    assert!(!other.duplicate);
    // A mix of old and new ids is not a clean retry.
    assert!(matches!(
        log.append(
            "s",
            EV::Any,
            vec![ev("y", json!({})), ev("new", json!({}))],
            None
        ),
        Err(Error::PartialDuplicate { .. })
    ));
    // The idempotency window survives a restart.
    log.close().unwrap();
    drop(log);
    let log = open(dir.path());
    let again = log
        .append("s", EV::Any, vec![ev("x", json!({"n":1}))], None)
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.positions, vec![first.positions[0]]);
}

#[test]
fn exact_retry_beyond_the_window_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = LogConfig::new(dir.path());
    cfg.dedupe_window = 0;
    let log = open_with(cfg);
    let r = log.append("s", EV::Exact(0), vec![ev("a", json!({}))], None);
    assert!(r.is_err(), "stream does not exist yet");
    let r = log
        .append("s", EV::NoStream, vec![ev("a", json!({}))], None)
        .unwrap();
    let r2 = log
        .append("s", EV::Exact(0), vec![ev("b", json!({}))], None)
        .unwrap();
    // Retrying the Exact(0) append finds "b" at version 1 even with no window.
    let again = log
        .append("s", EV::Exact(0), vec![ev("b", json!({}))], None)
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.positions, r2.positions);
    assert_ne!(again.positions, r.positions);
}

#[test]
fn reads_forwards_backwards_and_all() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    for i in 0..50 {
        let stream = if i % 2 == 0 { "even" } else { "odd" };
        log.append(
            stream,
            EV::Any,
            vec![ev(&format!("e{i}"), json!({ "i": i }))],
            None,
        )
        .unwrap();
    }
    let fw = log
        .read_stream("even", StreamFrom::Start, Direction::Forwards, 10)
        .unwrap();
    assert_eq!(fw.events.len(), 10);
    assert!(!fw.end);
    assert_eq!(fw.events[3].version, 3);
    assert_eq!(fw.events[3].position, 6);
    assert_eq!(fw.events[3].detail, r#"{"i":6}"#);
    let rest = log
        .read_stream("even", StreamFrom::Version(10), Direction::Forwards, 100)
        .unwrap();
    assert_eq!(rest.events.len(), 15);
    assert!(rest.end);
    let bw = log
        .read_stream("odd", StreamFrom::End, Direction::Backwards, 3)
        .unwrap();
    let versions: Vec<u64> = bw.events.iter().map(|e| e.version).collect();
    assert_eq!(versions, vec![24, 23, 22]);
    let bw = log
        .read_stream("odd", StreamFrom::Version(1), Direction::Backwards, 10)
        .unwrap();
    assert_eq!(
        bw.events.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![1, 0]
    );
    assert!(bw.end);
    let all = log.read_all(45, 100).unwrap();
    assert_eq!(
        all.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![45, 46, 47, 48, 49]
    );
    assert!(log.read_all(50, 10).unwrap().is_empty());
    let none = log
        .read_stream("missing", StreamFrom::Start, Direction::Forwards, 10)
        .unwrap();
    assert!(none.events.is_empty() && none.end);
    // Envelope fields are stamped by the log.
    let e = &all[0];
    assert_eq!(e.stream, "odd");
    assert_eq!(e.origin_node, "local");
    assert_eq!(e.origin_seq, 45);
    assert!(e.time_seconds > 1_600_000_000);
}

#[test]
fn bad_input_gets_a_typed_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let big = ev("big", json!({ "pad": "x".repeat(300 * 1024) }));
    assert!(matches!(
        log.append("s", EV::Any, vec![ev("ok", json!({})), big], None),
        Err(Error::EventTooLarge { limit: 262_144, .. })
    ));
    assert!(matches!(
        log.append("", EV::Any, vec![ev("a", json!({}))], None),
        Err(Error::InvalidStreamName {
            reason: "empty",
            ..
        })
    ));
    assert!(matches!(
        log.append(&"s".repeat(600), EV::Any, vec![ev("a", json!({}))], None),
        Err(Error::InvalidStreamName { .. })
    ));
    let mut bad = ev("bad", json!({}));
    bad.detail = "{\"unterminated\": ".into();
    assert!(matches!(
        log.append("s", EV::Any, vec![bad], None),
        Err(Error::InvalidDetail { .. })
    ));
    assert!(matches!(
        log.append("s", EV::Any, vec![ev("a", json!({}))], Some("platinum")),
        Err(Error::UnknownClass(c)) if c == "platinum"
    ));
    assert!(matches!(
        log.append("s", EV::Any, vec![], None),
        Err(Error::EmptyAppend)
    ));
    assert!(matches!(
        log.append(
            "s",
            EV::Any,
            vec![ev("d", json!({})), ev("d", json!({}))],
            None
        ),
        Err(Error::DuplicateIdInRequest { .. })
    ));
    assert_eq!(log.head(), 0, "no rejected append wrote anything");
    assert_eq!(log.stream_version("s").unwrap(), None);
    // An error message names the problem.
    let msg = log
        .append(
            "s",
            EV::Any,
            vec![ev("x", json!({"pad": "y".repeat(270_000)}))],
            None,
        )
        .unwrap_err()
        .to_string();
    assert!(msg.contains("over the limit of 262144 bytes"), "{msg}");
}

#[test]
fn events_without_ids_get_one() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.append(
        "s",
        EV::Any,
        vec![ev("", json!({})), ev("", json!({}))],
        None,
    )
    .unwrap();
    let evs = log.read_all(0, 10).unwrap();
    assert_eq!(evs.len(), 2);
    assert!(!evs[0].id.is_empty());
    assert_ne!(evs[0].id, evs[1].id);
}

#[test]
fn snapshots_load_as_snapshot_plus_tail() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    for i in 0..10 {
        log.append(
            "acct",
            EV::Any,
            vec![ev(&format!("d{i}"), json!({ "amount": i }))],
            None,
        )
        .unwrap();
    }
    let (snap, tail) = log.load("acct").unwrap();
    assert!(snap.is_none());
    assert_eq!(tail.len(), 10);
    let sum: u64 = (0..=6).sum();
    log.save_snapshot("acct", 6, sum.to_string().as_bytes())
        .unwrap();
    // A snapshot beyond the stream's version is refused.
    assert!(log.save_snapshot("acct", 10, b"x").is_err());
    // An older snapshot never replaces a newer one.
    log.save_snapshot("acct", 2, b"old").unwrap();
    let (snap, tail) = log.load("acct").unwrap();
    let snap = snap.unwrap();
    assert_eq!(snap.version, 6);
    assert_eq!(snap.payload, b"21");
    assert_eq!(
        tail.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![7, 8, 9]
    );
}

#[test]
fn subscription_catches_up_then_goes_live_without_gap_or_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    for i in 0..100 {
        log.append(
            "s",
            EV::Any,
            vec![ev(&format!("h{i}"), json!({ "i": i }))],
            None,
        )
        .unwrap();
    }
    let mut sub = log.subscribe(10, None);
    // A writer keeps appending while the subscriber catches up.
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            for i in 100..400 {
                log.append(
                    "s",
                    EV::Any,
                    vec![ev(&format!("h{i}"), json!({ "i": i }))],
                    None,
                )
                .unwrap();
            }
        })
    };
    let mut seen = Vec::new();
    let mut caught_up = 0;
    while seen.len() < 390 {
        let b = sub
            .next_batch_blocking(37, Duration::from_secs(10))
            .unwrap();
        if b.caught_up {
            caught_up += 1;
        }
        assert!(
            b.caught_up || !b.events.is_empty(),
            "timed out waiting for events"
        );
        seen.extend(b.events.into_iter().map(|e| e.position));
    }
    writer.join().unwrap();
    assert_eq!(seen, (10..400).collect::<Vec<_>>());
    assert!(caught_up <= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_subscription_to_one_stream_sees_live_appends() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.append_async("a", EV::Any, vec![ev("1", json!({}))], None)
        .await
        .unwrap();
    log.append_async("b", EV::Any, vec![ev("2", json!({}))], None)
        .await
        .unwrap();
    let mut sub = log.subscribe(0, Some("a".into()));
    let b = sub.next_batch(10).await.unwrap();
    assert_eq!(
        b.events.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        vec!["1"]
    );
    let b = sub.next_batch(10).await.unwrap();
    assert!(b.caught_up && b.events.is_empty());
    let waiter = tokio::spawn(async move { sub.next_batch(10).await });
    log.append_async("b", EV::Any, vec![ev("3", json!({}))], None)
        .await
        .unwrap();
    log.append_async("a", EV::Any, vec![ev("4", json!({}))], None)
        .await
        .unwrap();
    let b = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        b.events.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        vec!["4"]
    );
}

#[test]
fn concurrent_writers_to_one_stream_get_dense_versions() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    log.append(
                        "shared",
                        EV::Any,
                        vec![ev(&format!("{t}-{i}"), json!({}))],
                        None,
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let all = log
        .read_stream("shared", StreamFrom::Start, Direction::Forwards, 1000)
        .unwrap();
    assert_eq!(all.events.len(), 400);
    for (i, e) in all.events.iter().enumerate() {
        assert_eq!(e.version, i as u64);
    }
    assert!(all.events.windows(2).all(|w| w[0].position < w[1].position));
    assert!(
        log.metrics()
            .commit_groups
            .load(std::sync::atomic::Ordering::Relaxed)
            <= 400
    );
}

#[test]
fn periodic_mode_makes_appends_durable_within_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = LogConfig::new(dir.path());
    cfg.durability = outrider_runtime::Durability::Periodic {
        interval: Duration::from_millis(20),
    };
    let log = open_with(cfg);
    log.append("s", EV::Any, vec![ev("a", json!({}))], None)
        .unwrap();
    assert_eq!(log.head(), 1);
    // The flusher moves the durable head; wait on it with a deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while log.durable_head() < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "durable head never advanced"
        );
        std::thread::yield_now();
    }
    log.flush().unwrap();
    assert_eq!(log.durable_head(), 1);
}

#[test]
fn closed_log_refuses_calls() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.close().unwrap();
    assert!(matches!(
        log.append("s", EV::Any, vec![ev("a", json!({}))], None),
        Err(Error::Closed)
    ));
}

#[test]
fn batch_appends_and_checkpoint_are_all_or_nothing() {
    use outrider_runtime::{Checkpoint, StreamAppend};
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let batch = |a: &str, b: &str, expected: Option<u64>, new: u64| {
        (
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
            ],
            Some(Checkpoint {
                name: "wm/n1".into(),
                expected,
                new,
            }),
        )
    };
    let (appends, cp) = batch("a1", "b1", None, 10);
    let r = log.append_batch(appends, None, cp).unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!((r[0].positions[0], r[1].positions[0]), (0, 1));
    assert_eq!(log.checkpoint("wm/n1").unwrap(), Some(10));

    // A stale checkpoint refuses the whole batch: nothing is written.
    let (appends, cp) = batch("a2", "b2", Some(3), 20);
    match log.append_batch(appends, None, cp) {
        Err(Error::CheckpointConflict { actual, .. }) => assert_eq!(actual, Some(10)),
        other => panic!("expected a checkpoint conflict, got {other:?}"),
    }
    // So does a version conflict on one of the streams.
    let mut appends = batch("a3", "b3", Some(10), 20).0;
    appends[1].expected = EV::NoStream;
    assert!(matches!(
        log.append_batch(appends, None, batch("", "", Some(10), 20).1),
        Err(Error::WrongExpectedVersion { .. })
    ));
    assert_eq!(log.head(), 2);
    assert_eq!(log.checkpoint("wm/n1").unwrap(), Some(10));

    let (appends, cp) = batch("a4", "b4", Some(10), 20);
    log.append_batch(appends, None, cp).unwrap();
    assert_eq!(log.head(), 4);
    log.append_batch(
        vec![StreamAppend {
            stream: "other".into(),
            expected: EV::Any,
            events: vec![ev("o", json!({}))],
        }],
        None,
        Some(Checkpoint {
            name: "wm/n2".into(),
            expected: None,
            new: 1,
        }),
    )
    .unwrap();
    assert_eq!(
        log.checkpoints("wm/").unwrap(),
        vec![("wm/n1".to_string(), 20), ("wm/n2".to_string(), 1)]
    );
    // Checkpoints survive a restart.
    log.close().unwrap();
    drop(log);
    let log = open(dir.path());
    assert_eq!(log.checkpoint("wm/n1").unwrap(), Some(20));
    // The same stream twice in one batch is refused.
    let twice = vec![
        StreamAppend {
            stream: "s".into(),
            expected: EV::Any,
            events: vec![ev("x", json!({}))],
        },
        StreamAppend {
            stream: "s".into(),
            expected: EV::Any,
            events: vec![ev("y", json!({}))],
        },
    ];
    assert!(matches!(
        log.append_batch(twice, None, None),
        Err(Error::InvalidStreamName { .. })
    ));
}

#[test]
fn relayed_events_keep_their_origin() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let mut e = ev("r1", json!({}));
    e.origin_node = "edge-7".into();
    e.origin_seq = 4242;
    log.append("edge-7/s", EV::Any, vec![e, ev("own", json!({}))], None)
        .unwrap();
    let all = log.read_all(0, 10).unwrap();
    assert_eq!(
        (all[0].origin_node.as_str(), all[0].origin_seq),
        ("edge-7", 4242)
    );
    assert_eq!(
        (all[1].origin_node.as_str(), all[1].origin_seq),
        ("local", 1)
    );
}
