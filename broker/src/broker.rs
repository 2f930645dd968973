//! The broker core shared by every connection: the session registry, the router, retained
//! messages, auth, the store, and the publish path (match → per-session queue → notify). A
//! cluster plugs in here: [`Broker::publish`] is where a message would also be handed to other
//! nodes, and sessions are exported/imported through their store records.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::cluster::frame::Frame;
use crate::cluster::Cluster;

use crate::auth::{Access, Acl, PasswordFile};
use crate::config::{Config, SharedPolicy};
use crate::feed::delivery_qos;
use crate::message::{unix_now, Message};
use crate::metrics::Metrics;
use crate::protocol::{QoS, Version, Will};
use crate::retained::Retained;
use crate::router::{Matches, Router, SubOptions};
use crate::session::{
    decode_outgoing, encode_outgoing, message_key, message_prefix, Attached, Outgoing, Session,
    State, Sub,
};
use crate::store::{Op, Store, StoreError, Table};

const SHARDS: usize = 32;
/// How far past `max_offline_messages` a connected session's backlog may grow while its
/// publishers are held back, before the oldest messages are dropped.
pub const OVERFLOW_FACTOR: usize = 4;

/// Errors starting a broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The store could not be opened or read.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// A password or ACL file is broken.
    #[error("{0}")]
    Auth(#[from] crate::auth::AuthError),
    /// The cluster layer could not start.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// A listener could not be bound.
    #[error("cannot bind {what} on {addr}")]
    Bind {
        /// Which listener.
        what: String,
        /// Address.
        addr: SocketAddr,
        /// Cause (shown by the caller's error chain).
        #[source]
        source: std::io::Error,
    },
}

/// What `attach` decided for a connecting client.
pub struct Attach {
    /// The session now bound to this connection.
    pub session: Arc<Session>,
    /// CONNACK Session Present.
    pub session_present: bool,
    /// Fires when another connection takes this session over.
    pub kicked: oneshot::Receiver<u8>,
}

/// Authentication and authorization state.
pub struct Auth {
    /// Anonymous clients allowed.
    pub allow_anonymous: bool,
    /// Password file.
    pub passwords: Option<PasswordFile>,
    /// ACL.
    pub acl: Option<Acl>,
}

/// The node's shared state.
pub struct Broker {
    /// Config.
    pub cfg: Config,
    sessions: Vec<Mutex<HashMap<Arc<str>, Arc<Session>>>>,
    /// Local subscriptions by filter.
    pub router: Router<Arc<str>>,
    /// Retained messages.
    pub retained: Retained<Arc<Message>>,
    /// Auth.
    pub auth: Auth,
    /// Durable store (`data_dir`).
    pub store: Option<Store>,
    /// Metrics.
    pub metrics: Metrics,
    shared_rr: Vec<Mutex<HashMap<String, u64>>>,
    conn_seq: AtomicU64,
    /// Start time (uptime).
    pub started: Instant,
    rng: AtomicU64,
    cluster: std::sync::OnceLock<Arc<Cluster>>,
}

/// What a publish set in motion: store writes to make durable and remote nodes' acks to await
/// before acknowledging the publisher.
#[derive(Default)]
pub struct Published {
    /// Store operations.
    pub ops: Vec<Op>,
    /// Acks of forwarded copies (QoS 1/2).
    pub acks: Vec<oneshot::Receiver<Frame>>,
    /// Connected sessions whose backlog is over the limit: the publisher waits for them.
    pub congested: Vec<Arc<Session>>,
    /// Peers whose forward queue is over its limit: the publisher waits for them too.
    pub peer_gates: Vec<Arc<crate::cluster::Gate>>,
}

fn shard_of(s: &str) -> usize {
    // FNV-1a: cheap and stable
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    (h % SHARDS as u64) as usize
}

impl Broker {
    /// Builds the broker: takes the auth files the config loaded, opens the store and restores
    /// sessions, queues and retained messages from it.
    pub fn new(cfg: Config) -> Result<Arc<Broker>, BrokerError> {
        // loaded (and checked) by the config's second stage
        let passwords = cfg.auth.passwords.clone();
        let acl = cfg.auth.acl.clone();
        let store = match &cfg.data_dir {
            Some(d) => Some(Store::open(d)?),
            None => None,
        };
        let b = Broker {
            auth: Auth {
                allow_anonymous: cfg.auth.allow_anonymous,
                passwords,
                acl,
            },
            cfg,
            sessions: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            router: Router::new(),
            retained: Retained::new(),
            store,
            metrics: Metrics::new(),
            shared_rr: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            conn_seq: AtomicU64::new(0),
            started: Instant::now(),
            rng: AtomicU64::new(0x9e37_79b9_7f4a_7c15 ^ unix_now()),
            cluster: std::sync::OnceLock::new(),
        };
        b.restore()?;
        Ok(Arc::new(b))
    }

