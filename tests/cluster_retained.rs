//! Retained messages across a node that was away (docs/cluster.md, "Retained messages"): three
//! `mqedge broker` processes with `data_dir`; node3 is killed (`kill -9`), the retained topic
//! changes on the others, node3 restarts from its store. A clear made meanwhile stays cleared
//! and a newer value stays the value, on every node; the tombstone of a clear is forgotten after
//! `retained_tombstone_ttl`.
//!
//! Every check is ordered, not timed: a probe subscribes to the topic and to a marker the node
//! is known to hold in one SUBSCRIBE (retained messages go out in filter order), so once the
//! marker came, the topic's message would have come before it. A marker published on a node
//! reaches a peer after everything that node sent that peer before (snapshot included).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::cluster_nodes::*;
use common::*;
use mqedge_protocol::{Packet, QoS, RetainHandling, Subscribe, SubscribeFilter};

const N1: usize = 0;
const N2: usize = 1;
const N3: usize = 2;

/// Publishes a retained message at QoS 1 on node `addr` and waits for its PUBACK.
async fn retain(addr: SocketAddr, id: &str, topic: &str, payload: &str) {
    let mut c = client(addr, id).await;
    c.publish(topic, payload.as_bytes(), 1, Some(1), true).await;
    loop {
        match c.recv(Duration::from_secs(10)).await {
            Some(Packet::PubAck(a)) => {
                assert_eq!(a.code, 0, "{id}: PUBACK {a:?}");
                break;
            }
            Some(_) => continue,
            None => panic!("{id}: no PUBACK for {topic}"),
        }
    }
    disconnect(c).await;
}

/// What a new subscriber on `addr` is sent for `topic`, known complete because `marker` (which
/// must carry `mark`) came after it; `None` when the node does not hold `mark` yet.
async fn probe(
    addr: SocketAddr,
    id: &str,
    topic: &str,
    marker: &str,
    mark: &str,
) -> Option<Vec<String>> {
    let mut c = client(addr, id).await;
    let filter = |f: &str| SubscribeFilter {
        filter: f.to_string(),
        qos: QoS::AtLeastOnce,
        no_local: false,
        retain_as_published: false,
        retain_handling: RetainHandling::SendAtSubscribe,
    };
    c.send(Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Default::default(),
        filters: vec![filter(topic), filter(marker)],
    }))
    .await;
    let mut got = Vec::new();
    let seen = loop {
        let Some(p) = c.recv(Duration::from_secs(2)).await else {
            break false;
        };
        let Some(p) = c.answer(p).await else { continue };
        let payload = String::from_utf8_lossy(&p.payload).into_owned();
        if p.topic == marker {
            break payload == mark;
        }
        got.push(payload);
    };
    disconnect(c).await;
    seen.then_some(got)
}

/// [`probe`] until node `i` holds the marker (10 s).
async fn served(cl: &Cluster, i: usize, topic: &str, marker: &str, mark: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    for k in 0.. {
        let id = format!("probe-{}-{k}", NAMES[i]);
        if let Some(got) = probe(cl.addr(i), &id, topic, marker, mark).await {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{} never got {marker} = {mark}\n{}",
            NAMES[i],
            cl.logs()
        );
    }
    unreachable!()
}

/// Waits until node `i` serves `want` for `topic` (a value replicated from elsewhere).
async fn wait_value(cl: &Cluster, i: usize, topic: &str, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for k in 0.. {
        let got = retained_at(cl.addr(i), &format!("wait-{}-{k}", NAMES[i]), topic).await;
        if payloads(&got) == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {topic} = {:?}, want {want:?}\n{}",
            NAMES[i],
            payloads(&got),
            cl.logs()
        );
    }
}

/// node3 holds `topic` = `value` durably (a QoS 1 publish on node3 acknowledged after it: the
/// store commits in order), then is killed.
async fn kill_node3_holding(cl: &mut Cluster, topic: &str, value: &str) {
    wait_value(cl, N3, topic, &[value]).await;
    retain(cl.addr(N3), "flush-3", "rt/flush", "1").await;
    cl.kill9(N3);
    let down = eventually(Duration::from_secs(10), || {
        cl.state(N1, "node3") == "down" && cl.state(N2, "node3") == "down"
    })
    .await;
    assert!(down, "node3 not seen down\n{}", cl.logs());
}

