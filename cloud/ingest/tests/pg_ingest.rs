//! The ingest on PostgreSQL (`EventStoreIngest` over `PgStore`): an agent syncs over QUIC and
//! gRPC to a server committing into PostgreSQL, the server is replaced by a new one on the same
//! database mid-stream (as a second stateless replica would take over), and every event the
//! agent appended is in the database exactly once, in the node's order per stream. Needs
//! `OUTRIDER_TEST_PG` (cloud/store/scripts/with-pg.sh); fails without it, never skips.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outrider_agent::config::{SyncSection, SyncTransport};
use outrider_agent::AgentConfig;
use outrider_ingest::{EventStoreIngest, Security, Server, ServerConfig};
use outrider_proto::Event;
use outrider_runtime::ExpectedVersion;
use outrider_store::{EventStore, PgConfig, PgStore};
use tokio::sync::oneshot;

const PG_ENV: &str = "OUTRIDER_TEST_PG";

async fn pg() -> (Arc<dyn EventStore>, String) {
    let url = match std::env::var(PG_ENV) {
        Ok(u) if !u.trim().is_empty() => u,
        _ => panic!("{PG_ENV} is not set: run under `bash cloud/store/scripts/with-pg.sh cargo test -p outrider-ingest --test pg_ingest`"),
    };
    let schema = format!("ing{}", uuid_like());
    let mut cfg = PgConfig::new(url);
    cfg.schema = schema.clone();
    cfg.poll_interval = Duration::from_millis(10);
    let store = PgStore::connect(cfg)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {PG_ENV}: {e}"));
    (Arc::new(store), schema)
}

/// A schema name no other run uses.
fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}_{nanos}", std::process::id())
}

struct Cloud {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(store: Arc<dyn EventStore>, listen: SocketAddr) -> Cloud {
    let cfg = ServerConfig::new(listen, Security::Insecure);
    let deadline = Instant::now() + Duration::from_secs(10);
    let server = loop {
        match Server::bind(cfg.clone()).await {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                eprintln!("bind: {e:#}; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e:#}"),
        }
    };
    let addr = server.local_addr();
    let (stop, rx) = oneshot::channel();
    let task = tokio::spawn(server.run(EventStoreIngest::new(store), async move {
        let _ = rx.await;
    }));
    Cloud { addr, stop, task }
}

async fn node_events(store: &Arc<dyn EventStore>, node: &str) -> Vec<Event> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = store.read_all(after, 4096).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.position);
        out.extend(page.into_iter().filter(|e| e.origin_node == node));
    }
    out
}

async fn case(transport: SyncTransport) {
    let (store, _schema) = pg().await;
    let tmp = tempfile::tempdir().unwrap();
    let cloud = start(store.clone(), "127.0.0.1:0".parse().unwrap()).await;
    let port = cloud.addr.port();
    let mut cfg = AgentConfig {
        node_id: "pg-1".into(),
        data_dir: tmp.path().join("agent"),
        ..AgentConfig::default()
    };
    cfg.api.listen = "127.0.0.1:0".parse().unwrap();
    cfg.api.metrics_listen = "127.0.0.1:0".parse().unwrap();
    cfg.sync = Some(SyncSection {
        cloud_url: format!("http://127.0.0.1:{port}"),
        insecure: true,
        transport,
        ..SyncSection::default()
    });
    let agent = outrider_agent::start(cfg).await.unwrap();
    let log = agent.log().clone();
    let mut positions = Vec::new();
    let append = |from: u64| {
        let log = log.clone();
        async move {
            let mut p = Vec::new();
            for i in (from..from + 200).step_by(10) {
                let events = (i..i + 10)
                    .map(|k| Event {
                        source: "t".into(),
                        detail_type: "Tick".into(),
                        detail: format!("{{\"i\":{k}}}"),
                        ..Default::default()
                    })
                    .collect();
                let r = log
                    .append_async(
                        &format!("s-{}", (i / 10) % 3),
                        ExpectedVersion::Any,
                        events,
                        None,
                    )
                    .await
                    .unwrap();
                p.extend(r.positions);
            }
            p
        }
    };
    positions.extend(append(0).await);
    // Some committed, then the server is replaced by another on the same database and port.
    let deadline = Instant::now() + Duration::from_secs(60);
    while node_events(&store, "pg-1").await.is_empty() {
        assert!(Instant::now() < deadline, "nothing committed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = cloud.stop.send(());
    cloud.task.await.unwrap().unwrap();
    positions.extend(append(200).await);
    let cloud = start(store.clone(), format!("127.0.0.1:{port}").parse().unwrap()).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = log.outbox_cursor("cloud", "normal").unwrap() >= log.head()
            && node_events(&store, "pg-1").await.len() >= positions.len();
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "not synced in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events = node_events(&store, "pg-1").await;
    let seqs: Vec<u64> = events.iter().map(|e| e.origin_seq).collect();
    let unique: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(unique.len(), seqs.len(), "duplicates in PostgreSQL");
    assert_eq!(
        unique,
        positions.iter().copied().collect::<BTreeSet<_>>(),
        "PostgreSQL holds other events than the agent's"
    );
    for s in 0..3 {
        let stream = format!("pg-1/s-{s}");
        let per: Vec<u64> = events
            .iter()
            .filter(|e| e.stream == stream)
            .map(|e| e.origin_seq)
            .collect();
        assert!(
            per.windows(2).all(|w| w[0] < w[1]),
            "{stream} out of the node's order"
        );
    }
    // The watermarks are the store's, one per lane of the agent's epoch.
    let marks = store.watermarks("wm/pg-1/").await.unwrap();
    assert!(!marks.is_empty());
    agent.shutdown().await.unwrap();
    let _ = cloud.stop.send(());
    cloud.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_sync_into_postgres_is_exactly_once_across_a_server_replacement() {
    case(SyncTransport::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_sync_into_postgres_is_exactly_once_across_a_server_replacement() {
    case(SyncTransport::Grpc).await;
}
