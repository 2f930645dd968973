//! The header written to a backend before the replayed CONNECT (the counterpart of
//! `proxy_in.rs`): nothing, PROXY v1, or PROXY v2
//! with the TLVs of DESIGN.md (HAProxy `send-proxy-v2-ssl-cn` layout plus the 0xE0 fingerprint).

use mqedge_shared::proxy::{encode_v1, encode_v2, ProxyInfo, SslInfo};

use crate::config::ProxyMode;
use crate::conn::ClientFacts;

/// The v2 header fields for a client.
pub fn proxy_info(c: &ClientFacts) -> ProxyInfo {
    ProxyInfo {
        src: Some(c.src),
        dst: Some(c.dst),
        alpn: c.tls.as_ref().and_then(|t| t.alpn.clone()),
        authority: c.tls.as_ref().and_then(|t| t.sni.clone()),
        unique_id: Some(c.conn_id.as_bytes().to_vec()),
        ssl: c.tls.as_ref().map(|t| SslInfo {
            version: t.version.to_string(),
            cipher: t.cipher.to_string(),
            client_cert: t.cert.is_some(),
            // rustls only completes a handshake with a presented certificate when it verified.
            verified: t.cert.is_some(),
            cn: t.cert.as_ref().and_then(|c| c.cn.clone()),
            cert_sha256: t.cert.as_ref().map(|c| c.sha256),
        }),
    }
}

/// Header bytes for a backend of the given mode (empty for `none`).
pub fn header_for(mode: ProxyMode, c: &ClientFacts) -> Vec<u8> {
    match mode {
        ProxyMode::None => Vec::new(),
        ProxyMode::V1 => encode_v1(Some(c.src), Some(c.dst)),
        ProxyMode::V2 => encode_v2(&proxy_info(c)),
    }
}
