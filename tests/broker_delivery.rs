//! What the broker sends and how it closes, over real sockets: retained messages streamed to a
//! new subscription under the connection's flow control, closes with a reason code that a
//! pipelining client can still read (lingering close), `[limits] max_keepalive`, and topic
//! aliases on the broker's own PUBLISHes. Each test starts its own broker (in-process) and bounds
//! its time.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use mqedge_protocol::{decode, encode, reason, ConnectProperties, Packet, Publish, QoS, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(5);

/// What a pipelining client saw: the packets it decoded, the error that ended its writing
/// (a reset from the server) and the one that ended its reading, if any.
struct Pipelined {
    got: Vec<Packet>,
    write_err: Option<std::io::Error>,
    read_err: Option<std::io::Error>,
}

/// Writes `first`, then keeps writing `more` every 20 ms until `for_` passes or a write fails,
/// without reading anything (a pipelining client); then reads everything the server sent until
/// it closes.
async fn pipeline_then_read(
    s: TcpStream,
    v: Version,
    first: &[u8],
    more: &[u8],
    for_: Duration,
) -> Pipelined {
    let (mut r, mut w) = s.into_split();
    let start = Instant::now();
    let mut write_err = w.write_all(first).await.err();
    while write_err.is_none() && start.elapsed() < for_ {
        write_err = w.write_all(more).await.err();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut buf = BytesMut::new();
    let mut read_err = None;
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, r.read(&mut chunk)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => {
                read_err = Some(e);
                break;
            }
            Err(_) => panic!("the server did not close within {T:?}"),
        }
    }
    let mut got = Vec::new();
    while let Ok(Some(p)) = decode(&mut buf, Some(v), 1 << 24) {
        got.push(p);
    }
    Pipelined {
        got,
        write_err,
        read_err,
    }
}

/// A v5 client that pipelines more QoS 2 PUBLISHes than the server's Receive Maximum (and
/// keeps sending, reading nothing) still reads DISCONNECT 0x93: the broker half-closes and
/// drains the client's input before closing, instead of closing on unread bytes (which makes
/// the kernel answer with a reset that destroys the DISCONNECT before the client reads it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_pipelining_past_receive_maximum_still_reads_disconnect_0x93() {
    let n = InProcBroker::plain("dl-linger-93", "");
    let mut c = Raw::new(tcp(n.addr()).await, Version::V5);
    let ack0 = c.connect("pipeliner", true, 30).await;
    assert_eq!(ack0.code, 0);
    let max = ack0.properties.receive_maximum.unwrap_or(u16::MAX);
    assert!(max < 1000, "receive maximum {max} too large to exceed here");
    let payload = vec![b'x'; 1024];
    let mut first = BytesMut::new();
    for i in 0..max + 200 {
        let p = publish("flood/t", &payload, 2, Some(i + 1), false);
        encode(&Packet::Publish(p), Version::V5, &mut first);
    }
    let mut more = BytesMut::new();
    for i in 0..16 {
        let p = publish("flood/t", &payload, 2, Some(max + 201 + i), false);
        encode(&Packet::Publish(p), Version::V5, &mut more);
    }
    let p = pipeline_then_read(c.s, Version::V5, &first, &more, Duration::from_millis(500)).await;
    assert!(
        p.write_err.is_none(),
        "the broker reset the connection while the client was still sending: {:?}",
        p.write_err
    );
    let last = p.got.iter().rev().find(|p| !matches!(p, Packet::PubRec(_)));
    assert!(
        matches!(last, Some(Packet::Disconnect(d)) if d.code == reason::RECEIVE_MAXIMUM_EXCEEDED),
        "want DISCONNECT 0x93 as the last packet; got {last:?} after {} packets (read error: {:?})",
        p.got.len(),
        p.read_err
    );
    assert!(
        p.read_err.is_none(),
        "read ended with {:?}, want a clean close",
        p.read_err
    );
}

