//! Fixed-header rules, reason codes of decode errors, and the CONNECT packet's fields.

use super::*;

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
