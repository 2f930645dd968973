//! Scale-out by a node that joins (docs/reliability.md, "Scale-out: a fourth node joins"): three
//! clustered `mqedge broker` nodes (binaries, `data_dir`) behind a fleet of two `mqedge lb`
//! with `[[backend]] admin` feeds and `[balance] rebalance = "auto"`, under a QoS 1 load of
//! rumqttc clients (a publisher and eight persistent subscribers) and idle persistent MQTT 5
//! clients spread over both LBs. A fresh node4 (never a member before) starts and joins through
//! the seeds; once the cluster has it, the operator adds it to each LB's file and reloads
//! (SIGHUP). Its health check passes and each LB rebalances by itself: exactly its clients whose
//! hash home is now node4 (the moved share), sessions first, at its `rebalance_rate`; each
//! comes back with Session Present = 1 on node4; nothing acknowledged is lost. (Two LBs: one
//! process holds two sockets per client, and 10,000 clients would not fit `ulimit -n` 20000.) `MQEDGE_REBALANCE_CLIENTS` / `MQEDGE_REBALANCE_RATE`
//! scale it (docs/reliability.md: 10,000 sessions); `-- --nocapture` prints the figures.

mod common;
#[path = "common/fault_load.rs"]
mod fault_load;
#[path = "common/rebalance.rs"]
mod rebalance;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::cluster_nodes::*;
use common::*;
use fault_load::Publisher;
use rebalance::*;
use tokio::sync::watch;

/// `[balance] rebalance_rate` of the LB.
const RATE: u32 = 20;
/// Idle persistent MQTT 5 clients.
const CLIENTS: usize = 80;
/// The whole scenario's bound (at the default size).
const LIMIT: Duration = Duration::from_secs(120);
/// The LBs of the fleet.
const LBS: usize = 2;
/// The four nodes once node4 joined.
const ALL: [&str; 4] = ["node1", "node2", "node3", "node4"];

/// The LB's file over `backends` (name, MQTT address, admin address).
fn lb_config(backends: &[(&str, SocketAddr, SocketAddr)], rate: u32) -> String {
    let mut s = format!(
        "[lb]\nname = \"join\"\nadmin = \"127.0.0.1:0\"\nconnect_timeout = \"2s\"\n\
         drain_timeout = \"1s\"\n\n[[listener]]\nname = \"mqtt\"\nbind = \"127.0.0.1:0\"\n\n\
         [balance]\nstrategy = \"client_id\"\nfallback = \"source_ip\"\nretries = 2\n\
         rebalance = \"auto\"\nrebalance_rate = {rate}\n\n\
         [health]\nkind = \"mqtt\"\ninterval = \"300ms\"\ntimeout = \"500ms\"\nfall = 2\nrise = 1\n\n\
         [placement]\ntimeout = \"2s\"\n"
    );
    for (name, addr, admin) in backends {
        s.push_str(&format!(
            "\n[[backend]]\nname = \"{name}\"\naddr = \"{addr}\"\nadmin = \"{admin}\"\n"
        ));
    }
    s
}

