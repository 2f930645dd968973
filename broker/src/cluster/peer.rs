//! The outgoing channel to one peer: its queue (bounded in bytes, data and control apart), the
//! write loop (dial from the bind address, batched frames, a write deadline) and the heartbeat
//! that tells a live peer from one gossip calls live but the channel cannot reach
//! (`unreachable`). What the cluster does with it is [`super::outgoing`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;

use super::frame::{encode, Frame, MAX_FRAME};
use super::memory::MemoryStream;
use super::tls::{AuthCounters, NodeTls};
use super::transport::{Timing, Transport};
use super::{Gate, PEER_QUEUE_BYTES};

/// How often the write loop sends a `Ping`.
pub const HEARTBEAT: Duration = Duration::from_millis(500);
/// A peer that answered no `Ping` for this long is unreachable: its channel is dropped, what
/// it owes this node fails (no PUBACK), forwards to it fail at once until it answers again.
pub const HEARTBEAT_DEADLINE: Duration = Duration::from_secs(4);
/// A write (one batch, up to ~1 MiB) that takes longer drops the channel.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(5);
/// The most bytes of frames the writer gathers for one write.
const BATCH: usize = 1 << 20;
/// Control frames (routes, answers, sessions) queued past this many bytes drop the channel: it
/// is rebuilt from a fresh snapshot, and what was queued is settled by deadlines and resends.
pub const CONTROL_QUEUE_BYTES: usize = 2 * MAX_FRAME;

/// The outgoing side of a peer channel.
pub(super) struct Peer {
    tx: mpsc::UnboundedSender<Frame>,
    /// Forward bytes queued (the publishers' gate).
    pub(super) data: Arc<Gate>,
    pub(super) link: Arc<Link>,
    addr: SocketAddr,
    /// The peer's incarnation (chitchat generation): a restarted node gets a fresh channel.
    generation: u64,
}

/// The round trip to one peer as the heartbeat sees it.
pub(super) struct Link {
    born: Instant,
    /// Milliseconds after `born` of the last `Pong` (or the start).
    heard: AtomicU64,
    /// False from a missed heartbeat deadline (or a failed dial) until the next `Pong`.
    reachable: AtomicBool,
    /// Control bytes queued.
    control: AtomicUsize,
}

impl Link {
    /// Whether the last heartbeat deadline was met.
    pub(super) fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// A `Pong` came: true when the peer was unreachable until now.
    pub(super) fn heard(&self) -> bool {
        self.heard.store(self.now_ms(), Ordering::Relaxed);
        !self.reachable.swap(true, Ordering::Relaxed)
    }

    /// The channel ended.
    pub(super) fn lost(&self) {
        self.reachable.store(false, Ordering::Relaxed);
    }

