//! The broker's WebSocket listener (`[[listener]]` with a `websocket` table): a client speaks
//! MQTT inside frames through the Upgrade; its address is `X-Forwarded-For` only when the
//! immediate peer is a trusted forwarder; a bad Upgrade gets its HTTP status and is counted.
//! The broker runs in-process. Real clients: tests/ws_interop.rs.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::ws::*;
use common::*;

const WS: &str = r#"
[[listener]]
name = "ws"
bind = "127.0.0.1:0"
[listener.websocket]
path = "/mqtt"
trusted_forwarders = ["127.0.0.2/32"]
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_is_served_with_its_forwarded_address() {
    let broker = InProcBroker::plain("broker-ws", WS);
    let ws = broker.addr_of("ws");
    let xff = "X-Forwarded-For: 203.0.113.9\r\n";
    let mut open = Vec::new();
    for (from, id, want) in [
        ("127.0.0.2", "bws-trusted", "203.0.113.9:0".to_string()),
        ("127.0.0.3", "bws-stranger", String::new()),
    ] {
        let mut t = tcp_from(Some(ip(from)), ws).await.unwrap();
        let local = t.local_addr().unwrap().to_string();
        assert_eq!(ws_mqtt_connect(&mut t, "/mqtt", xff, id).await.unwrap(), 0);
        // PINGREQ in a frame, PINGRESP in a frame: the bridge carries both ways
        ws_send(&mut t, &[0xc0, 0x00]).await.unwrap();
        assert_eq!(ws_recv(&mut t).await.unwrap(), (0x2, vec![0xd0, 0x00]));
        let c = get_json(broker.admin(), &format!("/api/clients/{id}"));
        let want = if want.is_empty() { local } else { want };
        assert_eq!(c["peer_addr"], want.as_str(), "{id} from {from}: {c}");
        open.push(t);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_upgrade_is_answered_and_counted() {
    let broker = InProcBroker::plain("broker-ws-bad", WS);
    let mut t = tcp_from(None, broker.addr_of("ws")).await.unwrap();
    let head = ws_open(&mut t, "/nope", "").await.unwrap();
    assert!(head.starts_with("HTTP/1.1 404 "), "{head:?}");
    let rejected = || {
        let samples = parse_prometheus(&http("GET", broker.admin(), "/metrics").1);
        metric(
            &samples,
            "mqedge_broker_connections_rejected_total",
            &["reason=\"ws_handshake\""],
        )
    };
    assert!(eventually(Duration::from_secs(3), || rejected() == 1.0).await);
    // an oversized frame (the default max_frame is 1 MiB) is closed with 1009
    let mut t = tcp_from(None, broker.addr_of("ws")).await.unwrap();
    assert!(ws_open(&mut t, "/mqtt", "")
        .await
        .unwrap()
        .starts_with("HTTP/1.1 101 "));
    let mut big = vec![0x82, 0xFF];
    big.extend_from_slice(&(2u64 << 20).to_be_bytes());
    big.extend_from_slice(&[1, 2, 3, 4]);
    tokio::io::AsyncWriteExt::write_all(&mut t, &big)
        .await
        .unwrap();
    assert_eq!(
        ws_recv(&mut t).await.unwrap(),
        (0x8, 1009u16.to_be_bytes().to_vec())
    );
}
