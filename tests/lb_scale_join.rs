//! The edge at scale, behind a fleet of two `mqedge lb` (docs/reliability.md, "Scale-out: a
//! fourth node joins" and "Draining a node at scale"): three clustered `mqedge broker` nodes
//! (binaries, `data_dir`) with `[[backend]] admin` feeds, under a QoS 1 load of rumqttc clients
//! (a publisher and persistent subscribers) and idle persistent MQTT 5 clients spread over both
//! LBs. Two LBs: one process holds two sockets per client, and 10,000 clients would not fit
//! `ulimit -n` 20000. `MQEDGE_REBALANCE_CLIENTS` / `MQEDGE_REBALANCE_RATE` scale both
//! scenarios (run them with `--test-threads=1` then); `-- --nocapture` prints the figures.
//!
//! j1: a fresh node4 (never a member before) starts and joins through the seeds; once the
//! cluster has it, the operator adds it to each LB's file and reloads (SIGHUP). Its health check
//! passes and each LB rebalances by itself (`rebalance = "auto"`): exactly its clients whose
//! hash home is now node4 (the moved share), sessions first, at its `rebalance_rate`; each
//! comes back (through the other LB) with Session Present = 1 on node4.
//!
//! j2: SIGTERM of node2 drains it: both LBs show it `draining`, its clients are told 0x9C and
//! find their sessions on their next pick, node2 exits once empty. Neither loses an
//! acknowledged message.

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
use rebalance::*;

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

async fn join() {
    let tag = "join";
    let (clients, rate) = scale(CLIENTS, RATE);
    let mut f = Fleet::start(tag, LBS, "auto", rate).await;
    // the load: eight subscribers, two (and the publisher) at home on node4 once it joins
    let load = Load::start(&f, tag, &ALL, "node4", clients).await;
    let expected = load.ids(|id| hashed_backend(id, &ALL) == "node4");
    let moved_idle = load.idle_among(&expected);
    assert!(moved_idle.len() >= 10, "too few to mean anything");
    tokio::time::sleep(Duration::from_secs(1)).await;

    // node4 starts, joins the cluster, and is added to each LB by a reload
    let node4 = f.cl.start_extra("node4", "127.0.0.14", "");
    let joined = eventually(Duration::from_secs(20), || {
        (0..3).all(|i| f.cl.state(i, "node4") == "up")
    })
    .await;
    assert!(joined, "node4 did not join\n{}", node4.logs());
    let t0 = Instant::now();
    f.backends.push(("node4", node4.addr(), node4.admin()));
    f.reload();
    let through = &load.through;
    let share = |k: usize| expected.iter().filter(|id| through[*id] == k).count();
    let within = Duration::from_secs(30 + 2 * (clients as u64) / rate as u64);
    let done = eventually(within, || {
        f.admins.iter().enumerate().all(|(k, a)| {
            let p = get_json(*a, "/api/rebalance");
            p["cause"] == "auto"
                && p["state"] == "done"
                && lb_metric(*a, "mqedge_lb_rebalance_moved_total") >= share(k) as f64
        })
    })
    .await;
    let took = t0.elapsed();
    for (k, a) in f.admins.iter().enumerate() {
        let p = get_json(*a, "/api/rebalance");
        assert!(done, "lb{k}: {p}\n{}", f.lb_logs());
        assert_eq!(p["failed"], 0, "lb{k}: {p}\n{}", f.lb_logs());
        assert_eq!(
            lb_metric(*a, "mqedge_lb_rebalance_moved_total"),
            share(k) as f64,
            "lb{k}: only the moved share moves: {p}"
        );
        assert_eq!(p["planned"], share(k), "lb{k}: {p}");
    }

    // the moved idle clients were told 0x9C, no faster than the rate; the others nothing
    let homes: Vec<SocketAddr> = f.backends.iter().map(|b| b.2).collect();
    let home_of = |id: &str, names: &[&str]| {
        let home = hashed_backend(id, names);
        homes[ALL.iter().position(|n| *n == home).unwrap()]
    };
    let Load {
        subs,
        publisher,
        idle,
        stop,
        ..
    } = load;
    let told = told_to_go(idle, &expected, stop, |id| {
        connected_on(home_of(id, &ALL), id)
    })
    .await;
    let (peaks, fleet_peak, span) = pace(&told, through, rate);
    // each comes back through the other LB (the fleet's, not the one that moved it), which
    // still had its old node's placement entry a moment ago
    let other = |id: &str| f.mqtt[(through[id] + 1) % LBS];
    let resumed = come_back(other, &moved_idle, |_| node4.admin(), &homes).await;
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
    assert_eq!(t.lost(), 0, "lost\n{}\n{}", t.details(), f.cl.logs());
    assert_eq!(sessions_lost, 0, "{}", t.details());
}

