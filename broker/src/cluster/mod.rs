//! Clustering: membership and failure detection from chitchat (gossip over UDP on
//! `[cluster] bind`), and a node-to-node channel over TCP on the same address carrying
//! length-delimited frames (`frame`): route snapshots and deltas, forwarded publishes (with
//! acks for QoS 1/2), retained messages, and session handover.
//!
//! How a session is found (see docs/cluster.md): client ids are never gossiped. When a client
//! connects, its node asks every live peer to hand over any session it holds for that id
//! (`TakeSession`); the holder closes the old connection (v5: 0x8E), exports subscriptions and
//! queued messages and freezes its copy, deleted only once the asker confirms it holds the
//! session (`SessionDone`; see `handover`). Cost: one round trip to each peer per CONNECT, nothing
//! per idle client, so a million sessions cost nothing cluster-wide until they reconnect.
//!
//! The boundary: the core knows the cluster only as [`Peers`] (what it asks of other nodes) and
//! gives the cluster a [`LocalNode`] (what other nodes ask of this one); both speak in core
//! types ([`Message`], [`Matches`], [`SessionExport`], [`Ack`]), never in `frame`s. The real
//! implementation is [`Cluster`]: `node` (state, membership), `peer` (one peer's outgoing
//! channel and heartbeat), `outgoing` (what is sent to peers), `channel` (the inbound read
//! loop and what frames do), `peers` (its [`Peers`] side), `tls` (mutual TLS between nodes),
//! `chunks` (large frames in pieces), `transport` (sockets, or the in-process network of
//! `memory` for tests). This module and its children import only
//! [`crate::routing`], [`crate::message`] and [`crate::config`].

mod acks;
mod channel;
mod chunks;
mod drain;
/// Public only for the fuzz targets (`fuzz/`) and their regression tests; not an API.
#[doc(hidden)]
pub mod frame;
mod handover;
pub mod memory;
mod node;
mod outgoing;
mod peer;
mod peers;
mod rebalance;
mod remembered;
mod replicas;
mod tls;
mod transport;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{oneshot, Notify};

pub use self::node::Cluster;
pub use self::peer::{HEARTBEAT, HEARTBEAT_DEADLINE, WRITE_DEADLINE};
pub use self::tls::{AuthCounters, AuthFailure, HELLO_DEADLINE, MEMBERSHIP_WAIT};
pub use self::transport::{Timing, Transport, Wiring};
use crate::message::Message;
use crate::routing::retained_versions::Version;
use crate::routing::Matches;

/// Gossip round interval.
pub const GOSSIP_INTERVAL: Duration = Duration::from_millis(200);
/// How long a CONNECT waits for peers to hand over a session.
pub const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a QoS 1/2 publish waits for remote nodes to take a forwarded copy.
pub const FORWARD_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Forward bytes queued to one peer past which its publishers wait (4× that: forwards fail).
const PEER_QUEUE_BYTES: usize = 64 << 20;

/// The cluster's counters, resolved once by the caller (the cluster does not know the
/// metrics registry).
#[derive(Clone, Default)]
pub struct ClusterCounters {
    /// Copies of messages sent to other nodes.
    pub forwarded: Counter,
    /// Their message bytes.
    pub forwarded_bytes: Counter,
    /// Frames acknowledging forwarded copies (and replication ops) sent to peers.
    pub ack_frames: Counter,
    /// Forwards failed: the peer is a member but not reachable.
    pub failed_unreachable: Counter,
    /// Forwards failed: far past the peer's queue bound.
    pub failed_queue_full: Counter,
    /// QoS 1/2 forwards whose peer died, restarted, left or went unreachable before its ack.
    pub failed_gone: Counter,
    /// Forwards failed: the peer is down (not left) and its routes are held for its return.
    pub failed_down: Counter,
    /// Peers refused on the node channel, by reason.
    pub auth_failures: AuthCounters,
    /// Chunked transfers (large snapshots, exports) received whole.
    pub transfers_received: Counter,
    /// Chunked transfers dropped unfinished (channel closed) or refused (cap, order).
    pub transfers_dropped: Counter,
}

