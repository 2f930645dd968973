//! The cluster's part of session replication (`[cluster] session_replicas = 2`; the policy is
//! the broker's `replica` module): replication ops sent to a session's replica and acknowledged
//! once durable there (the forward ack reused), and the bookkeeping that lets a node drop a
//! dead peer's held routes early: once every live node promoted its standby copies of that
//! peer's sessions (their routes announced by their new holders), nothing is owed to the dead
//! peer's routes any more.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::channel::AckWait;
use super::frame::Frame;
use super::node::{lock, Cluster};
use super::Ack;

impl Cluster {
    /// [`super::Peers::replicate`].
    pub(super) fn replicate_now(
        &self,
        n: &Arc<str>,
        ops: Vec<u8>,
        want_ack: bool,
    ) -> Result<Option<Ack>, super::NotSent> {
        let id = if want_ack {
            self.next_id.fetch_add(1, Ordering::Relaxed)
        } else {
            0
        };
        let ack = want_ack.then(|| Ack::reply(self.await_reply(id, n, false)));
        if self.send_gated(n, Frame::Replicate { id, ops }).is_err() {
            lock(&self.waiting).remove(&id);
            return Err(super::NotSent);
        }
        Ok(ack)
    }

    /// Replication ops from peer `n`: queued to the store now (in frame order); the ack's
    /// future when one is wanted.
    pub(super) fn on_replicate(&self, n: &Arc<str>, id: u64, ops: &[u8]) -> Option<AckWait> {
        let durable = self.core()?.apply_replica(n, ops);
        (id != 0).then(|| AckWait::new(id, Some(durable)))
    }

    /// [`super::Peers::promoted`]: this node is done with `of`'s standby copies.
    pub(super) fn promoted_here(&self, of: &str) {
        let me = self.node.clone();
        self.note_promoted(of, me);
        self.broadcast_locked(Frame::Promoted { of: of.to_string() });
    }

    /// Peer `from` (or this node) promoted its standby copies of `of`'s sessions. When every
    /// live node has, and `of` is still down with its routes held, they go now: the sessions
    /// they stood for are routed by their new holders.
    pub(super) fn note_promoted(&self, of: &str, from: Arc<str>) {
        let done = {
            let mut p = lock(&self.promoted);
            let set = p.entry(Arc::from(of)).or_default();
            set.insert(from);
            let live: HashSet<Arc<str>> = lock(&self.status)
                .iter()
                .filter(|(_, s)| s.up)
                .map(|(n, _)| n.clone())
                .collect();
            !live.contains(of) && set.contains(&self.node) && live.iter().all(|n| set.contains(n))
        };
        if !done {
            return;
        }
        let of: Arc<str> = Arc::from(of);
        if lock(&self.held).remove(&of).is_some() {
            self.drop_routes(&of);
            tracing::info!(node = %self.node, peer = %of, "cluster: every live node promoted its copies of the down peer's sessions; its held routes dropped");
        }
    }
}
