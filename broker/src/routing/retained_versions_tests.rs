//! The merge rule against a brute-force model, the record format (old records included), the
//! store ops a change makes, restore and purge.

use super::*;

const HOUR: Duration = Duration::from_secs(3600);

fn msg(topic: &str, payload: &str) -> Arc<Message> {
    Arc::new(Message::plain(
        topic,
        Bytes::from(payload.to_string()),
        QoS::AtLeastOnce,
        true,
        Arc::from("pub"),
    ))
}

fn v(ms: u64, node: &str) -> Version {
    Version {
        ms,
        node: Arc::from(node),
    }
}

fn value(s: &RetainedSet, topic: &str) -> Option<String> {
    s.get(topic)
        .map(|e| String::from_utf8_lossy(&e.msg.payload).into_owned())
}

#[test]
fn records_round_trip_and_old_records_have_no_version() {
    let m = msg("a/b", "x");
    let rec = encode_record(&m, &v(42, "node2"));
    let (got, ver) = decode_record(&rec).unwrap();
    assert_eq!(got, *m);
    assert_eq!(ver, Some(v(42, "node2")));
    for i in 0..rec.len() {
        assert!(decode_record(&rec[..i]).is_none(), "prefix {i}");
    }
    let (got, ver) = decode_record(&m.encode()).unwrap();
    assert_eq!((got, ver), ((*m).clone(), None));
    assert!(decode_record(&[9, 9, 9]).is_none());
}

#[test]
fn versions_order_by_time_then_node() {
    assert!(v(2, "a") > v(1, "z"));
    assert!(v(1, "b") > v(1, "a"));
    assert!(Version::legacy() < v(0, "a"));
}

#[test]
fn newer_wins_older_and_equal_lose() {
    let s = RetainedSet::new("n1", HOUR);
    let mut ops = Vec::new();
    assert!(s.merge(&msg("t", "v2"), v(20, "n2"), false, &mut ops));
    assert!(!s.merge(&msg("t", "v1"), v(10, "n3"), false, &mut ops));
    assert!(!s.merge(&msg("t", "again"), v(20, "n2"), false, &mut ops));
    assert_eq!(value(&s, "t").as_deref(), Some("v2"));
    // a clear newer than the value leaves a tombstone an older value cannot get past
    assert!(s.merge(&msg("t", ""), v(30, "n2"), false, &mut ops));
    assert_eq!(value(&s, "t"), None);
    assert_eq!((s.len(), s.tombstones()), (0, 1));
    assert!(!s.merge(&msg("t", "v2"), v(20, "n2"), false, &mut ops));
    assert_eq!(value(&s, "t"), None);
    // a value newer than the clear replaces the tombstone
    assert!(s.merge(&msg("t", "v4"), v(40, "n1"), false, &mut ops));
    assert_eq!(value(&s, "t").as_deref(), Some("v4"));
    assert_eq!((s.len(), s.tombstones()), (1, 0));
    assert!(ops.is_empty(), "not durable: no store ops");
}

#[test]
fn a_local_publish_is_always_newer_even_behind_a_fast_clock() {
    let s = RetainedSet::new("n1", HOUR);
    let far = unix_ms() + 3_600_000;
    let mut ops = Vec::new();
    assert!(s.merge(&msg("t", "ahead"), v(far, "n9"), false, &mut ops));
    let mine = s.set_local(&msg("t", "mine"), false, &mut ops);
    assert_eq!(mine, v(far + 1, "n1"));
    assert_eq!(value(&s, "t").as_deref(), Some("mine"));
    let clear = s.set_local(&msg("t", ""), false, &mut ops);
    assert!(clear > mine);
    assert_eq!((s.len(), s.tombstones()), (0, 1));
    let fresh = s.set_local(&msg("u", "x"), false, &mut ops);
    assert!(fresh.ms <= unix_ms() && fresh.ms + 60_000 > unix_ms());
}

use crate::test_rng::Rng;