/// A peer as `/api/cluster` shows it.
#[derive(Debug, Clone)]
pub struct PeerStatus {
    /// Live in gossip (down otherwise).
    pub up: bool,
    /// Live in gossip, but its channel is closed or it answered no heartbeat for
    /// [`HEARTBEAT_DEADLINE`]: forwards to it fail at once.
    pub unreachable: bool,
    /// Cluster address.
    pub addr: SocketAddr,
    /// Its admin API, as it announces it in gossip (the status page links to it).
    pub admin: Option<SocketAddr>,
    /// Down, not left: its routes are kept (publishes toward it are refused) until it returns
    /// or `dead_after` passes.
    pub held: bool,
    /// It announced in gossip that it drains: no node moving sessions off sends them there.
    pub draining: bool,
}

/// A future a trait object can return (the cluster's work crosses the boundary boxed).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A session as it travels to another node: its store record and its in-flight and queued
/// messages (encoded by the session layer); opaque bytes to the cluster.
pub type SessionExport = (Vec<u8>, Vec<Vec<u8>>);

/// Who froze a session for whom: the asking node and its request id.
pub type FreezeToken = (Arc<str>, u64);

/// The holders a CONNECT took a session from, to tell once the session is durable here
/// ([`Peers::settle_handover`]).
#[derive(Debug)]
pub struct Handover {
    client_id: String,
    from: Vec<(Arc<str>, u64)>,
}

/// What this node asks of the others. One implementation talks to real peers ([`Cluster`]);
/// the core holds it as `Arc<dyn Peers>` and never sees a frame.
pub trait Peers: Send + Sync {
    /// A local subscription to `filter` was added: the first one announces the route.
    fn local_add(&self, filter: &str);
    /// A local subscription to `filter` was removed: the last one withdraws the route.
    fn local_del(&self, filter: &str);
    /// Remote routes matching a topic (the key is the node's name).
    fn remote_matches(&self, topic: &str) -> Matches<Arc<str>>;
    /// Sends a retained message (set or clear) and its version to every peer.
    fn broadcast_retained(&self, m: &Message, v: &Version);
    /// Forwards an encoded message to one node: to its non-shared subscribers when `direct`, and
    /// to one member of each listed `(group, filter)`.
    fn forward(
        &self,
        n: &Arc<str>,
        direct: bool,
        shared: Vec<(String, String)>,
        msg: Bytes,
        want_ack: bool,
    ) -> Forwarded;
    /// Asks every live peer at once (one deadline) to hand over `client_id`'s session; the
    /// export if one had it, and the [`Handover`] to settle once this node holds it durably.
    fn take_session<'a>(
        &'a self,
        client_id: &'a str,
        clean_start: bool,
    ) -> BoxFuture<'a, Option<(SessionExport, Handover)>>;
    /// Tells the old holders whether this node took the session (they delete it) or not (they
    /// keep it). Until then they keep it frozen: a handover never destroys a session.
    fn settle_handover(&self, h: Handover, taken: bool);
    /// Peers, their state and how many routes each announced (`/api/cluster`).
    fn peers(&self) -> Vec<(Arc<str>, PeerStatus, usize)>;
    /// Number of remote (filter, node) routes.
    fn remote_routes(&self) -> usize;
    /// Number of distinct local filters (this node's routes).
    fn local_routes(&self) -> usize;
    /// Sends session-replication ops (opaque bytes) to node `n`: its ack once they are durable
    /// there when `want_ack`; `Err` when they could not be queued (no channel, unreachable,
    /// queue far over its bound).
    fn replicate(&self, n: &Arc<str>, ops: Vec<u8>, want_ack: bool)
        -> Result<Option<Ack>, NotSent>;
    /// This node promoted every standby copy of `of`'s sessions (`of` is down): the peers are
    /// told, and `of`'s held routes go once every live node has said so.
    fn promoted(&self, of: &str);
    /// Whether `n` is a live member whose channel answers (it can speak for its sessions).
    fn reachable(&self, n: &str) -> bool;
    /// Pushes this node's sessions of `client_ids` to `n` (freeze → confirm: merged there,
    /// deleted here once confirmed); returns how many were sent.
    fn push_sessions(&self, n: &Arc<str>, client_ids: Vec<String>) -> usize;
    /// Which of `client_ids` a live peer holds a persistent session of (every peer asked at
    /// once, the answers that came within `timeout`).
    fn held_by_peers(
        &self,
        client_ids: Vec<String>,
        timeout: std::time::Duration,
    ) -> BoxFuture<'_, std::collections::HashSet<String>>;
    /// A rebalance (`POST /api/sessions/move`): each of `client_ids` has its session pushed to
    /// live node `to` (freeze → confirm) and its connection told DISCONNECT `0x9C`; a client
    /// without a persistent session is only told to go. `None` when `to` is not a live peer
    /// that takes clients; else (client id, moved) for each.
    fn move_sessions(&self, _to: &str, _client_ids: Vec<String>) -> Option<Vec<(String, bool)>> {
        None
    }
}

