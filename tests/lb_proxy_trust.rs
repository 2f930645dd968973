//! Who may send the LB a PROXY header: on a listener with `proxy_protocol = true` only the
//! addresses in its `trusted_proxies` are believed. Anyone else's header is refused before it
//! names a client (closed, logged with the sender's address, counted as `untrusted_proxy`), so
//! it can neither dodge the per-IP rate limit nor pick its backend under `source_ip` hashing.
//! An empty list with PROXY input on is a config error. The per-IP limiter keys IPv6 sources
//! per /64 (one host's allocation), which a trusted balancer's headers exercise here.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// An LB whose plain listener takes PROXY headers from 127.0.0.2 only, in front of one
/// backend that wants PROXY v2; `lb_extra` goes into `[lb]`.
fn config(backend: SocketAddr, lb_extra: &str) -> String {
    format!(
        r#"[lb]
name = "pp-trust"
admin = "127.0.0.1:0"
connect_timeout = "2s"
drain_timeout = "1s"
{lb_extra}

[[listener]]
name = "plain"
bind = "127.0.0.1:0"
proxy_protocol = true
trusted_proxies = ["127.0.0.2/32"]

[health]
kind = "tcp"
interval = "500ms"
timeout = "1s"

[[backend]]
name = "b1"
addr = "{backend}"
proxy_protocol = "v2"
"#
    )
}

/// A PROXY v1 header (`addrs`: "SRC_IP DST_IP SRC_PORT" of the family), then a CONNECT.
fn header_and_connect(family: &str, addrs: &str, client_id: &str) -> Vec<u8> {
    let mut b = format!("PROXY {family} {addrs} 1883\r\n").into_bytes();
    b.extend_from_slice(&mqedge_protocol::peek::encode_connect(
        4, client_id, None, 30,
    ));
    b
}

/// Sends `bytes` from `from` to `to` and returns the CONNACK code, or `None` when the LB
/// closed the connection without answering (within 5 s either way).
async fn send(from: &str, to: SocketAddr, bytes: &[u8]) -> Option<u8> {
    let mut s = tcp_from(Some(ip(from)), to).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut ack = [0u8; 4];
    match tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut ack)).await {
        Ok(Ok(_)) => {
            assert_eq!(ack[0], 0x20, "not a CONNACK: {ack:?}");
            Some(ack[3])
        }
        Ok(Err(_)) => None,
        Err(_) => panic!("the LB neither answered nor closed within 5s"),
    }
}

/// `mqedge_lb_connections_rejected_total{listener="plain",reason}` from the admin API.
fn rejected(admin: SocketAddr, reason: &str) -> f64 {
    let samples = parse_prometheus(&http("GET", admin, "/metrics").1);
    metric(
        &samples,
        "mqedge_lb_connections_rejected_total",
        &["listener=\"plain\"", &format!("reason=\"{reason}\"")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_header_from_outside_trusted_proxies_is_refused_logged_and_counted() {
    let dir = TempDir::new("pptrust-refused");
    let broker = MockBroker::start("b1", true).await;
    let cfg = dir.write("lb.toml", &config(broker.addr, ""));
    let lb = tokio::task::block_in_place(|| Lb::start(&cfg));
    let (plain, admin) = (lb.addr("plain"), lb.admin());

    // 127.0.0.5 is not a trusted balancer: its claim to be 203.0.113.7 is not believed
    let forged = header_and_connect("TCP4", "203.0.113.7 192.0.2.1 4242", "forged");
    assert_eq!(send("127.0.0.5", plain, &forged).await, None);
    assert!(
        eventually(Duration::from_secs(3), || rejected(
            admin,
            "untrusted_proxy"
        ) == 1.0)
        .await,
        "one untrusted_proxy refusal; /metrics:\n{}",
        http("GET", admin, "/metrics").1
    );
    let line = tokio::task::block_in_place(|| {
        lb.proc
            .wait_log("reason=\"untrusted_proxy\"", Duration::from_secs(5))
    });
    assert!(line.contains("src=127.0.0.5:"), "names the sender: {line}");
    assert!(!line.contains("203.0.113.7"), "not the claim: {line}");

    // the trusted balancer's header is believed: the broker sees the client it names
    let relayed = header_and_connect("TCP4", "203.0.113.7 192.0.2.1 4242", "relayed");
    assert_eq!(send("127.0.0.2", plain, &relayed).await, Some(0));
    let seen = broker.seen_by("relayed").await;
    let src = seen.proxy.expect("a PROXY v2 header").src;
    assert_eq!(src, Some("203.0.113.7:4242".parse().unwrap()));
    assert!(
        !broker.clients().iter().any(|c| c == "forged"),
        "the forged connection reached the broker: {:?}",
        broker.clients()
    );
    assert_eq!(rejected(admin, "untrusted_proxy"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_clients_share_a_rate_bucket_per_64() {
    let dir = TempDir::new("pptrust-v6");
    let broker = MockBroker::start("b1", true).await;
    let lb_extra = "connect_rate_per_ip = 1\nconnect_burst_per_ip = 1";
    let cfg = dir.write("lb.toml", &config(broker.addr, lb_extra));
    let lb = tokio::task::block_in_place(|| InProcLb::start(&cfg));
    let (plain, admin) = (lb.addr("plain"), lb.admin());
    let dst = "2001:db8::ffff";

    // one token per source a second: the first address of 2001:db8:1:2::/64 takes it ...
    let first = header_and_connect("TCP6", &format!("2001:db8:1:2::1 {dst} 4001"), "v6-a");
    assert_eq!(send("127.0.0.2", plain, &first).await, Some(0));
    // ... so another address of the same /64 finds none (a fresh /128 is no fresh source)
    let same64 = format!("2001:db8:1:2:ffff:ffff:ffff:fffe {dst} 4002");
    let second = header_and_connect("TCP6", &same64, "v6-b");
    assert_eq!(send("127.0.0.2", plain, &second).await, None);
    // while the next /64 is another source with its own token
    let other = header_and_connect("TCP6", &format!("2001:db8:1:3::1 {dst} 4003"), "v6-c");
    assert_eq!(send("127.0.0.2", plain, &other).await, Some(0));

    assert!(
        eventually(Duration::from_secs(3), || rejected(admin, "rate_limited")
            == 1.0)
        .await,
        "one rate_limited refusal; /metrics:\n{}\nlb log:\n{}",
        http("GET", admin, "/metrics").1,
        lb.logs()
    );
    broker.seen_by("v6-c").await;
    assert!(
        !broker.clients().iter().any(|c| c == "v6-b"),
        "{:?}",
        broker.clients()
    );
}

#[test]
fn proxy_input_without_trusted_proxies_is_a_config_error() {
    let dir = TempDir::new("pptrust-check");
    let p = dir.write(
        "lb.toml",
        "[[listener]]\nname = \"mqtt\"\nbind = \"127.0.0.1:1883\"\nproxy_protocol = true\n",
    );
    let out = Command::new(bin())
        .args(["check", "-c"])
        .arg(&p)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let want = format!("{}:3: proxy_protocol needs trusted_proxies", p.display());
    assert!(err.starts_with(&want), "expected {want:?}…, got {err:?}");
}
