//! The broker behind a TLS-terminating proxy (broker and LB in-process): the LB and HAProxy (`send-proxy-v2-ssl-cn`)
//! in front of it must look the same to the broker: `/api/clients/{id}` shows the client's real
//! address and the certificate CN as username, and the ACL limits that user to its topics.
//! Also: PROXY headers from untrusted addresses and missing headers on a `required` listener are
//! refused; garbage closes only its own connection.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::*;
use mqedge_protocol::{Packet, Version};
use tokio::io::AsyncWriteExt;

fn broker_cfg(dir: &TempDir) -> std::path::PathBuf {
    dir.write(
        "acl",
        "# everyone may read the public board\ntopic read public/#\n\nuser device-1\ntopic readwrite devices/device-1/#\n",
    );
    dir.write(
        "b.toml",
        r#"[node]
name = "node1"
admin = "127.0.0.1:0"

[[listener]]
name = "from-lb"
bind = "127.0.0.1:0"
proxy_protocol = "required"
trusted_proxies = ["127.0.0.1/32"]
use_cn_as_username = true

[[listener]]
name = "strict"
bind = "127.0.0.1:0"
proxy_protocol = "required"
trusted_proxies = ["127.0.0.99/32"]

[auth]
allow_anonymous = false
acl_file = "acl"
"#,
    )
}

