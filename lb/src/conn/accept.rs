//! The accept loop and a connection's task. The loop only accepts, counts and spawns (a slow
//! client can never stall accepts); each connection's task then runs the setup phases in order
//! under one `connect_timeout` — PROXY in ([`super::proxy_in`], trusted senders only) → rate
//! limit → TLS ([`super::tls_stream`], timed here) → WebSocket ([`super::websocket`], on WS/WSS
//! listeners) → CONNECT peek ([`super::peek`]) — then pick
//! and connect ([`super::connect`]) and the byte pump ([`super::pump`]). A refusal is counted
//! and logged here.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use mqedge_shared::io::Rewind;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::conn::connect::Client;
use crate::conn::listener::ListenerRt;
use crate::conn::peek::{read_connect, Peeked};
use crate::conn::proxy_in::read_proxy_header;
use crate::conn::pump::Established;
use crate::conn::tls::TlsFacts;
use crate::conn::tls_stream::TlsConn;
use crate::conn::{connect, websocket, ClientFacts, ClientSlot, ClientStream, Reject};
use crate::metrics::ListenerLabel;
use crate::signal::{Signal, Subscription};
use crate::state::{Lb, Live};

/// Accepts until `stop` turns true; every connection runs in its own task holding `done`.
pub async fn accept_loop(
    lb: Arc<Lb>,
    rt: Arc<ListenerRt>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    kill: Signal,
    done: mpsc::Sender<()>,
) {
    while let Some((tcp, peer)) = mqedge_shared::net::accept(&listener, &mut stop, rt.name()).await
    {
        rt.accepted().inc();
        let Some(slot) = ClientSlot::take(&lb, &rt) else {
            // accept and close at once: the client sees a clean close, not a hang
            lb.metrics().reject(rt.name(), "over_limit");
            warn_sampled(rt.name(), "over_limit", peer);
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        set_buffers(&tcp, rt.net().bufs);
        // built here, first polled in the task; boxed so the task frees it before the pump
        let setup = Box::pin(setup(lb.clone(), rt.clone(), tcp, peer, kill.subscribe()));
        tokio::spawn(connection(slot, setup, done.clone()));
    }
    tracing::debug!(listener = %rt.cfg().name, "accept loop stopped");
}

/// Applies a listener's `sndbuf`/`rcvbuf` to an accepted socket (the receive window it
/// advertised in the handshake came from the listening socket; the buffer caps it from now on).
fn set_buffers(tcp: &tokio::net::TcpStream, bufs: crate::config::SocketBufs) {
    let sock = socket2::SockRef::from(tcp);
    if let Some(n) = bufs.sndbuf {
        let _ = sock.set_send_buffer_size(n as usize);
    }
    if let Some(n) = bufs.rcvbuf {
        let _ = sock.set_recv_buffer_size(n as usize);
    }
}

/// One connection's task, from accept to close. It holds `slot` (the connection counters) and
/// `done` (the drain waits for every clone) until the very end. An idle connection's task is
/// mostly this future, so it is shaped to hold the pump once: the setup phases arrive boxed
/// (their state is freed before the pump starts) and the pump's future is pinned where it is
/// built rather than moved into a second slot (see `tests::idle_connection_state_stays_small`).
pub async fn connection<F>(slot: ClientSlot, setup: Pin<Box<F>>, done: mpsc::Sender<()>)
where
    F: Future<Output = Option<Established>>,
{
    let pumping = std::pin::pin!(setup.await.map(Established::run));
    if let Some(pumping) = pumping.as_pin_mut() {
        pumping.await;
    }
    drop(slot);
    drop(done);
}

/// What the setup phases learned: the client's stream and facts (its id comes later).
struct Prelude {
    client: ClientStream,
    src: SocketAddr,
    dst: SocketAddr,
    tls: Option<TlsFacts>,
    peeked: Peeked,
}

/// The setup phases under `connect_timeout`, then pick and connect. `None` when the
/// connection ended here (counted and logged).
async fn setup(
    lb: Arc<Lb>,
    rt: Arc<ListenerRt>,
    tcp: TcpStream,
    peer: SocketAddr,
    kill: Subscription,
) -> Option<Established> {
    let live = lb.live_arc();
    let conn_id = lb.next_conn_id(&live.lb.name);
    // the real client address once a PROXY header has named it (for refusal log lines)
    let src_seen = OnceLock::new();
    let phases = prelude(&lb, &rt, &live, tcp, peer, &src_seen);
    let res = match tokio::time::timeout(live.lb.connect_timeout, Box::pin(phases)).await {
        Ok(r) => r,
        Err(_) => Err(Reject::Timeout),
    };
    let p = match res {
        Ok(p) => p,
        Err(e) => {
            let src = src_seen.get().copied().unwrap_or(peer);
            refused(&lb, &rt, &conn_id, src, peer, e);
            return None;
        }
    };
    let client = Client {
        stream: p.client,
        facts: ClientFacts {
            conn_id,
            src: p.src,
            dst: p.dst,
            tls: p.tls,
        },
        peeked: p.peeked,
        kill,
    };
    connect::forward(&lb, &rt, &live, client).await
}

/// PROXY in (when the listener expects it), the per-IP rate limit, TLS (on TLS listeners), the
/// WebSocket Upgrade (on WS/WSS listeners) and the CONNECT peek.
async fn prelude(
    lb: &Lb,
    rt: &ListenerRt,
    live: &Live,
    tcp: TcpStream,
    peer: SocketAddr,
    src_seen: &OnceLock<SocketAddr>,
) -> Result<Prelude, Reject> {
    let dst = tcp.local_addr().unwrap_or(peer);
    let limit = live.lb.max_connect_packet;
    // Phase 1: PROXY header from an upstream L4 balancer.
    let (src, dst, head) = if rt.cfg().proxy_protocol {
        let (info, rest) = read_proxy_header(&tcp, peer, &rt.cfg().trusted_proxies).await?;
        (info.src.unwrap_or(peer), info.dst.unwrap_or(dst), rest)
    } else {
        (peer, dst, Vec::new())
    };
    let _ = src_seen.set(src);
    let ws = rt.cfg().websocket.as_ref();
    // a trusted forwarder speaks for many clients: the limit waits for X-Forwarded-For
    let forwarded = ws.is_some_and(|w| websocket::forwarder_trusted(w, src));
    if !forwarded && !lb.allow_connect(live, src.ip()) {
        return Err(Reject::RateLimited);
    }
    // Phase 2: TLS.
    let (client, tls) = match rt.tls() {
        Some(sc) => {
            let t0 = Instant::now();
            let tls = TlsConn::accept(sc, tcp, head).await.map_err(Reject::Tls)?;
            lb.metrics()
                .tls_handshake_seconds
                .get_or_create(&ListenerLabel {
                    listener: rt.name().to_string(),
                })
                .observe(t0.elapsed().as_secs_f64());
            let facts = tls.facts();
            (ClientStream::Tls(Box::new(tls)), Some(facts))
        }
        None => (ClientStream::Plain(Rewind::new(head, tcp)), None),
    };
    // Phase 3: WebSocket, on WS/WSS listeners.
    let (mut client, src) = match ws {
        Some(w) => websocket::upgrade(rt, w, client, src).await?,
        None => (client, src),
    };
    if forwarded && !lb.allow_connect(live, src.ip()) {
        return Err(Reject::RateLimited);
    }
    // Phase 4: the CONNECT.
    let peeked = read_connect(&mut client, limit).await?;
    Ok(Prelude {
        client,
        src,
        dst,
        tls,
        peeked,
    })
}

/// Counts and logs a connection that ended before forwarding.
fn refused(lb: &Lb, rt: &ListenerRt, conn_id: &str, src: SocketAddr, peer: SocketAddr, e: Reject) {
    lb.metrics().reject(rt.name(), e.label());
    match e {
        Reject::RateLimited => return warn_sampled(rt.name(), "rate_limited", src),
        // the address it claims is not believed: the sender is the one to name
        Reject::UntrustedProxy => return warn_sampled(rt.name(), "untrusted_proxy", peer),
        _ => {}
    }
    // src: the client (from PROXY when there is one); peer: who connected over TCP
    tracing::info!(conn = %conn_id, listener = %rt.name(), src = %src, peer = %peer, reason = e.label(), "closed before forwarding: {e}");
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

#[cfg(test)]
mod tests;
