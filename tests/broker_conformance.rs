//! Normative statements of MQTT 3.1.1 and 5.0, checked on the wire: each test drives raw
//! packets (the broker's own codec, or hand-made bytes where the input must be malformed) and
//! names the statement it checks. Ids are 3.1.1 numbering unless marked v5; where the v5 text
//! has no id, its section is given.
//!
//! Every test starts its own broker (in-process, [`InProcBroker`]; the SIGTERM test runs the
//! binary), so a connection the broker mishandles cannot disturb
//! another test. Waits end on what the broker does (a packet, a close) under a deadline; the only
//! sleeps are the ones that let protocol time pass (message and session expiry, will delay).

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use mqedge_protocol::{
    encoded_len, reason, ConnectProperties, Disconnect, DisconnectProperties, Packet, Publish,
    PublishProperties, QoS, RetainHandling, Subscribe, SubscribeFilter, SubscribeProperties,
    Unsubscribe, Version, Will, WillProperties,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(3);
/// How long "nothing else arrives" is watched for, once a sentinel made everything due arrive.
const QUIET: Duration = Duration::from_millis(300);

type Conn = Raw<TcpStream>;

/// A hand-made CONNECT: protocol `name`, `level`, connect `flags`, keep-alive, client id (and an
/// empty property block when level is 5).
fn connect_bytes(name: &str, level: u8, flags: u8, keep_alive: u16, client_id: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(name.len() as u16).to_be_bytes());
    body.extend_from_slice(name.as_bytes());
    body.push(level);
    body.push(flags);
    body.extend_from_slice(&keep_alive.to_be_bytes());
    if level == 5 {
        body.push(0);
    }
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut p = vec![0x10, body.len() as u8];
    p.extend_from_slice(&body);
    p
}

/// Everything the server sends until it closes (or `t` passes): (bytes, closed).
async fn read_to_close(s: &mut TcpStream, t: Duration) -> (Vec<u8>, bool) {
    let deadline = tokio::time::Instant::now() + t;
    let mut got = Vec::new();
    loop {
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
            Err(_) => return (got, false),
        }
    }
}

/// Whether bytes from the server start with a successful CONNACK (3.1.1 or v5 layout).
fn is_connack_success(b: &[u8]) -> bool {
    b.len() >= 4 && b[0] == 0x20 && b[3] == 0
}

/// v5: the next packet is DISCONNECT with `code`, then the server closes.
async fn expect_disconnect(c: &mut Conn, code: u8, what: &str) {
    loop {
        match c.recv(T).await {
            Some(Packet::Disconnect(d)) => {
                assert_eq!(
                    d.code, code,
                    "{what}: DISCONNECT reason 0x{:02X}, want 0x{code:02X}",
                    d.code
                );
                break;
            }
            Some(Packet::PubAck(_) | Packet::PubRec(_) | Packet::PingResp) => continue,
            other => panic!("{what}: expected DISCONNECT 0x{code:02X}, got {other:?}"),
        }
    }
    assert!(
        c.closed_within(T).await,
        "{what}: not closed after DISCONNECT"
    );
}

/// The server closes; a v5 DISCONNECT before the close, if any, carries `code`.
async fn expect_close(c: &mut Conn, code: u8, what: &str) {
    match c.recv(T).await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.code, code, "{what}: DISCONNECT reason"),
        Some(p) => panic!("{what}: expected the connection to close, got {p:?}"),
        None => {}
    }
    assert!(c.closed_within(T).await, "{what}: connection not closed");
}

/// The next packet satisfying `want`, skipping others; panics when none comes in time.
async fn expect(c: &mut Conn, what: &str, mut want: impl FnMut(&Packet) -> bool) -> Packet {
    let deadline = tokio::time::Instant::now() + T;
    let mut skipped = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.recv(left).await {
            Some(p) if want(&p) => return p,
            Some(p) => skipped.push(p),
            None => panic!("expected {what}; skipped {skipped:?}"),
        }
    }
}

/// Publishes and completes the QoS flow as a publisher (PUBACK, or PUBREC → PUBREL → PUBCOMP).
async fn publish_done(c: &mut Conn, p: Publish) {
    let (qos, pid) = (p.qos, p.packet_id.unwrap_or(0));
    c.send(Packet::Publish(p)).await;
    match qos {
        QoS::AtMostOnce => {}
        QoS::AtLeastOnce => {
            expect(
                c,
                "PUBACK",
                |p| matches!(p, Packet::PubAck(a) if a.packet_id == pid),
            )
            .await;
        }
        QoS::ExactlyOnce => {
            expect(
                c,
                "PUBREC",
                |p| matches!(p, Packet::PubRec(a) if a.packet_id == pid),
            )
            .await;
            c.send(Packet::PubRel(ack(pid))).await;
            expect(
                c,
                "PUBCOMP",
                |p| matches!(p, Packet::PubComp(a) if a.packet_id == pid),
            )
            .await;
        }
    }
}

/// Receives (and acknowledges) PUBLISHes up to and including the first on `sentinel`.
async fn until(c: &mut Conn, sentinel: &str) -> Vec<Publish> {
    let mut got = Vec::new();
    loop {
        match c.recv(T).await {
            Some(Packet::Publish(p)) => {
                c.ack_publish(&p).await;
                let done = p.topic == sentinel;
                got.push(p);
                if done {
                    return got;
                }
            }
            Some(Packet::PubRel(r)) => c.send(Packet::PubComp(ack(r.packet_id))).await,
            Some(_) => {}
            None => panic!("no PUBLISH on {sentinel}; got {got:?}"),
        }
    }
}

/// Subscribes one filter with v5 options (and optionally a subscription identifier); the SUBACK
/// codes.
async fn subscribe_opts(
    c: &mut Conn,
    pid: u16,
    filter: &str,
    qos: u8,
    opts: (bool, bool, RetainHandling),
    id: Option<u32>,
) -> Vec<u8> {
    c.send(Packet::Subscribe(Subscribe {
        packet_id: pid,
        properties: SubscribeProperties {
            subscription_identifier: id,
            user_properties: vec![],
        },
        filters: vec![SubscribeFilter {
            filter: filter.to_string(),
            qos: QoS::from_u8(qos).unwrap(),
            no_local: opts.0,
            retain_as_published: opts.1,
            retain_handling: opts.2,
        }],
    }))
    .await;
    match expect(c, "SUBACK", |p| matches!(p, Packet::SubAck(_))).await {
        Packet::SubAck(a) => {
            assert_eq!(a.packet_id, pid);
            a.codes
        }
        _ => unreachable!(),
    }
}

/// Sends PINGREQ and returns the PUBLISHes (acknowledged) that arrive before the PINGRESP: what
/// the broker had queued for this client when it read the PINGREQ.
async fn before_pingresp(c: &mut Conn) -> Vec<Publish> {
    c.send(Packet::PingReq).await;
    let mut got = Vec::new();
    loop {
        match c.recv(T).await {
            Some(Packet::PingResp) => return got,
            Some(Packet::Publish(p)) => {
                c.ack_publish(&p).await;
                got.push(p);
            }
            Some(Packet::PubRel(r)) => c.send(Packet::PubComp(ack(r.packet_id))).await,
            Some(_) => {}
            None => panic!("no PINGRESP; got {got:?}"),
        }
    }
}

fn payloads(v: &[Publish]) -> Vec<String> {
    v.iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// CONNECT / CONNACK

/// MQTT-3.1.2-2: an unsupported protocol level gets CONNACK return code 0x01 (the 3.1.1 layout,
/// the one any client can read) and the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_protocol_level_gets_connack_0x01_then_close() {
    let n = InProcBroker::plain("cf-level", "");
    for level in [6u8, 2] {
        let mut s = tcp(n.addr()).await;
        s.write_all(&connect_bytes("MQTT", level, 0x02, 30, "lvl"))
            .await
            .unwrap();
        let (bytes, closed) = read_to_close(&mut s, T).await;
        assert_eq!(
            bytes,
            [0x20, 0x02, 0x00, 0x01],
            "level {level}: CONNACK bytes"
        );
        assert!(closed, "level {level}: not closed");
    }
}

