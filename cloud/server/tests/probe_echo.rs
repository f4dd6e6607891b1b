//! `probe_echo_listen`: the cloud binary answers the agents' UDP echo link probes.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use outrider_probe::probe::udp::UdpEchoClient;
use outrider_probe::probe::Bind;
use outrider_probe::ProbeOutcome;

const BIN: &str = env!("CARGO_BIN_EXE_outrider-cloud");

/// Kills the child when the test ends, passed or not.
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_cloud_answers_udp_echo_probes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cloud.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\nquic = false\ndata_dir = {:?}\ninsecure = true\nprobe_echo_listen = \"127.0.0.1:0\"\n",
            dir.path().join("data")
        ),
    )
    .unwrap();
    let mut child = Kill(
        Command::new(BIN)
            .args(["--config", cfg.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("probe echo listening") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the echo responder did not start");
    let addr: std::net::SocketAddr = line
        .split("listen=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));

    let mut client = UdpEchoClient::open(addr, &Bind::default()).unwrap();
    for _ in 0..3 {
        let outcome = client.probe(Duration::from_secs(5)).await;
        assert!(matches!(outcome, ProbeOutcome::Ok { .. }), "{outcome:?}");
    }
    // Once the server is gone, probes fail.
    drop(child);
    let outcome = client.probe(Duration::from_millis(300)).await;
    assert!(!outcome.is_ok(), "{outcome:?}");
}
