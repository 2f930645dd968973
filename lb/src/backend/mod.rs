//! The live backend set: each backend's identity (name + address), its reloadable settings
//! (weight, PROXY mode), health state and counters, shared by the connection tasks, the health
//! checker, the reloader and the admin API. A backend is an `Arc`, so a reload that keeps it
//! (same name and address) keeps its state and its open connections.
//!
//! Draining has its own small state, [`DrainCtl`], behind a lock: the close signal the backend's
//! connections wait on and the number of the current drain cycle. A signal fires once, so every
//! drain whose timeout passed leaves it fired; leaving `draining` then installs a fresh one, or
//! the connections opened after `ready` would be closed the moment they start.
//!
//! [`Backend::dial`] is the one way to open a TCP connection to a backend: the data path
//! (`conn::connect`) and the health checks (`control::health`) both use it. [`balance`] is the
//! pure picker over this set.
//!
//! May use `config`, `metrics`, `signal`; never `state`, `conn` or `control`.

pub mod balance;

use std::io;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpStream;

use crate::config::{BackendAddr, BackendConfig, HealthConfig, ProxyMode};
use crate::metrics::{BackendLabel, BytesLabel, Metrics};
use crate::signal::{Signal, Subscription};

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
    name: String,
    addr: BackendAddr,
    weight: AtomicU32,
    proxy: AtomicU8,
    state: AtomicU8,
    active: AtomicU64,
    total: AtomicU64,
    /// Consecutive check outcomes: positive = successes, negative = failures.
    streak: AtomicI64,
    counters: BackendCounters,
    drain: Mutex<DrainCtl>,
    /// The checker task that owns this backend (see [`Backend::claim_checker`]).
    checker: AtomicU64,
    last_check: Mutex<Option<LastCheck>>,
}

/// One drain cycle's close signal and number, changed together under [`Backend`]'s lock so a
/// timer and an operator's `ready` cannot interleave.
struct DrainCtl {
    /// What connections opened now wait on. Fired when a drain's timeout passes; replaced when
    /// the backend leaves `draining` after that.
    close: Signal,
    /// Bumped at every entry into and exit from `draining`: the timer of an older cycle does
    /// nothing.
    epoch: u64,
}