/// MQTT-3.1.0-1: the first packet must be CONNECT; anything else closes the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_packet_other_than_connect_closes() {
    let n = InProcBroker::plain("cf-first", "");
    let cases: [(&str, &[u8]); 3] = [
        ("PINGREQ", &[0xC0, 0x00]),
        ("PUBLISH", &[0x30, 0x04, 0x00, 0x01, b'a', b'x']),
        (
            "SUBSCRIBE",
            &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00],
        ),
    ];
    for (what, bytes) in cases {
        let mut s = tcp(n.addr()).await;
        s.write_all(bytes).await.unwrap();
        let (got, closed) = read_to_close(&mut s, T).await;
        assert!(got.is_empty(), "{what} first: server answered {got:?}");
        assert!(closed, "{what} first: not closed");
    }
}

/// MQTT-3.1.0-2: a second CONNECT is a protocol violation (v5: DISCONNECT 0x82).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_connect_closes_the_connection() {
    let n = InProcBroker::plain("cf-second", "");
    let mut c = Raw::client(n.addr(), Version::V311, "twice-3").await;
    c.s.write_all(&connect_bytes("MQTT", 4, 0x02, 30, "twice-3"))
        .await
        .unwrap();
    assert!(c.closed_within(T).await, "3.1.1: second CONNECT accepted");

    let mut c = Raw::client(n.addr(), Version::V5, "twice-5").await;
    c.s.write_all(&connect_bytes("MQTT", 5, 0x02, 30, "twice-5"))
        .await
        .unwrap();
    expect_disconnect(&mut c, reason::PROTOCOL_ERROR, "v5 second CONNECT").await;
}

/// MQTT-3.1.2-3: the reserved CONNECT flag must be 0, else the connection is closed (no
/// successful CONNACK).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_connect_flag_closes() {
    let n = InProcBroker::plain("cf-reserved", "");
    for level in [4u8, 5] {
        let mut s = tcp(n.addr()).await;
        s.write_all(&connect_bytes("MQTT", level, 0x03, 30, "reserved"))
            .await
            .unwrap();
        let (got, closed) = read_to_close(&mut s, T).await;
        assert!(
            !is_connack_success(&got),
            "level {level}: accepted: {got:?}"
        );
        assert!(closed, "level {level}: not closed");
    }
}

/// MQTT-3.1.3-8: a zero-length client id with CleanSession 0 gets return code 0x02, then a close
/// (MQTT-3.2.2-4: session present 0; MQTT-3.2.2-5: close). MQTT-3.1.3-6: with CleanSession 1
/// it is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_client_id_in_3_1_1_needs_clean_session() {
    let n = InProcBroker::plain("cf-emptyid", "");
    let mut s = tcp(n.addr()).await;
    s.write_all(&connect_bytes("MQTT", 4, 0x00, 30, ""))
        .await
        .unwrap();
    let (got, closed) = read_to_close(&mut s, T).await;
    assert_eq!(got, [0x20, 0x02, 0x00, 0x02], "CONNACK bytes");
    assert!(closed, "not closed after a refusing CONNACK");

    let mut s = tcp(n.addr()).await;
    s.write_all(&connect_bytes("MQTT", 4, 0x02, 30, ""))
        .await
        .unwrap();
    let (got, closed) = read_to_close(&mut s, QUIET).await;
    assert_eq!(got, [0x20, 0x02, 0x00, 0x00], "CONNACK bytes");
    assert!(!closed, "an empty id with clean session must be accepted");
}

/// v5 MQTT-3.2.2-16: a zero-length client id gets an Assigned Client Identifier in CONNACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_empty_client_id_gets_an_assigned_identifier() {
    let n = InProcBroker::plain("cf-assigned", "");
    let (mut c, ack) = Raw::client5(n.addr(), "", true, None, Default::default()).await;
    let id = ack
        .properties
        .assigned_client_identifier
        .expect("no Assigned Client Identifier property");
    assert!(!id.is_empty());
    // and the client works under it
    c.subscribe(1, &[("assigned/t", 1)]).await;
    c.publish("assigned/t", b"x", 1, Some(2), false).await;
    let got = until(&mut c, "assigned/t").await;
    assert_eq!(payloads(&got), ["x"]);
    let v = get_json(n.admin(), &format!("/api/clients/{id}"));
    assert_eq!(v["connected"], true, "{v}");
}

/// The v5 CONNACK tells the client the server's limits (3.2.2.3: Receive Maximum, Maximum Packet
/// Size, Topic Alias Maximum); a 3.1.1 clean session gets exactly `20 02 00 00` (MQTT-3.2.2-1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connack_layouts_and_v5_server_limits() {
    let n = InProcBroker::plain("cf-connack", "");
    let (_c, ack) = Raw::client5(n.addr(), "limits", true, None, Default::default()).await;
    assert!(!ack.session_present);
    let p = &ack.properties;
    assert!(
        p.receive_maximum.is_some_and(|v| v > 0),
        "receive maximum: {p:?}"
    );
    assert!(
        p.maximum_packet_size.is_some_and(|v| v > 0),
        "maximum packet size: {p:?}"
    );
    assert!(
        p.topic_alias_maximum.is_some_and(|v| v > 0),
        "topic alias maximum: {p:?}"
    );
    assert_eq!(p.assigned_client_identifier, None, "id was not empty");

    let mut s = tcp(n.addr()).await;
    s.write_all(&connect_bytes("MQTT", 4, 0x02, 30, "layout"))
        .await
        .unwrap();
    let (got, _) = read_to_close(&mut s, QUIET).await;
    assert_eq!(got, [0x20, 0x02, 0x00, 0x00]);
}

/// MQTT 3.1 (`MQIsdp`, level 3) clients are served like 3.1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_mqisdp_client_connects_and_exchanges_messages() {
    let n = InProcBroker::plain("cf-mqisdp", "");
    let mut s = tcp(n.addr()).await;
    s.write_all(&connect_bytes("MQIsdp", 3, 0x02, 30, "old-timer"))
        .await
        .unwrap();
    let mut ack = [0u8; 4];
    tokio::time::timeout(T, s.read_exact(&mut ack))
        .await
        .expect("no CONNACK")
        .unwrap();
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00]);
    let mut c = Raw::new(s, Version::V31);
    assert_eq!(c.subscribe(1, &[("old/#", 1)]).await, vec![1]);
    publish_done(&mut c, publish("old/t", b"3.1 works", 1, Some(2), false)).await;
    let got = until(&mut c, "old/t").await;
    assert_eq!(payloads(&got), ["3.1 works"]);
    let v = get_json(n.admin(), "/api/clients/old-timer");
    assert_eq!(v["protocol_version"], 3, "{v}");
}

// ---------------------------------------------------------------------------------------------
// PUBLISH

/// MQTT-3.3.2-2: a topic name must not contain wildcards (v5: DISCONNECT 0x90 Topic Name invalid).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_a_wildcard_topic_closes() {
    let n = InProcBroker::plain("cf-pubwild", "");
    let mut c = Raw::client(n.addr(), Version::V311, "wild-3").await;
    c.publish("a/+", b"x", 0, None, false).await;
    assert!(c.closed_within(T).await, "3.1.1: PUBLISH to a/+ accepted");

    let mut c = Raw::client(n.addr(), Version::V5, "wild-5").await;
    c.publish("a/#", b"x", 1, Some(1), false).await;
    expect_disconnect(&mut c, reason::TOPIC_NAME_INVALID, "v5 PUBLISH to a/#").await;
}

/// MQTT-1.5.3-1 / MQTT-1.5.3-2: a topic that is not well-formed UTF-8, or holds U+0000, is a
/// malformed packet: the connection is closed (v5: DISCONNECT 0x81 before it, if any).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_with_invalid_utf8_or_nul_in_topic_closes() {
    let n = InProcBroker::plain("cf-utf8", "");
    let bad_topics: [&[u8]; 3] = [b"a\xC3\x28", b"a\xED\xA0\x80", b"a\x00b"];
    for (i, topic) in bad_topics.iter().enumerate() {
        for v in [Version::V311, Version::V5] {
            let mut c = Raw::client(n.addr(), v, &format!("utf8-{i}-{}", v.level())).await;
            let mut body = Vec::new();
            body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
            body.extend_from_slice(topic);
            if v.is_v5() {
                body.push(0);
            }
            body.extend_from_slice(b"payload");
            let mut p = vec![0x30, body.len() as u8];
            p.extend_from_slice(&body);
            c.s.write_all(&p).await.unwrap();
            expect_close(
                &mut c,
                reason::MALFORMED_PACKET,
                &format!("topic {topic:?} v{}", v.level()),
            )
            .await;
        }
    }
}

