//! One client connection, one task, in three phases: [`establish`] (CONNECT, auth, session
//! attach/takeover, CONNACK: `connect.rs`), [`Live::serve`] (a loop that reads and handles
//! packets, drains the session queue into the socket within the client's Receive Maximum and
//! our write buffer, enforces keep-alive (1.5×) and obeys a takeover), then [`Live::close`].
//!
//! Buffers are released while the connection is idle, so an idle client costs little: its
//! task holds only [`Live`] and the main loop's futures; the CONNECT phase and the rare packets
//! that must wait (held-back publishes, SUBSCRIBE) run in boxed futures of their own. Packets
//! are handled synchronously (`Conn::handle`); one that must wait returns the rest of its
//! handling as a boxed continuation.
//!
//! The files: `connect.rs` (the CONNECT phase), `inbound.rs` (PUBLISH from the client, QoS 2
//! release), `acks.rs` (acknowledgements owed, in order), `outbound.rs` (deliveries to the
//! client and their acknowledgements), `subscribe.rs` (SUBSCRIBE, UNSUBSCRIBE, the retained
//! messages of a new subscription), `authorize.rs` (the `[auth.http_acl]` check of a PUBLISH or
//! SUBSCRIBE), `aliases.rs`, `feed.rs`, `linger.rs`. The phase files add
//! `impl` blocks to [`Live`] and `Conn` and import `super`; this file names only the leaf
//! modules (`acks`, `aliases`, `feed`, `linger`), which import nothing of the connection.

mod acks;
pub mod aliases;
mod authorize;
mod connect;
pub mod feed;
mod inbound;
pub mod linger;
mod outbound;
mod subscribe;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;

use self::acks::Acks;
use self::aliases::{InAliases, OutAliases};
use self::feed::Feed;
use crate::broker::Broker;
use crate::error::CloseReason;
use crate::limits::Limits;
use crate::message::unpin;
use crate::protocol::{decode, encode, reason, Disconnect, Packet, Version, Will};
use crate::session::Session;

/// Who is on the other end, as the listener established it.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// The client's address (from the PROXY header when there was one).
    pub addr: SocketAddr,
    /// The verified certificate's field to use as the username (`username_from`; the CN with
    /// `use_cn_as_username`).
    pub cert_username: Option<String>,
    /// The `username_from` field this client's certificate lacks: its CONNECT is refused.
    pub missing_identity: Option<&'static str>,
}

/// The CONNECT phase, from the client's first byte after any PROXY header (`rbuf` holds bytes
/// read ahead): reads CONNECT, authenticates, attaches the session and queues CONNACK.
/// `None` when the client was refused or went away (already answered and logged). Kept apart
/// from [`Live::serve`] so its state (the CONNECT packet, the CONNACK properties) is not part of
/// every connection's long-lived task: box this future. (A plain fn handing out the phase's
/// own future: an async wrapper would hold its arguments a second time.)
pub fn establish(
    b: Arc<Broker>,
    tcp: TcpStream,
    rbuf: BytesMut,
    info: ClientInfo,
) -> impl std::future::Future<Output = Option<Live>> + Send {
    Live::establish(b, tcp, rbuf, info)
}

/// An established connection: all its task keeps while the client is connected.
pub struct Live {
    c: Conn,
    /// Whole, not split into owned halves: those would cost an `Arc` per connection.
    tcp: TcpStream,
    /// Bytes read and not yet decoded (unallocated while idle).
    rbuf: BytesMut,
    /// Fires when another connection takes the session over.
    kicked: oneshot::Receiver<u8>,
    /// 1.5 × the client's keep-alive, in ms (0: none); not a `Duration`, 4 bytes for 16.
    keep_alive_ms: u32,
    peer: SocketAddr,
    conn_id: u64,
    /// An LB health check: logged at debug only.
    quiet: bool,
}