/// Every node that receives the same changes, in any order, any number of times, ends with the
/// newest change of each topic: the one a brute-force model picks.
#[test]
fn any_order_of_changes_converges_to_the_newest() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..200 {
        // one change per (topic, version), as stamping makes them: ties only on the node
        let mut changes: Vec<(Arc<Message>, Version)> = Vec::new();
        for i in 0..12 {
            let topic = ["a", "b", "c/d"][rng.below(3)];
            let payload = if rng.below(3) == 0 {
                String::new()
            } else {
                format!("p{i}")
            };
            let ver = v(rng.below(4) as u64, ["n1", "n2", "n3"][rng.below(3)]);
            if !changes.iter().any(|(m, w)| &*m.topic == topic && *w == ver) {
                changes.push((msg(topic, &payload), ver));
            }
        }
        let mut want: HashMap<&str, (Version, String)> = HashMap::new();
        for (m, ver) in &changes {
            let e = want
                .entry(&*m.topic)
                .or_insert((ver.clone(), String::from_utf8_lossy(&m.payload).into()));
            if *ver > e.0 {
                *e = (ver.clone(), String::from_utf8_lossy(&m.payload).into());
            }
        }
        for _ in 0..3 {
            let s = RetainedSet::new("me", HOUR);
            let mut order = changes.clone();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i + 1));
            }
            order.extend(changes.iter().take(rng.below(4)).cloned());
            let mut ops = Vec::new();
            for (m, ver) in order {
                s.merge(&m, ver, false, &mut ops);
            }
            for (topic, (_, payload)) in &want {
                let expect = (!payload.is_empty()).then(|| payload.clone());
                assert_eq!(value(&s, topic), expect, "{topic}: {changes:?}");
            }
            let tombs = want.values().filter(|(_, p)| p.is_empty()).count();
            assert_eq!(s.tombstones(), tombs);
        }
    }
}

