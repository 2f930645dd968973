//! Tests of the codec: round trips of every packet for 3.1.1 and 5.0, framing (prefixes, packets
//! back to back, size limit), one hand-written rejection per normative statement, spec byte
//! vectors, and a deterministic fuzz loop.

use super::*;
use crate::packets::*;
use crate::reason;
use bytes::{Bytes, BytesMut};
use DecodeError::{Malformed, Protocol};

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

#[test]
fn every_packet_round_trips_in_both_versions() {
    for (v, p) in all_samples() {
        let wire = enc(&p, v);
        assert_eq!(encoded_len(&p, v), wire.len(), "{p:?}");
        let mut buf = BytesMut::from(&wire[..]);
        let back = decode(&mut buf, state(&p, v), MAX);
        assert_eq!(back, Ok(Some(p.clone())), "{v:?} {wire:02x?}");
        assert!(buf.is_empty(), "{p:?} left bytes");
    }
}

#[test]
fn remaining_lengths_of_every_width_round_trip() {
    // 1-, 2-, 3- and 4-byte remaining lengths, at both sides of each boundary.
    for (size, header) in [
        (108, 2),
        (109, 3),
        (16_364, 3),
        (16_365, 4),
        (2_097_132, 4),
        (2_097_133, 5),
    ] {
        let mut publish = rich_publish();
        publish.properties = PublishProperties::default();
        publish.payload = Bytes::from(vec![7; size]);
        let p = Packet::Publish(publish);
        let wire = enc(&p, Version::V311);
        // 2 + 15 bytes of topic, 2 of packet id: 19 + payload in the body.
        assert_eq!(wire.len(), header + 19 + size);
        assert_eq!(encoded_len(&p, Version::V311), wire.len());
        let mut buf = BytesMut::from(&wire[..]);
        let back = decode(&mut buf, Some(Version::V311), 4 << 20);
        assert!(
            back == Ok(Some(p)),
            "{size}-byte payload does not round-trip"
        );
    }
}

#[test]
fn every_strict_prefix_needs_more_and_consumes_nothing() {
    for (v, p) in all_samples() {
        let wire = enc(&p, v);
        for n in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..n]);
            assert_eq!(
                decode(&mut buf, state(&p, v), MAX),
                Ok(None),
                "{p:?} prefix {n}"
            );
            assert_eq!(&buf[..], &wire[..n]);
        }
    }
}

#[test]
fn packets_back_to_back_decode_one_after_the_other() {
    for v in [Version::V5, Version::V311] {
        let packets = if v.is_v5() {
            v5_samples()
        } else {
            v311_samples(v)
        };
        // One CONNECT opens the stream; every other packet follows it.
        let stream: Vec<Packet> = packets
            .iter()
            .filter(|p| !matches!(p, Packet::Connect(_)))
            .cloned()
            .collect();
        let mut buf = BytesMut::new();
        encode(&packets[0], v, &mut buf);
        for p in &stream {
            encode(p, v, &mut buf);
        }
        assert_eq!(decode(&mut buf, None, MAX), Ok(Some(packets[0].clone())));
        for p in &stream {
            assert_eq!(
                decode(&mut buf, Some(v), MAX).as_ref(),
                Ok(&Some(p.clone()))
            );
        }
        assert_eq!(decode(&mut buf, Some(v), MAX), Ok(None));
        assert!(buf.is_empty());
    }
}

#[test]
fn publish_payload_is_a_slice_of_the_read_buffer() {
    let wire = enc(&Packet::Publish(rich_publish()), Version::V5);
    let mut buf = BytesMut::from(&wire[..]);
    let start = buf.as_ptr() as usize;
    let range = start..start + buf.len();
    let Ok(Some(Packet::Publish(p))) = decode(&mut buf, Some(Version::V5), MAX) else {
        panic!("not a PUBLISH");
    };
    assert_eq!(p.payload.len(), 300);
    assert!(
        range.contains(&(p.payload.as_ptr() as usize)),
        "payload was copied"
    );
}

// ---- byte vectors from the specification ----

#[test]
fn spec_vector_v311_connect() {
    let wire = [
        0x10, 0x0f, 0x00, 0x04, 0x4d, 0x51, 0x54, 0x54, 0x04, 0x02, 0x00, 0x3c, 0x00, 0x03, 0x61,
        0x62, 0x63,
    ];
    let connect = Connect {
        version: Version::V311,
        clean_start: true,
        keep_alive: 60,
        client_id: s("abc"),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    };
    let packet = Packet::Connect(Box::new(connect));
    assert_eq!(ok(&wire, None), packet);
    assert_eq!(enc(&packet, Version::V311), wire);
}

