//! The session's durable forms: its store record (settings), its subscriptions (one store row
//! per filter, so a SUBSCRIBE costs its own filters and not the session's whole set), the store
//! keys and values of its queued messages, and the export a session travels in to another node
//! (settings and every subscription in one record). Pure encoders and decoders: no I/O, no
//! locks.

use std::sync::Arc;

use super::{Await, Outgoing, State, Sub};
use crate::message::{put, Message, Rd};
use crate::protocol::{QoS, RetainHandling, Version};
use crate::store::{Op, Table};

/// First byte of a stored delivery past PUBREC (PUBREL sent, PUBCOMP awaited): its packet id
/// follows, then the delivery as [`encode_outgoing`] writes it. A broker that predates it reads
/// an unknown QoS and skips the row.
const RELEASED: u8 = 0xFE;

impl State {
    /// The store record of this session: its settings and the incoming QoS 2 packet ids
    /// awaiting PUBREL, without its subscriptions (they are rows of their own, see
    /// [`sub_put`]), so rewriting it costs the same at the first filter and the 100,000th.
    /// The layout is the one records always had, with a subscription count of 0: a record
    /// written before keeps its subscriptions inline and still reads (see [`State::decode`]).
    pub fn encode(&self) -> Vec<u8> {
        self.encode_with(false)
    }

    /// The record a session travels in to another node: [`State::encode`] with every
    /// subscription inline (what every broker version reads).
    pub fn encode_export(&self) -> Vec<u8> {
        self.encode_with(true)
    }

    /// The record, then the incoming QoS 2 packet ids awaiting PUBREL. That last part was
    /// added later: a record without it reads as none held, and an older broker ignores it.
    fn encode_with(&self, subs: bool) -> Vec<u8> {
        let n = if subs { self.subs.len() } else { 0 };
        let mut o = Vec::with_capacity(36 + n * 24 + self.qos2_in.len() * 2);
        o.push(1);
        o.push(self.version.level());
        o.extend_from_slice(&self.expiry.to_be_bytes());
        match &self.username {
            Some(u) => {
                o.push(1);
                put(&mut o, u.as_bytes());
            }
            None => o.push(0),
        }
        o.extend_from_slice(&(n as u32).to_be_bytes());
        if subs {
            for (f, s) in &self.subs {
                put(&mut o, f.as_bytes());
                encode_sub(&mut o, s);
            }
        }
        o.extend_from_slice(&(self.qos2_in.len() as u32).to_be_bytes());
        for pid in &self.qos2_in {
            o.extend_from_slice(&pid.to_be_bytes());
        }
        o
    }

    /// Reads a stored session record.
    pub fn decode(b: &[u8]) -> Option<State> {
        let mut r = Rd(b);
        if r.u8()? != 1 {
            return None;
        }
        let mut st = State::new();
        st.version = match r.u8()? {
            3 => Version::V31,
            5 => Version::V5,
            _ => Version::V311,
        };
        st.expiry = r.u32()?;
        if r.u8()? == 1 {
            st.username = Some(r.string()?);
        }
        let n = r.u32()?;
        for _ in 0..n {
            let f = r.string()?;
            let sub = decode_sub(&mut r)?;
            st.subs.insert(f, sub);
        }
        // a record written before QoS 2 ids were kept ends here
        if let Some(n) = r.u32() {
            for _ in 0..n.min(u32::from(u16::MAX)) {
                let pid = r.take(2)?;
                st.qos2_in.insert(u16::from_be_bytes([pid[0], pid[1]]));
            }
        }
        Some(st)
    }
}

/// A subscription's options: QoS, flags, identifier (6 bytes).
fn encode_sub(o: &mut Vec<u8>, s: &Sub) {
    o.push(s.qos as u8);
    o.push(
        u8::from(s.no_local)
            | u8::from(s.retain_as_published) << 1
            | (s.retain_handling as u8) << 2,
    );
    o.extend_from_slice(&s.id.unwrap_or(0).to_be_bytes());
}

