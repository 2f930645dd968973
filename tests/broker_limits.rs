//! What one client may hold on a node, over real sockets (issue 15 items 5 and 6): every
//! `[limits]` key bites where its docs say, is counted in
//! `mqedge_broker_limit_hits_total{limit}`, and the node stays bounded: subscriptions per
//! client (SUBACK 0x97 / 0x80), a SUBSCRIBE writing its own filter and not the session's
//! whole set, session expiry (3.1.1 persistent sessions too), retained count and bytes,
//! topic alias bytes, connections counted from accept, keep-alive 0 capped, expiry timers
//! stood down on reconnect, and stored payloads that do not pin their read buffers.

mod common;

use std::time::{Duration, Instant};

use common::bad_input::rss;
use common::*;
use mqedge_protocol::{ConnectProperties, Packet, PublishProperties, Version};

/// Every test here finishes well within this; it bounds a hang.
const TEST_LIMIT: Duration = Duration::from_secs(120);

fn samples(b: &InProcBroker) -> Vec<(String, String, f64)> {
    parse_prometheus(&http("GET", b.admin(), "/metrics").1)
}

fn hits(b: &InProcBroker, limit: &str) -> f64 {
    let needle = format!("limit=\"{limit}\"");
    metric(&samples(b), "mqedge_broker_limit_hits_total", &[&needle])
}

/// The retained messages a new subscriber to `filter` is sent (their topics, sorted).
async fn retained_topics(addr: std::net::SocketAddr, id: &str, filter: &str) -> Vec<String> {
    let mut c = Raw::client(addr, Version::V5, id).await;
    c.subscribe(1, &[(filter, 0)]).await;
    let mut topics = Vec::new();
    while let Some(Packet::Publish(p)) = c.recv(Duration::from_millis(500)).await {
        topics.push(p.topic);
    }
    topics.sort();
    topics
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_past_the_cap_are_refused_with_quota_exceeded() {
    tokio::time::timeout(TEST_LIMIT, async {
        let b = InProcBroker::plain(
            "limits-subs",
            "[limits]\nmax_subscriptions_per_client = 3\n",
        );
        let mut c = Raw::client(b.addr(), Version::V5, "many").await;
        let codes = c
            .subscribe(1, &[("a", 1), ("b", 1), ("c", 1), ("d", 1)])
            .await;
        assert_eq!(codes, vec![1, 1, 1, 0x97], "the 4th: Quota exceeded");
        // one already held is not a new one: changing its QoS is allowed
        assert_eq!(c.subscribe(2, &[("a", 0)]).await, vec![0]);
        assert_eq!(c.subscribe(3, &[("e", 0)]).await, vec![0x97]);
        let mut old = Raw::client(b.addr(), Version::V311, "many-311").await;
        let codes = old
            .subscribe(1, &[("a", 0), ("b", 0), ("c", 0), ("d", 0)])
            .await;
        assert_eq!(codes, vec![0, 0, 0, 0x80], "3.1.1: Failure");
        assert_eq!(hits(&b, "max_subscriptions_per_client"), 3.0);
    })
    .await
    .expect("in time");
}

/// A persistent session with many filters: one more SUBSCRIBE writes one row, not the whole
/// set (on main the session record, every filter in it, was rewritten each time); after a
/// restart the session has all its filters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_writes_its_filter_not_the_whole_session() {
    tokio::time::timeout(TEST_LIMIT, async {
        let dir = TempDir::new("limits-sub-rows");
        let cfg = dir.write(
            "b.toml",
            &broker_config("127.0.0.1:0", "data_dir = \"data\"", ""),
        );
        let mut b = InProcBroker::start(&cfg);
        let mut c = Raw::new(tcp(b.addr()).await, Version::V311);
        assert_eq!(c.connect("rows", false, 30).await.code, 0);
        let n = 2000u16;
        let mut first = Duration::ZERO;
        for batch in 0..n / 100 {
            let names: Vec<String> = (0..100).map(|i| format!("f/{batch}/{i}")).collect();
            let filters: Vec<(&str, u8)> = names.iter().map(|f| (f.as_str(), 1)).collect();
            let t = Instant::now();
            c.subscribe(batch + 1, &filters).await;
            if batch == 0 {
                first = t.elapsed();
            }
        }
        let written = |b: &InProcBroker| metric(&samples(b), "mqedge_broker_store_bytes_written", &[]);
        let before = written(&b);
        assert!(before > 0.0, "the store counts what it writes");
        let t = Instant::now();
        c.subscribe(9999, &[("last/one", 1)]).await;
        let last = t.elapsed();
        let cost = written(&b) - before;
        println!("SUBSCRIBE of 100 filters at 0: {first:?}; of one filter at {n}: {last:?}, {cost} bytes written");
        assert!(cost < 200.0, "one filter, one row: {cost} bytes written");
        drop(c);
        b.stop();
        let b = InProcBroker::start(&cfg);
        let mut c = Raw::new(tcp(b.addr()).await, Version::V311);
        let ack = c.connect("rows", false, 30).await;
        assert!(ack.session_present, "the session came back");
        let mut p = Raw::client(b.addr(), Version::V311, "pub").await;
        for topic in ["f/0/0", "f/19/99", "last/one"] {
            p.publish(topic, b"x", 0, None, false).await;
            match c.recv(Duration::from_secs(5)).await {
                Some(Packet::Publish(m)) => assert_eq!(m.topic, topic),
                other => panic!("{topic}: {other:?}"),
            }
        }
    })
    .await
    .expect("in time");
}