#[test]
fn spec_vectors_small_packets() {
    let v3 = Some(Version::V311);
    let v5 = Some(Version::V5);
    let id10 = PubAck {
        packet_id: 10,
        code: 0,
        properties: AckProperties::default(),
    };
    let cases: Vec<(Vec<u8>, Option<Version>, Packet)> = vec![
        (vec![0xC0, 0x00], v3, Packet::PingReq),
        (vec![0xD0, 0x00], v3, Packet::PingResp),
        (
            vec![0xE0, 0x00],
            v3,
            Packet::Disconnect(Disconnect::default()),
        ),
        (
            vec![0xE0, 0x00],
            v5,
            Packet::Disconnect(Disconnect::default()),
        ),
        (
            // the encoder always writes the property length after a reason code
            vec![0xE0, 0x02, 0x04, 0x00],
            v5,
            Packet::Disconnect(Disconnect {
                code: 4,
                ..Default::default()
            }),
        ),
        (
            vec![0x40, 0x02, 0x00, 0x0A],
            v3,
            Packet::PubAck(id10.clone()),
        ),
        (
            vec![0x40, 0x02, 0x00, 0x0A],
            v5,
            Packet::PubAck(id10.clone()),
        ),
        (
            vec![0x62, 0x02, 0x00, 0x0A],
            v3,
            Packet::PubRel(id10.clone()),
        ),
        (
            vec![0x40, 0x04, 0x00, 0x0A, 0x10, 0x00],
            v5,
            Packet::PubAck(PubAck {
                code: 0x10,
                ..id10.clone()
            }),
        ),
        (
            vec![0x20, 0x02, 0x01, 0x00],
            v3,
            Packet::ConnAck(ConnAck {
                session_present: true,
                code: 0,
                properties: ConnAckProperties::default(),
            }),
        ),
        (
            vec![0x20, 0x03, 0x00, 0x00, 0x00],
            v5,
            Packet::ConnAck(ConnAck {
                session_present: false,
                code: 0,
                properties: ConnAckProperties::default(),
            }),
        ),
        // 3.1.1 Figure 3.11-ish: QoS 1 PUBLISH "a/b", packet id 10, payload "hi".
        (
            vec![
                0x32, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, b'h', b'i',
            ],
            v3,
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: s("a/b"),
                packet_id: Some(10),
                properties: PublishProperties::default(),
                payload: Bytes::from_static(b"hi"),
            }),
        ),
        // 3.1.1 Figure 3.22: SUBSCRIBE packet id 10, "a/b" QoS 1, "c/d" QoS 2.
        (
            vec![
                0x82, 0x0E, 0x00, 0x0A, 0x00, 0x03, b'a', b'/', b'b', 0x01, 0x00, 0x03, b'c', b'/',
                b'd', 0x02,
            ],
            v3,
            Packet::Subscribe(Subscribe {
                packet_id: 10,
                properties: SubscribeProperties::default(),
                filters: vec![
                    filter("a/b", QoS::AtLeastOnce),
                    filter("c/d", QoS::ExactlyOnce),
                ],
            }),
        ),
        (
            vec![0x90, 0x05, 0x00, 0x0A, 0x00, 0x02, 0x80],
            v3,
            Packet::SubAck(SubAck {
                packet_id: 10,
                properties: AckProperties::default(),
                codes: vec![0, 2, 0x80],
            }),
        ),
        (
            vec![0xB0, 0x02, 0x00, 0x0A],
            v3,
            Packet::UnsubAck(UnsubAck {
                packet_id: 10,
                properties: AckProperties::default(),
                codes: Vec::new(),
            }),
        ),
    ];
    for (wire, v, packet) in cases {
        assert_eq!(ok(&wire, v), packet, "{wire:02x?}");
        let version = v.unwrap_or(Version::V311);
        assert_eq!(enc(&packet, version), wire, "{packet:?}");
    }
}

#[test]
fn v311_connack_and_suback_encode_v3_codes() {
    let connack = |code| {
        let p = ConnAck {
            session_present: false,
            code,
            properties: ConnAckProperties::default(),
        };
        enc(&Packet::ConnAck(p), Version::V311)
    };
    let expect = [
        (0x00, 0),
        (0x84, 1),
        (0x85, 2),
        (0x88, 3),
        (0x89, 3),
        (0x9F, 3),
        (0x86, 4),
    ];
    for (code, rc) in expect
        .into_iter()
        .chain([(0x87, 5), (0x8C, 5), (0x80, 3), (0x95, 3)])
    {
        assert_eq!(connack(code), [0x20, 0x02, 0x00, rc], "code {code:#x}");
    }
    let suback = SubAck {
        packet_id: 1,
        properties: ack_props(),
        codes: vec![0, 1, 2, 0x80, 0x87, 0xA2],
    };
    assert_eq!(
        enc(&Packet::SubAck(suback), Version::V311),
        [0x90, 0x08, 0x00, 0x01, 0, 1, 2, 0x80, 0x80, 0x80]
    );
}