/// A refused CONNECT (CONNACK with an error code) is readable by a client that sent more
/// packets right behind its CONNECT: the broker lingers on that close too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connect_is_readable_by_a_pipelining_client() {
    let n = InProcBroker::plain("dl-linger-connack", "[auth]\nallow_anonymous = false\n");
    let mut first = BytesMut::new();
    encode(
        &Packet::Connect(Box::new(mqedge_protocol::Connect {
            version: Version::V5,
            clean_start: true,
            keep_alive: 30,
            client_id: "anon".into(),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties::default(),
        })),
        Version::V5,
        &mut first,
    );
    let payload = vec![b'y'; 1024];
    let mut more = BytesMut::new();
    for i in 0..16u16 {
        let p = publish("pipelined/t", &payload, 1, Some(i + 1), false);
        encode(&Packet::Publish(p), Version::V5, &mut more);
    }
    for _ in 0..16 {
        first.extend_from_slice(&more);
    }
    let p = pipeline_then_read(
        tcp(n.addr()).await,
        Version::V5,
        &first,
        &more,
        Duration::from_millis(500),
    )
    .await;
    assert!(
        p.write_err.is_none(),
        "the broker reset the connection while the client was still sending: {:?}",
        p.write_err
    );
    assert!(
        matches!(p.got.first(), Some(Packet::ConnAck(a)) if a.code == reason::NOT_AUTHORIZED),
        "want CONNACK 0x87; got {:?} (read error: {:?})",
        p.got,
        p.read_err
    );
    assert!(
        p.read_err.is_none(),
        "read ended with {:?}, want a clean close",
        p.read_err
    );
}

/// Connects with `keep_alive` and stays silent: (the CONNACK's Server Keep Alive, how long until
/// the broker closed, or None when it did not within `wait`).
async fn silent_client(
    addr: SocketAddr,
    v: Version,
    id: &str,
    keep_alive: u16,
    wait: Duration,
) -> (Option<u16>, Option<Duration>) {
    let mut c = Raw::new(tcp(addr).await, v);
    let start = Instant::now();
    let ack = c.connect(id, true, keep_alive).await;
    assert_eq!(ack.code, 0, "{id}: CONNACK {ack:?}");
    let closed = c.closed_within(wait).await.then(|| start.elapsed());
    (ack.properties.server_keep_alive, closed)
}

/// `[limits] max_keepalive`: a v5 client asking for more, or for none (0), is told the
/// server's value as Server Keep Alive and held to it (1.5×); one asking for less keeps its own
/// and hears nothing; a 3.1.1 client (which cannot be told) is accepted and held to it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_keepalive_caps_and_replaces_the_client_keep_alive() {
    let n = InProcBroker::plain("dl-maxka", "[limits]\nmax_keepalive = 2\n");
    let addr = n.addr();
    let wait = Duration::from_secs(6);
    let (more, none, less, v3) = tokio::join!(
        silent_client(addr, Version::V5, "ka-more", 60, wait),
        silent_client(addr, Version::V5, "ka-none", 0, wait),
        silent_client(addr, Version::V5, "ka-less", 1, wait),
        silent_client(addr, Version::V311, "ka-v3", 60, wait),
    );
    assert_eq!(more.0, Some(2), "asked 60: Server Keep Alive");
    assert_eq!(none.0, Some(2), "asked 0: Server Keep Alive");
    assert_eq!(less.0, None, "asked 1: no Server Keep Alive");
    let window = |what: &str, got: Option<Duration>, lo: u64, hi: u64| {
        let t = got.unwrap_or_else(|| panic!("{what}: not closed within {wait:?}"));
        assert!(
            t >= Duration::from_millis(lo) && t <= Duration::from_millis(hi),
            "{what}: closed after {t:?}, want {lo} ms .. {hi} ms"
        );
    };
    window("v5 asked 60", more.1, 3000, 4500);
    window("v5 asked 0", none.1, 3000, 4500);
    window("v5 asked 1", less.1, 1500, 2700);
    window("3.1.1 asked 60", v3.1, 3000, 4500);
}

/// With `max_keepalive = 0` (no cap; the default is an hour) a client's keep-alive stands, 0
/// included: no Server Keep Alive, and a client that asked for none is not closed for silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_max_keepalive_the_client_keep_alive_stands() {
    let n = InProcBroker::plain("dl-maxka-default", "[limits]\nmax_keepalive = 0\n");
    let (none, long) = tokio::join!(
        silent_client(n.addr(), Version::V5, "ka-zero", 0, Duration::from_secs(2)),
        silent_client(
            n.addr(),
            Version::V5,
            "ka-long",
            65535,
            Duration::from_secs(2)
        ),
    );
    assert_eq!(none, (None, None), "asked 0");
    assert_eq!(long, (None, None), "asked 65535");
}

