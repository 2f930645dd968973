//! An in-memory network for the cluster, so a whole cluster of brokers runs inside one test
//! process with no socket: gossip goes through chitchat's own [`ChannelTransport`], the node
//! channel through [`tokio::io::duplex`] pipes handed from a dialer to the listener registered
//! at the address it dials. The network can cut links (both ways, or the node channel one
//! way), pause a node (its streams stop moving bytes, its gossip stops; its timers run on) and
//! kill one (its streams fail on both ends, its gossip stops, dials to it are refused). Every
//! node is known by its `[cluster] bind` address, which need not be one this host has.
//!
//! What a fault does to a stream mirrors TCP: bytes written before a cut stay in the pipe (up to
//! [`PIPE_BYTES`]) and arrive once it heals; a dial across a cut hangs (the dialer's timeout
//! ends it); a killed peer's streams end in `ConnectionReset`.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use chitchat::transport::ChannelTransport;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::sync::{mpsc, Notify};

/// Bytes a pipe holds in each direction before its writer waits (a socket's buffers).
pub const PIPE_BYTES: usize = 1 << 20;

/// A network of cluster nodes in one process. Cloning it gives another handle on the same
/// network; give one to every node (`Transport::Memory`) and keep one to inject faults.
#[derive(Clone, Default)]
pub struct MemoryNetwork {
    /// Who listens where, and the faults in force.
    state: Arc<Mutex<State>>,
    /// Gossip (chitchat's in-memory transport); its links follow [`State`].
    gossip: ChannelTransport,
    /// Rung on every fault change: dials waiting across a cut look again.
    changed: Arc<Notify>,
}

#[derive(Default)]
struct State {
    /// Node channel listeners, by address.
    listeners: HashMap<SocketAddr, mpsc::UnboundedSender<(MemoryStream, SocketAddr)>>,
    /// Every node that listened once (gossip links are set between all of them).
    nodes: HashSet<SocketAddr>,
    /// Directed node-channel cuts: bytes from `.0` do not reach `.1`.
    cut: HashSet<(SocketAddr, SocketAddr)>,
    /// Gossip cuts, both ways (`.0 < .1`).
    gossip_cut: HashSet<(SocketAddr, SocketAddr)>,
    paused: HashSet<SocketAddr>,
    killed: HashSet<SocketAddr>,
    /// Streams waiting for a fault to end.
    blocked: Vec<Waker>,
}

impl State {
    /// Whether bytes written by `from` reach `to` now.
    fn flows(&self, from: SocketAddr, to: SocketAddr) -> bool {
        !self.cut.contains(&(from, to))
            && !self.paused.contains(&from)
            && !self.paused.contains(&to)
    }

    fn dead(&self, a: SocketAddr, b: SocketAddr) -> bool {
        self.killed.contains(&a) || self.killed.contains(&b)
    }

    /// Remembers a stream to wake on the next change (once per task).
    fn wait(&mut self, w: &Waker) {
        if !self.blocked.iter().any(|b| b.will_wake(w)) {
            self.blocked.push(w.clone());
        }
    }
}

