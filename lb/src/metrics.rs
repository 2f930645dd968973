//! LB metrics, registered once in a prometheus-client registry. Hot paths hold pre-resolved
//! counter handles (an `Arc<AtomicU64>` each), so counting a forwarded chunk is one atomic add,
//! never a label lookup.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels for per-listener series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    /// Listener name.
    pub listener: String,
}

/// Labels for rejected connections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabel {
    /// Listener name.
    pub listener: String,
    /// Why: `tls_handshake`, `tls_revoked`, `tls_bad_chain`, `timeout`, `not_connect`, `malformed`, `too_large`, `bad_protocol`,
    /// `proxy_header`, `untrusted_proxy`, `no_backend`, `over_limit`, `rate_limited`, `client_io`,
    /// `ws_handshake`, `ws_frame`.
    pub reason: String,
}

/// Labels for refused WebSocket frames.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WsFrameLabel {
    /// Listener name.
    pub listener: String,
    /// `unmasked`, `reserved_bits`, `bad_opcode`, `text_frame`, `bad_control`,
    /// `fragmentation`, `too_large`.
    pub reason: &'static str,
}

/// Labels for forwarded connections that ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClosedLabel {
    /// Listener name.
    pub listener: String,
    /// Backend name.
    pub backend: String,
    /// Why: `closed`, `error`, `half_close_timeout`, `drained`, `shutdown`.
    pub reason: &'static str,
}

/// Labels for per-backend series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabel {
    /// Backend name.
    pub backend: String,
}

/// Labels for byte counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabel {
    /// Listener or backend name (by family).
    pub name: String,
    /// `in` (from clients towards backends) or `out` (towards clients).
    pub direction: &'static str,
}

fn latency_histogram() -> Histogram {
    // 0.1 ms .. ~3.3 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// Every LB metric.
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// Connections accepted by listener.
    pub accepted: Family<ListenerLabel, Counter>,
    /// Connections refused or closed before forwarding, by listener and reason.
    pub rejected: Family<RejectLabel, Counter>,
    /// Client connections open now, by listener.
    pub active: Family<ListenerLabel, Gauge>,
    /// Forwarded connections that ended, by listener, backend and why.
    pub closed: Family<ClosedLabel, Counter>,
    /// Client bytes by listener and direction.
    pub listener_bytes: Family<BytesLabel, Counter>,
    /// Times a connection's bandwidth bucket ran empty and it waited, by listener and direction.
    pub bandwidth_waits: Family<BytesLabel, Counter>,
    /// Connections forwarded, by backend.
    pub backend_total: Family<BackendLabel, Counter>,
    /// Forwarded connections open now, by backend.
    pub backend_active: Family<BackendLabel, Gauge>,
    /// Bytes by backend and direction.
    pub backend_bytes: Family<BytesLabel, Counter>,
    /// Failed connects to a backend while forwarding.
    pub backend_connect_failures: Family<BackendLabel, Counter>,
    /// Time to connect to a backend (seconds).
    pub backend_connect_seconds: Family<BackendLabel, Histogram, fn() -> Histogram>,
    /// 1 when the backend is up.
    pub backend_up: Family<BackendLabel, Gauge>,
    /// Failed health checks (active and passive).
    pub check_failures: Family<BackendLabel, Counter>,
    /// Health check duration (seconds).
    pub check_seconds: Family<BackendLabel, Histogram, fn() -> Histogram>,
    /// Config generation in force.
    pub reload_generation: Gauge,
    /// Reloads refused (invalid file).
    pub reload_failures: Counter,
    /// Successful reloads.
    pub reloads: Counter,
    /// TLS handshake time (seconds), by listener.
    pub tls_handshake_seconds: Family<ListenerLabel, Histogram, fn() -> Histogram>,
    /// Admin requests refused by the guard, by reason (host, origin, admin_header, token).
    pub admin_refused: Family<AdminRefusedLabel, Counter>,
    /// WebSocket connections closed for a bad frame, by listener and reason.
    pub ws_frame_errors: Family<WsFrameLabel, Counter>,
    /// Entries in the placement exceptions table.
    pub placement_entries: Gauge,
    /// `client_id` picks with placement feeds on, by what decided the first backend.
    pub placement_picks: Family<PickLabel, Counter>,
    /// Placement feed polls that failed, by backend.
    pub placement_feed_errors: Family<BackendLabel, Counter>,
    /// Clients that waited for their turn (`[placement] pacing`), by backend.
    pub pacing_waits: Family<BackendLabel, Counter>,
    /// Clients refused because their turn was further than `pacing_wait`, by backend.
    pub pacing_refused: Family<BackendLabel, Counter>,
    /// The rebalance's counters (`rebalance_moved`, `rebalance_failed`, `rebalance_pending`).
    pub rebalance: RebalanceMetrics,
}

/// The rebalance's series (`backend::rebalance` counts into them).
#[derive(Debug, Clone, Default)]
pub struct RebalanceMetrics {
    /// `mqedge_lb_rebalance_moved_total`.
    pub moved: Counter,
    /// `mqedge_lb_rebalance_failed_total`.
    pub failed: Counter,
    /// `mqedge_lb_rebalance_pending`.
    pub pending: Gauge,
}

/// Labels for placement picks.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PickLabel {
    /// `exception` (the feed's table) or `hash`.
    pub source: &'static str,
}

