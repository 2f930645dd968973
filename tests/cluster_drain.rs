//! The drain handshake (docs/cluster.md, "Draining a node"), on the fault rig
//! (tests/common/fault_rig.rs): `mqedge lb` (health checks every 300 ms, its own
//! `drain_timeout` 1 s) in front of three clustered `mqedge broker` nodes with `data_dir`, a QoS 1
//! publisher and nine persistent QoS 1 subscribers through the LB. node2 drains (by
//! `POST /api/drain`, or by SIGTERM): the LB shows it `draining` within two check intervals and
//! sends new clients elsewhere, node2 moves its subscribers (Session Present = 1 on another
//! node) and exits by itself once empty, and no acknowledged message is lost; also with 200 more
//! clients on node2. `-- --nocapture`
//! prints the time until empty (docs/reliability.md).

mod common;
#[path = "common/fault_load.rs"]
mod fault_load;
#[path = "common/fault_netns.rs"]
mod fault_netns;
// (the restart helpers of the rig are not used here)
#[allow(dead_code)]
#[path = "common/fault_rig.rs"]
mod fault_rig;

use std::time::{Duration, Instant};

use common::cluster_nodes::NAMES;
use common::*;
use fault_rig::*;

/// The rig's `[health] interval`.
const INTERVAL: Duration = Duration::from_millis(300);

/// Drains node2 with `start` (the POST or the signal), checks the handshake and the move, and
/// counts. `rate`: node2's `drain_rate`.
async fn drain_node2(name: &'static str, tag: &str, rate: u32, start: fn(&mut Rig)) {
    let extra = format!("drain_rate = {rate}\n");
    let mut rig = Rig::start_with(name, tag, 0, &extra).await;
    let before: Vec<usize> = rig.on_node(1).map(|s| s.snapshot().connects).collect();
    let t0 = Instant::now();
    start(&mut rig);
    // the LB acknowledges: draining (by the broker's word) within two check intervals
    let admin = rig.lb_admin;
    let seen = blocking(|| wait_backend_state(admin, "node2", "draining", 4 * INTERVAL));
    println!("drain: {name}: the LB shows node2 draining after {seen:?}");
    assert!(
        seen <= 2 * INTERVAL + Duration::from_millis(150),
        "{name}: draining seen only after {seen:?}"
    );
    assert_eq!(backend_field(admin, "node2", "drain_cause"), "backend");
    if rate < 10 {
        // (slow enough to still be there) a client that reaches node2 directly is told to go:
        // v5 CONNACK 0x9C Use another server, 3.1.1 return code 3 (server unavailable)
        use mqedge_protocol::{reason, Version};
        let mut v5 = Raw::new(tcp(rig.cl.addr(1)).await, Version::V5);
        let ack = v5.connect(&format!("{tag}-direct5"), true, 30).await;
        assert_eq!(ack.code, reason::USE_ANOTHER_SERVER, "{name}: v5 {ack:?}");
        let mut v4 = Raw::new(tcp(rig.cl.addr(1)).await, Version::V311);
        let ack = v4.connect(&format!("{tag}-direct4"), true, 30).await;
        assert_eq!(
            ack.code,
            reason::from_v3_return_code(3).unwrap(),
            "{name}: 3.1.1 {ack:?}"
        );
    }
    // a new client whose id hashes to node2 lands elsewhere
    let id = id_for("node2", &NAMES, &format!("{tag}-new"));
    let lb_mqtt = rig.lb.addr("mqtt");
    let _fresh = Raw::client(lb_mqtt, mqedge_protocol::Version::V311, &id).await;
    let holder: Vec<usize> = (0..3).filter(|&i| rig.cl.client(i, &id).0 == 200).collect();
    assert!(
        !holder.is_empty() && !holder.contains(&1),
        "{name}: a new client went to {holder:?}"
    );
    // node2 moves its clients and exits by itself once empty
    let progress = get_json(rig.cl.admin(1), "/api/drain");
    assert!(
        ["draining", "moving", "done"].contains(&progress["state"].as_str().unwrap_or("")),
        "{progress}"
    );
    let (empty, exited, handed) = {
        let p = rig.proc(1);
        let empty = blocking(|| p.wait_log("drain: empty", Duration::from_secs(30)));
        let exited = blocking(|| p.wait_exit(Duration::from_secs(15)).is_some());
        // (it moved them only once the LB had acknowledged)
        p.wait_log("drain: acknowledged by the LB", Duration::from_secs(1));
        (
            empty,
            exited,
            p.wait_log("sessions handed over", Duration::from_secs(1)),
        )
    };
    let took = t0.elapsed();
    assert!(exited, "{name}: node2 did not exit\n{}", rig.cl.logs());
    println!("drain: {name}: node2 {empty} | {handed} | exited {took:?} after the drain began");
    rig.cl.nodes[1] = None;
    // its subscribers resumed their sessions on the other nodes
    let node2_subs: Vec<usize> = (0..rig.subs.len())
        .filter(|&i| rig.sub_node[i] == 1)
        .collect();
    let moved = eventually(Duration::from_secs(10), || {
        node2_subs.iter().zip(&before).all(|(&i, &c)| {
            let s = &rig.subs[i];
            s.snapshot().connects > c && (0..3).any(|n| n != 1 && rig.cl.client(n, &s.id).0 == 200)
        })
    })
    .await;
    assert!(
        moved,
        "{name}: node2's subscribers not resumed elsewhere\n{}",
        rig.cl.logs()
    );
    let lb_logs = rig.lb.proc.logs();
    assert!(
        !lb_logs.contains("drain_timeout reached"),
        "{name}: the LB closed node2's connections itself\n{lb_logs}"
    );
    let t = rig.finish(owed_everything).await;
    for s in t.subs.iter() {
        assert_eq!(s.sessions_lost, 0, "{name}: {} lost its session", s.id);
    }
    rig.assert_none_lost(&t);
    println!("drain: {name}: time until empty {took:?} (drain_rate {rate})");
}

