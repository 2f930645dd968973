//! Pick and connect. The backends are tried in pick order (up to `retries` more after the
//! first); a failed connect is invisible to the client because its CONNECT was only peeked.
//! Each attempt dials with [`Backend::dial`] (as the health checks do), writes the backend's
//! PROXY header ([`super::proxy_out`]) and the replayed bytes; a failed one counts as a failed
//! health check (passive health). With placement feeds on, a client the cluster holds off its
//! hash home tries that backend first ([`placed_first`]).

use std::io;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::backend::balance::{Candidate, Strategy};
use crate::backend::pacing::Admit;
use crate::backend::placement::prefer;
use crate::backend::Backend;
use crate::conn::listener::ListenerRt;
use crate::conn::peek::Peeked;
use crate::conn::pump::{ConnLog, Established, PumpCounters};
use crate::conn::shape::Shaping;
use crate::conn::{proxy_out, ClientFacts, ClientStream};
use crate::metrics::{BackendLabel, PickLabel};
use crate::signal::Subscription;
use crate::state::{Lb, Live};

/// A client whose setup phases are done, on its way to a backend.
pub struct Client {
    /// Its stream (plain or TLS).
    pub stream: ClientStream,
    /// What it told us before forwarding.
    pub facts: ClientFacts,
    /// Its CONNECT and anything behind it, to replay.
    pub peeked: Peeked,
    /// The LB's shutdown signal.
    pub kill: Subscription,
}

/// Picks a backend for a client whose CONNECT has been peeked, connects (walking the pick order
/// up to `retries` more), and sends the PROXY header and the replayed CONNECT. `None` when no
/// backend took it (logged and counted here).
pub async fn forward(
    lb: &Arc<Lb>,
    rt: &Arc<ListenerRt>,
    live: &Arc<Live>,
    mut client: Client,
) -> Option<Established> {
    let (facts, peeked) = (&client.facts, &client.peeked);
    let ok = live.usable();
    let cands = Backend::candidates(&ok);
    let mut order = lb.picker().order(
        live.balance.strategy,
        live.balance.fallback,
        &peeked.client_id,
        facts.src.ip(),
        &cands,
    );
    placed_first(lb, live, &peeked.client_id, &cands, &mut order);
    let attempts = live.balance.retries as usize + 1;
    for &i in order.iter().take(attempts) {
        let b = ok[i];
        let turn = paced(lb, live, b, &mut client.kill).await;
        if turn == Turn::Gone {
            // it went down while the client waited: the next of the order, at once
            continue;
        }
        if turn == Turn::Refused {
            lb.metrics().reject(rt.name(), "paced");
            tracing::info!(conn = %facts.conn_id, listener = %rt.name(), client_id = %peeked.client_id, src = %facts.src, backend = %b.name(), rate = b.pacer().rate(), "closed: backend paced, its turn was further than pacing_wait");
            return None;
        }
        let t0 = Instant::now();
        match attempt(live, b, facts, peeked).await {
            Ok(backend) => {
                lb.metrics()
                    .backend_connect_seconds
                    .get_or_create(&BackendLabel {
                        backend: b.name().to_string(),
                    })
                    .observe(t0.elapsed().as_secs_f64());
                return Some(established(lb, rt, b, backend, client));
            }
            Err(e) => {
                b.counters().connect_failures.inc();
                // passive health: a failed connect while forwarding counts as a failed check
                if let Some(st) = b.record_check(false, &live.health) {
                    tracing::warn!(backend = %b.name(), state = st.as_str(), "backend state changed by a failed forward connect");
                }
                tracing::warn!(conn = %facts.conn_id, backend = %b.name(), addr = %b.addr(), error = %e, "backend connect failed; trying the next in hash order");
            }
        }
    }
    lb.metrics().reject(rt.name(), "no_backend");
    tracing::warn!(
        conn = %facts.conn_id,
        listener = %rt.name(),
        client_id = %peeked.client_id,
        src = %facts.src,
        candidates = order.len(),
        "closed: no backend available"
    );
    None
}

