//! Session replication (`[cluster] session_replicas = 2`, docs/cluster.md "Session replicas"):
//! every persistent session has its holder (the node its client is connected to, or was last)
//! and a replica, the first other live node in the LB's rendezvous order for its client id
//! (`mqedge_shared::placement`), so that when the holder dies the node the LB sends the client
//! to next is the one with its copy.
//!
//! How: the store's [`Tap`] sees every write of the session tables, in the writer's order, and
//! sends it to the session's replica over the node channel; the write is acknowledged (PUBACK,
//! SUBACK) only once durable on both. A session whose replica has no complete copy yet (new,
//! restored, or its replica changed with the membership) is first copied whole (`sync`, at
//! `replica_sync_rate`). The replica keeps copies in its `standby` table (`standby`) and turns
//! them into sessions of its own when their holder goes down, or when the client connects to it
//! while its holder does not answer. Primary-backup with acknowledgements over chitchat's
//! membership: no consensus of its own (docs/cluster.md says why that is enough, and what a
//! partition costs). Imports the session registry, the store and the cluster's boundary.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

use crate::cluster::Peers;
use crate::metrics::{Metrics, Reason};
use crate::session::Registry;
use crate::store::{Op, Store, Table, Tap, TapWait};

pub mod ops;
mod standby;
mod sync;
mod unprotected;

/// How long a holder the failure detector called down must stay unreachable before its
/// sessions' copies are promoted: a detector that flaps (a loaded host, a short pause) does
/// not split sessions in two.
const PROMOTE_GRACE: Duration = Duration::from_secs(2);

/// How long a write waits for its replica's acknowledgement.
const ACK_WAIT: Duration = Duration::from_secs(5);

/// How long a write waits for its session's first whole copy on the replica.
const SYNC_WAIT: Duration = Duration::from_secs(10);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The replica of `client` while `me` holds it: the first other node of the LB's order over
/// the live nodes (`up`: the peers, without `me`).
pub fn replica_of(client: &str, me: &str, up: &[Arc<str>]) -> Option<Arc<str>> {
    let mut names: Vec<&str> = Vec::with_capacity(up.len() + 1);
    names.push(me);
    names.extend(up.iter().map(|n| &**n));
    let first = mqedge_shared::placement::rendezvous_order(client.as_bytes(), &names)
        .into_iter()
        .find(|n| *n != me)?;
    up.iter().find(|n| ***n == *first).cloned()
}

/// A session waiting to be copied whole: where its copy was before (dropped there once the new
/// one is in), and the writes waiting for the copy.
type Waiting = (Option<Arc<str>>, Vec<oneshot::Sender<bool>>);

/// Sessions waiting to be copied whole, and who waits for it.
#[derive(Default)]
struct Pending {
    /// In order; a client id is in it once (`waiters` has an entry for every one).
    queue: VecDeque<Arc<str>>,
    /// Per client.
    waiters: HashMap<Arc<str>, Waiting>,
}

/// This node's side of session replication: holder (the tap, the copies) and replica (the
/// standby copies, promotion).
pub struct Replication {
    node: Arc<str>,
    store: Store,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    /// Whether this node replicates its own sessions (`session_replicas = 2`); it keeps
    /// standby copies for its peers either way.
    holder: bool,
    /// `replica_sync_rate`.
    rate: u32,
    peers: OnceLock<Arc<dyn Peers>>,
    /// The live peers (without this node), sorted: the placement's input.
    up: Mutex<Arc<[Arc<str>]>>,
    /// Client id → the node that has a complete copy of its session.
    /// (Shared with the acknowledgement waits, which forget a copy whose write failed.)
    synced: Arc<Mutex<HashMap<Arc<str>, Arc<str>>>>,
    pending: Mutex<Pending>,
    /// Rung when `pending` got work.
    wake: Notify,
    /// Standby copies kept here: client id → its holder.
    standby: Mutex<HashMap<Arc<str>, Arc<str>>>,
    /// Sessions promoted here because their holder was down: client id → that holder (they
    /// go back to it if it returns as the same incarnation and their client did not come).
    promoted_from: Mutex<HashMap<Arc<str>, Arc<str>>>,
    /// Sessions written while no other node could take a copy (`unprotected`).
    unprotected: Mutex<std::collections::HashSet<Arc<str>>>,
}

