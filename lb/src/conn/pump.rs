//! The forwarding phase: after the header and the replayed bytes, the connection is a plain
//! byte pump: no MQTT parsing, no per-connection buffers while idle (a read lands in a stack
//! buffer and is written straight through; only a write that cannot complete keeps a heap copy
//! of the remainder). [`Established`] is all an idle connection keeps; it ends with one
//! `closed: <why>` log line.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::backend::ConnGuard;
use crate::conn::listener::ListenerRt;
use crate::conn::shape::{Bucket, Shaping, CHUNK};
use crate::conn::ClientStream;
use crate::metrics::ClosedLabel;
use crate::signal::Subscription;

/// Default linger for the second half of a connection once one side has closed.
pub const HALF_CLOSE_LINGER: Duration = Duration::from_secs(5);

/// A connection in its forwarding phase: exactly what the byte pump and the closing log line
/// need. Everything else from the setup (hash order, candidate lists, TLS facts, the replayed
/// CONNECT) is dropped before the pump starts, because this is what an idle connection costs.
pub struct Established {
    client: ClientStream,
    backend: TcpStream,
    counters: PumpCounters,
    /// The bandwidth buckets, on a listener with `bandwidth_in`/`bandwidth_out` only.
    shaping: Option<Box<Shaping>>,
    kill: Subscription,
    close: Subscription,
    _guard: ConnGuard,
    log: Box<ConnLog>,
}

/// The fields of the closing log line (a plain record: `connect.rs` fills it in).
pub struct ConnLog {
    pub(super) conn_id: String,
    pub(super) rt: Arc<ListenerRt>,
    pub(super) client_id: String,
    pub(super) username: Option<String>,
    pub(super) src: std::net::SocketAddr,
    pub(super) cn: Option<String>,
    pub(super) backend: String,
    /// The replayed CONNECT (and what came with it): counted in `bytes_in`.
    pub(super) replayed: u64,
    pub(super) started: Instant,
    /// `connections_closed_total`, counted once when the connection ends.
    pub(super) closed: Family<ClosedLabel, Counter>,
}

/// Why a forwarded connection ended: the closing log line's words and the metric's label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both directions finished.
    Closed,
    /// A read or write failed on either side.
    Error,
    /// One side finished and the other did not within [`HALF_CLOSE_LINGER`].
    HalfCloseTimeout,
    /// The backend was drained or removed by a reload.
    Drained,
    /// The LB is shutting down.
    Shutdown,
}

impl End {
    /// The words of the `closed: ...` log line.
    pub fn text(self) -> &'static str {
        match self {
            End::Closed => "both sides closed",
            End::Error => "connection error",
            End::HalfCloseTimeout => "half-closed, peer did not finish",
            End::Drained => "backend removed or drained",
            End::Shutdown => "LB shutting down",
        }
    }

    /// The `reason` label of `mqedge_lb_connections_closed_total`.
    pub fn label(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Error => "error",
            End::HalfCloseTimeout => "half_close_timeout",
            End::Drained => "drained",
            End::Shutdown => "shutdown",
        }
    }
}

impl Established {
    /// A connection whose backend took the header and the replayed bytes.
    pub fn new(
        client: ClientStream,
        backend: TcpStream,
        counters: PumpCounters,
        kill: Subscription,
        close: Subscription,
        guard: ConnGuard,
        log: Box<ConnLog>,
    ) -> Self {
        Established {
            client,
            backend,
            counters,
            shaping: None,
            kill,
            close,
            _guard: guard,
            log,
        }
    }

    /// Limits its bandwidth with these buckets (see `shape`).
    pub fn shaped(mut self, shaping: Option<Box<Shaping>>) -> Self {
        self.shaping = shaping;
        self
    }

    /// Pumps bytes until the connection ends, then logs it. (Not an `async fn`: the pump is built
    /// first so that the future holds each field once.)
    pub fn run(self) -> impl std::future::Future<Output = ()> {
        let Established {
            client,
            backend,
            counters,
            shaping,
            kill,
            close,
            _guard,
            log,
        } = self;
        let mut pumping = pump(client, backend, counters, kill, close).shaped(shaping);
        async move {
            // by reference: awaiting by value would move the pump into a second slot
            let (up, down, end) = (&mut pumping).await;
            drop(_guard);
            log.closed(up, down, end);
        }
    }
}

impl ConnLog {
    fn closed(&self, up: u64, down: u64, end: End) {
        let log = self;
        log.closed
            .get_or_create(&ClosedLabel {
                listener: log.rt.name().to_string(),
                backend: log.backend.clone(),
                reason: end.label(),
            })
            .inc();
        let why = end.text();
        tracing::info!(
            conn = %log.conn_id,
            listener = %log.rt.name(),
            client_id = %log.client_id,
            username = log.username.as_deref().unwrap_or(""),
            src = %log.src,
            cn = log.cn.as_deref().unwrap_or(""),
            backend = %log.backend,
            bytes_in = up + log.replayed,
            bytes_out = down,
            secs = log.started.elapsed().as_secs_f64(),
            "closed: {why}"
        );
    }
}

