//! MQTT CONNECT peek: reads just enough of the first packet to learn the protocol version, the
//! client id and the username, without allocating and without consuming anything — the LB replays
//! the exact bytes to the chosen backend.
//!
//! Why our own parser instead of `mqttbytes`: mqttbytes rejects MQTT 3.1 (`MQIsdp`, level 3),
//! which DESIGN.md requires, and decodes into owned packets (allocations for will payloads and
//! passwords the LB never looks at). This is ~150 lines of pure code, fuzzable and benchmarked
//! (`benches/hot_paths.rs`).

/// The facts the LB needs from a CONNECT; borrows from the peeked buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connect<'a> {
    /// 3 (MQTT 3.1), 4 (3.1.1) or 5 (5.0).
    pub level: u8,
    /// The client identifier (may be empty: the fallback strategy applies).
    pub client_id: &'a str,
    /// The username, for logs.
    pub username: Option<&'a str>,
    /// Keep-alive seconds, for logs.
    pub keep_alive: u16,
    /// Clean session / clean start flag.
    pub clean: bool,
    /// Length of the whole packet (fixed header included): bytes past it belong to later packets.
    pub packet_len: usize,
}

/// Outcome of a peek over the bytes received so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peek<'a> {
    /// More bytes are needed; read more (the packet is known not to exceed the limit so far).
    Incomplete,
    /// The first packet is a complete, well-formed CONNECT.
    Complete(Connect<'a>),
}

/// Why a first packet was refused; each maps to a counter label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PeekError {
    /// The first packet is some other MQTT type, or not MQTT at all (TLS to a plain port, HTTP).
    #[error("first packet is not an MQTT CONNECT (first byte 0x{0:02x})")]
    NotConnect(u8),
    /// The CONNECT (by its declared length) is over `max_connect_packet`.
    #[error("CONNECT of {0} bytes is over the limit")]
    TooLarge(usize),
    /// Protocol name/level not MQTT 3.1, 3.1.1 or 5.0.
    #[error("unsupported protocol name or level")]
    BadProtocol,
    /// Structurally broken: bad lengths, bad UTF-8, reserved bits set.
    #[error("malformed CONNECT: {0}")]
    Malformed(&'static str),
}

impl PeekError {
    /// Short stable label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            PeekError::NotConnect(_) => "not_connect",
            PeekError::TooLarge(_) => "too_large",
            PeekError::BadProtocol => "bad_protocol",
            PeekError::Malformed(_) => "malformed",
        }
    }
}

/// Decodes an MQTT variable byte integer at the start of `buf`.
/// Returns `Ok(None)` when more bytes are needed, `Ok(Some((value, bytes_used)))` otherwise.
pub fn decode_varint(buf: &[u8]) -> Result<Option<(usize, usize)>, PeekError> {
    let mut value = 0usize;
    for (i, &b) in buf.iter().enumerate().take(4) {
        value |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 4 {
        Err(PeekError::Malformed("remaining length longer than 4 bytes"))
    } else {
        Ok(None)
    }
}

/// Peeks at `buf` (everything received so far) for a CONNECT no larger than `max_len` bytes.
pub fn peek_connect(buf: &[u8], max_len: usize) -> Result<Peek<'_>, PeekError> {
    let Some(&first) = buf.first() else {
        return Ok(Peek::Incomplete);
    };
    if first != 0x10 {
        return Err(PeekError::NotConnect(first));
    }
    let Some((rem, vlen)) = decode_varint(&buf[1..])? else {
        return Ok(Peek::Incomplete);
    };
    let total = 1 + vlen + rem;
    if total > max_len {
        return Err(PeekError::TooLarge(total));
    }
    if buf.len() < total {
        return Ok(Peek::Incomplete);
    }
    let mut r = Reader {
        b: &buf[1 + vlen..total],
    };
    let name = r.bytes()?;
    let level = r.u8()?;
    match (name, level) {
        (b"MQTT", 4 | 5) | (b"MQIsdp", 3) => {}
        _ => return Err(PeekError::BadProtocol),
    }
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(PeekError::Malformed("reserved connect flag set"));
    }
    let will = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    if will_qos == 3 || (!will && (will_qos != 0 || flags & 0x20 != 0)) {
        return Err(PeekError::Malformed("bad will flags"));
    }
    let keep_alive = r.u16()?;
    if level == 5 {
        r.properties()?;
    }
    let client_id = r.string()?;
    if will {
        if level == 5 {
            r.properties()?;
        }
        r.string()?; // will topic
        r.bytes()?; // will payload
    }
    let username = if flags & 0x80 != 0 {
        Some(r.string()?)
    } else {
        None
    };
    if flags & 0x40 != 0 {
        r.bytes()?;
    }
    if !r.b.is_empty() {
        return Err(PeekError::Malformed("trailing bytes after the payload"));
    }
    Ok(Peek::Complete(Connect {
        level,
        client_id,
        username,
        keep_alive,
        clean: flags & 0x02 != 0,
        packet_len: total,
    }))
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PeekError> {
        if self.b.len() < n {
            return Err(PeekError::Malformed("field runs past the packet"));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, PeekError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, PeekError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn bytes(&mut self) -> Result<&'a [u8], PeekError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
    fn string(&mut self) -> Result<&'a str, PeekError> {
        let b = self.bytes()?;
        let s = std::str::from_utf8(b).map_err(|_| PeekError::Malformed("string is not UTF-8"))?;
        if s.contains('\0') {
            return Err(PeekError::Malformed("string contains U+0000"));
        }
        Ok(s)
    }
    fn properties(&mut self) -> Result<(), PeekError> {
        let (len, used) =
            decode_varint(self.b)?.ok_or(PeekError::Malformed("truncated property length"))?;
        self.take(used)?;
        self.take(len)?;
        Ok(())
    }
}

