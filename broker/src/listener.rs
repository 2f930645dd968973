//! MQTT listeners: accept (a connection counts toward `max_connections` from here, before its
//! CONNECT), then (in the connection's task) the PROXY header when the listener expects one — only from `trusted_proxies`, refused and counted otherwise — then the MQTT
//! connection. The PROXY source address is the client's address everywhere after this point.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mqedge_shared::proxy::{self, ProxyError, ProxyInfo, ReadError};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::broker::Broker;
use crate::config::{ListenerConfig, ProxyIn};
use crate::connection::{self, ClientInfo};
use crate::error::CloseReason;
use crate::limits::Limits;

/// Time allowed for the PROXY header.
const PROXY_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts until `stop`; each connection task holds `done`.
pub async fn accept_loop(
    b: Arc<Broker>,
    lc: Arc<ListenerConfig>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    done: mpsc::Sender<()>,
) {
    while let Some((tcp, peer)) = mqedge_shared::net::accept(&listener, &mut stop, &lc.name).await {
        let m = b.metrics();
        let open = (m.connected.get() + m.connecting.get()).max(0) as u64;
        if !Limits::from_config(&b.cfg().limits).admits_connection(open) {
            CloseReason::OverLimit.count(m);
            drop(tcp);
            continue;
        }
        let pending = Pending::new(b.clone());
        // boxed: the PROXY and CONNECT phases are freed once the client is in, so the task of
        // an idle connection holds only the established connection
        let setup = Box::pin(establish(b.clone(), lc.clone(), tcp, peer));
        let done = done.clone();
        tokio::spawn(async move {
            // served in place: one copy of the connection's state in the task
            let mut live = setup.await;
            // connected (counted in `connected`) or gone
            drop(pending);
            let told = match live.as_mut() {
                Some(live) => live.serve().await,
                None => false,
            };
            // the session is detached: a shutdown need not wait for the lingering close
            drop(done);
            if let Some(live) = live {
                Box::pin(live.close(told)).await;
            }
        });
    }
}

/// A connection accepted and still in its PROXY/CONNECT phase, counted in
/// `connections_pending` (and toward `max_connections`) until dropped.
struct Pending(Arc<Broker>);

impl Pending {
    fn new(b: Arc<Broker>) -> Pending {
        b.metrics().connecting.inc();
        Pending(b)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.metrics().connecting.dec();
    }
}

/// The PROXY header (when the listener expects one), then the CONNECT phase: `None` when the
/// connection was refused or went away.
async fn establish(
    b: Arc<Broker>,
    lc: Arc<ListenerConfig>,
    mut tcp: TcpStream,
    peer: std::net::SocketAddr,
) -> Option<connection::Live> {
    let mut buf = BytesMut::new();
    let mut info = ClientInfo {
        addr: peer,
        cn_username: None,
    };
    if lc.proxy_protocol != ProxyIn::Off {
        let trusted = lc.trusted_proxies.iter().any(|c| c.contains(peer.ip()));
        match tokio::time::timeout(PROXY_TIMEOUT, Box::pin(read_proxy(&mut tcp, &mut buf))).await {
            Ok(Ok(Some(h))) => {
                if !trusted {
                    let why = CloseReason::UntrustedProxy;
                    why.count(b.metrics());
                    tracing::warn!(peer = %peer, listener = %lc.name, "{why}");
                    return None;
                }
                if let Some(src) = h.src {
                    info.addr = src;
                }
                if lc.use_cn_as_username {
                    info.cn_username = h
                        .ssl
                        .as_ref()
                        .filter(|s| s.client_cert && s.verified)
                        .and_then(|s| s.cn.clone());
                }
            }
            Ok(Ok(None)) if lc.proxy_protocol == ProxyIn::Optional => {}
            Ok(Ok(None)) => {
                let why = CloseReason::ProxyRequired;
                why.count(b.metrics());
                tracing::warn!(peer = %peer, listener = %lc.name, "{why}");
                return None;
            }
            Ok(Err(e)) => {
                let why = CloseReason::BadProxyHeader;
                why.count(b.metrics());
                tracing::warn!(peer = %peer, listener = %lc.name, error = %e, "{why}");
                return None;
            }
            Err(_) => {
                let why = CloseReason::ProxyTimeout;
                why.count(b.metrics());
                tracing::info!(peer = %peer, listener = %lc.name, "{why}");
                return None;
            }
        }
    }
    connection::establish(b, tcp, buf, info).await
}

/// Reads a PROXY header if the stream starts with one. `Ok(None)`: it does not (bytes read stay
/// in `buf` for MQTT). Whatever follows the header stays in `buf`.
async fn read_proxy(
    tcp: &mut TcpStream,
    buf: &mut BytesMut,
) -> Result<Option<ProxyInfo>, ProxyError> {
    let (info, rest) = proxy::read_header(tcp).await.map_err(|e| match e {
        ReadError::Header(e) => e,
        ReadError::Io(_) => ProxyError::Invalid("connection closed in the PROXY header".into()),
    })?;
    *buf = BytesMut::from(Bytes::from(rest));
    Ok(info)
}
