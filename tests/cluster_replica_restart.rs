//! A replica restarted while its holder is gone (`[cluster] session_replicas = 2`,
//! docs/cluster.md "Session replicas"): real processes (`mqedge broker` with `data_dir`),
//! rumqttc clients. The node that keeps the standby copy of a persistent session is killed,
//! then the session's holder; the replica alone is started again. Its copy must become a
//! session of its own at start, so that what is published from then on is queued for the
//! offline subscriber (not dropped unrouted), and the subscriber resumes it (Session Present
//! = 1) with every message a publisher got a PUBACK for. And a SUBSCRIBE its replica does
//! not confirm is not acknowledged.

mod common;
#[path = "common/fault_load.rs"]
mod fault_load;

use std::collections::BTreeSet;
use std::time::Duration;

use common::cluster_nodes::*;
use common::*;

/// Waits until `p` has `n` PUBACKs, then stops it: what it got a PUBACK for.
async fn acked(p: fault_load::Publisher, n: usize, cl: &Cluster) -> BTreeSet<u64> {
    let ok = eventually(Duration::from_secs(20), || p.acked() >= n).await;
    let done = p.stop().await;
    assert!(
        ok,
        "only {} of {n} PUBACKs ({})\n{}",
        done.acked.len(),
        done.last_error,
        cl.logs()
    );
    done.acked
}

fn run<F: std::future::Future<Output = ()>>(f: F) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(150), f)
            .await
            .expect("scenario within 150 s");
    });
}

/// Three nodes with replicas and `data_dir`, node3 killed at once: node2 is the replica of
/// every session node1 holds.
async fn two_nodes(tag: &str) -> Cluster {
    let mut cl = Cluster::start_custom(
        tag,
        true,
        "prefer_local",
        Run::Binary,
        5000,
        "session_replicas = 2",
    )
    .await;
    cl.kill9(2);
    cl.nodes[2] = None;
    let gone = eventually(Duration::from_secs(30), || {
        cl.state(0, "node3") == "down" && cl.state(1, "node3") == "down"
    })
    .await;
    assert!(gone, "node3 not down\n{}", cl.logs());
    cl
}

#[test]
fn replica_restarted_while_its_holder_is_dead_promotes_its_copies() {
    run(restarted_replica());
}

async fn restarted_replica() {
    let mut cl = two_nodes("rep-orphan").await;

    let id = "orphan-sub";
    let sub = fault_load::Subscriber::start(cl.addr(0), id);
    assert!(
        eventually(Duration::from_secs(10), || sub.subscribed()).await,
        "no SUBACK\n{}",
        cl.logs()
    );
    // offline from here on: its session on node1 queues, copied to node2
    let _ = sub.stop().await;
    let copied = eventually(Duration::from_secs(10), || {
        cl.metric(1, "mqedge_broker_standby_sessions") >= 1.0
    })
    .await;
    assert!(copied, "no standby copy on node2\n{}", cl.logs());
    let mut owed = acked(
        fault_load::Publisher::start(cl.addr(0), "orphan-pub1", 400, 20),
        200,
        &cl,
    )
    .await;

    // the replica goes, then the holder, for good; the replica alone comes back
    cl.kill9(1);
    cl.kill9(0);
    cl.nodes[0] = None;
    cl.restart(1);
    owed.extend(
        acked(
            fault_load::Publisher::start_from(cl.addr(1), "orphan-pub2", 400, 20, 1_000_000),
            200,
            &cl,
        )
        .await,
    );

    let sub = fault_load::Subscriber::start(cl.addr(1), id);
    let all = eventually(Duration::from_secs(20), || sub.has_all(&owed)).await;
    let got = sub.stop().await;
    let seen: BTreeSet<u64> = got.got.iter().copied().collect();
    let lost: Vec<u64> = owed.difference(&seen).copied().collect();
    assert!(
        all && lost.is_empty(),
        "{} of {} acknowledged messages lost (first {:?})\n{}",
        lost.len(),
        owed.len(),
        &lost[..lost.len().min(10)],
        cl.logs()
    );
    assert!(
        got.subscribed.is_empty(),
        "the subscriber found no session on node2 (Session Present = 0)"
    );
    let m = parse_prometheus(&http("GET", cl.admin(1), "/metrics").1);
    assert_eq!(
        metric(
            &m,
            "mqedge_broker_session_promotions_total",
            &["reason=\"restored\""]
        ),
        1.0,
        "promoted at start, not at the client's CONNECT"
    );
}

/// A SUBSCRIBE of a persistent session whose replica does not confirm it (paused with
/// SIGSTOP): no SUBACK, the connection is closed, and the client subscribes again.
#[test]
fn subscribe_not_confirmed_by_the_replica_is_not_acknowledged() {
    run(unconfirmed_subscribe());
}

async fn unconfirmed_subscribe() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let mut cl = two_nodes("rep-suback").await;
    let addr = cl.addr(0);
    let mut o = MqttOptions::new("suback-sub", addr.ip().to_string(), addr.port());
    o.set_clean_session(false);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = AsyncClient::new(o, 16);
    // the first SUBACK comes once node2 has the session's copy
    client.subscribe("a/#", QoS::AtLeastOnce).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Ok(Event::Incoming(Packet::SubAck(_))) = el.poll().await {
                return;
            }
        }
    })
    .await;
    assert!(first.is_ok(), "no first SUBACK\n{}", cl.logs());

    cl.nodes[1].as_mut().unwrap().binary().proc.signal("STOP");
    client.subscribe("b/#", QoS::AtLeastOnce).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(12), async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => return "SUBACK",
                Ok(_) => {}
                Err(_) => return "closed",
            }
        }
    })
    .await;
    cl.nodes[1].as_mut().unwrap().binary().proc.signal("CONT");
    assert_eq!(
        outcome,
        Ok("closed"),
        "a subscription node2 never confirmed was acknowledged\n{}",
        cl.logs()
    );
}
