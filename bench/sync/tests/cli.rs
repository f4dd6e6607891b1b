//! The `sync-bench` binary's helper subcommands as hil-tests/run.sh uses them.

use std::process::Command;

use outrider_ingest::{IngestStore, LogStore};
use outrider_proto::Event;
use outrider_runtime::sync::{CommitOutcome, CommitRequest};
use outrider_runtime::Log;

const BIN: &str = env!("CARGO_BIN_EXE_sync-bench");

fn event(seq: u64, i: u64) -> Event {
    Event {
        id: format!("id-{seq}"),
        source: "test".into(),
        detail_type: "T".into(),
        detail: format!(r#"{{"i":"{i:012}","t":"{:020}"}}"#, 0),
        stream: format!("s-{}", i % 2),
        origin_node: "n1".into(),
        origin_seq: seq,
        position: seq,
        ..Default::default()
    }
}

fn commit(store: &LogStore, prev: Option<u64>, seqs: &[(u64, u64)]) {
    let r = CommitRequest {
        node: "n1".into(),
        epoch: "e".into(),
        lane: "normal".into(),
        batch_seq: 1,
        prev_watermark: prev,
        new_watermark: seqs.last().unwrap().0,
        events: seqs.iter().map(|&(s, i)| event(s, i)).collect(),
        duplicates: 0,
    };
    assert_eq!(store.commit(r), CommitOutcome::Committed);
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn verify_reports_exactly_once_and_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cloud");
    {
        let (log, _) = Log::open(outrider_ingest::store::cloud_log_config(&data)).unwrap();
        let store = LogStore::new(log.clone());
        commit(&store, None, &[(1, 0), (2, 1), (3, 2)]);
        log.close().unwrap();
    }
    let d = data.to_str().unwrap();
    let (ok, out, err) = run(&["verify", "--data", d, "--node", "n1", "--expect", "3"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("3 events of node n1, each exactly once"),
        "{out}"
    );

    let (ok, _, err) = run(&["verify", "--data", d, "--node", "n1", "--expect", "4"]);
    assert!(!ok);
    assert!(err.contains("NOT exactly once"), "{err}");
    assert!(err.contains("1 indices missing (the first: 3)"), "{err}");

    let (ok, _, err) = run(&["verify", "--data", "/nonexistent/dir", "--expect", "1"]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/dir: no such directory"), "{err}");
}

#[test]
fn the_benchmark_names_a_missing_agent_binary() {
    let (ok, _, err) = run(&["--transport", "grpc", "--agent-bin", "/nonexistent/agent"]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/agent not found"), "{err}");
}

#[test]
fn wait_drained_gives_up_at_its_deadline() {
    // Nothing listens on port 1: the wait fails after its timeout and says why.
    let (ok, _, err) = run(&[
        "wait-drained",
        "--metrics",
        "http://127.0.0.1:1/metrics",
        "--timeout",
        "1",
    ]);
    assert!(!ok);
    assert!(err.contains("not drained after 1 s"), "{err}");
}
