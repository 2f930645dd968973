//! Shared-subscription policy (`[broker] shared_policy`): which member of a `$share` group takes
//! a message, here and across the cluster. Members that have room go first (connected and not
//! congested: a slow member does not get the group's messages while another could take them),
//! then connected ones, then the rest; among them random or in turn, per (group, filter).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::trie::SubOptions;
use crate::config::SharedPolicy;
use crate::message::unix_now;

/// How many shards the node's hashed maps (sessions, round-robin counters) have.
pub const SHARDS: usize = 32;

/// The shard of a key: FNV-1a, cheap and stable.
pub fn shard_of(s: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    (h % SHARDS as u64) as usize
}

/// How ready a member is to take a message (better is greater).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Readiness {
    /// No connection: it would wait in the session's queue.
    Offline,
    /// Connected, but its backlog is congested (or its connection is closing).
    Congested,
    /// Connected, with room.
    Ready,
}

/// Where a shared group's copy goes.
pub enum Target<K> {
    /// A member on this node.
    Local(K, SubOptions),
    /// Another node (which picks one of its members).
    Node(Arc<str>),
}

/// The policy and its state: round-robin counters and a random stream.
pub struct Shared {
    policy: SharedPolicy,
    rr: Vec<Mutex<HashMap<String, u64>>>,
    rng: AtomicU64,
}

impl Shared {
    /// Starts the policy with fresh counters.
    pub fn new(policy: SharedPolicy) -> Shared {
        Shared {
            policy,
            rr: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            rng: AtomicU64::new(0x9e37_79b9_7f4a_7c15 ^ unix_now()),
        }
    }

    /// Chooses where a shared group's copy goes, by policy: a local member or another node.
    pub fn choose<K: Clone>(
        &self,
        group: &str,
        filter: &str,
        local: &[(K, SubOptions)],
        nodes: &[Arc<str>],
        ready: &dyn Fn(&K) -> Readiness,
    ) -> Option<Target<K>> {
        let local_pick = || {
            self.pick(group, filter, local, ready)
                .map(|(c, o)| Target::Local(c, o))
        };
        match self.policy {
            SharedPolicy::LocalOnly => local_pick(),
            SharedPolicy::PreferLocal if !local.is_empty() => local_pick(),
            policy => {
                // every local member and every remote node is one candidate
                let n = local.len() + nodes.len();
                if n == 0 {
                    return None;
                }
                let i = if policy == SharedPolicy::Random {
                    (self.next_random() % n as u64) as usize
                } else {
                    self.turn(format!("{group}\u{0}{filter}\u{0}cluster"), n)
                };
                if i < local.len() {
                    // this node's turn: its readiest member
                    local_pick()
                } else {
                    nodes.get(i - local.len()).map(|n| Target::Node(n.clone()))
                }
            }
        }
    }

    /// Picks one local member of a group among the readiest (`ready` says how ready each is).
    pub fn pick<K: Clone>(
        &self,
        group: &str,
        filter: &str,
        members: &[(K, SubOptions)],
        ready: &dyn Fn(&K) -> Readiness,
    ) -> Option<(K, SubOptions)> {
        // the readiest members only: a message should not wait in an offline or congested
        // member's queue while another member could take it now
        let ranked: Vec<(Readiness, &(K, SubOptions))> =
            members.iter().map(|m| (ready(&m.0), m)).collect();
        let best = ranked.iter().map(|(r, _)| *r).max()?;
        let pool: Vec<&(K, SubOptions)> = ranked
            .into_iter()
            .filter(|(r, _)| *r == best)
            .map(|(_, m)| m)
            .collect();
        let idx = match self.policy {
            SharedPolicy::Random => (self.next_random() % pool.len() as u64) as usize,
            // on one node, local = all: these spread in turn
            SharedPolicy::RoundRobin | SharedPolicy::PreferLocal | SharedPolicy::LocalOnly => {
                self.turn(format!("{group}\u{0}{filter}"), pool.len())
            }
        };
        pool.get(idx).map(|(c, o)| (c.clone(), *o))
    }

    /// The next turn of a round-robin counter, among `n` candidates.
    fn turn(&self, key: String, n: usize) -> usize {
        let mut m = self.rr[shard_of(&key)]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let c = m.entry(key).or_insert(0);
        *c = c.wrapping_add(1);
        (*c % n as u64) as usize
    }

    fn next_random(&self) -> u64 {
        let mut x = self.rng.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        x ^= x >> 30;
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x ^= x >> 27;
        x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }
}