#[test]
fn v5_acks_use_the_short_forms() {
    let ack = |code, properties| {
        Packet::PubRec(PubAck {
            packet_id: 1,
            code,
            properties,
        })
    };
    assert_eq!(
        enc(&ack(0, AckProperties::default()), Version::V5),
        [0x50, 0x02, 0, 1]
    );
    // with a reason code, the property length (0) follows: valid, and readable by every client
    assert_eq!(
        enc(&ack(0x97, AckProperties::default()), Version::V5),
        [0x50, 0x04, 0, 1, 0x97, 0]
    );
    // the 3-byte short form still decodes
    assert_eq!(
        ok(&[0x50, 0x03, 0, 1, 0x97], Some(Version::V5)),
        ack(0x97, AckProperties::default())
    );
    assert_eq!(
        ok(&[0xE0, 0x01, 0x04], Some(Version::V5)),
        Packet::Disconnect(Disconnect {
            code: 4,
            ..Default::default()
        })
    );
    let with = enc(&ack(0, ack_props()), Version::V5);
    assert_eq!(with.get(1..5), Some(&[with.len() as u8 - 2, 0, 1, 0][..]));
    // A property block of length 0 after the code is accepted too.
    assert_eq!(
        ok(&[0x50, 0x04, 0, 1, 0, 0], Some(Version::V5)),
        ack(0, AckProperties::default())
    );
    // Properties of 3.1.1 packets are not written.
    assert_eq!(
        enc(&ack(0x97, ack_props()), Version::V311),
        [0x50, 0x02, 0, 1]
    );
}

#[test]
fn decode_error_reason_codes() {
    assert_eq!(Malformed("x").reason_code(), 0x81);
    assert_eq!(Protocol("x").reason_code(), 0x82);
    assert_eq!(DecodeError::TooLarge(9).reason_code(), 0x95);
    assert_eq!(DecodeError::UnsupportedVersion(6).reason_code(), 0x84);
    assert_eq!(DecodeError::BadProtocolName.reason_code(), 0x84);
}

// ---- fixed header ----

#[test]
fn first_packet_must_be_connect() {
    // MQTT-3.1.0-1, decided from the first byte alone.
    assert!(matches!(err(&[0xC0], None), Protocol(_)));
    assert!(matches!(err(&[0x30, 0x03, 0, 1, b'a'], None), Protocol(_)));
}

#[test]
fn second_connect_is_a_protocol_error() {
    // MQTT-3.1.0-2
    let wire = enc(&Packet::Connect(Box::new(rich_connect())), Version::V5);
    assert!(matches!(err(&wire, Some(Version::V5)), Protocol(_)));
    assert!(matches!(err(&wire, Some(Version::V311)), Protocol(_)));
}

#[test]
fn reserved_packet_types_are_malformed() {
    assert!(matches!(
        err(&[0x00, 0x00], Some(Version::V311)),
        Malformed(_)
    ));
    assert!(matches!(
        err(&[0x00, 0x00], Some(Version::V5)),
        Malformed(_)
    ));
    // Type 15 is AUTH in v5 only.
    assert!(matches!(
        err(&[0xF0, 0x00], Some(Version::V311)),
        Malformed(_)
    ));
    assert_eq!(
        ok(&[0xF0, 0x00], Some(Version::V5)),
        Packet::Auth(Auth::default())
    );
}

#[test]
fn publish_qos_3_is_malformed() {
    // MQTT-3.3.1-4, from the first byte alone.
    assert!(matches!(err(&[0x36], Some(Version::V311)), Malformed(_)));
    assert!(matches!(
        err(&[0x36, 0x07, 0, 1, b'a', 0, 1, 0], Some(Version::V5)),
        Malformed(_)
    ));
}

#[test]
fn dup_on_qos_0_is_malformed() {
    // MQTT-3.3.1-2
    assert!(matches!(
        err(&[0x38, 0x03, 0, 1, b'a'], Some(Version::V311)),
        Malformed(_)
    ));
    let dup_qos1 = ok(&[0x3A, 0x05, 0, 1, b'a', 0, 1], Some(Version::V311));
    assert!(matches!(
        dup_qos1,
        Packet::Publish(Publish { dup: true, .. })
    ));
}

#[test]
fn pubrel_subscribe_unsubscribe_need_flags_0010() {
    // MQTT-3.6.1-1, MQTT-3.8.1-1, MQTT-3.10.1-1
    for v in [Version::V311, Version::V5] {
        assert!(matches!(err(&[0x60, 0x02, 0, 1], Some(v)), Malformed(_)));
        assert!(matches!(
            err(&[0x80, 0x06, 0, 1, 0, 1, b'a', 0], Some(v)),
            Malformed(_)
        ));
        assert!(matches!(
            err(&[0xA0, 0x05, 0, 1, 0, 1, b'a'], Some(v)),
            Malformed(_)
        ));
        assert!(matches!(err(&[0x63, 0x02, 0, 1], Some(v)), Malformed(_)));
    }
}

#[test]
fn reserved_flags_of_other_packets_are_malformed() {
    // MQTT-2.2.2-2
    assert!(matches!(err(&[0x11], None), Malformed(_)));
    for first in [0x21, 0x42, 0x58, 0x71, 0x92, 0xB4, 0xC1, 0xD8, 0xE2] {
        assert!(
            matches!(err(&[first, 0x00], Some(Version::V311)), Malformed(_)),
            "{first:#x}"
        );
    }
    assert!(matches!(
        err(&[0xF1, 0x00], Some(Version::V5)),
        Malformed(_)
    ));
}

#[test]
fn remaining_length_is_at_most_4_bytes_and_minimal() {
    let v = Some(Version::V5);
    assert!(matches!(
        err(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], v),
        Malformed(_)
    ));
    assert!(matches!(err(&[0xC0, 0x80, 0x00], v), Malformed(_)));
    // Incomplete lengths wait for more bytes.
    assert_eq!(dec(&[0x30, 0xFF, 0xFF], v), Ok(None));
    // The largest 4-byte length is legal and only too large for the limit.
    assert_eq!(
        err(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F], v),
        DecodeError::TooLarge(268_435_460)
    );
}

