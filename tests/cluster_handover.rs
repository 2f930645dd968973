//! Session handover under faults (docs/cluster.md, "Session handover"): the holder of a
//! session is paused (SIGSTOP) while its client connects to another node, and a client id flips
//! between two nodes while QoS 1 messages for it keep coming. In both, every acknowledged
//! message reaches the client, and the session ends up on exactly one node. And a node
//! restarted with `data_dir` pushes its restored sessions to where their clients went. Real processes
//! (`mqedge broker`), raw MQTT clients.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::cluster_nodes::*;
use common::*;
use mqedge_protocol::{Packet, Version};

/// An offline persistent v5 session `id` on node `i` subscribed to `filter` at QoS 1, its route
/// known on node `seen_on`.
async fn offline_session(cl: &Cluster, i: usize, id: &str, filter: &str, seen_on: usize) {
    let (mut c, _) = connect(cl.addr(i), Version::V5, id, true, Some(3600)).await;
    assert_eq!(c.subscribe(1, &[(filter, 1)]).await, vec![1]);
    disconnect(c).await;
    cl.wait_routes(seen_on, NAMES[i], "= 1", |r| r == 1).await;
}

/// Asserts `got` holds `prefix0..prefixN` (each once or more, any order).
fn assert_all_of(got: &[mqedge_protocol::Publish], prefix: &str, n: usize, cl: &Cluster) {
    let mut got: Vec<String> = payloads(got);
    got.sort_by_key(|s| s[prefix.len()..].parse::<usize>().unwrap_or(0));
    got.dedup();
    assert_eq!(got, seq(prefix, 0..n), "messages lost\n{}", cl.logs());
}

/// Asserts that session `id` ends up held by node `on` only.
async fn assert_one_holder(cl: &Cluster, id: &str, on: usize) {
    let one = eventually(Duration::from_secs(15), || {
        (0..3).all(|i| cl.client(i, id).0 == if i == on { 200 } else { 404 })
    })
    .await;
    let seen: Vec<u16> = (0..3).map(|i| cl.client(i, id).0).collect();
    assert!(one, "{id} held by {seen:?} (node1..3)\n{}", cl.logs());
}

/// A node is killed while a client's offline session there holds 20 queued messages; the client
/// reconnects to another node meanwhile (Session Present 0) and subscribes again. When the node
/// restarts with its `data_dir`, it pushes the restored session to that node before it accepts
/// clients: the client gets the 20 messages where it is, without reconnecting, and only one
/// node keeps the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_pushes_restored_sessions_to_where_their_clients_went() {
    let mut cl = Cluster::start("ho-restore", true, "prefer_local", Run::Binary).await;
    let id = "ho-restore-1";
    offline_session(&cl, 0, id, "hr/#", 2).await;
    let mut p = client(cl.addr(2), "ho-restore-pub").await;
    publish_qos1(&mut p, "hr/x", "q-", 20).await;

    cl.kill9(0);
    let (mut c, ack) = connect(cl.addr(1), Version::V5, id, false, Some(3600)).await;
    assert!(!ack.session_present, "node1 is dead: nobody hands it over");
    assert_eq!(c.subscribe(1, &[("hr/#", 1)]).await, vec![1]);
    let restarted = Instant::now();
    cl.restart(0);
    let got = take(&mut c, 20, Duration::from_secs(20)).await;
    eprintln!(
        "handover: restored session's messages reached node2 {:?} after node1's restart began",
        restarted.elapsed()
    );
    assert_all_of(&got, "q-", 20, &cl);
    assert_one_holder(&cl, id, 1).await;
}

