//! Each listener's runtime: its config, its swappable TLS config and its counter handles
//! (resolved once, so counting is one atomic add), and the registry the reloader swaps
//! certificates through.

use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use mqedge_shared::ws::frame::FrameError;
use mqedge_shared::ws::FrameErrors;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::config::{ListenerConfig, ListenerNet};
use crate::conn::tls_stream::handshake::prepare;
use crate::metrics::{BytesLabel, ListenerLabel, Metrics, WsFrameLabel};

/// A listener with its TLS acceptor and counter handles.
pub struct ListenerRt {
    cfg: ListenerConfig,
    tls: ArcSwapOption<rustls::ServerConfig>,
    /// The live bandwidth and buffer settings: a reload swaps them, and the shaped connections
    /// read the rates from here at each refill, so a new rate applies to them at once.
    net: Arc<ArcSwap<ListenerNet>>,
    accepted: Counter,
    active: Gauge,
    bytes_in: Counter,
    bytes_out: Counter,
    /// `bandwidth_waits` for "in" and "out".
    waits: [Counter; 2],
    /// Where a WebSocket connection reports a refused frame.
    ws_errors: Arc<dyn FrameErrors>,
}

/// Counts a listener's refused WebSocket frames in `websocket_frame_errors_total`.
struct WsFrameCounter {
    family: Family<WsFrameLabel, Counter>,
    listener: String,
}

impl FrameErrors for WsFrameCounter {
    fn frame_error(&self, e: FrameError) {
        self.family
            .get_or_create(&WsFrameLabel {
                listener: self.listener.clone(),
                reason: e.label(),
            })
            .inc();
        tracing::debug!(listener = %self.listener, "closing a WebSocket connection: {e}");
    }
}

impl ListenerRt {
    /// Resolves counters and builds the acceptor.
    pub fn new(cfg: ListenerConfig, m: &Metrics) -> Self {
        let l = ListenerLabel {
            listener: cfg.name.clone(),
        };
        let b = |d| BytesLabel {
            name: cfg.name.clone(),
            direction: d,
        };
        // series the shipped alerts and dashboards watch exist at 0 from the start (an absent
        // series is not 0 to PromQL)
        for reason in ["no_backend", "over_limit", "tls_handshake", "paced"] {
            m.reject_zero(&cfg.name, reason);
        }
        if cfg.websocket.is_some() {
            m.reject_zero(&cfg.name, "ws_handshake");
        }
        if cfg.tls.is_some() {
            drop(m.tls_handshake_seconds.get_or_create(&l));
        }
        ListenerRt {
            tls: ArcSwapOption::new(cfg.tls.as_ref().map(|t| prepare(t.server_config.clone()))),
            net: Arc::new(ArcSwap::from_pointee(cfg.net)),
            accepted: m.accepted.get_or_create_owned(&l),
            active: m.active.get_or_create_owned(&l),
            bytes_in: m.listener_bytes.get_or_create_owned(&b("in")),
            bytes_out: m.listener_bytes.get_or_create_owned(&b("out")),
            waits: [
                m.bandwidth_waits.get_or_create_owned(&b("in")),
                m.bandwidth_waits.get_or_create_owned(&b("out")),
            ],
            ws_errors: Arc::new(WsFrameCounter {
                family: m.ws_frame_errors.clone(),
                listener: cfg.name.clone(),
            }),
            cfg,
        }
    }

    /// Its config.
    #[inline]
    pub fn cfg(&self) -> &ListenerConfig {
        &self.cfg
    }

    /// Its name (the metrics label).
    #[inline]
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// The TLS config for a connection accepted now; `None` on a plain listener.
    pub fn tls(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.tls.load_full()
    }

    /// Takes a new TLS config (certificate rotation on reload) for connections accepted from now.
    pub fn set_tls(&self, sc: Arc<rustls::ServerConfig>) {
        self.tls.store(Some(prepare(sc)));
    }

    /// The bandwidth and buffer settings in force now (a reload may have changed them).
    pub fn net(&self) -> ListenerNet {
        **self.net.load()
    }

    /// The handle shaped connections read their rates through.
    pub fn net_handle(&self) -> Arc<ArcSwap<ListenerNet>> {
        self.net.clone()
    }

    /// The bandwidth-wait counters ("in", "out") a shaped connection bumps.
    pub fn bandwidth_waits(&self) -> [Counter; 2] {
        self.waits.clone()
    }

    /// Where this listener's WebSocket connections report refused frames.
    pub fn ws_errors(&self) -> Arc<dyn FrameErrors> {
        self.ws_errors.clone()
    }

    /// Connections accepted.
    #[inline]
    pub fn accepted(&self) -> &Counter {
        &self.accepted
    }

    /// Connections open.
    #[inline]
    pub fn active(&self) -> &Gauge {
        &self.active
    }

    /// Bytes from clients.
    #[inline]
    pub fn bytes_in(&self) -> &Counter {
        &self.bytes_in
    }

    /// Bytes to clients.
    #[inline]
    pub fn bytes_out(&self) -> &Counter {
        &self.bytes_out
    }
}

/// The running listeners, for the reloader (they are fixed for the life of the process).
pub struct Listeners(Vec<Arc<ListenerRt>>);

impl Listeners {
    /// The listeners the LB runs, in config order.
    pub fn new(rts: Vec<Arc<ListenerRt>>) -> Self {
        Listeners(rts)
    }

    /// Swaps the TLS config (certificate rotation) and the bandwidth and buffer settings of
    /// listeners whose name, bind and PROXY settings are unchanged; returns the listener
    /// changes that need a restart.
    pub fn swap_tls(&self, new: &[ListenerConfig]) -> Vec<String> {
        let mut restart = Vec::new();
        let running = &self.0;
        for rt in running.iter() {
            match new.iter().find(|n| n.name == rt.cfg.name) {
                Some(n)
                    if n.bind == rt.cfg.bind
                        && n.proxy_protocol == rt.cfg.proxy_protocol
                        && n.trusted_proxies == rt.cfg.trusted_proxies
                        && n.tls.is_some() == rt.cfg.tls.is_some()
                        && n.websocket == rt.cfg.websocket =>
                {
                    if let Some(t) = &n.tls {
                        rt.set_tls(t.server_config.clone());
                    }
                    rt.net.store(Arc::new(n.net));
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
