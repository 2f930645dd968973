//! Each listener's runtime: its config, its swappable TLS config and its counter handles
//! (resolved once, so counting is one atomic add), and the registry the reloader swaps
//! certificates through.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::config::ListenerConfig;
use crate::conn::tls_stream::handshake::prepare;
use crate::metrics::{BytesLabel, ListenerLabel, Metrics};

/// A listener with its TLS acceptor and counter handles.
pub struct ListenerRt {
    cfg: ListenerConfig,
    tls: ArcSwapOption<rustls::ServerConfig>,
    accepted: Counter,
    active: Gauge,
    bytes_in: Counter,
    bytes_out: Counter,
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
        ListenerRt {
            tls: ArcSwapOption::new(cfg.tls.as_ref().map(|t| prepare(t.server_config.clone()))),
            accepted: m.accepted.get_or_create_owned(&l),
            active: m.active.get_or_create_owned(&l),
            bytes_in: m.listener_bytes.get_or_create_owned(&b("in")),
            bytes_out: m.listener_bytes.get_or_create_owned(&b("out")),
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

    /// Swaps the TLS config of listeners whose name, bind and PROXY settings are unchanged
    /// (certificate rotation); returns the listener changes that need a restart.
    pub fn swap_tls(&self, new: &[ListenerConfig]) -> Vec<String> {
        let mut restart = Vec::new();
        let running = &self.0;
        for rt in running.iter() {
            match new.iter().find(|n| n.name == rt.cfg.name) {
                Some(n)
                    if n.bind == rt.cfg.bind
                        && n.proxy_protocol == rt.cfg.proxy_protocol
                        && n.trusted_proxies == rt.cfg.trusted_proxies
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
