//! HTTP(S) webhook target: each delivery is one signed `POST` of its payload.
//!
//! # The request
//!
//! `POST <url>` with the delivery's payload as the body, `Content-Type: application/json` when the
//! payload parses as JSON and `text/plain; charset=utf-8` otherwise, and these headers:
//!
//! | header | value |
//! | --- | --- |
//! | `X-Outrider-Delivery-Id` | the delivery id: the same on every attempt and replay of one event to one target; **receivers dedupe on it** |
//! | `X-Outrider-Event-Id` | the event's id |
//! | `X-Outrider-Rule` | the rule that matched |
//! | `X-Outrider-Attempt` | 1 on the first attempt |
//! | `X-Outrider-Timestamp` | when this attempt was signed, Unix seconds |
//! | `X-Outrider-Signature` | `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>` |
//!
//! # Signatures
//!
//! The scheme is Stripe's: the MAC covers the timestamp and the exact body bytes joined by a `.`,
//! so a captured request cannot be replayed later with a fresh timestamp, and a receiver that
//! refuses timestamps older than a few minutes (and remembers delivery ids for that long) refuses
//! replays entirely. A receiver checks a request with [`verify_signature`] (or the same steps in
//! its own language):
//!
//! 1. split the header on `,`; take `t` and every `v1` (several `v1` are allowed, for a sender
//!    rotating secrets);
//! 2. compute `HMAC-SHA256(secret, t + "." + body)` over the raw body, before any JSON parsing;
//! 3. compare it with each `v1` in constant time;
//! 4. refuse a `t` further than the tolerance (e.g. 300 s) from the receiver's clock.
//!
//! The secret is at least [`MIN_SECRET_LEN`] bytes; the bus reads it from the environment variable
//! that `Destination::Webhook::secret_env` names, never from a stored definition.
//!
//! # Outcomes
//!
//! A 2xx answer is success. 429, 5xx, connection failures (refused, reset, TLS handshake) and
//! timeouts are retryable; every other status is permanent, redirects (3xx) included: they are
//! not followed, and the error names the status and the `Location`. `Retry-After` and other
//! response headers are not honoured: the bus's retry policy decides when to try again.
//!
//! # Connections
//!
//! Each target keeps a small pool of idle HTTP/1.1 keep-alive connections
//! ([`WebhookConfig::max_idle_connections`]) to its one origin. When a pooled connection turns
//! out to have been closed by the server before the response came back, the request is sent once
//! more on a fresh connection; that request may have reached the receiver already, which is one
//! more reason for receivers to dedupe on `X-Outrider-Delivery-Id`. The deliveries of one batch
//! are sent concurrently, at most [`WebhookConfig::max_concurrency`] at a time.
//!
//! TLS is rustls with ring. There are no built-in trust roots: an `https` URL needs the PEM of
//! the CA(s) to trust ([`WebhookConfig::ca_pem`]) or a complete rustls client configuration
//! ([`WebhookConfig::tls`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST, LOCATION, USER_AGENT};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use sha2::Sha256;
use tokio::net::TcpStream;

use crate::model::Destination;
use crate::target::{Delivery, DeliveryError, Target};

/// The shortest signing secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;
/// The longest URL accepted, in bytes.
pub const MAX_URL_LEN: usize = 2048;
/// Time allowed for one request (connect, TLS handshake, request and response) unless configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections kept per target unless configured.
pub const DEFAULT_MAX_IDLE_CONNECTIONS: usize = 4;
/// How long an idle connection stays in the pool unless configured.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Deliveries of one batch in flight at once unless configured.
pub const DEFAULT_MAX_CONCURRENCY: usize = 4;
/// Response bodies longer than this are not read to the end (the connection is then closed
/// instead of reused); the first bytes are quoted in error messages.
const MAX_RESPONSE_BODY: usize = 64 * 1024;
/// Bytes of a failed response's body quoted in the error message.
const QUOTED_BODY: usize = 256;

/// The delivery id header: stable across attempts; receivers dedupe on it.
pub const HEADER_DELIVERY_ID: &str = "x-outrider-delivery-id";
/// The event id header.
pub const HEADER_EVENT_ID: &str = "x-outrider-event-id";
/// The rule name header.
pub const HEADER_RULE: &str = "x-outrider-rule";
/// The attempt number header (1 on the first attempt).
pub const HEADER_ATTEMPT: &str = "x-outrider-attempt";
/// The signing time header, Unix seconds (the same as the signature's `t`).
pub const HEADER_TIMESTAMP: &str = "x-outrider-timestamp";
/// The signature header: `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub const HEADER_SIGNATURE: &str = "x-outrider-signature";

