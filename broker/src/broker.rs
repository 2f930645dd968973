//! The broker core shared by every connection: it owns the session [`Registry`], the
//! [`Routing`] state, auth, the store and the metrics, and runs the publish path (plan →
//! per-session queue → notify, and copies for other nodes through [`Peers`]). The cluster sees
//! the core only as a [`LocalNode`]. Imports [`crate::session`], [`crate::routing`], the
//! boundary of [`crate::cluster`] (never its frames) and the leaf modules.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::{Access, Auth};
use crate::cluster::{Ack, Gate, Peers};
use crate::config::Config;
use crate::limits::Limits;
use crate::message::{unix_now, Message};
use crate::metrics::Metrics;
use crate::protocol::{QoS, Will};
use crate::routing::retained_versions::{unix_ms, RetainedSet};
use crate::routing::{Matches, Readiness, Router, Routing, SubOptions};
use crate::session::{
    message_key, QueueRules, Registry, Session, SessionRef, Sub, Subscriptions, Writes,
};
use crate::store::{Op, Store, StoreError, Table};

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

/// The retained set of a node: tombstones are kept only in a cluster, where an older copy can
/// come back.
fn retained_set(cfg: &Config, metrics: &Metrics) -> RetainedSet {
    let ttl = cfg
        .cluster
        .as_ref()
        .map_or(Duration::ZERO, |c| c.retained_tombstone_ttl);
    let (count, bytes) = Limits::from_config(&cfg.limits).retained_caps();
    RetainedSet::new(&cfg.name, ttl).with_caps(count, bytes, metrics)
}

/// The node's shared state.
pub struct Broker {
    cfg: Config,
    registry: Arc<Registry>,
    routing: Routing,
    auth: Auth,
    store: Option<Store>,
    metrics: Arc<Metrics>,
    started: Instant,
    /// Session replication (a cluster with `data_dir`).
    replica: Option<Arc<crate::replica::Replication>>,
    /// The drain handshake (`POST /api/drain`, SIGTERM): read by every CONNECT.
    drain: crate::drain::Drain,
}

/// What a publish set in motion: store writes to make durable and remote nodes' acks to await
/// before acknowledging the publisher.
#[derive(Default)]
pub struct Published {
    /// Store writes (the deliveries' own are queued already).
    pub writes: Writes,
    /// Acks of forwarded copies (QoS 1/2).
    pub acks: Vec<Ack>,
    /// Connected sessions whose backlog is over the limit: the publisher waits for them.
    pub congested: Vec<Arc<Session>>,
    /// Peers whose forward queue is over its limit: the publisher waits for them too.
    pub peer_gates: Vec<Arc<Gate>>,
}

impl Broker {
    /// Builds the broker: takes the auth files the config loaded, opens the store and restores
    /// sessions, queues and retained messages from it.
    pub fn new(cfg: Config) -> Result<Arc<Broker>, BrokerError> {
        let store = match &cfg.data_dir {
            Some(d) => Some(Store::open(d)?),
            None => None,
        };
        let metrics = Arc::new(Metrics::new());
        let registry = Arc::new(Registry::new(
            store.clone(),
            metrics.clone(),
            cfg.limits.max_session_expiry,
        ));
        let replica = match (&store, &cfg.cluster) {
            (Some(store), Some(c)) => Some(crate::replica::Replication::new(
                &cfg.name,
                store.clone(),
                registry.clone(),
                metrics.clone(),
                c.session_replicas > 1,
                c.replica_sync_rate,
            )),
            _ => None,
        };
        let drain = crate::drain::Drain::new(metrics.drain_moved.clone());
        let b = Broker {
            // the files were loaded (and checked) by the config's second stage
            auth: Auth::new(
                cfg.auth.allow_anonymous,
                cfg.auth.passwords.clone(),
                cfg.auth.acl.clone(),
                cfg.auth.max_concurrent_password_checks,
                cfg.auth.trust_claimed_usernames,
            )
            .with_services(
                cfg.auth.http.clone(),
                cfg.auth.http_acl.clone(),
                cfg.auth.postgres.clone(),
            ),
            registry,
            replica,
            routing: Routing::new(cfg.shared_policy, retained_set(&cfg, &metrics)),
            cfg,
            store,
            metrics,
            started: Instant::now(),
            drain,
        };
        b.restore()?;
        Ok(Arc::new(b))
    }

