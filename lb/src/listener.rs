//! Accept loops and the per-connection phases. The accept loop only accepts and spawns (a slow
//! client can never stall accepts); each connection's task runs, under one `connect_timeout`:
//! PROXY in (optional) → TLS handshake (TLS listeners) → CONNECT peek; then pick + connect +
//! pump in [`crate::forward`].

use std::net::SocketAddr;
use std::sync::Arc;

use mqedge_shared::io::Rewind;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::config::ListenerConfig;
use crate::metrics::{BytesLabel, ListenerLabel, Metrics};
use crate::peek::{read_connect, Peeked};
use crate::tls::TlsFacts;
use crate::tls_stream::TlsConn;
use crate::Lb;

/// A listener with its TLS acceptor and counter handles.
pub struct ListenerRt {
    /// Its config.
    pub cfg: ListenerConfig,
    tls: arc_swap::ArcSwapOption<rustls::ServerConfig>,
    /// Connections accepted.
    pub accepted: Counter,
    /// Connections open.
    pub active: Gauge,
    /// Bytes from clients.
    pub bytes_in: Counter,
    /// Bytes to clients.
    pub bytes_out: Counter,
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
            tls: arc_swap::ArcSwapOption::new(
                cfg.tls
                    .as_ref()
                    .map(|t| crate::tls_stream::prepare(t.server_config.clone())),
            ),
            accepted: m.accepted.get_or_create_owned(&l),
            active: m.active.get_or_create_owned(&l),
            bytes_in: m.listener_bytes.get_or_create_owned(&b("in")),
            bytes_out: m.listener_bytes.get_or_create_owned(&b("out")),
            cfg,
        }
    }

    /// Takes a new TLS config (certificate rotation on reload) for connections accepted from now.
    pub fn set_tls(&self, sc: Arc<rustls::ServerConfig>) {
        self.tls.store(Some(crate::tls_stream::prepare(sc)));
    }
}

/// What the client side told us before forwarding.
#[derive(Debug, Clone)]
pub struct ClientFacts {
    /// Connection id (logs, UNIQUE_ID TLV).
    pub conn_id: String,
    /// Real client address (from an upstream PROXY header when there is one).
    pub src: SocketAddr,
    /// Address the client connected to.
    pub dst: SocketAddr,
    /// TLS facts for TLS listeners.
    pub tls: Option<TlsFacts>,
}

/// Why a connection ended before forwarding; the label is the metric's `reason`.
#[derive(Debug, thiserror::Error)]
pub enum Reject {
    /// connect_timeout elapsed.
    #[error("timed out before a complete CONNECT")]
    Timeout,
    /// Bad or missing upstream PROXY header.
    #[error("{0}")]
    ProxyHeader(mqedge_shared::proxy::ProxyError),
    /// TLS handshake failed.
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    /// Bad first packet.
    #[error("{0}")]
    Peek(mqedge_protocol::peek::PeekError),
    /// Over `connect_rate_per_ip`.
    #[error("over the per-IP connect rate")]
    RateLimited,
    /// Client closed or errored before sending a full CONNECT.
    #[error("client closed before a complete CONNECT: {0}")]
    ClientIo(std::io::Error),
}

impl Reject {
    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Reject::Timeout => "timeout",
            Reject::ProxyHeader(_) => "proxy_header",
            Reject::Tls(_) => "tls_handshake",
            Reject::Peek(e) => e.label(),
            Reject::ClientIo(_) => "client_io",
            Reject::RateLimited => "rate_limited",
        }
    }
}

/// Accepts until `stop` turns true; every connection runs in its own task holding `done`.
pub async fn accept_loop(
    lb: Arc<Lb>,
    rt: Arc<ListenerRt>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    kill: crate::signal::Signal,
    done: mpsc::Sender<()>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((tcp, peer)) => {
                rt.accepted.inc();
                let max = lb.live.load().lb.max_connections;
                if lb.client_conns.load(std::sync::atomic::Ordering::Relaxed) >= max {
                    // accept and close at once: the client sees a clean close, not a hang
                    lb.metrics.reject(&rt.cfg.name, "over_limit");
                    warn_sampled(&rt.cfg.name, "over_limit", peer);
                    drop(tcp);
                    continue;
                }
                lb.client_conns
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _ = tcp.set_nodelay(true);
                let (lb, rt, kill, done) = (lb.clone(), rt.clone(), kill.subscribe(), done.clone());
                let fut = async move {
                    rt.active.inc();
                    // the setup phases are boxed: their state is freed before the long pump
                    let est = Box::pin(handle(lb.clone(), rt.clone(), tcp, peer, kill)).await;
                    if let Some(est) = est {
                        est.run().await;
                    }
                    rt.active.dec();
                    lb.client_conns
                        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                    drop(done);
                };
                tokio::spawn(fut);
            }
            Err(e) => mqedge_shared::net::accept_failed(&rt.cfg.name, &e).await,
        }
    }
    tracing::debug!(listener = %rt.cfg.name, "accept loop stopped");
}

