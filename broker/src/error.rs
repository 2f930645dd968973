//! Why a client connection ends or is refused: one [`CloseReason`] per cause, which gives the
//! v5 reason code the client is sent (CONNACK or DISCONNECT), the log text and the label of
//! `mqedge_broker_rejected_total`. Callers log with their own fields (peer, client id, ...);
//! the words and the label come from here, so they stay the same wherever a reason is raised.

use crate::limits::{Bite, CONNECT_TIMEOUT};
use crate::metrics::Metrics;
use crate::protocol::{reason, DecodeError, Version};

/// Every reason a connection is refused or closed. `Display` is the log line's text.
#[derive(Debug, thiserror::Error)]
pub enum CloseReason {
    // refused before MQTT: the listener (accept, PROXY header)
    /// `[limits] max_connections` reached (not logged: it would flood the log when it happens).
    #[error("refused: max_connections reached")]
    OverLimit,
    /// A PROXY header from an address outside `trusted_proxies`.
    #[error("refused: PROXY header from an address outside trusted_proxies")]
    UntrustedProxy,
    /// No PROXY header on a listener that requires one.
    #[error("refused: no PROXY header on a listener that requires one")]
    ProxyRequired,
    /// A PROXY header that does not parse (the error goes in the log line's fields).
    #[error("refused: bad PROXY header")]
    BadProxyHeader,
    /// No PROXY header in time.
    #[error("closed: no PROXY header in time")]
    ProxyTimeout,
    /// A WebSocket listener's Upgrade request was refused (answered with an HTTP status).
    #[error("refused: bad WebSocket handshake")]
    WsHandshake,
    /// A WebSocket frame was refused (closed with a close code).
    #[error("closed: bad WebSocket frame: {0}")]
    WsFrame(mqedge_shared::ws::frame::FrameError),