/// Counter handles bumped per forwarded chunk (listener and backend).
pub struct PumpCounters {
    /// Client → backend.
    pub up: [Counter; 2],
    /// Backend → client.
    pub down: [Counter; 2],
}

/// Copies both ways until both directions end (or one ends and the other lingers past
/// [`HALF_CLOSE_LINGER`], or an error, or `kill`/`close` fire). Resolves to (bytes up, bytes
/// down, why). A plain struct rather than an `async fn` with `select!`: an idle connection's
/// task is mostly this value, so it holds each part once.
pub fn pump<A, B>(
    a: A,
    b: B,
    counters: PumpCounters,
    kill: Subscription,
    close: Subscription,
) -> Forwarding<A, B>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    Forwarding {
        p: Pump {
            a,
            b,
            up: Dir::new(counters.up),
            down: Dir::new(counters.down),
            shaping: None,
        },
        linger: None,
        kill,
        close,
    }
}

/// The future [`pump`] returns.
pub struct Forwarding<A, B> {
    p: Pump<A, B>,
    /// Armed when one direction has finished.
    linger: Option<Pin<Box<tokio::time::Sleep>>>,
    kill: Subscription,
    close: Subscription,
}

impl<A, B> Forwarding<A, B> {
    /// Limits the pump's reads with these buckets (none: read as fast as both sides go).
    pub fn shaped(mut self, shaping: Option<Box<Shaping>>) -> Self {
        self.p.shaping = shaping;
        self
    }
}

impl<A, B> Future for Forwarding<A, B>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    type Output = (u64, u64, End);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let me = self.get_mut();
        let why = 'why: {
            if me.kill.poll_fired(cx).is_ready() {
                break 'why End::Shutdown;
            }
            if me.close.poll_fired(cx).is_ready() {
                break 'why End::Drained;
            }
            loop {
                match Pin::new(&mut me.p).poll(cx) {
                    Poll::Ready(Ok(true)) => break 'why End::Closed,
                    Poll::Ready(Ok(false)) => {
                        // one direction ended; give the other a bounded time to finish
                        if me.linger.is_none() {
                            me.linger = Some(Box::pin(tokio::time::sleep(HALF_CLOSE_LINGER)));
                        }
                    }
                    Poll::Ready(Err(_)) => break 'why End::Error,
                    Poll::Pending => break,
                }
            }
            if let Some(l) = me.linger.as_mut() {
                if l.as_mut().poll(cx).is_ready() {
                    break 'why End::HalfCloseTimeout;
                }
            }
            return Poll::Pending;
        };
        Poll::Ready((me.p.up.total, me.p.down.total, why))
    }
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
        mut bucket: Option<&mut Bucket>,
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
            let grant = match bucket.as_deref_mut() {
                None => CHUNK,
                Some(b) => match b.poll_grant(cx) {
                    Poll::Ready(n) => n,
                    Poll::Pending => {
                        if self.need_flush {
                            ready!(Pin::new(&mut *w).poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                },
            };
            // not zeroed: only the part the read filled is used
            let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); CHUNK];
            let mut rb = ReadBuf::uninit(&mut stack[..grant]);
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
            if let Some(b) = bucket.as_deref_mut() {
                b.take(n);
            }
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
    shaping: Option<Box<Shaping>>,
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
            let bucket = me.shaping.as_deref_mut().map(|s| &mut s.up);
            match me.up.poll_copy(cx, &mut me.a, &mut me.b, bucket) {
                Poll::Ready(r) => {
                    r?;
                    true
                }
                Poll::Pending => false,
            }
        };
        let down_done = me.down.shut || {
            let bucket = me.shaping.as_deref_mut().map(|s| &mut s.down);
            match me.down.poll_copy(cx, &mut me.b, &mut me.a, bucket) {
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
    use crate::signal::Signal;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
        let (kill, close) = (Signal::new(), Signal::new());
        let c = counters();
        let up_counter = c.up[0].clone();
        let task = tokio::spawn(pump(a, b, c, kill.subscribe(), close.subscribe()));
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
        assert_eq!((up, down, why), (100_000, 3, End::Closed));
        assert_eq!(up_counter.get(), 100_000);
    }

    #[tokio::test]
    async fn close_signal_ends_it() {
        let (_client, a) = tokio::io::duplex(64);
        let (b, _backend) = tokio::io::duplex(64);
        let (kill, close) = (Signal::new(), Signal::new());
        let task = tokio::spawn(pump(a, b, counters(), kill.subscribe(), close.subscribe()));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        close.fire();
        let (_, _, why) = tokio::time::timeout(std::time::Duration::from_secs(2), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(why, End::Drained);
    }
}