async fn handle(
    lb: Arc<Lb>,
    rt: Arc<ListenerRt>,
    tcp: TcpStream,
    peer: SocketAddr,
    kill: crate::signal::Subscription,
) -> Option<crate::forward::Established> {
    let live = lb.live.load_full();
    let conn_id = lb.next_conn_id(&live.lb.name);
    let dst = tcp.local_addr().unwrap_or(peer);
    let limit = live.lb.max_connect_packet;
    // the real client address once a PROXY header has named it (for refusal log lines)
    let src_seen = std::sync::OnceLock::new();
    let prelude = async {
        // Phase 1: PROXY header from an upstream L4 balancer.
        let (src, dst, head) = if rt.cfg.proxy_protocol {
            let (info, rest) = read_proxy_header(&tcp).await?;
            (info.src.unwrap_or(peer), info.dst.unwrap_or(dst), rest)
        } else {
            (peer, dst, Vec::new())
        };
        let _ = src_seen.set(src);
        if !lb.limiter.allow(
            src.ip(),
            live.lb.connect_rate_per_ip,
            live.lb.connect_burst_per_ip,
            std::time::Instant::now(),
        ) {
            return Err(Reject::RateLimited);
        }
        // Phase 2: TLS.
        match rt.tls.load_full() {
            Some(sc) => {
                let t0 = std::time::Instant::now();
                let tls = TlsConn::accept(sc, tcp, head).await.map_err(Reject::Tls)?;
                lb.metrics
                    .tls_handshake_seconds
                    .get_or_create(&ListenerLabel {
                        listener: rt.cfg.name.clone(),
                    })
                    .observe(t0.elapsed().as_secs_f64());
                let facts = tls.facts();
                let mut tls = tls;
                let peeked = peek_phase(&mut tls, limit).await?;
                Ok((
                    ClientStream::Tls(Box::new(tls)),
                    src,
                    dst,
                    Some(facts),
                    peeked,
                ))
            }
            None => {
                let mut s = Rewind::new(head, tcp);
                let peeked = peek_phase(&mut s, limit).await?;
                Ok((ClientStream::Plain(s), src, dst, None, peeked))
            }
        }
    };
    let res = match tokio::time::timeout(live.lb.connect_timeout, Box::pin(prelude)).await {
        Ok(r) => r,
        Err(_) => Err(Reject::Timeout),
    };
    let (client, src, dst, tls, peeked) = match res {
        Ok(v) => v,
        Err(Reject::RateLimited) => {
            lb.metrics.reject(&rt.cfg.name, "rate_limited");
            warn_sampled(
                &rt.cfg.name,
                "rate_limited",
                src_seen.get().copied().unwrap_or(peer),
            );
            return None;
        }
        Err(e) => {
            lb.metrics.reject(&rt.cfg.name, e.label());
            // src: the client (from PROXY when there is one); peer: who connected over TCP
            tracing::info!(conn = %conn_id, listener = %rt.cfg.name, src = %src_seen.get().copied().unwrap_or(peer), peer = %peer, reason = e.label(), "closed before forwarding: {e}");
            return None;
        }
    };
    let facts = ClientFacts {
        conn_id,
        src,
        dst,
        tls,
    };
    crate::forward::forward(&lb, &rt, &live, client, facts, peeked, kill).await
}

/// Logs a refusal that may come in floods at most once a second (the counter has them all).
fn warn_sampled(listener: &str, reason: &str, src: SocketAddr) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if LAST.swap(now, Ordering::Relaxed) != now {
        tracing::warn!(listener, reason, src = %src, "connection refused (further ones this second are only counted)");
    }
}

async fn peek_phase<S: AsyncRead + Unpin>(s: &mut S, limit: usize) -> Result<Peeked, Reject> {
    read_connect(s, limit).await
}

/// Reads a PROXY v1/v2 header byte-exactly enough: whatever was read past it is returned to be
/// replayed in front of the stream.
async fn read_proxy_header(
    tcp: &TcpStream,
) -> Result<(mqedge_shared::proxy::ProxyInfo, Vec<u8>), Reject> {
    use mqedge_shared::proxy::{read_header, ProxyError, ReadError};
    match read_header(tcp).await {
        Ok((Some(info), rest)) => Ok((info, rest)),
        Ok((None, _)) => Err(Reject::ProxyHeader(ProxyError::Missing)),
        Err(ReadError::Header(e)) => Err(Reject::ProxyHeader(e)),
        Err(ReadError::Io(e)) => Err(Reject::ClientIo(e)),
    }
}

/// The client side after its prelude: plain TCP or TLS, both with replayable read-ahead.
pub enum ClientStream {
    /// Plain TCP.
    Plain(Rewind<TcpStream>),
    /// TLS-terminated.
    Tls(Box<TlsConn>),
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