type HmacSha256 = Hmac<Sha256>;

/// Why a webhook target cannot be built from its configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookConfigError {
    /// The URL is not an absolute `http`/`https` URL with a host, or is too long.
    #[error("invalid webhook URL: {0}")]
    InvalidUrl(String),
    /// The signing secret is shorter than [`MIN_SECRET_LEN`].
    #[error("webhook signing secret is {len} bytes; at least {MIN_SECRET_LEN} are required")]
    SecretTooShort {
        /// The length given.
        len: usize,
    },
    /// An `https` URL without trust roots ([`WebhookConfig::ca_pem`] or [`WebhookConfig::tls`]).
    #[error("https webhook {host} needs a CA certificate (PEM) to trust: none is built in")]
    MissingCa {
        /// The URL's host.
        host: String,
    },
    /// The CA PEM holds no usable certificate.
    #[error("webhook CA PEM: {0}")]
    InvalidCa(String),
    /// A setting out of range (a zero timeout or concurrency), or a destination that is not a
    /// webhook.
    #[error("webhook configuration: {0}")]
    Invalid(String),
}

/// Why [`verify_signature`] refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The header is not `t=<digits>,v1=<64 hex digits>[,v1=...]`.
    #[error("malformed signature header: {0}")]
    Malformed(String),
    /// No `v1` value matches the body and timestamp.
    #[error("signature does not match")]
    Mismatch,
    /// The timestamp is further than the tolerance from the receiver's clock.
    #[error("signature timestamp {timestamp} is outside the tolerance of {tolerance_secs} s around {now}")]
    OutsideTolerance {
        /// The header's `t`.
        timestamp: u64,
        /// The receiver's clock.
        now: u64,
        /// The tolerance given.
        tolerance_secs: u64,
    },
    /// The secret cannot key HMAC-SHA256 (does not happen: HMAC takes keys of any length).
    #[error("invalid signing key")]
    InvalidKey,
}

/// The settings of one webhook target.
#[derive(Clone)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL with a host, at most [`MAX_URL_LEN`] bytes, no user info.
    pub url: String,
    /// The HMAC-SHA256 signing secret, at least [`MIN_SECRET_LEN`] bytes.
    pub secret: Vec<u8>,
    /// Time allowed for one request: connect, TLS handshake, sending and the whole response.
    pub timeout: Duration,
    /// PEM of the CA certificate(s) trusted for an `https` URL.
    pub ca_pem: Option<Vec<u8>>,
    /// A complete rustls client configuration (client certificates, custom verifiers); it
    /// replaces [`WebhookConfig::ca_pem`]. Its ALPN list should offer `http/1.1` or nothing.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Idle keep-alive connections kept for reuse (0: a connection per request).
    pub max_idle_connections: usize,
    /// How long an idle connection is kept before it is closed.
    pub idle_timeout: Duration,
    /// Deliveries of one batch sent at once (at least 1).
    pub max_concurrency: usize,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("timeout", &self.timeout)
            .field("ca_pem", &self.ca_pem.as_ref().map(|p| p.len()))
            .field("tls", &self.tls.is_some())
            .field("max_idle_connections", &self.max_idle_connections)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_concurrency", &self.max_concurrency)
            .finish()
    }
}

impl WebhookConfig {
    /// A configuration with the defaults: [`DEFAULT_TIMEOUT`], no CA,
    /// [`DEFAULT_MAX_IDLE_CONNECTIONS`], [`DEFAULT_IDLE_TIMEOUT`], [`DEFAULT_MAX_CONCURRENCY`].
    pub fn new(url: impl Into<String>, secret: impl Into<Vec<u8>>) -> Self {
        WebhookConfig {
            url: url.into(),
            secret: secret.into(),
            timeout: DEFAULT_TIMEOUT,
            ca_pem: None,
            tls: None,
            max_idle_connections: DEFAULT_MAX_IDLE_CONNECTIONS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
        }
    }