/// MQTT-4.3.3-2 (v5 §4.3.3): until PUBREL, a retransmitted QoS 2 PUBLISH with the same packet
/// id is acknowledged with PUBREC again and must not be delivered twice onward.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_retransmission_before_pubrel_is_delivered_once() {
    let n = InProcBroker::plain("cf-qos2dup", "");
    for v in [Version::V311, Version::V5] {
        let l = v.level();
        let mut sub = Raw::client(n.addr(), v, &format!("q2-sub-{l}")).await;
        sub.subscribe(1, &[(&format!("q2/{l}/#"), 2)]).await;
        let mut p = Raw::client(n.addr(), v, &format!("q2-pub-{l}")).await;
        let topic = format!("q2/{l}/m");
        let first = publish(&topic, b"exactly once", 2, Some(7), false);
        p.send(Packet::Publish(first.clone())).await;
        expect(
            &mut p,
            "PUBREC 7",
            |x| matches!(x, Packet::PubRec(a) if a.packet_id == 7),
        )
        .await;
        p.send(Packet::Publish(Publish { dup: true, ..first }))
            .await;
        let again = expect(&mut p, "PUBREC 7 again", |x| matches!(x, Packet::PubRec(_))).await;
        assert!(
            matches!(&again, Packet::PubRec(a) if a.packet_id == 7 && a.code < 0x80),
            "v{l}: {again:?}"
        );
        p.send(Packet::PubRel(ack(7))).await;
        let comp = expect(&mut p, "PUBCOMP 7", |x| matches!(x, Packet::PubComp(_))).await;
        assert!(
            matches!(&comp, Packet::PubComp(a) if a.packet_id == 7 && a.code == 0),
            "v{l}: {comp:?}"
        );
        let end = format!("q2/{l}/end");
        publish_done(&mut p, publish(&end, b"end", 0, None, false)).await;
        assert_eq!(
            payloads(&until(&mut sub, &end).await),
            ["exactly once", "end"],
            "v{l}"
        );
    }
}

/// MQTT-4.3.3-2 (v5 §4.3.3): after PUBCOMP (or PUBACK for QoS 1) the packet id is free again:
/// a PUBLISH reusing it is a new message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packet_id_reused_after_its_flow_completes_is_a_new_message() {
    let n = InProcBroker::plain("cf-pidreuse", "");
    let mut sub = Raw::client(n.addr(), Version::V311, "reuse-sub").await;
    sub.subscribe(1, &[("reuse/#", 2)]).await;
    let mut p = Raw::client(n.addr(), Version::V311, "reuse-pub").await;
    publish_done(&mut p, publish("reuse/a", b"q2 first", 2, Some(7), false)).await;
    publish_done(&mut p, publish("reuse/a", b"q2 second", 2, Some(7), false)).await;
    publish_done(&mut p, publish("reuse/a", b"q1 first", 1, Some(7), false)).await;
    publish_done(&mut p, publish("reuse/a", b"q1 second", 1, Some(7), false)).await;
    publish_done(&mut p, publish("reuse/end", b"end", 0, None, false)).await;
    assert_eq!(
        payloads(&until(&mut sub, "reuse/end").await),
        ["q2 first", "q2 second", "q1 first", "q1 second", "end"]
    );
}

/// MQTT-4.3.3-2: a PUBREL is answered by a PUBCOMP with the same id even when the id is unknown;
/// v5 says so with reason 0x92 Packet Identifier not found (3.7.2.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubrel_for_an_unknown_packet_id_gets_pubcomp() {
    let n = InProcBroker::plain("cf-pubrel", "");
    let mut c = Raw::client(n.addr(), Version::V311, "rel-3").await;
    c.send(Packet::PubRel(ack(99))).await;
    match c.recv(T).await {
        Some(Packet::PubComp(a)) => assert_eq!(a.packet_id, 99),
        other => panic!("3.1.1: expected PUBCOMP 99, got {other:?}"),
    }
    let mut c = Raw::client(n.addr(), Version::V5, "rel-5").await;
    c.send(Packet::PubRel(ack(99))).await;
    match c.recv(T).await {
        Some(Packet::PubComp(a)) => {
            assert_eq!(a.packet_id, 99);
            assert_eq!(a.code, reason::PACKET_IDENTIFIER_NOT_FOUND);
        }
        other => panic!("v5: expected PUBCOMP 99 (0x92), got {other:?}"),
    }
}

/// MQTT-3.3.1-10 / -11: a retained PUBLISH with an empty payload (here QoS 0) is delivered as
/// normal, removes the retained message and is not itself retained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_retained_qos0_publish_clears_the_retained_message() {
    let n = InProcBroker::plain("cf-retclear", "");
    let mut p = Raw::client(n.addr(), Version::V311, "ret-pub").await;
    publish_done(&mut p, publish("r/x", b"kept", 1, Some(1), true)).await;
    let mut live = Raw::client(n.addr(), Version::V311, "ret-live").await;
    live.subscribe(1, &[("r/#", 1)]).await;
    let got = until(&mut live, "r/x").await;
    assert_eq!(payloads(&got), ["kept"]);
    assert!(
        got[0].retain,
        "MQTT-3.3.1-8: RETAIN 1 for a retained message at subscribe"
    );

    publish_done(&mut p, publish("r/x", b"", 0, None, true)).await;
    let got = until(&mut live, "r/x").await;
    assert_eq!(
        payloads(&got),
        [""],
        "the empty publish is delivered as normal"
    );
    assert!(
        !got[0].retain,
        "MQTT-3.3.1-9: RETAIN 0 on an established subscription"
    );

    publish_done(&mut p, publish("r/y", b"other", 1, Some(2), true)).await;
    let mut late = Raw::client(n.addr(), Version::V5, "ret-late").await;
    late.subscribe(1, &[("r/#", 1)]).await;
    let got = until(&mut late, "r/y").await;
    assert_eq!(payloads(&got), ["other"], "r/x must no longer be retained");
    assert!(
        late.recv(QUIET).await.is_none(),
        "r/x must no longer be retained"
    );
}