/// Restarts node `i` from its store and waits until the cluster is whole again.
async fn restart(cl: &mut Cluster, i: usize) {
    cl.restart(i);
    for i in 0..3 {
        cl.wait_all_up(i, Duration::from_secs(20)).await;
    }
}

/// Publishes a marker on every node and waits until every node holds all three: then every
/// snapshot exchanged since the cluster became whole has been applied, both ways of every
/// pair. Returns the mark, which `rt/mark1` carries on every node.
async fn markers_everywhere(cl: &Cluster) -> String {
    let mark = format!("{:?}", std::time::SystemTime::now());
    for i in 0..3 {
        retain(
            cl.addr(i),
            &format!("mark-{i}"),
            &format!("rt/mark{}", i + 1),
            &mark,
        )
        .await;
    }
    for i in 0..3 {
        for m in ["rt/mark1", "rt/mark2", "rt/mark3"] {
            served(cl, i, "rt/none", m, &mark).await;
        }
    }
    mark
}

/// node3 is down while node1 clears a retained topic; node3 restarts holding the old value in
/// its store. The clear's tombstone wins on both sides: no node serves the old value, not even
/// after node1 restarts too (the tombstone is in its store). Before versions, node3 gave the old
/// value back to everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clear_made_while_a_node_was_down_stays_cleared_when_it_returns() {
    let mut cl = Cluster::start("rt-clear", true, "prefer_local", Run::Binary).await;
    retain(cl.addr(N1), "set-1", "rt/a", "old").await;
    kill_node3_holding(&mut cl, "rt/a", "old").await;
    retain(cl.addr(N1), "clear-1", "rt/a", "").await;
    wait_value(&cl, N2, "rt/a", &[]).await;

    restart(&mut cl, N3).await;
    let mark = markers_everywhere(&cl).await;
    for (i, name) in NAMES.iter().enumerate() {
        let got = served(&cl, i, "rt/a", "rt/mark1", &mark).await;
        assert!(
            got.is_empty(),
            "{} serves the cleared rt/a: {got:?}\n{}",
            name,
            cl.logs()
        );
    }
    for (i, name) in NAMES.iter().enumerate() {
        assert_eq!(
            cl.metric(i, "mqedge_broker_retained_tombstones"),
            1.0,
            "{}",
            name
        );
    }

    // the clearing node restarts too: its tombstone comes back from its store
    restart(&mut cl, N1).await;
    assert_eq!(cl.metric(N1, "mqedge_broker_retained_tombstones"), 1.0);
    let mark = markers_everywhere(&cl).await;
    for (i, name) in NAMES.iter().enumerate() {
        let got = served(&cl, i, "rt/a", "rt/mark1", &mark).await;
        assert!(got.is_empty(), "{}: {got:?}\n{}", name, cl.logs());
    }
}

/// Drops new TCP connections to one node's cluster port (its own dials out, and gossip on UDP,
/// go on), in an nftables table of its own, removed on drop: that node's snapshots reach its
/// peers while theirs cannot reach it.
struct InboundCut {
    table: String,
}

impl InboundCut {
    /// None (with the reason printed) where nftables cannot be used: not root, no `nft`.
    fn to(addr: &str) -> Option<InboundCut> {
        let (ip, port) = addr.rsplit_once(':')?;
        let table = format!("mqedge_rt_{}_{port}", std::process::id());
        let rule = format!(
            "add table inet {table} {{ chain out {{ type filter hook output priority 0; \
             policy accept; ip daddr {ip} tcp dport {port} drop; }}; }}"
        );
        let out = std::process::Command::new("nft").arg(&rule).output();
        match out {
            Ok(o) if o.status.success() => Some(InboundCut { table }),
            other => {
                let e = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                    Err(e) => e.to_string(),
                };
                assert!(
                    std::env::var_os("CI").is_none(),
                    "nftables is needed in CI (.ci/run installs it, as root): {e}"
                );
                eprintln!("skipped: nftables not usable here: {e}");
                None
            }
        }
    }
}

impl Drop for InboundCut {
    fn drop(&mut self) {
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
    }
}