/// The protocol state of an established connection (what [`Live`] holds beside its socket).
struct Conn {
    b: Arc<Broker>,
    s: Arc<Session>,
    v: Version,
    /// Bytes to write (unallocated while idle).
    out: BytesMut,
    client_receive_max: u16,
    /// The client's Maximum Packet Size (`u32::MAX`: none); a u32, as on the wire.
    client_max_packet: u32,
    /// v5 topic aliases the client set.
    aliases: InAliases,
    /// QoS 1/2 acknowledgements owed, in order.
    acks: Acks,
    /// Retained messages of new subscriptions still to send (boxed: only while there are).
    feed: Option<Box<Feed>>,
    /// Topic aliases on our PUBLISHes (boxed: only for a v5 client that allowed them).
    out_aliases: Option<Box<OutAliases>>,
    /// With the username of the CONNECT that set it (checked then). Boxed: most clients have
    /// none, and this is kept for the whole connection.
    will: Option<Box<(Will, Option<String>)>>,
    connect_expiry_zero: bool,
}

/// The rest of a packet's handling that must wait, boxed (see [`Conn::handle`]).
type Later<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), CloseReason>> + Send + 'a>>;

impl Live {
    /// 1.5 × the client's keep-alive, when it has one.
    fn keep_alive(&self) -> Option<Duration> {
        (self.keep_alive_ms > 0).then(|| Duration::from_millis(u64::from(self.keep_alive_ms)))
    }

