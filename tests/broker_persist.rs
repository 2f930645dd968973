//! Persistent sessions and durable queues: a QoS 1 subscriber that is away gets everything
//! published meanwhile (up to `max_offline_messages`, then exactly the newest), and with
//! `data_dir` 1,000 queued messages survive `kill -9` and a restart (that test runs the binary:
//! `kill -9` needs a real process; the other runs the broker in-process).

mod common;

use std::time::Duration;

use common::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

async fn connect(
    addr: std::net::SocketAddr,
    id: &str,
    clean: bool,
) -> (AsyncClient, rumqttc::EventLoop) {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_clean_session(clean);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(100);
    let (c, mut el) = AsyncClient::new(o, 1000);
    // wait for CONNACK
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("{id}: connect failed: {e}"),
            Err(_) => panic!("{id}: no CONNACK"),
        }
    }
    (c, el)
}

async fn drive_until_subacked(el: &mut rumqttc::EventLoop) {
    loop {
        if let Event::Incoming(Packet::SubAck(_)) =
            tokio::time::timeout(Duration::from_secs(5), el.poll())
                .await
                .unwrap()
                .unwrap()
        {
            return;
        }
    }
}

/// Publishes `n` QoS 1 messages "m{i}" and waits for every PUBACK.
async fn publish_n(addr: std::net::SocketAddr, topic: &str, n: usize) {
    let (c, mut el) = connect(addr, "publisher", true).await;
    let t = topic.to_string();
    let pubs = tokio::spawn(async move {
        for i in 0..n {
            c.publish(&t, QoS::AtLeastOnce, false, format!("m{i}"))
                .await
                .unwrap();
        }
        c
    });
    let mut acked = 0;
    while acked < n {
        if let Event::Incoming(Packet::PubAck(_)) =
            tokio::time::timeout(Duration::from_secs(10), el.poll())
                .await
                .unwrap()
                .unwrap()
        {
            acked += 1;
        }
    }
    let c = pubs.await.unwrap();
    let _ = c.disconnect().await;
}

async fn receive(el: &mut rumqttc::EventLoop, want: usize, quiet: Duration) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(quiet, el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                got.push(String::from_utf8_lossy(&p.payload).into_owned());
                if got.len() > want + 10 {
                    break;
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("subscriber error: {e}"),
            Err(_) => break,
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_queue_delivers_all_then_exactly_the_newest_over_the_limit() {
    let dir = TempDir::new("offline");
    let cfg = dir.write(
        "b.toml",
        &broker_config("127.0.0.1:0", "", "[limits]\nmax_offline_messages = 50\n"),
    );
    let b = InProcBroker::start(&cfg);
    let addr = b.addr();

    let (c, mut el) = connect(addr, "sleepy", false).await;
    c.subscribe("q/#", QoS::AtLeastOnce).await.unwrap();
    drive_until_subacked(&mut el).await;
    c.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(2), el.poll()).await;
    drop(el);

    // under the limit: all of them, in order
    publish_n(addr, "q/a", 30).await;
    let (_c, mut el) = connect(addr, "sleepy", false).await;
    let got = receive(&mut el, 30, Duration::from_millis(800)).await;
    assert_eq!(got, (0..30).map(|i| format!("m{i}")).collect::<Vec<_>>());
    drop(el);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // over the limit: exactly the newest 50 of 120
    publish_n(addr, "q/b", 120).await;
    let (_c, mut el) = connect(addr, "sleepy", false).await;
    let got = receive(&mut el, 50, Duration::from_millis(800)).await;
    assert_eq!(got, (70..120).map(|i| format!("m{i}")).collect::<Vec<_>>());
    let m = parse_prometheus(&http("GET", b.admin(), "/metrics").1);
    assert!(metric(&m, "mqedge_broker_messages_dropped_total", &["queue_full"]) >= 70.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dir_queue_survives_kill_9() {
    let dir = TempDir::new("durable");
    let cfg = dir.write(
        "b.toml",
        &broker_config(
            "127.0.0.1:0",
            "data_dir = \"data\"",
            "[limits]\nmax_offline_messages = 5000\n",
        ),
    );
    let mut b = BrokerProc::start(&cfg);
    let addr = b.addr();
    let (c, mut el) = connect(addr, "durable-sub", false).await;
    c.subscribe("fleet/+/telemetry", QoS::AtLeastOnce)
        .await
        .unwrap();
    drive_until_subacked(&mut el).await;
    c.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(2), el.poll()).await;
    drop(el);

    publish_n(addr, "fleet/7/telemetry", 1000).await;
    b.kill9();
    let b2 = BrokerProc::start(&cfg);
    b2.proc
        .wait_log("restored from the store", Duration::from_secs(10));
    let (_c, mut el) = connect(b2.addr(), "durable-sub", false).await;
    let got = receive(&mut el, 1000, Duration::from_millis(1500)).await;
    assert_eq!(got.len(), 1000, "got {} of 1000", got.len());
    assert_eq!(got, (0..1000).map(|i| format!("m{i}")).collect::<Vec<_>>());
}