/// Labels for refused admin requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdminRefusedLabel {
    /// `host`, `origin`, `admin_header` or `token`.
    pub reason: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every family.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mqedge_lb");
        let m = Metrics {
            accepted: Family::default(),
            rejected: Family::default(),
            active: Family::default(),
            closed: Family::default(),
            listener_bytes: Family::default(),
            bandwidth_waits: Family::default(),
            backend_total: Family::default(),
            backend_active: Family::default(),
            backend_bytes: Family::default(),
            backend_connect_failures: Family::default(),
            backend_connect_seconds: Family::new_with_constructor(
                latency_histogram as fn() -> Histogram,
            ),
            tls_handshake_seconds: Family::new_with_constructor(
                latency_histogram as fn() -> Histogram,
            ),
            backend_up: Family::default(),
            check_failures: Family::default(),
            check_seconds: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            reload_generation: Gauge::default(),
            reload_failures: Counter::default(),
            reloads: Counter::default(),
            admin_refused: Family::default(),
            ws_frame_errors: Family::default(),
            placement_entries: Gauge::default(),
            placement_picks: Family::default(),
            placement_feed_errors: Family::default(),
            pacing_waits: Family::default(),
            pacing_refused: Family::default(),
            rebalance: Default::default(),
            registry: Registry::default(),
        };
        m.register(&mut registry);
        m.reload_generation.set(1);
        for source in ["exception", "hash"] {
            drop(m.placement_picks.get_or_create(&PickLabel { source }));
        }
        Metrics { registry, ..m }
    }

    /// Registers every family under its exposed name (the names are a public interface): the
    /// client-side families here, then [`Metrics::register_backends`].
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "connections_accepted",
            "Client connections accepted",
            self.accepted.clone(),
        );
        registry.register(
            "connections_rejected",
            "Client connections closed before forwarding, by reason",
            self.rejected.clone(),
        );
        registry.register(
            "connections_closed",
            "Forwarded client connections that ended, by listener, backend and why",
            self.closed.clone(),
        );
        registry.register(
            "connections_active",
            "Client connections open now",
            self.active.clone(),
        );
        registry.register(
            "listener_bytes",
            "Client bytes by listener and direction",
            self.listener_bytes.clone(),
        );
        registry.register(
            "bandwidth_waits",
            "Times a connection's bandwidth limit made it wait, by listener and direction",
            self.bandwidth_waits.clone(),
        );
        registry.register(
            "websocket_frame_errors",
            "WebSocket connections closed for a frame the LB refused (unmasked, too large, ...)",
            self.ws_frame_errors.clone(),
        );
        self.register_backends(registry);
    }

    /// The per-backend families, then the config ones (same order as before the split).
    fn register_backends(&self, registry: &mut Registry) {
        registry.register(
            "backend_connections",
            "Connections forwarded to a backend",
            self.backend_total.clone(),
        );
        registry.register(
            "backend_connections_active",
            "Forwarded connections open now",
            self.backend_active.clone(),
        );
        registry.register(
            "backend_bytes",
            "Bytes by backend and direction",
            self.backend_bytes.clone(),
        );
        registry.register(
            "backend_connect_failures",
            "Failed connects to a backend while forwarding",
            self.backend_connect_failures.clone(),
        );
        registry.register(
            "backend_connect_seconds",
            "Time to open a connection to a backend",
            self.backend_connect_seconds.clone(),
        );
        registry.register(
            "tls_handshake_seconds",
            "Client TLS handshake time",
            self.tls_handshake_seconds.clone(),
        );
        registry.register(
            "backend_up",
            "1 when the backend takes new connections",
            self.backend_up.clone(),
        );
        registry.register(
            "backend_check_failures",
            "Failed health checks (active, and failed forward connects)",
            self.check_failures.clone(),
        );
        registry.register(
            "backend_check_seconds",
            "Health check duration",
            self.check_seconds.clone(),
        );
        registry.register(
            "config_generation",
            "Config generation in force",
            self.reload_generation.clone(),
        );
        registry.register(
            "config_reload_failures",
            "Config reloads refused",
            self.reload_failures.clone(),
        );
        registry.register(
            "config_reloads",
            "Config reloads applied",
            self.reloads.clone(),
        );
        registry.register(
            "admin_refused",
            "Admin API requests refused (Host, Origin, missing header, token)",
            self.admin_refused.clone(),
        );
        registry.register(
            "placement_entries",
            "Entries in the placement exceptions table (sessions off their hash home)",
            self.placement_entries.clone(),
        );
        registry.register(
            "placement_picks",
            "client_id picks while placement feeds are configured, by source (exception, hash)",
            self.placement_picks.clone(),
        );
        registry.register(
            "placement_feed_errors",
            "Placement feed polls that failed, by backend",
            self.placement_feed_errors.clone(),
        );
        registry.register(
            "pacing_waits",
            "Clients that waited for their turn at a paced backend ([placement] pacing)",
            self.pacing_waits.clone(),
        );
        registry.register(
            "pacing_refused",
            "Clients refused because their turn at a paced backend was further than pacing_wait",
            self.pacing_refused.clone(),
        );
        registry.register(
            "rebalance_moved",
            "Clients a rebalance moved to their hash pick (POST /api/rebalance)",
            self.rebalance.moved.clone(),
        );
        registry.register(
            "rebalance_failed",
            "Clients a rebalance could not move (their broker refused or did not answer)",
            self.rebalance.failed.clone(),
        );
        registry.register(
            "rebalance_pending",
            "Clients the running rebalance has still to move",
            self.rebalance.pending.clone(),
        );
    }

    /// Creates the `connections_rejected_total` series of a listener and reason at 0.
    pub fn reject_zero(&self, listener: &str, reason: &str) {
        drop(self.rejected.get_or_create(&RejectLabel {
            listener: listener.to_string(),
            reason: reason.to_string(),
        }));
    }

    /// Counts one rejected connection.
    pub fn reject(&self, listener: &str, reason: &str) {
        self.rejected
            .get_or_create(&RejectLabel {
                listener: listener.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Encodes the registry as Prometheus text.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}