    fn new(reachable: bool) -> Link {
        Link {
            born: Instant::now(),
            heard: AtomicU64::new(0),
            reachable: AtomicBool::new(reachable),
            control: AtomicUsize::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    fn silent(&self) -> Duration {
        Duration::from_millis(self.now_ms() - self.heard.load(Ordering::Relaxed))
    }
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unsent {
    /// No channel: the peer is not (or no longer) a member.
    NoChannel,
    /// A member whose channel is closed or who missed its heartbeat deadline.
    Unreachable,
    /// Far past the data bound.
    QueueFull,
    /// Larger than a frame may be.
    TooLarge,
}

impl Peer {
    /// A channel to `addr` (incarnation `generation`), and the receiving end its write loop
    /// drains; `reachable` until its heartbeat says otherwise.
    pub(super) fn new(
        addr: SocketAddr,
        generation: u64,
        reachable: bool,
    ) -> (Peer, mpsc::UnboundedReceiver<Frame>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let p = Peer {
            tx,
            data: Arc::new(Gate::default()),
            link: Arc::new(Link::new(reachable)),
            addr,
            generation,
        };
        (p, rx)
    }

    /// Queues a frame, counting its bytes.
    pub(super) fn send(&self, f: Frame) -> Result<(), Unsent> {
        let w = f.weight();
        if w > MAX_FRAME {
            return Err(Unsent::TooLarge);
        }
        let forward = matches!(f, Frame::Forward { .. } | Frame::Replicate { .. });
        let counter = if forward {
            &self.data.queued
        } else {
            &self.link.control
        };
        let before = counter.fetch_add(w, Ordering::Relaxed);
        let over = if forward {
            before >= PEER_QUEUE_BYTES * 4
        } else if matches!(f, Frame::ChunkMore { .. }) {
            // a transfer whose start was queued is queued whole (the receiver refuses a torn one)
            false
        } else {
            before >= CONTROL_QUEUE_BYTES
        };
        if over || self.tx.send(f).is_err() {
            counter.fetch_sub(w, Ordering::Relaxed);
            return Err(if over && forward {
                Unsent::QueueFull
            } else {
                Unsent::Unreachable
            });
        }
        Ok(())
    }

    /// Whether the channel is open and the peer answers heartbeats.
    pub(super) fn reachable(&self) -> bool {
        !self.tx.is_closed() && self.link.reachable.load(Ordering::Relaxed)
    }

    /// Whether a live peer at `addr` of incarnation `generation` needs a new channel.
    pub(super) fn stale(&self, addr: SocketAddr, generation: u64) -> bool {
        self.tx.is_closed() || self.addr != addr || self.generation != generation
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation
    }
}

/// How a write loop reaches its peer.
pub(super) struct Dial {
    /// This node's name (logs).
    pub(super) node: Arc<str>,
    /// The cluster bind address (the source address peers know).
    pub(super) bind: SocketAddr,
    /// The peer's cluster address.
    pub(super) addr: SocketAddr,
    /// The peer's node name, which its certificate must carry (TLS only).
    pub(super) peer: Arc<str>,
    /// Mutual TLS; `None`: plain TCP.
    pub(super) tls: Option<Arc<NodeTls>>,
    /// Where refused handshakes are counted.
    pub(super) auth: AuthCounters,
    /// Sockets, or the in-memory network.
    pub(super) transport: Transport,
    /// The heartbeat and dial timers.
    pub(super) timing: Timing,
}

/// A dialed channel.
enum Dialed {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Memory(MemoryStream),
}

pub(super) async fn write_loop(
    dial: Dial,
    rx: mpsc::UnboundedReceiver<Frame>,
    data: Arc<Gate>,
    link: Arc<Link>,
) -> std::io::Result<()> {
    let t = dial.timing;
    match dial_retrying(&dial, &link).await? {
        Dialed::Plain(s) => frames(s, rx, data, link, t).await,
        Dialed::Tls(s) => frames(*s, rx, data, link, t).await,
        Dialed::Memory(s) => frames(s, rx, data, link, t).await,
    }
}

/// Writes queued frames and heartbeats until the queue closes or a write fails.
async fn frames<S: AsyncWrite + Unpin>(
    mut s: S,
    mut rx: mpsc::UnboundedReceiver<Frame>,
    data: Arc<Gate>,
    link: Arc<Link>,
    timing: Timing,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut beat = tokio::time::interval(timing.heartbeat);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // the dial took its time: the deadline counts from now
    link.heard.store(link.now_ms(), Ordering::Relaxed);
    loop {
        tokio::select! {
            f = rx.recv() => {
                let Some(f) = f else { return Ok(()) };
                buf.clear();
                let (mut forwards, mut control) = (0, 0);
                let mut add = |f: &Frame, buf: &mut Vec<u8>| {
                    if matches!(f, Frame::Forward { .. } | Frame::Replicate { .. }) {
                        forwards += f.weight();
                    } else {
                        control += f.weight();
                    }
                    encode(f, buf);
                };
                add(&f, &mut buf);
                // batch whatever else is queued (up to ~1 MiB per write); then let the tasks
                // still queuing (a connection routing a whole read of PUBLISHes, a read loop
                // acknowledging) run once and take what they added: one write for the burst,
                // not one per frame
                let mut yielded = false;
                loop {
                    while buf.len() < BATCH {
                        match rx.try_recv() {
                            Ok(f) => add(&f, &mut buf),
                            Err(_) => break,
                        }
                    }
                    if yielded || buf.len() >= BATCH {
                        break;
                    }
                    yielded = true;
                    tokio::task::yield_now().await;
                }
                write(&mut s, &buf).await?;
                link.control.fetch_sub(control, Ordering::Relaxed);
                data.release(forwards);
            }
            _ = beat.tick() => {
                if link.silent() > timing.heartbeat_deadline {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no heartbeat answer for {:?}", link.silent()),
                    ));
                }
                buf.clear();
                encode(&Frame::Ping { at: link.now_ms() }, &mut buf);
                write(&mut s, &buf).await?;
            }
        }
    }
}

/// Dials a peer (and runs the TLS handshake), up to 20 times (1 s each, backing off 100 ms to
/// 1 s: [`Timing::dial_timeout`] and tenths of it). A peer whose certificate is refused is
/// counted and logged each time, and unreachable from the first refusal.
async fn dial_retrying(d: &Dial, link: &Link) -> std::io::Result<Dialed> {
    for i in 0..20 {
        let once = async {
            if let Transport::Memory(net) = &d.transport {
                return net
                    .dial(d.bind, d.addr)
                    .await
                    .map(Dialed::Memory)
                    .map_err(|e| (None, e.to_string()));
            }
            let s = tcp(d.bind, d.addr)
                .await
                .map_err(|e| (None, e.to_string()))?;
            let _ = s.set_nodelay(true);
            match &d.tls {
                None => Ok(Dialed::Plain(s)),
                Some(t) => t
                    .dial(&d.peer, s)
                    .await
                    .map(|s| Dialed::Tls(Box::new(s)))
                    .map_err(|r| (Some(r.why), r.detail)),
            }
        };
        match tokio::time::timeout(d.timing.dial_timeout, once).await {
            Ok(Ok(c)) => return Ok(c),
            Ok(Err((Some(why), detail))) => {
                d.auth.inc(why);
                link.lost();
                tracing::warn!(node = %d.node, peer = %d.peer, addr = %d.addr, reason = why.label(), error = %detail, "cluster: peer refused on dial (TLS)");
            }
            _ => {}
        }
        tokio::time::sleep(d.timing.dial_timeout / 10 * (i + 1).min(10)).await;
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "peer could not be dialed",
    ))
}

/// Dials a peer from the cluster bind address (on a multi-homed host, the source peers know).
async fn tcp(bind: SocketAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if bind.is_ipv4() == addr.is_ipv4() && !bind.ip().is_unspecified() {
        s.bind(SocketAddr::new(bind.ip(), 0))?;
    }
    s.connect(addr).await
}

/// Writes and flushes one batch (TLS keeps records in its buffer until flushed).
async fn write<S: AsyncWrite + Unpin>(s: &mut S, buf: &[u8]) -> std::io::Result<()> {
    let all = async {
        s.write_all(buf).await?;
        s.flush().await
    };
    match tokio::time::timeout(WRITE_DEADLINE, all).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("write of {} bytes took over {WRITE_DEADLINE:?}", buf.len()),
        )),
    }
}
