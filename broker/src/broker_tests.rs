//! The core against an in-memory [`Peers`]: what a publish asks of the other nodes, and which
//! route changes the core announces, without sockets.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::*;
use crate::cluster::{BoxFuture, Forwarded, Handover, PeerStatus, SessionExport};
use crate::protocol::{RetainHandling, Version};

/// Records what the core asks; one remote node `n1` subscribes to `t/#`.
#[derive(Default)]
struct FakePeers {
    routes: Router<Arc<str>>,
    announced: Mutex<Vec<String>>,
    forwarded: Mutex<Vec<(String, bool, usize)>>,
    retained: Mutex<Vec<String>>,
}

impl Peers for FakePeers {
    fn local_add(&self, filter: &str) {
        self.announced.lock().unwrap().push(format!("+{filter}"));
    }
    fn local_del(&self, filter: &str) {
        self.announced.lock().unwrap().push(format!("-{filter}"));
    }
    fn remote_matches(&self, topic: &str) -> Matches<Arc<str>> {
        let mut m = Matches::default();
        self.routes.matches(topic, &mut m);
        m
    }
    fn broadcast_retained(&self, m: &Message, _v: &crate::routing::retained_versions::Version) {
        self.retained.lock().unwrap().push(m.topic.to_string());
    }
    fn forward(
        &self,
        n: &Arc<str>,
        direct: bool,
        _shared: Vec<(String, String)>,
        msg: Bytes,
        want_ack: bool,
    ) -> Forwarded {
        self.forwarded
            .lock()
            .unwrap()
            .push((n.to_string(), direct, msg.len()));
        Forwarded {
            ack: want_ack.then(|| Ack::new(std::future::ready(true))),
            gate: None,
        }
    }
    fn take_session<'a>(
        &'a self,
        _client_id: &'a str,
        _clean_start: bool,
    ) -> BoxFuture<'a, Option<(SessionExport, Handover)>> {
        Box::pin(std::future::ready(None))
    }
    fn settle_handover(&self, _h: Handover, _taken: bool) {}
    fn peers(&self) -> Vec<(Arc<str>, PeerStatus, usize)> {
        Vec::new()
    }
    fn remote_routes(&self) -> usize {
        self.routes.subscription_count()
    }
    fn local_routes(&self) -> usize {
        0
    }
    fn replicate(
        &self,
        _n: &Arc<str>,
        _ops: Vec<u8>,
        _ack: bool,
    ) -> Result<Option<Ack>, crate::cluster::NotSent> {
        Err(crate::cluster::NotSent)
    }
    fn promoted(&self, _of: &str) {}
    fn push_sessions(&self, _n: &Arc<str>, _ids: Vec<String>) -> usize {
        0
    }
    fn held_by_peers(
        &self,
        _ids: Vec<String>,
        _timeout: std::time::Duration,
    ) -> BoxFuture<'_, std::collections::HashSet<String>> {
        Box::pin(std::future::ready(Default::default()))
    }
    fn reachable(&self, _n: &str) -> bool {
        false
    }
}

fn broker_with(peers: &Arc<FakePeers>) -> Arc<Broker> {
    let cfg = Config::parse(
        Path::new("b.toml"),
        "[[listener]]\nbind = \"127.0.0.1:1883\"\n",
    )
    .unwrap();
    let b = Broker::new(cfg).unwrap();
    let p: Arc<dyn Peers> = peers.clone();
    b.set_cluster(p, tokio::sync::watch::channel(false).1);
    b
}

fn msg(topic: &str, qos: QoS, retain: bool) -> Arc<Message> {
    let payload = Bytes::from_static(b"x");
    Arc::new(Message::plain(
        topic,
        payload,
        qos,
        retain,
        Arc::from("pub"),
    ))
}

#[tokio::test]
async fn a_publish_goes_to_local_sessions_and_one_copy_per_remote_node() {
    let peers = Arc::new(FakePeers::default());
    peers
        .routes
        .subscribe(&Arc::from("n1"), "t/#", SubOptions::default());
    let b = broker_with(&peers);
    let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let att = b
        .sessions()
        .attach("c", true, 0, Version::V5, None, peer, 1, None);
    let sub = Sub {
        qos: QoS::AtLeastOnce,
        no_local: false,
        retain_as_published: false,
        retain_handling: RetainHandling::SendAtSubscribe,
        id: None,
    };
    assert!(b.subscribe(&att.session, "t/+", sub));
    assert_eq!(*peers.announced.lock().unwrap(), ["+t/+"]);

    let p = b.publish(msg("t/x", QoS::AtLeastOnce, true));
    assert_eq!(att.session.lock().queue.len(), 1);
    assert_eq!(p.acks.len(), 1, "a QoS 1 copy is acknowledged by its node");
    for a in p.acks {
        assert!(a.await);
    }
    assert_eq!(peers.forwarded.lock().unwrap()[0].0, "n1");
    assert!(
        peers.forwarded.lock().unwrap()[0].1,
        "n1 has a direct route"
    );
    assert_eq!(*peers.retained.lock().unwrap(), ["t/x"]);

    // $SYS stays on its node
    b.publish(msg("$SYS/x", QoS::AtMostOnce, true));
    assert_eq!(peers.forwarded.lock().unwrap().len(), 1);
    assert_eq!(peers.retained.lock().unwrap().len(), 1);

    assert!(b.unsubscribe(&att.session, "t/+"));
    assert_eq!(*peers.announced.lock().unwrap(), ["+t/+", "-t/+"]);
}
