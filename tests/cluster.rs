//! The broker cluster end to end: three broker nodes (in-process; the `kill -9` and restart
//! tests run `mqedge broker` processes), each on its own loopback address (127.0.0.11, .12,
//! .13), gossiping (chitchat, UDP) and talking over the node channel (TCP) on a `[cluster] bind`
//! port free for both protocols on that address. Real clients speak
//! MQTT to the nodes (raw clients over the broker's own codec, to see exact packets), and the
//! nodes are read through `/api/cluster`, `/api/clients/{id}` and `/metrics`.
//!
//! Covered: fan-out across nodes with wildcards (once, in order, QoS 0 and 1) and unsubscribe;
//! `kill -9` of a node (failure detection time measured), rejoin and route resync; session
//! handover of a persistent session with 500 queued messages; takeover of a live connection
//! (v5 DISCONNECT 0x8E); shared subscriptions across nodes (prefer_local and local_only);
//! retained messages on every node; and `mqedge lb` hashing client ids over the nodes, with a
//! hot-reload that moves a client and its session to another node. Beyond the happy paths:
//! QoS 1 publishing while a killed node is being detected, a node restarted faster than the
//! detector, and unacknowledged QoS 1/2 messages of a session resumed on another node.
//!
//! On Linux all of 127.0.0.0/8 is local, so UDP and TCP bind on 127.0.0.11..13 with no setup.
//! Every test builds its own cluster on fresh ports, so tests run in parallel.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::cluster_nodes::*;
use common::*;
use mqedge_protocol::{Packet, PubAck, QoS, Version};

// ---------------------------------------------------------------------------------------------
// tests
// ---------------------------------------------------------------------------------------------

/// Publisher on node1, a `+` subscriber on node2 and a `#` subscriber on node3: each receives
/// all 200 QoS 0 and 200 QoS 1 messages once, in order, and each publish crosses to each node
/// once. After UNSUBACK (and node1 dropping node2's route), nothing reaches node2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_fan_out_once_in_order_and_unsubscribe_stops_them() {
    let cl = Cluster::start("cl-fanout", false, "prefer_local", Run::InProcess).await;
    let mut s2 = subscriber(cl.addr(1), "fan-sub2", "fan/+/data").await;
    let (mut s3, _) = connect(cl.addr(2), Version::V5, "fan-sub3", true, None).await;
    assert_eq!(s3.subscribe(1, &[("fan/#", 1)]).await, vec![1]);
    cl.wait_routes(0, "node2", "= 1", |r| r == 1).await;
    cl.wait_routes(0, "node3", "= 1", |r| r == 1).await;

    let mut p = client(cl.addr(0), "fan-pub").await;
    publish_qos0(&mut p, "fan/a/data", "q0-", 200).await;
    for (name, s) in [("node2", &mut s2), ("node3", &mut s3)] {
        let got = take(s, 200, Duration::from_secs(10)).await;
        assert_eq!(
            payloads(&got),
            seq("q0-", 0..200),
            "QoS 0 subscriber on {name}"
        );
        assert!(got.iter().all(|p| p.qos == QoS::AtMostOnce && !p.retain));
    }
    publish_qos1(&mut p, "fan/a/data", "q1-", 200).await;
    for (name, s) in [("node2", &mut s2), ("node3", &mut s3)] {
        let got = take(s, 200, Duration::from_secs(10)).await;
        assert_eq!(
            payloads(&got),
            seq("q1-", 0..200),
            "QoS 1 subscriber on {name}"
        );
        assert!(got
            .iter()
            .all(|p| p.qos == QoS::AtLeastOnce && p.topic == "fan/a/data"));
    }
    // once per remote node with a matching route
    assert_eq!(
        cl.metric(0, "mqedge_broker_cluster_forwarded_messages_total"),
        800.0
    );
    assert_eq!(
        cl.metric(1, "mqedge_broker_cluster_received_messages_total"),
        400.0
    );
    assert_eq!(
        cl.metric(2, "mqedge_broker_cluster_received_messages_total"),
        400.0
    );

    unsubscribe(&mut s2, 2, "fan/+/data").await;
    cl.wait_routes(0, "node2", "= 0", |r| r == 0).await;
    publish_qos1(&mut p, "fan/a/data", "after-", 20).await;
    let got3 = take(&mut s3, 20, Duration::from_secs(5)).await;
    assert_eq!(payloads(&got3), seq("after-", 0..20));
    let got2 = take(&mut s2, 0, Duration::from_millis(500)).await;
    assert!(
        got2.is_empty(),
        "node2 unsubscribed but got {:?}",
        payloads(&got2)
    );
    assert_eq!(
        cl.metric(0, "mqedge_broker_cluster_forwarded_messages_total"),
        820.0,
        "after the unsubscribe only node3 gets copies"
    );
    assert_eq!(
        cl.metric(1, "mqedge_broker_cluster_received_messages_total"),
        400.0
    );
}