#[test]
fn too_large_is_known_from_the_header_alone() {
    let mut buf = BytesMut::from(&[0x30, 0x80, 0x80, 0x01][..]);
    assert_eq!(
        decode(&mut buf, Some(Version::V311), 1024),
        Err(DecodeError::TooLarge(16_388))
    );
    // The limit counts the fixed header: 2 + 5 bytes fit in 7, not in 6.
    let wire = [0x30, 0x05, 0, 1, b'a', b'h', b'i'];
    assert!(decode(&mut BytesMut::from(&wire[..]), Some(Version::V311), 7).is_ok());
    let mut buf = BytesMut::from(&wire[..]);
    assert_eq!(
        decode(&mut buf, Some(Version::V311), 6),
        Err(DecodeError::TooLarge(7))
    );
}

// ---- CONNECT ----

fn v311_connect(flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 60, 0, 1, b'c'];
    body.extend_from_slice(payload);
    frame(0x10, &body)
}

#[test]
fn connect_protocol_name_and_level() {
    let with = |name: &[u8], level: u8| {
        let mut body = vec![0, name.len() as u8];
        body.extend_from_slice(name);
        body.extend_from_slice(&[level, 0x02, 0, 60, 0, 1, b'c']);
        frame(0x10, &body)
    };
    assert_eq!(err(&with(b"MQTX", 4), None), DecodeError::BadProtocolName);
    assert_eq!(err(&with(b"mqtt", 4), None), DecodeError::BadProtocolName);
    assert_eq!(
        err(&with(b"MQTT", 6), None),
        DecodeError::UnsupportedVersion(6)
    );
    assert_eq!(
        err(&with(b"MQTT", 3), None),
        DecodeError::UnsupportedVersion(3)
    );
    assert_eq!(
        err(&with(b"MQIsdp", 4), None),
        DecodeError::UnsupportedVersion(4)
    );
    let Packet::Connect(c) = ok(&with(b"MQIsdp", 3), None) else {
        panic!("not CONNECT")
    };
    assert_eq!(
        (c.version, c.client_id.as_str(), c.keep_alive),
        (Version::V31, "c", 60)
    );
}

#[test]
fn connect_reserved_flag_is_malformed() {
    // MQTT-3.1.2-3
    assert!(matches!(err(&v311_connect(0x03, &[]), None), Malformed(_)));
}

#[test]
fn connect_will_flags() {
    let will = [0, 1, b't', 0, 1, b'p'];
    // MQTT-3.1.2-14: will QoS 3.
    assert!(matches!(
        err(&v311_connect(0x1E, &will), None),
        Malformed(_)
    ));
    // MQTT-3.1.2-11/13: will QoS without the will flag.
    assert!(matches!(err(&v311_connect(0x0A, &[]), None), Malformed(_)));
    // MQTT-3.1.2-11/15: will retain without the will flag.
    assert!(matches!(err(&v311_connect(0x22, &[]), None), Malformed(_)));
    // Will flag, QoS 2, retain: accepted.
    let Packet::Connect(c) = ok(&v311_connect(0x36, &will), None) else {
        panic!()
    };
    let w = c.will.expect("will");
    assert_eq!(
        (w.topic.as_str(), &w.payload[..], w.qos, w.retain),
        ("t", &b"p"[..], QoS::ExactlyOnce, true)
    );
}

#[test]
fn password_without_user_name_only_in_v5() {
    // MQTT-3.1.2-22 (3.1.1); v5 allows it (3.1.2.9).
    assert!(matches!(
        err(&v311_connect(0x42, &[0, 1, b'p']), None),
        Malformed(_)
    ));
    let mut body = vec![
        0, 4, b'M', b'Q', b'T', b'T', 5, 0x42, 0, 60, 0, 0, 1, b'c', 0, 1, b'p',
    ];
    let Packet::Connect(c) = ok(&frame(0x10, &body), None) else {
        panic!()
    };
    assert_eq!(
        (c.username, c.password),
        (None, Some(Bytes::from_static(b"p")))
    );
    // A missing password field is malformed.
    body.truncate(body.len() - 3);
    assert!(matches!(err(&frame(0x10, &body), None), Malformed(_)));
}

#[test]
fn connect_with_trailing_bytes_is_malformed() {
    assert!(matches!(err(&v311_connect(0x02, &[0]), None), Malformed(_)));
}

