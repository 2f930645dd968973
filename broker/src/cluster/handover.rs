//! Session handover between nodes: freeze → copy → confirm → delete, so that no answer lost,
//! late or unanswered ever destroys a session (docs/cluster.md, "Session handover").
//!
//! The asker (the node a client connects to) sends `TakeSession` to every live peer at once and
//! waits for all answers under one deadline ([`TAKEOVER_TIMEOUT`]). A holder closes the old
//! connection, exports the session and **freezes** it: it stays registered and durable, and
//! messages keep queuing into it. Once the asker holds the session durably it sends
//! `SessionDone { keep: false }`; only then does the holder delete its copy, and it sends what
//! was queued into the frozen session since the export (`SessionAppend`, behind the export on
//! the same ordered channel). An answer that comes after the asker stopped waiting is merged
//! into the session the asker now has for that client, or refused (`keep: true`), and a holder
//! that hears nothing within [`FREEZE_TIMEOUT`] unfreezes: the session stays where it was.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::frame::Frame;
use super::node::{lock, Cluster};
use super::{FreezeToken, Handover, SessionExport, TAKEOVER_TIMEOUT};

/// How long a session that moved stays routed on its old holder: forwards peers sent before
/// they saw the new holder's routes still arrive there and follow the session.
pub const MOVE_LINGER: Duration = Duration::from_secs(5);

/// How long a holder keeps a session frozen for an asker that does not settle it (the asker
/// died, or the settlement was lost) before it unfreezes it and keeps it.
pub const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);

