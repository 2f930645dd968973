//! mqedge-lb: the MQTT-aware TLS load balancer. A connection's path, one file per phase:
//! [`listener`] accepts and spawns; [`tls`] terminates TLS (and reads an upstream PROXY header);
//! [`peek`] reads the CONNECT; [`balance`] orders the backends; [`proxy_header`] builds the PROXY
//! header; [`forward`] connects (with retries) and pumps bytes. [`backends`] is the live set,
//! [`config`] the two-stage config, [`metrics`] the counters.
#![forbid(unsafe_code)]

pub mod admin;
pub mod backends;
pub mod balance;
pub mod config;
pub mod forward;
pub mod health;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod peek;
pub mod proxy_header;
pub mod reload;
pub mod signal;
pub mod tls;
pub mod tls_stream;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::backends::{Backend, State};
use crate::config::{BalanceConfig, Config, HealthConfig, LbSettings, ListenerConfig};
use crate::metrics::Metrics;

/// Errors that stop the LB as a whole (per-connection problems never do).
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    /// A listener could not be bound.
    #[error("cannot bind listener {name} on {addr}")]
    Bind {
        /// Listener name.
        name: String,
        /// Address.
        addr: std::net::SocketAddr,
        /// Cause (shown by the caller's error chain).
        #[source]
        source: std::io::Error,
    },
    /// The listeners given to [`run`] do not match the config's.
    #[error("{0}")]
    Internal(String),
}

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
    /// Bumped by every successful reload.
    pub generation: u64,
}

/// The state every task of one LB shares.
pub struct Lb {
    /// Live config.
    pub live: ArcSwap<Live>,
    /// Counters.
    pub metrics: Metrics,
    /// Round-robin state.
    pub picker: balance::Picker,
    /// Reload bookkeeping for `/api/reload`.
    pub reload: reload::ReloadStatus,
    /// Client connections open now, all listeners (for `max_connections`).
    pub client_conns: AtomicU64,
    /// Per-IP connect rate buckets.
    pub limiter: limits::PerIpLimiter,
    listeners: std::sync::Mutex<Vec<Arc<listener::ListenerRt>>>,
    accepting: AtomicBool,
    seq: AtomicU64,
    boot: u64,
}

impl Lb {
    /// Builds the shared state from a validated config. Backends start `checking`; [`run`]
    /// checks them all once before it accepts clients.
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
        Arc::new(Lb {
            live: ArcSwap::from_pointee(Live {
                lb: cfg.lb.clone(),
                balance: cfg.balance,
                health: cfg.health,
                backends,
                generation: 1,
            }),
            metrics,
            picker: balance::Picker::new(),
            reload: reload::ReloadStatus::default(),
            client_conns: AtomicU64::new(0),
            limiter: limits::PerIpLimiter::default(),
            listeners: std::sync::Mutex::new(Vec::new()),
            accepting: AtomicBool::new(true),
            seq: AtomicU64::new(0),
            boot,
        })
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

    /// Swaps the TLS config of listeners whose name, bind and PROXY flag are unchanged
    /// (certificate rotation); returns the listener changes that need a restart.
    pub fn swap_listener_tls(&self, new: &[ListenerConfig]) -> Vec<String> {
        let mut restart = Vec::new();
        let Ok(running) = self.listeners.lock() else {
            return restart;
        };
        for rt in running.iter() {
            match new.iter().find(|n| n.name == rt.cfg.name) {
                Some(n)
                    if n.bind == rt.cfg.bind
                        && n.proxy_protocol == rt.cfg.proxy_protocol
                        && n.tls.is_some() == rt.cfg.tls.is_some() =>
                {
                    if let Some(t) = &n.tls {
                        rt.set_tls(t.server_config.clone());
                    }
                }
                Some(_) => restart.push(format!("listener {:?}", rt.cfg.name)),
                None => restart.push(format!("listener {:?} (removed)", rt.cfg.name)),
            }
        }
        for n in new {
            if !running.iter().any(|r| r.cfg.name == n.name) {
                restart.push(format!("listener {:?} (added)", n.name));
            }
        }
        restart
    }
}

/// Listeners bound before the LB runs.
pub struct Bound {
    /// One per `[[listener]]`, in config order.
    pub listeners: Vec<TcpListener>,
    /// The admin API, when `[lb] admin` is set.
    pub admin: Option<TcpListener>,
}