    // the CONNECT phase
    /// CONNECT with a protocol level (or name) this broker does not speak: CONNACK 0x84 in the
    /// 3.1.1 layout. Holds the level the client asked for.
    #[error("refused: unsupported protocol version")]
    UnsupportedVersion(u8),
    /// The first packet does not decode.
    #[error("closed: bad first packet")]
    BadConnect(DecodeError),
    /// The first packet is not CONNECT.
    #[error("closed: first packet is not CONNECT")]
    NotConnect,
    /// No CONNECT within [`CONNECT_TIMEOUT`].
    #[error("closed: no CONNECT within {CONNECT_TIMEOUT:?}")]
    ConnectTimeout,
    /// CONNECT asks for enhanced authentication (AUTH), which this broker does not do.
    #[error("refused: unsupported enhanced authentication")]
    BadAuthMethod,
    /// MQTT-3.1.3-8: a 3.1.1 client without a client id must ask for a clean session.
    #[error("refused: empty client id without clean session")]
    EmptyClientId,
    /// No username, and `allow_anonymous` is off.
    #[error("refused: anonymous not allowed")]
    AnonymousNotAllowed,
    /// A username alone proves nothing: without a password file (or a certificate CN from a
    /// trusted proxy) such a client is as anonymous as one without.
    #[error("refused: no password file to check the username against")]
    NoPasswordFile,
    /// The password file does not accept the username and password.
    #[error("refused: bad username or password")]
    BadCredentials,
    /// `username_from` names a certificate field this client's certificate (as the PROXY
    /// header tells it) lacks: CONNACK 0x87 / 0x05. Holds the field's config name.
    #[error("refused: the client certificate has no {0} (username_from)")]
    CertIdentityMissing(&'static str),
    /// The `[auth.http]` service answered deny: CONNACK 0x87 / 0x05.
    #[error("refused: denied by the auth service")]
    HookDenied,
    /// The `[auth.http]` service gave no usable answer and `on_unavailable = "deny"`: v5 0x88
    /// Server unavailable, 3.1.1 0x03.
    #[error("refused: the auth service is unavailable")]
    HookUnavailable,
    /// `[auth.postgres]` did not answer and `on_unavailable = "deny"`: v5 0x88 Server
    /// unavailable, 3.1.1 0x03.
    #[error("refused: the user database is unavailable")]
    UserDbUnavailable,
    /// No password-check slot freed in time (`[auth] max_concurrent_password_checks`):
    /// v5 0x89 Server busy, 3.1.1 0x03 Server unavailable.
    #[error("refused: password checks busy")]
    PasswordChecksBusy,
    /// A will topic that is not a valid topic name (wildcards, empty...): v5 CONNACK 0x90;
    /// 3.1.1 has no code for it, so the connection is closed (MQTT-4.8.0-1).
    #[error("refused: invalid will topic")]
    WillTopicInvalid,
    /// A will topic the client could not publish to (`$SYS`, or the ACL): CONNACK 0x87 / 0x05.
    #[error("refused: will topic not authorized")]
    WillNotAuthorized,
    /// The node drains (`POST /api/drain`, SIGTERM): v5 CONNACK 0x9C Use another server,
    /// 3.1.1 0x03 Server unavailable.
    #[error("refused: the node is draining")]
    Draining,

    // the end of an established connection, not counted as rejected
    /// DISCONNECT received (the will is kept unless the v5 code is 0x00).
    #[error("client disconnected")]
    Normal {
        /// Publish the will all the same (MQTT-3.14.4-3, MQTT 5 §3.1.2.5).
        keep_will: bool,
    },
    /// The peer closed or the socket failed.
    #[error("client disconnected")]
    Io,
    /// Keep-alive (1.5×) expired.
    #[error("client disconnected")]
    KeepAlive,
    /// Another connection took the session.
    #[error("client disconnected")]
    TakenOver,
    /// The broker is shutting down (the will is kept back: not a client failure).
    #[error("client disconnected")]
    Shutdown,
    /// The node drains and moved the session elsewhere: v5 DISCONNECT 0x9C Use another server
    /// (the will is kept back, as at a shutdown).
    #[error("client disconnected")]
    Moved,

    // protocol violations and failures of an established connection: v5 gets a DISCONNECT
    /// A packet that does not decode.
    #[error("closed: {0}")]
    Decode(DecodeError),
    /// A QoS 1/2 publish, or a SUBSCRIBE/UNSUBSCRIBE of a persistent session, that could not
    /// be made durable (here and, with session replicas, on the replica) or that a cluster
    /// peer did not take: the client is not acknowledged, so it sends again.
    #[error("closed: a message or subscription change could not be stored or was not acknowledged by a cluster peer")]
    NotAcknowledged,
    /// MQTT-3.14.2-2.
    #[error("closed: session expiry set at DISCONNECT after 0 at CONNECT")]
    ExpiryAfterZero,
    /// AUTH without enhanced authentication having been asked for.
    #[error("closed: AUTH without enhanced authentication")]
    UnexpectedAuth,
    /// CONNACK, SUBACK, PINGRESP... from a client.
    #[error("closed: a packet only a server sends")]
    ServerPacket,
    /// A topic alias over the maximum we announced.
    #[error("closed: topic alias {0} over the maximum")]
    AliasOverMax(u16),
    /// Topic aliases holding more than `[limits] max_topic_alias_bytes` of topic names:
    /// 0x97 Quota exceeded.
    #[error("closed: topic aliases over max_topic_alias_bytes")]
    AliasBytes,
    /// An empty topic with an alias the client never set.
    #[error("closed: unknown topic alias {0}")]
    UnknownAlias(u16),
    /// A PUBLISH topic with wildcards or otherwise invalid.
    #[error("closed: invalid topic name {0:?}")]
    InvalidTopicName(String),
    /// MQTT-3.3.4-6.
    #[error("closed: subscription identifier from a client")]
    SubscriptionIdFromClient,
    /// More QoS 2 publishes unreleased than our Receive Maximum.
    #[error("closed: receive maximum exceeded")]
    ReceiveMaximumExceeded,
    /// MQTT-3.8.3-4.
    #[error("closed: No Local on a shared subscription")]
    SharedNoLocal,
    /// A subscriber whose queue reached `max_queued_bytes` (or its count bound) under
    /// `slow_consumer_policy = "disconnect"`.
    #[error("closed: slow consumer (its queue reached its bound)")]
    SlowConsumer,
}

impl CloseReason {
    /// The reason code sent before closing: in CONNACK for a refused CONNECT, in DISCONNECT
    /// (v5 only) for an established connection. `None`: the client is sent nothing.
    pub fn code(&self) -> Option<u8> {
        use CloseReason::*;
        Some(match self {
            OverLimit | UntrustedProxy | ProxyRequired | BadProxyHeader | ProxyTimeout
            | WsHandshake | WsFrame(_) => return None,
            BadConnect(_) | NotConnect | ConnectTimeout | Normal { .. } | Io => return None,
            UnsupportedVersion(_) => reason::UNSUPPORTED_PROTOCOL_VERSION,
            BadAuthMethod => reason::BAD_AUTHENTICATION_METHOD,
            EmptyClientId => reason::CLIENT_IDENTIFIER_NOT_VALID,
            AnonymousNotAllowed | WillNotAuthorized | HookDenied | CertIdentityMissing(_) => {
                reason::NOT_AUTHORIZED
            }
            HookUnavailable | UserDbUnavailable => reason::SERVER_UNAVAILABLE,
            WillTopicInvalid => reason::TOPIC_NAME_INVALID,
            NoPasswordFile | BadCredentials => reason::BAD_USER_NAME_OR_PASSWORD,
            KeepAlive => reason::KEEP_ALIVE_TIMEOUT,
            TakenOver => reason::SESSION_TAKEN_OVER,
            Shutdown => reason::SERVER_SHUTTING_DOWN,
            Draining | Moved => reason::USE_ANOTHER_SERVER,
            Decode(e) => e.reason_code(),
            NotAcknowledged | PasswordChecksBusy => reason::SERVER_BUSY,
            AliasOverMax(_) => reason::TOPIC_ALIAS_INVALID,
            AliasBytes => reason::QUOTA_EXCEEDED,
            InvalidTopicName(_) => reason::TOPIC_NAME_INVALID,
            ReceiveMaximumExceeded => reason::RECEIVE_MAXIMUM_EXCEEDED,
            SlowConsumer => reason::QUOTA_EXCEEDED,
            ExpiryAfterZero
            | UnexpectedAuth
            | ServerPacket
            | UnknownAlias(_)
            | SubscriptionIdFromClient
            | SharedNoLocal => reason::PROTOCOL_ERROR,
        })
    }

