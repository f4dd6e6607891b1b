//! Runs the example binary twice on one data directory: it works, forwards everything, and
//! continues from its snapshots after a restart.

use std::process::Command;

fn run(dir: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_outrider-example-embedded-gateway"))
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn example_embeds_the_runtime_and_resumes_from_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let first = run(dir.path());
    assert!(first.contains("boiler: 20 readings"), "{first}");
    assert!(
        first.contains("(snapshot at None, 20 events replayed)"),
        "{first}"
    );
    assert!(first.contains("forwarded 40 telemetry events"), "{first}");
    // Readings over 35 C (16..19 on the first run, 36..39 C) raise alarms in the high class.
    assert!(first.contains("forwarded 8 alarm events"), "{first}");
    let second = run(dir.path());
    assert!(second.contains("boiler: 40 readings"), "{second}");
    assert!(
        second.contains("(snapshot at Some(19), 20 events replayed)"),
        "{second}"
    );
    assert!(second.contains("forwarded 40 telemetry events"), "{second}");
    assert!(second.contains("forwarded 40 alarm events"), "{second}");
    assert!(second.contains("reclaimed"), "{second}");
}
