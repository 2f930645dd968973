//! mqedge-lb: the MQTT-aware TLS load balancer. A connection's path, one file per phase:
//! [`listener`] accepts and spawns; [`tls`] terminates TLS (and reads an upstream PROXY header);
//! [`peek`] reads the CONNECT; [`balance`] orders the backends; [`proxy_header`] builds the PROXY
//! header; [`forward`] connects (with retries) and pumps bytes. [`backends`] is the live set,
//! [`config`] the two-stage config, [`metrics`] the counters.
#![forbid(unsafe_code)]

pub mod backends;
pub mod balance;
pub mod config;
pub mod forward;
pub mod listener;
pub mod metrics;
pub mod peek;
pub mod proxy_header;
pub mod tls;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
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
    #[error("cannot bind listener {name} on {addr}: {source}")]
    Bind {
        /// Listener name.
        name: String,
        /// Address.
        addr: std::net::SocketAddr,
        /// Cause.
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
    seq: AtomicU64,
    boot: u64,
}

impl Lb {
    /// Builds the shared state from a validated config. Backends start `Up` here (no health
    /// checker yet decides otherwise).
    pub fn new(cfg: &Config) -> Arc<Lb> {
        let metrics = Metrics::new();
        let backends = cfg
            .backends
            .iter()
            .map(|b| Arc::new(Backend::new(b.clone(), State::Up, &metrics)))
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
}

/// Binds every listener of the config (before the runtime is shared with anything else, so a
/// taken port is a clear startup error).
pub async fn bind(cfg: &Config) -> Result<Vec<TcpListener>, LbError> {
    let mut out = Vec::new();
    for l in &cfg.listeners {
        let t = TcpListener::bind(l.bind).await.map_err(|e| LbError::Bind {
            name: l.name.clone(),
            addr: l.bind,
            source: e,
        })?;
        out.push(t);
    }
    Ok(out)
}

/// Runs the LB on already-bound listeners (one per `cfg.listeners`, same order) until
/// `shutdown` resolves; then stops accepting, lets connections finish for up to
/// `drain_timeout`, and returns.
pub async fn run(
    cfg: Config,
    listeners: Vec<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), LbError> {
    let lb = Lb::new(&cfg);
    run_with(lb, cfg, listeners, shutdown).await
}

/// [`run`] with shared state made by the caller (tests inspect it).
pub async fn run_with(
    lb: Arc<Lb>,
    cfg: Config,
    listeners: Vec<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), LbError> {
    if listeners.len() != cfg.listeners.len() {
        return Err(LbError::Internal(format!(
            "{} listeners bound for {} configured",
            listeners.len(),
            cfg.listeners.len()
        )));
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let (kill_tx, kill_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let mut accept_loops = Vec::new();
    for (lc, tcp) in cfg.listeners.iter().zip(listeners) {
        let addr = tcp
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tracing::info!(listener = %lc.name, addr = %addr, tls = lc.tls.is_some(), proxy_in = lc.proxy_protocol, "listening");
        let rt = Arc::new(listener::ListenerRt::new(lc.clone(), &lb.metrics));
        accept_loops.push(tokio::spawn(listener::accept_loop(
            lb.clone(),
            rt,
            tcp,
            stop_rx.clone(),
            kill_rx.clone(),
            done_tx.clone(),
        )));
    }
    drop(done_tx);
    shutdown.await;
    let drain = lb.live.load().lb.drain_timeout;
    tracing::info!(drain_timeout = ?drain, "shutting down: no new connections; open ones may finish");
    let _ = stop_tx.send(true);
    for a in accept_loops {
        let _ = a.await;
    }
    // Every connection task holds a `done_tx` clone: recv() returns None when all are gone.
    if tokio::time::timeout(drain, done_rx.recv()).await.is_err() {
        tracing::info!("drain_timeout reached: closing the remaining connections");
        let _ = kill_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(1), done_rx.recv()).await;
    }
    Ok(())
}

/// Names the listener configs, for diagnostics.
pub fn listener_names(l: &[ListenerConfig]) -> Vec<&str> {
    l.iter().map(|l| l.name.as_str()).collect()
}

/// Default linger for the second half of a connection once one side has closed.
pub(crate) const HALF_CLOSE_LINGER: Duration = Duration::from_secs(5);
