//! Deliveries to the client: the session queue and the retained feed drained into the write
//! buffer within the inflight window (ours and the client's Receive Maximum) and the write
//! backlog, with our topic aliases; what is resent when a session resumes; and the client's
//! PUBACK / PUBREC / PUBCOMP that finish a delivery.

use std::sync::MutexGuard;

use bytes::BytesMut;

use super::acks::{AckKind, PendingAck, Wait};
use super::aliases::{Alias, OutAliases};
use super::feed::Feed;
use super::Conn;
use crate::auth::Access;
use crate::broker::Broker;
use crate::limits::Limits;
use crate::message::unix_now;
use crate::protocol::Version;
use crate::protocol::{encode, encoded_len, reason, AckProperties, Packet, PubAck, Publish, QoS};
use crate::session::record::released_put;
use crate::session::{encode_outgoing, message_key, Await, Outgoing, State};
use crate::store::{Op, Table};

impl Conn {
    /// MQTT-4.4.0-1: on resumption, resend unacknowledged PUBLISH (DUP) and PUBREL, in order.
    pub(super) fn resend_inflight(&mut self) {
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
                    let p = publish_packet(self.v, o, Some(*pid), true, now, None);
                    encode(&Packet::Publish(p), self.v, &mut buf);
                }
            }
        }
        drop(st);
        self.out.extend_from_slice(&buf);
    }

    /// Moves queued messages into the write buffer, within the inflight window.
    pub(super) fn drain_queue(&mut self) {
        let limits = self.limits();
        if limits.write_backlog_full(self.out.len()) {
            return;
        }
        let Conn {
            b,
            s,
            v,
            out,
            client_receive_max,
            client_max_packet,
            feed,
            out_aliases,
            ..
        } = self;
        let mut d = Drain {
            b,
            client_id: &s.client_id,
            v: *v,
            out,
            feed,
            out_aliases: out_aliases.as_deref_mut(),
            // u32::MAX: no limit (no packet is that large), so no size to compute per message
            client_max_packet: match *client_max_packet {
                u32::MAX => usize::MAX,
                m => m as usize,
            },
            window: limits.inflight_window(*client_receive_max),
            limits,
            now: unix_now(),
            st: s.lock(),
            acked: Vec::new(),
            ops: Vec::new(),
        };
        while !d.limits.write_backlog_full(d.out.len()) {
            match d.next() {
                Next::Stop => break,
                Next::Skip => {}
                Next::Deliver(o) => d.write(o),
            }
        }
        d.done(&s.space);
    }

    /// PUBACK: a QoS 1 delivery is done.
    pub(super) fn on_puback(&mut self, a: PubAck) {
        self.finish_inflight(a.packet_id, Await::PubAck);
    }

    /// PUBCOMP: a QoS 2 delivery is done.
    pub(super) fn on_pubcomp(&mut self, a: PubAck) {
        self.finish_inflight(a.packet_id, Await::PubComp);
    }

    /// PUBREC: a QoS 2 delivery was received (PUBREL follows), or refused (code ≥ 0x80: done).
    /// A stored delivery is marked as past PUBREC before its PUBREL leaves, so that after a
    /// restart (or on the node it moves to) it resumes with PUBREL, never as a new PUBLISH.
    pub(super) fn on_pubrec(&mut self, a: PubAck) {
        let client_id = &self.s.client_id;
        let store = self.b.store();
        let found = {
            let mut st = self.s.lock();
            let pos = st
                .inflight
                .iter()
                .position(|(p, s, _)| *p == a.packet_id && *s == Await::PubRec);
            match pos {
                Some(i) if a.code >= 0x80 => st.inflight.remove(i).map(|x| Err(x.2.seq)),
                // queued under the lock: ordered before the delete that its PUBCOMP queues,
                // and with any handover of this session
                Some(i) => st.inflight.get_mut(i).map(|e| {
                    e.1 = Await::PubComp;
                    let mark = (e.2.seq != 0).then(|| released_put(client_id, a.packet_id, &e.2));
                    Ok(store.zip(mark).map(|(store, op)| store.submit(vec![op])))
                }),
                None => None,
            }
        };
        let (code, wait) = match found {
            Some(Err(seq)) => {
                self.b.acked(client_id, seq);
                return;
            }
            Some(Ok(durable)) => {
                let wait = durable.map(|d| Wait::new(async move { d.await.is_ok() }));
                (0, wait)
            }
            None => (reason::PACKET_IDENTIFIER_NOT_FOUND, None),
        };
        self.acks.push(PendingAck {
            kind: AckKind::PubRel,
            pid: a.packet_id,
            code,
            wait,
        });
        self.flush_acks();
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
}