async fn join() {
    let tag = "join";
    let cl = Cluster::start_custom(tag, true, "prefer_local", Run::Binary, 5000, "").await;
    let dir = TempDir::new("join-lb");
    let (clients, rate) = scale(CLIENTS, RATE);
    let mut backends: Vec<_> = (0..3)
        .map(|i| (NAMES[i], cl.addr(i), cl.admin(i)))
        .collect();
    let files: Vec<_> = (0..LBS)
        .map(|k| dir.write(&format!("lb{k}.toml"), &lb_config(&backends, rate)))
        .collect();
    let lbs: Vec<Lb> = files.iter().map(|f| Lb::start(f)).collect();
    let mqtt: Vec<SocketAddr> = lbs.iter().map(|lb| lb.addr("mqtt")).collect();
    let admins: Vec<SocketAddr> = lbs.iter().map(|lb| lb.admin()).collect();
    let lb_mqtt = mqtt[0];
    tokio::task::block_in_place(|| {
        for (admin, n) in admins.iter().flat_map(|a| NAMES.map(|n| (a, n))) {
            wait_backend_state(*admin, n, "up", Duration::from_secs(10));
        }
    });
    // each LB's start schedules an auto rebalance (its backends came up): let it pass
    let settled = eventually(Duration::from_secs(10), || {
        admins
            .iter()
            .all(|a| get_json(*a, "/api/rebalance")["state"] == "done")
    })
    .await;
    assert!(settled, "{}", get_json(admins[0], "/api/rebalance"));

    // the load: eight subscribers, two (and the publisher) at home on node4 once it joins
    let subs = subscribers(lb_mqtt, tag, &ALL).await;
    let pub_id = id_for("node4", &ALL, &format!("{tag}-pub"));
    for i in 0..3 {
        cl.wait_routes(i, NAMES[(i + 1) % 3], ">= 1", |r| r >= 1)
            .await;
    }
    let publisher = Publisher::start(mqtt[LBS - 1], &pub_id, 100, 8);
    let acked = eventually(Duration::from_secs(10), || publisher.acked() >= 20).await;
    assert!(acked, "no PUBACKs\n{}", cl.logs());
    let (stop, stop_rx) = watch::channel(false);
    let idle = idle_clients(&mqtt, tag, clients, &stop_rx).await;
    // client k came through LB k % LBS; the subscribers through the first, the publisher the last
    let through: HashMap<String, usize> = idle
        .iter()
        .enumerate()
        .map(|(k, (id, _))| (id.clone(), k % LBS))
        .chain(subs.iter().map(|s| (s.id.clone(), 0)))
        .chain([(pub_id.clone(), LBS - 1)])
        .collect();
    let expected: Vec<String> = idle
        .iter()
        .map(|(id, _)| id.clone())
        .chain(subs.iter().map(|s| s.id.clone()))
        .chain([pub_id.clone()])
        .filter(|id| hashed_backend(id, &ALL) == "node4")
        .collect();
    let moved_idle: Vec<String> = idle
        .iter()
        .map(|(id, _)| id.clone())
        .filter(|id| expected.contains(id))
        .collect();
    assert!(moved_idle.len() >= 10, "too few to mean anything");
    tokio::time::sleep(Duration::from_secs(1)).await;

    // node4 starts, joins the cluster, and is added to each LB by a reload
    let node4 = cl.start_extra("node4", "127.0.0.14", "");
    let joined = eventually(Duration::from_secs(20), || {
        (0..3).all(|i| cl.state(i, "node4") == "up")
    })
    .await;
    assert!(
        joined,
        "node4 did not join\n{}\n{}",
        cl.logs(),
        node4.logs()
    );
    let t0 = Instant::now();
    backends.push(("node4", node4.addr(), node4.admin()));
    for (f, lb) in files.iter().zip(&lbs) {
        std::fs::write(f, lb_config(&backends, rate)).unwrap();
        lb.proc.signal("HUP");
    }
    let share = |k: usize| expected.iter().filter(|id| through[*id] == k).count();
    let within = Duration::from_secs(30 + 2 * (clients as u64) / rate as u64);
    let done = eventually(within, || {
        admins.iter().enumerate().all(|(k, a)| {
            let p = get_json(*a, "/api/rebalance");
            p["cause"] == "auto"
                && p["state"] == "done"
                && lb_metric(*a, "mqedge_lb_rebalance_moved_total") >= share(k) as f64
        })
    })
    .await;
    let took = t0.elapsed();
    for (k, (a, lb)) in admins.iter().zip(&lbs).enumerate() {
        let p = get_json(*a, "/api/rebalance");
        let logs = || tail(&lb.proc.logs(), 40);
        assert!(done, "lb{k}: {p}\n{}", logs());
        assert_eq!(p["failed"], 0, "lb{k}: {p}\n{}", logs());
        assert_eq!(
            lb_metric(*a, "mqedge_lb_rebalance_moved_total"),
            share(k) as f64,
            "lb{k}: only the moved share moves: {p}"
        );
        assert_eq!(p["planned"], share(k), "lb{k}: {p}");
    }

    // the moved idle clients were told 0x9C, no faster than the rate; the others nothing
    let homes: Vec<SocketAddr> = backends.iter().map(|b| b.2).collect();
    let told = told_to_go(idle, &expected, stop, |id| {
        let home = hashed_backend(id, &ALL);
        connected_on(homes[ALL.iter().position(|n| *n == home).unwrap()], id)
    })
    .await;
    let bound = rate_bound(rate);
    let peaks: Vec<usize> = (0..LBS)
        .map(|k| {
            let ts: Vec<Instant> = told
                .iter()
                .filter(|(id, _)| through[id] == k)
                .map(|(_, at)| *at)
                .collect();
            max_per_second(&ts)
        })
        .collect();
    for (k, peak) in peaks.iter().enumerate() {
        assert!(
            *peak <= bound,
            "lb{k}: {peak} clients told to go within one second, rate {rate} (at most {bound})"
        );
    }
    let told: Vec<Instant> = told.into_iter().map(|(_, at)| at).collect();
    let fleet_peak = max_per_second(&told);
    let span = match (told.iter().min(), told.iter().max()) {
        (Some(a), Some(b)) => b.duration_since(*a),
        _ => Duration::ZERO,
    };
    // each comes back through the other LB (the fleet's, not the one that moved it), which
    // still had its old node's placement entry a moment ago
    let resumed = come_back(
        |id| mqtt[(through[id] + 1) % LBS],
        &moved_idle,
        node4.admin(),
        &homes,
    )
    .await;
    assert_eq!(resumed, moved_idle.len(), "sessions not found on node4");
    let on_node4 = eventually(Duration::from_secs(10), || {
        subs.iter()
            .filter(|s| expected.contains(&s.id))
            .all(|s| connected_on(node4.admin(), &s.id))
    })
    .await;
    assert!(on_node4, "moved subscribers not on node4\n{}", node4.logs());

    // and nothing acknowledged was lost
    let (t, sessions_lost) = finish(publisher, subs).await;
    println!(
        "join: node4 joined, {LBS} LBs reloaded; {} of {} clients moved (the moved share: home node4, by LB {:?}) at rebalance_rate {rate}/s per LB, told to go over {span:?} ({took:?} from the reload to done); peak in one second {peaks:?} per LB, {fleet_peak} the fleet; {resumed} of {} idle resumed their session on node4 | acknowledged {} | lost {} | duplicates {} | sessions lost {sessions_lost}",
        expected.len(),
        clients + 9,
        (0..LBS).map(share).collect::<Vec<_>>(),
        moved_idle.len(),
        t.acked,
        t.lost(),
        t.duplicates(),
    );
    assert!(t.acked > 200, "too few acknowledged: {}", t.acked);
    assert_eq!(t.lost(), 0, "lost\n{}\n{}", t.details(), cl.logs());
    assert_eq!(sessions_lost, 0, "{}", t.details());
}

/// See the module: 3 → 4 nodes, a fresh node joins; the moved share only, at the rate.
#[test]
fn j1_a_joining_node_takes_exactly_the_moved_share_at_the_rate() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let limit = LIMIT + Duration::from_millis(20 * scale(CLIENTS, RATE).0 as u64);
        if tokio::time::timeout(limit, join()).await.is_err() {
            panic!("scale-out by a joining node not done within {limit:?}");
        }
    });
}
