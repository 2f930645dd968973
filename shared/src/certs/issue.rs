//! Chains and revocation lists for tests of certificate checking: a CA with a chosen path
//! length, sub-CAs under any CA (the dev CA of `mqedge certs` included), client certificates
//! under any of them, and a CRL revoking some of them. In memory, PEM, ECDSA P-256 like the
//! rest of this module.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use super::CertError;

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

/// A CRL (PEM) by `issuer` revoking the certificates in `revoked` (PEM; each must be one
/// `issuer` signed), valid for a week, with CRL number `number`.
pub fn crl(issuer: &Issued, revoked: &[&str], number: u64) -> Result<String, CertError> {
    let now = OffsetDateTime::now_utc();
    let mut revoked_certs = Vec::with_capacity(revoked.len());
    for pem in revoked {
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .map_err(|_| rcgen::Error::CouldNotParseCertificate)?;
        let cert = p
            .parse_x509()
            .map_err(|_| rcgen::Error::CouldNotParseCertificate)?;
        revoked_certs.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(cert.raw_serial()),
            revocation_time: now - Duration::minutes(1),
            reason_code: Some(rcgen::RevocationReason::KeyCompromise),
            invalidity_date: None,
        });
    }
    let params = CertificateRevocationListParams {
        this_update: now - Duration::minutes(1),
        next_update: now + Duration::days(7),
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    Ok(params.signed_by(&issuer.issuer()?)?.pem()?)
}
