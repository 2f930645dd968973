//! Tests of the codec: round trips of every packet for 3.1.1 and 5.0, framing (prefixes, packets
//! back to back, size limit), one hand-written rejection per normative statement, spec byte
//! vectors, and a deterministic fuzz loop. This file holds the shared helpers and samples; the
//! tests are in the files below.

use super::*;
use crate::packets::*;
use crate::reason;
use bytes::{Bytes, BytesMut};
use DecodeError::{Malformed, Protocol};

mod fuzz;
mod header_connect;
mod packets;
mod round_trips;

const MAX: usize = 1 << 20;

fn s(x: &str) -> String {
    x.to_owned()
}

fn users() -> Vec<UserProperty> {
    vec![
        (s("k"), s("v")),
        (s("k"), s("v2")),
        (s("région"), s("\u{FEFF}bom")),
    ]
}

/// Frames a body under a first byte (bodies here stay below 16,384 bytes).
fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let n = body.len();
    assert!(n < 16_384);
    if n < 128 {
        out.push(n as u8);
    } else {
        out.push((n % 128) as u8 | 0x80);
        out.push((n / 128) as u8);
    }
    out.extend_from_slice(body);
    out
}

fn enc(p: &Packet, v: Version) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(p, v, &mut out);
    out.to_vec()
}

fn dec(bytes: &[u8], v: Option<Version>) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    decode(&mut buf, v, MAX)
}

/// Decodes a complete packet that must be rejected.
fn err(bytes: &[u8], v: Option<Version>) -> DecodeError {
    match dec(bytes, v) {
        Err(e) => e,
        other => panic!("expected an error for {bytes:02x?}, got {other:?}"),
    }
}

fn ok(bytes: &[u8], v: Option<Version>) -> Packet {
    match dec(bytes, v) {
        Ok(Some(p)) => p,
        other => panic!("expected a packet for {bytes:02x?}, got {other:?}"),
    }
}

/// The version to decode `p` with: CONNECT is decoded before any version is known.
fn state(p: &Packet, v: Version) -> Option<Version> {
    match p {
        Packet::Connect(_) => None,
        _ => Some(v),
    }
}

fn v5_connect(props: &[u8]) -> Vec<u8> {
    let mut body = vec![
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        5,
        0x02,
        0,
        60,
        props.len() as u8,
    ];
    body.extend_from_slice(props);
    body.extend_from_slice(&[0, 1, b'c']);
    frame(0x10, &body)
}

fn v5_publish(props: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 3, b'a', b'/', b'b', 0, 7, props.len() as u8];
    body.extend_from_slice(props);
    body.extend_from_slice(b"hi");
    frame(0x32, &body)
}

fn rich_connect() -> Connect {
    Connect {
        version: Version::V5,
        clean_start: true,
        keep_alive: 30,
        client_id: s("dev-1"),
        will: Some(Will {
            topic: s("status/dev-1"),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: WillProperties {
                will_delay_interval: Some(5),
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(60),
                content_type: Some(s("text/plain")),
                response_topic: Some(s("r/t")),
                correlation_data: Some(Bytes::from_static(&[0, 1, 2])),
                user_properties: users(),
            },
        }),
        username: Some(s("user")),
        password: Some(Bytes::from_static(b"\x00\xffpw")),
        properties: ConnectProperties {
            session_expiry_interval: Some(3600),
            receive_maximum: Some(20),
            maximum_packet_size: Some(65_536),
            topic_alias_maximum: Some(10),
            request_response_information: Some(1),
            request_problem_information: Some(0),
            user_properties: users(),
            authentication_method: Some(s("SCRAM-SHA-256")),
            authentication_data: Some(Bytes::from_static(b"client-first")),
        },
    }
}

fn rich_publish() -> Publish {
    Publish {
        dup: true,
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: s("sensors/42/temp"),
        packet_id: Some(7),
        properties: PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(120),
            topic_alias: Some(3),
            response_topic: Some(s("reply/42")),
            correlation_data: Some(Bytes::from_static(b"corr")),
            user_properties: users(),
            subscription_identifiers: vec![1, 268_435_455, 200],
            content_type: Some(s("application/json")),
        },
        payload: Bytes::from(vec![0xAB; 300]),
    }
}

fn ack_props() -> AckProperties {
    AckProperties {
        reason_string: Some(s("because")),
        user_properties: users(),
    }
}

fn filter(f: &str, qos: QoS) -> SubscribeFilter {
    SubscribeFilter {
        filter: s(f),
        qos,
        no_local: false,
        retain_as_published: false,
        retain_handling: RetainHandling::SendAtSubscribe,
    }
}

