//! The node's sessions by client id (a sharded map, so connects of different clients rarely
//! contend) and their lifecycle: restore from the store, attach with takeover, detach with the
//! will and expiry timers (`timers.rs`: armed per session, stood down when its client comes
//! back), removal, and the handover to and from other nodes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::oneshot;

use super::record::{
    decode_handover, decode_stored, decode_sub_row, encode_queued, forget, queued_put, record_put,
    sub_delete, sub_put,
};
use super::subs::Subscriptions;
use super::{sub_options, Attached, Await, Session, SessionRef, State, Sub};
use crate::cluster::{Peers, SessionExport};
use crate::metrics::Metrics;
use crate::protocol::{reason, QoS, Version, Will};
use crate::routing::shared::{shard_of, SHARDS};
use crate::routing::SubOptions;
use crate::store::{Op, Store, StoreError, Table};

#[path = "timers.rs"]
mod timers;
use timers::Timers;

/// What `attach` decided for a connecting client.
pub struct Attach {
    /// The session now bound to this connection.
    pub session: Arc<Session>,
    /// CONNACK Session Present.
    pub session_present: bool,
    /// Fires when another connection takes this session over.
    pub kicked: oneshot::Receiver<u8>,
}

/// Every session of this node, and the local subscription table kept in step with them.
pub struct Registry {
    shards: Vec<Mutex<HashMap<Arc<str>, Arc<Session>>>>,
    subs: Subscriptions,
    conn_seq: AtomicU64,
    pub(super) store: Option<Store>,
    pub(super) metrics: Arc<Metrics>,
    /// The will-delay and expiry timers of offline sessions.
    timers: Timers,
    /// `[limits] max_session_expiry` (0 = no cap), applied to sessions restored from the store.
    expiry_cap: u32,
}

impl Registry {
    /// An empty registry writing session records to `store` (when `data_dir` is set);
    /// sessions it restores expire within `expiry_cap` seconds (0 = no cap).
    pub fn new(store: Option<Store>, metrics: Arc<Metrics>, expiry_cap: u32) -> Registry {
        Registry {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            subs: Subscriptions::new(metrics.clone()),
            conn_seq: AtomicU64::new(0),
            timers: Timers::new(metrics.session_timers.clone()),
            store,
            metrics,
            expiry_cap,
        }
    }

    /// The local subscriptions (and the cluster they are announced to).
    pub fn subs(&self) -> &Subscriptions {
        &self.subs
    }

    /// Joins the cluster (once, before serving): routes restored from the store become this
    /// node's announced routes.
    pub fn set_peers(&self, c: Arc<dyn Peers>) {
        for f in self.subs.trie().filters() {
            for _ in 0..self.holders(&f) {
                c.local_add(&f);
            }
        }
        self.subs.set_peers(c);
    }

    /// How many sessions subscribe to `f`.
    fn holders(&self, f: &str) -> usize {
        let mut n = 0;
        for shard in &self.shards {
            let m = shard.lock().unwrap_or_else(|p| p.into_inner());
            n += m.values().filter(|s| s.lock().subs.contains_key(f)).count();
        }
        n
    }