#[test]
fn store_ops_of_sets_and_clears() {
    let s = RetainedSet::new("n1", HOUR);
    let mut ops = Vec::new();
    let v1 = s.set_local(&msg("t", "x"), true, &mut ops);
    let v2 = s.set_local(&msg("t", ""), true, &mut ops);
    s.set_local(&msg("$SYS/x", "1"), true, &mut ops);
    s.set_local(&msg("$SYS/x", ""), true, &mut ops);
    let puts: Vec<(Vec<u8>, Option<Version>, usize)> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Put { table, key, value } if *table == Table::Retained => {
                let (m, ver) = decode_record(value)?;
                Some((key.clone(), ver, m.payload.len()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        puts,
        vec![(b"t".to_vec(), Some(v1), 1), (b"t".to_vec(), Some(v2), 0)],
        "a value, then its tombstone; $SYS is neither stored nor remembered: {ops:?}"
    );
    assert_eq!(ops.len(), 3, "and the $SYS clear deletes: {ops:?}");
    assert_eq!(s.tombstones(), 1);

    // a node without tombstones deletes the record, as before versions
    let alone = RetainedSet::new("n1", Duration::ZERO);
    let mut ops = Vec::new();
    alone.set_local(&msg("t", "x"), true, &mut ops);
    alone.set_local(&msg("t", ""), true, &mut ops);
    assert_eq!(
        ops.last(),
        Some(&Op::Delete {
            table: Table::Retained,
            key: b"t".to_vec()
        })
    );
    assert_eq!(alone.tombstones(), 0);
}

#[test]
fn restore_reads_old_and_new_records_and_drops_expired_tombstones() {
    let now = 10 * 3_600_000;
    let rows = vec![
        (b"old".to_vec(), msg("old", "o").encode()),
        (
            b"new".to_vec(),
            encode_record(&msg("new", "n"), &v(now - 5, "n2")),
        ),
        (
            b"gone".to_vec(),
            encode_record(&msg("gone", ""), &v(now - 10, "n2")),
        ),
        (
            b"long-gone".to_vec(),
            encode_record(&msg("long-gone", ""), &v(now - 2 * 3_600_000, "n2")),
        ),
        (b"junk".to_vec(), vec![7, 7]),
    ];
    let s = RetainedSet::new("n1", HOUR);
    let deletes = s.restore(rows.clone(), now);
    assert_eq!(
        deletes,
        vec![Op::Delete {
            table: Table::Retained,
            key: b"long-gone".to_vec()
        }]
    );
    assert_eq!(value(&s, "old").as_deref(), Some("o"));
    assert_eq!(s.get("old").map(|e| e.version), Some(Version::legacy()));
    assert_eq!(s.get("new").map(|e| e.version), Some(v(now - 5, "n2")));
    assert_eq!((s.len(), s.tombstones()), (2, 1));
    let mut ops = Vec::new();
    assert!(!s.merge(&msg("gone", "back"), v(now - 20, "n3"), false, &mut ops));
    // any versioned value beats a record from before versions
    assert!(s.merge(&msg("old", "o2"), v(1, "n3"), false, &mut ops));

    let snap = s.snapshot();
    assert_eq!(snap.len(), 3);
    assert!(snap
        .iter()
        .any(|(m, ver)| &*m.topic == "gone" && m.payload.is_empty() && *ver == v(now - 10, "n2")));

    let alone = RetainedSet::new("n1", Duration::ZERO);
    assert_eq!(alone.restore(rows, now).len(), 2, "no tombstone is kept");
    assert_eq!(alone.tombstones(), 0);
}

#[test]
fn purge_forgets_tombstones_after_the_ttl() {
    let s = RetainedSet::new("n1", Duration::from_secs(10));
    let mut ops = Vec::new();
    s.merge(&msg("a", ""), v(1_000, "n2"), false, &mut ops);
    s.merge(&msg("b", ""), v(8_000, "n2"), false, &mut ops);
    s.merge(&msg("c", "live"), v(1_000, "n2"), false, &mut ops);
    assert_eq!(s.purge(10_999, None), 0);
    assert_eq!(s.purge(11_000, None), 1);
    assert_eq!(s.tombstones(), 1);
    // once forgotten, an older value is taken again: the ttl bounds how long a node may be away
    assert!(s.merge(&msg("a", "back"), v(500, "n3"), false, &mut ops));
    assert_eq!(s.purge(u64::MAX, None), 1);
    assert_eq!((s.len(), s.tombstones()), (2, 0));
}

#[test]
fn caps_bound_count_and_bytes_for_local_and_replicated_values() {
    let m = Metrics::new();
    // 2 topics, 10 bytes (topic + payload); $SYS is not counted
    let s = RetainedSet::new("n1", HOUR).with_caps(2, 10, &m);
    let mut ops = Vec::new();
    s.set_local(&msg("$SYS/x", "long enough to pass"), true, &mut ops);
    s.set_local(&msg("a", "1"), true, &mut ops);
    assert!(s.merge(&msg("b", "2"), v(5, "n2"), true, &mut ops));
    assert!(
        !s.merge(&msg("c", "3"), v(5, "n2"), true, &mut ops),
        "a third topic"
    );
    assert_eq!((value(&s, "c"), s.bytes()), (None, 4));
    // over the bytes: not stored, and the older value goes (its delete is an op)
    ops.clear();
    assert!(s.merge(&msg("b", "0123456789"), v(6, "n2"), true, &mut ops));
    assert_eq!((value(&s, "b"), s.bytes()), (None, 2));
    assert!(matches!(&ops[..], [Op::Delete { .. }]));
    s.set_local(&msg("b", "22"), true, &mut ops);
    assert_eq!((value(&s, "b").as_deref(), s.bytes()), (Some("22"), 5));
    let hits = |k: &str| {
        m.limit_hits
            .get_or_create(&crate::metrics::Limit { limit: k.into() })
            .get()
    };
    assert_eq!(
        (hits("max_retained_messages"), hits("max_retained_bytes")),
        (1, 1)
    );
}
