//! Sync failover between two links on loopback (issue 6): the agent probes two "links" — two
//! loopback source addresses, 127.0.0.2 (`dx`, preferred) and 127.0.0.3 (`vpn`) — with UDP echo,
//! and its sync connection binds to the active link's `sync_local_addr`. The cloud (the ingest
//! server in-process, gRPC) sits behind a TCP relay that records the source address of every
//! connection, so the test sees which link the cloud is reached through.
//!
//! Blackholing `dx`'s echo responder takes `dx` down: the agent fails over to `vpn` at once and
//! reconnects from 127.0.0.3; restoring it brings sync back to 127.0.0.2, but only after the
//! hold-down. A producer appends throughout; every event reaches the cloud exactly once, and the
//! link events themselves are synced too.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outrider_agent::config::{LinkSection, ProbeKindName, SyncSection, SyncTransport};
use outrider_agent::sync::SyncStatus;
use outrider_agent::AgentConfig;
use outrider_ingest::{LogStore, Security, ServerConfig};
use outrider_probe::probe::udp::{serve_udp_echo, EchoStats};
use outrider_proto::Event;
use outrider_runtime::{ExpectedVersion, Log};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const DX: &str = "127.0.0.2";
const VPN: &str = "127.0.0.3";
const HOLD_DOWN_MS: u64 = 1500;
const NODE: &str = "edge-fo";

/// Forwards TCP connections to `to`, recording each one's source address.
async fn relay(to: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<IpAddr>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peers = Arc::new(Mutex::new(Vec::new()));
    let seen = peers.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, peer)) = listener.accept().await {
            seen.lock().unwrap().push(peer.ip());
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (addr, peers)
}

/// Forwards UDP datagrams to `to` (QUIC), one upstream socket per client address, recording each
/// new client's source address.
async fn udp_relay(to: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<IpAddr>>>) {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = front.local_addr().unwrap();
    let peers = Arc::new(Mutex::new(Vec::new()));
    let seen = peers.clone();
    tokio::spawn(async move {
        let mut upstreams: BTreeMap<SocketAddr, Arc<UdpSocket>> = BTreeMap::new();
        let mut buf = vec![0u8; 65536];
        while let Ok((n, client)) = front.recv_from(&mut buf).await {
            let up = match upstreams.get(&client) {
                Some(u) => u.clone(),
                None => {
                    seen.lock().unwrap().push(client.ip());
                    let u = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                    u.connect(to).await.unwrap();
                    let (u2, front2) = (u.clone(), front.clone());
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 65536];
                        while let Ok(n) = u2.recv(&mut buf).await {
                            let _ = front2.send_to(&buf[..n], client).await;
                        }
                    });
                    upstreams.insert(client, u.clone());
                    u
                }
            };
            let _ = up.send(&buf[..n]).await;
        }
    });
    (addr, peers)
}

/// A UDP echo responder that can be stopped (blackholed: requests go unanswered) and restarted
/// on the same socket.
struct Echo {
    socket: Arc<UdpSocket>,
    task: Option<JoinHandle<()>>,
}

impl Echo {
    async fn start() -> Echo {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let mut e = Echo { socket, task: None };
        e.answer();
        e
    }

    fn addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    fn answer(&mut self) {
        let socket = self.socket.clone();
        self.task = Some(tokio::spawn(async move {
            let stats = EchoStats::default();
            let _ = serve_udp_echo(&socket, &stats).await;
        }));
    }