/// MQTT-4.4.0-1: on reconnect with CleanSession 0 (v5: Clean Start 0, a session present) the
/// server resends unacknowledged PUBLISH (DUP 1, MQTT-3.3.1-1) and PUBREL with their original
/// packet ids, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_deliveries_are_resent_on_reconnect() {
    let n = InProcBroker::plain("cf-resend", "");
    for v in [Version::V311, Version::V5] {
        let l = v.level();
        let id = format!("resend-{l}");
        let props = ConnectProperties {
            session_expiry_interval: v.is_v5().then_some(300),
            ..Default::default()
        };
        let mut sub = Raw::new(tcp(n.addr()).await, v);
        let ack0 = sub
            .connect_with(&id, false, 30, None, None, props.clone())
            .await;
        assert_eq!(ack0.code, 0);
        sub.subscribe(1, &[(&format!("rs/{l}/#"), 2)]).await;
        let mut p = Raw::client(n.addr(), v, &format!("resend-pub-{l}")).await;
        for (i, (qos, body)) in [(1u8, "one"), (2, "two"), (2, "three")].iter().enumerate() {
            let t = format!("rs/{l}/{body}");
            publish_done(
                &mut p,
                publish(&t, body.as_bytes(), *qos, Some(i as u16 + 1), false),
            )
            .await;
        }
        // receive all three; acknowledge only "three" with PUBREC, so the server owes a PUBREL
        let mut ids = Vec::new();
        while ids.len() < 3 {
            match sub.recv(T).await {
                Some(Packet::Publish(m)) => ids.push((
                    String::from_utf8_lossy(&m.payload).into_owned(),
                    m.packet_id.unwrap(),
                    m.qos,
                )),
                Some(_) => {}
                None => panic!("v{l}: got only {ids:?}"),
            }
        }
        assert_eq!(
            ids.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(),
            ["one", "two", "three"]
        );
        let three = ids[2].1;
        sub.send(Packet::PubRec(ack(three))).await;
        expect(
            &mut sub,
            "PUBREL",
            |x| matches!(x, Packet::PubRel(a) if a.packet_id == three),
        )
        .await;
        drop(sub); // gone without acknowledging anything else

        let mut sub = Raw::new(tcp(n.addr()).await, v);
        let back = sub.connect_with(&id, false, 30, None, None, props).await;
        assert_eq!(back.code, 0);
        assert!(back.session_present, "v{l}: session present");
        let mut resent = Vec::new();
        while resent.len() < 3 {
            match sub.recv(T).await {
                Some(p) => resent.push(p),
                None => panic!("v{l}: resent only {resent:?}"),
            }
        }
        for (i, want) in ids[..2].iter().enumerate() {
            match &resent[i] {
                Packet::Publish(m) => {
                    assert_eq!(m.payload, want.0.as_bytes(), "v{l}: order");
                    assert_eq!(m.packet_id, Some(want.1), "v{l}: original packet id");
                    assert_eq!(m.qos, want.2);
                    assert!(m.dup, "v{l}: DUP must be set on redelivery");
                }
                other => panic!("v{l}: expected PUBLISH {}, got {other:?}", want.0),
            }
        }
        assert!(
            matches!(&resent[2], Packet::PubRel(a) if a.packet_id == three),
            "v{l}: expected PUBREL {three}, got {:?}",
            resent[2]
        );
        // acknowledge everything: nothing more comes
        sub.send(Packet::PubAck(ack(ids[0].1))).await;
        sub.send(Packet::PubRec(ack(ids[1].1))).await;
        expect(
            &mut sub,
            "PUBREL",
            |x| matches!(x, Packet::PubRel(a) if a.packet_id == ids[1].1),
        )
        .await;
        sub.send(Packet::PubComp(ack(ids[1].1))).await;
        sub.send(Packet::PubComp(ack(three))).await;
        assert!(
            sub.recv(QUIET).await.is_none(),
            "v{l}: nothing else is owed"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// SUBSCRIBE / UNSUBSCRIBE

/// MQTT-3.8.1-1: SUBSCRIBE fixed header flags must be 0010, else the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_with_bad_fixed_header_flags_closes() {
    let n = InProcBroker::plain("cf-subflags", "");
    let mut c = Raw::client(n.addr(), Version::V311, "subflags-3").await;
    c.s.write_all(&[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00])
        .await
        .unwrap();
    expect_close(&mut c, 0, "3.1.1 SUBSCRIBE flags 0000").await;
    let mut c = Raw::client(n.addr(), Version::V5, "subflags-5").await;
    c.s.write_all(&[0x80, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x00])
        .await
        .unwrap();
    expect_close(&mut c, reason::MALFORMED_PACKET, "v5 SUBSCRIBE flags 0000").await;
}

/// MQTT-4.7.1-2 / -3: a filter with `#` not last or `+` sharing a level is refused in SUBACK,
/// 0x80 in 3.1.1 (MQTT-3.9.3-2), 0x8F Topic Filter invalid in v5; valid filters of the same
/// SUBSCRIBE are granted and the connection stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_topic_filters_are_refused_in_suback() {
    let n = InProcBroker::plain("cf-badfilter", "");
    for (v, fail) in [
        (Version::V311, 0x80u8),
        (Version::V5, reason::TOPIC_FILTER_INVALID),
    ] {
        let mut c = Raw::client(n.addr(), v, &format!("badfilter-{}", v.level())).await;
        let codes = c
            .subscribe(1, &[("a/#/b", 1), ("a+/b", 1), ("#/a", 1), ("ok/+", 1)])
            .await;
        assert_eq!(codes, vec![fail, fail, fail, 1], "v{}", v.level());
        c.send(Packet::PingReq).await;
        assert_eq!(c.recv(T).await, Some(Packet::PingResp));
    }
}

/// MQTT-3.10.4-4 / -5: UNSUBACK with the same packet id even when nothing was subscribed; v5
/// reports 0x11 No subscription existed for such a filter and 0x00 for a removed one (3.11.3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_of_an_unknown_filter_is_acknowledged() {
    let n = InProcBroker::plain("cf-unsub", "");
    let mut c = Raw::client(n.addr(), Version::V311, "unsub-3").await;
    c.send(Packet::Unsubscribe(Unsubscribe {
        packet_id: 10,
        user_properties: vec![],
        filters: vec!["never/subscribed".into()],
    }))
    .await;
    match c.recv(T).await {
        Some(Packet::UnsubAck(a)) => assert_eq!(a.packet_id, 10),
        other => panic!("3.1.1: expected UNSUBACK 10, got {other:?}"),
    }

    let mut c = Raw::client(n.addr(), Version::V5, "unsub-5").await;
    c.subscribe(1, &[("yes/sub", 1)]).await;
    c.send(Packet::Unsubscribe(Unsubscribe {
        packet_id: 9,
        user_properties: vec![],
        filters: vec!["never/subscribed".into(), "yes/sub".into()],
    }))
    .await;
    match c.recv(T).await {
        Some(Packet::UnsubAck(a)) => {
            assert_eq!(a.packet_id, 9);
            assert_eq!(a.codes, vec![reason::NO_SUBSCRIPTION_EXISTED, 0]);
        }
        other => panic!("v5: expected UNSUBACK 9, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Keep-alive, PING, DISCONNECT

/// MQTT-3.12.4-1: PINGREQ is answered with PINGRESP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pingreq_gets_pingresp() {
    let n = InProcBroker::plain("cf-ping", "");
    for v in [Version::V311, Version::V5] {
        let mut c = Raw::client(n.addr(), v, &format!("ping-{}", v.level())).await;
        for _ in 0..3 {
            c.send(Packet::PingReq).await;
            assert_eq!(c.recv(T).await, Some(Packet::PingResp), "v{}", v.level());
        }
    }
}

/// MQTT-3.1.2-24 (v5 MQTT-3.1.2-22): with Keep Alive 1 s, a silent client is disconnected once
/// 1.5 s pass without a packet — not before, and not much later; a client that pings stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_expiry_closes_a_silent_client_after_one_and_a_half_times() {
    let n = InProcBroker::plain("cf-keepalive", "");
    let addr = n.addr();
    let silent = |v: Version| async move {
        let start = Instant::now();
        let mut c = Raw::new(tcp(addr).await, v);
        let ack = c.connect(&format!("silent-{}", v.level()), true, 1).await;
        assert_eq!(ack.code, 0);
        if v.is_v5() {
            // a v5 server may say why first (0x8D Keep Alive timeout)
            if let Some(p) = c.recv(Duration::from_secs(3)).await {
                assert_eq!(
                    p,
                    Packet::Disconnect(Disconnect {
                        code: reason::KEEP_ALIVE_TIMEOUT,
                        ..Default::default()
                    })
                );
            }
        }
        assert!(
            c.closed_within(Duration::from_secs(3)).await,
            "v{}: silent client still connected",
            v.level()
        );
        start.elapsed()
    };
    let pinger = async {
        let mut c = Raw::new(tcp(addr).await, Version::V311);
        assert_eq!(c.connect("pinger", true, 1).await.code, 0);
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(3000) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            c.send(Packet::PingReq).await;
            assert_eq!(
                c.recv(Duration::from_secs(1)).await,
                Some(Packet::PingResp),
                "the pinging client was dropped after {:?}",
                start.elapsed()
            );
        }
    };
    let (t3, t5, ()) = tokio::join!(silent(Version::V311), silent(Version::V5), pinger);
    for (v, t) in [(4, t3), (5, t5)] {
        assert!(
            t >= Duration::from_millis(1500) && t <= Duration::from_millis(2500),
            "v{v}: closed after {t:?}, want 1.5 s .. 2.5 s"
        );
    }
}

/// v5 §3.14.2.2.2: a non-zero Session Expiry Interval in DISCONNECT after 0 at CONNECT is a
/// Protocol Error (DISCONNECT 0x82); the invalid DISCONNECT does not discard the will
/// (MQTT-3.1.2-8 v5: the will is published when the connection closes without a valid
/// normal DISCONNECT).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_disconnect_setting_session_expiry_after_zero_is_a_protocol_error() {
    let n = InProcBroker::plain("cf-discexp", "");
    let mut watch = Raw::client(n.addr(), Version::V5, "dis-watch").await;
    watch.subscribe(1, &[("dis/#", 1)]).await;
    let will = Will {
        topic: "dis/will".into(),
        payload: Bytes::from_static(b"went away badly"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties::default(),
    };
    let (mut c, _) = Raw::client5(n.addr(), "dis-bad", true, Some(will), Default::default()).await;
    c.send(Packet::Disconnect(Disconnect {
        code: 0,
        properties: DisconnectProperties {
            session_expiry_interval: Some(60),
            ..Default::default()
        },
    }))
    .await;
    expect_disconnect(&mut c, reason::PROTOCOL_ERROR, "DISCONNECT with expiry").await;
    assert_eq!(
        payloads(&until(&mut watch, "dis/will").await),
        ["went away badly"]
    );
}

