//! v5 properties, PUBLISH, SUBSCRIBE, UNSUBSCRIBE, acks, DISCONNECT, AUTH and PING bodies.

use super::*;

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
