//! Backend selection: given the healthy backends and what we know about one connection,
//! decide in which order to try them.
//!
//! This module is pure (no I/O, no clock, no randomness) so that every LB instance, on any
//! platform, sends a given MQTT client to the same backend. Sticky placement matters for MQTT:
//! a persistent session lives on one broker, and a reconnecting client should land there again.
//!
//! Hashed strategies use weighted rendezvous (highest random weight) hashing: each backend gets a
//! score from `hash(key, backend name)` scaled by its weight, and the backends are tried from the
//! highest score down. When a backend joins or leaves, only the keys whose winner changes move,
//! which is exactly the keys of the leaving backend, or the share the joining backend wins.
//! The full order, not only the winner, is returned so the caller can fail over in a stable
//! order when the first backend refuses the connection.

use std::cmp::Ordering;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

pub use crate::config::Strategy;

/// One candidate backend as the picker sees it.
///
/// Borrowed from the live backend table so a pick does not copy names.
pub struct Candidate<'a> {
    /// Backend name from the config; the identity that hashing is keyed on.
    pub name: &'a str,
    /// Relative share of traffic; 0 means drained (never picked).
    pub weight: u32,
    /// Current number of proxied connections to this backend.
    pub active: u64,
}

pub use mqedge_shared::placement::stable_hash;
#[cfg(test)]
use mqedge_shared::placement::{fmix64, FNV_OFFSET};
use mqedge_shared::placement::{weighted_order, Ranked};

impl Ranked for Candidate<'_> {
    fn rank_name(&self) -> &str {
        self.name
    }
    fn rank_weight(&self) -> u32 {
        self.weight
    }
}

/// Rendezvous (highest random weight) weighted order: returns indices into `candidates`, best first, ALL candidates
/// included (so callers can retry in hash order). Weight 0 candidates are never returned. Deterministic: same key + same
/// set of (name, weight) => same order, independent of slice order and of other processes.
///
/// Why rendezvous: when a backend joins or leaves, only the keys that backend wins (or won)
/// change their first pick, and it needs no ring to rebuild on a config reload. Equal scores
/// are broken by name so the order is total; only duplicate names fall back to slice order.
/// The rule itself is [`mqedge_shared::placement::weighted_order`], the one the brokers place
/// sessions by, so a backend's `name` must be its broker's node name.
pub fn hash_order(key: &[u8], candidates: &[Candidate<'_>]) -> Vec<usize> {
    weighted_order(key, candidates)
}

/// The hashing key for `SourceIp`: the address octets only, never the port.
///
/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, as a dual-stack socket reports IPv4 peers)
/// are folded to IPv4 first, so one client hashes the same whichever socket it came in on.
fn ip_key(ip: IpAddr) -> IpKey {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpKey::V4(v4.octets()),
        IpAddr::V6(v6) => IpKey::V6(v6.octets()),
    }
}

/// Stack buffer holding the octets of either address family, so `ip_key` needs no allocation.
enum IpKey {
    V4([u8; 4]),
    V6([u8; 16]),
}

impl IpKey {
    fn as_bytes(&self) -> &[u8] {
        match self {
            IpKey::V4(b) => b,
            IpKey::V6(b) => b,
        }
    }
}

/// Indices of the candidates that may be picked at all (weight above 0), in slice order.
fn eligible(candidates: &[Candidate<'_>]) -> Vec<usize> {
    let mut out = Vec::with_capacity(candidates.len());
    out.extend(
        candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| c.weight > 0)
            .map(|(i, _)| i),
    );
    out
}

/// Compares load per unit of weight, `a.active / a.weight` against `b.active / b.weight`,
/// exactly: cross-multiplied in `u128`, so no rounding and no overflow.
fn load_cmp(a: &Candidate<'_>, b: &Candidate<'_>) -> Ordering {
    let lhs = u128::from(a.active) * u128::from(b.weight);
    let rhs = u128::from(b.active) * u128::from(a.weight);
    lhs.cmp(&rhs)
}

/// Balancer state that lives across connections (round-robin counter).
///
/// One per listener, shared by all its connection tasks; picking takes `&self` and no lock.
#[derive(Debug, Default)]
pub struct Picker {
    /// Number of round-robin picks so far; its value modulo the backend count is the start.
    rr: AtomicU64,
}

impl Picker {
    /// A picker whose round-robin rotation starts at the first backend.
    pub fn new() -> Self {
        Self::default()
    }