    /// The code of a refused CONNECT's CONNACK in `v` (see [`CloseReason::code`]): none for a
    /// 3.1.1 client whose will topic is invalid, a protocol violation 3.1.1 has no code for.
    pub fn connack_code(&self, v: Version) -> Option<u8> {
        match self {
            CloseReason::WillTopicInvalid if !v.is_v5() => None,
            _ => self.code(),
        }
    }

    /// The metric label (`rejected_total{reason}`) of a refusal or a violation, and the
    /// `reason` field of the "client disconnected" log line otherwise.
    pub fn label(&self) -> &'static str {
        use CloseReason::*;
        match self {
            OverLimit => "over_limit",
            UntrustedProxy => "untrusted_proxy",
            ProxyRequired => "proxy_required",
            BadProxyHeader => "proxy_header",
            ProxyTimeout => "proxy_timeout",
            WsHandshake => "ws_handshake",
            WsFrame(_) => "ws_frame",
            UnsupportedVersion(_) => "unsupported_version",
            BadConnect(_) | NotConnect => "bad_connect",
            ConnectTimeout => "connect_timeout",
            // a refused CONNECT is counted under its reason's words, as it always was
            BadAuthMethod => "unsupported enhanced authentication",
            EmptyClientId => "empty client id without clean session",
            AnonymousNotAllowed => "anonymous not allowed",
            NoPasswordFile => "no password file to check the username against",
            BadCredentials => "bad username or password",
            PasswordChecksBusy => "password checks busy",
            HookDenied => "denied by the auth service",
            CertIdentityMissing(_) => "certificate identity missing",
            HookUnavailable => "auth service unavailable",
            UserDbUnavailable => "user database unavailable",
            WillTopicInvalid => "invalid will topic",
            WillNotAuthorized => "will topic not authorized",
            AliasBytes => "topic_alias_bytes",
            Normal { .. } => "normal",
            Io => "closed",
            KeepAlive => "keepalive",
            TakenOver => "taken_over",
            Shutdown => "server_shutdown",
            Draining => "draining",
            Moved => "drained",
            Decode(_)
            | NotAcknowledged
            | ExpiryAfterZero
            | UnexpectedAuth
            | ServerPacket
            | AliasOverMax(_)
            | UnknownAlias(_)
            | InvalidTopicName(_)
            | SubscriptionIdFromClient
            | ReceiveMaximumExceeded
            | SharedNoLocal => "protocol_error",
            SlowConsumer => "slow_consumer",
        }
    }