#[test]
fn strings_must_be_well_formed_utf8_without_nul() {
    // MQTT-1.5.3-1: invalid sequence, and an encoded surrogate U+D800.
    for bad in [&[0xC3, 0x28][..], &[0xED, 0xA0, 0x80], &[0xFF]] {
        let mut body = vec![
            0,
            4,
            b'M',
            b'Q',
            b'T',
            b'T',
            4,
            0x02,
            0,
            60,
            0,
            bad.len() as u8,
        ];
        body.extend_from_slice(bad);
        assert!(
            matches!(err(&frame(0x10, &body), None), Malformed(_)),
            "{bad:02x?}"
        );
    }
    // MQTT-1.5.3-2: U+0000 in a topic.
    assert!(matches!(
        err(&[0x30, 0x04, 0, 2, b'a', 0], Some(Version::V311)),
        Malformed(_)
    ));
    // MQTT-1.5.3-3: U+FEFF is kept, not stripped.
    let p = ok(
        &[0x30, 0x06, 0, 4, 0xEF, 0xBB, 0xBF, b'a'],
        Some(Version::V311),
    );
    assert!(matches!(p, Packet::Publish(ref p) if p.topic == "\u{FEFF}a"));
    // A user name is a string too (MQTT-3.1.3-11); a password is binary.
    assert!(matches!(
        err(&v311_connect(0x82, &[0, 1, 0xFF]), None),
        Malformed(_)
    ));
    let Packet::Connect(c) = ok(&v311_connect(0xC2, &[0, 1, b'u', 0, 1, 0xFF]), None) else {
        panic!()
    };
    assert_eq!(c.password, Some(Bytes::from_static(&[0xFF])));
}

#[test]
fn v5_connect_property_values() {
    let protocol = |props: &[u8]| matches!(err(&v5_connect(props), None), Protocol(_));
    assert!(protocol(&[0x21, 0, 0])); // Receive Maximum 0
    assert!(protocol(&[0x27, 0, 0, 0, 0])); // Maximum Packet Size 0
    assert!(protocol(&[0x19, 2])); // Request Response Information 2
    assert!(protocol(&[0x17, 2])); // Request Problem Information 2
    assert!(protocol(&[0x16, 0, 1, 1])); // Authentication Data without a method
    let Packet::Connect(c) = ok(&v5_connect(&[0x21, 0, 1, 0x17, 1, 0x19, 0]), None) else {
        panic!()
    };
    assert_eq!(c.properties.receive_maximum, Some(1));
    assert_eq!(c.properties.request_problem_information, Some(1));
}

#[test]
fn v5_duplicate_properties_are_protocol_errors() {
    let twice = [0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2];
    assert!(matches!(err(&v5_connect(&twice), None), Protocol(_)));
    assert!(matches!(
        err(
            &v5_publish(&[0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 1]),
            Some(Version::V5)
        ),
        Protocol(_)
    ));
    // User properties and (in PUBLISH) subscription identifiers may repeat.
    let users = [0x26, 0, 1, b'a', 0, 0, 0x26, 0, 1, b'a', 0, 0];
    assert!(dec(&v5_connect(&users), None).is_ok());
    let Packet::Publish(p) = ok(&v5_publish(&[0x0B, 1, 0x0B, 0x80, 0x01]), Some(Version::V5))
    else {
        panic!()
    };
    assert_eq!(p.properties.subscription_identifiers, [1, 128]);
}

#[test]
fn v5_properties_must_belong_to_their_packet() {
    // Table 2-4: Topic Alias in CONNECT, Session Expiry in PUBLISH, Will Delay in CONNECT.
    assert!(matches!(err(&v5_connect(&[0x23, 0, 1]), None), Protocol(_)));
    assert!(matches!(
        err(&v5_publish(&[0x11, 0, 0, 0, 1]), Some(Version::V5)),
        Protocol(_)
    ));
    assert!(matches!(
        err(&v5_connect(&[0x18, 0, 0, 0, 1]), None),
        Protocol(_)
    ));
    // Reason String in SUBSCRIBE, Server Reference in a PUBACK.
    let sub = [0x82, 0x0B, 0, 1, 4, 0x1F, 0, 1, b'x', 0, 1, b'a', 0];
    assert!(matches!(err(&sub, Some(Version::V5)), Protocol(_)));
    let puback = [0x40, 0x08, 0, 1, 0, 4, 0x1C, 0, 1, b'x'];
    assert!(matches!(err(&puback, Some(Version::V5)), Protocol(_)));
}

#[test]
fn v5_unknown_property_is_malformed() {
    assert!(matches!(err(&v5_connect(&[0x7F, 0]), None), Malformed(_)));
    assert!(matches!(
        err(&v5_publish(&[0x00, 0]), Some(Version::V5)),
        Malformed(_)
    ));
}

#[test]
fn v5_property_length_must_fit_exactly() {
    // Declared length beyond the packet.
    let mut body = vec![
        0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 20, 0x11, 0, 0, 0, 1,
    ];
    body.extend_from_slice(&[0, 1, b'c']);
    assert!(matches!(err(&frame(0x10, &body), None), Malformed(_)));
    // A property running past the declared length (Session Expiry needs 4 bytes, 2 declared).
    let body = [
        0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 3, 0x11, 0, 0, 0, 1, 0, 1, b'c',
    ];
    assert!(matches!(err(&frame(0x10, &body), None), Malformed(_)));
}