fn pair(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

/// A node channel listener: the streams dialed to its address.
pub struct MemoryListener {
    rx: mpsc::UnboundedReceiver<(MemoryStream, SocketAddr)>,
}

impl MemoryListener {
    /// The next stream and its dialer's address; `None` once the node is killed.
    pub async fn accept(&mut self) -> Option<(MemoryStream, SocketAddr)> {
        self.rx.recv().await
    }
}

impl MemoryNetwork {
    /// An empty network.
    pub fn new() -> MemoryNetwork {
        MemoryNetwork::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The gossip transport nodes open their chitchat socket on.
    pub(super) fn gossip(&self) -> &ChannelTransport {
        &self.gossip
    }

    /// Listens on `addr` for the node channel (a node listening again replaces its listener).
    pub(super) async fn listen(&self, addr: SocketAddr) -> io::Result<MemoryListener> {
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut st = self.state();
            if st.killed.contains(&addr) {
                return Err(io::Error::new(
                    io::ErrorKind::AddrNotAvailable,
                    format!("{addr} was killed"),
                ));
            }
            st.listeners.insert(addr, tx);
            st.nodes.insert(addr);
        }
        self.apply_gossip().await;
        Ok(MemoryListener { rx })
    }

    /// Dials `to` from `from`: refused when nobody listens there or either end is killed; hangs
    /// while either direction between them is cut (as a TCP handshake would).
    pub(super) async fn dial(&self, from: SocketAddr, to: SocketAddr) -> io::Result<MemoryStream> {
        loop {
            let changed = self.changed.notified();
            {
                let st = self.state();
                let refused = |what: &str| {
                    Err(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        format!("{to}: {what}"),
                    ))
                };
                if st.dead(from, to) {
                    return refused("killed");
                }
                let Some(l) = st.listeners.get(&to) else {
                    return refused("nobody listens");
                };
                if !st.cut.contains(&(from, to)) && !st.cut.contains(&(to, from)) {
                    let (a, b) = tokio::io::duplex(PIPE_BYTES);
                    let ours = MemoryStream::new(a, from, to, self.state.clone());
                    let theirs = MemoryStream::new(b, to, from, self.state.clone());
                    return match l.send((theirs, from)) {
                        Ok(()) => Ok(ours),
                        Err(_) => refused("listener closed"),
                    };
                }
            }
            changed.await;
        }
    }

    /// Cuts `a` and `b` apart both ways: gossip and the node channel.
    pub async fn partition(&self, a: SocketAddr, b: SocketAddr) {
        self.change(|st| {
            st.cut.insert((a, b));
            st.cut.insert((b, a));
            st.gossip_cut.insert(pair(a, b));
        })
        .await;
    }

    /// Cuts `a` from every other node it knows, both ways.
    pub async fn isolate(&self, a: SocketAddr) {
        let others: Vec<SocketAddr> = self
            .state()
            .nodes
            .iter()
            .copied()
            .filter(|n| *n != a)
            .collect();
        for b in others {
            self.partition(a, b).await;
        }
    }

    /// Stops the node channel's bytes from `from` to `to` only; gossip still flows both ways
    /// (the case gossip calls live and the channel cannot reach).
    pub async fn cut_one_way(&self, from: SocketAddr, to: SocketAddr) {
        self.change(|st| {
            st.cut.insert((from, to));
        })
        .await;
    }

    /// Ends every cut between `a` and `b`, both ways.
    pub async fn heal(&self, a: SocketAddr, b: SocketAddr) {
        self.change(|st| {
            st.cut.remove(&(a, b));
            st.cut.remove(&(b, a));
            st.gossip_cut.remove(&pair(a, b));
        })
        .await;
    }

    /// Ends every cut.
    pub async fn heal_all(&self) {
        self.change(|st| {
            st.cut.clear();
            st.gossip_cut.clear();
        })
        .await;
    }

    /// Pauses `a` (as SIGSTOP would): its streams move no byte and its gossip stops until
    /// [`MemoryNetwork::resume`]; its peers' writes queue up to [`PIPE_BYTES`].
    pub async fn pause(&self, a: SocketAddr) {
        self.change(|st| {
            st.paused.insert(a);
        })
        .await;
    }

    /// Ends a pause.
    pub async fn resume(&self, a: SocketAddr) {
        self.change(|st| {
            st.paused.remove(&a);
        })
        .await;
    }

    /// Kills `a` (as a crash would): every stream to or from it fails, dials to it are refused,
    /// its gossip stops for good.
    pub async fn kill(&self, a: SocketAddr) {
        self.change(|st| {
            st.killed.insert(a);
            st.listeners.remove(&a);
        })
        .await;
    }

    /// Applies a fault change, wakes whatever waits on faults, and sets the gossip links.
    async fn change(&self, f: impl FnOnce(&mut State)) {
        let woken = {
            let mut st = self.state();
            f(&mut st);
            std::mem::take(&mut st.blocked)
        };
        for w in woken {
            w.wake();
        }
        self.changed.notify_waiters();
        self.apply_gossip().await;
    }

    /// Sets every gossip link from the faults: a pair gossips unless cut, paused or killed.
    async fn apply_gossip(&self) {
        let links: Vec<(SocketAddr, SocketAddr, bool)> = {
            let st = self.state();
            let nodes: Vec<SocketAddr> = st.nodes.iter().copied().collect();
            let mut out = Vec::new();
            for (i, a) in nodes.iter().enumerate() {
                for b in &nodes[i + 1..] {
                    let down = st.gossip_cut.contains(&pair(*a, *b))
                        || st.paused.contains(a)
                        || st.paused.contains(b)
                        || st.dead(*a, *b);
                    out.push((*a, *b, down));
                }
            }
            out
        };
        for (a, b, down) in links {
            if down {
                self.gossip.remove_link(a, b).await;
            } else {
                self.gossip.add_link(a, b).await;
            }
        }
    }
}

