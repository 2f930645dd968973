//! The fault-injection suite of docs/reliability.md: `mqedge lb` (the binary) in front of three
//! clustered `mqedge broker` nodes with `data_dir`, a QoS 1 publisher at about 100 msg/s and nine
//! persistent QoS 1 subscribers (three per node), all rumqttc clients through the LB that
//! reconnect on error. One fault per test; after it heals and the load settles, every message
//! the publisher got a PUBACK for is looked for at every subscriber that was owed it. Lost must
//! be 0; duplicates are printed (at-least-once allows them). The scenarios run one at a time
//! (a lock), each under [`LIMIT`]; `-- --nocapture` prints the figures of docs/reliability.md.

mod common;
#[path = "common/fault_load.rs"]
mod fault_load;
#[path = "common/fault_netns.rs"]
mod fault_netns;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::cluster_nodes::*;
use common::*;
use fault_load::{Publisher, Received, Subscriber, Tally};

/// The most one scenario may take, set-up and count included.
const LIMIT: Duration = Duration::from_secs(75);
/// Load before the fault, and after it healed, before the publisher stops.
const WARM: Duration = Duration::from_secs(3);
const SETTLE: Duration = Duration::from_secs(4);
/// How long, after the publisher stopped, the subscribers may take to receive what they are owed.
const DRAIN: Duration = Duration::from_secs(15);
const SUBS_PER_NODE: usize = 3;

