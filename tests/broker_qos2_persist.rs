//! Exactly-once across a restart and a move (docs/operations.md, "Persistence"): the QoS 2
//! state of a session — the packet ids a client published under and has not released, and our
//! deliveries past PUBREC — is kept with the session in `data_dir` and travels with it to
//! another node. And a store that cannot commit is a metric and a red `/healthz`, never an
//! acknowledgement. Real processes (`kill -9` and a restart over the same store), raw MQTT
//! clients: they must see the exact packets (PUBREL rather than PUBLISH, PUBCOMP's reason code).

mod common;

use std::process::Command;
use std::time::Duration;

use common::cluster_nodes::*;
use common::*;
use mqedge_protocol::{Packet, Version};

const WAIT: Duration = Duration::from_secs(5);

/// A broker with `data_dir` in `dir`.
fn persistent_broker(dir: &TempDir) -> BrokerProc {
    let cfg = dir.write(
        "b.toml",
        &broker_config("127.0.0.1:0", "data_dir = \"data\"", ""),
    );
    BrokerProc::start(&cfg)
}

/// The next packet that is not a PUBLISH of another topic; panics after `WAIT`.
async fn next(c: &mut Client, what: &str) -> Packet {
    c.recv(WAIT)
        .await
        .unwrap_or_else(|| panic!("no {what} (connection closed or {WAIT:?})"))
}

/// Sends a QoS 2 PUBLISH (`dup` as given) and expects its PUBREC with success.
async fn publish_qos2(c: &mut Client, topic: &str, payload: &[u8], pid: u16, dup: bool) {
    let mut p = publish(topic, payload, 2, Some(pid), false);
    p.dup = dup;
    c.send(Packet::Publish(p)).await;
    match next(c, "PUBREC").await {
        Packet::PubRec(a) => assert_eq!((a.packet_id, a.code), (pid, 0), "PUBREC {a:?}"),
        other => panic!("expected PUBREC {pid}, got {other:?}"),
    }
}

/// Sends PUBREL and returns PUBCOMP's reason code.
async fn release(c: &mut Client, pid: u16) -> u8 {
    c.send(Packet::PubRel(ack(pid))).await;
    match next(c, "PUBCOMP").await {
        Packet::PubComp(a) if a.packet_id == pid => a.code,
        other => panic!("expected PUBCOMP {pid}, got {other:?}"),
    }
}

/// A persistent v5 subscriber to `filter` at QoS 2, disconnected: what is published for it
/// is queued (and stored).
async fn offline_subscriber(addr: std::net::SocketAddr, id: &str, filter: &str) {
    let (mut c, _) = connect(addr, Version::V5, id, true, Some(3600)).await;
    assert_eq!(c.subscribe(1, &[(filter, 2)]).await, vec![2]);
    disconnect(c).await;
}

/// A QoS 2 publish acknowledged with PUBREC, then `kill -9` before the client's PUBREL: after
/// the restart the client's retransmitted PUBLISH (DUP, it never saw the PUBREC) is recognised
/// and not routed again, its PUBREL completes with success, and the subscriber gets the
/// message exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreleased_qos2_publish_survives_kill_9_without_a_duplicate() {
    let dir = TempDir::new("q2-in");
    let mut b = persistent_broker(&dir);
    offline_subscriber(b.addr(), "q2-in-sub", "q2/in").await;
    let (mut p, _) = connect(b.addr(), Version::V5, "q2-in-pub", true, Some(3600)).await;
    publish_qos2(&mut p, "q2/in", b"once", 7, false).await;

    b.kill9();
    let b = BrokerProc::start(&b.config);
    let (mut p, ack) = connect(b.addr(), Version::V5, "q2-in-pub", false, Some(3600)).await;
    assert!(ack.session_present, "publisher session lost in the restart");
    publish_qos2(&mut p, "q2/in", b"once", 7, true).await;
    assert_eq!(
        release(&mut p, 7).await,
        0,
        "PUBREL after the restart: packet id not held"
    );

    let (mut s, _) = connect(b.addr(), Version::V5, "q2-in-sub", false, Some(3600)).await;
    let got = take(&mut s, 1, WAIT).await;
    assert_eq!(payloads(&got), ["once"], "delivered {} times", got.len());
}

