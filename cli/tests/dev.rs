//! `outrider dev`: the README's first command, a local cloud and agent in one process.

use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_outrider");

fn dev(dir: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("OUTRIDER_") {
            cmd.env_remove(k);
        }
    }
    cmd.arg("dev")
        .arg("--dir")
        .arg(dir)
        .args([
            "--api",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--cloud",
            "127.0.0.1:0",
        ])
        .args(extra)
        .stdin(Stdio::null());
    cmd.output().expect("run outrider dev")
}

/// The number after `word` in `line` (`appended 123 events` → 123).
fn number_after(line: &str, word: &str) -> u64 {
    let rest = line
        .split_once(word)
        .unwrap_or_else(|| panic!("{word:?} not in {line:?}"))
        .1;
    rest.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {word:?} in {line:?}"))
}

#[test]
fn dev_streams_events_to_the_cloud_exactly_once_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dev(dir.path(), &["--duration", "2", "--rate", "1000"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    // A live status line at least once a second, with the producer's count.
    let status: Vec<&str> = stdout.lines().filter(|l| l.contains("in cloud")).collect();
    assert!(!status.is_empty(), "no status lines:\n{stdout}");
    let done = stdout
        .lines()
        .find(|l| l.starts_with("done:"))
        .unwrap_or_else(|| panic!("no summary:\n{stdout}"));
    let appended = number_after(done, "appended");
    let checked = number_after(done, "all");
    assert!(appended > 0, "{done}");
    assert_eq!(checked, appended, "{done}");
    assert!(done.contains("exactly once"), "{done}");
    // Certificates were made for the demo and the node.
    for f in ["ca.pem", "server.pem", "dev-node.pem", "dev-node-key.pem"] {
        assert!(dir.path().join("certs").join(f).exists(), "{f}");
    }

    // A second run reuses the certificates and logs and checks only its own events.
    let out = dev(dir.path(), &["--duration", "1", "--rate", "500"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done = stdout
        .lines()
        .find(|l| l.starts_with("done:"))
        .unwrap_or_else(|| panic!("no summary:\n{stdout}"));
    let second = number_after(done, "appended");
    assert_eq!(number_after(done, "all"), second, "{done}");
    assert!(
        done.contains(&format!("positions {appended}..{}", appended + second)),
        "the second run continues the agent's log: {done}"
    );
}

#[test]
fn dev_refuses_a_bad_node_name_and_transport() {
    let dir = tempfile::tempdir().unwrap();
    let out = dev(dir.path(), &["--node", "a/b", "--duration", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--node"), "{stderr}");
    let out = dev(dir.path(), &["--transport", "pigeon", "--duration", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--transport \"pigeon\""), "{stderr}");
}
