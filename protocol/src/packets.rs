//! MQTT control packets as the broker sees them, one type for both 3.1.1 and 5.0 (v3.1.1
//! packets simply carry no properties and no reason codes). Payloads are `Bytes`, so one
//! PUBLISH fans out to many subscribers without copying.

use bytes::Bytes;

/// Protocol level from CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    /// MQTT 3.1 (`MQIsdp`, level 3), treated like 3.1.1.
    V31,
    /// MQTT 3.1.1 (level 4).
    V311,
    /// MQTT 5.0 (level 5).
    V5,
}

impl Version {
    /// The protocol level byte.
    pub fn level(self) -> u8 {
        match self {
            Version::V31 => 3,
            Version::V311 => 4,
            Version::V5 => 5,
        }
    }
    /// Whether properties and reason codes exist on the wire.
    pub fn is_v5(self) -> bool {
        self == Version::V5
    }
}

/// Quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum QoS {
    /// At most once.
    #[default]
    AtMostOnce = 0,
    /// At least once.
    AtLeastOnce = 1,
    /// Exactly once.
    ExactlyOnce = 2,
}

impl QoS {
    /// From the two wire bits; `None` for 3.
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// A v5 user property (name, value); order and duplicates are preserved as the spec requires.
pub type UserProperty = (String, String);

/// CONNECT properties (v5).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectProperties {
    /// 0x11 Session Expiry Interval (seconds); absent = 0.
    pub session_expiry_interval: Option<u32>,
    /// 0x21 Receive Maximum.
    pub receive_maximum: Option<u16>,
    /// 0x27 Maximum Packet Size.
    pub maximum_packet_size: Option<u32>,
    /// 0x22 Topic Alias Maximum.
    pub topic_alias_maximum: Option<u16>,
    /// 0x19 Request Response Information.
    pub request_response_information: Option<u8>,
    /// 0x17 Request Problem Information.
    pub request_problem_information: Option<u8>,
    /// 0x26 User Property.
    pub user_properties: Vec<UserProperty>,
    /// 0x15 Authentication Method.
    pub authentication_method: Option<String>,
    /// 0x16 Authentication Data.
    pub authentication_data: Option<Bytes>,
}

/// Will properties (v5), also the properties a will PUBLISH carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WillProperties {
    /// 0x18 Will Delay Interval (seconds).
    pub will_delay_interval: Option<u32>,
    /// 0x01 Payload Format Indicator.
    pub payload_format_indicator: Option<u8>,
    /// 0x02 Message Expiry Interval.
    pub message_expiry_interval: Option<u32>,
    /// 0x03 Content Type.
    pub content_type: Option<String>,
    /// 0x08 Response Topic.
    pub response_topic: Option<String>,
    /// 0x09 Correlation Data.
    pub correlation_data: Option<Bytes>,
    /// 0x26 User Property.
    pub user_properties: Vec<UserProperty>,
}

/// The will message of a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Topic (no wildcards).
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// v5 will properties.
    pub properties: WillProperties,
}

/// CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Protocol level.
    pub version: Version,
    /// Clean Session (3.1.1) / Clean Start (5.0).
    pub clean_start: bool,
    /// Keep Alive seconds (0 = off).
    pub keep_alive: u16,
    /// Client identifier (may be empty).
    pub client_id: String,
    /// Will, when the will flag is set.
    pub will: Option<Will>,
    /// User Name.
    pub username: Option<String>,
    /// Password (binary).
    pub password: Option<Bytes>,
    /// v5 properties.
    pub properties: ConnectProperties,
}

/// CONNACK properties (v5).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnAckProperties {
    /// 0x11 Session Expiry Interval (when the server changes it).
    pub session_expiry_interval: Option<u32>,
    /// 0x21 Receive Maximum.
    pub receive_maximum: Option<u16>,
    /// 0x24 Maximum QoS.
    pub maximum_qos: Option<u8>,
    /// 0x25 Retain Available.
    pub retain_available: Option<u8>,
    /// 0x27 Maximum Packet Size.
    pub maximum_packet_size: Option<u32>,
    /// 0x12 Assigned Client Identifier.
    pub assigned_client_identifier: Option<String>,
    /// 0x22 Topic Alias Maximum.
    pub topic_alias_maximum: Option<u16>,
    /// 0x1F Reason String.
    pub reason_string: Option<String>,
    /// 0x26 User Property.
    pub user_properties: Vec<UserProperty>,
    /// 0x28 Wildcard Subscription Available.
    pub wildcard_subscription_available: Option<u8>,
    /// 0x29 Subscription Identifiers Available.
    pub subscription_identifiers_available: Option<u8>,
    /// 0x2A Shared Subscription Available.
    pub shared_subscription_available: Option<u8>,
    /// 0x13 Server Keep Alive.
    pub server_keep_alive: Option<u16>,
    /// 0x1A Response Information.
    pub response_information: Option<String>,
    /// 0x1C Server Reference.
    pub server_reference: Option<String>,
    /// 0x15 Authentication Method.
    pub authentication_method: Option<String>,
    /// 0x16 Authentication Data.
    pub authentication_data: Option<Bytes>,
}

/// CONNACK. `code` is the v5 reason code; for 3.1.1 the encoder maps it to the v3 return code
/// (0x00→0, 0x84→1, 0x85→2, 0x88/0x89/0x9F→3, 0x86→4, 0x87/0x8C→5, other failures→3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    /// Session Present.
    pub session_present: bool,
    /// v5 reason code (0 = success).
    pub code: u8,
    /// v5 properties.
    pub properties: ConnAckProperties,
}