/// Every packet type with every v5 property the type can carry.
fn v5_samples() -> Vec<Packet> {
    let ack = |code, properties| PubAck {
        packet_id: 9,
        code,
        properties,
    };
    let mut shared = filter("$share/g/a/#", QoS::AtMostOnce);
    shared.retain_handling = RetainHandling::DoNotSend;
    let mut local = filter("a/+/c", QoS::ExactlyOnce);
    local.no_local = true;
    local.retain_as_published = true;
    local.retain_handling = RetainHandling::SendIfNew;
    let mut no_user = rich_connect();
    no_user.username = None;
    no_user.will = None;
    no_user.properties = ConnectProperties::default();
    vec![
        Packet::Connect(Box::new(rich_connect())),
        Packet::Connect(Box::new(no_user)),
        Packet::ConnAck(ConnAck {
            session_present: true,
            code: 0,
            properties: ConnAckProperties {
                session_expiry_interval: Some(10),
                receive_maximum: Some(100),
                maximum_qos: Some(1),
                retain_available: Some(0),
                maximum_packet_size: Some(1_000_000),
                assigned_client_identifier: Some(s("auto-123")),
                topic_alias_maximum: Some(16),
                reason_string: Some(s("welcome")),
                user_properties: users(),
                wildcard_subscription_available: Some(1),
                subscription_identifiers_available: Some(1),
                shared_subscription_available: Some(0),
                server_keep_alive: Some(45),
                response_information: Some(s("resp/")),
                server_reference: Some(s("other:1883")),
                authentication_method: Some(s("SCRAM-SHA-256")),
                authentication_data: Some(Bytes::from_static(b"server-final")),
            },
        }),
        Packet::ConnAck(ConnAck {
            session_present: false,
            code: reason::NOT_AUTHORIZED,
            properties: ConnAckProperties::default(),
        }),
        Packet::Publish(rich_publish()),
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: s(""),
            packet_id: None,
            properties: PublishProperties {
                topic_alias: Some(3),
                ..Default::default()
            },
            payload: Bytes::new(),
        }),
        Packet::PubAck(ack(0, AckProperties::default())),
        Packet::PubAck(ack(
            reason::NO_MATCHING_SUBSCRIBERS,
            AckProperties::default(),
        )),
        Packet::PubRec(ack(reason::QUOTA_EXCEEDED, ack_props())),
        Packet::PubRel(ack(0, ack_props())),
        Packet::PubComp(ack(
            reason::PACKET_IDENTIFIER_NOT_FOUND,
            AckProperties::default(),
        )),
        Packet::Subscribe(Subscribe {
            packet_id: 11,
            properties: SubscribeProperties {
                subscription_identifier: Some(16_384),
                user_properties: users(),
            },
            filters: vec![filter("a/b", QoS::AtLeastOnce), shared, local],
        }),
        Packet::SubAck(SubAck {
            packet_id: 11,
            properties: ack_props(),
            codes: vec![1, 0, 2, reason::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED],
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 12,
            user_properties: users(),
            filters: vec![s("a/b"), s("$share/g/a/#")],
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: 12,
            properties: ack_props(),
            codes: vec![0, reason::NO_SUBSCRIPTION_EXISTED],
        }),
        Packet::PingReq,
        Packet::PingResp,
        Packet::Disconnect(Disconnect::default()),
        Packet::Disconnect(Disconnect {
            code: 4,
            ..Default::default()
        }),
        Packet::Disconnect(Disconnect {
            code: reason::SESSION_TAKEN_OVER,
            properties: DisconnectProperties {
                session_expiry_interval: Some(0),
                reason_string: Some(s("bye")),
                user_properties: users(),
                server_reference: Some(s("elsewhere")),
            },
        }),
        Packet::Auth(Auth::default()),
        Packet::Auth(Auth {
            code: 0x18,
            authentication_method: Some(s("SCRAM-SHA-256")),
            authentication_data: Some(Bytes::from_static(b"\x01\x02")),
            properties: ack_props(),
        }),
    ]
}

/// Every packet type 3.1.1 has, with the values 3.1.1 can carry.
fn v311_samples(v: Version) -> Vec<Packet> {
    let mut connect = rich_connect();
    connect.version = v;
    connect.properties = ConnectProperties::default();
    if let Some(w) = &mut connect.will {
        w.properties = WillProperties::default();
    }
    let mut bare = connect.clone();
    bare.will = None;
    bare.username = None;
    bare.password = None;
    bare.clean_start = false;
    let mut publish = rich_publish();
    publish.properties = PublishProperties::default();
    let ack = PubAck {
        packet_id: 65_535,
        code: 0,
        properties: AckProperties::default(),
    };
    let connacks = [0, 0x84, 0x85, 0x86, 0x87, 0x88].map(|code| {
        Packet::ConnAck(ConnAck {
            session_present: code == 0,
            code,
            properties: ConnAckProperties::default(),
        })
    });
    let mut out = vec![
        Packet::Connect(Box::new(connect)),
        Packet::Connect(Box::new(bare)),
    ];
    out.extend(connacks);
    out.extend([
        Packet::Publish(publish),
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: s("a"),
            packet_id: Some(1),
            properties: PublishProperties::default(),
            payload: Bytes::new(),
        }),
        Packet::PubAck(ack.clone()),
        Packet::PubRec(ack.clone()),
        Packet::PubRel(ack.clone()),
        Packet::PubComp(ack),
        Packet::Subscribe(Subscribe {
            packet_id: 2,
            properties: SubscribeProperties::default(),
            filters: vec![
                filter("a/b", QoS::AtMostOnce),
                filter("c/#", QoS::AtLeastOnce),
                filter("+", QoS::ExactlyOnce),
            ],
        }),
        Packet::SubAck(SubAck {
            packet_id: 2,
            properties: AckProperties::default(),
            codes: vec![0, 1, 2, 0x80],
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 3,
            user_properties: Vec::new(),
            filters: vec![s("a/b")],
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: 3,
            properties: AckProperties::default(),
            codes: Vec::new(),
        }),
        Packet::PingReq,
        Packet::PingResp,
        Packet::Disconnect(Disconnect::default()),
    ]);
    out
}

fn all_samples() -> Vec<(Version, Packet)> {
    let mut out: Vec<_> = v5_samples().into_iter().map(|p| (Version::V5, p)).collect();
    for v in [Version::V311, Version::V31] {
        out.extend(v311_samples(v).into_iter().map(|p| (v, p)));
    }
    out
}