/// node3 holds `v1` and is down while node2 sets `v2`; node3 restarts from its store while its
/// peers cannot dial it yet (nftables), so its snapshot, with `v1`, reaches them before theirs
/// reach it: the order in which the old code let the older value win. Its `v1` loses on node1
/// and node2; once the cut is lifted node3 takes `v2`, and every node serves `v2`. Before
/// versions, node1 and node2 went back to `v1` (and node3 took `v2`: they disagreed for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_node_with_an_older_value_ends_with_the_newest_everywhere() {
    let mut cl = Cluster::start("rt-newer", true, "prefer_local", Run::Binary).await;
    retain(cl.addr(N1), "set-1", "rt/b", "v1").await;
    kill_node3_holding(&mut cl, "rt/b", "v1").await;
    retain(cl.addr(N2), "set-2", "rt/b", "v2").await;
    wait_value(&cl, N1, "rt/b", &["v2"]).await;

    let Some(cut) = InboundCut::to(&cl.cluster_addrs[N3]) else {
        return;
    };
    cl.restart(N3);
    // node3's own snapshot (rt/b = v1), then this marker, reach node1 and node2
    let mark = format!("{:?}", std::time::SystemTime::now());
    retain(cl.addr(N3), "mark-3", "rt/mark3", &mark).await;
    for i in [N1, N2] {
        let got = served(&cl, i, "rt/b", "rt/mark3", &mark).await;
        assert_eq!(
            got,
            ["v2"],
            "{} took node3's older v1\n{}",
            NAMES[i],
            cl.logs()
        );
    }
    assert_eq!(
        served(&cl, N3, "rt/b", "rt/mark3", &mark).await,
        ["v1"],
        "node3 was reached before the cut was lifted: the test proves nothing\n{}",
        cl.logs()
    );

    drop(cut);
    for i in 0..3 {
        cl.wait_all_up(i, Duration::from_secs(30)).await;
    }
    let mark = markers_everywhere(&cl).await;
    for (i, name) in NAMES.iter().enumerate() {
        let got = served(&cl, i, "rt/b", "rt/mark1", &mark).await;
        assert_eq!(got, ["v2"], "{}\n{}", name, cl.logs());
    }
    // and a publish after the return is newer than both, everywhere
    retain(cl.addr(N3), "set-3", "rt/b", "v3").await;
    for i in [N1, N2] {
        wait_value(&cl, i, "rt/b", &["v3"]).await;
    }
}

/// With `retained_tombstone_ttl = "3s"`, the tombstone of a clear is counted on every live node,
/// then forgotten (gauge back to 0) no sooner than the ttl. A node that returns after that
/// brings its old value back: the ttl is how long a node may be away (docs/cluster.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstones_are_forgotten_after_the_ttl() {
    let mut cl = Cluster::start_custom(
        "rt-ttl",
        true,
        "prefer_local",
        Run::Binary,
        5000,
        "retained_tombstone_ttl = \"3s\"",
    )
    .await;
    retain(cl.addr(N1), "set-1", "rt/c", "old").await;
    kill_node3_holding(&mut cl, "rt/c", "old").await;
    let cleared = Instant::now();
    retain(cl.addr(N1), "clear-1", "rt/c", "").await;
    let counted = eventually(Duration::from_secs(5), || {
        cl.metric(N1, "mqedge_broker_retained_tombstones") == 1.0
            && cl.metric(N2, "mqedge_broker_retained_tombstones") == 1.0
    })
    .await;
    assert!(counted, "tombstone not counted\n{}", cl.logs());
    let forgotten = eventually(Duration::from_secs(15), || {
        cl.metric(N1, "mqedge_broker_retained_tombstones") == 0.0
            && cl.metric(N2, "mqedge_broker_retained_tombstones") == 0.0
    })
    .await;
    let after = cleared.elapsed();
    assert!(forgotten, "tombstone kept past its ttl\n{}", cl.logs());
    assert!(after >= Duration::from_secs(3), "forgotten after {after:?}");
    eprintln!("tombstone forgotten {after:?} after the clear (ttl 3 s)");

    restart(&mut cl, N3).await;
    let mark = markers_everywhere(&cl).await;
    for (i, name) in NAMES.iter().enumerate() {
        let got = served(&cl, i, "rt/c", "rt/mark1", &mark).await;
        assert_eq!(got, ["old"], "{}\n{}", name, cl.logs());
    }
}
