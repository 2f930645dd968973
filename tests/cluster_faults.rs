//! The fault-injection suite of docs/reliability.md: `mqedge lb` (the binary) in front of three
//! clustered `mqedge broker` nodes with `data_dir`, a QoS 1 publisher at about 100 msg/s and nine
//! persistent QoS 1 subscribers (three per node), all rumqttc clients through the LB that
//! reconnect on error (the rig: tests/common/fault_rig.rs). One fault per test; after it heals
//! and the load settles, every message the publisher got a PUBACK for is looked for at every
//! subscriber that was owed it. Lost must be 0; duplicates are printed (at-least-once allows
//! them). The scenarios run one at a time (a lock), each under [`LIMIT`]; `-- --nocapture`
//! prints the figures of docs/reliability.md.

mod common;
#[path = "common/fault_load.rs"]
mod fault_load;
#[path = "common/fault_netns.rs"]
mod fault_netns;
#[path = "common/fault_rig.rs"]
mod fault_rig;

use std::time::{Duration, Instant};

use common::*;
use fault_rig::*;

/// (1) `kill -9` of node2, started again 8 s later over the same store. Its three subscribers
/// went offline 1.5 s before (their sessions queue what comes meanwhile, acknowledged once
/// stored) and come back 2.5 s after the kill, to other nodes (node2 is down): the queues on
/// node2's disk are owed to them once node2 is back.
#[test]
fn s1_kill_9_and_restart() {
    scenario("1 kill -9 + restart", || async {
        let mut rig = Rig::start("kill -9 + restart 8 s later", "flt-kill", 0).await;
        for s in rig.on_node(1) {
            s.offline_for(Duration::from_secs(4));
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        rig.cl.kill9(1);
        tokio::time::sleep(Duration::from_secs(8)).await;
        rig.restart(1).await;
        let t = rig.finish(owed_everything).await;
        rig.assert_none_lost(&t);
    });
}

/// (2) `kill -9` of node3 for good. Its sessions are gone with it (out of scope: a session
/// whose only node died); its subscribers are owed what was sent after they subscribed again on
/// a live node, the others everything.
#[test]
fn s2_kill_9_for_good() {
    scenario("2 kill -9 for good", || async {
        let mut rig = Rig::start("kill -9, node stays dead", "flt-dead", 0).await;
        let killed = Instant::now();
        rig.cl.kill9(2);
        rig.cl.nodes[2] = None;
        tokio::time::sleep(Duration::from_secs(8)).await;
        let moved: Vec<bool> = rig
            .on_node(2)
            .map(|s| s.snapshot().subscribed.last().is_some_and(|t| *t > killed))
            .collect();
        println!("faults: node3's subscribers subscribed again on a live node: {moved:?}");
        let sub_node = rig.sub_node.clone();
        let t = rig
            .finish(move |i, r| {
                (sub_node[i] == 2).then(|| {
                    r.subscribed
                        .last()
                        .copied()
                        .filter(|t| *t > killed)
                        .unwrap_or_else(Instant::now)
                })
            })
            .await;
        rig.assert_none_lost(&t);
        assert!(
            moved.iter().all(|m| *m),
            "node3's subscribers did not all reconnect to a live node: {moved:?}"
        );
    });
}

/// (3) SIGTERM of node2 (a planned restart): it hands its sessions to the LB's next pick and
/// exits; it is started again 3 s later. Its subscribers went offline 1 s before the signal, so
/// the sessions it hands over carry queued messages; they come back 2 s after it.
#[test]
fn s3_sigterm_planned_restart() {
    scenario("3 SIGTERM", || async {
        let mut rig = Rig::start("SIGTERM (planned restart)", "flt-term", 0).await;
        for s in rig.on_node(1) {
            s.offline_for(Duration::from_secs(3));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let term = Instant::now();
        let p = rig.proc(1);
        p.signal("TERM");
        let line = blocking(|| p.wait_log("sessions handed over", Duration::from_secs(15)));
        let exited = blocking(|| p.wait_exit(Duration::from_secs(15)).is_some());
        println!(
            "faults: node2 on SIGTERM: {line} (exit after {:?})",
            term.elapsed()
        );
        assert!(exited, "node2 did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_secs(3)).await;
        rig.restart(1).await;
        let t = rig.finish(owed_everything).await;
        rig.assert_none_lost(&t);
    });
}

/// (4) The LB drains node2 (its clients are closed after `drain_timeout` and reconnect
/// elsewhere, their sessions taken over), then node2 is ready again and the same clients come
/// back to it (taken over once more).
#[test]
fn s4_lb_drain_and_ready() {
    scenario("4 LB drain + ready", || async {
        let mut rig = Rig::start("LB drain of a backend, then ready", "flt-drain", 0).await;
        let (code, body) = blocking(|| http("POST", rig.lb_admin, "/api/backends/node2/drain"));
        assert_eq!(code, 200, "drain: {body}");
        tokio::time::sleep(Duration::from_secs(4)).await;
        let (code, body) = blocking(|| http("POST", rig.lb_admin, "/api/backends/node2/ready"));
        assert_eq!(code, 200, "ready: {body}");
        let admin = rig.lb_admin;
        blocking(|| wait_backend_state(admin, "node2", "up", Duration::from_secs(10)));
        for s in rig.on_node(1) {
            s.kick();
        }
        let t = rig.finish(owed_everything).await;
        rig.assert_none_lost(&t);
    });
}

/// (5) node2 is paused (SIGSTOP) for 5 s; once the LB sees it down, the subscribers whose
/// sessions it holds reconnect through the LB, to other nodes; then it resumes (SIGCONT).
#[test]
fn s5_sigstop_holder_during_reconnect() {
    scenario("5 SIGSTOP of the holder", || async {
        let mut rig = Rig::start(
            "SIGSTOP 5 s while its clients reconnect elsewhere",
            "flt-stop",
            0,
        )
        .await;
        let stopped = Instant::now();
        rig.proc(1).signal("STOP");
        let admin = rig.lb_admin;
        let took = blocking(|| wait_backend_state(admin, "node2", "down", Duration::from_secs(5)));
        println!("faults: node2 paused, down on the LB after {took:?}");
        for s in rig.on_node(1) {
            s.kick();
        }
        tokio::time::sleep(Duration::from_secs(5).saturating_sub(stopped.elapsed())).await;
        rig.proc(1).signal("CONT");
        rig.all_up().await;
        let t = rig.finish(owed_everything).await;
        rig.assert_none_lost(&t);
    });
}

/// (6) The node channel between node2 and node3 is cut for 10 s (TCP of their cluster ports
/// dropped by nftables; gossip, on UDP, goes on), with the publisher on node2, so its copies for
/// node3's subscribers cross the cut. In a network namespace of the test's own.
#[test]
fn s6_node_channel_cut() {
    if !fault_netns::inside() {
        let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = fault_netns::netns_possible() {
            assert!(
                std::env::var_os("CI").is_none(),
                "scenario 6: a network namespace is needed in CI (run as root): {e}"
            );
            eprintln!("scenario 6 skipped: no network namespace here: {e}");
            return;
        }
        let passed =
            fault_netns::rerun_in_netns("s6_node_channel_cut", LIMIT + Duration::from_secs(15))
                .unwrap_or_else(|e| panic!("scenario 6: {e}"));
        assert!(
            passed,
            "scenario 6 (node channel cut) failed in its namespace: its output is above"
        );
        return;
    }
    scenario("6 node channel cut", || async {
        let mut rig = Rig::start("node2 ⟷ node3 channel cut 10 s, gossip up", "flt-cut", 1).await;
        let cut =
            fault_netns::ChannelCut::between(&rig.cl.cluster_addrs[1], &rig.cl.cluster_addrs[2])
                .unwrap_or_else(|e| panic!("scenario 6: {e}"));
        let at = Instant::now();
        let seen = eventually(Duration::from_secs(10), || {
            rig.cl.state(1, "node3") == "unreachable"
        })
        .await;
        println!(
            "faults: node3 unreachable on node2: {seen} after {:?}",
            at.elapsed()
        );
        tokio::time::sleep(Duration::from_secs(10).saturating_sub(at.elapsed())).await;
        drop(cut);
        let healed = eventually(Duration::from_secs(20), || {
            rig.cl.state(1, "node3") == "up" && rig.cl.state(2, "node2") == "up"
        })
        .await;
        assert!(
            healed,
            "scenario 6: channel not up again after the cut\n{}",
            rig.cl.logs()
        );
        let t = rig.finish(owed_everything).await;
        rig.assert_none_lost(&t);
    });
}

/// (7) All three nodes killed (`kill -9`) at once, then all started again at once over their
/// stores (each accepts clients only once the others' route snapshots are in).
#[test]
fn s7_full_restart() {
    scenario("7 full restart", || async {
        let mut rig = Rig::start("full restart (kill -9 all, start all)", "flt-all", 0).await;
        blocking(|| rig.cl.restart_all());
        rig.all_up().await;
        let t = rig.finish(owed_everything).await;
        rig.assert_none_lost(&t);
    });
}
