//! Balancing as clients see it over real sockets: three mock brokers behind the LB's plain
//! listener, clients connecting from chosen 127.0.0.x addresses, and the broker that recorded each
//! CONNECT telling where it landed. Client-id and source-IP stickiness, spread, agreement between
//! two LB processes, fail-over when a backend refuses connections, and the empty-client-id
//! fallback. The LBs run in-process, except the two that must be separate processes.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Three mock brokers (no PROXY header) named b1..b3.
async fn three_brokers() -> Vec<MockBroker> {
    vec![
        MockBroker::start("b1", false).await,
        MockBroker::start("b2", false).await,
        MockBroker::start("b3", false).await,
    ]
}

/// The config of an LB over `brokers` (in that order) with the given strategy and an admin API.
fn lb_file(
    dir: &TempDir,
    pki: &Pki,
    file: &str,
    strategy: &str,
    brokers: &[&MockBroker],
) -> std::path::PathBuf {
    let backends: Vec<(&str, SocketAddr, &str)> = brokers
        .iter()
        .map(|b| (b.name.as_str(), b.addr, "none"))
        .collect();
    let admin = "admin = \"127.0.0.1:0\"";
    dir.write(
        file,
        &lb_config(pki, "optional", strategy, &backends, admin),
    )
}

/// An in-process LB over `brokers`, see [`lb_file`].
fn start_lb(
    dir: &TempDir,
    pki: &Pki,
    file: &str,
    strategy: &str,
    brokers: &[&MockBroker],
) -> InProcLb {
    InProcLb::start(&lb_file(dir, pki, file, strategy, brokers))
}

/// How many times each broker has seen `client_id`.
fn counts(brokers: &[MockBroker], client_id: &str) -> Vec<usize> {
    brokers
        .iter()
        .map(|b| b.clients().iter().filter(|c| *c == client_id).count())
        .collect()
}

/// Connects from `src` through the LB's plain listener, sends CONNECT `client_id`, expects
/// CONNACK 0, and returns the name of the broker that recorded this connection.
async fn land(lb: &impl LbHandle, brokers: &[MockBroker], src: &str, client_id: &str) -> String {
    let before = counts(brokers, client_id);
    let mut s = tcp_from(Some(ip(src)), lb.addr("mqtt"))
        .await
        .unwrap_or_else(|e| panic!("connect from {src}: {e}"));
    let code = mqtt_connect(&mut s, client_id)
        .await
        .unwrap_or_else(|e| panic!("{client_id:?} from {src}: {e}\nLB log:\n{}", lb.logs()));
    assert_eq!(code, 0, "CONNACK for {client_id:?} from {src}");
    let mut after = before.clone();
    let grew = eventually(Duration::from_secs(5), || {
        after = counts(brokers, client_id);
        after.iter().sum::<usize>() > before.iter().sum::<usize>()
    })
    .await;
    assert!(grew, "no broker recorded {client_id:?} from {src}");
    let moved: Vec<&MockBroker> = brokers
        .iter()
        .zip(before.iter().zip(&after))
        .filter(|(_, (b, a))| a > b)
        .map(|(m, _)| m)
        .collect();
    assert_eq!(moved.len(), 1, "{client_id:?} recorded by several brokers");
    moved[0].name.clone()
}

