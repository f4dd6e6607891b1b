//! A throwaway PKI for mTLS between the agent and the cloud, made the way `outrider certs`
//! (cli/src/certs.rs) makes it: a CA, a server certificate for `localhost` / `127.0.0.1`, and node
//! certificates naming the node as the URI SAN `urn:outrider:node:NODE`
//! ([`outrider_ingest::identity::NODE_URI_PREFIX`]).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use outrider_ingest::identity::NODE_URI_PREFIX;
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The PEM files of one party: its CA, certificate and key.
#[derive(Debug, Clone)]
pub struct TlsPaths {
    /// The CA certificate both sides trust.
    pub ca: PathBuf,
    /// This party's certificate.
    pub cert: PathBuf,
    /// This party's private key.
    pub key: PathBuf,
}

/// A CA in a directory, with the server's certificate already issued.
pub struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    /// Makes the CA (`ca.pem`) and the server certificate (`server.pem`, `server-key.pem`) in
    /// `dir`.
    pub fn new(dir: &Path) -> anyhow::Result<Pki> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.distinguished_name
            .push(DnType::CommonName, "Outrider e2e test CA");
        let key = KeyPair::generate()?;
        let cert = p.self_signed(&key)?;
        write(&dir.join("ca.pem"), &cert.pem())?;
        let pki = Pki {
            dir: dir.to_path_buf(),
            issuer: Issuer::new(p, key),
        };
        let mut p = CertificateParams::new(vec!["localhost".to_string()])?;
        p.subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        pki.leaf(p, "server")?;
        Ok(pki)
    }

    fn leaf(&self, mut p: CertificateParams, name: &str) -> anyhow::Result<TlsPaths> {
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.issuer)?;
        let paths = TlsPaths {
            ca: self.dir.join("ca.pem"),
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}-key.pem")),
        };
        write(&paths.cert, &cert.pem())?;
        write(&paths.key, &key.serialize_pem())?;
        Ok(paths)
    }

    /// The server's files.
    pub fn server(&self) -> TlsPaths {
        TlsPaths {
            ca: self.dir.join("ca.pem"),
            cert: self.dir.join("server.pem"),
            key: self.dir.join("server-key.pem"),
        }
    }

    /// Issues a client certificate for `node` (`urn:outrider:node:<node>`) and returns its files.
    pub fn issue_node(&self, node: &str) -> anyhow::Result<TlsPaths> {
        outrider_ingest::identity::validate_node_name(node)?;
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, node);
        p.subject_alt_names = vec![SanType::URI(Ia5String::try_from(format!(
            "{NODE_URI_PREFIX}{node}"
        ))?)];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.leaf(p, node)
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
