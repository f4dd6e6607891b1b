//! `outrider certs`: a private certificate authority for mTLS between agents and the cloud, for
//! on-prem installations and development.
//!
//! `init` makes the CA (`ca.pem`, `ca-key.pem`) and the cloud server's certificate (`server.pem`,
//! `server-key.pem`); `issue NODE` makes a node's client certificate (`NODE.pem`, `NODE-key.pem`).
//! Keys are ECDSA P-256 in PKCS#8 PEM, written with mode 0600; certificates are PEM.
//!
//! A node's identity is carried in its client certificate as the URI subject alternative name
//! [`NODE_URI_PREFIX`]`NODE` (and as its common name). The cloud takes the identity from the
//! verified certificate ([`node_identity`]), never from the payload.
//!
//! The building blocks ([`Ca`], [`init`], [`issue_node`], [`node_identity`],
//! [`validate_node_name`]) know nothing of the command line, so the cloud server can reuse them.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{parse_x509_certificate, X509Certificate};

use crate::args::CertsCommand;

#[cfg(test)]
use outrider_ingest::identity::MAX_NODE_NAME_LEN;
/// The node identity rules are the cloud's own (`outrider_ingest::identity`): the prefix of the
/// URI subject alternative name that names a node (`urn:outrider:node:gw-7`) and the longest name.
pub use outrider_ingest::identity::NODE_URI_PREFIX;

/// The CA certificate's file name in the CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA private key's file name in the CA directory.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// The server certificate's file name in the CA directory.
pub const SERVER_CERT_FILE: &str = "server.pem";
/// The server private key's file name in the CA directory.
pub const SERVER_KEY_FILE: &str = "server-key.pem";

/// Validity of a CA made by [`init`], in days.
pub const CA_DAYS: u32 = 3650;
/// Default validity of the server certificate, in days.
pub const DEFAULT_SERVER_DAYS: u32 = 825;
/// Default validity of a node certificate, in days.
pub const DEFAULT_NODE_DAYS: u32 = 825;

/// How far back certificates' validity starts, to tolerate clocks that run a little behind.
const BACKDATE: Duration = Duration::hours(1);

const OUTRIDER: &str = "Outrider";
const PRIVATE_FILE_MODE: u32 = 0o600;
const PUBLIC_FILE_MODE: u32 = 0o644;
const PRIVATE_DIR_MODE: u32 = 0o700;

/// Checks a node name: 1 to 128 characters of `A-Z a-z 0-9 . _ -`.
pub fn validate_node_name(node: &str) -> Result<()> {
    Ok(outrider_ingest::identity::validate_node_name(node)?)
}

/// The identity URI of a node: [`NODE_URI_PREFIX`] followed by the node name.
pub fn node_uri(node: &str) -> String {
    format!("{NODE_URI_PREFIX}{node}")
}

/// The node name carried by a verified node certificate (DER), read exactly as the cloud reads it.
pub fn node_identity(cert_der: &[u8]) -> Result<String> {
    Ok(outrider_ingest::identity::node_identity(cert_der)?)
}

/// A certificate and its private key, as made by [`Ca`].
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
    /// End of the certificate's validity.
    pub not_after: OffsetDateTime,
}

/// A certificate authority that signs the server's and the nodes' certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    common_name: String,
    not_after: OffsetDateTime,
}

