//! The PROXY protocol: v2 headers sent to brokers (byte-compatible with HAProxy's
//! `send-proxy-v2-ssl-cn`, plus mqedge's certificate TLVs: the fingerprint here, the subject DN
//! and the SANs in [`identity`]) and v1/v2 headers accepted
//! from an upstream L4 load balancer or from the LB. Framing and address handling come from the
//! `ppp` crate; the SSL TLV's nested layout (which `ppp` leaves opaque) is encoded and decoded here.
//! Everything in this module is pure (bytes in, values out) except [`read_header`], the one
//! reader of an incoming header that both roles use, with the one cap on its size.

use std::io;
use std::net::{IpAddr, SocketAddr};

use ppp::v2;
use tokio::net::TcpStream;

pub mod identity;

pub use identity::{CertIdentity, San, SanKind};
use identity::{PP2_TYPE_MQEDGE_SANS, PP2_TYPE_MQEDGE_SUBJECT_DN};

/// `PP2_TYPE_ALPN`.
pub const PP2_TYPE_ALPN: u8 = 0x01;
/// `PP2_TYPE_AUTHORITY` (the SNI host name).
pub const PP2_TYPE_AUTHORITY: u8 = 0x02;
/// `PP2_TYPE_UNIQUE_ID` (the LB's connection id).
pub const PP2_TYPE_UNIQUE_ID: u8 = 0x05;
/// `PP2_TYPE_SSL`.
pub const PP2_TYPE_SSL: u8 = 0x20;
/// `PP2_SUBTYPE_SSL_VERSION`.
pub const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
/// `PP2_SUBTYPE_SSL_CN`.
pub const PP2_SUBTYPE_SSL_CN: u8 = 0x22;
/// `PP2_SUBTYPE_SSL_CIPHER`.
pub const PP2_SUBTYPE_SSL_CIPHER: u8 = 0x23;
/// mqedge's application TLV: SHA-256 of the client certificate DER.
pub const PP2_TYPE_MQEDGE_CERT_SHA256: u8 = 0xE0;
/// The longest `PP2_TYPE_UNIQUE_ID` value (the PROXY protocol spec, 2.2.5; HAProxy refuses a
/// longer one as a bad header too).
pub const MAX_UNIQUE_ID_LEN: usize = 128;
/// SSL client flag: the connection used TLS.
pub const PP2_CLIENT_SSL: u8 = 0x01;
/// SSL client flag: a client certificate was presented on this connection.
pub const PP2_CLIENT_CERT_CONN: u8 = 0x02;
/// SSL client flag: a client certificate was presented in this TLS session.
pub const PP2_CLIENT_CERT_SESS: u8 = 0x04;

/// The v2 signature every binary header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// TLS facts about the client connection, for the `PP2_TYPE_SSL` TLV.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SslInfo {
    /// Protocol version as OpenSSL names it (`TLSv1.3`).
    pub version: String,
    /// Cipher suite as OpenSSL names it (`TLS_AES_256_GCM_SHA384`).
    pub cipher: String,
    /// Whether a client certificate was presented.
    pub client_cert: bool,
    /// Whether the presented certificate verified against the client CA.
    pub verified: bool,
    /// The certificate's subject CN.
    pub cn: Option<String>,
    /// SHA-256 of the client certificate's DER.
    pub cert_sha256: Option<[u8; 32]>,
    /// The certificate's subject DN and SANs (TLVs `0xE1`, `0xE2`).
    pub identity: CertIdentity,
}

/// Everything one PROXY v2 header carries, as the LB sends it or a broker receives it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyInfo {
    /// The real client address (`None` for a LOCAL header, e.g. a health check).
    pub src: Option<SocketAddr>,
    /// The address the client connected to.
    pub dst: Option<SocketAddr>,
    /// Negotiated ALPN protocol.
    pub alpn: Option<Vec<u8>>,
    /// SNI host name the client sent.
    pub authority: Option<String>,
    /// The sender's connection id.
    pub unique_id: Option<Vec<u8>>,
    /// TLS facts; `None` for a plain-TCP client.
    pub ssl: Option<SslInfo>,
}

/// Why a PROXY header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The stream does not start with a PROXY v1 or v2 signature.
    #[error("no PROXY protocol header")]
    Missing,
    /// A PROXY header that does not parse.
    #[error("invalid PROXY header: {0}")]
    Invalid(String),
}

fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    fn v6(a: SocketAddr) -> SocketAddr {
        match a.ip() {
            IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
            IpAddr::V6(_) => a,
        }
    }
    if src.is_ipv4() == dst.is_ipv4() {
        (src, dst)
    } else {
        (v6(src), v6(dst))
    }
}

