//! PROXY in: an LB listener with `proxy_protocol = true` sits behind an upstream L4 balancer and
//! takes the real client address from the PROXY v1/v2 header that balancer sends. The broker
//! behind the LB must see that address (not the upstream's) in the LB's own PROXY v2 header,
//! on plain and TLS listeners, and through a real HAProxy (`send-proxy-v2`): two hops, one
//! address. A connection without a header on such a listener is closed and never forwarded.
//! The tests that read the real client address from the LB's log lines run the binary; the
//! headerless one runs the LB in-process.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use mqedge_shared::proxy::{encode_v2, ProxyInfo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// An LB with a plain and a TLS listener (client certificates required), both expecting a
/// PROXY header from loopback (the test clients and HAProxy), in front of one backend that
/// wants PROXY v2 and is checked over MQTT. Untrusted senders: `lb_proxy_trust.rs`.
fn config(pki: &Pki, backend: SocketAddr) -> String {
    format!(
        r#"[lb]
name = "pp-in"
admin = "127.0.0.1:0"
connect_timeout = "2s"
drain_timeout = "1s"

[[listener]]
name = "plain"
bind = "127.0.0.1:0"
proxy_protocol = true
trusted_proxies = ["127.0.0.0/8"]

[[listener]]
name = "tls"
bind = "127.0.0.1:0"
proxy_protocol = true
trusted_proxies = ["127.0.0.0/8"]
[listener.tls]
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"
client_auth = "required"

[health]
kind = "mqtt"
interval = "500ms"
timeout = "1s"

[[backend]]
name = "b1"
addr = "{backend}"
proxy_protocol = "v2"
"#,
        cert = pki.file("server.pem"),
        key = pki.file("server.key"),
        ca = pki.file("ca.pem"),
    )
}

/// A broker expecting PROXY, and an LB in front of it started by `start` ([`Lb::start`] for
/// the tests that read the LB's log, [`InProcLb::start`] for the others).
async fn setup<L>(
    tag: &str,
    cns: &[&str],
    start: impl FnOnce(&Path) -> L,
) -> (TempDir, Pki, MockBroker, L) {
    let dir = TempDir::new(tag);
    let pki = Pki::new(dir.path(), cns);
    let broker = MockBroker::start("b1", true).await;
    let cfg = dir.write("lb.toml", &config(&pki, broker.addr));
    let lb = tokio::task::block_in_place(|| start(&cfg));
    (dir, pki, broker, lb)
}

/// Reads a CONNACK and returns its return code.
async fn connack<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> u8 {
    let mut ack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut ack))
        .await
        .expect("no CONNACK within 5s")
        .expect("connection closed before a CONNACK");
    assert_eq!(ack[0], 0x20, "not a CONNACK: {ack:?}");
    ack[3]
}