    /// The URL and timeout of a `Destination::Webhook`, with `secret` (which the caller read from
    /// the variable `secret_env` names) and the other settings at their defaults.
    pub fn from_destination(
        destination: &Destination,
        secret: impl Into<Vec<u8>>,
    ) -> Result<Self, WebhookConfigError> {
        match destination {
            Destination::Webhook {
                url, timeout_ms, ..
            } => {
                let mut c = WebhookConfig::new(url.clone(), secret);
                if let Some(ms) = timeout_ms {
                    c.timeout = Duration::from_millis(*ms);
                }
                Ok(c)
            }
            other => Err(WebhookConfigError::Invalid(format!(
                "destination {other:?} is not a webhook"
            ))),
        }
    }

    /// Sets [`WebhookConfig::timeout`].
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets [`WebhookConfig::ca_pem`].
    pub fn with_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Sets [`WebhookConfig::ca_pem`] to the contents of a PEM file.
    pub fn with_ca_file(
        self,
        path: impl AsRef<std::path::Path>,
    ) -> Result<Self, WebhookConfigError> {
        let path = path.as_ref();
        let pem = std::fs::read(path).map_err(|e| {
            WebhookConfigError::InvalidCa(format!("cannot read {}: {e}", path.display()))
        })?;
        Ok(self.with_ca_pem(pem))
    }
}

/// The parts of a validated URL.
#[derive(Debug, Clone)]
struct Origin {
    https: bool,
    /// Host as written, without IPv6 brackets (for connecting and for TLS names).
    host: String,
    port: u16,
    /// The `Host` header value.
    authority: HeaderValue,
    /// Origin-form request target (`/path?query`).
    path: Uri,
}

fn parse_url(url: &str) -> Result<Origin, WebhookConfigError> {
    let bad = |why: String| WebhookConfigError::InvalidUrl(why);
    if url.len() > MAX_URL_LEN {
        return Err(bad(format!(
            "{} bytes; at most {MAX_URL_LEN} are accepted",
            url.len()
        )));
    }
    let uri: Uri = url
        .parse()
        .map_err(|e| bad(format!("does not parse as a URL: {e}")))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        Some(other) => return Err(bad(format!("scheme {other:?}; only http and https"))),
        None => return Err(bad("no scheme; expected http:// or https://".into())),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| bad("no host".into()))?
        .clone();
    if authority.as_str().contains('@') {
        return Err(bad(
            "user info (user:password@) is not supported; authenticate with the signature".into(),
        ));
    }
    let host = authority.host();
    if host.is_empty() {
        return Err(bad("no host".into()));
    }
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .to_string();
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let path: Uri = if path.is_empty() { "/" } else { path }
        .parse()
        .map_err(|e| bad(format!("path: {e}")))?;
    let authority =
        HeaderValue::from_str(authority.as_str()).map_err(|e| bad(format!("host: {e}")))?;
    Ok(Origin {
        https,
        host,
        port,
        authority,
        path,
    })
}

