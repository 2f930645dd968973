//! The cluster node: its state (peers, their channels and routes, awaited answers), gossip
//! membership and failure detection (chitchat), and what happens when a peer comes or goes.
//! Siblings: [`super::channel`] (the TCP frames), [`super::peers`] (the core's side, [`Peers`]).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chitchat::{spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};
use tokio::sync::{oneshot, watch};

use super::frame::{Frame, ACK_RANGES_KEY};
use super::peer::Peer;
use super::tls::NodeTls;
use super::transport::{Listener, Transport, Wiring};
#[cfg(doc)]
use super::Peers;
use super::{ClusterCounters, ClusterError, LocalNode, PeerStatus};
use crate::config::ClusterConfig;
use crate::routing::Router;

/// This node's view of the cluster.
pub struct Cluster {
    /// This node's name.
    pub(super) node: Arc<str>,
    pub(super) epoch: u64,
    pub(super) bind: SocketAddr,
    pub(super) chitchat: Mutex<Option<ChitchatHandle>>,
    pub(super) peers: Mutex<HashMap<Arc<str>, Peer>>,
    pub(super) status: Mutex<HashMap<Arc<str>, PeerStatus>>,
    /// Remote routes: filter → nodes that have local subscribers for it.
    pub(super) routes: Router<Arc<str>>,
    pub(super) node_filters: Mutex<HashMap<Arc<str>, HashSet<String>>>,
    pub(super) local: Mutex<HashMap<String, u32>>,
    /// Answers awaited from peers (forward acks, session handovers), by request id.
    pub(super) waiting: Mutex<HashMap<u64, Waiter, Ids>>,
    /// The live peers that announce in gossip that they read range acks (see `acks`).
    pub(super) ack_ranges: Mutex<HashSet<Arc<str>>>,
    pub(super) next_id: AtomicU64,
    pub(super) core: OnceLock<Weak<dyn LocalNode>>,
    pub(super) counters: ClusterCounters,
    /// Handover settlements (and messages following a moved session) whose peer had no channel
    /// when they were sent: sent again every membership round until their deadline.
    pub(super) unsent_settlements: Mutex<Vec<(Arc<str>, Frame, std::time::Instant)>>,
    /// Peers the failure detector called down (they did not leave), since when: their routes
    /// stay, so publishes toward their sessions are refused instead of acknowledged and lost,
    /// until they return or [`Cluster::dead_after`] passes.
    pub(super) held: Mutex<HashMap<Arc<str>, std::time::Instant>>,
    /// `[cluster] dead_after`.
    pub(super) dead_after: Duration,
    /// `[cluster] seeds`: whose route snapshots a starting node waits for.
    pub(super) seeds: Vec<SocketAddr>,
    /// The peers' routes as last written to `data_dir` (see `remembered`).
    pub(super) saved_routes: Mutex<HashMap<Arc<str>, HashSet<String>>>,
    /// The last incarnation (chitchat generation) seen of each peer.
    pub(super) generations: Mutex<HashMap<Arc<str>, u64>>,
    /// This cluster itself (for work a `&self` method hands to a task).
    pub(super) me: Weak<Cluster>,
    /// Down peers → the live nodes that promoted their standby copies of its sessions
    /// (see `replicas`).
    pub(super) promoted: Mutex<HashMap<Arc<str>, HashSet<Arc<str>>>>,
    /// This node's admin API (announced in gossip for the peers' status pages).
    pub(super) admin: OnceLock<SocketAddr>,
    /// Mutual TLS on the node channel; `None`: plain TCP, unauthenticated (warned at start).
    pub(super) tls: Option<Arc<NodeTls>>,
    /// Sockets or the in-memory network, and the timers.
    pub(super) wiring: Wiring,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Hashes request ids (a counter of this node's, never chosen by a peer) with one multiply:
/// SipHash's flood resistance buys nothing here and cost a forward more than its map insert.
#[derive(Default, Clone, Copy)]
pub(super) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// The hasher of the awaited answers' map.
pub(super) type Ids = BuildHasherDefault<IdHasher>;

/// An answer awaited from one peer.
pub(super) struct Waiter {
    pub(super) peer: Arc<str>,
    /// A forward's ack (counted when it fails), not a session answer.
    pub(super) forward: bool,
    /// When a forward was sent: it fails once `FORWARD_ACK_TIMEOUT` passed (`None`: not a
    /// forward, its asker keeps its own deadline).
    pub(super) sent: Option<std::time::Instant>,
    pub(super) tx: oneshot::Sender<Frame>,
}

impl Cluster {
    /// Creates the cluster state (nothing runs until [`Cluster::start`]).
    pub fn new(node: &str, cfg: &ClusterConfig, counters: ClusterCounters) -> Arc<Cluster> {
        Cluster::wired(node, cfg, counters, Wiring::default())
    }

    /// [`Cluster::new`] on another transport or with other timers (tests: an in-memory
    /// network, which carries no TLS).
    pub fn wired(
        node: &str,
        cfg: &ClusterConfig,
        counters: ClusterCounters,
        wiring: Wiring,
    ) -> Arc<Cluster> {
        let tls = match wiring.transport {
            Transport::Net => cfg.tls.as_ref().map(|t| Arc::new(NodeTls::new(t))),
            Transport::Memory(_) => None,
        };
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Arc::new_cyclic(|me| Cluster {
            me: me.clone(),
            generations: Mutex::new(HashMap::new()),
            node: Arc::from(node),
            epoch,
            bind: cfg.bind,
            chitchat: Mutex::new(None),
            peers: Mutex::new(HashMap::new()),
            status: Mutex::new(HashMap::new()),
            routes: Router::new(),
            node_filters: Mutex::new(HashMap::new()),
            local: Mutex::new(HashMap::new()),
            waiting: Mutex::new(HashMap::default()),
            ack_ranges: Mutex::new(HashSet::new()),
            next_id: AtomicU64::new(1),
            core: OnceLock::new(),
            counters,
            unsent_settlements: Mutex::new(Vec::new()),
            held: Mutex::new(HashMap::new()),
            dead_after: cfg.dead_after,
            seeds: cfg.seeds.clone(),
            saved_routes: Mutex::new(HashMap::new()),
            promoted: Mutex::new(HashMap::new()),
            admin: OnceLock::new(),
            tls,
            wiring,
        })
    }

    /// The admin API's address, announced to the peers (call before [`Cluster::start`]).
    pub fn set_admin(&self, addr: SocketAddr) {
        let _ = self.admin.set(addr);
    }

    /// This node's core, while it runs.
    pub(super) fn core(&self) -> Option<Arc<dyn LocalNode>> {
        self.core.get().and_then(Weak::upgrade)
    }

    /// Binds the channel, starts gossip and the membership loop.
    pub async fn start(
        self: &Arc<Self>,
        local: &Arc<dyn LocalNode>,
        cfg: &ClusterConfig,
        stop: watch::Receiver<bool>,
    ) -> Result<(), ClusterError> {
        let _ = self.core.set(Arc::downgrade(local));
        self.restore_peer_routes(local);
        let listener = self.wiring.transport.listen(cfg.bind).await?;
        let t = self.wiring.timing;
        let config = ChitchatConfig {
            chitchat_id: ChitchatId::new(self.node.to_string(), self.epoch, cfg.bind),
            cluster_id: "mqedge".into(),
            gossip_interval: t.gossip_interval,
            listen_addr: cfg.bind,
            seed_nodes: cfg.seeds.iter().map(|s| s.to_string()).collect(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: 8.0,
                sampling_window_size: 1000,
                max_interval: t.detector_max,
                initial_interval: t.detector_initial,
                dead_node_grace_period: Duration::from_secs(3600),
            },
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: Some(Box::new(|s: &chitchat::NodeState| {
                s.get("leaving").is_none()
            })),
            protocol_version: chitchat::ProtocolVersion::V0,
        };
        let mut keys = vec![
            ("cluster_addr".into(), cfg.bind.to_string()),
            // this node reads range acks (see `acks`)
            (ACK_RANGES_KEY.into(), "1".into()),
        ];
        if let Some(a) = self.admin.get() {
            keys.push(("admin_addr".into(), a.to_string()));
        }
        let handle = spawn_chitchat(config, keys, self.wiring.transport.gossip())
            .await
            .map_err(|e| ClusterError::Gossip(cfg.bind, e.to_string()))?;
        let live = handle.chitchat().lock().await.live_nodes_watcher();
        *lock(&self.chitchat) = Some(handle);
        tracing::info!(node = %self.node, bind = %cfg.bind, seeds = ?cfg.seeds, tls = self.tls.is_some(), "cluster: gossip and node channel up");
        if self.tls.is_none() {
            tracing::warn!(node = %self.node, bind = %cfg.bind, "cluster: the node channel is unauthenticated (no [cluster] tls_cert/tls_key/tls_ca): whoever reaches this address can act as a node");
        }
        match listener {
            Listener::Tcp(l) => tokio::spawn(self.clone().accept_loop(l, stop.clone())),
            Listener::Memory(l) => tokio::spawn(self.clone().accept_memory(l, stop.clone())),
        };
        tokio::spawn(self.clone().membership_loop(live, stop));
        Ok(())
    }

    /// Announces in gossip that this node drains: its peers move no session to it.
    pub async fn announce_draining(&self) {
        let h = lock(&self.chitchat).as_ref().map(|h| h.chitchat());
        if let Some(c) = h {
            c.lock().await.self_node_state().set("draining", "true");
        }
    }

    /// The live peers that do not drain: where sessions moving off this node may go.
    pub(super) fn targets(&self) -> Vec<Arc<str>> {
        lock(&self.status)
            .iter()
            .filter(|(_, s)| s.up && !s.draining)
            .map(|(n, _)| n.clone())
            .collect()
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
        self.broadcast_locked(Frame::Leave);
        // let one gossip round and the Leave frames go out
        tokio::time::sleep(self.wiring.timing.gossip_interval * 2).await;
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
                .borrow()
                .keys()
                .filter(|id| *id.node_id != *self.node)
                .map(|id| {
                    (
                        id.node_id.clone(),
                        (id.gossip_advertise_addr, id.generation_id),
                    )
                })
                .collect();
            let admins: Vec<(Arc<str>, Option<SocketAddr>, bool)> = {
                let live = live.borrow_and_update();
                let others = || live.iter().filter(|(id, _)| *id.node_id != *self.node);
                let ranges =
                    others().map(|(id, st)| (&*id.node_id, st.get(ACK_RANGES_KEY).is_some()));
                self.note_ack_ranges(ranges);
                others()
                    .map(|(id, st)| {
                        let a = st.get("admin_addr").and_then(|a| a.parse().ok());
                        (id.node_id.clone(), a, st.get("draining").is_some())
                    })
                    .collect()
            };
            for (n, a, draining) in admins {
                if let Some(s) = lock(&self.status).get_mut(&n) {
                    s.admin = a;
                    s.draining = draining;
                }
            }
            self.apply_membership(now);
            self.resend_settlements();
            self.expire_held();
            self.expire_forwards();
            self.save_peer_routes();
            tokio::select! {
                _ = stop.changed() => break,
                r = live.changed() => if r.is_err() { break },
                // re-dial peers whose channel broke while gossip still calls them live
                _ = tokio::time::sleep(self.wiring.timing.recheck) => {}
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
            self.node_down(&n, "failure detector", true);
        }
        let up: Vec<Arc<str>> = live.keys().cloned().collect();
        for (n, (addr, generation)) in live {
            let (need, restarted) = {
                let peers = lock(&self.peers);
                match peers.get(&n) {
                    Some(p) => (p.stale(addr, generation), p.generation() != generation),
                    None => (true, false),
                }
            };
            let new_incarnation = lock(&self.generations)
                .insert(n.clone(), generation)
                .is_some_and(|g| g != generation);
            let came_back = lock(&self.status).get(&n).is_some_and(|s| !s.up);
            if came_back {
                if let Some(b) = self.core() {
                    b.holder_up(&n, new_incarnation);
                }
            }
            if restarted {
                // a new incarnation (restarted before the detector noticed): what the old one
                // owed us will never come
                tracing::info!(node = %self.node, peer = %n, "cluster: peer restarted; reconnecting");
                self.release_waiters(&n);
            }
            if need {
                self.connect_peer(n.clone(), addr, generation);
            }
            let came_up = {
                let mut st = lock(&self.status);
                let e = st.entry(n.clone()).or_insert(PeerStatus {
                    up: false,
                    unreachable: false,
                    addr,
                    admin: None,
                    held: false,
                    draining: false,
                });
                let came_up = !e.up;
                e.up = true;
                e.addr = addr;
                came_up
            };
            if came_up {
                tracing::info!(node = %self.node, peer = %n, addr = %addr, "cluster: peer up");
                // its held routes stay until its channel brings a fresh snapshot
                lock(&self.held).remove(&n);
                // copies it kept of sessions whose clients moved here meanwhile
                self.pull_copies(n.clone());
                lock(&self.promoted).remove(&n);
            }
        }
        if let Some(b) = self.core() {
            b.members(&up);
        }
    }

    /// A peer is down: its channel closes and what waits on it fails. `hold`: it did not say
    /// it leaves (failure detector), so its routes stay for `dead_after`: publishes toward its
    /// sessions are not acknowledged meanwhile (their publishers send them again), instead of
    /// being acknowledged with no copy for those sessions. A peer that left (its sessions
    /// were handed over) loses its routes at once.
    pub(super) fn node_down(&self, n: &Arc<str>, why: &str, hold: bool) {
        let was_up = {
            let mut st = lock(&self.status);
            st.get_mut(n)
                .map(|s| std::mem::replace(&mut s.up, false))
                .unwrap_or(false)
        };
        lock(&self.peers).remove(n);
        let held = hold && self.dead_after > Duration::ZERO;
        if held {
            if was_up {
                lock(&self.held).insert(n.clone(), std::time::Instant::now());
            }
        } else {
            lock(&self.held).remove(n);
            self.drop_routes(n);
        }
        self.release_waiters(n);
        if was_up {
            if let Some(b) = self.core() {
                b.holder_down(n);
            }
        }
        if was_up && held {
            tracing::warn!(node = %self.node, peer = %n, dead_after = ?self.dead_after, "cluster: peer down ({why}); its routes are held: publishes toward it are refused until it returns or dead_after passes");
        } else if was_up {
            tracing::warn!(node = %self.node, peer = %n, "cluster: peer down ({why}); its routes dropped");
        }
    }

    /// Drops the routes of peers down for longer than `dead_after`: gone for good, their
    /// sessions' publishes are acknowledged again (without a copy for those sessions).
    fn expire_held(&self) {
        let now = std::time::Instant::now();
        let expired: Vec<Arc<str>> = {
            let mut held = lock(&self.held);
            let gone: Vec<Arc<str>> = held
                .iter()
                .filter(|(_, since)| now.duration_since(**since) >= self.dead_after)
                .map(|(n, _)| n.clone())
                .collect();
            for n in &gone {
                held.remove(n);
            }
            gone
        };
        for n in expired {
            self.drop_routes(&n);
            tracing::warn!(node = %self.node, peer = %n, dead_after = ?self.dead_after, "cluster: peer still down after dead_after; its routes dropped");
        }
    }

    /// Waits (up to `timeout`) until every seed and every live peer sent its route snapshot,
    /// so that a starting node acknowledges no publish its peers' sessions should get before
    /// it knows their routes. Returns the peers (or seed addresses) it did not hear from.
    pub async fn wait_synced(&self, timeout: Duration) -> Vec<String> {
        let start = tokio::time::Instant::now();
        let deadline = start + timeout;
        // routes remembered from the last run stand in for a seed only once gossip had the time
        // to find it live: a peer that is up sends its own snapshot (and answers the restored
        // sessions' question), a peer that is down is covered by the held routes
        let grace = start + timeout.min(Duration::from_millis(1500));
        loop {
            let now = tokio::time::Instant::now();
            let missing = self.unsynced(now >= grace);
            if missing.is_empty() || now >= deadline {
                return missing;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Seeds and live peers whose route snapshot is not in; `held_counts`: a seed covered by
    /// held (remembered) routes is not missing.
    fn unsynced(&self, held_counts: bool) -> Vec<String> {
        // lock order as in `peers()`: node_filters before status
        let filters = lock(&self.node_filters);
        let status = lock(&self.status);
        let held = lock(&self.held);
        let mut missing: Vec<String> = status
            .iter()
            .filter(|(n, s)| s.up && !filters.contains_key(*n))
            .map(|(n, _)| n.to_string())
            .collect();
        for seed in &self.seeds {
            // a seed whose routes are held (remembered from the last run) is covered: its
            // sessions' publishes are refused until it sends its own
            let known = *seed == self.bind
                || status.iter().any(|(n, s)| {
                    s.addr == *seed
                        && (s.up
                            || (held_counts && held.contains_key(n) && filters.contains_key(n)))
                });
            if !known {
                missing.push(seed.to_string());
            }
        }
        missing
    }

    /// Fails everything still awaited from a peer that is gone or restarted: a forward it never
    /// acknowledged resolves as not taken (the publisher gets no PUBACK and sends it again), a
    /// session request as "no answer" (a frozen session stays with its holder).
    pub(super) fn release_waiters(&self, n: &str) {
        let mut failed = 0;
        lock(&self.waiting).retain(|_, x| {
            let keep = &*x.peer != n;
            failed += u64::from(!keep && x.forward);
            keep
        });
        if failed > 0 {
            self.counters.failed_gone.inc_by(failed);
            tracing::warn!(node = %self.node, peer = %n, waiters = failed, "cluster: peer gone before answering; its unacknowledged forwards fail (no PUBACK)");
        }
    }

    pub(super) fn drop_routes(&self, n: &Arc<str>) {
        let filters = lock(&self.node_filters).remove(n).unwrap_or_default();
        for f in filters {
            self.routes.unsubscribe(n, &f);
        }
    }

    /// Whether `n` is a live gossip member now.
    pub(super) fn is_member(&self, n: &str) -> bool {
        lock(&self.status).get(n).is_some_and(|s| s.up)
    }

    /// The cluster bind address.
    pub fn bind(&self) -> SocketAddr {
        self.bind
    }
}
