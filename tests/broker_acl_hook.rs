//! The external authorization service (`[auth.http_acl]`, docs/operations.md "External
//! authorization"), over real sockets: a real HTTP service started by the test (axum on
//! 127.0.0.1:0) answers allow, deny or ignore per topic; the broker refuses PUBLISHes (v5
//! PUBACK 0x87; 3.1.1 acknowledged and dropped, as the ACL file does) and SUBSCRIBE filters
//! (v5 0x87, 3.1.1 0x80), keeps a publisher's messages in order while it asks, asks nothing
//! the ACL file already refused, caches answers, times out a slow service and follows
//! `on_unavailable` when the service is down.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::{Json, Router};
use common::{http, metric, parse_prometheus, tcp, InProcBroker, Raw, TempDir};
use mqedge_protocol::{Packet, Version};
use serde_json::{json, Value};
use tokio::net::TcpStream;

/// Every test here finishes in a few seconds; this bounds a hang.
const TEST_LIMIT: Duration = Duration::from_secs(60);
/// Time to wait for a message that must not arrive.
const QUIET: Duration = Duration::from_millis(400);

/// Everyone may do everything, except under `local/`: the ACL file's own deny.
const ACL: &str = "topic readwrite #\ntopic deny local/#\n";

/// The requests the service got.
type Seen = Arc<Mutex<Vec<Value>>>;

