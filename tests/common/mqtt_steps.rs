//! MQTT client steps the cluster tests share: connect, subscribe, publish a numbered run,
//! take what arrives.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use mqedge_protocol::{
    ConnAck, ConnectProperties, Disconnect, Packet, Publish, Unsubscribe, Version,
};
use tokio::net::TcpStream;

use super::cluster_nodes::Client;

use super::*;

/// A connected client (keep-alive off); `expiry` is the v5 Session Expiry Interval.
pub async fn connect(
    addr: SocketAddr,
    v: Version,
    id: &str,
    clean: bool,
    expiry: Option<u32>,
) -> (Client, ConnAck) {
    let s = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("{id}: connect {addr}: {e}"));
    let mut c = Raw::new(s, v);
    let props = ConnectProperties {
        session_expiry_interval: expiry,
        ..Default::default()
    };
    let ack = c.connect_with(id, clean, 0, None, None, props).await;
    assert_eq!(ack.code, 0, "{id}: CONNACK {ack:?}");
    (c, ack)
}

/// A clean 3.1.1 client.
pub async fn client(addr: SocketAddr, id: &str) -> Client {
    connect(addr, Version::V311, id, true, None).await.0
}

/// A client subscribed to `filter` at QoS 1.
pub async fn subscriber(addr: SocketAddr, id: &str, filter: &str) -> Client {
    let mut c = client(addr, id).await;
    assert_eq!(c.subscribe(1, &[(filter, 1)]).await, vec![1], "{id}");
    c
}

pub async fn unsubscribe(c: &mut Client, pid: u16, filter: &str) {
    c.send(Packet::Unsubscribe(Unsubscribe {
        packet_id: pid,
        user_properties: vec![],
        filters: vec![filter.to_string()],
    }))
    .await;
    loop {
        match c.recv(Duration::from_secs(5)).await {
            Some(Packet::UnsubAck(a)) => {
                assert_eq!(a.packet_id, pid);
                return;
            }
            Some(_) => continue,
            None => panic!("no UNSUBACK"),
        }
    }
}

/// A clean DISCONNECT, then waits for the server to close.
pub async fn disconnect(mut c: Client) {
    c.send(Packet::Disconnect(Disconnect {
        code: 0,
        properties: Default::default(),
    }))
    .await;
    assert!(c.closed_within(Duration::from_secs(5)).await);
}

/// Publishes `{prefix}{i}` for i in 0..n at QoS 0, then a PINGREQ round trip: every one of
/// them was routed when this returns.
pub async fn publish_qos0(c: &mut Client, topic: &str, prefix: &str, n: usize) {
    for i in 0..n {
        c.publish(topic, format!("{prefix}{i}").as_bytes(), 0, None, false)
            .await;
    }
    c.send(Packet::PingReq).await;
    loop {
        match c.recv(Duration::from_secs(10)).await {
            Some(Packet::PingResp) => return,
            Some(_) => continue,
            None => panic!("no PINGRESP after {n} QoS 0 publishes on {topic}"),
        }
    }
}

/// Publishes `{prefix}{i}` for i in 0..n at QoS 1, each acknowledged before the next.
pub async fn publish_qos1(c: &mut Client, topic: &str, prefix: &str, n: usize) {
    for i in 0..n {
        let pid = (i % 60_000) as u16 + 1;
        c.publish(
            topic,
            format!("{prefix}{i}").as_bytes(),
            1,
            Some(pid),
            false,
        )
        .await;
        loop {
            match c.recv(Duration::from_secs(10)).await {
                Some(Packet::PubAck(a)) if a.packet_id == pid => {
                    assert_eq!(a.code, 0, "PUBACK of {prefix}{i}: {a:?}");
                    break;
                }
                Some(_) => continue,
                None => panic!("no PUBACK for {prefix}{i} on {topic} (connection closed or 10 s)"),
            }
        }
    }
}

/// Receives PUBLISHes (acknowledging them) until `n` came or `within` passed, then 300 ms more
/// to catch duplicates.
pub async fn take(c: &mut Client, n: usize, within: Duration) -> Vec<Publish> {
    let start = Instant::now();
    let hard = start + within + Duration::from_secs(1);
    let mut got = Vec::new();
    loop {
        let now = Instant::now();
        let left = if got.len() >= n {
            Duration::from_millis(300).min(hard.saturating_duration_since(now))
        } else {
            (start + within).saturating_duration_since(now)
        };
        if left.is_zero() {
            break;
        }
        match c.recv(left).await {
            Some(p) => got.extend(c.answer(p).await),
            None => break,
        }
    }
    got
}

pub fn payloads(p: &[Publish]) -> Vec<String> {
    p.iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect()
}

pub fn seq(prefix: &str, r: std::ops::Range<usize>) -> Vec<String> {
    r.map(|i| format!("{prefix}{i}")).collect()
}

/// What a brand-new subscriber to `filter` on `addr` receives at once (retained messages).
pub async fn retained_at(addr: SocketAddr, id: &str, filter: &str) -> Vec<Publish> {
    let mut c = subscriber(addr, id, filter).await;
    let got = take(&mut c, usize::MAX, Duration::from_millis(300)).await;
    disconnect(c).await;
    got
}