/// Publishes `n` retained QoS 1 messages to `r/0` … `r/{n-1}` in one pipelined write (packet
/// ids 1 … 65534 in turn: the broker acknowledges each before it reads the next), then a
/// sentinel (packet id 65535) whose PUBACK says every one before it was handled (one
/// connection's packets are handled in order).
async fn publish_retained(addr: SocketAddr, n: u32) {
    let mut c = Raw::client(addr, Version::V5, "retainer").await;
    let mut bytes = BytesMut::new();
    for i in 0..n {
        let pid = (i % 65534) as u16 + 1;
        let p = publish(
            &format!("r/{i}"),
            format!("v{i}").as_bytes(),
            1,
            Some(pid),
            true,
        );
        encode(&Packet::Publish(p), Version::V5, &mut bytes);
    }
    c.s.write_all(&bytes).await.unwrap();
    c.publish("sentinel/done", b"", 1, Some(65535), false).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.recv(left).await {
            Some(Packet::PubAck(a)) if a.packet_id == 65535 => break,
            Some(_) => {}
            None => panic!("no PUBACK for the sentinel after {n} retained publishes"),
        }
    }
}

/// Subscribes to `#` at `qos` (acknowledging QoS 1 deliveries in batches, as a fast client
/// would) and counts the distinct retained topics received until `n` arrived or nothing came
/// for 3 s.
async fn retained_received(addr: SocketAddr, id: &str, qos: u8, n: usize) -> usize {
    let mut c = Raw::client(addr, Version::V5, id).await;
    // nothing comes between CONNACK and SUBACK: the stream is read raw from here on
    c.send(Packet::Subscribe(mqedge_protocol::Subscribe {
        packet_id: 1,
        properties: Default::default(),
        filters: vec![mqedge_protocol::SubscribeFilter {
            filter: "#".into(),
            qos: QoS::from_u8(qos).unwrap(),
            no_local: false,
            retain_as_published: false,
            retain_handling: mqedge_protocol::RetainHandling::SendAtSubscribe,
        }],
    }))
    .await;
    let (mut r, mut w) = c.s.into_split();
    let mut buf = BytesMut::new();
    let mut topics = std::collections::HashSet::new();
    let mut chunk = vec![0u8; 64 * 1024];
    while topics.len() < n {
        match tokio::time::timeout(Duration::from_secs(3), r.read(&mut chunk)).await {
            Ok(Ok(k)) if k > 0 => buf.extend_from_slice(&chunk[..k]),
            _ => break,
        }
        let mut acks = BytesMut::new();
        while let Some(p) = decode(&mut buf, Some(Version::V5), 1 << 24).unwrap() {
            if let Packet::SubAck(a) = &p {
                assert_eq!(a.codes, vec![qos], "{id}: SUBACK");
            }
            if let Packet::Publish(p) = p {
                assert!(p.retain, "{id}: retained delivery without RETAIN: {p:?}");
                assert_eq!(p.qos as u8, qos, "{id}: delivery QoS");
                if let Some(pid) = p.packet_id {
                    encode(&Packet::PubAck(ack(pid)), Version::V5, &mut acks);
                }
                topics.insert(p.topic);
            }
        }
        if !acks.is_empty() {
            w.write_all(&acks).await.unwrap();
        }
    }
    topics.len()
}

/// A new `#` subscriber gets every retained message, 100,000 of them, at QoS 0 and at QoS 1
/// (where the broker's in-flight window paces the stream): retained messages sent on
/// SUBSCRIBE are streamed under the connection's flow control, not cut at
/// `max_offline_messages` (default 1000, for offline sessions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_wildcard_subscriber_gets_all_100000_retained_messages() {
    const N: u32 = 100_000;
    let n = InProcBroker::plain("dl-retained-100k", "");
    publish_retained(n.addr(), N).await;
    let (q0, q1) = tokio::join!(
        retained_received(n.addr(), "all-q0", 0, N as usize),
        retained_received(n.addr(), "all-q1", 1, N as usize),
    );
    assert_eq!(q0, N as usize, "QoS 0 subscriber");
    assert_eq!(q1, N as usize, "QoS 1 subscriber");
}