impl Ca {
    /// Makes a new self-signed CA: ECDSA P-256, `CA:true` with path length 0, key usage
    /// keyCertSign and cRLSign, common name `Outrider CA <random suffix>`, valid for `days` days.
    pub fn generate(days: u32) -> Result<Ca> {
        let suffix: String = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let common_name = format!("Outrider CA {suffix}");
        let (mut params, not_after) = base_params(&common_name, days)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
            common_name,
            not_after,
        })
    }

    /// Loads a CA from its certificate and private key, both PEM. Checks that the certificate is
    /// a CA allowed to sign certificates, that it has not expired, and that the key is its key.
    /// Errors say which of the two inputs is at fault as "certificate" or "private key".
    #[cfg_attr(not(test), allow(dead_code))] // For the cloud server; the CLI loads files.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca> {
        let (cert_der, common_name, not_after) = parse_ca_cert(cert_pem)?;
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| anyhow!("private key: not a PEM private key rcgen can use: {e}"))?;
        Ca::from_parts(&cert_der, cert_pem, common_name, not_after, key)
    }

    /// Loads the CA in `dir` (`ca.pem` and `ca-key.pem`), as [`Ca::from_pem`] does; errors name
    /// the file at fault.
    pub fn load(dir: &Path) -> Result<Ca> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem = read_text(&cert_path)?;
        let (cert_der, common_name, not_after) =
            parse_ca_cert(&cert_pem).with_context(|| cert_path.display().to_string())?;
        let key_pem = read_text(&key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| {
            anyhow!(
                "{}: not a PEM private key rcgen can use: {e}",
                key_path.display()
            )
        })?;
        Ca::from_parts(&cert_der, &cert_pem, common_name, not_after, key)
            .with_context(|| format!("{} with {}", cert_path.display(), key_path.display()))
    }

    fn from_parts(
        cert_der: &[u8],
        cert_pem: &str,
        common_name: String,
        not_after: OffsetDateTime,
        key: KeyPair,
    ) -> Result<Ca> {
        let (_, cert) = parse_x509_certificate(cert_der)
            .map_err(|e| anyhow!("certificate: cannot be parsed: {e}"))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
            bail!("the private key does not belong to the CA certificate");
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der.into(), key)
            .map_err(|e| anyhow!("certificate: cannot be used as an issuer: {e}"))?;
        Ok(Ca {
            issuer,
            cert_pem: cert_pem.to_owned(),
            common_name,
            not_after,
        })
    }

    /// The CA certificate, PEM: what servers and clients trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PKCS#8 PEM. Keep it secret: it can issue certificates.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The CA's common name.
    pub fn common_name(&self) -> &str {
        &self.common_name
    }

    /// End of the CA's validity.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Issues a server certificate with the given DNS names and IP addresses as subject
    /// alternative names (at least one of either), extended key usage serverAuth, valid for
    /// `days` days (no longer than the CA).
    pub fn issue_server(&self, dns_names: &[String], ips: &[IpAddr], days: u32) -> Result<Issued> {
        if dns_names.is_empty() && ips.is_empty() {
            bail!("a server certificate needs at least one DNS name or IP address");
        }
        let mut sans = Vec::with_capacity(dns_names.len() + ips.len());
        for name in dns_names {
            validate_dns_name(name)?;
            sans.push(SanType::DnsName(ia5(name)?));
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let common_name = match (dns_names.first(), ips.first()) {
            (Some(name), _) => name.clone(),
            (None, Some(ip)) => ip.to_string(),
            (None, None) => "Outrider server".to_owned(),
        };
        self.issue_leaf(
            &common_name,
            sans,
            ExtendedKeyUsagePurpose::ServerAuth,
            days,
        )
    }

    /// Issues a node's client certificate: common name `node`, the URI subject alternative name
    /// [`NODE_URI_PREFIX`]`node`, extended key usage clientAuth, valid for `days` days (no longer
    /// than the CA).
    pub fn issue_node(&self, node: &str, days: u32) -> Result<Issued> {
        validate_node_name(node)?;
        let sans = vec![SanType::URI(ia5(&node_uri(node))?)];
        self.issue_leaf(node, sans, ExtendedKeyUsagePurpose::ClientAuth, days)
    }

    fn issue_leaf(
        &self,
        common_name: &str,
        sans: Vec<SanType>,
        usage: ExtendedKeyUsagePurpose,
        days: u32,
    ) -> Result<Issued> {
        let (mut params, mut not_after) = base_params(common_name, days)?;
        if not_after > self.not_after && not_after - self.not_after < Duration::days(1) {
            // As long as the CA, give or take the time since the CA was made.
            not_after = self.not_after;
            params.not_after = not_after;
        } else if not_after > self.not_after {
            let left = (self.not_after - OffsetDateTime::now_utc())
                .whole_days()
                .max(0);
            bail!(
                "a certificate valid for {days} days would outlive the CA {:?}, which expires on \
                 {}: ask for {left} days or fewer",
                self.common_name,
                self.not_after.date()
            );
        }
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
            not_after,
        })
    }
}

