//! The client-certificate verifier every mqedge TLS server uses (LB listeners with mTLS, the
//! node channel's acceptor): webpki's chain building and signature checks, with the CRLs of
//! `[listener.tls] crl`, plus the basic constraints webpki leaves out. webpki checks the CA flag
//! and `pathLenConstraint` of the intermediates a client sends, but a trust anchor is only a
//! name and a key to it: the constraints of a `client_ca` certificate (a root, or an
//! intermediate the operator put in the file) are dropped, and `keyUsage` is not read at all.
//! So a CA limited to signing leaves (`pathlen:0`, what `mqedge certs` makes) could have a
//! sub-CA whose certificates were accepted; openssl refuses that chain. Here every path webpki
//! finds goes through [`check_path`] (webpki's path callback, so a refused path lets it try
//! another): every issuer, anchor included, must be a CA (`basicConstraints cA`, or a v1 root
//! as openssl allows), must not have a `keyUsage` without `keyCertSign`, and must have no more
//! CAs below it than its `pathLenConstraint`.

use std::cell::Cell;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, RootCertStore,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use webpki::{
    CertRevocationList, EndEntityCert, ExpirationPolicy, KeyUsage, OwnedCertRevocationList,
    RevocationCheckDepth, RevocationOptionsBuilder, UnknownStatusPolicy, VerifiedPath,
};

use super::TlsError;

/// Why a chain webpki accepted is refused anyway (the handshake error names it; the LB counts
/// it as `tls_bad_chain`).
#[derive(Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// An issuer in the path is not a CA.
    #[error("certificate chain: an issuer is not a CA (basicConstraints)")]
    NotCa,
    /// An issuer's `keyUsage` leaves out `keyCertSign`.
    #[error(
        "certificate chain: an issuer may not sign certificates (keyUsage without keyCertSign)"
    )]
    NoCertSign,
    /// More CAs below an issuer than its `pathLenConstraint` allows.
    #[error("certificate chain: longer than an issuer's path length limit (pathLenConstraint)")]
    PathLen,
}

/// rustls shows a [`CertificateError::Other`] with `{:?}`: this puts the sentence in the log
/// line of a refused handshake, not the variant name.
impl std::fmt::Debug for ChainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// What an issuer may do, read once from its certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IssuerLimits {
    /// `basicConstraints cA` (or a v1 certificate, which openssl takes as a CA when trusted).
    ca: bool,
    /// `pathLenConstraint`: how many CAs may follow it down the chain.
    path_len: Option<u32>,
    /// No `keyUsage`, or one with `keyCertSign`.
    cert_sign: bool,
}

impl IssuerLimits {
    /// The limits of a DER certificate; an unreadable one may sign nothing.
    fn of(der: &[u8]) -> IssuerLimits {
        let none = IssuerLimits {
            ca: false,
            path_len: Some(0),
            cert_sign: false,
        };
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return none;
        };
        let cert_sign = match cert.key_usage() {
            Ok(Some(ku)) => ku.value.key_cert_sign(),
            Ok(None) => true,
            Err(_) => return none,
        };
        match cert.basic_constraints() {
            Ok(Some(bc)) => IssuerLimits {
                ca: bc.value.ca,
                path_len: bc.value.path_len_constraint,
                cert_sign,
            },
            Ok(None) => IssuerLimits {
                ca: cert.version() == x509_parser::x509::X509Version::V1,
                path_len: None,
                cert_sign,
            },
            Err(_) => none,
        }
    }

    /// Whether this issuer may sign a path with `cas_below` CA certificates under it.
    fn check(&self, cas_below: usize) -> Result<(), ChainError> {
        if !self.ca {
            return Err(ChainError::NotCa);
        }
        if !self.cert_sign {
            return Err(ChainError::NoCertSign);
        }
        match self.path_len {
            Some(n) if cas_below > n as usize => Err(ChainError::PathLen),
            _ => Ok(()),
        }
    }
}

/// The checks webpki leaves out, over one path: the intermediates (leaf's issuer first), then
/// the anchor with every intermediate below it.
fn check_path(intermediates: &[IssuerLimits], anchor: IssuerLimits) -> Result<(), ChainError> {
    for (below, limits) in intermediates.iter().enumerate() {
        limits.check(below)?;
    }
    anchor.check(intermediates.len())
}

/// Verifies client certificates against `client_ca` and the CRLs (see the module doc).
#[derive(Debug)]
pub struct ClientChainVerifier {
    /// The trust anchors webpki builds paths to.
    anchors: Vec<TrustAnchor<'static>>,
    /// Each anchor's own limits, same order as `anchors` (webpki drops them).
    anchor_limits: Vec<IssuerLimits>,
    /// Sent in the CertificateRequest so clients pick a certificate we can verify.
    hints: Vec<DistinguishedName>,
    /// The parsed CRLs; empty = no revocation check.
    crls: Vec<CertRevocationList<'static>>,
    /// Whether a client without a certificate is refused.
    mandatory: bool,
    /// Signature algorithms of the crypto provider.
    algs: WebPkiSupportedAlgorithms,
}

