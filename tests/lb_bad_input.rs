//! Bad first packets: garbage, HTTP, an oversized CONNECT, CONNECTs the broker's codec calls
//! malformed (bad v5 properties, a 3.1.1 password without a user name), a CONNECT that never
//! finishes, a half TLS handshake. Each is closed within its limit and counted under its reason, no backend
//! is touched, and the LB (in-process) keeps serving good clients meanwhile. SIGTERM's clean
//! exit is the binary's contract and runs it.

mod common;

use std::time::Duration;

use common::bad_input::{closed_after, raw_connect};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_first_packets_are_closed_and_counted() {
    let dir = TempDir::new("bad-input");
    let pki = Pki::new(dir.path(), &[]);
    let mock = MockBroker::start("node1", false).await;
    let cfg = dir.write(
        "lb.toml",
        &lb_config(
            &pki,
            "none",
            "client_id",
            &[("node1", mock.addr, "none")],
            "admin = \"127.0.0.1:0\"",
        ),
    );
    let lb = InProcLb::start(&cfg);
    let plain = lb.addr("mqtt");
    let tls = lb.addr("mqtts");

    // a good client stays connected through all of it
    let mut good = tcp_from(None, plain).await.unwrap();
    assert_eq!(mqtt_connect(&mut good, "steady").await.unwrap(), 0);

    let garbage: Vec<u8> = (0..200u32).map(|i| (i * 7 + 3) as u8).collect();
    assert!(closed_after(plain, &garbage).await < Duration::from_secs(1));
    assert!(
        closed_after(plain, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await < Duration::from_secs(1)
    );
    // SUBSCRIBE before CONNECT
    assert!(closed_after(plain, &[0x82, 0x05, 0, 1, 0, 1, b'a']).await < Duration::from_secs(1));
    // CONNECT declaring 100 KiB (limit 4 KiB): refused from the header alone
    assert!(closed_after(plain, &[0x10, 0x80, 0x80, 0x06]).await < Duration::from_secs(1));
    let big = mqedge_protocol::peek::encode_connect(4, &"x".repeat(5000), None, 10);
    assert!(closed_after(plain, &big).await < Duration::from_secs(1));
    // malformed: reserved flag set
    let mut bad = mqedge_protocol::peek::encode_connect(4, "c", None, 10);
    bad[9] |= 1;
    assert!(closed_after(plain, &bad).await < Duration::from_secs(1));
    // CONNECTs the broker's codec calls malformed, which the LB must not replay to a backend:
    // v5 Receive Maximum 0, an unknown property, a duplicated one; a 3.1.1 password without a
    // user name (MQTT-3.1.2-22)
    for (what, packet) in [
        (
            "receive maximum 0",
            raw_connect(5, 0x02, Some(&[0x21, 0, 0]), b""),
        ),
        (
            "unknown property",
            raw_connect(5, 0x02, Some(&[0x7f, 0]), b""),
        ),
        (
            "duplicate property",
            raw_connect(5, 0x02, Some(&[0x11, 0, 0, 0, 9, 0x11, 0, 0, 0, 9]), b""),
        ),
        (
            "password without user name",
            raw_connect(4, 0x42, None, &[0, 2, b'p', b'w']),
        ),
    ] {
        let t = closed_after(plain, &packet).await;
        assert!(t < Duration::from_secs(1), "{what}: {t:?}");
    }
    // a CONNECT that never finishes: closed at connect_timeout (2s), not before, not much after
    let half = &mqedge_protocol::peek::encode_connect(4, "slowpoke", None, 10)[..8];
    let t = closed_after(plain, half).await;
    assert!(
        t >= Duration::from_millis(1900) && t < Duration::from_secs(4),
        "{t:?}"
    );
    // plain MQTT to the TLS port: a failed handshake
    assert!(
        closed_after(
            tls,
            &mqedge_protocol::peek::encode_connect(4, "c", None, 10)
        )
        .await
            < Duration::from_secs(1)
    );
    // a TLS client that stops mid-handshake (nothing after ClientHello's first bytes)
    let t = closed_after(tls, &[0x16, 0x03, 0x01, 0x00, 0xff, 0x01]).await;
    assert!(t < Duration::from_secs(4), "{t:?}");

    // none of these reached the backend
    assert_eq!(mock.clients(), vec!["steady".to_string()]);
    for reason in [
        "not_connect",
        "too_large",
        "malformed",
        "timeout",
        "tls_handshake",
    ] {
        let counted = eventually(Duration::from_secs(3), || {
            let m = parse_prometheus(&http("GET", lb.admin(), "/metrics").1);
            metric(
                &m,
                "mqedge_lb_connections_rejected_total",
                &[&format!("reason=\"{reason}\"")],
            ) >= 1.0
        })
        .await;
        assert!(
            counted,
            "no connection rejected for {reason}:\n{}",
            lb.logs()
        );
    }
    // still serving: the steady client's session answers a ping, a new client connects
    good.write_all(&[0xc0, 0x00]).await.unwrap();
    let mut pong = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(3), good.read_exact(&mut pong))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pong, [0xd0, 0x00]);
    let mut again = tcp_from(None, plain).await.unwrap();
    assert_eq!(mqtt_connect(&mut again, "after").await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_with_exit_0() {
    let dir = TempDir::new("sigterm");
    let pki = Pki::new(dir.path(), &[]);
    let mock = MockBroker::start("node1", false).await;
    let cfg = dir.write(
        "lb.toml",
        &lb_config(
            &pki,
            "none",
            "client_id",
            &[("node1", mock.addr, "none")],
            "",
        ),
    );
    let mut lb = Lb::start(&cfg);
    let plain = lb.addr("mqtt");
    let mut c = tcp_from(None, plain).await.unwrap();
    assert_eq!(mqtt_connect(&mut c, "x").await.unwrap(), 0);
    lb.proc.signal("TERM");
    // listeners close at once
    assert!(
        eventually(Duration::from_secs(3), || std::net::TcpStream::connect(
            plain
        )
        .is_err())
        .await,
        "listener still accepting after SIGTERM"
    );
    // the open connection may finish; when it goes, the LB exits 0 (drain_timeout is 2s)
    drop(c);
    let status = tokio::task::block_in_place(|| lb.proc.wait_exit(Duration::from_secs(5)))
        .expect("LB did not exit");
    assert_eq!(status.code(), Some(0));
}