// ---------------------------------------------------------------------------------------------
// v5 limits and properties

/// v5 MQTT-3.1.2-24 / -25: the server never sends a packet larger than the client's Maximum
/// Packet Size; a message too large for it is discarded, later ones still flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_server_respects_the_client_maximum_packet_size() {
    let n = InProcBroker::plain("cf-maxpkt", "");
    let (mut small, _) = Raw::client5(
        n.addr(),
        "small-client",
        true,
        None,
        ConnectProperties {
            maximum_packet_size: Some(100),
            ..Default::default()
        },
    )
    .await;
    small.subscribe(1, &[("big/#", 1)]).await;
    let mut p = Raw::client(n.addr(), Version::V5, "big-pub").await;
    publish_done(&mut p, publish("big/a", &[b'x'; 500], 1, Some(1), false)).await;
    publish_done(&mut p, publish("big/b", b"fits", 1, Some(2), false)).await;
    let mut seen = Vec::new();
    loop {
        let pkt = small.recv(T).await.expect("big/b did not arrive");
        let size = encoded_len(&pkt, Version::V5);
        assert!(size <= 100, "received a {size}-byte packet: {pkt:?}");
        if let Packet::Publish(m) = &pkt {
            small.ack_publish(m).await;
            seen.push(m.topic.clone());
            if m.topic == "big/b" {
                break;
            }
        }
    }
    assert_eq!(seen, ["big/b"]);
}

/// v5 §3.2.2.3.8 / MQTT-3.3.2-9: a Topic Alias above the server's Topic Alias Maximum gets
/// DISCONNECT 0x94 Topic Alias invalid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_topic_alias_above_the_maximum_is_refused_with_0x94() {
    let n = InProcBroker::plain("cf-aliasmax", "");
    let (mut c, ack) = Raw::client5(n.addr(), "alias-max", true, None, Default::default()).await;
    let max = ack.properties.topic_alias_maximum.unwrap_or(0);
    assert!(max < u16::MAX, "cannot exceed a maximum of {max}");
    let mut p = publish("alias/x", b"x", 0, None, false);
    p.properties.topic_alias = Some(max + 1);
    c.send(Packet::Publish(p)).await;
    expect_disconnect(&mut c, reason::TOPIC_ALIAS_INVALID, "alias max+1").await;
}

