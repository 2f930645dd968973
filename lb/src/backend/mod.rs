//! The live backend set: each backend's identity (name + address), its reloadable settings
//! (weight, PROXY mode), health state and counters, shared by the connection tasks, the health
//! checker, the reloader and the admin API. A backend is an `Arc`, so a reload that keeps it
//! (same name and address) keeps its state and its open connections.
//!
//! Draining (`drain.rs`) has its own small state, `DrainCtl`, behind a lock: the close signal the backend's
//! connections wait on and the number of the current drain cycle. A signal fires once, so every
//! drain whose timeout passed leaves it fired; leaving `draining` then installs a fresh one, or
//! the connections opened after `ready` would be closed the moment they start.
//!
//! [`Backend::dial`] is the one way to open a TCP connection to a backend: the data path
//! (`conn::connect`) and the health checks (`control::health`) both use it. [`balance`] is the
//! pure picker over this set. Health bookkeeping (rise/fall streak, last check, checker
//! ticket) is `check.rs`.
//!
//! May use `config`, `metrics`, `signal`; never `state`, `conn` or `control`.

pub mod balance;
mod check;
pub mod clients;
mod drain;
pub mod pacing;
pub mod placement;
pub mod rebalance;
#[cfg(test)]
mod tests;

use std::io;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpStream;

use crate::config::{BackendAddr, BackendConfig, ProxyMode, ProxyTlvs};
use crate::metrics::{BackendLabel, BytesLabel, Metrics};
use crate::signal::Signal;

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
    /// Drained by an operator or removed from the config (leftovers close after
    /// `drain_timeout`), or the broker said it drains (it moves them itself): takes none.
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
    /// The [`ProxyTlvs`] bits of its `v2` header.
    tlvs: AtomicU8,
    /// SO_SNDBUF / SO_RCVBUF for the next dial (0: the kernel's default); a reload sets them.
    sndbuf: AtomicU32,
    rcvbuf: AtomicU32,
    state: AtomicU8,
    active: AtomicU64,
    total: AtomicU64,
    /// Consecutive check outcomes: positive = successes, negative = failures.
    streak: AtomicI64,
    counters: BackendCounters,
    drain: Mutex<DrainCtl>,
    /// The checker task that owns this backend (see [`Backend::claim_checker`]).
    checker: AtomicU64,
    /// The last health checks, newest last (at most [`CHECK_HISTORY`]).
    last_check: Mutex<std::collections::VecDeque<LastCheck>>,
    /// Admission of new clients at the rate its broker's feed gives (`[placement] pacing`).
    pacer: pacing::Pacer,
    /// The client ids of its open connections (the rebalance reads them).
    clients: clients::Clients,
}

/// One drain cycle's close signal and number, changed together under [`Backend`]'s lock so a
/// timer and an operator's `ready` cannot interleave.
#[derive(Default)]
struct DrainCtl {
    /// What connections opened now wait on. Fired when a drain's timeout passes; replaced when
    /// the backend leaves `draining` after that.
    close: Signal,
    /// Bumped at every entry into and exit from `draining`: the timer of an older cycle does
    /// nothing.
    epoch: u64,
    /// Who put the backend in `draining` (`None` when it is not).
    cause: Option<DrainCause>,
}

/// Why a backend is `draining`, as `/api/backends` shows it (`drain_cause`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainCause {
    /// `POST /api/backends/{name}/drain`, or removed by a reload: its leftovers are closed
    /// after `drain_timeout`.
    Operator,
    /// The broker's health check answered "draining" (CONNACK `0x9C`): the broker moves its
    /// clients itself, so the LB closes none of them.
    Backend,
}

impl DrainCause {
    /// The name in `/api/backends`.
    pub fn as_str(self) -> &'static str {
        match self {
            DrainCause::Operator => "operator",
            DrainCause::Backend => "backend",
        }
    }
}

