//! One client connection, one task: CONNECT (auth, session attach/takeover, CONNACK), then a
//! loop that reads and handles packets, drains the session queue into the socket (bounded by
//! the client's Receive Maximum and our write buffer), enforces keep-alive (1.5×) and obeys a
//! takeover. Buffers are released while the connection is idle, so an idle client costs little:
//! its task holds only [`Live`] and the main loop's futures; the CONNECT phase and the rare
//! packets that must wait (held-back publishes, SUBSCRIBE) run in boxed futures of their own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::alias::{Alias, OutAliases};
use crate::auth::Access;
use crate::broker::Broker;
use crate::feed::{delivery_qos, Feed};
use crate::linger;
use crate::message::{unix_now, Message};
use crate::protocol::{
    decode, encode, encoded_len, reason, AckProperties, ConnAck, ConnAckProperties, Connect,
    DecodeError, Disconnect, Packet, PubAck, Publish, QoS, RetainHandling, SubAck, Subscribe,
    UnsubAck, Unsubscribe, Version, Will,
};
use crate::router::SubOptions;
use crate::session::{encode_outgoing, message_key, sub_options, Await, Outgoing, Session, Sub};
use crate::store::{Op, Table};
use crate::topic::{parse_shared, valid_topic_filter, valid_topic_name};

/// Topic aliases a v5 client may use towards us.
pub const TOPIC_ALIAS_MAX: u16 = 1024;
/// Longest a publisher is held back by one congested subscriber before it goes on.
const CONGESTION_WAIT: Duration = Duration::from_secs(2);
/// Stop pulling from the session queue while this much is waiting to be written.
const OUT_HIGH: usize = 64 * 1024;
/// Retained messages one connection may have waiting to be streamed (more when the retained
/// store is larger, so one subscription always gets all of it).
pub const RETAINED_STREAM_MAX: usize = 1 << 20;
/// Time allowed for the first packet (CONNECT) after TCP/PROXY.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is on the other end, as the listener established it.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// The client's address (from the PROXY header when there was one).
    pub addr: SocketAddr,
    /// The verified certificate CN to use as the username.
    pub cn_username: Option<String>,
}

/// Why a connection ended.
#[derive(Debug)]
enum End {
    /// DISCONNECT received (will kept unless the v5 code is 0x00).
    Normal { keep_will: bool },
    /// The peer closed or the socket failed.
    Io,
    /// Keep-alive expired.
    KeepAlive,
    /// Another connection took the session.
    TakenOver,
    /// The broker is shutting down (the will is kept back: not a client failure).
    Shutdown,
    /// A protocol violation: v5 gets a DISCONNECT with this reason code.
    Violation(u8, String),
}

impl End {
    fn label(&self) -> &'static str {
        match self {
            End::Normal { .. } => "normal",
            End::Io => "closed",
            End::KeepAlive => "keepalive",
            End::TakenOver => "taken_over",
            End::Shutdown => "server_shutdown",
            End::Violation(..) => "protocol_error",
        }
    }
}

impl From<DecodeError> for End {
    fn from(e: DecodeError) -> End {
        End::Violation(e.reason_code(), e.to_string())
    }
}

fn send(out: &mut BytesMut, p: &Packet, v: Version) {
    encode(p, v, out);
}

async fn write_all(w: &mut OwnedWriteHalf, out: &mut BytesMut) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    while !out.is_empty() {
        w.write_buf(out).await?;
    }
    Ok(())
}

async fn read_more(r: &mut OwnedReadHalf, buf: &mut BytesMut) -> std::io::Result<usize> {
    use tokio::io::AsyncReadExt;
    buf.reserve(4096);
    r.read_buf(buf).await
}

