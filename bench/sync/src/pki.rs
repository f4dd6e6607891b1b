//! A throwaway PKI for the benchmark (rcgen, as `outrider certs` makes it): a CA, the cloud's
//! server certificate and the agent's node certificate (`urn:outrider:node:NODE`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The files the cloud and the agent use.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub node_cert: PathBuf,
    pub node_key: PathBuf,
}

/// Writes a CA, a server certificate for `localhost`, the loopback addresses and `server_ip`,
/// and a certificate of `node` into `dir`.
pub fn make(dir: &Path, server_ip: IpAddr, node: &str) -> anyhow::Result<Pki> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let write = |name: &str, text: String| -> anyhow::Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    };

    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.distinguished_name
        .push(DnType::CommonName, "sync-bench CA");
    let ca_key = KeyPair::generate()?;
    let ca_cert = p.self_signed(&ca_key)?;
    let ca = write("ca.pem", ca_cert.pem())?;
    let issuer = Issuer::new(p, ca_key);

    let leaf = |mut p: CertificateParams| -> anyhow::Result<(String, String)> {
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    };

    let mut p = CertificateParams::new(vec!["localhost".to_string()])?;
    let mut ips: Vec<IpAddr> = vec!["127.0.0.1".parse()?, "::1".parse()?];
    if !server_ip.is_unspecified() && !ips.contains(&server_ip) {
        ips.push(server_ip);
    }
    p.subject_alt_names
        .extend(ips.into_iter().map(SanType::IpAddress));
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let (cert, key) = leaf(p)?;
    let server_cert = write("server.pem", cert)?;
    let server_key = write("server-key.pem", key)?;

    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, node);
    p.subject_alt_names = vec![SanType::URI(Ia5String::try_from(format!(
        "urn:outrider:node:{node}"
    ))?)];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let (cert, key) = leaf(p)?;
    let node_cert = write(&format!("{node}.pem"), cert)?;
    let node_key = write(&format!("{node}-key.pem"), key)?;

    Ok(Pki {
        ca,
        server_cert,
        server_key,
        node_cert,
        node_key,
    })
}
