//! Chains and revocation lists: a CA with a chosen path length, sub-CAs under any CA (the dev
//! CA of `mqedge certs` included), client certificates under any of them, and a CRL revoking
//! some of them (in memory, for tests), and [`revoke`], which `mqedge certs --revoke` runs on a
//! directory. PEM, ECDSA P-256 like the rest of this module.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use super::CertError;
use crate::tls::chain::ClientChainVerifier;

/// A certificate with its key, able to issue more when it is a CA.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl Issued {
    /// The signer this certificate is, for rcgen.
    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, CertError> {
        let key = KeyPair::from_pem(&self.key_pem)?;
        Ok(Issuer::from_ca_cert_pem(&self.cert_pem, key)?)
    }
}

/// Validity starting yesterday, for `days`.
fn validity(params: &mut CertificateParams, days: i64) {
    params.not_before = OffsetDateTime::now_utc() - Duration::days(1);
    params.not_after = params.not_before + Duration::days(days);
}

/// CA parameters: `cn`, `path_len` (`None` = unconstrained), `keyCertSign` and `cRLSign`.
fn ca_params(cn: &str, path_len: Option<u8>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, 365);
    params
}

/// A self-signed CA.
pub fn root_ca(cn: &str, path_len: Option<u8>) -> Result<Issued, CertError> {
    let key = KeyPair::generate()?;
    let cert = ca_params(cn, path_len).self_signed(&key)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A CA certificate signed by `issuer`.
pub fn sub_ca(issuer: &Issued, cn: &str, path_len: Option<u8>) -> Result<Issued, CertError> {
    let key = KeyPair::generate()?;
    let cert = ca_params(cn, path_len).signed_by(&key, &issuer.issuer()?)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A client certificate (`clientAuth`) with this CN, signed by `issuer`.
pub fn client(issuer: &Issued, cn: &str) -> Result<Issued, CertError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, 30);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer.issuer()?)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The serial number of a PEM certificate.
fn serial_of(pem: &str) -> Result<Vec<u8>, CertError> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|_| rcgen::Error::CouldNotParseCertificate)?;
    let cert = p
        .parse_x509()
        .map_err(|_| rcgen::Error::CouldNotParseCertificate)?;
    Ok(cert.raw_serial().to_vec())
}

/// A CRL (PEM) by `issuer` revoking the certificates in `revoked` (PEM; each must be one
/// `issuer` signed), valid for a week, with CRL number `number`.
pub fn crl(issuer: &Issued, revoked: &[&str], number: u64) -> Result<String, CertError> {
    let serials = revoked
        .iter()
        .map(|p| serial_of(p))
        .collect::<Result<Vec<_>, _>>()?;
    crl_of_serials(issuer, &serials, number)
}

/// A CRL (PEM) by `issuer` listing these serial numbers.
fn crl_of_serials(issuer: &Issued, serials: &[Vec<u8>], number: u64) -> Result<String, CertError> {
    let now = OffsetDateTime::now_utc();
    let revoked_certs = serials
        .iter()
        .map(|s| RevokedCertParams {
            serial_number: SerialNumber::from_slice(s),
            revocation_time: now - Duration::minutes(1),
            reason_code: Some(rcgen::RevocationReason::KeyCompromise),
            invalidity_date: None,
        })
        .collect();
    let params = CertificateRevocationListParams {
        this_update: now - Duration::minutes(1),
        next_update: now + Duration::days(CRL_VALID_DAYS),
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    Ok(params.signed_by(&issuer.issuer()?)?.pem()?)
}

/// How long a CRL from [`revoke`] says it is current (`nextUpdate`); the LB keeps using it
/// after that, but other verifiers (openssl) refuse an expired CRL.
const CRL_VALID_DAYS: i64 = 30;

/// `mqedge certs --out DIR --revoke NAME`: adds the certificates `DIR/NAME.pem` to
/// `DIR/crl.pem`, signed by the CA in `DIR` (`ca.pem`, `ca.key`), keeping what an existing
/// `crl.pem` revokes and raising its CRL number. Returns the file written. Refuses a
/// certificate the directory's CA did not sign (revoking it there would do nothing).
pub fn revoke(out_dir: &Path, names: &[String]) -> Result<PathBuf, CertError> {
    let read = |p: PathBuf| {
        std::fs::read_to_string(&p).map_err(|source| CertError::Io { path: p, source })
    };
    let ca = Issued {
        cert_pem: read(out_dir.join("ca.pem"))?,
        key_pem: read(out_dir.join("ca.key"))?,
    };
    let verifier = ca_verifier(&ca.cert_pem)?;
    let path = out_dir.join("crl.pem");
    let (mut serials, number) = match std::fs::read(&path) {
        Ok(bytes) => listed(&bytes)?,
        Err(_) => (Vec::new(), 0),
    };
    for name in names {
        let pem = read(out_dir.join(format!("{name}.pem")))?;
        if !signed_by_ca(&verifier, &pem) {
            return Err(CertError::NotOurs(name.clone()));
        }
        let serial = serial_of(&pem)?;
        if !serials.contains(&serial) {
            serials.push(serial);
        }
    }
    let text = crl_of_serials(&ca, &serials, number + 1)?;
    std::fs::write(&path, text).map_err(|source| CertError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// The serials an existing CRL (PEM) lists, and its CRL number.
fn listed(pem: &[u8]) -> Result<(Vec<Vec<u8>>, u64), CertError> {
    let bad = || rcgen::Error::X509("crl.pem is not a PEM certificate revocation list".into());
    let (_, p) = x509_parser::pem::parse_x509_pem(pem).map_err(|_| bad())?;
    let (_, crl) = x509_parser::parse_x509_crl(&p.contents).map_err(|_| bad())?;
    let serials = crl
        .iter_revoked_certificates()
        .map(|r| r.raw_serial().to_vec())
        .collect();
    let number = crl
        .crl_number()
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0);
    Ok((serials, number))
}

/// The client-certificate verifier of the LB, trusting only `ca_pem`.
fn ca_verifier(ca_pem: &str) -> Result<ClientChainVerifier, CertError> {
    let bad = |e: crate::tls::TlsError| rcgen::Error::X509(format!("ca.pem: {e}"));
    let ca = crate::tls::certs_from_pem(ca_pem).map_err(bad)?;
    let algs = crate::tls::provider().signature_verification_algorithms;
    Ok(ClientChainVerifier::new(ca, &[], true, algs).map_err(bad)?)
}

/// Whether the client or node certificate `pem` verifies against the directory's CA now.
fn signed_by_ca(v: &ClientChainVerifier, pem: &str) -> bool {
    use rustls::server::danger::ClientCertVerifier;
    let Ok(certs) = crate::tls::certs_from_pem(pem) else {
        return false;
    };
    certs.first().is_some_and(|leaf| {
        v.verify_client_cert(leaf, &[], rustls_pki_types::UnixTime::now())
            .is_ok()
    })
}