/// One pass of [`Conn::drain_queue`]: the connection's parts it needs, borrowed apart, and the
/// session locked once for the whole pass.
struct Drain<'a> {
    b: &'a Broker,
    client_id: &'a str,
    v: Version,
    out: &'a mut BytesMut,
    feed: &'a mut Option<Box<Feed>>,
    out_aliases: Option<&'a mut OutAliases>,
    client_max_packet: usize,
    window: usize,
    limits: Limits,
    now: u64,
    st: MutexGuard<'a, State>,
    /// Sequence numbers done with (sent at QoS 0, expired, too large): acknowledged at the end.
    acked: Vec<u64>,
    /// Store writes for retained deliveries of a persistent session.
    ops: Vec<Op>,
}

/// What comes next from the queue or the feed.
enum Next {
    /// Nothing, or the inflight window is full.
    Stop,
    /// A retained message not for this client (ACL) or expired: go on.
    Skip,
    Deliver(Outgoing),
}

impl Drain<'_> {
    /// The next delivery: from the feed when its turn came, else from the session queue.
    fn next(&mut self) -> Next {
        let st = &mut *self.st;
        let from_feed = self
            .feed
            .as_ref()
            .is_some_and(|f| f.ready(st.queue.is_empty()));
        let qos = if from_feed {
            self.feed.as_ref().and_then(|f| f.next_qos())
        } else {
            st.queue.front().map(|o| o.qos)
        };
        let Some(qos) = qos else { return Next::Stop };
        if qos != QoS::AtMostOnce && st.inflight.len() >= self.window {
            return Next::Stop;
        }
        if from_feed {
            return match next_retained(
                self.feed,
                self.b,
                self.client_id,
                st,
                self.now,
                &mut self.ops,
            ) {
                Some(o) => Next::Deliver(o),
                None => Next::Skip,
            };
        }
        let Some(o) = st.queue.pop_front() else {
            return Next::Stop;
        };
        if let Some(f) = self.feed.as_mut() {
            f.queued_sent();
        }
        Next::Deliver(o)
    }

    /// Writes one delivery (or drops it: expired, too large for the client) and records it
    /// inflight until acknowledged (QoS 1/2).
    fn write(&mut self, o: Outgoing) {
        let metrics = &self.b.metrics();
        if o.msg.expired(self.now) {
            metrics.dropped("expired");
            self.acked.push(o.seq);
            return;
        }
        let pid = (o.qos != QoS::AtMostOnce).then(|| self.st.next_packet_id());
        let alias = self.out_aliases.as_ref().map(|a| a.pick(&o.msg.topic));
        let p = Packet::Publish(publish_packet(self.v, &o, pid, false, self.now, alias));
        if self.client_max_packet != usize::MAX && encoded_len(&p, self.v) > self.client_max_packet
        {
            // MQTT-3.1.2-25: discard what the client said it cannot take
            metrics.dropped("too_large");
            self.acked.push(o.seq);
            return;
        }
        encode(&p, self.v, self.out);
        if let (Some(aliases), Some(alias)) = (self.out_aliases.as_mut(), alias) {
            aliases.sent(&o.msg.topic, alias);
        }
        metrics.messages_sent.inc();
        if let Some(pid) = pid {
            let state = if o.qos == QoS::AtLeastOnce {
                Await::PubAck
            } else {
                Await::PubRec
            };
            self.st.inflight.push_back((pid, state, o));
        } else {
            self.acked.push(o.seq);
        }
    }

    /// Unlocks the session, ends its congestion and lets held-back publishers go on when the
    /// backlog is short enough again (`space`), stores what must be and acknowledges what is
    /// done.
    fn done(self, space: &tokio::sync::Notify) {
        let Drain {
            b,
            client_id,
            limits,
            st,
            acked,
            ops,
            ..
        } = self;
        let mut st = st;
        // relieved at half the congestion mark (in count and bytes): held-back publishers go
        // on, and the next congestion holds them back again, for at most one more hold
        let relieved = limits.backlog_relieved(st.queue.len())
            && st.queue.bytes() <= b.cfg().flow.max_queued_bytes / 4;
        if relieved {
            st.queue.relieved();
        }
        drop(st);
        if relieved {
            space.notify_waiters();
        }
        if let (Some(store), false) = (b.store(), ops.is_empty()) {
            store.write_nowait(ops);
        }
        for seq in acked {
            b.acked(client_id, seq);
        }
    }
}

/// The next retained message of the feed as a delivery, or `None` when the client may not
/// read it (ACL) or it expired. QoS 1/2 deliveries of a persistent session are stored
/// like queued ones, so that they survive a restart while unacknowledged.
fn next_retained(
    feed: &mut Option<Box<Feed>>,
    b: &Broker,
    client_id: &str,
    st: &mut State,
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
    let qos = opts.delivery_qos(msg.qos);
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

/// The PUBLISH of a delivery, named by its alias when there is one.
fn publish_packet(
    v: Version,
    o: &Outgoing,
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
        properties: if v.is_v5() {
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