/// Connects through `front` (TLS, cert device-1) from `src` as client id `id`, then checks the
/// admin view and the ACL.
async fn check_client_through(
    front: SocketAddr,
    pki: &Pki,
    src: &str,
    id: &str,
    admin: SocketAddr,
) {
    let tls = tls_from(
        Some(src.parse().unwrap()),
        front,
        pki.client_config(Some("device-1")),
    )
    .await
    .unwrap();
    let mut c = Raw::new(tls, Version::V311);
    let ack = c.connect(id, true, 30).await;
    assert_eq!(ack.code, 0, "CONNACK");
    let v = get_json(admin, &format!("/api/clients/{id}"));
    assert_eq!(v["client_id"], id);
    assert_eq!(v["username"], "device-1", "{v}");
    assert!(
        v["peer_addr"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{src}:")),
        "{v}"
    );
    assert_eq!(v["node"], "node1");
    assert_eq!(v["protocol_version"], 4);
    assert_eq!(v["connected"], true);
    // ACL: own topics yes, others no (v3.1.1 SUBACK failure 0x80)
    let codes = c
        .subscribe(
            1,
            &[
                ("devices/device-1/#", 1),
                ("devices/device-2/#", 1),
                ("public/news", 0),
            ],
        )
        .await;
    assert_eq!(codes, vec![1, 0x80, 0]);
    // a publish to a foreign topic is acknowledged and dropped (3.1.1); to its own topic it arrives
    c.publish("devices/device-2/cmd", b"nope", 1, Some(10), false)
        .await;
    c.publish("devices/device-1/state", b"yes", 1, Some(11), false)
        .await;
    let got = c.collect(Duration::from_millis(500)).await;
    let topics: Vec<_> = got.iter().map(|p| p.topic.clone()).collect();
    assert_eq!(topics, vec!["devices/device-1/state".to_string()]);
}

/// `mqedge_broker_connections_rejected_total{reason}` from the admin API's `/metrics`.
fn rejected(admin: SocketAddr, reason: &str) -> f64 {
    let m = parse_prometheus(&http("GET", admin, "/metrics").1);
    metric(&m, "mqedge_broker_connections_rejected_total", &[reason])
}

/// Waits until the broker counted a connection rejected for `reason`.
async fn wait_rejected(admin: SocketAddr, reason: &str) {
    assert!(
        eventually(Duration::from_secs(3), || rejected(admin, reason) >= 1.0).await,
        "no connection rejected for {reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqedge_lb_and_haproxy_in_front_look_the_same() {
    let dir = TempDir::new("bproxy");
    let pki = Pki::new(dir.path(), &["device-1"]);
    let b = InProcBroker::start(&broker_cfg(&dir));
    let admin = b.admin();
    let broker_addr = b.addr_of("from-lb");

    // mqedge lb: TLS with required client certs, PROXY v2 to the broker
    let lb_cfg = dir.write(
        "lb.toml",
        &lb_config(
            &pki,
            "required",
            "client_id",
            &[("node1", broker_addr, "v2")],
            "",
        )
        .replace("kind = \"tcp\"", "kind = \"mqtt\""),
    );
    let lb = InProcLb::start(&lb_cfg);
    check_client_through(lb.addr("mqtts"), &pki, "127.0.0.5", "via-mqedge", admin).await;

    // HAProxy terminating TLS the same way
    let combined = dir.path().join("haproxy.pem");
    std::fs::write(
        &combined,
        format!(
            "{}{}",
            std::fs::read_to_string(pki.file("server.pem")).unwrap(),
            std::fs::read_to_string(pki.file("server.key")).unwrap()
        ),
    )
    .unwrap();
    let port = free_port();
    let hcfg = dir.write(
        "haproxy.cfg",
        &format!(
            "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\nfrontend f\n  bind 127.0.0.1:{port} ssl crt {} ca-file {} verify required\n  default_backend b\nbackend b\n  server s1 {broker_addr} send-proxy-v2-ssl-cn\n",
            combined.display(),
            pki.file("ca.pem")
        ),
    );
    let mut cmd = Command::new(which("haproxy"));
    cmd.arg("-f").arg(&hcfg).arg("-db");
    let _hap = Proc::spawn("haproxy", cmd);
    wait_port(
        format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_secs(10),
    );
    check_client_through(
        format!("127.0.0.1:{port}").parse().unwrap(),
        &pki,
        "127.0.0.6",
        "via-haproxy",
        admin,
    )
    .await;

    // unknown client: 404
    assert_eq!(http("GET", admin, "/api/clients/nobody").0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_or_missing_proxy_headers_and_garbage_are_refused() {
    let dir = TempDir::new("bproxy-refuse");
    let _pki = Pki::new(dir.path(), &[]);
    let b = InProcBroker::start(&broker_cfg(&dir));
    let from_lb = b.addr_of("from-lb");
    let strict = b.addr_of("strict");

    // a well-formed PROXY v2 header, but from 127.0.0.1, which "strict" does not trust
    let header = mqedge_shared::proxy::encode_v2(&mqedge_shared::proxy::ProxyInfo {
        src: Some("203.0.113.9:1000".parse().unwrap()),
        dst: Some(strict),
        ..Default::default()
    });
    let mut s = tcp_from(None, strict).await.unwrap();
    s.write_all(&header).await.unwrap();
    s.write_all(&mqedge_protocol::peek::encode_connect(
        4, "sneaky", None, 10,
    ))
    .await
    .unwrap();
    let mut raw = Raw::new(s, Version::V311);
    assert!(
        raw.closed_within(Duration::from_secs(3)).await,
        "untrusted PROXY header must be refused"
    );
    wait_rejected(b.admin(), "untrusted_proxy").await;

    // no header on a required listener
    let mut s = tcp_from(None, from_lb).await.unwrap();
    s.write_all(&mqedge_protocol::peek::encode_connect(
        4, "direct", None, 10,
    ))
    .await
    .unwrap();
    let mut raw = Raw::new(s, Version::V311);
    assert!(raw.closed_within(Duration::from_secs(3)).await);
    wait_rejected(b.admin(), "proxy_required").await;

    // a trusted LB-like client with a PROXY header and a CN still needs... the header alone:
    // garbage after a good header closes that connection only
    let good = mqedge_shared::proxy::encode_v2(&mqedge_shared::proxy::ProxyInfo {
        src: Some("198.51.100.1:1".parse().unwrap()),
        dst: Some(from_lb),
        ..Default::default()
    });
    let mut g = tcp_from(None, from_lb).await.unwrap();
    g.write_all(&good).await.unwrap();
    g.write_all(b"\x10\xff\xff\xff\xff\x7f garbage")
        .await
        .unwrap();
    let mut raw = Raw::new(g, Version::V311);
    assert!(raw.closed_within(Duration::from_secs(3)).await);
    // truncated packet: a CONNECT that stops half way, then the client goes away: no effect on others
    let mut t = tcp_from(None, from_lb).await.unwrap();
    t.write_all(&good).await.unwrap();
    t.write_all(&mqedge_protocol::peek::encode_connect(4, "half", None, 10)[..7])
        .await
        .unwrap();
    drop(t);
    assert!(rejected(b.admin(), "untrusted_proxy") >= 1.0);
    assert!(rejected(b.admin(), "proxy_required") >= 1.0);
    let _ = Packet::PingReq;
}