/// The CONNECT phase, from the client's first byte after any PROXY header (`rbuf` holds bytes
/// read ahead): reads CONNECT, authenticates, attaches the session and queues CONNACK.
/// `None` when the client was refused or went away (already answered and logged). Kept apart
/// from [`Live::serve`] so its state (the CONNECT packet, the CONNACK properties) is not part of
/// every connection's long-lived task.
pub async fn establish(
    b: Arc<Broker>,
    tcp: TcpStream,
    mut rbuf: BytesMut,
    info: ClientInfo,
) -> Option<Live> {
    let _ = tcp.set_nodelay(true);
    let (mut r, mut w) = tcp.into_split();
    let max = b.cfg().limits.max_packet_size;
    // CONNECT
    // boxed: the CONNECT phase's state is freed once it is over (an idle connection keeps
    // only what the main loop needs)
    let first = tokio::time::timeout(
        CONNECT_TIMEOUT,
        Box::pin(async {
            loop {
                if let Some(p) = decode(&mut rbuf, None, max)? {
                    return Ok::<Packet, DecodeError>(p);
                }
                match read_more(&mut r, &mut rbuf).await {
                    Ok(0) | Err(_) => return Err(DecodeError::Malformed("closed before CONNECT")),
                    Ok(_) => {}
                }
            }
        }),
    )
    .await;
    let connect = match first {
        Ok(Ok(Packet::Connect(c))) => *c,
        Ok(Err(DecodeError::UnsupportedVersion(l))) => {
            // MQTT-3.1.2-2: CONNACK 0x01 in the 3.1.1 layout (the one every client can read,
            // as mosquitto does), then close
            let mut out = BytesMut::new();
            send(
                &mut out,
                &connack(
                    false,
                    reason::UNSUPPORTED_PROTOCOL_VERSION,
                    ConnAckProperties::default(),
                ),
                Version::V311,
            );
            let _ = write_all(&mut w, &mut out).await;
            b.metrics().reject("unsupported_version");
            tracing::info!(peer = %info.addr, level = l, "refused: unsupported protocol version");
            linger::close(r, w).await;
            return None;
        }
        Ok(Err(e)) => {
            b.metrics().reject("bad_connect");
            tracing::info!(peer = %info.addr, error = %e, "closed: bad first packet");
            return None;
        }
        Ok(Ok(_)) => {
            b.metrics().reject("bad_connect");
            tracing::info!(peer = %info.addr, "closed: first packet is not CONNECT");
            return None;
        }
        Err(_) => {
            b.metrics().reject("connect_timeout");
            tracing::info!(peer = %info.addr, "closed: no CONNECT within {CONNECT_TIMEOUT:?}");
            return None;
        }
    };
    let v = connect.version;
    let mut out = BytesMut::new();
    let (client_id, assigned, username, expiry) = match Box::pin(admit(&b, &connect, &info)).await {
        Ok(x) => x,
        Err((code, why)) => {
            send(
                &mut out,
                &connack(false, code, ConnAckProperties::default()),
                v,
            );
            let _ = write_all(&mut w, &mut out).await;
            b.metrics().reject(why);
            tracing::info!(peer = %info.addr, client_id = %connect.client_id, code, "refused: {why}");
            linger::close(r, w).await;
            return None;
        }
    };
    let conn_id = b.next_conn_id();
    // in a cluster, the session may live on another node: it is handed over before CONNACK
    let import = match b.cluster() {
        Some(c) => Box::pin(c.take_session(&client_id, connect.clean_start)).await,
        None => None,
    };
    let att = b.sessions().attach(
        &client_id,
        connect.clean_start,
        expiry,
        v,
        username.clone(),
        info.addr,
        conn_id,
        import,
    );
    let kicked = att.kicked;
    b.metrics().connections.inc();
    b.metrics().connected.inc();
    // LB health checks connect every few seconds: keep them out of the INFO log
    let quiet = client_id.starts_with("mqedge-hc-");
    if quiet {
        tracing::debug!(conn = conn_id, client_id = %client_id, peer = %info.addr, "health check connected");
    } else {
        tracing::info!(
            conn = conn_id,
            client_id = %client_id,
            username = username.as_deref().unwrap_or(""),
            peer = %info.addr,
            version = v.level(),
            clean_start = connect.clean_start,
            session_present = att.session_present,
            "client connected"
        );
    }
    let keep_alive = effective_keep_alive(connect.keep_alive, b.cfg().limits.max_keepalive);
    let mut props = ConnAckProperties::default();
    if v.is_v5() {
        props.receive_maximum = Some(b.cfg().limits.max_inflight);
        props.maximum_packet_size = Some(max as u32);
        props.topic_alias_maximum = Some(TOPIC_ALIAS_MAX);
        // MQTT 5 §3.2.2.3.14: the client must use the server's value from now on
        props.server_keep_alive = (keep_alive != connect.keep_alive).then_some(keep_alive);
        props.assigned_client_identifier = assigned.then(|| client_id.clone());
    }
    send(
        &mut out,
        &connack(att.session_present, reason::SUCCESS, props),
        v,
    );
    let mut c = Conn {
        b,
        s: att.session,
        v,
        out,
        client_receive_max: connect.properties.receive_maximum.unwrap_or(u16::MAX),
        client_max_packet: connect
            .properties
            .maximum_packet_size
            .map(|m| m as usize)
            .unwrap_or(usize::MAX),
        aliases: None,
        pending: std::collections::VecDeque::new(),
        feed: None,
        out_aliases: connect
            .properties
            .topic_alias_maximum
            .filter(|_| v.is_v5())
            .and_then(OutAliases::new)
            .map(Box::new),
        will: connect.will.map(Box::new),
        connect_expiry_zero: expiry == 0,
    };
    if att.session_present {
        c.resend_inflight();
    }
    let keep_alive = (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
    Some(Live {
        c,
        r,
        w,
        rbuf,
        kicked,
        keep_alive,
        peer: info.addr,
        conn_id,
        quiet,
    })
}

/// An established connection: all its task keeps while the client is connected.
pub struct Live {
    c: Conn,
    r: OwnedReadHalf,
    w: OwnedWriteHalf,
    /// Bytes read and not yet decoded (unallocated while idle).
    rbuf: BytesMut,
    /// Fires when another connection takes the session over.
    kicked: oneshot::Receiver<u8>,
    /// 1.5 × the client's keep-alive.
    keep_alive: Option<Duration>,
    peer: SocketAddr,
    conn_id: u64,
    /// An LB health check: logged at debug only.
    quiet: bool,
}

impl Live {
    /// Handles every complete packet already buffered; each one restarts the keep-alive timer.
    async fn handle_buffered(&mut self, deadline: &mut Option<Instant>) -> Result<(), End> {
        let max = self.c.b.cfg().limits.max_packet_size;
        loop {
            // (statements, not `while let`: no decode temporaries kept across the await)
            let p = match decode(&mut self.rbuf, Some(self.c.v), max) {
                Ok(Some(p)) => p,
                Ok(None) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            if let Some(k) = self.keep_alive {
                *deadline = Some(Instant::now() + k);
            }
            // most packets are handled at once; the rare ones that must wait bring a boxed
            // future, so the waiting does not enlarge every connection's task
            let later = self.c.handle(p)?;
            if let Some(later) = later {
                later.await?;
            }
        }
    }

    /// Reads and handles packets, drains the session queue into the socket, enforces
    /// keep-alive and obeys a takeover until the connection ends; then says why (v5), flushes
    /// (bounded) and detaches the session. By reference: the caller's task keeps the one copy
    /// of this state (an async fn that took it by value would hold it twice). True when the
    /// client was told why (a v5 DISCONNECT): then [`Live::close`] lingers.
    pub async fn serve(&mut self) -> bool {
        let v = self.c.v;
        let mut deadline = self.keep_alive.map(|k| Instant::now() + k);
        let end = loop {
            if let Err(e) = self.handle_buffered(&mut deadline).await {
                break e;
            }
            if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
                self.rbuf = BytesMut::new(); // idle: hold no read buffer
            }
            let c = &mut self.c;
            c.drain_queue();
            let has_out = !c.out.is_empty();
            let waiting = c.pending.front().is_some_and(|p| p.wait.is_some());
            let can_pull = c.out.len() < OUT_HIGH;
            let (r, w, rbuf) = (&self.r, &mut self.w, &mut self.rbuf);
            tokio::select! {
                biased;
                code = &mut self.kicked => break match code {
                    Ok(reason::SERVER_SHUTTING_DOWN) => End::Shutdown,
                    _ => End::TakenOver,
                },
                // the socket's own reader slot, not a waiter node: the smallest future there is
                res = std::future::poll_fn(|cx| r.as_ref().poll_read_ready(cx)) => {
                    if res.is_err() { break End::Io; }
                    rbuf.reserve(4096);
                    match r.try_read_buf(rbuf) {
                        Ok(0) => break End::Io,
                        Ok(n) => { c.b.metrics().bytes_received.inc_by(n as u64); }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => break End::Io,
                    }
                }
                res = write_some(w, &mut c.out), if has_out => {
                    match res {
                        Ok(n) => {
                            c.b.metrics().bytes_sent.inc_by(n as u64);
                            if c.out.is_empty() { c.out = BytesMut::new(); }
                        }
                        Err(_) => break End::Io,
                    }
                }
                _ = c.s.notify.notified(), if can_pull => {}
                // without keep-alive the branch is off and its timer never registered
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => break End::KeepAlive,
                ok = await_front(&mut c.pending), if waiting => {
                    if !ok {
                        break End::Violation(
                            reason::SERVER_BUSY,
                            "a message could not be stored or was not acknowledged by a cluster peer".into(),
                        );
                    }
                    if let Err(e) = c.flush_acks() {
                        break e;
                    }
                }
            }
        };
        let (c, w, peer, conn_id, quiet) = (
            &mut self.c,
            &mut self.w,
            self.peer,
            self.conn_id,
            self.quiet,
        );
        // say why, where v5 allows it, and flush what is pending (bounded)
        let code = match &end {
            End::TakenOver => Some(reason::SESSION_TAKEN_OVER),
            End::Shutdown => Some(reason::SERVER_SHUTTING_DOWN),
            End::KeepAlive => Some(reason::KEEP_ALIVE_TIMEOUT),
            End::Violation(code, _) => Some(*code),
            _ => None,
        };
        let told = v.is_v5() && code.is_some();
        if let (true, Some(code)) = (told, code) {
            send(
                &mut c.out,
                &Packet::Disconnect(Disconnect {
                    code,
                    ..Default::default()
                }),
                v,
            );
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), write_all(w, &mut c.out)).await;
        let will = match &end {
            End::Normal { keep_will: false } | End::Shutdown => None,
            _ => c.will.take().map(|w| *w),
        };
        let b = &c.b;
        let client_id = &c.s.client_id;
        b.metrics().connected.dec();
        if let End::Violation(_, why) = &end {
            b.metrics().reject("protocol_error");
            tracing::info!(conn = conn_id, client_id = %client_id, peer = %peer, "closed: {why}");
        } else if quiet {
            tracing::debug!(conn = conn_id, client_id = %client_id, reason = end.label(), "health check disconnected");
        } else {
            tracing::info!(conn = conn_id, client_id = %client_id, peer = %peer, reason = end.label(), "client disconnected");
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
        let Live { c, r, w, rbuf, .. } = self;
        drop((c, rbuf));
        if told {
            linger::close(r, w).await;
        }
    }
}

async fn write_some(w: &mut OwnedWriteHalf, out: &mut BytesMut) -> std::io::Result<usize> {
    use tokio::io::AsyncWriteExt;
    let n = w.write_buf(out).await?;
    if n == 0 {
        return Err(std::io::ErrorKind::WriteZero.into());
    }
    Ok(n)
}

/// Awaits the oldest pending acknowledgement's wait; true when it went well.
async fn await_front(p: &mut std::collections::VecDeque<PendingAck>) -> bool {
    let Some(front) = p.front_mut() else {
        return true;
    };
    let Some(w) = front.wait.as_mut() else {
        return true;
    };
    let ok = w.await.unwrap_or(false);
    front.wait = None;
    ok
}

/// The next retained message of the feed as a delivery, or `None` when the client may not
/// read it (ACL) or it expired. QoS 1/2 deliveries of a persistent session are stored
/// like queued ones, so that they survive a restart while unacknowledged.
fn next_retained(
    feed: &mut Option<Box<Feed>>,
    b: &Broker,
    client_id: &str,
    st: &mut crate::session::State,
    now: u64,
    ops: &mut Vec<Op>,
) -> Option<Outgoing> {
    let f = feed.as_mut()?;
    let next = f.pop();
    if f.is_empty() {
        *feed = None;
    }
    let (msg, opts) = next?;
    if msg.expired(now) {
        return None;
    }
    if let Some(acl) = b.auth().acl() {
        if !acl.check(st.username.as_deref(), client_id, &msg.topic, Access::Read) {
            return None;
        }
    }
    let qos = delivery_qos(&msg, &opts);
    let mut o = Outgoing {
        msg,
        qos,
        retain: true,
        sub_ids: opts.ids().collect(),
        seq: 0,
    };
    if qos != QoS::AtMostOnce && st.persistent() && b.store().is_some() {
        o.seq = st.next_seq;
        st.next_seq += 1;
        ops.push(Op::Put {
            table: Table::Messages,
            key: message_key(client_id, o.seq),
            value: encode_outgoing(&o),
        });
    }
    Some(o)
}

/// The keep-alive the broker enforces: the client's, unless `[limits] max_keepalive` (0 = no
/// cap) is smaller or the client asked for none. A v5 client is told (Server Keep Alive); a
/// 3.1.1 client cannot be, and is held to it all the same (Mosquitto refuses such a client
/// instead: a client that pings more often than it must keeps working here).
fn effective_keep_alive(asked: u16, max: u16) -> u16 {
    if max != 0 && (asked == 0 || asked > max) {
        max
    } else {
        asked
    }
}

fn connack(session_present: bool, code: u8, properties: ConnAckProperties) -> Packet {
    Packet::ConnAck(ConnAck {
        session_present,
        code,
        properties,
    })
}

/// Authenticates and names the client: (client id, was it assigned, username, session expiry).
async fn admit(
    b: &Arc<Broker>,
    c: &Connect,
    info: &ClientInfo,
) -> Result<(String, bool, Option<String>, u32), (u8, &'static str)> {
    let v5 = c.version.is_v5();
    if c.properties.authentication_method.is_some() {
        return Err((
            reason::BAD_AUTHENTICATION_METHOD,
            "unsupported enhanced authentication",
        ));
    }
    let (client_id, assigned) = if c.client_id.is_empty() {
        if !v5 && !c.clean_start {
            // MQTT-3.1.3-8
            return Err((
                reason::CLIENT_IDENTIFIER_NOT_VALID,
                "empty client id without clean session",
            ));
        }
        (
            format!(
                "auto-{:016x}",
                b.next_conn_id() ^ unix_now().rotate_left(32)
            ),
            true,
        )
    } else {
        (c.client_id.clone(), false)
    };
    let username = match &info.cn_username {
        Some(cn) => Some(cn.clone()),
        None => {
            match (&c.username, b.auth().passwords()) {
                (None, _) if !b.auth().allow_anonymous() => {
                    return Err((reason::NOT_AUTHORIZED, "anonymous not allowed"))
                }
                // a username alone proves nothing: without a password file (or a certificate
                // CN from a trusted proxy) such a client is as anonymous as one without
                (Some(_), None) if !b.auth().allow_anonymous() => {
                    return Err((
                        reason::BAD_USER_NAME_OR_PASSWORD,
                        "no password file to check the username against",
                    ))
                }
                (Some(u), Some(_)) => {
                    let (b2, u2) = (b.clone(), u.clone());
                    let pw = c.password.clone().unwrap_or_default();
                    let ok = tokio::task::spawn_blocking(move || {
                        b2.auth().passwords().is_some_and(|p| p.verify(&u2, &pw))
                    })
                    .await
                    .unwrap_or(false);
                    if !ok {
                        return Err((
                            reason::BAD_USER_NAME_OR_PASSWORD,
                            "bad username or password",
                        ));
                    }
                }
                _ => {}
            }
            c.username.clone()
        }
    };
    let expiry = if v5 {
        c.properties.session_expiry_interval.unwrap_or(0)
    } else if c.clean_start {
        0
    } else {
        u32::MAX
    };
    Ok((client_id, assigned, username, expiry))
}

/// A QoS 1/2 acknowledgement owed to the client, in arrival order.
struct PendingAck {
    qos: QoS,
    pid: u16,
    code: u8,
    /// Durability and cluster acks still awaited (true when all went well).
    wait: Option<tokio::task::JoinHandle<bool>>,
}

/// The rest of a packet's handling that must wait, boxed (see [`Conn::handle`]).
type Later<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), End>> + Send + 'a>>;