/// v5 §3.3.2.3.4: a Topic Alias set with a topic name stands for it in later PUBLISHes with an
/// empty topic, can be remapped, is not sent to a subscriber that allowed none (MQTT-3.3.2-10?
/// v5: Topic Alias Maximum absent = 0), and is not carried to another connection (MQTT-3.3.2-7):
/// an unmapped alias with an empty topic is a Protocol Error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_topic_aliases_stand_for_their_topic_on_one_connection() {
    let n = InProcBroker::plain("cf-alias", "");
    let mut sub = Raw::client(n.addr(), Version::V5, "alias-sub").await;
    sub.subscribe(1, &[("ta/#", 1)]).await;
    let mut p = Raw::client(n.addr(), Version::V5, "alias-pub").await;
    let with_alias = |topic: &str, body: &[u8], pid: u16| {
        let mut m = publish(topic, body, 1, Some(pid), false);
        m.properties.topic_alias = Some(3);
        m
    };
    publish_done(&mut p, with_alias("ta/x", b"set", 1)).await;
    publish_done(&mut p, with_alias("", b"use", 2)).await;
    publish_done(&mut p, with_alias("ta/y", b"remap", 3)).await;
    publish_done(&mut p, with_alias("", b"use again", 4)).await;
    publish_done(&mut p, publish("ta/end", b"end", 0, None, false)).await;
    let got = until(&mut sub, "ta/end").await;
    let seen: Vec<(String, String)> = got
        .iter()
        .map(|m| {
            assert_eq!(
                m.properties.topic_alias, None,
                "alias sent to a client that allowed none"
            );
            (
                m.topic.clone(),
                String::from_utf8_lossy(&m.payload).into_owned(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("ta/x", "set"),
        ("ta/x", "use"),
        ("ta/y", "remap"),
        ("ta/y", "use again"),
        ("ta/end", "end"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(seen, want);

    // a new connection of the same client starts with no aliases
    drop(p);
    let mut p = Raw::client(n.addr(), Version::V5, "alias-pub").await;
    p.send(Packet::Publish(with_alias("", b"stale", 5))).await;
    expect_disconnect(&mut p, reason::PROTOCOL_ERROR, "unmapped alias").await;
}

/// v5 MQTT-3.3.4-9: the server sends no more unacknowledged QoS 1/2 PUBLISHes than the client's
/// Receive Maximum; each acknowledgement lets one more through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_client_receive_maximum_limits_unacknowledged_deliveries() {
    let n = InProcBroker::plain("cf-recvmax", "");
    let (mut sub, _) = Raw::client5(
        n.addr(),
        "narrow",
        true,
        None,
        ConnectProperties {
            receive_maximum: Some(2),
            ..Default::default()
        },
    )
    .await;
    sub.subscribe(1, &[("rm/#", 1)]).await;
    let mut p = Raw::client(n.addr(), Version::V5, "rm-pub").await;
    for i in 0..5u16 {
        publish_done(
            &mut p,
            publish("rm/t", format!("m{i}").as_bytes(), 1, Some(i + 1), false),
        )
        .await;
    }
    let mut pending = Vec::new();
    let mut got = Vec::new();
    for _ in 0..2 {
        match sub.recv(T).await {
            Some(Packet::Publish(m)) => {
                pending.push(m.packet_id.unwrap());
                got.push(String::from_utf8_lossy(&m.payload).into_owned());
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    assert_eq!(
        sub.recv(QUIET).await,
        None,
        "a third PUBLISH while 2 are unacknowledged"
    );
    while got.len() < 5 {
        let id = pending.remove(0);
        sub.send(Packet::PubAck(ack(id))).await;
        match sub.recv(T).await {
            Some(Packet::Publish(m)) => {
                pending.push(m.packet_id.unwrap());
                got.push(String::from_utf8_lossy(&m.payload).into_owned());
            }
            other => panic!("expected PUBLISH after PUBACK {id}, got {other:?}"),
        }
        assert!(
            pending.len() <= 2,
            "more than 2 unacknowledged: {pending:?}"
        );
    }
    assert_eq!(got, ["m0", "m1", "m2", "m3", "m4"]);
}

/// v5 §3.3.4 (MQTT-3.3.4-7 is the client's duty): more unacknowledged QoS 2 PUBLISHes than the
/// server's Receive Maximum get DISCONNECT 0x93 Receive Maximum exceeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_exceeding_the_server_receive_maximum_is_disconnected_0x93() {
    let n = InProcBroker::plain("cf-srvrecv", "");
    let (mut c, ack0) = Raw::client5(n.addr(), "flooder", true, None, Default::default()).await;
    let max = ack0.properties.receive_maximum.unwrap_or(u16::MAX);
    assert!(max < 1000, "receive maximum {max} too large to exceed here");
    for i in 0..max {
        c.send(Packet::Publish(publish(
            "flood/t",
            b"x",
            2,
            Some(i + 1),
            false,
        )))
        .await;
        expect(&mut c, "PUBREC", |x| matches!(x, Packet::PubRec(_))).await;
    }
    c.send(Packet::Publish(publish(
        "flood/t",
        b"x",
        2,
        Some(max + 1),
        false,
    )))
    .await;
    expect_disconnect(&mut c, reason::RECEIVE_MAXIMUM_EXCEEDED, "one over").await;
}

/// v5 MQTT-3.3.2-5 / -6: an expired message is not delivered to a session that was away; one
/// that is delivered carries the remaining lifetime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_message_expiry_drops_stale_messages_and_counts_down() {
    let n = InProcBroker::plain("cf-msgexp", "");
    let props = ConnectProperties {
        session_expiry_interval: Some(60),
        ..Default::default()
    };
    let (mut sub, _) = Raw::client5(n.addr(), "exp-sub", true, None, props.clone()).await;
    sub.subscribe(1, &[("me/#", 1)]).await;
    sub.send(Packet::Disconnect(Disconnect::default())).await;
    assert!(sub.closed_within(T).await);
    let mut p = Raw::client(n.addr(), Version::V5, "exp-pub").await;
    let mut short = publish("me/short", b"short", 1, Some(1), false);
    short.properties.message_expiry_interval = Some(1);
    let mut long = publish("me/long", b"long", 1, Some(2), false);
    long.properties.message_expiry_interval = Some(60);
    let mut retained = publish("me/ret", b"retained short", 1, Some(3), true);
    retained.properties.message_expiry_interval = Some(1);
    publish_done(&mut p, short).await;
    publish_done(&mut p, retained).await;
    publish_done(&mut p, long).await;
    tokio::time::sleep(Duration::from_millis(2200)).await; // let the short ones expire
    let (mut sub, ack0) = Raw::client5(n.addr(), "exp-sub", false, None, props).await;
    assert!(ack0.session_present);
    let got = until(&mut sub, "me/long").await;
    assert_eq!(
        payloads(&got),
        ["long"],
        "the expired message was delivered"
    );
    let left = got[0].properties.message_expiry_interval;
    assert!(
        left.is_some_and(|s| (50..=58).contains(&s)),
        "remaining expiry {left:?}, want about 60 - 2"
    );
    // an expired retained message is not sent to a new subscription either
    let mut fresh = Raw::client(n.addr(), Version::V5, "exp-fresh").await;
    fresh.subscribe(1, &[("me/ret", 1)]).await;
    assert_eq!(
        before_pingresp(&mut fresh).await,
        vec![],
        "expired retained message sent"
    );
}

/// v5 MQTT-3.1.2-23: the session outlives the connection for its Session Expiry Interval and no
/// longer; 0 ends it with the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_session_expiry_interval_bounds_the_session() {
    let n = InProcBroker::plain("cf-sessexp", "");
    let addr = n.addr();
    let with = |s: Option<u32>| ConnectProperties {
        session_expiry_interval: s,
        ..Default::default()
    };
    for (id, e) in [("se-0", None), ("se-1", Some(1)), ("se-60", Some(60))] {
        let (mut c, _) = Raw::client5(addr, id, true, None, with(e)).await;
        c.subscribe(1, &[("se/t", 1)]).await;
        c.send(Packet::Disconnect(Disconnect::default())).await;
        assert!(c.closed_within(T).await);
    }
    let (_c, a) = Raw::client5(addr, "se-0", false, None, with(Some(60))).await;
    assert!(
        !a.session_present,
        "expiry 0: session must end with the connection"
    );
    tokio::time::sleep(Duration::from_millis(2200)).await; // let the 1 s session expire
    let (_c, a) = Raw::client5(addr, "se-1", false, None, with(Some(60))).await;
    assert!(
        !a.session_present,
        "expiry 1 s: session still present after 2.2 s"
    );
    let (_c, a) = Raw::client5(addr, "se-60", false, None, with(Some(60))).await;
    assert!(a.session_present, "expiry 60 s: session lost");
}

/// v5 §3.1.3.2.2 / MQTT-3.1.3-9: the will waits for its Will Delay Interval, and is not sent
/// at all when the client reconnects to its session within it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_delay_postpones_the_will_and_a_reconnect_cancels_it() {
    let n = InProcBroker::plain("cf-willdelay", "");
    let addr = n.addr();
    let mut watch = Raw::client(addr, Version::V5, "wd-watch").await;
    watch.subscribe(1, &[("wd/#", 1)]).await;
    let will = |who: &str, delay: u32| Will {
        topic: format!("wd/{who}"),
        payload: Bytes::from(format!("{who} gone")),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties {
            will_delay_interval: Some(delay),
            ..Default::default()
        },
    };
    let props = ConnectProperties {
        session_expiry_interval: Some(30),
        ..Default::default()
    };
    let (late, _) = Raw::client5(addr, "wd-late", true, Some(will("late", 2)), props.clone()).await;
    let (back, _) = Raw::client5(addr, "wd-back", true, Some(will("back", 1)), props.clone()).await;
    let start = Instant::now();
    drop(late); // TCP closed, no DISCONNECT
    drop(back);
    // wd-back returns within its delay: its will must never be sent
    assert!(
        eventually(T, || get_json(n.admin(), "/api/clients/wd-back")
            ["connected"]
            == false)
        .await
    );
    let (_back, a) = Raw::client5(addr, "wd-back", false, None, props).await;
    assert!(a.session_present);
    let got = until(&mut watch, "wd/late").await;
    let waited = start.elapsed();
    assert_eq!(payloads(&got), ["late gone"], "wd-back's will was sent");
    assert!(
        waited >= Duration::from_millis(1900),
        "wd-late's will came after {waited:?}, before its 2 s delay"
    );
    assert!(watch.recv(QUIET).await.is_none());
}

/// MQTT-3.1.4-2 (v5 MQTT-3.1.4-3): a CONNECT with the client id of a connected client closes
/// the existing connection; v5 tells it why with DISCONNECT 0x8E Session taken over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_takeover_closes_the_existing_connection() {
    let n = InProcBroker::plain("cf-takeover", "");
    for v in [Version::V311, Version::V5] {
        let id = format!("twin-{}", v.level());
        let mut old = Raw::client(n.addr(), v, &id).await;
        let mut new = Raw::client(n.addr(), v, &id).await;
        if v.is_v5() {
            expect_disconnect(&mut old, reason::SESSION_TAKEN_OVER, "v5 takeover").await;
        } else {
            assert!(
                old.closed_within(T).await,
                "3.1.1: old connection still open"
            );
        }
        new.send(Packet::PingReq).await;
        assert_eq!(new.recv(T).await, Some(Packet::PingResp), "v{}", v.level());
    }
}

/// MQTT-3.1.2-8: the will is published when the server closes the connection for a protocol
/// error or because the keep-alive expired (not only when the client vanishes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_published_when_the_server_closes_the_connection() {
    let n = InProcBroker::plain("cf-willclose", "");
    let addr = n.addr();
    let mut watch = Raw::client(addr, Version::V311, "wc-watch").await;
    watch.subscribe(1, &[("wc/#", 1)]).await;
    let will = |t: &str| Will {
        topic: t.into(),
        payload: Bytes::from_static(b"closed by the server"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties::default(),
    };
    let mut bad = Raw::new(tcp(addr).await, Version::V311);
    let a = bad
        .connect_with(
            "wc-bad",
            true,
            30,
            Some(will("wc/protocol")),
            None,
            Default::default(),
        )
        .await;
    assert_eq!(a.code, 0);
    bad.publish("wc/+", b"x", 0, None, false).await;
    assert!(bad.closed_within(T).await);
    assert_eq!(
        payloads(&until(&mut watch, "wc/protocol").await),
        ["closed by the server"]
    );

    let mut idle = Raw::new(tcp(addr).await, Version::V311);
    let a = idle
        .connect_with(
            "wc-idle",
            true,
            1,
            Some(will("wc/keepalive")),
            None,
            Default::default(),
        )
        .await;
    assert_eq!(a.code, 0);
    assert!(idle.closed_within(T).await, "keep-alive did not expire");
    assert_eq!(
        payloads(&until(&mut watch, "wc/keepalive").await),
        ["closed by the server"]
    );
}

/// MQTT-3.3.1-12 (3.1.1): a PUBLISH with RETAIN 0 neither replaces nor removes the retained
/// message of its topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_retained_publish_leaves_the_retained_message() {
    let n = InProcBroker::plain("cf-retkeep", "");
    let mut p = Raw::client(n.addr(), Version::V311, "rk-pub").await;
    publish_done(&mut p, publish("rk/t", b"retained", 1, Some(1), true)).await;
    publish_done(&mut p, publish("rk/t", b"transient", 1, Some(2), false)).await;
    let mut late = Raw::client(n.addr(), Version::V311, "rk-late").await;
    late.subscribe(1, &[("rk/#", 1)]).await;
    let got = before_pingresp(&mut late).await;
    assert_eq!(payloads(&got), ["retained"]);
    assert!(got[0].retain);
}

