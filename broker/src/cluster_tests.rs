//! Three brokers in one process on a [`MemoryNetwork`] with millisecond timers: what a
//! partition, a one-way cut, a pause and a kill do to membership and to publishes toward the
//! node they hit (docs/cluster.md "Membership" and "Forwarding"), without a socket. Sessions
//! are driven through the broker API; the real transport is tested over sockets in tests/.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::cluster::memory::MemoryNetwork;
use crate::cluster::{PeerStatus, Wiring};
use crate::config::Config;
use crate::message::Message;
use crate::protocol::{QoS, RetainHandling, Version};
use crate::session::{Session, Sub};
use crate::{run_wired, Bound, Broker, BrokerError};

/// How long any awaited condition may take (the timers are tens of milliseconds; this is for a
/// loaded machine).
const WAIT: Duration = Duration::from_secs(10);

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i as u8], 7000))
}

fn name(i: usize) -> String {
    format!("n{i}")
}

/// One running node.
struct Node {
    b: Arc<Broker>,
    /// Ends `run_wired` (a graceful leave); dropped with the test otherwise.
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), BrokerError>>,
}

impl Node {
    /// This node's view of peer `i`: its status and how many routes it announced.
    fn peer(&self, i: usize) -> Option<(PeerStatus, usize)> {
        let n = name(i);
        self.b
            .cluster()?
            .peers()
            .into_iter()
            .find(|(p, _, _)| **p == *n)
            .map(|(_, s, r)| (s, r))
    }

    /// Peer `i` is live in gossip and answers heartbeats, with `routes` routes.
    fn sees_up(&self, i: usize, routes: usize) -> bool {
        self.peer(i)
            .is_some_and(|(s, r)| s.up && !s.unreachable && r == routes)
    }

    /// A persistent session `id` here subscribed to `filter` at QoS 1.
    fn subscribe(&self, id: &str, filter: &str) -> Arc<Session> {
        let from: SocketAddr = "127.0.0.1:1".parse().unwrap_or(addr(0));
        let att = self.b.sessions().attach(
            id,
            false,
            3600,
            Version::V5,
            None,
            from,
            self.b.next_conn_id(),
            None,
        );
        let sub = Sub {
            qos: QoS::AtLeastOnce,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::SendAtSubscribe,
            id: None,
        };
        assert!(self.b.subscribe(&att.session, filter, sub));
        att.session
    }

    /// Publishes at QoS 1 and awaits the remote acks: `Some(true)` when every node took its
    /// copy, `Some(false)` when one refused (the publisher would get no PUBACK), `None` when
    /// no copy left this node.
    /// A QoS 1 publish that is forwarded to exactly one node: its ack, not awaited.
    fn publish_one(&self, topic: &str) -> crate::cluster::Ack {
        let mut acks = self.b.publish(Arc::new(qos1(topic))).acks;
        assert_eq!(acks.len(), 1);
        acks.remove(0)
    }

    async fn publish(&self, topic: &str) -> Option<bool> {
        let p = self.b.publish(Arc::new(qos1(topic)));
        if p.acks.is_empty() {
            return None;
        }
        let all = futures_util::future::join_all(p.acks);
        let acks = tokio::time::timeout(WAIT, all).await.expect("acks resolve");
        Some(acks.into_iter().all(|a| a))
    }
}

fn qos1(topic: &str) -> Message {
    Message::plain(
        topic,
        Bytes::from_static(b"x"),
        QoS::AtLeastOnce,
        false,
        Arc::from("pub"),
    )
}