/// A session record as brokers wrote it before subscriptions had rows of their own (every
/// filter inline) still restores, and is moved to rows: it survives a second restart too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_record_of_the_old_layout_restores_and_moves_to_rows() {
    tokio::time::timeout(TEST_LIMIT, async {
        use mqedge_broker::store::{Op, Store, Table};
        let dir = TempDir::new("limits-old-record");
        // [1][level 4][expiry u32][no username][2 filters: u32 len, name, qos, flags, id][no QoS 2 ids]
        let mut rec = vec![1u8, 4];
        rec.extend_from_slice(&u32::MAX.to_be_bytes());
        rec.push(0);
        rec.extend_from_slice(&2u32.to_be_bytes());
        for f in ["old/a", "old/b"] {
            rec.extend_from_slice(&(f.len() as u32).to_be_bytes());
            rec.extend_from_slice(f.as_bytes());
            rec.extend_from_slice(&[1, 0, 0, 0, 0, 0]);
        }
        rec.extend_from_slice(&0u32.to_be_bytes());
        let store = Store::open(&dir.path().join("data")).unwrap();
        let put = Op::Put {
            table: Table::Sessions,
            key: b"veteran".to_vec(),
            value: rec,
        };
        store.write(vec![put]).await.unwrap();
        store.close().await;
        drop(store);
        let cfg = dir.write(
            "b.toml",
            &broker_config("127.0.0.1:0", "data_dir = \"data\"", ""),
        );
        for round in 0..2 {
            let mut b = InProcBroker::start(&cfg);
            let mut c = Raw::new(tcp(b.addr()).await, Version::V311);
            assert!(
                c.connect("veteran", false, 30).await.session_present,
                "round {round}"
            );
            let mut p = Raw::client(b.addr(), Version::V311, "pub").await;
            for topic in ["old/a", "old/b"] {
                p.publish(topic, b"x", 0, None, false).await;
                match c.recv(Duration::from_secs(5)).await {
                    Some(Packet::Publish(m)) => assert_eq!(m.topic, topic),
                    other => panic!("round {round}, {topic}: {other:?}"),
                }
            }
            drop((c, p));
            b.stop();
        }
    })
    .await
    .expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_expire_within_max_session_expiry() {
    tokio::time::timeout(TEST_LIMIT, async {
        let b = InProcBroker::plain("limits-expiry", "[limits]\nmax_session_expiry = \"1s\"\n");
        // 3.1.1, clean session off: kept "forever" on main
        let mut c = Raw::new(tcp(b.addr()).await, Version::V311);
        assert_eq!(c.connect("old", false, 30).await.code, 0);
        c.subscribe(1, &[("t", 1)]).await;
        drop(c);
        // v5 asking for an hour is told the cap
        let props = ConnectProperties {
            session_expiry_interval: Some(3600),
            ..Default::default()
        };
        let (v5, ack) = Raw::client5(b.addr(), "new", false, None, props).await;
        assert_eq!(ack.properties.session_expiry_interval, Some(1));
        drop(v5);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let mut c = Raw::new(tcp(b.addr()).await, Version::V311);
        let ack = c.connect("old", false, 30).await;
        assert!(!ack.session_present, "expired after the cap");
        assert!(hits(&b, "max_session_expiry") >= 2.0);
    })
    .await
    .expect("in time");
}