/// `kill -9` node2: node1 and node3 keep exchanging messages, node1 marks node2 down within
/// the failure detector's time (measured), node2 restarted with the same config rejoins, its
/// routes resync (restored persistent session included), and both a new subscriber and the
/// persistent session on node2 get node1's publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_a_node_detection_rejoin_and_route_resync() {
    let mut cl = Cluster::start("cl-kill", true, "prefer_local", Run::Binary).await;
    // a persistent QoS 1 session on node2, connected when node2 dies
    let (mut persist, ack) = connect(cl.addr(1), Version::V311, "k-persist", false, None).await;
    assert!(!ack.session_present);
    assert_eq!(persist.subscribe(1, &[("k/#", 1)]).await, vec![1]);
    let mut s3 = subscriber(cl.addr(2), "k-sub3", "k/#").await;
    let mut s1 = subscriber(cl.addr(0), "k-sub1", "back/#").await;
    cl.wait_routes(0, "node2", ">= 1", |r| r >= 1).await;
    cl.wait_routes(0, "node3", ">= 1", |r| r >= 1).await;
    cl.wait_routes(2, "node1", ">= 1", |r| r >= 1).await;
    let mut p1 = client(cl.addr(0), "k-pub1").await;
    let mut p3 = client(cl.addr(2), "k-pub3").await;

    cl.kill9(1);
    let detector = watch_peer_state(cl.admin(0), "node2", "down", Duration::from_secs(15));
    drop(persist);
    // node1 and node3 keep talking while the detector makes up its mind (QoS 0: the route to
    // node2 is still there, its copy goes nowhere)
    publish_qos0(&mut p1, "k/live", "w-", 10).await;
    assert_eq!(
        payloads(&take(&mut s3, 10, Duration::from_secs(5)).await),
        seq("w-", 0..10)
    );
    publish_qos0(&mut p3, "back/live", "b-", 10).await;
    assert_eq!(
        payloads(&take(&mut s1, 10, Duration::from_secs(5)).await),
        seq("b-", 0..10)
    );

    let detect = detector.join().unwrap();
    eprintln!("cluster: node1 saw node2 down {detect:?} after kill -9");
    let Some(detect) = detect else {
        panic!("node1 never marked node2 down\n{}", cl.logs());
    };
    assert!(
        detect < Duration::from_secs(10),
        "failure detection took {detect:?}"
    );
    // its routes are held for its return: a QoS 1 publish toward its (persistent) session is
    // refused, not acknowledged with no copy for it
    assert_eq!(
        cl.view(0, "node2").unwrap().1,
        1,
        "a down node's routes are held"
    );
    assert!(eventually(Duration::from_secs(5), || cl.state(2, "node2") == "down").await);
    let m = parse_prometheus(&http("GET", cl.admin(0), "/metrics").1);
    assert_eq!(metric(&m, "mqedge_broker_cluster_peers_up", &[]), 1.0);
    assert_eq!(metric(&m, "mqedge_broker_cluster_peers_down", &[]), 1.0);
    p1.publish("k/live", b"refused", 1, Some(7), false).await;
    let r = p1.recv(Duration::from_secs(8)).await;
    assert!(
        !matches!(r, Some(Packet::PubAck(_))),
        "a publish toward a down node's held routes must not be acknowledged: {r:?}"
    );
    let m = parse_prometheus(&http("GET", cl.admin(0), "/metrics").1);
    assert!(
        metric(
            &m,
            "mqedge_broker_cluster_forward_failures_total",
            &["reason=\"peer down\""]
        ) >= 1.0
    );
    let mut p1 = client(cl.addr(0), "k-pub1").await;

    // QoS 1 between the live nodes goes on
    publish_qos1(&mut p3, "back/live", "y-", 20).await;
    assert_eq!(
        payloads(&take(&mut s1, 20, Duration::from_secs(5)).await),
        seq("y-", 0..20)
    );

    // node2 comes back with the same config and data_dir
    let rejoin = watch_peer_state(cl.admin(0), "node2", "up", Duration::from_secs(15));
    cl.restart(1);
    cl.nodes[1]
        .as_mut()
        .unwrap()
        .binary()
        .proc
        .wait_log("restored from the store", Duration::from_secs(5));
    let rejoin = rejoin.join().unwrap();
    eprintln!("cluster: node1 saw node2 up again {rejoin:?} after its restart began");
    assert!(rejoin.is_some(), "node2 did not rejoin\n{}", cl.logs());
    cl.wait_all_up(1, Duration::from_secs(10)).await;
    // the restored session's route is announced again
    cl.wait_routes(0, "node2", "= 1 (restored k/#)", |r| r == 1)
        .await;
    let mut n2 = subscriber(cl.addr(1), "k-new2", "k/after").await;
    cl.wait_routes(0, "node2", "= 2", |r| r == 2).await;
    publish_qos1(&mut p1, "k/after", "a-", 10).await;
    assert_eq!(
        payloads(&take(&mut n2, 10, Duration::from_secs(5)).await),
        seq("a-", 0..10),
        "new subscriber on the restarted node2"
    );
    // the refused publish reached node3 all the same (at least once: it was not acknowledged
    // because node2's held route could not take it)
    let mut want = vec!["refused".to_string()];
    want.extend(seq("a-", 0..10));
    assert_eq!(
        payloads(&take(&mut s3, 11, Duration::from_secs(5)).await),
        want
    );
    // the session from before the kill: queued on node2 while offline
    let (mut persist, ack) = connect(cl.addr(1), Version::V311, "k-persist", false, None).await;
    assert!(
        ack.session_present,
        "the persistent session survived kill -9"
    );
    assert_eq!(
        payloads(&take(&mut persist, 10, Duration::from_secs(5)).await),
        seq("a-", 0..10),
        "persistent session on node2 from before the kill\n{}",
        cl.logs()
    );
}