/// Retained messages a connection had not streamed when it ended stay with a persistent
/// session as offline messages, within `max_offline_messages` (1000 by default): on resumption
/// the client gets its unacknowledged in-flight window again (32, DUP) and 1000 more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsent_retained_messages_become_offline_messages_of_a_persistent_session() {
    const N: u32 = 5000;
    let n = InProcBroker::plain("dl-retained-rest", "");
    publish_retained(n.addr(), N).await;
    let props = || ConnectProperties {
        session_expiry_interval: Some(600),
        ..Default::default()
    };
    let mut c = Raw::new(tcp(n.addr()).await, Version::V5);
    let ack0 = c.connect_with("rest", true, 60, None, None, props()).await;
    assert_eq!(ack0.code, 0);
    let window = usize::from(ack0.properties.receive_maximum.unwrap());
    assert_eq!(c.subscribe(1, &[("#", 1)]).await, vec![1]);
    // read the first window without acknowledging anything: the stream stops there
    let mut first = 0;
    while first < window {
        match c.recv(T).await {
            Some(Packet::Publish(_)) => first += 1,
            Some(_) => {}
            None => panic!("got {first} of the first {window} retained messages"),
        }
    }
    drop(c);
    // the broker has noticed once a new connection for the id resumes without a takeover;
    // either way the session is the same
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut c = Raw::new(tcp(n.addr()).await, Version::V5);
    let ack1 = c.connect_with("rest", false, 60, None, None, props()).await;
    assert!(ack1.session_present);
    let got = c.collect(Duration::from_secs(2)).await;
    let dups = got.iter().filter(|p| p.dup).count();
    let topics: std::collections::HashSet<_> = got.iter().map(|p| p.topic.clone()).collect();
    assert_eq!(dups, window, "the unacknowledged window is resent with DUP");
    assert_eq!(got.len(), window + 1000, "window + max_offline_messages");
    assert_eq!(topics.len(), got.len(), "no message twice");
}

/// A v5 subscriber's view of topic aliases: resolves every PUBLISH to its topic, checking the
/// broker's use of them (within the allowed maximum, empty topic only for a known alias).
#[derive(Default)]
struct AliasView {
    map: std::collections::HashMap<u16, String>,
    /// PUBLISHes that came with an empty topic (an alias standing for it).
    by_alias: usize,
    /// Aliases given to a different topic than before.
    reassigned: usize,
}

impl AliasView {
    fn resolve(&mut self, p: &Publish, max: u16) -> String {
        match p.properties.topic_alias {
            None => p.topic.clone(),
            Some(a) => {
                assert!(a >= 1 && a <= max, "alias {a} outside 1..={max}: {p:?}");
                if p.topic.is_empty() {
                    self.by_alias += 1;
                    self.map
                        .get(&a)
                        .cloned()
                        .unwrap_or_else(|| panic!("alias {a} used before it was set: {p:?}"))
                } else {
                    if let Some(old) = self.map.insert(a, p.topic.clone()) {
                        if old != p.topic {
                            self.reassigned += 1;
                        }
                    }
                    p.topic.clone()
                }
            }
        }
    }
}

/// The topics of a sequence with repeats and more distinct topics than aliases.
fn alias_topics(n: usize) -> Vec<String> {
    let mut x: u32 = 12345;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            format!("alias/t{}", (x >> 16) % 8)
        })
        .collect()
}

/// Publishes one QoS 1 message per topic (payload = its topic), pipelined, and waits for the
/// last PUBACK.
async fn publish_topics(addr: SocketAddr, topics: &[String]) {
    let mut c = Raw::client(addr, Version::V5, "alias-pub").await;
    let mut bytes = BytesMut::new();
    for (i, t) in topics.iter().enumerate() {
        let p = publish(t, t.as_bytes(), 1, Some(i as u16 + 1), false);
        encode(&Packet::Publish(p), Version::V5, &mut bytes);
    }
    c.s.write_all(&bytes).await.unwrap();
    let last = topics.len() as u16;
    loop {
        match c.recv(T).await {
            Some(Packet::PubAck(a)) if a.packet_id == last => return,
            Some(_) => {}
            None => panic!("no PUBACK for the last publish"),
        }
    }
}