/// How many health-check outcomes a backend keeps for the status page.
pub const CHECK_HISTORY: usize = 20;

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
        // the connect-time histogram exists (empty) before the first forward
        drop(metrics.backend_connect_seconds.get_or_create(&l));
        Backend {
            name: cfg.name.clone(),
            addr: cfg.addr.clone(),
            weight: AtomicU32::new(cfg.weight),
            proxy: AtomicU8::new(proxy_to_u8(cfg.proxy_protocol)),
            tlvs: AtomicU8::new(cfg.proxy_tlvs.bits()),
            sndbuf: AtomicU32::new(cfg.bufs.sndbuf.unwrap_or(0)),
            rcvbuf: AtomicU32::new(cfg.bufs.rcvbuf.unwrap_or(0)),
            state: AtomicU8::new(state as u8),
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            streak: AtomicI64::new(0),
            counters,
            drain: Mutex::new(DrainCtl::default()),
            checker: AtomicU64::new(0),
            last_check: Mutex::new(std::collections::VecDeque::new()),
            pacer: pacing::Pacer::default(),
            clients: clients::Clients::default(),
        }
    }

    /// Its failover pacer ([`pacing`]).
    pub fn pacer(&self) -> &pacing::Pacer {
        &self.pacer
    }

    /// How the picker sees `backends` (borrowed, in their order).
    pub fn candidates<'a>(backends: &[&'a Arc<Backend>]) -> Vec<balance::Candidate<'a>> {
        backends
            .iter()
            .map(|b| balance::Candidate {
                name: b.name(),
                weight: b.weight(),
                active: b.active(),
            })
            .collect()
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
            BackendAddr::Ip(a) => self.dial_one(*a).await?,
            BackendAddr::Host(h, p) => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
                let mut found = None;
                for a in tokio::net::lookup_host((h.as_str(), *p)).await? {
                    match self.dial_one(a).await {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                found.ok_or(last)?
            }
        };
        let _ = s.set_nodelay(true);
        Ok(s)
    }

    /// One connect, with the socket buffers set before the handshake (so the window scale the
    /// kernel offers fits the receive buffer).
    async fn dial_one(&self, a: std::net::SocketAddr) -> io::Result<TcpStream> {
        let sock = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        match self.sndbuf.load(Ordering::Relaxed) {
            0 => {}
            n => sock.set_send_buffer_size(n)?,
        }
        match self.rcvbuf.load(Ordering::Relaxed) {
            0 => {}
            n => sock.set_recv_buffer_size(n)?,
        }
        sock.connect(a).await
    }

    /// Takes a reloaded config's weight, PROXY mode and TLVs and socket buffers (name and address are the
    /// identity).
    pub fn update(&self, cfg: &BackendConfig) {
        self.weight.store(cfg.weight, Ordering::Relaxed);
        self.proxy
            .store(proxy_to_u8(cfg.proxy_protocol), Ordering::Relaxed);
        self.tlvs.store(cfg.proxy_tlvs.bits(), Ordering::Relaxed);
        self.sndbuf
            .store(cfg.bufs.sndbuf.unwrap_or(0), Ordering::Relaxed);
        self.rcvbuf
            .store(cfg.bufs.rcvbuf.unwrap_or(0), Ordering::Relaxed);
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

    /// The certificate TLVs its `v2` header carries.
    pub fn proxy_tlvs(&self) -> ProxyTlvs {
        ProxyTlvs::from_bits(self.tlvs.load(Ordering::Relaxed))
    }

    /// Current health state.
    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Open forwarded connections.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Connections forwarded since the backend appeared.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Marks one forwarded connection open; the guard closes the count.
    pub fn open_connection(self: &Arc<Self>, client_id: &str) -> ConnGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        self.counters.total.inc();
        self.counters.active.inc();
        ConnGuard {
            backend: self.clone(),
            slot: self.clients.add(client_id),
        }
    }

    /// The client ids of its open connections, one per connection.
    pub fn client_ids(&self) -> Vec<Arc<str>> {
        self.clients.ids()
    }
}

/// Held by a forwarded connection; keeps the active count and the client list right however
/// the task ends.
pub struct ConnGuard {
    backend: Arc<Backend>,
    /// Its entry in the backend's client list (0: none, without a client id); a plain `u64`
    /// so an idle connection grows by 8 bytes only.
    slot: u64,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.backend.active.fetch_sub(1, Ordering::Relaxed);
        self.backend.counters.active.dec();
        self.backend.clients.remove(self.slot);
    }
}