/// v5 §3.8.3.1 subscription options: No Local (MQTT-3.8.3-3: not sent back to the publishing
/// client id), Retain As Published (MQTT-3.3.1-12/-13 v5) and Retain Handling 0/1/2
/// (MQTT-3.3.1-9/-10/-11 v5); a shared subscription gets no retained messages (v5 §4.8.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_subscription_options_are_honoured() {
    let n = InProcBroker::plain("cf-subopts", "");
    let addr = n.addr();
    let rh0 = RetainHandling::SendAtSubscribe;

    // No Local
    let mut me = Raw::client(addr, Version::V5, "so-me").await;
    subscribe_opts(&mut me, 1, "so/nl", 1, (true, false, rh0), None).await;
    subscribe_opts(&mut me, 2, "so/all", 1, (false, false, rh0), None).await;
    publish_done(&mut me, publish("so/nl", b"mine", 1, Some(3), false)).await;
    publish_done(&mut me, publish("so/all", b"end", 1, Some(4), false)).await;
    assert_eq!(
        payloads(&until(&mut me, "so/all").await),
        ["end"],
        "No Local"
    );

    // Retain As Published, on an established subscription
    let mut rap = Raw::client(addr, Version::V5, "so-rap").await;
    subscribe_opts(&mut rap, 1, "so/rap", 1, (false, true, rh0), None).await;
    subscribe_opts(&mut rap, 2, "so/norap", 1, (false, false, rh0), None).await;
    let mut p = Raw::client(addr, Version::V5, "so-pub").await;
    publish_done(&mut p, publish("so/rap", b"r1", 1, Some(1), true)).await;
    publish_done(&mut p, publish("so/norap", b"r2", 1, Some(2), true)).await;
    let got = until(&mut rap, "so/norap").await;
    let flags: Vec<(String, bool)> = got.iter().map(|m| (m.topic.clone(), m.retain)).collect();
    assert_eq!(
        flags,
        [
            ("so/rap".to_string(), true),
            ("so/norap".to_string(), false)
        ],
        "Retain As Published"
    );

    // Retain Handling
    publish_done(&mut p, publish("so/rh", b"kept", 1, Some(3), true)).await;
    let mut rh = Raw::client(addr, Version::V5, "so-rh").await;
    let cases = [
        (RetainHandling::DoNotSend, 0, "2: never"),
        (RetainHandling::SendIfNew, 1, "1: new subscription"),
        (RetainHandling::SendIfNew, 0, "1: existing subscription"),
        (RetainHandling::SendAtSubscribe, 1, "0: always"),
    ];
    for (i, (h, want, what)) in cases.into_iter().enumerate() {
        // handling 2 first, on a filter used only for it, so that handling 1 then sees a new one
        let filter = if i == 0 { "so/+" } else { "so/rh" };
        subscribe_opts(&mut rh, i as u16 + 1, filter, 1, (false, false, h), None).await;
        let got = before_pingresp(&mut rh).await;
        assert_eq!(got.len(), want, "Retain Handling {what}: {got:?}");
        assert!(got
            .iter()
            .all(|m| m.retain && m.payload == "kept".as_bytes()));
    }

    // shared subscriptions get no retained messages
    let mut sh = Raw::client(addr, Version::V5, "so-shared").await;
    subscribe_opts(&mut sh, 1, "$share/g/so/rh", 1, (false, false, rh0), None).await;
    assert_eq!(
        before_pingresp(&mut sh).await,
        vec![],
        "retained sent to a shared subscription"
    );
}

/// v5 §3.8.3.1 / §4.7: No Local belongs to one subscription: when another, overlapping
/// subscription of the same client matches without No Local, the client's own message is
/// delivered through it (once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_no_local_applies_per_subscription() {
    let n = InProcBroker::plain("cf-nl-overlap", "");
    let rh0 = RetainHandling::SendAtSubscribe;
    let mut me = Raw::client(n.addr(), Version::V5, "nlo").await;
    subscribe_opts(&mut me, 1, "nlo/#", 1, (true, false, rh0), None).await;
    subscribe_opts(&mut me, 2, "nlo/x", 0, (false, false, rh0), None).await;
    publish_done(&mut me, publish("nlo/x", b"own", 1, Some(3), false)).await;
    let got = before_pingresp(&mut me).await;
    assert_eq!(
        payloads(&got),
        ["own"],
        "the nlo/x subscription (no No Local) must deliver the client's own message"
    );
}

/// v5 MQTT-3.3.4-3 / -4: a message matching several subscriptions with Subscription
/// Identifiers, sent as one copy, carries every one of those identifiers; one matching a single
/// subscription carries just its own (MQTT-3.3.4-5 v5 for separate copies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_subscription_identifiers_of_every_matching_subscription_are_sent() {
    let n = InProcBroker::plain("cf-subid", "");
    let rh0 = RetainHandling::SendAtSubscribe;
    let mut c = Raw::client(n.addr(), Version::V5, "subid").await;
    subscribe_opts(&mut c, 1, "si/+", 1, (false, false, rh0), Some(7)).await;
    subscribe_opts(&mut c, 2, "si/#", 1, (false, false, rh0), Some(9)).await;
    let mut p = Raw::client(n.addr(), Version::V5, "subid-pub").await;
    publish_done(&mut p, publish("si/a", b"both", 1, Some(1), false)).await;
    publish_done(&mut p, publish("si/a/b", b"deep", 1, Some(2), false)).await;
    let got = until(&mut c, "si/a/b").await;
    let mut ids: Vec<Vec<u32>> = Vec::new();
    for m in &got {
        let mut v = m.properties.subscription_identifiers.clone();
        v.sort();
        ids.push(v);
    }
    let delivered: Vec<(String, Vec<u32>)> = got
        .iter()
        .map(|m| m.topic.clone())
        .zip(ids.iter().cloned())
        .collect();
    // one copy per subscription would be allowed too; then each carries its own id
    let one_copy = vec![
        ("si/a".to_string(), vec![7, 9]),
        ("si/a/b".to_string(), vec![9]),
    ];
    let two_copies_ok = delivered.len() == 3
        && delivered[..2].iter().all(|(t, _)| t == "si/a")
        && ids[..2]
            .iter()
            .flatten()
            .copied()
            .collect::<std::collections::BTreeSet<u32>>()
            == [7, 9].into_iter().collect()
        && delivered[2] == ("si/a/b".to_string(), vec![9]);
    assert!(
        delivered == one_copy || two_copies_ok,
        "subscription identifiers delivered: {delivered:?}"
    );
}

/// v5 §3.3.2.3 (MQTT-3.3.2-4, -15..-20): Payload Format Indicator, Content Type, Response
/// Topic, Correlation Data and User Properties (in order) reach the subscriber unaltered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_publish_properties_reach_subscribers_unaltered() {
    let n = InProcBroker::plain("cf-props", "");
    let mut sub = Raw::client(n.addr(), Version::V5, "props-sub").await;
    sub.subscribe(1, &[("props/#", 2)]).await;
    let mut p = Raw::client(n.addr(), Version::V5, "props-pub").await;
    let mut m = publish("props/t", b"{\"ok\":true}", 2, Some(1), false);
    m.properties = PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".into()),
        response_topic: Some("reply/here".into()),
        correlation_data: Some(Bytes::from_static(b"\x01\x02\x00")),
        user_properties: vec![
            ("a".into(), "1".into()),
            ("b".into(), "2".into()),
            ("a".into(), "3".into()),
        ],
        ..Default::default()
    };
    let sent = m.properties.clone();
    publish_done(&mut p, m).await;
    let got = until(&mut sub, "props/t").await;
    assert_eq!(got[0].properties, sent);
}

// ---------------------------------------------------------------------------------------------
// Malformed input

/// MQTT-3.3.1-3: the DUP flag of a forwarded PUBLISH is set by the server for its own
/// redeliveries only, not copied from the incoming PUBLISH.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dup_flag_is_not_propagated_to_subscribers() {
    let n = InProcBroker::plain("cf-dup", "");
    let mut sub = Raw::client(n.addr(), Version::V311, "dup-sub").await;
    sub.subscribe(1, &[("dup/#", 1)]).await;
    let mut p = Raw::client(n.addr(), Version::V311, "dup-pub").await;
    publish_done(
        &mut p,
        Publish {
            dup: true,
            ..publish("dup/t", b"resent by its publisher", 1, Some(1), false)
        },
    )
    .await;
    let got = until(&mut sub, "dup/t").await;
    assert!(!got[0].dup, "DUP copied to the subscriber");
}