#[test]
fn v5_will_property_values() {
    let will = |props: &[u8]| {
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x06, 0, 60, 0, 0, 1, b'c'];
        body.push(props.len() as u8);
        body.extend_from_slice(props);
        body.extend_from_slice(&[0, 1, b't', 0, 0]);
        frame(0x10, &body)
    };
    assert!(matches!(err(&will(&[0x01, 2]), None), Protocol(_))); // Payload Format Indicator 2
    assert!(matches!(err(&will(&[0x23, 0, 1]), None), Protocol(_))); // Topic Alias in a will
    let Packet::Connect(c) = ok(&will(&[0x18, 0, 0, 0, 9]), None) else {
        panic!()
    };
    assert_eq!(
        c.will.map(|w| w.properties.will_delay_interval),
        Some(Some(9))
    );
}

// ---- PUBLISH ----

#[test]
fn publish_qos_above_0_needs_a_nonzero_packet_id() {
    // MQTT-2.3.1-1
    assert!(matches!(
        err(&[0x32, 0x05, 0, 1, b'a', 0, 0], Some(Version::V311)),
        Protocol(_)
    ));
    assert!(matches!(
        err(&[0x34, 0x05, 0, 1, b'a', 0, 0], Some(Version::V5)),
        Protocol(_)
    ));
    // A QoS 1 PUBLISH too short for its packet id.
    assert!(matches!(
        err(&[0x32, 0x04, 0, 1, b'a', 0], Some(Version::V311)),
        Malformed(_)
    ));
}

#[test]
fn publish_topic_is_left_to_the_broker() {
    // Wildcards (MQTT-3.3.2-2) and empty topics decode; the broker rejects them with 0x90.
    let p = ok(&[0x30, 0x05, 0, 3, b'a', b'/', b'#'], Some(Version::V311));
    assert!(matches!(p, Packet::Publish(ref p) if p.topic == "a/#"));
    let p = ok(&[0x30, 0x02, 0, 0], Some(Version::V311));
    assert!(matches!(p, Packet::Publish(ref p) if p.topic.is_empty() && p.payload.is_empty()));
}

#[test]
fn v5_publish_property_values() {
    let v5 = Some(Version::V5);
    assert!(matches!(err(&v5_publish(&[0x23, 0, 0]), v5), Protocol(_))); // Topic Alias 0
    assert!(matches!(err(&v5_publish(&[0x01, 2]), v5), Protocol(_))); // Payload Format 2
    assert!(matches!(err(&v5_publish(&[0x0B, 0]), v5), Protocol(_))); // Subscription Id 0
    let Packet::Publish(p) = ok(&v5_publish(&[0x23, 0, 5, 0x01, 1]), v5) else {
        panic!()
    };
    assert_eq!(
        (
            p.properties.topic_alias,
            p.properties.payload_format_indicator
        ),
        (Some(5), Some(1))
    );
    assert_eq!(&p.payload[..], b"hi");
}

// ---- SUBSCRIBE / UNSUBSCRIBE ----

#[test]
fn subscribe_needs_a_filter_and_a_packet_id() {
    // MQTT-3.8.3-3 (v5: MQTT-3.8.3-2)
    assert!(matches!(
        err(&[0x82, 0x02, 0, 1], Some(Version::V311)),
        Protocol(_)
    ));
    assert!(matches!(
        err(&[0x82, 0x03, 0, 1, 0], Some(Version::V5)),
        Protocol(_)
    ));
    // MQTT-2.3.1-1
    assert!(matches!(
        err(&[0x82, 0x06, 0, 0, 0, 1, b'a', 0], Some(Version::V311)),
        Protocol(_)
    ));
    // A filter without its options byte.
    assert!(matches!(
        err(&[0x82, 0x05, 0, 1, 0, 1, b'a'], Some(Version::V311)),
        Malformed(_)
    ));
}

#[test]
fn v311_subscribe_options_byte() {
    // MQTT-3-8.3-4: upper 6 bits zero, QoS not 3.
    let sub = |options| [0x82, 0x06, 0, 1, 0, 1, b'a', options];
    for bad in [0x03, 0x04, 0x40, 0x81] {
        assert!(
            matches!(err(&sub(bad), Some(Version::V311)), Malformed(_)),
            "{bad:#x}"
        );
    }
    assert!(dec(&sub(0x02), Some(Version::V311)).is_ok());
}

#[test]
fn v5_subscribe_options_byte() {
    let sub = |f: &[u8], options| {
        let mut body = vec![0, 1, 0, 0, f.len() as u8];
        body.extend_from_slice(f);
        body.push(options);
        frame(0x82, &body)
    };
    let v5 = Some(Version::V5);
    // MQTT-3.8.3-5 (v5): reserved bits 6 and 7.
    assert!(matches!(err(&sub(b"a", 0x40), v5), Malformed(_)));
    assert!(matches!(err(&sub(b"a", 0x80), v5), Malformed(_)));
    // 3.8.3.1: Retain Handling 3 and Maximum QoS 3 are Protocol Errors.
    assert!(matches!(err(&sub(b"a", 0x30), v5), Protocol(_)));
    assert!(matches!(err(&sub(b"a", 0x03), v5), Protocol(_)));
    // MQTT-3.8.3-4 (v5): No Local on a shared subscription.
    assert!(matches!(err(&sub(b"$share/g/a", 0x04), v5), Protocol(_)));
    let Packet::Subscribe(s) = ok(&sub(b"a", 0x2E), v5) else {
        panic!()
    };
    let f = &s.filters[0];
    assert_eq!(
        (f.qos, f.no_local, f.retain_as_published),
        (QoS::ExactlyOnce, true, true)
    );
    assert_eq!(f.retain_handling, RetainHandling::DoNotSend);
}

