//! The subscription table: which subscribers (direct and per shared group) a topic reaches.
//!
//! A trie with one edge per filter level. Each node has exact-level children in a `HashMap`, a
//! dedicated `+` child and a `#` slot holding the subscribers of `<path>/#`, so matching a topic
//! costs O(levels × branches actually taken), independent of how many filters are stored. The
//! table sits behind one `RwLock`: the publish path only takes the read side, SUBSCRIBE and
//! UNSUBSCRIBE the write side. The router is generic over the subscriber key so the same trie can
//! hold local sessions and, in the cluster, remote nodes' routes.
//!
//! The router does not validate filters (use [`topic::valid_topic_filter`](crate::topic)); a `+`
//! or `#` that is not a whole level, or a `#` that is not last, is stored as a literal level and
//! so never matches a valid topic name, the same as [`topic::matches`](crate::topic::matches).

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::protocol::QoS;
use crate::topic::{parse_shared, SHARE_PREFIX};

/// Per-subscription options the router returns with each match.
///
/// Why: delivery needs them per subscriber (granted QoS, MQTT 5 No Local, Retain As Published,
/// Subscription Identifier) without a second lookup in the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubOptions {
    /// Maximum QoS granted for this subscription.
    pub qos: u8,
    /// MQTT 5 No Local: do not deliver the subscriber's own publishes.
    pub no_local: bool,
    /// MQTT 5 Retain As Published: keep the RETAIN flag when forwarding.
    pub retain_as_published: bool,
    /// MQTT 5 Subscription Identifier to echo in forwarded PUBLISHes.
    pub subscription_id: Option<u32>,
    /// Identifiers of further overlapping subscriptions merged into this match
    /// (MQTT-3.3.4-3: every matching subscription's identifier is sent); 0 = unused slot.
    pub extra_ids: [u32; 3],
}

impl SubOptions {
    /// QoS of a delivery: the smaller of the published QoS and the granted one.
    pub fn delivery_qos(&self, published: QoS) -> QoS {
        published.min(QoS::from_u8(self.qos).unwrap_or(QoS::AtMostOnce))
    }

    /// Every subscription identifier of this match.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.subscription_id
            .into_iter()
            .chain(self.extra_ids.iter().copied().filter(|i| *i != 0))
    }
}

/// One shared-subscription group matched by a topic: every member of `$share/{group}/{filter}`.
///
/// Why: the shared-subscription code picks one member per group per message, so it needs the
/// whole group, not one entry per member.
#[derive(Debug, Clone)]
pub struct SharedMatch<K> {
    /// Share name (the GROUP of `$share/GROUP/FILTER`).
    pub group: String,
    /// The filter that matched, without the `$share/GROUP/` prefix.
    pub filter: String,
    /// Every member of the group, with its options (in no particular order).
    pub members: Vec<(K, SubOptions)>,
}

/// Everything a topic matches.
///
/// Why: one reusable output buffer for the publish path, so matching allocates nothing per call
/// once the vectors have grown.
#[derive(Debug, Clone)]
pub struct Matches<K> {
    /// Non-shared subscribers, each key once (overlapping filters merged).
    pub direct: Vec<(K, SubOptions)>,
    /// Each matching shared group once, keyed by (group, filter).
    pub shared: Vec<SharedMatch<K>>,
}

impl<K> Default for Matches<K> {
    fn default() -> Self {
        Matches {
            direct: Vec::new(),
            shared: Vec::new(),
        }
    }
}

impl<K> Matches<K> {
    /// Whether nothing matched: the publish can be dropped (or only retained).
    pub fn is_empty(&self) -> bool {
        self.direct.is_empty() && self.shared.is_empty()
    }
}

/// Subscribers of one filter (the path to its node, or that path plus `/#`).
struct Subs<K> {
    /// The plain filter these subscribers used, kept for [`SharedMatch::filter`] and snapshots.
    filter: Box<str>,
    direct: HashMap<K, SubOptions>,
    shared: HashMap<Box<str>, HashMap<K, SubOptions>>,
}

