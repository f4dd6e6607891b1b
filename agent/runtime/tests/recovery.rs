//! Torn and corrupt records are found on open, reported by position, and the log opens with its
//! intact prefix — nobody has to delete the data directory.

mod common;

use common::ev;
use outrider_runtime::{ExpectedVersion as EV, Log, LogConfig, VerifyOnOpen};
use serde_json::json;

fn fill(dir: &std::path::Path, n: usize) {
    let (log, _) = Log::open(LogConfig::new(dir)).unwrap();
    for i in 0..n {
        log.append(
            "s",
            EV::Any,
            vec![ev(&format!("e{i}"), json!({ "i": i }))],
            None,
        )
        .unwrap();
    }
    log.close().unwrap();
}

/// Rewrites the stored record that holds `pos` with `f` (opening sled directly, as a disk would).
fn damage(dir: &std::path::Path, pos: u64, f: impl FnOnce(&mut Vec<u8>)) {
    let db = sled::Config::new()
        .path(dir)
        .segment_size(1 << 20)
        .open()
        .unwrap();
    let mut key = vec![b'L'];
    key.extend_from_slice(&pos.to_be_bytes());
    let mut v = db.get(&key).unwrap().expect("record exists").to_vec();
    f(&mut v);
    db.insert(key, v).unwrap();
    db.flush().unwrap();
}

#[test]
fn corrupt_tail_record_is_reported_and_cut() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 10);
    // Flip a byte inside the payload of the event at position 7 (one event per record here).
    damage(dir.path(), 7, |v| {
        let n = v.len();
        v[n - 2] ^= 0x5a;
    });
    let (log, report) = Log::open(LogConfig::new(dir.path())).unwrap();
    let bad = report.corrupt.clone().expect("corruption reported");
    assert_eq!(bad.position, 7);
    assert!(bad.reason.contains("checksum"), "{}", bad.reason);
    assert_eq!(report.truncated_from, Some(7));
    assert_eq!(report.quarantined_records, 3);
    assert_eq!(log.head(), 7);
    assert_eq!(log.stream_version("s").unwrap(), Some(6));
    let all = log.read_all(0, 100).unwrap();
    assert_eq!(all.len(), 7);
    // The log keeps working: the next append takes position 7, version 7.
    let r = log
        .append("s", EV::Exact(6), vec![ev("new", json!({}))], None)
        .unwrap();
    assert_eq!((r.positions[0], r.versions[0]), (7, 7));
    log.close().unwrap();
    drop(log);
    // And it opens clean afterwards.
    let (_log, report) = Log::open(LogConfig::new(dir.path())).unwrap();
    assert_eq!(report.corrupt, None);
    assert_eq!(report.head, 8);
}

#[test]
fn torn_record_keeps_the_intact_events_before_the_tear() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = Log::open(LogConfig::new(dir.path())).unwrap();
    // One append of 5 events is one record.
    let evs = (0..5)
        .map(|i| ev(&format!("b{i}"), json!({ "i": i })))
        .collect();
    log.append("s", EV::Any, evs, None).unwrap();
    log.close().unwrap();
    drop(log);
    // Cut the record short in the middle of its fourth event.
    damage(dir.path(), 0, |v| {
        let cut = v.len() - v.len() / 5 - 10;
        v.truncate(cut);
    });
    let (log, report) = Log::open(LogConfig::new(dir.path())).unwrap();
    let bad = report.corrupt.expect("tear reported");
    assert_eq!(bad.position, 3, "{bad:?}");
    assert_eq!(log.head(), 3);
    let ids: Vec<String> = log
        .read_all(0, 10)
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, vec!["b0", "b1", "b2"]);
}