/// A session restored from `data_dir` expires too (on main a restored session was never
/// given an expiry timer: it stayed until its client came back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_session_expires() {
    tokio::time::timeout(TEST_LIMIT, async {
        let dir = TempDir::new("limits-restored-expiry");
        let cfg = dir.write(
            "b.toml",
            &broker_config(
                "127.0.0.1:0",
                "data_dir = \"data\"",
                "[limits]\nmax_session_expiry = \"2s\"\n",
            ),
        );
        let mut b = InProcBroker::start(&cfg);
        let mut c = Raw::new(tcp(b.addr()).await, Version::V311);
        assert_eq!(c.connect("restored", false, 30).await.code, 0);
        c.subscribe(1, &[("t", 1)]).await;
        drop(c);
        b.stop();
        let b = InProcBroker::start(&cfg);
        let sessions = |b: &InProcBroker| metric(&samples(b), "mqedge_broker_sessions", &[]);
        assert_eq!(sessions(&b), 1.0, "restored");
        assert!(
            eventually(Duration::from_secs(10), || sessions(&b) == 0.0).await,
            "expired after the restart"
        );
        let mut c = Raw::new(tcp(b.addr()).await, Version::V311);
        assert!(!c.connect("restored", false, 30).await.session_present);
    })
    .await
    .expect("in time");
}