/// The whole cluster stops (`kill -9` of all three) and node1 comes back alone, long before
/// the others: it remembers node2's routes from `data_dir` and holds them, so a QoS 1 publish
/// for node2's offline persistent session is refused (not acknowledged with no copy). Once node2
/// is back, the publish sent again is acknowledged and reaches that session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_before_its_peers_holds_their_remembered_routes() {
    let mut cl = Cluster::start("ho-remember", true, "prefer_local", Run::Binary).await;
    let id = "ho-remember-1";
    offline_session(&cl, 1, id, "rm/#", 0).await;
    // a membership round writes the learned routes
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for i in 0..3 {
        cl.kill9(i);
    }
    let t = Instant::now();
    cl.restart(0);
    eprintln!(
        "handover: node1 alone accepts clients {:?} after its start",
        t.elapsed()
    );
    assert_eq!(
        cl.view(0, "node2").map(|v| v.1),
        Some(1),
        "node2's routes held"
    );
    let mut p = client(cl.addr(0), "ho-remember-pub").await;
    p.publish("rm/x", b"while-away", 1, Some(1), false).await;
    let r = p.recv(Duration::from_secs(5)).await;
    assert!(
        !matches!(r, Some(Packet::PubAck(_))),
        "acknowledged while node2, which holds a session for it, is away: {r:?}\n{}",
        cl.logs()
    );
    cl.restart(1);
    cl.restart(2);
    cl.wait_all_up(0, Duration::from_secs(15)).await;
    let (mut p, _) = connect(cl.addr(0), Version::V311, "ho-remember-pub", false, None).await;
    let mut pubd = publish("rm/x", b"while-away", 1, Some(1), false);
    pubd.dup = true;
    p.send(Packet::Publish(pubd)).await;
    let mut acked = false;
    while let Some(pk) = p.recv(Duration::from_secs(10)).await {
        if matches!(pk, Packet::PubAck(_)) {
            acked = true;
            break;
        }
    }
    assert!(acked, "no PUBACK once node2 is back\n{}", cl.logs());
    let (mut c, ack) = connect(cl.addr(1), Version::V5, id, false, Some(3600)).await;
    assert!(ack.session_present);
    let got = payloads(&take(&mut c, 1, Duration::from_secs(10)).await);
    assert!(
        got.contains(&"while-away".to_string()),
        "{got:?}\n{}",
        cl.logs()
    );
}

/// The node that holds a client's session is paused for 5 s while that client connects to
/// another node: the CONNECT goes on without it (Session Present 0), and when the holder wakes
/// up its late answer is merged into the new session: the 20 messages queued on the old holder
/// reach the client, and only the new node keeps the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_holder_loses_no_session_when_its_client_moves() {
    let mut cl = Cluster::start("ho-stop", true, "prefer_local", Run::Binary).await;
    let id = "ho-stop-1";
    offline_session(&cl, 0, id, "ho/#", 2).await;
    let mut p = client(cl.addr(2), "ho-stop-pub").await;
    publish_qos1(&mut p, "ho/x", "q-", 20).await;

    let stopped = Instant::now();
    cl.nodes[0].as_mut().unwrap().binary().proc.signal("STOP");
    let (mut c, ack) = connect(cl.addr(1), Version::V5, id, false, Some(3600)).await;
    eprintln!(
        "handover: CONNECT on node2 while node1 is paused: CONNACK in {:?}, session present {}",
        stopped.elapsed(),
        ack.session_present
    );
    if !ack.session_present {
        assert_eq!(c.subscribe(1, &[("ho/#", 1)]).await, vec![1]);
    }
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(stopped.elapsed())).await;
    cl.nodes[0].as_mut().unwrap().binary().proc.signal("CONT");

    let got = take(&mut c, 20, Duration::from_secs(20)).await;
    assert_all_of(&got, "q-", 20, &cl);
    assert_one_holder(&cl, id, 1).await;
}

