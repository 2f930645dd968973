//! Sessions written while no replica could take a copy (no other live node): kept in the `Meta`
//! table, so that a holder that restarts knows which of its restored copies may hold messages
//! no other node has. The others it drops when a peer holds the session meanwhile (their
//! replica took them over): everything acknowledged in them is on that peer, so pushing them
//! there would only deliver it twice.

use std::collections::HashSet;
use std::sync::Arc;

use super::{lock, Replication};
use crate::store::{Op, Table};

/// `Meta` key prefix of a session written without a replica.
const PREFIX: &[u8] = b"unprotected/";

/// The sessions marked in the store (at start).
pub(super) fn restore(store: &crate::store::Store) -> HashSet<Arc<str>> {
    store
        .scan_prefix(Table::Meta, PREFIX)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, _)| std::str::from_utf8(&k[PREFIX.len()..]).ok().map(Arc::from))
        .collect()
}

impl Replication {
    /// `client` was written with no replica to copy it to. Called by the tap (under the
    /// store's order lock: the mark goes to the store without it).
    pub(super) fn mark_unprotected(&self, client: &str) {
        if lock(&self.unprotected).insert(Arc::from(client)) {
            let key = [PREFIX, client.as_bytes()].concat();
            let put = Op::Put {
                table: Table::Meta,
                key,
                value: Vec::new(),
            };
            // queued now; nobody waits for it
            drop(self.store.submit_local(vec![put]));
        }
    }

    /// `client` has a complete copy on a replica again.
    pub(super) fn clear_unprotected(&self, client: &str) {
        if lock(&self.unprotected).remove(client) {
            let key = [PREFIX, client.as_bytes()].concat();
            drop(self.store.submit_local(vec![Op::Delete {
                table: Table::Meta,
                key,
            }]));
        }
    }

    /// Whether this node, restarted, should drop its restored copy of `client` that a peer
    /// now holds: it replicates its sessions, and every write of this one had a replica.
    pub fn defers_to_peer(&self, client: &str) -> bool {
        self.holder && !lock(&self.unprotected).contains(client)
    }
}