    /// Counts a refusal or a violation in `rejected_total`; an ordinary end is not counted.
    pub fn count(&self, m: &Metrics) {
        if !self.is_ordinary() {
            m.reject(self.label());
        }
        match self {
            CloseReason::AliasBytes => Bite::TopicAliasBytes.count(m),
            CloseReason::OverLimit => Bite::Connections.count(m),
            _ => {}
        }
    }

    /// An end that is no fault of either side: logged as "client disconnected", not counted.
    pub fn is_ordinary(&self) -> bool {
        use CloseReason::*;
        matches!(
            self,
            Normal { .. } | Io | KeepAlive | TakenOver | Shutdown | Moved
        )
    }

    /// Whether the client's will is published: not after a DISCONNECT 0x00, nor when the
    /// broker shuts down.
    pub fn keeps_will(&self) -> bool {
        !matches!(
            self,
            CloseReason::Normal { keep_will: false } | CloseReason::Shutdown | CloseReason::Moved
        )
    }
}

impl From<DecodeError> for CloseReason {
    fn from(e: DecodeError) -> CloseReason {
        CloseReason::Decode(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Carried in every `Result` of the packet path and across the closing flush: no larger
    /// than the `(u8, String)` it replaced.
    #[test]
    fn close_reason_stays_small() {
        assert!(std::mem::size_of::<CloseReason>() <= 32);
    }

    #[test]
    fn texts_labels_and_codes_are_the_ones_in_logs_and_metrics() {
        let r = CloseReason::ConnectTimeout;
        assert_eq!(r.to_string(), "closed: no CONNECT within 10s");
        assert_eq!((r.label(), r.code()), ("connect_timeout", None));
        let r = CloseReason::BadCredentials;
        assert_eq!(r.to_string(), "refused: bad username or password");
        assert_eq!(r.label(), "bad username or password");
        assert_eq!(r.code(), Some(reason::BAD_USER_NAME_OR_PASSWORD));
        let r = CloseReason::InvalidTopicName("a/+".into());
        assert_eq!(r.to_string(), "closed: invalid topic name \"a/+\"");
        assert_eq!(r.label(), "protocol_error");
        let r = CloseReason::from(DecodeError::TooLarge(9));
        assert_eq!(r.code(), Some(reason::PACKET_TOO_LARGE));
        assert!(!r.is_ordinary() && r.keeps_will());
        assert!(CloseReason::KeepAlive.is_ordinary());
        assert!(!CloseReason::Shutdown.keeps_will());
        assert!(CloseReason::Normal { keep_will: true }.keeps_will());
        let r = CloseReason::WillTopicInvalid;
        assert_eq!(
            r.connack_code(Version::V5),
            Some(reason::TOPIC_NAME_INVALID)
        );
        assert_eq!(
            r.connack_code(Version::V311),
            None,
            "3.1.1: closed without CONNACK"
        );
        let r = CloseReason::WillNotAuthorized;
        assert_eq!(r.connack_code(Version::V311), Some(reason::NOT_AUTHORIZED));
        let r = CloseReason::PasswordChecksBusy;
        assert_eq!(r.connack_code(Version::V5), Some(reason::SERVER_BUSY));
    }
}
