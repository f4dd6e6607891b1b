//! The webhook target against a real axum server on 127.0.0.1 (plain HTTP and HTTPS with a
//! throwaway CA): signatures, headers, status classification, timeouts, redirects, connection
//! reuse.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::serve::{Listener, ListenerExt};
use axum::Router;
use outrider_bus::target::{Delivery, Target};
use outrider_bus::targets::webhook::{
    verify_signature, WebhookConfig, WebhookTarget, HEADER_ATTEMPT, HEADER_DELIVERY_ID,
    HEADER_EVENT_ID, HEADER_RULE, HEADER_SIGNATURE, HEADER_TIMESTAMP,
};
use outrider_proto::Event;
use parking_lot::Mutex;

const SECRET: &[u8] = b"webhook-test-secret-0123456789";

#[derive(Clone, Default)]
struct Seen {
    requests: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
}

async fn ok(State(seen): State<Seen>, headers: HeaderMap, body: Bytes) -> StatusCode {
    seen.requests.lock().push((headers, body));
    StatusCode::OK
}

async fn status(Path(code): Path<u16>) -> Response {
    let s = StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT);
    (s, format!("answered {code}")).into_response()
}

async fn hang() -> StatusCode {
    std::future::pending::<()>().await;
    StatusCode::OK
}

async fn redirect() -> Response {
    (StatusCode::FOUND, [("location", "/ok")], "").into_response()
}

fn router(seen: Seen) -> Router {
    Router::new()
        .route("/ok", post(ok))
        .route("/status/{code}", any(status))
        .route("/hang", any(hang))
        .route("/redirect", any(redirect))
        .with_state(seen)
}

/// A running server: its base URL, what it received, and how many TCP connections it accepted.
struct Server {
    base: String,
    seen: Seen,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve<L: Listener>(listener: L, base: String) -> Server
where
    L::Addr: std::fmt::Debug,
{
    let seen = Seen::default();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let listener = listener.tap_io(move |_| {
        count.fetch_add(1, Ordering::SeqCst);
    });
    let app = router(seen.clone());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Server {
        base,
        seen,
        accepted,
        task,
    }
}

async fn http_server() -> Server {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    serve(l, base).await
}

fn delivery(id: &str, payload: &str) -> Delivery {
    Delivery {
        id: id.to_string(),
        bus: "default".into(),
        rule: "orders-to-hook".into(),
        target_id: "hook".into(),
        event: Arc::new(Event {
            id: format!("ev-{id}"),
            source: "shop".into(),
            detail_type: "OrderPlaced".into(),
            detail: "{}".into(),
            ..Default::default()
        }),
        payload: payload.to_string(),
        attempt: 2,
    }
}

fn target(url: String) -> WebhookTarget {
    WebhookTarget::new(WebhookConfig::new(url, SECRET)).unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name)
        .unwrap_or_else(|| panic!("{name} missing"))
        .to_str()
        .unwrap()
}

#[tokio::test]
async fn signed_post_with_headers_verifies_at_the_receiver() {
    let s = http_server().await;
    let t = target(format!("{}/ok", s.base));
    assert_eq!((t.kind(), t.max_batch()), ("webhook", 1));
    let json = r#"{"order":{"id":"o-1","total":12.5}}"#;
    let r = t
        .deliver(&[
            delivery("d-1", json),
            delivery("d-2", "plain text, not JSON"),
        ])
        .await;
    assert_eq!(r, vec![Ok(()), Ok(())]);

    let seen = s.seen.requests.lock().clone();
    assert_eq!(seen.len(), 2);
    for (h, body) in &seen {
        let id = header(h, HEADER_DELIVERY_ID);
        let (payload, ctype) = match id {
            "d-1" => (json, "application/json"),
            "d-2" => ("plain text, not JSON", "text/plain; charset=utf-8"),
            other => panic!("unexpected delivery id {other}"),
        };
        assert_eq!(body.as_ref(), payload.as_bytes());
        assert_eq!(header(h, "content-type"), ctype);
        assert_eq!(header(h, HEADER_EVENT_ID), format!("ev-{id}"));
        assert_eq!(header(h, HEADER_RULE), "orders-to-hook");
        assert_eq!(header(h, HEADER_ATTEMPT), "2");
        let ts: u64 = header(h, HEADER_TIMESTAMP).parse().unwrap();
        assert!(ts.abs_diff(now()) <= 5);
        let sig = header(h, HEADER_SIGNATURE);
        assert!(sig.starts_with(&format!("t={ts},v1=")), "{sig}");
        verify_signature(SECRET, sig, body, now(), 300).unwrap();
        // The receiver's checks bite: another body, another secret, a stale clock.
        assert!(verify_signature(SECRET, sig, b"tampered", now(), 300).is_err());
        assert!(verify_signature(b"not-the-secret-at-all", sig, body, now(), 300).is_err());
        assert!(verify_signature(SECRET, sig, body, now() + 3600, 300).is_err());
    }
}