/// With the `client_id` strategy and placement feeds on: a client whose session the feeds place
/// on a usable backend tries that one first, then the hash order; counted by what decided.
fn placed_first(
    lb: &Lb,
    live: &Live,
    client_id: &str,
    cands: &[Candidate<'_>],
    order: &mut [usize],
) {
    if live.balance.strategy != Strategy::ClientId
        || client_id.is_empty()
        || live.placement.feeds.is_empty()
    {
        return;
    }
    let snap = lb.placement();
    // a rebalance goes on here or in the fleet, or moved this client: its old node's entry
    // may be stale (backend::rebalance)
    let at = snap
        .lookup(client_id)
        .filter(|_| !lb.rebalance().ignores_exception(client_id))
        .and_then(|n| cands.iter().position(|c| c.name == n));
    let source = match at {
        Some(i) if prefer(order, i) => "exception",
        _ => "hash",
    };
    lb.metrics()
        .placement_picks
        .get_or_create(&PickLabel { source })
        .inc();
}

/// What a client's wait for its turn at a backend came to.
#[derive(Debug, PartialEq, Eq)]
enum Turn {
    /// Its turn: dial it.
    Go,
    /// Its turn was further than `pacing_wait` (or the LB began to shut down meanwhile).
    Refused,
    /// The backend went down while the client waited (its clients come to the survivors).
    Gone,
}

/// How often a waiting client looks whether its backend is still up.
const GONE_CHECK: std::time::Duration = std::time::Duration::from_millis(50);

/// Waits for the client's turn at `b` (failover pacing, [`crate::backend::pacing`]).
async fn paced(lb: &Lb, live: &Live, b: &Backend, kill: &mut Subscription) -> Turn {
    let label = || BackendLabel {
        backend: b.name().to_string(),
    };
    match b.pacer().admit(Instant::now(), live.placement.pacing_wait) {
        Admit::Now => Turn::Go,
        Admit::After(d) => {
            lb.metrics().pacing_waits.get_or_create(&label()).inc();
            let until = tokio::time::Instant::now() + d;
            while tokio::time::Instant::now() < until {
                tokio::select! {
                    _ = tokio::time::sleep_until(until.min(tokio::time::Instant::now() + GONE_CHECK)) => {}
                    _ = std::future::poll_fn(|cx| kill.poll_fired(cx)) => return Turn::Refused,
                }
                if b.state() != crate::backend::State::Up {
                    return Turn::Gone;
                }
            }
            Turn::Go
        }
        Admit::Refused => {
            lb.metrics().pacing_refused.get_or_create(&label()).inc();
            Turn::Refused
        }
    }
}

/// One connect attempt under `[health] timeout`: dial, then the PROXY header and the replayed
/// bytes in one write.
async fn attempt(
    live: &Live,
    b: &Backend,
    facts: &ClientFacts,
    peeked: &Peeked,
) -> io::Result<TcpStream> {
    tokio::time::timeout(live.health.timeout, async {
        let mut s = b.dial().await?;
        let mut first = proxy_out::header_for(b.proxy_mode(), b.proxy_tlvs(), facts);
        first.extend_from_slice(&peeked.bytes);
        s.write_all(&first).await?;
        Ok::<_, io::Error>(s)
    })
    .await
    .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")))
}

/// The connection once `b` took it: counts it open and the replayed bytes, and keeps only what
/// the pump and the closing log line need (everything else of the setup is dropped here).
fn established(
    lb: &Lb,
    rt: &Arc<ListenerRt>,
    b: &Arc<Backend>,
    backend: TcpStream,
    client: Client,
) -> Established {
    let Client {
        stream,
        facts,
        peeked,
        kill,
    } = client;
    let guard = b.open_connection(&peeked.client_id);
    let replayed = peeked.bytes.len() as u64;
    b.counters().bytes_in.inc_by(replayed);
    rt.bytes_in().inc_by(replayed);
    tracing::debug!(conn = %facts.conn_id, client_id = %peeked.client_id, src = %facts.src, backend = %b.name(), "forwarding");
    let counters = PumpCounters {
        up: [rt.bytes_in().clone(), b.counters().bytes_in.clone()],
        down: [rt.bytes_out().clone(), b.counters().bytes_out.clone()],
    };
    let cn = facts.tls.and_then(|t| t.cert).and_then(|c| c.cn);
    let log = Box::new(ConnLog {
        conn_id: facts.conn_id,
        rt: rt.clone(),
        client_id: peeked.client_id,
        username: peeked.username,
        src: facts.src,
        cn,
        backend: b.name().to_string(),
        replayed,
        started: Instant::now(),
        closed: lb.metrics().closed.clone(),
    });
    let shaping = Shaping::for_listener(rt.net_handle(), rt.bandwidth_waits());
    Established::new(
        stream,
        backend,
        counters,
        kill,
        b.close_signal(),
        guard,
        log,
    )
    .shaped(shaping)
}
