//! Clustering: membership and failure detection from chitchat (gossip over UDP on
//! `[cluster] bind`), and a node-to-node channel over TCP on the same address carrying
//! length-delimited frames ([`frame`]): route snapshots and deltas, forwarded publishes (with
//! acks for QoS 1/2), retained messages, and session handover.
//!
//! How a session is found (see docs/cluster.md): client ids are never gossiped. When a client
//! connects, its node asks every live peer to hand over any session it holds for that id
//! (`TakeSession`); the holder closes the old connection (v5: 0x8E), exports subscriptions and
//! queued messages, and forgets them. Cost: one round trip to each peer per CONNECT, nothing
//! per idle client, so a million sessions cost nothing cluster-wide until they reconnect.

pub mod frame;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chitchat::transport::UdpTransport;
use chitchat::{spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

use self::frame::{decode, encode, Frame};
use crate::broker::Broker;
use crate::config::ClusterConfig;
use crate::router::{Matches, Router, SubOptions};

/// Gossip round interval.
pub const GOSSIP_INTERVAL: Duration = Duration::from_millis(200);
/// How long a CONNECT waits for peers to hand over a session.
pub const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a QoS 1/2 publish waits for remote nodes to take a forwarded copy.
pub const FORWARD_ACK_TIMEOUT: Duration = Duration::from_secs(5);
const PEER_QUEUE: usize = 65_536;

/// A peer as `/api/cluster` shows it.
#[derive(Debug, Clone)]
pub struct PeerStatus {
    /// Up (live in gossip and reachable) or down.
    pub up: bool,
    /// Cluster address.
    pub addr: SocketAddr,
}

/// The outgoing side of a peer channel. Control frames (routes, acks, sessions) are never
/// dropped; forwarded publishes are bounded by [`PEER_QUEUE`] per peer (over it they are dropped
/// and counted — a QoS 1/2 publisher then gets no ack and publishes again).
struct Peer {
    tx: mpsc::UnboundedSender<Frame>,
    queued_forwards: Arc<Gate>,
    addr: SocketAddr,
    /// The peer's incarnation (chitchat generation): a restarted node gets a fresh channel.
    generation: u64,
}

/// This node's view of the cluster.
pub struct Cluster {
    /// This node's name.
    pub node: Arc<str>,
    epoch: u64,
    bind: SocketAddr,
    chitchat: Mutex<Option<ChitchatHandle>>,
    peers: Mutex<HashMap<Arc<str>, Peer>>,
    status: Mutex<HashMap<Arc<str>, PeerStatus>>,
    /// Remote routes: filter → nodes that have local subscribers for it.
    pub routes: Router<Arc<str>>,
    node_filters: Mutex<HashMap<Arc<str>, HashSet<String>>>,
    local: Mutex<HashMap<String, u32>>,
    /// Answers awaited from peers (forward acks, session handovers), by request id.
    waiting: Mutex<HashMap<u64, Waiter>>,
    next_id: AtomicU64,
    broker: OnceLock<Weak<Broker>>,
    forwarded: Counter,
    forwarded_bytes: Counter,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Forwards queued to one peer, and the bell publishers wait on when it is over [`PEER_QUEUE`]
/// (cluster-wide server-side flow control: a slow peer slows its publishers, it does not lose
/// their messages).
#[derive(Debug, Default)]
pub struct Gate {
    /// Forward frames queued and not yet written.
    pub queued: std::sync::atomic::AtomicUsize,
    /// Rung when the queue fell under half of [`PEER_QUEUE`].
    pub space: tokio::sync::Notify,
}

impl Gate {
    /// Whether publishers should wait.
    pub fn congested(&self) -> bool {
        self.queued.load(Ordering::Relaxed) >= PEER_QUEUE
    }
}

/// An answer awaited from one peer.
struct Waiter {
    peer: Arc<str>,
    tx: oneshot::Sender<Frame>,
}

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

impl Cluster {
    /// Creates the cluster state (nothing runs until [`Cluster::start`]).
    pub fn new(
        node: &str,
        cfg: &ClusterConfig,
        forwarded: Counter,
        forwarded_bytes: Counter,
    ) -> Arc<Cluster> {
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Arc::new(Cluster {
            node: Arc::from(node),
            epoch,
            bind: cfg.bind,
            chitchat: Mutex::new(None),
            peers: Mutex::new(HashMap::new()),
            status: Mutex::new(HashMap::new()),
            routes: Router::new(),
            node_filters: Mutex::new(HashMap::new()),
            local: Mutex::new(HashMap::new()),
            waiting: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            broker: OnceLock::new(),
            forwarded,
            forwarded_bytes,
        })
    }

    fn broker(&self) -> Option<Arc<Broker>> {
        self.broker.get().and_then(Weak::upgrade)
    }

    /// Binds the channel, starts gossip and the membership loop.
    pub async fn start(
        self: &Arc<Self>,
        broker: &Arc<Broker>,
        cfg: &ClusterConfig,
        stop: watch::Receiver<bool>,
    ) -> Result<(), ClusterError> {
        let _ = self.broker.set(Arc::downgrade(broker));
        let listener = TcpListener::bind(cfg.bind)
            .await
            .map_err(|e| ClusterError::Bind {
                addr: cfg.bind,
                source: e,
            })?;
        let config = ChitchatConfig {
            chitchat_id: ChitchatId::new(self.node.to_string(), self.epoch, cfg.bind),
            cluster_id: "mqedge".into(),
            gossip_interval: GOSSIP_INTERVAL,
            listen_addr: cfg.bind,
            seed_nodes: cfg.seeds.iter().map(|s| s.to_string()).collect(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: 8.0,
                sampling_window_size: 1000,
                max_interval: Duration::from_secs(2),
                initial_interval: Duration::from_millis(500),
                dead_node_grace_period: Duration::from_secs(3600),
            },
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: Some(Box::new(|s: &chitchat::NodeState| {
                s.get("leaving").is_none()
            })),
            protocol_version: chitchat::ProtocolVersion::V0,
        };
        let handle = spawn_chitchat(
            config,
            vec![("cluster_addr".into(), cfg.bind.to_string())],
            &UdpTransport,
        )
        .await
        .map_err(|e| ClusterError::Gossip(cfg.bind, e.to_string()))?;
        let live = handle.chitchat().lock().await.live_nodes_watcher();
        *lock(&self.chitchat) = Some(handle);
        tracing::info!(node = %self.node, bind = %cfg.bind, seeds = ?cfg.seeds, "cluster: gossip and node channel up");
        tokio::spawn(self.clone().accept_loop(listener, stop.clone()));
        tokio::spawn(self.clone().membership_loop(live, stop));
        Ok(())
    }

    /// Announces a graceful leave (SIGTERM): peers mark this node down at once.
    pub async fn leave(&self) {
        let h = lock(&self.chitchat).take();
        if let Some(h) = &h {
            h.chitchat()
                .lock()
                .await
                .self_node_state()
                .set("leaving", "true");
        }
        let peers: Vec<mpsc::UnboundedSender<Frame>> =
            lock(&self.peers).values().map(|p| p.tx.clone()).collect();
        for p in peers {
            let _ = p.send(Frame::Leave);
        }
        // let one gossip round and the Leave frames go out
        tokio::time::sleep(GOSSIP_INTERVAL * 2).await;
        if let Some(h) = h {
            let _ = h.shutdown().await;
        }
    }

    async fn membership_loop(
        self: Arc<Self>,
        mut live: watch::Receiver<std::collections::BTreeMap<ChitchatId, chitchat::NodeState>>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            let now: HashMap<Arc<str>, (SocketAddr, u64)> = live
                .borrow_and_update()
                .keys()
                .filter(|id| *id.node_id != *self.node)
                .map(|id| {
                    (
                        id.node_id.clone(),
                        (id.gossip_advertise_addr, id.generation_id),
                    )
                })
                .collect();
            self.apply_membership(now);
            tokio::select! {
                _ = stop.changed() => break,
                r = live.changed() => if r.is_err() { break },
                // re-dial peers whose channel broke while gossip still calls them live
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    fn apply_membership(self: &Arc<Self>, live: HashMap<Arc<str>, (SocketAddr, u64)>) {
        // gone: drop routes and channel
        let gone: Vec<Arc<str>> = lock(&self.status)
            .iter()
            .filter(|(n, s)| s.up && !live.contains_key(*n))
            .map(|(n, _)| n.clone())
            .collect();
        for n in gone {
            self.node_down(&n, "failure detector");
        }
        for (n, (addr, generation)) in live {
            let (need, restarted) = {
                let peers = lock(&self.peers);
                match peers.get(&n) {
                    Some(p) => (
                        p.tx.is_closed() || p.addr != addr || p.generation != generation,
                        p.generation != generation,
                    ),
                    None => (true, false),
                }
            };
            if restarted {
                // a new incarnation (restarted before the detector noticed): what the old one
                // owed us will never come
                tracing::info!(node = %self.node, peer = %n, "cluster: peer restarted; reconnecting");
                self.release_waiters(&n);
            }
            if need {
                self.connect_peer(n.clone(), addr, generation);
            }
            let mut st = lock(&self.status);
            let e = st
                .entry(n.clone())
                .or_insert(PeerStatus { up: false, addr });
            if !e.up {
                tracing::info!(node = %self.node, peer = %n, addr = %addr, "cluster: peer up");
            }
            e.up = true;
            e.addr = addr;
        }
    }

    fn node_down(&self, n: &Arc<str>, why: &str) {
        let was_up = {
            let mut st = lock(&self.status);
            st.get_mut(n)
                .map(|s| std::mem::replace(&mut s.up, false))
                .unwrap_or(false)
        };
        lock(&self.peers).remove(n);
        self.drop_routes(n);
        self.release_waiters(n);
        if was_up {
            tracing::warn!(node = %self.node, peer = %n, "cluster: peer down ({why}); its routes dropped");
        }
    }

    /// Answers everything still awaited from a peer that is gone: a forward to it counts as
    /// done (its subscribers went with it), a session request as "not there".
    fn release_waiters(&self, n: &str) {
        let gone: Vec<(u64, Waiter)> = {
            let mut w = lock(&self.waiting);
            let ids: Vec<u64> = w
                .iter()
                .filter(|(_, x)| &*x.peer == n)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| w.remove(&id).map(|x| (id, x)))
                .collect()
        };
        for (id, w) in gone {
            let _ = w.tx.send(Frame::Session { id, export: None });
        }
    }

    fn drop_routes(&self, n: &Arc<str>) {
        let filters = lock(&self.node_filters).remove(n).unwrap_or_default();
        for f in filters {
            self.routes.unsubscribe(n, &f);
        }
    }

    /// Opens (or replaces) the outgoing channel to a peer: Hello, then a snapshot of our routes
    /// and retained messages, then whatever is queued later (deltas, forwards, replies).
    fn connect_peer(self: &Arc<Self>, n: Arc<str>, addr: SocketAddr, generation: u64) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued_forwards = Arc::new(Gate::default());
        // snapshot and registration under the local-routes lock: no delta can slip between
        {
            let local = lock(&self.local);
            let _ = tx.send(Frame::Hello {
                node: self.node.to_string(),
                epoch: self.epoch,
            });
            let _ = tx.send(Frame::RoutesReset {
                filters: local.keys().cloned().collect(),
            });
            lock(&self.peers).insert(
                n.clone(),
                Peer {
                    tx: tx.clone(),
                    queued_forwards: queued_forwards.clone(),
                    addr,
                    generation,
                },
            );
        }
        if let Some(b) = self.broker() {
            let msgs: Vec<Vec<u8>> = b
                .retained
                .all()
                .into_iter()
                .filter(|(t, _)| !t.starts_with("$SYS"))
                .map(|(_, m)| m.encode())
                .collect();
            if !msgs.is_empty() {
                let _ = tx.send(Frame::Retained { msgs });
            }
        }
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.clone().write_loop(addr, rx, queued_forwards).await {
                tracing::debug!(node = %me.node, peer = %n, error = %e, "cluster: channel to peer closed");
            }
        });
    }

    async fn write_loop(
        self: Arc<Self>,
        addr: SocketAddr,
        mut rx: mpsc::UnboundedReceiver<Frame>,
        queued_forwards: Arc<Gate>,
    ) -> std::io::Result<()> {
        let mut s = None;
        for i in 0..20 {
            match tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await {
                Ok(Ok(c)) => {
                    s = Some(c);
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(100 * (i + 1).min(10))).await,
            }
        }
        let Some(mut s) = s else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "peer unreachable",
            ));
        };
        let _ = s.set_nodelay(true);
        let mut buf = Vec::with_capacity(64 * 1024);
        let count = |f: &Frame| usize::from(matches!(f, Frame::Forward { .. }));
        while let Some(f) = rx.recv().await {
            buf.clear();
            let mut forwards = count(&f);
            encode(&f, &mut buf);
            // batch whatever else is queued (up to ~1 MiB per write)
            while buf.len() < (1 << 20) {
                match rx.try_recv() {
                    Ok(f) => {
                        forwards += count(&f);
                        encode(&f, &mut buf);
                    }
                    Err(_) => break,
                }
            }
            s.write_all(&buf).await?;
            let left = queued_forwards
                .queued
                .fetch_sub(forwards, Ordering::Relaxed)
                - forwards;
            if forwards > 0 && left < PEER_QUEUE / 2 {
                queued_forwards.space.notify_waiters();
            }
        }
        Ok(())
    }

    async fn accept_loop(self: Arc<Self>, l: TcpListener, mut stop: watch::Receiver<bool>) {
        loop {
            let (s, peer) = tokio::select! {
                _ = stop.changed() => break,
                a = l.accept() => match a { Ok(a) => a, Err(e) => { mqedge_shared::net::accept_failed("cluster", &e).await; continue } },
            };
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(e) = me.read_loop(s).await {
                    tracing::debug!(peer = %peer, error = %e, "cluster: inbound channel closed");
                }
            });
        }
    }

    async fn read_loop(self: Arc<Self>, mut s: TcpStream) -> Result<(), String> {
        let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
        let mut from: Option<Arc<str>> = None;
        loop {
            while let Some((f, used)) = decode(&buf).map_err(|e| e.to_string())? {
                buf.drain(..used);
                match (&from, f) {
                    (None, Frame::Hello { node, epoch }) => {
                        tracing::debug!(node = %self.node, peer = %node, epoch, "cluster: inbound channel from peer");
                        // a peer that (re)connects may have dropped our routes (it thought we were
                        // down, or it restarted): send it our snapshot again
                        self.resend_snapshot(&node);
                        from = Some(Arc::from(node.as_str()));
                    }
                    (None, _) => return Err("first frame is not Hello".into()),
                    (Some(n), f) => self.handle(n.clone(), f).await,
                }
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn send_to(&self, n: &str, f: Frame) -> bool {
        self.send_gated(n, f).0
    }

    /// Sends a frame; for forwards also returns the peer's gate when it is congested.
    fn send_gated(&self, n: &str, f: Frame) -> (bool, Option<Arc<Gate>>) {
        let peers = lock(&self.peers);
        let Some(p) = peers.get(n) else {
            return (false, None);
        };
        if matches!(f, Frame::Forward { .. }) {
            let before = p.queued_forwards.queued.fetch_add(1, Ordering::Relaxed);
            // far past the soft limit (publishers not waiting, e.g. wills): drop
            if before >= PEER_QUEUE * 4 || p.tx.send(f).is_err() {
                p.queued_forwards.queued.fetch_sub(1, Ordering::Relaxed);
                return (false, None);
            }
            let gate = (before + 1 >= PEER_QUEUE).then(|| p.queued_forwards.clone());
            return (true, gate);
        }
        (p.tx.send(f).is_ok(), None)
    }

    async fn handle(self: &Arc<Self>, n: Arc<str>, f: Frame) {
        match f {
            Frame::Hello { .. } => {}
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
                if let (Some(b), Some(m)) = (self.broker(), crate::message::Message::decode(&msg)) {
                    b.deliver_forwarded(Arc::new(m), direct, &shared).await;
                }
                if id != 0 {
                    self.send_to(&n, Frame::ForwardAck { id });
                }
            }
            f @ (Frame::ForwardAck { .. } | Frame::Session { .. }) => {
                let id = match &f {
                    Frame::ForwardAck { id } | Frame::Session { id, .. } => *id,
                    _ => 0,
                };
                if let Some(w) = lock(&self.waiting).remove(&id) {
                    let _ = w.tx.send(f);
                }
            }
            Frame::Retained { msgs } => {
                if let Some(b) = self.broker() {
                    for m in msgs {
                        if let Some(m) = crate::message::Message::decode(&m) {
                            b.set_retained_from_peer(Arc::new(m)).await;
                        }
                    }
                }
            }
            Frame::TakeSession {
                id,
                client_id,
                clean_start,
            } => {
                let export = match self.broker() {
                    Some(b) => b.export_session(&client_id, clean_start),
                    None => None,
                };
                if export.is_some() {
                    tracing::info!(node = %self.node, client_id = %client_id, to = %n, "cluster: session handed over");
                }
                self.send_to(&n, Frame::Session { id, export });
            }
            Frame::Leave => self.node_down(&n, "left gracefully"),
        }
    }

    /// Sends our complete route list to one peer (in order with later deltas).
    fn resend_snapshot(&self, n: &str) {
        let local = lock(&self.local);
        if let Some(p) = lock(&self.peers).get(n) {
            let _ = p.tx.send(Frame::RoutesReset {
                filters: local.keys().cloned().collect(),
            });
        }
    }

    /// A local subscription to `filter` was added: the first one announces the route.
    pub fn local_add(&self, filter: &str) {
        let mut local = lock(&self.local);
        let c = local.entry(filter.to_string()).or_insert(0);
        *c += 1;
        if *c == 1 {
            self.broadcast_locked(Frame::RouteAdd {
                filter: filter.to_string(),
            });
        }
    }

    /// A local subscription to `filter` was removed: the last one withdraws the route.
    pub fn local_del(&self, filter: &str) {
        let mut local = lock(&self.local);
        if let Some(c) = local.get_mut(filter) {
            *c -= 1;
            if *c == 0 {
                local.remove(filter);
                self.broadcast_locked(Frame::RouteDel {
                    filter: filter.to_string(),
                });
            }
        }
    }

    /// Sends to every peer (callers hold `local` when order with snapshots matters).
    fn broadcast_locked(&self, f: Frame) {
        for p in lock(&self.peers).values() {
            let _ = p.tx.send(f.clone());
        }
    }

    /// Sends a retained message (set or clear) to every peer.
    pub fn broadcast_retained(&self, m: &crate::message::Message) {
        let f = Frame::Retained {
            msgs: vec![m.encode()],
        };
        for p in lock(&self.peers).values() {
            let _ = p.tx.send(f.clone());
        }
    }

    /// Remote routes matching a topic.
    pub fn remote_matches(&self, topic: &str) -> Matches<Arc<str>> {
        let mut m = Matches::default();
        self.routes.matches(topic, &mut m);
        m
    }

    /// Forwards a message to one node; returns a receiver for its ack when `want_ack`.
    pub fn forward(
        &self,
        n: &Arc<str>,
        direct: bool,
        shared: Vec<(String, String)>,
        msg: &[u8],
        want_ack: bool,
    ) -> (Option<oneshot::Receiver<Frame>>, Option<Arc<Gate>>) {
        let id = if want_ack {
            self.next_id.fetch_add(1, Ordering::Relaxed)
        } else {
            0
        };
        let rx = want_ack.then(|| {
            let (tx, rx) = oneshot::channel();
            lock(&self.waiting).insert(
                id,
                Waiter {
                    peer: n.clone(),
                    tx,
                },
            );
            rx
        });
        let (sent, gate) = self.send_gated(
            n,
            Frame::Forward {
                id,
                direct,
                shared,
                msg: msg.to_vec(),
            },
        );
        if sent {
            self.forwarded.inc();
            self.forwarded_bytes.inc_by(msg.len() as u64);
            (rx, gate)
        } else {
            lock(&self.waiting).remove(&id);
            if lock(&self.peers).contains_key(&**n) {
                // the peer is there but its queue is full: a QoS 1/2 publisher must not be
                // acknowledged (its receiver fails at once); QoS 0 is dropped, as under overload
                tracing::warn!(node = %self.node, peer = %n, "cluster: forward queue full, message not forwarded");
                (want_ack.then(|| oneshot::channel().1), None)
            } else {
                // no channel: the node is down or not yet connected; its routes go with it
                (None, None)
            }
        }
    }

    /// Asks every live peer to hand over `client_id`'s session; returns the export if one had it.
    pub async fn take_session(
        &self,
        client_id: &str,
        clean_start: bool,
    ) -> Option<(Vec<u8>, Vec<Vec<u8>>)> {
        let peers: Vec<Arc<str>> = lock(&self.peers).keys().cloned().collect();
        let mut waits = Vec::new();
        for n in peers {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            lock(&self.waiting).insert(
                id,
                Waiter {
                    peer: n.clone(),
                    tx,
                },
            );
            if self.send_to(
                &n,
                Frame::TakeSession {
                    id,
                    client_id: client_id.to_string(),
                    clean_start,
                },
            ) {
                waits.push((id, rx));
            } else {
                lock(&self.waiting).remove(&id);
            }
        }
        let mut found = None;
        for (id, rx) in waits {
            match tokio::time::timeout(TAKEOVER_TIMEOUT, rx).await {
                Ok(Ok(Frame::Session {
                    export: Some(e), ..
                })) => found = Some(e),
                Ok(_) => {}
                Err(_) => {
                    lock(&self.waiting).remove(&id);
                }
            }
        }
        found
    }

    /// Number of remote (filter, node) routes.
    pub fn remote_routes(&self) -> usize {
        self.routes.subscription_count()
    }

    /// Peers and their state, for `/api/cluster`.
    pub fn peers(&self) -> Vec<(Arc<str>, PeerStatus, usize)> {
        let filters = lock(&self.node_filters);
        let mut v: Vec<_> = lock(&self.status)
            .iter()
            .map(|(n, s)| {
                (
                    n.clone(),
                    s.clone(),
                    filters.get(n).map(|f| f.len()).unwrap_or(0),
                )
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Number of distinct local filters (this node's routes).
    pub fn local_routes(&self) -> usize {
        lock(&self.local).len()
    }

    /// The cluster bind address.
    pub fn bind(&self) -> SocketAddr {
        self.bind
    }
}