/// A QoS 1 publisher on node1 whose topic also has subscribers on node2 keeps publishing
/// through `kill -9` of node2: node1 acknowledges nothing node2 did not take while node2's
/// routes are held (until `dead_after`, 3 s here, after the detector called it down); the
/// publisher sends again and node3 gets every acknowledged message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_publishing_goes_on_while_a_killed_node_is_being_detected() {
    let mut cl = Cluster::start_custom(
        "cl-window",
        false,
        "prefer_local",
        Run::Binary,
        5000,
        "dead_after = \"3s\"",
    )
    .await;
    let mut s2 = subscriber(cl.addr(1), "w-sub2", "w/#").await;
    let mut s3 = subscriber(cl.addr(2), "w-sub3", "w/#").await;
    cl.wait_routes(0, "node2", "= 1", |r| r == 1).await;
    cl.wait_routes(0, "node3", "= 1", |r| r == 1).await;
    let mut p1 = client(cl.addr(0), "w-pub1").await;
    publish_qos1(&mut p1, "w/t", "before-", 5).await;
    assert_eq!(
        payloads(&take(&mut s2, 5, Duration::from_secs(5)).await),
        seq("before-", 0..5)
    );
    assert_eq!(
        payloads(&take(&mut s3, 5, Duration::from_secs(5)).await),
        seq("before-", 0..5)
    );

    cl.kill9(1);
    let killed = Instant::now();
    let detector = watch_peer_state(cl.admin(0), "node2", "down", Duration::from_secs(15));
    // meanwhile, how long a CONNECT on node3 takes (it asks every peer for the session)
    let addr3 = cl.addr(2);
    let connect_probe = tokio::spawn(async move {
        let t = Instant::now();
        let c = client(addr3, "w-late").await;
        (t.elapsed(), c)
    });
    let mut connect_probe = Some(connect_probe);
    // a publish whose copy node2 never acknowledged gets no PUBACK: the publisher is
    // disconnected and sends it again (DUP) once connected again, until the cluster knows node2
    // is gone; nothing is acknowledged that was not taken
    let mut retries = 0;
    for i in 0..5u16 {
        let t = Instant::now();
        let mut dup = false;
        loop {
            let pid = i + 1;
            let mut p = publish("w/t", format!("during-{i}").as_bytes(), 1, Some(pid), false);
            p.dup = dup;
            p1.send(Packet::Publish(p)).await;
            let r = p1.recv(Duration::from_secs(10)).await;
            eprintln!(
                "cluster: QoS 1 publish {i} (dup {dup}) after kill -9 of node2: {:?} in {:?} ({:?} after the kill)",
                r.as_ref()
                    .map(|p| format!("{p:?}").chars().take(40).collect::<String>()),
                t.elapsed(),
                killed.elapsed()
            );
            match r {
                Some(Packet::PubAck(a)) => {
                    assert_eq!((a.packet_id, a.code), (pid, 0));
                    break;
                }
                None if killed.elapsed() < Duration::from_secs(14) => {
                    retries += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    p1 = connect(cl.addr(0), Version::V311, "w-pub1", false, None)
                        .await
                        .0;
                    dup = true;
                }
                other => {
                    let detect = detector.join().unwrap();
                    if let Some(probe) = connect_probe.take() {
                        let (t, _c) = probe.await.unwrap();
                        eprintln!(
                            "cluster: CONNECT on node3 right after kill -9 of node2: CONNACK in {t:?}"
                        );
                    }
                    panic!(
                        "publish during-{i} on node1, {:?} after kill -9 of node2 (node1 saw it \
                         down after {detect:?}): expected PUBACK, got {other:?} (None = \
                         connection closed or 10 s)\n{}",
                        killed.elapsed(),
                        cl.logs()
                    );
                }
            }
        }
    }
    eprintln!("cluster: publisher reconnects while node2 was being detected: {retries}");
    let mut got = payloads(&take(&mut s3, 5, Duration::from_secs(5)).await);
    got.dedup();
    assert_eq!(
        got,
        seq("during-", 0..5),
        "every acknowledged message reached node3"
    );
    assert!(detector.join().unwrap().is_some());
    let (t, _c) = connect_probe.take().unwrap().await.unwrap();
    eprintln!("cluster: CONNECT on node3 right after kill -9 of node2: CONNACK in {t:?}");
}

