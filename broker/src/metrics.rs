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

/// Labels of `acl_hook_results`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AclHookResult {
    /// publish or subscribe.
    pub action: String,
    /// allow, deny, ignore or unavailable.
    pub reason: String,
    /// service (asked) or cache.
    pub source: String,
}

impl AclHookResult {
    /// The labels of one answer.
    pub fn new(action: &str, reason: &str, cached: bool) -> AclHookResult {
        AclHookResult {
            action: action.to_string(),
            reason: reason.to_string(),
            source: if cached { "cache" } else { "service" }.to_string(),
        }
    }
}

/// Labels of `postgres_results`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PgResult {
    /// user (a CONNECT's password hash) or acl (a PUBLISH's or SUBSCRIBE filter's rows).
    pub query: String,
    /// user: found, missing; acl: allow, deny; both: unavailable.
    pub reason: String,
    /// database (asked) or cache.
    pub source: String,
}

impl PgResult {
    /// The labels of one answer.
    pub fn new(query: &str, reason: &str, cached: bool) -> PgResult {
        PgResult {
            query: query.to_string(),
            reason: reason.to_string(),
            source: if cached { "cache" } else { "database" }.to_string(),
        }
    }
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
    /// Frames acknowledging forwarded copies sent to other nodes (one per batch).
    pub cluster_ack_frames: Counter,
    /// Chunked transfers (large snapshots, session exports) received whole.
    pub cluster_transfers_received: Counter,
    /// Chunked transfers dropped unfinished or refused.
    pub cluster_transfers_dropped: Counter,
    /// Sessions handed over to another node.
    pub cluster_handovers: Counter,
    /// 1 while the node drains (`POST /api/drain`, SIGTERM), else 0.
    pub draining: Gauge,
    /// Clients and sessions a drain moved to other nodes.
    pub drain_moved: Counter,
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
    /// `[auth.http]` answers by outcome (allow, deny, ignore, unavailable, cached).
    pub auth_hook_results: Family<Reason, Counter>,
    /// `[auth.http_acl]` answers by action, outcome and source (service or cache).
    pub acl_hook_results: Family<AclHookResult, Counter>,
    /// `[auth.postgres]` answers by query, outcome and source (database or cache).
    pub postgres_results: Family<PgResult, Counter>,
    /// Session replication (`[cluster] session_replicas`).
    pub replica: ReplicaMetrics,
}

/// Session replication's series.
#[derive(Default)]
pub struct ReplicaMetrics {
    /// Batches of session writes sent to a replica.
    pub writes: Counter,
    /// Replication that failed (the write is not acknowledged), by reason.
    pub failures: Family<Reason, Counter>,
    /// Session writes made with no other live node to hold a copy.
    pub unprotected: Counter,
    /// Sessions copied whole to their replica.
    pub syncs: Counter,
    /// Sessions waiting to be copied whole.
    pub sync_pending: Gauge,
    /// Standby copies of other nodes' sessions held here.
    pub standby: Gauge,
    /// Standby copies turned into sessions of this node, by trigger (holder_down, connect).
    pub promotions: Family<Reason, Counter>,
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
            cluster_ack_frames: Counter::default(),
            cluster_handovers: Counter::default(),
            draining: Gauge::default(),
            drain_moved: Counter::default(),
            admin_refused: Family::default(),
            limit_hits: Family::default(),
            connecting: Gauge::default(),
            session_timers: Gauge::default(),
            store_bytes_written: Gauge::default(),
            slow_consumers: Family::default(),
            auth_hook_results: Family::default(),
            acl_hook_results: Family::default(),
            postgres_results: Family::default(),
            replica: ReplicaMetrics::default(),
        };
        m.register_clients(&mut r);
        m.register_cluster(&mut r);
        m.register_replica(&mut r);
        r.register(
            "slow_consumer_events",
            "Slow subscribers: publishers' holds run out, oldest messages dropped, disconnects",
            m.slow_consumers.clone(),
        );
        r.register(
            "auth_hook_results",
            "CONNECTs decided by the [auth.http] service, by outcome",
            m.auth_hook_results.clone(),
        );
        r.register(
            "auth_acl_hook_results",
            "PUBLISHes and SUBSCRIBE filters decided by the [auth.http_acl] service, by action, outcome and source",
            m.acl_hook_results.clone(),
        );
        r.register(
            "auth_postgres_results",
            "Password hashes and ACL rows looked up in [auth.postgres], by query, outcome and source",
            m.postgres_results.clone(),
        );
        // the series that the shipped alerts and dashboards (configs/) watch exist at 0 from
        // the start: to PromQL an absent series is not 0, so `rate(...) > 0` would never fire
        // on the first event
        let zero = |f: &Family<Reason, Counter>, reasons: &[&str]| {
            for r in reasons {
                drop(f.get_or_create(&Reason {
                    reason: r.to_string(),
                }));
            }
        };
        zero(&m.rejected, &["over_limit", "untrusted_proxy"]);
        zero(&m.replica.failures, &["unreachable", "not_acknowledged"]);
        zero(&m.messages_dropped, &["queue_full", "not_authorized"]);
        zero(
            &m.slow_consumers,
            &["drop_oldest", "disconnect", "hold_expired"],
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
            "cluster_ack_frames_sent",
            "Frames acknowledging forwarded copies sent to other nodes (one per batch of copies)",
            self.cluster_ack_frames.clone(),
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
        r.register(
            "draining",
            "1 while the node drains (POST /api/drain, SIGTERM)",
            self.draining.clone(),
        );
        r.register(
            "drain_moved",
            "Clients and sessions a drain moved to other nodes",
            self.drain_moved.clone(),
        );
    }

    /// Session replication's series, after the cluster's.
    fn register_replica(&self, r: &mut Registry) {
        let m = &self.replica;
        r.register(
            "replica_writes",
            "Batches of session writes sent to their replica",
            m.writes.clone(),
        );
        r.register(
            "replica_failures",
            "Session writes not confirmed by their replica (not acknowledged), by reason",
            m.failures.clone(),
        );
        r.register(
            "replica_unprotected_writes",
            "Session writes made while no other live node could hold a copy",
            m.unprotected.clone(),
        );
        r.register(
            "replica_syncs",
            "Sessions copied whole to their replica",
            m.syncs.clone(),
        );
        r.register(
            "replica_sync_pending",
            "Sessions waiting to be copied whole to their replica",
            m.sync_pending.clone(),
        );
        r.register(
            "standby_sessions",
            "Standby copies of other nodes' sessions held here",
            m.standby.clone(),
        );
        r.register(
            "session_promotions",
            "Standby copies turned into sessions of this node, by trigger",
            m.promotions.clone(),
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
