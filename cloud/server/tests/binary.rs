//! The real `outrider-cloud` binary: configuration errors, and an in-process agent syncing to it
//! (insecure mode, so no certificates are needed here; mTLS is tested in cloud/ingest/tests).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use outrider_agent::config::SyncSection;
use outrider_agent::AgentConfig;
use outrider_proto::Event;
use outrider_runtime::{ExpectedVersion, Log, LogConfig};

const BIN: &str = env!("CARGO_BIN_EXE_outrider-cloud");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn configuration_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cloud.toml");
    std::fs::write(&cfg, "listen = \"127.0.0.1:0\"\ndata_dir = \"d\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tls: required"), "{stderr}");

    let tls = dir.path().join("missing.pem");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"d\"\n[tls]\nca = {tls:?}\ncert = {tls:?}\nkey = {tls:?}\n"
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap()])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("missing.pem"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_syncs_to_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let data = dir.path().join("cloud");
    let cfg = dir.path().join("cloud.toml");
    std::fs::write(
        &cfg,
        format!("listen = \"127.0.0.1:{port}\"\ndata_dir = {data:?}\ninsecure = true\n"),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("ingest server listening") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the server did not start");

    let mut acfg = AgentConfig {
        node_id: "gw-9".into(),
        data_dir: dir.path().join("agent"),
        ..AgentConfig::default()
    };
    acfg.api.listen = "127.0.0.1:0".parse().unwrap();
    acfg.api.metrics_listen = "127.0.0.1:0".parse().unwrap();
    acfg.sync = Some(SyncSection {
        cloud_url: format!("http://127.0.0.1:{port}"),
        insecure: true,
        ..SyncSection::default()
    });
    let agent = outrider_agent::start(acfg).await.unwrap();
    let events: Vec<Event> = (0..50)
        .map(|i| Event {
            source: "test".into(),
            detail_type: "Tick".into(),
            detail: format!("{{\"i\":{i}}}"),
            ..Default::default()
        })
        .collect();
    agent
        .log()
        .append_async("ticks", ExpectedVersion::Any, events, None)
        .await
        .unwrap();
    // The outbox is acknowledged only through what the cloud committed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while agent.log().outbox_cursor("cloud", "normal").unwrap() < agent.log().head() {
        assert!(tokio::time::Instant::now() < deadline, "not synced in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.shutdown().await.unwrap();

    // SIGINT: a graceful stop that closes the store.
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on the child we spawned.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let status = child.wait().unwrap();
    let log_text = reader.join().unwrap();
    assert!(status.success(), "{status:?}\n{log_text}");
    assert!(log_text.contains("INSECURE SYNC INGEST"), "{log_text}");

    let (log, _) = Log::open(LogConfig::new(&data)).unwrap();
    let stored = log.read_all(0, 1000).unwrap();
    assert_eq!(stored.len(), 50);
    for (i, e) in stored.iter().enumerate() {
        assert_eq!(e.origin_node, "gw-9");
        assert_eq!(e.stream, "gw-9/ticks");
        assert_eq!(e.origin_seq, i as u64);
    }
    log.close().unwrap();
}