/// Encodes a v2 header: command PROXY with the client's addresses, then the TLVs in HAProxy's
/// order (ALPN, AUTHORITY, UNIQUE_ID, SSL{VERSION, CN, CIPHER}) and mqedge's 0xE0 (fingerprint),
/// 0xE1 (subject DN) and 0xE2 (SANs), each when there is something to say.
/// With `src == None` the command is LOCAL with no addresses (health checks).
pub fn encode_v2(info: &ProxyInfo) -> Vec<u8> {
    let mut b = match (info.src, info.dst) {
        (Some(src), Some(dst)) => v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            same_family(src, dst),
        ),
        (Some(src), None) => {
            let dst = SocketAddr::new(
                if src.is_ipv4() {
                    IpAddr::from([0, 0, 0, 0])
                } else {
                    IpAddr::from([0u16; 8])
                },
                0,
            );
            v2::Builder::with_addresses(
                v2::Version::Two | v2::Command::Proxy,
                v2::Protocol::Stream,
                (src, dst),
            )
        }
        _ => v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Local,
            v2::Protocol::Unspecified,
            v2::Addresses::Unspecified,
        ),
    };
    b = b.reserve_capacity(128);
    // Writing into a Vec cannot fail; lengths are bounded by the caller's inputs (< 64 KiB).
    let push = |b: v2::Builder, kind: u8, v: &[u8]| -> v2::Builder {
        match b.write_tlv(kind, v) {
            Ok(b) => b,
            Err(_) => unreachable_builder(),
        }
    };
    if let Some(alpn) = &info.alpn {
        b = push(b, PP2_TYPE_ALPN, alpn);
    }
    if let Some(a) = &info.authority {
        b = push(b, PP2_TYPE_AUTHORITY, a.as_bytes());
    }
    if let Some(id) = &info.unique_id {
        b = push(
            b,
            PP2_TYPE_UNIQUE_ID,
            &id[..id.len().min(MAX_UNIQUE_ID_LEN)],
        );
    }
    if let Some(ssl) = &info.ssl {
        b = push(b, PP2_TYPE_SSL, &encode_ssl_value(ssl));
        if let Some(fp) = &ssl.cert_sha256 {
            b = push(b, PP2_TYPE_MQEDGE_CERT_SHA256, fp);
        }
        let id = &ssl.identity;
        if let Some(dn) = id.dn.as_deref().and_then(identity::encode_dn) {
            b = push(b, PP2_TYPE_MQEDGE_SUBJECT_DN, dn);
        }
        let sans = identity::encode_sans(&id.sans, id.sans_truncated);
        if !sans.is_empty() {
            b = push(b, PP2_TYPE_MQEDGE_SANS, &sans);
        }
    }
    b.build().unwrap_or_default()
}

#[cold]
fn unreachable_builder() -> v2::Builder {
    // ppp's builder only fails on I/O to its Vec; keep a valid (LOCAL) header rather than panic.
    v2::Builder::with_addresses(
        v2::Version::Two | v2::Command::Local,
        v2::Protocol::Unspecified,
        v2::Addresses::Unspecified,
    )
}

/// Encodes the value of a `PP2_TYPE_SSL` TLV: client flags, verify, then sub-TLVs.
pub fn encode_ssl_value(ssl: &SslInfo) -> Vec<u8> {
    let mut v = Vec::with_capacity(64);
    let mut client = PP2_CLIENT_SSL;
    if ssl.client_cert {
        client |= PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS;
    }
    v.push(client);
    let verify: u32 = if ssl.client_cert && ssl.verified {
        0
    } else {
        1
    };
    v.extend_from_slice(&verify.to_be_bytes());
    let mut sub = |kind: u8, val: &[u8]| {
        let val = &val[..val.len().min(usize::from(u16::MAX))];
        v.push(kind);
        v.extend_from_slice(&(val.len() as u16).to_be_bytes());
        v.extend_from_slice(val);
    };
    if !ssl.version.is_empty() {
        sub(PP2_SUBTYPE_SSL_VERSION, ssl.version.as_bytes());
    }
    if let Some(cn) = &ssl.cn {
        sub(PP2_SUBTYPE_SSL_CN, cn.as_bytes());
    }
    if !ssl.cipher.is_empty() {
        sub(PP2_SUBTYPE_SSL_CIPHER, ssl.cipher.as_bytes());
    }
    v
}