    /// Reads and handles packets, drains the session queue into the socket, enforces
    /// keep-alive and obeys a takeover until the connection ends; then says why (v5), flushes
    /// (bounded) and detaches the session. By reference: the caller's task keeps the one copy
    /// of this state (an async fn that took it by value would hold it twice). True when the
    /// client was told why (a v5 DISCONNECT): then [`Live::close`] lingers.
    pub async fn serve(&mut self) -> bool {
        // the main loop, until the connection ends; in this fn rather than one of its own, whose
        // future would sit in this one's with a second copy of `self`
        let mut deadline = self.keep_alive().map(|k| Instant::now() + k);
        let end = 'main: loop {
            if let Err(e) = self.handle_buffered(&mut deadline).await {
                break 'main e;
            }
            if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
                self.rbuf = BytesMut::new(); // idle: hold no read buffer
            }
            let c = &mut self.c;
            c.drain_queue();
            let has_out = !c.out.is_empty();
            let waiting = c.acks.front_waiting();
            let can_pull = !c.limits().write_backlog_full(c.out.len());
            // a client that does not read what we write is not read either (its PINGREQs or
            // PUBLISHes would grow `out` without bound): TCP holds it back
            let paused = c.limits().reads_paused(c.out.len());
            // the futures borrow fields of `self` and the handlers use `self` again: no
            // reference kept in a local across the await (each would be 8 bytes of every task)
            tokio::select! {
                biased;
                code = &mut self.kicked => break 'main match code {
                    Ok(reason::SERVER_SHUTTING_DOWN) => CloseReason::Shutdown,
                    Ok(reason::USE_ANOTHER_SERVER) => CloseReason::Moved,
                    Ok(reason::QUOTA_EXCEEDED) => CloseReason::SlowConsumer,
                    _ => CloseReason::TakenOver,
                },
                // the socket's own reader slot, not a waiter node: the smallest future there is
                res = std::future::poll_fn(|cx| self.tcp.poll_read_ready(cx)), if !paused => {
                    let read = res.map_err(|_| CloseReason::Io);
                    match read.and_then(|()| read_ready(&self.tcp, &mut self.rbuf)) {
                        Ok(n) => self.c.b.metrics().bytes_received.inc_by(n as u64),
                        Err(e) => break 'main e,
                    };
                }
                res = std::future::poll_fn(|cx| poll_write_some(&self.tcp, &mut self.c.out, cx)), if has_out => {
                    let Ok(n) = res else { break 'main CloseReason::Io };
                    let c = &mut self.c;
                    c.b.metrics().bytes_sent.inc_by(n as u64);
                    // not read while paused, but reading us: alive (recomputed, not kept
                    // across the await: the future stays within its budget)
                    if c.limits().reads_paused(c.out.len() + n) {
                        if let Some(k) = self.keep_alive() {
                            deadline = Some(Instant::now() + k);
                        }
                    }
                    if self.c.out.is_empty() {
                        self.c.out = BytesMut::new();
                    }
                }
                // the session's bell (see `session::Bell`): a closure, not a waiter node
                _ = std::future::poll_fn(|cx| self.c.s.poll_bell(self.conn_id, cx)), if can_pull => {}
                // without keep-alive the branch is off and its timer never registered
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => break 'main CloseReason::KeepAlive,
                ok = std::future::poll_fn(|cx| self.c.acks.poll_settled(cx)), if waiting => {
                    if !ok {
                        break 'main CloseReason::NotAcknowledged;
                    }
                    let c = &mut self.c;
                    c.acks.flush(&mut c.out, c.v);
                }
            }
        };
        // boxed: its flush timeout would enlarge every connection's task
        Box::pin(self.finish(end)).await
    }

    /// Handles every complete packet already buffered; each one restarts the keep-alive timer.
    async fn handle_buffered(&mut self, deadline: &mut Option<Instant>) -> Result<(), CloseReason> {
        let max = self.c.limits().max_packet_size();
        loop {
            if self.c.limits().reads_paused(self.c.out.len()) {
                return Ok(()); // the rest waits in `rbuf` until the client reads (see `run`)
            }
            // one unit of the task's budget per packet: a client whose packets each cost little
            // (PINGREQs, tiny QoS 1 PUBLISHes) is handled a few hundred at a time, not
            // 64,000 in one poll that holds its worker thread for most of a second
            tokio::task::consume_budget().await;
            // (statements, not `while let`: no decode temporaries kept across the await)
            // in a block: the packet (224 bytes) is not kept across the await below
            let later = {
                let mut p = match decode(&mut self.rbuf, Some(self.c.v), max) {
                    Ok(Some(p)) => p,
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(e.into()),
                };
                if let Packet::Publish(p) = &mut p {
                    // the message may outlive this read: it must not pin the read buffer
                    unpin(&mut p.payload);
                    if let Some(c) = &mut p.properties.correlation_data {
                        unpin(c);
                    }
                }
                if let Some(k) = self.keep_alive() {
                    *deadline = Some(Instant::now() + k);
                }
                // most packets are handled at once; the rare ones that must wait bring a boxed
                // future, so the waiting does not enlarge every connection's task
                self.c.handle(p)?
            };
            if let Some(later) = later {
                later.await?;
            }
        }
    }

    /// Says why (v5 DISCONNECT, where the reason has a code), flushes what is pending
    /// (bounded), counts and logs the end and detaches the session (publishing the will when
    /// the reason keeps it). True when the client was told why.
    async fn finish(&mut self, end: CloseReason) -> bool {
        let (c, w) = (&mut self.c, &mut self.tcp);
        let code = end.code();
        let told = c.v.is_v5() && code.is_some();
        if let (true, Some(code)) = (told, code) {
            let p = Packet::Disconnect(Disconnect {
                code,
                ..Default::default()
            });
            c.send(&p);
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), write_all(w, &mut c.out)).await;
        let will = if end.keeps_will() {
            c.will.take().map(|w| *w)
        } else {
            None
        };
        let (b, client_id, conn_id, peer) = (&c.b, &c.s.client_id, self.conn_id, self.peer);
        b.metrics().connected.dec();
        end.count(b.metrics());
        if !end.is_ordinary() {
            tracing::info!(conn = conn_id, client_id = %client_id, peer = %peer, "{end}");
        } else if self.quiet {
            tracing::debug!(conn = conn_id, client_id = %client_id, reason = end.label(), "health check disconnected");
        } else {
            tracing::info!(conn = conn_id, client_id = %client_id, peer = %peer, reason = end.label(), "{end}");
        }
        b.detach(&c.s, conn_id, will);
        if let Some(feed) = c.feed.take() {
            b.requeue_retained(&c.s, feed.into_rest());
        }
        told
    }

    /// Closes the socket once [`Live::serve`] returned: a lingering close (see [`linger`]) when
    /// the client was told why, so that a client still sending can read the reason; a plain
    /// close otherwise. Everything else the connection held is freed first. Box this future in
    /// a long-lived task: it holds the connection by value.
    pub async fn close(self, told: bool) {
        let Live { c, tcp, rbuf, .. } = self;
        drop((c, rbuf));
        if told {
            linger::close(tcp).await;
        }
    }
}