fn per_backend(placed: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for b in placed.values() {
        *n.entry(b.clone()).or_insert(0) += 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_id_is_sticky_across_source_addresses_and_spreads_over_backends() {
    let dir = TempDir::new("bal-cid");
    let pki = Pki::new(dir.path(), &[]);
    let brokers = three_brokers().await;
    let lb = start_lb(
        &dir,
        &pki,
        "lb.toml",
        "client_id",
        &brokers.iter().collect::<Vec<_>>(),
    );

    for id in ["sensor-a", "sensor-b", "sensor-c"] {
        let mut at = BTreeSet::new();
        for src in ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"] {
            at.insert(land(&lb, &brokers, src, id).await);
        }
        assert_eq!(at.len(), 1, "{id} landed on {at:?}");
    }

    let mut placed = BTreeMap::new();
    for n in 0..60 {
        let id = format!("spread-{n}");
        placed.insert(id.clone(), land(&lb, &brokers, "127.0.0.2", &id).await);
    }
    let spread = per_backend(&placed);
    assert_eq!(
        spread.len(),
        3,
        "all three backends get clients: {spread:?}"
    );
    assert!(
        spread.values().all(|&n| n >= 5),
        "each backend gets at least 5 of 60: {spread:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_ip_is_sticky_whatever_the_client_id() {
    let dir = TempDir::new("bal-sip");
    let pki = Pki::new(dir.path(), &[]);
    let brokers = three_brokers().await;
    let lb = start_lb(
        &dir,
        &pki,
        "lb.toml",
        "source_ip",
        &brokers.iter().collect::<Vec<_>>(),
    );

    let mut at = BTreeSet::new();
    for n in 0..10 {
        at.insert(land(&lb, &brokers, "127.0.0.2", &format!("one-source-{n}")).await);
    }
    assert_eq!(
        at.len(),
        1,
        "10 client ids from one address landed on {at:?}"
    );

    let mut placed = BTreeMap::new();
    for host in 10..50 {
        let src = format!("127.0.0.{host}");
        placed.insert(
            src.clone(),
            land(&lb, &brokers, &src, &format!("from-{host}")).await,
        );
    }
    let spread = per_backend(&placed);
    assert_eq!(
        spread.len(),
        3,
        "40 source addresses reach all three backends: {spread:?}"
    );
    // and each of them comes back to the same backend with another client id
    for host in [10, 17, 23, 31, 49] {
        let src = format!("127.0.0.{host}");
        let again = land(&lb, &brokers, &src, &format!("again-{host}")).await;
        assert_eq!(again, placed[&src], "{src} moved");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_lb_processes_place_clients_identically() {
    let dir = TempDir::new("bal-det");
    let pki = Pki::new(dir.path(), &[]);
    let brokers = three_brokers().await;
    let forward: Vec<&MockBroker> = brokers.iter().collect();
    // the same backends, listed in another order in the second process's config
    let reversed: Vec<&MockBroker> = brokers.iter().rev().collect();
    // two processes of the binary: state shared within one process (a hash seed) cannot hide
    // a disagreement
    let lb1 = Lb::start(&lb_file(&dir, &pki, "lb1.toml", "client_id", &forward));
    let lb2 = Lb::start(&lb_file(&dir, &pki, "lb2.toml", "client_id", &reversed));
    assert_ne!(lb1.addr("mqtt"), lb2.addr("mqtt"));

    let mut differ = Vec::new();
    let mut first = BTreeMap::new();
    for n in 0..30 {
        let id = format!("det-{n}");
        let a = land(&lb1, &brokers, "127.0.0.2", &id).await;
        let b = land(&lb2, &brokers, "127.0.0.3", &id).await;
        if a != b {
            differ.push(format!("{id}: {a} vs {b}"));
        }
        first.insert(id, a);
    }
    assert!(differ.is_empty(), "the two LBs disagree: {differ:?}");
    assert_eq!(per_backend(&first).len(), 3, "{first:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_backend_is_skipped_and_only_its_clients_move() {
    let dir = TempDir::new("bal-retry");
    let pki = Pki::new(dir.path(), &[]);
    let mut brokers = three_brokers().await;
    let lb = start_lb(
        &dir,
        &pki,
        "lb.toml",
        "client_id",
        &brokers.iter().collect::<Vec<_>>(),
    );

    let mut placed = BTreeMap::new();
    for n in 0..24 {
        let id = format!("retry-{n}");
        placed.insert(id.clone(), land(&lb, &brokers, "127.0.0.2", &id).await);
    }
    let on_b2: Vec<String> = placed
        .iter()
        .filter(|(_, b)| *b == "b2")
        .map(|(id, _)| id.clone())
        .collect();
    assert!(!on_b2.is_empty(), "no client hashed to b2: {placed:?}");

    // b2 goes away: its port now refuses connections
    let gone = brokers.remove(1);
    let gone_addr = gone.addr;
    drop(gone);
    let refused = eventually(Duration::from_secs(5), || {
        std::net::TcpStream::connect(gone_addr).is_err()
    })
    .await;
    assert!(refused, "{gone_addr} still accepts");

    // b2's clients first: the first of them finds b2 refusing before any health check could
    // have taken it out (passive and active checks then mark it down, which moves no one else)
    let b2_first = on_b2
        .iter()
        .chain(placed.keys().filter(|id| placed[*id] != "b2"));
    for id in b2_first {
        let was = &placed[id];
        let now = land(&lb, &brokers, "127.0.0.3", id).await;
        if was == "b2" {
            assert_ne!(now, "b2");
            // and it keeps its new place
            assert_eq!(
                land(&lb, &brokers, "127.0.0.4", id).await,
                now,
                "{id} wanders"
            );
        } else {
            assert_eq!(&now, was, "{id} was not on b2 and must not move");
        }
    }
    let failures = |b: &str| {
        metric(
            &lb_metrics(&lb),
            "mqedge_lb_backend_connect_failures_total",
            &[&format!("backend=\"{b}\"")],
        )
    };
    assert!(failures("b2") >= 1.0, "no failed connect to b2 counted");
    assert_eq!(
        (failures("b1"), failures("b3")),
        (0.0, 0.0),
        "only connects to b2 may fail:\n{}",
        lb.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_client_id_is_placed_by_source_address() {
    let dir = TempDir::new("bal-empty");
    let pki = Pki::new(dir.path(), &[]);
    let brokers = three_brokers().await;
    let all: Vec<&MockBroker> = brokers.iter().collect();
    let by_id = start_lb(&dir, &pki, "by-id.toml", "client_id", &all);
    // the placement the fallback should reproduce
    let by_ip = start_lb(&dir, &pki, "by-ip.toml", "source_ip", &all);

    let mut hit = BTreeSet::new();
    for host in 20..32 {
        let src = format!("127.0.0.{host}");
        let first = land(&by_id, &brokers, &src, "").await;
        let second = land(&by_id, &brokers, &src, "").await;
        assert_eq!(first, second, "empty id from {src} moved");
        let expected = land(&by_ip, &brokers, &src, &format!("named-{host}")).await;
        assert_eq!(
            first, expected,
            "empty id from {src} is not placed like source_ip"
        );
        hit.insert(first);
    }
    assert!(hit.len() >= 2, "12 source addresses all went to {hit:?}");
}
