//! `outrider bus test-event-pattern`, run as the real binary (offline: no agent).

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_outrider");

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(pattern: &str, event: &str) -> Out {
    let out = Command::new(BIN)
        // An agent address that nothing listens on: the command must not need one.
        .args(["--agent", "http://127.0.0.1:9", "bus", "test-event-pattern"])
        .args(["--event-pattern", pattern, "--event", event])
        .output()
        .unwrap();
    Out {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

const EVENT: &str = r#"{"id": "1", "source": "aws.ec2", "detail-type": "EC2 Instance State-change Notification",
  "account": "123456789012", "region": "us-east-1", "time": "2022-07-13T13:48:01Z", "resources": [],
  "detail": {"state": "running", "count": 3}}"#;

#[test]
fn a_matching_event_prints_result_true() {
    let out = run(
        r#"{"source": ["aws.ec2"], "detail": {"count": [{"numeric": [">", 2]}]}}"#,
        EVENT,
    );
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert_eq!(out.stdout.trim(), r#"{"Result":true}"#);
}

#[test]
fn a_non_matching_event_prints_result_false_and_exits_0() {
    let out = run(r#"{"detail": {"state": ["stopped"]}}"#, EVENT);
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert_eq!(out.stdout.trim(), r#"{"Result":false}"#);
}

#[test]
fn an_invalid_pattern_exits_2_with_the_aws_reason() {
    let out = run(r#"{"detail": {"state": "running"}}"#, EVENT);
    assert_eq!(out.code, Some(2));
    assert_eq!(out.stdout, "");
    assert_eq!(
        out.stderr.trim(),
        r#"InvalidEventPatternException: Event pattern is not valid. Reason: "state" must be an object or an array"#
    );
    let out = run(r#"{"a": [{"wildcard": "a**b"}]}"#, EVENT);
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr
            .contains("Consecutive wildcard characters at pos 2"),
        "{}",
        out.stderr
    );
    let out = run("not json", EVENT);
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr.starts_with("InvalidEventPatternException: "),
        "{}",
        out.stderr
    );
}

#[test]
fn an_event_that_is_not_an_object_exits_2() {
    let out = run(r#"{"source": ["x"]}"#, r#"["not", "an", "object"]"#);
    assert_eq!(out.code, Some(2));
    assert_eq!(
        out.stderr.trim(),
        "ValidationException: Parameter Event is not valid."
    );
}

#[test]
fn at_path_reads_arguments_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("pattern.json");
    let e = dir.path().join("event.json");
    std::fs::write(
        &p,
        r#"{"detail": {"state": [{"prefix": {"equals-ignore-case": "RUN"}}]}}"#,
    )
    .unwrap();
    std::fs::write(&e, EVENT).unwrap();
    let out = run(&format!("@{}", p.display()), &format!("@{}", e.display()));
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert_eq!(out.stdout.trim(), r#"{"Result":true}"#);

    let out = run(
        &format!("@{}", dir.path().join("missing.json").display()),
        EVENT,
    );
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("missing.json"), "{}", out.stderr);
}
