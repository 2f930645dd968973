//! Decoding: [`decode`] frames one packet (fixed header, remaining length, size limit), then one
//! function per packet type reads its fields through the [`Reader`] and checks the statements
//! that concern that packet alone. May import `error`, `reader`, `properties` (for the property
//! blocks), `packets`, `reason`, `topic` and `wire`.

use bytes::{Buf, BytesMut};

use super::error::DecodeError::{self, Malformed, Protocol};
use super::reader::Reader;
use crate::packets::*;
use crate::reason;
use crate::topic::SHARE_PREFIX;
use crate::wire;

// The v5 reason codes each packet may carry: its sender "MUST use one of" them.
const CONNACK_CODES: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
const PUBACK_CODES: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
const PUBREL_CODES: &[u8] = &[0x00, 0x92];
const SUBACK_CODES: &[u8] = &[
    0, 1, 2, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
const SUBACK_V3: &[u8] = &[0, 1, 2, 0x80];
const UNSUBACK_CODES: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
const DISCONNECT_CODES: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
const AUTH_CODES: &[u8] = &[0x00, 0x18, 0x19];

/// Decodes one packet from the front of `buf`, consuming its bytes. `Ok(None)` = need more bytes
/// (nothing consumed). `version` is the connection's negotiated version (`None` before CONNECT:
/// then only CONNECT is acceptable). `max_size` bounds the whole packet (fixed header included);
/// a packet declaring more is `TooLarge` as soon as its remaining length is known. After an
/// error the buffer's contents are unspecified: the caller closes the connection.
pub fn decode(
    buf: &mut BytesMut,
    version: Option<Version>,
    max_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    check_fixed_header(first, version)?;
    let Some((remaining, len_bytes)) = wire::varint(buf.get(1..).unwrap_or_default())? else {
        return Ok(None);
    };
    let total = 1 + len_bytes + remaining;
    if total > max_size {
        return Err(DecodeError::TooLarge(total));
    }
    if buf.len() < total {
        return Ok(None);
    }
    let mut frame = buf.split_to(total).freeze();
    frame.advance(1 + len_bytes);
    let mut r = Reader::new(frame);
    let v = match (first >> 4, version) {
        (1, _) => return decode_connect(r).map(|c| Some(Packet::Connect(Box::new(c)))),
        (_, Some(v)) => v,
        (_, None) => return Err(Protocol("first packet must be CONNECT")),
    };
    let packet = match first >> 4 {
        2 => Packet::ConnAck(decode_connack(&mut r, v)?),
        3 => Packet::Publish(decode_publish(first, &mut r, v)?),
        4 => Packet::PubAck(decode_ack(&mut r, v, PUBACK_CODES)?), // MQTT-3.4.2-1 (v5)
        5 => Packet::PubRec(decode_ack(&mut r, v, PUBACK_CODES)?), // MQTT-3.5.2-1 (v5)
        6 => Packet::PubRel(decode_ack(&mut r, v, PUBREL_CODES)?), // MQTT-3.6.2-1 (v5)
        7 => Packet::PubComp(decode_ack(&mut r, v, PUBREL_CODES)?), // MQTT-3.7.2-1 (v5)
        8 => Packet::Subscribe(decode_subscribe(&mut r, v)?),
        9 => Packet::SubAck(decode_suback(&mut r, v)?),
        10 => Packet::Unsubscribe(decode_unsubscribe(&mut r, v)?),
        11 => Packet::UnsubAck(decode_unsuback(&mut r, v)?),
        12 => Packet::PingReq,
        13 => Packet::PingResp,
        14 => Packet::Disconnect(decode_disconnect(&mut r, v)?),
        _ => Packet::Auth(decode_auth(&mut r)?),
    };
    r.end()?;
    Ok(Some(packet))
}

/// Checks what the first byte alone tells — packet type against the connection state, and the
/// fixed header flags — before the remaining length is even complete.
fn check_fixed_header(first: u8, version: Option<Version>) -> Result<(), DecodeError> {
    let (kind, flags) = (first >> 4, first & 0x0F);
    match (kind, version) {
        (1, Some(_)) => return Err(Protocol("second CONNECT")), // MQTT-3.1.0-2
        (1, None) => {}
        (_, None) => return Err(Protocol("first packet must be CONNECT")), // MQTT-3.1.0-1
        (0, _) => return Err(Malformed("reserved packet type 0")),
        (15, Some(v)) if !v.is_v5() => return Err(Malformed("reserved packet type 15")),
        _ => {}
    }
    let error = match kind {
        3 if flags & 0x06 == 0x06 => "PUBLISH with QoS 3", // MQTT-3.3.1-4
        3 if flags & 0x0E == 0x08 => "DUP set on a QoS 0 PUBLISH", // MQTT-3.3.1-2
        3 => return Ok(()),
        // MQTT-3.6.1-1, MQTT-3.8.1-1, MQTT-3.10.1-1
        6 | 8 | 10 if flags == 0b0010 => return Ok(()),
        6 | 8 | 10 => "fixed header flags must be 0010",
        _ if flags == 0 => return Ok(()),
        _ => "reserved fixed header flags set", // MQTT-2.2.2-2
    };
    Err(Malformed(error))
}

fn decode_connect(mut r: Reader) -> Result<Connect, DecodeError> {
    let name = r.binary()?;
    let level = r.u8()?;
    // MQTT-3.1.2-1 (name), MQTT-3.1.2-2 (level: the caller answers CONNACK 0x01 / 0x84).
    let version = match (&name[..], level) {
        (b"MQTT", 4) => Version::V311,
        (b"MQTT", 5) => Version::V5,
        (b"MQIsdp", 3) => Version::V31,
        (b"MQTT" | b"MQIsdp", level) => return Err(DecodeError::UnsupportedVersion(level)),
        _ => return Err(DecodeError::BadProtocolName),
    };
    let v5 = version.is_v5();
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(Malformed("reserved CONNECT flag set")); // MQTT-3.1.2-3
    }
    let (will_flag, will_retain) = (flags & 0x04 != 0, flags & 0x20 != 0);
    let (password_flag, username_flag) = (flags & 0x40 != 0, flags & 0x80 != 0);
    // MQTT-3.1.2-14 (v5: MQTT-3.1.2-12)
    let will_qos = QoS::from_u8((flags >> 3) & 0x03).ok_or(Malformed("will QoS 3"))?;
    if !will_flag && (will_qos != QoS::AtMostOnce || will_retain) {
        // MQTT-3.1.2-11, -13, -15 (v5: MQTT-3.1.2-11, -13)
        return Err(Malformed("will QoS or retain without the will flag"));
    }
    if !v5 && password_flag && !username_flag {
        return Err(Malformed("password flag without user name flag")); // MQTT-3.1.2-22
    }
    let keep_alive = r.u16()?;
    let properties: ConnectProperties = r.props(version)?;
    if properties.authentication_data.is_some() && properties.authentication_method.is_none() {
        return Err(Protocol("authentication data without a method")); // 3.1.2.11.10 (v5)
    }
    let client_id = r.string()?; // MQTT-3.1.3-4
    let will = if will_flag {
        let properties = r.props(version)?;
        let topic = r.string()?; // MQTT-3.1.3-10
        let payload = r.binary()?;
        let (qos, retain) = (will_qos, will_retain);
        Some(Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        })
    } else {
        None
    };
    // The user name is a string (MQTT-3.1.3-11), the password binary data.
    let username = username_flag.then(|| r.string()).transpose()?;
    let password = password_flag.then(|| r.binary()).transpose()?;
    r.end()?;
    let clean_start = flags & 0x02 != 0;
    Ok(Connect {
        version,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

fn decode_connack(r: &mut Reader, v: Version) -> Result<ConnAck, DecodeError> {
    let flags = r.u8()?;
    if flags & 0xFE != 0 {
        return Err(Malformed("reserved CONNACK flags set")); // 3.2.2.1 (v5: MQTT-3.2.2-1)
    }
    let session_present = flags & 0x01 != 0;
    if v.is_v5() {
        let code = r.code(CONNACK_CODES)?; // MQTT-3.2.2-8 (v5)
        return Ok(ConnAck {
            session_present,
            code,
            properties: r.props(v)?,
        });
    }
    // The 3.1.1 return codes (3.2.2.3) as the v5 reason codes packets.rs maps them from.
    let code =
        reason::from_v3_return_code(r.u8()?).ok_or(Protocol("reserved CONNACK return code"))?;
    Ok(ConnAck {
        session_present,
        code,
        properties: ConnAckProperties::default(),
    })
}

fn decode_publish(first: u8, r: &mut Reader, v: Version) -> Result<Publish, DecodeError> {
    // QoS 3 was rejected with the fixed header (MQTT-3.3.1-4).
    let qos = QoS::from_u8((first >> 1) & 0x03).ok_or(Malformed("PUBLISH with QoS 3"))?;
    // Wildcards (MQTT-3.3.2-2) and empty topics are the broker's to judge: it knows the topic
    // aliases and answers v5 clients with 0x90 Topic Name Invalid.
    let topic = r.string()?;
    let packet_id = (qos != QoS::AtMostOnce)
        .then(|| r.packet_id())
        .transpose()?;
    let properties = r.props(v)?;
    Ok(Publish {
        dup: first & 0x08 != 0,
        qos,
        retain: first & 0x01 != 0,
        topic,
        packet_id,
        properties,
        payload: r.payload(),
    })
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP: in v5 a remaining length of 2 means reason 0 and no
/// properties, 3 means a reason code alone (3.4.2.1).
fn decode_ack(r: &mut Reader, v: Version, codes: &[u8]) -> Result<PubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    let mut ack = PubAck {
        packet_id,
        code: 0,
        properties: AckProperties::default(),
    };
    if v.is_v5() && !r.is_empty() {
        ack.code = r.code(codes)?;
        if !r.is_empty() {
            r.properties(&mut ack.properties)?;
        }
    }
    Ok(ack)
}

fn decode_subscribe(r: &mut Reader, v: Version) -> Result<Subscribe, DecodeError> {
    let packet_id = r.packet_id()?; // MQTT-2.3.1-1
    let properties = r.props(v)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string()?; // MQTT-3.8.3-1
        let options = r.u8()?;
        filters.push(subscribe_options(filter, options, v)?);
    }
    if filters.is_empty() {
        return Err(Protocol("SUBSCRIBE without topic filters")); // MQTT-3.8.3-3 (v5: -2)
    }
    Ok(Subscribe {
        packet_id,
        properties,
        filters,
    })
}

fn subscribe_options(
    filter: String,
    options: u8,
    v: Version,
) -> Result<SubscribeFilter, DecodeError> {
    // 3.1.1 has the QoS bits only (MQTT-3-8.3-4); v5 reserves bits 6 and 7 (MQTT-3.8.3-5 v5).
    let reserved = if v.is_v5() { 0xC0 } else { 0xFC };
    if options & reserved != 0 {
        return Err(Malformed("reserved subscription option bits set"));
    }
    if !v.is_v5() && options == 3 {
        return Err(Malformed("requested QoS 3")); // MQTT-3-8.3-4
    }
    // 3.8.3.1 (v5): Maximum QoS 3 and Retain Handling 3 are Protocol Errors.
    let qos = QoS::from_u8(options & 0x03).ok_or(Protocol("maximum QoS 3"))?;
    let retain_handling = match (options >> 4) & 0x03 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(Protocol("retain handling 3")),
    };
    let (no_local, retain_as_published) = (options & 0x04 != 0, options & 0x08 != 0);
    if no_local && filter.starts_with(SHARE_PREFIX) {
        return Err(Protocol("no local on a shared subscription")); // MQTT-3.8.3-4 (v5)
    }
    Ok(SubscribeFilter {
        filter,
        qos,
        no_local,
        retain_as_published,
        retain_handling,
    })
}