#[tokio::test]
async fn statuses_map_to_retryable_or_permanent() {
    let s = http_server().await;
    for (code, retryable) in [
        (500, true),
        (503, true),
        (429, true),
        (400, false),
        (404, false),
    ] {
        let t = target(format!("{}/status/{code}", s.base));
        let r = t.deliver(&[delivery("d", "{}")]).await;
        let e = r[0].clone().unwrap_err();
        assert_eq!(e.code, format!("HttpStatus{code}"), "{e}");
        assert_eq!(e.retryable, retryable, "{code}: {e}");
        assert!(e.message.contains(&format!("answered {code}")), "{e}");
    }
}

#[tokio::test]
async fn redirects_are_not_followed_and_are_permanent() {
    let s = http_server().await;
    let t = target(format!("{}/redirect", s.base));
    let e = t.deliver(&[delivery("d", "{}")]).await[0]
        .clone()
        .unwrap_err();
    assert!(!e.retryable, "{e}");
    assert_eq!(e.code, "HttpStatus302");
    assert!(
        e.message.contains("302") && e.message.contains("/ok"),
        "{e}"
    );
    assert!(
        s.seen.requests.lock().is_empty(),
        "the redirect was followed"
    );
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_retryably() {
    let s = http_server().await;
    let t = WebhookTarget::new(
        WebhookConfig::new(format!("{}/hang", s.base), SECRET)
            .with_timeout(Duration::from_millis(300)),
    )
    .unwrap();
    let started = Instant::now();
    let e = t.deliver(&[delivery("d", "{}")]).await[0]
        .clone()
        .unwrap_err();
    assert!(e.retryable, "{e}");
    assert_eq!(e.code, "Timeout");
    assert!(started.elapsed() < Duration::from_secs(3));
    // The timed-out connection is not reused: the next request works on a fresh one.
    let t2 = target(format!("{}/ok", s.base));
    assert_eq!(t2.deliver(&[delivery("d", "{}")]).await, vec![Ok(())]);
}

#[tokio::test]
async fn refused_connections_are_retryable() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let t = target(format!("http://{addr}/ok"));
    let e = t.deliver(&[delivery("d", "{}")]).await[0]
        .clone()
        .unwrap_err();
    assert!(e.retryable, "{e}");
    assert_eq!(e.code, "ConnectError");
}

#[tokio::test]
async fn sequential_deliveries_reuse_one_connection() {
    let s = http_server().await;
    let t = target(format!("{}/ok", s.base));
    for i in 0..25 {
        let r = t.deliver(&[delivery(&format!("d-{i}"), "{}")]).await;
        assert_eq!(r, vec![Ok(())]);
    }
    assert_eq!(s.seen.requests.lock().len(), 25);
    assert_eq!(s.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(t.idle_connections(), 1);
    // A failed status (with a body) still leaves the connection reusable.
    let t = target(format!("{}/status/500", s.base));
    for _ in 0..3 {
        assert!(t.deliver(&[delivery("d", "{}")]).await[0].is_err());
    }
    assert_eq!(s.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn one_batch_is_sent_concurrently_within_the_cap() {
    let s = http_server().await;
    let mut c = WebhookConfig::new(format!("{}/ok", s.base), SECRET);
    c.max_concurrency = 3;
    c.max_idle_connections = 3;
    let t = WebhookTarget::new(c).unwrap();
    let batch: Vec<Delivery> = (0..12).map(|i| delivery(&format!("d-{i}"), "{}")).collect();
    let r = t.deliver(&batch).await;
    assert_eq!(r, vec![Ok(()); 12]);
    let accepted = s.accepted.load(Ordering::SeqCst);
    assert!((1..=3).contains(&accepted), "{accepted} connections");
    let mut ids: Vec<String> = s
        .seen
        .requests
        .lock()
        .iter()
        .map(|(h, _)| header(h, HEADER_DELIVERY_ID).to_string())
        .collect();
    ids.sort();
    let mut want: Vec<String> = (0..12).map(|i| format!("d-{i}")).collect();
    want.sort();
    assert_eq!(ids, want);
}

#[tokio::test]
async fn a_pooled_connection_the_server_dropped_is_replaced_without_a_failure() {
    // An HTTP/1.1 server that answers the first request of a connection (keep-alive) and drops
    // the connection, unanswered, when a second request comes on it: what a server whose idle
    // timeout fires as a request is sent looks like to the client.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (count, reqs) = (accepted.clone(), requests.clone());
    let task = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let reqs = reqs.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut got = Vec::new();
                // The request's headers and its 2-byte body.
                while !got.windows(4).any(|w| w == b"\r\n\r\n") || !got.ends_with(b"{}") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                reqs.fetch_add(1, Ordering::SeqCst);
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await;
                // The next request: read, then dropped with the socket.
                let _ = s.read(&mut buf).await;
            });
        }
    });
    let t = target(format!("http://{addr}/ok"));
    for i in 0..5 {
        let r = t.deliver(&[delivery(&format!("d-{i}"), "{}")]).await;
        assert_eq!(r, vec![Ok(())], "delivery {i}");
    }
    // Each delivery after the first met a dropped pooled connection, then went on a new one.
    assert_eq!(accepted.load(Ordering::SeqCst), 5);
    assert_eq!(requests.load(Ordering::SeqCst), 5);
    task.abort();
}