/// Parameters shared by every certificate: subject `O=Outrider, CN=common_name`, a random serial
/// number, valid from an hour ago for `days` days. Returns them with the end of validity.
fn base_params(common_name: &str, days: u32) -> Result<(CertificateParams, OffsetDateTime)> {
    if days == 0 {
        bail!("a certificate must be valid for at least one day");
    }
    let now = OffsetDateTime::now_utc();
    let not_after = now
        .checked_add(Duration::days(i64::from(days)))
        .ok_or_else(|| anyhow!("{days} days is too long a validity"))?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, OUTRIDER);
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.not_before = now - BACKDATE;
    params.not_after = not_after;
    params.serial_number = Some(random_serial());
    Ok((params, not_after))
}

/// A positive serial number with 122 random bits (RFC 5280 asks for at least 64).
fn random_serial() -> SerialNumber {
    let mut bytes = *uuid::Uuid::new_v4().as_bytes();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn ia5(s: &str) -> Result<Ia5String> {
    Ia5String::try_from(s).map_err(|e| anyhow!("{s:?}: {e}"))
}

/// Accepts host names (`localhost`, `cloud.example.com`) and a leading wildcard label.
fn validate_dns_name(name: &str) -> Result<()> {
    if name.parse::<IpAddr>().is_ok() {
        bail!("{name:?} is an IP address, not a DNS name: pass it with --ip");
    }
    let host = name.strip_prefix("*.").unwrap_or(name);
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if name.len() > 253 || !host.split('.').all(label_ok) {
        bail!("{name:?} is not a valid DNS name");
    }
    Ok(())
}

/// Reads and checks a CA certificate: returns its DER, common name and end of validity.
fn parse_ca_cert(pem: &str) -> Result<(Vec<u8>, String, OffsetDateTime)> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| anyhow!("not a PEM certificate: {e}"))?;
    if block.label != "CERTIFICATE" {
        bail!("not a PEM certificate: found {:?}", block.label);
    }
    let cert = block
        .parse_x509()
        .map_err(|e| anyhow!("not a valid X.509 certificate: {e}"))?;
    check_is_ca(&cert)?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    let not_after = OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp())
        .map_err(|e| anyhow!("the certificate's end of validity is out of range: {e}"))?;
    if not_after <= OffsetDateTime::now_utc() {
        bail!(
            "the CA certificate {common_name:?} expired on {}",
            not_after.date()
        );
    }
    Ok((block.contents.clone(), common_name, not_after))
}

fn check_is_ca(cert: &X509Certificate<'_>) -> Result<()> {
    let constraints = cert
        .basic_constraints()
        .map_err(|e| anyhow!("malformed basic constraints: {e}"))?;
    if !constraints.is_some_and(|c| c.value.ca) {
        bail!("not a CA certificate (no basic constraint CA:true)");
    }
    let usage = cert
        .key_usage()
        .map_err(|e| anyhow!("malformed key usage: {e}"))?;
    if usage.is_some_and(|u| !u.value.key_cert_sign()) {
        bail!("the CA certificate's key usage does not allow signing certificates");
    }
    Ok(())
}

/// What [`init`] makes.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// DNS names of the server certificate.
    pub server_names: Vec<String>,
    /// IP addresses of the server certificate.
    pub ips: Vec<IpAddr>,
    /// Validity of the server certificate in days (the CA's is [`CA_DAYS`]).
    pub days: u32,
    /// Replace existing files (and so make a new CA: certificates of the old one stop being
    /// trusted).
    pub force: bool,
}