/// PUBLISH properties (v5).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishProperties {
    /// 0x01 Payload Format Indicator.
    pub payload_format_indicator: Option<u8>,
    /// 0x02 Message Expiry Interval.
    pub message_expiry_interval: Option<u32>,
    /// 0x23 Topic Alias.
    pub topic_alias: Option<u16>,
    /// 0x08 Response Topic.
    pub response_topic: Option<String>,
    /// 0x09 Correlation Data.
    pub correlation_data: Option<Bytes>,
    /// 0x26 User Property.
    pub user_properties: Vec<UserProperty>,
    /// 0x0B Subscription Identifier (several allowed server → client; at most one client → server).
    pub subscription_identifiers: Vec<u32>,
    /// 0x03 Content Type.
    pub content_type: Option<String>,
}

/// PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// DUP flag.
    pub dup: bool,
    /// QoS.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name (empty in v5 when a topic alias stands for it).
    pub topic: String,
    /// Packet identifier (QoS > 0 only).
    pub packet_id: Option<u16>,
    /// v5 properties.
    pub properties: PublishProperties,
    /// Application payload.
    pub payload: Bytes,
}

/// Properties of the acks and DISCONNECT/UNSUBACK/SUBACK/AUTH: reason string + user properties.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckProperties {
    /// 0x1F Reason String.
    pub reason_string: Option<String>,
    /// 0x26 User Property.
    pub user_properties: Vec<UserProperty>,
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP (which one is the `Packet` variant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubAck {
    /// Packet identifier.
    pub packet_id: u16,
    /// v5 reason code (0 = success); omitted on the wire when 0 and no properties.
    pub code: u8,
    /// v5 properties.
    pub properties: AckProperties,
}

/// v5 retain handling option of a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetainHandling {
    /// 0: send retained messages at subscribe.
    #[default]
    SendAtSubscribe,
    /// 1: only if the subscription did not exist.
    SendIfNew,
    /// 2: never.
    DoNotSend,
}

/// One topic filter of a SUBSCRIBE with its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeFilter {
    /// The filter (may be `$share/GROUP/FILTER`).
    pub filter: String,
    /// Maximum QoS.
    pub qos: QoS,
    /// v5 No Local.
    pub no_local: bool,
    /// v5 Retain As Published.
    pub retain_as_published: bool,
    /// v5 Retain Handling.
    pub retain_handling: RetainHandling,
}

/// SUBSCRIBE properties (v5).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeProperties {
    /// 0x0B Subscription Identifier.
    pub subscription_identifier: Option<u32>,
    /// 0x26 User Property.
    pub user_properties: Vec<UserProperty>,
}

/// SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet identifier.
    pub packet_id: u16,
    /// v5 properties.
    pub properties: SubscribeProperties,
    /// Filters (at least one).
    pub filters: Vec<SubscribeFilter>,
}

/// SUBACK: one v5 reason code per filter (0/1/2 = granted QoS; ≥0x80 failure). For 3.1.1 the
/// encoder writes granted QoS as is and any failure as 0x80.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// Packet identifier.
    pub packet_id: u16,
    /// v5 properties.
    pub properties: AckProperties,
    /// Reason codes, one per filter.
    pub codes: Vec<u8>,
}

/// UNSUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet identifier.
    pub packet_id: u16,
    /// v5 user properties.
    pub user_properties: Vec<UserProperty>,
    /// Filters (at least one).
    pub filters: Vec<String>,
}

/// UNSUBACK: v5 reason codes (3.1.1 has none on the wire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// Packet identifier.
    pub packet_id: u16,
    /// v5 properties.
    pub properties: AckProperties,
    /// Reason codes, one per filter (v5).
    pub codes: Vec<u8>,
}

/// DISCONNECT properties (v5).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DisconnectProperties {
    /// 0x11 Session Expiry Interval.
    pub session_expiry_interval: Option<u32>,
    /// 0x1F Reason String.
    pub reason_string: Option<String>,
    /// 0x26 User Property.
    pub user_properties: Vec<UserProperty>,
    /// 0x1C Server Reference.
    pub server_reference: Option<String>,
}

/// DISCONNECT (3.1.1: no body; v5: reason code + properties).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Disconnect {
    /// v5 reason code (0 = normal; 0x04 = with will message).
    pub code: u8,
    /// v5 properties.
    pub properties: DisconnectProperties,
}

/// AUTH (v5 only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Auth {
    /// Reason code.
    pub code: u8,
    /// 0x15 Authentication Method.
    pub authentication_method: Option<String>,
    /// 0x16 Authentication Data.
    pub authentication_data: Option<Bytes>,
    /// Reason string + user properties.
    pub properties: AckProperties,
}

/// Any control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT.
    Connect(Box<Connect>),
    /// CONNACK.
    ConnAck(ConnAck),
    /// PUBLISH.
    Publish(Publish),
    /// PUBACK.
    PubAck(PubAck),
    /// PUBREC.
    PubRec(PubAck),
    /// PUBREL.
    PubRel(PubAck),
    /// PUBCOMP.
    PubComp(PubAck),
    /// SUBSCRIBE.
    Subscribe(Subscribe),
    /// SUBACK.
    SubAck(SubAck),
    /// UNSUBSCRIBE.
    Unsubscribe(Unsubscribe),
    /// UNSUBACK.
    UnsubAck(UnsubAck),
    /// PINGREQ.
    PingReq,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT.
    Disconnect(Disconnect),
    /// AUTH.
    Auth(Auth),
}
