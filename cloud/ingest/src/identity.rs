//! A node's identity from its verified client certificate.
//!
//! A node certificate carries exactly one URI subject alternative name [`NODE_URI_PREFIX`]`NODE`,
//! and a node name is 1 to [`MAX_NODE_NAME_LEN`] characters of `A-Z a-z 0-9 . _ -`. This is the
//! one definition: `outrider certs` (cli/src/certs.rs), which issues the certificates, uses it.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::parse_x509_certificate;

/// Prefix of the URI subject alternative name that names a node: `urn:outrider:node:gw-7`.
pub const NODE_URI_PREFIX: &str = "urn:outrider:node:";

/// Longest node name, in characters.
pub const MAX_NODE_NAME_LEN: usize = 128;

/// Why a certificate does not name a node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct IdentityError(String);

/// Checks a node name: 1 to [`MAX_NODE_NAME_LEN`] characters of `A-Z a-z 0-9 . _ -`.
pub fn validate_node_name(node: &str) -> Result<(), IdentityError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if node.is_empty() || node.len() > MAX_NODE_NAME_LEN || !node.chars().all(allowed) {
        return Err(IdentityError(format!(
            "invalid node name {node:?}: a node name is 1 to {MAX_NODE_NAME_LEN} characters \
             of A-Z a-z 0-9 . _ -"
        )));
    }
    Ok(())
}

/// The node name carried by a node certificate (DER): the one URI subject alternative name that
/// starts with [`NODE_URI_PREFIX`]. Fails if there is none, more than one, or the name is invalid.
///
/// This does not verify the certificate: call it only on a client certificate that the TLS layer
/// has already verified against the CA.
pub fn node_identity(cert_der: &[u8]) -> Result<String, IdentityError> {
    let (_, cert) = parse_x509_certificate(cert_der)
        .map_err(|e| IdentityError(format!("the certificate cannot be parsed: {e}")))?;
    let sans = cert.subject_alternative_name().map_err(|e| {
        IdentityError(format!(
            "the certificate's subject alternative names are malformed: {e}"
        ))
    })?;
    let mut nodes = sans
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => uri.strip_prefix(NODE_URI_PREFIX),
            _ => None,
        });
    let node = nodes.next().ok_or_else(|| {
        IdentityError(format!("the certificate has no {NODE_URI_PREFIX}NODE URI"))
    })?;
    if nodes.next().is_some() {
        return Err(IdentityError(format!(
            "the certificate has more than one {NODE_URI_PREFIX}NODE URI"
        )));
    }
    validate_node_name(node)?;
    Ok(node.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        assert!(validate_node_name("gw-1.site_a").is_ok());
        assert!(validate_node_name("").is_err());
        assert!(validate_node_name("a/b").is_err());
        assert!(validate_node_name(&"x".repeat(129)).is_err());
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(node_identity(b"not a certificate").is_err());
    }
}