impl Cluster {
    /// [`super::Peers::take_session`]: every live peer asked at once, answers awaited under one
    /// deadline. Several exports (a partition healed) are merged: the first one's state, every
    /// one's messages (duplicates are allowed, losses are not).
    pub(super) async fn take_session_now(
        &self,
        client_id: &str,
        clean_start: bool,
    ) -> Option<(SessionExport, Handover)> {
        let peers: Vec<Arc<str>> = lock(&self.peers).keys().cloned().collect();
        let mut waits = Vec::new();
        for n in peers {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let rx = self.await_reply(id, &n, false);
            let ask = Frame::TakeSession {
                id,
                client_id: client_id.to_string(),
                clean_start,
            };
            if self.send_to(&n, ask) {
                waits.push((n, id, rx));
            } else {
                lock(&self.waiting).remove(&id);
            }
        }
        let deadline = Instant::now() + TAKEOVER_TIMEOUT;
        let mut exports = Vec::new();
        let mut from = Vec::new();
        for (n, id, rx) in waits {
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(Frame::Session {
                    export: Some(e), ..
                })) => {
                    exports.push(e);
                    from.push((n, id));
                }
                Ok(_) => {}
                Err(_) => {
                    // a later answer is settled by `late_answer`
                    lock(&self.waiting).remove(&id);
                    tracing::warn!(node = %self.node, peer = %n, client_id, "cluster: no handover answer in time");
                }
            }
        }
        let export = merge(exports)?;
        let h = Handover {
            client_id: client_id.to_string(),
            from,
        };
        Some((export, h))
    }

    /// [`super::Peers::settle_handover`].
    pub(super) fn settle_now(&self, h: Handover, taken: bool) {
        for (n, id) in h.from {
            let done = Frame::SessionDone {
                id,
                client_id: h.client_id.clone(),
                keep: !taken,
            };
            self.send_or_keep(n, done);
        }
    }

    /// Sends a settlement (or messages that follow a session), or keeps it to send again while
    /// its peer has no channel (a paused peer may have been declared down meanwhile).
    pub(super) fn send_or_keep(&self, n: Arc<str>, done: Frame) {
        if !self.send_to(&n, done.clone()) {
            let until = std::time::Instant::now() + FREEZE_TIMEOUT;
            lock(&self.unsent_settlements).push((n, done, until));
        }
    }

    /// Sends the kept settlements again (each membership round); drops those past deadline
    /// (their holder unfroze the session by then).
    pub(super) fn resend_settlements(&self) {
        let kept = std::mem::take(&mut *lock(&self.unsent_settlements));
        let now = std::time::Instant::now();
        let mut left = Vec::new();
        for (n, f, until) in kept {
            if until > now && !self.send_to(&n, f.clone()) {
                left.push((n, f, until));
            }
        }
        lock(&self.unsent_settlements).extend(left);
    }

    /// A peer asks for a session: export and freeze it (or end it, for a clean start), answer,
    /// and arm the freeze deadline.
    pub(super) fn on_take_session(
        self: &Arc<Self>,
        n: Arc<str>,
        id: u64,
        client_id: String,
        clean_start: bool,
    ) {
        let Some(b) = self.core() else { return };
        let token: FreezeToken = (n.clone(), id);
        let export = b.export_session(&client_id, clean_start, &token);
        if export.is_some() {
            tracing::info!(node = %self.node, client_id = %client_id, to = %n, "cluster: session exported (frozen until the new holder confirms)");
            self.arm_freeze_deadline(client_id.clone(), token);
        }
        let answer = Frame::Session {
            id,
            client_id,
            export,
        };
        // an export must reach the asker (late is fine: it is merged there), or the session
        // stays frozen here until the deadline for nothing
        if matches!(
            answer,
            Frame::Session {
                export: Some(_),
                ..
            }
        ) {
            self.send_or_keep(n, answer);
        } else {
            self.send_to(&n, answer);
        }
    }

    /// The asker settled a handover: unfreeze; or send what queued since the export, let the
    /// moved session linger for [`MOVE_LINGER`], then delete it and send what queued meanwhile.
    pub(super) fn on_session_done(
        self: &Arc<Self>,
        n: Arc<str>,
        id: u64,
        client_id: String,
        keep: bool,
    ) {
        let Some(b) = self.core() else { return };
        let token: FreezeToken = (n.clone(), id);
        let queued = b.settle_export(&client_id, &token, keep);
        self.append_to(&n, &client_id, queued);
        if keep {
            return;
        }
        tracing::info!(node = %self.node, client_id = %client_id, to = %n, "cluster: session handed over");
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(MOVE_LINGER).await;
            let Some(c) = me.upgrade() else { return };
            if let Some(b) = c.core() {
                let queued = b.finish_move(&client_id, &token);
                c.append_to(&n, &client_id, queued);
            }
        });
    }

    pub(super) fn append_to(&self, n: &str, client_id: &str, queued: Vec<Vec<u8>>) {
        if !queued.is_empty() {
            tracing::debug!(node = %self.node, client_id, to = %n, n = queued.len(), "cluster: messages follow a moved session");
            let client_id = client_id.to_string();
            self.send_or_keep(Arc::from(n), Frame::SessionAppend { client_id, queued });
        }
    }

    /// An export nobody here waits for (a late answer, or a leaving peer's push): merged into
    /// (or taken in as) the session held here, confirmed once durable; or refused so the sender
    /// keeps it.
    pub(super) fn late_answer(self: &Arc<Self>, n: Arc<str>, f: Frame) {
        let Frame::Session {
            id,
            client_id,
            export: Some(e),
        } = f
        else {
            return;
        };
        let Some(b) = self.core() else { return };
        let me = self.clone();
        tokio::spawn(async move {
            let adopted = b.adopt_session(&client_id, e).await;
            tracing::info!(node = %me.node, peer = %n, client_id = %client_id, adopted, "cluster: unrequested session export settled");
            let done = Frame::SessionDone {
                id,
                client_id,
                keep: !adopted,
            };
            me.send_or_keep(n, done);
        });
    }

    /// A leaving node (SIGTERM): every persistent session goes to the node the LB will pick
    /// next for its client id (the LB's rendezvous order over the names of the live peers that
    /// do not drain), pushed
    /// with the same freeze → confirm protocol; waits (up to `timeout`) for the confirms, then
    /// ends the moves and sends what queued since. Returns (pushed, not confirmed in time).
    pub async fn hand_over_all(self: &Arc<Self>, timeout: Duration) -> (usize, usize) {
        let Some(b) = self.core() else { return (0, 0) };
        let live = self.targets();
        let names: Vec<&str> = live.iter().map(|n| &**n).collect();
        let mut pushed = 0;
        for client_id in b.session_ids() {
            let Some(to) = mqedge_shared::placement::rendezvous_first(client_id.as_bytes(), &names)
            else {
                break;
            };
            let to: Arc<str> = Arc::from(to);
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let token: FreezeToken = (to.clone(), id);
            if let Some(export) = b.export_for_leave(&client_id, &token) {
                let push = Frame::Session {
                    id,
                    client_id: client_id.to_string(),
                    export: Some(export),
                };
                if self.send_to(&to, push) {
                    pushed += 1;
                } else {
                    b.settle_export(&client_id, &token, true);
                }
            }
        }
        let deadline = Instant::now() + timeout;
        while b.frozen_pending() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = b.frozen_pending();
        for (client_id, (to, _), queued) in b.finish_all_moves() {
            self.append_to(&to, &client_id, queued);
        }
        (pushed, left)
    }

    /// A node that restarted with `data_dir`: its restored sessions whose clients reconnected
    /// to another node while it was down (that node holds a session for them now) are pushed
    /// there with the freeze → confirm protocol and merged, so the messages queued here before
    /// the crash reach them. Asks every live peer at once, answers awaited up to `timeout`.
    /// Returns how many sessions were pushed.
    pub async fn reconcile_restored(self: &Arc<Self>, timeout: Duration) -> usize {
        let Some(b) = self.core() else { return 0 };
        let ids: Vec<String> = b.session_ids().iter().map(|c| c.to_string()).collect();
        if ids.is_empty() {
            return 0;
        }
        let answers = self.ask_holds(ids, timeout).await;
        let mut pushed = std::collections::HashSet::new();
        for (n, held) in answers {
            let (deferred, fresh): (Vec<String>, Vec<String>) = held
                .into_iter()
                .filter(|c| !pushed.contains(c))
                .partition(|c| b.defer_restored(c));
            if !deferred.is_empty() {
                tracing::info!(node = %self.node, peer = %n, sessions = deferred.len(), "cluster: restored sessions that peer took over from their replicas dropped here (nothing of them is missing there)");
            }
            for client_id in self.push_to(&n, fresh) {
                tracing::info!(node = %self.node, client_id = %client_id, to = %n, "cluster: restored session pushed to the node its client reconnected to");
                pushed.insert(client_id);
            }
        }
        pushed.len()
    }

    /// Asks every live peer at once which of `ids` it holds a persistent session of
    /// (`Holds`); the answers that came within `timeout`, per peer.
    pub(super) async fn ask_holds(
        &self,
        ids: Vec<String>,
        timeout: Duration,
    ) -> Vec<(Arc<str>, Vec<String>)> {
        let peers: Vec<Arc<str>> = lock(&self.peers).keys().cloned().collect();
        let mut waits = Vec::new();
        for n in peers {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let rx = self.await_reply(id, &n, false);
            let ask = Frame::Holds {
                id,
                client_ids: ids.clone(),
                offline_only: false,
            };
            if self.send_to(&n, ask) {
                waits.push((n, id, rx));
            } else {
                lock(&self.waiting).remove(&id);
            }
        }
        let deadline = Instant::now() + timeout;
        let mut answers = Vec::new();
        for (n, id, rx) in waits {
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(Frame::Held { client_ids, .. })) => answers.push((n, client_ids)),
                Ok(_) => {}
                Err(_) => {
                    lock(&self.waiting).remove(&id);
                    tracing::warn!(node = %self.node, peer = %n, "cluster: no answer in time about the sessions it holds");
                }
            }
        }
        answers
    }

    /// Pushes this node's sessions of `client_ids` to peer `n` with the freeze → confirm
    /// protocol (merged there; deleted here once confirmed); returns the ones sent.
    pub(super) fn push_to(self: &Arc<Self>, n: &Arc<str>, client_ids: Vec<String>) -> Vec<String> {
        let Some(b) = self.core() else {
            return Vec::new();
        };
        let mut sent = Vec::new();
        for client_id in client_ids {
            if self.push_one(&b, n, &client_id, |b, c, t| b.export_for_leave(c, t)) {
                sent.push(client_id);
            }
        }
        sent
    }

    /// Pushes this node's session of `client_id` to peer `n`, exported by `export` (which also
    /// tells its connection why), with the freeze → confirm protocol; true when it was sent (a
    /// session that cannot be sent stays here, unfrozen).
    pub(super) fn push_one(
        self: &Arc<Self>,
        b: &Arc<dyn super::LocalNode>,
        n: &Arc<str>,
        client_id: &str,
        export: impl Fn(&dyn super::LocalNode, &str, &FreezeToken) -> Option<SessionExport>,
    ) -> bool {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let token: FreezeToken = (n.clone(), id);
        let Some(export) = export(&**b, client_id, &token) else {
            return false;
        };
        let push = Frame::Session {
            id,
            client_id: client_id.to_string(),
            export: Some(export),
        };
        if !self.send_to(n, push) {
            b.settle_export(client_id, &token, true);
            return false;
        }
        self.arm_freeze_deadline(client_id.to_string(), token);
        true
    }

    /// A peer is up again (back from a pause or a cut, or restarted): sessions of clients now
    /// connected here that it still holds offline (their takeover could not reach it) are taken
    /// from it, each with a `TakeSession` nobody waits for: its export arrives as an unasked
    /// answer and is merged here ([`Cluster::late_answer`]), and the peer deletes its copy once
    /// this node confirms. Without it, the peer's copy would keep taking copies of messages
    /// until it expired.
    pub(super) fn pull_copies(self: &Arc<Self>, n: Arc<str>) {
        let Some(b) = self.core() else { return };
        let ids = b.connected_ids();
        if ids.is_empty() {
            return;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let rx = self.await_reply(id, &n, false);
        let ask = Frame::Holds {
            id,
            client_ids: ids,
            offline_only: true,
        };
        if !self.send_to(&n, ask) {
            lock(&self.waiting).remove(&id);
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let held = match tokio::time::timeout(TAKEOVER_TIMEOUT, rx).await {
                Ok(Ok(Frame::Held { client_ids, .. })) => client_ids,
                _ => {
                    lock(&me.waiting).remove(&id);
                    tracing::warn!(node = %me.node, peer = %n, "cluster: no answer in time about offline copies of this node's sessions");
                    return;
                }
            };
            for client_id in held {
                tracing::info!(node = %me.node, peer = %n, client_id = %client_id, "cluster: a peer that came back still holds a session of a client connected here; taking it");
                let id = me.next_id.fetch_add(1, Ordering::Relaxed);
                let ask = Frame::TakeSession {
                    id,
                    client_id,
                    clean_start: false,
                };
                me.send_to(&n, ask);
            }
        });
    }

    /// Unfreezes a session whose new holder did not settle it within [`FREEZE_TIMEOUT`].
    fn arm_freeze_deadline(self: &Arc<Self>, client_id: String, token: FreezeToken) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(FREEZE_TIMEOUT).await;
            if let Some(b) = me.upgrade().and_then(|c| c.core()) {
                b.settle_export(&client_id, &token, true);
            }
        });
    }

    /// Messages that reached a session at its old holder after the export.
    pub(super) fn on_session_append(&self, client_id: &str, queued: &[Vec<u8>]) {
        if let Some(b) = self.core() {
            b.append_session(client_id, queued);
        }
    }
}

/// One export from several: the first's record, every one's entries (the others' in-flight
/// entries become queued ones: their packet ids belong to another numbering).
fn merge(mut exports: Vec<SessionExport>) -> Option<SessionExport> {
    if exports.is_empty() {
        return None;
    }
    let (rec, mut queued) = exports.remove(0);
    for (_, q) in exports {
        queued.extend(q.into_iter().map(as_queued));
    }
    Some((rec, queued))
}

/// An export entry (kind, packet id, message) as a plain queued one.
fn as_queued(mut e: Vec<u8>) -> Vec<u8> {
    if e.len() >= 3 {
        e[0] = 0;
        e[1] = 0;
        e[2] = 0;
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_keeps_every_message_and_the_first_state() {
        assert!(merge(vec![]).is_none());
        let a = (vec![1], vec![vec![1, 0, 5, 9], vec![0, 0, 0, 8]]);
        let b = (vec![2], vec![vec![3, 0, 7, 6]]);
        let (rec, q) = merge(vec![a, b]).unwrap();
        assert_eq!(rec, vec![1]);
        assert_eq!(
            q,
            vec![vec![1, 0, 5, 9], vec![0, 0, 0, 8], vec![0, 0, 0, 6]]
        );
    }
}
