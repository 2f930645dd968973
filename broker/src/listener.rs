//! MQTT listeners: accept, then (in the connection's task) the PROXY header when the listener
//! expects one — only from `trusted_proxies`, refused and counted otherwise — then the MQTT
//! connection. The PROXY source address is the client's address everywhere after this point.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use mqedge_shared::proxy::{self, ProxyError, ProxyInfo};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::broker::Broker;
use crate::config::{ListenerConfig, ProxyIn};
use crate::connection::{self, ClientInfo};

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
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((tcp, peer)) => {
                if b.metrics().connected.get() as u64 >= b.cfg().limits.max_connections {
                    b.metrics().reject("over_limit");
                    drop(tcp);
                    continue;
                }
                // boxed: the PROXY and CONNECT phases are freed once the client is in, so the
                // task of an idle connection holds only the established connection
                let setup = Box::pin(establish(b.clone(), lc.clone(), tcp, peer));
                let done = done.clone();
                tokio::spawn(async move {
                    // served in place: one copy of the connection's state in the task
                    let mut live = setup.await;
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
            Err(e) => {
                if matches!(e.raw_os_error(), Some(23) | Some(24) | Some(105) | Some(12)) {
                    tracing::warn!(error = %e, "accept failed: out of resources, backing off 100ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
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
                    b.metrics().reject("untrusted_proxy");
                    tracing::warn!(peer = %peer, listener = %lc.name, "refused: PROXY header from an address outside trusted_proxies");
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
                b.metrics().reject("proxy_required");
                tracing::warn!(peer = %peer, listener = %lc.name, "refused: no PROXY header on a listener that requires one");
                return None;
            }
            Ok(Err(e)) => {
                b.metrics().reject("proxy_header");
                tracing::warn!(peer = %peer, listener = %lc.name, error = %e, "refused: bad PROXY header");
                return None;
            }
            Err(_) => {
                b.metrics().reject("proxy_timeout");
                tracing::info!(peer = %peer, listener = %lc.name, "closed: no PROXY header in time");
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
    loop {
        match proxy::parse(buf) {
            Ok(Some((info, len))) => {
                let _ = buf.split_to(len);
                return Ok(Some(info));
            }
            Ok(None) => {}
            Err(ProxyError::Missing) => return Ok(None),
            Err(e) => return Err(e),
        }
        if buf.len() > 4096 {
            return Err(ProxyError::Invalid("header too long".into()));
        }
        buf.reserve(512);
        match tcp.read_buf(buf).await {
            Ok(0) | Err(_) => {
                return Err(ProxyError::Invalid(
                    "connection closed in the PROXY header".into(),
                ))
            }
            Ok(_) => {}
        }
    }
}
