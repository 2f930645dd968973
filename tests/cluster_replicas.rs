//! Session replicas under faults (`[cluster] session_replicas = 2`, docs/cluster.md "Session
//! replicas", docs/reliability.md): the rig of tests/cluster_faults.rs (the LB binary before
//! three broker binaries with `data_dir`, rumqttc clients through the LB), with every
//! persistent session copied to the next node of the LB's order for its client id. The holder
//! of a third of the sessions is killed (`kill -9`) and stays dead, or comes back: every
//! message the publisher got a PUBACK for reaches every subscriber, online or offline when it
//! died, and every subscriber resumes its session (Session Present = 1) on the node the LB
//! picks next.

mod common;
#[path = "common/fault_load.rs"]
mod fault_load;
#[path = "common/fault_netns.rs"]
mod fault_netns;
#[path = "common/fault_rig.rs"]
#[allow(dead_code)]
mod fault_rig;

use std::time::{Duration, Instant};

use fault_rig::*;

const REPLICAS: &str = "session_replicas = 2";

/// Asserts every subscriber kept its session through the fault.
fn assert_sessions_kept(rig: &Rig, t: &fault_load::Tally) {
    let lost: usize = t.subs.iter().map(|s| s.sessions_lost).sum();
    assert_eq!(
        lost,
        0,
        "scenario {}: {lost} reconnects found no session (Session Present = 0)\n{}",
        rig.name,
        t.details()
    );
}

/// (R1) `kill -9` of node3 for good, under load. Two of its three subscribers went offline
/// 1.5 s before (their sessions queue what comes meanwhile) and come back 6 s later; the third
/// reconnects at once. All find their session, with every message, on the LB's next pick.
#[test]
fn r1_kill_9_holder_for_good() {
    scenario("R1 replicas: kill -9 for good", || async {
        let mut rig = Rig::start_with(
            "replicas: kill -9, node stays dead",
            "rep-dead",
            0,
            REPLICAS,
        )
        .await;
        for s in rig.on_node(2).take(2) {
            s.offline_for(Duration::from_secs(6));
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let killed = Instant::now();
        rig.cl.kill9(2);
        rig.cl.nodes[2] = None;
        tokio::time::sleep(Duration::from_secs(8)).await;
        let t = rig.finish(owed_everything).await;
        println!("replicas: node3 killed {:?} ago", killed.elapsed());
        rig.assert_none_lost(&t);
        assert_sessions_kept(&rig, &t);
    });
}

/// (R2) `kill -9` of node2, started again 8 s later over the same store: its sessions were
/// promoted on their replicas meanwhile; once back it serves again, and nothing acknowledged
/// is lost (duplicates allowed, at least once).
#[test]
fn r2_kill_9_and_restart() {
    scenario("R2 replicas: kill -9 + restart", || async {
        let mut rig = Rig::start_with(
            "replicas: kill -9 + restart 8 s later",
            "rep-kill",
            0,
            REPLICAS,
        )
        .await;
        for s in rig.on_node(1) {
            s.offline_for(Duration::from_secs(4));
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        rig.cl.kill9(1);
        tokio::time::sleep(Duration::from_secs(8)).await;
        rig.restart(1).await;
        let t = rig.finish(owed_everything).await;
        rig.assert_none_lost(&t);
        assert_sessions_kept(&rig, &t);
    });
}