mod tls {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    /// A TLS listener for axum: TCP accept, then the rustls handshake (failed handshakes are
    /// dropped).
    struct TlsListener {
        tcp: tokio::net::TcpListener,
        acceptor: tokio_rustls::TlsAcceptor,
    }

    impl Listener for TlsListener {
        type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
        type Addr = std::net::SocketAddr;

        async fn accept(&mut self) -> (Self::Io, Self::Addr) {
            loop {
                let Ok((tcp, addr)) = self.tcp.accept().await else {
                    continue;
                };
                if let Ok(tls) = self.acceptor.accept(tcp).await {
                    return (tls, addr);
                }
            }
        }

        fn local_addr(&self) -> std::io::Result<Self::Addr> {
            self.tcp.local_addr()
        }
    }

    /// A CA (its PEM) and a server certificate for localhost / 127.0.0.1 signed by it.
    fn pki() -> (String, CertificateDer<'static>, PrivateKeyDer<'static>) {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.distinguished_name
            .push(DnType::CommonName, "outrider-bus webhook test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca_pem = p.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(p, ca_key);
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &issuer).unwrap();
        (
            ca_pem,
            cert.der().clone(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }

    async fn https_server() -> (Server, String) {
        let (ca_pem, cert, key) = pki();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = tcp.local_addr().unwrap().port();
        let listener = TlsListener {
            tcp,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        };
        (
            serve(listener, format!("https://localhost:{port}")).await,
            ca_pem,
        )
    }

    #[tokio::test]
    async fn https_with_a_private_ca_signs_and_reuses_connections() {
        let (s, ca_pem) = https_server().await;
        let t = WebhookTarget::new(
            WebhookConfig::new(format!("{}/ok", s.base), SECRET).with_ca_pem(ca_pem.clone()),
        )
        .unwrap();
        for i in 0..5 {
            let r = t
                .deliver(&[delivery(&format!("d-{i}"), r#"{"tls":true}"#)])
                .await;
            assert_eq!(r, vec![Ok(())]);
        }
        assert_eq!(s.accepted.load(Ordering::SeqCst), 1);
        let seen = s.seen.requests.lock().clone();
        assert_eq!(seen.len(), 5);
        for (h, body) in &seen {
            verify_signature(SECRET, header(h, HEADER_SIGNATURE), body, now(), 300).unwrap();
        }
        // By IP address too (the certificate has 127.0.0.1 as a SAN).
        let port = s.base.rsplit(':').next().unwrap();
        let t = WebhookTarget::new(
            WebhookConfig::new(format!("https://127.0.0.1:{port}/ok"), SECRET).with_ca_pem(ca_pem),
        )
        .unwrap();
        assert_eq!(t.deliver(&[delivery("ip", "{}")]).await, vec![Ok(())]);
    }

    #[tokio::test]
    async fn an_untrusted_certificate_fails_the_handshake_retryably() {
        let (s, _ca) = https_server().await;
        let (other_ca, _, _) = pki();
        let t = WebhookTarget::new(
            WebhookConfig::new(format!("{}/ok", s.base), SECRET).with_ca_pem(other_ca),
        )
        .unwrap();
        let e = t.deliver(&[delivery("d", "{}")]).await[0]
            .clone()
            .unwrap_err();
        assert_eq!(e.code, "TlsError", "{e}");
        assert!(e.retryable);
        assert!(s.seen.requests.lock().is_empty());
    }
}