impl<K> Subs<K> {
    fn new(filter: &str) -> Self {
        Subs {
            filter: filter.into(),
            direct: HashMap::new(),
            shared: HashMap::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.direct.is_empty() && self.shared.is_empty()
    }
}

impl<K: Eq + Hash> Subs<K> {
    /// Removes `key` (from `group`'s members when shared); returns whether it was there and
    /// whether that left the filter (or the group) without subscribers.
    fn remove(&mut self, group: Option<&str>, key: &K) -> (bool, bool) {
        match group {
            None => {
                let removed = self.direct.remove(key).is_some();
                (removed, removed && self.direct.is_empty())
            }
            Some(group) => match self.shared.get_mut(group) {
                Some(members) => {
                    let removed = members.remove(key).is_some();
                    let emptied = removed && members.is_empty();
                    if emptied {
                        self.shared.remove(group);
                    }
                    (removed, emptied)
                }
                None => (false, false),
            },
        }
    }
}

/// One trie node; invariant: every stored `Subs` is non-empty and every non-root node has
/// subscribers or children.
struct Node<K> {
    children: HashMap<Box<str>, Node<K>>,
    plus: Option<Box<Node<K>>>,
    /// Subscribers of the filter ending at this node.
    exact: Option<Box<Subs<K>>>,
    /// Subscribers of this node's path followed by `/#` (at the root: `#`).
    hash: Option<Box<Subs<K>>>,
}

impl<K> Default for Node<K> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            plus: None,
            exact: None,
            hash: None,
        }
    }
}

impl<K> Node<K> {
    fn child_count(&self) -> usize {
        self.children.len() + usize::from(self.plus.is_some())
    }

    fn has_subs(&self) -> bool {
        self.exact.is_some() || self.hash.is_some()
    }