/// A persistent subscriber's client id flips between node1 and node2 twenty times while a
/// publisher on node3 sends QoS 1 messages without pause: every acknowledged message reaches
/// the subscriber (duplicates allowed), whichever node held its session when it was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_messages_racing_takeovers_are_all_delivered() {
    let cl = Cluster::start("ho-flip", true, "prefer_local", Run::Binary).await;
    let id = "ho-flip-1";
    let (mut c, _) = connect(cl.addr(0), Version::V5, id, true, Some(3600)).await;
    assert_eq!(c.subscribe(1, &[("flip/#", 1)]).await, vec![1]);
    cl.wait_routes(2, "node1", "= 1", |r| r == 1).await;

    let pub_addr = cl.addr(2);
    let publisher = tokio::spawn(publish_for(pub_addr, "ho-flip-pub", "flip/t", 12, 5));

    let mut received: HashSet<u32> = HashSet::new();
    let mut note = |got: &[mqedge_protocol::Publish]| {
        for p in got {
            let s = String::from_utf8_lossy(&p.payload);
            if let Some(n) = s.strip_prefix('m').and_then(|n| n.parse().ok()) {
                received.insert(n);
            }
        }
    };
    for round in 0..20 {
        let node = if round % 2 == 0 { 1 } else { 0 };
        let got = take(&mut c, usize::MAX, Duration::from_millis(250)).await;
        note(&got);
        let (c2, ack) = connect(cl.addr(node), Version::V5, id, false, Some(3600)).await;
        assert!(
            ack.session_present,
            "round {round}: session lost\n{}",
            cl.logs()
        );
        c = c2;
    }
    let acked = publisher.await.unwrap();
    let got = take(&mut c, usize::MAX, Duration::from_secs(8)).await;
    note(&got);
    let lost: Vec<u32> = acked
        .iter()
        .copied()
        .filter(|n| !received.contains(n))
        .collect();
    eprintln!(
        "handover: {} acknowledged during 20 takeovers, {} received, {} lost",
        acked.len(),
        received.len(),
        lost.len()
    );
    assert!(acked.len() > 100, "too few publishes: {}", acked.len());
    assert!(lost.is_empty(), "lost {lost:?}\n{}", cl.logs());
}

