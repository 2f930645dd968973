//! TLS facts of a terminated client connection: SNI, ALPN, version, cipher and the client
//! certificate (CN, SANs, SHA-256), for logs and the PROXY v2 TLVs. The handshake is
//! `tls_stream`'s, run and timed by the connection's task (`accept.rs`) under
//! `connect_timeout`. A leaf: imports nothing else of the crate.

use mqedge_shared::tls::chain::ChainError;
use mqedge_shared::tls::{cipher_name, version_name, CertFacts};

/// What the LB learned from a client's TLS handshake.
#[derive(Debug, Clone, Default)]
pub struct TlsFacts {
    /// Server name the client asked for.
    pub sni: Option<String>,
    /// Negotiated ALPN protocol.
    pub alpn: Option<Vec<u8>>,
    /// `TLSv1.3` / `TLSv1.2`.
    pub version: &'static str,
    /// OpenSSL-style cipher name.
    pub cipher: &'static str,
    /// The client certificate, when one was presented (rustls verified it against `client_ca`,
    /// or the handshake would have failed).
    pub cert: Option<CertFacts>,
}

/// Reads the facts off a finished server handshake (`sni` comes from the ClientHello, which the
/// unbuffered connection does not keep).
pub fn facts_of(conn: &rustls::CommonState, sni: Option<String>) -> TlsFacts {
    TlsFacts {
        sni,
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        version: conn
            .protocol_version()
            .map(version_name)
            .unwrap_or("unknown"),
        cipher: conn
            .negotiated_cipher_suite()
            .map(|s| cipher_name(s.suite()))
            .unwrap_or("UNKNOWN"),
        cert: conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|leaf| CertFacts::from_der(leaf.as_ref())),
    }
}

/// The `reason` label of a failed handshake: `tls_revoked` for a client certificate a `crl`
/// revokes, `tls_bad_chain` for a chain the basic-constraints checks refuse (an issuer that is
/// not a CA, may not sign certificates, or is past its path length), `tls_handshake` otherwise.
pub fn failure_reason(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    let Some(Error::InvalidCertificate(c)) = e.get_ref().and_then(|i| i.downcast_ref::<Error>())
    else {
        return "tls_handshake";
    };
    match c {
        CertificateError::Revoked => "tls_revoked",
        CertificateError::Other(o) if o.0.downcast_ref::<ChainError>().is_some() => "tls_bad_chain",
        _ => "tls_handshake",
    }
}