#[test]
fn v5_subscribe_properties() {
    let sub = |props: &[u8]| {
        let mut body = vec![0, 1, props.len() as u8];
        body.extend_from_slice(props);
        body.extend_from_slice(&[0, 1, b'a', 1]);
        frame(0x82, &body)
    };
    let v5 = Some(Version::V5);
    assert!(matches!(err(&sub(&[0x0B, 0]), v5), Protocol(_))); // Subscription Id 0
    assert!(matches!(err(&sub(&[0x0B, 1, 0x0B, 2]), v5), Protocol(_))); // twice
    assert!(matches!(
        err(&sub(&[0x0B, 0x80, 0x80, 0x80, 0x80, 0x01]), v5),
        Malformed(_)
    ));
    let Packet::Subscribe(s) = ok(&sub(&[0x0B, 0xFF, 0xFF, 0xFF, 0x7F]), v5) else {
        panic!()
    };
    assert_eq!(s.properties.subscription_identifier, Some(268_435_455));
}

#[test]
fn unsubscribe_needs_a_filter_and_a_packet_id() {
    // MQTT-3.10.3-2
    assert!(matches!(
        err(&[0xA2, 0x02, 0, 1], Some(Version::V311)),
        Protocol(_)
    ));
    assert!(matches!(
        err(&[0xA2, 0x03, 0, 1, 0], Some(Version::V5)),
        Protocol(_)
    ));
    // MQTT-2.3.1-1
    assert!(matches!(
        err(&[0xA2, 0x05, 0, 0, 0, 1, b'a'], Some(Version::V311)),
        Protocol(_)
    ));
    // Only user properties in v5.
    let bad = [0xA2, 0x0A, 0, 1, 4, 0x1F, 0, 1, b'x', 0, 1, b'a'];
    assert!(matches!(err(&bad, Some(Version::V5)), Protocol(_)));
}

// ---- acks, DISCONNECT, AUTH, PING ----

#[test]
fn v5_ack_remaining_lengths() {
    let v5 = Some(Version::V5);
    let puback = |code| {
        Packet::PubAck(PubAck {
            packet_id: 1,
            code,
            properties: AckProperties::default(),
        })
    };
    assert_eq!(ok(&[0x40, 0x02, 0, 1], v5), puback(0));
    assert_eq!(ok(&[0x40, 0x03, 0, 1, 0x80], v5), puback(0x80));
    // The reason codes each ack may carry (MQTT-3.4.2-1, MQTT-3.6.2-1 ...).
    assert!(matches!(err(&[0x40, 0x03, 0, 1, 0x05], v5), Protocol(_)));
    assert!(matches!(err(&[0x62, 0x03, 0, 1, 0x10], v5), Protocol(_)));
    assert!(matches!(
        ok(&[0x62, 0x03, 0, 1, 0x92], v5),
        Packet::PubRel(PubAck { code: 0x92, .. })
    ));
    // 3.1.1 acks are exactly 2 bytes.
    assert!(matches!(
        err(&[0x40, 0x03, 0, 1, 0], Some(Version::V311)),
        Malformed(_)
    ));
    assert!(matches!(
        err(&[0x40, 0x01, 0], Some(Version::V311)),
        Malformed(_)
    ));
    assert!(matches!(
        err(&[0x70, 0x02, 0, 0], Some(Version::V311)),
        Protocol(_)
    ));
}

#[test]
fn disconnect_bodies() {
    let v5 = Some(Version::V5);
    assert_eq!(
        ok(&[0xE0, 0x00], v5),
        Packet::Disconnect(Disconnect::default())
    );
    assert!(matches!(err(&[0xE0, 0x01, 0x05], v5), Protocol(_))); // MQTT-3.14.2-1
    assert!(matches!(
        err(&[0xE0, 0x01, 0x00], Some(Version::V311)),
        Malformed(_)
    ));
    let with = ok(&[0xE0, 0x07, 0x8E, 5, 0x11, 0, 0, 0, 9], v5);
    let Packet::Disconnect(d) = with else {
        panic!()
    };
    assert_eq!(
        (d.code, d.properties.session_expiry_interval),
        (0x8E, Some(9))
    );
    assert!(matches!(
        err(&[0xE0, 0x04, 0, 2, 0x23, 0], v5),
        Malformed(_)
    )); // runs past
    assert!(matches!(
        err(&[0xE0, 0x05, 0, 3, 0x23, 0, 1], v5),
        Protocol(_)
    )); // not allowed
}

#[test]
fn auth_bodies() {
    let v5 = Some(Version::V5);
    assert_eq!(ok(&[0xF0, 0x00], v5), Packet::Auth(Auth::default()));
    assert!(matches!(err(&[0xF0, 0x02, 0x01, 0], v5), Protocol(_))); // MQTT-3.15.2-1
    let Packet::Auth(a) = ok(&[0xF0, 0x07, 0x19, 5, 0x15, 0, 2, b'm', b'x'], v5) else {
        panic!()
    };
    assert_eq!(
        (a.code, a.authentication_method.as_deref()),
        (0x19, Some("mx"))
    );
}

