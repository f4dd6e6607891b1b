//! kill -9 a process appending at full speed, many times: every append acknowledged before the
//! kill is read back after reopening, and nothing half-written appears.
//!
//! The child is this same test binary, re-run with `OUTRIDER_CRASH_CHILD` set: it appends from
//! four threads and prints one line per acknowledged append.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::ev;
use outrider_runtime::{Direction, ExpectedVersion as EV, Log, LogConfig, StreamFrom};
use serde_json::json;

const WRITERS: u64 = 4;
const ROUNDS: u64 = 25;

/// The child's body: runs only when re-executed by `kill_nine_loses_no_acknowledged_append`.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var("OUTRIDER_CRASH_CHILD") else {
        return;
    };
    let (log, _) = Log::open(LogConfig::new(dir)).unwrap();
    let threads: Vec<_> = (0..WRITERS)
        .map(|w| {
            let log = log.clone();
            std::thread::spawn(move || {
                let stream = format!("w{w}");
                // Resume the writer's counter from what is already in its stream.
                let mut i = log.stream_version(&stream).unwrap().map_or(0, |v| v + 1);
                loop {
                    let n = 1 + (i % 7);
                    let evs = (0..n)
                        .map(|k| ev(&format!("{w}-{}", i + k), json!({ "w": w, "i": i + k, "pad": "p".repeat(((i + k) % 300) as usize) })))
                        .collect();
                    let r = log.append(&stream, EV::Exact(i.wrapping_sub(1)), evs, None);
                    let r = match (i, r) {
                        (_, Ok(r)) => r,
                        (0, Err(_)) => log
                            .append(&stream, EV::NoStream, (0..n).map(|k| ev(&format!("{w}-{k}"), json!({ "w": w, "i": k, "pad": "p".repeat(k as usize) }))).collect(), None)
                            .unwrap(),
                        (_, Err(e)) => panic!("append failed: {e}"),
                    };
                    println!("ack {w} {i} {n} {}", r.positions[0]);
                    i += n;
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

#[test]
fn kill_nine_loses_no_acknowledged_append() {
    if std::env::var("OUTRIDER_CRASH_CHILD").is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    // (writer, first i) -> (count, first position) of every acknowledged append.
    let mut acked: HashMap<(u64, u64), (u64, u64)> = HashMap::new();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env("OUTRIDER_CRASH_CHILD", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kill after a pseudo-random number of acknowledgements.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let target = 20 + seed % 400;
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut got = 0;
        while got < target {
            let Some(Ok(line)) = lines.next() else { break };
            let f: Vec<u64> = match line.strip_prefix("ack ") {
                Some(rest) => rest.split(' ').filter_map(|x| x.parse().ok()).collect(),
                None => continue,
            };
            acked.insert((f[0], f[1]), (f[2], f[3]));
            got += 1;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(got > 0, "round {round}: the child acknowledged nothing");
    }

    let (log, report) = Log::open(LogConfig::new(dir.path())).unwrap();
    assert_eq!(
        report.corrupt, None,
        "a kill left a corrupt record: {report:?}"
    );
    // Every acknowledged append is there, at its position, with its content.
    for (&(w, i), &(n, pos)) in &acked {
        let page = log
            .read_stream(
                &format!("w{w}"),
                StreamFrom::Version(i),
                Direction::Forwards,
                n as usize,
            )
            .unwrap();
        assert_eq!(page.events.len() as u64, n, "writer {w} append at {i} lost");
        for (k, e) in page.events.iter().enumerate() {
            assert_eq!(e.position, pos + k as u64);
            assert_eq!(e.id, format!("{w}-{}", i + k as u64));
            let d: serde_json::Value = serde_json::from_str(&e.detail).unwrap();
            assert_eq!(d["i"], json!(i + k as u64));
        }
    }
    // Nothing half-written: the log is dense, every event decodes, streams have no gaps.
    let all = log.read_all(0, usize::MAX).unwrap();
    assert_eq!(all.len() as u64, log.head());
    let mut next_version: HashMap<String, u64> = HashMap::new();
    for (p, e) in all.iter().enumerate() {
        assert_eq!(e.position, p as u64);
        let v = next_version.entry(e.stream.clone()).or_default();
        assert_eq!(e.version, *v, "gap in stream {}", e.stream);
        *v += 1;
        serde_json::from_str::<serde_json::Value>(&e.detail).unwrap();
    }
}
