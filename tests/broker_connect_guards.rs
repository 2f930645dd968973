//! What a CONNECT may cost and claim, over real sockets. The password gate: a burst of bogus
//! CONNECTs (wrong passwords and unknown users alike) runs at most
//! `[auth] max_concurrent_password_checks` argon2 checks at once, so the broker's threads and
//! memory stay bounded; the CONNECTs that find no slot in time are refused with v5 0x89 Server
//! busy / 3.1.1 0x03 Server unavailable and counted; a good client still gets in. The will: its
//! topic passes the PUBLISH rules at CONNECT (valid name, not `$SYS`, ACL write for the
//! CONNECTing client), or the CONNECT is refused.

mod common;

use std::time::{Duration, Instant};

use common::bad_input::{rss, slow_hash};
use common::*;
use mqedge_protocol::{ConnAck, Connect, Packet, Version};

/// Every test here finishes in well under this; it bounds a hang.
const TEST_LIMIT: Duration = Duration::from_secs(90);

/// The tests count the broker's threads (all named `inproc-broker`): one broker at a time.
static ONE_BROKER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The broker's threads in this process: its runtime's workers and its blocking pool.
fn broker_threads() -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("inproc-broker"))
        .count()
}

/// Sends a CONNECT and waits (up to `wait`) for the CONNACK; `None`: closed without one.
async fn connect(
    addr: std::net::SocketAddr,
    v: Version,
    id: &str,
    user: (&str, &str),
    will: Option<mqedge_protocol::Will>,
    wait: Duration,
) -> Option<ConnAck> {
    connected(addr, v, id, user, will, wait).await.1
}

/// [`connect`], keeping the connection.
async fn connected(
    addr: std::net::SocketAddr,
    v: Version,
    id: &str,
    user: (&str, &str),
    will: Option<mqedge_protocol::Will>,
    wait: Duration,
) -> (Raw<tokio::net::TcpStream>, Option<ConnAck>) {
    let mut c = Raw::new(tcp(addr).await, v);
    c.send(Packet::Connect(Box::new(Connect {
        version: v,
        clean_start: true,
        keep_alive: 30,
        client_id: id.to_string(),
        will,
        username: Some(user.0.to_string()),
        password: Some(bytes::Bytes::copy_from_slice(user.1.as_bytes())),
        properties: Default::default(),
    })))
    .await;
    let ack = match c.recv(wait).await {
        Some(Packet::ConnAck(a)) => Some(a),
        _ => None,
    };
    (c, ack)
}

fn rejected(admin: std::net::SocketAddr, reason: &str) -> f64 {
    let m = parse_prometheus(&http("GET", admin, "/metrics").1);
    metric(&m, "mqedge_broker_connections_rejected_total", &[reason])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_bogus_connects_is_gated_refused_busy_and_a_good_client_gets_in() {
    let _one = ONE_BROKER.lock().await;
    tokio::time::timeout(TEST_LIMIT, async {
        let dir = TempDir::new("connect-gate");
        let good = mqedge_broker::auth::hash_password(b"right").unwrap();
        dir.write(
            "passwd",
            &format!("good:{good}\nslow:{}\n", slow_hash(b"right")),
        );
        let cfg = dir.write(
            "b.toml",
            &broker_config(
                "127.0.0.1:0",
                "",
                "[auth]\nallow_anonymous = false\npassword_file = \"passwd\"\n\
                 max_concurrent_password_checks = 1\n",
            ),
        );
        let b = InProcBroker::start(&cfg);
        let (addr, admin) = (b.addr(), b.admin());
        let threads_before = broker_threads();
        let rss_before = rss();

        // sample the broker's threads and this process's memory while the burst runs
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut threads, mut mem) = (0, 0);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    threads = threads.max(broker_threads());
                    mem = mem.max(rss());
                    std::thread::sleep(Duration::from_millis(10));
                }
                (threads, mem)
            })
        };
        // 48 at once, half v5 and half 3.1.1; a quarter name users that do not exist
        let mut burst = Vec::new();
        for i in 0..48 {
            let v = if i % 2 == 0 {
                Version::V5
            } else {
                Version::V311
            };
            let user = if i % 4 < 2 { "slow" } else { "nobody" };
            burst.push(tokio::spawn(async move {
                let id = format!("bogus-{i}");
                let ack = connect(addr, v, &id, (user, "wrong"), None, Duration::from_secs(30));
                (v, user, ack.await.map(|a| a.code))
            }));
        }
        let mut busy = [0usize; 2];
        let mut busy_unknown = 0;
        for t in burst {
            let (v, user, code) = t.await.unwrap();
            // 3.1.1's return codes read back as the v5 codes they stand for
            let busy_code = if v.is_v5() { 0x89 } else { 0x88 };
            match code {
                Some(0x86) => {}
                Some(c) if c == busy_code => {
                    busy[usize::from(v.is_v5())] += 1;
                    busy_unknown += usize::from(user == "nobody");
                }
                other => panic!("{v:?} {user}: CONNACK {other:?}"),
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (peak_threads, peak_rss) = sampler.join().unwrap();
        eprintln!(
            "busy v311/v5 {busy:?} (unknown users {busy_unknown}); broker threads {threads_before} \
             -> peak {peak_threads}; rss {} -> peak {} MiB",
            rss_before >> 20,
            peak_rss >> 20
        );
        assert!(
            peak_threads <= threads_before + 4,
            "the blocking pool grew from {threads_before} to {peak_threads} threads"
        );
        assert!(
            // ungated, this burst peaks at ~50 threads and ~650 MiB; gated, at ~150 MiB (freed
            // argon2 blocks the allocator keeps)
            peak_rss < rss_before + (300 << 20),
            "memory grew from {} to {} MiB",
            rss_before >> 20,
            peak_rss >> 20
        );
        assert!(
            busy[0] > 0 && busy[1] > 0,
            "refused busy (v311, v5): {busy:?}"
        );
        assert!(busy_unknown > 0, "unknown users wait for the gate too");
        let total = (busy[0] + busy[1]) as f64;
        assert!(
            eventually(Duration::from_secs(5), || rejected(
                admin,
                "password checks busy"
            ) == total)
            .await,
            "rejected_total{{reason=\"password checks busy\"}} = {}, want {total}",
            rejected(admin, "password checks busy")
        );
        let started = Instant::now();
        let ack = connect(
            addr,
            Version::V5,
            "good",
            ("good", "right"),
            None,
            Duration::from_secs(10),
        );
        assert_eq!(
            ack.await.map(|a| a.code),
            Some(0),
            "the good client is let in"
        );
        eprintln!("good client connected in {:?}", started.elapsed());
    })
    .await
    .expect("test timed out");
}

