//! mTLS for the ingest server, over TCP (gRPC) and QUIC alike: rustls with the ring provider
//! (never aws-lc-rs), client certificates required and verified against the CA before any
//! application data is read.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context as _, Result};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// The PEM files of the server's mTLS configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA that signs node certificates (and usually the server's): `ca.pem`.
    pub ca: PathBuf,
    /// The server's certificate (chain): `server.pem`.
    pub cert: PathBuf,
    /// The server's private key: `server-key.pem`.
    pub key: PathBuf,
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read the {what} {}", path.display()))
}

/// PEM certificates, at least one.
pub fn certs_from_pem(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("{what}: not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err(anyhow!("{what}: no certificate in it"));
    }
    Ok(certs)
}

/// The server's rustls configuration from PEM contents: client certificates signed by `ca_pem`
/// are required; ALPN h2 (gRPC).
pub fn server_config_from_pem(
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<ServerConfig>> {
    let mut cfg = mtls_config(ca_pem, cert_pem, key_pem)?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// The same mTLS rules for QUIC: TLS 1.3 (QUIC has no other), ALPN
/// [`crate::framing::ALPN`], client certificates signed by `ca_pem` required.
pub fn quic_server_config_from_pem(
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<ServerConfig> {
    let mut cfg = mtls_config(ca_pem, cert_pem, key_pem)?;
    cfg.alpn_protocols = vec![crate::framing::ALPN.to_vec()];
    Ok(cfg)
}

fn mtls_config(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in certs_from_pem(ca_pem, "CA certificate")? {
        roots
            .add(c)
            .map_err(|e| anyhow!("CA certificate: cannot be used as a trust anchor: {e}"))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| anyhow!("CA certificate: {e}"))?;
    let chain = certs_from_pem(cert_pem, "server certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| anyhow!("server key: not a PEM private key: {e}"))?;
    ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("TLS protocol versions: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| anyhow!("server certificate and key: {e}"))
}

/// Insecure QUIC (development only): QUIC always encrypts, so the server presents a
/// self-signed certificate made at start (which insecure agents do not verify) and asks for no
/// client certificate; the node id then comes from the Hello.
pub fn insecure_quic_server_config() -> Result<ServerConfig> {
    let cert = rcgen::generate_simple_self_signed(vec!["outrider-insecure".to_string()])
        .map_err(|e| anyhow!("cannot make a self-signed certificate for insecure QUIC: {e}"))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("TLS protocol versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .map_err(|e| anyhow!("self-signed certificate: {e}"))?;
    cfg.alpn_protocols = vec![crate::framing::ALPN.to_vec()];
    Ok(cfg)
}

/// The PEM contents of the files.
pub fn read_files(files: &TlsFiles) -> Result<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    Ok((
        read(&files.ca, "CA certificate")?,
        read(&files.cert, "server certificate")?,
        read(&files.key, "server key")?,
    ))
}

/// The context of an error about the files.
pub(crate) fn files_context(files: &TlsFiles) -> String {
    format!(
        "TLS files {}, {}, {}",
        files.ca.display(),
        files.cert.display(),
        files.key.display()
    )
}

/// [`server_config_from_pem`] from files; errors name the file.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>> {
    let (ca, cert, key) = read_files(files)?;
    server_config_from_pem(&ca, &cert, &key).with_context(|| files_context(files))
}