#[test]
fn full_verification_finds_old_damage_that_a_tail_check_skips() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 1100);
    damage(dir.path(), 5, |v| v[3] ^= 1); // header damage in an old record
    let mut cfg = LogConfig::new(dir.path());
    cfg.verify_on_open = VerifyOnOpen::Tail;
    let (log, report) = Log::open(cfg.clone()).unwrap();
    assert_eq!(
        report.corrupt, None,
        "the tail check does not reach position 5"
    );
    // A read that reaches it reports the position.
    let err = log.read_all(5, 1).unwrap_err();
    assert!(
        matches!(err, outrider_runtime::Error::Corrupt { position: 5, .. }),
        "{err}"
    );
    log.close().unwrap();
    drop(log);
    cfg.verify_on_open = VerifyOnOpen::Full;
    let (log, report) = Log::open(cfg).unwrap();
    assert_eq!(report.corrupt.map(|c| c.position), Some(5));
    assert_eq!(log.head(), 5);
}

#[test]
fn inspect_reports_streams_and_checksums() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 12);
    let r = outrider_runtime::inspect::inspect(dir.path(), None).unwrap();
    assert_eq!((r.events, r.records, r.head), (12, 12, 12));
    assert_eq!(r.streams["s"].events, 12);
    assert_eq!(r.streams["s"].last_version, 11);
    assert!(r.corrupt.is_empty());
    assert!(r.size_on_disk > 0);
}

#[test]
fn unopenable_directory_is_moved_aside_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fill(&data, 3);
    // Garbage over sled's config file makes the engine refuse the directory.
    std::fs::write(
        data.join("conf"),
        b"\x00\x01garbage that is not a sled config",
    )
    .unwrap();
    let (log, report) = Log::open(LogConfig::new(&data)).unwrap();
    let aside = report.quarantined_dir.expect("directory moved aside");
    assert!(aside.exists());
    assert_eq!(log.head(), 0);
    log.append("s", EV::Any, vec![ev("fresh", json!({}))], None)
        .unwrap();
}

/// A start that dies inside the storage engine's open (a panic under `panic = "abort"`) leaves a
/// count in the directory; after three such starts in a row the directory is treated as
/// damaged and moved aside. Fewer are forgiven, and a refusal that returns does not count.
#[test]
fn a_crash_loop_while_opening_moves_the_directory_aside() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fill(&data, 3);
    let attempts = data.join("open-attempts");

    // Two starts died while opening: the next one opens the data and clears the count.
    std::fs::write(&attempts, "2").unwrap();
    let (log, report) = Log::open(LogConfig::new(&data)).unwrap();
    assert!(report.quarantined_dir.is_none());
    assert_eq!(log.head(), 3);
    assert!(!attempts.exists(), "a successful open clears the count");

    // Another instance holds the directory: that refusal returns, so it is not counted.
    assert!(Log::open(LogConfig::new(&data)).is_err());
    assert!(!attempts.exists(), "a refusal that returns does not count");
    log.close().unwrap();
    drop(log);

    // Three starts died while opening: damaged, moved aside, a fresh log starts.
    std::fs::write(&attempts, "3").unwrap();
    let (log, report) = Log::open(LogConfig::new(&data)).unwrap();
    let aside = report.quarantined_dir.expect("directory moved aside");
    assert!(aside.join("db").exists(), "the old data is kept aside");
    assert_eq!(log.head(), 0);
    assert!(!attempts.exists());
    // Inspecting (report-only) never counts or moves anything.
    log.close().unwrap();
    drop(log);
    std::fs::write(&attempts, "5").unwrap();
    outrider_runtime::inspect::inspect(&data, None).unwrap();
    assert_eq!(std::fs::read_to_string(&attempts).unwrap(), "5");
}

#[test]
fn inspect_reports_damage_without_repairing_it() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 6);
    damage(dir.path(), 4, |v| {
        let n = v.len();
        v[n - 1] ^= 0x01;
    });
    let r = outrider_runtime::inspect::inspect(dir.path(), None).unwrap();
    assert_eq!(r.corrupt.first().map(|c| c.0), Some(4), "{:?}", r.corrupt);
    // Nothing was cut: a repairing open still finds the damage at the same place.
    let (log, report) = Log::open(LogConfig::new(dir.path())).unwrap();
    assert_eq!(report.corrupt.map(|c| c.position), Some(4));
    assert_eq!(log.head(), 4);
    // Inspecting a directory that holds no log is an error, and creates nothing.
    let missing = dir.path().join("nope");
    assert!(outrider_runtime::inspect::inspect(&missing, None).is_err());
    assert!(!missing.exists());
}