    /// Order of candidates to try for one connection, best first. `client_id` is the MQTT client id (may be empty),
    /// `source_ip` the client IP (after any PROXY header). For ClientId with empty id, use `fallback`
    /// (fallback must not itself be ClientId; treat that as SourceIp). SourceIp hashes the IP only (octets, not port).
    /// RoundRobin: rotate start index, then the rest in order. LeastConnections: sort by active/weight ascending, ties by name.
    ///
    /// Every strategy returns each candidate with weight above 0 exactly once, so the caller
    /// can fail over down the list; weight 0 (drained) candidates are never returned.
    pub fn order(
        &self,
        strategy: Strategy,
        fallback: Strategy,
        client_id: &str,
        source_ip: IpAddr,
        candidates: &[Candidate<'_>],
    ) -> Vec<usize> {
        let strategy = match strategy {
            Strategy::ClientId if client_id.is_empty() => match fallback {
                Strategy::ClientId => Strategy::SourceIp,
                other => other,
            },
            other => other,
        };
        match strategy {
            Strategy::ClientId => hash_order(client_id.as_bytes(), candidates),
            Strategy::SourceIp => hash_order(ip_key(source_ip).as_bytes(), candidates),
            Strategy::RoundRobin => self.round_robin(candidates),
            Strategy::LeastConnections => least_connections(candidates),
        }
    }

    /// Eligible candidates in slice order, rotated to start one further on each call.
    fn round_robin(&self, candidates: &[Candidate<'_>]) -> Vec<usize> {
        let mut order = eligible(candidates);
        if order.is_empty() {
            return order;
        }
        let n = order.len() as u64;
        let start = self.rr.fetch_add(1, AtomicOrdering::Relaxed) % n;
        // `start < n == order.len()`, so the conversion back to usize is lossless.
        order.rotate_left(start as usize);
        order
    }
}

/// Eligible candidates by ascending `active / weight`, ties broken by name (then slice index,
/// for duplicate names) so the order does not depend on how the table happened to be stored.
fn least_connections(candidates: &[Candidate<'_>]) -> Vec<usize> {
    let mut order = eligible(candidates);
    order.sort_unstable_by(|&a, &b| {
        let (ca, cb) = (&candidates[a], &candidates[b]);
        load_cmp(ca, cb)
            .then_with(|| ca.name.cmp(cb.name))
            .then(a.cmp(&b))
    });
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

    fn cands<'a>(names: &'a [String], weights: &[u32]) -> Vec<Candidate<'a>> {
        names
            .iter()
            .zip(weights)
            .map(|(name, &weight)| Candidate {
                name,
                weight,
                active: 0,
            })
            .collect()
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node{i}")).collect()
    }

    /// First pick by name, for ids `dev-0 .. dev-{n}`.
    fn first_picks(n: usize, c: &[Candidate<'_>]) -> Vec<String> {
        (0..n)
            .map(|i| {
                let order = hash_order(format!("dev-{i}").as_bytes(), c);
                c[order[0]].name.to_string()
            })
            .collect()
    }

    fn count(picks: &[String], name: &str) -> usize {
        picks.iter().filter(|p| p.as_str() == name).count()
    }

    /// xorshift64*: seeded test inputs, so a failure replays.
    fn next(s: &mut u64) -> u64 {
        *s ^= *s >> 12;
        *s ^= *s << 25;
        *s ^= *s >> 27;
        s.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    #[test]
    fn the_brokers_equal_weight_order_is_the_lbs_order_for_random_ids_and_names() {
        use mqedge_shared::placement::{rendezvous_first, rendezvous_order};
        let mut s = 0x5eed_u64;
        for case in 0..3_000 {
            let n = (next(&mut s) % 8) as usize;
            let owned: Vec<String> = (0..n)
                .map(|_| format!("n{:x}", next(&mut s) % 64))
                .collect();
            let names: Vec<&str> = owned.iter().map(String::as_str).collect();
            let c: Vec<Candidate<'_>> = names
                .iter()
                .map(|name| Candidate {
                    name,
                    weight: 1,
                    active: (next(&mut s) % 5),
                })
                .collect();
            let key = format!("client-{}", next(&mut s));
            let lb: Vec<&str> = hash_order(key.as_bytes(), &c)
                .into_iter()
                .map(|i| c[i].name)
                .collect();
            let broker = rendezvous_order(key.as_bytes(), &names);
            assert_eq!(lb, broker, "case {case}: key {key} names {names:?}");
            assert_eq!(
                rendezvous_first(key.as_bytes(), &names),
                lb.first().copied()
            );
            // the client-id strategy of the picker is the same order
            let picked: Vec<&str> = Picker::new()
                .order(Strategy::ClientId, Strategy::SourceIp, &key, IP, &c)
                .into_iter()
                .map(|i| c[i].name)
                .collect();
            assert_eq!(picked, broker);
        }
    }

    #[test]
    fn stable_hash_is_pinned() {
        // A change here re-homes every hashed client in a running fleet: bump it on purpose only.
        assert_eq!(stable_hash(b"abc"), 0x33eb_af99_27cb_c5bd);
        assert_eq!(stable_hash(b""), fmix64(FNV_OFFSET));
        assert_ne!(stable_hash(b"ab"), stable_hash(b"ba"));
    }

    #[test]
    fn hash_order_is_pinned() {
        let n = names(5);
        let c = cands(&n, &[1; 5]);
        assert_eq!(hash_order(b"dev-42", &c), vec![4, 2, 3, 0, 1]);
    }

    #[test]
    fn order_independent_of_slice_order() {
        let n = names(7);
        let weights = [1, 2, 3, 1, 5, 1, 2];
        let c = cands(&n, &weights);
        let mut rev_names = n.clone();
        rev_names.reverse();
        let mut rev_weights = weights;
        rev_weights.reverse();
        let r = cands(&rev_names, &rev_weights);
        for i in 0..500 {
            let key = format!("dev-{i}");
            let a: Vec<&str> = hash_order(key.as_bytes(), &c)
                .into_iter()
                .map(|j| c[j].name)
                .collect();
            let b: Vec<&str> = hash_order(key.as_bytes(), &r)
                .into_iter()
                .map(|j| r[j].name)
                .collect();
            assert_eq!(a, b, "key {key}");
            assert_eq!(a.len(), 7, "every candidate is returned");
        }
    }

    #[test]
    fn duplicate_names_are_all_returned() {
        let n: Vec<String> = ["x", "y", "x"].iter().map(|s| s.to_string()).collect();
        let c = cands(&n, &[1; 3]);
        let order = hash_order(b"dev-1", &c);
        let pos = |i: usize| order.iter().position(|&j| j == i).unwrap();
        assert_eq!(order.len(), 3);
        assert_eq!(
            pos(0) + 1,
            pos(2),
            "equal scores sit together, lower index first"
        );
    }

    #[test]
    fn equal_backends_share_evenly() {
        let n = names(4);
        let picks = first_picks(10_000, &cands(&n, &[1; 4]));
        for name in &n {
            let share = count(&picks, name) as f64 / 10_000.0;
            assert!((share - 0.25).abs() <= 0.03, "{name}: {share}");
        }
    }

    #[test]
    fn removing_a_backend_moves_only_its_clients() {
        let n = names(4);
        let before = first_picks(10_000, &cands(&n, &[1; 4]));
        let after = first_picks(10_000, &cands(&n[..3], &[1; 3]));
        let removed = n[3].as_str();
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if b == removed {
                moved += 1;
            } else {
                assert_eq!(b, a, "a client of a surviving backend moved");
            }
        }
        assert!(moved > 0);
    }

    #[test]
    fn adding_a_backend_moves_few_clients_all_to_it() {
        let n = names(5);
        let before = first_picks(10_000, &cands(&n[..4], &[1; 4]));
        let after = first_picks(10_000, &cands(&n, &[1; 5]));
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if b != a {
                moved += 1;
                assert_eq!(a, &n[4], "a moved client went to an old backend");
            }
        }
        let share = moved as f64 / 10_000.0;
        assert!(share <= 0.2 + 0.02, "moved {share}");
        assert!(share > 0.0);
    }

    #[test]
    fn weights_set_shares() {
        let n = names(3);
        let picks = first_picks(10_000, &cands(&n, &[1, 1, 2]));
        for (name, want) in n.iter().zip([0.25, 0.25, 0.5]) {
            let share = count(&picks, name) as f64 / 10_000.0;
            assert!((share - want).abs() <= 0.03, "{name}: {share}, want {want}");
        }
    }

    #[test]
    fn weight_zero_never_returned() {
        let n = names(4);
        let c = cands(&n, &[1, 0, 3, 0]);
        let p = Picker::new();
        for i in 0..1_000 {
            let id = format!("dev-{i}");
            let ip = IpAddr::V4(Ipv4Addr::from(i as u32));
            for s in [
                Strategy::ClientId,
                Strategy::SourceIp,
                Strategy::RoundRobin,
                Strategy::LeastConnections,
            ] {
                let mut order = p.order(s, Strategy::SourceIp, &id, ip, &c);
                order.sort_unstable();
                assert_eq!(order, vec![0, 2], "{s:?}");
            }
        }
        let all_drained = cands(&n, &[0; 4]);
        assert!(hash_order(b"dev-1", &all_drained).is_empty());
    }

    #[test]
    fn empty_candidates_give_empty_order() {
        let p = Picker::new();
        assert!(hash_order(b"dev-1", &[]).is_empty());
        for s in [
            Strategy::ClientId,
            Strategy::SourceIp,
            Strategy::RoundRobin,
            Strategy::LeastConnections,
        ] {
            assert!(p.order(s, Strategy::SourceIp, "dev-1", IP, &[]).is_empty());
        }
    }

    #[test]
    fn source_ip_ignores_client_id() {
        let n = names(5);
        let c = cands(&n, &[1; 5]);
        let p = Picker::new();
        let first = p.order(Strategy::SourceIp, Strategy::SourceIp, "", IP, &c)[0];
        for i in 0..200 {
            let id = format!("dev-{i}");
            let order = p.order(Strategy::SourceIp, Strategy::SourceIp, &id, IP, &c);
            assert_eq!(order[0], first);
        }
    }

    #[test]
    fn source_ip_folds_ipv4_mapped_ipv6() {
        let n = names(5);
        let c = cands(&n, &[1; 5]);
        let p = Picker::new();
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped());
        let a = p.order(Strategy::SourceIp, Strategy::SourceIp, "", IP, &c);
        let b = p.order(Strategy::SourceIp, Strategy::SourceIp, "", mapped, &c);
        assert_eq!(a, b);
    }