fn tls_config(
    config: &WebhookConfig,
    host: &str,
) -> Result<Arc<rustls::ClientConfig>, WebhookConfigError> {
    if let Some(tls) = &config.tls {
        return Ok(tls.clone());
    }
    let pem = config
        .ca_pem
        .as_deref()
        .ok_or_else(|| WebhookConfigError::MissingCa {
            host: host.to_string(),
        })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| WebhookConfigError::InvalidCa(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| WebhookConfigError::InvalidCa(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(WebhookConfigError::InvalidCa(
            "no CERTIFICATE block found".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| WebhookConfigError::InvalidCa(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

/// A webhook target (`kind()` = `"webhook"`, `max_batch()` = 1).
pub struct WebhookTarget {
    origin: Origin,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    /// Keyed once; cloned per signature.
    mac: HmacSha256,
    timeout: Duration,
    max_idle: usize,
    idle_timeout: Duration,
    max_concurrency: usize,
    idle: Mutex<Vec<Idle>>,
}

impl std::fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookTarget")
            .field("origin", &self.origin)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

struct Idle {
    sender: SendRequest<Full<Bytes>>,
    since: Instant,
}

/// How a request attempt on one connection ended without a response.
enum SendFailure {
    /// The request was never written: it can go on another connection as it is.
    NotSent(Box<Request<Full<Bytes>>>),
    /// The connection failed after (part of) the request may have been written.
    Failed(hyper::Error),
}

impl WebhookTarget {
    /// Validates the configuration (URL, secret length, trust roots) and builds the target. No
    /// connection is made until the first delivery.
    pub fn new(config: WebhookConfig) -> Result<Self, WebhookConfigError> {
        let origin = parse_url(&config.url)?;
        if config.secret.len() < MIN_SECRET_LEN {
            return Err(WebhookConfigError::SecretTooShort {
                len: config.secret.len(),
            });
        }
        if config.timeout.is_zero() {
            return Err(WebhookConfigError::Invalid(
                "timeout must not be zero".into(),
            ));
        }
        if config.max_concurrency == 0 {
            return Err(WebhookConfigError::Invalid(
                "max_concurrency must be at least 1".into(),
            ));
        }
        let mac = HmacSha256::new_from_slice(&config.secret)
            .map_err(|_| WebhookConfigError::Invalid("signing secret cannot key HMAC".into()))?;
        let tls = if origin.https {
            let c = tls_config(&config, &origin.host)?;
            let name = ServerName::try_from(origin.host.clone()).map_err(|e| {
                WebhookConfigError::InvalidUrl(format!("host {:?}: {e}", origin.host))
            })?;
            Some((tokio_rustls::TlsConnector::from(c), name))
        } else {
            None
        };
        Ok(WebhookTarget {
            origin,
            tls,
            mac,
            timeout: config.timeout,
            max_idle: config.max_idle_connections,
            idle_timeout: config.idle_timeout,
            max_concurrency: config.max_concurrency,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Idle connections in the pool now (for metrics and tests).
    pub fn idle_connections(&self) -> usize {
        self.idle.lock().len()
    }

    /// Delivers one event: builds, signs and sends the request within the timeout.
    async fn deliver_one(&self, d: &Delivery) -> Result<(), DeliveryError> {
        let ts = unix_now();
        let body = Bytes::copy_from_slice(d.payload.as_bytes());
        let signature = signature_header(self.mac.clone(), ts, &body);
        let json = serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_ok();
        let build = || -> Result<Request<Full<Bytes>>, DeliveryError> {
            Request::builder()
                .method(Method::POST)
                .uri(self.origin.path.clone())
                .header(HOST, self.origin.authority.clone())
                .header(
                    USER_AGENT,
                    concat!("outrider-bus/", env!("CARGO_PKG_VERSION")),
                )
                .header(
                    CONTENT_TYPE,
                    if json {
                        "application/json"
                    } else {
                        "text/plain; charset=utf-8"
                    },
                )
                .header(HEADER_DELIVERY_ID, d.id.as_str())
                .header(HEADER_EVENT_ID, d.event.id.as_str())
                .header(HEADER_RULE, d.rule.as_str())
                .header(HEADER_ATTEMPT, d.attempt.to_string())
                .header(HEADER_TIMESTAMP, ts.to_string())
                .header(HEADER_SIGNATURE, signature.as_str())
                .body(Full::new(body.clone()))
                .map_err(|e| {
                    DeliveryError::permanent(
                        "InvalidRequest",
                        format!("cannot build the webhook request: {e}"),
                    )
                })
        };
        match tokio::time::timeout(self.timeout, self.exchange(build)).await {
            Ok(r) => r,
            Err(_) => Err(DeliveryError::retryable(
                "Timeout",
                format!(
                    "webhook {} did not answer within {:?}",
                    self.origin.host, self.timeout
                ),
            )),
        }
    }

    /// Sends the request on a pooled or new connection and classifies the answer.
    async fn exchange(
        &self,
        build: impl Fn() -> Result<Request<Full<Bytes>>, DeliveryError>,
    ) -> Result<(), DeliveryError> {
        let mut req = build()?;
        let mut resent = false;
        loop {
            // After a pooled connection failed mid-request, the resend goes on a new one.
            let pooled = if resent { None } else { self.take_idle() };
            let (mut sender, reused) = match pooled {
                Some(s) => (s, true),
                None => (self.connect().await?, false),
            };
            if let Err(e) = sender.ready().await {
                if reused {
                    continue;
                }
                return Err(connection_error(&e));
            }
            match send(&mut sender, req).await {
                Ok(resp) => return self.finish(sender, resp).await,
                Err(SendFailure::NotSent(r)) if reused => req = *r,
                Err(SendFailure::Failed(e)) if reused && !resent && !e.is_timeout() => {
                    // A pooled connection the server closed while idle. The request may have
                    // reached it; receivers dedupe on the delivery id.
                    resent = true;
                    req = build()?;
                }
                Err(SendFailure::NotSent(_)) => {
                    return Err(DeliveryError::retryable(
                        "ConnectionError",
                        "new webhook connection was not ready",
                    ))
                }
                Err(SendFailure::Failed(e)) => return Err(connection_error(&e)),
            }
        }
    }

    /// Reads (a bounded part of) the response, returns the connection to the pool when it can
    /// carry another request, and maps the status.
    async fn finish(
        &self,
        sender: SendRequest<Full<Bytes>>,
        resp: hyper::Response<hyper::body::Incoming>,
    ) -> Result<(), DeliveryError> {
        let status = resp.status();
        let location = resp
            .headers()
            .get(LOCATION)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let mut body = resp.into_body();
        let mut quoted = Vec::new();
        let mut total = 0usize;
        let mut complete = true;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Some(data) = frame.data_ref() {
                        total += data.len();
                        if quoted.len() < QUOTED_BODY {
                            let n = (QUOTED_BODY - quoted.len()).min(data.len());
                            quoted.extend_from_slice(&data[..n]);
                        }
                        if total > MAX_RESPONSE_BODY {
                            complete = false;
                            break;
                        }
                    }
                }
                Err(_) => {
                    complete = false;
                    break;
                }
            }
        }
        drop(body);
        if complete {
            self.put_idle(sender);
        }
        classify(status, location.as_deref(), &quoted)
    }

    fn take_idle(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock();
        while let Some(c) = idle.pop() {
            if !c.sender.is_closed() && c.since.elapsed() < self.idle_timeout {
                return Some(c.sender);
            }
        }
        None
    }

    fn put_idle(&self, sender: SendRequest<Full<Bytes>>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock();
        idle.retain(|c| !c.sender.is_closed() && c.since.elapsed() < self.idle_timeout);
        if idle.len() < self.max_idle {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Opens a connection (TCP, then TLS for https) and starts its HTTP/1.1 task.
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, DeliveryError> {
        let o = &self.origin;
        let tcp = TcpStream::connect((o.host.as_str(), o.port))
            .await
            .map_err(|e| {
                DeliveryError::retryable(
                    "ConnectError",
                    format!("cannot connect to {}:{}: {e}", o.host, o.port),
                )
            })?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => handshake(TokioIo::new(tcp)).await,
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), tcp).await.map_err(|e| {
                    DeliveryError::retryable(
                        "TlsError",
                        format!("TLS handshake with {}:{} failed: {e}", o.host, o.port),
                    )
                })?;
                handshake(TokioIo::new(tls)).await
            }
        }
    }
}

async fn handshake<T>(io: TokioIo<T>) -> Result<SendRequest<Full<Bytes>>, DeliveryError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io)
        .await
        .map_err(|e| connection_error(&e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "webhook connection ended");
        }
    });
    Ok(sender)
}

