//! The inbound side of the node-to-node channel: the accept and read loops, and what a
//! received [`Frame`] does here (the outgoing side is [`super::peer`]). The read loop only
//! decodes and dispatches: a forwarded copy is made at once, in frame order (queued or dropped
//! by each local subscriber's slow-consumer policy, never waited for), and only its ack waits
//! (for the store, and for a congested subscriber at most `publisher_hold`) without holding up
//! the frames behind it: `TakeSession` and route changes never sit behind a slow subscriber.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::chunks::{Reassembly, MAX_TRANSFER};
use super::frame::{decode, Frame};
use super::memory::MemoryListener;
use super::node::{lock, Cluster};
use super::tls::{names_node, AuthFailure, Refused, HELLO_DEADLINE, MEMBERSHIP_WAIT};
use super::BoxFuture;
use crate::message::Message;
use crate::routing::retained_versions::decode_record;
use crate::routing::SubOptions;

/// Forwarded copies whose ack may wait at once per inbound channel.
const MAX_PENDING_ACKS: usize = 16_384;
/// The largest first frame read before a Hello is accepted (a Hello is a name and two numbers):
/// an unauthenticated peer cannot make this node buffer up to [`super::frame::MAX_FRAME`].
const MAX_HELLO: usize = 4096;

/// A Hello: the peer's name, its incarnation and the one of this node it dialed.
type Hello = (Arc<str>, u64, u64);

/// The ack a received forward (or replication op) owes: its id once `durable` resolves true
/// (`None`: the copy is taken already, no future to poll).
pub(super) struct AckWait {
    id: u64,
    durable: Option<BoxFuture<'static, bool>>,
}

impl AckWait {
    pub(super) fn new(id: u64, durable: Option<BoxFuture<'static, bool>>) -> AckWait {
        AckWait { id, durable }
    }
}

impl Future for AckWait {
    type Output = Option<u64>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<u64>> {
        let id = self.id;
        match &mut self.durable {
            None => Poll::Ready(Some(id)),
            Some(f) => f.as_mut().poll(cx).map(|ok| ok.then_some(id)),
        }
    }
}

/// Why an inbound connection ended.
enum Inbound {
    /// Refused by an identity check (counted, logged as a warning).
    Refused(Refused),
    /// Closed, timed out or broken (logged at debug, as before).
    Closed(String),
}

impl From<Refused> for Inbound {
    fn from(r: Refused) -> Inbound {
        Inbound::Refused(r)
    }
}

/// The length a frame header announces, once its four bytes are there.
fn frame_len(buf: &[u8]) -> Option<usize> {
    let h: [u8; 4] = buf.get(..4)?.try_into().ok()?;
    Some(u32::from_be_bytes(h) as usize)
}

impl Cluster {
    pub(super) async fn accept_loop(
        self: Arc<Self>,
        l: TcpListener,
        mut stop: watch::Receiver<bool>,
    ) {
        while let Some((s, peer)) = mqedge_shared::net::accept(&l, &mut stop, "cluster").await {
            let conn = self.clone().inbound(s);
            self.clone().spawn_inbound(peer, conn);
        }
    }