impl ClientChainVerifier {
    /// A verifier trusting `ca`, checking revocation against `crls` (DER), with `mandatory`
    /// client certificates or optional ones.
    pub fn new(
        ca: Vec<CertificateDer<'static>>,
        crls: &[rustls_pki_types::CertificateRevocationListDer<'_>],
        mandatory: bool,
        algs: WebPkiSupportedAlgorithms,
    ) -> Result<Self, TlsError> {
        let mut anchors = Vec::with_capacity(ca.len());
        let mut anchor_limits = Vec::with_capacity(ca.len());
        for c in &ca {
            let a = webpki::anchor_from_trusted_cert(c)
                .map_err(|e| TlsError::Rustls(format!("bad CA certificate: {e}")))?;
            anchors.push(a.to_owned());
            anchor_limits.push(IssuerLimits::of(c));
        }
        if anchors.is_empty() {
            return Err(TlsError::Rustls("client_ca holds no certificate".into()));
        }
        let hints = RootCertStore {
            roots: anchors.clone(),
        }
        .subjects();
        let crls = crls
            .iter()
            .map(|c| {
                OwnedCertRevocationList::from_der(c.as_ref())
                    .map(CertRevocationList::from)
                    .map_err(|e| TlsError::Rustls(format!("bad CRL: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(ClientChainVerifier {
            anchors,
            anchor_limits,
            hints,
            crls,
            mandatory,
            algs,
        })
    }

    /// [`check_path`] over a path webpki found; the refusal is kept in `why` for the error.
    fn verify_path(&self, path: &VerifiedPath<'_>, why: &Cell<Option<ChainError>>) -> bool {
        let Some(i) = self
            .anchors
            .iter()
            .position(|a| std::ptr::eq(a, path.anchor()) || a == path.anchor())
        else {
            why.set(Some(ChainError::NotCa));
            return false;
        };
        let below: Vec<IssuerLimits> = path
            .intermediate_certificates()
            .map(|c| IssuerLimits::of(c.der().as_ref()))
            .collect();
        match check_path(&below, self.anchor_limits[i]) {
            Ok(()) => true,
            Err(e) => {
                why.set(Some(e));
                false
            }
        }
    }
}

impl ClientCertVerifier for ClientChainVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let cert = EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        let crl_refs: Vec<&CertRevocationList<'_>> = self.crls.iter().collect();
        let revocation = RevocationOptionsBuilder::new(&crl_refs).ok().map(|b| {
            b.with_depth(RevocationCheckDepth::Chain)
                .with_status_policy(UnknownStatusPolicy::Allow)
                .with_expiration_policy(ExpirationPolicy::Ignore)
                .build()
        });
        let why = Cell::new(None);
        let check = |p: &VerifiedPath<'_>| {
            if self.verify_path(p, &why) {
                Ok(())
            } else {
                Err(webpki::Error::PathLenConstraintViolated)
            }
        };
        let res = cert.verify_for_usage(
            self.algs.all,
            &self.anchors,
            intermediates,
            now,
            KeyUsage::client_auth(),
            revocation,
            Some(&check),
        );
        match (res, why.get()) {
            (Ok(_), _) => Ok(ClientCertVerified::assertion()),
            (Err(webpki::Error::PathLenConstraintViolated), Some(e)) => Err(
                Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e)))),
            ),
            (Err(e), _) => Err(pki_error(e)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// A webpki error as the rustls error (and so the TLS alert) rustls' own verifier gives.
fn pki_error(e: webpki::Error) -> Error {
    use webpki::Error as W;
    let c = match e {
        W::BadDer | W::BadDerTime | W::TrailingData(_) => CertificateError::BadEncoding,
        W::CertNotValidYet { .. } => CertificateError::NotValidYet,
        W::CertExpired { .. } | W::InvalidCertValidity => CertificateError::Expired,
        W::UnknownIssuer => CertificateError::UnknownIssuer,
        W::CertRevoked => CertificateError::Revoked,
        W::UnknownRevocationStatus => CertificateError::UnknownRevocationStatus,
        W::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        W::RequiredEkuNotFoundContext(_) => CertificateError::InvalidPurpose,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    Error::InvalidCertificate(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: IssuerLimits = IssuerLimits {
        ca: true,
        path_len: None,
        cert_sign: true,
    };

    #[test]
    fn path_len_counts_the_cas_below_each_issuer() {
        let leaf_only = IssuerLimits {
            path_len: Some(0),
            ..CA
        };
        // anchor pathlen 0 signing the leaf directly: fine; through one sub-CA: refused
        assert_eq!(check_path(&[], leaf_only), Ok(()));
        assert_eq!(check_path(&[CA], leaf_only), Err(ChainError::PathLen));
        // an intermediate with pathlen 0 under an unconstrained anchor, issuing another CA
        assert_eq!(check_path(&[CA, leaf_only], CA), Err(ChainError::PathLen));
        assert_eq!(check_path(&[leaf_only, CA], CA), Ok(()));
        let one = IssuerLimits {
            path_len: Some(1),
            ..CA
        };
        assert_eq!(check_path(&[CA], one), Ok(()));
        assert_eq!(check_path(&[CA, CA], one), Err(ChainError::PathLen));
    }

    #[test]
    fn every_issuer_must_be_a_ca_that_may_sign_certificates() {
        let not_ca = IssuerLimits { ca: false, ..CA };
        let no_sign = IssuerLimits {
            cert_sign: false,
            ..CA
        };
        assert_eq!(check_path(&[], not_ca), Err(ChainError::NotCa));
        assert_eq!(check_path(&[no_sign], CA), Err(ChainError::NoCertSign));
        assert_eq!(check_path(&[], no_sign), Err(ChainError::NoCertSign));
        assert_eq!(
            IssuerLimits::of(b"not a certificate").check(0),
            Err(ChainError::NotCa)
        );
    }
}
