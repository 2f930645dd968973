//! The live backend set: each backend's identity (name + address), its reloadable settings
//! (weight, PROXY mode), health state and counters, shared by the connection tasks, the health
//! checker, the reloader and the admin API. A backend is an `Arc`, so a reload that keeps it
//! (same name and address) keeps its state and its open connections.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::config::{BackendAddr, BackendConfig, HealthConfig, ProxyMode};
use crate::metrics::{BackendLabel, BytesLabel, Metrics};

/// Health state as `/api/backends` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Not yet checked: takes no traffic until its first check passes.
    Checking = 0,
    /// Takes new connections.
    Up = 1,
    /// Failed `fall` checks in a row (or never passed its first): takes none.
    Down = 2,
    /// Drained by an operator or removed from the config: takes none; leftovers close after
    /// `drain_timeout`.
    Draining = 3,
}

impl State {
    /// The name used in the API and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Checking => "checking",
            State::Up => "up",
            State::Down => "down",
            State::Draining => "draining",
        }
    }
    fn from_u8(v: u8) -> State {
        match v {
            1 => State::Up,
            2 => State::Down,
            3 => State::Draining,
            _ => State::Checking,
        }
    }
}

/// Counter handles resolved once per backend.
#[derive(Clone)]
pub struct BackendCounters {
    /// Forwarded connections.
    pub total: Counter,
    /// Open forwarded connections.
    pub active: Gauge,
    /// Bytes client → backend.
    pub bytes_in: Counter,
    /// Bytes backend → client.
    pub bytes_out: Counter,
    /// Failed connects while forwarding.
    pub connect_failures: Counter,
    /// 1 when up, else 0.
    pub up: Gauge,
    /// Failed health checks.
    pub check_failures: Counter,
}

/// One backend of the live set.
pub struct Backend {
    /// Unique name (the hash key).
    pub name: String,
    /// Address.
    pub addr: BackendAddr,
    weight: AtomicU32,
    proxy: AtomicU8,
    state: AtomicU8,
    active: AtomicU64,
    total: AtomicU64,
    last_check_ms: AtomicU64,
    /// Consecutive check outcomes: positive = successes, negative = failures.
    streak: AtomicI64,
    /// Counter handles.
    pub counters: BackendCounters,
    close: crate::signal::Signal,
    /// Bumped at every entry into `Draining`, so a stale drain timer never fires.
    drain_epoch: AtomicU64,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .field("state", &self.state())
            .finish()
    }
}

fn proxy_to_u8(p: ProxyMode) -> u8 {
    match p {
        ProxyMode::None => 0,
        ProxyMode::V1 => 1,
        ProxyMode::V2 => 2,
    }
}

impl Backend {
    /// A backend in the given initial state.
    pub fn new(cfg: &BackendConfig, state: State, metrics: &Metrics) -> Self {
        let l = BackendLabel {
            backend: cfg.name.clone(),
        };
        let bl = |d| BytesLabel {
            name: cfg.name.clone(),
            direction: d,
        };
        let counters = BackendCounters {
            total: metrics.backend_total.get_or_create_owned(&l),
            active: metrics.backend_active.get_or_create_owned(&l),
            bytes_in: metrics.backend_bytes.get_or_create_owned(&bl("in")),
            bytes_out: metrics.backend_bytes.get_or_create_owned(&bl("out")),
            connect_failures: metrics.backend_connect_failures.get_or_create_owned(&l),
            up: metrics.backend_up.get_or_create_owned(&l),
            check_failures: metrics.check_failures.get_or_create_owned(&l),
        };
        counters.up.set(i64::from(state == State::Up));
        Backend {
            name: cfg.name.clone(),
            addr: cfg.addr.clone(),
            weight: AtomicU32::new(cfg.weight),
            proxy: AtomicU8::new(proxy_to_u8(cfg.proxy_protocol)),
            state: AtomicU8::new(state as u8),
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            last_check_ms: AtomicU64::new(0),
            streak: AtomicI64::new(0),
            counters,
            close: crate::signal::Signal::new(),
            drain_epoch: AtomicU64::new(0),
        }
    }