impl Default for InitOptions {
    /// `localhost`, 127.0.0.1 and ::1, [`DEFAULT_SERVER_DAYS`], no overwriting.
    fn default() -> Self {
        InitOptions {
            server_names: vec!["localhost".to_owned()],
            ips: vec![
                IpAddr::from(std::net::Ipv4Addr::LOCALHOST),
                IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
            ],
            days: DEFAULT_SERVER_DAYS,
            force: false,
        }
    }
}

/// The files [`init`] wrote, and what is in them.
#[derive(Debug, Clone)]
pub struct CaPaths {
    /// The CA certificate (`DIR/ca.pem`).
    pub ca_cert: PathBuf,
    /// The CA private key (`DIR/ca-key.pem`).
    pub ca_key: PathBuf,
    /// The server certificate (`DIR/server.pem`).
    pub server_cert: PathBuf,
    /// The server private key (`DIR/server-key.pem`).
    pub server_key: PathBuf,
    /// The CA's common name.
    pub ca_name: String,
    /// End of the CA's validity.
    pub ca_not_after: OffsetDateTime,
    /// End of the server certificate's validity.
    pub server_not_after: OffsetDateTime,
}

/// Creates `dir` (mode 0700) if needed and writes a new CA and a server certificate signed by it:
/// `ca.pem`, `ca-key.pem`, `server.pem`, `server-key.pem` (keys mode 0600). Without
/// `opts.force`, fails before writing anything if any of these files exists.
pub fn init(dir: &Path, opts: &InitOptions) -> Result<CaPaths> {
    let ca_cert = dir.join(CA_CERT_FILE);
    let ca_key = dir.join(CA_KEY_FILE);
    let server_cert = dir.join(SERVER_CERT_FILE);
    let server_key = dir.join(SERVER_KEY_FILE);
    if !opts.force {
        refuse_existing(&[&ca_cert, &ca_key, &server_cert, &server_key])?;
    }
    if opts.days > CA_DAYS {
        bail!("the server certificate cannot outlive the CA: ask for {CA_DAYS} days or fewer");
    }
    // Everything is made before anything is written.
    let ca = Ca::generate(CA_DAYS)?;
    let server = ca.issue_server(&opts.server_names, &opts.ips, opts.days)?;
    create_private_dir(dir)?;
    write_file(&ca_key, &ca.key_pem(), PRIVATE_FILE_MODE, opts.force)?;
    write_file(&ca_cert, ca.cert_pem(), PUBLIC_FILE_MODE, opts.force)?;
    write_file(&server_key, &server.key_pem, PRIVATE_FILE_MODE, opts.force)?;
    write_file(&server_cert, &server.cert_pem, PUBLIC_FILE_MODE, opts.force)?;
    sync_dir(dir)?;
    Ok(CaPaths {
        ca_cert,
        ca_key,
        server_cert,
        server_key,
        ca_name: ca.common_name().to_owned(),
        ca_not_after: ca.not_after(),
        server_not_after: server.not_after,
    })
}

/// How [`issue_node`] issues.
#[derive(Debug, Clone)]
pub struct IssueOptions {
    /// Validity in days (no longer than the CA's).
    pub days: u32,
    /// Where to write the files (default: the CA directory).
    pub out_dir: Option<PathBuf>,
    /// Replace an existing certificate and key of the same node.
    pub force: bool,
}

impl Default for IssueOptions {
    /// [`DEFAULT_NODE_DAYS`], into the CA directory, no overwriting.
    fn default() -> Self {
        IssueOptions {
            days: DEFAULT_NODE_DAYS,
            out_dir: None,
            force: false,
        }
    }
}

