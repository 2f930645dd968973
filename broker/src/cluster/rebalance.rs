//! Scale-out rebalance, the broker's side (docs/operations.md, "Rebalance"): the LB names the
//! clients whose hash home moved to another node; each session goes there first, with the
//! drain's push (freeze → send → confirm), and its connection is told DISCONNECT `0x9C` Use
//! another server (3.1.1: closed) as it is exported. The client reconnects through the LB to
//! its hash home, where its session already is. The LB paces the requests (`rebalance_rate`).

use std::sync::Arc;

use super::node::Cluster;
use crate::protocol::reason;

impl Cluster {
    /// Moves each of `client_ids` to `to` (see the module); `None` when `to` is not a live
    /// peer that takes clients (down, draining, unknown, or this node).
    pub(super) fn move_to(
        self: &Arc<Self>,
        to: &str,
        client_ids: Vec<String>,
    ) -> Option<Vec<(String, bool)>> {
        let b = self.core()?;
        let to = self.targets().into_iter().find(|n| &**n == to)?;
        let moved = client_ids
            .into_iter()
            .map(|id| {
                // (an export of a session that is not persistent ends it: only told to go)
                let persistent = !b.holds(std::slice::from_ref(&id), false).is_empty();
                let pushed = persistent
                    && self.push_one(&b, &to, &id, |b, c, t| b.export_for_drain(c, t));
                let moved = pushed || (!persistent && b.kick(&id, reason::USE_ANOTHER_SERVER));
                tracing::info!(node = %self.node, to = %to, client_id = %id, pushed, moved, "rebalance: client moved to its hash home");
                (id, moved)
            })
            .collect();
        Some(moved)
    }
}