/// node2 is killed and started again at once, before the failure detector notices. The new
/// incarnation must get node1's routes again (node1's old channel to node2 is dead), so that a
/// subscriber on node1 gets node2's publishes, and a subscriber on the new node2 gets node1's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_before_detection_is_fully_back_in_the_cluster() {
    let mut cl = Cluster::start("cl-fast", false, "prefer_local", Run::Binary).await;
    let mut s1 = subscriber(cl.addr(0), "fr-sub1", "fr/back").await;
    let mut p1 = client(cl.addr(0), "fr-pub1").await;
    // node1's channel to node2 carries traffic before the kill: two routes, one forward
    let mut old = subscriber(cl.addr(1), "fr-old", "fr/old").await;
    assert_eq!(old.subscribe(2, &[("fr/old2", 1)]).await, vec![1]);
    cl.wait_routes(0, "node2", "= 2", |r| r == 2).await;
    cl.wait_routes(1, "node1", "= 1", |r| r == 1).await;
    publish_qos1(&mut p1, "fr/old", "o-", 1).await;
    assert_eq!(
        payloads(&take(&mut old, 1, Duration::from_secs(5)).await),
        vec!["o-0"]
    );
    drop(old);

    let watch_down = watch_peer_state(cl.admin(0), "node2", "down", Duration::from_secs(3));
    cl.restart(1);
    let mut n2 = subscriber(cl.addr(1), "fr-new", "fr/new").await;
    // the new incarnation's snapshot replaced the old routes on node1: only fr/new
    cl.wait_routes(0, "node2", "= 1", |r| r == 1).await;
    eprintln!(
        "cluster: node1 saw the fast-restarted node2 down: {:?}",
        watch_down.join().unwrap()
    );
    cl.wait_all_up(1, Duration::from_secs(5)).await;

    // node2 -> node1: the new node2 must know node1's route
    cl.wait_routes(1, "node1", "= 1 (fr/back of node1's subscriber)", |r| {
        r == 1
    })
    .await;
    let mut p2 = client(cl.addr(1), "fr-pub2").await;
    publish_qos1(&mut p2, "fr/back", "b-", 5).await;
    assert_eq!(
        payloads(&take(&mut s1, 5, Duration::from_secs(5)).await),
        seq("b-", 0..5)
    );

    // node1 -> node2
    for i in 0..10u16 {
        let t = Instant::now();
        p1.publish("fr/new", format!("n-{i}").as_bytes(), 1, Some(i + 1), false)
            .await;
        match p1.recv(Duration::from_secs(10)).await {
            Some(Packet::PubAck(a)) => assert_eq!((a.packet_id, a.code), (i + 1, 0)),
            other => panic!(
                "publish n-{i} on node1 to the restarted node2's subscriber: expected PUBACK, \
                 got {other:?} after {:?} (None = connection closed or 10 s)\n{}",
                t.elapsed(),
                cl.logs()
            ),
        }
    }
    let got = take(&mut n2, 10, Duration::from_secs(5)).await;
    assert_eq!(payloads(&got), seq("n-", 0..10), "{}", cl.logs());
}