/// Acknowledgements a connection may owe at once before it stops reading.
const MAX_PENDING_ACKS: usize = 1024;

struct Conn {
    b: Arc<Broker>,
    s: Arc<Session>,
    v: Version,
    out: BytesMut,
    client_receive_max: u16,
    client_max_packet: usize,
    /// v5 topic aliases, allocated at the first one (most clients never use them).
    // boxed: 8 bytes in every connection's task instead of an empty map's 48
    #[allow(clippy::box_collection)]
    aliases: Option<Box<HashMap<u16, String>>>,
    pending: std::collections::VecDeque<PendingAck>,
    /// Retained messages of new subscriptions still to send (boxed: only while there are).
    feed: Option<Box<Feed>>,
    /// Topic aliases on our PUBLISHes (boxed: only for a v5 client that allowed them).
    out_aliases: Option<Box<OutAliases>>,
    /// Boxed: most clients have none, and this is kept for the whole connection.
    will: Option<Box<Will>>,
    connect_expiry_zero: bool,
}

impl Conn {
    fn ack(&mut self, kind: fn(PubAck) -> Packet, packet_id: u16, code: u8) {
        let p = kind(PubAck {
            packet_id,
            code,
            properties: AckProperties::default(),
        });
        send(&mut self.out, &p, self.v);
    }