impl Conn {
    /// The node's `[limits]`, to ask (a copy of a few words).
    fn limits(&self) -> Limits {
        Limits::from_config(&self.b.cfg().limits)
    }

    /// Queues a packet for writing.
    fn send(&mut self, p: &Packet) {
        encode(p, self.v, &mut self.out);
    }

    /// Handles one packet. Most are done at once; one that must wait (a held-back publish, too
    /// many acknowledgements owed, a SUBSCRIBE persisted to the store) returns the rest as a
    /// boxed future, so the waiting does not enlarge every idle connection's task.
    fn handle(&mut self, p: Packet) -> Result<Option<Later<'_>>, CloseReason> {
        match p {
            Packet::Publish(p) => return self.on_publish(p),
            Packet::Subscribe(s) => return Ok(Some(Box::pin(self.on_subscribe(s)))),
            Packet::Unsubscribe(u) => return Ok(Some(Box::pin(self.on_unsubscribe(u)))),
            Packet::PubAck(a) => self.on_puback(a),
            Packet::PubRec(a) => self.on_pubrec(a),
            Packet::PubComp(a) => self.on_pubcomp(a),
            Packet::PubRel(a) => self.on_pubrel(a),
            Packet::PingReq => self.send(&Packet::PingResp),
            Packet::Disconnect(d) => return Err(self.on_disconnect(d)),
            Packet::Auth(_) => return Err(CloseReason::UnexpectedAuth),
            _ => return Err(CloseReason::ServerPacket),
        }
        Ok(None)
    }

    /// DISCONNECT: the session expiry it may set, and whether the will is kept.
    fn on_disconnect(&mut self, d: Disconnect) -> CloseReason {
        if let Some(e) = d.properties.session_expiry_interval {
            if self.connect_expiry_zero && e != 0 {
                // MQTT-3.14.2-2
                return CloseReason::ExpiryAfterZero;
            }
            // within max_session_expiry, as at CONNECT
            self.s.lock().expiry = self.limits().session_expiry(e);
        }
        // only reason 0x00 discards the will (MQTT-3.14.4-3); 0x04 asks for it and any error
        // code means the client did not end normally (MQTT 5 §3.1.2.5)
        CloseReason::Normal {
            keep_will: d.code != reason::SUCCESS,
        }
    }
}

/// Reads what the socket has once it is readable: the byte count, or why the connection ends.
fn read_ready(r: &TcpStream, rbuf: &mut BytesMut) -> Result<usize, CloseReason> {
    rbuf.reserve(4096);
    match r.try_read_buf(rbuf) {
        Ok(0) => Err(CloseReason::Io),
        Ok(n) => Ok(n),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
        Err(_) => Err(CloseReason::Io),
    }
}

async fn write_all(w: &mut TcpStream, out: &mut BytesMut) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    while !out.is_empty() {
        w.write_buf(out).await?;
    }
    Ok(())
}

/// Writes what the socket takes of `out` once it is writable (through a shared reference, so
/// that the main loop's read and write branches share the one socket): the byte count.
fn poll_write_some(
    w: &TcpStream,
    out: &mut BytesMut,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<std::io::Result<usize>> {
    use bytes::Buf;
    loop {
        std::task::ready!(w.poll_write_ready(cx))?;
        match w.try_write(out) {
            Ok(0) => return std::task::Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
            Ok(n) => {
                out.advance(n);
                return std::task::Poll::Ready(Ok(n));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return std::task::Poll::Ready(Err(e)),
        }
    }
}

async fn read_more(r: &mut TcpStream, buf: &mut BytesMut) -> std::io::Result<usize> {
    use tokio::io::AsyncReadExt;
    buf.reserve(4096);
    r.read_buf(buf).await
}
