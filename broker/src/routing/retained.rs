//! The retained-message store: the last RETAIN publish of each topic, found by filter.
//!
//! A trie keyed by topic levels behind one `RwLock`. A new subscription looks up only the
//! branches its filter can reach (a literal prefix such as `dev/42/#` touches one path), so the
//! cost does not grow with the number of retained topics elsewhere. Matching follows
//! [`topic::matches`](crate::topic::matches), including the rule that `+` or `#` as the first
//! level does not reach topics beginning with `$`. Generic over the message type so the broker
//! and the cluster sync can store whatever they carry.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// One level of the trie; `msg` holds the full topic so lookups need not rebuild it.
struct Node<M> {
    children: HashMap<Box<str>, Node<M>>,
    msg: Option<(Box<str>, M)>,
}

impl<M> Default for Node<M> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            msg: None,
        }
    }
}

impl<M> Drop for Node<M> {
    /// Drops the subtree iteratively: a topic may have tens of thousands of levels, and the
    /// default recursive drop would overflow the stack.
    fn drop(&mut self) {
        if self.children.is_empty() {
            return;
        }
        let mut stack: Vec<Node<M>> = self.children.drain().map(|(_, n)| n).collect();
        while let Some(mut node) = stack.pop() {
            stack.extend(node.children.drain().map(|(_, n)| n));
        }
    }
}

/// Splits the first level off `rest`; the remainder is `None` after the last level.
fn next_level(rest: &str) -> (&str, Option<&str>) {
    match rest.split_once('/') {
        Some((level, rest)) => (level, Some(rest)),
        None => (rest, None),
    }
}

/// Retained messages by topic, with wildcard lookup for new subscriptions.
///
/// Why: every SUBSCRIBE must receive the retained messages its filter matches (MQTT-3.3.1-6)
/// without scanning every retained topic, and PUBLISH with RETAIN must replace or clear one.
pub struct Retained<M> {
    root: RwLock<Node<M>>,
    len: AtomicUsize,
}

