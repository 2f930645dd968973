//! `[limits]`: what one client (and the node as a whole) may hold. Every key has a default and
//! a range; a value out of range is a `file:line` problem. What each limit does when it bites
//! is [`crate::limits::Limits`].

use std::time::Duration;

use mqedge_shared::config::{ByteSize, HumanDuration, Problems};
use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    max_offline_messages: Option<usize>,
    max_inflight: Option<Spanned<u16>>,
    max_packet_size: Option<Spanned<ByteSize>>,
    max_connections: Option<u64>,
    max_keepalive: Option<Spanned<i64>>,
    max_subscriptions_per_client: Option<Spanned<i64>>,
    max_session_expiry: Option<Spanned<HumanDuration>>,
    max_retained_messages: Option<Spanned<i64>>,
    max_retained_bytes: Option<Spanned<ByteSize>>,
    max_topic_alias_bytes: Option<Spanned<ByteSize>>,
    connect_rate: Option<Spanned<i64>>,
    // the slow-consumer keys (`flow`)
    pub(super) max_queued_bytes: Option<Spanned<ByteSize>>,
    pub(super) publisher_hold: Option<Spanned<HumanDuration>>,
    pub(super) slow_consumer_policy: Option<super::SlowConsumerPolicy>,
}

/// `[limits]`.
#[derive(Debug, Clone, Copy)]
pub struct LimitsConfig {
    /// Queued QoS>0 messages per session; over it the oldest is dropped.
    pub max_offline_messages: usize,
    /// Unacknowledged QoS>0 messages per client (also our Receive Maximum).
    pub max_inflight: u16,
    /// Largest packet accepted (and announced in v5 CONNACK).
    pub max_packet_size: usize,
    /// Client connections per node, counted from accept (before CONNECT too).
    pub max_connections: u64,
    /// Longest keep-alive (seconds) a client may have; a client asking for more, or for none
    /// (0), gets this one (v5: as Server Keep Alive). 0 = no cap.
    pub max_keepalive: u16,
    /// Subscriptions one session may hold; a SUBSCRIBE filter past it is refused (0x97).
    pub max_subscriptions_per_client: usize,
    /// Longest a session outlives its connection, seconds (3.1.1 persistent sessions and the
    /// v5 Session Expiry Interval alike). 0 = no cap (a session may be kept forever).
    pub max_session_expiry: u32,
    /// Retained topics a node keeps; a new one past it is not stored (still delivered).
    pub max_retained_messages: usize,
    /// Bytes (topic + payload) of retained messages a node keeps, same rule.
    pub max_retained_bytes: usize,
    /// Bytes of topic names one connection's incoming topic aliases may hold.
    pub max_topic_alias_bytes: usize,
    /// New clients per second this node says it takes (its placement feed's `admit.rate`,
    /// less while CONNECTs are in progress): what a pacing LB admits to it.
    pub connect_rate: u32,
}

/// The default keep-alive cap: an hour (a client asking for none is closed after 90 minutes
/// of silence instead of never).
pub const DEFAULT_MAX_KEEPALIVE: u16 = 3600;
/// The default session expiry cap: 7 days.
pub const DEFAULT_MAX_SESSION_EXPIRY: u32 = 7 * 24 * 3600;

/// A whole number in `lo..=hi`, or the default with a problem at its span.
fn ranged(
    p: &mut Problems<'_>,
    v: &Option<Spanned<i64>>,
    lo: i64,
    hi: i64,
    dflt: i64,
    what: &str,
) -> i64 {
    match v {
        Some(m) if (lo..=hi).contains(m.get_ref()) => *m.get_ref(),
        Some(m) => {
            p.at(m.span(), format!("{what} must be between {lo} and {hi}"));
            dflt
        }
        None => dflt,
    }
}

/// A size in `lo..=hi` bytes, or the default with a problem at its span.
fn sized(
    p: &mut Problems<'_>,
    v: &Option<Spanned<ByteSize>>,
    lo: u64,
    hi: u64,
    dflt: u64,
    what: &str,
) -> usize {
    match v {
        Some(m) if (lo..=hi).contains(&m.get_ref().0) => m.get_ref().0 as usize,
        Some(m) => {
            p.at(m.span(), format!("{what} must be between {lo}B and {hi}B"));
            dflt as usize
        }
        None => dflt as usize,
    }
}