    /// Restores sessions, their subscriptions and queued messages from the store; returns how
    /// many sessions and messages. Restored sessions are offline: their expiry counts from now
    /// (see [`Registry::expire_restored`]), capped by `max_session_expiry`. A record written
    /// before subscriptions had rows of their own is moved to rows here.
    pub fn restore(&self) -> Result<(usize, usize), StoreError> {
        let Some(store) = &self.store else {
            return Ok((0, 0));
        };
        let mut restored = 0usize;
        let mut migrate = Vec::new();
        for (k, v) in store.scan(Table::Sessions)? {
            let Ok(id) = String::from_utf8(k) else {
                continue;
            };
            let Some(mut st) = State::decode(&v) else {
                tracing::warn!(client_id = %id, "unreadable session record skipped");
                continue;
            };
            if self.expiry_cap != 0 {
                st.expiry = st.expiry.min(self.expiry_cap);
            }
            let id: Arc<str> = Arc::from(id);
            for (f, s) in &st.subs {
                migrate.push(sub_put(&id, f, s));
            }
            if !st.subs.is_empty() {
                migrate.push(record_put(&id, st.encode()));
            }
            let subs: Vec<(String, SubOptions)> = st
                .subs
                .iter()
                .map(|(f, s)| (f.clone(), sub_options(s)))
                .collect();
            let s = Arc::new(Session::restored(id.clone(), st));
            for (f, o) in subs {
                self.subs.trie().subscribe(&SessionRef::new(&s), &f, o);
            }
            self.shard(&id).insert(id, s);
            restored += 1;
        }
        for (k, v) in store.scan(Table::Subscriptions)? {
            let Some((id, f, sub)) = decode_sub_row(&k, &v) else {
                continue;
            };
            let Some(s) = self.get(&id) else {
                migrate.push(Op::Delete {
                    table: Table::Subscriptions,
                    key: k,
                });
                continue;
            };
            self.subs
                .trie()
                .subscribe(&SessionRef::new(&s), &f, sub_options(&sub));
            s.lock().subs.insert(f, sub);
        }
        if !migrate.is_empty() {
            store.write_nowait(migrate);
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
            let Some(s) = self.get(id) else {
                store.write_nowait(vec![Op::Delete {
                    table: Table::Messages,
                    key: k.clone(),
                }]);
                continue;
            };
            if let Some((released, o)) = decode_stored(&v, seq) {
                let mut st = s.lock();
                st.next_seq = st.next_seq.max(seq + 1);
                match released {
                    // past PUBREC: resumed with its PUBREL (MQTT-4.4.0-1), never sent again
                    Some(pid) => st.inflight.push_back((pid, Await::PubComp, o)),
                    None => st.queue.push_back(o),
                }
                queued += 1;
            }
        }
        let now = Instant::now();
        for s in self.all() {
            s.lock().disconnected_at = Some(now);
        }
        self.metrics.sessions.set(restored as i64);
        self.subs.count_changed();
        Ok((restored, queued))
    }

    pub(super) fn shard(&self, id: &str) -> MutexGuard<'_, HashMap<Arc<str>, Arc<Session>>> {
        self.shards[shard_of(id)]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Every session, one shard locked at a time.
    pub(super) fn all(&self) -> Vec<Arc<Session>> {
        let mut v = Vec::new();
        for shard in &self.shards {
            v.extend(
                shard
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .cloned(),
            );
        }
        v
    }