/// One end of a node channel stream on a [`MemoryNetwork`].
pub struct MemoryStream {
    pipe: DuplexStream,
    /// This end's node.
    me: SocketAddr,
    /// The other end's node.
    peer: SocketAddr,
    /// The faults, looked at on every read and write.
    state: Arc<Mutex<State>>,
}

/// What a fault lets a read or write do now.
enum Gate {
    Go,
    Wait,
    Reset,
}

impl MemoryStream {
    fn new(pipe: DuplexStream, me: SocketAddr, peer: SocketAddr, state: Arc<Mutex<State>>) -> Self {
        MemoryStream {
            pipe,
            me,
            peer,
            state,
        }
    }

    /// Whether bytes from `from` to `to` may move now (registering `cx` to be woken when not).
    fn gate(&self, cx: &Context<'_>, from: SocketAddr, to: SocketAddr) -> Gate {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.dead(self.me, self.peer) {
            return Gate::Reset;
        }
        if st.flows(from, to) {
            return Gate::Go;
        }
        st.wait(cx.waker());
        Gate::Wait
    }
}

fn reset() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "peer killed")
}

impl AsyncRead for MemoryStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.gate(cx, self.peer, self.me) {
            Gate::Go => Pin::new(&mut self.pipe).poll_read(cx, buf),
            Gate::Wait => Poll::Pending,
            Gate::Reset => Poll::Ready(Err(reset())),
        }
    }
}

impl AsyncWrite for MemoryStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // a cut keeps written bytes in the pipe (the reader waits); a pause stops the writer
        let me = self.me;
        let gate = self.gate(cx, me, me);
        match gate {
            Gate::Go => Pin::new(&mut self.pipe).poll_write(cx, buf),
            Gate::Wait => Poll::Pending,
            Gate::Reset => Poll::Ready(Err(reset())),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.pipe).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.pipe).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, n], 7000))
    }

    /// Waits for `n` bytes, or none within 50 ms.
    async fn read(s: &mut MemoryStream, n: usize) -> Option<Vec<u8>> {
        let mut buf = vec![0; n];
        tokio::time::timeout(Duration::from_millis(50), s.read_exact(&mut buf))
            .await
            .ok()
            .and_then(Result::ok)
            .map(|_| buf)
    }

    #[tokio::test]
    async fn a_cut_holds_bytes_until_healed_a_kill_resets_both_ends() {
        let net = MemoryNetwork::new();
        let mut l = net.listen(addr(2)).await.unwrap();
        let mut a = net.dial(addr(1), addr(2)).await.unwrap();
        let (mut b, from) = l.accept().await.unwrap();
        assert_eq!(from, addr(1));

        a.write_all(b"one").await.unwrap();
        assert_eq!(read(&mut b, 3).await.as_deref(), Some(&b"one"[..]));

        // one way: 1 → 2 stops, 2 → 1 still flows
        net.cut_one_way(addr(1), addr(2)).await;
        a.write_all(b"two").await.unwrap();
        assert_eq!(read(&mut b, 3).await, None);
        b.write_all(b"back").await.unwrap();
        assert_eq!(read(&mut a, 4).await.as_deref(), Some(&b"back"[..]));
        // a dial across the cut hangs
        assert!(
            tokio::time::timeout(Duration::from_millis(50), net.dial(addr(1), addr(2)))
                .await
                .is_err()
        );
        net.heal(addr(1), addr(2)).await;
        assert_eq!(read(&mut b, 3).await.as_deref(), Some(&b"two"[..]));

        // a pause stops both directions
        net.pause(addr(2)).await;
        let stuck = tokio::time::timeout(Duration::from_millis(50), b.write_all(b"p")).await;
        assert!(stuck.is_err(), "a paused node writes nothing");
        a.write_all(b"q").await.unwrap();
        assert_eq!(read(&mut a, 1).await, None);
        net.resume(addr(2)).await;
        assert_eq!(read(&mut b, 1).await.as_deref(), Some(&b"q"[..]));

        net.kill(addr(2)).await;
        assert_eq!(
            a.write_all(b"x").await.map_err(|e| e.kind()),
            Err(io::ErrorKind::ConnectionReset)
        );
        assert!(b.read_u8().await.is_err());
        assert_eq!(
            net.dial(addr(1), addr(2))
                .await
                .map(|_| ())
                .map_err(|e| e.kind()),
            Err(io::ErrorKind::ConnectionRefused)
        );
        assert!(l.accept().await.is_none());
    }
}
