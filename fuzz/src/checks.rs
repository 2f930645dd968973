//! One check per fuzz target (see `fuzz/README.md`). Each takes the raw input and panics only
//! when the parser broke an invariant; a refused input is fine. Shared, by `#[path]`, with
//! `tests/fuzz_regressions.rs`, so this file uses only crates the product's tests depend on.

use std::path::Path;

use bytes::BytesMut;
use mqedge_broker::cluster::frame::{decode_capped, encode as encode_frame, MAX_FRAME};
use mqedge_broker::message::Message;
use mqedge_broker::routing::retained_versions::decode_record;
use mqedge_protocol::peek::{peek_connect as peek, Peek};
use mqedge_protocol::{decode, encode, Packet, Version};
use mqedge_shared::proxy::{encode_v2, identity, parse, parse_ssl_value};

/// A target's check: panics only when the parser broke an invariant.
pub type Check = fn(&[u8]);

/// The targets by name, for the regression replay.
pub const TARGETS: &[(&str, Check)] = &[
    ("codec_decode", codec_decode),
    ("peek_connect", peek_connect),
    ("proxy_header", proxy_header),
    ("cluster_frame", cluster_frame),
    ("broker_config", broker_config),
    ("lb_config", lb_config),
    ("websocket", websocket),
];

/// The MQTT codec (3.1, 3.1.1 and 5.0) on whatever a client or a backend could send.
/// Byte 0 picks the connection state (bits 0-1: before CONNECT, 3.1, 3.1.1, 5.0) and, when
/// bit 2 is set, a small packet size cap (the byte's top five bits); the rest is the stream.
/// Invariants: `Ok(None)` consumes nothing; a decoded packet re-encodes to bytes that decode to
/// the same packet (what the broker relays is what it read).
pub fn codec_decode(data: &[u8]) {
    let Some((&ctl, stream)) = data.split_first() else {
        return;
    };
    let mut state = match ctl & 0x03 {
        0 => None,
        1 => Some(Version::V31),
        2 => Some(Version::V311),
        _ => Some(Version::V5),
    };
    let max = if ctl & 0x04 != 0 {
        usize::from(ctl >> 3)
    } else {
        1 << 20
    };
    let mut buf = BytesMut::from(stream);
    loop {
        let before = buf.len();
        match decode(&mut buf, state, max) {
            Ok(None) => {
                assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                return;
            }
            Err(_) => return,
            Ok(Some(p)) => {
                assert!(buf.len() < before, "a packet decoded from no bytes");
                let v = match (&p, state) {
                    (Packet::Connect(c), _) => c.version,
                    (_, Some(v)) => v,
                    (_, None) => panic!("decoded {p:?} before CONNECT"),
                };
                let mut out = BytesMut::new();
                encode(&p, v, &mut out);
                let again = decode(&mut out, state.map(|_| v), usize::MAX);
                assert_eq!(
                    again,
                    Ok(Some(p)),
                    "re-encoding of a decoded packet differs"
                );
                assert!(out.is_empty(), "re-encoding left bytes over");
                state = Some(v);
            }
        }
    }
}

/// The LB's CONNECT peek on the first bytes of a client connection (TLS already terminated).
/// Byte 0 scales the size cap (0xFF: 64 KiB); the rest is what the client sent so far.
/// Invariants: a complete peek never claims more bytes than it was given or the cap allows,
/// and the peek and the codec agree both ways: what the peek passes the broker reads as a
/// CONNECT, and a CONNECT the broker would read is not refused by the LB.
pub fn peek_connect(data: &[u8]) {
    let Some((&ctl, buf)) = data.split_first() else {
        return;
    };
    let max = if ctl == 0xFF {
        1 << 16
    } else {
        usize::from(ctl) * 4
    };
    let peeked = peek(buf, max);
    if let Ok(Peek::Complete(c)) = peeked {
        assert!(c.packet_len <= buf.len() && c.packet_len <= max);
        let mut b = BytesMut::from(&buf[..c.packet_len]);
        match decode(&mut b, None, max) {
            Ok(Some(Packet::Connect(_))) => assert!(b.is_empty()),
            other => panic!("peeked a CONNECT the codec reads as {other:?}"),
        }
    }
    let mut b = BytesMut::from(buf);
    if let Ok(Some(Packet::Connect(_))) = decode(&mut b, None, max) {
        let used = buf.len() - b.len();
        match peeked {
            Ok(Peek::Complete(c)) => assert_eq!(c.packet_len, used),
            other => panic!("the codec reads a CONNECT of {used} bytes, the peek says {other:?}"),
        }
    }
}

