//! The registry's side of a session handover (the protocol is `cluster::handover`): a session
//! given to another node is frozen, not deleted, until that node confirms it holds it; what
//! queues into it meanwhile follows it; an export that came too late is merged, not dropped.

use std::sync::Arc;

use super::queue::{push_entries, take_appended};
use super::record::encode_handover;
use super::registry::Registry;
use super::{Freeze, Session};
use crate::cluster::{FreezeToken, SessionExport};
use crate::session::State;

impl Registry {
    /// Hands this node's session of `client_id` to another node: closes its connection and,
    /// unless the new connection starts clean, exports it and freezes it under `token` (it
    /// stays, durable and queuing, until [`Registry::settle_export`]). A session with nothing
    /// to move (clean start, or not persistent) ends here at once.
    pub fn freeze_export(
        &self,
        client_id: &str,
        clean_start: bool,
        token: &FreezeToken,
        kick: u8,
    ) -> Option<SessionExport> {
        let s = self.get(client_id)?;
        let export = {
            let mut st = s.lock();
            self.take_conn(&mut st, kick);
            let e = (!clean_start && st.persistent())
                .then(|| (st.encode_export(), encode_handover(&st)));
            if e.is_some() {
                st.frozen = Some(Box::new(Freeze {
                    token: token.clone(),
                    appended: 0,
                    moved: false,
                }));
            }
            e
        };
        if export.is_none() {
            self.metrics.cluster_handovers.inc();
            self.remove_session(&s);
        }
        export
    }

    /// Settles a frozen session. `keep`: it stays here (unfrozen, expiring as an offline
    /// session does). Otherwise the new holder has it: what queued into it since the export is
    /// returned for the new holder, and it lingers, still routed here, until
    /// [`Registry::finish_move`] (forwards that peers sent before they saw the new holder's
    /// routes still land here and follow it). Nothing happens for another token (the session
    /// was frozen again for someone else, or its client came back here).
    pub fn settle_export(
        self: &Arc<Self>,
        client_id: &str,
        token: &FreezeToken,
        keep: bool,
    ) -> Vec<Vec<u8>> {
        let Some(s) = self.get(client_id) else {
            return Vec::new();
        };
        let mut st = s.lock();
        let Some(f) = st.frozen.as_mut().filter(|f| f.token == *token && !f.moved) else {
            return Vec::new();
        };
        if !keep {
            f.moved = true;
            self.metrics.cluster_handovers.inc();
            return take_appended(&mut st);
        }
        st.frozen = None;
        let (expiry, generation, offline) = (st.expiry, st.generation, st.conn.is_none());
        drop(st);
        tracing::info!(
            client_id,
            "handover not confirmed: the session stays on this node"
        );
        if expiry != u32::MAX && offline {
            self.expire_after(&s, generation, expiry);
        }
        Vec::new()
    }

    /// Ends a moved session's linger: deletes it and returns what queued into it since the
    /// confirm, for the new holder.
    pub fn finish_move(&self, client_id: &str, token: &FreezeToken) -> Vec<Vec<u8>> {
        let Some(s) = self.get(client_id) else {
            return Vec::new();
        };
        let since = {
            let mut st = s.lock();
            if !st
                .frozen
                .as_ref()
                .is_some_and(|f| f.token == *token && f.moved)
            {
                return Vec::new();
            }
            take_appended(&mut st)
        };
        self.remove_session(&s);
        since
    }

    /// The client ids of every persistent session (what a leaving node hands over).
    pub fn persistent_ids(&self) -> Vec<Arc<str>> {
        self.all()
            .into_iter()
            .filter(|s| s.lock().persistent())
            .map(|s| s.client_id.clone())
            .collect()
    }

    /// The client ids of the persistent sessions held here, not moved away (what
    /// `GET /api/placement` looks through for sessions off their hash home).
    pub fn held_ids(&self) -> Vec<Arc<str>> {
        self.all()
            .into_iter()
            .filter(|s| {
                let st = s.lock();
                st.persistent() && !st.frozen.as_ref().is_some_and(|f| f.moved)
            })
            .map(|s| s.client_id.clone())
            .collect()
    }

    /// Which of `client_ids` this node holds a persistent session of, not moved away;
    /// `offline_only`: whose client is not connected here.
    pub fn holds(&self, client_ids: &[String], offline_only: bool) -> Vec<String> {
        client_ids
            .iter()
            .filter(|c| {
                self.get(c).is_some_and(|s| {
                    let st = s.lock();
                    st.persistent()
                        && !st.frozen.as_ref().is_some_and(|f| f.moved)
                        && !(offline_only && st.conn.is_some())
                })
            })
            .cloned()
            .collect()
    }