impl<M: Clone> Default for Retained<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M> fmt::Debug for Retained<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retained")
            .field("len", &self.len.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<M: Clone> Retained<M> {
    /// An empty store: a fresh node has nothing retained until restored or synced.
    pub fn new() -> Self {
        Retained {
            root: RwLock::new(Node::default()),
            len: AtomicUsize::new(0),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Node<M>> {
        // Nothing panics while the lock is held; should it, the trie is still consistent.
        self.root.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Node<M>> {
        self.root.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets (Some) or clears (None) the retained message of a topic; returns the previous one.
    ///
    /// Why: a RETAIN publish replaces the topic's message, and one with an empty payload
    /// removes it (MQTT-3.3.1-10/11); the caller decides which by passing `None`. Clearing
    /// prunes the topic's now-empty levels.
    pub fn set(&self, topic: &str, msg: Option<M>) -> Option<M> {
        match msg {
            Some(msg) => self.insert(topic, msg),
            None => self.remove(topic),
        }
    }

    fn insert(&self, topic: &str, msg: M) -> Option<M> {
        let mut root = self.write();
        let mut node: &mut Node<M> = &mut root;
        for level in topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        match &mut node.msg {
            Some((_, old)) => Some(std::mem::replace(old, msg)),
            None => {
                node.msg = Some((topic.into(), msg));
                self.len.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    fn remove(&self, topic: &str) -> Option<M> {
        let mut root = self.write();
        // Walk down, remembering where the trailing chain of nodes that only lead to the
        // topic starts: once the topic's node empties, that whole chain goes.
        let mut node: &mut Node<M> = &mut root;
        let mut depth = 0;
        let mut chain_start: Option<usize> = None;
        for level in topic.split('/') {
            if depth > 0 {
                if node.msg.is_none() && node.children.len() == 1 {
                    chain_start.get_or_insert(depth);
                } else {
                    chain_start = None;
                }
            }
            node = node.children.get_mut(level)?;
            depth += 1;
        }
        let (_, old) = node.msg.take()?;
        self.len.fetch_sub(1, Ordering::Relaxed);
        if node.children.is_empty() {
            let cut = chain_start.unwrap_or(depth);
            let mut node: &mut Node<M> = &mut root;
            for (i, level) in topic.split('/').enumerate() {
                if i + 1 == cut {
                    node.children.remove(level);
                    break;
                }
                match node.children.get_mut(level) {
                    Some(child) => node = child,
                    None => break,
                }
            }
        }
        Some(old)
    }

    /// The retained message of exactly `topic`.
    ///
    /// Why: lets the publish path and the cluster sync compare before replacing.
    pub fn get(&self, topic: &str) -> Option<M> {
        let root = self.read();
        let mut node: &Node<M> = &root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.msg.as_ref().map(|(_, m)| m.clone())
    }

    /// Every retained (topic, message) whose topic matches `filter` (same rules as
    /// topic::matches incl. '$'), in no particular order.
    ///
    /// Why: sent to a new subscription. Only the branches the filter can reach are visited,
    /// so a literal prefix keeps the lookup small. `filter` is a plain filter: shared
    /// subscriptions get no retained messages (MQTT 5.0 §4.8.2), so strip nothing here.
    pub fn matching(&self, filter: &str) -> Vec<(String, M)> {
        let mut out = Vec::new();
        self.visit_matching(filter, |t, m| out.push((t.to_string(), m.clone())));
        out
    }

    /// The retained messages whose topic matches `filter`, without their topics.
    ///
    /// Why: the snapshot a new subscription streams from; the message carries its topic, so
    /// copying every topic string (as [`Retained::matching`] does) would only cost memory.
    pub fn matching_messages(&self, filter: &str) -> Vec<M> {
        let mut out = Vec::new();
        self.visit_matching(filter, |_, m| out.push(m.clone()));
        out
    }

    /// `f` of every retained message whose topic matches `filter`.
    ///
    /// Why: lets a wrapper hand out part of what it stores (the message of a versioned entry)
    /// without a second copy of the list.
    pub fn matching_map<T>(&self, filter: &str, mut f: impl FnMut(&M) -> T) -> Vec<T> {
        let mut out = Vec::new();
        self.visit_matching(filter, |_, m| out.push(f(m)));
        out
    }

    /// Calls `f` with every retained (topic, message) matching `filter`, under the read lock.
    fn visit_matching(&self, filter: &str, mut f: impl FnMut(&str, &M)) {
        let root = self.read();
        let mut visit = |node: &Node<M>| {
            if let Some((topic, msg)) = &node.msg {
                f(topic, msg);
            }
        };
        let mut stack: Vec<(&Node<M>, Option<&str>, bool)> = vec![(&root, Some(filter), true)];
        while let Some((node, rest, at_root)) = stack.pop() {
            let Some(rest) = rest else {
                visit(node);
                continue;
            };
            let (level, rest) = next_level(rest);
            match (level, rest) {
                // `#` last: this level and everything below ("a/#" matches "a").
                ("#", None) => {
                    visit(node);
                    let mut below: Vec<&Node<M>> = node
                        .children
                        .iter()
                        .filter(|(k, _)| !(at_root && k.starts_with('$')))
                        .map(|(_, n)| n)
                        .collect();
                    while let Some(n) = below.pop() {
                        visit(n);
                        below.extend(n.children.values());
                    }
                }
                ("+", rest) => stack.extend(
                    node.children
                        .iter()
                        .filter(|(k, _)| !(at_root && k.starts_with('$')))
                        .map(|(_, n)| (n, rest, false)),
                ),
                (level, rest) => {
                    if let Some(n) = node.children.get(level) {
                        stack.push((n, rest, false));
                    }
                }
            }
        }
    }

    /// Number of retained topics, for metrics.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All entries (snapshot for persistence/cluster sync), in no particular order.
    pub fn all(&self) -> Vec<(String, M)> {
        let root = self.read();
        let mut out = Vec::with_capacity(self.len());
        let mut stack: Vec<&Node<M>> = vec![&root];
        while let Some(node) = stack.pop() {
            push_msg(node, &mut out);
            stack.extend(node.children.values());
        }
        out
    }
}

fn push_msg<M: Clone>(node: &Node<M>, out: &mut Vec<(String, M)>) {
    if let Some((topic, msg)) = &node.msg {
        out.push((topic.to_string(), msg.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic;

    fn sorted(mut v: Vec<(String, u32)>) -> Vec<(String, u32)> {
        v.sort();
        v
    }

    fn topics(v: Vec<(String, u32)>) -> Vec<String> {
        sorted(v).into_iter().map(|(t, _)| t).collect()
    }

    #[test]
    fn set_replace_clear() {
        let r = Retained::new();
        assert!(r.is_empty());
        assert_eq!(r.set("a/b", Some(1)), None);
        assert_eq!(r.set("a/b", Some(2)), Some(1));
        assert_eq!(r.get("a/b"), Some(2));
        assert_eq!(r.get("a"), None);
        assert_eq!(r.get("a/b/c"), None);
        assert_eq!(r.len(), 1);
        assert_eq!(r.set("a", Some(3)), None);
        assert_eq!(r.set("a/b/c/d", Some(4)), None);
        assert_eq!(r.len(), 3);
        assert_eq!(r.set("a/b/c", None), None);
        assert_eq!(r.set("x", None), None);
        assert_eq!(r.len(), 3);
        assert_eq!(r.set("a/b", None), Some(2));
        assert_eq!(r.get("a/b"), None);
        assert_eq!(r.get("a/b/c/d"), Some(4));
        assert_eq!(r.len(), 2);
        assert_eq!(
            sorted(r.all()),
            vec![("a".into(), 3), ("a/b/c/d".into(), 4)]
        );
        assert_eq!(r.set("a/b/c/d", None), Some(4));
        assert_eq!(r.read().children.len(), 1, "a/b/c/d chain not pruned");
        assert_eq!(
            r.read().children.get("a").map(|a| a.children.len()),
            Some(0)
        );
        assert_eq!(r.set("a", None), Some(3));
        assert!(r.is_empty());
        assert!(r.all().is_empty());
        assert!(r.read().children.is_empty(), "trie not pruned");
    }

    #[test]
    fn matching_with_wildcards() {
        let r = Retained::new();
        for (i, t) in [
            "sport/tennis/player1",
            "sport/tennis/player1/ranking",
            "sport/tennis/player2",
            "sport",
            "sport/",
            "/finance",
            "other",
        ]
        .iter()
        .enumerate()
        {
            r.set(t, Some(i as u32));
        }
        assert_eq!(
            topics(r.matching("sport/tennis/player1/#")),
            vec!["sport/tennis/player1", "sport/tennis/player1/ranking"]
        );
        assert_eq!(
            topics(r.matching("sport/tennis/+")),
            vec!["sport/tennis/player1", "sport/tennis/player2"]
        );
        assert_eq!(topics(r.matching("sport/+")), vec!["sport/"]);
        assert_eq!(topics(r.matching("sport/#")).len(), 5);
        assert_eq!(topics(r.matching("+/+")), vec!["/finance", "sport/"]);
        assert_eq!(topics(r.matching("/+")), vec!["/finance"]);
        assert_eq!(topics(r.matching("+")), vec!["other", "sport"]);
        assert_eq!(topics(r.matching("#")).len(), 7);
        assert_eq!(topics(r.matching("sport")), vec!["sport"]);
        assert!(r.matching("nothing/#").is_empty());
        assert_eq!(r.matching("other"), vec![("other".to_string(), 6)]);
        let mut values = r.matching_messages("sport/#");
        values.sort();
        let mut want: Vec<u32> = r.matching("sport/#").into_iter().map(|(_, m)| m).collect();
        want.sort();
        assert_eq!(values, want);
    }

    #[test]
    fn dollar_topics_need_a_literal_first_level() {
        let r = Retained::new();
        r.set("$SYS/monitor/Clients", Some(1));
        r.set("$SYS", Some(2));
        r.set("a/$SYS", Some(3));
        assert_eq!(topics(r.matching("#")), vec!["a/$SYS"]);
        assert!(r.matching("+/monitor/Clients").is_empty());
        assert!(r.matching("+").is_empty());
        assert_eq!(
            topics(r.matching("$SYS/#")),
            vec!["$SYS", "$SYS/monitor/Clients"]
        );
        assert_eq!(
            topics(r.matching("$SYS/monitor/+")),
            vec!["$SYS/monitor/Clients"]
        );
        assert_eq!(topics(r.matching("+/+")), vec!["a/$SYS"]);
    }

    use crate::test_rng::Rng;

    fn random_levels(rng: &mut Rng, alphabet: &[&str]) -> String {
        let n = 1 + rng.below(4);
        (0..n)
            .map(|_| alphabet[rng.below(alphabet.len())])
            .collect::<Vec<_>>()
            .join("/")
    }

    #[test]
    fn randomized_cross_check_with_brute_force() {
        const TOPIC_LEVELS: [&str; 5] = ["a", "b", "", "$s", "c"];
        const FILTER_LEVELS: [&str; 6] = ["a", "b", "", "$s", "+", "+"];
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        let r = Retained::new();
        let mut model: HashMap<String, u32> = HashMap::new();
        for i in 0..2_000u32 {
            let t = random_levels(&mut rng, &TOPIC_LEVELS);
            let msg = (rng.below(4) != 0).then_some(i);
            assert_eq!(r.set(&t, msg), model.remove(&t), "set {t:?}");
            if let Some(m) = msg {
                model.insert(t, m);
            }
            assert_eq!(r.len(), model.len());
        }
        let mut expect_all: Vec<(String, u32)> = model.clone().into_iter().collect();
        expect_all.sort();
        assert_eq!(sorted(r.all()), expect_all);
        for _ in 0..2_000 {
            let mut f = random_levels(&mut rng, &FILTER_LEVELS);
            if rng.below(4) == 0 {
                f.push_str("/#");
            } else if f.is_empty() {
                f.push('#');
            }
            assert!(topic::valid_topic_filter(&f), "{f:?}");
            let mut expect: Vec<(String, u32)> = model
                .iter()
                .filter(|(t, _)| topic::matches(&f, t))
                .map(|(t, m)| (t.clone(), *m))
                .collect();
            expect.sort();
            assert_eq!(sorted(r.matching(&f)), expect, "filter {f:?}");
        }
        for (t, m) in &model {
            assert_eq!(r.get(t), Some(*m));
            assert_eq!(r.set(t, None), Some(*m));
        }
        assert!(r.is_empty());
        assert!(r.read().children.is_empty(), "trie not pruned");
    }

    #[test]
    fn very_deep_topics_do_not_overflow_the_stack() {
        let deep = vec!["a"; 30_000].join("/");
        let r = Retained::new();
        r.set(&deep, Some(1u32));
        r.set("a", Some(2));
        assert_eq!(r.get(&deep), Some(1));
        assert_eq!(r.matching("a/#").len(), 2);
        assert_eq!(r.set(&deep, None), Some(1));
        assert_eq!(
            r.read().children.get("a").map(|a| a.children.len()),
            Some(0)
        );
        r.set(&deep, Some(3));
        drop(r);
    }
}
