//! The WebSocket opening handshake (RFC 6455 §4.2), pure: [`parse`] reads an HTTP/1.1 Upgrade
//! request from bytes (bounded by the caller), checks it against the listener's path and picks
//! the MQTT subprotocol; [`accept_response`] and [`error_response`] are the answers;
//! [`client_address`] reads `X-Forwarded-For` the way a trusted chain of proxies wrote it.

use std::net::IpAddr;

use crate::config::Cidr;

/// The subprotocols MQTT clients offer: `mqtt` (3.1.1 and 5) and `mqttv3.1` (3.1, older
/// clients); the first one the client lists that is among these is echoed.
pub const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Why a handshake was refused; each has the HTTP status it is answered with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// Not an HTTP/1.1 request line, or a malformed header line.
    #[error("not an HTTP/1.1 request")]
    NotHttp,
    /// A method other than GET.
    #[error("method {0:?} (a WebSocket upgrade is a GET)")]
    Method(String),
    /// A path other than the listener's.
    #[error("path {0:?} is not the listener's")]
    Path(String),
    /// `Upgrade: websocket` / `Connection: upgrade` missing.
    #[error("not a WebSocket upgrade request")]
    NotUpgrade,
    /// `Sec-WebSocket-Version` other than 13.
    #[error("unsupported Sec-WebSocket-Version (13 is required)")]
    Version,
    /// `Sec-WebSocket-Key` missing or not 16 bytes of base64.
    #[error("missing or invalid Sec-WebSocket-Key")]
    Key,
    /// The client offered subprotocols, none of them MQTT's.
    #[error("no MQTT subprotocol offered (want mqtt or mqttv3.1)")]
    Subprotocol,
    /// The request head is over the limit.
    #[error("HTTP request head over {0} bytes")]
    TooLarge(usize),
}

impl HandshakeError {
    /// The HTTP status line of the refusal.
    pub fn status(&self) -> &'static str {
        match self {
            HandshakeError::Path(_) => "404 Not Found",
            HandshakeError::Method(_) => "405 Method Not Allowed",
            HandshakeError::Version => "426 Upgrade Required",
            HandshakeError::TooLarge(_) => "431 Request Header Fields Too Large",
            _ => "400 Bad Request",
        }
    }
}

/// What an accepted request said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `Sec-WebSocket-Accept` for the answer.
    pub accept: String,
    /// The subprotocol to echo (`None` when the client offered none).
    pub protocol: Option<&'static str>,
    /// Every `X-Forwarded-For` entry in order (several headers joined).
    pub forwarded_for: Vec<String>,
}

/// The end of the request head in `buf`, if it is all there.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Checks a complete request head (`head` ends with the blank line) for `path`; the query
/// string is ignored.
pub fn parse(head: &[u8], path: &str) -> Result<Request, HandshakeError> {
    let text = std::str::from_utf8(head).map_err(|_| HandshakeError::NotHttp)?;
    let mut lines = text.split("\r\n");
    let line = lines.next().ok_or(HandshakeError::NotHttp)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HandshakeError::NotHttp);
    };
    if version != "HTTP/1.1" {
        return Err(HandshakeError::NotHttp);
    }
    let mut upgrade = false;
    let mut connection = false;
    let mut ws_version = false;
    let mut key = None;
    let mut offered: Vec<&str> = Vec::new();
    let mut forwarded_for = Vec::new();
    for l in lines.take_while(|l| !l.is_empty()) {
        let (name, value) = l.split_once(':').ok_or(HandshakeError::NotHttp)?;
        let value = value.trim();
        let tokens = || value.split(',').map(str::trim).filter(|t| !t.is_empty());
        match name.trim().to_ascii_lowercase().as_str() {
            "upgrade" => upgrade |= tokens().any(|t| t.eq_ignore_ascii_case("websocket")),
            "connection" => connection |= tokens().any(|t| t.eq_ignore_ascii_case("upgrade")),
            "sec-websocket-version" => ws_version = value == "13",
            "sec-websocket-key" => key = Some(value),
            "sec-websocket-protocol" => offered.extend(tokens()),
            "x-forwarded-for" => forwarded_for.extend(tokens().map(str::to_string)),
            _ => {}
        }
    }
    if method != "GET" {
        return Err(HandshakeError::Method(method.chars().take(16).collect()));
    }
    let req_path = target.split('?').next().unwrap_or("");
    if req_path != path {
        return Err(HandshakeError::Path(req_path.chars().take(64).collect()));
    }
    if !(upgrade && connection) {
        return Err(HandshakeError::NotUpgrade);
    }
    if !ws_version {
        return Err(HandshakeError::Version);
    }
    let key = key.filter(|k| valid_key(k)).ok_or(HandshakeError::Key)?;
    let protocol = if offered.is_empty() {
        None
    } else {
        let p = offered
            .iter()
            .find_map(|o| SUBPROTOCOLS.iter().find(|s| s.eq_ignore_ascii_case(o)))
            .ok_or(HandshakeError::Subprotocol)?;
        Some(*p)
    };
    Ok(Request {
        accept: accept_key(key),
        protocol,
        forwarded_for,
    })
}

/// A key is 16 random bytes in base64: 24 characters ending in `==`.
fn valid_key(k: &str) -> bool {
    k.len() == 24
        && k.ends_with("==")
        && k[..22]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// `Sec-WebSocket-Accept`: base64(SHA-1(key + the RFC's GUID)).
pub fn accept_key(key: &str) -> String {
    const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(GUID.as_bytes());
    base64(ctx.finish().as_ref())
}

/// Standard base64 with padding (only the accept value needs it).
fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (c.get(1).copied().unwrap_or(0) as u32) << 8
            | c.get(2).copied().unwrap_or(0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The 101 answer.
pub fn accept_response(r: &Request) -> Vec<u8> {
    let mut s = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        r.accept
    );
    if let Some(p) = r.protocol {
        s.push_str("Sec-WebSocket-Protocol: ");
        s.push_str(p);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// The answer to a refused request (the connection closes after it).
pub fn error_response(e: &HandshakeError) -> Vec<u8> {
    let mut s = format!(
        "HTTP/1.1 {}\r\nConnection: close\r\nContent-Length: 0\r\n",
        e.status()
    );
    if *e == HandshakeError::Version {
        s.push_str("Sec-WebSocket-Version: 13\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// The client's address from `X-Forwarded-For` when `peer` (the immediate sender) is trusted:
/// walking from the right, every entry added by a trusted proxy is skipped and the first
/// address that is not trusted is the client's (the leftmost when all are). `None` when the
/// peer is not trusted, the header is absent, or an entry that would be used is no address.
pub fn client_address(peer: IpAddr, forwarded_for: &[String], trusted: &[Cidr]) -> Option<IpAddr> {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) || forwarded_for.is_empty() {
        return None;
    }
    let mut last = None;
    for e in forwarded_for.iter().rev() {
        let ip = parse_entry(e)?;
        last = Some(ip);
        if !is_trusted(ip) {
            break;
        }
    }
    last
}

/// An entry is an address, optionally `[v6]` or with a port (`1.2.3.4:5678`).
fn parse_entry(e: &str) -> Option<IpAddr> {
    if let Ok(ip) = e.parse() {
        return Some(ip);
    }
    if let Ok(sa) = e.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    e.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
mod tests;