/// The busiest second of each LB's clients in `told` (asserted within [`rate_bound`]), of the
/// fleet's, and the time from the first to the last.
fn pace(
    told: &[(String, Instant)],
    through: &HashMap<String, usize>,
    rate: u32,
) -> (Vec<usize>, usize, Duration) {
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
    let ts: Vec<Instant> = told.iter().map(|(_, at)| *at).collect();
    let span = match (ts.iter().min(), ts.iter().max()) {
        (Some(a), Some(b)) => b.duration_since(*a),
        _ => Duration::ZERO,
    };
    (peaks, max_per_second(&ts), span)
}

/// Drain under the same load: SIGTERM of node2 (three nodes, two LBs); each LB shows it
/// `draining`, node2 moves its clients at `drain_rate` (500/s) and exits once empty; each of
/// its idle clients is told 0x9C and finds its session on its next pick (through the other
/// LB); the others stay; nothing acknowledged is lost.
async fn drain() {
    let tag = "jdr";
    let (clients, _) = scale(CLIENTS, RATE);
    let mut f = Fleet::start(tag, LBS, "manual", RATE).await;
    let load = Load::start(&f, tag, &NAMES, "node2", clients).await;
    let on2 = load.ids(|id| hashed_backend(id, &NAMES) == "node2");
    let idle_on2 = load.idle_among(&on2);
    assert!(idle_on2.len() >= 10, "too few to mean anything");
    tokio::time::sleep(Duration::from_secs(1)).await;

    let t0 = Instant::now();
    f.cl.nodes[1].as_mut().unwrap().binary().proc.signal("TERM");
    let seen = tokio::task::block_in_place(|| {
        for a in &f.admins {
            wait_backend_state(*a, "node2", "draining", Duration::from_secs(5));
        }
        t0.elapsed()
    });
    let within = Duration::from_secs(30 + clients as u64 / 100);
    let (empty, exited) = tokio::task::block_in_place(|| {
        let p = &mut f.cl.nodes[1].as_mut().unwrap().binary().proc;
        let empty = p.wait_log("drain: empty", within);
        let empty_at = t0.elapsed();
        let exited = p.wait_exit(Duration::from_secs(30)).map(|_| t0.elapsed());
        assert!(!empty.is_empty(), "node2 never empty");
        (empty_at, exited)
    });
    let exited = exited.unwrap_or_else(|| panic!("node2 did not exit\n{}", f.lb_logs()));
    let homes: Vec<SocketAddr> = f.backends.iter().map(|b| b.2).collect();
    let home_of = |id: &str, names: &[&str]| {
        let home = hashed_backend(id, names);
        homes[NAMES.iter().position(|n| *n == home).unwrap()]
    };
    let Load {
        subs,
        publisher,
        idle,
        stop,
        through,
        ..
    } = load;
    let told = told_to_go(idle, &on2, stop, |id| connected_on(home_of(id, &NAMES), id)).await;
    let ts: Vec<Instant> = told.iter().map(|(_, at)| *at).collect();
    let (peak, last) = (
        max_per_second(&ts),
        ts.iter().max().map(|t| t.duration_since(t0)),
    );
    let left = ["node1", "node3"];
    let other = |id: &str| f.mqtt[(through[id] + 1) % LBS];
    let resumed = come_back(
        other,
        &idle_on2,
        |id| home_of(id, &left),
        &[homes[0], homes[2]],
    )
    .await;
    assert_eq!(
        resumed,
        idle_on2.len(),
        "sessions not found after the drain"
    );
    let (t, sessions_lost) = finish(publisher, subs).await;
    println!(
        "drain: SIGTERM of node2 under {} clients: {} on node2, all told 0x9C by {last:?} (busiest second {peak}); both LBs showed it draining after {seen:?}; drain: empty after {empty:?}, exited after {exited:?}; {resumed} of {} idle resumed their session | acknowledged {} | lost {} | duplicates {} | sessions lost {sessions_lost}",
        clients + 7,
        on2.len(),
        idle_on2.len(),
        t.acked,
        t.lost(),
        t.duplicates(),
    );
    assert!(t.acked > 200, "too few acknowledged: {}", t.acked);
    assert_eq!(t.lost(), 0, "lost\n{}\n{}", t.details(), f.cl.logs());
    assert_eq!(sessions_lost, 0, "{}", t.details());
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// See the module: 3 → 4 nodes, a fresh node joins; the moved share only, at the rate.
#[test]
fn j1_a_joining_node_takes_exactly_the_moved_share_at_the_rate() {
    runtime().block_on(async {
        let limit = LIMIT + Duration::from_millis(20 * scale(CLIENTS, RATE).0 as u64);
        if tokio::time::timeout(limit, join()).await.is_err() {
            panic!("scale-out by a joining node not done within {limit:?}");
        }
    });
}

/// See [`drain`].
#[test]
fn j2_a_drained_node_empties_under_the_same_load() {
    runtime().block_on(async {
        let limit = LIMIT + Duration::from_millis(20 * scale(CLIENTS, RATE).0 as u64);
        if tokio::time::timeout(limit, drain()).await.is_err() {
            panic!("drain under load not done within {limit:?}");
        }
    });
}