    /// The session of a client id.
    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.shard(id).get(id).cloned()
    }

    /// The session a trie entry names: its handle while good, else by client id.
    pub fn resolve(&self, r: &SessionRef) -> Option<Arc<Session>> {
        r.live().or_else(|| self.get(r.id()))
    }

    /// Whether a client's session has a connection (shared groups prefer such members).
    pub fn is_online(&self, id: &str) -> bool {
        self.get(id).is_some_and(|s| s.lock().conn.is_some())
    }

    /// Every session (admin, $SYS).
    pub fn count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    /// A new connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.conn_seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Whether `s` is the registered session of its client id (not replaced or removed).
    pub fn is_current(&self, s: &Arc<Session>) -> bool {
        self.get(&s.client_id)
            .is_some_and(|cur| Arc::ptr_eq(&cur, s))
    }

    /// The session a connecting client gets: its existing one (whose connection is closed), or
    /// a fresh one when there is none or the old one ends with its connection. Returns it and
    /// whether it is resumed (CONNACK Session Present).
    fn take_over(&self, id: &Arc<str>, clean_start: bool, conn_id: u64) -> (Arc<Session>, bool) {
        let client_id: &str = id;
        let mut map = self.shard(client_id);
        let existing = map.get(client_id).cloned();
        let mut discard = None;
        let (session, present) = match existing {
            Some(s) => {
                let ends = {
                    let mut st = s.lock();
                    if let Some(old) = self.take_conn(&mut st, reason::SESSION_TAKEN_OVER) {
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
                    s.retire();
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
        (session, present)
    }

    /// Binds a client to its session, taking it over from another connection if needed.
    #[allow(clippy::too_many_arguments)]
    pub fn attach(
        &self,
        client_id: &str,
        clean_start: bool,
        expiry: u32,
        version: Version,
        username: Option<String>,
        peer: SocketAddr,
        conn_id: u64,
        import: Option<SessionExport>,
    ) -> Attach {
        let (tx, rx) = oneshot::channel();
        let id: Arc<str> = Arc::from(client_id);
        if let (Some((rec, queued)), false) = (import, clean_start) {
            self.import_session(&id, &rec, &queued);
        }
        let (session, present) = self.take_over(&id, clean_start, conn_id);
        // the client is back: what was armed for its session while it was away stands down
        self.timers.cancel(client_id);
        let record = {
            let mut st = session.lock();
            st.conn = Some(Attached {
                conn_id,
                kick: Some(tx),
                bell: Default::default(),
            });
            st.generation += 1;
            st.expiry = expiry;
            st.version = version;
            st.username = username;
            st.peer = Some(peer);
            st.disconnected_at = None;
            // back on this node before a handover of it was settled: it stays here
            st.frozen = None;
            st.persistent().then(|| st.encode())
        };
        if let (Some(store), Some(rec)) = (&self.store, record) {
            store.write_nowait(vec![record_put(client_id, rec)]);
        } else if let Some(store) = &self.store {
            // a clean/non-persistent session leaves nothing behind
            store.write_nowait(forget(client_id));
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
            self.subs.remove(&s.client_id, f);
        }
        self.subs.count_changed();
        if let Some(store) = &self.store {
            store.write_nowait(forget(&s.client_id));
        }
    }

    /// Ends a session completely (clean disconnect of a non-persistent session, or expiry).
    pub fn remove_session(&self, s: &Arc<Session>) {
        let removed = {
            let mut map = self.shard(&s.client_id);
            match map.get(&s.client_id) {
                Some(cur) if Arc::ptr_eq(cur, s) => {
                    s.retire();
                    map.remove(&s.client_id).is_some()
                }
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
    pub fn detach(
        self: &Arc<Self>,
        s: &Arc<Session>,
        conn_id: u64,
        will: Option<Will>,
        publish_will: impl FnOnce(Will) + Send + 'static,
    ) {
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
            match self.will_delay(s, &w, mine, expiry) {
                Some(0) => publish_will(w),
                Some(delay) => self
                    .timers
                    .after(s.clone(), generation, delay, move || publish_will(w)),
                None => {}
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
            store.write_nowait(vec![record_put(&s.client_id, rec)]);
        }
        if expiry != u32::MAX {
            self.expire_after(s, generation, expiry);
        }
    }

    /// Arms the expiry of an offline session: removed after `secs` unless its client is back.
    pub(super) fn expire_after(self: &Arc<Self>, s: &Arc<Session>, generation: u64, secs: u32) {
        let (b, s2) = (self.clone(), s.clone());
        self.timers.after(s.clone(), generation, secs, move || {
            tracing::info!(client_id = %s2.client_id, "session expired");
            b.remove_session(&s2);
        });
    }

    /// Arms the expiry of every session restored from the store (once, when the node starts
    /// serving): a restored session expires like one whose client just left.
    pub fn expire_restored(self: &Arc<Self>) {
        for s in self.all() {
            let (offline, expiry, generation) = {
                let st = s.lock();
                (st.conn.is_none(), st.expiry, st.generation)
            };
            if offline && expiry != 0 && expiry != u32::MAX {
                self.expire_after(&s, generation, expiry);
            }
        }
    }

    /// When a will goes out after its connection ended (`None`: never).
    fn will_delay(&self, s: &Arc<Session>, w: &Will, mine: bool, expiry: u32) -> Option<u32> {
        let delay = w.properties.will_delay_interval.unwrap_or(0);
        if mine {
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
        }
    }

    /// Closes every client connection of this node with "server shutting down" (v5 reason
    /// 0x8B) at shutdown. Sessions stay (persisted with `data_dir`) and wills are not published:
    /// a planned stop is not a client failure, and the clients reconnect through the LB.
    /// Returns how many connections were told.
    pub fn close_all_connections(&self) -> usize {
        let mut n = 0;
        for s in self.all() {
            let mut st = s.lock();
            if let Some(k) = st.conn.as_mut().and_then(|c| c.kick.take()) {
                let _ = k.send(reason::SERVER_SHUTTING_DOWN);
                n += 1;
            }
        }
        n
    }

    /// Closes a session's connection for a takeover (v5: 0x8E); returns what was attached.
    pub(super) fn take_conn(&self, st: &mut State, kick: u8) -> Option<Attached> {
        let mut old = st.conn.take()?;
        if let Some(k) = old.kick.take() {
            let _ = k.send(kick);
        }
        self.metrics.takeovers.inc();
        Some(old)
    }

    /// Takes in a session another node handed over (see [`Registry::export_session`]).
    pub(super) fn import_session(&self, id: &Arc<str>, rec: &[u8], queued: &[Vec<u8>]) {
        let Some(mut st) = State::decode(rec) else {
            tracing::warn!(client_id = %id, "unreadable session from a peer ignored");
            return;
        };
        let mut ops = Vec::new();
        for q in queued {
            let Some((pid, state, mut o)) = decode_handover(q) else {
                continue;
            };
            if self.store.is_some() && o.qos != QoS::AtMostOnce {
                o.seq = st.next_seq;
                st.next_seq += 1;
                ops.push(match state {
                    Some(Await::PubComp) => super::record::released_put(id, pid, &o),
                    _ => queued_put(id, &o),
                });
            }
            match state {
                Some(state) => st.inflight.push_back((pid, state, o)),
                None => st.queue.push_back(o),
            }
        }
        let subs: Vec<(String, Sub)> = st.subs.iter().map(|(f, s)| (f.clone(), *s)).collect();
        if self.store.is_some() {
            // the handed-over set replaces whatever rows an older copy left
            ops.push(Op::DeletePrefix {
                table: Table::Subscriptions,
                prefix: super::record::message_prefix(id),
            });
            ops.extend(subs.iter().map(|(f, sub)| sub_put(id, f, sub)));
        }
        let n = st.queue.len();
        let s = Arc::new(Session::restored(id.clone(), st));
        {
            // the handed-over session is the newer one (the client was last connected there):
            // it replaces whatever stale session this node still held
            let stale = self
                .shard(id)
                .insert(id.clone(), s.clone())
                .inspect(|o| o.retire());
            if let Some(old) = stale {
                // a copy handed away: what queued into it since still follows the client; an
                // independent copy (restored from `data_dir`, or opened while the other node
                // could not answer): every message of it does (duplicates, never losses)
                let since = {
                    let mut o = old.lock();
                    if o.frozen.is_some() {
                        super::queue::take_appended(&mut o)
                    } else {
                        let inflight = o.inflight.iter().map(|(_, _, m)| m);
                        inflight.chain(o.queue.iter()).map(encode_queued).collect()
                    }
                };
                super::queue::push_entries(&s, &since, self.store.as_ref());
                self.metrics.sessions.dec();
                self.drop_session_state(&old);
            }
        }
        self.metrics.sessions.inc();
        for (f, sub) in subs {
            self.subs.add(&s, &f, sub_options(&sub));
        }
        self.subs.count_changed();
        if let Some(store) = &self.store {
            ops.push(record_put(id, s.lock().encode()));
            store.write_nowait(ops);
        }
        tracing::info!(client_id = %id, queued = n, "session taken over from another node");
    }

    /// Persists subscription changes of a persistent session (`None`: removed), one row per
    /// filter; resolves when durable.
    pub async fn persist_subs(
        &self,
        s: &Session,
        changed: &[(String, Option<Sub>)],
    ) -> Result<(), crate::store::StoreError> {
        let (Some(store), false) = (&self.store, changed.is_empty()) else {
            return Ok(());
        };
        if !s.lock().persistent() {
            return Ok(());
        }
        let id = &s.client_id;
        let ops = changed
            .iter()
            .map(|(f, sub)| match sub {
                Some(sub) => sub_put(id, f, sub),
                None => sub_delete(id, f),
            })
            .collect();
        store.write(ops).await
    }
}