/// The service: decides by the topic's first level, records every request.
async fn service() -> (SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let app = Router::new().route(
        "/mqtt/acl",
        post(move |Json(req): Json<Value>| {
            let s = s.clone();
            async move {
                s.lock().unwrap().push(req.clone());
                let topic = req["topic"].as_str().unwrap_or("");
                let result = match topic.split('/').next() {
                    Some("denied") => "deny",
                    Some("ignored") => "ignore",
                    Some("slow") => {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        "allow"
                    }
                    Some("garbage") => return Json(json!({"answer": 42})),
                    _ => "allow",
                };
                Json(json!({ "result": result }))
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (addr, seen)
}

fn broker(dir: &TempDir, name: &str, service: SocketAddr, on_unavailable: &str) -> InProcBroker {
    dir.write("acl", ACL);
    let cfg = dir.write(
        &format!("{name}.toml"),
        &format!(
            "[node]\nname = \"{name}\"\nadmin = \"127.0.0.1:0\"\n\n\
             [[listener]]\nname = \"mqtt\"\nbind = \"127.0.0.1:0\"\n\n\
             [auth]\nallow_anonymous = true\nacl_file = \"acl\"\ntrust_claimed_usernames = true\n\n\
             [auth.http_acl]\nurl = \"http://{service}/mqtt/acl\"\ntimeout = \"500ms\"\n\
             cache_ttl = \"30s\"\ncache_size = 1000\non_unavailable = \"{on_unavailable}\"\n"
        ),
    );
    InProcBroker::start(&cfg)
}

async fn client(b: &InProcBroker, v: Version, id: &str) -> Raw<TcpStream> {
    let mut c = Raw::new(tcp(b.addr()).await, v);
    let ack = c
        .connect_with(id, true, 30, None, Some((id, "x")), Default::default())
        .await;
    assert_eq!(ack.code, 0, "{id}: CONNACK");
    c
}

/// Publishes at QoS 1; the PUBACK's code.
async fn puback(c: &mut Raw<TcpStream>, topic: &str, pid: u16) -> u8 {
    c.publish(topic, topic.as_bytes(), 1, Some(pid), false)
        .await;
    loop {
        match c.recv(Duration::from_secs(5)).await {
            Some(Packet::PubAck(a)) if a.packet_id == pid => return a.code,
            Some(_) => continue,
            None => panic!("no PUBACK for {topic}"),
        }
    }
}

fn asked(seen: &Seen, topic: &str) -> usize {
    let s = seen.lock().unwrap();
    s.iter().filter(|r| r["topic"] == topic).count()
}

fn results(b: &InProcBroker, labels: &[&str]) -> f64 {
    let m = parse_prometheus(&http("GET", b.admin(), "/metrics").1);
    metric(&m, "mqedge_broker_auth_acl_hook_results_total", labels)
}

fn topics(got: &[mqedge_protocol::Publish]) -> Vec<String> {
    got.iter().map(|p| p.topic.clone()).collect()
}

async fn the_service_decides(v: Version) {
    let (svc, seen) = service().await;
    let dir = TempDir::new(&format!("acl-hook-{v:?}"));
    let b = broker(&dir, "aclhook", svc, "deny");
    let refused = if v.is_v5() { 0x87 } else { 0x80 };

    // SUBSCRIBE: every filter is asked about, one code each
    let mut sub = client(&b, v, &format!("sub-{v:?}")).await;
    let codes = sub
        .subscribe(
            1,
            &[
                ("#", 1),
                ("denied/x", 1),
                ("ignored/x", 1),
                ("local/x", 1),
                ("$share/g/shared/y", 1),
            ],
        )
        .await;
    assert_eq!(codes, vec![1, refused, 1, refused, 1]);
    // the ACL file refused local/x: the service was not asked; a shared filter is asked
    // about without its group
    assert_eq!(asked(&seen, "local/x"), 0);
    assert_eq!(asked(&seen, "shared/y"), 1);
    {
        let s = seen.lock().unwrap();
        let r = s.iter().find(|r| r["topic"] == "denied/x").unwrap();
        assert_eq!(r["action"], "subscribe");
        assert_eq!(r["clientid"], format!("sub-{v:?}"));
        assert_eq!(r["username"], format!("sub-{v:?}"));
        assert_eq!(r["peerhost"], "127.0.0.1");
    }

    // PUBLISH: allowed ones arrive; a deny is 0x87 in v5, acknowledged and dropped in 3.1.1
    let mut p = client(&b, v, &format!("pub-{v:?}")).await;
    assert_eq!(puback(&mut p, "allowed/a", 1).await, 0);
    let want_denied = if v.is_v5() { 0x87 } else { 0 };
    assert_eq!(puback(&mut p, "denied/a", 2).await, want_denied);
    assert_eq!(puback(&mut p, "ignored/a", 3).await, 0);
    assert_eq!(puback(&mut p, "local/a", 4).await, want_denied);
    assert_eq!(asked(&seen, "local/a"), 0);
    let got = sub.collect(QUIET).await;
    assert_eq!(topics(&got), vec!["allowed/a", "ignored/a"]);
    let r = seen
        .lock()
        .unwrap()
        .iter()
        .find(|r| r["topic"] == "denied/a")
        .cloned();
    assert_eq!(r.unwrap()["action"], "publish");

    // a cached answer: the service is not asked again, the verdict is the same
    assert_eq!(puback(&mut p, "allowed/a", 5).await, 0);
    assert_eq!(puback(&mut p, "denied/a", 6).await, want_denied);
    assert_eq!(asked(&seen, "allowed/a"), 1);
    assert_eq!(asked(&seen, "denied/a"), 1);
    assert_eq!(topics(&sub.collect(QUIET).await), vec!["allowed/a"]);
    assert_eq!(results(&b, &["publish", "\"allow\"", "cache"]), 1.0);
    assert_eq!(results(&b, &["publish", "\"deny\"", "cache"]), 1.0);

    // order: 30 QoS 0 publishes, each on a topic the service must be asked about, sent
    // without waiting; they arrive in the order sent
    let sent: Vec<String> = (0..30).map(|i| format!("order/{i}")).collect();
    for t in &sent {
        p.publish(t, b"o", 0, None, false).await;
    }
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < sent.len() && Instant::now() < deadline {
        got.extend(topics(&sub.collect(QUIET).await));
    }
    assert_eq!(got, sent, "publishes reordered while the service was asked");

    // a slow service and one answering garbage: on_unavailable = "deny", 0x80 at the timeout
    let t0 = Instant::now();
    let want_unavailable = if v.is_v5() { 0x80 } else { 0 };
    assert_eq!(puback(&mut p, "slow/a", 7).await, want_unavailable);
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(puback(&mut p, "garbage/a", 8).await, want_unavailable);
    assert_eq!(sub.subscribe(2, &[("garbage/b", 0)]).await, vec![0x80]);
    // the filters of one SUBSCRIBE are asked about together: 8 slow ones take one timeout
    let slow: Vec<String> = (0..8).map(|i| format!("slow/{i}")).collect();
    let filters: Vec<(&str, u8)> = slow.iter().map(|f| (f.as_str(), 0)).collect();
    let t0 = Instant::now();
    assert_eq!(sub.subscribe(3, &filters).await, vec![0x80; 8]);
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert!(sub.collect(QUIET).await.is_empty());
    // no answer is not cached: asked again
    assert_eq!(puback(&mut p, "garbage/a", 9).await, want_unavailable);
    assert_eq!(asked(&seen, "garbage/a"), 2);

    assert_eq!(results(&b, &["subscribe", "\"deny\"", "service"]), 1.0);

    // figures (printed, not asserted): 200 QoS 1 publishes, each acknowledged before the
    // next, on a cached topic and on 200 new topics the service is asked about
    drop(sub);
    for (what, topic) in [("cached", None), ("asked", Some("fig"))] {
        let t0 = Instant::now();
        for i in 0..200u16 {
            let t = topic.map_or("allowed/a".to_string(), |t| format!("{t}/{i}"));
            assert_eq!(puback(&mut p, &t, 100 + i).await, 0);
        }
        eprintln!(
            "{v:?}: 200 publishes, {what}: {:?} per round trip",
            t0.elapsed() / 200
        );
    }
    assert_eq!(results(&b, &["publish", "\"unavailable\""]), 3.0);
    assert!(results(&b, &["publish", "\"allow\"", "service"]) >= 31.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_decides_publishes_and_subscriptions_v5() {
    tokio::time::timeout(TEST_LIMIT, the_service_decides(Version::V5))
        .await
        .expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_decides_publishes_and_subscriptions_v311() {
    tokio::time::timeout(TEST_LIMIT, the_service_decides(Version::V311))
        .await
        .expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_is_down_is_handled_as_on_unavailable_says() {
    let gone = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dir = TempDir::new("acl-hook-down");
    let deny = broker(&dir, "deny", gone, "deny");
    let local = broker(&dir, "local", gone, "local");
    let allow = broker(&dir, "allow", gone, "allow");
    let run = async {
        let mut d = client(&deny, Version::V5, "d1").await;
        assert_eq!(puback(&mut d, "a/b", 1).await, 0x80);
        assert_eq!(d.subscribe(2, &[("a/#", 1)]).await, vec![0x80]);
        for b in [&local, &allow] {
            let mut c = client(b, Version::V5, "c1").await;
            assert_eq!(puback(&mut c, "a/b", 1).await, 0);
            assert_eq!(c.subscribe(2, &[("a/#", 1)]).await, vec![1]);
            // the ACL file still decides first
            assert_eq!(puback(&mut c, "local/b", 3).await, 0x87);
            assert_eq!(c.subscribe(4, &[("local/#", 1)]).await, vec![0x87]);
        }
        for b in [&deny, &local, &allow] {
            assert_eq!(results(b, &["publish", "\"unavailable\"", "service"]), 1.0);
        }
    };
    tokio::time::timeout(TEST_LIMIT, run)
        .await
        .expect("in time");
}

#[test]
fn a_bad_service_url_is_refused_with_its_line() {
    let src = "[[listener]]\nbind = \"127.0.0.1:1883\"\n[auth]\nallow_anonymous = true\n\
               [auth.http_acl]\nurl = \"ftp://auth.example:21/x\"\n";
    let e = mqedge_broker::config::Config::parse(Path::new("node.toml"), src)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("node.toml:6: auth.http_acl url must start with http://"),
        "{e}"
    );
}