fn decode_sub(r: &mut Rd<'_>) -> Option<Sub> {
    let qos = QoS::from_u8(r.u8()?)?;
    let flags = r.u8()?;
    let id = r.u32()?;
    Some(Sub {
        qos,
        no_local: flags & 1 != 0,
        retain_as_published: flags & 2 != 0,
        retain_handling: match (flags >> 2) & 3 {
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => RetainHandling::SendAtSubscribe,
        },
        id: (id != 0).then_some(id),
    })
}

/// Store key of a subscription row: `client_id 0x00 filter` (a client id holds no NUL,
/// MQTT-1.5.4-2, so one client's rows are exactly those under [`message_prefix`]).
fn sub_key(client_id: &str, filter: &str) -> Vec<u8> {
    let mut k = message_prefix(client_id);
    k.extend_from_slice(filter.as_bytes());
    k
}

/// The store write of one subscription of a persistent session.
pub fn sub_put(client_id: &str, filter: &str, s: &Sub) -> Op {
    let mut value = Vec::with_capacity(6);
    encode_sub(&mut value, s);
    Op::Put {
        table: Table::Subscriptions,
        key: sub_key(client_id, filter),
        value,
    }
}

/// The store write that removes one subscription.
pub fn sub_delete(client_id: &str, filter: &str) -> Op {
    Op::Delete {
        table: Table::Subscriptions,
        key: sub_key(client_id, filter),
    }
}

/// Reads a subscription row: client id, filter, options.
pub fn decode_sub_row(key: &[u8], value: &[u8]) -> Option<(String, String, Sub)> {
    let pos = key.iter().position(|b| *b == 0)?;
    let id = std::str::from_utf8(&key[..pos]).ok()?;
    let filter = std::str::from_utf8(&key[pos + 1..]).ok()?;
    let sub = decode_sub(&mut Rd(value))?;
    Some((id.to_string(), filter.to_string(), sub))
}

