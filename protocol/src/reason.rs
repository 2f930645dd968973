//! The v5 reason codes (MQTT 5.0 §2.4) and the 3.1.1 CONNACK return codes: their values, their
//! names as mqedge prints them (the LB's health check, the bench), and the mapping between the
//! two CONNACK layouts. One table, so every role names a code the same way. Imports nothing.
#![allow(missing_docs)] // the constants are the spec's names

pub const SUCCESS: u8 = 0x00;
pub const GRANTED_QOS1: u8 = 0x01;
pub const GRANTED_QOS2: u8 = 0x02;
pub const DISCONNECT_WITH_WILL: u8 = 0x04;
pub const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;
pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
pub const UNSPECIFIED_ERROR: u8 = 0x80;
pub const MALFORMED_PACKET: u8 = 0x81;
pub const PROTOCOL_ERROR: u8 = 0x82;
pub const IMPLEMENTATION_SPECIFIC_ERROR: u8 = 0x83;
pub const UNSUPPORTED_PROTOCOL_VERSION: u8 = 0x84;
pub const CLIENT_IDENTIFIER_NOT_VALID: u8 = 0x85;
pub const BAD_USER_NAME_OR_PASSWORD: u8 = 0x86;
pub const NOT_AUTHORIZED: u8 = 0x87;
pub const SERVER_UNAVAILABLE: u8 = 0x88;
pub const SERVER_BUSY: u8 = 0x89;
pub const BANNED: u8 = 0x8A;
pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
pub const BAD_AUTHENTICATION_METHOD: u8 = 0x8C;
pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
pub const SESSION_TAKEN_OVER: u8 = 0x8E;
pub const TOPIC_FILTER_INVALID: u8 = 0x8F;
pub const TOPIC_NAME_INVALID: u8 = 0x90;
pub const PACKET_IDENTIFIER_IN_USE: u8 = 0x91;
pub const PACKET_IDENTIFIER_NOT_FOUND: u8 = 0x92;
pub const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
pub const PACKET_TOO_LARGE: u8 = 0x95;
pub const QUOTA_EXCEEDED: u8 = 0x97;
pub const PAYLOAD_FORMAT_INVALID: u8 = 0x99;
pub const RETAIN_NOT_SUPPORTED: u8 = 0x9A;
pub const QOS_NOT_SUPPORTED: u8 = 0x9B;
pub const USE_ANOTHER_SERVER: u8 = 0x9C;
pub const SERVER_MOVED: u8 = 0x9D;
pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0x9E;
pub const CONNECTION_RATE_EXCEEDED: u8 = 0x9F;
pub const SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: u8 = 0xA1;
pub const WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0xA2;

/// The failure codes a v5 CONNACK may carry (MQTT-3.2.2-8) and their names.
const CONNACK_NAMES: &[(u8, &str)] = &[
    (UNSPECIFIED_ERROR, "unspecified error"),
    (MALFORMED_PACKET, "malformed packet"),
    (PROTOCOL_ERROR, "protocol error"),
    (
        IMPLEMENTATION_SPECIFIC_ERROR,
        "implementation specific error",
    ),
    (UNSUPPORTED_PROTOCOL_VERSION, "unsupported protocol version"),
    (CLIENT_IDENTIFIER_NOT_VALID, "client identifier not valid"),
    (BAD_USER_NAME_OR_PASSWORD, "bad user name or password"),
    (NOT_AUTHORIZED, "not authorized"),
    (SERVER_UNAVAILABLE, "server unavailable"),
    (SERVER_BUSY, "server busy"),
    (BANNED, "banned"),
    (BAD_AUTHENTICATION_METHOD, "bad authentication method"),
    (TOPIC_NAME_INVALID, "topic name invalid"),
    (PACKET_TOO_LARGE, "packet too large"),
    (QUOTA_EXCEEDED, "quota exceeded"),
    (PAYLOAD_FORMAT_INVALID, "payload format invalid"),
    (RETAIN_NOT_SUPPORTED, "retain not supported"),
    (QOS_NOT_SUPPORTED, "QoS not supported"),
    (USE_ANOTHER_SERVER, "use another server"),
    (SERVER_MOVED, "server moved"),
    (CONNECTION_RATE_EXCEEDED, "connection rate exceeded"),
];

/// The 3.1.1 CONNACK return codes (3.2.2.3), by value, their names, and the v5 reason code each
/// stands for.
const V3_RETURN_CODES: [(&str, u8); 6] = [
    ("accepted", SUCCESS),
    (
        "unacceptable protocol version",
        UNSUPPORTED_PROTOCOL_VERSION,
    ),
    ("identifier rejected", CLIENT_IDENTIFIER_NOT_VALID),
    ("server unavailable", SERVER_UNAVAILABLE),
    ("bad user name or password", BAD_USER_NAME_OR_PASSWORD),
    ("not authorized", NOT_AUTHORIZED),
];

/// A v5 CONNACK failure code's name, for messages a person reads; `None` for a code a CONNACK
/// may not carry, and for success.
pub fn connack_name(code: u8) -> Option<&'static str> {
    CONNACK_NAMES
        .iter()
        .find(|&&(c, _)| c == code)
        .map(|&(_, name)| name)
}

/// A 3.1.1 CONNACK return code's name; `None` past 5 (reserved).
pub fn v3_return_code_name(rc: u8) -> Option<&'static str> {
    V3_RETURN_CODES.get(usize::from(rc)).map(|&(name, _)| name)
}

/// The v5 reason code a 3.1.1 return code stands for, so that one CONNACK type serves both
/// versions; `None` past 5 (reserved).
pub fn from_v3_return_code(rc: u8) -> Option<u8> {
    V3_RETURN_CODES.get(usize::from(rc)).map(|&(_, code)| code)
}

/// The 3.1.1 return code to send for a v5 CONNACK reason code: the nearest of the six, and
/// "server unavailable" for everything 3.1.1 has no word for.
pub fn to_v3_return_code(code: u8) -> u8 {
    match code {
        SUCCESS => 0,
        UNSUPPORTED_PROTOCOL_VERSION => 1,
        CLIENT_IDENTIFIER_NOT_VALID => 2,
        BAD_USER_NAME_OR_PASSWORD => 4,
        NOT_AUTHORIZED | BAD_AUTHENTICATION_METHOD => 5,
        _ => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(connack_name(0x87), Some("not authorized"));
        assert_eq!(connack_name(0x9B), Some("QoS not supported"));
        assert_eq!(connack_name(0x00), None);
        assert_eq!(connack_name(0x8B), None); // a DISCONNECT code, not a CONNACK one
        assert_eq!(v3_return_code_name(0), Some("accepted"));
        assert_eq!(v3_return_code_name(5), Some("not authorized"));
        assert_eq!(v3_return_code_name(6), None);
    }

    #[test]
    fn v3_return_codes_round_trip() {
        for rc in 0..=5 {
            let code = from_v3_return_code(rc).unwrap();
            assert_eq!(to_v3_return_code(code), rc);
        }
        assert_eq!(from_v3_return_code(6), None);
        assert_eq!(to_v3_return_code(SERVER_BUSY), 3);
        assert_eq!(to_v3_return_code(BAD_AUTHENTICATION_METHOD), 5);
    }
}