/// Our QoS 2 delivery to a persistent subscriber, past its PUBREC (PUBREL sent), then
/// `kill -9`: the subscriber reconnects and gets the PUBREL under the same packet id, not the
/// PUBLISH again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_past_pubrec_resumes_with_pubrel_after_kill_9() {
    let dir = TempDir::new("q2-out");
    let mut b = persistent_broker(&dir);
    let (mut s, _) = connect(b.addr(), Version::V5, "q2-out-sub", true, Some(3600)).await;
    assert_eq!(s.subscribe(1, &[("q2/out", 2)]).await, vec![2]);
    let (mut p, _) = connect(b.addr(), Version::V5, "q2-out-pub", true, None).await;
    publish_qos2(&mut p, "q2/out", b"once", 1, false).await;
    assert_eq!(release(&mut p, 1).await, 0);
    let pid = receive_until_pubrel(&mut s).await;

    b.kill9();
    let b = BrokerProc::start(&b.config);
    let (mut s, ack) = connect(b.addr(), Version::V5, "q2-out-sub", false, Some(3600)).await;
    assert!(ack.session_present);
    expect_only_pubrel(&mut s, pid).await;
    disconnect(s).await;
    drop(b);
}

/// Receives one QoS 2 PUBLISH, answers PUBREC and waits for its PUBREL (sent once that state
/// is durable); returns the packet id. No PUBCOMP is sent.
async fn receive_until_pubrel(s: &mut Client) -> u16 {
    let pid = match next(s, "PUBLISH").await {
        Packet::Publish(m) => {
            assert_eq!(&m.payload[..], b"once");
            m.packet_id.unwrap_or(0)
        }
        other => panic!("expected PUBLISH, got {other:?}"),
    };
    s.send(Packet::PubRec(ack(pid))).await;
    match next(s, "PUBREL").await {
        Packet::PubRel(a) => assert_eq!((a.packet_id, a.code), (pid, 0)),
        other => panic!("expected PUBREL {pid}, got {other:?}"),
    }
    pid
}

/// A resumed session's first packet is the PUBREL of `pid` and no PUBLISH follows; then
/// PUBCOMP ends the delivery.
async fn expect_only_pubrel(s: &mut Client, pid: u16) {
    match next(s, "PUBREL").await {
        Packet::PubRel(a) => assert_eq!(a.packet_id, pid),
        other => panic!("expected PUBREL {pid} after the restart, got {other:?}"),
    }
    s.send(Packet::PubComp(ack(pid))).await;
    if let Some(p) = s.recv(Duration::from_millis(800)).await {
        panic!("after PUBREL/PUBCOMP, nothing more was due; got {p:?}");
    }
}