    fn restore(&self) -> Result<(), BrokerError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let (restored, queued) = self.registry.restore()?;
        self.routing.restore(store)?;
        self.retained_gauges();
        let retained = self.routing.retained().len();
        let tombstones = self.routing.retained().tombstones();
        if restored > 0 || queued > 0 {
            tracing::info!(
                sessions = restored,
                queued_messages = queued,
                retained,
                retained_tombstones = tombstones,
                "restored from the store"
            );
        }
        Ok(())
    }

    /// The drain handshake's state.
    pub fn drain(&self) -> &crate::drain::Drain {
        &self.drain
    }

    /// Starts draining this node (`cause`: `api`, `SIGTERM`): new clients are refused with "use
    /// another server", and the node moves its clients to its peers and stops once empty. False
    /// without `[cluster]` (nowhere to move them) or when it drains already.
    pub fn start_drain(&self, cause: &'static str) -> bool {
        if self.cfg.cluster.is_none() || !self.drain.start(cause) {
            return false;
        }
        self.metrics.draining.set(1);
        tracing::info!(node = %self.cfg.name, cause, "draining: new clients are told to use another server");
        true
    }

    /// The config the node runs with.
    pub fn cfg(&self) -> &Config {
        &self.cfg
    }

    /// Auth files and settings.
    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// The durable store (`data_dir`).
    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    /// The node's counters and gauges.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// When the node started (uptime).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Local subscriptions by filter.
    pub fn router(&self) -> &Router<SessionRef> {
        self.subs().trie()
    }

    /// Retained messages.
    pub fn retained(&self) -> &RetainedSet {
        self.routing.retained()
    }

    fn subs(&self) -> &Subscriptions {
        self.registry.subs()
    }

    /// Joins this broker to a cluster layer (once, before serving); `stop` ends session
    /// replication's copy loop.
    pub fn set_cluster(&self, c: Arc<dyn Peers>, stop: tokio::sync::watch::Receiver<bool>) {
        if let Some(r) = &self.replica {
            r.start(c.clone(), stop);
        }
        self.registry.set_peers(c);
    }

    /// Session replication, in a cluster with `data_dir`.
    pub fn replica(&self) -> Option<&Arc<crate::replica::Replication>> {
        self.replica.as_ref()
    }

    /// The other nodes, when clustered.
    pub fn cluster(&self) -> Option<&Arc<dyn Peers>> {
        self.subs().peers()
    }

    /// The session of a client id.
    pub fn session(&self, id: &str) -> Option<Arc<Session>> {
        self.registry.get(id)
    }

    /// Every session (admin, $SYS).
    pub fn session_count(&self) -> usize {
        self.registry.count()
    }

    /// A new connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.registry.next_conn_id()
    }

    /// The sessions: attach (with takeover) goes straight to them.
    pub fn sessions(&self) -> &Registry {
        &self.registry
    }

    /// Ends a session completely (clean disconnect of a non-persistent session, or expiry).
    pub fn remove_session(&self, s: &Arc<Session>) {
        self.registry.remove_session(s);
    }

    /// Unbinds a connection from its session when the connection ends; publishes or schedules the
    /// will (with the identity of the client that set it, `username`: not of whoever holds
    /// the session when it is published); removes or schedules the expiry of the session.
    pub fn detach(
        self: &Arc<Self>,
        s: &Arc<Session>,
        conn_id: u64,
        will: Option<(Will, Option<String>)>,
    ) {
        let (b, id) = (self.clone(), s.client_id.clone());
        let (will, user) = will.unzip();
        self.registry.detach(s, conn_id, will, move |w| {
            b.publish_will(w, &id, user.flatten().as_deref())
        });
    }

    /// Closes every client connection of this node with "server shutting down" (v5 reason
    /// 0x8B) at shutdown. Sessions stay (persisted with `data_dir`) and wills are not published:
    /// a planned stop is not a client failure, and the clients reconnect through the LB.
    /// Returns how many connections were told.
    pub fn close_all_connections(&self) -> usize {
        self.registry.close_all_connections()
    }

    fn publish_will(&self, w: Will, client_id: &Arc<str>, username: Option<&str>) {
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
        // checked at CONNECT already; the ACL is read at start only, so this is a backstop
        if let Some(acl) = self.auth.acl() {
            if !acl.check(username, client_id, &msg.topic, Access::Write) {
                self.metrics.dropped("not_authorized");
                return;
            }
        }
        let writes = self.publish(Arc::new(msg)).writes;
        if let Some(store) = &self.store {
            writes.submit_nowait(store);
        }
    }

    /// Routes a message to every matching session, here and on other nodes (and sets/clears
    /// the retained message everywhere). Returns what the caller must await before
    /// acknowledging the publisher: store writes and remote acks.
    pub fn publish(&self, msg: Arc<Message>) -> Published {
        let mut out = Published::default();
        let peers = self.cluster();
        // $SYS stays on its node
        let sys = msg.topic.starts_with("$SYS");
        if msg.retain {
            let version = self
                .routing
                .retain(&msg, self.store.is_some(), &mut out.writes.ops);
            self.retained_gauges();
            if let (Some(c), false) = (peers, sys) {
                c.broadcast_retained(&msg, &version);
            }
        }
        let mut m = Matches::default();
        self.router().matches(&msg.topic, &mut m);
        let remote = match peers {
            Some(c) if !sys => Some(c.remote_matches(&msg.topic)),
            _ => None,
        };
        let plan = self
            .routing
            .plan(m, remote, &|c: &SessionRef| self.readiness(c));
        for (client, opts) in &plan.local {
            out.congested
                .extend(self.deliver(client, &msg, opts, false, &mut out.writes));
        }
        if let (Some(c), false) = (peers, plan.remote.is_empty()) {
            // one buffer for every peer's copy (each frame holds a reference, not a copy; the
            // last peer's takes the buffer itself: one peer, no reference count to set up)
            let enc = bytes::Bytes::from(msg.encode());
            let want_ack = msg.qos != QoS::AtMostOnce;
            let copies = std::iter::repeat_n(enc, plan.remote.len());
            for (r, enc) in plan.remote.into_iter().zip(copies) {
                let f = c.forward(&r.node, r.direct, r.shared, enc, want_ack);
                out.acks.extend(f.ack);
                out.peer_gates.extend(f.gate);
            }
        }
        if self.store.is_none() {
            out.writes.ops.clear();
        }
        out
    }

    /// Sets the retained-message and tombstone gauges from the retained set.
    fn retained_gauges(&self) {
        let r = self.routing.retained();
        self.metrics.retained.set(r.len() as i64);
        self.metrics.retained_tombstones.set(r.tombstones() as i64);
    }

    /// Forgets tombstones of retained clears once `[cluster] retained_tombstone_ttl` has passed,
    /// checking a few times per ttl (at most once a minute), until `stop`.
    pub async fn expire_tombstones(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let ttl = self.routing.retained().ttl();
        if ttl.is_zero() {
            return;
        }
        let every = (ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = tokio::time::sleep(every) => {}
            }
            let n = self
                .routing
                .retained()
                .purge(unix_ms(), self.store.as_ref());
            if n > 0 {
                tracing::debug!(tombstones = n, "expired retained tombstones forgotten");
                self.retained_gauges();
            }
        }
    }

    /// How ready a local client is to take a shared group's message (see
    /// [`crate::session::Session::readiness`]).
    fn readiness(&self, client: &SessionRef) -> Readiness {
        self.registry
            .resolve(client)
            .map_or(Readiness::Offline, |s| s.readiness())
    }

    /// What every session's queue is held to.
    fn queue_rules(&self) -> QueueRules<'_> {
        QueueRules {
            acl: self.auth.acl(),
            store: self.store.as_ref(),
            limit: self.cfg.limits.max_offline_messages.max(1),
            flow: self.cfg.flow,
            metrics: &self.metrics,
        }
    }

    /// Queues one message for one session (bounded queue, drop oldest); `as_retained` marks a
    /// delivery of a retained message at subscribe time (RETAIN flag set).
    pub fn deliver(
        &self,
        client: &SessionRef,
        msg: &Arc<Message>,
        opts: &SubOptions,
        as_retained: bool,
        writes: &mut Writes,
    ) -> Option<Arc<Session>> {
        if opts.no_local && *msg.publisher == **client.id() {
            return None;
        }
        self.registry
            .resolve(client)?
            .enqueue(msg, opts, as_retained, &self.queue_rules(), writes)
    }

    /// Delivers a message another node forwarded (see [`LocalNode::deliver_forwarded`]): the
    /// copies now, their durability (and a slow subscriber's space) in the future returned;
    /// `None` when there is nothing to wait for (no store write, no congested subscriber).
    fn deliver_from_peer(
        &self,
        msg: Arc<Message>,
        direct: bool,
        shared: &[(String, String)],
    ) -> Option<impl std::future::Future<Output = bool> + Send + 'static> {
        self.metrics.cluster_received.inc();
        let mut writes = Writes::default();
        let mut congested = Vec::new();
        let mut m = Matches::default();
        self.router().matches(&msg.topic, &mut m);
        let ready = |c: &SessionRef| self.readiness(c);
        for (client, opts) in self.routing.plan_forwarded(m, direct, shared, &ready) {
            congested.extend(self.deliver(&client, &msg, &opts, false, &mut writes));
        }
        let durable = match (&self.store, writes.is_empty()) {
            (Some(store), false) => Some(writes.submit(store)),
            _ => None,
        };
        if durable.is_none() && congested.is_empty() {
            return None;
        }
        let hold = self.cfg.flow.publisher_hold;
        Some(async move {
            if let Some(durable) = durable {
                if let Err(e) = durable.await {
                    tracing::error!(error = %e, topic = %msg.topic, "store write failed: forwarded copy not acknowledged");
                    return false;
                }
            }
            // a congested local subscriber delays this copy's ack (and so the origin's
            // publisher) for at most `publisher_hold`; other frames go on
            for c in congested {
                c.wait_for_space(hold).await;
            }
            true
        })
    }

    /// Adds a subscription for a session; returns whether it is new (for Retain Handling 1).
    pub fn subscribe(&self, s: &Arc<Session>, filter: &str, sub: Sub) -> bool {
        self.subs().subscribe(s, filter, sub)
    }

    /// Removes a subscription; true when it existed.
    pub fn unsubscribe(&self, s: &Session, filter: &str) -> bool {
        self.subs().unsubscribe(s, filter)
    }

    /// Persists a session's subscription changes (`None`: removed), one store row per filter;
    /// resolves when durable.
    pub async fn persist_subscriptions(
        &self,
        s: &Session,
        changed: &[(String, Option<Sub>)],
    ) -> Result<(), crate::store::StoreError> {
        self.registry.persist_subs(s, changed).await
    }

    /// Arms the expiry of the sessions restored from the store (once, before serving).
    pub fn expire_restored(&self) {
        self.registry.expire_restored();
    }

    /// The retained messages a new subscription to `filter` is sent (a snapshot its connection
    /// streams, see [`crate::connection::feed`]).
    pub fn retained_snapshot(&self, filter: &str) -> Vec<Arc<Message>> {
        self.routing.retained().matching_messages(filter)
    }

    /// Retained messages a connection had not sent when it ended: a session that goes on
    /// (persistent, or resumed by another connection) queues them like any other message,
    /// within `max_offline_messages` (the oldest beyond it are dropped, `queue_full`).
    pub fn requeue_retained(
        &self,
        s: &Arc<Session>,
        rest: impl Iterator<Item = (Arc<Message>, SubOptions)>,
    ) {
        if !self.registry.is_current(s) {
            return;
        }
        // only QoS 1/2 wait for an offline session; skip the excess up front instead of
        // queueing and dropping (and storing and deleting) each of them
        let rest: Vec<_> = rest
            .filter(|(m, o)| o.delivery_qos(m.qos) != QoS::AtMostOnce)
            .collect();
        let rules = self.queue_rules();
        let excess = rest.len().saturating_sub(rules.limit);
        self.metrics.dropped_many("queue_full", excess as u64);
        let mut writes = Writes::default();
        for (m, o) in rest.into_iter().skip(excess) {
            s.enqueue(&m, &o, true, &rules, &mut writes);
        }
        if let Some(store) = &self.store {
            writes.submit_nowait(store);
        }
    }

    /// Forgets acknowledged stored messages.
    pub fn acked(&self, client_id: &str, seq: u64) {
        if seq != 0 {
            self.write_nowait(vec![Op::Delete {
                table: Table::Messages,
                key: message_key(client_id, seq),
            }]);
        }
    }

    /// Hands store operations to the store without waiting (nothing without `data_dir`).
    fn write_nowait(&self, ops: Vec<Op>) {
        if let (Some(store), false) = (&self.store, ops.is_empty()) {
            store.write_nowait(ops);
        }
    }
}

#[path = "broker_node.rs"]
mod node;

#[cfg(test)]
#[path = "broker_tests.rs"]
mod tests;
