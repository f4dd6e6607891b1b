//! The store-and-forward outbox: cursors, acks, caps and full policies, TTL, reclaim.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::ev;
use outrider_runtime::{
    ClassConfig, Error, ExpectedVersion as EV, FullPolicy, Log, LogConfig, ManualClock,
};
use serde_json::json;

fn cfg(dir: &std::path::Path) -> LogConfig {
    let mut c = LogConfig::new(dir);
    c.destinations = vec!["cloud".into(), "backup".into()];
    c.classes = vec![
        ClassConfig {
            max_events: 5,
            ..ClassConfig::unbounded("critical")
        },
        ClassConfig {
            max_events: 20,
            full_policy: FullPolicy::DropOldest,
            ..ClassConfig::unbounded("bulk")
        },
        ClassConfig {
            ttl: Some(Duration::from_secs(60)),
            ..ClassConfig::unbounded("normal")
        },
    ];
    c
}

fn append_n(log: &Log, class: &str, n: usize, tag: &str) -> Vec<u64> {
    (0..n)
        .map(|i| {
            log.append(
                class,
                EV::Any,
                vec![ev(&format!("{tag}{i}"), json!({ "i": i }))],
                Some(class),
            )
            .unwrap()
            .positions[0]
        })
        .collect()
}

#[test]
fn destinations_read_by_class_and_acks_advance_durable_cursors() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = Log::open(cfg(dir.path())).unwrap();
    let crit = append_n(&log, "critical", 3, "c");
    let norm = append_n(&log, "normal", 4, "n");
    let got = log
        .outbox_read("cloud", "normal", None, 100, 1 << 20)
        .unwrap();
    assert_eq!(got.iter().map(|e| e.position).collect::<Vec<_>>(), norm);
    let got = log
        .outbox_read("cloud", "critical", None, 2, 1 << 20)
        .unwrap();
    assert_eq!(
        got.iter().map(|e| e.position).collect::<Vec<_>>(),
        crit[..2]
    );
    // Continue after the last one handed out, without acking.
    let got = log
        .outbox_read("cloud", "critical", Some(crit[1]), 10, 1 << 20)
        .unwrap();
    assert_eq!(
        got.iter().map(|e| e.position).collect::<Vec<_>>(),
        crit[2..]
    );

    log.ack("cloud", "critical", crit[1]).unwrap();
    assert_eq!(log.outbox_cursor("cloud", "critical").unwrap(), crit[1] + 1);
    // Acks are idempotent and never move a cursor back.
    log.ack("cloud", "critical", crit[0]).unwrap();
    assert_eq!(log.outbox_cursor("cloud", "critical").unwrap(), crit[1] + 1);
    assert!(matches!(
        log.ack("cloud", "critical", 1_000),
        Err(Error::AckBeyondHead { .. })
    ));
    assert!(matches!(
        log.ack("nowhere", "critical", 0),
        Err(Error::UnknownDestination(_))
    ));

    // Cursors survive a restart.
    log.close().unwrap();
    drop(log);
    let (log, _) = Log::open(cfg(dir.path())).unwrap();
    assert_eq!(log.outbox_cursor("cloud", "critical").unwrap(), crit[1] + 1);
    let got = log
        .outbox_read("cloud", "critical", None, 10, 1 << 20)
        .unwrap();
    assert_eq!(
        got.iter().map(|e| e.position).collect::<Vec<_>>(),
        crit[2..]
    );
    // The other destination still has everything pending.
    let got = log
        .outbox_read("backup", "critical", None, 10, 1 << 20)
        .unwrap();
    assert_eq!(got.len(), 3);
}