    /// Client ids of the persistent sessions whose client is connected here.
    pub fn connected_ids(&self) -> Vec<String> {
        self.all()
            .into_iter()
            .filter(|s| {
                let st = s.lock();
                st.persistent() && st.conn.is_some()
            })
            .map(|s| s.client_id.to_string())
            .collect()
    }

    /// What a draining node still has to move: every session not frozen (exported or moved)
    /// whose client is connected or that is persistent; `true` for a persistent one (it moves
    /// with the handover, the others only have their client told to go).
    pub fn drain_candidates(&self) -> Vec<(Arc<str>, bool)> {
        self.all()
            .into_iter()
            .filter_map(|s| {
                let st = s.lock();
                let persistent = st.persistent();
                (st.frozen.is_none() && (persistent || st.conn.is_some()))
                    .then(|| (s.client_id.clone(), persistent))
            })
            .collect()
    }

    /// Client connections attached here.
    pub fn connections(&self) -> usize {
        self.all()
            .iter()
            .filter(|s| s.lock().conn.is_some())
            .count()
    }

    /// Closes the connection of `client_id`'s session with v5 reason `code`; false when it has
    /// none (or it is closing already).
    pub fn kick(&self, client_id: &str, code: u8) -> bool {
        let Some(s) = self.get(client_id) else {
            return false;
        };
        let mut st = s.lock();
        match st.conn.as_mut().and_then(|c| c.kick.take()) {
            Some(k) => k.send(code).is_ok(),
            None => false,
        }
    }

    /// Sessions exported and not yet confirmed by their new holder.
    pub fn frozen_pending(&self) -> usize {
        let unsettled = |s: &Arc<Session>| s.lock().frozen.as_ref().is_some_and(|f| !f.moved);
        self.all().iter().filter(|s| unsettled(s)).count()
    }

    /// Ends every moved session's linger now (a leaving node): deletes them; for each, the new
    /// holder and what queued into it since the confirm.
    pub fn finish_all_moves(&self) -> Vec<(Arc<str>, FreezeToken, Vec<Vec<u8>>)> {
        let moved: Vec<(Arc<str>, FreezeToken)> = self
            .all()
            .iter()
            .filter_map(|s| {
                let st = s.lock();
                let f = st.frozen.as_ref().filter(|f| f.moved)?;
                Some((s.client_id.clone(), f.token.clone()))
            })
            .collect();
        moved
            .into_iter()
            .map(|(c, t)| {
                let q = self.finish_move(&c, &t);
                (c, t, q)
            })
            .collect()
    }

    /// An export this node did not ask for, or no longer waits for (a late answer, or a
    /// leaving node's push): merged into the persistent session this node holds now for that
    /// client (its subscriptions added, its messages queued), or taken in as the session when
    /// there is none. False when this node's session for that client is not persistent (the
    /// client chose a session that ends with its connection): the sender keeps its copy.
    pub fn adopt_session(&self, client_id: &str, (rec, queued): SessionExport) -> bool {
        let Some(s) = self.get(client_id) else {
            self.import_session(&Arc::from(client_id), &rec, &queued);
            return true;
        };
        if !s.lock().persistent() {
            return false;
        }
        if let Some(old) = State::decode(&rec) {
            // QoS 2 publishes the client sent there and has not released yet stay held here:
            // their retransmission is not routed twice
            s.lock().qos2_in.extend(old.qos2_in);
            for (f, sub) in old.subs {
                let has = s.lock().subs.contains_key(&f);
                if !has {
                    self.subs().subscribe(&s, &f, sub);
                }
            }
        }
        self.append_handover(client_id, &queued);
        true
    }

    /// Queues handed-over entries (in-flight ones as queued: their packet ids belong to the
    /// old holder; those past PUBREC keep theirs, see `push_entries`) into the session of
    /// `client_id`, durably when `data_dir` is set.
    pub fn append_handover(&self, client_id: &str, queued: &[Vec<u8>]) {
        let Some(s) = self.get(client_id) else {
            tracing::warn!(
                client_id,
                n = queued.len(),
                "handed-over messages for a session that is gone"
            );
            return;
        };
        push_entries(&s, queued, self.store.as_ref());
        s.ring();
    }
}