    #[cfg(test)]
    fn child(&self, level: &str) -> Option<&Node<K>> {
        if level == "+" {
            self.plus.as_deref()
        } else {
            self.children.get(level)
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Node<K>> {
        if level == "+" {
            self.plus.as_deref_mut()
        } else {
            self.children.get_mut(level)
        }
    }
}

impl<K> Drop for Node<K> {
    /// Drops the subtree iteratively: a filter may have tens of thousands of levels, and the
    /// default recursive drop would overflow the stack.
    fn drop(&mut self) {
        if self.child_count() == 0 {
            return;
        }
        let mut stack: Vec<Node<K>> = self.children.drain().map(|(_, n)| n).collect();
        stack.extend(self.plus.take().map(|n| *n));
        while let Some(mut node) = stack.pop() {
            stack.extend(node.children.drain().map(|(_, n)| n));
            stack.extend(node.plus.take().map(|n| *n));
        }
    }
}

/// Where a plain filter lives: the levels leading to its node, and whether it is that node's
/// `#` slot. `#` alone lives in the root's `#` slot (no levels).
fn locate(filter: &str) -> (impl Iterator<Item = &str> + Clone, bool) {
    let (path, hash) = if filter == "#" {
        (None, true)
    } else if let Some(parent) = filter.strip_suffix("/#") {
        (Some(parent), true)
    } else {
        (Some(filter), false)
    };
    (path.into_iter().flat_map(|p| p.split('/')), hash)
}

/// Splits the first level off `rest`; the remainder is `None` after the last level.
fn next_level(rest: &str) -> (&str, Option<&str>) {
    match rest.split_once('/') {
        Some((level, rest)) => (level, Some(rest)),
        None => (rest, None),
    }
}

/// Calls `visit` with every `Subs` whose filter matches `topic`; stops early when `visit`
/// returns true and then returns true.
fn walk<'a, K>(root: &'a Node<K>, topic: &str, mut visit: impl FnMut(&'a Subs<K>) -> bool) -> bool {
    // '$' topics are not matched by a first-level wildcard (MQTT-4.7.2-1).
    let dollar = topic.starts_with('$');
    // Only branches are pushed on the stack, so a non-branching walk never allocates.
    let mut stack: Vec<(&'a Node<K>, Option<&str>)> = Vec::new();
    let mut next: Option<(&'a Node<K>, Option<&str>)> = Some((root, Some(topic)));
    let mut at_root = true;
    while let Some((node, rest)) = next.take().or_else(|| stack.pop()) {
        let wildcards_ok = !(at_root && dollar);
        at_root = false;
        if let Some(subs) = node.hash.as_deref() {
            // Reached with levels left, or exactly at the parent level: `a/#` matches `a`.
            if wildcards_ok && visit(subs) {
                return true;
            }
        }
        let Some(rest) = rest else {
            if let Some(subs) = node.exact.as_deref() {
                if visit(subs) {
                    return true;
                }
            }
            continue;
        };
        let (level, rest) = next_level(rest);
        let exact = node.children.get(level);
        let plus = node.plus.as_deref().filter(|_| wildcards_ok);
        next = match (exact, plus) {
            (Some(e), Some(p)) => {
                stack.push((p, rest));
                Some((e, rest))
            }
            (Some(n), None) | (None, Some(n)) => Some((n, rest)),
            (None, None) => None,
        };
    }
    false
}

/// Combines two subscriptions of one key whose filters both match: the max-QoS one wins, and
/// the first subscription identifier seen is kept.
/// The share name of a `$share/GROUP/FILTER` (none for a plain filter) and the plain filter.
fn split_group(filter: &str) -> (Option<&str>, &str) {
    match parse_shared(filter) {
        Some((group, plain)) => (Some(group), plain),
        None => (None, filter),
    }
}

/// Prunes an emptied branch: cuts the edge from depth `cut - 1` to `cut` along `levels`.
fn cut_edge<'a, K>(root: &mut Node<K>, levels: impl Iterator<Item = &'a str>, cut: usize) {
    let mut node: &mut Node<K> = root;
    for (i, level) in levels.enumerate() {
        if i + 1 == cut {
            if level == "+" {
                node.plus = None;
            } else {
                node.children.remove(level);
            }
            break;
        }
        node = match node.child_mut(level) {
            Some(child) => child,
            None => break,
        };
    }
}

fn merge(into: &mut SubOptions, other: SubOptions) {
    // No Local and Retain As Published are per subscription (MQTT-3.8.3-3): one copy is owed
    // when any matching subscription would send it, and it keeps RETAIN if any asks for that
    into.no_local &= other.no_local;
    into.retain_as_published |= other.retain_as_published;
    into.qos = into.qos.max(other.qos);
    let mut ids: Vec<u32> = into.ids().chain(other.ids()).collect();
    ids.sort_unstable();
    ids.dedup();
    into.subscription_id = ids.first().copied();
    into.extra_ids = [0; 3];
    for (slot, id) in into.extra_ids.iter_mut().zip(ids.iter().skip(1)) {
        *slot = *id;
    }
}

/// Collapses repeated keys in place, keeping first-seen order.
fn dedup<K: Clone + Eq + Hash>(direct: &mut Vec<(K, SubOptions)>) {
    let mut seen: HashMap<K, usize> = HashMap::with_capacity(direct.len());
    let mut kept = 0;
    for i in 0..direct.len() {
        if let Some(&at) = seen.get(&direct[i].0) {
            let other = direct[i].1;
            merge(&mut direct[at].1, other);
        } else {
            seen.insert(direct[i].0.clone(), kept);
            direct.swap(kept, i);
            kept += 1;
        }
    }
    direct.truncate(kept);
}

/// Topic trie: filter levels as edges; each node holds the subscribers of the filter ending
/// there (direct and per shared group).
///
/// Why: the broker must find a publish's subscribers among 100,000+ filters without scanning
/// them, and without a global mutex on the publish path.
pub struct Router<K> {
    root: RwLock<Node<K>>,
    /// Distinct filter strings (a shared group counts as its own `$share/G/F` string).
    filters: AtomicUsize,
    /// (key, filter string) pairs.
    subscriptions: AtomicUsize,
}

impl<K: Clone + Eq + Hash> Default for Router<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K> fmt::Debug for Router<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("filters", &self.filters.load(Ordering::Relaxed))
            .field("subscriptions", &self.subscriptions.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<K: Clone + Eq + Hash> Router<K> {
    /// An empty table: the broker starts with no subscriptions.
    pub fn new() -> Self {
        Router {
            root: RwLock::new(Node::default()),
            filters: AtomicUsize::new(0),
            subscriptions: AtomicUsize::new(0),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Node<K>> {
        // Nothing panics while the lock is held; should it, the trie is still consistent.
        self.root.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Node<K>> {
        self.root.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds or replaces (same key, same filter string incl. $share prefix) a subscription.
    /// Returns true when it is new.
    ///
    /// Why: SUBSCRIBE for an existing filter replaces its options (MQTT-3.8.4-3); the return
    /// value tells the caller whether to count it and whether retained messages are due.
    pub fn subscribe(&self, key: &K, filter: &str, opts: SubOptions) -> bool {
        let (group, plain) = split_group(filter);
        let (levels, hash) = locate(plain);
        let mut root = self.write();
        let mut node: &mut Node<K> = &mut root;
        for level in levels {
            node = if level == "+" {
                node.plus.get_or_insert_with(Box::default)
            } else {
                node.children.entry(level.into()).or_default()
            };
        }
        let slot = if hash {
            &mut node.hash
        } else {
            &mut node.exact
        };
        let subs = slot.get_or_insert_with(|| Box::new(Subs::new(plain)));
        let members = match group {
            None => &mut subs.direct,
            Some(group) => subs.shared.entry(group.into()).or_default(),
        };
        if members.is_empty() {
            self.filters.fetch_add(1, Ordering::Relaxed);
        }
        // the new key replaces an equal old one (a key may carry more than what it is
        // compared by: the broker's holds a handle to the subscriber's current session)
        let is_new = members.remove(key).is_none();
        members.insert(key.clone(), opts);
        if is_new {
            self.subscriptions.fetch_add(1, Ordering::Relaxed);
        }
        is_new
    }

    /// Removes one subscription; true when it existed. Prunes empty trie nodes.
    ///
    /// Why: UNSUBSCRIBE and session end must leave no trace, or churn (devices coming and
    /// going with per-device filters) would grow the trie without bound.
    pub fn unsubscribe(&self, key: &K, filter: &str) -> bool {
        let (group, plain) = split_group(filter);
        let (levels, hash) = locate(plain);
        let mut root = self.write();

        // Walk down, remembering where the trailing chain of nodes that only lead to the
        // target starts: if the target empties, that whole chain goes.
        let mut node: &mut Node<K> = &mut root;
        let mut depth = 0;
        let mut chain_start: Option<usize> = None;
        for level in levels.clone() {
            if depth > 0 {
                if !node.has_subs() && node.child_count() == 1 {
                    chain_start.get_or_insert(depth);
                } else {
                    chain_start = None;
                }
            }
            node = match node.child_mut(level) {
                Some(child) => child,
                None => return false,
            };
            depth += 1;
        }

        let slot = if hash {
            &mut node.hash
        } else {
            &mut node.exact
        };
        let Some(subs) = slot.as_deref_mut() else {
            return false;
        };
        let (removed, emptied) = subs.remove(group, key);
        if emptied {
            self.filters.fetch_sub(1, Ordering::Relaxed);
        }
        if !removed {
            return false;
        }
        self.subscriptions.fetch_sub(1, Ordering::Relaxed);
        if subs.is_empty() {
            *slot = None;
        }
        if depth > 0 && !node.has_subs() && node.child_count() == 0 {
            cut_edge(&mut root, levels, chain_start.unwrap_or(depth));
        }
        true
    }

    /// Appends every match of `topic` into `out` (cleared first). A key subscribed through
    /// several overlapping non-shared filters appears ONCE in `direct`, with the maximum QoS of
    /// its matching subscriptions, no_local/retain_as_published taken from that max-QoS one,
    /// and the first non-None subscription id among them. Shared groups are keyed by
    /// (group, filter): each matching group appears once with all its members.
    ///
    /// Why: the publish path — one read lock, no scan of all subscriptions, and one delivery
    /// per session even with overlapping filters (MQTT-3.3.4-2 allows a single copy).
    pub fn matches(&self, topic: &str, out: &mut Matches<K>) {
        out.direct.clear();
        out.shared.clear();
        let mut direct_sources = 0usize;
        {
            let root = self.read();
            walk(&root, topic, |subs| {
                if !subs.direct.is_empty() {
                    direct_sources += 1;
                    out.direct
                        .extend(subs.direct.iter().map(|(k, o)| (k.clone(), *o)));
                }
                for (group, members) in &subs.shared {
                    out.shared.push(SharedMatch {
                        group: group.to_string(),
                        filter: subs.filter.to_string(),
                        members: members.iter().map(|(k, o)| (k.clone(), *o)).collect(),
                    });
                }
                false
            });
        }
        // One matching filter cannot repeat a key: only hash when several filters matched.
        if direct_sources > 1 {
            dedup(&mut out.direct);
        }
    }

    /// Whether any subscription (direct or shared) matches `topic` — cheap check for routing
    /// decisions.
    ///
    /// Why: the cluster forwards a publish to a node only when one of its routes matches; this
    /// stops at the first hit and copies nothing.
    pub fn has_match(&self, topic: &str) -> bool {
        walk(&self.read(), topic, |_| true)
    }

    /// Number of distinct filter strings with at least one subscriber (for metrics / cluster
    /// route counts). `$share/G/F` counts separately from `F` and from other groups.
    pub fn filter_count(&self) -> usize {
        self.filters.load(Ordering::Relaxed)
    }

    /// Number of (key, filter) subscriptions: the broker's subscription gauge.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.load(Ordering::Relaxed)
    }

    /// Every distinct filter string currently subscribed (for snapshots), shared ones as
    /// `$share/GROUP/FILTER`, in no particular order.
    pub fn filters(&self) -> Vec<String> {
        let root = self.read();
        let mut out = Vec::with_capacity(self.filter_count());
        let mut stack: Vec<&Node<K>> = vec![&root];
        while let Some(node) = stack.pop() {
            for subs in [node.exact.as_deref(), node.hash.as_deref()]
                .into_iter()
                .flatten()
            {
                if !subs.direct.is_empty() {
                    out.push(subs.filter.to_string());
                }
                for group in subs.shared.keys() {
                    out.push(format!("{SHARE_PREFIX}{group}/{}", subs.filter));
                }
            }
            stack.extend(node.children.values());
            stack.extend(node.plus.as_deref());
        }
        out
    }
}

#[cfg(test)]
#[path = "trie_tests.rs"]
mod tests;