/// The files [`issue_node`] wrote, and what is in them.
#[derive(Debug, Clone)]
pub struct NodePaths {
    /// The node certificate (`NODE.pem`).
    pub cert: PathBuf,
    /// The node private key (`NODE-key.pem`).
    pub key: PathBuf,
    /// The identity URI in the certificate ([`NODE_URI_PREFIX`]`NODE`).
    pub identity: String,
    /// End of the certificate's validity.
    pub not_after: OffsetDateTime,
}

/// Issues `node` a client certificate signed by the CA in `dir` and writes `NODE.pem` and
/// `NODE-key.pem` (mode 0600) into `opts.out_dir` (default `dir`; created with mode 0700 if
/// needed). Without `opts.force`, fails if either file exists.
pub fn issue_node(dir: &Path, node: &str, opts: &IssueOptions) -> Result<NodePaths> {
    validate_node_name(node)?;
    let out_dir = opts.out_dir.as_deref().unwrap_or(dir);
    let cert_name = format!("{node}.pem");
    let key_name = format!("{node}-key.pem");
    if same_dir(out_dir, dir) {
        let reserved = [CA_CERT_FILE, CA_KEY_FILE, SERVER_CERT_FILE, SERVER_KEY_FILE];
        if let Some(clash) = [&cert_name, &key_name]
            .into_iter()
            .find(|n| reserved.contains(&n.as_str()))
        {
            bail!(
                "node {node:?} would overwrite {}: choose another node name or an output directory",
                dir.join(clash).display()
            );
        }
    }
    let cert = out_dir.join(cert_name);
    let key = out_dir.join(key_name);
    if !opts.force {
        refuse_existing(&[&cert, &key])?;
    }
    let ca = Ca::load(dir)?;
    let issued = ca.issue_node(node, opts.days)?;
    // Read the identity back as the cloud will, so a certificate it would refuse is never written.
    let identity = node_identity(&issued.cert_der)?;
    if identity != node {
        bail!("the issued certificate names node {identity:?} instead of {node:?}");
    }
    create_private_dir(out_dir)?;
    write_file(&key, &issued.key_pem, PRIVATE_FILE_MODE, opts.force)?;
    write_file(&cert, &issued.cert_pem, PUBLIC_FILE_MODE, opts.force)?;
    sync_dir(out_dir)?;
    Ok(NodePaths {
        cert,
        key,
        identity: node_uri(&identity),
        not_after: issued.not_after,
    })
}

/// Runs `outrider certs ...` and prints what it wrote.
pub fn run(command: &CertsCommand) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match command {
        CertsCommand::Init(args) => {
            let opts = InitOptions {
                server_names: args.server_names.clone(),
                ips: args.ips.clone(),
                days: args.days,
                force: args.force,
            };
            let paths = init(&args.dir, &opts)?;
            let mut sans: Vec<String> = opts.server_names.clone();
            sans.extend(opts.ips.iter().map(IpAddr::to_string));
            writeln!(
                out,
                "CA {:?}, valid until {}:\n  {}\n  {} (private key: keep it secret, it can issue \
                 certificates)\nserver certificate for {}, valid until {}:\n  {}\n  {} (private key)",
                paths.ca_name,
                paths.ca_not_after.date(),
                paths.ca_cert.display(),
                paths.ca_key.display(),
                sans.join(", "),
                paths.server_not_after.date(),
                paths.server_cert.display(),
                paths.server_key.display(),
            )?;
        }
        CertsCommand::Issue(args) => {
            let opts = IssueOptions {
                days: args.days,
                out_dir: args.out_dir.clone(),
                force: args.force,
            };
            let paths = issue_node(&args.dir, &args.node, &opts)?;
            writeln!(
                out,
                "node certificate for {} ({}), valid until {}:\n  {}\n  {} (private key)",
                args.node,
                paths.identity,
                paths.not_after.date(),
                paths.cert.display(),
                paths.key.display(),
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| match fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            format!(
                "{} not found (run `outrider certs init` first?)",
                path.display()
            )
        }
        _ => format!("reading {}", path.display()),
    })
}