/// v5 §3.3.2.3.4: a client that allows 3 topic aliases gets the broker's PUBLISHes with
/// aliases — the topic and alias at first use, then the alias alone — and every message
/// resolves to its own topic, through reassignments of aliases to new topics (8 topics).
/// A client that allows none gets full topics and no alias.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_broker_uses_topic_aliases_the_client_allowed() {
    let n = InProcBroker::plain("dl-alias", "");
    let with = ConnectProperties {
        topic_alias_maximum: Some(3),
        ..Default::default()
    };
    let mut sub = Raw::new(tcp(n.addr()).await, Version::V5);
    let ack0 = sub
        .connect_with("alias-sub", true, 60, None, None, with)
        .await;
    assert_eq!(ack0.code, 0);
    let mut plain = Raw::client(n.addr(), Version::V5, "alias-plain").await;
    assert_eq!(sub.subscribe(1, &[("alias/#", 1)]).await, vec![1]);
    assert_eq!(plain.subscribe(1, &[("alias/#", 1)]).await, vec![1]);
    let topics = alias_topics(300);
    publish_topics(n.addr(), &topics).await;
    let got = sub.collect(Duration::from_secs(1)).await;
    assert_eq!(got.len(), topics.len(), "aliased subscriber: every message");
    let mut view = AliasView::default();
    for (p, want) in got.iter().zip(&topics) {
        let t = view.resolve(p, 3);
        assert_eq!(&t, want, "resolved topic");
        assert_eq!(p.payload, want.as_bytes(), "message order");
    }
    assert!(view.by_alias > 50, "aliases were used: {}", view.by_alias);
    assert!(
        view.reassigned > 10,
        "aliases were reassigned: {}",
        view.reassigned
    );
    let got = plain.collect(Duration::from_secs(1)).await;
    assert_eq!(got.len(), topics.len(), "plain subscriber: every message");
    for (p, want) in got.iter().zip(&topics) {
        assert_eq!(
            p.properties.topic_alias, None,
            "alias to a client that allowed none"
        );
        assert_eq!(&p.topic, want);
    }
}

/// Aliases belong to one connection: PUBLISHes resent after a reconnect carry their full
/// topic, and the new connection's first aliased PUBLISH of a topic sets the alias again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_resent_messages_carry_their_full_topic_after_a_reconnect() {
    let n = InProcBroker::plain("dl-alias-resend", "");
    let props = || ConnectProperties {
        topic_alias_maximum: Some(4),
        session_expiry_interval: Some(600),
        ..Default::default()
    };
    let mut sub = Raw::new(tcp(n.addr()).await, Version::V5);
    assert_eq!(
        sub.connect_with("alias-resend", true, 60, None, None, props())
            .await
            .code,
        0
    );
    assert_eq!(sub.subscribe(1, &[("alias/#", 1)]).await, vec![1]);
    let topics = alias_topics(20);
    publish_topics(n.addr(), &topics).await;
    // read everything, acknowledge nothing
    let mut view = AliasView::default();
    let mut first = Vec::new();
    while first.len() < topics.len() {
        match sub.recv(T).await {
            Some(Packet::Publish(p)) => first.push(view.resolve(&p, 4)),
            Some(_) => {}
            None => panic!("got {} of {} messages", first.len(), topics.len()),
        }
    }
    assert_eq!(first, topics);
    assert!(view.by_alias > 0, "aliases were used");
    drop(sub);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut sub = Raw::new(tcp(n.addr()).await, Version::V5);
    let ack1 = sub
        .connect_with("alias-resend", false, 60, None, None, props())
        .await;
    assert!(ack1.session_present);
    let again = sub.collect(Duration::from_secs(1)).await;
    assert_eq!(
        again.len(),
        topics.len(),
        "every unacknowledged message resent"
    );
    for (p, want) in again.iter().zip(&topics) {
        assert!(p.dup, "resent without DUP: {p:?}");
        assert_eq!(&p.topic, want, "resent with its full topic");
    }
    // new messages on the new connection: the first of each topic sets its alias again
    let more = alias_topics(40);
    publish_topics(n.addr(), &more).await;
    let got = sub.collect(Duration::from_secs(1)).await;
    let mut view = AliasView::default();
    let resolved: Vec<String> = got.iter().map(|p| view.resolve(p, 4)).collect();
    assert_eq!(resolved, more);
}
