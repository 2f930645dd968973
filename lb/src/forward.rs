//! Pick, connect, replay, pump. The backends are tried in hash order (up to `retries` more after
//! the first); a failed connect is invisible to the client because its CONNECT was only peeked.
//! After the header and the replayed bytes, the connection is a plain byte pump: no MQTT parsing,
//! no per-connection buffers while idle (a read lands in a stack buffer and is written straight
//! through; only a write that cannot complete keeps a heap copy of the remainder).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::backends::{Backend, State};
use crate::balance::Candidate;
use crate::config::BackendAddr;
use crate::listener::{ClientFacts, ClientStream, ListenerRt};
use crate::metrics::BackendLabel;
use crate::peek::Peeked;
use crate::{Lb, Live, HALF_CLOSE_LINGER};

/// Opens a TCP connection to a backend address (resolving host names each time, so DNS changes
/// are followed).
pub async fn connect(addr: &BackendAddr) -> io::Result<TcpStream> {
    let s = match addr {
        BackendAddr::Ip(a) => TcpStream::connect(a).await?,
        BackendAddr::Host(h, p) => TcpStream::connect((h.as_str(), *p)).await?,
    };
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// The backends that may take a new connection, in config order.
pub fn usable(live: &Live) -> Vec<&Arc<Backend>> {
    live.backends
        .iter()
        .filter(|b| b.state() == State::Up && b.weight() > 0)
        .collect()
}

/// Forwards one client whose CONNECT has been peeked.
pub async fn forward(
    lb: &Arc<Lb>,
    rt: &Arc<ListenerRt>,
    live: &Arc<Live>,
    client: ClientStream,
    facts: ClientFacts,
    peeked: Peeked,
    kill: watch::Receiver<bool>,
) {
    let ok = usable(live);
    let cands: Vec<Candidate<'_>> = ok
        .iter()
        .map(|b| Candidate {
            name: &b.name,
            weight: b.weight(),
            active: b.active(),
        })
        .collect();
    let order = lb.picker.order(
        live.balance.strategy,
        live.balance.fallback,
        &peeked.client_id,
        facts.src.ip(),
        &cands,
    );
    let attempts = live.balance.retries as usize + 1;
    for &i in order.iter().take(attempts) {
        let b = ok[i];
        let t0 = Instant::now();
        let connected = tokio::time::timeout(
            live.health.timeout,
            Box::pin(async {
                let mut s = connect(&b.addr).await?;
                let mut first = crate::proxy_header::header_for(b.proxy_mode(), &facts);
                first.extend_from_slice(&peeked.bytes);
                s.write_all(&first).await?;
                Ok::<_, io::Error>(s)
            }),
        )
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")));
        match connected {
            Ok(backend) => {
                lb.metrics
                    .backend_connect_seconds
                    .get_or_create(&BackendLabel {
                        backend: b.name.clone(),
                    })
                    .observe(t0.elapsed().as_secs_f64());
                let guard = b.open_connection();
                b.counters.bytes_in.inc_by(peeked.bytes.len() as u64);
                rt.bytes_in.inc_by(peeked.bytes.len() as u64);
                tracing::debug!(conn = %facts.conn_id, client_id = %peeked.client_id, src = %facts.src, backend = %b.name, "forwarding");
                let started = Instant::now();
                let counters = PumpCounters {
                    up: [rt.bytes_in.clone(), b.counters.bytes_in.clone()],
                    down: [rt.bytes_out.clone(), b.counters.bytes_out.clone()],
                };
                let (up, down, why) = pump(client, backend, counters, kill, b.close_signal()).await;
                drop(guard);
                tracing::info!(
                    conn = %facts.conn_id,
                    listener = %rt.cfg.name,
                    client_id = %peeked.client_id,
                    username = peeked.username.as_deref().unwrap_or(""),
                    src = %facts.src,
                    cn = facts.tls.as_ref().and_then(|t| t.cert.as_ref()).and_then(|c| c.cn.as_deref()).unwrap_or(""),
                    backend = %b.name,
                    bytes_in = up + peeked.bytes.len() as u64,
                    bytes_out = down,
                    secs = started.elapsed().as_secs_f64(),
                    "closed: {why}"
                );
                return;
            }
            Err(e) => {
                b.counters.connect_failures.inc();
                // passive health: a failed connect while forwarding counts as a failed check
                if let Some(st) = b.record_check(false, &live.health) {
                    tracing::warn!(backend = %b.name, state = st.as_str(), "backend state changed by a failed forward connect");
                }
                tracing::warn!(conn = %facts.conn_id, backend = %b.name, addr = %b.addr, error = %e, "backend connect failed; trying the next in hash order");
            }
        }
    }
    lb.metrics.reject(&rt.cfg.name, "no_backend");
    tracing::warn!(
        conn = %facts.conn_id,
        listener = %rt.cfg.name,
        client_id = %peeked.client_id,
        src = %facts.src,
        candidates = order.len(),
        "closed: no backend available"
    );
}

/// Counter handles bumped per forwarded chunk (listener and backend).
pub struct PumpCounters {
    /// Client → backend.
    pub up: [Counter; 2],
    /// Backend → client.
    pub down: [Counter; 2],
}

/// Copies both ways until both directions end (or one ends and the other lingers past
/// [`HALF_CLOSE_LINGER`], or an error, or `kill`/`close` fire). Returns (bytes up, bytes down, why).
pub async fn pump<A, B>(
    a: A,
    b: B,
    counters: PumpCounters,
    mut kill: watch::Receiver<bool>,
    mut close: watch::Receiver<bool>,
) -> (u64, u64, &'static str)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut p = Pump {
        a,
        b,
        up: Dir::new(counters.up),
        down: Dir::new(counters.down),
    };
    let mut linger: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let why = loop {
        tokio::select! {
            r = &mut p => match r {
                Ok(true) => break "both sides closed",
                Ok(false) => {
                    // one direction ended; give the other a bounded time to finish
                    if linger.is_none() {
                        linger = Some(Box::pin(tokio::time::sleep(HALF_CLOSE_LINGER)));
                    }
                }
                Err(_) => break "connection error",
            },
            _ = async { match linger.as_mut() { Some(l) => l.await, None => std::future::pending().await } } => break "half-closed, peer did not finish",
            r = kill.changed() => if r.is_err() || *kill.borrow() { break "LB shutting down" },
            r = close.changed() => if r.is_err() || *close.borrow() { break "backend removed or drained" },
        }
    };
    (p.up.total, p.down.total, why)
}