/// The outcome of a backend's last health check, for `/api/backends`.
#[derive(Debug, Clone)]
pub struct LastCheck {
    /// How long it took.
    pub took: Duration,
    /// When it ended, ms since the Unix epoch.
    pub at_unix_ms: u64,
    /// Why it failed; `None` when it passed.
    pub error: Option<String>,
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
            streak: AtomicI64::new(0),
            counters,
            drain: Mutex::new(DrainCtl {
                close: Signal::new(),
                epoch: 0,
            }),
            checker: AtomicU64::new(0),
            last_check: Mutex::new(None),
        }
    }

    /// Unique name (the hash key).
    #[inline]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Address (a host name is resolved at every dial).
    pub fn addr(&self) -> &BackendAddr {
        &self.addr
    }

    /// Counter handles resolved once.
    #[inline]
    pub fn counters(&self) -> &BackendCounters {
        &self.counters
    }

    /// Opens a TCP connection to the backend (resolving a host name each time, so DNS changes
    /// are followed).
    pub async fn dial(&self) -> io::Result<TcpStream> {
        let s = match &self.addr {
            BackendAddr::Ip(a) => TcpStream::connect(a).await?,
            BackendAddr::Host(h, p) => TcpStream::connect((h.as_str(), *p)).await?,
        };
        let _ = s.set_nodelay(true);
        Ok(s)
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

    /// Forces a state; returns the previous one. Only under the drain lock: entering and
    /// leaving `draining` goes through [`Backend::start_drain`] and [`Backend::end_drain`].
    fn set_state(&self, _drain: &DrainCtl, s: State) -> State {
        let prev = State::from_u8(self.state.swap(s as u8, Ordering::Relaxed));
        self.counters.up.set(i64::from(s == State::Up));
        if s != prev {
            self.streak.store(0, Ordering::Relaxed);
        }
        prev
    }

    fn drain_lock(&self) -> MutexGuard<'_, DrainCtl> {
        self.drain.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts the backend in `draining` (operator drain, or removed by a reload) and closes the
    /// connections still open `after` from now, unless [`Backend::end_drain`] comes first.
    /// Returns the previous state; a backend that was already draining keeps its first timer.
    pub fn start_drain(self: &Arc<Self>, after: Duration) -> State {
        let mut d = self.drain_lock();
        let prev = self.set_state(&d, State::Draining);
        if prev == State::Draining {
            return prev;
        }
        d.epoch += 1;
        let epoch = d.epoch;
        drop(d);
        let b = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            b.drain_timeout_passed(epoch);
        });
        prev
    }

    /// The timer of drain cycle `epoch`: closes the leftovers if that cycle is still on.
    fn drain_timeout_passed(&self, epoch: u64) {
        let d = self.drain_lock();
        if d.epoch != epoch || self.state() != State::Draining {
            return;
        }
        if self.active() > 0 {
            tracing::info!(backend = %self.name, connections = self.active(), "drain_timeout reached: closing leftover connections");
        }
        // stays fired while the backend drains: a connection set up in a race closes at once
        d.close.fire();
    }

    /// Leaves `draining` for `checking` (operator `ready`, or re-added by a reload): the next
    /// check decides. A drain whose timeout has not passed is cancelled, so the connections
    /// still open stay open; if it has passed, connections from now on get a fresh close
    /// signal. Returns false (and does nothing) when the backend was not draining.
    pub fn end_drain(&self) -> bool {
        let mut d = self.drain_lock();
        if self.state() != State::Draining {
            return false;
        }
        d.epoch += 1;
        if d.close.is_fired() {
            d.close = Signal::new();
        }
        self.set_state(&d, State::Checking);
        true
    }

    /// Draining, with its leftovers' close still to come.
    pub fn close_pending(&self) -> bool {
        let d = self.drain_lock();
        self.state() == State::Draining && !d.close.is_fired()
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

    /// The last health check's outcome; `None` before the first.
    pub fn last_check(&self) -> Option<LastCheck> {
        self.last_check
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stores the last health check's outcome.
    pub fn set_last_check(&self, c: LastCheck) {
        *self.last_check.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
    }

    /// Makes the caller the backend's only checker and returns its ticket. A backend re-added
    /// by a reload gets a new checker at once, while the old one may still sleep out its
    /// interval; the old one sees that its ticket is stale and stops.
    pub fn claim_checker(&self) -> u64 {
        self.checker.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Whether `ticket` (from [`Backend::claim_checker`]) is still the current checker.
    pub fn is_checker(&self, ticket: u64) -> bool {
        self.checker.load(Ordering::Relaxed) == ticket
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

    /// What a connection opened now waits on: fires when a drain of the backend (or its
    /// removal) reaches `drain_timeout`.
    pub fn close_signal(&self) -> Subscription {
        self.drain_lock().close.subscribe()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendAddr, ProxyMode};
    use std::task::Poll;

    fn backend() -> Arc<Backend> {
        let cfg = BackendConfig {
            name: "b".into(),
            addr: BackendAddr::Ip("127.0.0.1:1".parse().unwrap()),
            weight: 1,
            proxy_protocol: ProxyMode::None,
        };
        Arc::new(Backend::new(&cfg, State::Up, &Metrics::new()))
    }

    async fn fires_within(mut s: Subscription, t: Duration) -> bool {
        tokio::time::timeout(t, std::future::poll_fn(|cx| s.poll_fired(cx)))
            .await
            .is_ok()
    }

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test]
    async fn each_drain_cycle_has_its_own_close() {
        let b = backend();
        let before = b.close_signal();
        assert_eq!(b.start_drain(20 * MS), State::Up);
        // a second drain call keeps the first timer
        assert_eq!(b.start_drain(Duration::from_secs(60)), State::Draining);
        assert!(fires_within(before, 500 * MS).await);
        assert!(!b.close_pending());
        // joined in a race while draining: closed at once
        assert!(fires_within(b.close_signal(), 10 * MS).await);
        assert!(b.end_drain());
        assert!(!b.end_drain(), "not draining any more");
        assert_eq!(b.state(), State::Checking);
        let after_ready = b.close_signal();
        let mut probe = b.close_signal();
        assert!(std::future::poll_fn(|cx| Poll::Ready(probe.poll_fired(cx).is_pending())).await);
        // and the next drain closes them again
        b.start_drain(20 * MS);
        assert!(fires_within(after_ready, 500 * MS).await);
    }

    #[tokio::test]
    async fn ready_before_the_timeout_cancels_the_close() {
        let b = backend();
        let early = b.close_signal();
        b.start_drain(50 * MS);
        assert!(b.close_pending());
        tokio::time::sleep(10 * MS).await;
        assert!(b.end_drain());
        let late = b.close_signal();
        assert!(
            !fires_within(early, 150 * MS).await,
            "the cancelled drain closed"
        );
        // a new drain closes the connections from before the cancelled one, and the later ones
        let early = b.close_signal();
        b.start_drain(20 * MS);
        assert!(fires_within(early, 500 * MS).await);
        assert!(fires_within(late, 500 * MS).await);
    }
}