/// Three nodes `n1..n3` at `10.0.0.1..3:7000`, each seeding all three, started at once.
async fn cluster(net: &MemoryNetwork, dead_after: &str) -> Vec<Node> {
    let seeds: Vec<String> = (1..=3).map(|i| format!("\"{}\"", addr(i))).collect();
    let mut nodes = Vec::new();
    for i in 1..=3 {
        let src = format!(
            "[node]\nname = \"{}\"\n\n[[listener]]\nbind = \"127.0.0.1:0\"\n\n[auth]\nallow_anonymous = true\n\n[cluster]\nbind = \"{}\"\nseeds = [{}]\ndead_after = \"{dead_after}\"\nsync_timeout = \"5s\"\nleave_timeout = \"1s\"\n",
            name(i),
            addr(i),
            seeds.join(", ")
        );
        let cfg = Config::parse(Path::new("n.toml"), &src).expect("config");
        let b = Broker::new(cfg).expect("broker");
        let (tx, rx) = oneshot::channel::<()>();
        let bound = Bound {
            listeners: Vec::new(),
            admin: None,
        };
        let task = tokio::spawn(run_wired(b.clone(), bound, Wiring::memory(net), async {
            let _ = rx.await;
        }));
        nodes.push(Node {
            b,
            stop: Some(tx),
            task,
        });
    }
    until("every node sees the two others", || {
        (1..=3).all(|i| {
            (1..=3)
                .filter(|j| *j != i)
                .all(|j| nodes[i - 1].sees_up(j, 0))
        })
    })
    .await;
    nodes
}

