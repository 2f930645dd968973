//! The ACL on SUBSCRIBE and on delivery, over real sockets, MQTT 3.1.1 and 5.0: wildcard
//! subscriptions next to `deny` lines are granted (as Mosquitto does), and the denied topics are
//! withheld message by message, retained messages sent at subscribe time included; a filter
//! whose every deliverable topic is denied is refused (v5 `0x87`, v3.1.1 `0x80`).

mod common;

use std::time::Duration;

use common::*;
use mqedge_protocol::{Packet, Version};
use tokio::net::TcpStream;

/// Everyone may read and write everything; the user `sub` is denied two subtrees, so the
/// anonymous publisher may still publish there and the broker has something to withhold.
const ACL: &str = "topic readwrite #\n\
                   user sub\n\
                   topic deny test/nosubscribe\n\
                   topic deny secret/#\n";

/// Every test here finishes in a few seconds; this bounds a hang.
const TEST_LIMIT: Duration = Duration::from_secs(60);

/// Time to wait for a message that must not arrive.
const QUIET: Duration = Duration::from_millis(400);

fn start_broker(dir: &TempDir) -> InProcBroker {
    broker_with_acl(dir, ACL)
}

async fn client(b: &InProcBroker, v: Version, id: &str, user: Option<&str>) -> Raw<TcpStream> {
    let mut c = Raw::new(tcp(b.addr()).await, v);
    let ack = c
        .connect_with(
            id,
            true,
            30,
            None,
            user.map(|u| (u, "any")),
            Default::default(),
        )
        .await;
    assert_eq!(ack.code, 0, "{id}: CONNACK");
    c
}

/// Publishes at QoS 1 and waits for the PUBACK, so the broker has routed (and, with `retain`,
/// stored) the message before the caller goes on.
async fn publish_acked(
    c: &mut Raw<TcpStream>,
    topic: &str,
    payload: &[u8],
    retain: bool,
    pid: u16,
) {
    c.publish(topic, payload, 1, Some(pid), retain).await;
    loop {
        match c.recv(Duration::from_secs(5)).await {
            Some(Packet::PubAck(a)) if a.packet_id == pid => {
                assert_eq!(a.code, 0, "PUBACK for {topic}");
                return;
            }
            Some(_) => continue,
            None => panic!("no PUBACK for {topic}"),
        }
    }
}

fn topics(got: &[mqedge_protocol::Publish]) -> Vec<String> {
    let mut t: Vec<String> = got.iter().map(|p| p.topic.clone()).collect();
    t.sort();
    t
}

async fn wildcards_are_granted_and_denied_topics_filtered(v: Version) {
    let dir = TempDir::new(&format!("acl-wild-{v:?}"));
    let b = start_broker(&dir);
    let refused = if v.is_v5() { 0x87 } else { 0x80 };

    // Retained first, so the subscriptions below get them at subscribe time.
    let mut publisher = client(&b, v, &format!("pub-{v:?}"), None).await;
    publish_acked(&mut publisher, "test/nosubscribe", b"r-denied", true, 1).await;
    publish_acked(&mut publisher, "test/other", b"r-ok", true, 2).await;
    publish_acked(&mut publisher, "secret/key", b"r-secret", true, 3).await;

    let mut sub = client(&b, v, &format!("sub-{v:?}"), Some("sub")).await;
    let codes = sub.subscribe(1, &[("#", 1)]).await;
    assert_eq!(codes, vec![1], "SUBSCRIBE # next to a deny");
    let retained = sub.collect(QUIET).await;
    assert_eq!(
        topics(&retained),
        vec!["test/other".to_string()],
        "retained messages sent on SUBSCRIBE # must skip the denied topics"
    );
    assert!(retained.iter().all(|p| p.retain), "{retained:?}");

    let codes = sub
        .subscribe(
            2,
            &[
                ("+/+", 0),
                ("+/nosubscribe", 1),
                ("test/nosubscribe", 1),
                ("secret/+", 1),
                ("secret/#", 1),
                ("$share/g/#", 1),
            ],
        )
        .await;
    assert_eq!(
        codes,
        vec![0, 1, refused, refused, refused, 1],
        "+/+, +/nosubscribe granted; test/nosubscribe and filters inside secret/# refused"
    );
    // The retained messages that `+/+` and `+/nosubscribe` match: again only test/other.
    let retained = sub.collect(QUIET).await;
    assert_eq!(topics(&retained), vec!["test/other".to_string()]);

    // A second subscriber without the denies proves the messages are routed at all.
    let mut other = client(&b, v, &format!("other-{v:?}"), None).await;
    assert_eq!(other.subscribe(1, &[("#", 1)]).await, vec![1]);
    other.collect(QUIET).await; // the three retained messages

    publish_acked(&mut publisher, "test/nosubscribe", b"live-denied", false, 4).await;
    publish_acked(&mut publisher, "secret/key", b"live-secret", false, 5).await;
    publish_acked(&mut publisher, "test/other", b"live-ok", false, 6).await;

    let got = sub.collect(QUIET).await;
    assert!(
        got.iter().all(|p| &p.payload[..] == b"live-ok"),
        "a denied topic reached `sub`: {got:?}"
    );
    // `#`, `+/+` and the shared `#` all match test/other (3.1.1 has no shared subscriptions
    // in the protocol, but the broker serves `$share` to both versions).
    assert!(!got.is_empty(), "test/other did not arrive");
    let got = other.collect(QUIET).await;
    assert_eq!(
        topics(&got),
        vec!["secret/key", "test/nosubscribe", "test/other"],
        "the unrestricted subscriber gets everything"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_wildcards_are_granted_and_denied_topics_filtered() {
    tokio::time::timeout(
        TEST_LIMIT,
        wildcards_are_granted_and_denied_topics_filtered(Version::V5),
    )
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_wildcards_are_granted_and_denied_topics_filtered() {
    tokio::time::timeout(
        TEST_LIMIT,
        wildcards_are_granted_and_denied_topics_filtered(Version::V311),
    )
    .await
    .expect("test timed out");
}
