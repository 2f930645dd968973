//! The node channel's own liveness and its read loop (docs/cluster.md, "The node channel"):
//! a peer that gossip calls live but whose channel is cut is `unreachable` within the heartbeat
//! deadline and QoS 1 publishes toward it fail fast (no PUBACK) instead of stalling; once the
//! cut heals it is `up` again and nothing acknowledged was lost. And one subscriber that stops
//! reading does not stall the frames behind its copies: a takeover through the same channel
//! still completes at once. Real processes (`mqedge broker`), raw MQTT clients, nftables.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster_nodes::*;
use common::*;
use mqedge_protocol::{Packet, Version};

/// Drops TCP to and from one node's cluster port (gossip, on UDP, goes on), in an nftables
/// table of its own, removed on drop.
struct Cut {
    table: String,
}

impl Cut {
    /// None (with the reason printed) where nftables cannot be used: not root, no `nft`.
    fn tcp_port(addr: &str) -> Option<Cut> {
        let (ip, port) = addr.rsplit_once(':')?;
        let table = format!("mqedge_cut_{}_{port}", std::process::id());
        let script = format!(
            "table inet {table} {{\n chain out {{\n type filter hook output priority 0; policy accept;\n \
             ip daddr {ip} tcp dport {port} drop\n ip saddr {ip} tcp sport {port} drop\n }}\n}}\n"
        );
        match Command::new("nft").args(["-f", "-"]).stdin_piped(&script) {
            Ok(()) => Some(Cut { table }),
            Err(e) => {
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

impl Drop for Cut {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
    }
}

trait StdinPiped {
    fn stdin_piped(&mut self, input: &str) -> Result<(), String>;
}

impl StdinPiped for Command {
    fn stdin_piped(&mut self, input: &str) -> Result<(), String> {
        use std::io::Write;
        let mut child = self
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        if let Some(mut i) = child.stdin.take() {
            i.write_all(input.as_bytes()).map_err(|e| e.to_string())?;
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

/// One QoS 1 publish: Some(acked) within `within`, None when the connection closed first.
async fn publish_once(c: &mut Client, topic: &str, payload: &str, pid: u16) -> Option<bool> {
    c.publish(topic, payload.as_bytes(), 1, Some(pid), false)
        .await;
    loop {
        match c.recv(Duration::from_secs(8)).await {
            Some(Packet::PubAck(a)) if a.packet_id == pid => return Some(a.code == 0),
            Some(_) => continue,
            None => return None,
        }
    }
}

/// node2's channel is cut (TCP only; gossip goes on). node1 calls it `unreachable` within the
/// heartbeat deadline (4 s) plus a ping; a QoS 1 publish for node2's subscriber then fails at
/// once (the publisher's connection closes without a PUBACK); after the cut heals, node2 is
/// `up` again and every message that was acknowledged reached the subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_channel_is_unreachable_and_its_forwards_fail_fast() {
    let cl = Cluster::start("ch-cut", false, "prefer_local", Run::Binary).await;
    let mut sub = subscriber(cl.addr(1), "ch-cut-sub", "cut/#").await;
    cl.wait_routes(0, "node2", ">= 1", |r| r >= 1).await;
    let mut acked = Vec::new();
    let mut p = client(cl.addr(0), "ch-cut-pub").await;
    publish_qos1(&mut p, "cut/a", "before-", 5).await;
    acked.extend(seq("before-", 0..5));

    let Some(cut) = Cut::tcp_port(&cl.cluster_addrs[1]) else {
        return;
    };
    let cut_at = Instant::now();
    let seen = eventually(Duration::from_secs(10), || {
        cl.state(0, "node2") == "unreachable"
    })
    .await;
    let took = cut_at.elapsed();
    assert!(
        seen,
        "node1 never called node2 unreachable: {:?}\n{}",
        cl.view(0, "node2"),
        cl.logs()
    );
    println!("node2 unreachable on node1 {took:?} after the cut");
    assert!(took < Duration::from_secs(8), "{took:?}");
    assert_eq!(cl.metric(0, "mqedge_broker_cluster_peers_unreachable"), 1.0);

    // fail fast: no PUBACK, the connection closes well before the forward ack timeout
    let t = Instant::now();
    let r = publish_once(&mut p, "cut/a", "during-0", 100).await;
    let failed_in = t.elapsed();
    println!("QoS 1 publish toward the unreachable node: {r:?} in {failed_in:?}");
    assert_ne!(r, Some(true), "PUBACK for a copy node2 cannot have taken");
    assert!(
        failed_in < Duration::from_secs(2),
        "took {failed_in:?} to fail"
    );

    drop(cut);
    let back = eventually(Duration::from_secs(20), || cl.state(0, "node2") == "up").await;
    assert!(
        back,
        "node2 not up again after the cut healed: {:?}\n{}",
        cl.view(0, "node2"),
        cl.logs()
    );
    println!(
        "node2 up again {:?} after the cut healed",
        cut_at.elapsed() - took
    );
    let mut p = client(cl.addr(0), "ch-cut-pub2").await;
    // the route snapshot may take a moment after the new channel: retry until acked
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut ok = false;
    while !ok && Instant::now() < deadline {
        let mut c = client(cl.addr(0), "ch-cut-probe").await;
        ok = publish_once(&mut c, "cut/probe", "probe", 1).await == Some(true);
        if !ok {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(ok, "no PUBACK after the cut healed\n{}", cl.logs());
    publish_qos1(&mut p, "cut/a", "after-", 5).await;
    acked.extend(seq("after-", 0..5));

    let got = payloads(&take(&mut sub, acked.len() + 1, Duration::from_secs(10)).await);
    let lost: Vec<&String> = acked.iter().filter(|m| !got.contains(m)).collect();
    println!(
        "acked {}, received {}, lost {}",
        acked.len(),
        got.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged but never delivered: {lost:?}\n{}",
        cl.logs()
    );
}

/// A subscriber of node2 on `#` stops reading (`max_offline_messages = 100`: it is congested
/// past 50 queued) while node1 floods QoS 1 messages of 64 KiB: each copy for it waits up to 2 s
/// for space (its ack does), the frames behind them do not. A client whose session node2 holds
/// connects to node1 meanwhile: the takeover (TakeSession on the same channel as the forwards)
/// completes in well under the 3 s takeover deadline, with its session. (Before the read loop
/// only dispatched, it waited 2 s per congested copy ahead of it: Session Present 0 after 3 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_subscriber_does_not_stall_the_channel() {
    let cl = Cluster::start_with("ch-stuck", false, "prefer_local", Run::Binary, 100).await;
    // the session to move: persistent on node2, offline
    let (mut m, _) = connect(cl.addr(1), Version::V5, "ch-mover", true, Some(600)).await;
    assert_eq!(m.subscribe(1, &[("mover/#", 1)]).await, vec![1]);
    disconnect(m).await;
    // the stuck one: subscribed to everything, never reads again
    let stuck = subscriber(cl.addr(1), "ch-stuck-sub", "#").await;
    cl.wait_routes(0, "node2", ">= 2", |r| r >= 2).await;

    let addr = cl.addr(0);
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = sent.clone();
    let flood = tokio::spawn(async move {
        let mut p = client(addr, "ch-stuck-pub").await;
        let payload = vec![b'x'; 64 * 1024];
        for i in 0..2000u32 {
            let pid = (i % 60_000) as u16 + 1;
            p.publish("load/x", &payload, 1, Some(pid), false).await;
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // keep up to 100 in flight
            if i >= 100
                && !matches!(
                    p.recv(Duration::from_secs(10)).await,
                    Some(Packet::PubAck(_))
                )
            {
                break;
            }
        }
    });
    // well past what the stuck subscriber's socket and queue take
    let ok = eventually(Duration::from_secs(30), || {
        sent.load(std::sync::atomic::Ordering::Relaxed) >= 500
    })
    .await;
    assert!(ok, "the flood did not get going\n{}", cl.logs());
    let t = Instant::now();
    let (c, ack) = connect(cl.addr(0), Version::V5, "ch-mover", false, Some(600)).await;
    let connack = t.elapsed();
    println!(
        "takeover from node2 while its subscriber is stuck ({} sent): CONNACK in {connack:?}, session present {}",
        sent.load(std::sync::atomic::Ordering::Relaxed),
        ack.session_present
    );
    assert!(
        ack.session_present,
        "the session did not come over\n{}",
        cl.logs()
    );
    assert!(
        connack < Duration::from_secs(1),
        "CONNACK took {connack:?}\n{}",
        cl.logs()
    );
    flood.abort();
    drop(stuck);
    drop(c);
}

/// QoS 1 copies forwarded in a stream are acknowledged in batches (docs/cluster.md, "The node
/// channel"): the subscriber's node sends far fewer ack frames than it got copies, and still
/// every publish is acknowledged and every message delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_qos1_copies_are_acknowledged_in_batches() {
    const N: usize = 3000;
    const WINDOW: usize = 200;
    let cl = Cluster::start("ch-batch", false, "prefer_local", Run::InProcess).await;
    let mut sub = subscriber(cl.addr(1), "ch-batch-sub", "batch/#").await;
    cl.wait_routes(0, "node2", ">= 1", |r| r >= 1).await;
    let taken = tokio::spawn(async move { take(&mut sub, N, Duration::from_secs(30)).await });
    let mut p = client(cl.addr(0), "ch-batch-pub").await;
    let puback = async |p: &mut Client| match p.recv(Duration::from_secs(10)).await {
        Some(Packet::PubAck(a)) => assert_eq!(a.code, 0, "PUBACK {a:?}"),
        other => panic!("no PUBACK (got {other:?})\n{}", cl.logs()),
    };
    for i in 0..N {
        let pid = (i % 60_000) as u16 + 1;
        p.publish("batch/x", format!("m{i}").as_bytes(), 1, Some(pid), false)
            .await;
        // up to WINDOW in flight, as a loaded publisher keeps them
        if i >= WINDOW {
            puback(&mut p).await;
        }
    }
    for _ in 0..WINDOW {
        puback(&mut p).await;
    }
    let got = taken.await.unwrap();
    assert_eq!(payloads(&got), seq("m", 0..N), "delivered across nodes");
    let received = cl.metric(1, "mqedge_broker_cluster_received_messages_total");
    let frames = cl.metric(1, "mqedge_broker_cluster_ack_frames_sent_total");
    println!("{received} copies forwarded to node2, acknowledged with {frames} ack frames");
    assert!(received >= N as f64, "node2 received {received}");
    assert!(
        frames >= 1.0 && frames * 2.0 <= received,
        "{frames} ack frames for {received} copies: not batched"
    );
}
