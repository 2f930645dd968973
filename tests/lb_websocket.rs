//! MQTT over WebSocket at the LB: WS and WSS listeners terminate WebSocket, peek the CONNECT
//! inside the frames (here split over two), pick by client id and forward plain MQTT behind
//! PROXY v2 to mock brokers that record what they see; `X-Forwarded-For` names the client only
//! when the immediate peer is a trusted forwarder; a bad Upgrade gets its HTTP status and a bad
//! frame a close code, each counted. The LB runs in-process. Real clients: tests/lb_ws_clients.rs.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use common::ws::*;
use common::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Two backends with PROXY v2; "ws" (trusting 127.0.0.2 for X-Forwarded-For, 1 KiB frames)
/// and "wss" listeners.
fn config(pki: &Pki, b1: SocketAddr, b2: SocketAddr) -> String {
    format!(
        r#"[lb]
name = "ws-edge"
admin = "127.0.0.1:0"
connect_timeout = "2s"

[[listener]]
name = "ws"
bind = "127.0.0.1:0"
[listener.websocket]
path = "/mqtt"
max_frame = "1KiB"
trusted_forwarders = ["127.0.0.2/32"]

[[listener]]
name = "wss"
bind = "127.0.0.1:0"
[listener.tls]
cert = "{cert}"
key = "{key}"
[listener.websocket]

[balance]
strategy = "client_id"

[health]
kind = "tcp"
interval = "500ms"

[[backend]]
name = "b1"
addr = "{b1}"
proxy_protocol = "v2"

[[backend]]
name = "b2"
addr = "{b2}"
proxy_protocol = "v2"
"#,
        cert = pki.file("server.pem"),
        key = pki.file("server.key"),
    )
}

struct Setup {
    _dir: TempDir,
    pki: Pki,
    b1: MockBroker,
    b2: MockBroker,
    lb: InProcLb,
}

async fn setup(tag: &str) -> Setup {
    let dir = TempDir::new(tag);
    let pki = Pki::new(dir.path(), &[]);
    let b1 = MockBroker::start("b1", true).await;
    let b2 = MockBroker::start("b2", true).await;
    let cfg = dir.write("lb.toml", &config(&pki, b1.addr, b2.addr));
    let lb = tokio::task::block_in_place(|| InProcLb::start(&cfg));
    Setup {
        _dir: dir,
        pki,
        b1,
        b2,
        lb,
    }
}

