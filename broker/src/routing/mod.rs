//! Routing: where a publish goes. The subscription trie ([`trie`]), retained messages
//! ([`retained`], versioned with tombstones by [`retained_versions`] so nodes converge) and the
//! shared-subscription policy ([`shared`]) are tables and rules with no I/O; [`Routing`] turns
//! a topic's matches (local and, in a cluster, remote) into a [`Plan`] of
//! deliveries. It knows nothing of sessions or the cluster: it imports only [`crate::topic`],
//! [`crate::message`], [`crate::config`] and [`crate::store`] (for the retained records).

pub mod retained;
pub mod retained_versions;
pub mod shared;
pub mod trie;

use std::collections::HashMap;
use std::sync::Arc;

use self::retained_versions::{unix_ms, RetainedSet, Version};
pub use self::shared::Readiness;
use self::shared::{Shared, Target};
pub use self::trie::{Matches, Router, SubOptions};
use crate::config::SharedPolicy;
use crate::message::Message;
use crate::store::{Op, Store, StoreError, Table};

/// Where one message goes; `K` names a local subscriber (the broker's trie holds a handle to
/// its session).
pub struct Plan<K> {
    /// Local deliveries: direct subscribers first, then one member per shared group.
    pub local: Vec<(K, SubOptions)>,
    /// Copies for other nodes, one per node.
    pub remote: Vec<RemoteCopy>,
}

/// The copy of a message one other node gets.
pub struct RemoteCopy {
    /// The node.
    pub node: Arc<str>,
    /// Whether its non-shared subscribers get it.
    pub direct: bool,
    /// The `(group, filter)`s it picks a member of.
    pub shared: Vec<(String, String)>,
}

/// A shared group's local members and the other nodes with members.
type GroupCandidates<K> = (Vec<(K, SubOptions)>, Vec<Arc<str>>);

/// Retained messages and the shared-group policy: the routing state beside the trie.
pub struct Routing {
    retained: RetainedSet,
    shared: Shared,
}

impl Routing {
    /// Empty tables under the node's shared-subscription policy, with `retained` (empty).
    pub fn new(policy: SharedPolicy, retained: RetainedSet) -> Routing {
        Routing {
            retained,
            shared: Shared::new(policy),
        }
    }

    /// The retained messages.
    pub fn retained(&self) -> &RetainedSet {
        &self.retained
    }

    /// Loads the retained messages (and tombstones) from the store; queues the deletes of
    /// tombstones that expired while the node was down.
    pub fn restore(&self, store: &Store) -> Result<(), StoreError> {
        let expired = self
            .retained
            .restore(store.scan(Table::Retained)?, unix_ms());
        if !expired.is_empty() {
            store.write_nowait(expired);
        }
        Ok(())
    }

    /// Sets (or, with an empty payload, clears) the retained message of `msg.topic` for a
    /// publish taken here; pushes the store operations that record it (only when `durable`,
    /// never for `$SYS`). Returns its version, for the other nodes.
    pub fn retain(&self, msg: &Arc<Message>, durable: bool, ops: &mut Vec<Op>) -> Version {
        self.retained.set_local(msg, durable, ops)
    }

    /// Plans a publish from its local and remote matches: shared groups get one member
    /// cluster-wide per (group, filter); `ready` says how ready each local client is to take
    /// it (a member with room first).
    pub fn plan<K: Clone>(
        &self,
        local: Matches<K>,
        remote: Option<Matches<Arc<str>>>,
        ready: &dyn Fn(&K) -> Readiness,
    ) -> Plan<K> {
        let mut plan = Plan {
            local: local.direct,
            remote: Vec::new(),
        };
        let mut remote_shared: HashMap<Arc<str>, Vec<(String, String)>> = HashMap::new();
        let mut groups: HashMap<(String, String), GroupCandidates<K>> = HashMap::new();
        for g in local.shared {
            groups
                .entry((g.group, g.filter))
                .or_insert_with(|| (Vec::new(), Vec::new()))
                .0 = g.members;
        }
        if let Some(rm) = &remote {
            for g in &rm.shared {
                groups
                    .entry((g.group.clone(), g.filter.clone()))
                    .or_insert_with(|| (Vec::new(), Vec::new()))
                    .1 = g.members.iter().map(|(n, _)| n.clone()).collect();
            }
        }
        for ((group, filter), (members, nodes)) in groups {
            match self.shared.choose(&group, &filter, &members, &nodes, ready) {
                Some(Target::Local(client, opts)) => plan.local.push((client, opts)),
                Some(Target::Node(n)) => remote_shared.entry(n).or_default().push((group, filter)),
                None => {}
            }
        }
        if let Some(rm) = remote {
            let mut direct: Vec<Arc<str>> = rm.direct.into_iter().map(|(n, _)| n).collect();
            direct.sort();
            direct.dedup();
            let mut nodes: Vec<Arc<str>> = direct
                .iter()
                .cloned()
                .chain(remote_shared.keys().cloned())
                .collect();
            nodes.sort();
            nodes.dedup();
            for node in nodes {
                plan.remote.push(RemoteCopy {
                    direct: direct.binary_search(&node).is_ok(),
                    shared: remote_shared.remove(&node).unwrap_or_default(),
                    node,
                });
            }
        }
        plan
    }