/// Waits until `cond` holds, at most [`WAIT`].
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {WAIT:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_partitioned_node_is_down_publishes_toward_it_are_refused_and_heal_delivers_again() {
    let net = MemoryNetwork::new();
    let nodes = cluster(&net, "60s").await;
    let s3 = nodes[2].subscribe("c3", "t/#");
    until("n1 and n2 know n3's route", || {
        nodes[0].sees_up(3, 1) && nodes[1].sees_up(3, 1)
    })
    .await;
    assert_eq!(nodes[0].publish("t/a").await, Some(true));
    until("n3 queued the copy", || s3.lock().queue.len() == 1).await;

    net.isolate(addr(3)).await;
    until("n1 and n2 call n3 down and hold its route", || {
        [&nodes[0], &nodes[1]]
            .iter()
            .all(|n| n.peer(3).is_some_and(|(s, r)| !s.up && s.held && r == 1))
    })
    .await;
    until("n3 calls both others down", || {
        [1, 2]
            .iter()
            .all(|i| nodes[2].peer(*i).is_some_and(|(s, _)| !s.up))
    })
    .await;
    assert_eq!(
        nodes[0].publish("t/b").await,
        Some(false),
        "a publish toward a held node is not acknowledged"
    );
    assert_eq!(nodes[1].publish("t/b").await, Some(false));

    net.heal_all().await;
    until("n1 and n2 see n3 again with its route", || {
        nodes[0].sees_up(3, 1) && nodes[1].sees_up(3, 1)
    })
    .await;
    // the channel may still be coming back: a refusal is allowed, a lost ack is not
    until_delivered(&nodes[0], "t/c").await;
    until("n3 queued the copy sent after the heal", || {
        s3.lock().queue.len() >= 2
    })
    .await;
}

/// Publishes until a publish is acknowledged (a refused one would be sent again by its client).
async fn until_delivered(n: &Node, topic: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while n.publish(topic).await != Some(true) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{topic} never acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn past_dead_after_a_partitioned_node_loses_its_routes_and_heal_brings_them_back() {
    let net = MemoryNetwork::new();
    let nodes = cluster(&net, "300ms").await;
    let s3 = nodes[2].subscribe("c3", "t/#");
    until("n1 knows n3's route", || nodes[0].sees_up(3, 1)).await;

    net.isolate(addr(3)).await;
    until("n1 drops n3's route after dead_after", || {
        nodes[0]
            .peer(3)
            .is_some_and(|(s, r)| !s.up && !s.held && r == 0)
    })
    .await;
    assert_eq!(
        nodes[0].publish("t/a").await,
        None,
        "no route left: nothing is forwarded"
    );

    net.heal_all().await;
    until("n1 has n3's route again", || nodes[0].sees_up(3, 1)).await;
    until_delivered(&nodes[0], "t/b").await;
    until("n3 got the copy", || s3.lock().queue.len() == 1).await;
}

#[tokio::test]
async fn a_one_way_cut_makes_a_live_peer_unreachable_until_healed() {
    let net = MemoryNetwork::new();
    let nodes = cluster(&net, "60s").await;
    let s3 = nodes[2].subscribe("c3", "t/#");
    until("n1 knows n3's route", || nodes[0].sees_up(3, 1)).await;

    // n1's pings no longer reach n3: gossip still calls n3 live, its channel does not answer
    net.cut_one_way(addr(1), addr(3)).await;
    until("n1 calls n3 unreachable", || {
        nodes[0].peer(3).is_some_and(|(s, _)| s.up && s.unreachable)
    })
    .await;
    assert_eq!(nodes[0].publish("t/a").await, Some(false));
    assert!(nodes[1].sees_up(3, 1), "n2 is not affected");

    net.heal(addr(1), addr(3)).await;
    until("n1 reaches n3 again", || nodes[0].sees_up(3, 1)).await;
    until_delivered(&nodes[0], "t/b").await;
    until("n3 got the copy", || !s3.lock().queue.is_empty()).await;
}

#[tokio::test]
async fn a_short_pause_delays_an_ack_a_long_one_fails_it() {
    let net = MemoryNetwork::new();
    let nodes = cluster(&net, "60s").await;
    let s3 = nodes[2].subscribe("c3", "t/#");
    until("n1 knows n3's route", || nodes[0].sees_up(3, 1)).await;

    // shorter than the heartbeat deadline: the ack waits and arrives
    net.pause(addr(3)).await;
    let mut ack = nodes[0].publish_one("t/a");
    assert!(
        tokio::time::timeout(Duration::from_millis(50), &mut ack)
            .await
            .is_err(),
        "no ack from a paused node"
    );
    net.resume(addr(3)).await;
    assert!(tokio::time::timeout(WAIT, ack).await.expect("ack"));
    assert_eq!(s3.lock().queue.len(), 1);

    // longer than the deadlines: what waits on n3 fails, and it comes back after
    net.pause(addr(3)).await;
    let pending = nodes[0].publish("t/b");
    assert_eq!(pending.await, Some(false), "a paused node's ack fails");
    until("n1 calls n3 down or unreachable", || {
        nodes[0]
            .peer(3)
            .is_some_and(|(s, _)| !s.up || s.unreachable)
    })
    .await;
    net.resume(addr(3)).await;
    until("n1 sees n3 again", || nodes[0].sees_up(3, 1)).await;
    until_delivered(&nodes[0], "t/c").await;
}

#[tokio::test]
async fn a_killed_node_releases_what_waits_on_it_at_once() {
    let net = MemoryNetwork::new();
    let mut nodes = cluster(&net, "60s").await;
    nodes[2].subscribe("c3", "t/#");
    until("n1 knows n3's route", || nodes[0].sees_up(3, 1)).await;

    // n3 takes the copy but its ack cannot come back
    net.cut_one_way(addr(3), addr(1)).await;
    let mut ack = nodes[0].publish_one("t/a");
    assert!(
        tokio::time::timeout(Duration::from_millis(20), &mut ack)
            .await
            .is_err(),
        "the ack is cut off"
    );
    let killed = tokio::time::Instant::now();
    net.kill(addr(3)).await;
    assert!(
        !tokio::time::timeout(WAIT, ack).await.expect("released"),
        "a killed node's ack fails"
    );
    // released by the channel's reset, before the failure detector calls n3 down
    assert!(
        nodes[0].peer(3).is_some_and(|(s, _)| s.up),
        "released by the failure detector ({:?} after the kill), not by the channel",
        killed.elapsed()
    );
    until("n1 and n2 call n3 down and hold its route", || {
        [&nodes[0], &nodes[1]]
            .iter()
            .all(|n| n.peer(3).is_some_and(|(s, r)| !s.up && s.held && r == 1))
    })
    .await;
    assert_eq!(nodes[1].publish("t/b").await, Some(false));

    // n1 and n2 still work together; n1 leaves gracefully and n2 lets it go at once
    nodes[1].subscribe("c2", "u/#");
    until("n1 knows n2's route", || nodes[0].sees_up(2, 1)).await;
    until_delivered(&nodes[0], "u/a").await;
    if let Some(stop) = nodes[0].stop.take() {
        let _ = stop.send(());
    }
    let n1 = nodes.remove(0);
    let r = tokio::time::timeout(WAIT, n1.task).await.expect("n1 stops");
    assert!(matches!(r, Ok(Ok(()))));
    until("n2 calls n1 down and drops its routes", || {
        nodes[0].peer(1).is_some_and(|(s, _)| !s.up && !s.held)
    })
    .await;
}