/// A persistent session with a QoS 1 subscription on node1 goes away; 500 QoS 1 messages are
/// published on node2; the client comes back on node3 and gets all 500 in order; node1 no
/// longer knows it, node3 shows it connected, and the route followed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_and_its_queue_follow_the_client_to_another_node() {
    let cl = Cluster::start("cl-handover", true, "prefer_local", Run::InProcess).await;
    let id = "handover-1";
    let (mut c, _) = connect(cl.addr(0), Version::V311, id, false, None).await;
    assert_eq!(c.subscribe(1, &[("h/q", 1)]).await, vec![1]);
    disconnect(c).await;
    assert_eq!(cl.client(0, id).1["connected"], false);
    cl.wait_routes(1, "node1", "= 1", |r| r == 1).await;

    let mut p = client(cl.addr(1), "handover-pub").await;
    publish_qos1(&mut p, "h/q", "m", 500).await;

    let (mut c, ack) = connect(cl.addr(2), Version::V311, id, false, None).await;
    assert!(ack.session_present, "session handed over to node3");
    let got = take(&mut c, 500, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 500, "got {} of 500\n{}", got.len(), cl.logs());
    assert_eq!(payloads(&got), seq("m", 0..500));
    assert!(got.iter().all(|p| p.qos == QoS::AtLeastOnce));

    // node1 lets the moved session linger (still routed) for MOVE_LINGER (5 s), then drops it
    assert!(
        eventually(Duration::from_secs(10), || cl.client(0, id).0 == 404).await,
        "node1 still has the session: {:?}",
        cl.client(0, id)
    );
    let (code, body) = cl.client(2, id);
    assert_eq!(code, 200);
    assert_eq!(body["connected"], true, "{body}");
    assert_eq!(body["node"], "node3", "{body}");
    assert_eq!(
        cl.metric(0, "mqedge_broker_cluster_session_handovers_total"),
        1.0
    );

    // the subscription moved with it
    cl.wait_routes(1, "node1", "= 0", |r| r == 0).await;
    cl.wait_routes(1, "node3", "= 1", |r| r == 1).await;
    publish_qos1(&mut p, "h/q", "late-", 3).await;
    assert_eq!(
        payloads(&take(&mut c, 3, Duration::from_secs(5)).await),
        seq("late-", 0..3)
    );
}

/// A client connected to node1 connects again with the same id to node3: the old connection
/// gets DISCONNECT 0x8E and is closed, the new one has the session (Session Present when it
/// resumes a session with expiry > 0), and the subscription went with it. With clean start,
/// the old connection is closed just the same and the session is new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_connection_is_taken_over_from_another_node() {
    let cl = Cluster::start("cl-takeover", false, "prefer_local", Run::InProcess).await;

    // resume: clean_start = false, expiry > 0
    let (mut old, _) = connect(cl.addr(0), Version::V5, "tk-1", true, Some(300)).await;
    assert_eq!(old.subscribe(1, &[("tk/t", 1)]).await, vec![1]);
    cl.wait_routes(1, "node1", "= 1", |r| r == 1).await;
    let (mut new, ack) = connect(cl.addr(2), Version::V5, "tk-1", false, Some(300)).await;
    assert!(ack.session_present, "the session came from node1: {ack:?}");
    match old.recv(Duration::from_secs(5)).await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.code, 0x8E, "{d:?}"),
        other => panic!("old connection: expected DISCONNECT 0x8E, got {other:?}"),
    }
    assert!(old.closed_within(Duration::from_secs(5)).await);
    // the moved session lingers on node1 for MOVE_LINGER (5 s)
    assert!(eventually(Duration::from_secs(10), || cl.client(0, "tk-1").0 == 404).await);
    assert_eq!(cl.client(2, "tk-1").1["connected"], true);
    cl.wait_routes(1, "node1", "= 0", |r| r == 0).await;
    cl.wait_routes(1, "node3", "= 1", |r| r == 1).await;
    let mut p = client(cl.addr(1), "tk-pub").await;
    publish_qos1(&mut p, "tk/t", "t-", 5).await;
    assert_eq!(
        payloads(&take(&mut new, 5, Duration::from_secs(5)).await),
        seq("t-", 0..5)
    );

    // clean start: the old connection goes all the same, the session is new
    let (mut old, _) = connect(cl.addr(1), Version::V5, "tk-2", true, Some(300)).await;
    assert_eq!(old.subscribe(1, &[("tk/u", 1)]).await, vec![1]);
    let (_new, ack) = connect(cl.addr(0), Version::V5, "tk-2", true, Some(300)).await;
    assert!(!ack.session_present, "clean start: {ack:?}");
    match old.recv(Duration::from_secs(5)).await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.code, 0x8E, "{d:?}"),
        other => panic!("old connection: expected DISCONNECT 0x8E, got {other:?}"),
    }
    assert!(old.closed_within(Duration::from_secs(5)).await);
    assert_eq!(cl.client(1, "tk-2").0, 404);
    assert_eq!(cl.client(0, "tk-2").1["connected"], true);
}

