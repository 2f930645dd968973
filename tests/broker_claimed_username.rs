//! A username a client merely claims is not an identity. With anonymous clients allowed and no
//! password file (what `mqedge up` runs), a plain client that says it is `alice` gets neither
//! alice's `user` block nor `%u` patterns for `alice`: only what everyone gets. With
//! `[auth] trust_claimed_usernames = true` the operator opts in and it does. A client whose
//! certificate CN `alice` the LB verified (PROXY v2 TLV, `use_cn_as_username`) gets both either
//! way. Over real sockets: broker and LB in-process, MQTT 3.1.1 SUBACK codes as the evidence.

mod common;

use common::*;
use mqedge_protocol::Version;

/// Everyone may read `public/#`; alice has her own subtree and a `%u` pattern.
const ACL: &str = "topic read public/#\n\
                   user alice\n\
                   topic readwrite alice/private/#\n\
                   pattern readwrite users/%u/#\n";

/// What is asked for: alice's block, alice's pattern, the public board.
const FILTERS: [(&str, u8); 3] = [
    ("alice/private/#", 1),
    ("users/alice/inbox", 1),
    ("public/news", 0),
];
/// The SUBACK alice gets (all granted).
const AS_ALICE: [u8; 3] = [1, 1, 0];
/// The SUBACK an anonymous client gets (only the public board).
const AS_ANYONE: [u8; 3] = [0x80, 0x80, 0];

/// A broker with a plain listener "mqtt" (anonymous allowed, no password file) and a listener
/// "from-lb" taking the certificate CN from the LB's PROXY v2 header; `auth_extra` goes into
/// `[auth]`.
fn start_broker(dir: &TempDir, auth_extra: &str) -> InProcBroker {
    dir.write("acl", ACL);
    let cfg = dir.write(
        "b.toml",
        &format!(
            r#"[node]
name = "node1"
admin = "127.0.0.1:0"

[[listener]]
name = "mqtt"
bind = "127.0.0.1:0"

[[listener]]
name = "from-lb"
bind = "127.0.0.1:0"
proxy_protocol = "required"
trusted_proxies = ["127.0.0.1/32"]
use_cn_as_username = true

[auth]
allow_anonymous = true
acl_file = "acl"
{auth_extra}
"#
        ),
    );
    InProcBroker::start(&cfg)
}

/// A plain client claiming `user` (any password): its SUBACK codes for [`FILTERS`], and the
/// username the broker's admin API shows for it.
async fn claimed(b: &InProcBroker, id: &str, user: &str) -> (Vec<u8>, serde_json::Value) {
    let mut c = Raw::new(tcp(b.addr_of("mqtt")).await, Version::V311);
    let ack = c
        .connect_with(
            id,
            true,
            30,
            None,
            Some((user, "anything")),
            Default::default(),
        )
        .await;
    assert_eq!(ack.code, 0, "{id}: CONNACK");
    let codes = c.subscribe(1, &FILTERS).await;
    let v = get_json(b.admin(), &format!("/api/clients/{id}"));
    (codes, v["username"].clone())
}

/// A TLS client with certificate `cn` through an LB in front of the broker's "from-lb": its
/// SUBACK codes for [`FILTERS`].
async fn through_lb(dir: &TempDir, pki: &Pki, b: &InProcBroker, cn: &str) -> Vec<u8> {
    let lb_cfg = dir.write(
        "lb.toml",
        &lb_config(
            pki,
            "required",
            "client_id",
            &[("node1", b.addr_of("from-lb"), "v2")],
            "",
        ),
    );
    let lb = tokio::task::block_in_place(|| InProcLb::start(&lb_cfg));
    let tls = tls_from(None, lb.addr("mqtts"), pki.client_config(Some(cn)))
        .await
        .unwrap();
    let mut c = Raw::new(tls, Version::V311);
    assert_eq!(c.connect("cert-alice", true, 30).await.code, 0, "CONNACK");
    c.subscribe(1, &FILTERS).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_username_gets_nothing_a_verified_one_gets() {
    let dir = TempDir::new("claimed");
    let pki = Pki::new(dir.path(), &["alice"]);
    let b = start_broker(&dir, "");
    let (codes, shown) = claimed(&b, "says-alice", "alice").await;
    assert_eq!(codes, AS_ANYONE, "a claimed username got alice's rights");
    assert!(
        shown.is_null(),
        "a claimed username shown as the user: {shown}"
    );
    // the certificate CN alice, verified by the LB, is alice
    assert_eq!(through_lb(&dir, &pki, &b, "alice").await, AS_ALICE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_claimed_usernames_lets_the_operator_opt_in() {
    let dir = TempDir::new("claimed-trust");
    let pki = Pki::new(dir.path(), &["alice"]);
    let b = start_broker(&dir, "trust_claimed_usernames = true");
    let (codes, shown) = claimed(&b, "says-alice", "alice").await;
    assert_eq!(codes, AS_ALICE);
    assert_eq!(shown, "alice");
    assert_eq!(through_lb(&dir, &pki, &b, "alice").await, AS_ALICE);
}
