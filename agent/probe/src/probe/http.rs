//! HTTP(S) GET probe: hyper's HTTP/1 client connection (already in the agent through tonic and
//! axum) over a bound TCP connection, with TLS from tokio-rustls (ring) when configured. No
//! connection pool: each probe is a fresh connection, as blackbox_exporter's, so the figure
//! includes connect and handshake time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::Bind;
use crate::outcome::{ProbeError, ProbeOutcome};

/// Which statuses count as success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpectStatus {
    /// Any 2xx (blackbox_exporter's default).
    #[default]
    Success,
    /// Exactly this status.
    Exactly(u16),
}

impl std::fmt::Display for ExpectStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectStatus::Success => f.write_str("2xx"),
            ExpectStatus::Exactly(s) => write!(f, "{s}"),
        }
    }
}

/// An HTTP(S) GET probe.
#[derive(Clone)]
pub struct HttpProbe {
    /// The address to connect to (resolution is the DNS probe's business).
    pub target: SocketAddr,
    /// The `Host` header and, with TLS, the server name (SNI and certificate check).
    pub host: String,
    /// Path and query, e.g. `/healthz`.
    pub path: String,
    /// TLS client configuration; `None` for plain HTTP. Build it with the ring provider (the
    /// agent's only TLS stack) and the CA to trust.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub expect_status: ExpectStatus,
    /// The body must contain this text (searched within the first `max_body_bytes`).
    pub body_contains: Option<String>,
    /// How much of the body is read (default 64 KiB).
    pub max_body_bytes: usize,
}

impl std::fmt::Debug for HttpProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpProbe")
            .field("target", &self.target)
            .field("host", &self.host)
            .field("path", &self.path)
            .field("tls", &self.tls.is_some())
            .field("expect_status", &self.expect_status)
            .field("body_contains", &self.body_contains)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish()
    }
}

impl HttpProbe {
    /// A plain HTTP probe of `path` at `target` expecting a 2xx.
    pub fn new(target: SocketAddr, host: impl Into<String>, path: impl Into<String>) -> Self {
        Self {
            target,
            host: host.into(),
            path: path.into(),
            tls: None,
            expect_status: ExpectStatus::Success,
            body_contains: None,
            max_body_bytes: 64 * 1024,
        }
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// Runs one GET within `timeout` (connect, handshake, request and body together).
pub async fn probe_http(probe: &HttpProbe, bind: &Bind, timeout: Duration) -> ProbeOutcome {
    let start = Instant::now();
    match tokio::time::timeout(timeout, exchange(probe, bind)).await {
        Err(_) => ProbeOutcome::Timeout { after: timeout },
        Ok(Ok(())) => ProbeOutcome::Ok {
            rtt: start.elapsed(),
        },
        Ok(Err(outcome)) => outcome,
    }
}

async fn exchange(p: &HttpProbe, bind: &Bind) -> Result<(), ProbeOutcome> {
    let stream = super::tcp::connect(p.target, bind).await?;
    let target = format!("{}://{}{}", p.scheme(), p.target, p.path);
    match &p.tls {
        None => request(p, TokioIo::new(stream), &target).await,
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from(p.host.clone())
                .map_err(|_| ProbeOutcome::error(ProbeError::ServerName(p.host.clone())))?;
            let tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, stream)
                .await
                .map_err(|e| {
                    ProbeOutcome::error(ProbeError::Tls {
                        target: p.target.to_string(),
                        server_name: p.host.clone(),
                        detail: e.to_string(),
                    })
                })?;
            request(p, TokioIo::new(tls), &target).await
        }
    }
}