#[test]
fn reject_new_refuses_appends_over_the_cap_until_acked() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = Log::open(cfg(dir.path())).unwrap();
    let crit = append_n(&log, "critical", 5, "c");
    match log.append(
        "critical",
        EV::Any,
        vec![ev("over", json!({}))],
        Some("critical"),
    ) {
        Err(Error::OutboxFull {
            class,
            pending_events,
            max_events,
            ..
        }) => {
            assert_eq!(
                (class.as_str(), pending_events, max_events),
                ("critical", 5, 5)
            );
        }
        other => panic!("expected OutboxFull, got {other:?}"),
    }
    let st = &log.outbox_status()[0];
    assert_eq!((st.pending_events, st.rejected_events), (5, 1));
    // One destination acking is not enough: the slowest one holds the space.
    log.ack("cloud", "critical", crit[4]).unwrap();
    assert!(log
        .append(
            "critical",
            EV::Any,
            vec![ev("over", json!({}))],
            Some("critical")
        )
        .is_err());
    log.ack("backup", "critical", crit[4]).unwrap();
    assert_eq!(log.outbox_status()[0].pending_events, 0);
    log.append(
        "critical",
        EV::Any,
        vec![ev("over", json!({}))],
        Some("critical"),
    )
    .unwrap();
}

#[test]
fn drop_oldest_drops_and_counts_the_oldest_pending_events() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = Log::open(cfg(dir.path())).unwrap();
    let bulk = append_n(&log, "bulk", 20, "b");
    let more = append_n(&log, "bulk", 3, "m");
    let st = &log.outbox_status()[1];
    assert_eq!(st.dropped_events, 3, "{st:?}");
    assert_eq!(st.pending_events, 20);
    // The oldest three are gone from the outbox; the newest are there.
    let got = log
        .outbox_read("cloud", "bulk", None, 100, 1 << 20)
        .unwrap();
    let got: Vec<u64> = got.iter().map(|e| e.position).collect();
    assert_eq!(got[0], bulk[3]);
    assert_eq!(&got[got.len() - 3..], &more[..]);
    // Dropped from the outbox, not from the log: local readers still see them.
    assert_eq!(log.read_all(bulk[0], 1).unwrap()[0].id, "b0");
    // Drop counters survive a restart.
    log.close().unwrap();
    drop(log);
    let (log, _) = Log::open(cfg(dir.path())).unwrap();
    assert_eq!(log.outbox_status()[1].dropped_events, 3);
    assert_eq!(log.outbox_status()[1].pending_events, 20);
}

#[test]
fn ttl_expires_old_pending_events_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_700_000_000_000_000_000);
    let (log, _) = Log::open_with_clock(cfg(dir.path()), Arc::new(clock.clone())).unwrap();
    append_n(&log, "normal", 4, "old");
    clock.advance(Duration::from_secs(45));
    let fresh = append_n(&log, "normal", 2, "new");
    clock.advance(Duration::from_secs(30)); // the first four are now 75 s old, the others 30 s
    let r = log.maintain().unwrap();
    assert_eq!(r.expired_events, 4);
    let st = &log.outbox_status()[2];
    assert_eq!((st.expired_events, st.pending_events), (4, 2));
    let got = log
        .outbox_read("backup", "normal", None, 100, 1 << 20)
        .unwrap();
    assert_eq!(got.iter().map(|e| e.position).collect::<Vec<_>>(), fresh);
}

#[test]
fn acknowledged_prefix_is_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.destinations = vec!["cloud".into()];
    let (log, _) = Log::open(c.clone()).unwrap();
    let ps = append_n(&log, "normal", 50, "n");
    let before = log.maintain().unwrap();
    assert_eq!(before.reclaimed_events, 0, "nothing is acknowledged yet");
    log.ack("cloud", "normal", ps[29]).unwrap();
    let r = log.maintain().unwrap();
    // Reclaim works on whole records; with one event per append each record holds one event.
    assert_eq!(r.reclaimed_events, 30);
    assert_eq!(log.start(), 30);
    assert_eq!(log.read_all(0, 1).unwrap()[0].position, 30);
    // The stream keeps its version and its retained tail.
    assert_eq!(log.stream_version("normal").unwrap(), Some(49));
    let page = log
        .read_stream(
            "normal",
            outrider_runtime::StreamFrom::Start,
            outrider_runtime::Direction::Forwards,
            100,
        )
        .unwrap();
    assert_eq!(page.events.first().map(|e| e.version), Some(30));
    // Appends continue with the right version after a restart.
    log.close().unwrap();
    drop(log);
    let (log, rep) = Log::open(c).unwrap();
    assert_eq!((rep.start, rep.head), (30, 50));
    let r = log
        .append(
            "normal",
            EV::Exact(49),
            vec![ev("after", json!({}))],
            Some("normal"),
        )
        .unwrap();
    assert_eq!((r.versions[0], r.positions[0]), (50, 50));
}