    /// Plans a message another node forwarded: local direct subscribers when `direct`, and one
    /// local member of each listed shared group (the readiest). Never another node.
    pub fn plan_forwarded<K: Clone>(
        &self,
        local: Matches<K>,
        direct: bool,
        shared: &[(String, String)],
        ready: &dyn Fn(&K) -> Readiness,
    ) -> Vec<(K, SubOptions)> {
        let mut out = if direct { local.direct } else { Vec::new() };
        for (group, filter) in shared {
            if let Some(g) = local
                .shared
                .iter()
                .find(|g| g.group == *group && g.filter == *filter)
            {
                out.extend(self.shared.pick(group, filter, &g.members, ready));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::trie::SharedMatch;
    use super::*;

    fn routing(policy: SharedPolicy) -> Routing {
        Routing::new(policy, RetainedSet::new("n0", std::time::Duration::ZERO))
    }

    fn key(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    fn group(members: &[&str]) -> SharedMatch<Arc<str>> {
        SharedMatch {
            group: "g".into(),
            filter: "t/#".into(),
            members: members
                .iter()
                .map(|m| (key(m), SubOptions::default()))
                .collect(),
        }
    }

    fn matches(direct: &[&str], shared: &[&str]) -> Matches<Arc<str>> {
        Matches {
            direct: direct
                .iter()
                .map(|d| (key(d), SubOptions::default()))
                .collect(),
            shared: vec![group(shared)],
        }
    }

    fn names(v: &[(Arc<str>, SubOptions)]) -> Vec<&str> {
        v.iter().map(|(c, _)| &**c).collect()
    }

    #[test]
    fn a_shared_group_gets_one_copy_cluster_wide_in_turn() {
        let r = routing(SharedPolicy::RoundRobin);
        let (mut here, mut there) = (0, 0);
        for _ in 0..4 {
            let plan = r.plan(
                matches(&["a"], &["m"]),
                Some(matches(&["n1"], &["n2"])),
                &|_| Readiness::Ready,
            );
            // the direct subscriber always, first; then at most one member of the group
            assert_eq!(plan.local[0].0.as_ref(), "a");
            let n1 = plan.remote.iter().find(|c| &*c.node == "n1").unwrap();
            assert!(n1.direct && n1.shared.is_empty());
            let n2 = plan.remote.iter().find(|c| &*c.node == "n2");
            match (names(&plan.local[1..]).as_slice(), n2) {
                (["m"], None) => here += 1,
                ([], Some(c)) if !c.direct && c.shared == [("g".into(), "t/#".into())] => {
                    there += 1
                }
                other => panic!("unexpected plan {:?}", other.0),
            }
        }
        assert_eq!((here, there), (2, 2));
    }

    #[test]
    fn prefer_local_and_local_only_keep_the_copy_here() {
        for policy in [SharedPolicy::PreferLocal, SharedPolicy::LocalOnly] {
            let r = routing(policy);
            for _ in 0..4 {
                let plan = r.plan(matches(&[], &["m"]), Some(matches(&[], &["n"])), &|_| {
                    Readiness::Ready
                });
                assert_eq!(names(&plan.local), ["m"]);
                assert!(plan.remote.is_empty());
            }
        }
        // with no local member, only LocalOnly drops the copy
        let r = routing(SharedPolicy::LocalOnly);
        let plan = r.plan(matches(&[], &[]), Some(matches(&[], &["n"])), &|_| {
            Readiness::Ready
        });
        assert!(plan.local.is_empty() && plan.remote.is_empty());
    }

    #[test]
    fn a_member_with_room_is_picked_first() {
        let rank = |c: &Arc<str>| match &**c {
            "x" => Readiness::Offline,
            "y" => Readiness::Congested,
            _ => Readiness::Ready,
        };
        for policy in [SharedPolicy::RoundRobin, SharedPolicy::Random] {
            let r = routing(policy);
            for _ in 0..8 {
                let got = r.plan_forwarded(
                    matches(&["d"], &["x", "y", "z"]),
                    false,
                    &[("g".into(), "t/#".into())],
                    &rank,
                );
                assert_eq!(names(&got), ["z"], "ready before congested and offline");
                let got = r.plan_forwarded(
                    matches(&[], &["x", "y"]),
                    false,
                    &[("g".into(), "t/#".into())],
                    &rank,
                );
                assert_eq!(names(&got), ["y"], "congested before offline");
                let plan = r.plan(matches(&[], &["y", "z"]), None, &rank);
                assert_eq!(names(&plan.local), ["z"]);
            }
        }
    }
}
