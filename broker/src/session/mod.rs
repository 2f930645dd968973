//! Session state: what survives a client's connection — subscriptions, the queue of messages
//! waiting to be sent, unacknowledged outgoing messages (redelivered on reconnect), incoming
//! QoS 2 ids awaiting PUBREL. Its compact record for the store is in [`record`], the registry of
//! every session of the node in [`registry`]. One `Mutex` per session
//! (never held across an `.await`), so publishers to different sessions never contend.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{oneshot, Notify};

use self::backlog::Backlog;
use crate::cluster::FreezeToken;
use crate::message::Message;
use crate::protocol::{QoS, RetainHandling, Version};
use crate::routing::{Readiness, SubOptions};

pub mod backlog;
mod handover;
mod queue;
pub mod record;
pub mod registry;
mod route;
mod subs;

pub use self::queue::{QueueRules, Writes, OVERFLOW_FACTOR};
pub use self::record::{decode_outgoing, encode_outgoing, message_key, message_prefix};
pub use self::registry::{Attach, Registry};
pub use self::route::SessionRef;
pub use self::subs::Subscriptions;

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
    /// Waiting to be sent (with its bytes and congestion).
    pub queue: Backlog,
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
    /// The verified certificate CN of the last connection (told to `[auth.http_acl]`).
    pub cn: Option<String>,
    /// When the last connection ended.
    pub disconnected_at: Option<Instant>,
    /// Bumped at every attach; timers (will delay, expiry) check it did not change.
    pub generation: u64,
    /// Next store sequence number for queued messages.
    pub next_seq: u64,
    /// Set while the session is exported to another node and not yet settled.
    pub frozen: Option<Freeze>,
}

/// A session handed to another node and not yet confirmed (see `cluster::handover`): it stays
/// here, durable, until the new holder confirms.
#[derive(Debug)]
pub struct Freeze {
    /// Which handover request froze it.
    pub token: FreezeToken,
    /// Messages queued into it since the export, or since the confirm (they follow it).
    pub appended: usize,
    /// Confirmed by the new holder: it lingers (still routed here) until the routes moved.
    pub moved: bool,
}

impl State {
    fn new() -> State {
        State {
            conn: None,
            subs: HashMap::new(),
            queue: Backlog::default(),
            inflight: VecDeque::new(),
            qos2_in: HashSet::new(),
            next_pid: 1,
            expiry: 0,
            version: Version::V311,
            username: None,
            peer: None,
            cn: None,
            disconnected_at: None,
            generation: 0,
            next_seq: 1,
            frozen: None,
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
    /// Rung when the queue of a connected session is no longer congested: publishers held
    /// back by this session's backlog (for at most `publisher_hold`) continue.
    pub space: Notify,
    /// Set once the registry no longer holds this session for its client id (removed, or
    /// replaced): the trie's handles to it ([`SessionRef`]) stop being used.
    retired: AtomicBool,
}

impl Session {
    /// A fresh, empty session.
    pub fn new(client_id: Arc<str>) -> Session {
        Session {
            client_id,
            state: Mutex::new(State::new()),
            notify: Notify::new(),
            space: Notify::new(),
            retired: AtomicBool::new(false),
        }
    }

    /// Marks the session as no longer the registry's (done under the registry's lock).
    pub(super) fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }

    /// Whether the registry no longer holds this session.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// A session restored from the store.
    pub fn restored(client_id: Arc<str>, st: State) -> Session {
        Session {
            client_id,
            state: Mutex::new(st),
            notify: Notify::new(),
            space: Notify::new(),
            retired: AtomicBool::new(false),
        }
    }

    /// How ready it is to take a shared group's message: connected with room, connected but
    /// congested (or closing), or without a connection.
    pub fn readiness(&self) -> Readiness {
        let st = self.lock();
        match &st.conn {
            None => Readiness::Offline,
            Some(c) if c.kick.is_none() || st.queue.is_congested() => Readiness::Congested,
            Some(_) => Readiness::Ready,
        }
    }

    /// Locks the state; a poisoned lock (a panic elsewhere) still yields the data.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Router options of a session subscription.
pub fn sub_options(s: &Sub) -> SubOptions {
    SubOptions {
        qos: s.qos as u8,
        no_local: s.no_local,
        retain_as_published: s.retain_as_published,
        subscription_id: s.id,
        extra_ids: [0; 3],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_ids_skip_inflight_and_wrap() {
        let mut st = State::new();
        st.next_pid = u16::MAX;
        assert_eq!(st.next_packet_id(), u16::MAX);
        assert_eq!(st.next_packet_id(), 1);
    }
}
