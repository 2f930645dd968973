//! Tests of the subscription trie: unit cases and a cross-check against brute force.

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

use crate::test_rng::Rng;

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
        let got_direct: BTreeMap<u64, u8> = out.direct.iter().map(|(k, o)| (*k, o.qos)).collect();
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
