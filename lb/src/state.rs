//! The state every task of one LB shares, behind one `Arc<Lb>`: the live config snapshot, the
//! counters, the picker's round-robin state, the per-IP limiter, the open-client count and the
//! reload bookkeeping. Modules reach it only through methods, so what may change it is listed
//! here. It sits below `conn` and `control`, which take it, and above `backend`, `config` and
//! `metrics`, which it holds.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, Guard};

use crate::backend::balance::Picker;
use crate::backend::placement::Snapshot;
use crate::backend::{Backend, State};
use crate::config::{BalanceConfig, Config, HealthConfig, LbSettings, PlacementConfig};
use crate::limits::PerIpLimiter;
use crate::metrics::Metrics;

/// The reloadable part of the config, swapped atomically.
#[derive(Debug)]
pub struct Live {
    /// `[lb]` settings (timeouts and limits apply to new connections at once).
    pub lb: LbSettings,
    /// `[balance]`.
    pub balance: BalanceConfig,
    /// `[health]`.
    pub health: HealthConfig,
    /// The backend set, in config order.
    pub backends: Vec<Arc<Backend>>,
    /// `[placement]` and the feeds (read by the poller at every round).
    pub placement: Arc<PlacementConfig>,
    /// Bumped by every successful reload.
    pub generation: u64,
}

impl Live {
    /// The backends that may take a new connection, in config order.
    pub fn usable(&self) -> Vec<&Arc<Backend>> {
        self.backends
            .iter()
            .filter(|b| b.state() == State::Up && b.weight() > 0)
            .collect()
    }

    /// Whether `b` is still part of this set (same `Arc`).
    pub fn contains(&self, b: &Arc<Backend>) -> bool {
        self.backends.iter().any(|x| Arc::ptr_eq(x, b))
    }

    /// The backend of that name.
    pub fn find(&self, name: &str) -> Option<Arc<Backend>> {
        self.backends.iter().find(|b| b.name() == name).cloned()
    }
}

/// Reload bookkeeping shown at `/api/reload`.
#[derive(Debug, Default)]
pub struct ReloadStatus {
    /// The last refused file's error (cleared by a successful reload).
    last_error: Mutex<Option<String>>,
    /// Backends removed by a reload whose leftovers' close is still pending, so that re-adding
    /// one finds it. Weak: a backend is freed once its timer and connections are done; the list
    /// is pruned at every reload.
    retired: Mutex<Vec<Weak<Backend>>>,
}

impl ReloadStatus {
    /// The last refused file's error, if the last reload was refused.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Records the outcome of a reload: `None` after a successful one.
    pub fn set_last_error(&self, e: Option<String>) {
        if let Ok(mut le) = self.last_error.lock() {
            *le = e;
        }
    }

    /// The retired backends still pending, taken out of the list.
    pub fn take_retired(&self) -> Vec<Arc<Backend>> {
        let mut r = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *r)
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|b| b.close_pending())
            .collect()
    }

    /// Puts backends (back) on the retired list.
    pub fn put_retired(&self, bs: impl IntoIterator<Item = Arc<Backend>>) {
        let mut r = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        r.extend(bs.into_iter().map(|b| Arc::downgrade(&b)));
    }
}

/// The state every task of one LB shares.
pub struct Lb {
    live: ArcSwap<Live>,
    metrics: Metrics,
    /// Round-robin state.
    picker: Picker,
    /// The placement exceptions in force, swapped whole by each feed round.
    placement: ArcSwap<Snapshot>,
    reload: ReloadStatus,
    /// Client connections open now, all listeners (for `max_connections`).
    client_conns: AtomicU64,
    /// Per-IP connect rate buckets.
    limiter: PerIpLimiter,
    accepting: AtomicBool,
    seq: AtomicU64,
    boot: u64,
    /// The rebalance's progress and the clients it moved (`POST /api/rebalance`).
    rebalance: crate::backend::rebalance::Rebalance,
}