/// A QoS 0 will on `topic`.
fn will(topic: &str) -> Option<mqedge_protocol::Will> {
    Some(mqedge_protocol::Will {
        topic: topic.to_string(),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: mqedge_protocol::QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    })
}

/// Usernames are taken as given (no password file); `alice` may write only under `alice/`,
/// `bob` and `watcher` only read.
fn will_broker(dir: &TempDir) -> InProcBroker {
    broker_with_acl(
        dir,
        "user alice\ntopic readwrite alice/#\nuser bob\ntopic read #\nuser watcher\ntopic read #\n",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_must_pass_the_publish_rules_at_connect() {
    let _one = ONE_BROKER.lock().await;
    tokio::time::timeout(TEST_LIMIT, async {
        let dir = TempDir::new("connect-will-rules");
        let b = will_broker(&dir);
        let (addr, admin) = (b.addr(), b.admin());
        let wait = Duration::from_secs(5);
        let alice = ("alice", "x");
        // (will topic, v5 CONNACK, 3.1.1 CONNACK as read back: None = closed without one)
        let cases = [
            ("alice/+", Some(0x90), None),
            ("alice/#", Some(0x90), None),
            ("", Some(0x90), None),
            ("$SYS/broker/uptime", Some(0x87), Some(0x87)),
            ("bob/status", Some(0x87), Some(0x87)),
            ("alice/status", Some(0), Some(0)),
        ];
        for (i, (topic, v5, v311)) in cases.into_iter().enumerate() {
            for (v, want) in [(Version::V5, v5), (Version::V311, v311)] {
                let id = format!("will-{i}-{}", v.level());
                let started = Instant::now();
                let got = connect(addr, v, &id, alice, will(topic), wait).await;
                assert_eq!(got.map(|a| a.code), want, "{v:?} will on {topic:?}");
                assert!(
                    started.elapsed() < Duration::from_secs(3),
                    "{topic:?}: answered late"
                );
            }
        }
        assert!(
            eventually(Duration::from_secs(5), || {
                rejected(admin, "invalid will topic") == 6.0
                    && rejected(admin, "will topic not authorized") == 4.0
            })
            .await,
            "rejected_total: invalid {} / not authorized {}",
            rejected(admin, "invalid will topic"),
            rejected(admin, "will topic not authorized")
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_is_published_as_the_client_that_set_it_not_the_one_that_took_over() {
    let _one = ONE_BROKER.lock().await;
    tokio::time::timeout(TEST_LIMIT, async {
        let dir = TempDir::new("connect-will-identity");
        let b = will_broker(&dir);
        let addr = b.addr();
        let wait = Duration::from_secs(5);
        let (mut watcher, ack) =
            connected(addr, Version::V5, "watcher", ("watcher", "x"), None, wait).await;
        assert_eq!(ack.map(|a| a.code), Some(0));
        assert_eq!(watcher.subscribe(1, &[("#", 0)]).await, vec![0]);
        let (mut dev, ack) = connected(
            addr,
            Version::V5,
            "dev1",
            ("alice", "x"),
            will("alice/will"),
            wait,
        )
        .await;
        assert_eq!(ack.map(|a| a.code), Some(0));
        // bob takes the session over: alice's connection ends and her will goes out as hers
        let (_bob, ack) = connected(addr, Version::V5, "dev1", ("bob", "x"), None, wait).await;
        assert_eq!(ack.map(|a| a.code), Some(0));
        let _ = dev.recv(Duration::from_secs(2)).await; // DISCONNECT 0x8E
        let got = watcher.collect(Duration::from_secs(1)).await;
        let topics: Vec<_> = got.iter().map(|p| p.topic.as_str()).collect();
        assert_eq!(
            topics,
            vec!["alice/will"],
            "the will, published with alice's rights"
        );
    })
    .await
    .expect("test timed out");
}
