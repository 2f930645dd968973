//! The authenticated node channel (docs/cluster.md, "Security of the node channel"): with
//! `[cluster] tls_cert`, `tls_key`, `tls_ca` the nodes talk mutual TLS and forward as before; a
//! node whose certificate comes from another CA, a plain-TCP node, a peer whose Hello names a
//! node its certificate does not, and a node gossip does not list are refused (counted in
//! `mqedge_broker_cluster_auth_failures_total{reason}`, logged) and no message flows through
//! them. Without TLS, an inbound connection must say Hello within 5 s, in a small first frame.
//! Real processes (`mqedge broker`), raw MQTT clients, a raw TLS peer.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster_nodes::*;
use common::*;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Node `i`'s `mqedge_broker_cluster_auth_failures_total` for `reason`.
fn auth_failures(cl: &Cluster, i: usize, reason: &str) -> f64 {
    let m = parse_prometheus(&http("GET", cl.admin(i), "/metrics").1);
    metric(
        &m,
        "mqedge_broker_cluster_auth_failures_total",
        &[&format!("reason=\"{reason}\"")],
    )
}

/// Waits until node `i` counted a refusal for `reason`.
async fn wait_refused(cl: &Cluster, i: usize, reason: &str, within: Duration) {
    let ok = eventually(within, || auth_failures(cl, i, reason) >= 1.0).await;
    assert!(
        ok,
        "{} counted no {reason} refusal within {within:?}\n{}",
        NAMES[i],
        cl.logs()
    );
}

/// A node-channel Hello frame (broker/src/cluster/frame.rs: `[u32 len][1][1]` + body).
fn hello(node: &str, epoch: u64, to_epoch: u64) -> Vec<u8> {
    let mut body = vec![1u8, 1];
    body.extend_from_slice(&(node.len() as u32).to_be_bytes());
    body.extend_from_slice(node.as_bytes());
    body.extend_from_slice(&epoch.to_be_bytes());
    body.extend_from_slice(&to_epoch.to_be_bytes());
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(&body);
    f
}

/// How long until the server closes `s` (reading and discarding), None when it stays open
/// `within`.
async fn closed_after<S: AsyncRead + Unpin>(s: &mut S, within: Duration) -> Option<Duration> {
    let t = Instant::now();
    let mut b = [0u8; 256];
    loop {
        let left = within.checked_sub(t.elapsed())?;
        match tokio::time::timeout(left, s.read(&mut b)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(t.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// A raw TLS peer of `addr` (expecting `server` in its certificate) presenting `dir`'s
/// `node-NAME` certificate.
async fn tls_peer(
    dir: &Path,
    name: &str,
    addr: SocketAddr,
    server: &str,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let load = |f: String| mqedge_shared::tls::load_certs(&dir.join(f)).unwrap();
    let key = mqedge_shared::tls::load_key(&dir.join(format!("node-{name}.key"))).unwrap();
    let cfg = mqedge_shared::tls::client_config(
        load("ca.pem".into()),
        Some((load(format!("node-{name}.pem")), key)),
    )
    .unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::clone(&cfg))
        .connect(ServerName::try_from(server.to_string()).unwrap(), tcp)
        .await
        .unwrap()
}

async fn send<S: AsyncWrite + Unpin>(s: &mut S, b: &[u8]) {
    s.write_all(b).await.unwrap();
    s.flush().await.unwrap();
}

/// A QoS 1 subscriber on node2 gets what is published on node1 and node3, over TLS; nothing
/// was refused. Then raw peers with a certificate of the cluster's CA for `node9`: a Hello that
/// says `node2` is refused (name_mismatch), one that says `node9` (no gossip member) after the
/// 3 s membership wait (not_member), a first frame over the Hello cap at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_forwards_and_refuses_peers_it_cannot_trust() {
    let cl = Cluster::start_tls("tls-fwd", Run::Binary).await;
    let mut sub = subscriber(cl.addr(1), "tls-sub", "tls/#").await;
    cl.wait_routes(0, "node2", ">= 1", |r| r >= 1).await;
    cl.wait_routes(2, "node2", ">= 1", |r| r >= 1).await;
    let mut p1 = client(cl.addr(0), "tls-pub1").await;
    publish_qos1(&mut p1, "tls/a", "n1-", 20).await;
    let mut p3 = client(cl.addr(2), "tls-pub3").await;
    publish_qos1(&mut p3, "tls/b", "n3-", 20).await;
    let got = payloads(&take(&mut sub, 40, Duration::from_secs(10)).await);
    let mut want = seq("n1-", 0..20);
    want.extend(seq("n3-", 0..20));
    assert_eq!(got, want, "{}", cl.logs());
    for (i, name) in NAMES.iter().enumerate() {
        for r in ["bad_cert", "name_mismatch", "not_member", "handshake"] {
            assert_eq!(auth_failures(&cl, i, r), 0.0, "{name} {r}\n{}", cl.logs());
        }
        assert!(
            !cl.node(i).logs().contains("unauthenticated"),
            "{}",
            cl.logs()
        );
    }

    let certs = cl.dir().join("certs");
    mqedge_shared::certs::generate_nodes(
        &certs,
        &["node9".to_string()],
        &mqedge_shared::certs::CertOptions {
            reuse_ca: true,
            ..Default::default()
        },
    )
    .unwrap();
    let node1: SocketAddr = cl.cluster_addrs[0].parse().unwrap();

    let mut s = tls_peer(&certs, "node9", node1, "node1").await;
    send(&mut s, &hello("node2", 1, 0)).await;
    let closed = closed_after(&mut s, Duration::from_secs(3)).await;
    assert!(
        closed.is_some(),
        "a Hello as node2 with node9's certificate was kept"
    );
    wait_refused(&cl, 0, "name_mismatch", Duration::from_secs(3)).await;
    assert!(cl.node(0).logs().contains("name_mismatch"), "{}", cl.logs());

    let mut s = tls_peer(&certs, "node9", node1, "node1").await;
    send(&mut s, &hello("node9", 1, 0)).await;
    let closed = closed_after(&mut s, Duration::from_secs(6)).await;
    println!("a Hello from a node gossip does not list: closed after {closed:?}");
    assert!(
        closed.is_some_and(|d| d >= Duration::from_millis(2500)),
        "{closed:?}"
    );
    wait_refused(&cl, 0, "not_member", Duration::from_secs(3)).await;

    let mut s = tls_peer(&certs, "node9", node1, "node1").await;
    send(&mut s, &[0, 16, 0, 0, 1, 1]).await;
    let closed = closed_after(&mut s, Duration::from_secs(3)).await;
    assert!(closed.is_some(), "a 1 MiB first frame was waited for");

    // the cluster is unharmed
    publish_qos1(&mut p1, "tls/a", "after-", 5).await;
    let got = payloads(&take(&mut sub, 5, Duration::from_secs(10)).await);
    assert_eq!(got, seq("after-", 0..5), "{}", cl.logs());
}

/// node4 is `unreachable` on node1 and has announced no route; 5 QoS 1 messages published on
/// node1 and 5 on node4, to topics subscribers on node2 and node4 both match, stay on their
/// side.
async fn nothing_flows(cl: &Cluster, node4: &Node, tag: &str) {
    let mut rogue_sub = subscriber(node4.addr(), &format!("{tag}-rsub"), "x/#").await;
    let mut sub = subscriber(cl.addr(1), &format!("{tag}-sub"), "x/#").await;
    cl.wait_routes(0, "node2", ">= 1", |r| r >= 1).await;
    // node4 would have announced its route by now, had its channel been accepted
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        cl.view(0, "node4").map(|v| v.1).unwrap_or(0),
        0,
        "routes from node4"
    );
    let mut p = client(cl.addr(0), &format!("{tag}-pub")).await;
    publish_qos1(&mut p, "x/a", "cl-", 5).await;
    let mut rp = client(node4.addr(), &format!("{tag}-rpub")).await;
    publish_qos1(&mut rp, "x/b", "rogue-", 5).await;
    let rogue_got = payloads(&take(&mut rogue_sub, 5, Duration::from_secs(3)).await);
    assert_eq!(rogue_got, seq("rogue-", 0..5), "node4 got cluster messages");
    let got = payloads(&take(&mut sub, 5, Duration::from_secs(5)).await);
    assert_eq!(
        got,
        seq("cl-", 0..5),
        "node2 got node4's messages\n{}",
        cl.logs()
    );
}

/// node4 has a node certificate (SAN node4) from another CA: node1 refuses its channel
/// (bad_cert, logged), node4 refuses node1's, and no message goes either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_certificate_from_another_ca_is_refused() {
    let cl = Cluster::start_tls("tls-ca", Run::Binary).await;
    mqedge_shared::certs::generate_nodes(
        &cl.dir().join("evil"),
        &["node4".to_string()],
        &Default::default(),
    )
    .unwrap();
    let node4 = cl.start_extra("node4", "127.0.0.14", &tls_keys("evil", "node4"));
    wait_refused(&cl, 0, "bad_cert", Duration::from_secs(15)).await;
    let log = cl.node(0).logs();
    assert!(
        log.contains("refused") && log.contains("bad_cert"),
        "{}",
        cl.logs()
    );
    nothing_flows(&cl, &node4, "tls-ca").await;
}