/// Whether the LB closes `s` (EOF or reset) within 5 s without answering anything.
async fn closed_without_answer<S: tokio::io::AsyncRead + Unpin>(s: &mut S) {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("the LB answered {:?} instead of closing", &buf[..n]),
        Err(_) => panic!("the LB kept the connection open for 5s"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_v1_on_the_plain_listener_gives_the_broker_the_real_client() {
    let (_dir, _pki, broker, lb) = setup("ppin-v1", &[], Lb::start).await;
    let plain = lb.addr("plain");

    // The header and the CONNECT in one segment: the LB must keep what it read past the header.
    let mut bytes = b"PROXY TCP4 203.0.113.7 192.0.2.1 4242 1883\r\n".to_vec();
    bytes.extend_from_slice(&mqedge_protocol::peek::encode_connect(
        4,
        "v1-client",
        None,
        30,
    ));
    let mut s = tcp_from(Some(ip("127.0.0.5")), plain).await.unwrap();
    s.write_all(&bytes).await.unwrap();
    assert_eq!(connack(&mut s).await, 0);

    let seen = broker.seen_by("v1-client").await;
    let info = seen.proxy.expect("the broker got a PROXY header");
    assert_eq!(
        info.src,
        Some(addr("203.0.113.7:4242")),
        "the address from the upstream header, not 127.0.0.5"
    );
    assert_eq!(
        info.dst,
        Some(addr("192.0.2.1:1883")),
        "the address the client connected to, per the upstream"
    );
    assert_eq!(info.ssl, None, "a plain listener sends no SSL TLV");

    // Health checks reach the same backend with a LOCAL header (no addresses).
    let checks: Vec<Seen> = broker
        .seen()
        .into_iter()
        .filter(|s| s.client_id.starts_with("mqedge-hc-"))
        .collect();
    assert!(!checks.is_empty(), "no health check reached the broker");
    for c in checks {
        let p = c.proxy.expect("health checks send a PROXY header");
        assert_eq!((p.src, p.dst), (None, None), "LOCAL header: {p:?}");
    }

    // A refusal after the PROXY header is logged with the real client, not the L4 balancer.
    let mut bad = b"PROXY TCP4 203.0.113.8 192.0.2.1 4343 1883\r\n".to_vec();
    bad.extend_from_slice(b"\x30\x05\x00\x01tx");
    let mut s = tcp_from(Some(ip("127.0.0.5")), plain).await.unwrap();
    s.write_all(&bad).await.unwrap();
    closed_without_answer(&mut s).await;
    let line = lb
        .proc
        .wait_log("closed before forwarding", Duration::from_secs(5));
    assert!(line.contains("src=203.0.113.8:4343"), "LB log: {line}");
    assert!(line.contains("peer=127.0.0.5:"), "LB log: {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_v2_then_tls_with_a_client_certificate() {
    let (_dir, pki, broker, lb) = setup("ppin-v2", &["device-9"], Lb::start).await;
    let tls = lb.addr("tls");

    let header = encode_v2(&ProxyInfo {
        src: Some(addr("198.51.100.9:5555")),
        dst: Some(addr("192.0.2.1:8883")),
        ..Default::default()
    });
    let mut tcp = tcp_from(Some(ip("127.0.0.6")), tls).await.unwrap();
    tcp.write_all(&header).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut s = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(pki.client_config(Some("device-9"))).connect(name, tcp),
    )
    .await
    .expect("TLS handshake within 5s")
    .expect("TLS handshake after a PROXY v2 header");
    assert_eq!(mqtt_connect(&mut s, "v2-tls-client").await.unwrap(), 0);

    let seen = broker.seen_by("v2-tls-client").await;
    let info = seen.proxy.expect("the broker got a PROXY header");
    assert_eq!(info.src, Some(addr("198.51.100.9:5555")));
    assert_eq!(info.dst, Some(addr("192.0.2.1:8883")));
    let ssl = info.ssl.expect("SSL TLV for a TLS client");
    assert_eq!(ssl.cn.as_deref(), Some("device-9"));
    assert!(ssl.client_cert && ssl.verified, "{ssl:?}");

    // the LB's own log line (written when the connection closes) names the real client too
    drop(s);
    let line = tokio::task::block_in_place(|| {
        lb.proc
            .wait_log("client_id=v2-tls-client username=", Duration::from_secs(5))
    });
    assert!(line.contains("src=198.51.100.9:5555"), "LB log: {line}");
    assert!(line.contains("cn=\"device-9\""), "LB log: {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_proxy_header_is_closed_and_never_reaches_the_broker() {
    let (_dir, pki, broker, lb) = setup("ppin-missing", &["device-1"], InProcLb::start).await;
    let (plain, tls) = (lb.addr("plain"), lb.addr("tls"));
    let admin = lb.admin();

    // plain: a CONNECT straight away
    let mut s = tcp_from(Some(ip("127.0.0.5")), plain).await.unwrap();
    s.write_all(&mqedge_protocol::peek::encode_connect(
        4,
        "no-header",
        None,
        30,
    ))
    .await
    .unwrap();
    closed_without_answer(&mut s).await;

    // TLS: a ClientHello straight away; the handshake cannot complete
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tcp = tcp_from(Some(ip("127.0.0.5")), tls).await.unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(pki.client_config(Some("device-1"))).connect(name, tcp),
    )
    .await
    .expect("the LB answers a headerless TLS client within 5s");
    assert!(r.is_err(), "TLS handshake completed without a PROXY header");

    let rejected = |samples: &[(String, String, f64)], l: &str| {
        metric(
            samples,
            "mqedge_lb_connections_rejected_total",
            &[&format!("listener=\"{l}\""), "reason=\"proxy_header\""],
        )
    };
    assert!(
        eventually(Duration::from_secs(3), || {
            let s = parse_prometheus(&http("GET", admin, "/metrics").1);
            rejected(&s, "plain") == 1.0 && rejected(&s, "tls") == 1.0
        })
        .await,
        "one proxy_header rejection per listener; /metrics:\n{}\nlb log:\n{}",
        http("GET", admin, "/metrics").1,
        lb.logs()
    );
    assert!(
        broker.clients().iter().all(|c| c.starts_with("mqedge-hc-")),
        "only health checks reached the broker: {:?}",
        broker.clients()
    );
    let backends = get_json(admin, "/api/backends");
    assert_eq!(backends[0]["total_connections"], 0, "{backends}");
}

/// A real HAProxy in TCP mode in front of `lb`, sending PROXY v2 (no TLS, no TLVs asked for).
fn start_haproxy(dir: &TempDir, lb: SocketAddr) -> (Proc, SocketAddr) {
    let port = free_port();
    let conf = dir.write(
        "haproxy.cfg",
        &format!(
            "global\n    maxconn 100\n\n\
             defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n\n\
             frontend f\n    bind 127.0.0.1:{port}\n    default_backend b\n\n\
             backend b\n    server s1 {lb} send-proxy-v2\n"
        ),
    );
    let mut cmd = Command::new(which("haproxy"));
    cmd.arg("-f").arg(&conf).arg("-db");
    let proc = Proc::spawn("haproxy", cmd);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_port(addr, Duration::from_secs(10));
    (proc, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_in_front_of_the_lb_two_hops_one_address() {
    let (dir, _pki, broker, lb) = setup("ppin-haproxy", &[], Lb::start).await;
    let plain = lb.addr("plain");
    let (haproxy, hap) = tokio::task::block_in_place(|| start_haproxy(&dir, plain));

    let mut s = tcp_from(Some(ip("127.0.0.7")), hap).await.unwrap();
    let local = s.local_addr().unwrap();
    let code = mqtt_connect(&mut s, "via-haproxy")
        .await
        .unwrap_or_else(|e| {
            panic!(
                "through HAProxy: {e}\nhaproxy log:\n{}\nlb log:\n{}",
                haproxy.logs(),
                lb.proc.logs()
            )
        });
    assert_eq!(code, 0);

    let seen = broker.seen_by("via-haproxy").await;
    let info = seen.proxy.expect("the broker got a PROXY header");
    assert_eq!(
        info.src,
        Some(local),
        "client 127.0.0.7 -> HAProxy -> LB -> broker: the broker sees the client"
    );
    assert_eq!(
        info.dst,
        Some(hap),
        "dst is HAProxy's frontend, as HAProxy said"
    );
    assert_eq!(info.ssl, None);
    let line = tokio::task::block_in_place(|| {
        drop(s);
        lb.proc
            .wait_log("client_id=via-haproxy username=", Duration::from_secs(5))
    });
    assert!(line.contains(&format!("src={local}")), "LB log: {line}");
    drop(haproxy);
}