impl Replication {
    /// Replication for node `node` over its store; reads the standby copies kept from the last
    /// run. `holder`: replicate this node's sessions too.
    pub fn new(
        node: &str,
        store: Store,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        holder: bool,
        rate: u32,
    ) -> Arc<Replication> {
        let r = Arc::new(Replication {
            node: Arc::from(node),
            registry,
            metrics,
            holder,
            rate: rate.max(1),
            peers: OnceLock::new(),
            up: Mutex::new(Arc::from(Vec::new())),
            synced: Arc::new(Mutex::new(HashMap::new())),
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
            standby: Mutex::new(HashMap::new()),
            promoted_from: Mutex::new(HashMap::new()),
            unprotected: Mutex::new(unprotected::restore(&store)),
            store,
        });
        r.restore_standby();
        if holder {
            r.store.set_tap(r.clone());
        }
        r
    }

    /// Joins the cluster: copies start flowing; `stop` ends the copy loop.
    pub fn start(
        self: &Arc<Self>,
        peers: Arc<dyn Peers>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let _ = self.peers.set(peers);
        if self.holder {
            tokio::spawn(sync::run(Arc::downgrade(self), stop));
        }
    }

    /// Whether this node replicates its own sessions.
    pub fn is_holder(&self) -> bool {
        self.holder
    }

    /// What `/api/cluster` shows: replicas, copies complete on a replica, waiting to be
    /// copied, standby copies kept here for other nodes.
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "session_replicas": if self.holder { 2 } else { 1 },
            "synced": lock(&self.synced).len(),
            "sync_pending": lock(&self.pending).queue.len(),
            "standby_sessions": lock(&self.standby).len(),
        })
    }

    fn up(&self) -> Arc<[Arc<str>]> {
        lock(&self.up).clone()
    }

    fn fail(&self, why: &str) {
        self.metrics
            .replica
            .failures
            .get_or_create(&Reason {
                reason: why.to_string(),
            })
            .inc();
    }

    /// The live peers changed: sessions whose replica moved are copied whole to the new one;
    /// sessions never copied (restored from `data_dir`, or with no live peer until now) too.
    pub fn members(&self, up: &[Arc<str>]) {
        let mut sorted: Vec<Arc<str>> = up.to_vec();
        sorted.sort();
        {
            let mut cur = lock(&self.up);
            if **cur == *sorted {
                return;
            }
            *cur = Arc::from(sorted);
        }
        if !self.holder {
            return;
        }
        let up = self.up();
        // the sessions' locks are taken before `synced` (the tap's order: a session's lock,
        // then `synced`), never under it
        let ids = self.registry.persistent_ids();
        let moved: Vec<(Arc<str>, Option<Arc<str>>)> = {
            let synced = lock(&self.synced);
            ids.into_iter()
                .filter_map(|c| {
                    let now = replica_of(&c, &self.node, &up);
                    let was = synced.get(&c).cloned();
                    (now.is_some() && now != was).then_some((c, was))
                })
                .collect()
        };
        if !moved.is_empty() {
            tracing::info!(node = %self.node, sessions = moved.len(), "replication: membership changed; sessions copied to their new replica");
        }
        for (c, was) in moved {
            lock(&self.synced).remove(&c);
            self.enqueue(c, was, None);
        }
    }

    /// A new channel to `n`: every session it has a copy of is copied again (what was in
    /// flight on the old channel may be lost).
    pub fn link(&self, n: &Arc<str>) {
        if !self.holder {
            return;
        }
        let again: Vec<Arc<str>> = {
            let mut synced = lock(&self.synced);
            let v: Vec<Arc<str>> = synced
                .iter()
                .filter(|(_, t)| *t == n)
                .map(|(c, _)| c.clone())
                .collect();
            for c in &v {
                synced.remove(c);
            }
            v
        };
        for c in again {
            self.enqueue(c, None, None);
        }
    }

    /// Queues `client` for a whole copy (once), with a waiter.
    fn enqueue(
        &self,
        client: Arc<str>,
        was: Option<Arc<str>>,
        waiter: Option<oneshot::Sender<bool>>,
    ) {
        let mut p = lock(&self.pending);
        let fresh = !p.waiters.contains_key(&client);
        let e = p
            .waiters
            .entry(client.clone())
            .or_insert((None, Vec::new()));
        if was.is_some() {
            e.0 = was;
        }
        e.1.extend(waiter);
        if fresh {
            p.queue.push_back(client);
        }
        self.metrics.replica.sync_pending.set(p.queue.len() as i64);
        drop(p);
        self.wake.notify_one();
    }
}

/// What one write sends to one replica: the replica, the ops, the clients they are of.
type Group<'a> = (Arc<str>, Vec<&'a Op>, Vec<Arc<str>>);

