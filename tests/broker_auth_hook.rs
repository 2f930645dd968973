//! The external authentication service (`[auth.http]`, docs/operations.md "External
//! authentication"), over real sockets: a real HTTP service started by the test (axum on
//! 127.0.0.1:0) answers allow, deny or ignore per username; the broker refuses with the right
//! CONNACK codes (v5 and 3.1.1), falls through to the password file on ignore, caches allows,
//! times out a slow service, and follows `on_unavailable` when the service is down.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::{Json, Router};
use common::{http, metric, parse_prometheus, tcp, InProcBroker, Raw, TempDir};
use mqedge_protocol::Version;
use serde_json::{json, Value};

/// The service: decides by username, counts its calls.
async fn service() -> (SocketAddr, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let app = Router::new().route(
        "/mqtt/auth",
        post(move |Json(req): Json<Value>| {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::Relaxed);
                let result = match req["username"].as_str() {
                    Some("alice") => "allow",
                    Some("mallory") => "deny",
                    Some("slow") => {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        "allow"
                    }
                    Some("garbage") => return Json(json!({"answer": 42})),
                    _ => "ignore",
                };
                // the CONNECT's facts arrive as the docs say
                assert!(req["clientid"].is_string() && req["peerhost"] == "127.0.0.1");
                Json(json!({ "result": result }))
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (addr, calls)
}

fn broker(dir: &TempDir, name: &str, service: SocketAddr, on_unavailable: &str) -> InProcBroker {
    let hash = mqedge_broker::auth::hash_password(b"bob-pw").unwrap();
    dir.write("passwd", &format!("bob:{hash}\n"));
    let cfg = dir.write(
        &format!("{name}.toml"),
        &format!(
            "[node]\nname = \"{name}\"\nadmin = \"127.0.0.1:0\"\n\n\
             [[listener]]\nname = \"mqtt\"\nbind = \"127.0.0.1:0\"\n\n\
             [auth]\nallow_anonymous = false\npassword_file = \"passwd\"\n\n\
             [auth.http]\nurl = \"http://{service}/mqtt/auth\"\ntimeout = \"500ms\"\n\
             cache_ttl = \"30s\"\non_unavailable = \"{on_unavailable}\"\n"
        ),
    );
    InProcBroker::start(&cfg)
}

async fn connack(addr: SocketAddr, v: Version, id: &str, user: &str, pw: &str) -> u8 {
    let mut c = Raw::new(tcp(addr).await, v);
    c.connect_with(id, true, 30, None, Some((user, pw)), Default::default())
        .await
        .code
}

fn hook_results(b: &InProcBroker, outcome: &str) -> f64 {
    let m = parse_prometheus(&http("GET", b.admin(), "/metrics").1);
    metric(&m, "mqedge_broker_auth_hook_results_total", &[outcome])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_decides_and_ignore_falls_through_to_the_password_file() {
    let (svc, calls) = service().await;
    let dir = TempDir::new("auth-hook");
    let b = broker(&dir, "hook1", svc, "deny");
    let addr = b.addr();

    assert_eq!(connack(addr, Version::V5, "a1", "alice", "x").await, 0x00);
    let before = calls.load(Ordering::Relaxed);
    // the same CONNECT again: from the cache, the service is not asked
    assert_eq!(connack(addr, Version::V5, "a1", "alice", "x").await, 0x00);
    assert_eq!(
        calls.load(Ordering::Relaxed),
        before,
        "an allow was not cached"
    );
    assert_eq!(hook_results(&b, "cached"), 1.0);
    // another password is another question
    assert_eq!(connack(addr, Version::V5, "a1", "alice", "y").await, 0x00);
    assert_eq!(calls.load(Ordering::Relaxed), before + 1);

    // deny: v5 0x87 Not authorized; 3.1.1 code 5 on the wire (the decoder reads a 3.1.1
    // return code as its v5 equivalent)
    assert_eq!(connack(addr, Version::V5, "m1", "mallory", "x").await, 0x87);
    assert_eq!(
        connack(addr, Version::V311, "m1", "mallory", "x").await,
        0x87
    );
    // denies are not cached
    let n = calls.load(Ordering::Relaxed);
    assert_eq!(connack(addr, Version::V5, "m1", "mallory", "x").await, 0x87);
    assert_eq!(calls.load(Ordering::Relaxed), n + 1);

    // ignore: the password file decides
    assert_eq!(
        connack(addr, Version::V5, "b1", "bob", "bob-pw").await,
        0x00
    );
    assert_eq!(connack(addr, Version::V5, "b1", "bob", "wrong").await, 0x86);

    // a slow service: refused (on_unavailable = "deny": 0x88) at the timeout, not later
    let t0 = Instant::now();
    assert_eq!(connack(addr, Version::V5, "s1", "slow", "x").await, 0x88);
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t0.elapsed()
    );
    // an answer that is not the contract counts as unavailable; 3.1.1 hears code 3
    // (Server unavailable, read as 0x88)
    assert_eq!(
        connack(addr, Version::V311, "g1", "garbage", "x").await,
        0x88
    );

    assert!(hook_results(&b, "allow") >= 2.0);
    assert_eq!(hook_results(&b, "deny"), 3.0);
    assert_eq!(hook_results(&b, "ignore"), 2.0);
    assert_eq!(hook_results(&b, "unavailable"), 2.0);
    let m = parse_prometheus(&http("GET", b.admin(), "/metrics").1);
    let denied = metric(
        &m,
        "mqedge_broker_connections_rejected_total",
        &["denied by the auth service"],
    );
    assert_eq!(denied, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_is_down_is_handled_as_on_unavailable_says() {
    // a port nothing listens on
    let gone = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dir = TempDir::new("auth-hook-down");
    let deny = broker(&dir, "deny", gone, "deny");
    let local = broker(&dir, "local", gone, "local");
    let allow = broker(&dir, "allow", gone, "allow");

    assert_eq!(
        connack(deny.addr(), Version::V5, "d1", "bob", "bob-pw").await,
        0x88
    );
    assert_eq!(
        connack(local.addr(), Version::V5, "l1", "bob", "bob-pw").await,
        0x00
    );
    assert_eq!(
        connack(local.addr(), Version::V5, "l2", "eve", "x").await,
        0x86
    );
    assert_eq!(
        connack(allow.addr(), Version::V5, "w1", "eve", "x").await,
        0x00
    );
    for b in [&deny, &local, &allow] {
        assert!(hook_results(b, "unavailable") >= 1.0);
    }
}

#[test]
fn a_bad_service_url_is_refused_with_its_line() {
    let src = "[[listener]]\nbind = \"127.0.0.1:1883\"\n[auth]\nallow_anonymous = true\n\
               [auth.http]\nurl = \"https://auth.example:443/x\"\ntimeout = \"90s\"\n";
    let e = mqedge_broker::config::Config::parse(Path::new("node.toml"), src)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("node.toml:6: auth.http url: https is not supported"),
        "{e}"
    );
    let src = src.replace("https://auth.example:443/x", "http://10.0.0.9:8991/x");
    let e = mqedge_broker::config::Config::parse(Path::new("node.toml"), &src)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("node.toml:7: auth.http timeout must be between 1ms and 30s"),
        "{e}"
    );
}