/// Binds every listener of the config (before the runtime is shared with anything else, so a
/// taken port is a clear startup error).
pub async fn bind(cfg: &Config) -> Result<Bound, LbError> {
    let mut listeners = Vec::new();
    for l in &cfg.listeners {
        let t = TcpListener::bind(l.bind).await.map_err(|e| LbError::Bind {
            name: l.name.clone(),
            addr: l.bind,
            source: e,
        })?;
        listeners.push(t);
    }
    let admin = match cfg.lb.admin {
        Some(a) => Some(TcpListener::bind(a).await.map_err(|e| LbError::Bind {
            name: "admin".into(),
            addr: a,
            source: e,
        })?),
        None => None,
    };
    Ok(Bound { listeners, admin })
}

/// Runs the LB on already-bound listeners (one per `cfg.listeners`, same order) until
/// `shutdown` resolves; then stops accepting, lets connections finish for up to
/// `drain_timeout`, and returns.
pub async fn run(
    cfg: Config,
    bound: Bound,
    shutdown: impl Future<Output = ()>,
) -> Result<(), LbError> {
    let lb = Lb::new(&cfg);
    run_with(lb, cfg, bound, shutdown).await
}

/// [`run`] with shared state made by the caller (tests inspect it).
pub async fn run_with(
    lb: Arc<Lb>,
    cfg: Config,
    bound: Bound,
    shutdown: impl Future<Output = ()>,
) -> Result<(), LbError> {
    let Bound { listeners, admin } = bound;
    if listeners.len() != cfg.listeners.len() {
        return Err(LbError::Internal(format!(
            "{} listeners bound for {} configured",
            listeners.len(),
            cfg.listeners.len()
        )));
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let (kill_tx, kill_rx) = watch::channel(false);
    // what open connections watch (the admin API keeps the watch channel)
    let conn_kill = signal::Signal::new();
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    if let Some(a) = admin {
        // the admin API outlives the accept loops until the drain ends (operators watch it)
        let mut kill = kill_rx.clone();
        tokio::spawn(admin::serve(lb.clone(), a, async move {
            let _ = kill.wait_for(|k| *k).await;
        }));
    }
    // every backend gets its first check before any client is accepted
    health::first_round(&lb).await;
    for b in lb.live.load().backends.iter() {
        tokio::spawn(health::run_checker(lb.clone(), b.clone(), true));
    }
    tokio::spawn(reload::watch_loop(
        lb.clone(),
        cfg.path.clone(),
        stop_rx.clone(),
    ));
    {
        let (lb, mut stop) = (lb.clone(), stop_rx.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                }
                let l = lb.live.load();
                lb.limiter.sweep(
                    l.lb.connect_rate_per_ip,
                    l.lb.connect_burst_per_ip,
                    std::time::Instant::now(),
                );
            }
        });
    }
    let mut accept_loops = Vec::new();
    for (lc, tcp) in cfg.listeners.iter().zip(listeners) {
        let addr = tcp.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(listener = %lc.name, addr = %addr, tls = lc.tls.is_some(), proxy_in = lc.proxy_protocol, "listening");
        let rt = Arc::new(listener::ListenerRt::new(lc.clone(), &lb.metrics));
        if let Ok(mut l) = lb.listeners.lock() {
            l.push(rt.clone());
        }
        accept_loops.push(tokio::spawn(listener::accept_loop(
            lb.clone(),
            rt,
            tcp,
            stop_rx.clone(),
            conn_kill.clone(),
            done_tx.clone(),
        )));
    }
    drop(done_tx);
    shutdown.await;
    let drain = lb.live.load().lb.drain_timeout;
    tracing::info!(drain_timeout = ?drain, "shutting down: no new connections; open ones may finish");
    lb.accepting.store(false, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    for a in accept_loops {
        let _ = a.await;
    }
    // Every connection task holds a `done_tx` clone: recv() returns None when all are gone.
    if tokio::time::timeout(drain, done_rx.recv()).await.is_err() {
        tracing::info!("drain_timeout reached: closing the remaining connections");
        conn_kill.fire();
        let _ = kill_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(1), done_rx.recv()).await;
    }
    conn_kill.fire();
    let _ = kill_tx.send(true);
    Ok(())
}

/// Default linger for the second half of a connection once one side has closed.
pub(crate) const HALF_CLOSE_LINGER: Duration = Duration::from_secs(5);