/// The reason codes that end a SUBACK or v5 UNSUBACK: one per filter, so at least one.
fn codes(r: &mut Reader, allowed: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let mut codes = Vec::with_capacity(r.remaining());
    while !r.is_empty() {
        codes.push(r.code(allowed)?);
    }
    if codes.is_empty() {
        return Err(Protocol("acknowledgement without reason codes"));
    }
    Ok(codes)
}

fn decode_suback(r: &mut Reader, v: Version) -> Result<SubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = r.props(v)?;
    let allowed = if v.is_v5() { SUBACK_CODES } else { SUBACK_V3 };
    let codes = codes(r, allowed)?; // MQTT-3.9.3-2 (3.1.1 and v5)
    Ok(SubAck {
        packet_id,
        properties,
        codes,
    })
}

fn decode_unsubscribe(r: &mut Reader, v: Version) -> Result<Unsubscribe, DecodeError> {
    let packet_id = r.packet_id()?; // MQTT-2.3.1-1
    let mut unsub = Unsubscribe {
        packet_id,
        user_properties: Vec::new(),
        filters: Vec::new(),
    };
    if v.is_v5() {
        r.properties(&mut unsub)?;
    }
    while !r.is_empty() {
        unsub.filters.push(r.string()?); // MQTT-3.10.3-1
    }
    if unsub.filters.is_empty() {
        return Err(Protocol("UNSUBSCRIBE without topic filters")); // MQTT-3.10.3-2
    }
    Ok(unsub)
}

