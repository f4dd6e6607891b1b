//! End to end over loopback, over both transports (gRPC on TCP, QUIC on UDP): an agent
//! (outrider-agent's library `start`) syncs its outbox to the ingest server with mTLS; the cloud
//! store (the runtime's log) must hold every event exactly once in per-node order, across a
//! restart of the cloud server and network cuts; connections without a valid certificate, or
//! claiming another node, write nothing; `auto` falls back to gRPC when UDP is blocked and
//! returns to QUIC once it is not.
//!
//! (These tests live in the ingest crate so that the agent never depends on it, not even for
//! tests.)

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outrider_agent::config::{SyncSection, SyncTlsSection, SyncTransport};
use outrider_agent::sync::{SyncStatus, TransportKind};
use outrider_agent::AgentConfig;
use outrider_ingest::framing::{encode_frame, FrameDecoder, ALPN};
use outrider_ingest::{LogStore, Security, Server, ServerConfig, TlsFiles};
use outrider_proto::v1::sync_client::SyncClient;
use outrider_proto::v1::{
    agent_frame, cloud_frame, AgentFrame, Batch, CloudFrame, Hello, LaneResume, NackReason,
};
use outrider_proto::Event;
use outrider_runtime::{ExpectedVersion, Log};
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

const DEADLINE: Duration = Duration::from_secs(60);

/// A test PKI in a directory: a CA, the server's certificate, node certificates.
struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Pki {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.distinguished_name
            .push(DnType::CommonName, format!("test CA {name}"));
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
        let pki = Pki {
            dir,
            issuer: Issuer::new(p, key),
        };
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        pki.write_leaf(p, "server");
        pki
    }

    fn write_leaf(&self, mut p: CertificateParams, name: &str) {
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(self.dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(
            self.dir.join(format!("{name}-key.pem")),
            key.serialize_pem(),
        )
        .unwrap();
    }

    /// A node certificate naming `node` as `urn:outrider:node:<node>`.
    fn issue_node(&self, node: &str) {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, node);
        p.subject_alt_names = vec![SanType::URI(
            Ia5String::try_from(format!("urn:outrider:node:{node}")).unwrap(),
        )];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.write_leaf(p, node);
    }

    /// A client certificate from this CA that names no node (a DNS name only).
    fn issue_nameless(&self, name: &str) {
        let mut p = CertificateParams::new(vec![format!("{name}.example")]).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.write_leaf(p, name);
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn read(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.path(file)).unwrap()
    }

    fn server_files(&self) -> TlsFiles {
        TlsFiles {
            ca: self.path("ca.pem"),
            cert: self.path("server.pem"),
            key: self.path("server-key.pem"),
        }
    }
}

/// A running ingest server over a LogStore.
struct Cloud {
    addr: SocketAddr,
    log: Log,
    stats: std::sync::Arc<outrider_ingest::grpc::IngestStats>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

async fn open_store(dir: &Path) -> Log {
    let cfg = outrider_ingest::store::cloud_log_config(dir);
    tokio::task::spawn_blocking(move || Log::open(cfg))
        .await
        .unwrap()
        .unwrap()
        .0
}

impl Cloud {
    async fn start(store_dir: &Path, listen: SocketAddr, security: Security) -> Cloud {
        let log = open_store(store_dir).await;
        let cfg = ServerConfig::new(listen, security);
        // The port of a server that just stopped can take a moment to be free again.
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
        let stats = server.stats();
        let (stop, rx) = oneshot::channel();
        let task = tokio::spawn(server.run(LogStore::new(log.clone()), async move {
            let _ = rx.await;
        }));
        Cloud {
            addr,
            log,
            stats,
            stop,
            task,
        }
    }

    /// Stops the server and closes the store, so the directory can be opened again.
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
        let log = self.log;
        tokio::task::spawn_blocking(move || log.close())
            .await
            .unwrap()
            .unwrap();
    }

    /// Every event of `node` in the cloud store, in the store's order.
    fn events_of(&self, node: &str) -> Vec<Event> {
        let mut out = Vec::new();
        let mut from = 0;
        loop {
            let batch = self.log.read_all(from, 4096).unwrap();
            let Some(last) = batch.last() else { break };
            from = last.position + 1;
            out.extend(batch.into_iter().filter(|e| e.origin_node == node));
        }
        out
    }
}