async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, SendFailure> {
    sender
        .try_send_request(req)
        .await
        .map_err(|mut e| match e.take_message() {
            Some(req) => SendFailure::NotSent(Box::new(req)),
            None => SendFailure::Failed(e.into_error()),
        })
}

fn connection_error(e: &hyper::Error) -> DeliveryError {
    DeliveryError::retryable("ConnectionError", format!("webhook connection failed: {e}"))
}

/// 2xx: delivered; 429 and 5xx: retryable; anything else (redirects included): permanent.
fn classify(status: StatusCode, location: Option<&str>, body: &[u8]) -> Result<(), DeliveryError> {
    if status.is_success() {
        return Ok(());
    }
    let code = format!("HttpStatus{}", status.as_u16());
    let body = String::from_utf8_lossy(body);
    if status.is_redirection() {
        return Err(DeliveryError::permanent(
            code,
            format!(
                "webhook answered {status} (redirect to {}); redirects are not followed",
                location.unwrap_or("no Location")
            ),
        ));
    }
    let message = if body.trim().is_empty() {
        format!("webhook answered {status}")
    } else {
        format!("webhook answered {status}: {}", body.trim())
    };
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        Err(DeliveryError::retryable(code, message))
    } else {
        Err(DeliveryError::permanent(code, message))
    }
}