/// Validates `[limits]` (absent: every default).
pub(super) fn limits(p: &mut Problems<'_>, raw: Option<RawLimits>) -> LimitsConfig {
    let rl = raw.unwrap_or_default();
    let max_inflight = match &rl.max_inflight {
        Some(m) if *m.get_ref() == 0 => {
            p.at(m.span(), "max_inflight must be at least 1");
            32
        }
        Some(m) => *m.get_ref(),
        None => 32,
    };
    let max_packet_size = match &rl.max_packet_size {
        Some(m) if m.get_ref().0 < 64 || m.get_ref().0 > 268_435_455 => {
            p.at(m.span(), "max_packet_size must be between 64B and 256MiB");
            1 << 20
        }
        Some(m) => m.get_ref().0 as usize,
        None => 1 << 20,
    };
    let max_keepalive = match &rl.max_keepalive {
        Some(m) => u16::try_from(*m.get_ref()).unwrap_or_else(|_| {
            p.at(
                m.span(),
                "max_keepalive must be between 0 and 65535 seconds (0 = no cap)",
            );
            DEFAULT_MAX_KEEPALIVE
        }),
        None => DEFAULT_MAX_KEEPALIVE,
    };
    let max_session_expiry = match &rl.max_session_expiry {
        Some(d) => {
            let secs = d.get_ref().0.as_secs();
            if d.get_ref().0 != Duration::from_secs(secs) || secs >= u64::from(u32::MAX) {
                p.at(
                    d.span(),
                    "max_session_expiry must be whole seconds below 136 years (0 = no cap)",
                );
                DEFAULT_MAX_SESSION_EXPIRY
            } else {
                secs as u32
            }
        }
        None => DEFAULT_MAX_SESSION_EXPIRY,
    };
    let subs = &rl.max_subscriptions_per_client;
    let retained = &rl.max_retained_messages;
    let connect_rate = ranged(p, &rl.connect_rate, 1, 1_000_000, 1000, "connect_rate") as u32;
    LimitsConfig {
        connect_rate,
        max_offline_messages: rl.max_offline_messages.unwrap_or(1000),
        max_inflight,
        max_packet_size,
        max_connections: rl.max_connections.unwrap_or(200_000),
        max_keepalive,
        max_subscriptions_per_client: ranged(
            p,
            subs,
            1,
            10_000_000,
            10_000,
            "max_subscriptions_per_client",
        ) as usize,
        max_session_expiry,
        max_retained_messages: ranged(
            p,
            retained,
            0,
            100_000_000,
            100_000,
            "max_retained_messages",
        ) as usize,
        max_retained_bytes: sized(
            p,
            &rl.max_retained_bytes,
            0,
            1 << 40,
            256 << 20,
            "max_retained_bytes",
        ),
        max_topic_alias_bytes: sized(
            p,
            &rl.max_topic_alias_bytes,
            0,
            1 << 30,
            128 << 10,
            "max_topic_alias_bytes",
        ),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::path::Path;

    use crate::config::Config;

    /// A config with `limits` as its `[limits]` table (the slow-consumer keys' tests use it too).
    pub(in crate::config) fn parse(limits: &str) -> Result<Config, String> {
        let src = format!("[[listener]]\nbind = \"127.0.0.1:1883\"\n[limits]\n{limits}\n");
        Config::parse(Path::new("b.toml"), &src).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let l = parse("").unwrap().limits;
        assert_eq!(l.max_offline_messages, 1000);
        assert_eq!(l.max_inflight, 32);
        assert_eq!(l.max_packet_size, 1 << 20);
        assert_eq!(l.max_keepalive, 3600, "an hour unless set");
        assert_eq!(l.max_subscriptions_per_client, 10_000);
        assert_eq!(l.max_session_expiry, 7 * 24 * 3600);
        assert_eq!(l.max_retained_messages, 100_000);
        assert_eq!(l.max_retained_bytes, 256 << 20);
        assert_eq!(l.max_topic_alias_bytes, 128 << 10);
    }

    #[test]
    fn values_and_errors() {
        let l =
            parse("max_keepalive = 0\nmax_session_expiry = \"1h\"\nmax_retained_bytes = \"1MiB\"")
                .unwrap()
                .limits;
        assert_eq!((l.max_keepalive, l.max_session_expiry), (0, 3600));
        assert_eq!(l.max_retained_bytes, 1 << 20);
        assert_eq!(
            parse("max_session_expiry = \"0s\"")
                .unwrap()
                .limits
                .max_session_expiry,
            0
        );
        for (bad, want) in [
            (
                "max_keepalive = 70000",
                "b.toml:4: max_keepalive must be between 0 and 65535 seconds",
            ),
            (
                "max_keepalive = -1",
                "b.toml:4: max_keepalive must be between 0 and 65535 seconds",
            ),
            (
                "max_subscriptions_per_client = 0",
                "b.toml:4: max_subscriptions_per_client must be between 1",
            ),
            (
                "max_retained_messages = -5",
                "b.toml:4: max_retained_messages must be between 0",
            ),
            (
                "max_session_expiry = \"1.5s\"",
                "b.toml:4: max_session_expiry must be whole seconds",
            ),
            (
                "max_session_expiry = \"50000d\"",
                "b.toml:4: max_session_expiry must be whole seconds",
            ),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.starts_with(want), "{bad}: {e}");
        }
    }
}
