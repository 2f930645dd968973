//! What one client connection (and the node) is held to: `[limits]` from the config (packet
//! size, inflight window, queue length, keep-alive cap, connections per node counted from
//! accept, subscriptions per client, session expiry, retained count and bytes, topic alias
//! bytes) and the fixed caps that bound a connection's memory (write backlog, acknowledgements
//! owed, retained messages waiting). The entry points ask a [`Limits`] instead of comparing
//! config fields inline, so each rule is written once, here; each time a `[limits]` key bites
//! it is counted as `mqedge_broker_limit_hits_total{limit="<key>"}` ([`Bite::count`]).

use std::time::Duration;

use crate::config::LimitsConfig;
use crate::metrics::Metrics;

/// Time allowed for the first packet (CONNECT) after TCP/PROXY.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Stop pulling from the session queue while this much is waiting to be written.
const OUT_HIGH: usize = 64 * 1024;
/// Acknowledgements a connection may owe at once before it stops reading.
const MAX_PENDING_ACKS: usize = 1024;
/// Retained messages one connection may have waiting to be streamed (more when the retained
/// store is larger, so one subscription always gets all of it).
pub const RETAINED_STREAM_MAX: usize = 1 << 20;

/// A `[limits]` key that refused or capped something: the `limit` label of
/// `mqedge_broker_limit_hits_total` is its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bite {
    /// A connection refused at accept (`max_connections`).
    Connections,
    /// A SUBSCRIBE filter refused (`max_subscriptions_per_client`).
    Subscriptions,
    /// A session expiry shortened (`max_session_expiry`).
    SessionExpiry,
    /// A keep-alive shortened, or none replaced (`max_keepalive`).
    KeepAlive,
    /// A new retained topic not stored (`max_retained_messages`).
    RetainedMessages,
    /// A retained message not stored (`max_retained_bytes`).
    RetainedBytes,
    /// A connection closed for its topic aliases (`max_topic_alias_bytes`).
    TopicAliasBytes,
}

impl Bite {
    /// The `[limits]` key.
    pub fn key(self) -> &'static str {
        match self {
            Bite::Connections => "max_connections",
            Bite::Subscriptions => "max_subscriptions_per_client",
            Bite::SessionExpiry => "max_session_expiry",
            Bite::KeepAlive => "max_keepalive",
            Bite::RetainedMessages => "max_retained_messages",
            Bite::RetainedBytes => "max_retained_bytes",
            Bite::TopicAliasBytes => "max_topic_alias_bytes",
        }
    }

    /// Counts it in `mqedge_broker_limit_hits_total{limit}`.
    pub fn count(self, m: &Metrics) {
        m.limit_hit(self.key());
    }
}

/// The limits of one node's connections (`Copy`: built where it is needed, from the config).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    cfg: LimitsConfig,
}

impl Limits {
    /// The limits `[limits]` sets.
    pub fn from_config(cfg: &LimitsConfig) -> Limits {
        Limits { cfg: *cfg }
    }

    /// Largest packet accepted from a client (and announced in a v5 CONNACK).
    pub fn max_packet_size(&self) -> usize {
        self.cfg.max_packet_size
    }

    /// Our Receive Maximum (v5 CONNACK): QoS 1/2 publishes a client may have unacknowledged.
    pub fn receive_maximum(&self) -> u16 {
        self.cfg.max_inflight
    }

    /// Whether another connection may be accepted while `open` are (connected, or accepted and
    /// still in their PROXY/CONNECT phase).
    pub fn admits_connection(&self, open: u64) -> bool {
        open < self.cfg.max_connections
    }

    /// Whether a session holding `held` subscriptions may add another one.
    pub fn admits_subscription(&self, held: usize) -> bool {
        held < self.cfg.max_subscriptions_per_client
    }

    /// The session expiry (seconds, `u32::MAX` = never) a session asking for `asked` gets:
    /// at most `max_session_expiry` (0 = no cap).
    pub fn session_expiry(&self, asked: u32) -> u32 {
        match self.cfg.max_session_expiry {
            0 => asked,
            max => asked.min(max),
        }
    }

    /// Bytes of topic names a connection's incoming topic aliases may hold.
    pub fn topic_alias_bytes(&self) -> usize {
        self.cfg.max_topic_alias_bytes
    }

    /// The node's retained store caps: topics, and bytes (topic + payload).
    pub fn retained_caps(&self) -> (usize, usize) {
        (self.cfg.max_retained_messages, self.cfg.max_retained_bytes)
    }

    /// The keep-alive the broker enforces: the client's, unless `max_keepalive` (0 = no cap)
    /// is smaller or the client asked for none. A v5 client is told (Server Keep Alive); a
    /// 3.1.1 client cannot be, and is held to it all the same (Mosquitto refuses such a client
    /// instead: a client that pings more often than it must keeps working here).
    pub fn keep_alive(&self, asked: u16) -> u16 {
        let max = self.cfg.max_keepalive;
        if max != 0 && (asked == 0 || asked > max) {
            max
        } else {
            asked
        }
    }

