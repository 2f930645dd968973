//! Broker metrics (prometheus-client), with handles resolved once so hot paths do one atomic add.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// `reason` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// Why.
    pub reason: String,
}

/// Every broker metric.
pub struct Metrics {
    /// Encoded by `/metrics`.
    pub registry: Registry,
    /// Client connections accepted.
    pub connections: Counter,
    /// Connections refused or closed for a fault, by reason.
    pub rejected: Family<Reason, Counter>,
    /// Clients connected now.
    pub connected: Gauge,
    /// Sessions (connected or not).
    pub sessions: Gauge,
    /// PUBLISH packets received from clients.
    pub messages_received: Counter,
    /// PUBLISH packets sent to clients.
    pub messages_sent: Counter,
    /// Messages dropped, by reason (queue_full, expired, too_large, not_authorized).
    pub messages_dropped: Family<Reason, Counter>,
    /// Payload bytes received.
    pub bytes_received: Counter,
    /// Bytes written to clients.
    pub bytes_sent: Counter,
    /// Subscriptions (session, filter).
    pub subscriptions: Gauge,
    /// Retained messages.
    pub retained: Gauge,
    /// Session takeovers.
    pub takeovers: Counter,
    /// Store commits.
    pub store_commits: Gauge,
    /// Cluster peers up.
    pub cluster_peers_up: Gauge,
    /// Cluster peers known but down.
    pub cluster_peers_down: Gauge,
    /// Remote routes (filter, node) known.
    pub cluster_routes: Gauge,
    /// Messages forwarded to other nodes.
    pub cluster_forwarded: Counter,
    /// Payload-carrying bytes forwarded to other nodes.
    pub cluster_forwarded_bytes: Counter,
    /// Messages received from other nodes.
    pub cluster_received: Counter,
    /// Sessions handed over to another node.
    pub cluster_handovers: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("mqedge_broker");
        let m = Metrics {
            registry: Registry::default(),
            connections: Counter::default(),
            rejected: Family::default(),
            connected: Gauge::default(),
            sessions: Gauge::default(),
            messages_received: Counter::default(),
            messages_sent: Counter::default(),
            messages_dropped: Family::default(),
            bytes_received: Counter::default(),
            bytes_sent: Counter::default(),
            subscriptions: Gauge::default(),
            retained: Gauge::default(),
            takeovers: Counter::default(),
            store_commits: Gauge::default(),
            cluster_peers_up: Gauge::default(),
            cluster_peers_down: Gauge::default(),
            cluster_routes: Gauge::default(),
            cluster_forwarded: Counter::default(),
            cluster_forwarded_bytes: Counter::default(),
            cluster_received: Counter::default(),
            cluster_handovers: Counter::default(),
        };
        r.register(
            "connections",
            "Client connections accepted",
            m.connections.clone(),
        );
        r.register(
            "connections_rejected",
            "Connections refused or closed for a fault",
            m.rejected.clone(),
        );
        r.register(
            "clients_connected",
            "Clients connected now",
            m.connected.clone(),
        );
        r.register(
            "sessions",
            "Sessions held (connected or persistent)",
            m.sessions.clone(),
        );
        r.register(
            "messages_received",
            "PUBLISH packets received",
            m.messages_received.clone(),
        );
        r.register(
            "messages_sent",
            "PUBLISH packets sent",
            m.messages_sent.clone(),
        );
        r.register(
            "messages_dropped",
            "Messages dropped, by reason",
            m.messages_dropped.clone(),
        );
        r.register(
            "bytes_received",
            "Bytes read from clients",
            m.bytes_received.clone(),
        );
        r.register(
            "bytes_sent",
            "Bytes written to clients",
            m.bytes_sent.clone(),
        );
        r.register(
            "subscriptions",
            "Subscriptions held",
            m.subscriptions.clone(),
        );
        r.register(
            "retained_messages",
            "Retained messages held",
            m.retained.clone(),
        );
        r.register(
            "session_takeovers",
            "Sessions taken over by a new connection",
            m.takeovers.clone(),
        );
        r.register(
            "store_commits",
            "Store transactions committed",
            m.store_commits.clone(),
        );
        r.register(
            "cluster_peers_up",
            "Cluster peers up",
            m.cluster_peers_up.clone(),
        );
        r.register(
            "cluster_peers_down",
            "Cluster peers known but down",
            m.cluster_peers_down.clone(),
        );
        r.register(
            "cluster_routes",
            "Remote routes (filter, node) known",
            m.cluster_routes.clone(),
        );
        r.register(
            "cluster_forwarded_messages",
            "Messages forwarded to other nodes",
            m.cluster_forwarded.clone(),
        );
        r.register(
            "cluster_forwarded_bytes",
            "Encoded message bytes forwarded to other nodes",
            m.cluster_forwarded_bytes.clone(),
        );
        r.register(
            "cluster_received_messages",
            "Messages received from other nodes",
            m.cluster_received.clone(),
        );
        r.register(
            "cluster_session_handovers",
            "Sessions handed over to another node",
            m.cluster_handovers.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// Counts a refused or faulted connection.
    pub fn reject(&self, reason: &str) {
        self.rejected
            .get_or_create(&Reason {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Counts a dropped message.
    pub fn dropped(&self, reason: &str) {
        self.dropped_many(reason, 1);
    }

    /// Counts `n` messages dropped at once (one label lookup, not `n`).
    pub fn dropped_many(&self, reason: &str, n: u64) {
        if n > 0 {
            self.messages_dropped
                .get_or_create(&Reason {
                    reason: reason.to_string(),
                })
                .inc_by(n);
        }
    }

    /// Prometheus text.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}
