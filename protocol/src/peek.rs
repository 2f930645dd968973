//! MQTT CONNECT peek: reads just enough of the first packet to learn the protocol version, the
//! client id and the username, without allocating and without consuming anything — the LB replays
//! the exact bytes to the chosen backend.
//!
//! Why not the [`codec`](crate::codec): it decodes into owned packets (allocations for will
//! payloads and passwords the LB never looks at) and consumes its buffer. This reads the same
//! fields with the same wire primitives (one Variable Byte Integer, one string rule), borrowing
//! from the buffer; it is fuzzable and benchmarked (`benches/hot_paths.rs`). May import `wire`,
//! and `codec` and `packets` for [`encode_connect`] and for the complete CONNECT's rules.

use bytes::BytesMut;

use crate::codec::{encode, DecodeError};
use crate::packets::{self, ConnectProperties, Packet, Version};
use crate::wire::{self, BadField, Cursor};

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
    /// Protocol name neither `MQTT` nor `MQIsdp`.
    #[error("unsupported protocol name")]
    BadProtocol,
    /// A level other than 4 or 5 (`MQTT`) or 3 (`MQIsdp`): MQTT-3.1.2-2 asks for a CONNACK
    /// with return code 0x01 before the close, so the caller answers it.
    #[error("unsupported protocol level {0}")]
    UnsupportedLevel(u8),
    /// Structurally broken: bad lengths, bad UTF-8, reserved bits set.
    #[error("malformed CONNECT: {0}")]
    Malformed(&'static str),
}

/// A bad field is a malformed CONNECT, with the field's own text.
impl From<BadField> for PeekError {
    fn from(e: BadField) -> Self {
        PeekError::Malformed(e.0)
    }
}

impl PeekError {
    /// Short stable label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            PeekError::NotConnect(_) => "not_connect",
            PeekError::TooLarge(_) => "too_large",
            PeekError::BadProtocol | PeekError::UnsupportedLevel(_) => "bad_protocol",
            PeekError::Malformed(_) => "malformed",
        }
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
    let Some((rem, vlen)) = wire::varint(buf.get(1..).unwrap_or_default())? else {
        return Ok(Peek::Incomplete);
    };
    let total = 1 + vlen + rem;
    if total > max_len {
        return Err(PeekError::TooLarge(total));
    }
    let Some(body) = buf.get(1 + vlen..total) else {
        return Ok(Peek::Incomplete);
    };
    let connect = read_connect(Cursor::new(body))?;
    full_check(&buf[..total])?;
    Ok(Peek::Complete(Connect {
        packet_len: total,
        ..connect
    }))
}