/// Records hold the events of every class a commit group carried. Acknowledging each class
/// through its own last event releases them all: nothing stays pending, everything is reclaimed.
#[test]
fn records_shared_by_classes_are_released_by_each_class_own_acks() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.destinations = vec!["cloud".into()];
    c.classes = vec![
        ClassConfig::unbounded("critical"),
        ClassConfig::unbounded("normal"),
    ];
    let (log, _) = Log::open(c).unwrap();
    // Two writers in two classes at once: the committer groups their appends, so records hold
    // events of both classes.
    let writers: Vec<_> = ["critical", "normal"]
        .into_iter()
        .map(|class| {
            let log = log.clone();
            std::thread::spawn(move || append_n(&log, class, 400, class))
        })
        .collect();
    let mut positions: Vec<Vec<u64>> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    let normal = positions.pop().unwrap();
    let critical = positions.pop().unwrap();
    // The classes interleave in the position space (else this test would prove nothing).
    let interleaved = critical
        .iter()
        .filter(|p| normal.binary_search(&(**p + 1)).is_ok())
        .count();
    assert!(interleaved > 0, "the writers never interleaved");
    log.flush().unwrap();

    log.ack("cloud", "critical", *critical.last().unwrap())
        .unwrap();
    log.ack("cloud", "normal", *normal.last().unwrap()).unwrap();
    for class in log.outbox_status() {
        assert_eq!(
            (class.pending_events, class.pending_bytes),
            (0, 0),
            "class {} is fully acknowledged",
            class.name
        );
    }
    let mut reclaimed = 0;
    loop {
        let r = log.maintain().unwrap();
        if r.reclaimed_events == 0 {
            break;
        }
        reclaimed += r.reclaimed_events;
    }
    assert_eq!(reclaimed, 800, "every record is released");
    assert_eq!(log.start(), log.head());
}

/// A maintenance pass reclaims a bounded number of records (it runs on the writer thread, so
/// appends wait behind it) and says when there is more to do.
#[test]
fn reclaim_goes_in_bounded_passes_that_say_when_there_is_more() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.destinations = vec!["cloud".into()];
    c.durability = outrider_runtime::Durability::Periodic {
        interval: Duration::from_millis(100),
    };
    let (log, _) = Log::open(c).unwrap();
    // One append at a time: one record each.
    let ps = append_n(&log, "normal", 600, "n");
    log.flush().unwrap();
    log.ack("cloud", "normal", *ps.last().unwrap()).unwrap();
    let mut passes = Vec::new();
    loop {
        let r = log.maintain().unwrap();
        passes.push((r.reclaimed_records, r.more));
        if !r.more {
            break;
        }
        assert!(passes.len() < 100, "passes never end: {passes:?}");
    }
    let total: u64 = passes.iter().map(|p| p.0).sum();
    assert_eq!(total, 600, "{passes:?}");
    assert!(
        passes.len() >= 3,
        "600 records need several bounded passes: {passes:?}"
    );
    let (last, more) = *passes.last().unwrap();
    assert!(!more && last < passes[0].0, "{passes:?}");
    assert_eq!(log.start(), log.head());
}
