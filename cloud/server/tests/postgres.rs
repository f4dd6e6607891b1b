//! `outrider-cloud` with `[store] postgres`: an agent syncs to the binary, which commits into
//! PostgreSQL; after a kill -9 a new process on the same database resumes; every event is there
//! exactly once, and the bus (on the same store) took each into `bus/default` once. Needs
//! `OUTRIDER_TEST_PG` (cloud/store/scripts/with-pg.sh); fails without it, never skips.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use outrider_agent::config::SyncSection;
use outrider_agent::AgentConfig;
use outrider_proto::Event;
use outrider_runtime::ExpectedVersion;
use outrider_store::{EventStore, PgConfig, PgStore};

const BIN: &str = env!("CARGO_BIN_EXE_outrider-cloud");

fn pg_url() -> String {
    match std::env::var("OUTRIDER_TEST_PG") {
        Ok(u) if !u.trim().is_empty() => u,
        _ => panic!("OUTRIDER_TEST_PG is not set: run under `bash cloud/store/scripts/with-pg.sh cargo test -p outrider-cloud --test postgres`"),
    }
}

fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn start(cfg: &std::path::Path) -> Child {
    let mut child = Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("ingest server listening") {
                let _ = tx.send(());
            }
            eprintln!("cloud: {line}");
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the cloud did not start");
    child
}

async fn all(store: &Arc<dyn EventStore>) -> Vec<Event> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = store.read_all(after, 4096).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.position);
        out.extend(page);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_on_postgres_keeps_every_event_once_across_a_kill() {
    let schema = format!(
        "srv{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("cloud.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = {:?}\ninsecure = true\n[store]\npostgres = {:?}\nschema = \"{schema}\"\n",
            dir.path().join("unused"),
            pg_url()
        ),
    )
    .unwrap();
    let mut cloud = start(&cfg);
    let mut pcfg = PgConfig::new(pg_url());
    pcfg.schema = schema.clone();
    let store: Arc<dyn EventStore> = Arc::new(PgStore::connect(pcfg).await.unwrap());

    let mut acfg = AgentConfig {
        node_id: "pg-gw".into(),
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
    let log = agent.log().clone();
    let batch = |from: u64| -> Vec<Event> {
        (from..from + 50)
            .map(|i| Event {
                source: "t".into(),
                detail_type: "Tick".into(),
                detail: format!("{{\"i\":{i}}}"),
                ..Default::default()
            })
            .collect()
    };
    log.append_async("ticks", ExpectedVersion::Any, batch(0), None)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !all(&store).await.iter().any(|e| e.origin_node == "pg-gw") {
        assert!(tokio::time::Instant::now() < deadline, "nothing committed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cloud.kill().unwrap();
    cloud.wait().unwrap();
    log.append_async("ticks", ExpectedVersion::Any, batch(50), None)
        .await
        .unwrap();
    let mut cloud = start(&cfg);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let events = all(&store).await;
        let synced = events.iter().filter(|e| e.stream == "pg-gw/ticks").count();
        let bused = events.iter().filter(|e| e.stream == "bus/default").count();
        if synced >= 100
            && bused >= 100
            && log.outbox_cursor("cloud", "normal").unwrap() >= log.head()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not synced: {synced} in the node's stream, {bused} in the bus"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events = all(&store).await;
    let seqs: Vec<u64> = events
        .iter()
        .filter(|e| e.stream == "pg-gw/ticks")
        .map(|e| e.origin_seq)
        .collect();
    assert_eq!(
        seqs,
        (0..100).collect::<Vec<u64>>(),
        "every event once, in order"
    );
    let ids: BTreeSet<&str> = events
        .iter()
        .filter(|e| e.stream == "bus/default")
        .map(|e| e.id.as_str())
        .collect();
    assert_eq!(ids.len(), 100, "each event entered the bus once");
    assert_eq!(
        events.iter().filter(|e| e.stream == "bus/default").count(),
        100
    );
    agent.shutdown().await.unwrap();
    cloud.kill().unwrap();
    cloud.wait().unwrap();
}