/// One scenario at a time in this binary: each runs three nodes and an LB, and their timing is
/// part of what is measured.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs scenario `name` on a runtime of its own, alone, within [`LIMIT`].
fn scenario<F: Future<Output = ()>>(name: &str, body: impl FnOnce() -> F) {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("scenario {name}: runtime: {e}"));
    let t = Instant::now();
    rt.block_on(async {
        if tokio::time::timeout(LIMIT, body()).await.is_err() {
            panic!("scenario {name}: not done within {LIMIT:?}");
        }
    });
    println!(
        "faults: scenario {name}: {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

/// Blocking helpers of tests/common (they sleep the thread) inside the runtime.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The cluster, the LB in front of it and the load through it.
struct Rig {
    name: &'static str,
    cl: Cluster,
    lb: Lb,
    lb_admin: SocketAddr,
    subs: Vec<Subscriber>,
    /// The node (index) the LB's hash puts each subscriber on while all are up.
    sub_node: Vec<usize>,
    publisher: Option<Publisher>,
    /// Holds the LB's config.
    _dir: TempDir,
}

impl Rig {
    /// Three nodes, the LB, nine subscribers (three hashed to each node), and a publisher whose
    /// client id hashes to node `pub_node`, publishing once every route is everywhere.
    async fn start(name: &'static str, tag: &str, pub_node: usize) -> Rig {
        let cl = Cluster::start(tag, true, "prefer_local", Run::Binary).await;
        // a restarted node must come back on the address the LB knows
        for i in 0..3 {
            let text = std::fs::read_to_string(&cl.configs[i]).unwrap();
            let pinned = text.replace(
                &format!("bind = \"{}:0\"", IPS[i]),
                &format!("bind = \"{}\"", cl.addr(i)),
            );
            assert_ne!(text, pinned, "{name}: no listener bind in {}", NAMES[i]);
            std::fs::write(&cl.configs[i], pinned).unwrap();
        }
        let dir = TempDir::new(&format!("{tag}-lb"));
        let mut lb_text = String::from(
            r#"[lb]
name = "faults"
admin = "127.0.0.1:0"
connect_timeout = "2s"
drain_timeout = "1s"

[[listener]]
name = "mqtt"
bind = "127.0.0.1:0"

[balance]
strategy = "client_id"
fallback = "source_ip"
retries = 2

[health]
kind = "mqtt"
interval = "300ms"
timeout = "500ms"
fall = 2
rise = 1
"#,
        );
        for (i, name) in NAMES.iter().enumerate() {
            lb_text.push_str(&format!(
                "\n[[backend]]\nname = \"{name}\"\naddr = \"{}\"\n",
                cl.addr(i)
            ));
        }
        let lb = Lb::start(&dir.write("lb.toml", &lb_text));
        let (lb_mqtt, lb_admin) = (lb.addr("mqtt"), lb.admin());
        blocking(|| {
            for n in NAMES {
                wait_backend_state(lb_admin, n, "up", Duration::from_secs(10));
            }
        });
        let mut subs = Vec::new();
        let mut sub_node = Vec::new();
        for (k, node) in NAMES.iter().enumerate() {
            for j in 0..SUBS_PER_NODE {
                let id = id_for(node, &NAMES, &format!("{tag}-s{k}{j}"));
                subs.push(Subscriber::start(lb_mqtt, &id));
                sub_node.push(k);
            }
        }
        let ok = eventually(Duration::from_secs(15), || {
            subs.iter().all(|s| s.subscribed())
        })
        .await;
        assert!(ok, "{name}: subscribers not subscribed\n{}", cl.logs());
        for (i, me) in NAMES.iter().enumerate() {
            for peer in NAMES.iter().filter(|p| *p != me) {
                cl.wait_routes(i, peer, ">= 1", |r| r >= 1).await;
            }
        }
        let pub_id = id_for(NAMES[pub_node], &NAMES, &format!("{tag}-pub"));
        let publisher = Some(Publisher::start(lb_mqtt, &pub_id, 100, 8));
        let mut rig = Rig {
            name,
            cl,
            lb,
            lb_admin,
            subs,
            sub_node,
            publisher,
            _dir: dir,
        };
        rig.wait_acked(20, Duration::from_secs(10)).await;
        tokio::time::sleep(WARM).await;
        rig
    }

    /// Waits until the publisher has `n` more PUBACKs than now.
    async fn wait_acked(&mut self, n: usize, within: Duration) {
        let p = self.publisher.as_ref().expect("publisher running");
        let want = p.acked() + n;
        let ok = eventually(within, || p.acked() >= want).await;
        assert!(
            ok,
            "{}: the publisher got no {n} PUBACKs within {within:?} ({} so far, last error {:?})\n{}\n{}",
            self.name,
            p.acked(),
            p.log.lock().unwrap().last_error,
            self.cl.logs(),
            self.lb.proc.logs()
        );
    }

    fn proc(&mut self, i: usize) -> &mut Proc {
        &mut self.cl.nodes[i]
            .as_mut()
            .unwrap_or_else(|| panic!("{} not running", NAMES[i]))
            .binary()
            .proc
    }

    /// Starts node `i` again (same config, same store, same address) and waits until every
    /// node and the LB see it up.
    async fn restart(&mut self, i: usize) {
        blocking(|| self.cl.restart(i));
        self.all_up().await;
    }

    async fn all_up(&self) {
        for j in 0..3 {
            if self.cl.nodes[j].is_some() {
                self.cl.wait_all_up(j, Duration::from_secs(20)).await;
            }
        }
        let admin = self.lb_admin;
        blocking(|| {
            for n in NAMES {
                wait_backend_state(admin, n, "up", Duration::from_secs(10));
            }
        });
    }

    /// Subscribers the LB put on node `i`.
    fn on_node(&self, i: usize) -> impl Iterator<Item = &Subscriber> {
        self.subs
            .iter()
            .zip(&self.sub_node)
            .filter(move |(_, n)| **n == i)
            .map(|(s, _)| s)
    }

    /// Lets the load run `SETTLE` more, stops the publisher, gives the subscribers up to `DRAIN`
    /// to receive what they are owed, and counts. `from(i, r)`: see [`Tally::count`].
    async fn finish(&mut self, from: impl Fn(usize, &Received) -> Option<Instant>) -> Tally {
        tokio::time::sleep(SETTLE).await;
        let published = self
            .publisher
            .take()
            .expect("publisher running")
            .stop()
            .await;
        let deadline = Instant::now() + DRAIN;
        loop {
            let snaps: Vec<(String, Received)> = self
                .subs
                .iter()
                .map(|s| (s.id.clone(), s.snapshot()))
                .collect();
            let t = Tally::count(&published, &snaps, &from);
            if t.lost() == 0 || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // and a moment for duplicates still on their way
        tokio::time::sleep(Duration::from_millis(500)).await;
        // every session ends up on exactly one live node (a moved session's old copy goes once
        // its linger ends): no zombie copy keeps taking messages nobody reads
        let holders = |id: &str| -> Vec<&'static str> {
            (0..3)
                .filter(|&i| self.cl.nodes[i].is_some() && self.cl.client(i, id).0 == 200)
                .map(|i| NAMES[i])
                .collect()
        };
        let one_each = eventually(Duration::from_secs(12), || {
            self.subs.iter().all(|s| holders(&s.id).len() == 1)
        })
        .await;
        let copies: Vec<(String, Vec<&str>)> = self
            .subs
            .iter()
            .map(|s| (s.id.clone(), holders(&s.id)))
            .filter(|(_, h)| h.len() != 1)
            .collect();
        assert!(
            one_each,
            "scenario {}: sessions not held by exactly one node: {copies:?}\n{}",
            self.name,
            self.cl.logs()
        );
        let mut snaps = Vec::new();
        for s in self.subs.drain(..) {
            snaps.push((s.id.clone(), s.stop().await));
        }
        let t = Tally::count(&published, &snaps, &from);
        let sessions_lost: usize = t.subs.iter().map(|s| s.sessions_lost).sum();
        println!(
            "faults | {} | acknowledged {} of {} sent ({} deliveries owed) | lost {} | duplicates {} | sessions lost {} | publisher reconnects {}",
            self.name,
            t.acked,
            t.sent,
            t.deliveries(),
            t.lost(),
            t.duplicates(),
            sessions_lost,
            published.errors
        );
        print!("{}", t.details());
        t
    }

    /// Asserts nothing acknowledged was lost.
    fn assert_none_lost(&self, t: &Tally) {
        assert!(
            t.acked > 200,
            "{}: too few acknowledged to mean anything: {}",
            self.name,
            t.acked
        );
        assert_eq!(
            t.lost(),
            0,
            "scenario {}: {} acknowledged deliveries never delivered\n{}\n{}\n==== lb\n{}",
            self.name,
            t.lost(),
            t.details(),
            self.cl.logs(),
            tail(&self.lb.proc.logs(), 40)
        );
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // a graceful leave would hand sessions over for nothing: end the nodes at once
        for i in 0..3 {
            self.cl.kill9(i);
        }
    }
}

fn owed_everything(_: usize, _: &Received) -> Option<Instant> {
    None
}

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