fn post_drain(rig: &mut Rig) {
    let admin = rig.cl.admin(1);
    // a state-changing request: refused without the admin header
    let host = admin.to_string();
    let (code, _) = http_request("POST", admin, "/api/drain", &[("Host", host.as_str())]);
    assert_eq!(code, 403, "POST /api/drain without x-mqedge-admin");
    let (code, body) = http("POST", admin, "/api/drain");
    assert_eq!(code, 202, "POST /api/drain: {body}");
}

/// Without `[cluster]` there is nowhere to move the clients: `POST /api/drain` says so (409),
/// and the node goes on serving.
#[test]
fn d0_a_single_node_does_not_drain() {
    let dir = TempDir::new("drn-single");
    let n = BrokerProc::start(&dir.write("b.toml", &broker_config("127.0.0.1:0", "", "")));
    let (code, body) = http("POST", n.admin(), "/api/drain");
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("no [cluster]"), "{body}");
    assert_eq!(get_json(n.admin(), "/api/drain")["state"], "serving");
    assert_eq!(http("GET", n.admin(), "/healthz").0, 200);
}

fn sigterm(rig: &mut Rig) {
    rig.proc(1).signal("TERM");
}

/// `POST /api/drain`, moving at 2 clients per second: node2's three subscribers take over a
/// second, longer than the LB's own `drain_timeout`, which must not close them.
#[test]
fn d1_post_api_drain() {
    scenario("drain by POST /api/drain", || {
        drain_node2("POST /api/drain", "drn-api", 2, post_drain)
    });
}

/// SIGTERM takes the same path, at the default rate.
#[test]
fn d2_sigterm_drains() {
    scenario("drain by SIGTERM", || {
        drain_node2("SIGTERM", "drn-term", 500, sigterm)
    });
}

/// How many more clients [`d3_sigterm_with_many_clients`] puts on node2.
const MANY: usize = 200;

/// SIGTERM of node2 with [`MANY`] more persistent MQTT 5 clients on it (idle, through the LB),
/// at the default rate: each is told DISCONNECT 0x9C and resumes its session through the LB on
/// another node (Session Present = 1); node2 exits once they are gone.
#[test]
fn d3_sigterm_with_many_clients() {
    scenario("drain of 200 more clients", || async {
        use mqedge_protocol::{ConnectProperties, Packet};
        let tag = "drn-many";
        let mut rig = Rig::start_with("SIGTERM with 200 more clients", tag, 0, "").await;
        let lb_mqtt = rig.lb.addr("mqtt");
        let props = || ConnectProperties {
            session_expiry_interval: Some(3600),
            ..Default::default()
        };
        let mut clients = Vec::new();
        for k in 0..MANY {
            let id = id_for("node2", &NAMES, &format!("{tag}-c{k}-"));
            let (c, _) = Raw::client5(lb_mqtt, &id, false, None, props()).await;
            clients.push((id, c));
        }
        assert_eq!(rig.cl.client(1, &clients[0].0).0, 200, "not on node2");
        let t0 = Instant::now();
        rig.proc(1).signal("TERM");
        let mut ids = Vec::new();
        for (id, mut c) in clients.drain(..) {
            let told = loop {
                match c.recv(Duration::from_secs(20)).await {
                    Some(Packet::Disconnect(d)) => break Some(d.code),
                    Some(_) => continue,
                    None => break None,
                }
            };
            assert_eq!(told, Some(0x9C), "{id}: not told to use another server");
            // and closes, as a client does (the LB counts a connection until both sides close)
            drop(c);
            ids.push(id);
        }
        let told = t0.elapsed();
        let (exited, empty) = {
            let p = rig.proc(1);
            let exited = blocking(|| p.wait_exit(Duration::from_secs(30)).is_some());
            (exited, p.wait_log("drain: empty", Duration::from_secs(1)))
        };
        let took = t0.elapsed();
        assert!(exited, "node2 did not exit\n{}", rig.cl.logs());
        rig.cl.nodes[1] = None;
        let mut resumed = 0;
        for id in ids {
            let (_c, ack) = Raw::client5(lb_mqtt, &id, false, None, props()).await;
            resumed += usize::from(ack.session_present);
        }
        println!(
            "drain: SIGTERM with {MANY} more clients: all told after {told:?}, exited after {took:?}; {empty}; {resumed} of {MANY} resumed their session"
        );
        assert_eq!(resumed, MANY, "sessions not found after the drain");
        let t = rig.finish(owed_everything).await;
        rig.assert_none_lost(&t);
    });
}
