//! The live backend set: each backend's config, health state and counters, shared by the
//! connection tasks, health checker, reloader and admin API. A backend is an `Arc` so a reload
//! that keeps it (same name and address) keeps its state and its open connections.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

use crate::config::BackendConfig;
use crate::metrics::{BackendLabel, BytesLabel, Metrics};

/// Health state as `/api/backends` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Not yet checked: takes no traffic until its first check passes.
    Checking = 0,
    /// Takes new connections.
    Up = 1,
    /// Failed `fall` checks in a row: takes none.
    Down = 2,
    /// Removed from the config or drained by an operator: takes none; leftovers close after
    /// `drain_timeout`.
    Draining = 3,
}

impl State {
    /// The name used in the API and metrics.
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
    /// Failed connects.
    pub connect_failures: Counter,
}

/// One backend of the live set.
pub struct Backend {
    /// Its config.
    pub cfg: BackendConfig,
    state: AtomicU8,
    active: AtomicU64,
    total: AtomicU64,
    last_check_ms: AtomicU64,
    /// Consecutive check outcomes (positive: successes, negative: failures), for rise/fall.
    pub(crate) streak: std::sync::atomic::AtomicI64,
    /// Counter handles.
    pub counters: BackendCounters,
    /// Fires (true) when this backend's leftover connections must close.
    close_tx: watch::Sender<bool>,
    /// When the backend entered `Draining`.
    pub(crate) draining_since: std::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("cfg", &self.cfg)
            .field("state", &self.state())
            .finish()
    }
}

impl Backend {
    /// A backend in the given initial state.
    pub fn new(cfg: BackendConfig, state: State, metrics: &Metrics) -> Self {
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
        };
        Backend {
            cfg,
            state: AtomicU8::new(state as u8),
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            last_check_ms: AtomicU64::new(0),
            streak: std::sync::atomic::AtomicI64::new(0),
            counters,
            close_tx: watch::channel(false).0,
            draining_since: std::sync::Mutex::new(None),
        }
    }

    /// Current health state.
    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Sets the health state (a draining backend never comes back by a check).
    pub fn set_state(&self, s: State) -> State {
        let prev = State::from_u8(self.state.swap(s as u8, Ordering::Relaxed));
        if s == State::Draining && prev != State::Draining {
            if let Ok(mut d) = self.draining_since.lock() {
                *d = Some(Instant::now());
            }
        }
        prev
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

    /// Marks one forwarded connection open; the guard closes the count.
    pub fn open_connection(self: &std::sync::Arc<Self>) -> ConnGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        self.counters.total.inc();
        self.counters.active.inc();
        ConnGuard {
            backend: self.clone(),
        }
    }

    /// A receiver that turns true when leftover connections must close.
    pub fn close_signal(&self) -> watch::Receiver<bool> {
        self.close_tx.subscribe()
    }

    /// Tells every connection to this backend to close now.
    pub fn close_all(&self) {
        let _ = self.close_tx.send(true);
    }
}

/// Held by a forwarded connection; keeps the active count right however the task ends.
pub struct ConnGuard {
    backend: std::sync::Arc<Backend>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.backend.active.fetch_sub(1, Ordering::Relaxed);
        self.backend.counters.active.dec();
    }
}