    /// MQTT-4.4.0-1: on resumption, resend unacknowledged PUBLISH (DUP) and PUBREL, in order.
    fn resend_inflight(&mut self) {
        let now = unix_now();
        let st = self.s.lock();
        let mut buf = BytesMut::new();
        for (pid, state, o) in st.inflight.iter() {
            match state {
                Await::PubComp => encode(
                    &Packet::PubRel(PubAck {
                        packet_id: *pid,
                        code: 0,
                        properties: AckProperties::default(),
                    }),
                    self.v,
                    &mut buf,
                ),
                _ => {
                    // full topic: aliases do not outlive their connection
                    let p = self.publish_packet(o, Some(*pid), true, now, None);
                    encode(&Packet::Publish(p), self.v, &mut buf);
                }
            }
        }
        drop(st);
        self.out.extend_from_slice(&buf);
    }

    fn publish_packet(
        &self,
        o: &crate::session::Outgoing,
        packet_id: Option<u16>,
        dup: bool,
        now: u64,
        alias: Option<Alias>,
    ) -> Publish {
        let mut p = Publish {
            dup,
            qos: o.qos,
            retain: o.retain,
            topic: match alias {
                Some(Alias::Known(_)) => String::new(),
                _ => o.msg.topic.to_string(),
            },
            packet_id,
            properties: if self.v.is_v5() {
                o.msg.properties(now, &o.sub_ids)
            } else {
                Default::default()
            },
            payload: o.msg.payload.clone(),
        };
        if let Some(Alias::Known(a) | Alias::Assign(a)) = alias {
            p.properties.topic_alias = Some(a);
        }
        p
    }