fn agent_config(
    dir: &Path,
    node: &str,
    url: String,
    tls: Option<SyncTlsSection>,
    transport: SyncTransport,
) -> AgentConfig {
    let mut cfg = AgentConfig {
        node_id: node.into(),
        data_dir: dir.join(format!("agent-{node}")),
        ..AgentConfig::default()
    };
    cfg.api.listen = "127.0.0.1:0".parse().unwrap();
    cfg.api.metrics_listen = "127.0.0.1:0".parse().unwrap();
    cfg.sync = Some(SyncSection {
        cloud_url: url,
        insecure: tls.is_none(),
        tls,
        transport,
        ..SyncSection::default()
    });
    cfg
}

/// The transport a connection of `t` ends up on when nothing is blocked.
fn kind(t: SyncTransport) -> TransportKind {
    match t {
        SyncTransport::Grpc => TransportKind::Grpc,
        SyncTransport::Quic | SyncTransport::Auto => TransportKind::Quic,
    }
}

/// Waits until the agent's sync status satisfies `done`; returns that status.
async fn wait_status(
    agent: &outrider_agent::Running,
    what: &str,
    done: impl FnMut(&SyncStatus) -> bool,
) -> SyncStatus {
    let mut status = agent.sync_status().expect("sync is configured");
    let r = tokio::time::timeout(DEADLINE, async {
        status.wait_for(done).await.map(|s| s.clone())
    })
    .await;
    match r {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => panic!("the sync task ended while waiting for {what}"),
        Err(_) => panic!(
            "timed out waiting for {what}; status: {:?}",
            *status.borrow()
        ),
    }
}

fn node_tls(pki: &Pki, node: &str) -> SyncTlsSection {
    SyncTlsSection {
        ca: pki.path("ca.pem"),
        cert: pki.path(&format!("{node}.pem")),
        key: pki.path(&format!("{node}-key.pem")),
    }
}

fn event(i: u64) -> Event {
    Event {
        source: "test".into(),
        detail_type: "Tick".into(),
        detail: format!("{{\"i\":{i}}}"),
        ..Default::default()
    }
}

/// Appends `n` events to three streams, ten per append; returns their positions.
async fn append(log: &Log, first: u64, n: u64) -> Vec<u64> {
    let mut positions = Vec::new();
    let mut i = first;
    while i < first + n {
        let k = 10.min(first + n - i);
        let events = (i..i + k).map(event).collect();
        let stream = format!("orders-{}", (i / 10) % 3);
        let r = log
            .append_async(&stream, ExpectedVersion::Any, events, None)
            .await
            .unwrap();
        positions.extend(r.positions);
        i += k;
    }
    positions
}

/// Checks the cloud holds exactly `positions` of `node`, each once, in per-stream seq order.
fn check_exactly_once(cloud: &Cloud, node: &str, positions: &[u64]) {
    let events = cloud.events_of(node);
    let seqs: Vec<u64> = events.iter().map(|e| e.origin_seq).collect();
    let unique: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(unique.len(), seqs.len(), "duplicates in the cloud store");
    let want: BTreeSet<u64> = positions.iter().copied().collect();
    assert_eq!(
        unique, want,
        "the cloud store's events differ from the agent's"
    );
    let mut per_stream: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for e in &events {
        let original = e
            .stream
            .strip_prefix(&format!("{node}/"))
            .expect("cloud stream is <node>/<stream>");
        assert!(original.starts_with("orders-"), "{}", e.stream);
        per_stream.entry(original).or_default().push(e.origin_seq);
    }
    for (stream, seqs) in per_stream {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "stream {stream} out of order: {seqs:?}"
        );
    }
}

/// Logs with `RUST_LOG=...` (shown with `--nocapture` or on failure).
fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Polls `done` until it holds or the deadline passes.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn synced(agent: &Log, cloud: &Cloud, node: &str, n: usize) -> bool {
    cloud.events_of(node).len() >= n
        && agent.outbox_cursor("cloud", "normal").unwrap() >= agent.head()
}

