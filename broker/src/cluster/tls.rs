//! Mutual TLS on the node channel (`[cluster] tls_cert`, `tls_key`, `tls_ca`): the dialer
//! checks that the peer's certificate chains to `tls_ca` and names the node it dialed (DNS
//! SAN); the acceptor requires a client certificate chaining to `tls_ca`, and then (in
//! [`super::channel`]) that the Hello's node name is a DNS SAN of it and that the node is a
//! gossip member. What failed is an [`AuthFailure`], counted by reason. The acceptor's check of
//! the peer's chain is `shared::tls::chain`'s, basic constraints of `tls_ca` included.

use std::io;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

use crate::config::ClusterTls;

/// Why a peer was refused (`mqedge_broker_cluster_auth_failures_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No certificate, or one that does not chain to `tls_ca` (or is expired, or is not meant
    /// for this use).
    BadCert,
    /// The certificate is valid but does not name the node (the Hello's name, or the node
    /// dialed).
    NameMismatch,
    /// A valid node that gossip does not list (within [`MEMBERSHIP_WAIT`]).
    NotMember,
    /// The TLS handshake failed otherwise (not TLS at all, no common version, timed out).
    Handshake,
}

impl AuthFailure {
    /// Every reason, in the order of [`AuthCounters`].
    pub const ALL: [AuthFailure; 4] = [
        AuthFailure::BadCert,
        AuthFailure::NameMismatch,
        AuthFailure::NotMember,
        AuthFailure::Handshake,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            AuthFailure::BadCert => "bad_cert",
            AuthFailure::NameMismatch => "name_mismatch",
            AuthFailure::NotMember => "not_member",
            AuthFailure::Handshake => "handshake",
        }
    }

    /// What a failed handshake means, from the rustls error inside the I/O error.
    fn of(e: &io::Error) -> AuthFailure {
        use rustls::{CertificateError as C, Error as E};
        let inner = e.get_ref().and_then(|i| i.downcast_ref::<E>());
        match inner {
            Some(E::InvalidCertificate(C::NotValidForName))
            | Some(E::InvalidCertificate(C::NotValidForNameContext { .. })) => {
                AuthFailure::NameMismatch
            }
            Some(E::InvalidCertificate(_) | E::NoCertificatesPresented) => AuthFailure::BadCert,
            Some(E::AlertReceived(a)) if is_cert_alert(*a) => AuthFailure::BadCert,
            _ => AuthFailure::Handshake,
        }
    }
}

/// Alerts a peer sends when it refused our certificate.
fn is_cert_alert(a: rustls::AlertDescription) -> bool {
    use rustls::AlertDescription as A;
    matches!(
        a,
        A::BadCertificate
            | A::UnknownCA
            | A::CertificateUnknown
            | A::CertificateExpired
            | A::CertificateRequired
            | A::UnsupportedCertificate
            | A::AccessDenied
    )
}

/// The auth failure counters by reason (in [`AuthFailure::ALL`] order), resolved by the caller.
#[derive(Clone, Default)]
pub struct AuthCounters(pub [Counter; 4]);

impl AuthCounters {
    /// Counts one refusal.
    pub fn inc(&self, why: AuthFailure) {
        let i = AuthFailure::ALL.iter().position(|w| *w == why).unwrap_or(0);
        self.0[i].inc();
    }
}

/// How long an inbound connection may take for its TLS handshake and Hello together.
pub const HELLO_DEADLINE: Duration = Duration::from_secs(5);
/// How long a Hello from a node gossip does not list yet waits for it to appear.
pub const MEMBERSHIP_WAIT: Duration = Duration::from_secs(3);

/// Both sides of the node channel's TLS.
pub(super) struct NodeTls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
}

/// A peer refused, with what to log.
#[derive(Debug, thiserror::Error)]
#[error("{}: {detail}", why.label())]
pub(super) struct Refused {
    /// The metric reason.
    pub(super) why: AuthFailure,
    /// What exactly (the TLS error, the names).
    pub(super) detail: String,
}

impl Refused {
    pub(super) fn new(why: AuthFailure, detail: impl Into<String>) -> Refused {
        Refused {
            why,
            detail: detail.into(),
        }
    }
}

impl NodeTls {
    pub(super) fn new(t: &ClusterTls) -> NodeTls {
        NodeTls {
            acceptor: TlsAcceptor::from(t.server.clone()),
            connector: TlsConnector::from(t.client.clone()),
        }
    }

    /// The server side of a handshake (the caller bounds its time); the DNS SANs of the peer's
    /// verified certificate.
    pub(super) async fn accept(
        &self,
        s: TcpStream,
    ) -> Result<(server::TlsStream<TcpStream>, Vec<String>), Refused> {
        let s = self
            .acceptor
            .accept(s)
            .await
            .map_err(|e| Refused::new(AuthFailure::of(&e), e.to_string()))?;
        let names = s
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| dns_names(c))
            .unwrap_or_default();
        Ok((s, names))
    }

    /// The client side: the peer must present a certificate for `peer` (its node name).
    pub(super) async fn dial(
        &self,
        peer: &str,
        s: TcpStream,
    ) -> Result<client::TlsStream<TcpStream>, Refused> {
        let name = ServerName::try_from(peer.to_string()).map_err(|_| {
            Refused::new(
                AuthFailure::NameMismatch,
                format!("node name {peer:?} is not a DNS name a certificate can carry"),
            )
        })?;
        self.connector
            .connect(name, s)
            .await
            .map_err(|e| Refused::new(AuthFailure::of(&e), e.to_string()))
    }
}

/// The DNS names a certificate carries (x509-parser through the shared helper; what rustls
/// verified already).
fn dns_names(der: &[u8]) -> Vec<String> {
    mqedge_shared::tls::CertFacts::from_der(der)
        .map(|f| f.san_values())
        .unwrap_or_default()
}

/// Whether a Hello's node name is one the certificate names (DNS names ignore case).
pub(super) fn names_node(sans: &[String], node: &str) -> bool {
    sans.iter().any(|s| s.eq_ignore_ascii_case(node))
}

/// For tests of the error mapping.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_from_rustls_errors() {
        use rustls::{CertificateError as C, Error as E};
        let io = |e: E| io::Error::new(io::ErrorKind::InvalidData, e);
        assert_eq!(
            AuthFailure::of(&io(E::InvalidCertificate(C::UnknownIssuer))),
            AuthFailure::BadCert
        );
        assert_eq!(
            AuthFailure::of(&io(E::InvalidCertificate(C::NotValidForName))),
            AuthFailure::NameMismatch
        );
        assert_eq!(
            AuthFailure::of(&io(E::NoCertificatesPresented)),
            AuthFailure::BadCert
        );
        // a chain past an issuer's basic constraints (shared::tls::chain) is a bad certificate
        let chain = mqedge_shared::tls::chain::ChainError::PathLen;
        let other = rustls::OtherError(std::sync::Arc::new(chain));
        assert_eq!(
            AuthFailure::of(&io(E::InvalidCertificate(C::Other(other)))),
            AuthFailure::BadCert
        );
        assert_eq!(
            AuthFailure::of(&io(E::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType
            ))),
            AuthFailure::Handshake
        );
        assert_eq!(
            AuthFailure::of(&io::Error::from(io::ErrorKind::UnexpectedEof)),
            AuthFailure::Handshake
        );
        assert!(names_node(&["Node1".into()], "node1"));
        assert!(!names_node(&["node2".into()], "node1"));
    }
}