/// PROXY protocol v1 / v2 headers and their TLVs (the SSL TLV's nested layout included), as an
/// upstream load balancer or the LB sends them to a listener with `proxy_protocol`.
/// Invariants: a parsed header never claims more bytes than it was given; a parsed v2 PROXY
/// header re-encodes (`encode_v2`) to one that parses to the same facts; the SAN TLV's value
/// (`0xE2`) decodes to SANs that re-encode, within its size cap, to a value that decodes the same.
pub fn proxy_header(data: &[u8]) {
    let _ = parse_ssl_value(data);
    let _ = identity::decode_dn(data);
    if let Ok((sans, cut)) = identity::decode_sans(data) {
        let again = identity::encode_sans(&sans, cut);
        assert!(again.len() <= identity::MAX_SANS_LEN);
        assert_eq!(
            identity::decode_sans(&again),
            Ok((sans, cut)),
            "SAN round trip"
        );
    }
    if let Ok(Some((info, used))) = parse(data) {
        assert!(used > 0 && used <= data.len());
        if data.first() == Some(&b'\r') && info.src.is_some() {
            let again = encode_v2(&info);
            let reparsed = parse(&again);
            assert_eq!(
                reparsed,
                Ok(Some((info, again.len()))),
                "v2 round trip differs"
            );
        }
    }
}

/// The node channel's frames (`[u32 len][u8 version][u8 kind][body]`) as a peer sends them,
/// and the encoded messages and retained records they carry. Byte 0 bit 0 picks a small size
/// cap (a frame reassembled from chunks is decoded with another cap); the rest is the stream.
/// Invariants: a decoded frame never claims more bytes than it was given, and re-encodes to
/// bytes that decode to the same frame.
pub fn cluster_frame(data: &[u8]) {
    let Some((&ctl, mut buf)) = data.split_first() else {
        return;
    };
    let cap = if ctl & 1 == 1 { 64 } else { MAX_FRAME };
    let _ = Message::decode(buf);
    let _ = decode_record(buf);
    // session replication's ops (a `Replicate` frame's body): each decoded op maps to a
    // standby-table op with the kind byte in front of the holder's key
    for w in mqedge_broker::replica::ops::decode(buf).unwrap_or_default() {
        let op = w.standby_op();
        assert!(
            w.client().is_some() || w.code != 1,
            "a record key is its client id"
        );
        let _ = op;
    }
    while let Ok(Some((f, used))) = decode_capped(buf, cap) {
        assert!(used >= 6 && used <= buf.len());
        let mut out = Vec::new();
        encode_frame(&f, &mut out);
        match decode_capped(&out, usize::MAX) {
            Ok(Some((g, n))) => {
                assert_eq!(g, f, "re-encoding of a decoded frame differs");
                assert_eq!(n, out.len());
            }
            other => panic!("re-encoded frame does not decode: {other:?}"),
        }
        buf = &buf[used..];
    }
}

/// The broker's config loader (`Config::parse`: what `mqedge broker` and `mqedge check` run)
/// on any text: every problem comes back as an error. Files it names resolve under a
/// directory that does not exist, so nothing is read from or written to the disk.
pub fn broker_config(data: &[u8]) {
    if let Ok(src) = std::str::from_utf8(data) {
        let _ =
            mqedge_broker::config::Config::parse(Path::new("/nonexistent/fuzz/broker.toml"), src);
    }
}

/// The LB's config loader (`Config::parse`, also what a reload runs on the watched file) on
/// any text, as [`broker_config`].
pub fn lb_config(data: &[u8]) {
    if let Ok(src) = std::str::from_utf8(data) {
        let _ = mqedge_lb::config::Config::parse(Path::new("/nonexistent/fuzz/lb.toml"), src);
    }
}

/// MQTT over WebSocket: the Upgrade request and the client frames the LB and the broker
/// decode. Byte 0 picks where the rest is split in two reads (and the decoder's `max_frame`,
/// 1 KiB << its low bits). Invariants: the request parser never panics; the frame decoder gives
/// the same MQTT bytes and the same refusal however the input is split, and never more bytes
/// than it was given.
pub fn websocket(data: &[u8]) {
    use mqedge_shared::ws::frame::Decoder;
    use mqedge_shared::ws::handshake;
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    if let Some(end) = handshake::head_end(rest) {
        let _ = handshake::parse(&rest[..end], "/mqtt");
    }
    let max = 1024u64 << (ctl & 0x0F);
    let whole = {
        let mut d = Decoder::new(max);
        let mut b = rest.to_vec();
        d.decode(&mut b).map(|n| {
            assert!(n <= rest.len());
            b.truncate(n);
            b
        })
    };
    let cut = (ctl as usize * rest.len()) / 255;
    let split = {
        let mut d = Decoder::new(max);
        let (mut a, mut b) = (rest[..cut].to_vec(), rest[cut..].to_vec());
        d.decode(&mut a).and_then(|n| {
            a.truncate(n);
            let m = d.decode(&mut b)?;
            a.extend_from_slice(&b[..m]);
            Ok(a)
        })
    };
    match (&whole, &split) {
        (Ok(x), Ok(y)) => assert_eq!(x, y, "split at {cut} changed the bytes"),
        // a refusal may come after some bytes were handed on: same refusal either way
        (Err(x), Err(y)) => assert_eq!(x, y, "split at {cut} changed the refusal"),
        // the whole input stops at the first close frame; the split one too
        _ => panic!("split at {cut}: {whole:?} vs {split:?}"),
    }
}
