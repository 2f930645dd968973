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

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::cluster_nodes::*;
use common::*;
use fault_load::{Publisher, Received, Subscriber, Tally};
use mqedge_protocol::{ConnectProperties, Packet, Version};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// `[balance] rebalance_rate` of the LB.
const RATE: u32 = 10;
/// Idle persistent MQTT 5 clients.
const CLIENTS: usize = 60;
/// The whole scenario's bound (at the default size).
const LIMIT: Duration = Duration::from_secs(110);

/// The scale-out scenario's size and rate: the defaults, or `MQEDGE_REBALANCE_CLIENTS` and
/// `MQEDGE_REBALANCE_RATE` for a larger run (docs/reliability.md: 9,000 sessions).
fn scale() -> (usize, u32) {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let clients = env("MQEDGE_REBALANCE_CLIENTS").map_or(CLIENTS, |n| n as usize);
    let rate = env("MQEDGE_REBALANCE_RATE").map_or(RATE, |r| r.max(1) as u32);
    (clients, rate)
}

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

fn props() -> ConnectProperties {
    ConnectProperties {
        session_expiry_interval: Some(3600),
        ..Default::default()
    }
}

/// A persistent MQTT 5 client (keep-alive off: it idles through the whole scenario).
async fn idle_client(lb: SocketAddr, id: &str) -> (Raw<tokio::net::TcpStream>, bool) {
    let mut c = Raw::new(tcp(lb).await, Version::V5);
    let ack = c.connect_with(id, false, 0, None, None, props()).await;
    assert_eq!(ack.code, 0, "{id}: CONNACK {ack:?}");
    (c, ack.session_present)
}

/// Waits (until `stop`) for the server to end the connection: the DISCONNECT reason (0xFF for
/// a close without one) and when.
fn watch_end(
    mut c: Raw<tokio::net::TcpStream>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<Option<(u8, Instant)>> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.changed() => return None,
                p = c.recv(Duration::from_secs(90)) => match p {
                    Some(Packet::Disconnect(d)) => return Some((d.code, Instant::now())),
                    Some(_) => continue,
                    None => return Some((0xFF, Instant::now())),
                },
            }
        }
    })
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

/// The most instants of `ts` within any one second.
fn max_per_second(ts: &[Instant]) -> usize {
    let mut ts = ts.to_vec();
    ts.sort();
    (0..ts.len())
        .map(|i| {
            ts[i..]
                .iter()
                .take_while(|t| t.duration_since(ts[i]) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0)
}

fn lb_metric(admin: SocketAddr, name: &str) -> f64 {
    metric(
        &parse_prometheus(&http("GET", admin, "/metrics").1),
        name,
        &[],
    )
}

async fn scale_out() {
    let tag = "rbl";
    let cl = Cluster::start_custom(tag, true, "prefer_local", Run::Binary, 5000, "").await;
    let dir = TempDir::new("rbl-lb");
    let (clients, rate) = scale();
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
    let mut subs = Vec::new();
    for (k, node) in NAMES.iter().enumerate() {
        for j in 0..2 {
            subs.push(Subscriber::start(
                lb_mqtt,
                &id_for(node, &NAMES, &format!("{tag}-s{k}{j}")),
            ));
        }
    }
    let pub_id = id_for("node3", &NAMES, &format!("{tag}-pub"));
    let ok = eventually(Duration::from_secs(15), || {
        subs.iter().all(|s| s.subscribed())
    })
    .await;
    assert!(ok, "subscribers not subscribed\n{}", cl.logs());
    for (i, me) in ["node1", "node2"].iter().enumerate() {
        let peer = if *me == "node1" { "node2" } else { "node1" };
        cl.wait_routes(i, peer, ">= 1", |r| r >= 1).await;
    }
    let publisher = Publisher::start(lb_mqtt, &pub_id, 100, 8);
    let acked = eventually(Duration::from_secs(10), || publisher.acked() >= 20).await;
    assert!(acked, "no PUBACKs\n{}", cl.logs());

    // the idle clients, on node1 and node2
    let (stop, stop_rx) = watch::channel(false);
    let mut idle = Vec::new();
    for k in 0..clients {
        let id = format!("{tag}-c{k}");
        let (c, _) = idle_client(lb_mqtt, &id).await;
        idle.push((id, watch_end(c, stop_rx.clone())));
    }
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
    let mut told = Vec::new();
    let mut stayed = Vec::new();
    for (id, task) in idle {
        if expected.contains(&id) {
            let end = tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .unwrap_or_else(|_| panic!("{id}: never told to go"))
                .unwrap();
            let (code, at) = end.unwrap_or_else(|| panic!("{id}: not ended"));
            assert_eq!(code, 0x9C, "{id}: not told to use another server");
            told.push(at);
        } else {
            stayed.push((id, task));
        }
    }
    for (id, _) in &stayed {
        let home = hashed_backend(id, &NAMES);
        let at = NAMES.iter().position(|n| *n == home).unwrap();
        assert_eq!(cl.client(at, id).1["connected"], true, "{id} left {home}");
    }
    let _ = stop.send(true);
    for (id, task) in stayed {
        assert_eq!(
            task.await.unwrap(),
            None,
            "{id}: moved, but its home did not"
        );
    }
    let peak = max_per_second(&told);
    // the rate, plus one step of the LB's (a twentieth of a second's worth, at least one)
    let bound = rate as usize + (rate as usize / 20).max(1);
    assert!(
        peak <= bound,
        "{peak} clients told to go within one second, rate {rate} (at most {bound})"
    );
    // each comes back through the LB to node3, where its session already is
    let mut resumed = 0;
    for id in &moved_idle {
        let (_c, present) = idle_client(lb_mqtt, id).await;
        resumed += usize::from(present);
        assert_eq!(
            cl.client(2, id).1["connected"],
            true,
            "{id} is not on node3"
        );
    }
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
    tokio::time::sleep(Duration::from_secs(2)).await;
    let published = publisher.stop().await;
    let all: std::collections::BTreeSet<u64> = published.acked.iter().copied().collect();
    let _ = eventually(Duration::from_secs(15), || {
        subs.iter().all(|s| s.has_all(&all))
    })
    .await;
    let mut snaps: Vec<(String, Received)> = Vec::new();
    for s in subs {
        snaps.push((s.id.clone(), s.stop().await));
    }
    let t = Tally::count(&published, &snaps, |_, _| None);
    let sessions_lost: usize = t.subs.iter().map(|s| s.sessions_lost).sum();
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
        let limit = LIMIT + Duration::from_millis(20 * scale().0 as u64);
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
    let mut idle = Vec::new();
    for k in 0..30 {
        let id = format!("{tag}-c{k}");
        let (c, _) = idle_client(lb_mqtt, &id).await;
        idle.push((id, watch_end(c, stop_rx.clone())));
    }
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
