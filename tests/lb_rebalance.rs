//! Scale-out rebalance (docs/operations.md, "Rebalance"): three clustered `mqedge broker` nodes
//! (binaries, `data_dir`) behind `mqedge lb` with `[[backend]] admin` feeds, node3 drained at
//! the LB while the clients connect (the cluster "before node3 joined"): 60 idle persistent
//! MQTT 5 clients plus a QoS 1 publisher and six persistent QoS 1 subscribers (rumqttc, 3.1.1)
//! under load. node3 is made ready and `POST /api/rebalance` moves exactly the clients whose
//! hash home is now node3, at `rebalance_rate`: each gets DISCONNECT 0x9C, reconnects with
//! Session Present = 1 on node3; the others stay where they are; no acknowledged message is
//! lost. `-- --nocapture` prints the figures (docs/reliability.md).

mod common;
#[path = "common/fault_load.rs"]
mod fault_load;
#[path = "common/rebalance.rs"]
mod rebalance;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::cluster_nodes::*;
use common::*;
use fault_load::Publisher;
use rebalance::*;
use tokio::sync::watch;

/// `[balance] rebalance_rate` of the LB.
const RATE: u32 = 10;
/// Idle persistent MQTT 5 clients.
const CLIENTS: usize = 60;
/// The whole scenario's bound (at the default size).
const LIMIT: Duration = Duration::from_secs(110);

fn lb_config(cl: &Cluster, mode: &str, rate: u32) -> String {
    let mut s = format!(
        "[lb]\nname = \"rbl\"\nadmin = \"127.0.0.1:0\"\nconnect_timeout = \"2s\"\ndrain_timeout = \"1s\"\n\n\
         [[listener]]\nname = \"mqtt\"\nbind = \"127.0.0.1:0\"\n\n\
         [balance]\nstrategy = \"client_id\"\nfallback = \"source_ip\"\nretries = 2\n\
         rebalance = \"{mode}\"\nrebalance_rate = {rate}\n\n\
         [health]\nkind = \"mqtt\"\ninterval = \"300ms\"\ntimeout = \"500ms\"\nfall = 2\nrise = 1\n\n\
         [placement]\ninterval = \"300ms\"\ntimeout = \"2s\"\n"
    );
    for (i, name) in NAMES.iter().enumerate() {
        s.push_str(&format!(
            "\n[[backend]]\nname = \"{name}\"\naddr = \"{}\"\nadmin = \"{}\"\n",
            cl.addr(i),
            cl.admin(i)
        ));
    }
    s
}

