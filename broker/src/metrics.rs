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

/// `limit` label: which `[limits]` key bit.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Limit {
    /// The key's name.
    pub limit: String,
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
    /// Tombstones of retained clears kept (cluster: `retained_tombstone_ttl`).
    pub retained_tombstones: Gauge,
    /// Session takeovers.
    pub takeovers: Counter,
    /// Store commits.
    pub store_commits: Gauge,
    /// Store commits that failed (brought up to the store's count at each scrape).
    pub store_commit_failures: Counter,
    /// Cluster peers up.
    pub cluster_peers_up: Gauge,
    /// Cluster peers known but down.
    pub cluster_peers_down: Gauge,
    /// Peers gossip calls live that the node channel cannot reach.
    pub cluster_peers_unreachable: Gauge,
    /// Forwards to other nodes that failed, by reason.
    pub cluster_forward_failures: Family<Reason, Counter>,
    /// Peers refused on the node channel (mutual TLS, membership), by reason.
    pub cluster_auth_failures: Family<Reason, Counter>,
    /// Remote routes (filter, node) known.
    pub cluster_routes: Gauge,
    /// Messages forwarded to other nodes.
    pub cluster_forwarded: Counter,
    /// Payload-carrying bytes forwarded to other nodes.
    pub cluster_forwarded_bytes: Counter,
    /// Messages received from other nodes.
    pub cluster_received: Counter,
    /// Chunked transfers (large snapshots, session exports) received whole.
    pub cluster_transfers_received: Counter,
    /// Chunked transfers dropped unfinished or refused.
    pub cluster_transfers_dropped: Counter,
    /// Sessions handed over to another node.
    pub cluster_handovers: Counter,
    /// Admin requests refused by the guard, by reason (host, origin, admin_header, token).
    pub admin_refused: Family<Reason, Counter>,
    /// Times a `[limits]` key refused or capped something, by key.
    pub limit_hits: Family<Limit, Counter>,
    /// Connections accepted that have not finished their CONNECT phase.
    pub connecting: Gauge,
    /// Will-delay and session-expiry timers armed.
    pub session_timers: Gauge,
    /// Bytes (keys and values) the store's commits wrote, set at scrape.
    pub store_bytes_written: Gauge,
    /// What slow subscribers cost them: hold_expired, drop_oldest, disconnect.
    pub slow_consumers: Family<Reason, Counter>,
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
            retained_tombstones: Gauge::default(),
            takeovers: Counter::default(),
            store_commits: Gauge::default(),
            store_commit_failures: Counter::default(),
            cluster_peers_up: Gauge::default(),
            cluster_peers_down: Gauge::default(),
            cluster_peers_unreachable: Gauge::default(),
            cluster_forward_failures: Family::default(),
            cluster_auth_failures: Family::default(),
            cluster_routes: Gauge::default(),
            cluster_forwarded: Counter::default(),
            cluster_forwarded_bytes: Counter::default(),
            cluster_transfers_received: Counter::default(),
            cluster_transfers_dropped: Counter::default(),
            cluster_received: Counter::default(),
            cluster_handovers: Counter::default(),
            admin_refused: Family::default(),
            limit_hits: Family::default(),
            connecting: Gauge::default(),
            session_timers: Gauge::default(),
            store_bytes_written: Gauge::default(),
            slow_consumers: Family::default(),
        };
        m.register_clients(&mut r);
        m.register_cluster(&mut r);
        r.register(
            "slow_consumer_events",
            "Slow subscribers: publishers' holds run out, oldest messages dropped, disconnects",
            m.slow_consumers.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// The node's own series, in `/metrics` order: connections, messages, bytes, state, store,
    /// admin refusals.
    fn register_clients(&self, r: &mut Registry) {
        r.register(
            "connections",
            "Client connections accepted",
            self.connections.clone(),
        );
        r.register(
            "connections_rejected",
            "Connections refused or closed for a fault",
            self.rejected.clone(),
        );
        r.register(
            "clients_connected",
            "Clients connected now",
            self.connected.clone(),
        );
        r.register(
            "sessions",
            "Sessions held (connected or persistent)",
            self.sessions.clone(),
        );
        r.register(
            "messages_received",
            "PUBLISH packets received",
            self.messages_received.clone(),
        );
        r.register(
            "messages_sent",
            "PUBLISH packets sent",
            self.messages_sent.clone(),
        );
        r.register(
            "messages_dropped",
            "Messages dropped, by reason",
            self.messages_dropped.clone(),
        );
        r.register(
            "bytes_received",
            "Bytes read from clients",
            self.bytes_received.clone(),
        );
        r.register(
            "bytes_sent",
            "Bytes written to clients",
            self.bytes_sent.clone(),
        );
        r.register(
            "subscriptions",
            "Subscriptions held",
            self.subscriptions.clone(),
        );
        r.register(
            "retained_messages",
            "Retained messages held",
            self.retained.clone(),
        );
        r.register(
            "retained_tombstones",
            "Tombstones of cleared retained messages kept",
            self.retained_tombstones.clone(),
        );
        r.register(
            "session_takeovers",
            "Sessions taken over by a new connection",
            self.takeovers.clone(),
        );
        r.register(
            "store_bytes_written",
            "Bytes (keys and values) written by the store's commits",
            self.store_bytes_written.clone(),
        );
        r.register(
            "store_commits",
            "Store transactions committed",
            self.store_commits.clone(),
        );
        r.register(
            "store_commit_failures",
            "Store transactions that failed to commit",
            self.store_commit_failures.clone(),
        );
        r.register(
            "admin_refused",
            "Admin API requests refused (Host, Origin, missing header, token)",
            self.admin_refused.clone(),
        );
        r.register(
            "limit_hits",
            "Times a [limits] key refused or capped something, by key",
            self.limit_hits.clone(),
        );
        r.register(
            "connections_pending",
            "Connections accepted that have not finished their CONNECT phase",
            self.connecting.clone(),
        );
        r.register(
            "session_timers",
            "Will-delay and session-expiry timers armed for offline sessions",
            self.session_timers.clone(),
        );
    }

    /// The cluster's series, after the node's own.
    fn register_cluster(&self, r: &mut Registry) {
        r.register(
            "cluster_peers_up",
            "Cluster peers up",
            self.cluster_peers_up.clone(),
        );
        r.register(
            "cluster_peers_down",
            "Cluster peers known but down",
            self.cluster_peers_down.clone(),
        );
        r.register(
            "cluster_peers_unreachable",
            "Cluster peers live in gossip that the node channel cannot reach",
            self.cluster_peers_unreachable.clone(),
        );
        r.register(
            "cluster_forward_failures",
            "Forwards to other nodes that failed, by reason",
            self.cluster_forward_failures.clone(),
        );
        r.register(
            "cluster_auth_failures",
            "Peers refused on the node channel (TLS, name, membership), by reason",
            self.cluster_auth_failures.clone(),
        );
        r.register(
            "cluster_routes",
            "Remote routes (filter, node) known",
            self.cluster_routes.clone(),
        );
        r.register(
            "cluster_forwarded_messages",
            "Messages forwarded to other nodes",
            self.cluster_forwarded.clone(),
        );
        r.register(
            "cluster_transfers_received",
            "Chunked node-channel transfers (large snapshots, session exports) received whole",
            self.cluster_transfers_received.clone(),
        );
        r.register(
            "cluster_transfers_dropped",
            "Chunked node-channel transfers dropped unfinished (channel closed) or refused (size cap, order)",
            self.cluster_transfers_dropped.clone(),
        );
        r.register(
            "cluster_forwarded_bytes",
            "Encoded message bytes forwarded to other nodes",
            self.cluster_forwarded_bytes.clone(),
        );
        r.register(
            "cluster_received_messages",
            "Messages received from other nodes",
            self.cluster_received.clone(),
        );
        r.register(
            "cluster_session_handovers",
            "Sessions handed over to another node",
            self.cluster_handovers.clone(),
        );
    }

    /// Counts a refused or faulted connection.
    pub fn reject(&self, reason: &str) {
        self.rejected
            .get_or_create(&Reason {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Counts a `[limits]` key biting (`limit`: the key's name).
    pub fn limit_hit(&self, limit: &str) {
        self.limit_hits
            .get_or_create(&Limit {
                limit: limit.to_string(),
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

    /// Counts one slow-consumer event (`hold_expired`, `drop_oldest`, `disconnect`).
    pub fn slow_consumer(&self, what: &str) {
        self.slow_consumers_many(what, 1);
    }

    /// Counts `n` slow-consumer events at once.
    pub fn slow_consumers_many(&self, what: &str, n: u64) {
        if n > 0 {
            self.slow_consumers
                .get_or_create(&Reason {
                    reason: what.to_string(),
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