async fn request<T>(p: &HttpProbe, io: TokioIo<T>, target: &str) -> Result<(), ProbeOutcome>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let http_err = |op: &'static str, e: &dyn std::fmt::Display| {
        ProbeOutcome::error(ProbeError::Http {
            op,
            target: target.to_string(),
            detail: e.to_string(),
        })
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io)
        .await
        .map_err(|e| http_err("handshake", &e))?;
    // The connection task ends with the exchange (Connection: close) or when the probe's
    // future is dropped at its deadline (the sender goes, so does the connection).
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let result = async {
        let req = hyper::Request::get(p.path.as_str())
            .header(hyper::header::HOST, p.host.as_str())
            .header(hyper::header::USER_AGENT, "outrider-probe")
            .header(hyper::header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| http_err("request", &e))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| http_err("request", &e))?;
        let status = resp.status().as_u16();
        let status_ok = match p.expect_status {
            ExpectStatus::Success => (200..300).contains(&status),
            ExpectStatus::Exactly(s) => status == s,
        };
        if !status_ok {
            return Err(ProbeOutcome::error(ProbeError::HttpStatus {
                got: status,
                expected: p.expect_status.to_string(),
                target: target.to_string(),
            }));
        }
        let Some(needle) = &p.body_contains else {
            return Ok(());
        };
        let mut body = resp.into_body();
        let mut seen: Vec<u8> = Vec::new();
        while seen.len() < p.max_body_bytes {
            match body.frame().await {
                None => break,
                Some(Err(e)) => return Err(http_err("body", &e)),
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        let room = p.max_body_bytes - seen.len();
                        seen.extend_from_slice(&data[..data.len().min(room)]);
                        if contains(&seen, needle.as_bytes()) {
                            return Ok(());
                        }
                    }
                }
            }
        }
        if contains(&seen, needle.as_bytes()) {
            Ok(())
        } else {
            Err(ProbeOutcome::error(ProbeError::BodyMismatch {
                needle: needle.clone(),
                searched: seen.len(),
                target: target.to_string(),
            }))
        }
    }
    .await;
    driver.abort();
    result
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;

    async fn server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let app = axum::Router::new()
            .route("/healthz", get(|| async { "status: ok, region eu-west-1" }))
            .route(
                "/broken",
                get(|| async { (axum::http::StatusCode::SERVICE_UNAVAILABLE, "down") }),
            )
            .route(
                "/slow",
                get(|| async {
                    // Never answers within the probe's deadline: waits on a future that never
                    // completes (not a sleep standing in for synchronisation).
                    std::future::pending::<()>().await;
                    "never"
                }),
            );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        });
        (addr, task)
    }

    #[tokio::test]
    async fn get_with_status_and_body_match() {
        let (addr, task) = server().await;
        let mut p = HttpProbe::new(addr, "probe.test", "/healthz");
        p.body_contains = Some("status: ok".into());
        let o = probe_http(&p, &Bind::default(), Duration::from_secs(5)).await;
        assert!(o.is_ok(), "{o:?}");

        p.body_contains = Some("status: degraded".into());
        match probe_http(&p, &Bind::default(), Duration::from_secs(5)).await {
            ProbeOutcome::Error {
                reason:
                    ProbeError::BodyMismatch {
                        needle, searched, ..
                    },
            } => {
                assert_eq!(needle, "status: degraded");
                assert_eq!(searched, "status: ok, region eu-west-1".len());
            }
            o => panic!("{o:?}"),
        }
        task.abort();
    }

    #[tokio::test]
    async fn unexpected_status_is_named() {
        let (addr, task) = server().await;
        let p = HttpProbe::new(addr, "probe.test", "/broken");
        match probe_http(&p, &Bind::default(), Duration::from_secs(5)).await {
            ProbeOutcome::Error {
                reason: ProbeError::HttpStatus { got, expected, .. },
            } => {
                assert_eq!(got, 503);
                assert_eq!(expected, "2xx");
            }
            o => panic!("{o:?}"),
        }
        let mut p = HttpProbe::new(addr, "probe.test", "/broken");
        p.expect_status = ExpectStatus::Exactly(503);
        assert!(probe_http(&p, &Bind::default(), Duration::from_secs(5))
            .await
            .is_ok());
        task.abort();
    }

    #[tokio::test]
    async fn slow_server_times_out_and_closed_port_is_refused() {
        let (addr, task) = server().await;
        let p = HttpProbe::new(addr, "probe.test", "/slow");
        let o = probe_http(&p, &Bind::default(), Duration::from_millis(200)).await;
        assert_eq!(
            o,
            ProbeOutcome::Timeout {
                after: Duration::from_millis(200)
            }
        );
        task.abort();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed = l.local_addr().unwrap();
        drop(l);
        let p = HttpProbe::new(closed, "probe.test", "/healthz");
        assert_eq!(
            probe_http(&p, &Bind::default(), Duration::from_secs(5)).await,
            ProbeOutcome::Refused
        );
    }

    #[tokio::test]
    async fn https_with_a_private_ca() {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["probe.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert_der: CertificateDer<'static> = cert.der().clone();
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert_der.clone()], key_der)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = l.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(Bytes::from_static(b"tls ok")),
                        ))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert_der).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut p = HttpProbe::new(addr, "probe.test", "/");
        p.tls = Some(Arc::new(client));
        p.body_contains = Some("tls ok".into());
        let o = probe_http(&p, &Bind::default(), Duration::from_secs(5)).await;
        assert!(o.is_ok(), "{o:?}");
        // A name the certificate does not hold fails the handshake, and says so.
        p.host = "other.test".into();
        match probe_http(&p, &Bind::default(), Duration::from_secs(5)).await {
            ProbeOutcome::Error {
                reason: ProbeError::Tls { server_name, .. },
            } => assert_eq!(server_name, "other.test"),
            o => panic!("{o:?}"),
        }
        task.abort();
    }
}