/// MQTT-4.4.0-1 across nodes: a session resumed on another node goes on where it stopped.
/// Unacknowledged QoS 1 PUBLISHes are sent again with their packet ids and DUP set, and a
/// QoS 2 message the client already answered with PUBREC continues with PUBREL, never a
/// second PUBLISH (that would be a duplicate for the application).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_messages_resume_on_the_new_node() {
    let cl = Cluster::start("cl-inflight", false, "prefer_local", Run::InProcess).await;
    let (mut old, _) = connect(cl.addr(0), Version::V5, "ua-1", true, Some(300)).await;
    assert_eq!(
        old.subscribe(1, &[("ua/1", 1), ("ua/2", 2)]).await,
        vec![1, 2]
    );
    cl.wait_routes(1, "node1", "= 2", |r| r == 2).await;
    let mut p = client(cl.addr(1), "ua-pub").await;
    publish_qos1(&mut p, "ua/1", "q1-", 2).await;
    p.publish("ua/2", b"q2-0", 2, Some(100), false).await;
    match p.recv(Duration::from_secs(10)).await {
        Some(Packet::PubRec(a)) => assert_eq!((a.packet_id, a.code), (100, 0)),
        other => panic!("publisher: expected PUBREC, got {other:?}"),
    }
    p.send(Packet::PubRel(PubAck {
        packet_id: 100,
        code: 0,
        properties: Default::default(),
    }))
    .await;
    assert!(matches!(
        p.recv(Duration::from_secs(5)).await,
        Some(Packet::PubComp(_))
    ));

    // the old connection: two QoS 1 never acknowledged, the QoS 2 one PUBREC'd, no PUBCOMP
    let mut qos1_ids = Vec::new();
    let mut qos2_id = None;
    while qos1_ids.len() < 2 || qos2_id.is_none() {
        match old.recv(Duration::from_secs(5)).await {
            Some(Packet::Publish(m)) if m.qos == QoS::AtLeastOnce => qos1_ids.push((
                String::from_utf8_lossy(&m.payload).into_owned(),
                m.packet_id,
            )),
            Some(Packet::Publish(m)) if m.qos == QoS::ExactlyOnce => {
                assert_eq!(&m.payload[..], b"q2-0");
                qos2_id = m.packet_id;
                old.send(Packet::PubRec(PubAck {
                    packet_id: m.packet_id.unwrap(),
                    code: 0,
                    properties: Default::default(),
                }))
                .await;
            }
            other => panic!("old connection: got {other:?}"),
        }
    }
    match old.recv(Duration::from_secs(5)).await {
        Some(Packet::PubRel(r)) => assert_eq!(Some(r.packet_id), qos2_id),
        other => panic!("old connection: expected PUBREL, got {other:?}"),
    }

    let (mut new, ack) = connect(cl.addr(2), Version::V5, "ua-1", false, Some(300)).await;
    assert!(ack.session_present);
    match old.recv(Duration::from_secs(5)).await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.code, 0x8E, "{d:?}"),
        other => panic!("old connection: expected DISCONNECT 0x8E, got {other:?}"),
    }
    let mut seen = Vec::new();
    while let Some(pkt) = new.recv(Duration::from_millis(800)).await {
        seen.push(pkt);
    }
    let publishes: Vec<(String, Option<u16>, bool, QoS)> = seen
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(m) => Some((
                String::from_utf8_lossy(&m.payload).into_owned(),
                m.packet_id,
                m.dup,
                m.qos,
            )),
            _ => None,
        })
        .collect();
    let pubrels: Vec<u16> = seen
        .iter()
        .filter_map(|p| match p {
            Packet::PubRel(r) => Some(r.packet_id),
            _ => None,
        })
        .collect();
    let want: Vec<(String, Option<u16>, bool, QoS)> = qos1_ids
        .iter()
        .map(|(m, id)| (m.clone(), *id, true, QoS::AtLeastOnce))
        .collect();
    assert_eq!(
        publishes, want,
        "QoS 1 re-sent with the original packet ids and DUP, and no second PUBLISH of the \
         QoS 2 message (old connection had packet ids {qos1_ids:?}, QoS 2 {qos2_id:?})"
    );
    assert_eq!(
        pubrels,
        vec![qos2_id.unwrap()],
        "PUBREL of the QoS 2 message"
    );
}