/// The same two flows across a takeover to another node: a publisher that moves from node1 to
/// node2 between PUBREC and PUBREL, and a subscriber that moves past PUBREC. Each message
/// arrives exactly once; the moved subscriber resumes with PUBREL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_state_moves_with_the_session_to_another_node() {
    let cl = Cluster::start("q2-move", true, "prefer_local", Run::Binary).await;
    // a subscriber on node3 for the publisher's message
    let (mut s3, _) = connect(cl.addr(2), Version::V5, "q2-mv-sub3", true, Some(3600)).await;
    assert_eq!(s3.subscribe(1, &[("q2/mv/in", 2)]).await, vec![2]);
    // a subscriber on node1 that moves past PUBREC
    let (mut s1, _) = connect(cl.addr(0), Version::V5, "q2-mv-sub1", true, Some(3600)).await;
    assert_eq!(s1.subscribe(1, &[("q2/mv/out", 2)]).await, vec![2]);
    cl.wait_routes(0, "node3", ">= 1", |r| r >= 1).await;
    cl.wait_routes(2, "node1", ">= 1", |r| r >= 1).await;

    let (mut p, _) = connect(cl.addr(0), Version::V5, "q2-mv-pub", true, Some(3600)).await;
    publish_qos2(&mut p, "q2/mv/in", b"once", 9, false).await;
    let (mut p, ack) = connect(cl.addr(1), Version::V5, "q2-mv-pub", false, Some(3600)).await;
    assert!(ack.session_present, "publisher session not handed over");
    publish_qos2(&mut p, "q2/mv/in", b"once", 9, true).await;
    assert_eq!(release(&mut p, 9).await, 0, "PUBREL on node2: id not held");
    let got = take(&mut s3, 1, WAIT).await;
    assert_eq!(payloads(&got), ["once"], "delivered {} times", got.len());

    let (mut q, _) = connect(cl.addr(2), Version::V5, "q2-mv-pub3", true, None).await;
    publish_qos2(&mut q, "q2/mv/out", b"once", 1, false).await;
    assert_eq!(release(&mut q, 1).await, 0);
    let pid = receive_until_pubrel(&mut s1).await;
    let (mut s1, ack) = connect(cl.addr(1), Version::V5, "q2-mv-sub1", false, Some(3600)).await;
    assert!(ack.session_present, "subscriber session not handed over");
    expect_only_pubrel(&mut s1, pid).await;
}

/// `data_dir` on a small tmpfs in a mount namespace of the broker's own (nothing outside sees
/// it) that a file fills, then QoS 1 messages for an offline subscriber fill what was still
/// free inside the store's file: what still fitted is acknowledged, a publish whose write
/// failed gets no PUBACK, the failures are counted in
/// `mqedge_broker_store_commit_failures_total`, and once every write fails `/healthz` answers
/// 503 with the reason. With space again the node takes writes without a restart (it opens
/// its file again), `/healthz` is green, and the subscriber gets every acknowledged message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_a_metric_and_a_red_healthz_never_a_puback() {
    let dir = TempDir::new("q2-full");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let cfg = dir.write(
        "b.toml",
        &broker_config(
            "127.0.0.1:0",
            "data_dir = \"data\"",
            // refused messages are routed too: none of them may push an acknowledged one out
            "[limits]\nmax_offline_messages = 100000\n",
        ),
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs -o size=8m mqedge-test \"$0\" && exec \"$1\" broker -c \"$2\"")
        .arg(&data)
        .arg(bin())
        .arg(&cfg)
        .env("RUST_LOG", "info");
    let b = BrokerProc {
        proc: Proc::spawn("broker", cmd),
        config: cfg.clone(),
    };
    b.proc.wait_log(" listener=", Duration::from_secs(20));
    assert_eq!(http("GET", b.admin(), "/healthz").0, 200);
    offline_subscriber(b.addr(), "q2-full-sub", "full/#").await;
    let mut c = client(b.addr(), "q2-full-pub").await;
    publish_qos1(&mut c, "full/t", "before-", 5).await;

    // the broker's tmpfs, as its mount namespace sees it
    let filler = format!("/proc/{}/root{}/filler", b.proc.child.id(), data.display());
    fill(&filler);
    let mut acked = seq("before-", 0..5);
    let mut refused = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while http("GET", b.admin(), "/healthz").0 == 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "/healthz stayed 200: {} acknowledged, {} refused",
            acked.len(),
            refused.len()
        );
        // ten at once: their writes share a commit, which fails as a whole and then call by
        // call; only those that were written are acknowledged
        let bodies: Vec<String> = (0..10)
            .map(|i| {
                format!(
                    "full-{}-{i}-{}",
                    acked.len() + refused.len(),
                    "x".repeat(1000)
                )
            })
            .collect();
        for (i, body) in bodies.iter().enumerate() {
            c.publish("full/t", body.as_bytes(), 1, Some(i as u16 + 1), false)
                .await;
        }
        let mut answered = 0;
        while answered < bodies.len() {
            match c.recv(WAIT).await {
                Some(Packet::PubAck(a)) => {
                    assert_eq!(a.code, 0);
                    acked.push(bodies[usize::from(a.packet_id) - 1].clone());
                    answered += 1;
                }
                // no PUBACK: the connection is closed instead (the client sends again later)
                None => break,
                Some(other) => panic!("unexpected {other:?}"),
            }
        }
        if answered < bodies.len() {
            refused.extend(bodies.into_iter().filter(|b| !acked.contains(b)));
            c = client(b.addr(), "q2-full-pub").await;
        }
    }
    assert!(!refused.is_empty());
    let m = parse_prometheus(&http("GET", b.admin(), "/metrics").1);
    let failures = metric(&m, "mqedge_broker_store_commit_failures_total", &[]);
    assert!(failures >= 3.0, "failures counted: {failures}");
    let (code, body) = http("GET", b.admin(), "/healthz");
    assert_eq!(code, 503, "healthz: {body}");
    assert!(body.contains("commits failed"), "healthz body: {body}");
    eprintln!(
        "full disk: {} acknowledged after the fill, {} refused, {failures} failed commits; healthz {code} {body:?}",
        acked.len() - 5,
        refused.len()
    );

    std::fs::remove_file(&filler).unwrap();
    c = client(b.addr(), "q2-full-pub").await;
    publish_qos1(&mut c, "full/t", "after-", 1).await;
    assert_eq!(http("GET", b.admin(), "/healthz").0, 200);
    disconnect(c).await;
    acked.push("after-0".into());
    let (mut s, _) = connect(b.addr(), Version::V5, "q2-full-sub", false, Some(3600)).await;
    let got = payloads(&take(&mut s, acked.len(), Duration::from_secs(10)).await);
    // every acknowledged message; refused ones may come too (they were routed before their
    // write failed, and their publisher sends them again: at least once)
    for want in &acked {
        assert!(got.contains(want), "{} lost", &want[..want.len().min(20)]);
    }
    for g in &got {
        assert!(acked.contains(g) || refused.contains(g), "{g}?");
    }
}

