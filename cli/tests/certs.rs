//! `outrider certs init` and `outrider certs issue`, run as the real binary; what they write is
//! checked with rustls' WebPKI verifiers and in a real mTLS handshake over loopback.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{parse_x509_certificate, X509Certificate};

const BIN: &str = env!("CARGO_BIN_EXE_outrider");
const DAY: i64 = 86_400;

struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn outrider(args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("OUTRIDER_AGENT")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Output {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn ok(args: &[&str]) -> Output {
    let out = outrider(args);
    assert_eq!(out.code, Some(0), "{args:?}: {}", out.stderr);
    out
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `certs init` into `root/name`, then `certs issue node` there.
fn init_and_issue(root: &Path, name: &str, node: &str) -> PathBuf {
    let dir = root.join(name);
    ok(&["certs", "init", "--dir", s(&dir)]);
    ok(&["certs", "issue", node, "--dir", s(&dir)]);
    dir
}

fn cert(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).unwrap()
}

fn key(path: &Path) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_file(path).unwrap()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn roots(ca_dir: &Path) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.add(cert(&ca_dir.join("ca.pem"))).unwrap();
    Arc::new(roots)
}

fn server_verifier(ca_dir: &Path) -> Arc<WebPkiServerVerifier> {
    WebPkiServerVerifier::builder_with_provider(roots(ca_dir), provider())
        .build()
        .unwrap()
}

fn client_verifier(ca_dir: &Path) -> Arc<dyn ClientCertVerifier> {
    WebPkiClientVerifier::builder_with_provider(roots(ca_dir), provider())
        .build()
        .unwrap()
}

fn verify_server(ca_dir: &Path, cert_path: &Path, name: &str) -> Result<(), rustls::Error> {
    let name = ServerName::try_from(name.to_owned()).unwrap();
    server_verifier(ca_dir)
        .verify_server_cert(&cert(cert_path), &[], &name, &[], UnixTime::now())
        .map(|_| ())
}

fn verify_client(ca_dir: &Path, cert_path: &Path) -> Result<(), rustls::Error> {
    client_verifier(ca_dir)
        .verify_client_cert(&cert(cert_path), &[], UnixTime::now())
        .map(|_| ())
}

fn with_x509<T>(path: &Path, f: impl FnOnce(&X509Certificate<'_>) -> T) -> T {
    let der = cert(path);
    let (_, x509) = parse_x509_certificate(&der).unwrap();
    f(&x509)
}

fn common_name(x509: &X509Certificate<'_>) -> String {
    let cn = x509.subject().iter_common_name().next().unwrap();
    cn.as_str().unwrap().to_owned()
}

fn uris(x509: &X509Certificate<'_>) -> Vec<String> {
    let san = x509.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect()
}

/// Days from now until the end of the certificate's validity.
fn days_left(x509: &X509Certificate<'_>) -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    (x509.validity().not_after.timestamp() - now + DAY / 2) / DAY
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn help_lists_both_subcommands() {
    let out = ok(&["certs", "--help"]);
    assert!(out.stdout.contains("init"), "{}", out.stdout);
    assert!(out.stdout.contains("issue"), "{}", out.stdout);
    let out = ok(&["--help"]);
    assert!(out.stdout.contains("certs"), "{}", out.stdout);
}

#[test]
fn init_and_issue_make_certificates_that_rustls_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_and_issue(tmp.path(), "pki", "gw-7");
    let (ca, server, node) = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("gw-7.pem"),
    );

    // Modes: a private directory, private keys, readable certificates.
    assert_eq!(mode(&dir), 0o700);
    for key in ["ca-key.pem", "server-key.pem", "gw-7-key.pem"] {
        assert_eq!(mode(&dir.join(key)), 0o600, "{key}");
    }
    for cert in ["ca.pem", "server.pem", "gw-7.pem"] {
        assert_eq!(mode(&dir.join(cert)), 0o644, "{cert}");
    }

    // The server certificate chains to the CA and is valid for its default names only.
    for name in ["localhost", "127.0.0.1", "::1"] {
        verify_server(&dir, &server, name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let err = verify_server(&dir, &server, "example.com").unwrap_err();
    assert!(format!("{err:?}").contains("NotValidForName"), "{err:?}");

    // The node certificate chains to the CA for client authentication.
    verify_client(&dir, &node).unwrap();

    // Purposes are not interchangeable.
    let err = verify_client(&dir, &server).unwrap_err();
    assert!(format!("{err:?}").contains("Purpose"), "{err:?}");
    assert!(verify_server(&dir, &node, "localhost").is_err());

    // The CA: CA:true with path length 0, keyCertSign + cRLSign, a named and random CN.
    let ca_name = with_x509(&ca, |x| {
        let bc = x.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        let ku = x.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        assert!((3649..=3650).contains(&days_left(x)), "{}", days_left(x));
        common_name(x)
    });
    let suffix = ca_name.strip_prefix("Outrider CA ").unwrap();
    assert!(!suffix.is_empty(), "{ca_name}");

    // The server certificate: serverAuth, 825 days by default.
    with_x509(&server, |x| {
        let eku = x.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        assert!(!x.is_ca());
        assert!((824..=825).contains(&days_left(x)), "{}", days_left(x));
    });

    // The node certificate: CN and the identity URI, clientAuth only.
    with_x509(&node, |x| {
        assert_eq!(common_name(x), "gw-7");
        assert_eq!(uris(x), ["urn:outrider:node:gw-7"]);
        let eku = x.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert!(!x.is_ca());
        assert_eq!(
            x509_parser::x509::X509Name::to_string(x.issuer()),
            format!("O=Outrider, CN={ca_name}")
        );
    });
}

#[test]
fn a_certificate_from_another_ca_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let ours = init_and_issue(tmp.path(), "ours", "gw-1");
    let theirs = init_and_issue(tmp.path(), "theirs", "gw-1");

    let err = verify_client(&ours, &theirs.join("gw-1.pem")).unwrap_err();
    assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");
    let err = verify_server(&ours, &theirs.join("server.pem"), "localhost").unwrap_err();
    assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");
    // Each CA's own certificates still verify.
    verify_client(&theirs, &theirs.join("gw-1.pem")).unwrap();
}

#[test]
fn init_refuses_to_overwrite_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    ok(&["certs", "init", "--dir", s(&dir)]);
    let before = std::fs::read(dir.join("ca.pem")).unwrap();

    let out = outrider(&["certs", "init", "--dir", s(&dir)]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains(s(&dir.join("ca.pem"))),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("--force"), "{}", out.stderr);
    assert_eq!(std::fs::read(dir.join("ca.pem")).unwrap(), before);

    // One existing file is enough, and the error names it.
    std::fs::remove_file(dir.join("ca.pem")).unwrap();
    std::fs::remove_file(dir.join("ca-key.pem")).unwrap();
    let out = outrider(&["certs", "init", "--dir", s(&dir)]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains(s(&dir.join("server.pem"))),
        "{}",
        out.stderr
    );
    assert!(!dir.join("ca.pem").exists(), "nothing written on refusal");

    // --force makes a new CA, keeping the modes.
    ok(&["certs", "init", "--dir", s(&dir), "--force"]);
    assert_ne!(std::fs::read(dir.join("ca.pem")).unwrap(), before);
    assert_eq!(mode(&dir.join("ca-key.pem")), 0o600);
    assert_eq!(mode(&dir.join("server-key.pem")), 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    verify_server(&dir, &dir.join("server.pem"), "localhost").unwrap();
}

#[test]
fn init_options_shape_the_server_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a/b/pki");
    ok(&[
        "certs",
        "init",
        "--dir",
        s(&dir),
        "--server-name",
        "cloud.example.com",
        "--server-name",
        "ingest.example.com",
        "--ip",
        "10.1.2.3",
        "--days",
        "30",
    ]);
    let server = dir.join("server.pem");
    for name in ["cloud.example.com", "ingest.example.com", "10.1.2.3"] {
        verify_server(&dir, &server, name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // Given names replace the defaults.
    for name in ["localhost", "127.0.0.1", "::1"] {
        assert!(verify_server(&dir, &server, name).is_err(), "{name}");
    }
    with_x509(&server, |x| assert_eq!(days_left(x), 30));

    let out = outrider(&[
        "certs",
        "init",
        "--dir",
        s(&dir),
        "--force",
        "--server-name",
        "1.2.3.4",
    ]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("--ip"), "{}", out.stderr);
    let out = outrider(&["certs", "init", "--dir", s(&dir), "--force", "--days", "0"]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
}

#[test]
fn issue_options_and_refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    ok(&["certs", "init", "--dir", s(&dir)]);

    // --out-dir and --days.
    let out_dir = tmp.path().join("nodes");
    let out = ok(&[
        "certs",
        "issue",
        "plant_3.line-2",
        "--dir",
        s(&dir),
        "--out-dir",
        s(&out_dir),
        "--days",
        "7",
    ]);
    assert!(
        out.stdout.contains("urn:outrider:node:plant_3.line-2"),
        "{}",
        out.stdout
    );
    let node = out_dir.join("plant_3.line-2.pem");
    assert_eq!(mode(&out_dir.join("plant_3.line-2-key.pem")), 0o600);
    assert!(!dir.join("plant_3.line-2.pem").exists());
    verify_client(&dir, &node).unwrap();
    with_x509(&node, |x| {
        assert_eq!(days_left(x), 7);
        assert_eq!(uris(x), ["urn:outrider:node:plant_3.line-2"]);
    });

    // No silent overwrite of a node's key.
    let out = outrider(&[
        "certs",
        "issue",
        "plant_3.line-2",
        "--dir",
        s(&dir),
        "--out-dir",
        s(&out_dir),
    ]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains(s(&node)), "{}", out.stderr);
    ok(&[
        "certs",
        "issue",
        "plant_3.line-2",
        "--dir",
        s(&dir),
        "--out-dir",
        s(&out_dir),
        "--force",
    ]);

    // Invalid node names.
    let long = "n".repeat(129);
    for bad in ["bad/name", "a b", "", "é", long.as_str()] {
        let out = outrider(&["certs", "issue", bad, "--dir", s(&dir)]);
        assert_eq!(out.code, Some(2), "{bad:?}: {}", out.stderr);
        assert!(
            out.stderr
                .contains("a node name is 1 to 128 characters of A-Z a-z 0-9 . _ -"),
            "{bad:?}: {}",
            out.stderr
        );
    }
    ok(&["certs", "issue", &"n".repeat(128), "--dir", s(&dir)]);

    // A node must not clobber the CA's own files.
    for clash in ["ca", "server-key"] {
        let out = outrider(&["certs", "issue", clash, "--dir", s(&dir), "--force"]);
        assert_eq!(out.code, Some(1), "{clash}");
        assert!(out.stderr.contains("would overwrite"), "{}", out.stderr);
    }
    verify_server(&dir, &dir.join("server.pem"), "localhost").unwrap();

    // Longer than the CA lives.
    let out = outrider(&["certs", "issue", "gw-9", "--dir", s(&dir), "--days", "4000"]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("outlive the CA"), "{}", out.stderr);
}

#[test]
fn issue_needs_a_sound_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    let other = tmp.path().join("other");
    ok(&["certs", "init", "--dir", s(&dir)]);
    ok(&["certs", "init", "--dir", s(&other)]);

    let broken = tmp.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    let expect_error = |naming: &Path, hint: &str| {
        let out = outrider(&["certs", "issue", "gw-1", "--dir", s(&broken)]);
        assert_eq!(out.code, Some(1), "{}", out.stderr);
        assert!(out.stderr.contains(s(naming)), "{}", out.stderr);
        assert!(out.stderr.contains(hint), "{}", out.stderr);
        assert!(!broken.join("gw-1.pem").exists());
        assert!(!broken.join("gw-1-key.pem").exists());
    };
    let (ca, ca_key) = (broken.join("ca.pem"), broken.join("ca-key.pem"));

    // Missing.
    expect_error(&ca, "not found");
    std::fs::copy(dir.join("ca.pem"), &ca).unwrap();
    expect_error(&ca_key, "not found");

    // Malformed.
    std::fs::write(&ca_key, "not a key").unwrap();
    expect_error(&ca_key, "private key");
    std::fs::copy(dir.join("ca-key.pem"), &ca_key).unwrap();
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    expect_error(&ca, "ca.pem");
    // A leaf certificate is not a CA.
    std::fs::copy(dir.join("server.pem"), &ca).unwrap();
    expect_error(&ca, "not a CA certificate");
    // A key that is not the CA's.
    std::fs::copy(dir.join("ca.pem"), &ca).unwrap();
    std::fs::copy(other.join("ca-key.pem"), &ca_key).unwrap();
    expect_error(&ca_key, "does not belong");

    // Sound again.
    std::fs::copy(dir.join("ca-key.pem"), &ca_key).unwrap();
    ok(&["certs", "issue", "gw-1", "--dir", s(&broken)]);
    verify_client(&dir, &broken.join("gw-1.pem")).unwrap();
}

// ---- A real mTLS handshake over loopback ----

const PATIENCE: Duration = Duration::from_secs(20);

fn server_config(dir: &Path) -> Arc<ServerConfig> {
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(client_verifier(dir))
        .with_single_cert(
            vec![cert(&dir.join("server.pem"))],
            key(&dir.join("server-key.pem")),
        )
        .unwrap();
    Arc::new(config)
}

/// A client trusting the CA in `ca_dir`, presenting `NODE.pem` from `client` if given.
fn client_config(ca_dir: &Path, client: Option<(&Path, &str)>) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(ca_dir));
    let config = match client {
        Some((dir, node)) => builder
            .with_client_auth_cert(
                vec![cert(&dir.join(format!("{node}.pem")))],
                key(&dir.join(format!("{node}-key.pem"))),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// Serves one connection: on a verified handshake, reads the node identity from the client's
/// certificate and greets it. Returns the identity, or the handshake error.
async fn serve_one(listener: TcpListener, config: Arc<ServerConfig>) -> Result<String, String> {
    let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
    let mut tls = TlsAcceptor::from(config)
        .accept(tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (_, conn) = tls.get_ref();
    let peer = conn.peer_certificates().ok_or("no client certificate")?;
    let (_, x509) = parse_x509_certificate(&peer[0]).map_err(|e| e.to_string())?;
    let identity = uris(&x509)
        .into_iter()
        .find(|u| u.starts_with("urn:outrider:node:"))
        .ok_or("no identity")?;
    tls.write_all(format!("hello {identity}\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    tls.shutdown().await.map_err(|e| e.to_string())?;
    Ok(identity)
}

/// Connects with `client` to a server using `dir`'s server certificate; returns what the server
/// concluded and what the client read (or its error).
async fn handshake(
    dir: &Path,
    client: Arc<ClientConfig>,
) -> (Result<String, String>, Result<String, String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve_one(listener, server_config(dir)));
    let client = async move {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = TlsConnector::from(client)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let mut greeting = String::new();
        tls.read_to_string(&mut greeting)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(greeting)
    };
    let client = tokio::time::timeout(PATIENCE, client).await.unwrap();
    let server = tokio::time::timeout(PATIENCE, server)
        .await
        .unwrap()
        .unwrap();
    (server, client)
}

#[tokio::test]
async fn mtls_handshake_over_loopback() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_and_issue(tmp.path(), "pki", "gw-7");
    let other = init_and_issue(tmp.path(), "other", "gw-7");

    // The node's certificate: accepted, and the server learns the identity from it.
    let (server, client) = handshake(&dir, client_config(&dir, Some((&dir, "gw-7")))).await;
    assert_eq!(server.as_deref(), Ok("urn:outrider:node:gw-7"));
    assert_eq!(client.as_deref(), Ok("hello urn:outrider:node:gw-7\n"));

    // No client certificate: refused by the server, and the client reads nothing.
    let (server, client) = handshake(&dir, client_config(&dir, None)).await;
    let err = server.unwrap_err();
    assert!(err.contains("certificate"), "{err}");
    assert!(client.is_err(), "{client:?}");

    // A certificate from another CA: refused.
    let (server, client) = handshake(&dir, client_config(&dir, Some((&other, "gw-7")))).await;
    let err = server.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(client.is_err(), "{client:?}");

    // And the client refuses a server of another CA.
    let (server, client) = handshake(&other, client_config(&dir, Some((&dir, "gw-7")))).await;
    assert!(server.is_err());
    let err = client.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
}