    #[test]
    fn source_ip_spreads_over_all_backends() {
        let n = names(4);
        let c = cands(&n, &[1; 4]);
        let p = Picker::new();
        let mut hits = [0usize; 4];
        for i in 0..4_000u32 {
            let v4 = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            hits[p.order(Strategy::SourceIp, Strategy::SourceIp, "x", v4, &c)[0]] += 1;
            let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i as u16));
            hits[p.order(Strategy::SourceIp, Strategy::SourceIp, "x", v6, &c)[0]] += 1;
        }
        for (i, &h) in hits.iter().enumerate() {
            let share = h as f64 / 8_000.0;
            assert!((share - 0.25).abs() <= 0.03, "node{i}: {share}");
        }
    }

    #[test]
    fn empty_client_id_uses_fallback() {
        let n = names(5);
        let c = cands(&n, &[1; 5]);
        let p = Picker::new();
        let ip_order = hash_order(&[192, 0, 2, 7], &c);
        assert_eq!(
            p.order(Strategy::ClientId, Strategy::SourceIp, "", IP, &c),
            ip_order
        );
        // ClientId as its own fallback is treated as SourceIp.
        assert_eq!(
            p.order(Strategy::ClientId, Strategy::ClientId, "", IP, &c),
            ip_order
        );
        // A non-empty id ignores the fallback and the IP.
        assert_eq!(
            p.order(Strategy::ClientId, Strategy::SourceIp, "dev-9", IP, &c),
            hash_order(b"dev-9", &c)
        );
        // Other fallbacks are honoured.
        let rr: Vec<usize> = (0..5)
            .map(|_| p.order(Strategy::ClientId, Strategy::RoundRobin, "", IP, &c)[0])
            .collect();
        assert_eq!(rr, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn round_robin_cycles_over_all() {
        let n = names(4);
        let c = cands(&n, &[1, 1, 0, 1]);
        let p = Picker::new();
        let orders: Vec<Vec<usize>> = (0..4)
            .map(|_| p.order(Strategy::RoundRobin, Strategy::SourceIp, "dev-1", IP, &c))
            .collect();
        assert_eq!(
            orders,
            vec![vec![0, 1, 3], vec![1, 3, 0], vec![3, 0, 1], vec![0, 1, 3]]
        );
    }

    #[test]
    fn least_connections_picks_lowest_load_per_weight() {
        let n = names(4);
        let mut c = cands(&n, &[1, 4, 2, 2]);
        // Loads per weight: 3, 2, 2.5, 2 -> node1 and node3 tie, broken by name.
        for (cand, active) in c.iter_mut().zip([3, 8, 5, 4]) {
            cand.active = active;
        }
        let p = Picker::new();
        let order = p.order(Strategy::LeastConnections, Strategy::SourceIp, "", IP, &c);
        assert_eq!(order, vec![1, 3, 2, 0]);
        // Same answer whatever the slice order.
        c.reverse();
        let order = p.order(Strategy::LeastConnections, Strategy::SourceIp, "", IP, &c);
        let by_name: Vec<&str> = order.iter().map(|&i| c[i].name).collect();
        assert_eq!(by_name, vec!["node1", "node3", "node2", "node0"]);
    }

    #[test]
    fn strategy_deserializes_snake_case() {
        let s: Strategy = serde_json::from_str("\"least_connections\"").unwrap();
        assert_eq!(s, Strategy::LeastConnections);
        let s: Strategy = serde_json::from_str("\"client_id\"").unwrap();
        assert_eq!(s, Strategy::ClientId);
        assert!(serde_json::from_str::<Strategy>("\"ClientId\"").is_err());
    }
}