/// A v2 LOCAL header (no addresses): what health checks send to a backend that wants PROXY.
pub fn encode_v2_local() -> Vec<u8> {
    encode_v2(&ProxyInfo::default())
}

/// A v1 text header (`PROXY TCP4 src dst sport dport\r\n`); `UNKNOWN` when no source is known.
pub fn encode_v1(src: Option<SocketAddr>, dst: Option<SocketAddr>) -> Vec<u8> {
    match (src, dst) {
        (Some(s), Some(d)) => {
            let (s, d) = same_family(s, d);
            let fam = if s.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {fam} {} {} {} {}\r\n",
                s.ip(),
                d.ip(),
                s.port(),
                d.port()
            )
            .into_bytes()
        }
        (Some(s), None) => {
            let (fam, any) = if s.is_ipv4() {
                ("TCP4", "0.0.0.0")
            } else {
                ("TCP6", "::")
            };
            format!("PROXY {fam} {} {any} {} 0\r\n", s.ip(), s.port()).into_bytes()
        }
        _ => b"PROXY UNKNOWN\r\n".to_vec(),
    }
}

/// Parses a PROXY v1 or v2 header at the start of `buf`. `Ok(None)`: more bytes needed;
/// `Ok(Some((info, len)))`: the header is `len` bytes and what follows is the client's stream.
pub fn parse(buf: &[u8]) -> Result<Option<(ProxyInfo, usize)>, ProxyError> {
    const V1: &[u8] = b"PROXY ";
    let n = buf.len();
    if n == 0 {
        return Ok(None);
    }
    if buf[..n.min(12)] == V2_SIGNATURE[..n.min(12)] {
        if n < 16 {
            return Ok(None);
        }
        let total = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if n < total {
            return Ok(None);
        }
        let h =
            v2::Header::try_from(&buf[..total]).map_err(|e| ProxyError::Invalid(e.to_string()))?;
        return from_v2(&h).map(|i| Some((i, total)));
    }
    if buf[..n.min(6)] == V1[..n.min(6)] {
        let window = &buf[..n.min(108)];
        let Some(nl) = window.windows(2).position(|w| w == b"\r\n") else {
            return if n >= 108 {
                Err(ProxyError::Invalid(
                    "v1 header longer than 107 bytes".into(),
                ))
            } else {
                Ok(None)
            };
        };
        let total = nl + 2;
        let h = ppp::v1::Header::try_from(&buf[..total])
            .map_err(|e| ProxyError::Invalid(e.to_string()))?;
        let (src, dst) = match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => (
                Some(SocketAddr::new(a.source_address.into(), a.source_port)),
                Some(SocketAddr::new(
                    a.destination_address.into(),
                    a.destination_port,
                )),
            ),
            ppp::v1::Addresses::Tcp6(a) => (
                Some(SocketAddr::new(a.source_address.into(), a.source_port)),
                Some(SocketAddr::new(
                    a.destination_address.into(),
                    a.destination_port,
                )),
            ),
            ppp::v1::Addresses::Unknown => (None, None),
        };
        return Ok(Some((
            ProxyInfo {
                src,
                dst,
                ..Default::default()
            },
            total,
        )));
    }
    Err(ProxyError::Missing)
}

/// The most bytes [`read_header`] buffers while a header is still incomplete. v1 headers end
/// within 107 bytes (the parser refuses longer ones); this bounds a v2 header's TLVs, with room
/// for whatever an upstream balancer attaches (the LB's cap; the broker's was 4 KiB, and the
/// mqedge LB's headers to it stay far below either).
pub const MAX_HEADER_LEN: usize = 64 * 1024;

/// Why no PROXY header could be read from a connection: a bad header, or the connection itself.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The bytes are not a valid header, or more than [`MAX_HEADER_LEN`] of it.
    #[error("{0}")]
    Header(ProxyError),
    /// The connection failed or closed (`UnexpectedEof`) in the middle of the header.
    #[error("{0}")]
    Io(io::Error),
}