    /// Moves queued messages into the write buffer, within the inflight window.
    fn drain_queue(&mut self) {
        if self.out.len() >= OUT_HIGH {
            return;
        }
        let window = usize::from(
            self.b
                .cfg()
                .limits
                .max_inflight
                .min(self.client_receive_max),
        );
        let now = unix_now();
        let mut st = self.s.lock();
        let mut acked = Vec::new();
        let mut ops = Vec::new();
        while self.out.len() < OUT_HIGH {
            let from_feed = self
                .feed
                .as_ref()
                .is_some_and(|f| f.ready(st.queue.is_empty()));
            let qos = if from_feed {
                self.feed.as_ref().and_then(|f| f.next_qos())
            } else {
                st.queue.front().map(|o| o.qos)
            };
            let Some(qos) = qos else { break };
            if qos != QoS::AtMostOnce && st.inflight.len() >= window {
                break;
            }
            let o = if from_feed {
                match next_retained(
                    &mut self.feed,
                    &self.b,
                    &self.s.client_id,
                    &mut st,
                    now,
                    &mut ops,
                ) {
                    Some(o) => o,
                    None => continue,
                }
            } else {
                let Some(o) = st.queue.pop_front() else { break };
                if let Some(f) = self.feed.as_mut() {
                    f.queued_sent();
                }
                o
            };
            if o.msg.expired(now) {
                self.b.metrics().dropped("expired");
                acked.push(o.seq);
                continue;
            }
            let pid = (o.qos != QoS::AtMostOnce).then(|| st.next_packet_id());
            let alias = self.out_aliases.as_ref().map(|a| a.pick(&o.msg.topic));
            let p = Packet::Publish(self.publish_packet(&o, pid, false, now, alias));
            if self.client_max_packet != usize::MAX
                && encoded_len(&p, self.v) > self.client_max_packet
            {
                // MQTT-3.1.2-25: discard what the client said it cannot take
                self.b.metrics().dropped("too_large");
                acked.push(o.seq);
                continue;
            }
            encode(&p, self.v, &mut self.out);
            if let (Some(aliases), Some(alias)) = (self.out_aliases.as_mut(), alias) {
                aliases.sent(&o.msg.topic, alias);
            }
            self.b.metrics().messages_sent.inc();
            if let Some(pid) = pid {
                let state = if o.qos == QoS::AtLeastOnce {
                    Await::PubAck
                } else {
                    Await::PubRec
                };
                st.inflight.push_back((pid, state, o));
            } else {
                acked.push(o.seq);
            }
        }
        let backlog = st.queue.len();
        drop(st);
        if backlog <= self.b.cfg().limits.max_offline_messages / 2 {
            self.s.space.notify_waiters();
        }
        if let (Some(store), false) = (self.b.store(), ops.is_empty()) {
            store.write_nowait(ops);
        }
        for seq in acked {
            self.b.acked(&self.s.client_id, seq);
        }
    }