async fn restart_case(transport: SyncTransport) {
    init_tracing();
    let tmp = TempDir::new().unwrap();
    let pki = Pki::new(tmp.path(), "pki");
    pki.issue_node("gw-1");
    let store_dir = tmp.path().join("cloud");
    let cloud = Cloud::start(
        &store_dir,
        "127.0.0.1:0".parse().unwrap(),
        Security::Mtls(pki.server_files()),
    )
    .await;
    let addr = cloud.addr;
    let url = format!("https://127.0.0.1:{}", addr.port());
    let agent = outrider_agent::start(agent_config(
        tmp.path(),
        "gw-1",
        url,
        Some(node_tls(&pki, "gw-1")),
        transport,
    ))
    .await
    .unwrap();
    let log = agent.log().clone();

    let mut positions = append(&log, 0, 300).await;
    wait_until("the first 300 events in the cloud", || {
        synced(&log, &cloud, "gw-1", 300)
    })
    .await;
    check_exactly_once(&cloud, "gw-1", &positions);
    let st = wait_status(&agent, "streaming", |s| s.streaming).await;
    assert_eq!(st.transport, Some(kind(transport)), "{st:?}");

    // Restart the cloud mid-stream: an appender runs while the server stops and starts again.
    let appender = {
        let log = log.clone();
        tokio::spawn(async move {
            let mut p = Vec::new();
            for round in 0..20 {
                p.extend(append(&log, 1000 + round * 50, 50).await);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            p
        })
    };
    wait_until("more events in the cloud", || {
        cloud.events_of("gw-1").len() > 400
    })
    .await;
    cloud.stop().await;
    let cloud = Cloud::start(&store_dir, addr, Security::Mtls(pki.server_files())).await;
    positions.extend(appender.await.unwrap());
    // And more after the restart, so the agent must have reconnected.
    positions.extend(append(&log, 5000, 100).await);
    let n = positions.len();
    assert_eq!(n, 1400);
    wait_until("all 1400 events in the cloud after the restart", || {
        synced(&log, &cloud, "gw-1", n)
    })
    .await;
    check_exactly_once(&cloud, "gw-1", &positions);
    // The watermark checkpoint is the last committed seq.
    let marks = LogStore::new(cloud.log.clone());
    let wm = outrider_ingest::IngestStore::load_watermarks(&marks, "gw-1", log.log_id()).unwrap();
    assert_eq!(
        wm,
        vec![("normal".to_string(), *positions.iter().max().unwrap())]
    );
    let st = wait_status(&agent, "streaming again", |s| s.streaming).await;
    assert_eq!(st.transport, Some(kind(transport)), "{st:?}");

    agent.shutdown().await.unwrap();
    cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_mtls_sync_is_exactly_once_across_a_cloud_restart() {
    restart_case(SyncTransport::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_mtls_sync_is_exactly_once_across_a_cloud_restart() {
    restart_case(SyncTransport::Quic).await;
}

/// A raw sync client over gRPC: TLS with `ca` as trust anchor and an optional client identity.
async fn raw_grpc_session(
    addr: SocketAddr,
    ca: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    frames: Vec<AgentFrame>,
) -> Result<Vec<cloud_frame::Frame>, String> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let endpoint = Endpoint::from_shared(format!("https://127.0.0.1:{}", addr.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(10));
    let run = async {
        let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
        let mut client = SyncClient::new(channel);
        // The Hello goes first; the rest after the Welcome, as an agent does.
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut frames = frames.into_iter();
        if let Some(f) = frames.next() {
            tx.send(f).await.unwrap();
        }
        let mut inbound = client
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|e| format!("{e:?}"))?
            .into_inner();
        let mut got = Vec::new();
        loop {
            match inbound.message().await {
                Ok(Some(f)) => {
                    if matches!(f.frame, Some(cloud_frame::Frame::Welcome(_))) {
                        for f in frames.by_ref() {
                            tx.send(f).await.unwrap();
                        }
                    }
                    let nack = matches!(f.frame, Some(cloud_frame::Frame::Nack(_)));
                    got.extend(f.frame);
                    if nack {
                        return Ok(got);
                    }
                }
                Ok(None) => return Ok(got),
                Err(e) => return Err(format!("{e:?} after {got:?}")),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// A raw sync client over QUIC (one bidirectional stream of length-delimited frames), with `ca`
/// as trust anchor and an optional client identity.
async fn raw_quic_session(
    addr: SocketAddr,
    ca: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    frames: Vec<AgentFrame>,
) -> Result<Vec<cloud_frame::Frame>, String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&ca) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut tls = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(&cert)
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(&key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let client = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    ));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let target: SocketAddr = format!("127.0.0.1:{}", addr.port()).parse().unwrap();
    let run = async {
        let conn = endpoint
            .connect_with(client, target, "localhost")
            .map_err(|e| format!("{e:?}"))?
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| format!("{e}"))?;
        let write = |f: &AgentFrame| {
            let mut buf = Vec::new();
            encode_frame(f, &mut buf).unwrap();
            buf
        };
        // The Hello goes first; the rest after the Welcome, as an agent does.
        let mut frames = frames.into_iter();
        if let Some(f) = frames.next() {
            send.write_all(&write(&f))
                .await
                .map_err(|e| format!("{e:?}"))?;
        }
        let mut decoder = FrameDecoder::new();
        let mut got = Vec::new();
        loop {
            while let Some(f) = decoder
                .next_frame::<CloudFrame>()
                .map_err(|e| e.to_string())?
            {
                if matches!(f.frame, Some(cloud_frame::Frame::Welcome(_))) {
                    for f in frames.by_ref() {
                        send.write_all(&write(&f))
                            .await
                            .map_err(|e| format!("{e:?}"))?;
                    }
                }
                let nack = matches!(f.frame, Some(cloud_frame::Frame::Nack(_)));
                got.extend(f.frame);
                if nack {
                    return Ok(got);
                }
            }
            match recv.read_chunk(1 << 16, true).await {
                Ok(Some(c)) => decoder.push(&c.bytes),
                Ok(None) => return Ok(got),
                Err(e) => return Err(format!("{e:?} after {got:?}")),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .map_err(|_| "timed out".to_string())?
}

async fn raw_session(
    transport: TransportKind,
    addr: SocketAddr,
    ca: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    frames: Vec<AgentFrame>,
) -> Result<Vec<cloud_frame::Frame>, String> {
    match transport {
        TransportKind::Grpc => raw_grpc_session(addr, ca, identity, frames).await,
        TransportKind::Quic => raw_quic_session(addr, ca, identity, frames).await,
    }
}

fn hello(node: &str) -> AgentFrame {
    AgentFrame {
        frame: Some(agent_frame::Frame::Hello(Hello {
            node_id: node.into(),
            protocol_version: outrider_runtime::sync::PROTOCOL_VERSION,
            epoch: "e1".into(),
            lanes: vec![LaneResume {
                lane: "normal".into(),
                resume_seq: 0,
            }],
            ..Default::default()
        })),
    }
}

fn batch(origin: &str) -> AgentFrame {
    let mut e = event(1);
    e.id = "ev-1".into();
    e.stream = "orders-0".into();
    e.origin_node = origin.into();
    e.position = 1;
    e.origin_seq = 1;
    AgentFrame {
        frame: Some(agent_frame::Frame::Batch(Batch {
            batch_seq: 1,
            events: vec![e],
            priority: "normal".into(),
            ..Default::default()
        })),
    }
}

async fn refusal_case(transport: SyncTransport) {
    init_tracing();
    let tk = kind(transport);
    let tmp = TempDir::new().unwrap();
    let pki = Pki::new(tmp.path(), "pki");
    pki.issue_node("gw-1");
    pki.issue_nameless("nobody");
    let other = Pki::new(tmp.path(), "other");
    other.issue_node("gw-1");
    let cloud = Cloud::start(
        &tmp.path().join("cloud"),
        "127.0.0.1:0".parse().unwrap(),
        Security::Mtls(pki.server_files()),
    )
    .await;
    let ca = pki.read("ca.pem");
    let frames = || vec![hello("gw-1"), batch("gw-1")];

    // No client certificate: the TLS handshake is refused.
    let r = raw_session(tk, cloud.addr, ca.clone(), None, frames()).await;
    assert!(r.is_err(), "{r:?}");
    // A certificate from another CA: refused too.
    let id = (other.read("gw-1.pem"), other.read("gw-1-key.pem"));
    let r = raw_session(tk, cloud.addr, ca.clone(), Some(id), frames()).await;
    assert!(r.is_err(), "{r:?}");
    // A certificate from the CA that names no node: the connection is dropped unread.
    let id = (pki.read("nobody.pem"), pki.read("nobody-key.pem"));
    let r = raw_session(tk, cloud.addr, ca.clone(), Some(id), frames()).await;
    assert!(r.is_err(), "{r:?}");
    assert_eq!(
        cloud
            .stats
            .sessions
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "no session may start without a node identity"
    );
    // The nameless certificate's connection is counted as refused (once its handshake is done).
    wait_until("the nameless certificate counted as refused", || {
        cloud
            .stats
            .refused
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    })
    .await;
    // A valid gw-1 certificate claiming gw-2 in the Hello: UNAUTHORIZED, and the stream ends.
    let id = || (pki.read("gw-1.pem"), pki.read("gw-1-key.pem"));
    let got = raw_session(
        tk,
        cloud.addr,
        ca.clone(),
        Some(id()),
        vec![hello("gw-2"), batch("gw-2")],
    )
    .await
    .unwrap();
    assert!(
        matches!(got.last(), Some(cloud_frame::Frame::Nack(n)) if n.reason == NackReason::Unauthorized as i32),
        "{got:?}"
    );
    // A gw-1 session sending events of gw-2: the batch is invalid.
    let got = raw_session(
        tk,
        cloud.addr,
        ca.clone(),
        Some(id()),
        vec![hello("gw-1"), batch("gw-2")],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        got.iter().any(|f| matches!(f, cloud_frame::Frame::Nack(n) if n.reason == NackReason::InvalidBatch as i32)),
        "{got:?}"
    );
    assert_eq!(cloud.log.head(), 0, "nothing may be written");

    // An agent whose node id is not its certificate's is refused and writes nothing.
    let url = format!("https://127.0.0.1:{}", cloud.addr.port());
    let mut cfg = agent_config(
        tmp.path(),
        "gw-2",
        url,
        Some(node_tls(&pki, "gw-1")),
        transport,
    );
    cfg.data_dir = tmp.path().join("agent-impostor");
    let agent = outrider_agent::start(cfg).await.unwrap();
    append(agent.log(), 0, 10).await;
    let refused = wait_status(&agent, "the impostor's refusal", |s| {
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("UNAUTHORIZED"))
    })
    .await;
    assert!(!refused.streaming, "{refused:?}");
    assert_eq!(agent.log().outbox_cursor("cloud", "normal").unwrap(), 0);
    agent.shutdown().await.unwrap();
    assert_eq!(cloud.log.head(), 0);
    cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_connections_without_a_valid_identity_write_nothing() {
    refusal_case(SyncTransport::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_connections_without_a_valid_identity_write_nothing() {
    refusal_case(SyncTransport::Quic).await;
}

async fn insecure_case(transport: SyncTransport) {
    init_tracing();
    let tmp = TempDir::new().unwrap();
    let cloud = Cloud::start(
        &tmp.path().join("cloud"),
        "127.0.0.1:0".parse().unwrap(),
        Security::Insecure,
    )
    .await;
    let url = format!("http://127.0.0.1:{}", cloud.addr.port());
    let agent = outrider_agent::start(agent_config(tmp.path(), "dev-1", url, None, transport))
        .await
        .unwrap();
    let log = agent.log().clone();
    let mut positions = append(&log, 0, 100).await;
    // An event near the agent's size limit fits the cloud store despite its longer stream name.
    let mut big = event(100);
    big.detail = format!("{{\"s\":\"{}\"}}", "x".repeat(255_000));
    let r = log
        .append_async("orders-big", ExpectedVersion::Any, vec![big], None)
        .await
        .unwrap();
    positions.extend(r.positions);
    positions.extend(append(&log, 200, 100).await);
    wait_until("201 events in the cloud", || {
        synced(&log, &cloud, "dev-1", 201)
    })
    .await;
    check_exactly_once(&cloud, "dev-1", &positions);
    let committed = cloud
        .stats
        .events_committed
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(committed, 201);
    let st = wait_status(&agent, "streaming", |s| s.streaming).await;
    assert_eq!(st.transport, Some(kind(transport)), "{st:?}");

    // Both sides' metrics tell the same story.
    let st = wait_status(&agent, "every lane acknowledged", |s| {
        s.lanes.iter().all(|l| l.in_flight_events == 0)
    })
    .await;
    let text = outrider_agent::metrics::render(&log, Some(&st));
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
    };
    assert_eq!(value("outrider_sync_up"), 1.0);
    assert!(value("outrider_sync_events_sent_total") >= 201.0, "{text}");
    assert!(
        value("outrider_sync_bytes_total{stage=\"wire\"}")
            < value("outrider_sync_bytes_total{stage=\"raw\"}"),
        "the 255 KB event of repeated bytes went compressed: {text}"
    );
    assert!(value("outrider_sync_batches_compressed_total") >= 1.0);
    assert_eq!(
        value("outrider_outbox_pending_events{class=\"normal\"}"),
        0.0
    );
    assert_eq!(
        value("outrider_outbox_oldest_pending_age_seconds{class=\"normal\"}"),
        0.0
    );
    assert_eq!(
        value("outrider_sync_in_flight_events{lane=\"normal\"}"),
        0.0,
        "{text}"
    );
    assert!(text.contains(&format!(
        "outrider_sync_transport_info{{transport=\"{}\",codec=\"zstd\"}} 1",
        kind(transport)
    )));
    let cloud_text = outrider_ingest::metrics::render(&cloud.stats, Some(&cloud.log));
    assert!(
        cloud_text.contains("\noutrider_ingest_events_committed_total 201\n"),
        "{cloud_text}"
    );
    assert!(
        cloud_text.contains("\noutrider_ingest_active_sessions 1\n"),
        "{cloud_text}"
    );
    assert!(
        !cloud_text.contains("\noutrider_ingest_batches_compressed_total 0\n"),
        "{cloud_text}"
    );
    agent.shutdown().await.unwrap();
    cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_insecure_mode_takes_the_node_from_the_hello() {
    insecure_case(SyncTransport::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_insecure_mode_takes_the_node_from_the_hello() {
    insecure_case(SyncTransport::Quic).await;
}

/// A TCP proxy whose connections can be cut (both sockets dropped at once), as a network cut.
struct Proxy {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Default::default();
        let list = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                list.lock().unwrap().push(task);
            }
        });
        Proxy {
            addr,
            conns,
            accept,
        }
    }

    /// Cuts every open connection; returns how many there were.
    fn cut(&self) -> usize {
        let conns = std::mem::take(&mut *self.conns.lock().unwrap());
        let open = conns.iter().filter(|c| !c.is_finished()).count();
        for c in conns {
            c.abort();
        }
        open
    }
}

/// A UDP forwarder for QUIC: one upstream socket per client address. A cut forgets every flow
/// and drops whatever its client address sends from then on (the client's connection hears
/// nothing more and times out, as on a real cut); a new connection comes from a new address and
/// goes through. While blocked, every datagram is dropped.
struct UdpProxy {
    addr: SocketAddr,
    state: Arc<Mutex<UdpState>>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct UdpState {
    blocked: bool,
    flows: HashMap<SocketAddr, (Arc<tokio::net::UdpSocket>, JoinHandle<()>)>,
    dead: HashSet<SocketAddr>,
}

impl UdpProxy {
    async fn start(bind: SocketAddr, target: SocketAddr) -> std::io::Result<UdpProxy> {
        let front = Arc::new(tokio::net::UdpSocket::bind(bind).await?);
        let addr = front.local_addr()?;
        let state: Arc<Mutex<UdpState>> = Default::default();
        let st = state.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, from)) = front.recv_from(&mut buf).await else {
                    continue;
                };
                let up = {
                    let mut s = st.lock().unwrap();
                    if s.blocked || s.dead.contains(&from) {
                        continue;
                    }
                    match s.flows.get(&from) {
                        Some((up, _)) => up.clone(),
                        None => {
                            let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                            sock.connect(target).unwrap();
                            sock.set_nonblocking(true).unwrap();
                            let up = Arc::new(tokio::net::UdpSocket::from_std(sock).unwrap());
                            let back = tokio::spawn(Self::backward(
                                up.clone(),
                                front.clone(),
                                from,
                                st.clone(),
                            ));
                            s.flows.insert(from, (up.clone(), back));
                            up
                        }
                    }
                };
                let _ = up.send(&buf[..n]).await;
            }
        });
        Ok(UdpProxy { addr, state, task })
    }

    /// Server → client for one flow.
    async fn backward(
        up: Arc<tokio::net::UdpSocket>,
        front: Arc<tokio::net::UdpSocket>,
        client: SocketAddr,
        state: Arc<Mutex<UdpState>>,
    ) {
        let mut buf = vec![0u8; 65_536];
        loop {
            let Ok(n) = up.recv(&mut buf).await else {
                continue;
            };
            if state.lock().unwrap().blocked {
                continue;
            }
            let _ = front.send_to(&buf[..n], client).await;
        }
    }

    /// Cuts every flow; returns how many there were.
    fn cut(&self) -> usize {
        let mut s = self.state.lock().unwrap();
        let flows = std::mem::take(&mut s.flows);
        let n = flows.len();
        for (client, (_, task)) in flows {
            task.abort();
            s.dead.insert(client);
        }
        n
    }

    fn set_blocked(&self, blocked: bool) {
        self.state.lock().unwrap().blocked = blocked;
    }
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        self.task.abort();
        for (_, (_, task)) in self.state.lock().unwrap().flows.drain() {
            task.abort();
        }
    }
}

async fn cuts_case(transport: SyncTransport) {
    init_tracing();
    let tmp = TempDir::new().unwrap();
    let pki = Pki::new(tmp.path(), "pki");
    pki.issue_node("gw-1");
    let cloud = Cloud::start(
        &tmp.path().join("cloud"),
        "127.0.0.1:0".parse().unwrap(),
        Security::Mtls(pki.server_files()),
    )
    .await;
    enum Cutter {
        Tcp(Proxy),
        Udp(UdpProxy),
    }
    let (cutter, port) = match transport {
        SyncTransport::Grpc => {
            let p = Proxy::start(cloud.addr).await;
            let port = p.addr.port();
            (Cutter::Tcp(p), port)
        }
        _ => {
            let p = UdpProxy::start("127.0.0.1:0".parse().unwrap(), cloud.addr)
                .await
                .unwrap();
            let port = p.addr.port();
            (Cutter::Udp(p), port)
        }
    };
    let url = format!("https://127.0.0.1:{port}");
    let mut cfg = agent_config(
        tmp.path(),
        "gw-1",
        url,
        Some(node_tls(&pki, "gw-1")),
        transport,
    );
    // A cut UDP path is silence, not a reset: notice it soon.
    if let Some(sync) = cfg.sync.as_mut() {
        sync.quic_idle_timeout_ms = 1_000;
    }
    let agent = outrider_agent::start(cfg).await.unwrap();
    let log = agent.log().clone();
    let mut positions = Vec::new();
    let mut cuts = 0;
    for round in 0..8u64 {
        // Count before appending: the agent may sync the whole round before we look again.
        let have = cloud.events_of("gw-1").len();
        positions.extend(append(&log, round * 1000, 200).await);
        // Cut once the agent is connected again and the cloud holds part of this round.
        wait_until("progress before the cut", || {
            cloud.events_of("gw-1").len() > have
        })
        .await;
        cuts += match &cutter {
            Cutter::Tcp(p) => p.cut(),
            Cutter::Udp(p) => p.cut(),
        };
    }
    assert!(cuts >= 4, "only {cuts} connections were cut");
    let n = positions.len();
    wait_until("every event after the cuts", || {
        synced(&log, &cloud, "gw-1", n)
    })
    .await;
    check_exactly_once(&cloud, "gw-1", &positions);
    let st = wait_status(&agent, "streaming", |s| s.streaming).await;
    assert_eq!(st.transport, Some(kind(transport)), "{st:?}");
    assert!(st.stats.connects >= 5, "{st:?}");
    agent.shutdown().await.unwrap();
    if let Cutter::Tcp(p) = &cutter {
        p.accept.abort();
    }
    drop(cutter);
    cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_exactly_once_across_network_cuts() {
    cuts_case(SyncTransport::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_exactly_once_across_network_cuts() {
    cuts_case(SyncTransport::Quic).await;
}

/// `auto` with UDP blocked: the QUIC attempt times out and the agent streams over gRPC; once UDP
/// passes again, a background QUIC handshake succeeds and the session moves to QUIC. Every event
/// is in the cloud exactly once throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_to_grpc_and_returns_to_quic() {
    init_tracing();
    let tmp = TempDir::new().unwrap();
    let pki = Pki::new(tmp.path(), "pki");
    pki.issue_node("gw-1");
    let cloud = Cloud::start(
        &tmp.path().join("cloud"),
        "127.0.0.1:0".parse().unwrap(),
        Security::Mtls(pki.server_files()),
    )
    .await;
    // One port for the agent: TCP goes through to the cloud, UDP is blocked for now.
    let mut tries = 0;
    let (tcp, udp) = loop {
        let tcp = Proxy::start(cloud.addr).await;
        match UdpProxy::start(tcp.addr, cloud.addr).await {
            Ok(udp) => break (tcp, udp),
            Err(e) => {
                tries += 1;
                assert!(tries < 20, "no port free on both TCP and UDP: {e}");
                tcp.accept.abort();
            }
        }
    };
    udp.set_blocked(true);
    let url = format!("https://127.0.0.1:{}", tcp.addr.port());
    let mut cfg = agent_config(
        tmp.path(),
        "gw-1",
        url,
        Some(node_tls(&pki, "gw-1")),
        SyncTransport::Auto,
    );
    if let Some(sync) = cfg.sync.as_mut() {
        sync.connect_timeout_ms = 1_000;
        sync.quic_retry_ms = 1_000;
    }
    let agent = outrider_agent::start(cfg).await.unwrap();
    let log = agent.log().clone();

    let mut positions = append(&log, 0, 200).await;
    let st = wait_status(&agent, "streaming over gRPC", |s| {
        s.streaming && s.transport == Some(TransportKind::Grpc)
    })
    .await;
    assert_eq!(st.transport, Some(TransportKind::Grpc));
    wait_until("the first 200 events in the cloud over gRPC", || {
        synced(&log, &cloud, "gw-1", 200)
    })
    .await;
    check_exactly_once(&cloud, "gw-1", &positions);

    // UDP passes again: the agent moves to QUIC by itself, while events keep coming.
    udp.set_blocked(false);
    let appender = {
        let log = log.clone();
        tokio::spawn(async move {
            let mut p = Vec::new();
            for round in 0..20 {
                p.extend(append(&log, 1000 + round * 20, 20).await);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            p
        })
    };
    wait_status(&agent, "streaming over QUIC", |s| {
        s.streaming && s.transport == Some(TransportKind::Quic)
    })
    .await;
    positions.extend(appender.await.unwrap());
    positions.extend(append(&log, 5000, 100).await);
    let n = positions.len();
    wait_until("every event in the cloud after the move to QUIC", || {
        synced(&log, &cloud, "gw-1", n)
    })
    .await;
    check_exactly_once(&cloud, "gw-1", &positions);
    let st = agent.sync_status().unwrap().borrow().clone();
    assert_eq!(st.transport, Some(TransportKind::Quic), "{st:?}");
    // One gRPC connection, one move to QUIC: no flapping between the two.
    assert!(st.stats.connects <= 4, "{st:?}");

    agent.shutdown().await.unwrap();
    tcp.accept.abort();
    drop(udp);
    cloud.stop().await;
}

/// A rough figure, not a benchmark: `cargo test --release -p outrider-ingest --test sync_e2e
/// -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput_figure() {
    for transport in [SyncTransport::Grpc, SyncTransport::Quic] {
        let tmp = TempDir::new().unwrap();
        let pki = Pki::new(tmp.path(), "pki");
        pki.issue_node("gw-1");
        let cloud = Cloud::start(
            &tmp.path().join("cloud"),
            "127.0.0.1:0".parse().unwrap(),
            Security::Mtls(pki.server_files()),
        )
        .await;
        let url = format!("https://127.0.0.1:{}", cloud.addr.port());
        let agent = outrider_agent::start(agent_config(
            tmp.path(),
            "gw-1",
            url,
            Some(node_tls(&pki, "gw-1")),
            transport,
        ))
        .await
        .unwrap();
        let log = agent.log().clone();
        let n = 50_000u64;
        let t = Instant::now();
        let mut i = 0;
        while i < n {
            let events = (i..i + 500).map(event).collect();
            log.append_async("bulk", ExpectedVersion::Any, events, None)
                .await
                .unwrap();
            i += 500;
        }
        let appended = t.elapsed();
        let deadline = Instant::now() + Duration::from_secs(300);
        while log.outbox_cursor("cloud", "normal").unwrap() < log.head() {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let synced = t.elapsed();
        eprintln!(
            "{transport:?}: {n} events: appended in {appended:?}, synced in {synced:?} ({:.0} events/s end to end)",
            n as f64 / synced.as_secs_f64()
        );
        assert_eq!(cloud.events_of("gw-1").len() as u64, n);
        agent.shutdown().await.unwrap();
        cloud.stop().await;
    }
}