/// A channel whose `Hello` names an incarnation of the receiver that is gone (the dialer queued
/// its frames for a node that has restarted since) is refused before any frame behind it is
/// applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_for_a_gone_incarnation_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut cl = Cluster::start("ho-epoch", false, "prefer_local", Run::Binary).await;
    let config = std::fs::read_to_string(&cl.configs[1]).unwrap();
    let cluster = &config[config.find("[cluster]").unwrap()..];
    let addr: std::net::SocketAddr = cluster
        .lines()
        .find_map(|l| l.strip_prefix("bind = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("node2's cluster address")
        .parse()
        .unwrap();
    let frame = |kind: u8, body: &[u8]| {
        let mut f = ((body.len() + 2) as u32).to_be_bytes().to_vec();
        f.extend_from_slice(&[1, kind]);
        f.extend_from_slice(body);
        f
    };
    let str_ = |s: &str| {
        let mut b = (s.len() as u32).to_be_bytes().to_vec();
        b.extend_from_slice(s.as_bytes());
        b
    };
    let mut hello = str_("node1");
    hello.extend_from_slice(&7u64.to_be_bytes());
    hello.extend_from_slice(&1u64.to_be_bytes());
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(&frame(1, &hello)).await.unwrap();
    s.write_all(&frame(3, &str_("stale/route"))).await.unwrap();
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    cl.nodes[1]
        .as_mut()
        .unwrap()
        .binary()
        .proc
        .wait_log("node1 for incarnation 1,", Duration::from_secs(5));
    // node2 did not take the stale route as node1's
    assert_eq!(cl.view(1, "node1").map(|v| v.1), Some(0));
}

/// SIGTERM of a node holding ten persistent sessions (five online, five offline) while a
/// publisher on another node keeps sending QoS 1 messages: each session, with its queue, goes to
/// the node the LB's hash picks next for its client id, where the client resumes it (Session
/// Present = 1) and receives every message that was acknowledged to the publisher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_every_session_to_the_lbs_next_pick() {
    let mut cl = Cluster::start("ho-term", true, "prefer_local", Run::Binary).await;
    let ids: Vec<String> = (0..10).map(|i| format!("ho-term-{i}")).collect();
    let mut online = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let (mut c, _) = connect(cl.addr(0), Version::V5, id, true, Some(3600)).await;
        assert_eq!(c.subscribe(1, &[("lv/#", 1)]).await, vec![1]);
        if i < 5 {
            disconnect(c).await;
        } else {
            online.push(c);
        }
    }
    cl.wait_routes(2, "node1", "= 1", |r| r == 1).await;

    let pub_addr = cl.addr(2);
    let publisher = tokio::spawn(publish_for(pub_addr, "ho-term-pub", "lv/t", 4, 10));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let term = Instant::now();
    {
        let n = cl.nodes[0].as_mut().unwrap().binary();
        n.proc.signal("TERM");
        let line = n
            .proc
            .wait_log("sessions handed over", Duration::from_secs(15));
        eprintln!("handover: SIGTERM → {line} ({:?})", term.elapsed());
        assert!(line.contains("sessions=10"), "{line}");
        assert!(line.contains("not_confirmed=0"), "{line}");
        assert!(
            n.proc.wait_exit(Duration::from_secs(10)).is_some(),
            "node1 did not exit"
        );
    }
    // the online clients were told to go elsewhere (SIGTERM drains a clustered node: v5
    // DISCONNECT 0x9C Use another server)
    for mut c in online {
        let told = loop {
            match c.recv(Duration::from_secs(5)).await {
                Some(Packet::Disconnect(d)) => break Some(d.code),
                Some(_) => continue,
                None => break None,
            }
        };
        assert_eq!(told, Some(0x9C));
    }
    let acked = publisher.await.unwrap();
    let mut lost = 0;
    for id in &ids {
        let target = hashed_backend(id, &["node2", "node3"]);
        let ti = NAMES.iter().position(|n| *n == target).unwrap();
        let (mut c, ack) = connect(cl.addr(ti), Version::V5, id, false, Some(3600)).await;
        assert!(
            ack.session_present,
            "{id}: no session on {target}\n{}",
            cl.logs()
        );
        let got = take(&mut c, acked.len(), Duration::from_secs(10)).await;
        let got: HashSet<String> = payloads(&got).into_iter().collect();
        let missing = acked
            .iter()
            .filter(|n| !got.contains(&format!("m{n}")))
            .count();
        lost += missing;
        eprintln!(
            "handover: {id} on {target}: {} of {} acknowledged received",
            acked.len() - missing,
            acked.len()
        );
    }
    assert!(acked.len() > 100, "too few publishes: {}", acked.len());
    assert_eq!(lost, 0, "acknowledged messages lost\n{}", cl.logs());
}

/// Publishes `m0`, `m1`, … at QoS 1 to `topic` for `secs` seconds, `pause_ms` apart, each
/// waiting for its PUBACK; a publish the broker does not acknowledge (its connection closes) is
/// not counted and a new connection goes on. Returns the acknowledged numbers.
async fn publish_for(
    addr: std::net::SocketAddr,
    id: &'static str,
    topic: &'static str,
    secs: u64,
    pause_ms: u64,
) -> Vec<u32> {
    let mut p = client(addr, id).await;
    let mut acked = Vec::new();
    let start = Instant::now();
    let mut i = 0u32;
    while start.elapsed() < Duration::from_secs(secs) {
        let pid = (i % 60_000) as u16 + 1;
        p.publish(topic, format!("m{i}").as_bytes(), 1, Some(pid), false)
            .await;
        loop {
            match p.recv(Duration::from_secs(10)).await {
                Some(Packet::PubAck(a)) if a.packet_id == pid => {
                    if a.code == 0 {
                        acked.push(i);
                    }
                    break;
                }
                Some(_) => continue,
                None => {
                    p = client(addr, id).await;
                    break;
                }
            }
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
    }
    acked
}