fn counter(lb: &InProcLb, name: &str, needles: &[&str]) -> f64 {
    metric(&lb_metrics(lb), name, needles)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_and_wss_clients_reach_their_hashed_backend_with_their_address() {
    let s = setup("ws-affinity").await;
    let names = ["b1", "b2"];
    let tls = Arc::new((*s.pki.client_config(None)).clone());
    let mut open = Vec::new();
    for want in names {
        for listener in ["ws", "wss"] {
            let id = id_for(want, &names, &format!("ws-{listener}"));
            let tcp = tcp_from(Some(ip("127.0.0.3")), s.lb.addr(listener))
                .await
                .unwrap();
            let local = tcp.local_addr().unwrap();
            let code = if listener == "wss" {
                let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
                let mut t = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name, tcp)
                    .await
                    .unwrap();
                let c = ws_mqtt_connect(&mut t, "/mqtt", "", &id).await.unwrap();
                open.push(Box::new(t) as Box<dyn Send>);
                c
            } else {
                let mut t = tcp;
                let c = ws_mqtt_connect(&mut t, "/mqtt", "", &id).await.unwrap();
                open.push(Box::new(t) as Box<dyn Send>);
                c
            };
            assert_eq!(code, 0, "CONNACK for {id} over {listener}");
            let broker = if want == "b1" { &s.b1 } else { &s.b2 };
            let seen = broker.seen_by(&id).await;
            assert_eq!(seen.backend, want, "{id} over {listener}");
            let info = seen.proxy.expect("PROXY v2 in front of the unwrapped MQTT");
            assert_eq!(info.src, Some(local), "{id}: the client's own address");
            assert_eq!(info.ssl.is_some(), listener == "wss");
        }
    }
    // the same id again goes to the same backend
    let id = id_for("b2", &names, "ws-again");
    for _ in 0..2 {
        let mut t = tcp_from(None, s.lb.addr("ws")).await.unwrap();
        assert_eq!(ws_mqtt_connect(&mut t, "/mqtt", "", &id).await.unwrap(), 0);
    }
    assert_eq!(s.b2.seen().iter().filter(|x| x.client_id == id).count(), 2);
    assert!(s.b1.seen().iter().all(|x| x.client_id != id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_names_the_client_only_from_a_trusted_forwarder() {
    let s = setup("ws-xff").await;
    let xff = "X-Forwarded-For: 198.51.100.1, 203.0.113.9\r\n";
    for (from, id, want) in [
        ("127.0.0.2", "xff-trusted", ip("203.0.113.9")),
        ("127.0.0.4", "xff-stranger", ip("127.0.0.4")),
    ] {
        let mut t = tcp_from(Some(ip(from)), s.lb.addr("ws")).await.unwrap();
        assert_eq!(ws_mqtt_connect(&mut t, "/mqtt", xff, id).await.unwrap(), 0);
        let b = if hashed_backend(id, &["b1", "b2"]) == "b1" {
            &s.b1
        } else {
            &s.b2
        };
        let src = b.seen_by(id).await.proxy.and_then(|p| p.src);
        assert_eq!(src.map(|a| a.ip()), Some(want), "{id} from {from}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_upgrade_or_frame_closes_that_connection_with_a_counter() {
    let s = setup("ws-bad").await;
    let ws = s.lb.addr("ws");
    // wrong path: 404, nothing forwarded
    let mut t = tcp_from(None, ws).await.unwrap();
    let head = ws_open(&mut t, "/other", "").await.unwrap();
    assert!(head.starts_with("HTTP/1.1 404 "), "{head:?}");
    // plain MQTT on a WebSocket listener: 400
    let mut t = tcp_from(None, ws).await.unwrap();
    let connect = mqedge_protocol::peek::encode_connect(4, "raw", None, 30);
    tokio::io::AsyncWriteExt::write_all(&mut t, &connect)
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut t, b"\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    let _ = tokio::io::AsyncReadExt::read_to_string(&mut t, &mut answer).await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer:?}");
    let rejected = |reason: &str| {
        counter(
            &s.lb,
            "mqedge_lb_connections_rejected_total",
            &["listener=\"ws\"", &format!("reason=\"{reason}\"")],
        )
    };
    assert!(eventually(Duration::from_secs(3), || rejected("ws_handshake") == 2.0).await);

    // a frame over max_frame (1 KiB) before the CONNECT: close 1009
    let mut t = tcp_from(None, ws).await.unwrap();
    assert!(ws_open(&mut t, "/mqtt", "")
        .await
        .unwrap()
        .starts_with("HTTP/1.1 101 "));
    ws_send(&mut t, &[0x10; 2000]).await.unwrap();
    let (opcode, p) = ws_recv(&mut t).await.unwrap();
    assert_eq!((opcode, p), (0x8, 1009u16.to_be_bytes().to_vec()));
    assert!(eventually(Duration::from_secs(3), || rejected("ws_frame") == 1.0).await);

    // an unmasked frame once forwarding: the connection closes (1002), counted
    let id = "ws-unmasked";
    let mut t = tcp_from(None, ws).await.unwrap();
    assert_eq!(ws_mqtt_connect(&mut t, "/mqtt", "", id).await.unwrap(), 0);
    tokio::io::AsyncWriteExt::write_all(&mut t, &[0x82, 0x02, 0xc0, 0x00])
        .await
        .unwrap();
    let (opcode, p) = ws_recv(&mut t).await.unwrap();
    assert_eq!((opcode, p), (0x8, 1002u16.to_be_bytes().to_vec()));
    let errors = |reason: &str| {
        counter(
            &s.lb,
            "mqedge_lb_websocket_frame_errors_total",
            &["listener=\"ws\"", &format!("reason=\"{reason}\"")],
        )
    };
    let both = || errors("unmasked") == 1.0 && errors("too_large") == 1.0;
    assert!(eventually(Duration::from_secs(3), both).await);
}
