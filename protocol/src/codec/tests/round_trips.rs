//! Round trips of every packet, framing, spec byte vectors and the short forms of acks.

use super::*;

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