/// node4 has no TLS: the TLS nodes refuse its plain TCP (handshake), it warns that its node
/// channel is unauthenticated, and no message goes either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_tcp_node_is_refused_by_a_tls_cluster() {
    let cl = Cluster::start_tls("tls-plain", Run::Binary).await;
    let node4 = cl.start_extra("node4", "127.0.0.15", "");
    wait_refused(&cl, 0, "handshake", Duration::from_secs(15)).await;
    assert!(
        node4.logs().contains("node channel is unauthenticated"),
        "{}",
        node4.logs()
    );
    nothing_flows(&cl, &node4, "tls-plain").await;
}

/// Without TLS: an inbound connection announcing a 1 MiB first frame is closed at once (not
/// buffered), and one trickling a Hello byte by byte is closed at the 5 s Hello deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_inbound_must_say_hello_soon_and_small() {
    let cl = Cluster::start("plain-hello", false, "prefer_local", Run::InProcess).await;
    let node1: SocketAddr = cl.cluster_addrs[0].parse().unwrap();

    let mut s = TcpStream::connect(node1).await.unwrap();
    send(&mut s, &[0, 16, 0, 0, 1, 1, 0, 0]).await;
    let closed = closed_after(&mut s, Duration::from_secs(3)).await;
    println!("a 1 MiB first frame: closed after {closed:?}");
    assert!(
        closed.is_some_and(|d| d < Duration::from_secs(1)),
        "{closed:?}"
    );

    let mut s = TcpStream::connect(node1).await.unwrap();
    let frame = hello("node2", 1, 0);
    let t = Instant::now();
    let mut closed = None;
    for b in frame.iter().cycle().take(40) {
        if s.write_all(&[*b]).await.is_err() {
            closed = Some(t.elapsed());
            break;
        }
        if let Some(_d) = closed_after(&mut s, Duration::from_millis(300)).await {
            closed = Some(t.elapsed());
            break;
        }
    }
    println!("a trickled Hello: closed after {closed:?}");
    assert!(
        closed.is_some_and(|d| d >= Duration::from_secs(4) && d < Duration::from_secs(7)),
        "{closed:?}"
    );
}
