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
        let (group, plain) = match parse_shared(filter) {
            Some((group, plain)) => (Some(group), plain),
            None => (None, filter),
        };
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
        let is_new = members.insert(key.clone(), opts).is_none();
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
        let (group, plain) = match parse_shared(filter) {
            Some((group, plain)) => (Some(group), plain),
            None => (None, filter),
        };
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
        let removed = match group {
            None => {
                let removed = subs.direct.remove(key).is_some();
                if removed && subs.direct.is_empty() {
                    self.filters.fetch_sub(1, Ordering::Relaxed);
                }
                removed
            }
            Some(group) => match subs.shared.get_mut(group) {
                Some(members) => {
                    let removed = members.remove(key).is_some();
                    if removed && members.is_empty() {
                        subs.shared.remove(group);
                        self.filters.fetch_sub(1, Ordering::Relaxed);
                    }
                    removed
                }
                None => false,
            },
        };
        if !removed {
            return false;
        }
        self.subscriptions.fetch_sub(1, Ordering::Relaxed);
        if subs.is_empty() {
            *slot = None;
        }
        if depth > 0 && !node.has_subs() && node.child_count() == 0 {
            let cut = chain_start.unwrap_or(depth);
            // Cut the edge from depth `cut - 1` to `cut`.
            let mut node: &mut Node<K> = &mut root;
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
mod tests {
    use super::*;
    use crate::topic;
    use std::collections::{BTreeMap, BTreeSet};

    fn opts(qos: u8) -> SubOptions {
        SubOptions {
            qos,
            ..SubOptions::default()
        }
    }

    /// Direct matches as a sorted map, for order-independent comparisons.
    fn direct_of(router: &Router<u64>, topic: &str) -> BTreeMap<u64, SubOptions> {
        let mut out = Matches::default();
        router.matches(topic, &mut out);
        let map: BTreeMap<u64, SubOptions> = out.direct.iter().copied().collect();
        assert_eq!(
            map.len(),
            out.direct.len(),
            "duplicate key in direct for {topic}"
        );
        map
    }

    /// Shared matches as sorted (group, filter, members).
    fn shared_of(router: &Router<u64>, topic: &str) -> BTreeSet<(String, String, Vec<u64>)> {
        let mut out = Matches::default();
        router.matches(topic, &mut out);
        let set: BTreeSet<_> = out
            .shared
            .iter()
            .map(|s| {
                let mut members: Vec<u64> = s.members.iter().map(|(k, _)| *k).collect();
                members.sort_unstable();
                (s.group.clone(), s.filter.clone(), members)
            })
            .collect();
        assert_eq!(set.len(), out.shared.len(), "duplicate group for {topic}");
        set
    }

    fn keys(map: &BTreeMap<u64, SubOptions>) -> Vec<u64> {
        map.keys().copied().collect()
    }

    #[test]
    fn overlapping_filters_collapse_to_max_qos() {
        let r = Router::new();
        assert!(r.subscribe(&1, "a/b/c", opts(0)));
        let high = SubOptions {
            qos: 2,
            no_local: true,
            retain_as_published: true,
            subscription_id: None,
            extra_ids: [0; 3],
        };
        assert!(r.subscribe(&1, "a/+/c", high));
        let with_id = SubOptions {
            qos: 1,
            subscription_id: Some(7),
            ..SubOptions::default()
        };
        assert!(r.subscribe(&1, "a/#", with_id));
        assert!(r.subscribe(&2, "a/#", opts(1)));
        let got = direct_of(&r, "a/b/c");
        assert_eq!(keys(&got), vec![1, 2]);
        assert_eq!(
            got[&1],
            SubOptions {
                qos: 2,
                // a/b/c has no No Local: one copy is still owed for the client's own publish
                no_local: false,
                retain_as_published: true,
                subscription_id: Some(7),
                extra_ids: [0; 3],
            }
        );
        assert_eq!(got[&2], opts(1));
        // Only one filter matches: no merging involved.
        assert_eq!(direct_of(&r, "a/x")[&1], with_id);
    }

    #[test]
    fn every_overlapping_subscription_identifier_is_kept() {
        let r = Router::new();
        let id = |i| SubOptions {
            qos: 1,
            subscription_id: Some(i),
            ..SubOptions::default()
        };
        r.subscribe(&1, "si/+", id(7));
        r.subscribe(&1, "si/#", id(9));
        let got = direct_of(&r, "si/a");
        assert_eq!(got[&1].ids().collect::<Vec<_>>(), vec![7, 9]);
    }

    #[test]
    fn resubscribe_replaces_options() {
        let r = Router::new();
        assert!(r.subscribe(&1, "a/b", opts(0)));
        assert!(!r.subscribe(&1, "a/b", opts(2)));
        assert_eq!(r.subscription_count(), 1);
        assert_eq!(r.filter_count(), 1);
        assert_eq!(direct_of(&r, "a/b")[&1], opts(2));
    }

    #[test]
    fn unsubscribe_removes_and_prunes() {
        let r = Router::new();
        let filters = [
            "a/b/c/d",
            "a/b",
            "a/+/c",
            "a/#",
            "#",
            "+",
            "+/+/#",
            "/",
            "$share/g/a/b",
            "$share/h/#",
            "x/y/z/#",
        ];
        for (i, f) in filters.iter().enumerate() {
            assert!(r.subscribe(&(i as u64), f, opts(1)));
            assert!(r.subscribe(&100, f, opts(0)));
        }
        assert_eq!(r.filter_count(), filters.len());
        assert_eq!(r.subscription_count(), 2 * filters.len());
        assert!(!r.unsubscribe(&999, "a/b"));
        assert!(!r.unsubscribe(&1, "a/b/c"));
        assert!(!r.unsubscribe(&1, "$share/zz/a/b"));
        for (i, f) in filters.iter().enumerate() {
            assert!(r.unsubscribe(&(i as u64), f), "{f}");
            assert!(!r.unsubscribe(&(i as u64), f), "{f} twice");
        }
        assert_eq!(r.filter_count(), filters.len());
        assert!(keys(&direct_of(&r, "a/b/c/d")) == vec![100]);
        for f in filters.iter().rev() {
            assert!(r.unsubscribe(&100, f), "{f}");
        }
        assert_eq!(r.filter_count(), 0);
        assert_eq!(r.subscription_count(), 0);
        assert!(r.filters().is_empty());
        assert!(!r.has_match("a/b/c/d"));
        let root = r.read();
        assert_eq!(root.child_count(), 0, "trie not pruned");
        assert!(!root.has_subs());
    }

    #[test]
    fn prune_keeps_siblings_and_branches() {
        let r = Router::new();
        r.subscribe(&1, "a/b/c/d", opts(0));
        r.subscribe(&2, "a/b/x", opts(0));
        r.subscribe(&3, "a/b/c/d/#", opts(0));
        assert!(r.unsubscribe(&1, "a/b/c/d"));
        assert_eq!(keys(&direct_of(&r, "a/b/c/d")), vec![3]);
        assert!(r.unsubscribe(&3, "a/b/c/d/#"));
        assert_eq!(keys(&direct_of(&r, "a/b/x")), vec![2]);
        {
            let root = r.read();
            let b = root
                .child("a")
                .and_then(|a| a.child("b"))
                .expect("a/b still there");
            assert_eq!(b.child_count(), 1, "a/b/c chain not pruned");
        }
        assert!(r.unsubscribe(&2, "a/b/x"));
        assert_eq!(r.read().child_count(), 0);
    }

    #[test]
    fn shared_groups_collected_with_all_members() {
        let r = Router::new();
        r.subscribe(&1, "$share/g1/sensors/+/temp", opts(1));
        r.subscribe(&2, "$share/g1/sensors/+/temp", opts(0));
        r.subscribe(&3, "$share/g2/sensors/+/temp", opts(0));
        r.subscribe(&4, "$share/g1/sensors/#", opts(0));
        r.subscribe(&5, "sensors/+/temp", opts(0));
        assert_eq!(r.filter_count(), 4);
        let shared = shared_of(&r, "sensors/k1/temp");
        let expect: BTreeSet<_> = [
            ("g1", "sensors/+/temp", vec![1, 2]),
            ("g2", "sensors/+/temp", vec![3]),
            ("g1", "sensors/#", vec![4]),
        ]
        .into_iter()
        .map(|(g, f, m)| (g.to_string(), f.to_string(), m))
        .collect();
        assert_eq!(shared, expect);
        // Shared members are not direct subscribers.
        assert_eq!(keys(&direct_of(&r, "sensors/k1/temp")), vec![5]);
        let mut filters = r.filters();
        filters.sort();
        assert_eq!(
            filters,
            vec![
                "$share/g1/sensors/#",
                "$share/g1/sensors/+/temp",
                "$share/g2/sensors/+/temp",
                "sensors/+/temp"
            ]
        );
        assert!(r.unsubscribe(&1, "$share/g1/sensors/+/temp"));
        assert!(r.unsubscribe(&2, "$share/g1/sensors/+/temp"));
        assert_eq!(r.filter_count(), 3);
        assert_eq!(shared_of(&r, "sensors/k1/temp").len(), 2);
    }

    #[test]
    fn dollar_topics() {
        let r = Router::new();
        r.subscribe(&1, "#", opts(0));
        r.subscribe(&2, "+/monitor/Clients", opts(0));
        r.subscribe(&3, "$SYS/#", opts(0));
        r.subscribe(&4, "$SYS/monitor/+", opts(0));
        r.subscribe(&5, "$share/g/#", opts(0));
        r.subscribe(&6, "+/#", opts(0));
        assert_eq!(keys(&direct_of(&r, "$SYS/monitor/Clients")), vec![3, 4]);
        assert!(shared_of(&r, "$SYS/monitor/Clients").is_empty());
        assert_eq!(keys(&direct_of(&r, "x/monitor/Clients")), vec![1, 2, 6]);
        assert_eq!(shared_of(&r, "x/monitor/Clients").len(), 1);
        let only_wild = Router::new();
        only_wild.subscribe(&1u64, "#", opts(0));
        only_wild.subscribe(&2, "+/x", opts(0));
        assert!(!only_wild.has_match("$SYS/x"));
        assert!(only_wild.has_match("a/x"));
    }

    #[test]
    fn parent_level_and_empty_levels() {
        let r = Router::new();
        r.subscribe(&1, "a/#", opts(0));
        r.subscribe(&2, "+/+", opts(0));
        r.subscribe(&3, "/+", opts(0));
        r.subscribe(&4, "+", opts(0));
        assert_eq!(keys(&direct_of(&r, "a")), vec![1, 4]);
        assert_eq!(keys(&direct_of(&r, "/finance")), vec![2, 3]);
        assert_eq!(keys(&direct_of(&r, "a/")), vec![1, 2]);
    }

    #[test]
    fn hundred_thousand_filters() {
        let r = Router::new();
        for i in 0..100_000u64 {
            assert!(r.subscribe(&i, &format!("dev/{i}/cmd"), opts(1)));
        }
        let wild = [
            "dev/+/cmd",
            "dev/#",
            "#",
            "+/777/+",
            "dev/777/#",
            "dev/+/status",
            "dev/7777/+",
            "fleet/#",
            "$SYS/#",
            "+/+/+/+",
        ];
        for (j, f) in wild.iter().enumerate() {
            assert!(r.subscribe(&(1_000_000 + j as u64), f, opts(0)));
        }
        assert_eq!(r.filter_count(), 100_010);
        let got = keys(&direct_of(&r, "dev/777/cmd"));
        let expect: Vec<u64> = std::iter::once(777)
            .chain(
                wild.iter()
                    .enumerate()
                    .filter(|(_, f)| topic::matches(f, "dev/777/cmd"))
                    .map(|(j, _)| 1_000_000 + j as u64),
            )
            .collect();
        assert_eq!(got, expect);
        assert_eq!(
            got,
            vec![777, 1_000_000, 1_000_001, 1_000_002, 1_000_003, 1_000_004]
        );
    }

    /// Small deterministic PRNG (xorshift64*), so the cross-check needs no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn random_topic(rng: &mut Rng) -> String {
        const LEVELS: [&str; 5] = ["a", "b", "", "$s", "c"];
        let n = 1 + rng.below(4);
        (0..n)
            .map(|_| LEVELS[rng.below(LEVELS.len())])
            .collect::<Vec<_>>()
            .join("/")
    }

    fn random_filter(rng: &mut Rng) -> String {
        const LEVELS: [&str; 6] = ["a", "b", "", "$s", "+", "+"];
        let n = 1 + rng.below(4);
        let mut levels: Vec<&str> = (0..n).map(|_| LEVELS[rng.below(LEVELS.len())]).collect();
        if rng.below(4) == 0 {
            levels.push("#");
        }
        let mut filter = levels.join("/");
        if filter.is_empty() {
            filter.push('+');
        }
        if rng.below(5) == 0 {
            format!("$share/g{}/{filter}", rng.below(2))
        } else {
            filter
        }
    }

    #[test]
    fn randomized_cross_check_with_brute_force() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let r = Router::new();
        let mut subs: Vec<(u64, String, SubOptions)> = Vec::new();
        for _ in 0..2_000 {
            let key = rng.below(300) as u64;
            let filter = random_filter(&mut rng);
            assert!(topic::valid_topic_filter(&filter), "{filter}");
            let o = SubOptions {
                qos: rng.below(3) as u8,
                no_local: rng.below(2) == 0,
                retain_as_published: false,
                subscription_id: (rng.below(2) == 0).then(|| rng.below(1000) as u32),
                extra_ids: [0; 3],
            };
            let new = r.subscribe(&key, &filter, o);
            let old = subs.iter().position(|(k, f, _)| *k == key && *f == filter);
            assert_eq!(new, old.is_none());
            match old {
                Some(i) => subs[i].2 = o,
                None => subs.push((key, filter, o)),
            }
        }
        // Remove a quarter again so pruning is exercised too.
        for _ in 0..500 {
            let i = rng.below(subs.len());
            let (key, filter, _) = subs.swap_remove(i);
            assert!(r.unsubscribe(&key, &filter));
        }
        assert_eq!(r.subscription_count(), subs.len());
        let distinct: BTreeSet<&str> = subs.iter().map(|(_, f, _)| f.as_str()).collect();
        assert_eq!(r.filter_count(), distinct.len());
        let mut listed = r.filters();
        listed.sort();
        assert_eq!(
            listed,
            distinct.iter().map(|f| f.to_string()).collect::<Vec<_>>()
        );

        let mut out = Matches::default();
        for _ in 0..2_000 {
            let t = random_topic(&mut rng);
            // Brute force: direct keys with max QoS, shared groups with members.
            let mut direct: BTreeMap<u64, u8> = BTreeMap::new();
            let mut shared: BTreeMap<(String, String), BTreeSet<u64>> = BTreeMap::new();
            for (key, filter, o) in &subs {
                match topic::parse_shared(filter) {
                    Some((g, f)) if topic::matches(f, &t) => {
                        shared
                            .entry((g.to_string(), f.to_string()))
                            .or_default()
                            .insert(*key);
                    }
                    None if topic::matches(filter, &t) => {
                        let q = direct.entry(*key).or_default();
                        *q = (*q).max(o.qos);
                    }
                    _ => {}
                }
            }
            r.matches(&t, &mut out);
            let got_direct: BTreeMap<u64, u8> =
                out.direct.iter().map(|(k, o)| (*k, o.qos)).collect();
            assert_eq!(got_direct.len(), out.direct.len(), "dup key for {t}");
            assert_eq!(got_direct, direct, "direct for {t:?}");
            let got_shared: BTreeMap<(String, String), BTreeSet<u64>> = out
                .shared
                .iter()
                .map(|s| {
                    let members = s.members.iter().map(|(k, _)| *k).collect();
                    ((s.group.clone(), s.filter.clone()), members)
                })
                .collect();
            assert_eq!(got_shared.len(), out.shared.len(), "dup group for {t}");
            assert_eq!(got_shared, shared, "shared for {t:?}");
            assert_eq!(r.has_match(&t), !direct.is_empty() || !shared.is_empty());
        }
    }

    #[test]
    fn concurrent_readers_and_writer() {
        let r = std::sync::Arc::new(Router::new());
        r.subscribe(&0u64, "dev/+/cmd", opts(1));
        let readers: Vec<_> = (0..4)
            .map(|t| {
                let r = r.clone();
                std::thread::spawn(move || {
                    let mut out = Matches::default();
                    for i in 0..2_000u64 {
                        r.matches(&format!("dev/{}/cmd", i + t), &mut out);
                        assert!(out.direct.iter().any(|(k, _)| *k == 0));
                    }
                })
            })
            .collect();
        for i in 1..2_000u64 {
            r.subscribe(&i, &format!("dev/{i}/cmd"), opts(0));
        }
        for h in readers {
            assert!(h.join().is_ok());
        }
        assert_eq!(r.subscription_count(), 2_000);
    }

    #[test]
    fn very_deep_filters_do_not_overflow_the_stack() {
        // 30,000 levels, within the 65,535-byte limit: subscribe, match, unsubscribe and drop
        // must not recurse per level.
        let deep_plus = vec!["+"; 30_000].join("/");
        let deep_topic = vec!["a"; 30_000].join("/");
        let r = Router::new();
        r.subscribe(&1u64, &deep_plus, opts(0));
        r.subscribe(&2u64, &format!("{deep_topic}/#"), opts(0));
        assert_eq!(keys(&direct_of(&r, &deep_topic)), vec![1, 2]);
        assert!(r.unsubscribe(&1, &deep_plus));
        assert_eq!(r.read().child_count(), 1);
        drop(r);
    }
}