/// Each disconnect arms an expiry timer; a reconnect stands it down (on main each one was a
/// task sleeping out the whole expiry, never cancelled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_leave_no_timers_behind() {
    tokio::time::timeout(TEST_LIMIT, async {
        let b = InProcBroker::plain("limits-timers", "");
        let timers = |b: &InProcBroker| metric(&samples(b), "mqedge_broker_session_timers", &[]);
        for _ in 0..50 {
            let props = ConnectProperties {
                session_expiry_interval: Some(600),
                ..Default::default()
            };
            let (mut c, _) = Raw::client5(b.addr(), "flappy", false, None, props).await;
            c.send(Packet::Disconnect(Default::default())).await;
            assert!(c.closed_within(Duration::from_secs(5)).await);
        }
        assert!(
            eventually(Duration::from_secs(5), || timers(&b) == 1.0).await,
            "one expiry armed after 50 disconnects: {}",
            timers(&b)
        );
        let _c = Raw::client(b.addr(), Version::V311, "flappy").await;
        assert!(eventually(Duration::from_secs(5), || timers(&b) == 0.0).await);
    })
    .await
    .expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_count_and_bytes_are_capped() {
    tokio::time::timeout(TEST_LIMIT, async {
        let b = InProcBroker::plain(
            "limits-retained",
            "[limits]\nmax_retained_messages = 3\nmax_retained_bytes = \"1KiB\"\n",
        );
        let mut sub = Raw::client(b.addr(), Version::V311, "live").await;
        sub.subscribe(1, &[("r/#", 0)]).await;
        let mut p = Raw::client(b.addr(), Version::V311, "pub").await;
        for i in 0..5 {
            p.publish(&format!("r/{i}"), b"v", 0, None, true).await;
        }
        for i in 0..5 {
            match sub.recv(Duration::from_secs(5)).await {
                Some(Packet::Publish(m)) => {
                    assert_eq!(m.topic, format!("r/{i}"), "still delivered")
                }
                other => panic!("{i}: {other:?}"),
            }
        }
        let topics = retained_topics(b.addr(), "late", "r/#").await;
        assert_eq!(topics, ["r/0", "r/1", "r/2"], "3 kept");
        assert_eq!(hits(&b, "max_retained_messages"), 2.0);
        // a replacement over the byte cap is not stored, and the older value goes with it
        p.publish("r/0", &[b'x'; 2000], 0, None, true).await;
        let topics = retained_topics(b.addr(), "later", "r/#").await;
        assert_eq!(topics, ["r/1", "r/2"]);
        assert_eq!(hits(&b, "max_retained_bytes"), 1.0);
    })
    .await
    .expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_aliases_are_bounded_in_bytes() {
    tokio::time::timeout(TEST_LIMIT, async {
        let b = InProcBroker::plain("limits-alias", "[limits]\nmax_topic_alias_bytes = 100\n");
        let mut c = Raw::client(b.addr(), Version::V5, "aliaser").await;
        let aliased = |topic: String, alias: u16| {
            let mut p = publish(&topic, b"x", 0, None, false);
            p.properties = PublishProperties {
                topic_alias: Some(alias),
                ..Default::default()
            };
            Packet::Publish(p)
        };
        c.send(aliased("a".repeat(60), 1)).await;
        c.send(aliased("b".repeat(60), 2)).await;
        match c.recv(Duration::from_secs(5)).await {
            Some(Packet::Disconnect(d)) => assert_eq!(d.code, 0x97, "Quota exceeded"),
            other => panic!("{other:?}"),
        }
        assert!(c.closed_within(Duration::from_secs(5)).await);
        assert_eq!(hits(&b, "max_topic_alias_bytes"), 1.0);
    })
    .await
    .expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_count_from_accept() {
    tokio::time::timeout(TEST_LIMIT, async {
        let b = InProcBroker::plain("limits-conns", "[limits]\nmax_connections = 2\n");
        let idle: Vec<_> = [tcp(b.addr()).await, tcp(b.addr()).await].into();
        let pending =
            |b: &InProcBroker| metric(&samples(b), "mqedge_broker_connections_pending", &[]);
        assert!(eventually(Duration::from_secs(5), || pending(&b) == 2.0).await);
        // two connections that never sent CONNECT hold the node's two places
        let mut third = Raw::new(tcp(b.addr()).await, Version::V311);
        let connect = Packet::Connect(Box::new(mqedge_protocol::Connect {
            version: Version::V311,
            clean_start: true,
            keep_alive: 30,
            client_id: "third".into(),
            will: None,
            username: None,
            password: None,
            properties: Default::default(),
        }));
        let mut out = bytes::BytesMut::new();
        mqedge_protocol::encode(&connect, Version::V311, &mut out);
        // the broker may have closed it already: a failed write is a refusal too
        let _ = tokio::io::AsyncWriteExt::write_all(&mut third.s, &out).await;
        assert!(
            third.recv(Duration::from_secs(2)).await.is_none(),
            "refused at accept"
        );
        assert_eq!(hits(&b, "max_connections"), 1.0);
        drop(idle);
        assert!(eventually(Duration::from_secs(5), || pending(&b) == 0.0).await);
        let _ok = Raw::client(b.addr(), Version::V311, "fourth").await;
    })
    .await
    .expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_zero_is_held_to_the_cap() {
    tokio::time::timeout(TEST_LIMIT, async {
        // the default: an hour, told to a v5 client that asked for none
        let b = InProcBroker::plain("limits-ka", "");
        let mut c = Raw::new(tcp(b.addr()).await, Version::V5);
        let ack = c.connect("ka0", true, 0).await;
        assert_eq!(ack.properties.server_keep_alive, Some(3600));
        assert_eq!(hits(&b, "max_keepalive"), 1.0);
        // a 3.1.1 client that asked for none is closed after 1.5 × the cap of silence
        let b = InProcBroker::plain("limits-ka1", "[limits]\nmax_keepalive = 1\n");
        let mut c = Raw::new(tcp(b.addr()).await, Version::V311);
        assert_eq!(c.connect("ka0", true, 0).await.code, 0);
        let t = Instant::now();
        assert!(c.closed_within(Duration::from_secs(5)).await);
        assert!(
            t.elapsed() >= Duration::from_millis(1400),
            "{:?}",
            t.elapsed()
        );
    })
    .await
    .expect("in time");
}

/// Item 5: one-byte retained messages read behind large packets in the same read buffer. On
/// main each kept its whole buffer (about 1 MiB) alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_retained_payloads_do_not_pin_their_read_buffers() {
    tokio::time::timeout(TEST_LIMIT, async {
        let b = InProcBroker::plain("limits-pin", "");
        let mut c = Raw::client(b.addr(), Version::V311, "pinner").await;
        let big = vec![b'b'; 600 << 10];
        let start = rss();
        let n = 100;
        for i in 0..n {
            // one write: the large packet, then the small retained one behind it
            let mut out = bytes::BytesMut::new();
            let p = |t: &str, payload: &[u8], retain| {
                Packet::Publish(publish(t, payload, 0, None, retain))
            };
            mqedge_protocol::encode(&p("nobody/listens", &big, false), Version::V311, &mut out);
            mqedge_protocol::encode(&p(&format!("pin/{i}"), b"1", true), Version::V311, &mut out);
            tokio::io::AsyncWriteExt::write_all(&mut c.s, &out)
                .await
                .unwrap();
        }
        let retained =
            |b: &InProcBroker| metric(&samples(b), "mqedge_broker_retained_messages", &[]);
        assert!(eventually(Duration::from_secs(30), || retained(&b) >= f64::from(n)).await);
        assert_eq!(
            retained_topics(b.addr(), "count", "pin/#").await.len(),
            n as usize
        );
        let grown = rss().saturating_sub(start);
        println!(
            "{n} one-byte retained messages behind 600 KiB packets: RSS +{} KiB",
            grown >> 10
        );
        assert!(grown < 40 << 20, "RSS grew {} MiB", grown >> 20);
    })
    .await
    .expect("in time");
}
