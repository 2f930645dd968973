//! mqedge-broker: an MQTT 3.1.1 / 5.0 broker node. A connection's path: [`listener`] accepts and
//! reads the PROXY header (trusted proxies only); [`connection`] runs the client: CONNECT and
//! auth ([`auth`]), its session ([`session`]: state, the registry with takeover, wills and
//! expiry, the store record), the publish path in [`broker`] (the core that owns them), routing
//! ([`routing`]: the topic trie, retained messages, shared-group policy; [`topic`]), retained
//! messages streamed to a new subscription through [`connection::feed`], topic aliases on outgoing PUBLISHes
//! ([`connection::aliases`]), durable state ([`store`]), and the lingering close after a reason ([`connection::linger`]).
//! Other nodes are behind [`cluster::Peers`]. [`protocol`] is the pure codec; [`observe`]
//! ([`admin`], [`sys`]) and [`metrics`] observe.
#![forbid(unsafe_code)]

pub mod auth;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod drain;
pub mod error;
pub mod limits;
pub mod listener;
pub mod message;
pub mod metrics;
pub mod observe;
pub mod replica;
pub mod routing;
pub mod session;
pub mod store;
pub mod websocket;

#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
mod test_rng;

/// The MQTT codec and packets live in their own crate, shared with the LB and the bench; this
/// keeps `crate::protocol::...` (and `mqedge_broker::protocol`) naming them.
pub use mqedge_protocol as protocol;
/// The topic rules too, as `crate::topic` (the router, retained store and ACL use them).
pub use mqedge_protocol::topic;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

pub use crate::broker::{Broker, BrokerError};
use crate::config::Config;
use crate::observe::{admin, sys};

/// Listeners bound before the broker runs.
pub struct Bound {
    /// One per `[[listener]]`, in config order.
    pub listeners: Vec<TcpListener>,
    /// Admin API.
    pub admin: Option<TcpListener>,
}

/// Binds the config's listeners (a taken port is a clear startup error).
pub async fn bind(cfg: &Config) -> Result<Bound, BrokerError> {
    let mut listeners = Vec::new();
    for l in &cfg.listeners {
        listeners.push(
            TcpListener::bind(l.bind)
                .await
                .map_err(|e| BrokerError::Bind {
                    what: format!("listener {}", l.name),
                    addr: l.bind,
                    source: e,
                })?,
        );
    }
    let admin = match cfg.admin {
        Some(a) => Some(TcpListener::bind(a).await.map_err(|e| BrokerError::Bind {
            what: "admin".into(),
            addr: a,
            source: e,
        })?),
        None => None,
    };
    Ok(Bound { listeners, admin })
}