/// Writes zeros to `path` until the file system is full.
fn fill(path: &str) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

/// An online persistent subscriber acknowledges every message the moment it arrives, while a
/// publisher sends 2,000 QoS 1 messages: each message's store write is queued before the
/// subscriber can see it, so no acknowledgement's delete is applied before the write it
/// deletes. After every ack is durable, `kill -9` and a restart bring none of them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_delivery_is_not_resurrected_by_a_restart() {
    const N: usize = 10000;
    let dir = TempDir::new("q2-order");
    let mut b = persistent_broker(&dir);
    offline_subscriber(b.addr(), "q2-order-marker", "order/marker").await;
    let (mut s, _) = connect(b.addr(), Version::V311, "q2-order-sub", false, None).await;
    assert_eq!(s.subscribe(1, &[("order/t", 1)]).await, vec![1]);
    let addr = b.addr();
    let publisher = tokio::spawn(async move {
        let mut p = client(addr, "q2-order-pub").await;
        for i in 0..N {
            p.publish(
                "order/t",
                format!("m{i}").as_bytes(),
                1,
                Some(1 + (i % 1000) as u16),
                false,
            )
            .await;
        }
        p
    });
    let got = take(&mut s, N, Duration::from_secs(60)).await;
    assert_eq!(got.len(), N);
    // every PUBACK handled: PINGRESP comes after them
    s.send(Packet::PingReq).await;
    while !matches!(next(&mut s, "PINGRESP").await, Packet::PingResp) {}
    let mut p = publisher.await.unwrap();
    // a write that is waited for: every delete queued before it is durable when it is
    publish_qos1(&mut p, "order/marker", "marker-", 1).await;

    b.kill9();
    let b = BrokerProc::start(&b.config);
    let (mut s, ack) = connect(b.addr(), Version::V311, "q2-order-sub", false, None).await;
    assert!(ack.session_present);
    let back = take(&mut s, 0, Duration::from_millis(1500)).await;
    assert!(
        back.is_empty(),
        "{} acknowledged messages came back after the restart: {:?}",
        back.len(),
        payloads(&back).iter().take(10).collect::<Vec<_>>()
    );
}