    /// Joins this broker to a cluster layer (once, before serving).
    pub fn set_cluster(&self, c: Arc<Cluster>) {
        // routes restored from the store become this node's announced routes
        for f in self.router.filters() {
            for _ in 0..self.router_key_count(&f) {
                c.local_add(&f);
            }
        }
        let _ = self.cluster.set(c);
    }

    fn router_key_count(&self, f: &str) -> usize {
        let mut n = 0;
        for shard in &self.sessions {
            let m = shard.lock().unwrap_or_else(|p| p.into_inner());
            n += m.values().filter(|s| s.lock().subs.contains_key(f)).count();
        }
        n
    }

    /// The cluster layer, when clustered.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    fn restore(&self) -> Result<(), BrokerError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let mut restored = 0usize;
        for (k, v) in store.scan(Table::Sessions)? {
            let Ok(id) = String::from_utf8(k) else {
                continue;
            };
            let Some(st) = State::decode(&v) else {
                tracing::warn!(client_id = %id, "unreadable session record skipped");
                continue;
            };
            let id: Arc<str> = Arc::from(id);
            for (f, s) in &st.subs {
                self.router.subscribe(&id, f, sub_options(s));
            }
            let s = Arc::new(Session::restored(id.clone(), st));
            self.shard(&id).insert(id, s);
            restored += 1;
        }
        let mut queued = 0usize;
        for (k, v) in store.scan(Table::Messages)? {
            let Some(pos) = k.iter().position(|b| *b == 0) else {
                continue;
            };
            let (id, rest) = k.split_at(pos);
            let Ok(seq) = <[u8; 8]>::try_from(&rest[1..]) else {
                continue;
            };
            let seq = u64::from_be_bytes(seq);
            let Ok(id) = std::str::from_utf8(id) else {
                continue;
            };
            let Some(s) = self.session(id) else {
                store.write_nowait(vec![Op::Delete {
                    table: Table::Messages,
                    key: k.clone(),
                }]);
                continue;
            };
            if let Some(o) = decode_outgoing(&v, seq) {
                let mut st = s.lock();
                st.next_seq = st.next_seq.max(seq + 1);
                st.queue.push_back(o);
                queued += 1;
            }
        }
        for (k, v) in store.scan(Table::Retained)? {
            if let (Ok(t), Some(m)) = (String::from_utf8(k), Message::decode(&v)) {
                self.retained.set(&t, Some(Arc::new(m)));
            }
        }
        // restored sessions are offline: their expiry counts from now
        let now = Instant::now();
        for shard in &self.sessions {
            let list: Vec<_> = shard
                .lock()
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default();
            for s in list {
                s.lock().disconnected_at = Some(now);
            }
        }
        self.metrics.sessions.set(restored as i64);
        self.metrics.retained.set(self.retained.len() as i64);
        self.metrics
            .subscriptions
            .set(self.router.subscription_count() as i64);
        if restored > 0 || queued > 0 {
            tracing::info!(
                sessions = restored,
                queued_messages = queued,
                retained = self.retained.len(),
                "restored from the store"
            );
        }
        Ok(())
    }

    fn shard(&self, id: &str) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<Session>>> {
        self.sessions[shard_of(id)]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The session of a client id.
    pub fn session(&self, id: &str) -> Option<Arc<Session>> {
        self.shard(id).get(id).cloned()
    }

    /// Every session (admin, $SYS).
    pub fn session_count(&self) -> usize {
        self.sessions
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    /// A new connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.conn_seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Binds a client to its session, taking it over from another connection if needed.
    #[allow(clippy::too_many_arguments)]
    pub fn attach(
        self: &Arc<Self>,
        client_id: &str,
        clean_start: bool,
        expiry: u32,
        version: Version,
        username: Option<String>,
        peer: SocketAddr,
        conn_id: u64,
        import: Option<(Vec<u8>, Vec<Vec<u8>>)>,
    ) -> Attach {
        let (tx, rx) = oneshot::channel();
        let id: Arc<str> = Arc::from(client_id);
        if let (Some((rec, queued)), false) = (import, clean_start) {
            self.import_session(&id, &rec, &queued);
        }
        let mut map = self.shard(client_id);
        let existing = map.get(client_id).cloned();
        let mut discard = None;
        let (session, present) = match existing {
            Some(s) => {
                let ends = {
                    let mut st = s.lock();
                    if let Some(mut old) = st.conn.take() {
                        if let Some(k) = old.kick.take() {
                            let _ = k.send(crate::protocol::reason::SESSION_TAKEN_OVER);
                        }
                        self.metrics.takeovers.inc();
                        tracing::info!(
                            client_id,
                            old_conn = old.conn_id,
                            new_conn = conn_id,
                            "session taken over"
                        );
                    }
                    // A session that lasts only as long as its connection (3.1.1 clean session,
                    // v5 expiry 0) ends with it and is never resumed (MQTT-3.1.2-6, MQTT 5
                    // §3.1.2.11.2), even when a takeover arrives before that connection closed.
                    let ends = clean_start || !st.persistent();
                    if ends {
                        // the old session's will-delay and expiry timers stand down: a new
                        // connection for this client id came (MQTT-3.1.2-8)
                        st.generation += 1;
                    }
                    ends
                };
                if ends {
                    discard = Some(s);
                    let n = Arc::new(Session::new(id.clone()));
                    map.insert(id.clone(), n.clone());
                    (n, false)
                } else {
                    (s, true)
                }
            }
            None => {
                let n = Arc::new(Session::new(id.clone()));
                map.insert(id.clone(), n.clone());
                self.metrics.sessions.inc();
                (n, false)
            }
        };
        drop(map);
        if let Some(old) = discard {
            self.drop_session_state(&old);
        }
        let record = {
            let mut st = session.lock();
            st.conn = Some(Attached {
                conn_id,
                kick: Some(tx),
            });
            st.generation += 1;
            st.expiry = expiry;
            st.version = version;
            st.username = username;
            st.peer = Some(peer);
            st.disconnected_at = None;
            st.persistent().then(|| st.encode())
        };
        if let (Some(store), Some(rec)) = (&self.store, record) {
            store.write_nowait(vec![Op::Put {
                table: Table::Sessions,
                key: client_id.as_bytes().to_vec(),
                value: rec,
            }]);
        } else if let Some(store) = &self.store {
            // a clean/non-persistent session leaves nothing behind
            store.write_nowait(vec![
                Op::Delete {
                    table: Table::Sessions,
                    key: client_id.as_bytes().to_vec(),
                },
                Op::DeletePrefix {
                    table: Table::Messages,
                    prefix: message_prefix(client_id),
                },
            ]);
        }
        Attach {
            session,
            session_present: present,
            kicked: rx,
        }
    }

    /// Removes a session's subscriptions and stored data (not its map entry).
    fn drop_session_state(&self, s: &Session) {
        let subs: Vec<String> = {
            let mut st = s.lock();
            st.queue.clear();
            st.inflight.clear();
            std::mem::take(&mut st.subs).into_keys().collect()
        };
        for f in &subs {
            if self.router.unsubscribe(&s.client_id, f) {
                if let Some(c) = self.cluster() {
                    c.local_del(f);
                }
            }
        }
        self.metrics
            .subscriptions
            .set(self.router.subscription_count() as i64);
        if let Some(store) = &self.store {
            store.write_nowait(vec![
                Op::Delete {
                    table: Table::Sessions,
                    key: s.client_id.as_bytes().to_vec(),
                },
                Op::DeletePrefix {
                    table: Table::Messages,
                    prefix: message_prefix(&s.client_id),
                },
            ]);
        }
    }

    /// Whether `s` is the registered session of its client id (not replaced or removed).
    fn is_current(&self, s: &Arc<Session>) -> bool {
        self.session(&s.client_id)
            .is_some_and(|cur| Arc::ptr_eq(&cur, s))
    }

    /// Ends a session completely (clean disconnect of a non-persistent session, or expiry).
    pub fn remove_session(&self, s: &Arc<Session>) {
        let removed = {
            let mut map = self.shard(&s.client_id);
            match map.get(&s.client_id) {
                Some(cur) if Arc::ptr_eq(cur, s) => map.remove(&s.client_id).is_some(),
                _ => false,
            }
        };
        if removed {
            self.metrics.sessions.dec();
            self.drop_session_state(s);
        }
    }

    /// Unbinds a connection from its session when the connection ends; publishes or schedules the
    /// will; removes or schedules the expiry of the session.
    pub fn detach(self: &Arc<Self>, s: &Arc<Session>, conn_id: u64, will: Option<Will>) {
        let (mine, expiry, generation, record) = {
            let mut st = s.lock();
            let mine = st.conn.as_ref().is_some_and(|c| c.conn_id == conn_id);
            if mine {
                st.conn = None;
                st.disconnected_at = Some(Instant::now());
            }
            (
                mine,
                st.expiry,
                st.generation,
                st.persistent().then(|| st.encode()),
            )
        };
        if let Some(w) = will {
            let delay = w.properties.will_delay_interval.unwrap_or(0);
            let delay = if mine {
                // the will goes out when the delay ends or the session ends, whichever is first
                Some(delay.min(expiry))
            } else if delay == 0 || !self.is_current(s) {
                // taken over: no delay, or the takeover ended the session (clean start, or a
                // session that lasted only as long as its connection): the will goes out now
                Some(0)
            } else {
                // taken over by a connection that resumed the session: a new connection came
                // before the will delay elapsed, so the will is not sent (MQTT-3.1.2-8)
                None
            };
            if delay == Some(0) {
                self.publish_will(w, &s.client_id);
            } else if let Some(delay) = delay {
                let (b, s2) = (self.clone(), s.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(u64::from(delay))).await;
                    let still = {
                        let st = s2.lock();
                        st.generation == generation && st.conn.is_none()
                    };
                    if still {
                        b.publish_will(w, &s2.client_id);
                    }
                });
            }
        }
        if !mine {
            return;
        }
        if expiry == 0 {
            self.remove_session(s);
            return;
        }
        if let (Some(store), Some(rec)) = (&self.store, record) {
            store.write_nowait(vec![Op::Put {
                table: Table::Sessions,
                key: s.client_id.as_bytes().to_vec(),
                value: rec,
            }]);
        }
        if expiry != u32::MAX {
            let (b, s2) = (self.clone(), s.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(u64::from(expiry))).await;
                let expired = {
                    let st = s2.lock();
                    st.generation == generation && st.conn.is_none()
                };
                if expired {
                    tracing::info!(client_id = %s2.client_id, "session expired");
                    b.remove_session(&s2);
                }
            });
        }
    }

    fn publish_will(&self, w: Will, client_id: &Arc<str>) {
        let now = unix_now();
        let msg = Message {
            topic: Arc::from(w.topic.as_str()),
            payload: w.payload,
            qos: w.qos,
            retain: w.retain,
            publisher: client_id.clone(),
            expires_at: w
                .properties
                .message_expiry_interval
                .map(|e| now + u64::from(e)),
            payload_format_indicator: w.properties.payload_format_indicator,
            content_type: w.properties.content_type,
            response_topic: w.properties.response_topic,
            correlation_data: w.properties.correlation_data,
            user_properties: w.properties.user_properties,
        };
        tracing::debug!(client_id = %client_id, topic = %msg.topic, "publishing will");
        // a will may only go where the client could have published it
        let username = self
            .session(client_id)
            .and_then(|s| s.lock().username.clone());
        if let Some(acl) = &self.auth.acl {
            if !acl.check(username.as_deref(), client_id, &msg.topic, Access::Write) {
                self.metrics.dropped("not_authorized");
                return;
            }
        }
        let ops = self.publish(Arc::new(msg)).ops;
        if let (Some(store), false) = (&self.store, ops.is_empty()) {
            store.write_nowait(ops);
        }
    }

    /// Routes a message to every matching session, here and on other nodes (and sets/clears
    /// the retained message everywhere). Returns what the caller must await before
    /// acknowledging the publisher: store writes and remote acks.
    pub fn publish(&self, msg: Arc<Message>) -> Published {
        let mut out = Published::default();
        let cluster = self.cluster();
        if msg.retain {
            self.retain_locally(&msg, &mut out.ops);
            if let Some(c) = cluster {
                if !msg.topic.starts_with("$SYS") {
                    c.broadcast_retained(&msg);
                }
            }
        }
        let mut m = Matches::default();
        self.router.matches(&msg.topic, &mut m);
        for (client, opts) in &m.direct {
            if let Some(c) = self.deliver(client, &msg, opts, false, &mut out.ops) {
                out.congested.push(c);
            }
        }
        // $SYS stays on its node
        let remote = match cluster {
            Some(c) if !msg.topic.starts_with("$SYS") => Some((c, c.remote_matches(&msg.topic))),
            _ => None,
        };
        // shared groups: one member cluster-wide per (group, filter)
        let mut remote_shared: HashMap<Arc<str>, Vec<(String, String)>> = HashMap::new();
        let mut groups: HashMap<(String, String), GroupCandidates> = HashMap::new();
        for g in m.shared {
            groups.entry((g.group, g.filter)).or_default().0 = g.members;
        }
        if let Some((_, rm)) = &remote {
            for g in &rm.shared {
                groups
                    .entry((g.group.clone(), g.filter.clone()))
                    .or_default()
                    .1 = g.members.iter().map(|(n, _)| n.clone()).collect();
            }
        }
        for ((group, filter), (local, nodes)) in groups {
            match self.choose_shared(&group, &filter, &local, &nodes) {
                Some(Target::Local(client, opts)) => {
                    if let Some(c) = self.deliver(&client, &msg, &opts, false, &mut out.ops) {
                        out.congested.push(c);
                    }
                }
                Some(Target::Node(n)) => remote_shared.entry(n).or_default().push((group, filter)),
                None => {}
            }
        }
        if let Some((c, rm)) = remote {
            let mut direct: Vec<Arc<str>> = rm.direct.into_iter().map(|(n, _)| n).collect();
            direct.sort();
            direct.dedup();
            let mut nodes: Vec<Arc<str>> = direct
                .iter()
                .cloned()
                .chain(remote_shared.keys().cloned())
                .collect();
            nodes.sort();
            nodes.dedup();
            if !nodes.is_empty() {
                let enc = msg.encode();
                let want_ack = msg.qos != QoS::AtMostOnce;
                for n in nodes {
                    let is_direct = direct.binary_search(&n).is_ok();
                    let shared = remote_shared.remove(&n).unwrap_or_default();
                    let (rx, gate) = c.forward(&n, is_direct, shared, &enc, want_ack);
                    if let Some(rx) = rx {
                        out.acks.push(rx);
                    }
                    if let Some(g) = gate {
                        out.peer_gates.push(g);
                    }
                }
            }
        }
        if self.store.is_none() {
            out.ops.clear();
        }
        out
    }

    fn retain_locally(&self, msg: &Arc<Message>, ops: &mut Vec<Op>) {
        let topic: &str = &msg.topic;
        if msg.payload.is_empty() {
            if self.retained.set(topic, None).is_some() {
                ops.push(Op::Delete {
                    table: Table::Retained,
                    key: topic.as_bytes().to_vec(),
                });
            }
        } else {
            self.retained.set(topic, Some(msg.clone()));
            if self.store.is_some() && !topic.starts_with("$SYS") {
                ops.push(Op::Put {
                    table: Table::Retained,
                    key: topic.as_bytes().to_vec(),
                    value: msg.encode(),
                });
            }
        }
        self.metrics.retained.set(self.retained.len() as i64);
    }

    /// A retained message (or clear) from another node.
    pub async fn set_retained_from_peer(&self, msg: Arc<Message>) {
        let mut ops = Vec::new();
        self.retain_locally(&msg, &mut ops);
        if let (Some(store), false) = (&self.store, ops.is_empty()) {
            store.write_nowait(ops);
        }
    }

    /// Delivers a message another node forwarded: to local non-shared subscribers when
    /// `direct`, and to one local member of each listed shared group. Never forwards again.
    pub async fn deliver_forwarded(
        &self,
        msg: Arc<Message>,
        direct: bool,
        shared: &[(String, String)],
    ) {
        self.metrics.cluster_received.inc();
        let mut ops = Vec::new();
        let mut congested = Vec::new();
        let mut m = Matches::default();
        self.router.matches(&msg.topic, &mut m);
        if direct {
            for (client, opts) in &m.direct {
                congested.extend(self.deliver(client, &msg, opts, false, &mut ops));
            }
        }
        for (group, filter) in shared {
            if let Some(g) = m
                .shared
                .iter()
                .find(|g| g.group == *group && g.filter == *filter)
            {
                if let Some((client, opts)) = self.pick_shared(group, filter, &g.members) {
                    congested.extend(self.deliver(&client, &msg, &opts, false, &mut ops));
                }
            }
        }
        if let (Some(store), false) = (&self.store, ops.is_empty()) {
            let _ = store.write(ops).await;
        }
        // a slow local subscriber slows this peer channel (and through its gate, the remote
        // publishers) instead of losing what they send
        let limit = self.cfg.limits.max_offline_messages.max(1);
        for c in congested {
            wait_for_space(&c, limit).await;
        }
    }

    /// Chooses where a shared group's copy goes, by policy: a local member or another node.
    fn choose_shared(
        &self,
        group: &str,
        filter: &str,
        local: &[(Arc<str>, SubOptions)],
        nodes: &[Arc<str>],
    ) -> Option<Target> {
        let local_pick = |b: &Self| {
            b.pick_shared(group, filter, local)
                .map(|(c, o)| Target::Local(c, o))
        };
        match self.cfg.shared_policy {
            SharedPolicy::LocalOnly => local_pick(self),
            SharedPolicy::PreferLocal if !local.is_empty() => local_pick(self),
            policy => {
                // every local member and every remote node is one candidate
                let n = local.len() + nodes.len();
                if n == 0 {
                    return None;
                }
                let i = if policy == SharedPolicy::Random {
                    (self.next_random() % n as u64) as usize
                } else {
                    let key = format!("{group}\u{0}{filter}\u{0}cluster");
                    let mut m = self.shared_rr[shard_of(&key)]
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    let c = m.entry(key).or_insert(0);
                    *c = c.wrapping_add(1);
                    (*c % n as u64) as usize
                };
                if i < local.len() {
                    local.get(i).map(|(c, o)| Target::Local(c.clone(), *o))
                } else {
                    nodes.get(i - local.len()).map(|n| Target::Node(n.clone()))
                }
            }
        }
    }

    /// Closes every client connection of this node with "server shutting down" (v5 reason
    /// 0x8B) at shutdown. Sessions stay (persisted with `data_dir`) and wills are not published:
    /// a planned stop is not a client failure, and the clients reconnect through the LB.
    /// Returns how many connections were told.
    pub fn close_all_connections(&self) -> usize {
        let mut n = 0;
        for shard in &self.sessions {
            let sessions: Vec<Arc<Session>> = shard
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned()
                .collect();
            for s in sessions {
                let mut st = s.lock();
                if let Some(k) = st.conn.as_mut().and_then(|c| c.kick.take()) {
                    let _ = k.send(crate::protocol::reason::SERVER_SHUTTING_DOWN);
                    n += 1;
                }
            }
        }
        n
    }

    /// Hands this node's session of `client_id` to another node: closes its connection, and
    /// (unless the new connection starts clean) exports subscriptions and queued messages.
    pub fn export_session(
        &self,
        client_id: &str,
        clean_start: bool,
    ) -> Option<(Vec<u8>, Vec<Vec<u8>>)> {
        let s = self.session(client_id)?;
        let export = {
            let mut st = s.lock();
            if let Some(mut old) = st.conn.take() {
                if let Some(k) = old.kick.take() {
                    let _ = k.send(crate::protocol::reason::SESSION_TAKEN_OVER);
                }
                self.metrics.takeovers.inc();
            }
            (!clean_start && st.persistent()).then(|| {
                // in-flight messages keep their packet id and state (MQTT-4.4.0-1: they are
                // resent with DUP, PUBREL for those past PUBREC); then the queue
                let tag = |kind: u8, pid: u16, o: &Outgoing| {
                    let mut v = vec![kind];
                    v.extend_from_slice(&pid.to_be_bytes());
                    v.extend_from_slice(&encode_outgoing(o));
                    v
                };
                let queued: Vec<Vec<u8>> = st
                    .inflight
                    .iter()
                    .map(|(pid, state, o)| {
                        let kind = match state {
                            crate::session::Await::PubAck => 1,
                            crate::session::Await::PubRec => 2,
                            crate::session::Await::PubComp => 3,
                        };
                        tag(kind, *pid, o)
                    })
                    .chain(st.queue.iter().map(|o| tag(0, 0, o)))
                    .collect();
                (st.encode(), queued)
            })
        };
        self.metrics.cluster_handovers.inc();
        self.remove_session(&s);
        export
    }

    fn import_session(&self, id: &Arc<str>, rec: &[u8], queued: &[Vec<u8>]) {
        let Some(mut st) = State::decode(rec) else {
            tracing::warn!(client_id = %id, "unreadable session from a peer ignored");
            return;
        };
        let mut ops = Vec::new();
        for q in queued {
            let (Some(&kind), Some(pid)) = (q.first(), q.get(1..3)) else {
                continue;
            };
            let pid = u16::from_be_bytes([pid[0], pid[1]]);
            if let Some(mut o) = decode_outgoing(&q[3..], 0) {
                if self.store.is_some() && o.qos != QoS::AtMostOnce {
                    o.seq = st.next_seq;
                    st.next_seq += 1;
                    ops.push(Op::Put {
                        table: Table::Messages,
                        key: message_key(id, o.seq),
                        value: encode_outgoing(&o),
                    });
                }
                let state = match kind {
                    1 => Some(crate::session::Await::PubAck),
                    2 => Some(crate::session::Await::PubRec),
                    3 => Some(crate::session::Await::PubComp),
                    _ => None,
                };
                match state {
                    Some(state) => st.inflight.push_back((pid, state, o)),
                    None => st.queue.push_back(o),
                }
            }
        }
        let subs: Vec<(String, Sub)> = st.subs.iter().map(|(f, s)| (f.clone(), *s)).collect();
        let n = st.queue.len();
        let s = Arc::new(Session::restored(id.clone(), st));
        {
            // the handed-over session is the newer one (the client was last connected there):
            // it replaces whatever stale session this node still held
            let stale = self.shard(id).insert(id.clone(), s.clone());
            if let Some(old) = stale {
                self.metrics.sessions.dec();
                self.drop_session_state(&old);
            }
        }
        self.metrics.sessions.inc();
        for (f, sub) in subs {
            if self.router.subscribe(id, &f, sub_options(&sub)) {
                if let Some(c) = self.cluster() {
                    c.local_add(&f);
                }
            }
        }
        self.metrics
            .subscriptions
            .set(self.router.subscription_count() as i64);
        if let Some(store) = &self.store {
            ops.push(Op::Put {
                table: Table::Sessions,
                key: id.as_bytes().to_vec(),
                value: s.lock().encode(),
            });
            store.write_nowait(ops);
        }
        tracing::info!(client_id = %id, queued = n, "session taken over from another node");
    }

    fn pick_shared(
        &self,
        group: &str,
        filter: &str,
        members: &[(Arc<str>, SubOptions)],
    ) -> Option<(Arc<str>, SubOptions)> {
        if members.is_empty() {
            return None;
        }
        // online members first: a message should not wait in an offline member's queue while
        // another member could take it now
        let online: Vec<&(Arc<str>, SubOptions)> = members
            .iter()
            .filter(|(c, _)| self.session(c).is_some_and(|s| s.lock().conn.is_some()))
            .collect();
        let pool: Vec<&(Arc<str>, SubOptions)> = if online.is_empty() {
            members.iter().collect()
        } else {
            online
        };
        let idx = match self.cfg.shared_policy {
            SharedPolicy::Random => (self.next_random() % pool.len() as u64) as usize,
            // on one node, local = all: these spread in turn
            SharedPolicy::RoundRobin | SharedPolicy::PreferLocal | SharedPolicy::LocalOnly => {
                let key = format!("{group}\u{0}{filter}");
                let mut m = self.shared_rr[shard_of(&key)]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let c = m.entry(key).or_insert(0);
                *c = c.wrapping_add(1);
                (*c % pool.len() as u64) as usize
            }
        };
        pool.get(idx).map(|(c, o)| (c.clone(), *o))
    }

    fn next_random(&self) -> u64 {
        let mut x = self.rng.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        x ^= x >> 30;
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x ^= x >> 27;
        x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }

    /// Queues one message for one session (bounded queue, drop oldest); `as_retained` marks a
    /// delivery of a retained message at subscribe time (RETAIN flag set).
    pub fn deliver(
        &self,
        client: &str,
        msg: &Arc<Message>,
        opts: &SubOptions,
        as_retained: bool,
        ops: &mut Vec<Op>,
    ) -> Option<Arc<Session>> {
        if opts.no_local && *msg.publisher == *client {
            return None;
        }
        let s = self.session(client)?;
        self.deliver_to(s, msg, opts, as_retained, ops)
    }

    /// [`Broker::deliver`] to a session already looked up.
    fn deliver_to(
        &self,
        s: Arc<Session>,
        msg: &Arc<Message>,
        opts: &SubOptions,
        as_retained: bool,
        ops: &mut Vec<Op>,
    ) -> Option<Arc<Session>> {
        let client = &*s.client_id;
        let qos = delivery_qos(msg, opts);
        let mut st = s.lock();
        if let Some(acl) = &self.auth.acl {
            if !acl.check(st.username.as_deref(), client, &msg.topic, Access::Read) {
                return None;
            }
        }
        let online = st.conn.is_some();
        if !online && (!st.persistent() || qos == QoS::AtMostOnce) {
            return None;
        }
        let mut seq = 0;
        if qos != QoS::AtMostOnce && st.persistent() && self.store.is_some() {
            seq = st.next_seq;
            st.next_seq += 1;
        }
        let out = Outgoing {
            msg: msg.clone(),
            qos,
            retain: if as_retained {
                true
            } else {
                opts.retain_as_published && msg.retain
            },
            sub_ids: opts.ids().collect(),
            seq,
        };
        if seq != 0 {
            ops.push(Op::Put {
                table: Table::Messages,
                key: message_key(client, seq),
                value: encode_outgoing(&out),
            });
        }
        st.queue.push_back(out);
        let limit = self.cfg.limits.max_offline_messages.max(1);
        // a connected subscriber that falls behind holds its publishers back (they wait for
        // `space` before reading more) instead of losing messages; only far past the limit, or
        // for an offline session, the oldest are dropped
        let hard = if online {
            limit.saturating_mul(OVERFLOW_FACTOR)
        } else {
            limit
        };
        let congested = online && st.queue.len() >= limit;
        while st.queue.len() > hard {
            if let Some(old) = st.queue.pop_front() {
                self.metrics.dropped("queue_full");
                if old.seq != 0 {
                    ops.push(Op::Delete {
                        table: Table::Messages,
                        key: message_key(client, old.seq),
                    });
                }
            }
        }
        drop(st);
        if online {
            s.notify.notify_one();
        }
        congested.then_some(s)
    }

    /// Adds a subscription for a session; returns whether it is new (for Retain Handling 1).
    pub fn subscribe(&self, s: &Session, filter: &str, sub: Sub) -> bool {
        if self
            .router
            .subscribe(&s.client_id, filter, sub_options(&sub))
        {
            if let Some(c) = self.cluster() {
                c.local_add(filter);
            }
        }
        let new = s.lock().subs.insert(filter.to_string(), sub).is_none();
        self.metrics
            .subscriptions
            .set(self.router.subscription_count() as i64);
        new
    }

    /// Removes a subscription; true when it existed.
    pub fn unsubscribe(&self, s: &Session, filter: &str) -> bool {
        let existed = s.lock().subs.remove(filter).is_some();
        if self.router.unsubscribe(&s.client_id, filter) {
            if let Some(c) = self.cluster() {
                c.local_del(filter);
            }
        }
        self.metrics
            .subscriptions
            .set(self.router.subscription_count() as i64);
        existed
    }

    /// Persists a session record (after subscription changes); resolves when durable.
    pub async fn persist_session(&self, s: &Session) {
        let rec = {
            let st = s.lock();
            st.persistent().then(|| st.encode())
        };
        if let (Some(store), Some(rec)) = (&self.store, rec) {
            let _ = store
                .write(vec![Op::Put {
                    table: Table::Sessions,
                    key: s.client_id.as_bytes().to_vec(),
                    value: rec,
                }])
                .await;
        }
    }

    /// The retained messages a new subscription to `filter` is sent (a snapshot its connection
    /// streams, see [`crate::feed`]).
    pub fn retained_snapshot(&self, filter: &str) -> Vec<Arc<Message>> {
        self.retained.matching_messages(filter)
    }

    /// Retained messages a connection had not sent when it ended: a session that goes on
    /// (persistent, or resumed by another connection) queues them like any other message,
    /// within `max_offline_messages` (the oldest beyond it are dropped, `queue_full`).
    pub fn requeue_retained(
        &self,
        s: &Arc<Session>,
        rest: impl Iterator<Item = (Arc<Message>, SubOptions)>,
    ) {
        if !self.is_current(s) {
            return;
        }
        // only QoS 1/2 wait for an offline session; skip the excess up front instead of
        // queueing and dropping (and storing and deleting) each of them
        let rest: Vec<_> = rest
            .filter(|(m, o)| delivery_qos(m, o) != QoS::AtMostOnce)
            .collect();
        let limit = self.cfg.limits.max_offline_messages.max(1);
        let excess = rest.len().saturating_sub(limit);
        self.metrics.dropped_many("queue_full", excess as u64);
        let mut ops = Vec::new();
        for (m, o) in rest.into_iter().skip(excess) {
            self.deliver_to(s.clone(), &m, &o, true, &mut ops);
        }
        if let (Some(store), false) = (&self.store, ops.is_empty()) {
            store.write_nowait(ops);
        }
    }

    /// Forgets acknowledged stored messages.
    pub fn acked(&self, client_id: &str, seq: u64) {
        if let (Some(store), true) = (&self.store, seq != 0) {
            store.write_nowait(vec![Op::Delete {
                table: Table::Messages,
                key: message_key(client_id, seq),
            }]);
        }
    }
}

/// Waits (bounded) until a connected session's backlog fell to half its limit.
pub async fn wait_for_space(c: &Session, limit: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let space = c.space.notified();
        tokio::pin!(space);
        space.as_mut().enable();
        let backlog = {
            let st = c.lock();
            if st.conn.is_some() {
                st.queue.len()
            } else {
                0
            }
        };
        if backlog < limit / 2 + 1 {
            break;
        }
        if tokio::time::timeout_at(deadline, space).await.is_err() {
            break;
        }
    }
}

/// A shared group's local members and the other nodes with members.
type GroupCandidates = (Vec<(Arc<str>, SubOptions)>, Vec<Arc<str>>);

/// Where a shared group's copy goes.
enum Target {
    /// A member on this node.
    Local(Arc<str>, SubOptions),
    /// Another node (which picks one of its members).
    Node(Arc<str>),
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
