//! The node's local subscription table, kept in step with its sessions' subscriptions, and the
//! routes it announces to the cluster (through [`Peers`], once the node is clustered).

use std::sync::{Arc, OnceLock};

use super::{sub_options, Session, SessionRef, Sub};
use crate::cluster::Peers;
use crate::metrics::Metrics;
use crate::routing::{Router, SubOptions};

/// Local subscriptions by filter, and where route changes are announced.
pub struct Subscriptions {
    trie: Router<SessionRef>,
    peers: OnceLock<Arc<dyn Peers>>,
    metrics: Arc<Metrics>,
}

impl Subscriptions {
    pub(super) fn new(metrics: Arc<Metrics>) -> Subscriptions {
        Subscriptions {
            trie: Router::new(),
            peers: OnceLock::new(),
            metrics,
        }
    }

    /// The trie itself: matching on the publish path, counts for `$SYS` and the admin API.
    pub fn trie(&self) -> &Router<SessionRef> {
        &self.trie
    }

    /// The other nodes, when clustered.
    pub fn peers(&self) -> Option<&Arc<dyn Peers>> {
        self.peers.get()
    }

    pub(super) fn set_peers(&self, p: Arc<dyn Peers>) {
        let _ = self.peers.set(p);
    }

    /// Adds a subscription for a session; returns whether it is new (for Retain Handling 1).
    pub fn subscribe(&self, s: &Arc<Session>, filter: &str, sub: Sub) -> bool {
        self.add(s, filter, sub_options(&sub));
        let new = s.lock().subs.insert(filter.to_string(), sub).is_none();
        self.count_changed();
        new
    }

    /// Removes a subscription; true when it existed.
    pub fn unsubscribe(&self, s: &Session, filter: &str) -> bool {
        let existed = s.lock().subs.remove(filter).is_some();
        self.remove(&s.client_id, filter);
        self.count_changed();
        existed
    }

    /// Puts a client's session into the trie (its handle replacing an older one of the same
    /// client id); a new subscription counts toward the route the cluster announces for its
    /// filter.
    pub(super) fn add(&self, s: &Arc<Session>, filter: &str, opts: SubOptions) {
        if self.trie.subscribe(&SessionRef::new(s), filter, opts) {
            if let Some(c) = self.peers() {
                c.local_add(filter);
            }
        }
    }

    /// Takes a client out of the trie; a removed subscription counts down that route.
    pub(super) fn remove(&self, client: &Arc<str>, filter: &str) {
        if self.trie.unsubscribe(&SessionRef::id_only(client), filter) {
            if let Some(c) = self.peers() {
                c.local_del(filter);
            }
        }
    }

    /// Refreshes the subscriptions gauge.
    pub(super) fn count_changed(&self) {
        self.metrics
            .subscriptions
            .set(self.trie.subscription_count() as i64);
    }
}