/// Runs a broker node on bound listeners until `shutdown` (or, clustered, until a drain started
/// by `POST /api/drain` or [`Broker::start_drain`] has moved every client away); then stops accepting, closes client
/// connections (v5 clients get DISCONNECT 0x8B; sessions stay, persisted when `data_dir` is set;
/// wills are not published) and flushes the store.
pub async fn run(
    cfg: Config,
    bound: Bound,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BrokerError> {
    let b = Broker::new(cfg)?;
    run_with(b, bound, shutdown).await
}

/// [`run`] with a broker the caller built.
pub async fn run_with(
    b: Arc<Broker>,
    bound: Bound,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BrokerError> {
    run_wired(b, bound, cluster::Wiring::default(), shutdown).await
}

/// [`run_with`] with the cluster on another transport or other timers (tests: an in-memory
/// network, see `cluster::memory`; no listener needs to be bound).
pub async fn run_wired(
    b: Arc<Broker>,
    bound: Bound,
    wiring: cluster::Wiring,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BrokerError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let cluster = match &b.cfg().cluster {
        Some(cc) => {
            let counters = cluster_counters(b.metrics());
            let c = cluster::Cluster::wired(&b.cfg().name, cc, counters, wiring);
            b.set_cluster(c.clone(), stop_rx.clone());
            if let Some(a) = bound.admin.as_ref().and_then(|a| a.local_addr().ok()) {
                c.set_admin(a);
            }
            let local: Arc<dyn cluster::LocalNode> = b.clone();
            c.start(&local, cc, stop_rx.clone()).await?;
            Some(c)
        }
        None => None,
    };
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    if let Some(a) = bound.admin {
        let mut stop = stop_rx.clone();
        tokio::spawn(admin::serve(b.clone(), a, async move {
            let _ = stop.wait_for(|s| *s).await;
        }));
    }
    tokio::spawn(sys::run(b.clone(), stop_rx.clone()));
    tokio::pin!(shutdown);
    let mut stopped = false;
    if let (Some(c), Some(cc)) = (&cluster, &b.cfg().cluster) {
        // accept no client before the peers' routes are known: a publish acknowledged now
        // would have no copy for their sessions
        tokio::select! {
            missing = c.wait_synced(cc.sync_timeout) => {
                if missing.is_empty() {
                    tracing::info!(node = %b.cfg().name, "cluster: route snapshots of every peer in; accepting clients");
                } else {
                    tracing::warn!(node = %b.cfg().name, missing = ?missing, timeout = ?cc.sync_timeout, "cluster: no route snapshot from these peers within sync_timeout; accepting clients anyway");
                }
            }
            _ = &mut shutdown => stopped = true,
        }
        if !stopped {
            // sessions restored from data_dir whose clients went elsewhere meanwhile follow them
            let pushed = c.reconcile_restored(cc.sync_timeout).await;
            if pushed > 0 {
                tracing::info!(node = %b.cfg().name, pushed, "cluster: restored sessions pushed to the nodes their clients reconnected to");
            }
            // standby copies whose holder died while this node was away
            if let Some(r) = b.replica() {
                r.promote_orphans(cc.sync_timeout).await;
            }
        }
    }
    tokio::spawn(b.clone().expire_tombstones(stop_rx.clone()));
    b.expire_restored();
    let mut loops = Vec::new();
    for (lc, l) in b.cfg().listeners.iter().zip(bound.listeners) {
        let addr = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(node = %b.cfg().name, listener = %lc.name, addr = %addr, proxy_protocol = ?lc.proxy_protocol, "listening");
        loops.push(tokio::spawn(listener::accept_loop(
            b.clone(),
            Arc::new(lc.clone()),
            l,
            stop_rx.clone(),
            done_tx.clone(),
        )));
    }
    drop(done_tx);
    // (sessions a drain pushed, and whether one ran to its end)
    let mut drained = (0, false);
    if !stopped {
        match (&cluster, &b.cfg().cluster) {
            (Some(c), Some(cc)) => tokio::select! {
                _ = &mut shutdown => {}
                (pushed, _) = async {
                    b.drain().wait_started().await;
                    c.drain(b.drain(), cc).await
                } => {
                    b.drain().set_phase(drain::Phase::Done);
                    drained = (pushed, true);
                }
            },
            _ => (&mut shutdown).await,
        }
    }
    tracing::info!(node = %b.cfg().name, "shutting down");
    // stop accepting first: a client told to go must not come back here
    let _ = stop_tx.send(true);
    for l in loops {
        let _ = l.await;
    }
    if let Some(c) = &cluster {
        // every persistent session goes to the node the LB picks next for its client; peers
        // keep this node's routes until then, and mark it down (Leave) only afterwards
        let timeout = b.cfg().cluster.as_ref().map(|c| c.leave_timeout);
        let started = std::time::Instant::now();
        let (moved, left) = c.hand_over_all(timeout.unwrap_or_default()).await;
        let (sessions, drained) = (moved + drained.0, drained.1);
        tracing::info!(node = %b.cfg().name, sessions, not_confirmed = left, drained, elapsed = ?started.elapsed(), "sessions handed over");
        c.leave().await;
    }
    // connected clients are told (v5: DISCONNECT 0x8B), flushed and detached, bounded; the
    // rest (still in their CONNECT phase) end with the runtime
    let told = b.close_all_connections();
    tracing::info!(node = %b.cfg().name, connections = told, "closing client connections");
    let _ = tokio::time::timeout(Duration::from_secs(2), done_rx.recv()).await;
    if let Some(s) = b.store() {
        s.close().await;
    }
    Ok(())
}

/// The cluster's counters, resolved from the registry once (forward failures by reason).
fn cluster_counters(m: &metrics::Metrics) -> cluster::ClusterCounters {
    let failed = |reason: &str| {
        m.cluster_forward_failures
            .get_or_create(&metrics::Reason {
                reason: reason.to_string(),
            })
            .clone()
    };
    cluster::ClusterCounters {
        forwarded: m.cluster_forwarded.clone(),
        forwarded_bytes: m.cluster_forwarded_bytes.clone(),
        ack_frames: m.cluster_ack_frames.clone(),
        transfers_received: m.cluster_transfers_received.clone(),
        transfers_dropped: m.cluster_transfers_dropped.clone(),
        failed_unreachable: failed("peer unreachable"),
        failed_queue_full: failed("queue full"),
        failed_gone: failed("peer gone"),
        failed_down: failed("peer down"),
        auth_failures: cluster::AuthCounters(cluster::AuthFailure::ALL.map(|r| {
            m.cluster_auth_failures
                .get_or_create(&metrics::Reason {
                    reason: r.label().to_string(),
                })
                .clone()
        })),
    }
}