    /// QoS 1/2 deliveries a client may have unacknowledged: ours and the client's Receive
    /// Maximum, whichever is smaller.
    pub fn inflight_window(&self, client_receive_max: u16) -> usize {
        usize::from(self.cfg.max_inflight.min(client_receive_max))
    }

    /// Whether a client holding `unreleased` QoS 2 publishes may send another one.
    pub fn admits_qos2(&self, unreleased: usize) -> bool {
        unreleased < usize::from(self.cfg.max_inflight)
    }

    /// The session backlog a publisher waits on (server-side flow control); a publisher held
    /// back goes on once the backlog is at most half of it ([`Limits::backlog_relieved`]).
    pub fn congested_backlog(&self) -> usize {
        self.cfg.max_offline_messages.max(1)
    }

    /// Whether a session's queue is short enough again to let held-back publishers go on.
    pub fn backlog_relieved(&self, queued: usize) -> bool {
        queued <= self.cfg.max_offline_messages / 2
    }

    /// Whether `waiting` bytes to write are enough: no more is pulled from the session queue.
    pub fn write_backlog_full(&self, waiting: usize) -> bool {
        waiting >= OUT_HIGH
    }

    /// Whether a connection owing `owed` acknowledgements must stop reading until some leave.
    pub fn owes_too_many_acks(&self, owed: usize) -> bool {
        owed > MAX_PENDING_ACKS
    }

    /// How many more retained messages a connection with `waiting` of them may queue for
    /// streaming, when the retained store holds `stored`: [`RETAINED_STREAM_MAX`], or all of
    /// the store if it is larger.
    pub fn retained_room(&self, stored: usize, waiting: usize) -> usize {
        RETAINED_STREAM_MAX.max(stored).saturating_sub(waiting)
    }
}

/// Bytes waiting to be written past which a connection stops reading from its client (issue
/// 15 item 3): four write backlogs, so deliveries alone (which stop at [`OUT_HIGH`] plus one
/// packet) rarely pause it, and what a client that never reads makes us write (PINGRESP,
/// PUBACK...) stays bounded.
const READ_PAUSE: usize = 4 * OUT_HIGH;

impl Limits {
    /// Whether a connection with `waiting` bytes to write must stop reading and handling its
    /// client's packets until the client reads some.
    pub fn reads_paused(&self, waiting: usize) -> bool {
        waiting >= READ_PAUSE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_keepalive: u16) -> Limits {
        Limits::from_config(&LimitsConfig {
            max_offline_messages: 10,
            max_inflight: 4,
            max_packet_size: 1 << 20,
            max_connections: 2,
            max_keepalive,
            max_subscriptions_per_client: 3,
            max_session_expiry: 100,
            max_retained_messages: 5,
            max_retained_bytes: 1000,
            max_topic_alias_bytes: 64,
            connect_rate: 1000,
        })
    }

    #[test]
    fn keep_alive_is_capped_only_when_a_cap_is_set() {
        assert_eq!(limits(0).keep_alive(0), 0);
        assert_eq!(limits(0).keep_alive(600), 600);
        assert_eq!(limits(60).keep_alive(0), 60, "none asked: the cap");
        assert_eq!(limits(60).keep_alive(600), 60);
        assert_eq!(limits(60).keep_alive(30), 30);
    }

    #[test]
    fn windows_and_queues() {
        let l = limits(0);
        assert_eq!(l.inflight_window(2), 2);
        assert_eq!(l.inflight_window(u16::MAX), 4);
        assert!(l.admits_qos2(3) && !l.admits_qos2(4));
        assert!(l.admits_connection(1) && !l.admits_connection(2));
        assert!(l.backlog_relieved(5) && !l.backlog_relieved(6));
        assert_eq!(l.congested_backlog(), 10);
        assert!(!l.write_backlog_full(OUT_HIGH - 1) && l.write_backlog_full(OUT_HIGH));
        assert!(!l.owes_too_many_acks(MAX_PENDING_ACKS));
        assert!(l.owes_too_many_acks(MAX_PENDING_ACKS + 1));
        assert_eq!(l.retained_room(5, 1), RETAINED_STREAM_MAX - 1);
        assert_eq!(
            l.retained_room(RETAINED_STREAM_MAX + 9, 0),
            RETAINED_STREAM_MAX + 9
        );
        assert_eq!(l.retained_room(0, RETAINED_STREAM_MAX + 1), 0);
        assert!(l.admits_subscription(2) && !l.admits_subscription(3));
        assert_eq!(l.session_expiry(u32::MAX), 100);
        assert_eq!(l.session_expiry(60), 60);
        assert_eq!(l.retained_caps(), (5, 1000));
        assert_eq!(Bite::SessionExpiry.key(), "max_session_expiry");
    }

    #[test]
    fn reads_pause_past_four_write_backlogs() {
        let l = limits(0);
        assert!(!l.reads_paused(OUT_HIGH) && !l.reads_paused(READ_PAUSE - 1));
        assert!(l.reads_paused(READ_PAUSE));
    }
}