/// `$share/g/t` with one member on node1 and one on node2, publisher on node3 (no local
/// member), default policy prefer_local: the messages spread over both, each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_group_spreads_over_nodes_each_message_once() {
    let cl = Cluster::start("cl-share", false, "prefer_local", Run::InProcess).await;
    let mut m1 = subscriber(cl.addr(0), "share-m1", "$share/g/t").await;
    let mut m2 = subscriber(cl.addr(1), "share-m2", "$share/g/t").await;
    cl.wait_routes(2, "node1", "= 1", |r| r == 1).await;
    cl.wait_routes(2, "node2", "= 1", |r| r == 1).await;

    let mut p = client(cl.addr(2), "share-pub").await;
    publish_qos1(&mut p, "t", "s", 100).await;
    let got1 = payloads(&m1.collect(Duration::from_millis(800)).await);
    let got2 = payloads(&m2.collect(Duration::from_millis(800)).await);
    eprintln!(
        "shared, prefer_local: node1 member got {}, node2 member got {}",
        got1.len(),
        got2.len()
    );
    assert!(
        got1.len() > 10 && got2.len() > 10,
        "not spread: {} / {}",
        got1.len(),
        got2.len()
    );
    assert_eq!(got1.len() + got2.len(), 100, "{got1:?} {got2:?}");
    let mut all: Vec<String> = got1.iter().chain(&got2).cloned().collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 100, "duplicates across members");
}

/// `policy = "local_only"`: node1's publishes go only to node1's member; a node with no member
/// delivers to nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_group_local_only_stays_on_the_receiving_node() {
    let cl = Cluster::start("cl-share-local", false, "local_only", Run::InProcess).await;
    let mut m1 = subscriber(cl.addr(0), "lo-m1", "$share/g/t").await;
    let mut m2 = subscriber(cl.addr(1), "lo-m2", "$share/g/t").await;
    cl.wait_routes(0, "node2", "= 1", |r| r == 1).await;
    cl.wait_routes(2, "node1", "= 1", |r| r == 1).await;
    cl.wait_routes(2, "node2", "= 1", |r| r == 1).await;

    let mut p1 = client(cl.addr(0), "lo-pub1").await;
    publish_qos1(&mut p1, "t", "n1-", 50).await;
    assert_eq!(
        payloads(&take(&mut m1, 50, Duration::from_secs(5)).await),
        seq("n1-", 0..50)
    );
    let mut p3 = client(cl.addr(2), "lo-pub3").await;
    publish_qos1(&mut p3, "t", "n3-", 20).await;
    let got2 = take(&mut m2, 0, Duration::from_millis(500)).await;
    assert!(got2.is_empty(), "node2's member got {:?}", payloads(&got2));
    let got1 = take(&mut m1, 0, Duration::from_millis(300)).await;
    assert!(
        got1.is_empty(),
        "node1's member got node3's {:?}",
        payloads(&got1)
    );
    assert_eq!(
        cl.metric(0, "mqedge_broker_cluster_forwarded_messages_total"),
        0.0
    );
}

/// A retained message published on node1 reaches a new subscriber on node3 (retain flag set);
/// cleared on node2, it is gone everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_reach_every_node_and_clear_everywhere() {
    let cl = Cluster::start("cl-retain", false, "prefer_local", Run::InProcess).await;
    let mut p1 = client(cl.addr(0), "r-pub1").await;
    p1.publish("r/x", b"hello", 1, Some(1), true).await;
    assert!(matches!(
        p1.recv(Duration::from_secs(5)).await,
        Some(Packet::PubAck(_))
    ));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut k = 0;
    let got = loop {
        k += 1;
        let got = retained_at(cl.addr(2), &format!("r-probe3-{k}"), "r/#").await;
        if !got.is_empty() || Instant::now() > deadline {
            break got;
        }
    };
    assert_eq!(got.len(), 1, "node3: {:?}\n{}", payloads(&got), cl.logs());
    assert_eq!(got[0].topic, "r/x");
    assert_eq!(&got[0].payload[..], b"hello");
    assert!(got[0].retain, "retain flag on delivery at subscribe");
    let got = retained_at(cl.addr(1), "r-probe2", "r/#").await;
    assert_eq!(payloads(&got), vec!["hello"], "node2");

    let mut p2 = client(cl.addr(1), "r-pub2").await;
    p2.publish("r/x", b"", 1, Some(1), true).await;
    assert!(matches!(
        p2.recv(Duration::from_secs(5)).await,
        Some(Packet::PubAck(_))
    ));
    for i in [0, 2, 1] {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut k = 0;
        let got = loop {
            k += 1;
            let got = retained_at(cl.addr(i), &format!("r-clear-{i}-{k}"), "r/#").await;
            if got.is_empty() || Instant::now() > deadline {
                break got;
            }
        };
        assert!(
            got.is_empty(),
            "{} still has {:?}\n{}",
            NAMES[i],
            payloads(&got),
            cl.logs()
        );
    }
}

