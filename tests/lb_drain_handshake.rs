//! The LB's side of the drain handshake (docs/operations.md, "Draining a node"), against a
//! scripted backend over real sockets: a health check answered CONNACK `0x9C` puts the backend
//! in `draining` at once (`drain_cause: "backend"`), the next checks' CONNECT carries the
//! acknowledgement (`mqedge-drain-ack`, `mqedge-lb-connections`), the LB closes no forwarded
//! connection at its own `drain_timeout`, a passing check brings the backend `up` again and a
//! failed one after a drain makes it `down` at once.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use mqedge_protocol::{decode, Packet, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the scripted backend does, changed by the test as it goes.
#[derive(Default)]
struct Script {
    /// The health checks' CONNACK code.
    code: AtomicU8,
    /// Close every new connection at once (the broker has gone).
    gone: AtomicBool,
    /// The user properties of every health check's CONNECT.
    checks: Mutex<Vec<Vec<(String, String)>>>,
}

/// A backend that answers health checks (`mqedge-hc-...`) with `script.code` and serves any
/// other client (CONNACK 0, PINGREQ answered) until it closes.
async fn backend(script: Arc<Script>) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            let script = script.clone();
            tokio::spawn(async move {
                if script.gone.load(Ordering::Relaxed) {
                    return;
                }
                let mut buf = bytes::BytesMut::new();
                let connect = loop {
                    match decode(&mut buf, None, 1 << 16) {
                        Ok(Some(Packet::Connect(c))) => break c,
                        Ok(None) => {}
                        _ => return,
                    }
                    if !matches!(c.read_buf(&mut buf).await, Ok(n) if n > 0) {
                        return;
                    }
                };
                let v5 = connect.version == Version::V5;
                if !connect.client_id.starts_with("mqedge-hc-") {
                    let _ = c.write_all(&[0x20, 2, 0, 0]).await;
                    let mut chunk = [0u8; 256];
                    while let Ok(n) = c.read(&mut chunk).await {
                        if n == 0 {
                            return;
                        }
                        if chunk[..n].windows(2).any(|w| w == [0xc0, 0x00]) {
                            let _ = c.write_all(&[0xd0, 0x00]).await;
                        }
                    }
                    return;
                }
                let props = connect.properties.user_properties.clone();
                script.checks.lock().unwrap().push(props);
                let code = script.code.load(Ordering::Relaxed);
                // the MQTT 5 layout: flags, code, empty properties
                let ack: &[u8] = if v5 {
                    &[0x20, 3, 0, code, 0]
                } else {
                    &[0x20, 2, 0, code]
                };
                let _ = c.write_all(ack).await;
                let _ = c.read(&mut [0u8; 16]).await;
            });
        }
    });
    addr
}

const INTERVAL: Duration = Duration::from_millis(200);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lb_acknowledges_a_brokers_drain_and_leaves_its_connections_to_it() {
    let dir = TempDir::new("drain-hs");
    let script = Arc::new(Script::default());
    let addr = backend(script.clone()).await;
    let cfg = dir.write(
        "lb.toml",
        &format!(
            r#"[lb]
name = "dh"
admin = "127.0.0.1:0"
drain_timeout = "300ms"

[[listener]]
name = "mqtt"
bind = "127.0.0.1:0"

[health]
kind = "mqtt"
interval = "200ms"
timeout = "500ms"
fall = 3

[[backend]]
name = "b1"
addr = "{addr}"
"#
        ),
    );
    let lb = Lb::start(&cfg);
    let admin = lb.admin();
    tokio::task::block_in_place(|| wait_backend_state(admin, "b1", "up", Duration::from_secs(10)));
    // every check is MQTT 5, without the acknowledgement while the backend serves
    assert!(script.checks.lock().unwrap().iter().all(|p| p.is_empty()));
    let mut client = Raw::client(lb.addr("mqtt"), Version::V311, "dh-client").await;

    script.code.store(0x9C, Ordering::Relaxed);
    let seen = tokio::task::block_in_place(|| {
        wait_backend_state(
            admin,
            "b1",
            "draining",
            2 * INTERVAL + Duration::from_millis(300),
        )
    });
    eprintln!("draining after {seen:?}");
    assert_eq!(backend_field(admin, "b1", "drain_cause"), "backend");
    let want = vec![
        ("mqedge-drain-ack".to_string(), "dh".to_string()),
        ("mqedge-lb-connections".to_string(), "1".to_string()),
    ];
    let acked = eventually(4 * INTERVAL, || {
        script.checks.lock().unwrap().contains(&want)
    })
    .await;
    assert!(
        acked,
        "no acknowledgement in {:?}",
        script.checks.lock().unwrap()
    );
    // past the LB's own drain_timeout: the forwarded client is still served
    tokio::time::sleep(Duration::from_millis(900)).await;
    client.send(Packet::PingReq).await;
    assert_eq!(
        client.recv(Duration::from_secs(2)).await,
        Some(Packet::PingResp),
        "the LB closed a connection of a backend that drains by itself"
    );

    // the broker serves again: up at its next check
    script.code.store(0, Ordering::Relaxed);
    tokio::task::block_in_place(|| {
        wait_backend_state(admin, "b1", "up", 2 * INTERVAL + Duration::from_millis(300))
    });
    assert!(backend_field(admin, "b1", "drain_cause").is_null());

    // drains again, then goes away: down at once, without `fall` (3) failures
    script.code.store(0x9C, Ordering::Relaxed);
    tokio::task::block_in_place(|| {
        wait_backend_state(
            admin,
            "b1",
            "draining",
            2 * INTERVAL + Duration::from_millis(300),
        )
    });
    script.gone.store(true, Ordering::Relaxed);
    tokio::task::block_in_place(|| {
        wait_backend_state(
            admin,
            "b1",
            "down",
            2 * INTERVAL + Duration::from_millis(600),
        )
    });
    let logs = lb.proc.logs();
    assert!(!logs.contains("drain_timeout reached"), "{logs}");
    drop(client);
}
