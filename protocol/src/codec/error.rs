//! Why bytes could not be decoded, and the v5 reason code that tells the peer. Imports only
//! [`reason`](crate::reason) and the wire primitives' error.

use crate::reason;
use crate::wire::BadField;

/// Why bytes could not be decoded. Every variant closes the connection; for v5 the broker first
/// sends [`DecodeError::reason_code`] in a CONNACK or DISCONNECT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes cannot be parsed as the packet they claim to be (v5 reason 0x81).
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// The packet parses but breaks a protocol rule (v5 reason 0x82).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The packet's declared size (fixed header included) exceeds the limit (v5 reason 0x95).
    #[error("packet of {0} bytes exceeds the maximum packet size")]
    TooLarge(usize),
    /// CONNECT with a protocol level this broker does not speak (0x84; 3.1.1 return code 1).
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// CONNECT whose protocol name is neither `MQTT` nor `MQIsdp` (MQTT-3.1.2-1).
    #[error("invalid protocol name")]
    BadProtocolName,
}

impl DecodeError {
    /// The v5 reason code to send before closing, so the peer learns why.
    pub fn reason_code(&self) -> u8 {
        match self {
            DecodeError::Malformed(_) => reason::MALFORMED_PACKET,
            DecodeError::Protocol(_) => reason::PROTOCOL_ERROR,
            DecodeError::TooLarge(_) => reason::PACKET_TOO_LARGE,
            // A foreign protocol name is, to the client, a protocol version we do not support.
            DecodeError::UnsupportedVersion(_) | DecodeError::BadProtocolName => {
                reason::UNSUPPORTED_PROTOCOL_VERSION
            }
        }
    }
}

/// A bad field is a malformed packet, with the field's own text.
impl From<BadField> for DecodeError {
    fn from(e: BadField) -> Self {
        DecodeError::Malformed(e.0)
    }
}
