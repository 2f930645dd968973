//! Session state: what survives a client's connection — subscriptions, the queue of messages
//! waiting to be sent, unacknowledged outgoing messages (redelivered on reconnect), incoming
//! QoS 2 ids awaiting PUBREL — and its compact record for the store. One `Mutex` per session
//! (never held across an `.await`), so publishers to different sessions never contend.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{oneshot, Notify};

use crate::message::{put, Message, Rd};
use crate::protocol::{QoS, RetainHandling, Version};

/// One subscription of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sub {
    /// Maximum QoS granted.
    pub qos: QoS,
    /// v5 No Local.
    pub no_local: bool,
    /// v5 Retain As Published.
    pub retain_as_published: bool,
    /// v5 Retain Handling.
    pub retain_handling: RetainHandling,
    /// v5 Subscription Identifier.
    pub id: Option<u32>,
}

/// A message waiting for (or in) delivery to this session.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The message.
    pub msg: Arc<Message>,
    /// QoS of this delivery (min of published and granted).
    pub qos: QoS,
    /// RETAIN flag of this delivery.
    pub retain: bool,
    /// v5 subscription identifiers of the matching subscriptions.
    pub sub_ids: Vec<u32>,
    /// Store key sequence (0 = not stored).
    pub seq: u64,
}

/// Where an unacknowledged outgoing message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Await {
    /// QoS 1 sent, waiting for PUBACK.
    PubAck,
    /// QoS 2 sent, waiting for PUBREC.
    PubRec,
    /// PUBREL sent, waiting for PUBCOMP.
    PubComp,
}

/// The live connection attached to a session.
#[derive(Debug)]
pub struct Attached {
    /// Connection id (unique per node).
    pub conn_id: u64,
    /// Fires to close that connection (takeover): carries the v5 reason code.
    pub kick: Option<oneshot::Sender<u8>>,
}

/// Everything behind the session's lock.
#[derive(Debug)]
pub struct State {
    /// The connection, when online.
    pub conn: Option<Attached>,
    /// Subscriptions by filter string.
    pub subs: HashMap<String, Sub>,
    /// Waiting to be sent.
    pub queue: VecDeque<Outgoing>,
    /// Sent, not yet fully acknowledged, in send order.
    pub inflight: VecDeque<(u16, Await, Outgoing)>,
    /// Incoming QoS 2 packet ids received and not yet released.
    pub qos2_in: HashSet<u16>,
    next_pid: u16,
    /// Seconds the session outlives its connection (`u32::MAX` = forever, 0 = not at all).
    pub expiry: u32,
    /// Protocol of the last connection.
    pub version: Version,
    /// Username of the last connection.
    pub username: Option<String>,
    /// Client address of the last connection (from the PROXY header when there was one).
    pub peer: Option<SocketAddr>,
    /// When the last connection ended.
    pub disconnected_at: Option<Instant>,
    /// Bumped at every attach; timers (will delay, expiry) check it did not change.
    pub generation: u64,
    /// Next store sequence number for queued messages.
    pub next_seq: u64,
}

impl State {
    fn new() -> State {
        State {
            conn: None,
            subs: HashMap::new(),
            queue: VecDeque::new(),
            inflight: VecDeque::new(),
            qos2_in: HashSet::new(),
            next_pid: 1,
            expiry: 0,
            version: Version::V311,
            username: None,
            peer: None,
            disconnected_at: None,
            generation: 0,
            next_seq: 1,
        }
    }

    /// Whether the session keeps messages while its client is away.
    pub fn persistent(&self) -> bool {
        self.expiry > 0
    }

    /// A packet id not used by any inflight message.
    pub fn next_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_pid;
            self.next_pid = if self.next_pid == u16::MAX {
                1
            } else {
                self.next_pid + 1
            };
            if !self.inflight.iter().any(|(p, _, _)| *p == id) {
                return id;
            }
        }
    }

    /// The store record of this session (subscriptions and settings; queues are stored apart).
    pub fn encode(&self) -> Vec<u8> {
        let mut o = Vec::with_capacity(32 + self.subs.len() * 24);
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
        o.extend_from_slice(&(self.subs.len() as u32).to_be_bytes());
        for (f, s) in &self.subs {
            put(&mut o, f.as_bytes());
            o.push(s.qos as u8);
            o.push(
                u8::from(s.no_local)
                    | u8::from(s.retain_as_published) << 1
                    | (s.retain_handling as u8) << 2,
            );
            o.extend_from_slice(&s.id.unwrap_or(0).to_be_bytes());
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
            let qos = QoS::from_u8(r.u8()?)?;
            let flags = r.u8()?;
            let id = r.u32()?;
            st.subs.insert(
                f,
                Sub {
                    qos,
                    no_local: flags & 1 != 0,
                    retain_as_published: flags & 2 != 0,
                    retain_handling: match (flags >> 2) & 3 {
                        1 => RetainHandling::SendIfNew,
                        2 => RetainHandling::DoNotSend,
                        _ => RetainHandling::SendAtSubscribe,
                    },
                    id: (id != 0).then_some(id),
                },
            );
        }
        Some(st)
    }
}

/// A session: its client id, its state, and the bell its connection task waits on.
#[derive(Debug)]
pub struct Session {
    /// Client identifier.
    pub client_id: Arc<str>,
    /// State.
    pub state: Mutex<State>,
    /// Rung when something was queued (or must be resent).
    pub notify: Notify,
    /// Rung when the queue of a connected session drained below half its limit: publishers
    /// held back by this session's backlog continue (server-side flow control).
    pub space: Notify,
}

impl Session {
    /// A fresh, empty session.
    pub fn new(client_id: Arc<str>) -> Session {
        Session {
            client_id,
            state: Mutex::new(State::new()),
            notify: Notify::new(),
            space: Notify::new(),
        }
    }

    /// A session restored from the store.
    pub fn restored(client_id: Arc<str>, st: State) -> Session {
        Session {
            client_id,
            state: Mutex::new(st),
            notify: Notify::new(),
            space: Notify::new(),
        }
    }

    /// Locks the state; a poisoned lock (a panic elsewhere) still yields the data.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
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
        let back = State::decode(&st.encode()).unwrap();
        assert_eq!(back.expiry, 3600);
        assert_eq!(back.version, Version::V5);
        assert_eq!(back.subs, st.subs);
        assert_eq!(back.username.as_deref(), Some("u"));
    }

    #[test]
    fn packet_ids_skip_inflight_and_wrap() {
        let mut st = State::new();
        st.next_pid = u16::MAX;
        assert_eq!(st.next_packet_id(), u16::MAX);
        assert_eq!(st.next_packet_id(), 1);
    }
}
