//! TLS material and facts: PEM loading, rustls server/client configs with the three client-auth
//! modes, and the facts a broker needs about a client certificate (CN, SANs, SHA-256), named the
//! way OpenSSL/HAProxy name them so PROXY v2 TLVs match what HAProxy sends. Client chains go
//! through [`chain::ClientChainVerifier`] (webpki plus the basic constraints it skips, and CRLs).

pub mod chain;
pub mod dn;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::proxy::{San, SanKind};

/// Errors loading TLS material; each names the file so the operator knows which one to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// rustls refused the combination (key does not match cert, no usable CA, ...).
    #[error("TLS setup: {0}")]
    Rustls(String),
}

/// Whether a listener asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// Never asks for one.
    #[default]
    None,
    /// Asks; a client without one is accepted, one with a bad one is refused.
    Optional,
    /// A client without a valid certificate fails the handshake.
    Required,
}

/// The crypto provider every mqedge TLS config uses (aws-lc-rs: fastest ECDSA/handshakes).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The provider a TLS *server* uses: the default suites, with AES-128-GCM-SHA256 first. A
/// profile of a handshake storm (`perf record` on `mqedge lb` under `mqedge bench conn`) showed
/// 8 % of the LB's CPU in SHA-512 (the SHA-384 transcript of the AES-256 suite, which aws-lc
/// runs without hardware help here), where SHA-256 uses the CPU's SHA extensions; both suites
/// are TLS 1.3 standard and 128-bit AES-GCM is the usual first choice of servers.
pub fn server_provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites.sort_by_key(|s| match s.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => 2,
        _ => 3,
    });
    Arc::new(p)
}

/// Reads every certificate in a PEM file (a chain: leaf first).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |what: String| TlsError::Pem {
        path: path.to_path_buf(),
        what,
    };
    let iter = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(format!("cannot read certificates: {e}")))?;
    let certs: Vec<_> = iter
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(err("no CERTIFICATE block found".into()));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        what: format!("cannot read private key: {e}"),
    })
}

/// Certificates parsed from PEM text (tests and in-memory PKI).
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Rustls(format!("bad certificate PEM: {e}")))
}

/// A private key parsed from PEM text.
pub fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| TlsError::Rustls(format!("bad key PEM: {e}")))
}

/// Reads the certificate revocation lists in a file: one or more PEM `X509 CRL` blocks, or one
/// DER CRL. Each is parsed (issuer, serials, signature fields) so a bad file is refused at load,
/// not at the first handshake.
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let err = |what: String| TlsError::Pem {
        path: path.to_path_buf(),
        what,
    };
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read CRL: {e}")))?;
    let crls: Vec<CertificateRevocationListDer<'static>> =
        if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
            CertificateRevocationListDer::pem_slice_iter(&bytes)
                .collect::<Result<_, _>>()
                .map_err(|e| err(format!("bad CRL PEM: {e}")))?
        } else {
            vec![CertificateRevocationListDer::from(bytes)]
        };
    if crls.is_empty() {
        return Err(err("no X509 CRL block found".into()));
    }
    for c in &crls {
        webpki::OwnedCertRevocationList::from_der(c.as_ref())
            .map_err(|e| err(format!("not a certificate revocation list: {e}")))?;
    }
    Ok(crls)
}