/// `POST /api/sessions/move` on a broker's admin with `body` (and the admin header when
/// `header`): the status line's code.
fn post_move(admin: SocketAddr, body: &str, header: bool) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let extra = if header { "X-Mqedge-Admin: 1\r\n" } else { "" };
    let req = format!(
        "POST /api/sessions/move HTTP/1.1\r\nHost: {admin}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

async fn scale_out() {
    let tag = "rbl";
    let cl = Cluster::start_custom(tag, true, "prefer_local", Run::Binary, 5000, "").await;
    let dir = TempDir::new("rbl-lb");
    let (clients, rate) = scale(CLIENTS, RATE);
    let lb = Lb::start(&dir.write("lb.toml", &lb_config(&cl, "manual", rate)));
    let (lb_mqtt, admin) = (lb.addr("mqtt"), lb.admin());
    tokio::task::block_in_place(|| {
        for n in NAMES {
            wait_backend_state(admin, n, "up", Duration::from_secs(10));
        }
        // node3 has not joined yet, as the LB sees it: no new client goes there
        assert_eq!(
            http("POST", admin, "/api/backends/node3/drain").0,
            200,
            "drain node3"
        );
        wait_backend_state(admin, "node3", "draining", Duration::from_secs(5));
    });
    // nothing to move yet
    let (code, body) = http("POST", admin, "/api/rebalance");
    assert_eq!(code, 202, "{body}");
    let idle = eventually(Duration::from_secs(5), || {
        get_json(admin, "/api/rebalance")["state"] == "done"
    })
    .await;
    assert!(idle, "{}", get_json(admin, "/api/rebalance"));
    assert_eq!(get_json(admin, "/api/rebalance")["planned"], 0);

    // the load: a publisher and six subscribers, three of them (and the publisher) at home on
    // node3 once it joins
    let subs = subscribers(lb_mqtt, tag, &NAMES).await;
    let pub_id = id_for("node3", &NAMES, &format!("{tag}-pub"));
    for (i, me) in ["node1", "node2"].iter().enumerate() {
        let peer = if *me == "node1" { "node2" } else { "node1" };
        cl.wait_routes(i, peer, ">= 1", |r| r >= 1).await;
    }
    let publisher = Publisher::start(lb_mqtt, &pub_id, 100, 8);
    let acked = eventually(Duration::from_secs(10), || publisher.acked() >= 20).await;
    assert!(acked, "no PUBACKs\n{}", cl.logs());

    // the idle clients, on node1 and node2
    let (stop, stop_rx) = watch::channel(false);
    let idle = idle_clients(&[lb_mqtt], tag, clients, &stop_rx).await;
    for (id, _) in &idle {
        assert_eq!(cl.client(2, id).0, 404, "{id} is on node3 already");
    }
    let mut expected: Vec<String> = idle
        .iter()
        .map(|(id, _)| id.clone())
        .chain(subs.iter().map(|s| s.id.clone()))
        .chain([pub_id.clone()])
        .filter(|id| hashed_backend(id, &NAMES) == "node3")
        .collect();
    expected.sort();
    let moved_idle: Vec<String> = idle
        .iter()
        .map(|(id, _)| id.clone())
        .filter(|id| expected.contains(id))
        .collect();
    assert!(
        moved_idle.len() >= 10,
        "too few to mean anything: {expected:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    // node3 joins; the rebalance moves its share
    tokio::task::block_in_place(|| {
        assert_eq!(http("POST", admin, "/api/backends/node3/ready").0, 200);
        wait_backend_state(admin, "node3", "up", Duration::from_secs(5));
    });
    let t0 = Instant::now();
    let (code, body) = http("POST", admin, "/api/rebalance");
    assert_eq!(code, 202, "{body}");
    let started: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        started["planned"],
        expected.len(),
        "{started} vs {expected:?}"
    );
    assert_eq!(started["rate"], rate, "{started}");
    // a second one waits for the first
    assert_eq!(http("POST", admin, "/api/rebalance").0, 409);
    let done = eventually(Duration::from_secs(30), || {
        get_json(admin, "/api/rebalance")["state"] == "done"
    })
    .await;
    let took = t0.elapsed();
    let progress = get_json(admin, "/api/rebalance");
    assert!(done, "{progress}\n{}", tail(&lb.proc.logs(), 40));
    let lines = |l: String| -> String {
        l.lines()
            .filter(|l| l.contains("rebalance"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        progress["failed"],
        0,
        "{progress}\n{}\n{}",
        lines(lb.proc.logs()),
        lines(cl.logs())
    );
    assert_eq!(progress["moved"], expected.len(), "{progress}");
    assert_eq!(
        lb_metric(admin, "mqedge_lb_rebalance_moved_total"),
        expected.len() as f64
    );
    assert_eq!(lb_metric(admin, "mqedge_lb_rebalance_pending"), 0.0);

    // the moved idle clients were told 0x9C, no faster than the rate; the others nothing
    let told = told_to_go(idle, &expected, stop, |id| {
        let home = hashed_backend(id, &NAMES);
        connected_on(cl.admin(NAMES.iter().position(|n| *n == home).unwrap()), id)
    })
    .await;
    let told: Vec<Instant> = told.into_iter().map(|(_, at)| at).collect();
    let peak = max_per_second(&told);
    let bound = rate_bound(rate);
    assert!(
        peak <= bound,
        "{peak} clients told to go within one second, rate {rate} (at most {bound})"
    );
    // each comes back through the LB to node3, where its session already is
    let resumed = come_back(
        |_| lb_mqtt,
        &moved_idle,
        |_| cl.admin(2),
        &(0..3).map(|i| cl.admin(i)).collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(resumed, moved_idle.len(), "sessions not found on node3");
    // the moved subscribers resumed on node3 too
    let on_node3 = eventually(Duration::from_secs(10), || {
        subs.iter()
            .filter(|s| expected.contains(&s.id))
            .all(|s| cl.client(2, &s.id).1["connected"] == true)
    })
    .await;
    assert!(on_node3, "moved subscribers not on node3\n{}", cl.logs());

    // and nothing acknowledged was lost
    let (t, sessions_lost) = finish(publisher, subs).await;
    println!(
        "rebalance: {} of {} clients moved (the moved share: home node3) at rebalance_rate {rate}/s in {took:?}; peak {peak} told to go in one second; {resumed} of {} idle resumed their session on node3 | acknowledged {} | lost {} | duplicates {} | sessions lost {sessions_lost}",
        expected.len(),
        clients + 7,
        moved_idle.len(),
        t.acked,
        t.lost(),
        t.duplicates(),
    );
    assert!(t.acked > 200, "too few acknowledged: {}", t.acked);
    assert_eq!(t.lost(), 0, "lost\n{}\n{}", t.details(), cl.logs());
    assert_eq!(sessions_lost, 0, "{}", t.details());
}

/// See the module: 2 → 3 nodes, the moved share only, sessions first, at the rate.
#[test]
fn r1_scale_out_moves_the_moved_share_sessions_first_at_the_rate() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let limit = LIMIT + Duration::from_millis(20 * scale(CLIENTS, RATE).0 as u64);
        if tokio::time::timeout(limit, scale_out()).await.is_err() {
            panic!("scale-out rebalance not done within {limit:?}");
        }
    });
}

/// `[balance] rebalance = "auto"`: node3 made ready at the LB starts a rebalance by itself
/// (after `AUTO_SETTLE`, 3 s), which moves exactly the idle clients at home on node3. And the
/// broker's `POST /api/sessions/move` refuses what it must.
async fn auto_after_ready() {
    let tag = "rba";
    let cl = Cluster::start_custom(tag, false, "prefer_local", Run::Binary, 5000, "").await;
    let dir = TempDir::new("rba-lb");
    let lb = Lb::start(&dir.write("lb.toml", &lb_config(&cl, "auto", RATE)));
    let (lb_mqtt, admin) = (lb.addr("mqtt"), lb.admin());
    tokio::task::block_in_place(|| {
        for n in NAMES {
            wait_backend_state(admin, n, "up", Duration::from_secs(10));
        }
        assert_eq!(http("POST", admin, "/api/backends/node3/drain").0, 200);
        wait_backend_state(admin, "node3", "draining", Duration::from_secs(5));
    });
    // the broker's endpoint: behind the admin guard; only to a live peer that takes clients
    let to = |n: &str| format!("{{\"to\": \"{n}\", \"client_ids\": [\"{tag}-x\"]}}");
    assert_eq!(post_move(cl.admin(0), &to("node3"), false), 403);
    assert_eq!(post_move(cl.admin(0), &to("nowhere"), true), 409);
    assert_eq!(post_move(cl.admin(0), &to("node1"), true), 409, "to itself");
    assert_eq!(post_move(cl.admin(0), &to("node3"), true), 200);
    let (stop, stop_rx) = watch::channel(false);
    let idle = idle_clients(&[lb_mqtt], tag, 30, &stop_rx).await;
    let expected: Vec<String> = idle
        .iter()
        .map(|(id, _)| id.clone())
        .filter(|id| hashed_backend(id, &NAMES) == "node3")
        .collect();
    assert!(expected.len() >= 5, "{expected:?}");
    tokio::task::block_in_place(|| {
        assert_eq!(http("POST", admin, "/api/backends/node3/ready").0, 200);
    });
    let ran = eventually(Duration::from_secs(20), || {
        // (the LB's own start scheduled one too: the moves may fall in either run)
        let p = get_json(admin, "/api/rebalance");
        p["cause"] == "auto"
            && p["state"] == "done"
            && lb_metric(admin, "mqedge_lb_rebalance_moved_total") == expected.len() as f64
    })
    .await;
    let p = get_json(admin, "/api/rebalance");
    assert!(ran, "{p}\n{}", tail(&lb.proc.logs(), 30));
    assert_eq!(lb_metric(admin, "mqedge_lb_rebalance_failed_total"), 0.0);
    for (id, task) in idle {
        if !expected.contains(&id) {
            continue;
        }
        let end = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap_or_else(|_| panic!("{id}: never told to go"))
            .unwrap();
        assert_eq!(end.map(|e| e.0), Some(0x9C), "{id}");
        let (_c, present) = idle_client(lb_mqtt, &id).await;
        assert!(present, "{id}: no session on its return");
        let on3 = eventually(Duration::from_secs(3), || {
            cl.client(2, &id).1["connected"] == true
        })
        .await;
        assert!(
            on3,
            "{id} is not on node3: {:?} {}\n{}",
            (0..3).map(|i| cl.client(i, &id)).collect::<Vec<_>>(),
            get_json(admin, &format!("/api/placement/{id}")),
            tail(&lb.proc.logs(), 20)
        );
    }
    let _ = stop.send(true);
    println!(
        "rebalance: auto after node3 was made ready: {} of 30 moved",
        expected.len()
    );
}

#[test]
fn r2_auto_rebalance_when_a_backend_comes_up() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if tokio::time::timeout(Duration::from_secs(60), auto_after_ready())
            .await
            .is_err()
        {
            panic!("auto rebalance not done within 60 s");
        }
    });
}

/// `[balance] rebalance_rate = 0` is a config error with its line.
#[test]
fn r0_a_zero_rate_is_refused() {
    let dir = TempDir::new("rbl-cfg");
    let p = dir.write(
        "lb.toml",
        "[[listener]]\nname = \"mqtt\"\nbind = \"127.0.0.1:0\"\n\n[balance]\nrebalance_rate = 0\n\n\
         [[backend]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n",
    );
    let err = mqedge_lb::config::Config::load(&p).unwrap_err().to_string();
    assert!(
        err.contains("lb.toml:6") && err.contains("rebalance_rate must be at least 1"),
        "{err}"
    );
}