/// What the other nodes ask of this one: the core's side of the boundary, given to the cluster
/// at start (held weakly, so the cluster never keeps the core alive).
pub trait LocalNode: Send + Sync {
    /// Delivers a message another node forwarded: to local non-shared subscribers when
    /// `direct`, and to one local member of each listed shared group. Never forwards again.
    /// The copies are made (and their store writes queued) before it returns, so frames apply
    /// in order; the future resolves once they are durable: false when the store write failed
    /// (no ack). `None`: taken already (nothing to write, no congested subscriber), which
    /// most copies are: no future per message.
    fn deliver_forwarded(
        &self,
        msg: Arc<Message>,
        direct: bool,
        shared: &[(String, String)],
    ) -> Option<BoxFuture<'static, bool>>;
    /// A retained message (or clear) from another node, applied when its version is newer than
    /// what the topic has here; `None` from a node that predates versions.
    fn set_retained(&self, msg: Arc<Message>, version: Option<Version>);
    /// Hands this node's session of `client_id` over: closes its connection and (unless the new
    /// connection starts clean) exports it and freezes it under `token` until settled.
    fn export_session(
        &self,
        client_id: &str,
        clean_start: bool,
        token: &FreezeToken,
    ) -> Option<SessionExport>;
    /// Settles a frozen session: `keep` unfreezes it; otherwise it lingers, moved, and what was
    /// queued into it since the export is returned (for the new holder). No-op for another token.
    fn settle_export(&self, client_id: &str, token: &FreezeToken, keep: bool) -> Vec<Vec<u8>>;
    /// Ends a moved session's linger: deletes it; what queued into it since the confirm.
    fn finish_move(&self, client_id: &str, token: &FreezeToken) -> Vec<Vec<u8>>;
    /// A session export this node did not ask for or no longer waits for (a late answer, a
    /// leaving node's push): merged into the session held here, or taken in when there is
    /// none; resolves true once durable, false when refused (the sender keeps it).
    fn adopt_session(&self, client_id: &str, export: SessionExport) -> BoxFuture<'_, bool>;
    /// Client ids of every persistent session here (a leaving node hands them over).
    fn session_ids(&self) -> Vec<Arc<str>>;
    /// Which of `client_ids` this node holds a persistent session of (not one moved away);
    /// `offline_only`: of those, the ones whose client is not connected here.
    fn holds(&self, client_ids: &[String], offline_only: bool) -> Vec<String>;
    /// Client ids of the persistent sessions whose client is connected here.
    fn connected_ids(&self) -> Vec<String>;
    /// Keeps (or with `None` forgets) one peer's routes in `data_dir`; a no-op without it.
    fn save_peer_routes(&self, node: &str, rec: Option<Vec<u8>>);
    /// The peers' routes kept by [`LocalNode::save_peer_routes`]: (node, record).
    fn load_peer_routes(&self) -> Vec<(String, Vec<u8>)>;
    /// Like `export_session` for a leaving node: its connection is told "server shutting down".
    fn export_for_leave(&self, client_id: &str, token: &FreezeToken) -> Option<SessionExport>;
    /// Like `export_session` for a draining node: its connection is told "use another server".
    fn export_for_drain(&self, client_id: &str, token: &FreezeToken) -> Option<SessionExport>;
    /// What a draining node still has to move: (client id, persistent) of every session not
    /// frozen whose client is connected or that is persistent.
    fn drain_candidates(&self) -> Vec<(Arc<str>, bool)>;
    /// Closes the connection of `client_id` with v5 reason `code`; false when it has none.
    fn kick(&self, client_id: &str, code: u8) -> bool;
    /// Client connections attached here.
    fn client_connections(&self) -> usize;
    /// Sessions exported and not yet confirmed.
    fn frozen_pending(&self) -> usize;
    /// Ends every moved session's linger now: (client id, its token, what queued since).
    fn finish_all_moves(&self) -> Vec<(Arc<str>, FreezeToken, Vec<Vec<u8>>)>;
    /// Messages queued into a session at its old holder after the export.
    fn append_session(&self, client_id: &str, queued: &[Vec<u8>]);
    /// Every retained message and tombstone (an empty payload) with its version, for a peer's
    /// snapshot.
    fn retained(&self) -> Vec<(Arc<Message>, Version)>;
    /// Session-replication ops from holder `from` for the standby copies kept here: queued to
    /// the store before it returns (frames apply in order); resolves true once durable.
    fn apply_replica(&self, from: &Arc<str>, ops: &[u8]) -> BoxFuture<'static, bool>;
    /// The live peers now (each membership round): replicas are placed again when it changed.
    fn members(&self, up: &[Arc<str>]);
    /// Peer `n` is down (failure detector) or left: the standby copies of its sessions kept
    /// here become sessions of this node ([`Peers::promoted`] once done).
    fn holder_down(&self, n: &Arc<str>);
    /// This node restarted and a peer holds `client_id`'s session now: true when the restored
    /// copy here is dropped instead of pushed there (its replica took it over with everything
    /// acknowledged in it).
    fn defer_restored(&self, client_id: &str) -> bool;
    /// Peer `n` is up again; `restarted`: as a new incarnation (it restores its own sessions
    /// and pushes them where their clients went), otherwise back from a pause or a cut.
    fn holder_up(&self, n: &Arc<str>, restarted: bool);
    /// A new outgoing channel to `n` opened: what was replicated to it over the old one may be
    /// incomplete, so the sessions it is the replica of are copied again.
    fn replica_link(&self, n: &Arc<str>);
}