    /// Handles one packet. Most are done at once; one that must wait (a held-back publish, too
    /// many acknowledgements owed, a SUBSCRIBE persisted to the store) returns the rest as a
    /// boxed future, so the waiting does not enlarge every idle connection's task.
    fn handle(&mut self, p: Packet) -> Result<Option<Later<'_>>, End> {
        match p {
            Packet::Publish(p) => self.on_publish(p),
            Packet::Subscribe(s) => Ok(Some(Box::pin(self.on_subscribe(s)))),
            Packet::Unsubscribe(u) => Ok(Some(Box::pin(self.on_unsubscribe(u)))),
            p => self.handle_other(p).map(|()| None),
        }
    }

    fn handle_other(&mut self, p: Packet) -> Result<(), End> {
        match p {
            Packet::PubAck(a) => {
                self.finish_inflight(a.packet_id, Await::PubAck);
                Ok(())
            }
            Packet::PubRec(a) => {
                let found = {
                    let mut st = self.s.lock();
                    let pos = st
                        .inflight
                        .iter()
                        .position(|(p, s, _)| *p == a.packet_id && *s == Await::PubRec);
                    match pos {
                        Some(i) if a.code >= 0x80 => st.inflight.remove(i).map(|x| x.2.seq),
                        Some(i) => {
                            if let Some(e) = st.inflight.get_mut(i) {
                                e.1 = Await::PubComp;
                            }
                            Some(0)
                        }
                        None => None,
                    }
                };
                match found {
                    Some(seq) if a.code >= 0x80 => self.b.acked(&self.s.client_id, seq),
                    Some(_) => self.ack(Packet::PubRel, a.packet_id, 0),
                    None => self.ack(
                        Packet::PubRel,
                        a.packet_id,
                        reason::PACKET_IDENTIFIER_NOT_FOUND,
                    ),
                }
                Ok(())
            }
            Packet::PubComp(a) => {
                self.finish_inflight(a.packet_id, Await::PubComp);
                Ok(())
            }
            Packet::PubRel(a) => {
                let had = self.s.lock().qos2_in.remove(&a.packet_id);
                let code = if had {
                    0
                } else {
                    reason::PACKET_IDENTIFIER_NOT_FOUND
                };
                self.ack(Packet::PubComp, a.packet_id, code);
                Ok(())
            }
            Packet::PingReq => {
                send(&mut self.out, &Packet::PingResp, self.v);
                Ok(())
            }
            Packet::Disconnect(d) => {
                if let Some(e) = d.properties.session_expiry_interval {
                    if self.connect_expiry_zero && e != 0 {
                        // MQTT-3.14.2-2
                        return Err(End::Violation(
                            reason::PROTOCOL_ERROR,
                            "session expiry set at DISCONNECT after 0 at CONNECT".into(),
                        ));
                    }
                    self.s.lock().expiry = e;
                }
                // only reason 0x00 discards the will (MQTT-3.14.4-3); 0x04 asks for it and any
                // error code means the client did not end normally (MQTT 5 §3.1.2.5)
                Err(End::Normal {
                    keep_will: d.code != reason::SUCCESS,
                })
            }
            Packet::Auth(_) => Err(End::Violation(
                reason::PROTOCOL_ERROR,
                "AUTH without enhanced authentication".into(),
            )),
            _ => Err(End::Violation(
                reason::PROTOCOL_ERROR,
                "a packet only a server sends".into(),
            )),
        }
    }

    fn finish_inflight(&mut self, pid: u16, want: Await) {
        let seq = {
            let mut st = self.s.lock();
            let pos = st
                .inflight
                .iter()
                .position(|(p, s, _)| *p == pid && *s == want);
            pos.and_then(|i| st.inflight.remove(i)).map(|x| x.2.seq)
        };
        if let Some(seq) = seq {
            self.b.acked(&self.s.client_id, seq);
        }
    }

    fn on_publish(&mut self, mut p: Publish) -> Result<Option<Later<'_>>, End> {
        let v5 = self.v.is_v5();
        self.b.metrics().messages_received.inc();
        if let Some(a) = p.properties.topic_alias {
            if a > TOPIC_ALIAS_MAX {
                return Err(End::Violation(
                    reason::TOPIC_ALIAS_INVALID,
                    format!("topic alias {a} over the maximum"),
                ));
            }
            if p.topic.is_empty() {
                match self.aliases.as_ref().and_then(|m| m.get(&a)) {
                    Some(t) => p.topic = t.clone(),
                    None => {
                        return Err(End::Violation(
                            reason::PROTOCOL_ERROR,
                            format!("unknown topic alias {a}"),
                        ))
                    }
                }
            } else {
                self.aliases
                    .get_or_insert_with(Default::default)
                    .insert(a, p.topic.clone());
            }
        }
        if !valid_topic_name(&p.topic) {
            return Err(End::Violation(
                reason::TOPIC_NAME_INVALID,
                format!("invalid topic name {:?}", p.topic),
            ));
        }
        if !p.properties.subscription_identifiers.is_empty() {
            // MQTT-3.3.4-6
            return Err(End::Violation(
                reason::PROTOCOL_ERROR,
                "subscription identifier from a client".into(),
            ));
        }
        let pid = p.packet_id.unwrap_or(0);
        if p.qos == QoS::ExactlyOnce {
            let mut st = self.s.lock();
            if st.qos2_in.contains(&pid) {
                // a retransmission of a message we already routed: acknowledge only (MQTT-4.3.3)
                drop(st);
                self.pending.push_back(PendingAck {
                    qos: QoS::ExactlyOnce,
                    pid,
                    code: 0,
                    wait: None,
                });
                return self.flush_acks().map(|()| None);
            }
            if st.qos2_in.len() >= usize::from(self.b.cfg().limits.max_inflight) {
                return Err(End::Violation(
                    reason::RECEIVE_MAXIMUM_EXCEEDED,
                    "receive maximum exceeded".into(),
                ));
            }
            st.qos2_in.insert(pid);
        }
        let allowed = !p.topic.starts_with("$SYS")
            && match self.b.auth().acl() {
                Some(acl) => {
                    let user = self.s.lock().username.clone();
                    acl.check(user.as_deref(), &self.s.client_id, &p.topic, Access::Write)
                }
                None => true,
            };
        let mut pending_wait = None;
        let mut hold = None;
        let code = if allowed {
            let now = unix_now();
            let props = p.properties;
            let msg = Message {
                topic: Arc::from(p.topic.as_str()),
                payload: p.payload,
                qos: p.qos,
                retain: p.retain,
                publisher: self.s.client_id.clone(),
                expires_at: props.message_expiry_interval.map(|e| now + u64::from(e)),
                payload_format_indicator: props.payload_format_indicator,
                content_type: props.content_type,
                response_topic: props.response_topic,
                correlation_data: props.correlation_data,
                user_properties: props.user_properties,
            };
            let published = self.b.publish(Arc::new(msg));
            let ops = published.ops;
            // acknowledge only what is durable and what every other node took (QoS 1/2); the
            // wait runs beside the connection, which goes on reading: acks leave in order
            let store = self.b.store().cloned().filter(|_| !ops.is_empty());
            let acks = published.acks;
            if store.is_some() || !acks.is_empty() {
                let wait = tokio::spawn(async move {
                    if let Some(store) = store {
                        if let Err(e) = store.write(ops).await {
                            tracing::error!(error = %e, "store write failed");
                            return false;
                        }
                    }
                    for ack in acks {
                        match tokio::time::timeout(crate::cluster::FORWARD_ACK_TIMEOUT, ack).await {
                            Ok(true) => {}
                            _ => return false,
                        }
                    }
                    true
                });
                pending_wait = Some(wait);
            }
            let mut congested = published.congested;
            congested.retain(|c| !Arc::ptr_eq(c, &self.s));
            if !published.peer_gates.is_empty() || !congested.is_empty() {
                hold = Some((published.peer_gates, congested));
            }
            0
        } else {
            self.b.metrics().dropped("not_authorized");
            tracing::debug!(client_id = %self.s.client_id, topic = %p.topic, "publish denied by ACL");
            // v5 says so; v3.1.1 acknowledges and drops (MQTT-3.3.5-2)
            if v5 {
                reason::NOT_AUTHORIZED
            } else {
                0
            }
        };
        if p.qos == QoS::ExactlyOnce && code >= 0x80 {
            self.s.lock().qos2_in.remove(&pid);
        }
        let ack = (p.qos != QoS::AtMostOnce).then_some(PendingAck {
            qos: p.qos,
            pid,
            code,
            wait: pending_wait,
        });
        if let Some((gates, congested)) = hold {
            return Ok(Some(Box::pin(self.hold_back(gates, congested, ack))));
        }
        if let Some(a) = ack {
            self.pending.push_back(a);
            if self.pending.len() > MAX_PENDING_ACKS {
                return Ok(Some(Box::pin(self.bound_pending())));
            }
        }
        self.flush_acks().map(|()| None)
    }

    /// Holds a publisher back (no PUBACK, no further reads), bounded in time, while a peer's
    /// forward queue is full or a connected subscriber is far behind (until its backlog
    /// halves): server-side flow control. Then owes the publish's acknowledgement.
    async fn hold_back(
        &mut self,
        gates: Vec<Arc<crate::cluster::Gate>>,
        congested: Vec<Arc<Session>>,
        ack: Option<PendingAck>,
    ) -> Result<(), End> {
        for g in gates {
            let deadline = tokio::time::Instant::now() + CONGESTION_WAIT;
            loop {
                let space = g.space().notified();
                tokio::pin!(space);
                space.as_mut().enable();
                if !g.congested() {
                    break;
                }
                if tokio::time::timeout_at(deadline, space).await.is_err() {
                    break;
                }
            }
        }
        let limit = self.b.cfg().limits.max_offline_messages.max(1);
        for c in congested {
            c.wait_for_space(limit).await;
        }
        if let Some(a) = ack {
            self.pending.push_back(a);
        }
        self.bound_pending().await
    }

    /// Bounded acknowledgements: a client that floods without waiting for acks waits here.
    async fn bound_pending(&mut self) -> Result<(), End> {
        while self.pending.len() > MAX_PENDING_ACKS {
            self.wait_front().await?;
            self.flush_acks()?;
        }
        self.flush_acks()
    }

    /// Awaits the oldest pending acknowledgement's durability/cluster wait.
    async fn wait_front(&mut self) -> Result<(), End> {
        if let Some(front) = self.pending.front_mut() {
            if let Some(w) = front.wait.as_mut() {
                let ok = w.await.unwrap_or(false);
                front.wait = None;
                if !ok {
                    return Err(End::Violation(
                        reason::SERVER_BUSY,
                        "a message could not be stored or was not acknowledged by a cluster peer"
                            .into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Writes, in order (MQTT-4.6.0-2), every acknowledgement whose wait is over.
    fn flush_acks(&mut self) -> Result<(), End> {
        while let Some(front) = self.pending.front() {
            if let Some(w) = &front.wait {
                if !w.is_finished() {
                    break;
                }
                // finished: its result is read by wait_front
                return Ok(());
            }
            let Some(a) = self.pending.pop_front() else {
                break;
            };
            match a.qos {
                QoS::AtLeastOnce => self.ack(Packet::PubAck, a.pid, a.code),
                _ => self.ack(Packet::PubRec, a.pid, a.code),
            }
        }
        Ok(())
    }

    async fn on_subscribe(&mut self, s: Subscribe) -> Result<(), End> {
        let v5 = self.v.is_v5();
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        let user = self.s.lock().username.clone();
        for f in &s.filters {
            let shared = parse_shared(&f.filter);
            if shared.is_some() && f.no_local {
                // MQTT-3.8.3-4
                return Err(End::Violation(
                    reason::PROTOCOL_ERROR,
                    "No Local on a shared subscription".into(),
                ));
            }
            if !valid_topic_filter(&f.filter) {
                codes.push(reason::TOPIC_FILTER_INVALID);
                continue;
            }
            let plain = shared.map(|(_, f)| f).unwrap_or(&f.filter);
            if let Some(acl) = self.b.auth().acl() {
                if !acl.check(user.as_deref(), &self.s.client_id, plain, Access::Subscribe) {
                    codes.push(reason::NOT_AUTHORIZED);
                    continue;
                }
            }
            let sub = Sub {
                qos: f.qos,
                no_local: f.no_local,
                retain_as_published: f.retain_as_published,
                retain_handling: f.retain_handling,
                id: s.properties.subscription_identifier,
            };
            let new = self.b.subscribe(&self.s, &f.filter, sub);
            codes.push(f.qos as u8);
            let send_retained = shared.is_none()
                && match f.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendIfNew => new,
                    RetainHandling::DoNotSend => false,
                };
            if send_retained {
                retained.push((f.filter.clone(), sub));
            }
        }
        self.b.persist_session(&self.s).await;
        send(
            &mut self.out,
            &Packet::SubAck(SubAck {
                packet_id: s.packet_id,
                properties: AckProperties::default(),
                codes: if v5 {
                    codes
                } else {
                    codes
                        .into_iter()
                        .map(|c| if c >= 0x80 { 0x80 } else { c })
                        .collect()
                },
            }),
            self.v,
        );
        for (f, sub) in retained {
            self.stream_retained(&f, sub_options(&sub));
        }
        Ok(())
    }

    /// Queues the retained messages of a new subscription for streaming (see [`crate::feed`]),
    /// bounded: a connection holds at most [`RETAINED_STREAM_MAX`] (or the whole retained
    /// store, if larger) waiting snapshot entries; the rest are dropped (`retained_backlog`).
    fn stream_retained(&mut self, filter: &str, opts: SubOptions) {
        let mut msgs = self.b.retained_snapshot(filter);
        if msgs.is_empty() {
            return;
        }
        let feed = self.feed.get_or_insert_with(Default::default);
        let cap = RETAINED_STREAM_MAX.max(self.b.retained().len());
        let room = cap.saturating_sub(feed.len());
        if msgs.len() > room {
            let over = (msgs.len() - room) as u64;
            self.b.metrics().dropped_many("retained_backlog", over);
            msgs.truncate(room);
        }
        let ahead = self.s.lock().queue.len();
        // sent even when this client published them: No Local is about forwarding publishes
        let opts = SubOptions {
            no_local: false,
            ..opts
        };
        feed.push(msgs, opts, ahead);
        if feed.is_empty() {
            self.feed = None;
        }
    }

    async fn on_unsubscribe(&mut self, u: Unsubscribe) -> Result<(), End> {
        let mut codes = Vec::with_capacity(u.filters.len());
        for f in &u.filters {
            let existed = self.b.unsubscribe(&self.s, f);
            codes.push(if existed {
                0
            } else {
                reason::NO_SUBSCRIPTION_EXISTED
            });
        }
        self.b.persist_session(&self.s).await;
        send(
            &mut self.out,
            &Packet::UnsubAck(UnsubAck {
                packet_id: u.packet_id,
                properties: AckProperties::default(),
                codes,
            }),
            self.v,
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    /// An idle connection costs its task (this state and the main loop's futures) plus the
    /// socket: what is optional is boxed (will, client topic aliases, our topic aliases, the
    /// retained feed), so the state a connection keeps for its whole life stays within this.
    #[test]
    fn connection_state_stays_small() {
        assert!(
            std::mem::size_of::<super::Live>() <= 256,
            "Live is {} bytes",
            std::mem::size_of::<super::Live>()
        );
    }
}