/// Builds a CONNECT packet; used by health checks, tests and benchmarks.
pub fn encode_connect(
    level: u8,
    client_id: &str,
    username: Option<&str>,
    keep_alive: u16,
) -> Vec<u8> {
    let name: &[u8] = if level == 3 { b"MQIsdp" } else { b"MQTT" };
    let mut body = Vec::with_capacity(32 + client_id.len());
    body.extend_from_slice(&(name.len() as u16).to_be_bytes());
    body.extend_from_slice(name);
    body.push(level);
    let mut flags = 0x02;
    if username.is_some() {
        flags |= 0x80;
    }
    body.push(flags);
    body.extend_from_slice(&keep_alive.to_be_bytes());
    if level == 5 {
        body.push(0);
    }
    push_str(&mut body, client_id);
    if let Some(u) = username {
        push_str(&mut body, u);
    }
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(0x10);
    encode_varint(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(usize::from(u16::MAX))];
    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    out.extend_from_slice(b);
}

/// Appends an MQTT variable byte integer.
pub fn encode_varint(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v311_v5_v31() {
        for level in [3u8, 4, 5] {
            let p = encode_connect(level, "dev-42", Some("alice"), 30);
            let Peek::Complete(c) = peek_connect(&p, 1024).unwrap() else {
                panic!("incomplete")
            };
            assert_eq!(c.level, level);
            assert_eq!(c.client_id, "dev-42");
            assert_eq!(c.username, Some("alice"));
            assert_eq!(c.keep_alive, 30);
            assert!(c.clean);
            assert_eq!(c.packet_len, p.len());
            // every strict prefix is incomplete, never an error
            for i in 0..p.len() {
                assert_eq!(
                    peek_connect(&p[..i], 1024).unwrap(),
                    Peek::Incomplete,
                    "{level} {i}"
                );
            }
            // bytes after the CONNECT (pipelined PUBLISH) are not part of it
            let mut more = p.clone();
            more.extend_from_slice(&[0x30, 0x02, 0, 0]);
            let Peek::Complete(c) = peek_connect(&more, 1024).unwrap() else {
                panic!()
            };
            assert_eq!(c.packet_len, p.len());
        }
    }

    #[test]
    fn with_will_and_password_v5() {
        // v5 CONNECT with properties, will (props, topic, payload), username and password.
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0b1100_1110, 0, 60];
        body.extend_from_slice(&[5, 0x11, 0, 0, 0, 10]); // session expiry
        body.extend_from_slice(&[0, 1, b'c']);
        body.extend_from_slice(&[0]); // will props
        body.extend_from_slice(&[0, 1, b't', 0, 2, 1, 2]);
        body.extend_from_slice(&[0, 1, b'u', 0, 1, b'p']);
        let mut p = vec![0x10];
        encode_varint(body.len(), &mut p);
        p.extend_from_slice(&body);
        let Peek::Complete(c) = peek_connect(&p, 1024).unwrap() else {
            panic!()
        };
        assert_eq!((c.client_id, c.username, c.level), ("c", Some("u"), 5));
    }

    #[test]
    fn refusals() {
        assert_eq!(
            peek_connect(b"GET / HTTP/1.1\r\n", 1024),
            Err(PeekError::NotConnect(b'G'))
        );
        assert_eq!(
            peek_connect(&[0x16, 3, 1], 1024),
            Err(PeekError::NotConnect(0x16))
        );
        assert_eq!(
            peek_connect(&[0x30, 0], 1024),
            Err(PeekError::NotConnect(0x30))
        );
        assert_eq!(
            peek_connect(&[0x11, 0], 1024),
            Err(PeekError::NotConnect(0x11))
        );
        // declared too large, detected from the header alone
        assert_eq!(
            peek_connect(&[0x10, 0xff, 0xff, 0x03], 65536),
            Err(PeekError::TooLarge(65539))
        );
        assert!(matches!(
            peek_connect(&[0x10, 0xff, 0xff, 0xff, 0xff], usize::MAX),
            Err(PeekError::Malformed(_))
        ));
        let mut p = encode_connect(4, "x", None, 0);
        p[8] = 9; // level 9
        assert_eq!(peek_connect(&p, 1024), Err(PeekError::BadProtocol));
        let mut p = encode_connect(4, "x", None, 0);
        p[9] |= 1; // reserved flag
        assert!(matches!(
            peek_connect(&p, 1024),
            Err(PeekError::Malformed(_))
        ));
        let mut p = encode_connect(4, "x", None, 0);
        p[1] += 1; // declared longer: trailing byte inside the packet
        p.push(0);
        assert!(matches!(
            peek_connect(&p, 1024),
            Err(PeekError::Malformed(_))
        ));
        let mut p = encode_connect(4, "\u{e9}", None, 0);
        let n = p.len();
        p[n - 1] = 0xff; // bad UTF-8
        assert!(matches!(
            peek_connect(&p, 1024),
            Err(PeekError::Malformed(_))
        ));
    }

    #[test]
    fn never_panics_on_any_short_input() {
        // exhaustive over 3-byte inputs after a CONNECT header, plus a pseudo-random walk
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 40) as usize;
            let mut buf: Vec<u8> = (0..len)
                .map(|i| (x >> (i % 8 * 8)) as u8 ^ i as u8)
                .collect();
            if !buf.is_empty() {
                buf[0] = 0x10;
            }
            if buf.len() > 1 {
                buf[1] = (buf.len() - 2) as u8 & 0x7f;
            }
            let _ = peek_connect(&buf, 64);
        }
    }
}