/// 3.1.1 UNSUBACK is a packet identifier alone; v5 adds properties and one code per filter.
fn decode_unsuback(r: &mut Reader, v: Version) -> Result<UnsubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    let mut ack = UnsubAck {
        packet_id,
        properties: AckProperties::default(),
        codes: Vec::new(),
    };
    if v.is_v5() {
        r.properties(&mut ack.properties)?;
        ack.codes = codes(r, UNSUBACK_CODES)?; // MQTT-3.11.3-2 (v5)
    }
    Ok(ack)
}

/// 3.1.1 DISCONNECT has no body; in v5 remaining length 0 means reason 0, 1 a code alone.
fn decode_disconnect(r: &mut Reader, v: Version) -> Result<Disconnect, DecodeError> {
    let mut d = Disconnect::default();
    if v.is_v5() && !r.is_empty() {
        d.code = r.code(DISCONNECT_CODES)?; // MQTT-3.14.2-1
        if !r.is_empty() {
            r.properties(&mut d.properties)?;
        }
    }
    Ok(d)
}

/// AUTH (v5 only): remaining length 0 means reason 0 (Success) and no properties (3.15.2.1).
fn decode_auth(r: &mut Reader) -> Result<Auth, DecodeError> {
    let mut a = Auth::default();
    if !r.is_empty() {
        a.code = r.code(AUTH_CODES)?; // MQTT-3.15.2-1
        if !r.is_empty() {
            r.properties(&mut a)?;
        }
    }
    Ok(a)
}