    fn blackhole(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

fn link(name: &str, priority: u32, source: &str, echo: SocketAddr) -> LinkSection {
    let text = format!(
        "name = \"{name}\"\npriority = {priority}\nprobe = \"udp_echo\"\ntarget = \"{echo}\"\n\
         interval_ms = 50\ntimeout_ms = 50\nbind_address = \"{source}\"\n\
         sync_local_addr = \"{source}\"\n"
    );
    toml::from_str(&text).unwrap()
}

async fn wait_status(
    status: &mut watch::Receiver<SyncStatus>,
    what: &str,
    f: impl Fn(&SyncStatus) -> bool,
) {
    let ok = tokio::time::timeout(Duration::from_secs(30), status.wait_for(|s| f(s)))
        .await
        .is_ok_and(|r| r.is_ok());
    assert!(ok, "{what}: not in time; status {:?}", *status.borrow());
}

/// The last connection the relay accepted came from `ip` (polls with a deadline).
async fn wait_last_peer(peers: &Mutex<Vec<IpAddr>>, ip: &str) {
    let ip: IpAddr = ip.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if peers.lock().unwrap().last() == Some(&ip) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the cloud was not reached from {ip}: {:?}",
            peers.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn detail_of(e: &Event) -> serde_json::Value {
    serde_json::from_str(&e.detail).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_sync_follows_the_active_link_and_fails_back_after_the_hold_down() {
    failover(SyncTransport::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quic_sync_follows_the_active_link_and_fails_back_after_the_hold_down() {
    failover(SyncTransport::Quic).await;
}

async fn failover(transport: SyncTransport) {
    let dir = tempfile::tempdir().unwrap();
    // The cloud: the ingest server over the runtime's log, behind the relay.
    let (cloud_log, _) = Log::open(outrider_ingest::store::cloud_log_config(
        dir.path().join("cloud"),
    ))
    .unwrap();
    let mut scfg = ServerConfig::new("127.0.0.1:0".parse().unwrap(), Security::Insecure);
    scfg.quic = transport == SyncTransport::Quic;
    let server = outrider_ingest::Server::bind(scfg).await.unwrap();
    let (relay_addr, peers) = match transport {
        SyncTransport::Quic => udp_relay(server.local_addr()).await,
        _ => relay(server.local_addr()).await,
    };
    let (stop_cloud, cloud_stopped) = tokio::sync::oneshot::channel::<()>();
    let store = LogStore::new(cloud_log.clone());
    let cloud = tokio::spawn(async move {
        server
            .run(store, async {
                let _ = cloud_stopped.await;
            })
            .await
    });

    let mut dx_echo = Echo::start().await;
    let vpn_echo = Echo::start().await;

    let mut cfg = AgentConfig {
        node_id: NODE.into(),
        data_dir: dir.path().join("agent"),
        ..AgentConfig::default()
    };
    cfg.api.listen = "127.0.0.1:0".parse().unwrap();
    cfg.api.metrics_listen = "127.0.0.1:0".parse().unwrap();
    cfg.sync = Some(SyncSection {
        cloud_url: format!("http://{relay_addr}"),
        insecure: true,
        transport,
        connect_timeout_ms: 2_000,
        ..SyncSection::default()
    });
    cfg.links = vec![
        link("dx", 10, DX, dx_echo.addr()),
        link("vpn", 20, VPN, vpn_echo.addr()),
    ];
    assert_eq!(cfg.links[0].probe, ProbeKindName::UdpEcho);
    cfg.failover.hold_down_ms = HOLD_DOWN_MS;
    cfg.validate().unwrap();
    let agent = outrider_agent::start(cfg).await.unwrap();
    let mut status = agent.sync_status().unwrap();

    // Both links come up; dx (preferred) carries sync.
    wait_status(&mut status, "streaming over dx", |s| {
        s.streaming && s.link.as_deref() == Some("dx")
    })
    .await;
    wait_last_peer(&peers, DX).await;

    // A producer appends throughout the failover and the fail-back.
    let (stop_producer, mut producer_stopped) = watch::channel(false);
    let log = agent.log().clone();
    let producer = tokio::spawn(async move {
        let mut n = 0u64;
        while !*producer_stopped.borrow_and_update() {
            let e = Event {
                source: "test".into(),
                detail_type: "Tick".into(),
                detail: format!("{{\"i\":{n}}}"),
                ..Default::default()
            };
            log.append_async("ticks", ExpectedVersion::Any, vec![e], None)
                .await
                .unwrap();
            n += 1;
            // Pacing only (a steady flow), not synchronisation.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        n
    });

    // dx stops answering: failover to vpn, and sync reconnects from 127.0.0.3.
    dx_echo.blackhole();
    wait_status(&mut status, "streaming over vpn", |s| {
        s.streaming && s.link.as_deref() == Some("vpn")
    })
    .await;
    wait_last_peer(&peers, VPN).await;
    let snapshot = agent.links().unwrap();
    assert_eq!(snapshot.active.as_deref(), Some("vpn"));
    // /metrics tells the same (polled: a scrape is a moment of its own).
    let metrics = agent.metrics_addr();
    let wants = [
        "\noutrider_sync_link_info{link=\"vpn\"} 1\n",
        "\noutrider_link_active{link=\"vpn\"} 1\n",
        "\noutrider_link_state{link=\"dx\",state=\"down\"} 1\n",
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = tokio::task::spawn_blocking(move || http_get(metrics, "/metrics"))
            .await
            .unwrap();
        let missing: Vec<&str> = wants
            .iter()
            .copied()
            .filter(|w| !text.contains(w))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "{missing:?} not in\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // dx answers again: sync moves back, but only after the hold-down.
    dx_echo.answer();
    let restored = Instant::now();
    wait_status(&mut status, "streaming over dx again", |s| {
        s.streaming && s.link.as_deref() == Some("dx")
    })
    .await;
    assert!(
        restored.elapsed() >= Duration::from_millis(HOLD_DOWN_MS),
        "failed back after {:?}, before the hold-down",
        restored.elapsed()
    );
    wait_last_peer(&peers, DX).await;

    stop_producer.send_replace(true);
    let produced = producer.await.unwrap();
    assert!(produced > 0);

    // Everything the agent holds reaches the cloud.
    let deadline = Instant::now() + Duration::from_secs(30);
    while agent.log().outbox_cursor("cloud", "normal").unwrap() < agent.log().head() {
        assert!(Instant::now() < deadline, "not synced in time");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let expected_total = agent.log().head();
    agent.shutdown().await.unwrap();
    let _ = stop_cloud.send(());
    cloud.await.unwrap().unwrap();

    // Exactly once in the cloud: every tick once, and the link events too.
    let stored = cloud_log.read_all(0, 10_000_000).unwrap();
    let mut ticks: BTreeMap<u64, u32> = BTreeMap::new();
    let mut link_events = 0;
    for e in &stored {
        assert_eq!(e.origin_node, NODE);
        if e.stream == format!("{NODE}/ticks") {
            *ticks
                .entry(detail_of(e)["i"].as_u64().unwrap())
                .or_default() += 1;
        } else if e.stream == format!("{NODE}/outrider.links") {
            link_events += 1;
        }
    }
    assert_eq!(stored.len() as u64, expected_total, "events in the cloud");
    assert_eq!(ticks.len() as u64, produced, "distinct ticks in the cloud");
    assert!(ticks.values().all(|n| *n == 1), "a tick stored twice");
    assert_eq!(ticks.keys().next_back(), Some(&(produced - 1)));
    assert!(link_events >= 3, "link events synced: {link_events}");
    // The link events reached the cloud: dx down, the failover to vpn, the fail-back. (The
    // agent's own log may have reclaimed them once delivered.)
    let failovers: Vec<serde_json::Value> = stored
        .iter()
        .filter(|e| e.stream == format!("{NODE}/outrider.links") && e.detail_type == "LinkFailover")
        .map(|e| {
            assert_eq!(e.source, "outrider.probe");
            detail_of(e)
        })
        .collect();
    let to_vpn = failovers
        .iter()
        .position(|d| d["from"] == "dx" && d["to"] == "vpn")
        .unwrap_or_else(|| panic!("no failover dx -> vpn: {failovers:?}"));
    let back = failovers[to_vpn..]
        .iter()
        .find(|d| d["from"] == "vpn" && d["to"] == "dx")
        .unwrap_or_else(|| panic!("no fail-back vpn -> dx: {failovers:?}"));
    assert!(back["held_ms"].as_u64().unwrap() >= HOLD_DOWN_MS, "{back}");
    assert!(
        stored.iter().any(|e| e.detail_type == "LinkStateChanged"
            && detail_of(e)["link"] == "dx"
            && detail_of(e)["to"] == "down"),
        "no dx down transition"
    );

    // The origin sequence is dense: nothing lost or duplicated.
    let mut seqs: Vec<u64> = stored.iter().map(|e| e.origin_seq).collect();
    seqs.sort_unstable();
    assert!(seqs.iter().enumerate().all(|(i, s)| *s == i as u64));
    cloud_log.close().unwrap();
}