impl Lb {
    /// Builds the shared state from a validated config. Backends start `checking`;
    /// `run` checks them all once before it accepts clients.
    pub fn new(cfg: &Config) -> Arc<Lb> {
        let metrics = Metrics::new();
        let backends = cfg
            .backends
            .iter()
            .map(|b| Arc::new(Backend::new(b, State::Checking, &metrics)))
            .collect();
        let boot = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let rebalance = crate::backend::rebalance::Rebalance::new(metrics.rebalance.clone());
        Arc::new(Lb {
            rebalance,
            live: ArcSwap::from_pointee(Live {
                lb: cfg.lb.clone(),
                balance: cfg.balance,
                health: cfg.health,
                backends,
                placement: cfg.placement.clone(),
                generation: 1,
            }),
            metrics,
            picker: Picker::new(),
            placement: ArcSwap::from_pointee(Snapshot::default()),
            reload: ReloadStatus::default(),
            client_conns: AtomicU64::new(0),
            limiter: PerIpLimiter::default(),
            accepting: AtomicBool::new(true),
            seq: AtomicU64::new(0),
            boot,
        })
    }

    /// The config in force now (cheap: no reference count is taken).
    #[inline]
    pub fn live(&self) -> Guard<Arc<Live>> {
        self.live.load()
    }

    /// The config in force now, kept for as long as the caller needs it (a connection's setup).
    #[inline]
    pub fn live_arc(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Puts a reloaded config in force for everything that reads it from now on.
    pub fn set_live(&self, live: Live) {
        self.live.store(Arc::new(live));
    }

    /// The rebalance's state.
    pub fn rebalance(&self) -> &crate::backend::rebalance::Rebalance {
        &self.rebalance
    }

    /// The counters.
    #[inline]
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The picker (its round-robin state is shared by all connections).
    #[inline]
    pub fn picker(&self) -> &Picker {
        &self.picker
    }

    /// The placement exceptions in force now.
    #[inline]
    pub fn placement(&self) -> Guard<Arc<Snapshot>> {
        self.placement.load()
    }

    /// Puts a feed round's exceptions in force.
    pub fn set_placement(&self, s: Snapshot) {
        self.metrics.placement_entries.set(s.len() as i64);
        self.placement.store(Arc::new(s));
    }

    /// Reload bookkeeping for `/api/reload`.
    pub fn reload_status(&self) -> &ReloadStatus {
        &self.reload
    }

    /// Takes a connect token for `ip` from its bucket (the live `connect_rate_per_ip` and
    /// `connect_burst_per_ip` of `live`); false when it has none.
    #[inline]
    pub fn allow_connect(&self, live: &Live, ip: IpAddr) -> bool {
        self.limiter.allow(
            ip,
            live.lb.connect_rate_per_ip,
            live.lb.connect_burst_per_ip,
            Instant::now(),
        )
    }

    /// Drops the per-IP buckets of sources that have been quiet.
    pub fn sweep_limiter(&self) {
        let l = self.live.load();
        self.limiter.sweep(
            l.lb.connect_rate_per_ip,
            l.lb.connect_burst_per_ip,
            Instant::now(),
        );
    }

    /// Counts a new client connection unless `max_connections` are open already. Only
    /// `conn::ClientSlot` calls this, and its drop gives the slot back.
    #[inline]
    pub(crate) fn take_client_slot(&self) -> bool {
        let max = self.live.load().lb.max_connections;
        if self.client_conns.load(Ordering::Relaxed) >= max {
            return false;
        }
        self.client_conns.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Gives back a slot from [`Lb::take_client_slot`].
    #[inline]
    pub(crate) fn release_client_slot(&self) {
        self.client_conns.fetch_sub(1, Ordering::Relaxed);
    }

    /// A new connection id, unique per LB process and start: `NAME-BOOTHEX-SEQ`. It appears in
    /// the LB's logs and in the PROXY v2 UNIQUE_ID TLV, so a broker log line can be traced back.
    pub fn next_conn_id(&self, name: &str) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{name}-{:x}-{n}", self.boot)
    }

    /// Whether the LB still accepts clients (false once shutdown began).
    pub fn accepting(&self) -> bool {
        self.accepting.load(Ordering::Relaxed)
    }

    /// Shutdown has begun: `/healthz` says so from now on.
    pub(crate) fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::Relaxed);
    }
}