/// Store key of a queued message: `client_id 0x00 seq(BE)`.
pub fn message_key(client_id: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(client_id.len() + 9);
    k.extend_from_slice(client_id.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Store key prefix of every queued message of a client.
pub fn message_prefix(client_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(client_id.len() + 1);
    k.extend_from_slice(client_id.as_bytes());
    k.push(0);
    k
}

/// Stored form of a queued delivery.
pub fn encode_outgoing(o: &Outgoing) -> Vec<u8> {
    let mut v = Vec::with_capacity(64 + o.msg.payload.len());
    v.push(o.qos as u8);
    v.push(u8::from(o.retain));
    v.extend_from_slice(&(o.sub_ids.len() as u32).to_be_bytes());
    for id in &o.sub_ids {
        v.extend_from_slice(&id.to_be_bytes());
    }
    v.extend_from_slice(&o.msg.encode());
    v
}

/// The store write of a session record (see [`State::encode`]).
pub fn record_put(client_id: &str, rec: Vec<u8>) -> Op {
    Op::Put {
        table: Table::Sessions,
        key: client_id.as_bytes().to_vec(),
        value: rec,
    }
}

/// The store writes that erase a client's session record, subscriptions and queued messages.
pub fn forget(client_id: &str) -> Vec<Op> {
    vec![
        Op::Delete {
            table: Table::Sessions,
            key: client_id.as_bytes().to_vec(),
        },
        Op::DeletePrefix {
            table: Table::Subscriptions,
            prefix: message_prefix(client_id),
        },
        Op::DeletePrefix {
            table: Table::Messages,
            prefix: message_prefix(client_id),
        },
    ]
}

/// The store write of a queued delivery (`o.seq` set).
pub fn queued_put(client_id: &str, o: &Outgoing) -> Op {
    Op::Put {
        table: Table::Messages,
        key: message_key(client_id, o.seq),
        value: encode_outgoing(o),
    }
}

/// The store write that marks a stored delivery as past PUBREC under packet id `pid`: after a
/// restart it is resumed with PUBREL, not sent again.
pub fn released_put(client_id: &str, pid: u16, o: &Outgoing) -> Op {
    let mut value = vec![RELEASED];
    value.extend_from_slice(&pid.to_be_bytes());
    value.extend_from_slice(&encode_outgoing(o));
    Op::Put {
        table: Table::Messages,
        key: message_key(client_id, o.seq),
        value,
    }
}

/// Reads a stored delivery: the packet id of its PUBREL when it was past PUBREC (see
/// [`released_put`]), and the delivery.
pub fn decode_stored(b: &[u8], seq: u64) -> Option<(Option<u16>, Outgoing)> {
    match b {
        [RELEASED, hi, lo, rest @ ..] => Some((
            Some(u16::from_be_bytes([*hi, *lo])),
            decode_outgoing(rest, seq)?,
        )),
        _ => Some((None, decode_outgoing(b, seq)?)),
    }
}

/// Reads a stored queued delivery.
pub fn decode_outgoing(b: &[u8], seq: u64) -> Option<Outgoing> {
    let mut r = Rd(b);
    let qos = QoS::from_u8(r.u8()?)?;
    let retain = r.u8()? != 0;
    let n = r.u32()?;
    let mut sub_ids = Vec::new();
    for _ in 0..n.min(64) {
        sub_ids.push(r.u32()?);
    }
    let msg = Message::decode(r.0)?;
    Some(Outgoing {
        msg: Arc::new(msg),
        qos,
        retain,
        sub_ids,
        seq,
    })
}

/// A session's in-flight messages (with packet id and state, MQTT-4.4.0-1: they are resent with
/// DUP, PUBREL for those past PUBREC), then its queue, as another node imports them.
pub fn encode_handover(st: &State) -> Vec<Vec<u8>> {
    st.inflight
        .iter()
        .map(|(pid, state, o)| {
            let kind = match state {
                Await::PubAck => 1,
                Await::PubRec => 2,
                Await::PubComp => 3,
            };
            tag(kind, *pid, o)
        })
        .chain(st.queue.iter().map(encode_queued))
        .collect()
}

/// One queued (not in-flight) message as an [`encode_handover`] entry.
pub fn encode_queued(o: &Outgoing) -> Vec<u8> {
    tag(0, 0, o)
}

fn tag(kind: u8, pid: u16, o: &Outgoing) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend_from_slice(&pid.to_be_bytes());
    v.extend_from_slice(&encode_outgoing(o));
    v
}

/// One entry of [`encode_handover`]: the packet id and state of an in-flight message (`None`
/// for a queued one) and the message (not stored: `seq` 0).
pub fn decode_handover(q: &[u8]) -> Option<(u16, Option<Await>, Outgoing)> {
    let (Some(&kind), Some(pid)) = (q.first(), q.get(1..3)) else {
        return None;
    };
    let pid = u16::from_be_bytes([pid[0], pid[1]]);
    let o = decode_outgoing(&q[3..], 0)?;
    let state = match kind {
        1 => Some(Await::PubAck),
        2 => Some(Await::PubRec),
        3 => Some(Await::PubComp),
        _ => None,
    };
    Some((pid, state, o))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_record_round_trip() {
        let mut st = State::new();
        st.version = Version::V5;
        st.expiry = 3600;
        st.username = Some("u".into());
        st.subs.insert(
            "a/+".into(),
            Sub {
                qos: QoS::AtLeastOnce,
                no_local: true,
                retain_as_published: false,
                retain_handling: RetainHandling::SendIfNew,
                id: Some(7),
            },
        );
        let back = State::decode(&st.encode_export()).unwrap();
        assert_eq!(back.expiry, 3600);
        assert_eq!(back.version, Version::V5);
        assert_eq!(back.subs, st.subs);
        // the store record leaves them to their rows
        let rec = State::decode(&st.encode()).unwrap();
        assert!(rec.subs.is_empty());
        assert_eq!((rec.expiry, rec.username.as_deref()), (3600, Some("u")));
        let sub = st.subs["a/+"];
        let Op::Put { key, value, .. } = sub_put("c1", "a/+", &sub) else {
            panic!("a put");
        };
        let (id, f, row) = decode_sub_row(&key, &value).unwrap();
        assert_eq!((id.as_str(), f.as_str(), row), ("c1", "a/+", sub));
        assert_eq!(back.username.as_deref(), Some("u"));
        assert!(back.qos2_in.is_empty());
    }

    #[test]
    fn qos2_ids_kept_and_an_older_record_still_reads() {
        let mut st = State::new();
        st.expiry = 60;
        st.subs.insert(
            "t".into(),
            Sub {
                qos: QoS::ExactlyOnce,
                no_local: false,
                retain_as_published: false,
                retain_handling: RetainHandling::SendAtSubscribe,
                id: None,
            },
        );
        st.qos2_in.extend([1, 65535]);
        let rec = st.encode_export();
        let back = State::decode(&rec).unwrap();
        assert_eq!(back.qos2_in, st.qos2_in);
        // the record as brokers wrote it before: no QoS 2 part
        let old = &rec[..rec.len() - 4 - 2 * 2];
        let back = State::decode(old).unwrap();
        assert_eq!((back.expiry, back.subs.len()), (60, 1));
        assert!(back.qos2_in.is_empty());
        assert!(
            State::decode(&rec[..rec.len() - 1]).is_none(),
            "a cut id is refused"
        );
    }

    #[test]
    fn a_released_delivery_reads_with_its_packet_id() {
        let o = Outgoing {
            msg: Arc::new(Message::plain(
                "t",
                bytes::Bytes::from_static(b"p"),
                QoS::ExactlyOnce,
                false,
                Arc::from("pub"),
            )),
            qos: QoS::ExactlyOnce,
            retain: false,
            sub_ids: vec![],
            seq: 4,
        };
        let Op::Put { value, .. } = released_put("c", 513, &o) else {
            panic!("a put");
        };
        let (pid, back) = decode_stored(&value, 4).unwrap();
        assert_eq!((pid, back.seq, &*back.msg.topic), (Some(513), 4, "t"));
        let (pid, _) = decode_stored(&encode_outgoing(&o), 4).unwrap();
        assert_eq!(pid, None);
        // what an older broker does with it: an unknown QoS, the row is skipped
        assert!(decode_outgoing(&value, 4).is_none());
    }

    #[test]
    fn handover_keeps_inflight_state_and_queue_order() {
        let out = |topic: &str, qos| Outgoing {
            msg: Arc::new(Message::plain(
                topic,
                bytes::Bytes::from_static(b"p"),
                qos,
                false,
                Arc::from("pub"),
            )),
            qos,
            retain: true,
            sub_ids: vec![3],
            seq: 9,
        };
        let mut st = State::new();
        st.inflight
            .push_back((7, Await::PubRec, out("a", QoS::ExactlyOnce)));
        st.queue.push_back(out("b", QoS::AtLeastOnce));
        let back: Vec<_> = encode_handover(&st)
            .iter()
            .map(|q| decode_handover(q).unwrap())
            .collect();
        assert_eq!(back.len(), 2);
        let (pid, state, o) = &back[0];
        assert_eq!((*pid, *state, &*o.msg.topic), (7, Some(Await::PubRec), "a"));
        assert_eq!(
            (o.qos, o.retain, o.sub_ids.as_slice(), o.seq),
            (QoS::ExactlyOnce, true, &[3][..], 0)
        );
        let (_, state, o) = &back[1];
        assert_eq!((*state, &*o.msg.topic), (None, "b"));
    }
}