/// v5 §3.14.2.1: DISCONNECT with reason 0x04 (Disconnect with Will Message) closes normally but
/// keeps the will, which is then published; reason 0x00 discards it (MQTT-3.1.2-10 v5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_disconnect_with_will_message_publishes_the_will() {
    let n = InProcBroker::plain("cf-dis04", "");
    let mut watch = Raw::client(n.addr(), Version::V5, "d4-watch").await;
    watch.subscribe(1, &[("d4/#", 1)]).await;
    for (id, code) in [
        ("d4-normal", 0u8),
        ("d4-will", reason::DISCONNECT_WITH_WILL),
    ] {
        let will = Will {
            topic: format!("d4/{id}"),
            payload: Bytes::from(format!("{id} will")),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: WillProperties::default(),
        };
        let (mut c, _) = Raw::client5(n.addr(), id, true, Some(will), Default::default()).await;
        c.send(Packet::Disconnect(Disconnect {
            code,
            ..Default::default()
        }))
        .await;
        assert!(
            c.closed_within(T).await,
            "{id}: not closed after DISCONNECT"
        );
    }
    assert_eq!(
        payloads(&until(&mut watch, "d4/d4-will").await),
        ["d4-will will"]
    );
}

/// Malformed CONNECTs close the connection without a successful CONNACK: will QoS 3
/// (MQTT-3.1.2-14), will retain without the will flag (MQTT-3.1.2-15), a password without a user
/// name in 3.1.1 (MQTT-3.1.2-22), an unknown protocol name (MQTT-3.1.2-1), trailing bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_connect_packets_close() {
    let n = InProcBroker::plain("cf-badconnect", "");
    let mut trailing = connect_bytes("MQTT", 4, 0x02, 30, "trail");
    trailing[1] += 2;
    trailing.extend_from_slice(&[0, 0]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "will QoS 3",
            connect_bytes("MQTT", 4, 0x02 | 0x04 | 0x18, 30, "wq3"),
        ),
        (
            "will retain without will",
            connect_bytes("MQTT", 4, 0x22, 30, "wr"),
        ),
        (
            "password without user name",
            connect_bytes("MQTT", 4, 0x42, 30, "pw"),
        ),
        (
            "protocol name MQTX",
            connect_bytes("MQTX", 4, 0x02, 30, "name"),
        ),
        ("bytes after the last field", trailing),
    ];
    for (what, bytes) in cases {
        let mut s = tcp(n.addr()).await;
        s.write_all(&bytes).await.unwrap();
        let (got, closed) = read_to_close(&mut s, T).await;
        assert!(!is_connack_success(&got), "{what}: accepted: {got:?}");
        assert!(closed, "{what}: not closed");
    }
}

/// Malformed packets after CONNECT close the connection: PUBLISH QoS 3 (MQTT-3.3.1-4), PUBREL
/// and UNSUBSCRIBE with flags 0000 (MQTT-3.6.1-1, MQTT-3.10.1-1), SUBSCRIBE and UNSUBSCRIBE
/// without filters (MQTT-3.8.3-3, MQTT-3.10.3-2), SUBSCRIBE asking QoS 3 (MQTT-3-8.3-4), a QoS 1
/// PUBLISH with packet id 0 (MQTT-2.3.1-1), a client PUBLISH carrying a Subscription Identifier
/// (v5 MQTT-3.3.4-6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_after_connect_close() {
    let n = InProcBroker::plain("cf-badpackets", "");
    let v3: Vec<(&str, Vec<u8>)> = vec![
        (
            "PUBLISH QoS 3",
            vec![0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01],
        ),
        ("PUBREL flags 0000", vec![0x60, 0x02, 0x00, 0x01]),
        (
            "UNSUBSCRIBE flags 0000",
            vec![0xA0, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'],
        ),
        ("SUBSCRIBE without filters", vec![0x82, 0x02, 0x00, 0x01]),
        ("UNSUBSCRIBE without filters", vec![0xA2, 0x02, 0x00, 0x01]),
        (
            "SUBSCRIBE QoS 3",
            vec![0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x03],
        ),
        (
            "PUBLISH packet id 0",
            vec![0x32, 0x06, 0x00, 0x01, b'a', 0x00, 0x00, b'x'],
        ),
    ];
    for (i, (what, bytes)) in v3.into_iter().enumerate() {
        let mut c = Raw::client(n.addr(), Version::V311, &format!("bad3-{i}")).await;
        c.s.write_all(&bytes).await.unwrap();
        expect_close(&mut c, 0, &format!("3.1.1 {what}")).await;
    }
    let mut c = Raw::client(n.addr(), Version::V5, "bad5-subid").await;
    let mut m = publish("a", b"x", 0, None, false);
    m.properties.subscription_identifiers = vec![5];
    c.send(Packet::Publish(m)).await;
    expect_disconnect(
        &mut c,
        reason::PROTOCOL_ERROR,
        "v5 PUBLISH with a subscription id",
    )
    .await;
}

/// 2.2.3 (v5 1.5.5): a Remaining Length longer than 4 bytes is malformed: the connection closes
/// (v5: DISCONNECT 0x81 first, if any).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_byte_remaining_length_closes() {
    let n = InProcBroker::plain("cf-varint", "");
    for v in [Version::V311, Version::V5] {
        let mut c = Raw::client(n.addr(), v, &format!("varint-{}", v.level())).await;
        c.s.write_all(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01])
            .await
            .unwrap();
        expect_close(&mut c, reason::MALFORMED_PACKET, &format!("v{}", v.level())).await;
    }
}

/// Garbage and truncated packets close only their own connection: a subscriber connected all
/// along still gets a message published afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_truncated_packets_close_only_their_own_connection() {
    let n = InProcBroker::plain("cf-garbage", "");
    let addr = n.addr();
    let mut sub = Raw::client(addr, Version::V311, "steady").await;
    sub.subscribe(1, &[("steady/#", 1)]).await;

    // 1. not MQTT at all
    let mut s = tcp(addr).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_to_close(&mut s, T).await.1, "HTTP request not closed");
    // 2. a CONNECT cut half way, then the client leaves
    let mut s = tcp(addr).await;
    s.write_all(&connect_bytes("MQTT", 4, 0x02, 30, "half")[..7])
        .await
        .unwrap();
    drop(s);
    // 3. a CONNECT with an overlong remaining length
    let mut s = tcp(addr).await;
    s.write_all(&[0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00])
        .await
        .unwrap();
    assert!(read_to_close(&mut s, T).await.1, "bad varint not closed");
    // 4. a good session, then half a PUBLISH and gone
    let mut c = Raw::client(addr, Version::V311, "cut-short").await;
    c.s.write_all(&[0x32, 0x40, 0x00, 0x0A, b's', b't', b'e'])
        .await
        .unwrap();
    drop(c);
    // 5. a good session, then packet type 0 and random bytes
    let mut c = Raw::client(addr, Version::V5, "noise").await;
    c.s.write_all(&[0x00, 0x05, 0xDE, 0xAD, 0xBE, 0xEF, 0x00])
        .await
        .unwrap();
    assert!(c.closed_within(T).await, "packet type 0 not closed");

    let mut p = Raw::client(addr, Version::V5, "after-noise").await;
    publish_done(
        &mut p,
        publish("steady/t", b"still here", 1, Some(1), false),
    )
    .await;
    assert_eq!(payloads(&until(&mut sub, "steady/t").await), ["still here"]);
    sub.send(Packet::PingReq).await;
    assert_eq!(sub.recv(T).await, Some(Packet::PingResp));
}

/// A broker that is stopped (SIGTERM) tells v5 clients why (DISCONNECT 0x8B, "server shutting
/// down", MQTT 5 §4.13), closes 3.1.1 clients, and exits 0 soon after. On the binary: the
/// signal and the exit status are the CLI's contract.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_v5_clients_server_shutting_down() {
    let dir = TempDir::new("conf-shutdown");
    let n = BrokerProc::start(&dir.write("b.toml", &broker_config("127.0.0.1:0", "", "")));
    let addr = n.addr();
    let (mut v5, _) = Raw::client5(addr, "bye-v5", true, None, ConnectProperties::default()).await;
    let mut v4 = Raw::client(addr, Version::V311, "bye-v4").await;
    n.proc.signal("TERM");
    expect_disconnect(&mut v5, 0x8B, "v5 client at broker shutdown").await;
    assert!(
        v4.closed_within(T).await,
        "3.1.1 client not closed at shutdown"
    );
    let status = tokio::task::spawn_blocking(move || {
        let mut n = n;
        let s = n.proc.wait_exit(Duration::from_secs(10));
        (s, n)
    })
    .await
    .unwrap();
    assert!(
        status.0.is_some_and(|s| s.success()),
        "exit: {:?}\n{}",
        status.0,
        status.1.proc.logs()
    );
}
