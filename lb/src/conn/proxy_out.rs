//! The header written to a backend before the replayed CONNECT (the counterpart of
//! `proxy_in.rs`): nothing, PROXY v1, or PROXY v2 with the TLVs of docs/operations.md (HAProxy
//! `send-proxy-v2-ssl-cn` layout plus mqedge's 0xE0 fingerprint, 0xE1 subject DN and 0xE2
//! SANs, as the backend's `proxy_tlvs` chooses). The certificate was parsed once, at the
//! handshake (`tls.rs`); this only copies what it found.

use mqedge_shared::proxy::{encode_v1, encode_v2, CertIdentity, ProxyInfo, SslInfo};

use crate::config::{ProxyMode, ProxyTlvs};
use crate::conn::ClientFacts;

/// The v2 header fields for a client, with the certificate TLVs of `tlvs`.
pub fn proxy_info(c: &ClientFacts, tlvs: ProxyTlvs) -> ProxyInfo {
    ProxyInfo {
        src: Some(c.src),
        dst: Some(c.dst),
        alpn: c.tls.as_ref().and_then(|t| t.alpn.clone()),
        authority: c.tls.as_ref().and_then(|t| t.sni.clone()),
        unique_id: Some(c.conn_id.as_bytes().to_vec()),
        ssl: c.tls.as_ref().map(|t| {
            let cert = t.cert.as_ref();
            SslInfo {
                version: t.version.to_string(),
                cipher: t.cipher.to_string(),
                client_cert: cert.is_some(),
                // rustls only completes a handshake with a presented certificate when it verified.
                verified: cert.is_some(),
                cn: cert
                    .filter(|_| tlvs.has(ProxyTlvs::CN))
                    .and_then(|c| c.cn.clone()),
                cert_sha256: cert
                    .filter(|_| tlvs.has(ProxyTlvs::FINGERPRINT))
                    .map(|c| c.sha256),
                identity: CertIdentity {
                    dn: cert
                        .filter(|_| tlvs.has(ProxyTlvs::DN))
                        .map(|c| c.dn.clone()),
                    sans: cert
                        .filter(|_| tlvs.has(ProxyTlvs::SAN))
                        .map(|c| c.sans.clone())
                        .unwrap_or_default(),
                    sans_truncated: false,
                },
            }
        }),
    }
}

/// Header bytes for a backend of the given mode and TLVs (empty for `none`).
pub fn header_for(mode: ProxyMode, tlvs: ProxyTlvs, c: &ClientFacts) -> Vec<u8> {
    match mode {
        ProxyMode::None => Vec::new(),
        ProxyMode::V1 => encode_v1(Some(c.src), Some(c.dst)),
        ProxyMode::V2 => encode_v2(&proxy_info(c, tlvs)),
    }
}
