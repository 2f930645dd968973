//! mqedge-lb: the MQTT-aware TLS load balancer. The folder tree is the architecture, and
//! dependencies point down it:
//!
//! - [`control`]: tasks that steer the LB from outside a connection's path: health checks,
//!   reload by diff, the admin API. Uses `conn` (the listener registry), `state` and below.
//! - [`conn`]: one client connection's path, a file per phase: accept, PROXY in, TLS, CONNECT
//!   peek, pick and connect, byte pump. Uses `state`, `backend` and below.
//! - [`state`]: [`Lb`], the handle every task shares. Uses `backend` and below.
//! - [`backend`]: the live backend set, its state machine and how to dial one; [`balance`] is
//!   its pure picker.
//! - [`config`], [`metrics`], [`signal`], [`limits`]: leaves.
//!
//! This file only binds, starts the tasks and drains at shutdown (see `LIFECYCLE.md`).
#![forbid(unsafe_code)]

pub mod backend;
pub mod config;
pub mod conn;
pub mod control;
pub mod limits;
pub mod metrics;
pub mod signal;
pub mod state;

pub use backend::balance;
pub use state::{Lb, Live};

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::conn::listener::{ListenerRt, Listeners};

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
        tokio::spawn(control::admin::serve(lb.clone(), a, async move {
            let _ = kill.wait_for(|k| *k).await;
        }));
    }
    // every backend gets its first check before any client is accepted
    control::health::first_round(&lb).await;
    for b in lb.live().backends.iter() {
        tokio::spawn(control::health::run_checker(lb.clone(), b.clone(), true));
    }
    let rts: Vec<Arc<ListenerRt>> = cfg
        .listeners
        .iter()
        .map(|lc| Arc::new(ListenerRt::new(lc.clone(), lb.metrics())))
        .collect();
    tokio::spawn(control::reload::watch_loop(
        lb.clone(),
        Arc::new(Listeners::new(rts.clone())),
        cfg.path.clone(),
        stop_rx.clone(),
    ));
    tokio::spawn(sweep_limiter(lb.clone(), stop_rx.clone()));
    tokio::spawn(control::placement::run(lb.clone(), stop_rx.clone()));
    let mut accept_loops = Vec::new();
    for (rt, tcp) in rts.into_iter().zip(listeners) {
        let lc = rt.cfg();
        let addr = tcp.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(listener = %lc.name, addr = %addr, tls = lc.tls.is_some(), proxy_in = lc.proxy_protocol, websocket = lc.websocket.as_ref().map(|w| w.path()), "listening");
        accept_loops.push(tokio::spawn(conn::accept::accept_loop(
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
    let drain = lb.live().lb.drain_timeout;
    tracing::info!(drain_timeout = ?drain, "shutting down: no new connections; open ones may finish");
    lb.stop_accepting();
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

/// Every 10 s until `stop`, forgets the per-IP buckets of quiet sources.
async fn sweep_limiter(lb: Arc<Lb>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
        lb.sweep_limiter();
    }
}