fn refuse_existing(paths: &[&PathBuf]) -> Result<()> {
    for path in paths {
        match fs::symlink_metadata(path) {
            Ok(_) => bail!(
                "{} already exists: not overwriting it without --force",
                path.display()
            ),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("checking {}", path.display())),
        }
    }
    Ok(())
}

fn same_dir(a: &Path, b: &Path) -> bool {
    a == b || matches!((fs::canonicalize(a), fs::canonicalize(b)), (Ok(a), Ok(b)) if a == b)
}

fn create_private_dir(dir: &Path) -> Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, PRIVATE_DIR_MODE);
    builder
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// Writes `contents` to `path`, created with `mode`. Without `overwrite`, fails if `path` exists;
/// with it, replaces `path` atomically.
fn write_file(path: &Path, contents: &str, mode: u32, overwrite: bool) -> Result<()> {
    let target = if overwrite {
        let name = path
            .file_name()
            .ok_or_else(|| anyhow!("{} is not a file name", path.display()))?;
        let mut tmp = name.to_os_string();
        tmp.push(format!(".{}.tmp", std::process::id()));
        path.with_file_name(tmp)
    } else {
        path.to_path_buf()
    };
    if overwrite {
        // A leftover of an interrupted run.
        let _ = fs::remove_file(&target);
    }
    if let Err(e) = create_and_write(&target, contents, mode) {
        if overwrite || e.kind() != ErrorKind::AlreadyExists {
            let _ = fs::remove_file(&target);
        }
        return Err(match e.kind() {
            ErrorKind::AlreadyExists => anyhow!(
                "{} already exists: not overwriting it without --force",
                target.display()
            ),
            _ => anyhow::Error::new(e).context(format!("writing {}", target.display())),
        });
    }
    if overwrite {
        if let Err(e) = fs::rename(&target, path) {
            let _ = fs::remove_file(&target);
            return Err(e).with_context(|| format!("replacing {}", path.display()));
        }
    }
    Ok(())
}

/// Creates `path` (which must not exist) with `mode` and writes `contents` to it durably.
fn create_and_write(path: &Path, contents: &str, mode: u32) -> std::io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

/// Makes the new directory entries durable.
fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        for ok in [
            "a",
            "gw-7",
            "Plant_3.line-2",
            &"x".repeat(MAX_NODE_NAME_LEN),
        ] {
            assert!(validate_node_name(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "",
            "a/b",
            "a b",
            "é",
            "node:1",
            &"x".repeat(MAX_NODE_NAME_LEN + 1),
        ] {
            assert!(validate_node_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dns_names() {
        for ok in ["localhost", "cloud.example.com", "*.example.com", "a-b.c_d"] {
            assert!(validate_dns_name(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", "127.0.0.1", "::1", "a..b", "-a.b", "a b", "*", "a.*.b"] {
            assert!(validate_dns_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn in_memory_ca_round_trip() {
        let ca = Ca::generate(30).unwrap();
        let node = ca.issue_node("gw-7", 10).unwrap();
        assert_eq!(node_identity(&node.cert_der).unwrap(), "gw-7");
        // A server certificate carries no node identity.
        let server = ca.issue_server(&["localhost".into()], &[], 10).unwrap();
        assert!(node_identity(&server.cert_der).is_err());
        // A reloaded CA signs as well, and refuses to outlive itself.
        let reloaded = Ca::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(reloaded.common_name(), ca.common_name());
        assert!(reloaded.issue_node("gw-8", 10).is_ok());
        let err = reloaded.issue_node("gw-8", 31).err().unwrap().to_string();
        assert!(err.contains("outlive the CA"), "{err}");
        // A leaf certificate is not a CA, and a foreign key is refused.
        assert!(Ca::from_pem(&node.cert_pem, &node.key_pem).is_err());
        let other = Ca::generate(30).unwrap();
        let err = Ca::from_pem(ca.cert_pem(), &other.key_pem()).err().unwrap();
        assert!(err.to_string().contains("does not belong"), "{err}");
    }
}