/// Reads a PROXY v1/v2 header from the start of `tcp`, in the connection's own task (the caller
/// bounds it with its timeout). Returns the header, or `None` when the stream does not start
/// with one, and every byte read past it: the client's first bytes, to be replayed in front of
/// the stream.
pub async fn read_header(tcp: &TcpStream) -> Result<(Option<ProxyInfo>, Vec<u8>), ReadError> {
    let mut buf = Vec::with_capacity(256);
    loop {
        match parse(&buf) {
            Ok(Some((info, len))) => return Ok((Some(info), buf.split_off(len))),
            Ok(None) => {}
            Err(ProxyError::Missing) => return Ok((None, buf)),
            Err(e) => return Err(ReadError::Header(e)),
        }
        if buf.len() > MAX_HEADER_LEN {
            return Err(ReadError::Header(ProxyError::Invalid(
                "header too long".into(),
            )));
        }
        tcp.readable().await.map_err(ReadError::Io)?;
        let mut chunk = [0u8; 512];
        match tcp.try_read(&mut chunk) {
            Ok(0) => {
                return Err(ReadError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "eof in PROXY header",
                )))
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
}

fn from_v2(h: &v2::Header<'_>) -> Result<ProxyInfo, ProxyError> {
    let mut info = ProxyInfo::default();
    if h.command == v2::Command::Proxy {
        match h.addresses {
            v2::Addresses::IPv4(a) => {
                info.src = Some(SocketAddr::new(a.source_address.into(), a.source_port));
                info.dst = Some(SocketAddr::new(
                    a.destination_address.into(),
                    a.destination_port,
                ));
            }
            v2::Addresses::IPv6(a) => {
                info.src = Some(SocketAddr::new(a.source_address.into(), a.source_port));
                info.dst = Some(SocketAddr::new(
                    a.destination_address.into(),
                    a.destination_port,
                ));
            }
            _ => {}
        }
    }
    let mut fp = None;
    let mut id = CertIdentity::default();
    for tlv in h.tlvs() {
        let tlv = tlv.map_err(|e| ProxyError::Invalid(e.to_string()))?;
        let v: &[u8] = &tlv.value;
        match tlv.kind {
            PP2_TYPE_ALPN => info.alpn = Some(v.to_vec()),
            PP2_TYPE_AUTHORITY => info.authority = Some(String::from_utf8_lossy(v).into_owned()),
            PP2_TYPE_UNIQUE_ID if v.len() > MAX_UNIQUE_ID_LEN => {
                return Err(ProxyError::Invalid(
                    "UNIQUE_ID TLV longer than 128 bytes".into(),
                ))
            }
            PP2_TYPE_UNIQUE_ID => info.unique_id = Some(v.to_vec()),
            PP2_TYPE_SSL => info.ssl = Some(parse_ssl_value(v)?),
            PP2_TYPE_MQEDGE_CERT_SHA256 => {
                fp = Some(<[u8; 32]>::try_from(v).map_err(|_| {
                    ProxyError::Invalid("certificate fingerprint TLV is not 32 bytes".into())
                })?)
            }
            PP2_TYPE_MQEDGE_SUBJECT_DN => id.dn = identity::decode_dn(v)?,
            PP2_TYPE_MQEDGE_SANS => (id.sans, id.sans_truncated) = identity::decode_sans(v)?,
            _ => {}
        }
    }
    // the certificate TLVs only mean something next to the SSL TLV that says a cert was shown
    if let Some(ssl) = info.ssl.as_mut() {
        ssl.cert_sha256 = fp;
        ssl.identity = id;
    }
    Ok(info)
}

/// Decodes the value of a `PP2_TYPE_SSL` TLV (as HAProxy or mqedge lb send it).
pub fn parse_ssl_value(v: &[u8]) -> Result<SslInfo, ProxyError> {
    if v.len() < 5 {
        return Err(ProxyError::Invalid("SSL TLV shorter than 5 bytes".into()));
    }
    let client = v[0];
    let verify = u32::from_be_bytes([v[1], v[2], v[3], v[4]]);
    let cert = client & (PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS) != 0;
    let mut ssl = SslInfo {
        client_cert: cert,
        verified: cert && verify == 0,
        ..Default::default()
    };
    let mut rest = &v[5..];
    while !rest.is_empty() {
        if rest.len() < 3 {
            return Err(ProxyError::Invalid("truncated SSL sub-TLV".into()));
        }
        let kind = rest[0];
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]]));
        if rest.len() < 3 + len {
            return Err(ProxyError::Invalid("SSL sub-TLV runs past its TLV".into()));
        }
        let val = &rest[3..3 + len];
        match kind {
            PP2_SUBTYPE_SSL_VERSION => ssl.version = String::from_utf8_lossy(val).into_owned(),
            PP2_SUBTYPE_SSL_CN => ssl.cn = Some(String::from_utf8_lossy(val).into_owned()),
            PP2_SUBTYPE_SSL_CIPHER => ssl.cipher = String::from_utf8_lossy(val).into_owned(),
            _ => {}
        }
        rest = &rest[3 + len..];
    }
    Ok(ssl)
}

#[cfg(test)]
mod tests;
