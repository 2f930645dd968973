//! MQTT listeners: accept (a connection counts toward `max_connections` from here, before its
//! CONNECT), then (in the connection's task) the PROXY header when the listener expects one — only from `trusted_proxies`, refused and counted otherwise — then the MQTT
//! connection — on a WebSocket listener through the Upgrade and its bridge (`websocket.rs`)
//! first. The PROXY source address (or a trusted forwarder's `X-Forwarded-For`) is the
//! client's address everywhere after this point.

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
use crate::websocket::{self, Bridge};

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
    let bridge = match &lc.websocket {
        None => None,
        Some(_) => match Bridge::bind().await {
            Ok(br) => Some(Arc::new(br)),
            Err(e) => {
                tracing::error!(listener = %lc.name, error = %e, "WebSocket listener: cannot bind its loopback bridge");
                return;
            }
        },
    };
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
        let setup = Box::pin(establish(b.clone(), lc.clone(), bridge.clone(), tcp, peer));
        tokio::spawn(connection_task(setup, pending, done.clone()));
    }
}

/// The task of one connection: its setup (boxed: freed once the client is in), then the
/// established connection, served in place (one copy of its state in the task), then its
/// close. What an idle connection's task holds is this future (budget: see the test below).
async fn connection_task<F: std::future::Future<Output = Option<connection::Live>>>(
    setup: std::pin::Pin<Box<F>>,
    pending: Pending,
    done: mpsc::Sender<()>,
) {
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
    bridge: Option<Arc<Bridge>>,
    mut tcp: TcpStream,
    peer: std::net::SocketAddr,
) -> Option<connection::Live> {
    let mut buf = BytesMut::new();
    let mut info = ClientInfo {
        addr: peer,
        cert_username: None,
        missing_identity: None,
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
                if let Some(rule) = lc.cert_username {
                    match h.ssl.as_ref().and_then(|s| rule.from.pick(s)) {
                        Some(u) => info.cert_username = Some(u),
                        // refused at the CONNECT, with a CONNACK that says why; a LOCAL header
                        // (the LB's health check) names no client: the password rules apply
                        None if rule.required && h.src.is_some() => {
                            info.missing_identity = Some(rule.from.name())
                        }
                        None => {}
                    }
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
    if let (Some(ws), Some(bridge)) = (&lc.websocket, &bridge) {
        let head = std::mem::take(&mut buf).to_vec();
        let (far, client) = websocket::accept(ws, bridge, &b, tcp, head, info.addr).await?;
        info.addr = client;
        tcp = far;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// tokio allocates a task as one cell of its header, scheduler handle, id and stage tag
    /// (56 bytes), this future and its trailer (48), rounded up to 128 bytes (x86_64): a future
    /// of at most 536 bytes makes a 640-byte task. Measured (x86_64, debug build, December
    /// 2026): 520 bytes; the task of an idle connection was 768 bytes before the main loop's
    /// futures were trimmed (heaptrack).
    #[test]
    fn a_connection_task_fits_a_640_byte_cell() {
        let cfg = Config::parse(
            std::path::Path::new("t.toml"),
            "[[listener]]\nbind = \"127.0.0.1:0\"\n[auth]\nallow_anonymous = true\n",
        )
        .expect("config");
        let b = Broker::new(cfg).expect("broker");
        let (done, _rx) = mpsc::channel(1);
        let task = connection_task(Box::pin(async { None }), Pending::new(b), done);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 536, "a connection's task future is {size} bytes");
    }
}
