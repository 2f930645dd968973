//! The rig of the fault-injection suites (tests/cluster_faults.rs, tests/cluster_replicas.rs):
//! `mqedge lb` (the binary) in front of three clustered `mqedge broker` nodes with `data_dir`,
//! a QoS 1 publisher and nine persistent QoS 1 subscribers (three per node), all rumqttc
//! clients through the LB that reconnect on error; and the count of what was acknowledged and
//! never delivered. Included by `#[path]` next to `common`, `fault_load` and `fault_netns`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::common::cluster_nodes::*;
use super::common::*;
use super::fault_load::{Publisher, Received, Subscriber, Tally};

/// The most one scenario may take, set-up and count included.
pub const LIMIT: Duration = Duration::from_secs(75);
/// Load before the fault, and after it healed, before the publisher stops.
pub const WARM: Duration = Duration::from_secs(3);
pub const SETTLE: Duration = Duration::from_secs(4);
/// How long, after the publisher stopped, the subscribers may take to receive what they are owed.
pub const DRAIN: Duration = Duration::from_secs(15);
pub const SUBS_PER_NODE: usize = 3;

/// One scenario at a time in this binary: each runs three nodes and an LB, and their timing is
/// part of what is measured.
pub static SERIAL: Mutex<()> = Mutex::new(());

/// Runs scenario `name` on a runtime of its own, alone, within [`LIMIT`].
pub fn scenario<F: Future<Output = ()>>(name: &str, body: impl FnOnce() -> F) {
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
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The cluster, the LB in front of it and the load through it.
pub struct Rig {
    pub name: &'static str,
    pub cl: Cluster,
    pub lb: Lb,
    pub lb_admin: SocketAddr,
    pub subs: Vec<Subscriber>,
    /// The node (index) the LB's hash puts each subscriber on while all are up.
    pub sub_node: Vec<usize>,
    pub publisher: Option<Publisher>,
    /// Holds the LB's config.
    pub _dir: TempDir,
}

impl Rig {
    /// Three nodes, the LB, nine subscribers (three hashed to each node), and a publisher whose
    /// client id hashes to node `pub_node`, publishing once every route is everywhere.
    pub async fn start(name: &'static str, tag: &str, pub_node: usize) -> Rig {
        Rig::start_with(name, tag, pub_node, "").await
    }

    /// [`Rig::start`] with `cluster_extra` lines in every node's `[cluster]` table.
    pub async fn start_with(
        name: &'static str,
        tag: &str,
        pub_node: usize,
        cluster_extra: &str,
    ) -> Rig {
        let cl = Cluster::start_custom(tag, true, "prefer_local", Run::Binary, 5000, cluster_extra)
            .await;
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
    pub async fn wait_acked(&mut self, n: usize, within: Duration) {
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

    pub fn proc(&mut self, i: usize) -> &mut Proc {
        &mut self.cl.nodes[i]
            .as_mut()
            .unwrap_or_else(|| panic!("{} not running", NAMES[i]))
            .binary()
            .proc
    }

    /// Starts node `i` again (same config, same store, same address) and waits until every
    /// node and the LB see it up.
    pub async fn restart(&mut self, i: usize) {
        blocking(|| self.cl.restart(i));
        self.all_up().await;
    }

    pub async fn all_up(&self) {
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
    pub fn on_node(&self, i: usize) -> impl Iterator<Item = &Subscriber> {
        self.subs
            .iter()
            .zip(&self.sub_node)
            .filter(move |(_, n)| **n == i)
            .map(|(s, _)| s)
    }

    /// Lets the load run `SETTLE` more, stops the publisher, gives the subscribers up to `DRAIN`
    /// to receive what they are owed, and counts. `from(i, r)`: see [`Tally::count`].
    pub async fn finish(&mut self, from: impl Fn(usize, &Received) -> Option<Instant>) -> Tally {
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
    pub fn assert_none_lost(&self, t: &Tally) {
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

pub fn owed_everything(_: usize, _: &Received) -> Option<Instant> {
    None
}
