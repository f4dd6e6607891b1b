//! The real `outrider-cloud` binary: configuration errors, and an in-process agent syncing to it
//! over QUIC (the agent's default `auto`; insecure mode, so no certificates are needed here; mTLS
//! and gRPC are tested in cloud/ingest/tests).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use outrider_agent::config::SyncSection;
use outrider_agent::sync::TransportKind;
use outrider_agent::AgentConfig;
use outrider_proto::Event;
use outrider_runtime::{ExpectedVersion, Log, LogConfig};

const BIN: &str = env!("CARGO_BIN_EXE_outrider-cloud");

/// A port free on both TCP and UDP (the server listens on both).
fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The body of `GET path` over HTTP/1.0.
fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(
        out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"),
        "{out}"
    );
    out
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
        format!(
            "listen = \"127.0.0.1:{port}\"\nmetrics_listen = \"127.0.0.1:0\"\ndata_dir = {data:?}\ninsecure = true\n"
        ),
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
    let (mtx, mrx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("ingest server listening") {
                let _ = tx.send(());
            }
            if line.contains("metrics on /metrics") {
                let _ = mtx.send(line.clone());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the server did not start");
    let metrics_line = mrx
        .recv_timeout(Duration::from_secs(30))
        .expect("the metrics endpoint did not start");
    let metrics_addr: std::net::SocketAddr = metrics_line
        .split("listen=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {metrics_line:?}"));

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
    let mut status = agent.sync_status().unwrap();
    let quic = tokio::time::timeout(Duration::from_secs(60), async {
        status
            .wait_for(|s| s.streaming && s.transport == Some(TransportKind::Quic))
            .await
            .is_ok()
    })
    .await;
    assert!(
        quic == Ok(true),
        "not streaming over QUIC in time: {:?}",
        *status.borrow()
    );
    drop(status);
    agent.shutdown().await.unwrap();

    // The cloud's /metrics counts what it committed, and the bus (on by default) took the
    // agent's events into the `default` bus (the bridge runs behind the ingest).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = http_get(metrics_addr, "/metrics");
        if text.contains("\noutrider_bus_put_events_total{outcome=\"accepted\"} 50\n") {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bus did not take the agent's events: {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        text.contains("\noutrider_ingest_events_committed_total 50\n"),
        "{text}"
    );
    assert!(text.contains("\noutrider_ingest_sessions_total "), "{text}");
    assert!(
        text.contains("\noutrider_bus_rules{bus=\"default\",state=\"enabled\"} 0\n"),
        "{text}"
    );

    // SIGTERM (systemd, Kubernetes): a graceful stop that closes the store.
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on the child we spawned.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    let log_text = reader.join().unwrap();
    assert!(status.success(), "{status:?}\n{log_text}");
    assert!(log_text.contains("INSECURE SYNC INGEST"), "{log_text}");

    let (log, _) = Log::open(LogConfig::new(&data)).unwrap();
    let all = log.read_all(0, 1000).unwrap();
    let stored: Vec<_> = all.iter().filter(|e| e.stream == "gw-9/ticks").collect();
    assert_eq!(stored.len(), 50);
    let in_bus: Vec<_> = all.iter().filter(|e| e.stream == "bus/default").collect();
    assert_eq!(in_bus.len(), 50, "each agent event entered the bus once");
    for (i, e) in stored.iter().enumerate() {
        assert_eq!(e.origin_node, "gw-9");
        assert_eq!(e.stream, "gw-9/ticks");
        assert_eq!(e.origin_seq, i as u64);
    }
    log.close().unwrap();
}