/// The CONNECT's variable header and payload: the facts kept, the rest only checked and skipped.
/// The same field rules as the codec's (MQTT-3.1.2-1/-2/-3, the will flags, the strings).
fn read_connect(mut r: Cursor<'_>) -> Result<Connect<'_>, PeekError> {
    let name = r.binary()?;
    let level = r.u8()?;
    match (name, level) {
        (b"MQTT", 4 | 5) | (b"MQIsdp", 3) => {}
        (b"MQTT" | b"MQIsdp", other) => return Err(PeekError::UnsupportedLevel(other)),
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
    skip_properties(&mut r, level)?;
    let client_id = r.string()?;
    if will {
        skip_properties(&mut r, level)?;
        r.string()?; // will topic
        r.binary()?; // will payload
    }
    let username = (flags & 0x80 != 0).then(|| r.string()).transpose()?;
    if flags & 0x40 != 0 {
        r.binary()?; // password
    }
    r.end()?;
    Ok(Connect {
        level,
        client_id,
        username,
        keep_alive,
        clean: flags & 0x02 != 0,
        packet_len: 0,
    })
}

/// The rules the peek does not read for itself (v5 property identifiers, duplicates and value
/// ranges such as Receive Maximum 0, the will's properties, a 3.1.1 password without a user
/// name) are the codec's: the complete CONNECT goes through [`crate::codec::decode`] once, so
/// the LB never replays to a broker a CONNECT the broker would call malformed. One copy of the
/// packet per connection; the peek above stays allocation-free while bytes arrive.
fn full_check(packet: &[u8]) -> Result<(), PeekError> {
    let mut b = BytesMut::from(packet);
    match crate::codec::decode(&mut b, None, packet.len()) {
        Ok(Some(Packet::Connect(_))) => Ok(()),
        Ok(_) => Err(PeekError::Malformed("not a complete CONNECT")),
        Err(DecodeError::Malformed(why) | DecodeError::Protocol(why)) => {
            Err(PeekError::Malformed(why))
        }
        Err(DecodeError::UnsupportedVersion(v)) => Err(PeekError::UnsupportedLevel(v)),
        Err(DecodeError::BadProtocolName) => Err(PeekError::BadProtocol),
        Err(DecodeError::TooLarge(n)) => Err(PeekError::TooLarge(n)),
    }
}

/// A v5 property block, unread: its length, then that many bytes (2.2.2.1).
fn skip_properties(r: &mut Cursor<'_>, level: u8) -> Result<(), PeekError> {
    if level == 5 {
        let n = r.varint()?;
        r.take(n as usize)?;
    }
    Ok(())
}

/// Builds a CONNECT packet (clean session, no will, no password) with the codec, so that it is
/// what a client would send; used by health checks, tests and benchmarks.
pub fn encode_connect(
    level: u8,
    client_id: &str,
    username: Option<&str>,
    keep_alive: u16,
) -> Vec<u8> {
    encode_connect_props(level, client_id, username, keep_alive, &[])
}

/// [`encode_connect`] with MQTT 5 user properties (left out below level 5, which has none): the
/// LB's health check says with them that it saw a broker's drain.
pub fn encode_connect_props(
    level: u8,
    client_id: &str,
    username: Option<&str>,
    keep_alive: u16,
    user_properties: &[(&str, &str)],
) -> Vec<u8> {
    let version = match level {
        3 => Version::V31,
        5 => Version::V5,
        _ => Version::V311,
    };
    let connect = packets::Connect {
        version,
        clean_start: true,
        keep_alive,
        client_id: client_id.to_owned(),
        will: None,
        username: username.map(str::to_owned),
        password: None,
        properties: ConnectProperties {
            user_properties: user_properties
                .iter()
                .filter(|_| version == Version::V5)
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..ConnectProperties::default()
        },
    };
    let mut out = BytesMut::new();
    encode(&Packet::Connect(Box::new(connect)), version, &mut out);
    out.to_vec()
}

/// Appends an MQTT variable byte integer.
pub fn encode_varint(n: usize, out: &mut Vec<u8>) {
    wire::put_varint(out, n);
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
    fn user_properties_only_in_v5() {
        let props = [("mqedge-drain-ack", "lb1"), ("mqedge-lb-connections", "3")];
        let p = encode_connect_props(5, "hc", None, 10, &props);
        let mut b = BytesMut::from(&p[..]);
        let Some(Packet::Connect(c)) = crate::decode(&mut b, None, 1024).unwrap() else {
            panic!("not a CONNECT")
        };
        assert_eq!(c.properties.user_properties.len(), 2);
        assert_eq!(c.properties.user_properties[0].1, "lb1");
        let p4 = encode_connect_props(4, "hc", None, 10, &props);
        assert_eq!(p4, encode_connect(4, "hc", None, 10));
    }

    #[test]
    fn encode_connect_bytes() {
        let v311 = [
            &[0x10, 18, 0, 4][..],
            b"MQTT",
            &[4, 0x82, 0, 10, 0, 3],
            b"abc",
            &[0, 1, b'u'],
        ]
        .concat();
        assert_eq!(encode_connect(4, "abc", Some("u"), 10), v311);
        let v31 = [
            &[0x10, 15, 0, 6][..],
            b"MQIsdp",
            &[3, 0x02, 0, 30, 0, 1, b'c'],
        ]
        .concat();
        assert_eq!(encode_connect(3, "c", None, 30), v31);
        let v5 = [
            &[0x10, 15, 0, 4][..],
            b"MQTT",
            &[5, 0x02, 0, 0, 0, 0, 2],
            b"id",
        ]
        .concat();
        assert_eq!(encode_connect(5, "id", None, 0), v5);
        let v5_user = [
            &[0x10, 26, 0, 4][..],
            b"MQTT",
            &[5, 0x82, 0, 60, 0, 0, 6],
            b"dev-42",
            &[0, 5],
            b"alice",
        ]
        .concat();
        assert_eq!(encode_connect(5, "dev-42", Some("alice"), 60), v5_user);
    }

    #[test]
    fn varints_in_their_shortest_form_only() {
        // the codec's rule (MQTT-1.5.5-1): a remaining length of 0x80 0x00 is malformed
        let mut p = encode_connect(4, "x", None, 0);
        let body = p.split_off(2);
        let padded = [&[0x10, p[1] | 0x80, 0x00][..], &body].concat();
        assert!(matches!(
            peek_connect(&padded, 1024),
            Err(PeekError::Malformed(_))
        ));
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
        assert_eq!(peek_connect(&p, 1024), Err(PeekError::UnsupportedLevel(9)));
        let mut p = encode_connect(4, "x", None, 0);
        p[4] = b'X'; // protocol name MQTX
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
    fn the_codecs_connect_rules_apply() {
        // v5, Receive Maximum 0 / an unknown property / a duplicate; 3.1.1 password only
        let v5 = |props: &[u8]| {
            let mut b = vec![
                0,
                4,
                b'M',
                b'Q',
                b'T',
                b'T',
                5,
                0x02,
                0,
                10,
                props.len() as u8,
            ];
            b.extend_from_slice(props);
            b.extend_from_slice(&[0, 1, b'c']);
            let mut p = vec![0x10, b.len() as u8];
            p.extend_from_slice(&b);
            p
        };
        for props in [&[0x21, 0, 0][..], &[0x7f, 0], &[0x21, 0, 5, 0x21, 0, 5]] {
            assert!(matches!(
                peek_connect(&v5(props), 1024),
                Err(PeekError::Malformed(_))
            ));
        }
        assert!(matches!(
            peek_connect(&v5(&[0x21, 0, 5]), 1024),
            Ok(Peek::Complete(_))
        ));
        let pw = [
            0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x42, 0, 10, 0, 1, b'c', 0, 0,
        ];
        assert!(matches!(
            peek_connect(&pw, 1024),
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