/// Builds a root store from CA certificates.
pub fn root_store(cas: Vec<CertificateDer<'static>>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in cas {
        roots
            .add(c)
            .map_err(|e| TlsError::Rustls(format!("bad CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// A server config: TLS 1.2 and 1.3, the given client-auth mode against `client_ca`, ALPN list.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca: Option<Vec<CertificateDer<'static>>>,
    client_auth: ClientAuth,
    alpn: &[String],
) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with_crls(chain, key, client_ca, client_auth, &[], alpn)
}

/// [`server_config`] with certificate revocation lists: a client certificate (or an
/// intermediate) one of them revokes fails the handshake.
pub fn server_config_with_crls(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca: Option<Vec<CertificateDer<'static>>>,
    client_auth: ClientAuth,
    crls: &[CertificateRevocationListDer<'static>],
    alpn: &[String],
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = server_provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match (client_auth, client_ca) {
        (ClientAuth::None, _) => builder.with_no_client_auth(),
        (mode, Some(ca)) => {
            let v = chain::ClientChainVerifier::new(
                ca,
                crls,
                mode == ClientAuth::Required,
                provider.signature_verification_algorithms,
            )?;
            builder.with_client_cert_verifier(Arc::new(v))
        }
        (_, None) => {
            return Err(TlsError::Rustls(
                "client_auth optional/required needs client_ca".into(),
            ))
        }
    };
    let mut cfg = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Rustls(format!("certificate/key: {e}")))?;
    cfg.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    // our suite order, not the client's (see `server_provider`)
    cfg.ignore_client_order = true;
    Ok(Arc::new(cfg))
}

/// A client config trusting `ca`, optionally presenting a client certificate (tests, bench).
pub fn client_config(
    ca: Vec<CertificateDer<'static>>,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let b = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_root_certificates(root_store(ca)?);
    let cfg = match client {
        Some((chain, key)) => b
            .with_client_auth_cert(chain, key)
            .map_err(|e| TlsError::Rustls(e.to_string()))?,
        None => b.with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

/// What a broker or log line needs to know about a client certificate, read in one parse per
/// handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// Subject common name (the first one), if any.
    pub cn: Option<String>,
    /// The whole subject, RFC 4514 ([`dn::rfc4514`]); empty for an empty subject.
    pub dn: String,
    /// DNS, IP, e-mail and URI SANs, in certificate order.
    pub sans: Vec<San>,
    /// SHA-256 of the DER, for pinning.
    pub sha256: [u8; 32],
}

impl CertFacts {
    /// Parses a DER certificate; `None` if it does not parse (rustls verified it already, so
    /// that would be a certificate x509-parser cannot read, not an attack).
    pub fn from_der(der: &[u8]) -> Option<CertFacts> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_string);
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for n in &ext.value.general_names {
                let ip = |b: &[u8]| match b.len() {
                    4 => <[u8; 4]>::try_from(b).ok().map(std::net::IpAddr::from),
                    16 => <[u8; 16]>::try_from(b).ok().map(std::net::IpAddr::from),
                    _ => None,
                };
                match n {
                    GeneralName::DNSName(s) => sans.push(San::new(SanKind::Dns, *s)),
                    GeneralName::URI(s) => sans.push(San::new(SanKind::Uri, *s)),
                    GeneralName::RFC822Name(s) => sans.push(San::new(SanKind::Email, *s)),
                    GeneralName::IPAddress(b) => {
                        if let Some(a) = ip(b) {
                            sans.push(San::new(SanKind::Ip, a.to_string()));
                        }
                    }
                    _ => {}
                }
            }
        }
        Some(CertFacts {
            cn,
            dn: dn::rfc4514(cert.subject()),
            sans,
            sha256: Sha256::digest(der).into(),
        })
    }

    /// The SANs' values, whatever their kind (the node channel's name check).
    pub fn san_values(&self) -> Vec<String> {
        self.sans.iter().map(|s| s.value.clone()).collect()
    }
}

/// The protocol version as OpenSSL (and so HAProxy's SSL_VERSION sub-TLV) names it.
pub fn version_name(v: rustls::ProtocolVersion) -> &'static str {
    match v {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
        rustls::ProtocolVersion::TLSv1_1 => "TLSv1.1",
        rustls::ProtocolVersion::TLSv1_0 => "TLSv1",
        _ => "unknown",
    }
}

/// The cipher suite as OpenSSL names it (HAProxy's SSL_CIPHER sub-TLV).
pub fn cipher_name(s: rustls::CipherSuite) -> &'static str {
    use rustls::CipherSuite as C;
    match s {
        C::TLS13_AES_128_GCM_SHA256 => "TLS_AES_128_GCM_SHA256",
        C::TLS13_AES_256_GCM_SHA384 => "TLS_AES_256_GCM_SHA384",
        C::TLS13_CHACHA20_POLY1305_SHA256 => "TLS_CHACHA20_POLY1305_SHA256",
        C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => "ECDHE-ECDSA-AES128-GCM-SHA256",
        C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => "ECDHE-ECDSA-AES256-GCM-SHA384",
        C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-ECDSA-CHACHA20-POLY1305",
        C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => "ECDHE-RSA-AES128-GCM-SHA256",
        C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => "ECDHE-RSA-AES256-GCM-SHA384",
        C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-RSA-CHACHA20-POLY1305",
        _ => "UNKNOWN",
    }
}