    /// Takes a reloaded config's weight and PROXY mode (name and address are the identity).
    pub fn update(&self, cfg: &BackendConfig) {
        self.weight.store(cfg.weight, Ordering::Relaxed);
        self.proxy
            .store(proxy_to_u8(cfg.proxy_protocol), Ordering::Relaxed);
    }

    /// Relative share of new clients.
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Header to send first.
    pub fn proxy_mode(&self) -> ProxyMode {
        match self.proxy.load(Ordering::Relaxed) {
            1 => ProxyMode::V1,
            2 => ProxyMode::V2,
            _ => ProxyMode::None,
        }
    }

    /// Current health state.
    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Forces a state (operator drain/ready, removal); returns the previous one.
    pub fn set_state(&self, s: State) -> State {
        let prev = State::from_u8(self.state.swap(s as u8, Ordering::Relaxed));
        self.counters.up.set(i64::from(s == State::Up));
        if s == State::Draining && prev != State::Draining {
            self.drain_epoch.fetch_add(1, Ordering::Relaxed);
        }
        if s != prev {
            self.streak.store(0, Ordering::Relaxed);
        }
        prev
    }

    /// Records one health check outcome and applies rise/fall; returns the new state when it
    /// changed. A draining backend stays draining whatever the checks say.
    pub fn record_check(&self, ok: bool, hc: &HealthConfig) -> Option<State> {
        let streak = if ok {
            self.streak
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                    Some(if s > 0 { s + 1 } else { 1 })
                })
                .map(|s| if s > 0 { s + 1 } else { 1 })
        } else {
            self.counters.check_failures.inc();
            self.streak
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                    Some(if s < 0 { s - 1 } else { -1 })
                })
                .map(|s| if s < 0 { s - 1 } else { -1 })
        }
        .unwrap_or(0);
        let cur = self.state();
        let next = match (cur, ok) {
            (State::Draining, _) => return None,
            // the first check decides at once: traffic only after one success
            (State::Checking, true) => State::Up,
            (State::Checking, false) => State::Down,
            (State::Down, true) if streak >= i64::from(hc.rise) => State::Up,
            (State::Up, false) if -streak >= i64::from(hc.fall) => State::Down,
            _ => return None,
        };
        // only move if nobody (operator drain) changed it meanwhile
        if self
            .state
            .compare_exchange(cur as u8, next as u8, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.counters.up.set(i64::from(next == State::Up));
            Some(next)
        } else {
            None
        }
    }

    /// Open forwarded connections.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Connections forwarded since the backend appeared.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Duration of the last health check, ms.
    pub fn last_check_ms(&self) -> u64 {
        self.last_check_ms.load(Ordering::Relaxed)
    }

    /// Stores the duration of the last health check.
    pub fn set_last_check_ms(&self, ms: u64) {
        self.last_check_ms.store(ms, Ordering::Relaxed);
    }

    /// Marks one forwarded connection open; the guard closes the count.
    pub fn open_connection(self: &Arc<Self>) -> ConnGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        self.counters.total.inc();
        self.counters.active.inc();
        ConnGuard {
            backend: self.clone(),
        }
    }

    /// A receiver that turns true when leftover connections must close.
    pub fn close_signal(&self) -> &crate::signal::Signal {
        &self.close
    }

    /// Tells every connection to this backend to close now.
    pub fn close_all(&self) {
        self.close.fire();
    }
}

/// Held by a forwarded connection; keeps the active count right however the task ends.
pub struct ConnGuard {
    backend: Arc<Backend>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.backend.active.fetch_sub(1, Ordering::Relaxed);
        self.backend.counters.active.dec();
    }
}

/// Closes a drained or removed backend's leftover connections after `after`.
pub fn close_after(b: Arc<Backend>, after: std::time::Duration) {
    let epoch = b.drain_epoch.load(Ordering::Relaxed);
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        // only the drain that armed this timer may end it (drain → ready → drain re-arms)
        if b.state() == State::Draining && b.drain_epoch.load(Ordering::Relaxed) == epoch {
            if b.active() > 0 {
                tracing::info!(backend = %b.name, connections = b.active(), "drain_timeout reached: closing leftover connections");
            }
            b.close_all();
        }
    });
}