/// What a forward set in motion: the peer's ack to await (QoS 1/2) and, when its queue is over
/// its limit, the gate the publisher waits on.
#[derive(Default)]
pub struct Forwarded {
    /// Resolves when the node took the copy (QoS 1/2).
    pub ack: Option<Ack>,
    /// Set when the peer's queue is congested.
    pub gate: Option<Arc<Gate>>,
}

/// A remote node's acknowledgement of a forwarded copy: `true` when it took it (or left the
/// cluster, taking its subscribers with it), `false` when it never will.
pub struct Ack(AckInner);

/// A peer's answer is awaited on its channel directly (one per forwarded QoS 1/2 copy: no
/// boxed future per message); anything else is boxed.
enum AckInner {
    Reply(oneshot::Receiver<frame::Frame>),
    Boxed(BoxFuture<'static, bool>),
}

impl Ack {
    /// An ack that resolves with `f`.
    pub fn new(f: impl Future<Output = bool> + Send + 'static) -> Ack {
        Ack(AckInner::Boxed(Box::pin(f)))
    }

    /// An ack that is the answer on `rx` (true when one came, false when it was dropped).
    fn reply(rx: oneshot::Receiver<frame::Frame>) -> Ack {
        Ack(AckInner::Reply(rx))
    }
}

impl Future for Ack {
    type Output = bool;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        match &mut self.0 {
            AckInner::Reply(rx) => Pin::new(rx).poll(cx).map(|r| r.is_ok()),
            AckInner::Boxed(f) => f.as_mut().poll(cx),
        }
    }
}

/// Forward bytes queued to one peer, and the bell publishers wait on when it is over
/// `PEER_QUEUE_BYTES` (cluster-wide server-side flow control: a slow peer slows its publishers,
/// it does not lose their messages).
#[derive(Debug, Default)]
pub struct Gate {
    /// Forward bytes queued and not yet written.
    queued: AtomicUsize,
    /// Rung when the queue fell under half of `PEER_QUEUE_BYTES`.
    space: Notify,
}

impl Gate {
    /// Whether publishers should wait.
    pub fn congested(&self) -> bool {
        self.queued.load(Ordering::Relaxed) >= PEER_QUEUE_BYTES
    }

    /// Rung when the queue fell under half of `PEER_QUEUE_BYTES`.
    pub fn space(&self) -> &Notify {
        &self.space
    }

    /// `bytes` of forwards were written.
    fn release(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let left = self.queued.fetch_sub(bytes, Ordering::Relaxed) - bytes;
        if left < PEER_QUEUE_BYTES / 2 {
            self.space.notify_waiters();
        }
    }
}

/// A frame that could not be queued to a peer (no channel, unreachable, far over its bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not sent: the peer has no reachable channel or its queue is full")]
pub struct NotSent;

/// Errors starting the cluster layer.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The TCP side of `[cluster] bind` could not be bound.
    #[error("cannot bind the cluster channel on {addr}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// chitchat (gossip) failed to start.
    #[error("cannot start gossip on {0}: {1}")]
    Gossip(SocketAddr, String),
}