#[test]
fn ping_has_no_body() {
    for first in [0xC0, 0xD0] {
        assert!(matches!(
            err(&[first, 0x01, 0x00], Some(Version::V311)),
            Malformed(_)
        ));
    }
}

#[test]
fn server_to_client_packets_are_checked_too() {
    let v3 = Some(Version::V311);
    let v5 = Some(Version::V5);
    assert!(matches!(err(&[0x20, 0x02, 0x02, 0x00], v3), Malformed(_))); // reserved ack flags
    assert!(matches!(err(&[0x20, 0x02, 0x00, 0x06], v3), Protocol(_))); // return code 6
    assert!(matches!(
        err(&[0x20, 0x03, 0x00, 0x01, 0x00], v5),
        Protocol(_)
    )); // reason 0x01
    assert!(matches!(err(&[0x20, 0x02, 0x00, 0x00], v5), Malformed(_))); // no property length
    assert!(matches!(
        err(&[0x20, 0x05, 0x00, 0x00, 2, 0x24, 2], v5),
        Protocol(_)
    )); // Max QoS 2
    assert!(matches!(err(&[0x90, 0x03, 0, 1, 0x03], v3), Protocol(_))); // SUBACK code 3
    assert!(matches!(err(&[0x90, 0x02, 0, 1], v3), Protocol(_))); // SUBACK without codes
    assert!(matches!(err(&[0x90, 0x04, 0, 1, 0, 0x11], v5), Protocol(_))); // 0x11 is UNSUBACK's
    assert!(matches!(err(&[0xB0, 0x03, 0, 1, 0], v3), Malformed(_))); // 3.1.1 UNSUBACK body
    assert!(matches!(err(&[0xB0, 0x04, 0, 1, 0, 0x01], v5), Protocol(_))); // UNSUBACK code 1
}

// ---- fuzz ----

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Decodes everything in `bytes` under `state`, checking the invariants that must hold for any
/// input: no panic, `Ok(None)` consumes nothing, and whatever decodes re-encodes to bytes that
/// decode to the same packet.
fn decode_all(bytes: &[u8], mut state: Option<Version>, max: usize) -> usize {
    let mut buf = BytesMut::from(bytes);
    let mut decoded = 0;
    loop {
        let before = buf.clone();
        match decode(&mut buf, state, max) {
            Ok(None) => {
                assert_eq!(buf, before, "Ok(None) consumed bytes");
                return decoded;
            }
            Err(_) => return decoded,
            Ok(Some(p)) => {
                decoded += 1;
                let v = match (&p, state) {
                    (Packet::Connect(c), _) => c.version,
                    (_, Some(v)) => v,
                    (_, None) => panic!("decoded {p:?} before CONNECT"),
                };
                let again = dec(&enc(&p, v), if state.is_none() { None } else { Some(v) });
                assert_eq!(
                    again,
                    Ok(Some(p)),
                    "re-encoding of a decoded packet differs"
                );
                state = Some(v);
            }
        }
    }
}

#[test]
fn fuzz_never_panics_and_re_encodes() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let states = [
        None,
        Some(Version::V31),
        Some(Version::V311),
        Some(Version::V5),
    ];
    let seeds: Vec<(Version, Vec<u8>)> = all_samples()
        .iter()
        .map(|(v, p)| (*v, enc(p, *v)))
        .collect();
    let mut decoded = 0;
    for i in 0..200_000 {
        let state = states[rng.below(states.len())];
        let max = if rng.below(8) == 0 {
            rng.below(64)
        } else {
            MAX
        };
        let bytes: Vec<u8> = match i % 3 {
            // Pure noise.
            0 => (0..rng.below(48)).map(|_| rng.next() as u8).collect(),
            // A plausible header over a noise body of the declared length.
            1 => {
                let body: Vec<u8> = (0..rng.below(40)).map(|_| rng.next() as u8).collect();
                let first = [
                    0x10, 0x20, 0x30, 0x32, 0x34, 0x40, 0x62, 0x82, 0x90, 0xA2, 0xB0, 0xE0, 0xF0,
                ];
                frame(first[rng.below(first.len())], &body)
            }
            // A valid packet with a few bytes changed, cut or duplicated.
            _ => {
                let (v, seed) = &seeds[rng.below(seeds.len())];
                let mut b = seed.clone();
                for _ in 0..1 + rng.below(3) {
                    let at = rng.below(b.len());
                    match rng.below(4) {
                        0 => b[at] = rng.next() as u8,
                        1 => b[at] ^= 1 << rng.below(8),
                        2 => b.truncate(at.max(1)),
                        _ => b.insert(at, rng.next() as u8),
                    }
                }
                let dup = b.clone();
                b.extend_from_slice(&dup);
                let state = if b.first() == Some(&0x10) {
                    None
                } else {
                    Some(*v)
                };
                decoded += decode_all(&b, state, max);
                continue;
            }
        };
        decoded += decode_all(&bytes, state, max);
    }
    // The mutated packets must exercise the success paths too, not only the rejections.
    assert!(decoded > 10_000, "only {decoded} packets decoded");
}