#[async_trait]
impl Target for WebhookTarget {
    fn kind(&self) -> &'static str {
        "webhook"
    }

    fn max_batch(&self) -> usize {
        1
    }

    async fn deliver(&self, batch: &[Delivery]) -> Vec<Result<(), DeliveryError>> {
        if batch.len() == 1 {
            return vec![self.deliver_one(&batch[0]).await];
        }
        // Boxed futures, not a closure in the stream's type: a closure over `&Delivery` makes
        // the `Send` bound of the trait's future unprovable (a higher-ranked lifetime issue).
        let sends: Vec<Pin<Box<dyn Future<Output = Result<(), DeliveryError>> + Send + '_>>> =
            batch
                .iter()
                .map(|d| Box::pin(self.deliver_one(d)) as _)
                .collect();
        stream::iter(sends)
            .buffered(self.max_concurrency)
            .collect()
            .await
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn mac_of(mut mac: HmacSha256, timestamp: u64, body: &[u8]) -> HmacSha256 {
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

fn signature_header(mac: HmacSha256, timestamp: u64, body: &[u8]) -> String {
    let tag = mac_of(mac, timestamp, body).finalize().into_bytes();
    format!("t={timestamp},v1={}", to_hex(&tag))
}

/// The `X-Outrider-Signature` value for `body` signed at `timestamp` (Unix seconds) with
/// `secret`: `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> Result<String, SignatureError> {
    let mac = HmacSha256::new_from_slice(secret).map_err(|_| SignatureError::InvalidKey)?;
    Ok(signature_header(mac, timestamp, body))
}

/// Checks an `X-Outrider-Signature` header for a receiver: `body` is the raw request body,
/// `now_secs` the receiver's clock (Unix seconds), `tolerance_secs` how far the signed timestamp
/// may be from it either way (300 is usual). Any of several `v1` values may match (a sender
/// rotating secrets); the comparison is constant-time. Receivers should also dedupe on
/// `X-Outrider-Delivery-Id` for at least the tolerance window.
pub fn verify_signature(
    secret: &[u8],
    header_value: &str,
    body: &[u8],
    now_secs: u64,
    tolerance_secs: u64,
) -> Result<(), SignatureError> {
    let mut timestamp: Option<u64> = None;
    let mut tags: Vec<Vec<u8>> = Vec::new();
    for part in header_value.split(',') {
        let part = part.trim();
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| SignatureError::Malformed(format!("{part:?} is not key=value")))?;
        match k {
            "t" => {
                if timestamp.is_some() {
                    return Err(SignatureError::Malformed("two t values".into()));
                }
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(SignatureError::Malformed(format!(
                        "t={v:?} is not Unix seconds"
                    )));
                }
                timestamp = Some(v.parse().map_err(|_| {
                    SignatureError::Malformed(format!("t={v:?} is not Unix seconds"))
                })?);
            }
            "v1" => {
                let tag = from_hex(v)
                    .filter(|t| t.len() == 32)
                    .ok_or_else(|| SignatureError::Malformed("v1 is not 64 hex digits".into()))?;
                tags.push(tag);
            }
            // Other schemes (v0, a future v2) are ignored, as Stripe's receivers do.
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or_else(|| SignatureError::Malformed("no t value".into()))?;
    if tags.is_empty() {
        return Err(SignatureError::Malformed("no v1 value".into()));
    }
    let keyed = HmacSha256::new_from_slice(secret).map_err(|_| SignatureError::InvalidKey)?;
    let expected = mac_of(keyed, timestamp, body);
    let mut matched = false;
    for tag in &tags {
        // `verify_slice` compares in constant time.
        matched |= expected.clone().verify_slice(tag).is_ok();
    }
    if !matched {
        return Err(SignatureError::Mismatch);
    }
    if timestamp.abs_diff(now_secs) > tolerance_secs {
        return Err(SignatureError::OutsideTolerance {
            timestamp,
            now: now_secs,
            tolerance_secs,
        });
    }
    Ok(())
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    b.chunks(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123";

    #[test]
    fn sign_and_verify_round_trip() {
        let h = sign(SECRET, 1_700_000_000, b"{\"a\":1}").unwrap();
        assert!(h.starts_with("t=1700000000,v1="));
        assert_eq!(h.len(), "t=1700000000,v1=".len() + 64);
        verify_signature(SECRET, &h, b"{\"a\":1}", 1_700_000_100, 300).unwrap();
        // Body, secret, timestamp and tolerance all matter.
        assert_eq!(
            verify_signature(SECRET, &h, b"{\"a\":2}", 1_700_000_000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(b"another secret 16+", &h, b"{\"a\":1}", 1_700_000_000, 300),
            Err(SignatureError::Mismatch)
        );
        let replayed = h.replace("t=1700000000", "t=1700000500");
        assert_eq!(
            verify_signature(SECRET, &replayed, b"{\"a\":1}", 1_700_000_500, 300),
            Err(SignatureError::Mismatch)
        );
        assert!(matches!(
            verify_signature(SECRET, &h, b"{\"a\":1}", 1_700_000_301, 300),
            Err(SignatureError::OutsideTolerance { .. })
        ));
        // Several v1 values: one matching is enough.
        let v1 = h.split_once(",v1=").unwrap().1;
        let rotated = format!("t=1700000000,v1={},v1={v1}", "0".repeat(64));
        verify_signature(SECRET, &rotated, b"{\"a\":1}", 1_700_000_000, 0).unwrap();
    }

    #[test]
    fn malformed_headers_are_named() {
        for bad in [
            "",
            "t=1",
            "v1=00",
            "t=x,v1=00",
            "t=1,v1=zz",
            "t=1,t=2,v1=0000000000000000000000000000000000000000000000000000000000000000",
            "nonsense",
        ] {
            assert!(
                matches!(
                    verify_signature(SECRET, bad, b"", 1, 10),
                    Err(SignatureError::Malformed(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn urls_are_validated() {
        for (url, ok) in [
            ("http://example.com", true),
            ("https://example.com:8443/hook?x=1", true),
            ("http://[::1]:8080/h", true),
            ("ftp://example.com/", false),
            ("example.com/hook", false),
            ("/hook", false),
            ("http://user:pw@example.com/", false),
            ("http://", false),
        ] {
            assert_eq!(parse_url(url).is_ok(), ok, "{url}");
        }
        let long = format!("http://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(matches!(
            parse_url(&long),
            Err(WebhookConfigError::InvalidUrl(_))
        ));
        let o = parse_url("http://[::1]:8080").unwrap();
        assert_eq!(
            (o.host.as_str(), o.port, o.path.to_string()),
            ("::1", 8080, "/".into())
        );
    }

    #[test]
    fn construction_checks_secret_and_trust_roots() {
        assert_eq!(
            WebhookTarget::new(WebhookConfig::new("http://example.com", b"short".to_vec()))
                .unwrap_err(),
            WebhookConfigError::SecretTooShort { len: 5 }
        );
        assert!(matches!(
            WebhookTarget::new(WebhookConfig::new("https://example.com", SECRET)).unwrap_err(),
            WebhookConfigError::MissingCa { .. }
        ));
        assert!(matches!(
            WebhookTarget::new(
                WebhookConfig::new("https://example.com", SECRET).with_ca_pem(b"garbage".to_vec())
            )
            .unwrap_err(),
            WebhookConfigError::InvalidCa(_)
        ));
        let d = Destination::Webhook {
            url: "http://example.com/h".into(),
            secret_env: Some("X".into()),
            timeout_ms: Some(250),
        };
        let c = WebhookConfig::from_destination(&d, SECRET).unwrap();
        assert_eq!(c.timeout, Duration::from_millis(250));
        assert!(!format!("{c:?}").contains("0123456789"));
        assert!(WebhookTarget::new(c).is_ok());
    }

    #[test]
    fn statuses_are_classified() {
        assert!(classify(StatusCode::NO_CONTENT, None, b"").is_ok());
        for (s, retryable) in [
            (500, true),
            (503, true),
            (429, true),
            (400, false),
            (404, false),
        ] {
            let e = classify(StatusCode::from_u16(s).unwrap(), None, b"why").unwrap_err();
            assert_eq!(e.retryable, retryable, "{s}");
            assert_eq!(e.code, format!("HttpStatus{s}"));
        }
        let e = classify(StatusCode::FOUND, Some("http://elsewhere/"), b"").unwrap_err();
        assert!(!e.retryable);
        assert!(e.message.contains("302") && e.message.contains("http://elsewhere/"));
    }
}