struct Dir {
    pending: Vec<u8>,
    pos: usize,
    read_done: bool,
    shut: bool,
    need_flush: bool,
    total: u64,
    counters: [Counter; 2],
    reported_half: bool,
}

impl Dir {
    fn new(counters: [Counter; 2]) -> Self {
        Dir {
            pending: Vec::new(),
            pos: 0,
            read_done: false,
            shut: false,
            need_flush: false,
            total: 0,
            counters,
            reported_half: false,
        }
    }

    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            while self.pos < self.pending.len() {
                let n = ready!(Pin::new(&mut *w).poll_write(cx, &self.pending[self.pos..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.need_flush = true;
            }
            if !self.pending.is_empty() {
                // release the copy: idle connections keep no buffers
                self.pending = Vec::new();
                self.pos = 0;
            }
            if self.read_done {
                if !self.shut {
                    ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                    self.shut = true;
                }
                return Poll::Ready(Ok(()));
            }
            let mut stack = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut stack);
            match Pin::new(&mut *r).poll_read(cx, &mut rb) {
                Poll::Pending => {
                    if self.need_flush {
                        ready!(Pin::new(&mut *w).poll_flush(cx))?;
                        self.need_flush = false;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let data = rb.filled();
            if data.is_empty() {
                self.read_done = true;
                continue;
            }
            let n = data.len();
            self.total += n as u64;
            for c in &self.counters {
                c.inc_by(n as u64);
            }
            let mut off = 0;
            while off < n {
                match Pin::new(&mut *w).poll_write(cx, &data[off..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(m)) => {
                        off += m;
                        self.need_flush = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        self.pending = data[off..].to_vec();
                        self.pos = 0;
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

struct Pump<A, B> {
    a: A,
    b: B,
    up: Dir,
    down: Dir,
}

impl<A, B> Future for Pump<A, B>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    /// Ok(true): both directions done; Ok(false): one just finished (poll again to continue).
    type Output = io::Result<bool>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let me = self.get_mut();
        let up_done = me.up.shut || {
            match me.up.poll_copy(cx, &mut me.a, &mut me.b) {
                Poll::Ready(r) => {
                    r?;
                    true
                }
                Poll::Pending => false,
            }
        };
        let down_done = me.down.shut || {
            match me.down.poll_copy(cx, &mut me.b, &mut me.a) {
                Poll::Ready(r) => {
                    r?;
                    true
                }
                Poll::Pending => false,
            }
        };
        if up_done && down_done {
            return Poll::Ready(Ok(true));
        }
        let newly = (up_done && !me.up.reported_half) || (down_done && !me.down.reported_half);
        if newly {
            me.up.reported_half |= up_done;
            me.down.reported_half |= down_done;
            return Poll::Ready(Ok(false));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn counters() -> PumpCounters {
        PumpCounters {
            up: [Counter::default(), Counter::default()],
            down: [Counter::default(), Counter::default()],
        }
    }

    #[tokio::test]
    async fn pumps_both_ways_and_half_closes() {
        let (mut client, a) = tokio::io::duplex(64);
        let (b, mut backend) = tokio::io::duplex(64);
        let (_k, kill) = watch::channel(false);
        let (_c, close) = watch::channel(false);
        let c = counters();
        let up_counter = c.up[0].clone();
        let task = tokio::spawn(pump(a, b, c, kill, close));
        let big: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let big2 = big.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&big2).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        backend.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, big);
        backend.write_all(b"bye").await.unwrap();
        backend.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"bye");
        let (up, down, why) = task.await.unwrap();
        assert_eq!((up, down, why), (100_000, 3, "both sides closed"));
        assert_eq!(up_counter.get(), 100_000);
    }

    #[tokio::test]
    async fn close_signal_ends_it() {
        let (_client, a) = tokio::io::duplex(64);
        let (b, _backend) = tokio::io::duplex(64);
        let (_k, kill) = watch::channel(false);
        let (c_tx, close) = watch::channel(false);
        let task = tokio::spawn(pump(a, b, counters(), kill, close));
        c_tx.send(true).unwrap();
        let (_, _, why) = tokio::time::timeout(std::time::Duration::from_secs(2), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(why, "backend removed or drained");
    }
}