/// The ops of one batch grouped by client id, in order (a batch is mostly one client).
fn by_client(ops: &[Op]) -> Vec<(&str, Vec<&Op>)> {
    let mut v: Vec<(&str, Vec<&Op>)> = Vec::new();
    for op in ops {
        let Some(c) = ops::client_of(op).and_then(|c| std::str::from_utf8(c).ok()) else {
            continue;
        };
        match v.iter_mut().find(|(k, _)| *k == c) {
            Some((_, list)) => list.push(op),
            None => v.push((c, vec![op])),
        }
    }
    v
}

impl Tap for Replication {
    fn tap(&self, ops: &[Op], wait: bool) -> Option<TapWait> {
        let peers = self.peers.get()?;
        let up = self.up();
        let mut groups: Vec<Group<'_>> = Vec::new();
        let mut waits: Vec<TapWait> = Vec::new();
        for (client, list) in by_client(ops) {
            let Some(target) = replica_of(client, &self.node, &up) else {
                self.metrics.replica.unprotected.inc();
                self.mark_unprotected(client);
                continue;
            };
            let forgets = list.iter().any(|op| {
                matches!(
                    op,
                    Op::Delete {
                        table: Table::Sessions,
                        ..
                    }
                )
            });
            let synced = {
                let mut s = lock(&self.synced);
                let ok = s.get(client) == Some(&target);
                if forgets {
                    s.remove(client);
                }
                ok
            };
            if !synced {
                if list.iter().all(|op| !matches!(op, Op::Put { .. })) {
                    // nothing of it was copied from here: nothing to delete there
                    if !forgets {
                        continue;
                    }
                } else {
                    let (tx, rx) = oneshot::channel();
                    self.enqueue(Arc::from(client), None, wait.then_some(tx));
                    if wait {
                        waits.push(Box::pin(async move {
                            match tokio::time::timeout(SYNC_WAIT, rx).await {
                                Ok(Ok(true)) => Ok(()),
                                _ => {
                                    Err("the session's first copy on its replica did not complete"
                                        .to_string())
                                }
                            }
                        }));
                    }
                }
            }
            match groups.iter_mut().find(|(t, _, _)| *t == target) {
                Some((_, g, cs)) => {
                    g.extend(list);
                    cs.push(Arc::from(client));
                }
                None => groups.push((target, list, vec![Arc::from(client)])),
            }
        }
        for (target, list, clients) in groups {
            let mut bytes = Vec::new();
            ops::encode(list, &mut bytes);
            self.metrics.replica.writes.inc();
            match peers.replicate(&target, bytes, wait) {
                Ok(Some(ack)) => {
                    let m = self.metrics.clone();
                    let synced = self.synced.clone();
                    waits.push(Box::pin(async move {
                        if tokio::time::timeout(ACK_WAIT, ack).await == Ok(true) {
                            Ok(())
                        } else {
                            // the copies there may miss this write: copied whole at the next
                            {
                                let mut s = lock(&synced);
                                for c in &clients {
                                    if s.get(c) == Some(&target) {
                                        s.remove(c);
                                    }
                                }
                            }
                            m.replica
                                .failures
                                .get_or_create(&Reason {
                                    reason: "not_acknowledged".to_string(),
                                })
                                .inc();
                            Err("the replica did not confirm the write".to_string())
                        }
                    }));
                }
                Ok(None) => {}
                Err(_) => {
                    self.fail("unreachable");
                    // the copy there is no longer complete
                    lock(&self.synced).retain(|_, t| *t != target);
                    if wait {
                        return Some(Box::pin(std::future::ready(Err(format!(
                            "replica {target} unreachable"
                        )))));
                    }
                }
            }
        }
        if !wait || waits.is_empty() {
            return None;
        }
        Some(Box::pin(async move {
            for w in waits {
                w.await?;
            }
            Ok(())
        }))
    }

    fn flush(&self) -> Option<TapWait> {
        let peers = self.peers.get()?;
        let mut acks = Vec::new();
        for n in self.up().iter() {
            let mut empty = Vec::new();
            ops::encode(std::iter::empty(), &mut empty);
            if let Ok(Some(a)) = peers.replicate(n, empty, true) {
                acks.push(a);
            }
        }
        Some(Box::pin(async move {
            for a in acks {
                if tokio::time::timeout(ACK_WAIT, a).await != Ok(true) {
                    return Err("a replica did not confirm".to_string());
                }
            }
            Ok(())
        }))
    }
}