    /// [`Cluster::accept_loop`] on the in-memory network (plain: no TLS).
    pub(super) async fn accept_memory(
        self: Arc<Self>,
        mut l: MemoryListener,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            let (s, peer) = tokio::select! {
                _ = stop.changed() => return,
                a = l.accept() => match a {
                    Some(a) => a,
                    None => return,
                },
            };
            let conn = self.clone().inbound_plain(s, Instant::now());
            self.clone().spawn_inbound(peer, conn);
        }
    }

    /// Runs one inbound connection in its own task: the handshake and the Hello run there,
    /// under a deadline, never in the accept loop.
    fn spawn_inbound(
        self: Arc<Self>,
        peer: SocketAddr,
        conn: impl Future<Output = Result<(), Inbound>> + Send + 'static,
    ) {
        tokio::spawn(async move {
            match conn.await {
                Ok(()) => {}
                Err(Inbound::Refused(r)) => {
                    self.counters.auth_failures.inc(r.why);
                    tracing::warn!(node = %self.node, peer = %peer, reason = r.why.label(), error = %r.detail, "cluster: inbound node channel refused");
                }
                Err(Inbound::Closed(e)) => {
                    tracing::debug!(node = %self.node, peer = %peer, error = %e, "cluster: inbound channel closed");
                }
            }
        });
    }

    /// One inbound connection: (TLS and) the Hello within [`HELLO_DEADLINE`], the checks, then
    /// the read loop.
    async fn inbound(self: Arc<Self>, s: TcpStream) -> Result<(), Inbound> {
        let started = Instant::now();
        let Some(tls) = self.tls.clone() else {
            return self.inbound_plain(s, started).await;
        };
        let (mut s, sans) = tokio::time::timeout(HELLO_DEADLINE, tls.accept(s))
            .await
            .map_err(|_| {
                Refused::new(
                    AuthFailure::Handshake,
                    format!("no TLS handshake within {HELLO_DEADLINE:?}"),
                )
            })??;
        let mut buf = Vec::with_capacity(1024);
        let hello = self.hello(&mut s, &mut buf, started).await?;
        if !names_node(&sans, &hello.0) {
            return Err(Refused::new(
                AuthFailure::NameMismatch,
                format!("Hello from {:?}, its certificate names {sans:?}", hello.0),
            )
            .into());
        }
        // a node that just started may say Hello before its gossip reached us
        let until = Instant::now() + MEMBERSHIP_WAIT;
        while !self.is_member(&hello.0) {
            if Instant::now() >= until {
                return Err(Refused::new(
                    AuthFailure::NotMember,
                    format!(
                        "{:?} is not a gossip member (waited {MEMBERSHIP_WAIT:?})",
                        hello.0
                    ),
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let from = self.current(hello)?;
        self.read_loop(s, buf, from).await.map_err(Inbound::Closed)
    }

    /// An inbound connection without TLS: the Hello, then the read loop.
    async fn inbound_plain<S: AsyncRead + Unpin>(
        self: Arc<Self>,
        mut s: S,
        started: Instant,
    ) -> Result<(), Inbound> {
        let mut buf = Vec::with_capacity(1024);
        let hello = self.hello(&mut s, &mut buf, started).await?;
        let from = self.current(hello)?;
        self.read_loop(s, buf, from).await.map_err(Inbound::Closed)
    }

    /// The peer of a Hello dialed for this incarnation; one dialed for an incarnation of this
    /// node that is gone is refused: what it queued (handover requests, forwards) was meant
    /// for that one.
    fn current(&self, (node, epoch, to_epoch): Hello) -> Result<(Arc<str>, u64), Inbound> {
        if to_epoch != self.epoch {
            return Err(Inbound::Closed(format!(
                "Hello from {node} for incarnation {to_epoch}, this node is {}",
                self.epoch
            )));
        }
        Ok((node, epoch))
    }

    /// Reads the first frame, which must be a Hello no larger than [`MAX_HELLO`], within what
    /// is left of [`HELLO_DEADLINE`].
    async fn hello<S: AsyncRead + Unpin>(
        &self,
        s: &mut S,
        buf: &mut Vec<u8>,
        started: Instant,
    ) -> Result<Hello, Inbound> {
        let left = HELLO_DEADLINE.saturating_sub(started.elapsed());
        let read = async {
            loop {
                if let Some(len) = frame_len(buf).filter(|l| *l > MAX_HELLO) {
                    return Err(format!(
                        "first frame of {len} bytes is over the {MAX_HELLO} bytes a Hello may have"
                    ));
                }
                match decode(buf).map_err(|e| e.to_string())? {
                    Some((
                        Frame::Hello {
                            node,
                            epoch,
                            to_epoch,
                        },
                        used,
                    )) => {
                        buf.drain(..used);
                        return Ok((Arc::<str>::from(node), epoch, to_epoch));
                    }
                    Some(_) => return Err("first frame is not Hello".to_string()),
                    None => {}
                }
                buf.reserve(MAX_HELLO);
                match s.read_buf(buf).await {
                    Ok(0) => return Err("closed before its Hello".to_string()),
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
        };
        match tokio::time::timeout(left, read).await {
            Ok(Ok(h)) => Ok(h),
            Ok(Err(e)) => Err(Inbound::Closed(e)),
            Err(_) => Err(Inbound::Closed(format!(
                "no Hello within {HELLO_DEADLINE:?}"
            ))),
        }
    }

    async fn read_loop<S: AsyncRead + Unpin>(
        self: Arc<Self>,
        mut s: S,
        mut buf: Vec<u8>,
        (node, epoch): (Arc<str>, u64),
    ) -> Result<(), String> {
        tracing::debug!(node = %self.node, peer = %node, epoch, "cluster: inbound channel from peer");
        // a peer that (re)connects may have dropped our routes (it thought we were down, or it
        // restarted): send it our snapshot again
        self.resend_snapshot(&node);
        // the peer pings every heartbeat: silent for two deadlines, it is gone
        let read_deadline = self.wiring.timing.heartbeat_deadline * 2;
        // acks of forwarded copies still waiting to be durable (bounded: past it, reading
        // waits, and the sender's queue and then its publishers' gate feel it)
        let mut acks: FuturesUnordered<AckWait> = FuturesUnordered::new();
        // large snapshots and exports come in pieces: applied once whole
        let c = &self.counters;
        let who = (self.node.clone(), node.clone());
        let (dropped, received) = (c.transfers_dropped.clone(), c.transfers_received.clone());
        let mut chunks = Reassembly::new(MAX_TRANSFER, dropped, received, who);
        // ids of copies durable here, acknowledged together once this read is handled
        let mut ready: Vec<u64> = Vec::new();
        loop {
            let mut off = 0;
            while let Some((f, used)) = decode(&buf[off..]).map_err(|e| e.to_string())? {
                off += used;
                let Some(f) = chunks.take(f).map_err(|e| e.to_string())? else {
                    continue;
                };
                if let Some(mut ack) = self.handle(node.clone(), epoch, f) {
                    // most copies are taken at once (no store write, no congested subscriber)
                    match Pin::new(&mut ack).poll(&mut Context::from_waker(Waker::noop())) {
                        Poll::Ready(id) => ready.extend(id),
                        Poll::Pending => acks.push(ack),
                    }
                }
            }
            buf.drain(..off);
            // and those whose wait ended meanwhile
            while let Some(Some(id)) = acks.next().now_or_never() {
                ready.extend(id);
            }
            self.send_acks(&node, &mut ready);
            if acks.len() >= MAX_PENDING_ACKS {
                if let Some(id) = acks.next().await {
                    ready.extend(id);
                }
                continue;
            }
            buf.reserve(64 * 1024);
            tokio::select! {
                r = tokio::time::timeout(read_deadline, s.read_buf(&mut buf)) => {
                    match r {
                        Err(_) => return Err(format!("nothing read for {read_deadline:?}")),
                        Ok(Err(e)) => return Err(e.to_string()),
                        Ok(Ok(0)) => break,
                        Ok(Ok(_)) => {}
                    }
                }
                Some(id) = acks.next(), if !acks.is_empty() => ready.extend(id),
            }
        }
        // the peer closed: the copies it sent are still acked once durable
        while let Some(id) = acks.next().await {
            ready.extend(id);
            while let Some(Some(id)) = acks.next().now_or_never() {
                ready.extend(id);
            }
            self.send_acks(&node, &mut ready);
        }
        self.send_acks(&node, &mut ready);
        Ok(())
    }

    /// Applies one frame from peer `n` (incarnation `epoch`); for a forward that wants an ack,
    /// the future that resolves to its id once the copy is durable here.
    fn handle(self: &Arc<Self>, n: Arc<str>, epoch: u64, f: Frame) -> Option<AckWait> {
        match f {
            // taken apart by the read loop's reassembly
            Frame::Hello { .. } | Frame::ChunkStart { .. } | Frame::ChunkMore { .. } => {}
            Frame::Ping { at } => {
                self.send_to(&n, Frame::Pong { at });
            }
            Frame::Pong { .. } => self.on_pong(&n, epoch),
            Frame::RoutesReset { filters } => {
                self.drop_routes(&n);
                let mut set = HashSet::with_capacity(filters.len());
                for x in filters {
                    self.routes.subscribe(&n, &x, SubOptions::default());
                    set.insert(x);
                }
                tracing::debug!(node = %self.node, peer = %n, routes = set.len(), "cluster: routes snapshot");
                lock(&self.node_filters).insert(n, set);
            }
            Frame::RouteAdd { filter } => {
                self.routes.subscribe(&n, &filter, SubOptions::default());
                lock(&self.node_filters)
                    .entry(n)
                    .or_default()
                    .insert(filter);
            }
            Frame::RouteDel { filter } => {
                self.routes.unsubscribe(&n, &filter);
                if let Some(s) = lock(&self.node_filters).get_mut(&n) {
                    s.remove(&filter);
                }
            }
            Frame::Forward {
                id,
                direct,
                shared,
                msg,
            } => {
                // the copies are made now, in frame order; only the ack waits
                let durable = match (self.core(), Message::decode(&msg)) {
                    (Some(b), Some(m)) => b.deliver_forwarded(Arc::new(m), direct, &shared),
                    _ => return None,
                };
                // no ack for a copy that is not durable here: the origin's publisher gets no
                // PUBACK and sends it again
                return (id != 0).then(|| AckWait::new(id, durable));
            }
            Frame::ForwardAcks { ranges } => self.on_forward_acks(&n, &ranges),
            f @ (Frame::ForwardAck { .. } | Frame::Session { .. } | Frame::Held { .. }) => {
                let id = match &f {
                    Frame::ForwardAck { id }
                    | Frame::Session { id, .. }
                    | Frame::Held { id, .. } => *id,
                    _ => 0,
                };
                let w = lock(&self.waiting).remove(&id);
                // an answer nobody waits for any more (or whose waiter just gave up)
                let late = match w {
                    Some(w) => w.tx.send(f).err(),
                    None => Some(f),
                };
                if let Some(f) = late {
                    self.late_answer(n, f);
                }
            }
            Frame::Retained { msgs } => {
                if let Some(b) = self.core() {
                    for m in msgs {
                        if let Some((m, version)) = decode_record(&m) {
                            b.set_retained(Arc::new(m), version);
                        }
                    }
                }
            }
            Frame::TakeSession {
                id,
                client_id,
                clean_start,
            } => self.on_take_session(n, id, client_id, clean_start),
            Frame::SessionDone {
                id,
                client_id,
                keep,
            } => self.on_session_done(n, id, client_id, keep),
            Frame::SessionAppend { client_id, queued } => {
                self.on_session_append(&client_id, &queued)
            }
            Frame::Leave => self.node_down(&n, "left gracefully", false),
            Frame::Replicate { id, ops } => return self.on_replicate(&n, id, &ops),
            Frame::Promoted { of } => self.note_promoted(&of, n),
            Frame::Holds {
                id,
                client_ids,
                offline_only,
            } => {
                let client_ids = self
                    .core()
                    .map(|b| b.holds(&client_ids, offline_only))
                    .unwrap_or_default();
                // a peer that just came up may ask before this node's channel to it is open:
                // the answer waits for it (one membership round) instead of being lost
                self.send_or_keep(n, Frame::Held { id, client_ids });
            }
        }
        None
    }

    /// Sends our complete route list to one peer (in order with later deltas).
    fn resend_snapshot(&self, n: &str) {
        let local = lock(&self.local);
        self.send_to(
            n,
            Frame::RoutesReset {
                filters: local.keys().cloned().collect(),
            },
        );
    }
}