/// Through `mqedge lb` (client_id hashing over node1..node3): a client id always lands on the
/// node the hash says; after that node is removed from the LB config (hot reload) the client
/// lands elsewhere on reconnect, with its session and the QoS 1 message queued meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lb_hashes_client_ids_to_nodes_and_the_session_follows_a_reload() {
    let cl = Cluster::start("cl-lb", false, "prefer_local", Run::InProcess).await;
    let dir = TempDir::new("cl-lb-edge");
    let pki = Pki::new(dir.path(), &[]);
    let backends: Vec<(&str, SocketAddr, &str)> =
        (0..3).map(|i| (NAMES[i], cl.addr(i), "none")).collect();
    let lb_cfg = dir.write(
        "lb.toml",
        &lb_config(&pki, "none", "client_id", &backends, LB_ADMIN),
    );
    let lb = InProcLb::start(&lb_cfg);
    let (lb_mqtt, lb_admin) = (lb.addr("mqtt"), lb.admin());
    let all_up = eventually(Duration::from_secs(10), || {
        let v = get_json(lb_admin, "/api/backends");
        let b = v.as_array().cloned().unwrap_or_default();
        b.len() == 3 && b.iter().all(|b| b["state"] == "up")
    })
    .await;
    assert!(all_up, "{}", get_json(lb_admin, "/api/backends"));

    let id = id_for("node2", &NAMES, "lb-dev");
    assert_eq!(hashed_backend(&id, &NAMES), "node2");
    for round in 0..3 {
        let (mut c, ack) = connect(lb_mqtt, Version::V311, &id, false, None).await;
        assert_eq!(ack.session_present, round > 0);
        if round == 0 {
            assert_eq!(c.subscribe(1, &[("lb/q", 1)]).await, vec![1]);
        }
        let (code, body) = cl.client(1, &id);
        assert_eq!(code, 200, "round {round}: not on node2");
        assert_eq!(body["connected"], true, "round {round}: {body}");
        assert_eq!(cl.client(0, &id).0, 404, "round {round}");
        assert_eq!(cl.client(2, &id).0, 404, "round {round}");
        disconnect(c).await;
    }
    cl.wait_routes(0, "node2", "= 1", |r| r == 1).await;

    // node2 leaves the LB's config
    let without: Vec<(&str, SocketAddr, &str)> = backends
        .iter()
        .copied()
        .filter(|b| b.0 != "node2")
        .collect();
    std::fs::write(
        &lb_cfg,
        lb_config(&pki, "none", "client_id", &without, LB_ADMIN),
    )
    .unwrap();
    let reloaded = eventually(Duration::from_secs(10), || {
        get_json(lb_admin, "/api/reload")["generation"] == 2
    })
    .await;
    assert!(
        reloaded,
        "{}\n{}",
        get_json(lb_admin, "/api/reload"),
        lb.logs()
    );

    // a QoS 1 message while the client is away: queued in its session on node2
    let mut p = client(cl.addr(0), "lb-pub").await;
    publish_qos1(&mut p, "lb/q", "queued-", 1).await;

    let target = hashed_backend(&id, &["node1", "node3"]);
    let ti = NAMES.iter().position(|n| *n == target).unwrap();
    let (mut c, ack) = connect(lb_mqtt, Version::V311, &id, false, None).await;
    assert!(ack.session_present, "the session followed to {target}");
    assert_eq!(
        payloads(&take(&mut c, 1, Duration::from_secs(5)).await),
        vec!["queued-0"],
        "{}",
        cl.logs()
    );
    let (code, body) = cl.client(ti, &id);
    assert_eq!(code, 200, "not on {target}");
    assert_eq!(body["connected"], true, "{body}");
    assert_eq!(body["node"], target);
    assert!(
        eventually(Duration::from_secs(10), || cl.client(1, &id).0 == 404).await,
        "node2 gave the session away"
    );
    disconnect(c).await;
    drop(lb);
}
